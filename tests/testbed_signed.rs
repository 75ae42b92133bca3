//! The test bed's signed releases (fixtures/steps/40-signed.sh): the good ones verify,
//! each negative variant is refused for its own reason. Needs `fixtures/build`.

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
