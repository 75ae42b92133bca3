//! `nodegate run` end to end on the test bed: the full flow on image v1 with the local
//! control plane (every suite passes; JUnit and JSON checked), the runner's retries,
//! flaky marking and timeouts against a real guest, an interrupted run, and the negative
//! images and faults that each suite must catch (kernel panic, crash-looping kubelet,
//! injected faults, tampered bundle). Needs the test bed (`fixtures/build`); VM tests are
//! serialized because the machine has 2 cores.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quick_junit::{Report, TestCaseStatus};

static VM: Mutex<()> = Mutex::new(());

/// The report entry of the check whose `key` (`id` or `name`) is `value`.
fn check_in(report: &serde_json::Value, key: &str, value: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[key] == value)
        .unwrap_or_else(|| panic!("{value} not in the report"))
        .clone()
}

/// QEMU processes of the VMs a run booted (named in its report's boot phases).
fn leftover_qemus(report: &serde_json::Value) -> usize {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "boot")
        .filter_map(|p| p["detail"].as_str()?.split(' ').next())
        .map(|name| common::qemu_pids_with(name).len())
        .sum()
}

struct Out {
    dir: tempfile::TempDir,
}

impl Out {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn args(&self) -> Vec<String> {
        let signed = common::testbed("signed", "trust");
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
            common::repo("profiles/debian-fixture.toml"),
            "--junit".into(),
            self.path("junit.xml").display().to_string(),
            "--json".into(),
            self.path("report.json").display().to_string(),
            "--artifacts".into(),
            self.path("artifacts").display().to_string(),
            "--accel".into(),
            "tcg".into(),
        ]
    }

    /// Runs the real suites on an unsigned `manifest` (a negative image) with `profile`.
    fn run_unsigned(&self, manifest: &Path, profile: &str, extra: &[&str]) -> common::Run {
        let suites = common::repo("suites");
        let mut args = vec![
            "run",
            "--manifest",
            manifest.to_str().unwrap(),
            "--allow-unsigned",
            "--profile",
            profile,
            "--suites",
            &suites,
            "--accel",
            "tcg",
            "--json",
            "report.json",
            "--junit",
            "junit.xml",
            "--artifacts",
            "artifacts",
        ];
        args.extend_from_slice(extra);
        common::run(&args, self.dir.path())
    }

    fn junit(&self) -> Report {
        Report::deserialize_from_str(&std::fs::read_to_string(self.path("junit.xml")).unwrap())
            .unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.path("report.json")).unwrap()).unwrap()
    }
}

/// The manifest of a signed upgrade bundle of the test bed (`bundle-v2`, `neg/...`).
fn bundle(name: &str) -> String {
    common::testbed("signed", "trust")
        .join(name)
        .join("bundle.manifest.json")
        .display()
        .to_string()
}

fn out() -> Out {
    Out {
        dir: tempfile::tempdir().unwrap(),
    }
}

