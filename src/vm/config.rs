//! What a VM should be: parsed and checked before anything starts.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot: QEMU loads the kernel and initrd; the disk holds the root fs.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// The initramfs.
        initrd: Option<PathBuf>,
        /// The kernel command line.
        cmdline: String,
    },
    /// Legacy BIOS (SeaBIOS) boots the disk.
    Bios,
    /// UEFI (OVMF) boots the disk; each VM gets a writable copy of the vars template.
    Uefi {
        /// OVMF code (read-only).
        code: PathBuf,
        /// OVMF vars template (copied per VM).
        vars: PathBuf,
        /// Secure Boot enforcing: the code is a Secure Boot build, which needs SMM and
        /// flash that only SMM may write.
        secure_boot: bool,
    },
}

impl Boot {
    /// A short name for reports: `kernel`, `bios`, `uefi` or `uefi secure-boot`.
    pub fn kind(&self) -> &'static str {
        match self {
            Boot::Kernel { .. } => "kernel",
            Boot::Bios => "bios",
            Boot::Uefi {
                secure_boot: true, ..
            } => "uefi secure-boot",
            Boot::Uefi { .. } => "uefi",
        }
    }

    /// UEFI with Debian's OVMF files; with `secure_boot`, its Secure Boot build and vars
    /// with Microsoft's keys enrolled (what clouds' Secure Boot VMs trust), so shim
    /// signed by Microsoft's UEFI CA starts and unsigned loaders are refused.
    pub fn debian_uefi(secure_boot: bool) -> Boot {
        let (code, vars) = if secure_boot {
            ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
        } else {
            ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
        };
        Boot::Uefi {
            code: Path::new("/usr/share/OVMF").join(code),
            vars: Path::new("/usr/share/OVMF").join(vars),
            secure_boot,
        }
    }
}

/// How the guest gets its first-boot configuration (login user and key, host key, name,
/// the seed's files).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstBoot {
    /// A NoCloud seed volume (label `CIDATA`) for cloud-init.
    #[default]
    CloudInit,
    /// An Ignition config on QEMU's fw_cfg (`opt/com.coreos/config`).
    Ignition,
}

impl FirstBoot {
    /// The name used in profiles and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            FirstBoot::CloudInit => "cloud-init",
            FirstBoot::Ignition => "ignition",
        }
    }
}

/// The acceleration asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM if it really runs a guest here, else TCG with a notice.
    Auto,
    /// KVM or fail.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(format!("unknown accel {s:?} (auto, kvm, tcg)")),
        }
    }
}

/// A guest-side address the VM may connect to, forwarded to a host loopback port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestForward {
    /// Guest-visible IPv4 address inside QEMU's user network (see [`user_net_addr`]).
    pub guest_addr: Ipv4Addr,
    /// Guest-visible port.
    pub guest_port: u16,
    /// Host port on 127.0.0.1.
    pub host_port: u16,
}

/// Checks that `addr` can carry a guest forward in QEMU's user network: inside
/// 10.0.2.0/24 and none of the addresses slirp keeps for itself (network, gateway .2,
/// DNS .3, the DHCP range .15-.31, broadcast). The error says why not.
pub fn user_net_addr(addr: Ipv4Addr) -> Result<Ipv4Addr, String> {
    let [a, b, c, d] = addr.octets();
    if (a, b, c) != (10, 0, 2) {
        return Err(format!("{addr} is outside QEMU's user network 10.0.2.0/24"));
    }
    match d {
        0 | 255 => Err(format!(
            "{addr} is the user network's network or broadcast address"
        )),
        2 | 3 => Err(format!("{addr} is slirp's own gateway or DNS address")),
        15..=31 => Err(format!("{addr} is in slirp's DHCP range 10.0.2.15-31")),
        _ => Ok(addr),
    }
}

/// Per-phase deadlines of a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimeouts {
    /// Until the first console byte.
    pub console: Duration,
    /// Until SSH accepts the run's key.
    pub ssh: Duration,
    /// Until `systemctl is-system-running --wait` returns.
    pub ready: Duration,
}

impl BootTimeouts {
    /// Generous defaults for software emulation (TCG) on a busy 2-core machine, where
    /// a Debian node has been seen to take 50 s to SSH when idle and 260 s under load.
    pub fn tcg() -> BootTimeouts {
        BootTimeouts {
            console: Duration::from_secs(120),
            ssh: Duration::from_secs(600),
            ready: Duration::from_secs(600),
        }
    }
}

/// Everything needed to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Name used in the run folder and the QEMU process title.
    pub name: String,
    /// The base disk image (never written).
    pub image: PathBuf,
    /// Its format as the manifest states it (`raw`, `qcow2`); `None`: read from its
    /// bytes. Never probed by QEMU.
    pub image_format: Option<String>,
    /// How it boots.
    pub boot: Boot,
    /// Acceleration.
    pub accel: AccelChoice,
    /// CPU model; default `max` under TCG and `host` under KVM.
    pub cpu: Option<String>,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Folder for the overlay, seed, console log, QMP socket and keys.
    pub run_dir: PathBuf,
    /// The login user the first-boot configuration creates.
    pub ssh_user: String,
    /// A fixed host port for SSH; default: a free one.
    pub ssh_port: Option<u16>,
    /// Host services the guest may reach (everything else is cut off). User mode only.
    pub forwards: Vec<GuestForward>,
    /// The run's bridge: when set, the NIC is this tap (QEMU starts inside the run's
    /// namespace) instead of user-mode NAT, and `ssh_port` and `forwards` are unused.
    pub bridge: Option<crate::network::BridgePort>,
    /// Deadlines.
    pub timeouts: BootTimeouts,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// How the first-boot configuration reaches the guest.
    pub first_boot: FirstBoot,
    /// Files the first-boot configuration writes in the guest (cloud-init `write_files`,
    /// Ignition `storage.files`), the way a cloud's metadata hands an agent its
    /// configuration.
    pub seed_files: Vec<crate::vm::seed::SeedFile>,
}

impl VmConfig {
    /// A config with defaults for everything but the image, boot method and run folder.
    pub fn new(name: &str, image: PathBuf, boot: Boot, run_dir: PathBuf) -> VmConfig {
        VmConfig {
            name: name.to_string(),
            image,
            image_format: None,
            boot,
            accel: AccelChoice::Auto,
            cpu: None,
            vcpus: 2,
            memory_mib: 2048,
            run_dir,
            ssh_user: "nodegate".into(),
            ssh_port: None,
            forwards: Vec::new(),
            bridge: None,
            timeouts: BootTimeouts::tcg(),
            qemu: PathBuf::from("qemu-system-x86_64"),
            first_boot: FirstBoot::CloudInit,
            seed_files: Vec::new(),
        }
    }
}
