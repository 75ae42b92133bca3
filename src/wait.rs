//! One polling primitive for every wait: a deadline, an interval, the last error seen,
//! and a message that says what was awaited and for how long.

use std::fmt::Display;
use std::thread;
use std::time::{Duration, Instant};

use crate::interrupt;

/// Why a wait ended without success.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed.
    #[error("timed out after {} waiting for {what}{}", crate::message::duration(*waited), last.as_ref().map(|l| format!(" (last error: {l})")).unwrap_or_default())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
        /// The last error the probe returned.
        last: Option<String>,
    },
    /// SIGINT or SIGTERM arrived.
    #[error("interrupted while waiting for {what}")]
    Interrupted {
        /// What was awaited.
        what: String,
    },
    /// The probe reported that waiting longer is pointless.
    #[error("{what}: {reason}")]
    Fatal {
        /// What was awaited.
        what: String,
        /// Why it can never happen.
        reason: String,
    },
}

/// What one probe attempt says.
pub enum Poll<T> {
    /// Done.
    Ready(T),
    /// Not yet; the text is kept as the last error.
    Pending(String),
    /// Never: stop waiting.
    Fatal(String),
}

/// Calls `probe` every `interval` until it is ready, fatal, interrupted or `timeout` passes.
pub fn wait_until<T>(
    what: impl Display,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Poll<T>,
) -> Result<T, WaitError> {
    let start = Instant::now();
    let mut last: Option<String>;
    loop {
        if interrupt::interrupted() {
            return Err(WaitError::Interrupted {
                what: what.to_string(),
            });
        }
        match probe() {
            Poll::Ready(v) => return Ok(v),
            Poll::Pending(e) => last = Some(e),
            Poll::Fatal(reason) => {
                return Err(WaitError::Fatal {
                    what: what.to_string(),
                    reason,
                })
            }
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(WaitError::Timeout {
                what: what.to_string(),
                waited,
                last,
            });
        }
        thread::sleep(interval.min(timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_names_what_and_the_last_error() {
        let err = wait_until(
            "the moon",
            Duration::from_millis(50),
            Duration::from_millis(10),
            || Poll::<()>::Pending("still cheese".into()),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("waiting for the moon"), "{msg}");
        assert!(msg.contains("last error: still cheese"), "{msg}");
    }

    #[test]
    fn ready_and_fatal_end_the_wait() {
        let mut n = 0;
        let v = wait_until(
            "three",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                if n == 3 {
                    Poll::Ready(n)
                } else {
                    Poll::Pending(String::new())
                }
            },
        )
        .unwrap();
        assert_eq!(v, 3);
        let err = wait_until(
            "never",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || Poll::<()>::Fatal("qemu exited".into()),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "never: qemu exited");
    }
}
