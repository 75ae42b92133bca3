//! [`Vm`]: a running QEMU guest, its run folder, its SSH access, and its teardown.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::accel::{self, AccelDecision, KvmUnavailable};
use super::config::FirstBoot;
use super::config::{Boot, VmConfig};
use super::console::{self, ConsoleWatch, Finding, Trouble};
use super::disk::{self, DiskError};
use super::ignition;
use super::qemu::{self, RunFiles};
use super::qmp::{Qmp, QmpError};
use super::seed::{self, SeedConfig};
use crate::exit;
use crate::interrupt;
use crate::network::Dialer;
use crate::process::{run_bounded, ProcessGroup};
use crate::ssh::{generate_keypair, SshError, SshSession, SshTarget};
use crate::wait::{wait_until, Poll, WaitError};

/// The phases of a boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// From QEMU's start to the first console byte.
    Console,
    /// Until SSH accepts the run's key.
    Ssh,
    /// Until `systemctl is-system-running --wait` answers.
    Ready,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Console => "console",
            Phase::Ssh => "ssh",
            Phase::Ready => "ready",
        })
    }
}

/// Why a VM could not be started or reached. Messages are one line and name the file,
/// port or phase concerned; [`VmError::exit_code`] gives the class.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The QEMU binary is missing.
    #[error("{binary}: qemu not found (install qemu-system-x86): {source}")]
    MissingQemu {
        /// The binary looked for.
        binary: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The image cannot be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A boot file (kernel, initrd, firmware) is missing.
    #[error("{path}: {what} missing: {source}")]
    BootFile {
        /// The file.
        path: PathBuf,
        /// Which file.
        what: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// The host has not enough memory available for the VM.
    #[error("not enough memory: the VM needs {requested_mib} MiB, the host has {available_mib} MiB available")]
    NotEnoughMemory {
        /// Requested (plus QEMU's overhead).
        requested_mib: u64,
        /// MemAvailable.
        available_mib: u64,
    },
    /// The run folder cannot be used.
    #[error("{path}: run folder not writable: {source}")]
    RunDir {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// KVM was demanded and does not work.
    #[error(transparent)]
    Kvm(#[from] KvmUnavailable),
    /// Key generation failed.
    #[error("ssh keys: {0}")]
    Keys(String),
    /// The SSH port asked for is taken.
    #[error("127.0.0.1:{port}: port already in use (choose another --ssh-port or let nodegate pick one)")]
    PortInUse {
        /// The port.
        port: u16,
    },
    /// QEMU refused to start.
    #[error("qemu failed to start: {reason} (see {log})")]
    QemuStart {
        /// QEMU's stderr log.
        log: PathBuf,
        /// Its first error line.
        reason: String,
    },
    /// QEMU exited during a phase.
    #[error("{phase} phase: qemu exited ({status}); last console lines: {}", tail.join(" | "))]
    QemuExited {
        /// The phase.
        phase: Phase,
        /// Exit status.
        status: String,
        /// Last console lines.
        tail: Vec<String>,
    },
    /// A phase ran out of time.
    #[error("{phase} phase timed out after {} ({reason}); last console lines: {}", crate::message::duration(*waited), tail.join(" | "))]
    Timeout {
        /// The phase.
        phase: Phase,
        /// How long it waited.
        waited: Duration,
        /// What it was waiting for and the last error.
        reason: String,
        /// Last console lines.
        tail: Vec<String>,
    },
    /// The console shows trouble.
    #[error("{phase} phase: console shows {}", findings.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    Console {
        /// The phase.
        phase: Phase,
        /// The matching lines.
        findings: Vec<Finding>,
    },
    /// systemd reports the system degraded (for `nodegate boot`; a run judges this in
    /// its checks instead).
    #[error("ready phase: system is {state}; failed units: {}", failed_units.join(", "))]
    Degraded {
        /// `degraded`, `maintenance`...
        state: String,
        /// `systemctl --failed` units.
        failed_units: Vec<String>,
    },
    /// SSH failed after the guest was reachable.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// SIGINT or SIGTERM.
    #[error("interrupted during the {phase} phase; the VM was torn down")]
    Interrupted {
        /// The phase.
        phase: Phase,
    },
}

impl VmError {
    /// The exit code of this error's class.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmError::Disk(d) => d.exit_code(),
            VmError::BootFile { .. } => exit::BAD_INPUT,
            VmError::Interrupted { .. } => exit::INTERRUPTED,
            _ if self.is_image_fault() => exit::CHECKS_FAILED,
            _ => exit::ENVIRONMENT,
        }
    }

    /// Whether the image, not the host, is at fault: its disk holds nothing bootable,
    /// its console shows a panic or an emergency shell, or it booted degraded. Such a
    /// run ends as failed (exit 1), never as an infrastructure error.
    pub fn is_image_fault(&self) -> bool {
        matches!(
            self,
            VmError::Disk(DiskError::NotBootable { .. })
                | VmError::Console { .. }
                | VmError::Degraded { .. }
        )
    }
}

