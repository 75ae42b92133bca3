//! The assertions of nodegate's fuzz targets, shared by the libFuzzer targets
//! (fuzz/fuzz_targets/*.rs, each a one-line wrapper) and the stable regression test
//! tests/fuzz_regressions.rs, which replays fuzz/corpus/ and fuzz/artifacts-kept/.
//!
//! Each function takes the raw fuzz input and panics on a finding. A finding's panic
//! message starts with its id in brackets (`[suite-Invalid-multiline] ...`), so the
//! regression test can tell a known open finding (listed in fuzz/known-open.txt) from
//! a new one. A panic from inside nodegate itself carries no id and is always new.
//!
//! While fuzzing, `NODEGATE_FUZZ_KNOWN=id1,id2` tolerates findings already recorded,
//! so that a long run keeps looking for other ones instead of stopping at the first
//! shallow one. The regression test never sets it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nodegate::image::disk_format;
use nodegate::image::Manifest;
use nodegate::profile::Profile;
use nodegate::suite;

/// The profile whose variables the suite target plans against (the repo's own).
const FIXTURE_PROFILE: &str = include_str!("../profiles/debian-fixture.toml");

/// The separator between the JUnit files of one `junit_merge` input (XML has no NUL).
pub const JUNIT_SEPARATOR: u8 = 0;

fn tolerated(id: &str) -> bool {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("NODEGATE_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|k| k == id)
}

/// Reports a finding: panics with `[id] message` unless the id is tolerated.
fn finding(id: &str, message: std::fmt::Arguments<'_>) {
    if !tolerated(id) {
        panic!("[{id}] {message}");
    }
}

/// The variant name of an error enum from its Debug form (`Invalid { .. }` -> `Invalid`).
fn variant(e: &dyn Debug) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("Error")
        .to_string()
}

/// The project rule: an error displays as one line.
fn one_line<E: Display + Debug>(target: &str, e: &E) {
    let text = e.to_string();
    if text.contains('\n') {
        finding(
            &format!("{target}-{}-multiline", variant(e)),
            format_args!("error is not one line: {text:?}"),
        );
    }
}

/// Same rule for the `Result<_, String>` errors of `suite::vars`.
fn one_line_str(id: &str, text: &str) {
    if text.contains('\n') {
        finding(id, format_args!("error is not one line: {text:?}"));
    }
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The variables suites are planned with: the fixture profile's (as `nodegate run`
/// computes them) and the manifest components a real image carries.
pub fn fixed_vars() -> &'static BTreeMap<String, String> {
    static VARS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    VARS.get_or_init(|| {
        let profile = Profile::parse(Path::new("profiles/debian-fixture.toml"), FIXTURE_PROFILE)
            .expect("profiles/debian-fixture.toml parses");
        let mut vars = profile.variables();
        for (k, v) in [
            ("manifest.name", "debian-fixture"),
            ("manifest.version", "1"),
            ("manifest.architecture", "x86_64"),
            ("manifest.components.kubelet", "v1.31.2"),
            ("manifest.components.containerd", "1.7.24"),
            ("manifest.components.agent", "0.3.0 'beta'; $(reboot)"),
            ("manifest.components.kernel", "6.1.0-28-cloud-amd64"),
            ("node.name", "nodegate-fuzz-0"),
            ("empty", ""),
            ("multi.line", "a\nb"),
        ] {
            vars.insert(k.to_string(), v.to_string());
        }
        vars
    })
}

/// Target `manifest`: `Manifest::parse` never panics, its errors are one line, and what
/// it accepts survives `to_bytes` and parses back equal.
pub fn manifest(data: &[u8]) {
    match Manifest::parse(data) {
        Err(e) => one_line("manifest", &e),
        Ok(m) => {
            let _ = m.expires_at();
            let bytes = m.to_bytes();
            match Manifest::parse(&bytes) {
                Ok(again) if again == m => {}
                Ok(again) => finding(
                    "manifest-roundtrip-differs",
                    format_args!("{m:?} came back as {again:?}"),
                ),
                Err(e) => finding(
                    "manifest-roundtrip-refused",
                    format_args!("to_bytes of an accepted manifest is refused: {e}"),
                ),
            }
        }
    }
}

