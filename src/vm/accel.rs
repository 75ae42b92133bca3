//! Choosing the accelerator: KVM only where it really runs a guest, TCG otherwise.
//!
//! `/dev/kvm` existing proves nothing (on some hosts it answers ioctls but guests hang),
//! so `auto` boots a probe kernel under KVM and watches the console for the kernel's
//! first words. The verdict is cached per host boot (keyed by `/proc/sys/kernel/random/boot_id`
//! and the QEMU binary).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::config::AccelChoice;
use crate::process::ProcessGroup;
use crate::wait::{wait_until, Poll};

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The CPU model used when none is configured.
    pub fn default_cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// The outcome of resolving an [`AccelChoice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    /// What will be used.
    pub accel: Accel,
    /// Why, in one line (shown to the user when falling back, and recorded in reports).
    pub reason: String,
}

/// KVM was demanded but does not work.
#[derive(Debug, thiserror::Error)]
#[error("--accel kvm: {0}")]
pub struct KvmUnavailable(pub String);

/// How long the probe kernel gets to print its banner under KVM.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Resolves the choice. `probe_kernel` is a Linux kernel to boot for the probe (the
/// image's own for direct kernel boot); without one, the host's /boot kernels are tried.
pub fn resolve(
    choice: AccelChoice,
    qemu: &Path,
    probe_kernel: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Result<AccelDecision, KvmUnavailable> {
    match choice {
        AccelChoice::Tcg => Ok(AccelDecision {
            accel: Accel::Tcg,
            reason: "tcg requested".into(),
        }),
        AccelChoice::Kvm => match kvm_works(qemu, probe_kernel, cache_dir) {
            Ok(()) => Ok(AccelDecision {
                accel: Accel::Kvm,
                reason: "kvm requested and probed".into(),
            }),
            Err(why) => Err(KvmUnavailable(why)),
        },
        AccelChoice::Auto => Ok(match kvm_works(qemu, probe_kernel, cache_dir) {
            Ok(()) => AccelDecision {
                accel: Accel::Kvm,
                reason: "kvm probed: a guest kernel ran".into(),
            },
            Err(why) => AccelDecision {
                accel: Accel::Tcg,
                reason: format!("kvm unusable ({why}); using tcg"),
            },
        }),
    }
}

/// Checks that KVM runs a guest here; the error says why not.
pub fn kvm_works(
    qemu: &Path,
    probe_kernel: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Result<(), String> {
    let dev = Path::new("/dev/kvm");
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Err(format!("/dev/kvm: {e}"));
    }
    let kernel = match probe_kernel.map(Path::to_path_buf).or_else(host_kernel) {
        Some(k) => k,
        None => return Err("no kernel to probe with (none given, none in /boot)".into()),
    };
    let cache = cache_dir.map(|d| d.join(format!("kvm-probe-{}", cache_key(qemu))));
    if let Some(c) = &cache {
        if let Ok(text) = fs::read_to_string(c) {
            return if text == "ok" { Ok(()) } else { Err(text) };
        }
    }
    let verdict = probe(qemu, &kernel);
    if let Some(c) = &cache {
        let _ = fs::create_dir_all(c.parent().expect("cache file has a parent"));
        let _ = fs::write(
            c,
            verdict
                .as_ref()
                .map_or_else(|e| e.clone(), |()| "ok".into()),
        );
    }
    verdict
}

fn cache_key(qemu: &Path) -> String {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    crate::image::digest::sha256_bytes(format!("{}|{}", boot_id.trim(), qemu.display()).as_bytes())
        [..16]
        .to_string()
}

fn host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// Boots `kernel` under KVM without a root fs and waits for its banner on the console.
fn probe(qemu: &Path, kernel: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("probe folder: {e}"))?;
    let console = dir.path().join("console.log");
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-machine",
        "q35,accel=kvm",
        "-cpu",
        "host",
        "-m",
        "256M",
        "-smp",
        "1",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-chardev")
    .arg(format!("file,id=c,path={}", console.display()))
    .args(["-serial", "chardev:c", "-kernel"])
    .arg(kernel)
    .args(["-append", "console=ttyS0 panic=-1 earlyprintk=serial"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut qemu_proc = ProcessGroup::spawn("kvm-probe", &mut cmd)
        .map_err(|e| format!("{}: {e}", qemu.display()))?
        .with_grace(Duration::from_secs(1));
    let result = wait_until(
        "the probe kernel's banner under kvm",
        PROBE_TIMEOUT,
        Duration::from_millis(200),
        || {
            let text = fs::read_to_string(&console).unwrap_or_default();
            if text.contains("Linux version") {
                return Poll::Ready(());
            }
            match qemu_proc.try_status() {
                Ok(Some(status)) if !text.contains("Linux version") => {
                    Poll::Fatal(format!("qemu exited ({status}) before the kernel spoke"))
                }
                _ => Poll::Pending("no kernel banner yet".into()),
            }
        },
    );
    qemu_proc.terminate();
    result.map_err(|e| e.to_string())
}