/// How the guest came up: systemd's verdict and what the console showed on the way.
/// A run judges these in its checks; `nodegate boot` fails on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootHealth {
    /// `systemctl is-system-running --wait`: `running`, `degraded`...
    pub state: String,
    /// `systemctl --failed` units (when not running).
    pub failed_units: Vec<String>,
    /// Non-fatal console trouble (Oops, BUG, OOM kill, ordering cycle, failed unit).
    pub findings: Vec<Finding>,
}

impl BootHealth {
    /// The boot's trouble as an error, if it had any.
    pub fn problem(&self) -> Option<VmError> {
        if self.state != "running" {
            return Some(VmError::Degraded {
                state: self.state.clone(),
                failed_units: self.failed_units.clone(),
            });
        }
        (!self.findings.is_empty()).then(|| VmError::Console {
            phase: Phase::Ready,
            findings: self.findings.clone(),
        })
    }
}

/// Times of one boot, from QEMU's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootTimings {
    /// To the first console byte.
    pub console: Option<Duration>,
    /// To SSH accepting the key.
    pub ssh: Option<Duration>,
    /// To `is-system-running` answering running.
    pub ready: Option<Duration>,
}

/// A running VM. Dropping it stops QEMU (its whole process group) and removes a
/// temporary run folder.
pub struct Vm {
    /// What it was booted from.
    pub config: VmConfig,
    /// The accelerator chosen, and why.
    pub accel: AccelDecision,
    /// Host port forwarded to the guest's port 22 (22 on the run's bridge).
    pub ssh_port: u16,
    /// The files in the run folder.
    pub files: RunFiles,
    /// The SSH access to this guest.
    pub ssh_target: SshTarget,
    /// Phase timings.
    pub timings: BootTimings,
    /// How it came up (after [`Vm::wait_ready`]).
    pub health: BootHealth,
    started: Instant,
    console: ConsoleWatch,
    qemu: ProcessGroup,
    _temp_dir: Option<tempfile::TempDir>,
}

/// MemAvailable of the host in MiB.
pub fn mem_available_mib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// QEMU's own memory on top of the guest's, for the availability check.
pub const QEMU_OVERHEAD_MIB: u64 = 256;

/// What one VM of `memory_mib` takes of the host's memory: the guest's and QEMU's own.
pub fn footprint_mib(memory_mib: u64) -> u64 {
    memory_mib + QEMU_OVERHEAD_MIB
}

fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

fn check_file(path: &Path, what: &'static str) -> Result<(), VmError> {
    fs::File::open(path)
        .map(|_| ())
        .map_err(|source| VmError::BootFile {
            path: path.to_owned(),
            what,
            source,
        })
}

