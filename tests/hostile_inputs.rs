//! Hostile vendor inputs, without a VM: disk images that reference host files, a disk
//! with nothing to boot, a kernel command line that is not one line, profiles whose
//! values would reach QEMU or a shell, a missing rollback floor, a bundle that says
//! nothing to expect, the verified bytes changed after verification, a closed stdout,
//! option combinations that make no run, and a killed run's leftovers. Each is one line
//! on stderr (or a failing check), a documented exit code, and nothing started. The
//! table in docs/hostile-inputs.md lists every case and its test.

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;

use common::SignedImage;

fn qemu_img(args: &[&str], dir: &Path) {
    common::tool("qemu-img", args, dir);
}

/// A signed image whose disk is `make`'s file (written in the image's folder as
/// `node.qcow2`), with the manifest's format, size and digest edited to match and
/// re-signed: only the disk's content is under test.
fn signed_with_disk(make: impl FnOnce(&Path), format: &str) -> SignedImage {
    let img = SignedImage::new(SignedImage::MIB);
    make(img.dir.path());
    let disk = img.path("node.qcow2");
    let d = nodegate::image::digest::sha256_file(&disk).unwrap();
    img.edit_and_resign(|m| {
        m["artifacts"][0]["format"] = format.into();
        m["artifacts"][0]["size"] = d.size.into();
        m["artifacts"][0]["sha256"] = d.sha256.clone().into();
    });
    img
}

/// A qcow2 whose backing file is a host file, replacing `node.qcow2` in `dir`.
fn backed_by_host_file(dir: &Path) {
    fs::remove_file(dir.join("node.qcow2")).unwrap();
    backed_by_host_file_in(dir);
}

/// `nodegate run` of `img` with the test bed profile and suites.
fn run(img: &SignedImage, extra: &[&str]) -> common::Run {
    let (suites, profile) = (
        common::repo("suites"),
        common::repo("profiles/debian-fixture.toml"),
    );
    let mut args = vec![
        "run",
        "--manifest",
        "node.manifest.json",
        "--trust",
        "trust",
        "--profile",
        &profile,
        "--suites",
        &suites,
        "--json",
        "report.json",
        "--junit",
        "junit.xml",
        "--accel",
        "tcg",
    ];
    args.extend(extra);
    common::run(&args, img.dir.path())
}

fn json(img: &SignedImage) -> serde_json::Value {
    serde_json::from_slice(&fs::read(img.path("report.json")).unwrap()).unwrap()
}

fn check(json: &serde_json::Value, id: &str) -> serde_json::Value {
    common::check_of(json, id).clone()
}