/// Target `profile`: `Profile::parse` never panics, its errors are one line, and an
/// accepted profile gives its variables and its effective TOML (which loads again).
pub fn profile(data: &[u8]) {
    let path = Path::new("fuzz/profile.toml");
    match Profile::parse(path, &text(data)) {
        Err(e) => one_line("profile", &e),
        Ok(p) => {
            let _ = p.variables();
            let effective = p.to_toml();
            // Beyond "does not panic": the effective profile written to a run's
            // artifacts folder is itself a profile nodegate loads.
            if let Err(e) = Profile::parse(path, &effective) {
                finding(
                    "profile-effective-refused",
                    format_args!(
                        "to_toml of an accepted profile is refused: {e}; TOML: {effective:?}"
                    ),
                );
            }
        }
    }
}

/// Target `suite`: `suite::parse` never panics, its errors are one line, and planning an
/// accepted suite with fixed variables never panics (its errors are one line too).
pub fn suite(data: &[u8]) {
    let path = Path::new("fuzz/suite.toml");
    match suite::parse(path, &text(data)) {
        Err(e) => one_line("suite", &e),
        Ok(def) => match suite::plan(&[def], fixed_vars()) {
            Err(e) => one_line("plan", &e),
            Ok(checks) => {
                for c in &checks {
                    let _ = (c.id(), c.judges_join(), c.judges_boot());
                }
            }
        },
    }
}

/// Splits a `junit_merge` input into 1 to 3 JUnit texts at [`JUNIT_SEPARATOR`].
pub fn junit_inputs(data: &[u8]) -> Vec<(PathBuf, String)> {
    data.split(|b| *b == JUNIT_SEPARATOR)
        .take(3)
        .enumerate()
        .map(|(i, part)| (PathBuf::from(format!("shard-{}.xml", i + 1)), text(part)))
        .collect()
}

/// Target `junit_merge`: `merge_texts` of 1 to 3 files never panics, its errors are one
/// line, and a merged report serializes (or says why in one line).
pub fn junit_merge(data: &[u8]) {
    let inputs = junit_inputs(data);
    match nodegate::report::junit::merge_texts(&inputs) {
        Err(e) => one_line("junit", &e),
        Ok(report) => match report.to_string() {
            Err(e) => one_line("junit-serialize", &e),
            Ok(xml) => {
                // Beyond "does not panic": a merged file is itself a JUnit file that
                // `nodegate report merge` reads.
                let again = [(PathBuf::from("merged.xml"), xml)];
                if let Err(e) = nodegate::report::junit::merge_texts(&again) {
                    finding(
                        "junit-merged-unreadable",
                        format_args!("the merged report cannot be merged again: {e}"),
                    );
                }
            }
        },
    }
}

/// Target `disk_format`: the first byte picks the format a manifest states (none, raw,
/// qcow2), the rest is the disk's head. `inspect` and `check_qcow2` never panic and
/// their errors are one line.
pub fn disk_format(data: &[u8]) {
    let Some((&pick, head)) = data.split_first() else {
        return;
    };
    let stated = [None, Some("raw"), Some("qcow2")][usize::from(pick % 3)];
    match disk_format::inspect(head, stated) {
        Err(e) => one_line("disk", &e),
        Ok(f) => {
            if f == disk_format::DiskFormat::Qcow2 && disk_format::check_qcow2(head).is_err() {
                finding(
                    "disk-inconsistent",
                    format_args!("inspect accepts a qcow2 that check_qcow2 refuses"),
                );
            }
        }
    }
    if let Err(e) = disk_format::check_qcow2(head) {
        one_line("disk-qcow2", &e);
    }
}

/// Target `vars`: `expand` and `expand_shell` never panic, their errors are one line,
/// and they agree on whether the text expands.
pub fn vars(data: &[u8]) {
    let t = text(data);
    let vars = fixed_vars();
    let plain = suite::vars::expand(&t, vars);
    let shell = suite::vars::expand_shell(&t, vars);
    if let Err(e) = &plain {
        one_line_str("vars-expand-multiline", &e.to_string());
    }
    // The same error from both is one finding, reported under `expand`.
    if let Err(e) = &shell {
        if plain.as_ref().err() != Some(e) {
            one_line_str("vars-expand_shell-multiline", &e.to_string());
        }
    }
    if plain.is_ok() != shell.is_ok() {
        finding(
            "vars-disagree",
            format_args!("expand gives {plain:?}, expand_shell gives {shell:?}"),
        );
    }
}

/// One target: its name and the function a fuzz input goes through.
pub type Target = (&'static str, fn(&[u8]));

/// The targets by name, for the regression test.
pub const TARGETS: &[Target] = &[
    ("manifest", manifest),
    ("profile", profile),
    ("suite", suite),
    ("junit_merge", junit_merge),
    ("disk_format", disk_format),
    ("vars", vars),
];
