//! `nodegate boot`: boot an image, wait until it is ready, print how to reach it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::cluster::{self, ControlPlaneConfig, JoinConfig, JoinMethod};
use crate::vm::{AccelChoice, Boot, Vm, VmConfig};
use crate::{exit, interrupt};

/// Firmware for disk boot.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Firmware {
    /// SeaBIOS.
    Bios,
    /// OVMF (UEFI).
    Uefi,
}

/// First-boot configurations `boot` can hand over.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FirstBootArg {
    /// A NoCloud seed volume.
    CloudInit,
    /// An Ignition config on fw_cfg.
    Ignition,
}

/// Disk image formats `boot` takes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiskFormatArg {
    /// Read from the image's first bytes (qcow2 by its magic, else raw); never probed
    /// by QEMU.
    Auto,
    /// Raw bytes.
    Raw,
    /// qcow2 (self-contained: no backing or data file).
    Qcow2,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// The disk image (qcow2 or raw); never written.
    image: PathBuf,
    /// The image's format.
    #[arg(long, value_enum, default_value = "auto")]
    format: DiskFormatArg,
    /// Kernel for direct kernel boot (the image then holds the root filesystem).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initrd for direct kernel boot.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line for direct kernel boot.
    #[arg(
        long,
        requires = "kernel",
        default_value = "console=ttyS0 root=/dev/vda rw"
    )]
    cmdline: String,
    /// Firmware when booting from the disk.
    #[arg(long, value_enum, default_value = "uefi", conflicts_with = "kernel")]
    firmware: Firmware,
    /// Boot on OVMF's Secure Boot firmware (Microsoft's keys enrolled, enforcing): an
    /// unsigned boot loader is refused.
    #[arg(long, conflicts_with = "kernel")]
    secure_boot: bool,
    /// How the image takes its first-boot configuration: a cloud-init seed volume, or an
    /// Ignition config on QEMU's fw_cfg.
    #[arg(long, value_enum, default_value = "cloud-init")]
    first_boot: FirstBootArg,
    /// Accelerator: auto probes KVM and falls back to TCG.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// CPU model (default: host under KVM, max under TCG).
    #[arg(long)]
    cpu: Option<String>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u64,
    /// Run folder (kept); default: a temporary folder removed at the end.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Login user created by cloud-init.
    #[arg(long, default_value = "nodegate")]
    ssh_user: String,
    /// Host port for SSH (default: a free one).
    #[arg(long)]
    ssh_port: Option<u16>,
    /// Deadline for SSH to answer.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    ssh_timeout: Duration,
    /// Deadline for `systemctl is-system-running --wait`.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// Join the node to a control plane once it is ready: auto (local: the provider
    /// proven here; kind only by name), kind, local, local=BIN_DIR or kubeconfig=PATH.
    #[arg(long, value_name = "PROVIDER")]
    control_plane: Option<String>,
    /// kubeadm preflight errors the image knowingly fails (the test bed has no crictl).
    #[arg(long, value_delimiter = ',', default_value = "FileExisting-crictl")]
    ignore_preflight_errors: Vec<String>,
    /// Deadline from the join command to the Node being Ready.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    join_timeout: Duration,
    /// Hold the VM until Ctrl-C after it is ready.
    #[arg(long)]
    keep: bool,
}

