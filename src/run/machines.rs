//! The run's machines: booting VMs (several at once, as `--jobs` and the cores allow),
//! each with its folder, link on the run's bridge and agent endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::agent_endpoint::{AgentEndpoint, EndpointConfig};
use crate::cluster::{BootstrapToken, JoinedNode};
use crate::network::NodeLink;
use crate::profile::AgentProvision;
use crate::runner::{Event, Phase, Stop, StopKind};
use crate::ssh::SshSession;
use crate::suite::Verification;
use crate::vm::disk;
use crate::vm::seed::SeedFile;
use crate::vm::{Boot, GuestForward, Vm, VmConfig, VmError};

use super::artifacts;
use super::environment::{classify_vm, node_fact, stop, NodeEnvironment};

/// What a VM boots: a disk (the verified copy), its stated format, how it boots, and the
/// kubeadm release its manifest names (the join's configuration API follows it).
#[derive(Debug, Clone)]
pub(super) struct VmImage {
    pub(super) path: PathBuf,
    pub(super) format: Option<String>,
    pub(super) boot: Boot,
    pub(super) kubeadm: Option<String>,
}

/// One booted VM and what belongs to it. Fields drop in order: the Node and its token
/// first, then the session, then the VM, then its tap on the run's bridge.
pub struct Machine {
    pub(super) joined: Option<(JoinedNode, BootstrapToken)>,
    pub(super) ssh: SshSession,
    pub(super) vm: Vm,
    /// Its own agent endpoint (user mode); on the bridge the run's one endpoint serves all.
    pub(super) endpoint: Option<AgentEndpoint>,
    pub(super) link: Option<NodeLink>,
    /// Node name (and artifacts sub-folder).
    pub name: String,
    /// The kubeadm release of its image's manifest.
    pub(super) kubeadm: Option<String>,
    /// When its QEMU started.
    pub(super) started: Instant,
    /// When it was up (SSH and systemd answered).
    pub(super) up_at: Instant,
    /// When its Node was Ready after its join.
    pub(super) ready_at: Option<Instant>,
}

/// A VM whose QEMU runs, not yet known to be up.
pub(super) struct Booting {
    pub(super) vm: Vm,
    endpoint: Option<AgentEndpoint>,
    link: Option<NodeLink>,
    pub(super) name: String,
    pub(super) started: Instant,
    kubeadm: Option<String>,
}

/// A [`Booting`] VM after its wait for SSH and systemd, and when that wait ended.
pub(super) struct Waited {
    booting: Booting,
    result: Result<SshSession, VmError>,
    ended: Instant,
}

impl Waited {
    /// The name of the machine and when its QEMU started.
    pub(super) fn booting_name(&self) -> (String, Instant) {
        (self.booting.name.clone(), self.booting.started)
    }
}

impl Booting {
    /// Waits for the VM to be up (on a thread of its own: the wait blocks).
    pub(super) fn wait(mut self) -> Waited {
        let result = self.vm.wait_ready();
        Waited {
            booting: self,
            result,
            ended: Instant::now(),
        }
    }
}