impl Vm {
    /// Checks the inputs, prepares the run folder (keys, seed, overlay) and starts QEMU.
    /// Returns as soon as QEMU runs; [`Vm::wait_ready`] waits for the guest.
    ///
    /// Everything goes to `config.run_dir`; pass the [`tempfile::TempDir`] owning it as
    /// `temp_dir` to have the folder removed when the [`Vm`] is dropped.
    pub fn start(config: VmConfig, temp_dir: Option<tempfile::TempDir>) -> Result<Vm, VmError> {
        match run_bounded(
            Command::new(&config.qemu).arg("--version"),
            None,
            Duration::from_secs(30),
        ) {
            Ok(_) => {}
            Err(crate::process::CommandError::Spawn { source, .. }) => {
                return Err(VmError::MissingQemu {
                    binary: config.qemu.clone(),
                    source,
                })
            }
            Err(crate::process::CommandError::Interrupted { .. }) => {
                return Err(VmError::Interrupted {
                    phase: Phase::Console,
                })
            }
            Err(e) => {
                return Err(VmError::MissingQemu {
                    binary: config.qemu.clone(),
                    source: io::Error::other(e.to_string()),
                })
            }
        }
        let info = disk::inspect(&config.image, config.image_format.as_deref())?;
        match &config.boot {
            Boot::Kernel { kernel, initrd, .. } => {
                check_file(kernel, "kernel")?;
                if let Some(i) = initrd {
                    check_file(i, "initrd")?;
                }
            }
            Boot::Uefi { code, vars, .. } => {
                check_file(code, "OVMF code (install ovmf)")?;
                check_file(vars, "OVMF vars (install ovmf)")?;
            }
            Boot::Bios => {}
        }
        if let Some(available) = mem_available_mib() {
            let requested = footprint_mib(config.memory_mib);
            if requested > available {
                return Err(VmError::NotEnoughMemory {
                    requested_mib: requested,
                    available_mib: available,
                });
            }
        }
        let run_dir_err = |source| VmError::RunDir {
            path: config.run_dir.clone(),
            source,
        };
        fs::create_dir_all(&config.run_dir).map_err(run_dir_err)?;
        let probe = config.run_dir.join(".writable");
        fs::write(&probe, b"").map_err(run_dir_err)?;
        let _ = fs::remove_file(&probe);
        disk::check_bootable(&config.image, &info, &config.run_dir)?;

        let probe_kernel = match &config.boot {
            Boot::Kernel { kernel, .. } => Some(kernel.as_path()),
            _ => None,
        };
        let accel = accel::resolve(
            config.accel,
            &config.qemu,
            probe_kernel,
            Some(&crate::cache_dir()),
        )?;

        let files = RunFiles::in_dir(&config.run_dir);
        let client = generate_keypair(&config.run_dir.join("id_ed25519"), "nodegate")
            .map_err(VmError::Keys)?;
        let host = generate_keypair(&config.run_dir.join("host_ed25519"), "nodegate-host")
            .map_err(VmError::Keys)?;
        let seed_config = SeedConfig {
            instance_id: format!("nodegate-{}-{}", config.name, std::process::id()),
            hostname: config.name.clone(),
            user: config.ssh_user.clone(),
            authorized_key: client.public.clone(),
            host_key: (
                host.private_pem()
                    .map_err(|e| VmError::Keys(e.to_string()))?,
                host.public.clone(),
            ),
            files: config.seed_files.clone(),
        };
        // Either carries the guest's host private key: 0600 from its first byte.
        match config.first_boot {
            FirstBoot::CloudInit => {
                let _ = fs::remove_file(&files.seed);
                seed::write(&seed_config, &files.seed).map_err(run_dir_err)?;
            }
            FirstBoot::Ignition => {
                let _ = fs::remove_file(&files.ignition);
                ignition::write(&seed_config, &files.ignition).map_err(run_dir_err)?;
            }
        }
        let _ = fs::remove_file(&host.private);
        let _ = fs::remove_file(&files.overlay);
        disk::create_overlay(&config.image, &info, &files.overlay)?;
        if let Boot::Uefi { vars, .. } = &config.boot {
            fs::copy(vars, &files.efi_vars).map_err(run_dir_err)?;
        }

        let (qemu, ssh_port) = Self::spawn_qemu(&config, accel.accel, &files)?;
        let (addr, dialer) = match &config.bridge {
            Some(b) => (
                SocketAddr::from((b.addr, 22)),
                Dialer::Namespace(b.ns.clone()),
            ),
            None => (
                SocketAddr::from((Ipv4Addr::LOCALHOST, ssh_port)),
                Dialer::Host,
            ),
        };
        let ssh_target = SshTarget {
            addr,
            dialer,
            user: config.ssh_user.clone(),
            key: client,
            host_key: host.public,
        };
        Ok(Vm {
            console: ConsoleWatch::new(&files.console),
            config,
            accel,
            ssh_port,
            files,
            ssh_target,
            timings: BootTimings::default(),
            health: BootHealth::default(),
            started: Instant::now(),
            qemu,
            _temp_dir: temp_dir,
        })
    }

