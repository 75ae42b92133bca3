//! `nodegate boot --control-plane`: what it refuses before anything boots. The boot that
//! joins the test bed image to a local control plane and tears everything down is
//! tests/vm_engine.rs's `boot --keep` test (one boot for both). Needs `fixtures/build`.

mod common;

use std::path::Path;

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
