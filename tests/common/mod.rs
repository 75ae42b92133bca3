//! Helpers shared by nodegate's integration tests: run the real binary, make signed
//! images in temporary folders.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod browser;

/// Skipped testcases of a JUnit report, counted per testsuite (the strict schema has no
/// `skipped` count on `<testsuites>`, so nodegate writes none there).
pub fn junit_skipped(r: &quick_junit::Report) -> usize {
    r.test_suites.iter().map(|s| s.skipped).sum()
}
pub mod junit_rules;
pub mod kind_bed;

/// The absolute path of `rel` in this repository (suites, profiles, test data).
pub fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

/// The nodegate binary cargo built for these tests.
pub fn nodegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nodegate"))
}

/// Result of one nodegate invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(args: &[&str], dir: &Path) -> Run {
    run_env(args, dir, &[])
}

/// Runs nodegate with extra environment variables.
///
/// Unless `env` names one, each invocation gets its own `NODEGATE_STATE`: what other
/// nodegate processes on the machine leave there (and the notices the sweep prints about
/// them) stays out of the output under test. Whatever the exit, the run must have
/// removed its private folder.
pub fn run_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Run {
    let state = tempfile::tempdir().expect("a state folder");
    let mut cmd = nodegate();
    if !env.iter().any(|(k, _)| *k == "NODEGATE_STATE") {
        cmd.env("NODEGATE_STATE", state.path());
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("nodegate runs");
    let left: Vec<_> = fs::read_dir(state.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nodegate {args:?} left {left:?} in its state folder; stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    Run {
        code: status
            .code()
            .expect("nodegate exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs nodegate and insists it succeeds.
pub fn ok(args: &[&str], dir: &Path) -> Run {
    let r = run(args, dir);
    assert_eq!(
        r.code, 0,
        "nodegate {args:?} failed: {}{}",
        r.stdout, r.stderr
    );
    r
}

/// Writes `size` bytes of deterministic pseudo-random content.
pub fn write_image(path: &Path, size: usize) {
    let mut f = fs::File::create(path).unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for b in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            b.copy_from_slice(&bytes[..b.len()]);
        }
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
}

/// A signed image in a temporary folder: `node.qcow2`, `node.manifest.json(.sig)`,
/// signing key `keys/release.key`, trust store folder `trust/`.
pub struct SignedImage {
    pub dir: tempfile::TempDir,
}

impl SignedImage {
    pub const MIB: usize = 1 << 20;

    /// Makes and signs an image of `size` bytes, version 5, valid for 30 days.
    pub fn new(size: usize) -> SignedImage {
        Self::with_args(size, &[])
    }

    /// Like [`SignedImage::new`], with extra `manifest create` arguments.
    pub fn with_args(size: usize, extra: &[&str]) -> SignedImage {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_image(&d.join("node.qcow2"), size);
        ok(&["keygen", "--out", "keys/release"], d);
        fs::create_dir(d.join("trust")).unwrap();
        fs::copy(d.join("keys/release.pub"), d.join("trust/release.pub")).unwrap();
        let mut args = vec![
            "manifest",
            "create",
            "--image",
            "node.qcow2",
            "--name",
            "test-image",
            "--image-version",
            "5",
            "--key",
            "keys/release.pub",
            "--component",
            "kubelet=v1.20.2",
        ];
        args.extend_from_slice(extra);
        if !extra.contains(&"--valid-for") {
            args.extend_from_slice(&["--valid-for", "30d"]);
        }
        ok(&args, d);
        ok(
            &["sign", "--key", "keys/release.key", "node.manifest.json"],
            d,
        );
        SignedImage { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `nodegate verify --trust trust node.manifest.json EXTRA...`
    pub fn verify(&self, extra: &[&str]) -> Run {
        let mut args = vec!["verify", "--trust", "trust", "node.manifest.json"];
        args.extend_from_slice(extra);
        run(&args, self.dir.path())
    }

    /// Rewrites the manifest with `edit` applied to its JSON, and re-signs it with the
    /// release key (so only the edit's meaning is under test, not the signature).
    pub fn edit_and_resign(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let p = self.path("node.manifest.json");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        edit(&mut v);
        fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        ok(
            &["sign", "--key", "keys/release.key", "node.manifest.json"],
            self.dir.path(),
        );
    }
}

/// Asserts a refusal: the exit code, and a single stderr line naming `names` and `reason`.
pub fn assert_refused(r: &Run, code: i32, names: &str, reason: &str) {
    assert_eq!(r.code, code, "exit code; stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {}", r.stderr);
    assert!(
        lines[0].contains(names),
        "{:?} should name {names:?}",
        lines[0]
    );
    assert!(
        lines[0].contains(reason),
        "{:?} should say {reason:?}",
        lines[0]
    );
}

/// A folder of the test bed (`fixtures/build`) under the cache; panics with instructions
/// when it was not built: tests that need the test bed fail loudly, never skip.
pub fn testbed(sub: &str, must_hold: &str) -> PathBuf {
    let dir = nodegate::cache_dir().join(sub);
    assert!(
        dir.join(must_hold).exists(),
        "test bed missing: {} has no {must_hold}; run fixtures/build (ci/test.sh does)",
        dir.display()
    );
    dir
}

/// The (first) report entry of the check whose `key` (`id` or `name`) is `value`.
pub fn check_in(report: &serde_json::Value, key: &str, value: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[key] == value)
        .unwrap_or_else(|| panic!("{value} not in the report"))
        .clone()
}

/// The manifest of a signed upgrade bundle of the test bed (`bundle-v2`, `neg/...`).
pub fn bundle(name: &str) -> String {
    testbed("signed", "trust")
        .join(name)
        .join("bundle.manifest.json")
        .display()
        .to_string()
}

/// `run --manifest M --trust T --profile P`: the test bed's signed image v1 (direct
/// kernel boot layout) with its trust store and the fixture profile.
pub fn v1_run_args() -> Vec<String> {
    let signed = testbed("signed", "trust");
    vec![
        "run".into(),
        "--manifest".into(),
        signed
            .join("v1-direct/node.manifest.json")
            .display()
            .to_string(),
        "--trust".into(),
        signed.join("trust").display().to_string(),
        "--profile".into(),
        repo("profiles/debian-fixture.toml"),
    ]
}

/// Direct kernel boot of a test bed layout folder (vmlinuz, initrd.img, cmdline).
pub fn direct_boot(layout: &Path) -> nodegate::vm::Boot {
    nodegate::vm::Boot::Kernel {
        kernel: layout.join("vmlinuz"),
        initrd: Some(layout.join("initrd.img")),
        cmdline: fs::read_to_string(layout.join("cmdline"))
            .expect("layout has a cmdline")
            .trim()
            .to_string(),
    }
}

/// How many kube-apiserver processes run on the host.
pub fn apiserver_count() -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("kube-apiserver"))
                .unwrap_or(false)
        })
        .count()
}

/// Pids of QEMU processes whose command line mentions `needle`.
#[allow(dead_code)]
pub fn qemu_pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("qemu-system") && cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The type of the `<error>` of the run's own testcase (`nodegate::run`) in a JUnit file
/// (`interrupted`, `infrastructure`, `killed`...), or `None` when it passed; panics if
/// the testcase is missing.
pub fn run_error(junit: &Path) -> Option<String> {
    let text = fs::read_to_string(junit).unwrap();
    let r = quick_junit::Report::deserialize_from_str(&text).unwrap();
    let case = r
        .test_suites
        .iter()
        .find(|s| s.name.as_str() == "nodegate")
        .and_then(|s| s.test_cases.iter().find(|c| c.name.as_str() == "run"))
        .unwrap_or_else(|| panic!("no nodegate::run testcase in {}", junit.display()));
    match &case.status {
        quick_junit::TestCaseStatus::Success { .. } => None,
        quick_junit::TestCaseStatus::NonSuccess { kind, ty, .. } => {
            assert_eq!(
                *kind,
                quick_junit::NonSuccessKind::Error,
                "a run that did not finish is an <error>"
            );
            Some(ty.as_ref().map(|t| t.to_string()).unwrap_or_default())
        }
        other => panic!("nodegate::run is {other:?}"),
    }
}

/// Runs a host tool (`openssl`, `qemu-img`) in `dir` and insists it succeeds.
pub fn tool(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} runs (ci/install-deps.sh and fixtures/build install it): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names of a JSON report's phases, in order.
pub fn phase_names(report: &serde_json::Value) -> Vec<String> {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// What the host's own namespace looks like: links, addresses, routes, named namespaces.
pub fn host_network() -> String {
    let mut out = String::new();
    for args in [
        &["-o", "link"][..],
        &["-o", "addr"],
        &["route"],
        &["-6", "route"],
    ] {
        let o = Command::new("ip").args(args).output().unwrap();
        assert!(o.status.success());
        // Link counters and address lifetimes change on their own: keep the names.
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            out.push_str(
                &line
                    .split(" link/")
                    .next()
                    .unwrap()
                    .replace(char::is_numeric, ""),
            );
            out.push('\n');
        }
    }
    let named: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    out + &format!("named namespaces: {named:?}\n")
}

/// Processes or descriptors, anywhere on the machine, that still hold namespace `inode`.
pub fn holders(inode: u64) -> Vec<String> {
    let want = format!("net:[{inode}]");
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = p.path();
        if std::fs::read_link(dir.join("ns/net")).is_ok_and(|l| l.to_string_lossy() == want) {
            found.push(format!("{} lives in it", dir.display()));
        }
        for fd in std::fs::read_dir(dir.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == want) {
                found.push(format!("{} holds it", fd.path().display()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if mounts.contains(&want) {
        found.push("a bind mount".into());
    }
    found
}

/// `nodegate run` options of the VM tests: TCG, and the reports and artifacts in the
/// run's working folder.
#[allow(dead_code)]
pub const TCG_REPORTS: [&str; 8] = [
    "--accel",
    "tcg",
    "--json",
    "report.json",
    "--junit",
    "junit.xml",
    "--artifacts",
    "artifacts",
];

/// The report entry of check `id`.
#[allow(dead_code)]
pub fn check_of<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in the report"))
}

/// QEMU processes of the VMs a run booted (named in its report's boot phases).
pub fn leftover_qemus(report: &serde_json::Value) -> usize {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "boot")
        .filter_map(|p| p["detail"].as_str()?.split(' ').next())
        .map(|name| qemu_pids_with(name).len())
        .sum()
}
