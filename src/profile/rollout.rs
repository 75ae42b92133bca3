//! The profile's `[rollout]`: how the image rolls out into a pool of nodes that run the
//! legacy image (the roll-out suite), and what the provider promises while it does.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration_serde;

/// The roll-out's pool, budgets and workload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutProfile {
    /// Nodes of the legacy image (`--legacy-manifest`) in the pool.
    pub legacy: usize,
    /// Nodes of the candidate image (the image under test) in the pool.
    pub candidate: usize,
    /// Pool upgrade: legacy nodes hot-upgraded at once.
    pub max_unavailable: usize,
    /// A candidate node's provisioning (VM start to Node Ready) may take at most this
    /// many times a legacy node's, both measured in the same run (1.0: no slower).
    pub provisioning_ratio: f64,
    /// Requests the client may lose during the replacement, and during the pool upgrade.
    pub lost_requests: u64,
    /// How long a legacy node's drain may take; a drain blocked past it fails, naming the
    /// PodDisruptionBudget that blocks it.
    #[serde(with = "duration_serde")]
    pub drain_budget: Duration,
    /// The pause between the client's requests.
    #[serde(with = "duration_serde")]
    pub request_interval: Duration,
    /// The workload kept serving through the roll-out.
    pub workload: WorkloadProfile,
    /// Kubernetes' kubelet / API server version skew policy.
    pub skew: SkewPolicy,
}

impl Default for RolloutProfile {
    fn default() -> Self {
        RolloutProfile {
            legacy: 1,
            candidate: 1,
            max_unavailable: 1,
            provisioning_ratio: 1.0,
            lost_requests: 0,
            drain_budget: Duration::from_secs(300),
            request_interval: Duration::from_millis(100),
            workload: WorkloadProfile::default(),
            skew: SkewPolicy::default(),
        }
    }
}

/// The roll-out's workload: a Deployment spread across the pool behind a Service, with a
/// PodDisruptionBudget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadProfile {
    /// Replicas; unset: one per node of the pool.
    pub replicas: Option<usize>,
    /// The PodDisruptionBudget's `maxUnavailable` (0 blocks every eviction).
    pub max_unavailable: usize,
    /// How long a terminating pod keeps serving before it is stopped (its preStop
    /// pause), so that every node's proxy has dropped it first.
    #[serde(with = "duration_serde")]
    pub drain_delay: Duration,
}

impl Default for WorkloadProfile {
    fn default() -> Self {
        WorkloadProfile {
            replicas: None,
            max_unavailable: 1,
            drain_delay: Duration::from_secs(5),
        }
    }
}

/// How far a kubelet's release may be from the API server's (patch releases within a
/// minor release are always compatible).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SkewPolicy {
    /// Minor releases a kubelet may be older than the API server.
    pub kubelet_older_minors: u32,
    /// Minor releases a kubelet may be newer than the API server.
    pub kubelet_newer_minors: u32,
}

impl Default for SkewPolicy {
    /// Kubernetes' own policy up to v1.27: two minor releases older, never newer.
    fn default() -> Self {
        SkewPolicy {
            kubelet_older_minors: 2,
            kubelet_newer_minors: 0,
        }
    }
}

/// The most nodes a pool may have (the run's bridge has this many slots in all).
pub const MAX_POOL: usize = crate::network::MAX_NODES;

impl RolloutProfile {
    /// The rules types cannot express; the message names the key.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.legacy == 0 || self.candidate == 0 {
            return Err(format!(
                "[rollout] `legacy` = {}, `candidate` = {}: a roll-out needs a node of each",
                self.legacy, self.candidate
            ));
        }
        if self.legacy + self.candidate > MAX_POOL {
            return Err(format!(
                "[rollout] {} + {} nodes: a pool has at most {MAX_POOL}",
                self.legacy, self.candidate
            ));
        }
        if self.max_unavailable == 0 {
            return Err("[rollout] `max_unavailable` must be at least 1".into());
        }
        if !(self.provisioning_ratio.is_finite() && self.provisioning_ratio > 0.0) {
            return Err(format!(
                "[rollout] `provisioning_ratio` = {}: a positive number",
                self.provisioning_ratio
            ));
        }
        if self.drain_budget.is_zero() {
            return Err("[rollout] `drain_budget` must be more than zero".into());
        }
        if self.request_interval < Duration::from_millis(10)
            || self.request_interval > Duration::from_secs(10)
        {
            return Err("[rollout] `request_interval`: 10ms to 10s".into());
        }
        if self.workload.replicas == Some(0) {
            return Err("[rollout.workload] `replicas` must be at least 1".into());
        }
        if self.workload.drain_delay > Duration::from_secs(120) {
            return Err("[rollout.workload] `drain_delay`: at most 120s".into());
        }
        Ok(())
    }

    /// The workload's replicas in a pool of `nodes`.
    pub fn replicas(&self, nodes: usize) -> usize {
        self.workload.replicas.unwrap_or(nodes).max(1)
    }
}

/// A pool spec on the command line, `legacy=N,candidate=M` (`--pool`), over the profile's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    /// Legacy nodes.
    pub legacy: usize,
    /// Candidate nodes.
    pub candidate: usize,
}

impl std::str::FromStr for PoolSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<PoolSpec, String> {
        let (mut legacy, mut candidate) = (None, None);
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected legacy=N,candidate=M"))?;
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: {v:?} is not a number of nodes"))?;
            match k.trim() {
                "legacy" if legacy.is_none() => legacy = Some(n),
                "candidate" if candidate.is_none() => candidate = Some(n),
                other => {
                    return Err(format!(
                        "{:?}: expected legacy=N,candidate=M, each once",
                        crate::message::one_line(other)
                    ))
                }
            }
        }
        match (legacy, candidate) {
            (Some(legacy), Some(candidate)) if legacy > 0 && candidate > 0 => {
                if legacy + candidate > MAX_POOL {
                    Err(format!(
                        "{legacy} + {candidate} nodes: a pool has at most {MAX_POOL}"
                    ))
                } else {
                    Ok(PoolSpec { legacy, candidate })
                }
            }
            (Some(_), Some(_)) => Err("a pool needs at least one node of each image".into()),
            _ => Err("expected legacy=N,candidate=M".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_spec_names_both_pools_once_with_a_node_each() {
        let p: PoolSpec = "legacy=2,candidate=1".parse().unwrap();
        assert_eq!((p.legacy, p.candidate), (2, 1));
        for bad in [
            "legacy=1",
            "legacy=0,candidate=1",
            "legacy=1,candidate=x",
            "legacy=1,legacy=2",
            "legacy=1,candidate=1,spare=1",
            "legacy=10,candidate=10",
            "",
        ] {
            assert!(bad.parse::<PoolSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_defaults_are_kubernetes_policy_and_one_node_of_each() {
        let r = RolloutProfile::default();
        assert!(r.validate().is_ok());
        assert_eq!((r.legacy, r.candidate, r.replicas(2)), (1, 1, 2));
        assert_eq!(r.skew.kubelet_newer_minors, 0);
        let bad = RolloutProfile {
            provisioning_ratio: f64::NAN,
            ..RolloutProfile::default()
        };
        assert!(bad.validate().unwrap_err().contains("provisioning_ratio"));
    }
}
