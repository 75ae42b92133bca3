//! Fuzz target `manifest`: a thin wrapper; the assertions live in ../checks.rs, which
//! tests/fuzz_regressions.rs replays over the saved corpus.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::manifest(data));
