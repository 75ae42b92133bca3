//! The test bed's signed releases (fixtures/steps/40-signed.sh, 42-signed-v2.sh): the good
//! ones verify, each negative variant is refused for its own reason, and image v2's
//! releases say what the roll-out's tests rely on. Needs `fixtures/build`.

mod common;

use std::path::PathBuf;

fn signed() -> PathBuf {
    common::testbed("signed", "trust/fixture.pub")
}

fn verify(manifest: &str) -> common::Run {
    common::run(&["verify", "--trust", "trust", manifest], &signed())
}

#[test]
fn image_v1_in_both_layouts_and_bundle_v2_verify() {
    for m in [
        "v1-direct/node.manifest.json",
        "v1-efi/node.manifest.json",
        "bundle-v2/bundle.manifest.json",
    ] {
        let r = verify(m);
        assert_eq!(r.code, 0, "{m}: {}", r.stderr);
    }
    let r = common::run(
        &[
            "verify",
            "--trust",
            "trust",
            "--json",
            "v1-direct/node.manifest.json",
        ],
        &signed(),
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    for c in ["containerd", "kubelet", "agent", "kernel"] {
        assert!(
            v["components"][c].is_string(),
            "component {c} missing: {}",
            r.stdout
        );
    }
}

/// `nodegate verify --json` of a signed-v2 release with the test bed's trust store.
fn v2_components(manifest: &str) -> serde_json::Value {
    let dir = common::testbed("signed-v2", "v2-direct");
    let trust = signed().join("trust").display().to_string();
    let r = common::run(&["verify", "--trust", &trust, "--json", manifest], &dir);
    assert_eq!(r.code, 0, "{manifest}: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["components"].clone()
}

#[test]
fn image_v2_its_negative_copies_and_the_careless_bundle_verify_and_say_what_they_are() {
    for m in ["v2-direct/node.manifest.json", "v2-efi/node.manifest.json"] {
        let c = v2_components(m);
        assert_eq!(c["kubelet"], "v1.20.3", "{m}: {c}");
        assert_eq!(c["agent"], "2.0.0", "{m}: {c}");
    }
    // The crash-looping copy carries v2's binaries (only a kubelet flag is broken); the
    // newer one's kubelet reports a release newer than any API server of the test bed.
    assert_eq!(
        v2_components("neg/v2-kubelet-crashloop/node.manifest.json")["kubelet"],
        "v1.20.3"
    );
    assert_eq!(
        v2_components("neg/v2-kubelet-newer/node.manifest.json")["kubelet"],
        "v1.21.0"
    );
    // The careless bundle is signed like the good one: only its script differs.
    let c = v2_components("neg/bundle-restarts-workloads/bundle.manifest.json");
    assert_eq!(c["kubelet"], "v1.20.3");
    let dir = common::testbed("signed-v2", "v2-direct");
    let script =
        std::fs::read_to_string(dir.join("neg/bundle-restarts-workloads/upgrade.sh")).unwrap();
    assert!(script.contains("ctr -n k8s.io tasks kill"), "{script}");
}

#[test]
fn each_negative_release_is_refused_for_its_reason() {
    let cases = [
        ("neg/flipped-byte/node.manifest.json", 4, "content modified"),
        (
            "neg/expired/node.manifest.json",
            4,
            "manifest expired at 2020-01-02T00:00:00Z",
        ),
        (
            "neg/unknown-key/node.manifest.json",
            4,
            "which the trust store trust does not hold",
        ),
        (
            "neg/bundle-tampered/bundle.manifest.json",
            4,
            "upgrade.sh: size",
        ),
        (
            "neg/bundle-unknown-key/bundle.manifest.json",
            4,
            "does not hold",
        ),
    ];
    for (m, code, reason) in cases {
        let r = verify(m);
        assert_eq!(r.code, code, "{m}: {}", r.stderr);
        assert!(
            r.stderr.contains(reason),
            "{m}: {:?} lacks {reason:?}",
            r.stderr
        );
    }
}
