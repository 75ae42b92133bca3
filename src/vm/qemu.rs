//! The QEMU command line, built from a [`VmConfig`] and the run folder's files.
//!
//! Nothing is spliced: every value inside an option string is rendered from a type (an
//! address, a port, a number) or is a path escaped for QEMU's option syntax
//! ([`opt_path`]: commas doubled), so no value can add an option of its own.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::accel::Accel;
use super::config::{Boot, FirstBoot, VmConfig};

/// The files of one VM inside its run folder.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// The qcow2 overlay on top of the base image.
    pub overlay: PathBuf,
    /// The NoCloud seed volume (cloud-init).
    pub seed: PathBuf,
    /// The Ignition config (Ignition).
    pub ignition: PathBuf,
    /// The serial console log.
    pub console: PathBuf,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// The writable UEFI vars copy (UEFI boot only).
    pub efi_vars: PathBuf,
    /// QEMU's own stderr.
    pub qemu_log: PathBuf,
}

impl RunFiles {
    /// The standard names inside `dir`.
    pub fn in_dir(dir: &Path) -> RunFiles {
        RunFiles {
            overlay: dir.join("overlay.qcow2"),
            seed: dir.join("seed.img"),
            ignition: dir.join("ignition.json"),
            console: dir.join("console.log"),
            qmp: dir.join("qmp.sock"),
            efi_vars: dir.join("efi-vars.fd"),
            qemu_log: dir.join("qemu.log"),
        }
    }
}

/// A path as a value inside a QEMU option string (`file=PATH,...`): QEMU's option
/// parser ends a value at a comma unless it is doubled.
pub fn opt_path(prefix: &str, path: &Path) -> OsString {
    let mut out = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// The NIC's id, for QMP `set_link`.
pub const NIC_ID: &str = "nic0";

/// Builds the QEMU command for `config` with the resolved acceleration and SSH port.
pub fn command(config: &VmConfig, accel: Accel, ssh_port: u16, files: &RunFiles) -> Command {
    let mut cmd = Command::new(&config.qemu);
    let cpu = config
        .cpu
        .clone()
        .unwrap_or_else(|| accel.default_cpu().to_string());
    // The tap's name and MAC are nodegate's own (`ngtapN`, from the node's slot); a
    // shaped link plugs into its emulator's switch instead, which owns the tap.
    let (netdev, nic): (OsString, String) = match &config.bridge {
        Some(b) => (
            match &b.vde {
                Some(sock) => opt_path("vde,id=net0,sock=", sock),
                None => format!("tap,id=net0,ifname={},script=no,downscript=no", b.tap).into(),
            },
            format!("virtio-net-pci,netdev=net0,id={NIC_ID},mac={}", b.mac),
        ),
        None => {
            let mut netdev =
                format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
            for f in &config.forwards {
                netdev.push_str(&format!(
                    ",guestfwd=tcp:{}:{}-cmd:socat - TCP:127.0.0.1:{}",
                    f.guest_addr, f.guest_port, f.host_port
                ));
            }
            (
                netdev.into(),
                format!("virtio-net-pci,netdev=net0,id={NIC_ID}"),
            )
        }
    };
    let os = |s: &Path| s.as_os_str().to_owned();
    let with = |opt: OsString, rest: &str| {
        let mut o = opt;
        o.push(OsStr::new(rest));
        o
    };
    let mut args: Vec<OsString> = vec![
        "-name".into(),
        format!("nodegate-{},process=nodegate-{}", config.name, config.name).into(),
        "-machine".into(),
        machine(&config.boot, accel).into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        config.vcpus.to_string().into(),
        "-m".into(),
        format!("{}M", config.memory_mib).into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-chardev".into(),
        opt_path("file,id=console,path=", &files.console),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        with(opt_path("unix:", &files.qmp), ",server=on,wait=off"),
        "-drive".into(),
        opt_path(
            "if=virtio,format=qcow2,cache=unsafe,discard=unmap,file=",
            &files.overlay,
        ),
    ];
    // Where the seed drive always was (the NIC's PCI slot, hence its name, follows it).
    match config.first_boot {
        FirstBoot::CloudInit => args.extend([
            "-drive".into(),
            opt_path("if=virtio,format=raw,readonly=on,file=", &files.seed),
        ]),
        FirstBoot::Ignition => args.extend([
            "-fw_cfg".into(),
            opt_path(
                &format!("name={},file=", super::ignition::FW_CFG_NAME),
                &files.ignition,
            ),
        ]),
    }
    args.extend([
        "-netdev".into(),
        netdev,
        "-device".into(),
        nic.into(),
        "-device".into(),
        "virtio-rng-pci".into(),
    ]);
    match &config.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            args.push("-kernel".into());
            args.push(os(kernel));
            if let Some(initrd) = initrd {
                args.push("-initrd".into());
                args.push(os(initrd));
            }
            args.push("-append".into());
            args.push(cmdline.into());
        }
        Boot::Bios => {}
        Boot::Uefi {
            code, secure_boot, ..
        } => {
            let c = opt_path("if=pflash,format=raw,unit=0,readonly=on,file=", code);
            let v = opt_path("if=pflash,format=raw,unit=1,file=", &files.efi_vars);
            args.extend(["-drive".into(), c, "-drive".into(), v]);
            if *secure_boot {
                // Only SMM may write the vars flash: the guest OS cannot turn Secure
                // Boot off or enroll keys of its own.
                args.extend([
                    "-global".into(),
                    "driver=cfi.pflash01,property=secure,value=on".into(),
                ]);
            }
        }
    }
    cmd.args(args);
    cmd
}

