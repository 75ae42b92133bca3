//! Certifying an image nodegate's authors did not build: the Acme node image
//! (fixtures/vendor: systemd-networkd, the systemd cgroup driver, upstream's kubelet
//! drop-in layout, a renamed agent that reads its config only at start and is provisioned
//! by the seed, other image names, another SSH user, a UEFI-only disk), signed with its
//! vendor's key, passes every shipped suite (but the roll-out: no older Acme image is in
//! the field) with its own profile and the same suites and
//! code as image v1, booted with Secure Boot enforcing (shim + signed GRUB + signed
//! kernel) as its profile demands; the same image with its first, unsigned systemd-boot
//! loader is refused by that firmware and fails `integrity::secure_boot` by name; its copy
//! with a failing unit, provisioned by Ignition instead of cloud-init, fails
//! `no_failed_units` by name while the other checks run.
//! Needs the test bed (`fixtures/build`); VM tests are serialized (2 cores).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use quick_junit::Report;

static VM: Mutex<()> = Mutex::new(());

fn signed(rel: &str) -> String {
    common::testbed("vendor-signed", "trust/acme.pub")
        .join(rel)
        .display()
        .to_string()
}

fn profile() -> String {
    common::repo("fixtures/vendor/profile.toml")
}

/// `nodegate run` of the Acme release in `release` (a folder of vendor-signed) with the
/// vendor's profile and trust store, reports in `dir`.
fn run_acme(dir: &Path, release: &str, profile: &str, extra: &[&str]) -> common::Run {
    let manifest = signed(&format!("{release}/node.manifest.json"));
    let (trust, suites) = (signed("trust"), common::repo("suites"));
    let mut args = vec![
        "run",
        "--manifest",
        &manifest,
        "--trust",
        &trust,
        "--profile",
        profile,
        "--suites",
        &suites,
    ];
    args.extend_from_slice(&common::TCG_REPORTS);
    args.extend_from_slice(extra);
    common::run(&args, dir)
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

fn output(json: &serde_json::Value, id: &str) -> String {
    common::check_of(json, id)["attempts"][0]["output"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Files under `dir` (recursively) whose text mentions `needle`.
fn mentioning(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(mentioning(&p, needle));
        } else if std::fs::read_to_string(&p).is_ok_and(|t| t.to_lowercase().contains(needle)) {
            found.push(p);
        }
    }
    found
}

#[test]
fn nothing_in_the_suites_or_the_code_names_the_acme_image_and_its_profile_passes_the_lint() {
    for dir in ["suites", "src"] {
        let named = mentioning(Path::new(&common::repo(dir)), "acme");
        assert!(named.is_empty(), "{dir} names the vendor image: {named:?}");
    }
    let r = common::run(
        &[
            "suites",
            "check",
            "--suites",
            &common::repo("suites"),
            "--profile",
            &profile(),
        ],
        Path::new("."),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// The whole gate, two nodes on the run's network with the local control plane, every
/// suite, and the vendor's own upgrade bundle.
#[test]
fn every_shipped_suite_passes_on_the_acme_image_with_its_profile_alone() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let bundle = signed("bundle-v4/bundle.manifest.json");
    let r = run_acme(
        d.path(),
        "v3",
        &profile(),
        &[
            "--control-plane",
            "local",
            "--nodes",
            "2",
            "--upgrade-bundle",
            &bundle,
            // The roll-out needs an Acme image in the field to roll into: none exists.
            "--skip-tag",
            "rollout",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let junit =
        Report::deserialize_from_str(&std::fs::read_to_string(d.path().join("junit.xml")).unwrap())
            .unwrap();
    assert_eq!(junit.failures + junit.errors, 0);
    assert_eq!(common::junit_skipped(&junit), 0, "every check ran");
    let listed = common::ok(
        &[
            "run",
            "--list",
            "--suites",
            &common::repo("suites"),
            "--skip-tag",
            "rollout",
        ],
        Path::new("."),
    );
    assert_eq!(junit.tests, listed.stdout.matches(": test").count() + 1);
    let json = report(d.path());
    assert_eq!(json["verdict"], "passed");
    assert_eq!(json["properties"]["image.name"], "acme-node");
    assert_eq!(json["properties"]["image.signed"], "true");
    // What the profile, not the code, made of this image.
    for (id, says) in [
        (
            "containerd::cgroup_driver_matches_kubelet",
            "\ncontainerd=systemd kubelet=systemd\n",
        ),
        (
            "agent::registers",
            "/etc/acme/agent.json was written by the first-boot seed (cloud-init)",
        ),
        ("hot-upgrade::in_place", "acme upgrade: Kubernetes v1.20.3"),
        (
            "integrity::secure_boot",
            "booted by /usr/share/OVMF/OVMF_CODE_4M.secboot.fd with vars from /usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        ),
        ("integrity::secure_boot", "\nSecureBoot= 6 0 0 0 1 \nSetupMode= 6 0 0 0 0 \n"),
        ("integrity::secure_boot", "kernel lockdown: none [integrity]"),
        (
            "agent::version",
            "/opt/acme/bin/acme-agent reports agent 1.0.0",
        ),
    ] {
        let out = output(&json, id);
        assert!(out.contains(says), "{id}: {says:?} not in {out}");
    }
    assert!(d.path().join("artifacts/profile.toml").is_file());
}

/// The same image with the loader its vendor first gave it (systemd-boot, unsigned): the
/// profile demands Secure Boot, the firmware refuses the loader within seconds, and the
/// Secure Boot check and the boot check fail quoting the firmware; nothing else of the
/// guest runs, and nothing is left running.
#[test]
fn the_acme_image_with_an_unsigned_loader_fails_secure_boot_by_name() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let r = run_acme(
        d.path(),
        "systemd-boot",
        &profile(),
        &[
            "--suite",
            "integrity",
            "--suite",
            "kubelet",
            "--skip-tag",
            "node",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = report(d.path());
    assert_eq!(json["stop"]["kind"], "secure-boot", "{}", json["stop"]);
    for id in ["integrity::secure_boot", "kubelet::boots"] {
        let c = common::check_of(&json, id);
        assert_eq!(c["status"], "failed", "{c}");
        let message = c["message"].as_str().unwrap();
        assert!(
            message.contains("Secure Boot refused the boot loader")
                && message.contains("BdsDxe: failed to load Boot0001")
                && message.contains("Access Denied"),
            "{id}: {message}"
        );
    }
    for id in ["integrity::guest_files", "kubelet::no_failed_units"] {
        let c = common::check_of(&json, id);
        assert_eq!(c["status"], "not-run", "{c}");
        assert!(
            c["reason"].as_str().unwrap().starts_with("secure-boot: "),
            "{c}"
        );
    }
    assert_eq!(
        common::check_of(&json, "integrity::signature")["status"],
        "passed"
    );
    assert!(
        r.stdout.contains("stopped in boot: secure-boot"),
        "{}",
        r.stdout
    );
    assert_eq!(common::leftover_qemus(&json), 0);
    let junit = std::fs::read_to_string(d.path().join("junit.xml")).unwrap();
    assert!(junit.contains("type=\"secure-boot\""), "{junit}");
}

/// The copy with a unit that fails at every boot, provisioned by Ignition (fw_cfg, no
/// cloud-init) on QEMU's user network: the login user, its key, sudo, the pinned host key,
/// the node's name and the agent's config all come from nodegate's Ignition config; the
/// finding names the unit with its journal, the run does not stop, the rest passes.
#[test]
fn a_failing_unit_of_the_acme_image_provisioned_by_ignition_fails_no_failed_units_by_name_and_the_rest_runs(
) {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let vendor = std::fs::read_to_string(profile()).unwrap();
    let ignition = vendor.replace("\n[vm]\n", "\n[vm]\nfirst_boot = \"ignition\"\n");
    assert_ne!(ignition, vendor, "the vendor profile has no [vm] table");
    let profile = d.path().join("profile-ignition.toml");
    std::fs::write(&profile, ignition).unwrap();
    let r = run_acme(
        d.path(),
        "failed-unit",
        profile.to_str().unwrap(),
        &[
            "--suite",
            "integrity",
            "--suite",
            "kubelet",
            "--suite",
            "agent",
            "--skip-tag",
            "node",
            "--skip-tag",
            "fault",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = report(d.path());
    assert!(json["stop"].is_null(), "a finding, not a stop: {json}");
    let units = common::check_of(&json, "kubelet::no_failed_units");
    assert_eq!(units["status"], "failed", "{units}");
    let message = units["message"].as_str().unwrap();
    assert!(
        message.contains("acme-metrics-exporter.service"),
        "{message}"
    );
    assert!(message.contains("giving up"), "its journal: {message}");
    let mut ran = 0;
    for c in json["checks"].as_array().unwrap() {
        if c["id"] == "kubelet::no_failed_units" || c["status"] == "not-run" {
            continue;
        }
        assert_eq!(c["status"], "passed", "{c}");
        ran += 1;
    }
    assert!(ran >= 10, "{ran} checks ran besides no_failed_units");
    for id in [
        "kubelet::boots",
        "agent::registers",
        "agent::heartbeats_at_interval",
        "agent::local_state_agrees",
    ] {
        assert_eq!(common::check_of(&json, id)["status"], "passed", "{id}");
    }
    assert_eq!(
        common::check_of(&json, "integrity::secure_boot")["status"],
        "passed"
    );
    let registers = output(&json, "agent::registers");
    assert!(
        registers.contains("/etc/acme/agent.json was written by the first-boot seed (ignition)"),
        "{registers}"
    );
    // Ignition, not cloud-init, configured the guest: its stages ran in the initramfs.
    let console = std::fs::read_dir(d.path().join("artifacts"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("console.log"))
        .find(|p| p.is_file())
        .expect("a console log in the artifacts");
    let console = String::from_utf8_lossy(&std::fs::read(console).unwrap()).into_owned();
    assert!(
        console
            .lines()
            .any(|l| l.contains("Finished") && l.contains("Ignition (files)")),
        "Ignition's files stage did not finish on the console"
    );
    assert_eq!(common::run_error(&d.path().join("junit.xml")), None);
}