#[test]
fn a_qcow2_with_a_backing_file_is_refused_everywhere() {
    // manifest create will not describe it.
    let d = tempfile::tempdir().unwrap();
    backed_by_host_file_in(d.path());
    common::ok(&["keygen", "--out", "k"], d.path());
    let r = common::run(
        &[
            "manifest",
            "create",
            "--image",
            "node.qcow2",
            "--name",
            "x",
            "--image-version",
            "1",
            "--key",
            "k.pub",
        ],
        d.path(),
    );
    common::assert_refused(
        &r,
        3,
        "node.qcow2",
        "references backing file \"/etc/hostname\"",
    );
    assert!(!d.path().join("node.manifest.json").exists());

    // A signed manifest of it does not verify.
    let img = signed_with_disk(backed_by_host_file, "qcow2");
    let r = img.verify(&[]);
    common::assert_refused(&r, 4, "node.qcow2", "backing file \"/etc/hostname\"");

    // A run refuses it before anything starts: integrity::disk_format fails by name.
    let r = run(&img, &["--suite", "integrity"]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let j = json(&img);
    let c = check(&j, "integrity::disk_format");
    assert_eq!(c["status"], "failed");
    assert!(
        c["message"].as_str().unwrap().contains("/etc/hostname"),
        "{c}"
    );
    assert_eq!(check(&j, "integrity::artifact_digests")["status"], "passed");
    assert!(j["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["name"] != "boot"));

    // boot refuses it too.
    let r = common::run(&["boot", "node.qcow2", "--accel", "tcg"], img.dir.path());
    common::assert_refused(&r, 4, "node.qcow2", "backing file \"/etc/hostname\"");
}

/// A qcow2 whose backing file is a host file, as `node.qcow2` in `dir`.
fn backed_by_host_file_in(dir: &Path) {
    qemu_img(
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/hostname",
            "node.qcow2",
            "1M",
        ],
        dir,
    );
}

#[test]
fn a_qcow2_with_an_external_data_file_or_the_wrong_format_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let target = data.path().join("host.raw");
    let img = signed_with_disk(
        |dir| {
            fs::remove_file(dir.join("node.qcow2")).unwrap();
            let opt = format!("data_file={},data_file_raw=on", target.display());
            qemu_img(
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    &opt,
                    "node.qcow2",
                    "1M",
                ],
                dir,
            );
        },
        "qcow2",
    );
    let r = img.verify(&[]);
    common::assert_refused(&r, 4, "node.qcow2", "external data file");
    assert!(
        r.stderr.contains(&target.display().to_string()),
        "{}",
        r.stderr
    );

    // A self-contained qcow2 the manifest calls raw is refused as the wrong format.
    let img = signed_with_disk(
        |dir| {
            fs::remove_file(dir.join("node.qcow2")).unwrap();
            qemu_img(&["create", "-q", "-f", "qcow2", "node.qcow2", "1M"], dir);
        },
        "raw",
    );
    let r = img.verify(&[]);
    common::assert_refused(
        &r,
        4,
        "node.qcow2",
        "the manifest says raw, but the file is qcow2",
    );
    let r = common::run(
        &["boot", "node.qcow2", "--format", "raw", "--accel", "tcg"],
        img.dir.path(),
    );
    common::assert_refused(
        &r,
        3,
        "node.qcow2",
        "the manifest says raw, but the file is qcow2",
    );
}

