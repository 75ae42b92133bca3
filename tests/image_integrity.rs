//! Host-side image integrity through the real `nodegate` binary: keygen, manifest create,
//! sign and verify, and one test per kind of bad input.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::SystemTime;

use common::{assert_refused, ok, run, SignedImage};

const BAD_INPUT: i32 = 3;
const INTEGRITY: i32 = 4;

/// Bytes and modification time of a file, to prove it was not written.
fn snapshot(path: &std::path::Path) -> (Vec<u8>, SystemTime) {
    (
        fs::read(path).unwrap(),
        fs::metadata(path).unwrap().modified().unwrap(),
    )
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    common::tool("openssl", args, dir);
}

/// Replaces text in the manifest, then signs the result with stock openssl and `key`
/// (nodegate's own `sign` refuses manifests it cannot read, and keys the manifest does
/// not name), so that the signature is valid and the edit alone is under test.
fn edit_and_sign_with_openssl(img: &SignedImage, from: &str, to: &str, key: &str) {
    let p = img.path("node.manifest.json");
    let text = fs::read_to_string(&p).unwrap();
    fs::write(&p, text.replace(from, to)).unwrap();
    openssl(
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            key,
            "-in",
            "node.manifest.json",
            "-out",
            "node.manifest.json.sig",
        ],
        img.dir.path(),
    );
}

#[test]
fn a_signed_image_verifies_and_verify_writes_nothing() {
    let img = SignedImage::new(4 * SignedImage::MIB);
    let files = ["node.qcow2", "node.manifest.json", "node.manifest.json.sig"];
    let before: Vec<_> = files.iter().map(|f| snapshot(&img.path(f))).collect();
    let r = img.verify(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("verified node.manifest.json: test-image v5"),
        "{}",
        r.stdout
    );
    let after: Vec<_> = files.iter().map(|f| snapshot(&img.path(f))).collect();
    assert!(before == after, "verify modified an input");
    let listing: Vec<_> = fs::read_dir(img.dir.path()).unwrap().collect();
    assert_eq!(listing.len(), 5, "verify created files: {listing:?}");
}

#[test]
fn verify_json_reports_the_digest_it_computed() {
    let img = SignedImage::new(SignedImage::MIB);
    let r = img.verify(&["--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let expected = common::nodegate()
        .args(["digest", "node.qcow2"])
        .current_dir(img.dir.path())
        .output()
        .unwrap();
    let expected = String::from_utf8(expected.stdout).unwrap();
    assert_eq!(
        v["artifacts"][0]["sha256"].as_str().unwrap(),
        expected.split_whitespace().next().unwrap()
    );
    assert_eq!(v["version"], 5);
    assert_eq!(v["components"]["kubelet"], "v1.20.2");
}

#[test]
fn one_flipped_byte_in_a_64_mib_image_is_refused() {
    let img = SignedImage::new(64 * SignedImage::MIB);
    let p = img.path("node.qcow2");
    let mut bytes = fs::read(&p).unwrap();
    bytes[37 * SignedImage::MIB + 11] ^= 0x01;
    fs::write(&p, &bytes).unwrap();
    assert_refused(
        &img.verify(&[]),
        INTEGRITY,
        "node.qcow2",
        "content modified",
    );
}

#[test]
fn a_truncated_image_is_refused() {
    let img = SignedImage::new(2 * SignedImage::MIB);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(img.path("node.qcow2"))
        .unwrap();
    f.set_len(SignedImage::MIB as u64).unwrap();
    assert_refused(&img.verify(&[]), INTEGRITY, "node.qcow2", "truncated");
}

#[test]
fn an_empty_image_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    fs::write(img.path("node.qcow2"), b"").unwrap();
    assert_refused(&img.verify(&[]), INTEGRITY, "node.qcow2", "size 0 bytes");
}

#[test]
fn an_edited_manifest_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    let p = img.path("node.manifest.json");
    let text = fs::read_to_string(&p).unwrap();
    fs::write(&p, text.replace("\"version\": 5", "\"version\": 9")).unwrap();
    assert_refused(
        &img.verify(&[]),
        INTEGRITY,
        "node.manifest.json",
        "signature",
    );
}

