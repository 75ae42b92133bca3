//! The hybrid roll-out: a pool of nodes of the legacy image (the one in the field) and of
//! the candidate image (the one under test) in one cluster, a workload that must keep
//! serving while the legacy nodes are upgraded in place or replaced, and a client that
//! counts what it lost.
//!
//! This module owns the roll-out's concepts ([`PoolRole`], [`PoolNode`], the
//! [`workload::Workload`], the [`client::TrafficClient`], the [`skew`] policy); the run
//! boots and joins the pool (`run::pool`) and the roll-out suite's checks
//! (`suite::rollout_checks`) judge it through a [`PoolView`].

pub mod client;
pub mod skew;
pub mod workload;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::cluster::Kubectl;
use crate::network::Dialer;
use crate::ssh::SshSession;
use crate::vm::Vm;

/// Which image a node of the pool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PoolRole {
    /// The image in the field, given with `--legacy-manifest`.
    Legacy,
    /// The image under test.
    Candidate,
}

impl PoolRole {
    /// Lowercase name used in reports and node names.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolRole::Legacy => "legacy",
            PoolRole::Candidate => "candidate",
        }
    }
}

/// One of the roll-out's two images, as its manifest states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolImage {
    /// Legacy or candidate.
    pub role: PoolRole,
    /// The manifest's name and version (`nodegate-node v2`); the manifest path when it
    /// could not be read.
    pub label: String,
    /// The kubelet version the manifest promises, if it names one.
    pub kubelet: Option<String>,
    /// Why its nodes cannot boot: its verification refused it, or it has nothing to boot.
    pub refused: Option<String>,
    /// Why the skew policy kept its nodes from booting (its kubelet against the API server).
    pub out_of_skew: Option<String>,
}

impl PoolImage {
    /// Why its nodes were not booted, if they were not.
    pub fn blocked(&self) -> Option<&str> {
        self.refused.as_deref().or(self.out_of_skew.as_deref())
    }
}

/// What the run recorded of one node of the pool; the run keeps its VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNode {
    /// Its name (the Node's).
    pub name: String,
    /// Its image.
    pub role: PoolRole,
    /// When its VM started.
    pub started: Option<Instant>,
    /// How long its boot took (QEMU's start until SSH and systemd are up).
    pub boot: Option<Duration>,
    /// How long its join took (until the Node was Ready).
    pub join: Option<Duration>,
    /// When its Node was first Ready.
    pub ready_at: Option<Instant>,
    /// Its address on the run's network.
    pub addr: Option<Ipv4Addr>,
    /// Why it is not (or no longer) in the cluster: never booted, its boot or join
    /// failed, or it was replaced.
    pub absent: Option<String>,
}

impl PoolNode {
    /// Provisioning: from its VM's start until its Node was Ready.
    pub fn provisioning(&self) -> Option<Duration> {
        Some(self.ready_at?.saturating_duration_since(self.started?))
    }

    /// `nodegate-...-2 (candidate)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.role.as_str())
    }
}

/// One node of the pool as a check sees it.
pub struct PoolMember<'a> {
    /// The run's record of it (a check that replaces it marks it absent).
    pub node: &'a mut PoolNode,
    /// A session on it, while its VM runs.
    pub ssh: Option<&'a mut SshSession>,
    /// Its VM, while it runs.
    pub vm: Option<&'a Vm>,
}

/// The pool, for the roll-out suite's checks.
pub struct PoolView<'a> {
    /// The API server's release.
    pub server: &'a str,
    /// The roll-out's two images.
    pub images: &'a [PoolImage],
    /// Its nodes, legacy first.
    pub members: Vec<PoolMember<'a>>,
    /// Admin kubectl.
    pub kubectl: &'a Kubectl,
    /// Where the client opens its sockets: the run's network.
    pub dialer: Dialer,
    /// The workload, once a check made it; kept for the checks after it.
    pub workload: &'a mut Option<workload::Workload>,
    /// A name for the run's roll-out objects (`nodegate-rollout-RUNID`).
    pub name: &'a str,
}

impl<'a> PoolView<'a> {
    /// Why nothing of the pool booted: an image refused (at verification, for its disk,
    /// or by the skew policy), as one line naming it.
    pub fn blocked(&self) -> Option<String> {
        self.images.iter().find_map(|i| {
            Some(format!(
                "nothing of the pool booted: the {} image {} was refused: {}",
                i.role.as_str(),
                i.label,
                i.blocked()?
            ))
        })
    }

    /// The image of `role`.
    pub fn image(&self, role: PoolRole) -> Option<&PoolImage> {
        self.images.iter().find(|i| i.role == role)
    }

    /// The members of `role`.
    pub fn of(&mut self, role: PoolRole) -> impl Iterator<Item = &mut PoolMember<'a>> + '_ {
        self.members.iter_mut().filter(move |m| m.node.role == role)
    }
}