/// `-machine`: q35, with SMM for Secure Boot firmware (which will not start without it).
fn machine(boot: &Boot, accel: Accel) -> String {
    let smm = match boot {
        Boot::Uefi {
            secure_boot: true, ..
        } => ",smm=on",
        _ => "",
    };
    format!("q35{smm},accel={}", accel.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::config::GuestForward;

    #[test]
    fn command_line_isolates_the_guest_and_forwards_only_what_is_asked() {
        let mut config = VmConfig::new(
            "t",
            PathBuf::from("/img/base.qcow2"),
            Boot::Kernel {
                kernel: PathBuf::from("/img/vmlinuz"),
                initrd: None,
                cmdline: "console=ttyS0 root=/dev/vda".into(),
            },
            PathBuf::from("/run/x"),
        );
        config.forwards.push(GuestForward {
            guest_addr: std::net::Ipv4Addr::new(10, 0, 2, 100),
            guest_port: 6443,
            host_port: 16443,
        });
        let files = RunFiles::in_dir(Path::new("/run/x"));
        let cmd = command(&config, Accel::Tcg, 2222, &files);
        let line: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = line.join(" ");
        assert!(
            joined.contains("-machine q35,accel=tcg -cpu max"),
            "{joined}"
        );
        assert!(joined.contains("restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,guestfwd=tcp:10.0.2.100:6443-cmd:socat - TCP:127.0.0.1:16443"), "{joined}");
        assert!(joined.contains("file=/run/x/overlay.qcow2"), "{joined}");
        assert!(
            !joined.contains("/img/base.qcow2"),
            "the base must never be a drive: {joined}"
        );
        assert!(
            joined.contains("-append console=ttyS0 root=/dev/vda"),
            "{joined}"
        );
        assert!(
            joined.contains("readonly=on,file=/run/x/seed.img"),
            "{joined}"
        );
    }

    #[test]
    fn secure_boot_gets_smm_and_flash_only_smm_writes_and_ignition_gets_fw_cfg() {
        // QEMU's argv for `boot` (and `first_boot`), its run folder `dir`, as one line.
        let joined_in = |dir: &str, boot: Boot, first_boot: FirstBoot| {
            let mut config =
                VmConfig::new("t", PathBuf::from("/b.qcow2"), boot, PathBuf::from(dir));
            config.first_boot = first_boot;
            let args: Vec<String> =
                command(&config, Accel::Tcg, 22, &RunFiles::in_dir(Path::new(dir)))
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
            args.join(" ")
        };
        let joined = |boot: Boot| joined_in("/run/x", boot, FirstBoot::CloudInit);
        let sb = joined(Boot::debian_uefi(true));
        assert!(sb.contains("-machine q35,smm=on,accel=tcg "), "{sb}");
        assert!(
            sb.contains("readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
            "{sb}"
        );
        assert!(sb.contains("unit=1,file=/run/x/efi-vars.fd"), "{sb}");
        assert!(
            sb.contains("-global driver=cfi.pflash01,property=secure,value=on"),
            "{sb}"
        );
        let args = joined_in("/run/x,y", Boot::Bios, FirstBoot::Ignition);
        assert!(
            args.contains("-fw_cfg name=opt/com.coreos/config,file=/run/x,,y/ignition.json"),
            "{args}"
        );
        assert!(
            !args.contains("seed.img"),
            "no seed volume beside Ignition: {args}"
        );
        let plain = joined(Boot::debian_uefi(false));
        assert!(plain.contains("-machine q35,accel=tcg "), "{plain}");
        assert!(
            plain.contains("file=/usr/share/OVMF/OVMF_CODE_4M.fd"),
            "{plain}"
        );
        assert!(!plain.contains("-global"), "{plain}");
    }

    #[test]
    fn on_the_bridge_the_nic_is_the_nodes_tap_and_nothing_is_forwarded() {
        let mut config = VmConfig::new(
            "t",
            PathBuf::from("/img/base.qcow2"),
            Boot::Bios,
            PathBuf::from("/run/x"),
        );
        config.forwards.push(GuestForward {
            guest_addr: std::net::Ipv4Addr::new(10, 0, 2, 100),
            guest_port: 6443,
            host_port: 16443,
        });
        config.bridge = Some(crate::network::BridgePort {
            ns: std::sync::Arc::new(crate::network::Namespace::create().unwrap()),
            tap: "ngtap3".into(),
            mac: "52:54:00:6e:67:03".into(),
            addr: std::net::Ipv4Addr::new(10, 0, 2, 18),
            vde: None,
        });
        let files = RunFiles::in_dir(Path::new("/run/x"));
        let args = |config: &VmConfig| {
            let joined: Vec<String> = command(config, Accel::Tcg, 22, &files)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            joined.join(" ")
        };
        let joined = args(&config);
        assert!(
            joined.contains("-netdev tap,id=net0,ifname=ngtap3,script=no,downscript=no -device virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:6e:67:03"),
            "{joined}"
        );
        assert!(!joined.contains("hostfwd"), "{joined}");
        assert!(!joined.contains("guestfwd"), "{joined}");
        // A shaped link: the emulator's switch, its path's commas doubled.
        config.bridge.as_mut().unwrap().vde = Some(PathBuf::from("/run/x,y/qemu.vde"));
        let joined = args(&config);
        assert!(
            joined.contains("-netdev vde,id=net0,sock=/run/x,,y/qemu.vde -device virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:6e:67:03"),
            "{joined}"
        );
    }

    #[test]
    fn commas_in_paths_cannot_add_options() {
        let p = Path::new("/tmp/a,format=raw,file=/etc/shadow");
        assert_eq!(
            opt_path("file=", p),
            OsString::from("file=/tmp/a,,format=raw,,file=/etc/shadow")
        );
    }
}
