//! `nodegate run` on the test bed beyond the full flow (tests/full_flow.rs): the agent
//! provisioned the other ways providers do it, the runner's retries, flaky marking and
//! timeouts against a real guest (a command killed by a signal, one that floods its
//! output), Ctrl-C in a long guest command (and twice), SIGKILL and the next nodegate's
//! clean-up, and the negative images and faults that each suite must catch (kernel panic,
//! initramfs and emergency shells, crash-looping kubelet, a kubelet that never serves
//! after a restart, injected faults). A degraded guest is the vendor image's failed-unit
//! copy (tests/vendor_image.rs). Needs the test bed (`fixtures/build`); VM tests are
//! serialized because the machine has 2 cores.
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::check_in;
use quick_junit::{Report, TestCaseStatus};

static VM: Mutex<()> = Mutex::new(());

struct Out {
    dir: tempfile::TempDir,
}

impl Out {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn args(&self) -> Vec<String> {
        let mut args = common::v1_run_args();
        args.extend([
            "--junit".into(),
            self.path("junit.xml").display().to_string(),
            "--json".into(),
            self.path("report.json").display().to_string(),
            "--artifacts".into(),
            self.path("artifacts").display().to_string(),
            "--accel".into(),
            "tcg".into(),
        ]);
        args
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
        ];
        args.extend_from_slice(&common::TCG_REPORTS);
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

fn out() -> Out {
    Out {
        dir: tempfile::tempdir().unwrap(),
    }
}

/// The fixture profile with the agent provisioned another way providers do it (`[agent]
/// provision`), written into `o`'s folder; its path.
fn profile_provisioning(o: &Out, mode: &str) -> String {
    let fixture = std::fs::read_to_string(common::repo("profiles/debian-fixture.toml")).unwrap();
    let profile = fixture.replace(
        "\n[agent]\n",
        &format!("\n[agent]\nprovision = \"{mode}\"\n"),
    );
    assert_ne!(profile, fixture, "the fixture profile has no [agent] table");
    let path = o.path("profile.toml");
    std::fs::write(&path, profile).unwrap();
    path.display().to_string()
}

/// The agent, provisioned as `mode` says, registered and heartbeats; the registration's
/// transcript `says` how it was configured.
fn assert_agent_provisioned(json: &serde_json::Value, mode: &str, says: &str) {
    for id in [
        "agent::registers",
        "agent::heartbeats_at_interval",
        "agent::local_state_agrees",
    ] {
        let c = check_in(json, "id", id);
        assert_eq!(c["status"], "passed", "{mode}: {c}");
    }
    let registers = check_in(json, "id", "agent::registers");
    let transcript = registers["attempts"][0]["output"].as_str().unwrap();
    assert!(transcript.contains(says), "{mode}: {transcript}");
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
timeout = "10s"
run = "sleep 600"

[[check]]
name = "killed"
description = "Killed by a signal: it has no exit status, so no status 0."
sudo = false
run = "kill -KILL $$"

[[check]]
name = "flood"
description = "Prints more than nodegate keeps."
run = "head -c 20000000 /dev/zero"

[[check]]
name = "wrong"
description = "Prints the wrong thing every time."
run = "echo ${manifest.components.kubelet}"
expect = { stdout = "v0.0.0" }

[[check]]
name = "own_node"
description = "Destructive: checks failed on the run's node, so this one gets a VM of its own, booted ahead."
destructive = true
run = "true"
"#,
    )
    .unwrap();
    // On QEMU's user-mode network (forced): the fallback carries guest checks as before,
    // and the agent's (written, then its unit restarted: it reads its config at start).
    let mut args = o.args();
    let at = args.iter().position(|a| a == "--profile").unwrap() + 1;
    args[at] = profile_provisioning(&o, "write-restart");
    args.extend([
        "--suites".into(),
        suite.display().to_string(),
        "--suites".into(),
        common::repo("suites/agent.toml"),
        "--skip-tag".into(),
        "fault".into(),
        "--retries".into(),
        "1".into(),
        "--network".into(),
        "user".into(),
        // Two cores do not boot ahead by default (slower there).
        "--boot-ahead".into(),
        "on".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = common::run(&args, o.dir.path());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(o.json()["properties"]["network"], "user");
    // A destructive check takes the run's node once no other check needs it, unless a
    // check failed there: then its own VM, booted ahead from the first failure on.
    let json = o.json();
    let own = check_in(&json, "id", "behaviour::own_node");
    assert_eq!(own["status"], "passed", "{own}");
    let node = own["node"].as_str().unwrap();
    assert_eq!(json["nodes"][node]["role"], "fresh", "{}", json["nodes"]);
    assert_eq!(
        json["nodes"][node]["boot.ahead"], "true",
        "{}",
        json["nodes"]
    );
    let shared = check_in(&json, "id", "behaviour::flaky")["node"].clone();
    assert_ne!(shared.as_str(), Some(node));
    assert!(json["nodes"][shared.as_str().unwrap()]["reused"].is_null());
    assert_agent_provisioned(&o.json(), "write-restart", "restart nodegate-agent.service");
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
            .contains("timed out after 10s waiting for"),
        "{slow}"
    );
    // A timeout is a timeout: each attempt ends within its 10 s and the 2 s close
    // grace (before, closing the abandoned channel waited another full timeout).
    assert!(
        slow["duration_secs"].as_f64().unwrap() < 30.0,
        "both attempts bounded: {slow}"
    );
    let killed = check("killed");
    assert_eq!(killed["status"], "failed", "{killed}");
    assert!(
        killed["message"]
            .as_str()
            .unwrap()
            .contains("killed by signal SIGKILL"),
        "{killed}"
    );
    let flood = check("flood");
    assert_eq!(flood["status"], "failed", "{flood}");
    assert!(
        flood["message"].as_str().unwrap().contains("bytes dropped"),
        "{flood}"
    );
    let wrong = check("wrong");
    assert_eq!(wrong["expected"], "v0.0.0");
    assert_eq!(wrong["actual"], "v1.20.2");
    assert_eq!(json["summary"]["flaky"], 1);
    assert_eq!(json["summary"]["failed"], 4);
    // No join was needed: no control plane phase.
    assert!(json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["name"] != "join"));