impl NodeEnvironment<'_> {
    /// Boots a new machine (and joins it when `join`).
    pub(super) fn machine(
        &mut self,
        join: bool,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Machine, Stop> {
        let mut v = self.machines_together(1, join, emit)?;
        Ok(v.remove(0))
    }

    /// Boots `count` machines, at most `--jobs` at once (the boots overlap: a node's
    /// boot is mostly waiting), and joins them when `join`.
    pub(super) fn machines_together(
        &mut self,
        count: usize,
        join: bool,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Vec<Machine>, Stop> {
        let image = self.image()?;
        if self.will_join {
            self.control_plane(emit)?;
        }
        let jobs = self
            .config
            .jobs
            .unwrap_or_else(|| default_jobs(self.config.profile.vm.vcpus))
            .max(1);
        emit(Event::Property {
            name: "jobs".into(),
            value: jobs.to_string(),
        });
        let mut ready = Vec::new();
        while ready.len() < count {
            let wave = (count - ready.len()).min(jobs);
            // QEMU starts on this (the main) thread: its parent-death signal is tied to it.
            let mut booting = Vec::new();
            for _ in 0..wave {
                booting.push(self.start_vm(&image, None, emit)?);
            }
            let waited: Vec<Waited> = std::thread::scope(|s| {
                let threads: Vec<_> = booting
                    .into_iter()
                    .map(|b| s.spawn(move || b.wait()))
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().expect("a boot thread does not panic"))
                    .collect()
            });
            let mut failed = None;
            let mut wave_ready = Vec::new();
            for w in waited.into_iter().rev() {
                match self.booted(w, emit) {
                    Ok(m) => wave_ready.push(m),
                    Err(s) => {
                        failed.get_or_insert(s);
                    }
                }
            }
            if let Some(s) = failed {
                return Err(s);
            }
            // Started order: the first machine is the one node checks run on.
            ready.extend(wave_ready.into_iter().rev());
        }
        if join {
            let route = self.config.nodes > 1;
            let mut all: Vec<&mut Machine> = ready.iter_mut().collect();
            self.join_all(&mut all, route, emit)
                .into_iter()
                .collect::<Result<Vec<()>, Stop>>()?;
        }
        Ok(ready)
    }

    /// The image under test as VMs boot it; an image refused at verification or with
    /// nothing to boot stops here, before a control plane starts.
    pub(super) fn image(&mut self) -> Result<VmImage, Stop> {
        if let Verification::Refused(e) = &self.verification {
            return Err(stop(
                StopKind::Integrity,
                Phase::Verify,
                format!("image refused at verification, nothing booted: {e}"),
            ));
        }
        let boot = self
            .boot
            .clone()
            .map_err(|why| stop(StopKind::Image, Phase::Boot, why))?;
        self.check_disk()?;
        Ok(VmImage {
            path: self.disk.clone(),
            format: self.disk_format.clone(),
            boot,
            kubeadm: kubeadm_release(self.verification.manifest()),
        })
    }

    /// Ends the boot phase of a waited VM: the machine, or the stop (its console kept as
    /// an artifact).
    pub(super) fn booted(
        &mut self,
        Waited {
            booting: b,
            result: r,
            ended,
        }: Waited,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Machine, Stop> {
        let r = r.map_err(|e| stop(classify_vm(&e), Phase::Boot, e.to_string()));
        emit(Event::PhaseFinished {
            phase: Phase::Boot,
            duration: ended.saturating_duration_since(b.started),
            error: r.as_ref().err().map(|s| s.reason.clone()),
            node: Some(b.name.clone()),
        });
        match r {
            Ok(ssh) => {
                let t = b.vm.timings;
                for (k, v) in [("ssh", t.ssh), ("ready", t.ready)] {
                    if let Some(v) = v {
                        node_fact(
                            emit,
                            &b.name,
                            &format!("boot.{k}_secs"),
                            format!("{:.1}", v.as_secs_f64()),
                        );
                    }
                }
                Ok(Machine {
                    joined: None,
                    ssh,
                    vm: b.vm,
                    endpoint: b.endpoint,
                    link: b.link,
                    name: b.name,
                    kubeadm: b.kubeadm,
                    started: b.started,
                    up_at: ended,
                    ready_at: None,
                })
            }
            Err(s) => {
                artifacts::keep_console(&b.vm, &self.config.artifacts, &b.name, emit);
                Err(s)
            }
        }
    }

    /// Prepares one VM of `image` (its folder, network and agent endpoint) and starts
    /// QEMU; the boot phase starts here. A roll-out's node carries its pool in its name.
    pub(super) fn start_vm(
        &mut self,
        image: &VmImage,
        pool: Option<crate::rollout::PoolRole>,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Booting, Stop> {
        self.machines += 1;
        let name = match pool {
            Some(role) => format!(
                "nodegate-{}-{}-{}",
                self.run_id,
                role.as_str(),
                self.machines
            ),
            None => format!("nodegate-{}-{}", self.run_id, self.machines),
        };
        let p = &self.config.profile;
        let temp = tempfile::Builder::new()
            .prefix("vm-")
            .tempdir_in(self.rundir.path())
            .map_err(|e| {
                stop(
                    StopKind::Infrastructure,
                    Phase::Boot,
                    format!("{}: {e}", self.rundir.path().display()),
                )
            })?;
        let mut vc = VmConfig::new(
            &name,
            image.path.clone(),
            image.boot.clone(),
            temp.path().to_owned(),
        );
        vc.image_format = image.format.clone();
        vc.accel = self.config.accel;
        vc.vcpus = p.vm.vcpus;
        vc.memory_mib = p.vm.memory_mib;
        vc.ssh_user = p.ssh.user.to_string();
        vc.first_boot = p.vm.first_boot;
        vc.timeouts.ssh = p.budgets.ssh;
        vc.timeouts.ready = p.budgets.ready;
        // The agent's endpoint, hosted for a profile that describes an agent; the seed
        // carries its config when the profile says so.
        let agent = p.agent.as_ref().map(|a| {
            if a.provision == AgentProvision::Seed {
                vc.seed_files.push(SeedFile {
                    path: a.config_path.to_string(),
                    content: a.render_config(&name).into_bytes(),
                    mode: 0o600,
                });
            }
            let config = EndpointConfig {
                register_path: a.register_path.to_string(),
                heartbeat_path: a.heartbeat_path.to_string(),
                token: a.token.to_string(),
                identity_field: a.identity_field.to_string(),
            };
            (config, a.guest_addr.0, a.guest_port)
        });
        let endpoint_failed = |e: crate::agent_endpoint::EndpointError| {
            stop(StopKind::Infrastructure, Phase::Boot, e.to_string())
        };
        self.run_network()?;
        // Said with the run's first VM (the bridge may have been made before, for a check
        // that was then not run).
        let first = self.machines == 1;
        if let (true, Some(shaper)) = (first, self.network.as_ref().and_then(|n| n.shaper())) {
            emit(Event::Property {
                name: "link.shaping".into(),
                value: match shaper {
                    Ok(s) => s.name().to_string(),
                    Err(why) => format!("none: {why}"),
                },
            });
        }
        let (endpoint, link) = match &self.network {
            Some(net) => {
                let link = net
                    .node_link()
                    .map_err(|e| stop(StopKind::Infrastructure, Phase::Boot, e.to_string()))?;
                vc.bridge = Some(link.port.clone());
                if let (None, Some((config, addr, port))) = (&self.endpoint, agent) {
                    let at = SocketAddr::from((addr, port));
                    let e = AgentEndpoint::start_at(config, net.dialer(), at)
                        .map_err(endpoint_failed)?;
                    self.endpoint = Some(e);
                }
                (None, Some(link))
            }
            None => {
                if let Some(cp) = &self.cp {
                    vc.forwards.push(cp.forward());
                }
                let endpoint = match agent {
                    Some((config, guest_addr, guest_port)) => {
                        let endpoint = AgentEndpoint::start(config, 0).map_err(endpoint_failed)?;
                        vc.forwards.push(GuestForward {
                            guest_addr,
                            guest_port,
                            host_port: endpoint.port(),
                        });
                        Some(endpoint)
                    }
                    None => None,
                };
                (endpoint, None)
            }
        };
        emit(Event::PhaseStarted {
            phase: Phase::Boot,
            detail: format!("{} ({} boot)", name, vc.boot.kind()),
            node: Some(name.clone()),
        });
        let started = Instant::now();
        let vm = match Vm::start(vc, Some(temp)) {
            Ok(vm) => vm,
            Err(e) => {
                let s = stop(classify_vm(&e), Phase::Boot, e.to_string());
                emit(Event::PhaseFinished {
                    phase: Phase::Boot,
                    duration: started.elapsed(),
                    error: Some(s.reason.clone()),
                    node: Some(name.clone()),
                });
                return Err(s);
            }
        };
        emit(Event::Property {
            name: "accel".into(),
            value: vm.accel.accel.as_str().into(),
        });
        emit(Event::Property {
            name: "accel.reason".into(),
            value: vm.accel.reason.clone(),
        });
        if let Some(link) = &link {
            let p = &link.port;
            node_fact(emit, &name, "address", p.addr.to_string());
            node_fact(emit, &name, "mac", p.mac.clone());
            node_fact(emit, &name, "tap", p.tap.clone());
            if p.vde.is_some() {
                node_fact(emit, &name, "link", "wirefilter".into());
            }
        }
        Ok(Booting {
            vm,
            endpoint,
            link,
            name,
            started,
            kubeadm: image.kubeadm.clone(),
        })
    }

    /// Inspects the disk once, before the first boot: the format the manifest states,
    /// no references to other files, something a machine could boot.
    pub(super) fn check_disk(&mut self) -> Result<(), Stop> {
        if let Some(r) = &self.disk_checked {
            return r.clone();
        }
        let r = self.check_disk_of(&self.disk.clone(), self.disk_format.clone().as_deref());
        self.disk_checked = Some(r.clone());
        r
    }

    /// Inspects a disk before it boots (see [`NodeEnvironment::check_disk`]).
    pub(super) fn check_disk_of(&self, path: &Path, format: Option<&str>) -> Result<(), Stop> {
        disk::inspect(path, format)
            .and_then(|info| disk::check_bootable(path, &info, self.rundir.path()))
            .map(|_| ())
            .map_err(|e| {
                let e = VmError::Disk(e);
                stop(classify_vm(&e), Phase::Boot, e.to_string())
            })
    }
}

impl Machine {
    /// The session (for log collection).
    pub fn ssh(&mut self) -> &mut SshSession {
        &mut self.ssh
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }
}

/// The kubeadm release a manifest names (its kubelet's, without a kubeadm of its own).
pub(super) fn kubeadm_release(m: Option<&crate::image::Manifest>) -> Option<String> {
    let c = &m?.components;
    c.get("kubeadm").or_else(|| c.get("kubelet")).cloned()
}

/// How many VMs boot at once unless `--jobs` says: as many as the host's cores hold at
/// `vcpus` each (at least one). Under TCG a guest's vCPUs are busy threads, so on two
/// cores two 2-vCPU guests booting together take as long as one after the other.
pub(super) fn default_jobs(vcpus: u32) -> usize {
    (host_cores() / vcpus.max(1) as usize).max(1)
}

/// The cores this process may run on.
pub(super) fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The artifacts sub-folder of a machine.
pub fn machine_dir(artifacts: &Path, name: &str) -> PathBuf {
    artifacts.join(name)
}
