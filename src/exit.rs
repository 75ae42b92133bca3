//! Exit codes of the `nodegate` command, one per class of outcome.
//!
//! A release pipeline gates on these, so they are stable and documented in README.md.

/// Everything passed.
pub const PASS: i32 = 0;
/// The run completed and at least one check failed.
pub const CHECKS_FAILED: i32 = 1;
/// The command line was wrong (unknown flag, missing argument, conflicting options).
pub const USAGE: i32 = 2;
/// An input file is missing, unreadable, malformed or unsupported (manifest, key,
/// signature file, artifact path).
pub const BAD_INPUT: i32 = 3;
/// Integrity or trust refused the input: digest or size mismatch, bad signature,
/// untrusted key, expired manifest, rollback.
pub const INTEGRITY: i32 = 4;
/// The environment could not do the job: a missing tool, an unwritable folder, a VM that
/// could not boot or a node that could not join.
pub const ENVIRONMENT: i32 = 5;
/// Interrupted by SIGINT or SIGTERM after tearing everything down.
pub const INTERRUPTED: i32 = 130;
