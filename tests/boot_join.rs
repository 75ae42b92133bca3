//! `nodegate boot --control-plane`: boot the test bed image, start a control plane, join
//! the node and tear everything down, through the command line. Needs `fixtures/build`.

mod common;

use std::path::Path;

fn apiserver_count() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("kube-apiserver"))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn an_unknown_control_plane_is_a_usage_error() {
    let layout = common::testbed("image/direct", "root.qcow2");
    let image = layout.join("root.qcow2");
    let r = common::run(
        &["boot", image.to_str().unwrap(), "--control-plane", "bogus"],
        Path::new("."),
    );
    common::assert_refused(&r, 2, "bogus", "unknown control plane");
}

#[test]
fn an_incomplete_binaries_folder_is_refused_before_anything_boots() {
    let layout = common::testbed("image/direct", "root.qcow2");
    let image = layout.join("root.qcow2");
    let empty = tempfile::tempdir().unwrap();
    let cp = format!("local={}", empty.path().display());
    let r = common::run(
        &["boot", image.to_str().unwrap(), "--control-plane", &cp],
        Path::new("."),
    );
    common::assert_refused(
        &r,
        5,
        &empty.path().display().to_string(),
        "control plane binary folder incomplete",
    );
}

#[test]
fn boot_joins_the_image_to_a_local_control_plane_and_cleans_up() {
    let layout = common::testbed("image/direct", "root.qcow2");
    let before = apiserver_count();
    let cmdline = std::fs::read_to_string(layout.join("cmdline")).unwrap();
    let r = common::run(
        &[
            "boot",
            layout.join("root.qcow2").to_str().unwrap(),
            "--kernel",
            layout.join("vmlinuz").to_str().unwrap(),
            "--initrd",
            layout.join("initrd.img").to_str().unwrap(),
            "--cmdline",
            cmdline.trim(),
            "--accel",
            "tcg",
            "--control-plane",
            "local",
        ],
        Path::new("."),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("joined: node root registered"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("(local control plane)"), "{}", r.stdout);
    assert_eq!(
        apiserver_count(),
        before,
        "a kube-apiserver outlived nodegate boot"
    );
}
