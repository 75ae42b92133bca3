//! The real [`Environment`]: boots VMs from the verified image, starts the control plane,
//! joins nodes, and collects logs. Each VM is a [`Machine`] guard.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent_endpoint::{AgentEndpoint, EndpointConfig};
use crate::cluster::{
    self, BootstrapToken, ControlPlane, ControlPlaneConfig, JoinConfig, JoinMethod, JoinedNode,
    ProviderKind,
};
use crate::exit;
use crate::interrupt;
use crate::network::{NetworkMode, NodeLink, RunNetwork};
use crate::profile::JoinMethodName;
use crate::rundir::{RemoteObject, RunDir};
use crate::runner::{Environment, Event, Phase, Stop, StopKind};
use crate::ssh::SshSession;
use crate::suite::context::shell_quote;
use crate::suite::multi_node_checks::Peer;
use crate::suite::{Attempt, Check, CheckEnv, Failure, Guest, Member, Need, Verification};
use crate::vm::disk::{self, DiskError};
use crate::vm::{Boot, GuestForward, Vm, VmConfig, VmError};

use super::{artifacts, pod_network, RunConfig};

/// One booted VM and what belongs to it. Fields drop in order: the Node and its token
/// first, then the session, then the VM, then its tap on the run's bridge.
pub struct Machine {
    joined: Option<(JoinedNode, BootstrapToken)>,
    ssh: SshSession,
    vm: Vm,
    /// Its own agent endpoint (user mode); on the bridge the run's one endpoint serves all.
    endpoint: Option<AgentEndpoint>,
    link: Option<NodeLink>,
    /// Node name (and artifacts sub-folder).
    pub name: String,
}

/// A VM whose QEMU runs, not yet known to be up.
struct Booting {
    vm: Vm,
    endpoint: Option<AgentEndpoint>,
    link: Option<NodeLink>,
    name: String,
    started: Instant,
}

/// The run's VMs and control plane.
pub struct NodeEnvironment<'c> {
    config: &'c RunConfig,
    rundir: &'c mut RunDir,
    /// The pre-boot verification.
    pub verification: Verification,
    /// The upgrade bundle's verification, if one was given.
    pub bundle: Option<Verification>,
    disk: PathBuf,
    disk_format: Option<String>,
    /// How the VMs boot, or why they cannot (an image fault found before any boot).
    boot: Result<Boot, String>,
    /// The disk's check before the first boot, once done.
    disk_checked: Option<Result<(), Stop>>,
    will_join: bool,
    cp: Option<ControlPlane>,
    cp_failed: Option<Stop>,
    shared: Option<Machine>,
    /// The run's other nodes (`--nodes`), booted and joined with the shared one.
    peers: Vec<Machine>,
    shared_failed: Option<Stop>,
    fresh: Option<Machine>,
    machines: usize,
    run_id: String,
    /// The network the run has, and why.
    network_mode: (NetworkMode, String),
    /// On the bridge: the agent endpoint every node reaches at the profile's address.
    endpoint: Option<AgentEndpoint>,
    /// The run's bridge, once made (dropped last: everything above lives in it).
    network: Option<RunNetwork>,
}

fn stop(kind: StopKind, phase: Phase, reason: String) -> Stop {
    Stop {
        kind,
        phase,
        reason,
    }
}

fn classify(code: i32) -> StopKind {
    if code == exit::INTERRUPTED {
        StopKind::Interrupted
    } else {
        StopKind::Infrastructure
    }
}

/// Whose fault a boot failure is: the image's (nothing bootable, a panic, an emergency
/// shell), the integrity gate's (a disk that references other files), or the host's.
fn classify_vm(e: &VmError) -> StopKind {
    match e.exit_code() {
        exit::INTERRUPTED => StopKind::Interrupted,
        exit::CHECKS_FAILED => StopKind::Image,
        exit::INTEGRITY => StopKind::Integrity,
        _ if matches!(
            e,
            VmError::Disk(DiskError::NotADisk { .. } | DiskError::Format { .. })
        ) =>
        {
            StopKind::Image
        }
        _ => StopKind::Infrastructure,
    }
}

