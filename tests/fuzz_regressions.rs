//! Replays the fuzz corpora (fuzz/corpus/TARGET/) and the kept findings
//! (fuzz/artifacts-kept/TARGET/) through the fuzz targets' own assertions (fuzz/checks.rs):
//! no panic, errors on one line, manifests that round-trip. Stable Rust, no libFuzzer:
//! `cargo test --test fuzz_regressions`.
//!
//! A finding that is known and not fixed yet is listed by id in fuzz/known-open.txt: an
//! input that fails with a listed id is reported, not failed. Any other failure fails the
//! test. Once a listed finding no longer reproduces from any kept artifact, the test
//! fails too, asking for its line to be removed, so a fix turns the artifacts into
//! strict regressions.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The ids of fuzz/known-open.txt (first word of each line; `#` starts a comment).
fn known_open() -> BTreeSet<String> {
    let text = std::fs::read_to_string(fuzz_dir().join("known-open.txt")).unwrap_or_default();
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every regular file of `dir`, sorted (none when the folder does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    !name.starts_with('.') && !name.ends_with(".md")
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Findings panic on purpose; keep their (expected) panics off the test output.
fn quiet_findings() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let finding = panic_text(info.payload()).starts_with('[');
            if !finding {
                default(info);
            }
        }));
    });
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// `Ok` when the input passes; otherwise the finding's id (`None`: a panic with no id,
/// from inside nodegate) and the panic message.
fn replay(check: fn(&[u8]), path: &Path) -> Result<(), (Option<String>, String)> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    quiet_findings();
    panic::catch_unwind(AssertUnwindSafe(|| check(&data))).map_err(|p| {
        let text = panic_text(p.as_ref());
        let id = text
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(id, _)| id.to_string());
        (id, text)
    })
}

fn check_fn(target: &str) -> fn(&[u8]) {
    checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {target}"))
}

/// Replays one target's corpus and kept artifacts; fails on anything not known open.
fn replay_target(target: &str) {
    let check = check_fn(target);
    let open = known_open();
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    let kept = files(&fuzz_dir().join("artifacts-kept").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty: the regression corpus is missing"
    );
    let (mut passed, mut known) = (0, 0);
    let mut failures = Vec::new();
    for path in corpus.iter().chain(&kept) {
        match replay(check, path) {
            Ok(()) => passed += 1,
            Err((Some(id), _)) if open.contains(&id) => known += 1,
            Err((Some(_), text)) => failures.push(format!("{}: {text}", path.display())),
            Err((None, text)) => failures.push(format!("{}: [panic] {text}", path.display())),
        }
    }
    eprintln!(
        "{target}: {} inputs, {passed} pass, {known} hit a finding listed in fuzz/known-open.txt",
        corpus.len() + kept.len()
    );
    assert!(
        failures.is_empty(),
        "{} input(s) of {target} fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn manifest() {
    replay_target("manifest");
}

#[test]
fn profile() {
    replay_target("profile");
}

#[test]
fn suite() {
    replay_target("suite");
}

#[test]
fn junit_merge() {
    replay_target("junit_merge");
}

#[test]
fn disk_format() {
    replay_target("disk_format");
}

#[test]
fn vars() {
    replay_target("vars");
}

/// Every id of fuzz/known-open.txt still reproduces from a kept artifact: a fixed
/// finding is taken off the list, and its artifacts become strict regressions.
#[test]
fn known_open_findings_still_reproduce() {
    let mut reproduced = BTreeSet::new();
    for (target, check) in checks::TARGETS {
        for path in files(&fuzz_dir().join("artifacts-kept").join(target)) {
            if let Err((Some(id), _)) = replay(*check, &path) {
                reproduced.insert(id);
            }
        }
    }
    let stale: Vec<String> = known_open().difference(&reproduced).cloned().collect();
    assert!(
        stale.is_empty(),
        "listed in fuzz/known-open.txt but no kept artifact reproduces them any more \
         (fixed? remove their lines): {stale:?}"
    );
}