    /// Starts QEMU on the configured port, or on free ports (retrying if another
    /// process took the port between the check and QEMU's bind).
    fn spawn_qemu(
        config: &VmConfig,
        accel: accel::Accel,
        files: &RunFiles,
    ) -> Result<(ProcessGroup, u16), VmError> {
        let run_dir_err = |source| VmError::RunDir {
            path: config.run_dir.clone(),
            source,
        };
        for _attempt in 0..5 {
            let port = match (&config.bridge, config.ssh_port) {
                (Some(_), _) => 22,
                (None, Some(p)) => p,
                (None, None) => free_port().map_err(run_dir_err)?,
            };
            let _ = fs::remove_file(&files.console);
            let _ = fs::remove_file(&files.qmp);
            let log = fs::File::create(&files.qemu_log).map_err(run_dir_err)?;
            let mut cmd = qemu::command(config, accel, port, files);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            if let Some(b) = &config.bridge {
                b.ns.enter(&mut cmd);
            }
            let mut group =
                ProcessGroup::spawn("qemu", &mut cmd).map_err(|source| VmError::MissingQemu {
                    binary: config.qemu.clone(),
                    source,
                })?;
            // QEMU fails fast on bad options or a taken port. It greets on QMP only once
            // its set-up (netdevs, drives) is complete, so a greeting means it runs.
            let started = wait_until(
                "qemu to start",
                Duration::from_secs(30),
                Duration::from_millis(50),
                || match group.try_status() {
                    Ok(Some(status)) => Poll::Ready(Some(status)),
                    _ if Qmp::connect(&files.qmp, Duration::from_secs(5)).is_ok() => {
                        Poll::Ready(None)
                    }
                    _ => Poll::Pending("no QMP greeting yet".into()),
                },
            );
            match started {
                Ok(None) | Err(WaitError::Timeout { .. }) => return Ok((group, port)),
                Ok(Some(_)) => {
                    let log = fs::read_to_string(&files.qemu_log).unwrap_or_default();
                    let reason = log
                        .lines()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("exited without a message")
                        .to_string();
                    if log.contains("Could not set up host forwarding rule") {
                        if config.ssh_port.is_some() {
                            return Err(VmError::PortInUse { port });
                        }
                        continue;
                    }
                    return Err(VmError::QemuStart {
                        log: files.qemu_log.clone(),
                        reason,
                    });
                }
                Err(_) => {
                    return Err(VmError::Interrupted {
                        phase: Phase::Console,
                    })
                }
            }
        }
        Err(VmError::QemuStart {
            log: files.qemu_log.clone(),
            reason: "no free port for SSH after 5 attempts".into(),
        })
    }

    /// Time since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The last `n` console lines.
    pub fn console_tail(&self, n: usize) -> Vec<String> {
        console::tail(&self.files.console, n)
    }

    /// The console findings so far of the given classes (read incrementally).
    pub fn console_findings(&mut self, classes: &[Trouble]) -> Vec<Finding> {
        self.console.findings(classes)
    }

    fn phase_error(&mut self, phase: Phase, err: WaitError) -> VmError {
        let tail = self.console_tail(8);
        match err {
            WaitError::Timeout { waited, what, last } => VmError::Timeout {
                phase,
                waited,
                reason: match last {
                    Some(l) => format!("waiting for {what}; last error: {l}"),
                    None => format!("waiting for {what}"),
                },
                tail,
            },
            WaitError::Interrupted { .. } => VmError::Interrupted { phase },
            WaitError::Fatal { reason, .. } => {
                let findings = self.console_findings(&console::ALL);
                let fatal: Vec<Finding> = findings
                    .into_iter()
                    .filter(|f| f.trouble.is_fatal())
                    .collect();
                if !fatal.is_empty() {
                    VmError::Console {
                        phase,
                        findings: fatal,
                    }
                } else {
                    VmError::QemuExited {
                        phase,
                        status: reason,
                        tail,
                    }
                }
            }
        }
    }

    /// Why waiting is pointless now: QEMU exited, or the console shows a fatal state.
    fn fatal_state(&mut self) -> Option<String> {
        if let Ok(Some(status)) = self.qemu.try_status() {
            return Some(format!("qemu exited: {status}"));
        }
        self.console.fatal().map(|f| f.to_string())
    }

