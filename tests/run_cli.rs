//! `nodegate run` without a VM: check selection (--list and its filters), bad suites and
//! profiles, the pre-boot integrity refusals of the test bed's negative fixtures as
//! failing testcases in JUnit/JSON, `report merge` and `doctor`. Needs the signed test bed.

mod common;

use std::path::{Path, PathBuf};

use quick_junit::{Report, TestCaseStatus};

fn list(extra: &[&str]) -> Vec<String> {
    let suites = common::repo("suites");
    let mut args = vec!["run", "--list", "--suites", suites.as_str()];
    args.extend(extra);
    let r = common::ok(&args, Path::new("."));
    r.stdout
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(String::from)
        .collect()
}

#[test]
fn list_and_filters_select_like_cargo_test() {
    let all = list(&[]);
    assert!(all.len() >= 20, "{all:?}");
    assert!(all.contains(&"kubelet::node_ready".to_string()));
    let kubelet = list(&["kubelet::"]);
    assert!(!kubelet.is_empty() && kubelet.iter().all(|c| c.starts_with("kubelet::")));
    assert_eq!(
        list(&["--exact", "kubelet::version"]),
        vec!["kubelet::version"]
    );
    assert!(list(&["--exact", "kubelet::versio"]).is_empty());
    let skipped = list(&["--skip", "kubelet::"]);
    assert_eq!(skipped.len() + kubelet.len(), all.len());
    let versions = list(&["--tag", "version"]);
    assert!(
        versions.contains(&"containerd::version".to_string()),
        "{versions:?}"
    );
    assert!(!versions.contains(&"containerd::service_active".to_string()));
    let no_versions = list(&["--skip-tag", "version"]);
    assert_eq!(no_versions.len() + versions.len(), all.len());
    assert!(list(&["--suite", "agent"])
        .iter()
        .all(|c| c.starts_with("agent::")));
    // Shards partition the checks: every check in exactly one of three.
    let mut shards: Vec<String> = (1..=3)
        .flat_map(|m| list(&["--partition", &format!("hash:{m}/3")]))
        .collect();
    shards.sort();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(shards, sorted);
}

#[test]
fn bad_selections_are_usage_errors() {
    let suites = common::repo("suites");
    let r = common::run(
        &["run", "--list", "--suites", &suites, "--suite", "nope"],
        Path::new("."),
    );
    common::assert_refused(&r, 2, "--suite nope", "no such suite");
    let r = common::run(
        &["run", "--list", "--partition", "hash:4/3"],
        Path::new("."),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("expected hash:M/N"), "{}", r.stderr);
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> String {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// `nodegate run` of a signed test bed release with the repo's profile and suites.
    fn run(&self, release: &str, extra: &[&str]) -> common::Run {
        self.run_env(release, extra, &[])
    }

    /// [`Case::run`] with extra environment variables.
    fn run_env(&self, release: &str, extra: &[&str], env: &[(&str, &str)]) -> common::Run {
        self.run_with(
            release,
            &common::repo("profiles/debian-fixture.toml"),
            extra,
            env,
        )
    }

    /// [`Case::run`] with another profile and extra environment variables.
    fn run_with(
        &self,
        release: &str,
        profile: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> common::Run {
        let signed = common::testbed("signed", "trust");
        let manifest = signed.join(release).join("node.manifest.json");
        let trust = signed.join("trust");
        let suites = common::repo("suites");
        let junit = self.path("out/junit.xml");
        let json = self.path("out/report.json");
        let mut args = vec![
            "run",
            "--manifest",
            manifest.to_str().unwrap(),
            "--trust",
            trust.to_str().unwrap(),
            "--profile",
            profile,
            "--suites",
            &suites,
            "--junit",
            junit.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend(extra);
        common::run_env(&args, self.dir.path(), env)
    }

    fn junit(&self) -> Report {
        let text = std::fs::read_to_string(self.path("out/junit.xml")).unwrap();
        Report::deserialize_from_str(&text).unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.path("out/report.json")).unwrap())
            .unwrap()
    }
}

/// The failure message of `suite::name` in a JUnit report; panics if it did not fail.
fn failure(r: &Report, suite: &str, name: &str) -> String {
    let s = r
        .test_suites
        .iter()
        .find(|s| s.name.as_str() == suite)
        .unwrap_or_else(|| panic!("no testsuite {suite}"));
    let c = s
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == name)
        .unwrap_or_else(|| panic!("no testcase {suite}::{name}"));
    match &c.status {
        TestCaseStatus::NonSuccess { message, .. } => {
            message.as_ref().map(|m| m.to_string()).unwrap_or_default()
        }
        other => panic!("{suite}::{name} did not fail: {other:?}"),
    }
}

