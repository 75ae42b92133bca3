//! The real [`Environment`]: boots VMs from the verified image, starts the control plane,
//! joins nodes, and collects logs. Each VM is a [`Machine`] guard ([`super::machines`];
//! joining: `super::joining`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::agent_endpoint::AgentEndpoint;
use crate::cluster::{self, ControlPlane, ControlPlaneConfig, ProviderKind};
use crate::exit;
use crate::network::{NetworkMode, RunNetwork};
use crate::rundir::RunDir;
use crate::runner::{Environment, Event, Phase, Stop, StopKind};
use crate::suite::multi_node_checks::Peer;
use crate::suite::{Attempt, Check, CheckEnv, Failure, Guest, Member, Need, Verification};
use crate::vm::disk::DiskError;
use crate::vm::{Boot, VmError};

use super::boot_ahead::BootAhead;
use super::machines::Machine;
use super::{artifacts, RunConfig};

/// The run's VMs and control plane.
pub struct NodeEnvironment<'c> {
    pub(super) config: &'c RunConfig,
    /// The control plane this part of the run joins its nodes to.
    pub(super) column: &'c super::ControlPlaneChoice,
    pub(super) rundir: &'c mut RunDir,
    /// The pre-boot verification.
    pub verification: Verification,
    /// The upgrade bundle's verification, if one was given.
    pub bundle: Option<Verification>,
    /// The roll-out's legacy image, if one was given.
    pub legacy: Option<super::pool::LegacyImage>,
    /// The roll-out's pool, once prepared.
    pub(super) pool: Option<super::pool::Pool>,
    pub(super) pool_failed: Option<Stop>,
    pub(super) disk: PathBuf,
    pub(super) disk_format: Option<String>,
    /// How the VMs boot, or why they cannot (an image fault found before any boot).
    pub(super) boot: Result<Boot, String>,
    /// The disk's check before the first boot, once done.
    pub(super) disk_checked: Option<Result<(), Stop>>,
    pub(super) will_join: bool,
    pub(super) cp: Option<ControlPlane>,
    pub(super) cp_failed: Option<Stop>,
    pub(super) shared: Option<Machine>,
    /// The run's other nodes (`--nodes`), booted and joined with the shared one.
    pub(super) peers: Vec<Machine>,
    pub(super) shared_failed: Option<Stop>,
    /// A check failed on the shared node or its peers: they are not handed on to the
    /// destructive checks (their state could be that failure's cause), which boot VMs of
    /// their own.
    pub(super) nodes_tainted: bool,
    pub(super) fresh: Option<Machine>,
    /// The next destructive check's VM, booting while other checks run.
    pub(super) ahead: Option<BootAhead>,
    /// Destructive checks still to take a VM (set by the run from its plan).
    pub fresh_planned: usize,
    pub(super) machines: usize,
    pub(super) run_id: String,
    /// The network the run has, and why.
    pub(super) network_mode: (NetworkMode, String),
    /// On the bridge: the agent endpoint every node reaches at the profile's address.
    pub(super) endpoint: Option<AgentEndpoint>,
    /// Whether a check shapes links (latency, loss): the bridge then finds a shaper.
    pub shape_links: bool,
    /// The run's bridge, once made (dropped last: everything above lives in it).
    pub(super) network: Option<RunNetwork>,
}

pub(super) fn stop(kind: StopKind, phase: Phase, reason: String) -> Stop {
    Stop {
        kind,
        phase,
        reason,
    }
}

pub(super) fn classify(code: i32) -> StopKind {
    if code == exit::INTERRUPTED {
        StopKind::Interrupted
    } else {
        StopKind::Infrastructure
    }
}