/// Times `f` as `phase`, emitting start and finish.
fn phase<T>(
    emit: &mut dyn FnMut(Event),
    phase: Phase,
    detail: String,
    f: impl FnOnce(&mut dyn FnMut(Event)) -> Result<T, Stop>,
) -> Result<T, Stop> {
    emit(Event::PhaseStarted { phase, detail });
    let t = Instant::now();
    let r = f(emit);
    emit(Event::PhaseFinished {
        phase,
        duration: t.elapsed(),
        error: r.as_ref().err().map(|s| s.reason.clone()),
    });
    r
}

impl<'c> NodeEnvironment<'c> {
    /// An environment for `config` whose private files go to `rundir`; `will_join`
    /// starts the control plane before the first boot (the VM needs its forward from
    /// the start).
    pub fn new(
        config: &'c RunConfig,
        rundir: &'c mut RunDir,
        verification: Verification,
        disk: super::BootDisk,
        will_join: bool,
        network_mode: (NetworkMode, String),
    ) -> NodeEnvironment<'c> {
        let mut raw = [0u8; 3];
        let _ = getrandom::fill(&mut raw);
        NodeEnvironment {
            config,
            rundir,
            verification,
            bundle: None,
            disk: disk.path,
            disk_format: disk.format,
            boot: disk.boot,
            disk_checked: None,
            will_join,
            cp: None,
            cp_failed: None,
            shared: None,
            peers: Vec::new(),
            shared_failed: None,
            fresh: None,
            machines: 0,
            run_id: hex::encode(raw),
            network_mode,
            endpoint: None,
            network: None,
        }
    }

    /// The run's bridge, made on first use; `None` in user mode.
    fn run_network(&mut self) -> Result<Option<&RunNetwork>, Stop> {
        if self.network_mode.0 == NetworkMode::User {
            return Ok(None);
        }
        if self.network.is_none() {
            let api: Ipv4Addr = cluster::GUEST_API_ADDR.parse().expect("an IPv4 address");
            let services = [api, self.config.profile.agent.guest_addr.0];
            let dir = self.rundir.path().join("network");
            let net = RunNetwork::create(&services, &dir)
                .map_err(|e| stop(StopKind::Infrastructure, Phase::Boot, e.to_string()))?;
            self.network = Some(net);
        }
        Ok(self.network.as_ref())
    }

    fn control_plane(&mut self, emit: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        if self.cp.is_some() {
            return Ok(());
        }
        if let Some(s) = &self.cp_failed {
            return Err(s.clone());
        }
        let mut cfg = self.config.control_plane.clone();
        let dialer = self.run_network()?.map(|n| n.dialer());
        if let ControlPlaneConfig::Local(l) = &mut cfg {
            // PKI and etcd data in the run's folder: reaped if nodegate is killed.
            l.state_dir
                .get_or_insert_with(|| self.rundir.path().join("control-plane"));
            if let Some(d) = dialer {
                l.dialer = d;
                // The kubelets' connections vanish with their VMs without a FIN; the API
                // server's graceful stop would wait out the whole grace for them.
                l.grace = l.grace.min(Duration::from_secs(3));
            }
        }
        let reason = self.config.control_plane_reason.clone();
        let r = phase(emit, Phase::ControlPlane, cfg.kind().to_string(), |emit| {
            let cp = cfg
                .start()
                .map_err(|e| stop(classify(e.exit_code()), Phase::ControlPlane, e.to_string()))?;
            emit(Event::Property {
                name: "control_plane".into(),
                value: cp.provider.to_string(),
            });
            if let Some(why) = reason {
                emit(Event::Property {
                    name: "control_plane.reason".into(),
                    value: why,
                });
            }
            if let Some(v) = cp
                .kubectl
                .json(&["version"])
                .ok()
                .and_then(|v| v["serverVersion"]["gitVersion"].as_str().map(String::from))
            {
                emit(Event::Property {
                    name: "kubernetes.version".into(),
                    value: v,
                });
            }
            Ok(cp)
        });
        match r {
            Ok(cp) => {
                self.cp = Some(cp);
                Ok(())
            }
            Err(s) => {
                self.cp_failed = Some(s.clone());
                Err(s)
            }
        }
    }

    /// Boots a new machine (and joins it when `join`).
    fn machine(&mut self, join: bool, emit: &mut dyn FnMut(Event)) -> Result<Machine, Stop> {
        let mut v = self.machines_together(1, join, emit)?;
        Ok(v.remove(0))
    }

    /// Boots `count` machines, at most `--jobs` at once (the boots overlap: a node's
    /// boot is mostly waiting), and joins them when `join`.
    fn machines_together(
        &mut self,
        count: usize,
        join: bool,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Vec<Machine>, Stop> {
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
        // An image with nothing to boot is found before a control plane starts.
        self.check_disk()?;
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
                booting.push(self.start_vm(&boot, emit)?);
            }
            let waited: Vec<(Booting, Result<SshSession, VmError>)> = std::thread::scope(|s| {
                let threads: Vec<_> = booting
                    .into_iter()
                    .map(|mut b| {
                        s.spawn(move || {
                            let r = b.vm.wait_ready();
                            (b, r)
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().expect("a boot thread does not panic"))
                    .collect()
            });
            let mut failed = None;
            let mut wave_ready = Vec::new();
            // Finished in the reverse order of their start, so each pairs with its own.
            for (b, r) in waited.into_iter().rev() {
                let r = r.map_err(|e| stop(classify_vm(&e), Phase::Boot, e.to_string()));
                emit(Event::PhaseFinished {
                    phase: Phase::Boot,
                    duration: b.started.elapsed(),
                    error: r.as_ref().err().map(|s| s.reason.clone()),
                });
                match r {
                    Ok(ssh) => {
                        let t = b.vm.timings;
                        for (k, v) in [("ssh", t.ssh), ("ready", t.ready)] {
                            if let Some(v) = v {
                                emit(Event::Property {
                                    name: format!("boot.{k}_secs"),
                                    value: format!("{:.1}", v.as_secs_f64()),
                                });
                            }
                        }
                        wave_ready.push(Machine {
                            joined: None,
                            ssh,
                            vm: b.vm,
                            endpoint: b.endpoint,
                            link: b.link,
                            name: b.name,
                        });
                    }
                    Err(s) => {
                        artifacts::keep_console(&b.vm, &self.config.artifacts, &b.name, emit);
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
            for m in &mut ready {
                self.join(m, emit)?;
            }
        }
        Ok(ready)
    }

    /// Prepares one VM's folder, network and agent endpoint and starts QEMU; the boot
    /// phase starts here.
    fn start_vm(&mut self, boot: &Boot, emit: &mut dyn FnMut(Event)) -> Result<Booting, Stop> {
        self.machines += 1;
        let name = format!("nodegate-{}-{}", self.run_id, self.machines);
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
            self.disk.clone(),
            boot.clone(),
            temp.path().to_owned(),
        );
        vc.image_format = self.disk_format.clone();
        vc.accel = self.config.accel;
        vc.vcpus = p.vm.vcpus;
        vc.memory_mib = p.vm.memory_mib;
        vc.ssh_user = p.ssh.user.to_string();
        vc.timeouts.ssh = p.budgets.ssh;
        vc.timeouts.ready = p.budgets.ready;
        let a = &p.agent;
        let endpoint_config = EndpointConfig {
            register_path: a.register_path.to_string(),
            heartbeat_path: a.heartbeat_path.to_string(),
            token: a.token.to_string(),
            identity_field: a.identity_field.to_string(),
        };
        let (agent_addr, agent_port) = (a.guest_addr.0, a.guest_port);
        let endpoint_failed = |e: crate::agent_endpoint::EndpointError| {
            stop(StopKind::Infrastructure, Phase::Boot, e.to_string())
        };
        self.run_network()?;
        let (endpoint, link) = match &self.network {
            Some(net) => {
                let link = net
                    .node_link()
                    .map_err(|e| stop(StopKind::Infrastructure, Phase::Boot, e.to_string()))?;
                vc.bridge = Some(link.port.clone());
                if self.endpoint.is_none() {
                    let at = SocketAddr::from((agent_addr, agent_port));
                    let e = AgentEndpoint::start_at(endpoint_config, net.dialer(), at)
                        .map_err(endpoint_failed)?;
                    self.endpoint = Some(e);
                }
                (None, Some(link))
            }
            None => {
                if let Some(cp) = &self.cp {
                    vc.forwards.push(cp.forward());
                }
                let endpoint = AgentEndpoint::start(endpoint_config, 0).map_err(endpoint_failed)?;
                vc.forwards.push(GuestForward {
                    guest_addr: agent_addr,
                    guest_port: agent_port,
                    host_port: endpoint.port(),
                });
                (Some(endpoint), None)
            }
        };
        emit(Event::PhaseStarted {
            phase: Phase::Boot,
            detail: format!("{} ({} boot)", name, vc.boot.kind()),
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
            emit(Event::Property {
                name: format!("network.{name}"),
                value: format!("{} {} {}", link.port.addr, link.port.mac, link.port.tap),
            });
        }
        Ok(Booting {
            vm,
            endpoint,
            link,
            name,
            started,
        })
    }

    fn join(&mut self, m: &mut Machine, emit: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        self.control_plane(emit)?;
        let cp = self.cp.as_ref().expect("started");
        let p = &self.config.profile;
        let path = p
            .join
            .path
            .as_ref()
            .map(|g| g.to_string())
            .unwrap_or_default();
        let method = match p.join.method {
            JoinMethodName::Kubeadm => JoinMethod::Kubeadm {
                ignore_preflight_errors: p
                    .join
                    .ignore_preflight_errors
                    .iter()
                    .map(|w| w.to_string())
                    .collect(),
            },
            JoinMethodName::BootstrapKubeconfig => JoinMethod::BootstrapKubeconfig { path },
            JoinMethodName::Script => JoinMethod::Script { path },
        };
        let mut jc = JoinConfig::new(&m.name, method);
        jc.budget = p.budgets.join;
        jc.kubeadm_version = self.verification.manifest().and_then(|mf| {
            mf.components
                .get("kubeadm")
                .or_else(|| mf.components.get("kubelet"))
                .cloned()
        });
        let detail = format!(
            "{} by {} to the {} control plane",
            m.name,
            jc.method.name(),
            cp.provider
        );
        let artifacts_dir = self.config.artifacts.clone();
        let rundir = &mut *self.rundir;
        let r = phase(emit, Phase::Join, detail, |emit| {
            let fail = |e: cluster::ClusterError| {
                stop(classify(e.exit_code()), Phase::Join, e.to_string())
            };
            // Valid only as long as the join may take: a token left by a killed run
            // expires soon, and the cluster's token cleaner removes it.
            let token = cp
                .create_token(jc.budget + Duration::from_secs(600))
                .map_err(fail)?;
            if cp.provider == ProviderKind::Kubeconfig {
                // Someone else's cluster: what a killed run leaves there is recorded.
                let object = |kind: &str, namespace: Option<&str>, name: String| RemoteObject {
                    kubectl: cp.kubectl.bin.clone(),
                    kubeconfig: cp.kubectl.kubeconfig.clone(),
                    kind: kind.into(),
                    namespace: namespace.map(String::from),
                    name,
                };
                rundir.note_remote(object(
                    "secret",
                    Some("kube-system"),
                    token.token().secret_name(),
                ));
                rundir.note_remote(object("node", None, m.name.clone()));
            }
            match cluster::join(cp, &token, &mut m.ssh, &jc) {
                Ok(node) => {
                    emit(Event::Property {
                        name: "join.ready_secs".into(),
                        value: format!("{:.1}", node.timings.ready.as_secs_f64()),
                    });
                    Ok((node, token))
                }
                Err(_) if interrupt::interrupted() => Err(stop(
                    StopKind::Interrupted,
                    Phase::Join,
                    "interrupted during the join".into(),
                )),
                // The VM and the cluster answered; the node did not join: the image's
                // fault, if the guest still answers (else the host or the VM failed).
                Err(e) if e.is_node_fault() => {
                    let unit = &self.config.profile.services.kubelet;
                    let diagnosis = match artifacts::unit_diagnosis(m, unit) {
                        Ok(d) => d,
                        Err(ssh) => {
                            return Err(stop(
                                StopKind::Infrastructure,
                                Phase::Join,
                                format!("{e}; the guest no longer answers: {ssh}"),
                            ))
                        }
                    };
                    artifacts::collect_logs(m, &artifacts_dir, &self.config.profile, emit);
                    // A kubelet that registers late would leave a Node behind.
                    let _ = m.ssh().exec(
                        &format!("sudo systemctl stop {}", shell_quote(unit)),
                        Duration::from_secs(10),
                    );
                    let _ = cp.kubectl.delete("node", None, &m.name);
                    let logs = machine_dir(&artifacts_dir, &m.name).join("kubelet.log");
                    let logs = if logs.is_file() {
                        format!(" (log: {})", logs.display())
                    } else {
                        String::new()
                    };
                    Err(stop(
                        StopKind::Node,
                        Phase::Join,
                        format!("{e}; {diagnosis}{logs}"),
                    ))
                }
                Err(e) => {
                    let s = fail(e);
                    artifacts::collect_logs(m, &artifacts_dir, &self.config.profile, emit);
                    Err(s)
                }
            }
        })?;
        m.joined = Some(r);
        if self.config.nodes > 1 {
            self.route_pods(m, emit)?;
        }
        Ok(())
    }

    /// Gives a joined node of a multi-node run its part of the pod network: a route to
    /// its range at the gateway and its CNI configuration (see [`super::pod_network`]).
    fn route_pods(&mut self, m: &mut Machine, emit: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        let (Some(cp), Some(link)) = (&self.cp, m.link.as_mut()) else {
            return Ok(());
        };
        let fail = |e: String| {
            stop(
                StopKind::Infrastructure,
                Phase::Join,
                format!("{}: pod network: {e}", m.name),
            )
        };
        let cidr =
            pod_network::pod_cidr(&cp.kubectl, &m.name, Duration::from_secs(60)).map_err(fail)?;
        if pod_network::parse_cidr(&cidr).is_none() {
            return Err(fail(format!("podCIDR {cidr:?} is not an IPv4 range")));
        }
        link.route(&cidr).map_err(|e| fail(e.to_string()))?;
        pod_network::install(&mut m.ssh, &cidr).map_err(fail)?;
        emit(Event::Property {
            name: format!("pod_cidr.{}", m.name),
            value: cidr,
        });
        Ok(())
    }

    /// Inspects the disk once, before the first boot: the format the manifest states,
    /// no references to other files, something a machine could boot.
    fn check_disk(&mut self) -> Result<(), Stop> {
        if let Some(r) = &self.disk_checked {
            return r.clone();
        }
        let r = disk::inspect(&self.disk, self.disk_format.as_deref())
            .and_then(|info| disk::check_bootable(&self.disk, &info, self.rundir.path()))
            .map(|_| ())
            .map_err(|e| {
                let e = VmError::Disk(e);
                stop(classify_vm(&e), Phase::Boot, e.to_string())
            });
        self.disk_checked = Some(r.clone());
        r
    }

    fn release(&mut self, m: Machine, emit: &mut dyn FnMut(Event)) {
        artifacts::keep_console(&m.vm, &self.config.artifacts, &m.name, emit);
        let remote = self
            .cp
            .as_ref()
            .is_some_and(|cp| cp.provider == ProviderKind::Kubeconfig);
        let token = m.joined.as_ref().map(|(_, t)| t.token().secret_name());
        let name = m.name.clone();
        let _ = phase(emit, Phase::Teardown, m.name.clone(), |_| {
            drop(m);
            Ok(())
        });
        if remote {
            self.rundir.forget_remote("node", &name);
            if let Some(t) = token {
                self.rundir.forget_remote("secret", &t);
            }
        }
    }

    /// Tears down every machine and then the control plane.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Event)) {
        if let Some(m) = self.fresh.take() {
            self.release(m, emit);
        }
        for m in std::mem::take(&mut self.peers) {
            self.release(m, emit);
        }
        if let Some(m) = self.shared.take() {
            self.release(m, emit);
        }
        if let Some(cp) = self.cp.take() {
            let _ = phase(emit, Phase::Teardown, "control plane".into(), |_| {
                drop(cp);
                Ok(())
            });
        }
    }
}

impl Environment for NodeEnvironment<'_> {
    fn decided(&mut self, check: &Check) -> Option<Failure> {
        check.decided(&self.verification, self.bundle.as_ref())
    }

    fn unavailable(&mut self, check: &Check) -> Option<String> {
        let (mode, why) = &self.network_mode;
        if check.needs_cluster_network() && *mode == NetworkMode::User {
            return Some(format!(
                "needs the run's cluster network; this run is on QEMU's user-mode network ({why})"
            ));
        }
        (check.needs_several_nodes() && (self.config.nodes < 2 || check.destructive)).then(|| {
            format!(
                "needs two nodes or more; this run has {} (--nodes)",
                self.config.nodes
            )
        })
    }

    fn prepare(&mut self, need: Need, emit: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        if need == Need::Manifest {
            return Ok(());
        }
        if let Some(s) = &self.shared_failed {
            return Err(s.clone());
        }
        let join = need == Need::Node;
        let r = match self.shared.take() {
            None => self
                .machines_together(self.config.nodes, join, emit)
                .map(|mut all| {
                    let first = all.remove(0);
                    self.peers = all;
                    first
                }),
            Some(mut m) => {
                if join && m.joined.is_none() {
                    let mut peers = std::mem::take(&mut self.peers);
                    let r = self
                        .join(&mut m, emit)
                        .and_then(|_| peers.iter_mut().try_for_each(|p| self.join(p, emit)));
                    self.peers = peers;
                    r.map(|_| m)
                } else {
                    Ok(m)
                }
            }
        };
        match r {
            Ok(m) => {
                self.shared = Some(m);
                Ok(())
            }
            Err(s) => {
                self.shared_failed = Some(s.clone());
                Err(s)
            }
        }
    }

    fn prepare_fresh(&mut self, need: Need, emit: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        if let Some(m) = self.fresh.take() {
            self.release(m, emit);
        }
        if need == Need::Manifest {
            return Ok(());
        }
        let m = self.machine(need == Need::Node, emit)?;
        self.fresh = Some(m);
        Ok(())
    }

    fn release_fresh(&mut self, emit: &mut dyn FnMut(Event)) {
        if let Some(m) = self.fresh.take() {
            self.release(m, emit);
        }
    }

    fn run(&mut self, check: &Check, attempt: &mut Attempt) -> Result<(), Failure> {
        let machine = if check.destructive {
            self.fresh.as_mut()
        } else {
            self.shared.as_mut()
        };
        let kubectl = self.cp.as_ref().map(|cp| &cp.kubectl);
        let shared_endpoint = self.endpoint.as_mut();
        let peers = if check.destructive {
            Vec::new()
        } else {
            self.peers
                .iter_mut()
                .filter_map(|p| {
                    Some(Peer {
                        name: &p.name,
                        addr: p.link.as_ref()?.port.addr,
                        ssh: &mut p.ssh,
                    })
                })
                .collect()
        };
        let (guest, member) = match machine {
            Some(m) => {
                let endpoint = match m.endpoint.as_mut().or(shared_endpoint) {
                    Some(e) => e,
                    None => return Err(Failure::new("no agent endpoint for this node")),
                };
                let member = match (&m.joined, kubectl) {
                    (Some((node, _)), Some(kubectl)) => Some(Member { kubectl, node }),
                    _ => None,
                };
                (
                    Some(Guest {
                        vm: &m.vm,
                        ssh: &mut m.ssh,
                        name: &m.name,
                        endpoint,
                        link: m.link.as_ref(),
                    }),
                    member,
                )
            }
            None => (None, None),
        };
        let mut env = CheckEnv {
            profile: &self.config.profile,
            verification: &self.verification,
            disk: &self.disk,
            disk_format: self.disk_format.as_deref(),
            scratch: self.rundir.path(),
            bundle: self.bundle.as_ref(),
            guest,
            member,
            network: self.network_mode.0,
            peers,
        };
        check.run(&mut env, attempt)
    }

    fn on_failure(&mut self, check: &Check, emit: &mut dyn FnMut(Event)) {
        let m = if check.destructive {
            self.fresh.as_mut()
        } else {
            self.shared.as_mut()
        };
        if let Some(m) = m {
            artifacts::collect_logs(m, &self.config.artifacts, &self.config.profile, emit);
        }
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

/// How many VMs boot at once unless `--jobs` says: as many as the host's cores hold at
/// `vcpus` each (at least one). Under TCG a guest's vCPUs are busy threads, so on two
/// cores two 2-vCPU guests booting together take as long as one after the other.
fn default_jobs(vcpus: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / vcpus.max(1) as usize).max(1)
}

/// The artifacts sub-folder of a machine.
pub fn machine_dir(artifacts: &Path, name: &str) -> PathBuf {
    artifacts.join(name)
}