#[test]
fn a_signature_by_an_unknown_key_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    let d = img.dir.path();
    ok(&["keygen", "--out", "keys/intruder"], d);
    // The manifest names the intruder's key, which the trust store does not hold.
    ok(
        &[
            "manifest",
            "create",
            "--image",
            "node.qcow2",
            "--name",
            "test-image",
            "--image-version",
            "5",
            "--key",
            "keys/intruder.pub",
        ],
        d,
    );
    ok(
        &["sign", "--key", "keys/intruder.key", "node.manifest.json"],
        d,
    );
    assert_refused(
        &img.verify(&[]),
        INTEGRITY,
        "node.manifest.json",
        "does not hold",
    );
}

#[test]
fn a_signature_by_another_key_under_a_trusted_key_id_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    let d = img.dir.path();
    ok(&["keygen", "--out", "keys/intruder"], d);
    // Keep the trusted key id in the manifest but sign with another key.
    edit_and_sign_with_openssl(&img, "", "", "keys/intruder.key");
    assert_refused(
        &img.verify(&[]),
        INTEGRITY,
        "node.manifest.json",
        "does not match",
    );
}

#[test]
fn an_expired_manifest_is_refused() {
    let img = SignedImage::with_args(
        SignedImage::MIB,
        &["--created", "2020-01-01T00:00:00Z", "--valid-for", "1d"],
    );
    assert_refused(
        &img.verify(&[]),
        INTEGRITY,
        "node.manifest.json",
        "expired at 2020-01-02T00:00:00Z",
    );
}

#[test]
fn a_rollback_below_the_minimum_version_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    assert_refused(
        &img.verify(&["--min-version", "6"]),
        INTEGRITY,
        "node.manifest.json",
        "version 5 is older than the minimum 6",
    );
    assert_eq!(img.verify(&["--min-version", "5"]).code, 0);
}

#[test]
fn malformed_json_is_refused_with_its_position() {
    let img = SignedImage::new(SignedImage::MIB);
    fs::write(
        img.path("node.manifest.json"),
        "{\n  \"schema_version\": 1,\n  oops\n}\n",
    )
    .unwrap();
    assert_refused(&img.verify(&[]), BAD_INPUT, "node.manifest.json", "line 3");
}

#[test]
fn an_unknown_schema_version_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    edit_and_sign_with_openssl(
        &img,
        "\"schema_version\": 1",
        "\"schema_version\": 2",
        "keys/release.key",
    );
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.manifest.json",
        "unsupported schema_version 2",
    );
}

#[test]
fn a_missing_artifact_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    fs::remove_file(img.path("node.qcow2")).unwrap();
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.qcow2",
        "artifact missing",
    );
}

#[test]
fn an_artifact_path_escaping_the_folder_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    edit_and_sign_with_openssl(
        &img,
        "\"path\": \"node.qcow2\"",
        "\"path\": \"../node.qcow2\"",
        "keys/release.key",
    );
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.manifest.json",
        "leaves the manifest's folder",
    );
}

#[test]
fn an_artifact_symlink_escaping_the_folder_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("node.qcow2");
    fs::rename(img.path("node.qcow2"), &target).unwrap();
    symlink(&target, img.path("node.qcow2")).unwrap();
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.manifest.json",
        "leaves the manifest's folder",
    );
}

#[test]
fn an_empty_manifest_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    fs::write(img.path("node.manifest.json"), b"").unwrap();
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.manifest.json",
        "file is empty",
    );
}

#[test]
fn an_empty_signature_file_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    fs::write(img.path("node.manifest.json.sig"), b"").unwrap();
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.manifest.json.sig",
        "file is empty",
    );
}

#[test]
fn a_signature_file_of_the_wrong_length_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    let p = img.path("node.manifest.json.sig");
    let sig = fs::read(&p).unwrap();
    fs::write(&p, &sig[..63]).unwrap();
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.manifest.json.sig",
        "is 63 bytes",
    );
    let mut long = sig.clone();
    long.push(b'\n');
    fs::write(&p, &long).unwrap();
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.manifest.json.sig",
        "is 65 bytes",
    );
}

#[test]
fn a_missing_signature_file_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    fs::remove_file(img.path("node.manifest.json.sig")).unwrap();
    assert_refused(
        &img.verify(&[]),
        BAD_INPUT,
        "node.manifest.json.sig",
        "No such file",
    );
}

