//! The VM engine against the real QEMU and the test bed's real node images (TCG here).
//!
//! Needs the test bed (`fixtures/build`, which `ci/test.sh` runs first): a missing test
//! bed fails these tests loudly, it never skips them. VM boots are serialized (one VM at
//! a time on a 2-core machine); the bad-input tests run in parallel with them.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::direct_boot;
use nodegate::vm::{AccelChoice, Boot, Vm, VmConfig, VmError};

const BAD_INPUT: i32 = 3;
const ENVIRONMENT: i32 = 5;

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_vm() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The test bed's image folder.
fn testbed() -> PathBuf {
    common::testbed("image", "direct/root.qcow2")
}

fn sha256(path: &Path) -> String {
    nodegate::image::digest::sha256_file(path).unwrap().sha256
}

fn wait_for_no_qemu(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !common::qemu_pids_with(needle).is_empty() {
        assert!(
            Instant::now() < deadline,
            "qemu of {needle} survived: {:?}",
            common::qemu_pids_with(needle)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn boot_args(layout: &Path, run_dir: &Path) -> Vec<String> {
    let cmdline = fs::read_to_string(layout.join("cmdline")).unwrap();
    vec![
        "boot".into(),
        layout.join("root.qcow2").display().to_string(),
        "--kernel".into(),
        layout.join("vmlinuz").display().to_string(),
        "--initrd".into(),
        layout.join("initrd.img").display().to_string(),
        "--cmdline".into(),
        cmdline.trim().to_string(),
        "--accel".into(),
        "tcg".into(),
        "--run-dir".into(),
        run_dir.display().to_string(),
    ]
}

fn run_boot(args: &[String]) -> common::Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    common::run(&refs, Path::new("."))
}

/// A small valid qcow2 with nothing bootable, for tests that fail before the guest runs.
/// A 64 MiB qcow2 holding only an empty MBR: bootable-looking to nodegate's disk check,
/// so the failure under test is the one that follows (a taken port, KVM, memory...).
fn blank_qcow2(dir: &Path) -> PathBuf {
    let raw = dir.join("blank.raw");
    let mut mbr = vec![0u8; 512];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    fs::write(&raw, &mbr).unwrap();
    fs::File::options()
        .write(true)
        .open(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let p = dir.join("blank.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&p)
        .status()
        .expect("qemu-img runs");
    assert!(st.success());
    p
}

#[test]
fn direct_kernel_boot_ssh_exec_upload_qmp_and_teardown() {
    let layout = testbed().join("direct");
    let _vm = one_vm();
    let base = layout.join("root.qcow2");
    let before = sha256(&base);
    let run = tempfile::tempdir().unwrap();
    let mut config = VmConfig::new(
        "direct",
        base.clone(),
        direct_boot(&layout),
        run.path().into(),
    );
    config.accel = AccelChoice::Tcg;
    config.memory_mib = 2048;
    let mut vm = Vm::start(config, None).unwrap();
    let mut ssh = vm
        .wait_ready()
        .unwrap_or_else(|e| panic!("boot failed: {e}"));
    let t = vm.timings;
    eprintln!("direct boot timings: {t:?}");
    assert!(t.console.unwrap() <= t.ssh.unwrap() && t.ssh.unwrap() <= t.ready.unwrap());

    // exec: status, stdout and stderr apart.
    let out = ssh
        .exec("echo out; echo err >&2; exit 3", Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        (out.status, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    // The guest's identity comes from the seed, not from the image.
    let out = ssh
        .exec("hostname; cat /etc/machine-id", Duration::from_secs(30))
        .unwrap();
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("direct"));
    assert_eq!(
        lines.next().map(str::len),
        Some(32),
        "machine-id generated: {}",
        out.stdout
    );
    // The seed is valid for the guest's cloud-init, and the node's name resolves in the
    // guest without DNS (so sudo does not wait for a lookup).
    let out = ssh
        .exec(
            "sudo cloud-init schema --system; echo status=$?; getent hosts direct; \
             grep -c 'Invalid cloud-config' /var/log/cloud-init.log",
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(
        out.stdout.contains("status=0\n"),
        "cloud-init refuses nodegate's seed: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("direct")),
        "the node's name does not resolve in the guest: {}",
        out.stdout
    );
    assert!(
        out.stdout.trim_end().ends_with("\n0"),
        "cloud-init logged an invalid cloud-config: {}",
        out.stdout
    );
    // exec deadline.
    let err = ssh
        .exec("sleep 30", Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("still running after 2s"), "{err}");
    // upload.
    ssh.upload_bytes(b"hello guest\n", "/tmp/hello.txt", 0o640)
        .unwrap();
    let out = ssh
        .exec(
            "cat /tmp/hello.txt; stat -c %a /tmp/hello.txt",
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(out.stdout, "hello guest\n640\n");
    // Reconnect after the guest restarts sshd; the pinned host key still matches.
    let _ = ssh.exec("sudo systemctl restart ssh", Duration::from_secs(60));
    ssh.reconnect(Duration::from_secs(30)).unwrap();
    assert!(ssh.exec("true", Duration::from_secs(30)).unwrap().success());

    // QMP: status, link down cuts SSH traffic, link up restores it.
    let mut qmp = vm.qmp().unwrap();
    assert_eq!(qmp.status().unwrap(), "running");
    qmp.set_link(nodegate::vm::qemu::NIC_ID, false).unwrap();
    let err = ssh.exec("true", Duration::from_secs(5));
    assert!(err.is_err(), "exec should fail while the link is down");
    qmp.set_link(nodegate::vm::qemu::NIC_ID, true).unwrap();
    ssh.reconnect(Duration::from_secs(60)).unwrap();
    assert!(ssh.exec("true", Duration::from_secs(30)).unwrap().success());

    let pid = vm.qemu_pid();
    drop(ssh);
    drop(vm);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} survived the Vm guard"
    );
    assert_eq!(sha256(&base), before, "the base image was written");
}

/// Boots the test bed's full-disk image with `boot` and returns the firmware the guest
/// saw (`uefi` or `bios`) and the run folder.
fn full_disk_firmware(name: &str, boot: Boot) -> (String, tempfile::TempDir) {
    let disk = testbed().join("efi/disk.qcow2");
    let _vm = one_vm();
    let run = tempfile::tempdir().unwrap();
    let mut config = VmConfig::new(name, disk, boot, run.path().into());
    config.accel = AccelChoice::Tcg;
    let mut vm = Vm::start(config, None).unwrap();
    let mut ssh = vm
        .wait_ready()
        .unwrap_or_else(|e| panic!("{name} boot failed: {e}"));
    eprintln!("{name} boot timings: {:?}", vm.timings);
    let out = ssh
        .exec(
            "test -d /sys/firmware/efi && echo uefi || echo bios",
            Duration::from_secs(30),
        )
        .unwrap();
    (out.stdout.trim().to_string(), run)
}

#[test]
fn uefi_full_disk_boot_reaches_ready() {
    let (firmware, run) = full_disk_firmware("efi", Boot::debian_uefi(false));
    assert_eq!(firmware, "uefi");
    assert!(run.path().join("efi-vars.fd").is_file(), "per-VM vars copy");
}

#[test]
fn legacy_bios_boot_of_the_same_full_disk_reaches_ready() {
    // The full-disk image is hybrid, like vendor cloud images: GRUB for SeaBIOS beside
    // systemd-boot for OVMF.
    let (firmware, _run) = full_disk_firmware("bios", Boot::Bios);
    assert_eq!(firmware, "bios");
}

#[test]
fn boot_keep_joins_a_local_control_plane_prints_working_commands_isolates_the_guest_and_ctrl_c_tears_it_all_down(
) {
    use std::io::{BufRead, BufReader};
    let layout = testbed().join("direct");
    let _vm = one_vm();
    let run = tempfile::tempdir().unwrap();
    let needle = run.path().display().to_string();
    // A host service the run does not forward: the guest must not reach it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let apiservers = common::apiserver_count();
    let mut args = boot_args(&layout, run.path());
    args.extend(["--keep".into(), "--control-plane".into(), "local".into()]);
    let mut child = common::nodegate()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut ssh_line, mut joined) = (None, None);
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.starts_with("ssh -i ") {
            ssh_line = Some(line);
        } else if line.starts_with("joined: ") {
            joined = Some(line);
        } else if line.starts_with("kubectl --kubeconfig ") {
            break;
        }
    }
    let ssh_line = ssh_line.expect("boot --keep printed an ssh command");
    let joined = joined.expect("boot --control-plane printed the join");
    assert!(
        joined.contains("node root registered") && joined.contains("(local control plane)"),
        "{joined}"
    );
    // The printed command works as printed (OpenSSH client, pinned host key), and the
    // guest cannot open a connection to the host's unforwarded port.
    let probe = format!("curl -s -m 5 http://10.0.2.2:{port}/; echo curl-exit=$?");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{ssh_line} -o BatchMode=yes '{probe}'"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("curl-exit=") && !text.contains("curl-exit=0"),
        "{text}"
    );
    assert!(
        listener.accept().is_err(),
        "the guest reached an unforwarded host port"
    );
    assert!(
        !common::qemu_pids_with(&needle).is_empty(),
        "--keep holds the VM"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_for_no_qemu(&needle);
    assert_eq!(
        common::apiserver_count(),
        apiservers,
        "a kube-apiserver outlived nodegate boot"
    );
}

#[test]
fn a_kernel_panic_fails_the_boot_quoting_the_console() {
    let layout = testbed().join("neg/kernel-panic");
    let _vm = one_vm();
    let run = tempfile::tempdir().unwrap();
    let mut args = boot_args(&layout, run.path());
    args.extend(["--ssh-timeout".into(), "240s".into()]);
    let r = run_boot(&args);
    // The image's fault, not the host's: exit 1.
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("console shows kernel panic"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("Kernel panic - not syncing"),
        "{}",
        r.stderr
    );
    wait_for_no_qemu(&run.path().display().to_string());
}

#[test]
fn an_image_without_sshd_times_out_in_the_ssh_phase() {
    let layout = testbed().join("direct");
    let _vm = one_vm();
    let run = tempfile::tempdir().unwrap();
    let mut args = boot_args(&layout, run.path());
    // The same image with sshd masked at boot: nothing listens on port 22.
    let i = args.iter().position(|a| a == "--cmdline").unwrap() + 1;
    args[i].push_str(" systemd.mask=ssh.service");
    args.extend(["--ssh-timeout".into(), "60s".into()]);
    let r = run_boot(&args);
    assert_eq!(r.code, ENVIRONMENT, "{}", r.stderr);
    assert!(
        r.stderr.contains("ssh phase timed out after"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("last console lines"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    wait_for_no_qemu(&run.path().display().to_string());
}

fn interrupted_boot_leaves_nothing(signal: i32) -> (i32, String) {
    let layout = testbed().join("direct");
    let base = layout.join("root.qcow2");
    let before = sha256(&base);
    let run = tempfile::tempdir().unwrap();
    let needle = run.path().display().to_string();
    let child = common::nodegate()
        .args(boot_args(&layout, run.path()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-boot: QEMU runs and the console has started.
    let deadline = Instant::now() + Duration::from_secs(120);
    while common::qemu_pids_with(&needle).is_empty()
        || fs::metadata(run.path().join("console.log")).map_or(true, |m| m.len() == 0)
    {
        assert!(Instant::now() < deadline, "qemu never started");
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(child.id() as i32, signal) };
    let out = child.wait_with_output().unwrap();
    wait_for_no_qemu(&needle);
    assert_eq!(sha256(&base), before, "the base image was written");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sigkill_mid_boot_leaves_the_base_unchanged_and_no_qemu() {
    let _vm = one_vm();
    let (code, _) = interrupted_boot_leaves_nothing(libc::SIGKILL);
    assert_eq!(code, -1, "killed by a signal, no exit code");
}

#[test]
fn sigint_mid_boot_tears_down_and_exits_130() {
    let _vm = one_vm();
    let (code, stderr) = interrupted_boot_leaves_nothing(libc::SIGINT);
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("interrupted during the"), "{stderr}");
}

#[test]
fn a_missing_qemu_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = blank_qcow2(dir.path());
    let r = common::nodegate()
        .args(["boot", img.to_str().unwrap(), "--firmware", "bios"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(ENVIRONMENT));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("qemu-system-x86_64: qemu not found"), "{err}");
}

#[test]
fn a_missing_image_is_named() {
    let r = run_boot(&["boot".into(), "/nonexistent/node.qcow2".into()]);
    common::assert_refused(&r, BAD_INPUT, "/nonexistent/node.qcow2", "No such file");
}

#[test]
fn a_file_with_nothing_to_boot_is_an_image_fault_before_qemu_starts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    fs::write(&p, "just some text\n".repeat(100)).unwrap();
    let r = run_boot(&["boot".into(), p.display().to_string()]);
    common::assert_refused(&r, 1, "notes.txt", "nothing could boot from it");
    let tiny = dir.path().join("tiny.img");
    fs::write(&tiny, "x").unwrap();
    let r = run_boot(&["boot".into(), tiny.display().to_string()]);
    common::assert_refused(&r, BAD_INPUT, "tiny.img", "not a usable disk image");
}

#[test]
fn a_corrupt_qcow2_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = blank_qcow2(dir.path());
    // Point the L1 table (header offset 40) far beyond the end of the file.
    let mut bytes = fs::read(&p).unwrap();
    bytes[40..48].copy_from_slice(&0x7fff_ffff_0000u64.to_be_bytes());
    fs::write(&p, &bytes).unwrap();
    let before = sha256(&p);
    let r = run_boot(&["boot".into(), p.display().to_string()]);
    common::assert_refused(&r, BAD_INPUT, "blank.qcow2", "not a usable disk image");
    assert_eq!(sha256(&p), before);
}

#[test]
fn a_taken_ssh_port_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let img = blank_qcow2(dir.path());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let r = run_boot(&[
        "boot".into(),
        img.display().to_string(),
        "--firmware".into(),
        "bios".into(),
        "--accel".into(),
        "tcg".into(),
        "--ssh-port".into(),
        port.to_string(),
        "--run-dir".into(),
        dir.path().join("run").display().to_string(),
    ]);
    common::assert_refused(
        &r,
        ENVIRONMENT,
        &format!("127.0.0.1:{port}"),
        "port already in use",
    );
    wait_for_no_qemu(&dir.path().join("run").display().to_string());
}

#[test]
fn an_unwritable_run_folder_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let img = blank_qcow2(dir.path());
    let file = dir.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let run_dir = file.join("run");
    let r = run_boot(&[
        "boot".into(),
        img.display().to_string(),
        "--firmware".into(),
        "bios".into(),
        "--accel".into(),
        "tcg".into(),
        "--run-dir".into(),
        run_dir.display().to_string(),
    ]);
    common::assert_refused(&r, ENVIRONMENT, "a-file/run", "run folder not writable");
}

#[test]
fn a_vm_larger_than_the_host_memory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = blank_qcow2(dir.path());
    let r = run_boot(&[
        "boot".into(),
        img.display().to_string(),
        "--firmware".into(),
        "bios".into(),
        "--memory".into(),
        "100000000".into(),
    ]);
    common::assert_refused(&r, ENVIRONMENT, "100000256 MiB", "not enough memory");
}

#[test]
fn kvm_demanded_where_it_does_not_work_is_an_environment_error() {
    // On machines where KVM works this test proves nothing, so it checks what it can:
    // the probe's verdict and `--accel kvm` agree.
    let works = nodegate::vm::accel::kvm_works(Path::new("qemu-system-x86_64"), None, None);
    let layout = testbed().join("direct");
    let works = match works {
        Err(e) if e.contains("no kernel to probe with") => nodegate::vm::accel::kvm_works(
            Path::new("qemu-system-x86_64"),
            Some(&layout.join("vmlinuz")),
            None,
        ),
        other => other,
    };
    if let Err(why) = works {
        let run = tempfile::tempdir().unwrap();
        let mut config = VmConfig::new(
            "kvm",
            layout.join("root.qcow2"),
            direct_boot(&layout),
            run.path().into(),
        );
        config.accel = AccelChoice::Kvm;
        match Vm::start(config, None) {
            Err(VmError::Kvm(e)) => {
                assert!(e.to_string().starts_with("--accel kvm:"), "{e} / {why}")
            }
            Err(e) => panic!("expected a KVM error, got {e}"),
            Ok(_) => panic!("--accel kvm started although the probe said: {why}"),
        }
    }
}