    let junit = o.junit();
    let cases = &junit
        .test_suites
        .iter()
        .find(|s| s.name.as_str() == "behaviour")
        .unwrap()
        .test_cases;
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
    let xml = std::fs::read_to_string(o.path("junit.xml")).unwrap();
    common::junit_rules::assert_strict("a run with flaky and failed checks", &xml);
    // The page of this failing run, as Chromium renders it.
    let page = common::browser::render(&o.path("report.html"));
    assert_eq!(page.verdict(), "failed");
    let (status, message) = page.check("behaviour::wrong");
    assert_eq!(status, "failed");
    assert_eq!(message, wrong["message"].as_str().unwrap());
    assert!(
        page.dom.contains(">v0.0.0<") && page.dom.contains(">v1.20.2<"),
        "expected and actual"
    );
    assert_eq!(page.check("behaviour::flaky").0, "flaky");
    let rows = page.timeline();
    let node = check("flaky")["node"].as_str().unwrap().to_string();
    let (_, kinds) = rows
        .iter()
        .find(|(n, _)| *n == node)
        .unwrap_or_else(|| panic!("no timeline row for {node}: {rows:?}"));
    for k in ["boot", "check", "teardown"] {
        assert!(
            kinds.iter().any(|x| x == k),
            "{node}'s row lacks {k}: {kinds:?}"
        );
    }
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
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

/// The run folder nodegate made under `state` (`NODEGATE_STATE`), once it exists.
fn run_folder(state: &Path) -> Option<PathBuf> {
    std::fs::read_dir(state)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
        })
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The report at `path`, once it parses.
fn report_at(path: &Path) -> Option<serde_json::Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// Whether the report's last phase named `name` has finished.
fn phase_done(report: &serde_json::Value, name: &str) -> bool {
    report["phases"].as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["name"] == name && p["duration_secs"].is_number())
    })
}