fn statuses(json: &serde_json::Value) -> Vec<(String, String)> {
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_flipped_byte_fails_artifact_digests_and_nothing_boots() {
    let c = Case::new();
    let r = c.run("neg/flipped-byte", &["--suite", "integrity"]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let junit = c.junit();
    let m = failure(&junit, "integrity", "artifact_digests");
    assert!(
        m.contains("root.qcow2: sha256") && m.contains("content modified"),
        "{m}"
    );
    assert!(
        m.contains("(expected 98c37") || m.contains("(expected "),
        "{m}"
    );
    let json = c.json();
    assert_eq!(json["schema_version"], 2);
    assert_eq!(json["verdict"], "integrity");
    assert_eq!(json["exit_code"], 4);
    assert_eq!(json["stop"]["kind"], "integrity");
    let st = statuses(&json);
    assert!(
        st.contains(&("integrity::signature".into(), "passed".into())),
        "{st:?}"
    );
    assert!(
        st.contains(&("integrity::guest_files".into(), "not-run".into())),
        "{st:?}"
    );
    assert!(json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["name"] != "boot"));
    assert_eq!(json["properties"]["image.signed"], "false");
    assert_eq!(
        common::run_error(&c.path("out/junit.xml")).as_deref(),
        Some("integrity")
    );
    let xml = std::fs::read_to_string(c.path("out/junit.xml")).unwrap();
    common::junit_rules::assert_strict("a refused image's JUnit", &xml);
    // The page beside the JSON, as Chromium renders it.
    let page = common::browser::render(&c.path("out/report.html"));
    assert_eq!(page.verdict(), "integrity");
    let (status, message) = page.check("integrity::artifact_digests");
    assert_eq!(status, "failed");
    assert!(message.contains("content modified"), "{message}");
    assert!(
        page.dom.contains("image refused at verification"),
        "the stop is shown"
    );
}

#[test]
fn evidence_of_a_run_verifies_offline_and_any_changed_byte_is_refused_naming_the_file() {
    let c = Case::new();
    common::ok(&["keygen", "--out", "gate"], c.dir.path());
    let (key, public) = (c.path("gate.key"), c.path("gate.pub"));
    let (key, public) = (key.to_str().unwrap(), public.to_str().unwrap());
    for (bundle, is_tar) in [("out/evidence.tar", true), ("out/evidence", false)] {
        let r = c.run(
            "neg/flipped-byte",
            &[
                "--suite",
                "integrity",
                "--evidence",
                bundle,
                "--evidence-key",
                key,
            ],
        );
        assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("files, signed)"), "{}", r.stdout);
        let path = c.path(bundle);
        let verify = |p: &Path| {
            common::run(
                &["evidence", "verify", p.to_str().unwrap(), "--trust", public],
                Path::new("."),
            )
        };
        let ok = verify(&path);
        assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
        assert!(ok.stdout.contains("evidence verified"), "{}", ok.stdout);
        // What a certification programme keeps is there.
        let listed: Vec<String> = if is_tar {
            let out = std::process::Command::new("tar")
                .arg("tf")
                .arg(&path)
                .output()
                .unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        } else {
            let sums = std::fs::read_to_string(path.join("SHA256SUMS")).unwrap();
            let mut names: Vec<String> = sums.lines().map(|l| l[66..].to_string()).collect();
            names.extend(["SHA256SUMS".to_string(), "SHA256SUMS.sig".to_string()]);
            assert!(names.iter().all(|n| path.join(n).is_file()), "{names:?}");
            names
        };
        for want in [
            "image/node.manifest.json",
            "image/node.manifest.json.sig",
            "profile.toml",
            "suites/integrity.toml",
            "report/junit.xml",
            "report/report.json",
            "report/report.html",
            "logs/profile.toml",
            "nodegate.txt",
            "signer.pub.pem",
            "SHA256SUMS",
        ] {
            assert!(
                listed.iter().any(|l| l == want),
                "{want} missing from {listed:?}"
            );
        }
        if !is_tar {
            // sha256sum reads the digest list as it is.
            let out = std::process::Command::new("sha256sum")
                .args(["-c", "--quiet", "SHA256SUMS"])
                .current_dir(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        // One changed byte anywhere, a file added, a foreign key: refused, naming why.
        let copy = c.path("tampered");
        let _ = std::fs::remove_dir_all(&copy);
        let _ = std::fs::remove_file(&copy);
        if is_tar {
            let mut bytes = std::fs::read(&path).unwrap();
            let at =
                find(&bytes, b"\"verdict\": \"integrity\"").expect("the JSON report in the tar");
            bytes[at + 12] = b'X';
            std::fs::write(&copy, bytes).unwrap();
            common::assert_refused(
                &verify(&copy),
                4,
                "report/report.json",
                "changed since it was signed",
            );
        } else {
            common::tool(
                "cp",
                &["-a", path.to_str().unwrap(), copy.to_str().unwrap()],
                Path::new("."),
            );
            let f = copy.join("report/junit.xml");
            let mut bytes = std::fs::read(&f).unwrap();
            bytes[100] ^= 1;
            std::fs::write(&f, bytes).unwrap();
            common::assert_refused(
                &verify(&copy),
                4,
                "report/junit.xml",
                "changed since it was signed",
            );
            std::fs::write(&f, std::fs::read(path.join("report/junit.xml")).unwrap()).unwrap();
            assert_eq!(verify(&copy).code, 0);
            std::fs::write(copy.join("report/extra.txt"), "late").unwrap();
            common::assert_refused(&verify(&copy), 4, "report/extra.txt", "not listed");
            std::fs::remove_file(copy.join("report/extra.txt")).unwrap();
            std::fs::remove_file(copy.join("nodegate.txt")).unwrap();
            common::assert_refused(&verify(&copy), 4, "nodegate.txt", "missing");
        }
        let other = c.path("other");
        if !other.with_extension("key").exists() {
            common::ok(&["keygen", "--out", other.to_str().unwrap()], c.dir.path());
        }
        let r = common::run(
            &[
                "evidence",
                "verify",
                path.to_str().unwrap(),
                "--trust",
                &format!("{}.pub", other.display()),
            ],
            Path::new("."),
        );
        common::assert_refused(&r, 4, "SHA256SUMS.sig", "not a valid signature");
    }
    // Without its key, --evidence is a usage error before anything runs.
    let r = c.run(
        "neg/flipped-byte",
        &["--suite", "integrity", "--evidence", "out/x.tar"],
    );
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn an_expired_manifest_fails_not_expired() {
    let c = Case::new();
    let r = c.run(
        "neg/expired",
        &["--suite", "integrity", "--tag", "pre-boot"],
    );
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let m = failure(&c.junit(), "integrity", "not_expired");
    assert!(m.contains("manifest expired at"), "{m}");
}

#[test]
fn an_unknown_key_fails_the_signature_and_what_follows_is_unverified() {
    let c = Case::new();
    let r = c.run(
        "neg/unknown-key",
        &["--suite", "integrity", "--tag", "pre-boot"],
    );
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let junit = c.junit();
    assert!(failure(&junit, "integrity", "signature").contains("which the trust store"));
    assert!(failure(&junit, "integrity", "artifact_digests").contains("not verified"));
}

#[test]
fn a_rollback_below_min_version_fails_no_rollback() {
    let c = Case::new();
    let r = c.run(
        "v1-direct",
        &[
            "--suite",
            "integrity",
            "--tag",
            "pre-boot",
            "--min-version",
            "2",
        ],
    );
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let m = failure(&c.junit(), "integrity", "no_rollback");
    assert!(m.contains("expected version >= 2, found 1"), "{m}");
}

#[test]
fn a_verified_image_passes_the_pre_boot_checks_without_booting() {
    let c = Case::new();
    let r = c.run("v1-direct", &["--tag", "pre-boot", "--suite", "integrity"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("test integrity::artifact_digests ... ok"),
        "{}",
        r.stdout
    );
    let json = c.json();
    assert_eq!(json["verdict"], "passed");
    assert_eq!(json["summary"]["passed"], 5);
    // The floor came from the trust store's released.toml.
    let rollback = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "integrity::no_rollback")
        .unwrap()
        .clone();
    let out = rollback["attempts"][0]["output"].as_str().unwrap();
    assert!(out.contains("released.toml (nodegate-node = 1)"), "{out}");
    // The run's own testcase passed: the run finished.
    let junit = c.junit();
    let run = junit
        .test_suites
        .iter()
        .find(|s| s.name.as_str() == "nodegate")
        .and_then(|s| s.test_cases.iter().find(|t| t.name.as_str() == "run"))
        .expect("the nodegate::run testcase");
    assert!(
        matches!(run.status, TestCaseStatus::Success { .. }),
        "{run:?}"
    );
    assert_eq!(json["properties"]["image.signed"], "true");
    assert_eq!(json["properties"]["image.name"], "nodegate-node");
    assert!(
        json["properties"]["image.manifest_sha256"]
            .as_str()
            .unwrap()
            .len()
            == 64
    );
    assert!(c.path("nodegate-artifacts/profile.toml").is_file());
}

#[test]
fn several_control_planes_run_image_checks_once_and_bad_choices_are_one_line() {
    let c = Case::new();
    let extra = [
        "--tag",
        "pre-boot",
        "--suite",
        "integrity",
        "--control-plane",
        "local",
        "--control-plane",
        "local=/opt/elsewhere",
    ];
    let r = c.run("v1-direct", &extra);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("control plane local=/opt/elsewhere (2 of 2)"),
        "{}",
        r.stdout
    );
    let json = c.json();
    // Pre-boot checks are the image's: run once, in no column, and no grid row.
    assert_eq!(json["summary"]["passed"], 5, "{}", r.stdout);
    assert!(json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["control_plane"].is_null()));
    let names: Vec<&str> = json["control_planes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["local", "local=/opt/elsewhere"]);
    assert_eq!(json["grid"]["columns"], serde_json::json!(names));
    assert_eq!(json["grid"]["rows"], serde_json::json!([]));

    let twice = c.run(
        "v1-direct",
        &["--control-plane", "local", "--control-plane", "local"],
    );
    assert_eq!(twice.code, 2, "{}", twice.stderr);
    assert_eq!(twice.stderr.trim().lines().count(), 1, "{}", twice.stderr);
    assert!(
        twice.stderr.contains("control plane local is given twice"),
        "{}",
        twice.stderr
    );

    let script = c.write("bin/kubectl", "#!/bin/sh\necho '{}'\n");
    for (kubectl, why) in [
        ("/nonexistent/kubectl", "not an executable file"),
        (script.as_str(), "not an executable file"),
    ] {
        let r = c.run("v1-direct", &["--kubectl", kubectl]);
        assert_eq!(r.code, 3, "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("{kubectl}: not a usable kubectl: {why}")),
            "{}",
            r.stderr
        );
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = c.run("v1-direct", &["--kubectl", &script]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("names no release"), "{}", r.stderr);
}

#[test]
fn shard_reports_merge_into_one_and_overlaps_are_refused() {
    let c = Case::new();
    let mut files = Vec::new();
    for m in 1..=2 {
        let p = format!("hash:{m}/2");
        let r = c.run(
            "neg/flipped-byte",
            &[
                "--suite",
                "integrity",
                "--tag",
                "pre-boot",
                "--partition",
                &p,
            ],
        );
        assert!(r.code == 0 || r.code == 4, "{}{}", r.stdout, r.stderr);
        let dest = c.path(&format!("shard{m}.xml"));
        std::fs::rename(c.path("out/junit.xml"), &dest).unwrap();
        files.push(dest.display().to_string());
    }
    let out = c.path("all.xml").display().to_string();
    let r = common::run(
        &["report", "merge", &files[0], &files[1], "-o", &out],
        Path::new("."),
    );
    assert_eq!(
        r.code, 1,
        "the digest failure in the merged report: {}{}",
        r.stdout, r.stderr
    );
    let merged = Report::deserialize_from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    // Five pre-boot checks and one nodegate::run testcase (one per shard, merged into one:
    // an error, since each shard stopped at the refusal).
    assert_eq!(merged.tests, 6);
    // artifact_digests, and disk_format, which could not look at an unverified disk.
    assert_eq!(merged.failures, 2);
    assert!(failure(&merged, "integrity", "disk_format").contains("not verified"));
    assert_eq!(merged.errors, 1);
    assert!(failure(&merged, "integrity", "artifact_digests").contains("content modified"));
    let r = common::run(
        &["report", "merge", &files[0], &files[0], "-o", &out],
        Path::new("."),
    );
    common::assert_refused(&r, 3, "shard1.xml", "overlapping shards");
    let junk = c.write("junk.xml", "not xml");
    let r = common::run(&["report", "merge", &junk, "-o", &out], Path::new("."));
    common::assert_refused(&r, 3, "junk.xml", "not JUnit XML");
}

#[test]
fn a_misspelt_profile_key_names_file_line_and_key() {
    let c = Case::new();
    let p = c.write("p.toml", "name = \"x\"\n[services]\nkubelett = \"k\"\n");
    let signed = common::testbed("signed", "trust");
    let m = signed.join("v1-direct/node.manifest.json");
    let r = common::run(
        &[
            "run",
            "--manifest",
            m.to_str().unwrap(),
            "--allow-unsigned",
            "--profile",
            &p,
        ],
        c.dir.path(),
    );
    common::assert_refused(&r, 3, "p.toml:3:1", "unknown field `kubelett`");
    assert!(!c.path("nodegate-artifacts").exists(), "nothing started");
}

#[test]
fn a_suite_with_an_unknown_variable_is_refused_before_boot() {
    let c = Case::new();
    let s = c.write(
        "suites/x.toml",
        "name = \"x\"\n[[check]]\nname = \"v\"\ndescription = \"d\"\nrun = \"echo ${manifest.components.kublet}\"\n",
    );
    let r = c.run("v1-direct", &["--suites", &s]);
    common::assert_refused(
        &r,
        3,
        "x.toml: check `v`",
        "unknown variable `${manifest.components.kublet}`",
    );
    let s = c.write(
        "suites/y.toml",
        "name = \"y\"\n[[check]]\nname = \"v\"\ndescription = \"d\"\nrun = \"true\"\nexpect = { stdout_has = [\"a\"] }\n",
    );
    let r = c.run("v1-direct", &["--suites", &s]);
    common::assert_refused(&r, 3, "y.toml:6:", "unknown field `stdout_has`");
    let s = c.write(
        "suites/z.toml",
        "name = \"z\"\n[[check]]\nname = \"u\"\ndescription = \"d\"\nbuiltin = \"service-active\"\nparams = { unit = \"kubelet.service; reboot\" }\n",
    );
    let r = c.run("v1-direct", &["--suites", &s]);
    common::assert_refused(&r, 3, "z.toml: check `u`", "param `unit`: unit name");
}

#[test]
fn a_run_without_manifest_or_image_is_a_usage_error() {
    let profile = common::repo("profiles/debian-fixture.toml");
    let r = common::run(&["run", "--profile", &profile], Path::new("."));
    common::assert_refused(&r, 2, "--manifest", "required");
    let r = common::run(
        &[
            "run",
            "--profile",
            &profile,
            "--allow-unsigned",
            "--image",
            "/nonexistent.qcow2",
        ],
        Path::new("."),
    );
    common::assert_refused(&r, 3, "/nonexistent.qcow2", "No such file");
}

/// The line of `nodegate doctor`'s output about `item`; panics showing the output if
/// there is none.
fn doctor_line(output: &str, item: &str) -> String {
    output
        .lines()
        .find(|l| l.starts_with(item))
        .unwrap_or_else(|| panic!("no {item} line: {output}"))
        .to_string()
}

/// A finished command's standard output, then its standard error.
fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn doctor_reports_what_this_machine_can_do() {
    let r = common::run(&["doctor"], Path::new("."));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for item in [
        "qemu ",
        "kvm ",
        "ovmf ",
        "local control plane ",
        "memory ",
        "disk ",
    ] {
        assert!(r.stdout.contains(item), "{item}: {}", r.stdout);
    }
    assert!(r.stdout.contains("QEMU emulator version"), "{}", r.stdout);
    // This machine gives runs their own bridge (root, dnsmasq from the test bed's host
    // packages); its kernel has no netem.
    let network = doctor_line(&r.stdout, "run network");
    assert!(
        network.contains("ok") && network.contains("bridge: the run's own namespace"),
        "{network}"
    );
    let faults = doctor_line(&r.stdout, "link faults");
    assert!(faults.contains("partition (link down)"), "{faults}");
    assert!(faults.contains("bandwidth (tbf)"), "{faults}");
    // Latency and loss through vde2's link emulator (a test bed host package).
    for kind in ["latency (wirefilter", "loss (wirefilter"] {
        assert!(faults.contains(kind), "{kind}: {faults}");
    }

    // Without a working tc (iproute2's; masked here by /dev/null in a mount namespace
    // of this command's own): one line saying bandwidth cannot be shaped and why, and
    // latency and loss still through the emulator, naming why not netem.
    let masked = std::process::Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind /dev/null /usr/sbin/tc && exec \"$0\" doctor",
        ])
        .arg(env!("CARGO_BIN_EXE_nodegate"))
        .output()
        .expect("unshare (util-linux) runs");
    let faults = doctor_line(&output_text(&masked), "link faults");
    assert!(
        faults.contains("not: bandwidth (tc qdisc replace")
            && faults.contains("tc: cannot start: Permission denied"),
        "{faults}"
    );
    assert!(
        faults.contains("latency (wirefilter; no netem: tc: cannot start"),
        "{faults}"
    );

    // Another user gets user-mode networking, and doctor says why: the namespace is
    // root's, and where /dev/net/tun is root's only (these machines), a user namespace
    // could not make taps either. A copy of the binary any user may run; uid 65534.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("nodegate");
    std::fs::copy(env!("CARGO_BIN_EXE_nodegate"), &bin).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("doctor")
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .output()
        .expect("setpriv (util-linux) runs");
    let network = doctor_line(&output_text(&out), "run network");
    assert!(
        network.contains("user: each VM behind its own QEMU NAT"),
        "{network}"
    );
    assert!(network.contains("root only (uid 65534 here)"), "{network}");
    let tun = std::fs::metadata("/dev/net/tun")
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        network.contains("/dev/net/tun is not open to uid 65534"),
        tun & 0o006 != 0o006,
        "/dev/net/tun mode {tun:o}: {network}"
    );
}

