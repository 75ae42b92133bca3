//! SIGINT and SIGTERM handling: the signal only sets a flag; every wait loop checks it
//! and returns an error, so the ordinary unwinding of guards runs the same teardown as
//! any other failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Routes SIGINT and SIGTERM to the interrupt flag. Idempotent.
pub fn install() -> std::io::Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(flag()))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Raises the flag by hand (tests, and code that wants to stop the run).
pub fn raise() {
    flag().store(true, Ordering::SeqCst);
}
