//! The offline image-hygiene check (`kubelet::no_baked_ssh_host_keys`) on the test bed's
//! real disks, before anything boots: both layouts pass (a bare ext4 disk and a GPT disk
//! with an ESP), a copy of image v1 with host keys written into it fails naming the
//! keys, and a disk without an ext root file system fails with a clear message. Needs
//! the test bed (`fixtures/build`), `qemu-img` and `debugfs`; no VM.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const CHECK: &str = "kubelet::no_baked_ssh_host_keys";

/// Runs only the check on `disk` (unsigned: the check reads the disk, not the
/// manifest); returns the exit code and the check's report entry.
fn hygiene(disk: &Path, dir: &Path) -> (i32, serde_json::Value) {
    let profile = common::repo("profiles/debian-fixture.toml");
    let suites = common::repo("suites");
    let args = [
        "run",
        "--image",
        disk.to_str().unwrap(),
        "--allow-unsigned",
        "--profile",
        &profile,
        "--suites",
        &suites,
        "--json",
        "report.json",
        "--junit",
        "junit.xml",
        CHECK,
        "--exact",
    ];
    let r = common::run(&args, dir);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == CHECK)
        .unwrap_or_else(|| panic!("{CHECK} not in the report: {}{}", r.stdout, r.stderr))
        .clone();
    (r.code, check)
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn both_test_bed_layouts_ship_no_host_keys() {
    for disk in [
        common::testbed("image/direct", "root.qcow2").join("root.qcow2"),
        common::testbed("image/efi", "disk.qcow2").join("disk.qcow2"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let before = mtime(&disk);
        let (code, check) = hygiene(&disk, dir.path());
        assert_eq!(code, 0, "{}: {check}", disk.display());
        assert_eq!(check["status"], "passed");
        let out = check["attempts"][0]["output"].as_str().unwrap();
        assert!(out.contains("/etc/ssh: "), "it listed /etc/ssh: {out}");
        assert!(out.contains("sshd_config"), "{out}");
        assert_eq!(mtime(&disk), before, "the image is only read");
    }
}

/// Byte offset of partition `n` of `raw` (partx counts 512-byte sectors).
fn partition_start(raw: &Path, n: u32) -> u64 {
    let out = Command::new("partx")
        .args(["-g", "-r", "-o", "START", "-n", &n.to_string()])
        .arg(raw)
        .output()
        .unwrap();
    let start: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    start * 512
}

#[test]
fn baked_host_keys_fail_the_check_by_name() {
    // Image v1 in both layouts, with the host keys an image build forgot to remove.
    for (layout, file, root_partition) in [
        ("image/direct", "root.qcow2", None),
        ("image/efi", "disk.qcow2", Some(2)),
    ] {
        let base = common::testbed(layout, file).join(file);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let raw = d.join("baked.raw");
        sh(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&base)
            .arg(&raw));
        let offset = root_partition.map_or(0, |n| partition_start(&raw, n));
        std::fs::write(d.join("key"), "not really a key\n").unwrap();
        for name in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
            sh(Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("write {} /etc/ssh/{name}", d.join("key").display()))
                .arg(format!("{}?offset={offset}", raw.display())));
        }
        let disk = d.join("baked.qcow2");
        sh(Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(&disk));
        std::fs::remove_file(&raw).unwrap();

        let (code, check) = hygiene(&disk, d);
        assert_eq!(code, 1, "{layout}: {check}");
        assert_eq!(check["status"], "failed");
        let message = check["message"].as_str().unwrap();
        assert!(
            message.contains(
                "ships /etc/ssh/ssh_host_ed25519_key, /etc/ssh/ssh_host_ed25519_key.pub:"
            ),
            "{layout}: {message}"
        );
        assert_eq!(check["expected"], "none of /etc/ssh/ssh_host_*");
        let junit = std::fs::read_to_string(d.join("junit.xml")).unwrap();
        assert!(junit.contains("ssh_host_ed25519_key"), "{junit}");
    }
}

#[test]
fn a_disk_without_an_ext_root_fails_saying_what_was_tried() {
    let dir = tempfile::tempdir().unwrap();
    // An MBR boot signature and nothing else: a disk, but no file system on it.
    let disk: PathBuf = dir.path().join("blank.raw");
    let mut bytes = vec![0u8; 4 << 20];
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    std::fs::write(&disk, bytes).unwrap();
    let (code, check) = hygiene(&disk, dir.path());
    assert_eq!(code, 1, "{check}");
    let message = check["message"].as_str().unwrap();
    assert!(
        message.contains("blank.raw: no ext2/3/4 root file system with /etc")
            && message.contains("tried 0 ("),
        "{message}"
    );
}

#[test]
fn an_ext_root_debugfs_cannot_read_fails_instead_of_passing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A real ext4 root with a host key, marked with an incompatible feature no e2fsprogs
    // knows: nodegate cannot look inside, so the check must fail, not pass.
    std::fs::create_dir_all(d.join("tree/etc/ssh")).unwrap();
    std::fs::write(d.join("tree/etc/ssh/ssh_host_rsa_key"), "key\n").unwrap();
    let disk = d.join("future.raw");
    sh(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(d.join("tree"))
        .arg(&disk)
        .arg("16M"));
    let mut bytes = std::fs::read(&disk).unwrap();
    // s_feature_incompat: superblock at 1024, field at 0x60, little endian.
    bytes[1024 + 0x60 + 3] |= 0x80;
    std::fs::write(&disk, bytes).unwrap();
    let (code, check) = hygiene(&disk, d);
    assert_eq!(code, 1, "{check}");
    let message = check["message"].as_str().unwrap();
    assert!(message.contains("unsupported feature"), "{message}");
}