#[test]
fn the_full_flow_passes_on_image_v1_with_the_local_control_plane() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = out();
    let mut args = o.args();
    args.extend([
        "--suites".into(),
        common::repo("suites"),
        "--control-plane".into(),
        "local".into(),
        "--upgrade-bundle".into(),
        bundle("bundle-v2"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = common::run(&args, o.dir.path());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("test kubelet::pinned_pod_runs ... ok"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("test result: ok."), "{}", r.stdout);

    let junit = o.junit();
    let names: Vec<&str> = junit.test_suites.iter().map(|s| s.name.as_str()).collect();
    for s in ["integrity", "containerd", "kubelet", "agent"] {
        assert!(names.contains(&s), "{names:?}");
    }
    assert_eq!(junit.failures + junit.errors + junit.skipped, 0);
    let listed = common::ok(
        &["run", "--list", "--suites", &common::repo("suites")],
        Path::new("."),
    );
    assert_eq!(junit.tests, listed.stdout.matches(": test").count());
    let props = &junit.test_suites[0].properties;
    let prop = |n: &str| {
        props
            .iter()
            .find(|p| p.name.as_str() == n)
            .map(|p| p.value.to_string())
            .unwrap_or_else(|| panic!("no property {n}"))
    };
    assert_eq!(prop("image.name"), "nodegate-node");
    assert_eq!(prop("image.version"), "1");
    assert_eq!(prop("image.signed"), "true");
    assert_eq!(prop("accel"), "tcg");
    assert_eq!(prop("control_plane"), "local");
    assert_eq!(prop("kubernetes.version"), "v1.20.2");
    assert_eq!(prop("image.disk_sha256").len(), 64);
    assert_eq!(prop("nodegate.version"), env!("CARGO_PKG_VERSION"));
    // Output of the guest's commands lands in system-out.
    let kubelet = junit
        .test_suites
        .iter()
        .find(|s| s.name.as_str() == "kubelet")
        .unwrap();
    let version = kubelet
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == "version")
        .unwrap();
    let out = version.system_out.as_ref().unwrap().to_string();
    assert!(out.contains("Kubernetes v1.20.2"), "{out}");

    let json = o.json();
    assert_eq!(json["verdict"], "passed");
    assert_eq!(json["exit_code"], 0);
    assert!(json["finished"].is_string());
    let phases: Vec<&str> = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["verify", "control-plane", "boot", "join", "teardown"] {
        assert!(phases.contains(&p), "{phases:?}");
    }
    assert!(json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["duration_secs"].is_number()));
    // The destructive checks (kubelet kill, hot upgrade) had a VM and Node each.
    for p in ["boot", "join"] {
        assert_eq!(phases.iter().filter(|x| **x == p).count(), 3, "{phases:?}");
    }
    let upgrade = check_in(&json, "id", "hot-upgrade::in_place");
    let out = upgrade["attempts"][0]["output"].as_str().unwrap();
    assert!(out.contains("NotReady window"), "{out}");
    let console = json["artifacts"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("/console"))
        .map(|(_, v)| PathBuf::from(v.as_str().unwrap()))
        .expect("a console artifact");
    assert!(std::fs::read_to_string(console)
        .unwrap()
        .contains("Linux version"));
    assert!(o.path("artifacts/profile.toml").is_file());
    assert_eq!(leftover_qemus(&json), 0, "no QEMU left behind");
}