/// Whose fault a boot failure is: the image's (nothing bootable, a panic, an emergency
/// shell), the integrity gate's (a disk that references other files), or the host's.
pub(super) fn classify_vm(e: &VmError) -> StopKind {
    match e.exit_code() {
        exit::INTERRUPTED => StopKind::Interrupted,
        exit::CHECKS_FAILED if refused_by_secure_boot(e) => StopKind::SecureBoot,
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

/// Whether the console shows Secure Boot refusing the boot loader or kernel.
fn refused_by_secure_boot(e: &VmError) -> bool {
    matches!(e, VmError::Console { findings, .. }
        if findings.iter().any(|f| f.trouble == crate::vm::console::Trouble::SecureBootRefused))
}

/// Times `f` as `phase` (of `node`, if it concerns one), emitting start and finish.
pub(super) fn phase<T>(
    emit: &mut dyn FnMut(Event),
    phase: Phase,
    detail: String,
    node: Option<&str>,
    f: impl FnOnce(&mut dyn FnMut(Event)) -> Result<T, Stop>,
) -> Result<T, Stop> {
    let node = node.map(String::from);
    emit(Event::PhaseStarted {
        phase,
        detail,
        node: node.clone(),
    });
    let t = Instant::now();
    let r = f(emit);
    emit(Event::PhaseFinished {
        phase,
        duration: t.elapsed(),
        error: r.as_ref().err().map(|s| s.reason.clone()),
        node,
    });
    r
}

/// A fact about one node for the report.
pub(super) fn node_fact(emit: &mut dyn FnMut(Event), node: &str, name: &str, value: String) {
    emit(Event::NodeProperty {
        node: node.into(),
        name: name.into(),
        value,
    });
}

impl<'c> NodeEnvironment<'c> {
    /// An environment for `config` whose private files go to `rundir`; `will_join`
    /// starts the control plane before the first boot (the VM needs its forward from
    /// the start).
    pub fn new(
        config: &'c RunConfig,
        column: &'c super::ControlPlaneChoice,
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
            column,
            rundir,
            verification,
            bundle: None,
            legacy: None,
            pool: None,
            pool_failed: None,
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
            nodes_tainted: false,
            fresh: None,
            ahead: None,
            fresh_planned: 0,
            machines: 0,
            run_id: hex::encode(raw),
            network_mode,
            endpoint: None,
            shape_links: false,
            network: None,
        }
    }

    /// The run's bridge, made on first use; `None` in user mode.
    pub(super) fn run_network(&mut self) -> Result<Option<&RunNetwork>, Stop> {
        if self.network_mode.0 == NetworkMode::User {
            return Ok(None);
        }
        if self.network.is_none() {
            let api: Ipv4Addr = cluster::GUEST_API_ADDR.parse().expect("an IPv4 address");
            // kind's API server gets that address itself, in its own namespace.
            let local_api = self.column.config.kind() != ProviderKind::Kind;
            let services: Vec<Ipv4Addr> = local_api
                .then_some(api)
                .into_iter()
                .chain(self.config.profile.agent.as_ref().map(|a| a.guest_addr.0))
                .collect();
            let dir = self.rundir.path().join("network");
            let net = RunNetwork::create(&services, &dir, self.shape_links)
                .map_err(|e| stop(StopKind::Infrastructure, Phase::Boot, e.to_string()))?;
            self.network = Some(net);
        }
        Ok(self.network.as_ref())
    }

    pub(super) fn control_plane(&mut self, emit: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        if self.cp.is_some() {
            return Ok(());
        }
        if let Some(s) = &self.cp_failed {
            return Err(s.clone());
        }
        let mut cfg = self.column.config.clone();
        let dialer = self.run_network()?.map(|n| n.dialer());
        if let ControlPlaneConfig::Kind(k) = &mut cfg {
            // Named before it exists and noted in the run's record: a killed run's cluster
            // is found and deleted by the next run (rundir::reap).
            let name = k
                .cluster
                .get_or_insert_with(|| format!("nodegate-{}", self.run_id))
                .clone();
            k.state_dir
                .get_or_insert_with(|| self.rundir.path().join("control-plane"));
            if !k.reuse && !k.keep {
                self.rundir.note_kind_cluster(
                    &k.path.clone().unwrap_or_else(cluster::provider::env_path),
                    &name,
                );
            }
        }
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
        let reason = self.column.reason.clone();
        let clients = &self.config.kubectl;
        let net = self.network.as_ref();
        let r = phase(
            emit,
            Phase::ControlPlane,
            cfg.kind().to_string(),
            None,
            |emit| {
                let mut cp = cfg.start(net).map_err(|e| {
                    stop(classify(e.exit_code()), Phase::ControlPlane, e.to_string())
                })?;
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
                let server = cp.kubectl.server_version().map_err(|e| {
                    stop(classify(e.exit_code()), Phase::ControlPlane, e.to_string())
                })?;
                emit(Event::Property {
                    name: "kubernetes.version".into(),
                    value: server.clone(),
                });
                let choice = cp.choose_kubectl(clients, &server).map_err(|e| {
                    stop(classify(e.exit_code()), Phase::ControlPlane, e.to_string())
                })?;
                emit(Event::Property {
                    name: "control_plane.kubectl".into(),
                    value: choice,
                });
                Ok(cp)
            },
        );
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

    pub(super) fn release(&mut self, m: Machine, emit: &mut dyn FnMut(Event)) {
        artifacts::keep_console(&m.vm, &self.config.artifacts, &m.name, emit);
        let log = m
            .endpoint
            .as_ref()
            .or(self.endpoint.as_ref())
            .map(|e| e.requests())
            .unwrap_or_default();
        for mark in crate::suite::heartbeat_marks(&log, &self.config.profile, &m.name) {
            emit(Event::Mark(mark));
        }
        let remote = self
            .cp
            .as_ref()
            .is_some_and(|cp| cp.provider == ProviderKind::Kubeconfig);
        let token = m.joined.as_ref().map(|(_, t)| t.token().secret_name());
        let name = m.name.clone();
        let _ = phase(emit, Phase::Teardown, m.name.clone(), Some(&name), |_| {
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

    /// Tears down the shared node and its peers (nothing runs on them once the
    /// destructive checks start: they run last).
    pub(super) fn release_shared(&mut self, emit: &mut dyn FnMut(Event)) {
        for m in std::mem::take(&mut self.peers) {
            self.release(m, emit);
        }
        if let Some(m) = self.shared.take() {
            self.release(m, emit);
        }
    }

    /// A node of the run (the shared one, then its peers) that a destructive check may
    /// take as its own: none once a check failed on them.
    fn spare(&mut self) -> Option<Machine> {
        if self.spares() == 0 {
            return None;
        }
        self.shared.take().or_else(|| self.peers.pop())
    }

    /// How many nodes of the run destructive checks may still take (see
    /// [`NodeEnvironment::spare`]).
    pub(super) fn spares(&self) -> usize {
        if self.nodes_tainted {
            0
        } else {
            usize::from(self.shared.is_some()) + self.peers.len()
        }
    }

    /// The verifications, back from a finished environment: the image's, the bundle's and
    /// the legacy image.
    pub fn into_verifications(
        self,
    ) -> (
        Verification,
        Option<Verification>,
        Option<super::pool::LegacyImage>,
    ) {
        (self.verification, self.bundle, self.legacy)
    }

    /// Tears down every machine and then the control plane.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Event)) {
        self.cancel_ahead(emit);
        if let Some(m) = self.fresh.take() {
            self.release(m, emit);
        }
        self.release_shared(emit);
        self.release_pool(emit);
        if let Some(cp) = self.cp.take() {
            let _ = phase(emit, Phase::Teardown, "control plane".into(), None, |_| {
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

    fn node(&self, check: &Check) -> Option<String> {
        if check.need == Need::Manifest {
            return None;
        }
        let m = if check.destructive {
            self.fresh.as_ref()
        } else {
            self.shared.as_ref()
        };
        m.map(|m| m.name.clone())
    }

    fn unavailable(&mut self, check: &Check) -> Option<String> {
        if check.needs_agent_profile() && self.config.profile.agent.is_none() {
            return Some(format!(
                "needs the profile's [agent] (how nodegate reaches the image's node agent); profile {} has none",
                self.config.profile.name
            ));
        }
        if check.judges_secure_boot() && !self.config.profile.vm.secure_boot {
            return Some(format!(
                "profile {} does not demand Secure Boot ([vm] secure_boot = true)",
                self.config.profile.name
            ));
        }
        if check.needs_pool() && self.legacy.is_none() {
            return Some(
                "needs a legacy image to roll the image out into (--legacy-manifest)".into(),
            );
        }
        let (mode, why) = &self.network_mode;
        if check.needs_cluster_network() && *mode == NetworkMode::User {
            return Some(format!(
                "needs the run's cluster network; this run is on QEMU's user-mode network ({why})"
            ));
        }
        if check.needs_link_shaping() {
            // The bridge is made on first use; a bridge that cannot be made stops the boot.
            if let Ok(Some(net)) = self.run_network() {
                if let Some(Err(why)) = net.shaper() {
                    return Some(format!("needs link shaping (latency, loss): {why}"));
                }
            }
        }
        (check.needs_several_nodes() && (self.config.nodes < 2 || check.destructive)).then(|| {
            format!(
                "needs two nodes or more; this run has {} (--nodes)",
                self.config.nodes
            )
        })
    }

    fn prepare(&mut self, need: Need, emit: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        match need {
            Need::Manifest => return Ok(()),
            Need::Pool => return self.prepare_pool(emit),
            Need::Guest | Need::Node => {}
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
                    node_fact(emit, &first.name, "role", "shared".into());
                    for p in &all {
                        node_fact(emit, &p.name, "role", "peer".into());
                    }
                    self.peers = all;
                    first
                }),
            Some(mut m) => {
                if join && m.joined.is_none() {
                    let mut peers = std::mem::take(&mut self.peers);
                    let route = self.config.nodes > 1;
                    let mut all: Vec<&mut super::machines::Machine> =
                        std::iter::once(&mut m).chain(peers.iter_mut()).collect();
                    let r = self
                        .join_all(&mut all, route, emit)
                        .into_iter()
                        .collect::<Result<Vec<()>, Stop>>();
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
                self.boot_ahead(emit);
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
        if let Some(mut m) = self.spare() {
            // Destructive checks run last: no other check needs this node any more, so
            // it is this check's own from now on, without a boot.
            node_fact(emit, &m.name, "reused", "true".into());
            self.fresh_planned = self.fresh_planned.saturating_sub(1);
            let joined = if need == Need::Node && m.joined.is_none() {
                self.join(&mut m, emit)
            } else {
                Ok(())
            };
            self.fresh = Some(m);
            return joined;
        }
        self.release_shared(emit);
        let m = match self.take_ahead(emit) {
            Some(booted) => {
                let mut m = booted?;
                if need == Need::Node {
                    self.join(&mut m, emit)?;
                }
                m
            }
            None => self.machine(need == Need::Node, emit)?,
        };
        self.fresh_planned = self.fresh_planned.saturating_sub(1);
        node_fact(emit, &m.name, "role", "fresh".into());
        self.fresh = Some(m);
        self.boot_ahead(emit);
        Ok(())
    }

    fn release_fresh(&mut self, emit: &mut dyn FnMut(Event)) {
        if let Some(m) = self.fresh.take() {
            self.release(m, emit);
        }
    }

    fn run(&mut self, check: &Check, attempt: &mut Attempt) -> Result<(), Failure> {
        if check.need == Need::Pool {
            let (profile, network) = (&self.config.profile, self.network_mode.0);
            let (verification, bundle) = (&self.verification, self.bundle.as_ref());
            let (disk, disk_format, scratch) =
                (&self.disk, self.disk_format.as_deref(), self.rundir.path());
            let view = super::pool::view(&mut self.pool, self.cp.as_ref(), self.network.as_ref());
            let mut env = CheckEnv {
                profile,
                verification,
                disk,
                disk_format,
                scratch,
                bundle,
                guest: None,
                member: None,
                network,
                peers: Vec::new(),
                pool: view,
            };
            return check.run(&mut env, attempt);
        }
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
                let endpoint = m.endpoint.as_mut().or(shared_endpoint);
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
            pool: None,
        };
        check.run(&mut env, attempt)
    }

    fn on_failure(&mut self, check: &Check, emit: &mut dyn FnMut(Event)) {
        if check.need == Need::Pool {
            self.pool_logs(emit);
            return;
        }
        if !check.destructive && check.need != Need::Manifest && !self.nodes_tainted {
            // The run's nodes are no destructive check's any more: boot one ahead now.
            self.nodes_tainted = true;
            self.boot_ahead(emit);
        }
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
