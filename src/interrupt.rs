//! SIGINT and SIGTERM handling. A signal only counts; every wait loop checks the count
//! and returns an error, so the ordinary unwinding of guards runs the same teardown as
//! any other failure, and the reports are written.
//!
//! - The first signal asks for a stop: waits end within a second or two, checks stop,
//!   guards tear down normally (graceful shutdowns, grace periods capped at
//!   [`INTERRUPTED_GRACE`]).
//! - The second escalates ([`hurry`]): teardown no longer waits for anything to exit by
//!   itself; process groups get SIGKILL at once.
//! - The third exits at once with 130; the kernel kills every child (they are spawned
//!   with a parent-death signal), and the next run or `nodegate doctor` removes the run's
//!   folders and marks its report as killed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static COUNT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: std::sync::Once = std::sync::Once::new();

/// The longest grace period a teardown waits once a run was interrupted.
pub const INTERRUPTED_GRACE: Duration = Duration::from_secs(2);

/// Routes SIGINT and SIGTERM to the counter. Idempotent.
pub fn install() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // SAFETY: the action only touches an atomic and calls _exit, both
            // async-signal-safe.
            let r = unsafe {
                signal_hook::low_level::register(sig, || {
                    if COUNT.fetch_add(1, Ordering::SeqCst) >= 2 {
                        signal_hook::low_level::exit(crate::exit::INTERRUPTED);
                    }
                })
            };
            if let Err(e) = r {
                result = Err(e);
            }
        }
    });
    result
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    COUNT.load(Ordering::SeqCst) > 0
}

/// Whether a second signal asked teardown to stop waiting.
pub fn hurry() -> bool {
    COUNT.load(Ordering::SeqCst) > 1
}

/// The grace period to give a process (or a guest) to exit by itself: `normal`, capped
/// after an interrupt, zero after a second one.
pub fn grace(normal: Duration) -> Duration {
    if hurry() {
        Duration::ZERO
    } else if interrupted() {
        normal.min(INTERRUPTED_GRACE)
    } else {
        normal
    }
}

/// Raises the flag by hand (tests, and code that wants to stop the run).
pub fn raise() {
    COUNT.fetch_max(1, Ordering::SeqCst);
}