#[test]
fn ctrl_c_during_a_long_guest_command_ends_the_run_within_10_s() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = out();
    let state = tempfile::tempdir().unwrap();
    let mut args = o.args();
    args.extend([
        "--suites".into(),
        common::repo("tests/data/hang.toml"),
        "--suites".into(),
        common::repo("suites"),
        "--suite".into(),
        "hang,integrity".into(),
        "--boot-ahead".into(),
        "on".into(),
    ]);
    let child = KillOnDrop(Some(
        common::nodegate()
            .args(&args)
            .current_dir(o.dir.path())
            .env("NODEGATE_STATE", state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // While it boots: the run's folder and what holds secrets are private from the
    // first byte, and QEMU boots the verified copies in that folder, not the originals.
    let t = Instant::now();
    let (run, vm) = loop {
        let vm = run_folder(state.path()).and_then(|run| {
            let vm = std::fs::read_dir(&run)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vm-"))
                })?;
            vm.join("qmp.sock").exists().then_some((run, vm))
        });
        if let Some(v) = vm {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the run never booted"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(mode(&run), 0o700);
    for f in ["seed.img", "id_ed25519"] {
        assert_eq!(mode(&vm.join(f)), 0o600, "{f}");
    }
    let qemu = common::qemu_pids_with(&vm.display().to_string());
    assert_eq!(qemu.len(), 1, "one QEMU for the run's VM");
    let argv = std::fs::read(format!("/proc/{}/cmdline", qemu[0])).unwrap();
    let argv: Vec<String> = argv
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let kernel = &argv[argv.iter().position(|a| a == "-kernel").unwrap() + 1];
    assert!(
        kernel.starts_with(&run.join("verified").display().to_string()),
        "QEMU boots {kernel}, not the verified copy"
    );
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(vm.join("overlay.qcow2"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let backing = info["backing-filename"].as_str().unwrap();
    assert!(backing.starts_with(&run.display().to_string()), "{backing}");
    assert_eq!(info["backing-filename-format"], "qcow2");

    // Then the checks: hang::sleeps runs `sleep 600`; interrupt it after a few seconds.
    let t = Instant::now();
    while report_at(&o.path("report.json")).is_none_or(|r| !phase_done(&r, "boot")) {
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "the boot never finished"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let mut child = child;
    let c = child.0.take().unwrap();
    let sent = Instant::now();
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let output = c.wait_with_output().unwrap();
    let took = sent.elapsed();
    eprintln!("Ctrl-C during `sleep 600`: the run ended after {took:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(
        took < Duration::from_secs(10),
        "Ctrl-C took {took:?} to end the run (teardown included)"
    );
    let json = o.json();
    assert_eq!(json["verdict"], "interrupted");
    assert_eq!(json["stop"]["kind"], "interrupted");
    let hang = check_in(&json, "id", "hang::sleeps");
    assert_eq!(hang["status"], "not-run", "{hang}");
    // The second destructive check's VM was booting ahead (the first would have taken the
    // run's node): killed with the run, and its boot phase says so.
    for id in ["hang::after", "hang::after_too"] {
        assert_eq!(check_in(&json, "id", id)["status"], "not-run", "{id}");
    }
    let boots: Vec<&serde_json::Value> = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "boot")
        .collect();
    assert_eq!(boots.len(), 2, "{boots:?}");
    let why = boots[1]["error"].as_str().unwrap_or_default();
    assert!(why.contains("no check took this VM booted ahead"), "{why}");
    // The pre-boot checks ran and passed.
    for id in [
        "integrity::signature",
        "integrity::artifact_digests",
        "integrity::no_rollback",
    ] {
        assert_eq!(check_in(&json, "id", id)["status"], "passed", "{id}");
    }
    // A JUnit reader sees a run that did not finish.
    assert_eq!(
        common::run_error(&o.path("junit.xml")).as_deref(),
        Some("interrupted")
    );
    assert!(common::junit_skipped(&o.junit()) > 0);
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
    assert!(
        run_folder(state.path()).is_none(),
        "the run's folder is removed"
    );

    // A second Ctrl-C escalates: teardown waits for nothing, and still leaves nothing.
    let o = out();
    let child = common::nodegate()
        .args(o.args())
        .args(["--suites", &common::repo("suites"), "--suite", "integrity"])
        .current_dir(o.dir.path())
        .env("NODEGATE_STATE", state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while report_at(&o.path("report.json")).is_none_or(|r| common::leftover_qemus(&r) == 0) {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the run never booted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(100));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    eprintln!(
        "Ctrl-C twice during the boot: the run ended after {:?}",
        sent.elapsed()
    );
    assert_eq!(output.status.code(), Some(130));
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(common::leftover_qemus(&o.json()), 0, "no QEMU left behind");
    assert_eq!(o.json()["verdict"], "interrupted");
    assert!(
        run_folder(state.path()).is_none(),
        "the run's folder is removed"
    );
}

/// An unsigned manifest (kernel, initrd, cmdline, disk) for a test bed layout, made in a
/// temporary folder beside links to the layout's files (the test bed is never written:
/// the run boots an overlay).
fn unsigned_manifest(layout: &Path, dir: &Path) -> PathBuf {
    unsigned_manifest_with(layout, dir, "")
}

/// Like [`unsigned_manifest`], with `extra` appended to the layout's kernel command line.
fn unsigned_manifest_with(layout: &Path, dir: &Path, extra: &str) -> PathBuf {
    let cmdline = std::fs::read_to_string(layout.join("cmdline")).unwrap();
    std::fs::write(dir.join("cmdline"), format!("{} {extra}\n", cmdline.trim())).unwrap();
    for f in ["root.qcow2", "vmlinuz", "initrd.img"] {
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
    // ...and the same binaries: the digests of the files the manifest lists.
    let files = common::testbed("image", "guest-files.sha256").join("guest-files.sha256");
    let mut args = vec![
        "manifest",
        "create",
        "--guest-files",
        files.to_str().unwrap(),
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

/// Runs only `kubelet::boots` on `manifest` (unsigned) and asserts an image fault whose
/// failing check quotes `quote` from the console, found within `within` of the boot's
/// start (the SSH budget is 600 s). Returns the report.
fn boot_fault(o: &Out, manifest: &Path, quote: &str, within: Duration) -> serde_json::Value {
    let r = o.run_unsigned(
        manifest,
        &common::repo("profiles/debian-fixture.toml"),
        &["--exact", "kubelet::boots"],
    );
    assert_eq!(r.code, 1, "an image fault: {}{}", r.stdout, r.stderr);
    let json = o.json();
    assert_eq!(json["verdict"], "failed");
    assert_eq!(json["stop"]["kind"], "image", "{json}");
    assert_eq!(json["stop"]["phase"], "boot");
    let boots = check_in(&json, "id", "kubelet::boots");
    assert_eq!(boots["status"], "failed", "{boots}");
    let message = boots["message"].as_str().unwrap();
    eprintln!("kubelet::boots: {message}");
    assert!(message.contains(quote), "{quote:?} not in {message}");
    assert!(message.contains("console line"), "{message}");
    let boot = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "boot")
        .unwrap();
    let secs = boot["duration_secs"].as_f64().unwrap();
    eprintln!("{quote:?} found {secs:.1}s into the boot");
    assert!(
        secs < within.as_secs_f64(),
        "found after {secs:.0}s, not as it happened"
    );
    assert_eq!(
        common::run_error(&o.path("junit.xml")).as_deref(),
        Some("image")
    );
    let console = json["artifacts"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("/console"))
        .map(|(_, v)| o.path(v.as_str().unwrap()))
        .expect("the console of the failed boot is kept");
    assert!(std::fs::read_to_string(console).unwrap().contains(quote));
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
    json
}

#[test]
fn an_image_that_cannot_boot_is_an_image_fault_quoting_the_console() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    // A kernel that panics.
    let o = out();
    let layout = common::testbed("image/neg/kernel-panic", "root.qcow2");
    let manifest = unsigned_manifest(&layout, o.dir.path());
    let json = boot_fault(&o, &manifest, "Kernel panic", Duration::from_secs(120));
    assert_eq!(json["properties"]["image.allow_unsigned"], "true");
    assert_eq!(json["properties"]["image.signed"], "false");

    let v1 = common::testbed("image/direct", "root.qcow2");
    // A root device that does not exist: the initramfs gives up and offers its shell.
    let o = out();
    let manifest = unsigned_manifest_with(&v1, o.dir.path(), "root=/dev/vdz rootdelay=3");
    boot_fault(&o, &manifest, "(initramfs)", Duration::from_secs(180));
    // systemd's emergency mode, with root locked (as cloud images have it).
    let o = out();
    let manifest = unsigned_manifest_with(&v1, o.dir.path(), "systemd.unit=emergency.target");
    boot_fault(&o, &manifest, "emergency", Duration::from_secs(240));
}

#[test]
fn a_restarted_kubelet_that_never_serves_fails_recovers_from_kill() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = out();
    let layout = common::testbed("image/neg/kubelet-stuck-restart", "root.qcow2");
    let manifest = unsigned_manifest(&layout, o.dir.path());
    let r = o.run_unsigned(
        &manifest,
        &common::repo("profiles/debian-fixture.toml"),
        &[
            "--suites",
            &common::repo("tests/data/kubelet-recovery.toml"),
            "--suite",
            "recovery",
            "--control-plane",
            "local",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    let c = check_in(&json, "id", "recovery::kubelet_serves_after_kill");
    assert_eq!(c["status"], "failed", "{c}");
    let m = c["message"].as_str().unwrap();
    // A new, active PID: the old check passed here. The Lease says it does not serve.
    assert!(m.contains("runs but does not serve the API server"), "{m}");
    let out = c["attempts"][0]["output"].as_str().unwrap();
    assert!(
        out.contains("killed, PID") && out.contains("active after"),
        "{out}"
    );
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
}

#[test]
fn sigkill_mid_boot_leaves_only_files_the_next_nodegate_removes() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = out();
    let state = tempfile::tempdir().unwrap();
    let mut args = o.args();
    args.extend([
        "--suites".into(),
        common::repo("suites"),
        // The agent suite shapes a link: its node is plugged into vde2's emulator.
        "--suite".into(),
        "kubelet,agent".into(),
        "--control-plane".into(),
        "local".into(),
    ]);
    let host_before = common::host_network();
    let mut child = common::nodegate()
        .args(&args)
        .current_dir(o.dir.path())
        .env("NODEGATE_STATE", state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while report_at(&o.path("report.json")).is_none_or(|r| common::leftover_qemus(&r) == 0) {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the run never booted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // 30 s into the boot, as the issue tried it.
    std::thread::sleep(Duration::from_secs(30));
    let report = o.json();
    assert_eq!(report["properties"]["network"], "bridge", "{report}");
    // The run's namespace, as nodegate holds it (a descriptor, no name).
    let ns = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .find_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .expect("nodegate holds the run's namespace");
    assert!(
        common::holders(ns).len() > 1,
        "QEMU, dnsmasq and the control plane live in it"
    );
    let needle = state.path().display().to_string();
    for emulator in ["vde_switch", "wirefilter"] {
        assert!(
            processes_with(emulator, &needle) > 0,
            "the node's link goes through {emulator}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Its processes die with it: QEMU, dnsmasq, the link emulator and the control plane
    // (they carry the state dir); then nothing holds the namespace, and the host's
    // network is as it was.
    let t = Instant::now();
    loop {
        let left = common::leftover_qemus(&report)
            + [
                "dnsmasq",
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ]
            .iter()
            .chain(&["vde_switch", "wirefilter"])
            .map(|c| processes_with(c, &needle))
            .sum::<usize>();
        if left == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{left} processes outlived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    while !common::holders(ns).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the run's namespace is still held after SIGKILL: {:?}",
            common::holders(ns)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        common::host_network(),
        host_before,
        "no link, address, route or named namespace left on the host"
    );
    // Files remain (nothing can remove them at SIGKILL): the control plane's keys...
    let run = run_folder(state.path()).expect("the killed run's folder");
    assert!(run.join("control-plane/pki/ca.key").is_file());
    assert_eq!(o.json()["verdict"], "running");
    // ...until the next nodegate finds them.
    let out = common::nodegate()
        .arg("doctor")
        .env("NODEGATE_STATE", state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("removed the folder of a killed nodegate run"),
        "{stdout}"
    );
    assert!(!run.exists(), "doctor removed the killed run's folder");
    let json = o.json();
    assert_eq!(json["verdict"], "killed");
    assert_eq!(json["stop"]["kind"], "killed");
    assert_eq!(
        common::run_error(&o.path("junit.xml")).as_deref(),
        Some("killed")
    );
}

/// Processes named `name` whose command line mentions `needle`.
fn processes_with(name: &str, needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.split(' ').next().is_some_and(|p| p.ends_with(name)) && c.contains(needle))
        .count()
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
    let short = profile.replace("join = \"600s\"", "join = \"90s\"");
    assert_ne!(short, profile, "the profile's join budget moved");
    std::fs::write(o.path("profile.toml"), short).unwrap();
    // kind and docker on PATH (stand-ins that answer nothing a kind would): `auto` probes
    // kind, keeps to the local control plane, and says why.
    let bin = o.path("stub-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["kind", "docker"] {
        let p = bin.join(tool);
        std::fs::write(
            &p,
            "#!/bin/sh\necho \"$0 $*\" >> \"$(dirname \"$0\")/calls\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let suites = common::repo("suites");
    let r = {
        let out = common::nodegate()
            .args([
                "run",
                "--manifest",
                manifest.to_str().unwrap(),
                "--allow-unsigned",
                "--profile",
                "profile.toml",
                "--suites",
                &suites,
            ])
            .args(common::TCG_REPORTS)
            .args([
                "--suite",
                "kubelet",
                "--control-plane",
                "auto",
                // The user-mode fallback's join path (the others run on the bridge).
                "--network",
                "user",
            ])
            .current_dir(o.dir.path())
            .env("PATH", path)
            .output()
            .unwrap();
        common::Run {
            code: out.status.code().unwrap(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    // An image fault: checks failed (1), not an infrastructure error (5).
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    assert_eq!(json["properties"]["control_plane"], "local");
    assert_eq!(json["properties"]["network"], "user");
    // After the node's stop: not run (the stop's reason, which came first).
    let c = check_in(&json, "id", "kubelet::kubectl_reaches_pod");
    assert_eq!(c["status"], "not-run", "{c}");
    let why = json["properties"]["control_plane.reason"].as_str().unwrap();
    assert!(why.starts_with("auto: local (kind probe: "), "{why}");
    assert!(why.contains("is not supported"), "{why}");
    let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
    assert!(calls.ends_with("kind version\n"), "{calls}");
    assert!(!calls.contains("create"), "{calls}");
    assert_eq!(json["verdict"], "failed");
    assert_eq!(json["stop"]["kind"], "node");
    assert_eq!(json["stop"]["phase"], "join");
    assert_eq!(
        common::run_error(&o.path("junit.xml")).as_deref(),
        Some("node")
    );
    // A budget is a budget: the join of 90 s ends within it and a small grace (log
    // collection included), not three times over.
    let join = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "join")
        .unwrap()["duration_secs"]
        .as_f64()
        .unwrap();
    assert!(join < 150.0, "a 90 s join budget took {join:.0}s");
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
        "kubelet::boots",
        "kubelet::no_failed_units",
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
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
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
        "containerd::runc_version",
        "kubelet::swap_off",
        "kubelet::sysctls",
    ] {
        assert_eq!(status(id), "failed", "{id} must catch the fault");
    }
    // What relies on the registration fails at once naming it, instead of waiting out
    // its own budget; what cannot run here at all stays not run with its reason.
    for id in [
        "agent::heartbeats_at_interval",
        "agent::survives_link_cut",
        "agent::reconnects_after_endpoint_restart",
        "agent::local_state_agrees",
    ] {
        let c = check_in(&json, "id", id);
        assert_eq!(c["status"], "failed", "{id}: {c}");
        let message = c["message"].as_str().unwrap();
        assert!(
            message.starts_with("not tried: it requires agent::registers, which failed: "),
            "{id}: {message}"
        );
        assert!(
            c["duration_secs"].as_f64().is_some_and(|d| d < 1.0),
            "{id} waited: {c}"
        );
    }
    // The altered runc no longer has the manifest's digest: its version is not believed.
    let runc = check_in(&json, "id", "containerd::runc_version");
    assert!(
        runc["message"]
            .as_str()
            .unwrap()
            .contains("is not the binary the manifest lists"),
        "{runc}"
    );
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
    let xml = std::fs::read_to_string(o.path("junit.xml")).unwrap();
    common::junit_rules::assert_strict("a run whose checks caught injected faults", &xml);
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
}