#[test]
fn retries_mark_flaky_checks_and_timeouts_say_what_they_waited_for() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = out();
    let suite = o.path("suites/behaviour.toml");
    std::fs::create_dir_all(suite.parent().unwrap()).unwrap();
    std::fs::write(
        &suite,
        r#"name = "behaviour"
[[check]]
name = "flaky"
description = "Fails the first time, passes the second."
run = "if [ -e /run/ng-flaky ]; then echo second; else touch /run/ng-flaky; echo first; exit 3; fi"
expect = { stdout = "second" }

[[check]]
name = "slow"
description = "Never finishes in time."
timeout = "3s"
run = "sleep 30"

[[check]]
name = "wrong"
description = "Prints the wrong thing every time."
run = "echo ${manifest.components.kubelet}"
expect = { stdout = "v0.0.0" }
"#,
    )
    .unwrap();
    let mut args = o.args();
    args.extend([
        "--suites".into(),
        suite.display().to_string(),
        "--retries".into(),
        "1".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = common::run(&args, o.dir.path());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("test behaviour::flaky ... FLAKY (passed on attempt 2)"),
        "{}",
        r.stdout
    );

    let json = o.json();
    let check = |name: &str| check_in(&json, "name", name);
    assert_eq!(check("flaky")["status"], "flaky");
    assert_eq!(check("flaky")["attempts"].as_array().unwrap().len(), 2);
    let slow = check("slow");
    assert_eq!(slow["status"], "failed");
    assert!(
        slow["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 3s waiting for"),
        "{slow}"
    );
    assert!(
        slow["duration_secs"].as_f64().unwrap() < 20.0,
        "both attempts bounded: {slow}"
    );
    let wrong = check("wrong");
    assert_eq!(wrong["expected"], "v0.0.0");
    assert_eq!(wrong["actual"], "v1.20.2");
    assert_eq!(json["summary"]["flaky"], 1);
    assert_eq!(json["summary"]["failed"], 2);
    // No join was needed: no control plane phase.
    assert!(json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["name"] != "join"));

    let junit = o.junit();
    let cases = &junit.test_suites[0].test_cases;
    let case = |n: &str| cases.iter().find(|c| c.name.as_str() == n).unwrap();
    match &case("flaky").status {
        TestCaseStatus::Success { flaky_runs } => assert_eq!(flaky_runs.len(), 1),
        other => panic!("flaky should be a success with a flaky run: {other:?}"),
    }
    match &case("wrong").status {
        TestCaseStatus::NonSuccess {
            message, reruns, ..
        } => {
            let m = message.as_ref().unwrap().to_string();
            assert!(m.contains("(expected v0.0.0, found v1.20.2)"), "{m}");
            assert_eq!(reruns.runs.len(), 1, "the first attempt is a rerunFailure");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(leftover_qemus(&json), 0, "no QEMU left behind");
}

/// Interrupts (then kills) the run if the test fails before it does.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn ctrl_c_during_boot_writes_a_partial_report_and_leaves_nothing_running() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = out();
    let mut args = o.args();
    args.extend([
        "--suites".into(),
        common::repo("suites"),
        "--control-plane".into(),
        "local".into(),
        "--upgrade-bundle".into(),
        bundle("bundle-v2"),
    ]);
    let child = KillOnDrop(Some(
        common::nodegate()
            .args(&args)
            .current_dir(o.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Wait until the report shows the boot phase under way and its QEMU runs.
    let t = Instant::now();
    loop {
        let report = std::fs::read_to_string(o.path("report.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if report.as_ref().is_some_and(|r| leftover_qemus(r) > 0) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the run never reached the boot"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut child = child;
    let c = child.0.take().unwrap();
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let output = c.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    let json = o.json();
    assert_eq!(json["verdict"], "interrupted");
    assert_eq!(json["stop"]["kind"], "interrupted");
    // The pre-boot checks (tag `pre-boot`) ran and passed; nothing else finished.
    let pre_boot = common::ok(
        &[
            "run",
            "--list",
            "--suites",
            &common::repo("suites"),
            "--tag",
            "pre-boot",
        ],
        Path::new("."),
    );
    let pre_boot: Vec<&str> = pre_boot
        .stdout
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    assert!(pre_boot.len() >= 5, "{pre_boot:?}");
    for id in &pre_boot {
        assert_eq!(check_in(&json, "id", id)["status"], "passed", "{id}");
    }
    assert_eq!(
        json["summary"]["passed"],
        pre_boot.len(),
        "the pre-boot checks ran"
    );
    assert!(json["summary"]["not_run"].as_u64().unwrap() > 10);
    let junit = o.junit();
    assert!(junit.skipped > 10);
    assert_eq!(leftover_qemus(&json), 0, "no QEMU left behind");
}

/// An unsigned manifest (kernel, initrd, cmdline, disk) for a test bed layout, made in a
/// temporary folder beside links to the layout's files (the test bed is never written:
/// the run boots an overlay).
fn unsigned_manifest(layout: &Path, dir: &Path) -> PathBuf {
    for f in ["root.qcow2", "vmlinuz", "initrd.img", "cmdline"] {
        // Hard links (manifest create refuses symlinks leaving the folder); copies across
        // file systems.
        if std::fs::hard_link(layout.join(f), dir.join(f)).is_err() {
            std::fs::copy(layout.join(f), dir.join(f)).unwrap();
        }
    }
    common::ok(&["keygen", "--out", "k"], dir);
    // The negative images come from the same build as v1: the same components.
    let v1 = common::testbed("signed", "v1-direct").join("v1-direct/node.manifest.json");
    let v1: serde_json::Value = serde_json::from_slice(&std::fs::read(v1).unwrap()).unwrap();
    let components: Vec<String> = v1["components"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(k, v)| ["--component".into(), format!("{k}={}", v.as_str().unwrap())])
        .collect();
    let mut args = vec![
        "manifest",
        "create",
        "--image",
        "root.qcow2",
        "--name",
        "negative",
        "--image-version",
        "1",
        "--key",
        "k.pub",
        "--artifact",
        "kernel=vmlinuz",
        "--artifact",
        "initrd=initrd.img",
        "--artifact",
        "cmdline=cmdline",
        "--out",
        "node.manifest.json",
    ];
    args.extend(components.iter().map(String::as_str));
    common::ok(&args, dir);
    dir.join("node.manifest.json")
}

#[test]
fn a_boot_failure_is_an_infrastructure_stop_with_the_console_kept() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let layout = common::testbed("image/neg/kernel-panic", "root.qcow2");
    let o = out();
    let manifest = unsigned_manifest(&layout, o.dir.path());
    let r = o.run_unsigned(
        &manifest,
        &common::repo("profiles/debian-fixture.toml"),
        &["--suite", "containerd"],
    );
    assert_eq!(r.code, 5, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    assert_eq!(json["verdict"], "error");
    assert_eq!(json["stop"]["kind"], "infrastructure");
    assert_eq!(json["stop"]["phase"], "boot");
    assert!(
        json["stop"]["reason"]
            .as_str()
            .unwrap()
            .contains("kernel panic"),
        "{json}"
    );
    assert_eq!(json["properties"]["image.allow_unsigned"], "true");
    assert_eq!(json["properties"]["image.signed"], "false");
    assert_eq!(json["summary"]["not_run"], json["summary"]["total"]);
    let console = o
        .path("artifacts")
        .read_dir()
        .unwrap()
        .flatten()
        .find_map(|e| {
            let p = e.path().join("console.log");
            p.is_file().then_some(p)
        });
    let console = console.expect("the console of the failed boot is kept");
    assert!(std::fs::read_to_string(console)
        .unwrap()
        .contains("Kernel panic"));
    assert_eq!(leftover_qemus(&json), 0, "no QEMU left behind");
}

#[test]
fn a_crash_looping_kubelet_fails_kubelet_node_ready_by_name() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let layout = common::testbed("image/neg/kubelet-crashloop", "root.qcow2");
    let o = out();
    let manifest = unsigned_manifest(&layout, o.dir.path());
    // The fixture profile with a shorter join budget (a healthy node joins in 30-55 s
    // under TCG): this node never will, and the test need not wait 600 s to show it.
    let profile = std::fs::read_to_string(common::repo("profiles/debian-fixture.toml")).unwrap();
    let short = profile.replace("join = \"600s\"", "join = \"120s\"");
    assert_ne!(short, profile, "the profile's join budget moved");
    std::fs::write(o.path("profile.toml"), short).unwrap();
    let r = o.run_unsigned(
        &manifest,
        "profile.toml",
        &["--suite", "kubelet", "--control-plane", "local"],
    );
    // An image fault: checks failed (1), not an infrastructure error (5).
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    assert_eq!(json["verdict"], "failed");
    assert_eq!(json["stop"]["kind"], "node");
    assert_eq!(json["stop"]["phase"], "join");
    let ready = check_in(&json, "id", "kubelet::node_ready");
    assert_eq!(ready["status"], "failed", "{ready}");
    let message = ready["message"].as_str().unwrap();
    eprintln!("kubelet::node_ready: {message}");
    for part in [
        "kubeadm join",
        "kubelet.service ",
        "unknown flag: --nodegate-broken-flag",
        "kubelet.log",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    // The guest checks ran before the join; the other node checks did not run, saying why.
    for id in [
        "kubelet::version",
        "kubelet::swap_off",
        "kubelet::no_baked_ssh_host_keys",
    ] {
        assert_eq!(check_in(&json, "id", id)["status"], "passed", "{id}");
    }
    for id in [
        "kubelet::healthz",
        "kubelet::pinned_pod_runs",
        "kubelet::recovers_from_kill",
    ] {
        let c = check_in(&json, "id", id);
        assert_eq!(c["status"], "not-run", "{id}");
        assert!(c["reason"].as_str().unwrap().starts_with("node: "), "{c}");
    }
    let junit = o.junit();
    let case = junit
        .test_suites
        .iter()
        .flat_map(|s| &s.test_cases)
        .find(|c| c.name.as_str() == "node_ready")
        .expect("node_ready in the JUnit");
    match &case.status {
        TestCaseStatus::NonSuccess { message, .. } => {
            assert!(message.as_ref().unwrap().as_str().contains("unknown flag"))
        }
        s => panic!("node_ready must fail in the JUnit: {s:?}"),
    }
    let kubelet_log = json["artifacts"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("/kubelet"))
        .map(|(_, v)| o.path(v.as_str().unwrap()))
        .expect("the kubelet's log is kept");
    assert!(std::fs::read_to_string(kubelet_log)
        .unwrap()
        .contains("unknown flag: --nodegate-broken-flag"));
    assert_eq!(leftover_qemus(&json), 0, "no QEMU left behind");
}

#[test]
fn injected_faults_fail_the_checks_that_look_for_them() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = out();
    let mut args = o.args();
    // The fault suite first: it runs before the real suites' guest checks on the same VM.
    // Checks that need a joined node (tag `node`) are skipped: no control plane needed.
    args.extend(
        [
            "--suites",
            &common::repo("tests/data/faults/break-guest.toml"),
            "--suites",
            &common::repo("suites"),
            "--skip-tag",
            "node",
            "--skip",
            "agent::heartbeats",
            "--skip",
            "agent::survives",
            "--skip",
            "agent::reconnects",
            "--skip",
            "agent::local_state_agrees",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = common::run(&args, o.dir.path());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    let status = |id: &str| {
        check_in(&json, "id", id)["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("fault::inject"), "passed");
    for id in [
        "containerd::service_active",
        "containerd::sandbox_image_present",
        "containerd::runs_a_container",
        "agent::service_active",
        "agent::local_state",
        "agent::registers",
        "integrity::guest_files",
        "integrity::containerd_executable",
        "kubelet::swap_off",
        "kubelet::sysctls",
    ] {
        assert_eq!(status(id), "failed", "{id} must catch the fault");
    }
    // What the faults do not touch still passes: the checks are specific.
    for id in [
        "containerd::version",
        "agent::version",
        "kubelet::version",
        "kubelet::kernel_modules",
    ] {
        assert_eq!(status(id), "passed", "{id}");
    }
    assert!(json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["name"] != "join"));
    // Failures collect the guest's logs.
    assert!(json["artifacts"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.ends_with("/containerd")));
    assert_eq!(leftover_qemus(&json), 0, "no QEMU left behind");
}

#[test]
fn a_tampered_bundle_is_refused_and_the_node_stays_on_v1() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = out();
    let mut args = o.args();
    args.extend([
        "--suites".into(),
        common::repo("suites"),
        "--suite".into(),
        "hot-upgrade".into(),
        "--control-plane".into(),
        "local".into(),
        "--upgrade-bundle".into(),
        bundle("neg/bundle-tampered"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = common::run(&args, o.dir.path());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    let check = |id: &str| check_in(&json, "id", id);
    let verified = check("hot-upgrade::bundle_verified");
    assert_eq!(verified["status"], "failed");
    assert!(
        verified["message"]
            .as_str()
            .unwrap()
            .contains("bundle refused"),
        "{verified}"
    );
    let in_place = check("hot-upgrade::in_place");
    assert_eq!(in_place["status"], "failed");
    let m = in_place["message"].as_str().unwrap();
    assert!(
        m.contains("nothing applied, the node stays on Kubernetes v1.20.2, nodegate-agent 1.0.0"),
        "{m}"
    );
    assert_eq!(leftover_qemus(&json), 0, "no QEMU left behind");
}