#[test]
fn stock_openssl_keys_and_signatures_interoperate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_image(&d.join("node.qcow2"), SignedImage::MIB);
    openssl(
        &["genpkey", "-algorithm", "ed25519", "-out", "vendor.pem"],
        d,
    );
    fs::create_dir(d.join("trust")).unwrap();
    openssl(
        &[
            "pkey",
            "-in",
            "vendor.pem",
            "-pubout",
            "-out",
            "trust/vendor.pub",
        ],
        d,
    );
    ok(
        &[
            "manifest",
            "create",
            "--image",
            "node.qcow2",
            "--name",
            "vendor-image",
            "--image-version",
            "1",
            "--key",
            "trust/vendor.pub",
        ],
        d,
    );
    // Signed outside nodegate with stock tools: nodegate verifies it.
    openssl(
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            "vendor.pem",
            "-in",
            "node.manifest.json",
            "-out",
            "node.manifest.json.sig",
        ],
        d,
    );
    ok(&["verify", "--trust", "trust", "node.manifest.json"], d);
    // Signed by nodegate with the openssl-made key: openssl verifies it.
    fs::remove_file(d.join("node.manifest.json.sig")).unwrap();
    ok(&["sign", "--key", "vendor.pem", "node.manifest.json"], d);
    openssl(
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "trust/vendor.pub",
            "-rawin",
            "-in",
            "node.manifest.json",
            "-sigfile",
            "node.manifest.json.sig",
        ],
        d,
    );
}

#[test]
fn key_rotation_trusts_old_and_new_until_the_old_is_removed() {
    let img = SignedImage::new(SignedImage::MIB);
    let d = img.dir.path();
    ok(&["keygen", "--out", "keys/next"], d);
    fs::copy(d.join("keys/next.pub"), d.join("trust/next.pub")).unwrap();
    // Overlap: the image signed with the old key verifies against both keys.
    assert_eq!(img.verify(&[]).code, 0);
    // The old key removed: refused, naming its key id.
    fs::remove_file(d.join("trust/release.pub")).unwrap();
    assert_refused(
        &img.verify(&[]),
        INTEGRITY,
        "node.manifest.json",
        "does not hold",
    );
    // A trust store given as one file works the same way.
    let r = run(
        &[
            "verify",
            "--trust",
            "keys/release.pub",
            "node.manifest.json",
        ],
        d,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads() {
    let dir = tempfile::tempdir().unwrap();
    ok(&["keygen", "--out", "k/fresh"], dir.path());
    let mode = fs::metadata(dir.path().join("k/fresh.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = run(&["keygen", "--out", "k/fresh"], dir.path());
    assert_refused(&again, BAD_INPUT, "k/fresh.key", "already exists");
}

#[test]
fn signing_with_a_key_the_manifest_does_not_name_is_refused() {
    let img = SignedImage::new(SignedImage::MIB);
    let d = img.dir.path();
    ok(&["keygen", "--out", "keys/other"], d);
    let before = snapshot(&img.path("node.manifest.json.sig"));
    let r = run(
        &["sign", "--key", "keys/other.key", "node.manifest.json"],
        d,
    );
    assert_refused(
        &r,
        BAD_INPUT,
        "node.manifest.json",
        "but the signing key is",
    );
    assert!(before == snapshot(&img.path("node.manifest.json.sig")));
}

#[test]
fn usage_errors_exit_with_the_usage_code() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(&["verify"], dir.path()).code, 2);
    assert_eq!(run(&["no-such-command"], dir.path()).code, 2);
    let r = run(
        &[
            "manifest",
            "create",
            "--name",
            "x",
            "--image-version",
            "1",
            "--key",
            "k.pub",
        ],
        dir.path(),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn manifest_records_components_and_guest_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_image(&d.join("node.qcow2"), 4096);
    fs::write(d.join("vmlinuz"), b"kernel").unwrap();
    let h = "ab".repeat(32);
    fs::write(
        d.join("files.sha256"),
        format!("{h}  /usr/bin/kubelet\n{h}  /usr/bin/containerd\n"),
    )
    .unwrap();
    ok(&["keygen", "--out", "k"], d);
    ok(
        &[
            "manifest",
            "create",
            "--image",
            "node.qcow2",
            "--artifact",
            "kernel=vmlinuz",
            "--name",
            "n",
            "--image-version",
            "2",
            "--key",
            "k.key",
            "--component",
            "containerd=1.6.20",
            "--component",
            "agent=1.0.0",
            "--guest-files",
            "files.sha256",
        ],
        d,
    );
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("node.manifest.json")).unwrap()).unwrap();
    assert_eq!(m["components"]["containerd"], "1.6.20");
    assert_eq!(m["files"][1]["path"], "/usr/bin/containerd");
    assert_eq!(m["artifacts"][1]["role"], "kernel");
    assert_eq!(m["artifacts"][1]["size"], 6);
}