    /// Waits for the console, SSH and systemd, each within its deadline; returns the
    /// SSH session. A fatal console state (panic, emergency shell) fails the boot within
    /// seconds of appearing; a degraded system or other console trouble is recorded in
    /// [`Vm::health`] for the checks to judge.
    pub fn wait_ready(&mut self) -> Result<SshSession, VmError> {
        let t = self.config.timeouts;
        let console_path = self.files.console.clone();
        let r = wait_until(
            "the first console byte",
            t.console,
            Duration::from_millis(100),
            || {
                if let Some(why) = self.fatal_state() {
                    return Poll::Fatal(why);
                }
                match fs::metadata(&console_path) {
                    Ok(m) if m.len() > 0 => Poll::Ready(()),
                    _ => Poll::Pending("console empty".into()),
                }
            },
        );
        r.map_err(|e| self.phase_error(Phase::Console, e))?;
        self.timings.console = Some(self.uptime());

        let target = self.ssh_target.clone();
        let r = wait_until(
            format!("ssh on {}", self.ssh_target.addr),
            t.ssh,
            Duration::from_secs(2),
            || {
                if let Some(why) = self.fatal_state() {
                    return Poll::Fatal(why);
                }
                match SshSession::connect(&target, Duration::from_secs(10)) {
                    Ok(s) => Poll::Ready(s),
                    Err(e @ SshError::HostKeyMismatch { .. }) => Poll::Fatal(e.to_string()),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            },
        );
        let mut session = r.map_err(|e| self.phase_error(Phase::Ssh, e))?;
        self.timings.ssh = Some(self.uptime());

        // Watch the console while systemd settles: a guest that drops to an emergency
        // shell now must not cost the whole ready budget.
        let out = session.exec_watched("systemctl is-system-running --wait", t.ready, &mut || {
            self.fatal_state()
        });
        let out = match out {
            Ok(o) => o,
            Err(SshError::Timeout {
                timeout, partial, ..
            }) => {
                return Err(VmError::Timeout {
                    phase: Phase::Ready,
                    waited: timeout,
                    reason: format!(
                        "waiting for systemctl is-system-running --wait (said {partial:?})"
                    ),
                    tail: self.console_tail(8),
                })
            }
            Err(SshError::Stopped { .. }) => {
                return Err(self.phase_error(
                    Phase::Ready,
                    WaitError::Fatal {
                        what: "systemd".into(),
                        reason: "console".into(),
                    },
                ))
            }
            Err(SshError::Interrupted { .. }) => {
                return Err(VmError::Interrupted {
                    phase: Phase::Ready,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let state = out.stdout.trim().to_string();
        let failed_units = if state == "running" {
            Vec::new()
        } else {
            session
                .exec(
                    "systemctl --failed --plain --no-legend --no-pager",
                    Duration::from_secs(30),
                )
                .map(|o| {
                    o.stdout
                        .lines()
                        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.timings.ready = Some(self.uptime());
        let findings = self
            .console_findings(&console::ALL)
            .into_iter()
            .filter(|f| f.trouble != Trouble::FailedUnit)
            .collect();
        self.health = BootHealth {
            state,
            failed_units,
            findings,
        };
        Ok(session)
    }

    /// A QMP session to this VM.
    pub fn qmp(&self) -> Result<Qmp, VmError> {
        Ok(Qmp::connect(&self.files.qmp, Duration::from_secs(10))?)
    }

    /// The QEMU process id (the process group id too).
    pub fn qemu_pid(&self) -> u32 {
        self.qemu.pid()
    }

    /// Asks the guest to power off and waits up to `grace`; then tears QEMU down.
    pub fn shutdown(mut self, grace: Duration) {
        if let Ok(mut q) = self.qmp() {
            let _ = q.powerdown();
        }
        let _ = self.qemu.wait_timeout(grace);
        // Drop terminates whatever is left.
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.qemu.try_status(), Ok(None)) && !interrupt::hurry() {
            if let Ok(mut q) = Qmp::connect(&self.files.qmp, Duration::from_secs(2)) {
                let _ = q.quit();
            }
            let _ = self
                .qemu
                .wait_timeout(interrupt::grace(Duration::from_secs(2)));
        }
        self.qemu.terminate();
    }
}