#[test]
fn fail_fast_stops_at_the_first_failure_and_reports_the_rest_as_not_run() {
    let c = Case::new();
    let r = c.run("neg/unknown-key", &["--suite", "integrity", "--fail-fast"]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let json = c.json();
    let st = statuses(&json);
    assert_eq!(st[0], ("integrity::signature".into(), "failed".into()));
    assert!(st[1..].iter().all(|(_, s)| s == "not-run"), "{st:?}");
    assert_eq!(json["stop"]["kind"], "fail-fast");
    assert_eq!(
        common::run_error(&c.path("out/junit.xml")).as_deref(),
        Some("fail-fast"),
        "JUnit alone shows the run did not finish"
    );
    assert!(json["checks"][1]["reason"]
        .as_str()
        .unwrap()
        .contains("fail-fast: integrity::signature failed"));
    assert!(
        r.stdout
            .contains("test integrity::not_expired ... not run (fail-fast"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_tampered_or_foreign_bundle_fails_bundle_verified_before_boot() {
    let signed = common::testbed("signed", "trust");
    // The pre-boot hot-upgrade check with the test bed bundle `name`.
    let check_bundle = |c: &Case, name: &str| {
        let b = signed.join(name).join("bundle.manifest.json");
        let args = [
            "--tag",
            "pre-boot",
            "--suite",
            "hot-upgrade",
            "--upgrade-bundle",
        ];
        let mut args = args.to_vec();
        args.push(b.to_str().unwrap());
        c.run("v1-direct", &args)
    };
    for (bundle, reason) in [
        ("neg/bundle-tampered", "truncated or modified"),
        ("neg/bundle-unknown-key", "does not hold"),
    ] {
        let c = Case::new();
        let r = check_bundle(&c, bundle);
        assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
        let m = failure(&c.junit(), "hot-upgrade", "bundle_verified");
        assert!(
            m.contains("bundle refused") && m.contains(reason),
            "{bundle}: {m}"
        );
    }
    let r = check_bundle(&Case::new(), "bundle-v2");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn a_tampered_bundle_is_never_applied_and_nothing_boots_to_refuse_it() {
    let signed = common::testbed("signed", "trust");
    let c = Case::new();
    let b = signed.join("neg/bundle-tampered/bundle.manifest.json");
    let r = c.run(
        "v1-direct",
        &[
            "--suite",
            "hot-upgrade",
            "--control-plane",
            "local",
            "--upgrade-bundle",
            b.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let junit = c.junit();
    assert!(failure(&junit, "hot-upgrade", "bundle_verified").contains("bundle refused"));
    let m = failure(&junit, "hot-upgrade", "in_place");
    assert!(
        m.contains("nothing applied, the node stays on kubelet v1.20.2"),
        "{m}"
    );
    // The outcome was decided before boot: no control plane, no VM.
    let json = c.json();
    let phases = common::phase_names(&json);
    assert_eq!(phases, ["verify"], "{phases:?}");
}

/// A check that needs the cluster network on user-mode networking: not run, with the
/// reason, and nothing booted for it; the network and why are in the report. A bridge
/// asked for that cannot be had (no dnsmasq on PATH) stops the run with one line, exit 5;
/// `auto` then falls back to user mode and says why.
#[test]
fn without_the_cluster_network_its_checks_are_not_run_and_a_bridge_that_cannot_be_had_is_one_line()
{
    let only = ["--exact", "kubelet::kubectl_reaches_pod"];
    let c = Case::new();
    let r = c.run("v1-direct", &[&["--network", "user"][..], &only].concat());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let json = c.json();
    assert_eq!(json["properties"]["network"], "user");
    assert_eq!(
        json["properties"]["network.reason"],
        "asked for (--network user)"
    );
    let check = &json["checks"][0];
    assert_eq!(check["status"], "not-run", "{check}");
    let reason = check["reason"].as_str().unwrap();
    assert!(
        reason.contains("needs the run's cluster network"),
        "{reason}"
    );
    assert!(
        !common::phase_names(&json).iter().any(|p| p == "boot"),
        "nothing boots for a check that cannot run: {json}"
    );

    // Debian puts dnsmasq in /usr/sbin: a PATH without it has none.
    let no_dnsmasq = [("PATH", "/usr/bin:/bin")];
    let c = Case::new();
    let r = c.run_env(
        "v1-direct",
        &[&["--network", "bridge"][..], &only].concat(),
        &no_dnsmasq,
    );
    common::assert_refused(&r, 5, "--network bridge", "dnsmasq");
    let c = Case::new();
    let r = c.run_env("v1-direct", &only, &no_dnsmasq);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let json = c.json();
    assert_eq!(json["properties"]["network"], "user");
    let why = json["properties"]["network.reason"].as_str().unwrap();
    assert!(why.contains("dnsmasq"), "{why}");
    assert_eq!(json["checks"][0]["status"], "not-run");
}

/// The cluster suite in a run of one node: every check is not run, saying it needs two
/// nodes (never passed), and nothing boots for them.
#[test]
fn cluster_checks_in_a_run_of_one_node_are_not_run_and_nothing_boots() {
    let c = Case::new();
    let r = c.run("v1-direct", &["--suite", "cluster"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let json = c.json();
    let checks = json["checks"].as_array().unwrap();
    assert!(checks.len() >= 3, "{checks:?}");
    for check in checks {
        assert_eq!(check["status"], "not-run", "{check}");
        let reason = check["reason"].as_str().unwrap();
        assert!(
            reason.contains("needs two nodes or more; this run has 1 (--nodes)"),
            "{reason}"
        );
    }
    assert_eq!(common::junit_skipped(&c.junit()), checks.len());
    assert!(
        !common::phase_names(&json).iter().any(|p| p == "boot"),
        "nothing boots for a check that cannot run: {json}"
    );
}

/// An image whose profile describes no agent: nothing of nodegate's reference agent is
/// assumed. The agent's checks are not run, each saying what the profile lacks, and
/// nothing boots for them.
#[test]
fn without_an_agent_in_the_profile_the_agent_checks_are_not_run_and_nothing_boots() {
    let c = Case::new();
    let fixture = std::fs::read_to_string(common::repo("profiles/debian-fixture.toml")).unwrap();
    let (head, rest) = fixture.split_once("\n[agent]\n").unwrap();
    let (_, tail) = rest.split_once("\n[upgrade]\n").unwrap();
    let text: String = format!("{head}\n[upgrade]\n{tail}")
        .lines()
        .filter(|l| !l.starts_with("agent = ") && !l.starts_with("agent_state_url = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let profile = c.write("no-agent.toml", &text);
    let r = c.run_with(
        "v1-direct",
        &profile,
        &["--suite", "agent", "--skip", "agent::version"],
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let json = c.json();
    let checks = json["checks"].as_array().unwrap();
    assert!(checks.len() >= 8, "{checks:?}");
    let reason = |id: &str| {
        let c = checks.iter().find(|c| c["id"] == id).unwrap();
        assert_eq!(c["status"], "not-run", "{c}");
        c["reason"].as_str().unwrap().to_string()
    };
    assert_eq!(
        reason("agent::service_active"),
        "uses `${profile.services.agent}`, which the profile does not set"
    );
    assert_eq!(
        reason("agent::local_state"),
        "uses `${profile.expect.agent_state_url}`, which the profile does not set"
    );
    for id in [
        "agent::registers",
        "agent::reconnects_after_endpoint_restart",
    ] {
        assert!(
            reason(id).contains("needs the profile's [agent]"),
            "{id}: {}",
            reason(id)
        );
    }
    assert!(
        checks.iter().all(|c| c["status"] == "not-run"),
        "{checks:?}"
    );
    assert!(
        !common::phase_names(&json).iter().any(|p| p == "boot"),
        "nothing boots: {json}"
    );
}

/// A check that shapes its node's link (latency, loss) where neither the kernel's netem
/// nor vde2's link emulator is there: not run, saying what is missing, and nothing boots.
/// These machines' kernel has no netem (`nodegate doctor` says so); a PATH without
/// /usr/bin hides vde2's tools, while dnsmasq and iproute2 (/usr/sbin) still make the
/// bridge.
#[test]
fn a_shaping_check_without_netem_or_the_link_emulator_is_not_run_saying_what_is_missing() {
    let c = Case::new();
    let r = c.run_env(
        "v1-direct",
        &["--exact", "agent::heartbeats_under_latency_and_loss"],
        &[("PATH", "/usr/sbin:/sbin")],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let json = c.json();
    assert_eq!(json["properties"]["network"], "bridge");
    let check = &json["checks"][0];
    assert_eq!(check["status"], "not-run", "{check}");
    let reason = check["reason"].as_str().unwrap();
    for part in [
        "needs link shaping",
        "no netem",
        "vde_switch and wirefilter",
    ] {
        assert!(reason.contains(part), "{part}: {reason}");
    }
    assert!(!reason.contains('\n'), "one line: {reason}");
    assert!(
        !common::phase_names(&json).iter().any(|p| p == "boot"),
        "nothing boots for a check that cannot run: {json}"
    );
}

/// More nodes than the run's network or the host's memory holds, or several nodes on
/// user-mode networking: refused before anything boots, with one line.
#[test]
fn more_nodes_than_memory_or_the_network_holds_are_refused_before_anything_starts() {
    let only = ["--exact", "kubelet::node_ready"];
    for (args, code, names, reason) in [
        (
            &["--nodes", "18"][..],
            2,
            "--nodes 18",
            "a run has 1 to 17 nodes",
        ),
        (&["--nodes", "0"], 2, "--nodes 0", "a run has 1 to 17 nodes"),
        (&["--jobs", "0"], 2, "--jobs 0", "at least one VM"),
        (&["--nodes", "2"], 5, "--nodes 2", "MiB available"),
        (
            &["--nodes", "2", "--network", "user"],
            5,
            "--nodes 2",
            "needs the run's cluster network",
        ),
    ] {
        let c = Case::new();
        // VMs of 1 TiB each: no host holds two.
        let profile = std::fs::read_to_string(common::repo("profiles/debian-fixture.toml"))
            .unwrap()
            .replace("memory_mib = 2048", "memory_mib = 1048576");
        let profile = c.write("huge.toml", &profile);
        let r = c.run_with("v1-direct", &profile, &[args, &only].concat(), &[]);
        common::assert_refused(&r, code, names, reason);
        assert!(
            !c.path("out/report.json").exists()
                || !common::phase_names(&c.json()).iter().any(|p| p == "boot"),
            "nothing booted"
        );
    }
}