pub fn boot(args: BootArgs) -> Result<i32, CliError> {
    interrupt::install()
        .map_err(|e| CliError::Usage(format!("cannot install signal handlers: {e}")))?;
    let boot = match &args.kernel {
        Some(kernel) => Boot::Kernel {
            kernel: kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
        },
        None => match args.firmware {
            Firmware::Bios if args.secure_boot => {
                return Err(CliError::Usage(
                    "--secure-boot needs --firmware uefi".into(),
                ))
            }
            Firmware::Bios => Boot::Bios,
            Firmware::Uefi => Boot::debian_uefi(args.secure_boot),
        },
    };
    for stale in crate::rundir::reap(&crate::rundir::root()) {
        tell!("nodegate: notice: {}", crate::rundir::describe(&stale));
    }
    // The run's private folder: reaped by the next nodegate if this one is killed.
    let private = crate::rundir::RunDir::create("boot", &Default::default()).map_err(|source| {
        CliError::Output {
            path: crate::rundir::root(),
            source,
        }
    })?;
    let run_dir = match &args.run_dir {
        Some(d) => d.clone(),
        None => private.path().join("vm"),
    };
    let name = args
        .image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("node")
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let mut config = VmConfig::new(&name, args.image.clone(), boot, run_dir.clone());
    config.image_format = match args.format {
        DiskFormatArg::Auto => None,
        DiskFormatArg::Raw => Some("raw".into()),
        DiskFormatArg::Qcow2 => Some("qcow2".into()),
    };
    config.accel = args.accel;
    config.cpu = args.cpu.clone();
    config.vcpus = args.vcpus;
    config.memory_mib = args.memory;
    config.ssh_user = args.ssh_user.clone();
    config.first_boot = match args.first_boot {
        FirstBootArg::CloudInit => crate::vm::FirstBoot::CloudInit,
        FirstBootArg::Ignition => crate::vm::FirstBoot::Ignition,
    };
    config.ssh_port = args.ssh_port;
    config.timeouts.ssh = args.ssh_timeout;
    config.timeouts.ready = args.ready_timeout;

    let control_plane = match args.control_plane.as_deref() {
        None => None,
        Some("auto") => {
            // boot's VM is on QEMU's user network: kind, which joins the run's own
            // network, is not a choice here.
            let (c, why) = (
                ControlPlaneConfig::Local(cluster::LocalConfig::default()),
                "auto: local (nodegate boot joins local or kubeconfig control planes)",
            );
            tell!("nodegate: notice: control plane {why}");
            Some(c)
        }
        Some(p) => Some(p.parse::<ControlPlaneConfig>().map_err(CliError::Usage)?),
    };
    if matches!(control_plane, Some(ControlPlaneConfig::Kind(_))) {
        return Err(CliError::Usage(
            "nodegate boot joins local or kubeconfig control planes; kind joins the nodes of a run (nodegate run --control-plane kind), on the run's own network".into(),
        ));
    }
    let control_plane = control_plane.map(|mut c| {
        if let ControlPlaneConfig::Local(l) = &mut c {
            l.state_dir
                .get_or_insert_with(|| private.path().join("control-plane"));
        }
        c
    });
    // The control plane comes first: the VM is started with a forward to its API server.
    let control_plane = match control_plane {
        Some(c) => Some(c.start(None)?),
        None => None,
    };
    if let Some(cp) = &control_plane {
        config.forwards.push(cp.forward());
    }
    let mut vm = Vm::start(config, None)?;
    if vm.accel.accel.as_str() == "tcg" && args.accel != AccelChoice::Tcg {
        tell!("nodegate: notice: {}", vm.accel.reason);
    }
    // Progress for people at a terminal; CI logs get only the result or the error line.
    let tty = std::io::stderr().is_terminal();
    if tty {
        tell!(
            "booting {} ({} boot, {}, run folder {})",
            args.image.display(),
            vm.config.boot.kind(),
            vm.accel.accel.as_str(),
            run_dir.display()
        );
    }
    let mut session = vm.wait_ready()?;
    // A degraded system or console trouble fails the boot (exit 1), but --keep still
    // holds the VM so its author can look.
    let problem = vm.health.problem();
    if let Some(p) = &problem {
        tell!("nodegate: error: {p}");
        if !args.keep {
            return Err(problem.expect("some").into());
        }
    }
    let known_hosts = run_dir.join("known_hosts");
    let _ = std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}\n", vm.ssh_port, vm.ssh_target.host_key),
    );
    let t = vm.timings;
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()));
    say!(
        "ready: console {}, ssh {}, ready {} (accel {})",
        secs(t.console),
        secs(t.ssh),
        secs(t.ready),
        vm.accel.accel.as_str()
    );
    say!(
        "ssh -i {} -p {} -o UserKnownHostsFile={} {}@127.0.0.1",
        vm.ssh_target.key.private.display(),
        vm.ssh_port,
        known_hosts.display(),
        vm.config.ssh_user
    );
    // Dropped before the VM and the control plane: deletes the Node, then the token.
    let _joined = match &control_plane {
        Some(cp) => {
            let token = cp.create_token(Duration::from_secs(3600))?;
            let mut join = JoinConfig::new(
                &name.to_ascii_lowercase(),
                JoinMethod::Kubeadm {
                    ignore_preflight_errors: args.ignore_preflight_errors.clone(),
                },
            );
            join.budget = args.join_timeout;
            let node = cluster::join(cp, &token, &mut session, &join)?;
            let j = node.timings;
            say!(
                "joined: node {} registered {:.1}s, Ready {:.1}s after the join started ({} control plane)",
                node.name(),
                j.register.as_secs_f64(),
                j.ready.as_secs_f64(),
                cp.provider
            );
            say!(
                "kubectl --kubeconfig {} get nodes",
                cp.kubeconfig().display()
            );
            Some((node, token))
        }
        None => None,
    };
    drop(session);
    if args.keep {
        tell!("holding the VM; Ctrl-C to tear it down");
        while !interrupt::interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
        tell!("tearing down");
        return Ok(exit::INTERRUPTED);
    }
    vm.shutdown(Duration::from_secs(20));
    Ok(exit::PASS)
}
