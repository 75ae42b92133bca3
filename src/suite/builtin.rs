//! The built-in checks: their names, parameters, what they need, and dispatch.

use std::collections::BTreeMap;
use std::time::Duration;

use super::context::{Attempt, CheckEnv, Failure};
use super::{
    agent_checks, cluster_checks, component_checks, guest_checks, image_checks, integrity_checks,
    multi_node_checks, partition_checks, pod_access_checks, rollout_checks, rollout_replacement,
    rollout_upgrade, secure_boot_checks, service_checks, upgrade_checks,
};

/// What a check needs before it can run; the runner boots and joins accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    /// The verified (or refused) manifest only: runs before boot.
    Manifest,
    /// A booted guest reachable over SSH.
    Guest,
    /// A guest joined to the control plane.
    Node,
    /// The roll-out's pool: nodes of the legacy and the candidate image joined to one
    /// control plane (its checks run last, in suite order, on the same pool).
    Pool,
}

impl Need {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Manifest => "manifest",
            Need::Guest => "guest",
            Need::Node => "node",
            Need::Pool => "pool",
        }
    }
}

/// One built-in's signature.
struct Spec {
    name: &'static str,
    need: Need,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    /// Any param names are allowed (`node-info`: node info fields).
    open: bool,
    destructive: bool,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "manifest",
        need: Need::Manifest,
        required: &["aspect"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "image-files-absent",
        need: Need::Manifest,
        required: &["paths"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "service-active",
        need: Need::Guest,
        required: &["unit"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "service-recovers",
        need: Need::Node,
        required: &["unit"],
        optional: &["evidence"],
        open: false,
        destructive: true,
    },
    Spec {
        name: "guest-boots",
        need: Need::Guest,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "secure-boot",
        need: Need::Guest,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "failed-units",
        need: Need::Guest,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "component-version",
        need: Need::Guest,
        required: &["component"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "guest-files",
        need: Need::Guest,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "process-exe",
        need: Need::Guest,
        required: &["unit", "path"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "node-ready",
        need: Need::Node,
        required: &["budget"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "node-runtime-ready",
        need: Need::Node,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "node-info",
        need: Need::Node,
        required: &[],
        optional: &[],
        open: true,
        destructive: false,
    },
    Spec {
        name: "node-taints",
        need: Need::Node,
        required: &[],
        optional: &["allowed"],
        open: false,
        destructive: false,
    },
    Spec {
        name: "pod-serves",
        need: Need::Node,
        required: &["image", "cidr"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "pod-runs",
        need: Need::Node,
        required: &["image", "command", "output"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "pod-kubectl",
        need: Need::Node,
        required: &["image"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "pods-across-nodes",
        need: Need::Node,
        required: &["image"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "peer-port",
        need: Need::Node,
        required: &["port", "reachable"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "node-partition",
        need: Need::Node,
        required: &["down", "budget"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "agent-registers",
        need: Need::Guest,
        required: &["budget"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "agent-heartbeats",
        need: Need::Guest,
        required: &["count", "tolerance"],
        optional: &["latency", "loss"],
        open: false,
        destructive: false,
    },
    Spec {
        name: "agent-link-cut",
        need: Need::Guest,
        required: &["down", "budget"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "agent-partition",
        need: Need::Guest,
        required: &["down", "budget"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "service-across-nodes",
        need: Need::Node,
        required: &["image"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "agent-reconnects",
        need: Need::Guest,
        required: &["budget"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "agent-state",
        need: Need::Guest,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "upgrade-bundle",
        need: Need::Manifest,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "hot-upgrade",
        need: Need::Node,
        required: &["ready_budget", "canary_image"],
        optional: &[],
        open: false,
        destructive: true,
    },
    Spec {
        name: "version-skew",
        need: Need::Pool,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "mixed-pool",
        need: Need::Pool,
        required: &["image"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "provisioning",
        need: Need::Pool,
        required: &[],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "pool-upgrade",
        need: Need::Pool,
        required: &["image", "ready_budget"],
        optional: &[],
        open: false,
        destructive: false,
    },
    Spec {
        name: "replacement",
        need: Need::Pool,
        required: &["image"],
        optional: &[],
        open: false,
        destructive: false,
    },
];

/// The built-ins that need the run's cluster network (the API server reaching the
/// kubelet, nodes reaching each other): `not run` on user-mode networking.
const CLUSTER_NETWORK: &[&str] = &[
    "pod-kubectl",
    "pods-across-nodes",
    "service-across-nodes",
    "peer-port",
    "node-partition",
    "agent-partition",
    "version-skew",
    "mixed-pool",
    "provisioning",
    "pool-upgrade",
    "replacement",
];

/// The built-ins that judge the node agent at nodegate's endpoint: `not run` for a
/// profile that describes no agent.
const AGENT: &[&str] = &[
    "agent-registers",
    "agent-heartbeats",
    "agent-link-cut",
    "agent-partition",
    "agent-reconnects",
    "agent-state",
];

/// Whether the built-in `name` needs the profile's `[agent]`.
pub fn needs_agent_profile(name: &str) -> bool {
    AGENT.contains(&name)
}

/// The built-ins that look across nodes: `not run` in a run of one node.
const MULTI_NODE: &[&str] = &["pods-across-nodes", "service-across-nodes", "peer-port"];

/// Whether the built-in `name` needs the run's cluster network.
pub fn needs_cluster_network(name: &str) -> bool {
    CLUSTER_NETWORK.contains(&name)
}

/// Whether the built-in `name` needs at least two nodes.
pub fn needs_several_nodes(name: &str) -> bool {
    MULTI_NODE.contains(&name)
}

fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Names of all built-ins.
pub fn names() -> impl Iterator<Item = &'static str> {
    SPECS.iter().map(|s| s.name)
}

/// Checks a built-in's name and parameter names (values are checked after expansion).
pub fn validate(name: &str, params: &BTreeMap<String, String>) -> Result<(), String> {
    let s = spec(name).ok_or_else(|| {
        format!(
            "unknown builtin `{name}` (known: {})",
            names().collect::<Vec<_>>().join(", ")
        )
    })?;
    for r in s.required {
        if !params.contains_key(*r) {
            return Err(format!("builtin `{name}` needs param `{r}`"));
        }
    }
    if !s.open {
        for k in params.keys() {
            if !s.required.contains(&k.as_str()) && !s.optional.contains(&k.as_str()) {
                return Err(format!("builtin `{name}` has no param `{k}`"));
            }
        }
    }
    Ok(())
}

/// What the built-in `name` needs, and whether it must be marked destructive.
pub fn need(name: &str) -> (Need, bool) {
    spec(name).map_or((Need::Guest, false), |s| (s.need, s.destructive))
}

/// A built-in check ready to run: its name and expanded parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builtin {
    /// The built-in's name.
    pub name: String,
    /// Expanded parameters.
    pub params: BTreeMap<String, String>,
}

impl Builtin {
    /// A parameter (validated present at load time for required ones).
    pub fn param(&self, key: &str) -> &str {
        self.params.get(key).map_or("", String::as_str)
    }

    /// A parameter parsed as a duration.
    pub fn duration(&self, key: &str) -> Result<Duration, String> {
        humantime::parse_duration(self.param(key))
            .map_err(|e| format!("param `{key}` = {:?}: {e}", self.param(key)))
    }

    /// Checks parameter values once variables are expanded.
    pub fn validate_values(&self) -> Result<(), String> {
        // Values that reach the guest's shell or a path are typed, whatever the builtin.
        use crate::profile::{GuestPath, UnitName, Word};
        let typed = |key: &str, check: fn(&str) -> Result<(), String>| -> Result<(), String> {
            match self.params.get(key) {
                Some(v) => check(v).map_err(|e| format!("param `{key}`: {e}")),
                None => Ok(()),
            }
        };
        typed("unit", |v| UnitName::try_from(v).map(|_| ()))?;
        typed("path", |v| GuestPath::try_from(v).map(|_| ()))?;
        typed("component", |v| Word::try_from(v).map(|_| ()))?;
        match self.name.as_str() {
            "manifest" => integrity_checks::aspect(self.param("aspect")).map(|_| ()),
            "image-files-absent" => image_checks::patterns(self.param("paths")).map(|_| ()),
            "hot-upgrade" | "pool-upgrade" => self.duration("ready_budget").map(|_| ()),
            "node-ready" | "agent-registers" | "agent-reconnects" => {
                self.duration("budget").map(|_| ())
            }
            "agent-heartbeats" => {
                crate::network::Impairment::from_params(self.param("latency"), self.param("loss"))
                    .and_then(|_| self.duration("tolerance"))
                    .and_then(|_| {
                        self.param("count")
                            .parse::<usize>()
                            .map_err(|e| format!("param `count`: {e}"))
                    })
                    .and_then(|c| {
                        if c >= 2 {
                            Ok(())
                        } else {
                            Err("param `count` must be at least 2".into())
                        }
                    })
            }
            "node-partition" => self
                .duration("down")
                .and(self.duration("budget"))
                .map(|_| ()),
            "agent-link-cut" | "agent-partition" => self
                .duration("down")
                .and(self.duration("budget"))
                .map(|_| ()),
            "peer-port" => {
                multi_node_checks::expected_reachable(self.param("reachable")).and_then(|_| {
                    self.param("port")
                        .parse::<u16>()
                        .map(|_| ())
                        .map_err(|e| format!("param `port`: {e}"))
                })
            }
            "service-recovers" => match self.param("evidence") {
                "" | "node-lease" => Ok(()),
                other => Err(format!("param `evidence` = {other:?}: only \"node-lease\"")),
            },
            _ => Ok(()),
        }
    }

    #[cfg(test)]
    fn with(name: &str, params: &[(&str, &str)]) -> Builtin {
        Builtin {
            name: name.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Runs the check.
    pub fn run(&self, env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
        match self.name.as_str() {
            "manifest" => integrity_checks::manifest(self, env, attempt),
            "image-files-absent" => image_checks::files_absent(self, env, attempt),
            "service-active" => guest_checks::service_active(self, env, attempt),
            "service-recovers" => guest_checks::service_recovers(self, env, attempt),
            "guest-boots" => guest_checks::boots(env, attempt),
            "failed-units" => guest_checks::failed_units(env, attempt),
            "secure-boot" => secure_boot_checks::secure_boot(env, attempt),
            "component-version" => component_checks::component_version(self, env, attempt),
            "guest-files" => guest_checks::guest_files(env, attempt),
            "process-exe" => guest_checks::process_exe(self, env, attempt),
            "node-ready" => cluster_checks::node_ready(self, env, attempt),
            "node-runtime-ready" => cluster_checks::runtime_ready(env, attempt),
            "node-info" => cluster_checks::node_info(self, env, attempt),
            "node-taints" => cluster_checks::node_taints(self, env, attempt),
            "pod-runs" => cluster_checks::pod_runs(self, env, attempt),
            "pod-serves" => cluster_checks::pod_serves(self, env, attempt),
            "pod-kubectl" => pod_access_checks::pod_kubectl(self, env, attempt),
            "pods-across-nodes" => multi_node_checks::pods_across_nodes(self, env, attempt),
            "peer-port" => multi_node_checks::peer_port(self, env, attempt),
            "node-partition" => partition_checks::node_partition(self, env, attempt),
            "agent-registers" => agent_checks::registers(self, env, attempt),
            "agent-heartbeats" => agent_checks::heartbeats(self, env, attempt),
            "agent-link-cut" => agent_checks::link_cut(self, env, attempt),
            "agent-reconnects" => agent_checks::reconnects(self, env, attempt),
            "agent-partition" => agent_checks::partition(self, env, attempt),
            "service-across-nodes" => service_checks::service_across_nodes(self, env, attempt),
            "agent-state" => agent_checks::state(env, attempt),
            "upgrade-bundle" => upgrade_checks::bundle_verified(env, attempt),
            "hot-upgrade" => upgrade_checks::hot_upgrade(self, env, attempt),
            "version-skew" => rollout_checks::version_skew(env, attempt),
            "mixed-pool" => rollout_checks::mixed_pool(self, env, attempt),
            "provisioning" => rollout_checks::provisioning(env, attempt),
            "pool-upgrade" => rollout_upgrade::pool_upgrade(self, env, attempt),
            "replacement" => rollout_replacement::replacement(self, env, attempt),
            other => Err(Failure::new(format!("unknown builtin `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Builtin;

    #[test]
    fn unit_path_and_component_params_are_typed_after_expansion() {
        let ok = Builtin::with("service-active", &[("unit", "kubelet.service")]);
        assert!(ok.validate_values().is_ok());
        let bad = Builtin::with("service-active", &[("unit", "kubelet.service; reboot")]);
        let e = bad.validate_values().unwrap_err();
        assert!(e.starts_with("param `unit`: unit name"), "{e}");
        let bad = Builtin::with(
            "process-exe",
            &[("unit", "kubelet.service"), ("path", "../kubelet")],
        );
        assert!(bad.validate_values().unwrap_err().contains("param `path`"));
        let bad = Builtin::with("component-version", &[("component", "a b")]);
        assert!(bad
            .validate_values()
            .unwrap_err()
            .contains("param `component`"));
    }

    #[test]
    fn link_shaping_params_are_checked_before_boot() {
        let shaped = |latency: &str, loss: &str| {
            Builtin::with(
                "agent-heartbeats",
                &[
                    ("count", "4"),
                    ("tolerance", "2s"),
                    ("latency", latency),
                    ("loss", loss),
                ],
            )
            .validate_values()
        };
        assert!(shaped("200ms", "10%").is_ok());
        assert!(shaped("", "").is_ok());
        assert!(shaped("200ms", "10").unwrap_err().contains("param `loss`"));
        assert!(shaped("200ms", "-1%").unwrap_err().contains("param `loss`"));
        assert!(shaped("fast", "").unwrap_err().contains("param `latency`"));
        assert!(shaped("1h", "").unwrap_err().contains("at most 10s"));
    }
}