#[test]
fn a_verified_disk_with_nothing_to_boot_is_an_image_fault_found_before_any_control_plane() {
    let img = signed_with_disk(
        |dir| {
            let f = fs::File::create(dir.join("node.qcow2")).unwrap();
            f.set_len(8 << 20).unwrap();
        },
        "raw",
    );
    let r = run(
        &img,
        &["--control-plane", "local", "--exact", "kubelet::boots"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let j = json(&img);
    assert_eq!(j["stop"]["kind"], "image");
    let boots = check(&j, "kubelet::boots");
    assert_eq!(boots["status"], "failed");
    assert!(
        boots["message"]
            .as_str()
            .unwrap()
            .contains("nothing could boot from it"),
        "{boots}"
    );
    let phases = common::phase_names(&j);
    assert!(!phases.iter().any(|p| p == "control-plane"), "{phases:?}");
    assert_eq!(
        common::run_error(&img.path("junit.xml")).as_deref(),
        Some("image")
    );
}

#[test]
fn a_kernel_command_line_that_is_not_one_line_never_reaches_qemu() {
    let img = SignedImage::new(SignedImage::MIB);
    fs::write(img.path("vmlinuz"), b"kernel").unwrap();
    fs::write(img.path("cmdline"), b"console=ttyS0\ninit=/bin/sh\x07").unwrap();
    // The manifest again, with a kernel and that command line (signed: it verifies).
    let d = img.dir.path();
    common::ok(
        &[
            "manifest",
            "create",
            "--image",
            "node.qcow2",
            "--artifact",
            "kernel=vmlinuz",
            "--artifact",
            "cmdline=cmdline",
            "--name",
            "test-image",
            "--image-version",
            "5",
            "--key",
            "keys/release.pub",
            "-o",
            "node.manifest.json",
        ],
        d,
    );
    common::ok(
        &["sign", "--key", "keys/release.key", "node.manifest.json"],
        d,
    );
    let r = run(&img, &["--min-version", "5", "--exact", "kubelet::boots"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let j = json(&img);
    assert_eq!(j["stop"]["kind"], "image");
    let m = check(&j, "kubelet::boots")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains("must be one printable line"), "{m}");
    assert!(j["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["name"] != "boot"));
}

#[test]
fn profile_values_that_would_reach_qemu_or_a_shell_are_refused_with_file_line_and_key() {
    let img = SignedImage::new(SignedImage::MIB);
    let base = fs::read_to_string(common::repo("profiles/debian-fixture.toml")).unwrap();
    for (from, to, key) in [
        (
            "guest_addr = \"10.0.2.101\"",
            "guest_addr = \"10.0.2.101,guestfwd=tcp:10.0.2.9:1-cmd:touch /tmp/pwned\"",
            "agent.guest_addr",
        ),
        (
            "kubelet = \"kubelet.service\"",
            "kubelet = \"kubelet.service; reboot\"",
            "services.kubelet",
        ),
        (
            "user = \"nodegate\"",
            "user = \"nodegate\\n    sudo: ALL\"",
            "ssh.user",
        ),
        (
            "config_path = \"/etc/nodegate-agent/config.json\"",
            "config_path = \"/etc/../root/.ssh/authorized_keys\"",
            "agent.config_path",
        ),
        (
            "script = \"upgrade.sh\"",
            "script = \"../../bin/sh\"",
            "upgrade.script",
        ),
    ] {
        let hostile = base.replacen(from, to, 1);
        assert_ne!(hostile, base, "{from} not in the profile");
        fs::write(img.path("hostile.toml"), &hostile).unwrap();
        let r = common::run(
            &[
                "run",
                "--manifest",
                "node.manifest.json",
                "--trust",
                "trust",
                "--profile",
                "hostile.toml",
                "--suites",
                &common::repo("suites"),
            ],
            img.dir.path(),
        );
        let line_no = hostile
            .lines()
            .position(|l| l.starts_with(to.split('\n').next().unwrap()))
            .unwrap()
            + 1;
        common::assert_refused(&r, 3, &format!("hostile.toml:{line_no}:"), key);
        assert!(
            !img.path("nodegate-artifacts").exists(),
            "nothing started for {key}"
        );
    }
    assert!(!Path::new("/tmp/pwned").exists());
}

#[test]
fn without_a_rollback_floor_no_rollback_fails_and_the_trust_store_can_give_one() {
    let img = SignedImage::new(SignedImage::MIB);
    let pre_boot = ["--suite", "integrity", "--tag", "pre-boot"];
    let r = run(&img, &pre_boot);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let c = check(&json(&img), "integrity::no_rollback");
    assert_eq!(c["status"], "failed");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("rollback not judged"),
        "{c}"
    );
    // nodegate verify says so too, in its text and its JSON.
    let r = img.verify(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("  rollback not judged: no floor for test-image"),
        "{}",
        r.stdout
    );
    let r = img.verify(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["rollback"]["judged"], false, "{v}");
    fs::write(
        img.path("trust/released.toml"),
        "[released]\ntest-image = 5\n",
    )
    .unwrap();
    let r = run(&img, &pre_boot);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = img.verify(&[]);
    assert!(
        r.stdout.contains("  rollback version 5 >= 5 ("),
        "{}",
        r.stdout
    );
    fs::write(
        img.path("trust/released.toml"),
        "[released]\ntest-image = 6\n",
    )
    .unwrap();
    let r = run(&img, &pre_boot);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let c = check(&json(&img), "integrity::no_rollback");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("older than the minimum 6: rollback refused"),
        "{c}"
    );
    // nodegate verify uses the same floor.
    let r = img.verify(&[]);
    common::assert_refused(&r, 4, "node.manifest.json", "rollback refused");
    // A malformed floor file is bad input, named with its line.
    fs::write(
        img.path("trust/released.toml"),
        "[released]\ntest-image = \"six\"\n",
    )
    .unwrap();
    let r = img.verify(&[]);
    common::assert_refused(&r, 3, "released.toml:2:", "released.test-image");
}

#[test]
fn a_bundle_that_names_nothing_to_expect_fails_before_boot() {
    let img = SignedImage::new(SignedImage::MIB);
    let d = img.dir.path();
    fs::create_dir(d.join("bundle")).unwrap();
    fs::write(d.join("bundle/kubelet"), b"#!/bin/sh\n").unwrap();
    fs::write(d.join("bundle/upgrade.sh"), b"#!/bin/sh\n").unwrap();
    fs::write(
        img.path("trust/released.toml"),
        "[released]\ntest-image = 5\nb = 1\n",
    )
    .unwrap();
    for (extra, reason) in [
        (vec![], "lists no `kubelet` component"),
        (
            vec!["--component", "kubelet=v1.20.3"],
            "lists no digest for /usr/bin/kubelet",
        ),
    ] {
        let mut args = vec![
            "manifest",
            "create",
            "--artifact",
            "payload=kubelet",
            "--artifact",
            "payload=upgrade.sh",
            "--name",
            "b",
            "--image-version",
            "1",
            "--key",
            "../keys/release.pub",
            "-o",
            "bundle.manifest.json",
        ];
        args.extend(extra);
        common::ok(&args, &d.join("bundle"));
        common::ok(
            &[
                "sign",
                "--key",
                "../keys/release.key",
                "bundle.manifest.json",
            ],
            &d.join("bundle"),
        );
        let r = run(
            &img,
            &[
                "--suite",
                "hot-upgrade",
                "--tag",
                "pre-boot",
                "--upgrade-bundle",
                "bundle/bundle.manifest.json",
            ],
        );
        assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
        let c = check(&json(&img), "hot-upgrade::bundle_verified");
        assert!(
            c["message"].as_str().unwrap().contains(reason),
            "{reason}: {c}"
        );
    }
}

#[test]
fn what_is_verified_is_a_private_copy_the_original_cannot_change() {
    let img = SignedImage::new(4 * SignedImage::MIB);
    let trust = nodegate::image::keys::TrustStore::load(&img.path("trust")).unwrap();
    let snap = tempfile::tempdir().unwrap();
    let mut opts = nodegate::image::VerifyOptions::new(&trust);
    opts.snapshot = Some(snap.path());
    let v = nodegate::image::verify(&img.path("node.manifest.json"), &opts).unwrap();
    let disk = &v.artifacts[0];
    assert!(
        disk.path.starts_with(snap.path()),
        "{}",
        disk.path.display()
    );
    assert_eq!(disk.source, img.path("node.qcow2").canonicalize().unwrap());
    // The vendor's file changes after verification: the copy is what was verified.
    common::write_image(&img.path("node.qcow2"), 4 * SignedImage::MIB - 1);
    let now = nodegate::image::digest::sha256_file(&disk.path).unwrap();
    assert_eq!(now.sha256, disk.sha256);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&disk.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A disk given with --image is verified as the manifest's disk, in the same pass.
    let other = img.path("other.img");
    fs::write(&other, vec![7u8; 4 * SignedImage::MIB]).unwrap();
    let r = run(
        &img,
        &[
            "--image",
            "other.img",
            "--suite",
            "integrity",
            "--tag",
            "pre-boot",
            "--min-version",
            "5",
        ],
    );
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let c = check(&json(&img), "integrity::artifact_digests");
    assert!(c["message"].as_str().unwrap().contains("other.img"), "{c}");
}

#[test]
fn a_closed_stdout_is_not_a_panic_and_option_clashes_are_usage_errors() {
    // Big enough that hashing outlasts the moment the test closes the pipe.
    let img = SignedImage::new(64 * SignedImage::MIB);
    let mut child = common::nodegate()
        .args(["verify", "--trust", "trust", "node.manifest.json"])
        .current_dir(img.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    let r = common::run(
        &[
            "run",
            "--manifest",
            "node.manifest.json",
            "--trust",
            "trust",
            "--allow-unsigned",
            "--profile",
            &common::repo("profiles/debian-fixture.toml"),
        ],
        img.dir.path(),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--allow-unsigned") && r.stderr.contains("--trust"),
        "{}",
        r.stderr
    );

    let d = tempfile::tempdir().unwrap();
    fs::write(
        d.path().join("s.toml"),
        "name = \"nodegate\"\n[[check]]\nname = \"a\"\ndescription = \"d\"\nrun = \"true\"\n",
    )
    .unwrap();
    let r = common::run(
        &[
            "run",
            "--list",
            "--suites",
            d.path().join("s.toml").to_str().unwrap(),
        ],
        Path::new("."),
    );
    common::assert_refused(&r, 3, "s.toml", "reserved for the run's own testcase");
}

#[test]
fn a_killed_runs_folder_and_report_are_found_and_cleaned_by_doctor() {
    let state = tempfile::tempdir().unwrap();
    let dead = state.path().join("run-killed");
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("lock"), b"").unwrap();
    fs::write(dead.join("ca.key"), b"-----BEGIN PRIVATE KEY-----").unwrap();
    let reports = tempfile::tempdir().unwrap();
    // A report as a run leaves it mid-boot: running, and JUnit's run testcase unfinished.
    let img = SignedImage::new(SignedImage::MIB);
    let r = run(
        &img,
        &[
            "--suite",
            "integrity",
            "--tag",
            "pre-boot",
            "--min-version",
            "5",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let mut report = json(&img);
    report["verdict"] = "running".into();
    report["finished"] = serde_json::Value::Null;
    report["exit_code"] = serde_json::Value::Null;
    let json_path = reports.path().join("report.json");
    fs::write(&json_path, serde_json::to_vec(&report).unwrap()).unwrap();
    let running: nodegate::report::RunReport = serde_json::from_value(report).unwrap();
    let junit_path = reports.path().join("junit.xml");
    let xml = nodegate::report::junit::to_junit(&running)
        .to_string()
        .unwrap();
    fs::write(&junit_path, xml).unwrap();
    assert_eq!(
        common::run_error(&junit_path).as_deref(),
        Some("unfinished")
    );
    let record = serde_json::json!({
        "pid": 999999, "started": "2026-12-01T00:00:00Z", "command": "run",
        "json_report": json_path, "junit_report": junit_path, "remote": [],
    });
    fs::write(dead.join("run.json"), record.to_string()).unwrap();

    let out = common::nodegate()
        .arg("doctor")
        .env("NODEGATE_STATE", state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("removed the folder of a killed nodegate run (pid 999999)"),
        "{stdout}"
    );
    assert!(
        !dead.exists(),
        "the killed run's folder (with its keys) is gone"
    );
    let marked: serde_json::Value = serde_json::from_slice(&fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(common::run_error(&junit_path).as_deref(), Some("killed"));
    assert_eq!(marked["verdict"], "killed");
    assert_eq!(marked["stop"]["kind"], "killed");
    assert!(marked["stop"]["reason"]
        .as_str()
        .unwrap()
        .contains("pid 999999"));
}

#[test]
fn a_control_plane_that_cannot_start_is_an_infrastructure_stop_junit_shows() {
    let img = signed_with_disk(
        |dir| {
            // A disk that passes the pre-boot look (an MBR), so the control plane comes next.
            let mut mbr = vec![0u8; 1 << 20];
            mbr[510] = 0x55;
            mbr[511] = 0xaa;
            fs::write(dir.join("node.qcow2"), mbr).unwrap();
        },
        "raw",
    );
    let r = run(
        &img,
        &[
            "--min-version",
            "5",
            "--control-plane",
            "kubeconfig=/nonexistent/admin.conf",
            "--exact",
            "kubelet::node_ready",
        ],
    );
    assert_eq!(r.code, 5, "{}{}", r.stdout, r.stderr);
    let j = json(&img);
    assert_eq!(j["stop"]["kind"], "infrastructure");
    assert_eq!(j["stop"]["phase"], "control-plane");
    assert_eq!(check(&j, "kubelet::node_ready")["status"], "not-run");
    assert_eq!(
        common::run_error(&img.path("junit.xml")).as_deref(),
        Some("infrastructure"),
        "a JUnit reader sees the run did not finish"
    );
}
