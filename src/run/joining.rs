//! Joining the run's machines to its control plane, and their part of the pod network.
//! Machines join together, each join on a thread of its own (a join is mostly waiting on
//! the guest and the API server); what comes before and after each join runs here.

use std::time::{Duration, Instant};

use crate::cluster::{
    self, BootstrapToken, ClusterError, JoinConfig, JoinMethod, JoinedNode, ProviderKind,
};
use crate::interrupt;
use crate::profile::JoinMethodName;
use crate::rundir::RemoteObject;
use crate::runner::{Event, Phase, Stop, StopKind};
use crate::suite::context::shell_quote;

use super::environment::{classify, node_fact, stop, NodeEnvironment};
use super::machines::{machine_dir, Machine};
use super::{artifacts, pod_network};

/// One machine's join before it runs: its configuration and its token, or why it cannot
/// run.
type Plan = Result<(JoinConfig, BootstrapToken), Stop>;

/// One machine's join after it ran: its outcome, how long it took, when it ended.
type Ran = (Result<JoinedNode, ClusterError>, Duration, Instant);

impl NodeEnvironment<'_> {
    /// Joins one machine (see [`NodeEnvironment::join_all`]).
    pub(super) fn join(
        &mut self,
        m: &mut Machine,
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), Stop> {
        let route = self.config.nodes > 1;
        self.join_all(&mut [m], route, emit).remove(0)
    }

    /// Joins `machines` to the control plane together, then gives each that joined its part
    /// of the pod network when `route`; the outcome of each, in order. A node that does not
    /// join is the image's fault ([`StopKind::Node`]) when the guest and the cluster still
    /// answer.
    pub(super) fn join_all(
        &mut self,
        machines: &mut [&mut Machine],
        route: bool,
        emit: &mut dyn FnMut(Event),
    ) -> Vec<Result<(), Stop>> {
        if let Err(s) = self.control_plane(emit) {
            return machines.iter().map(|_| Err(s.clone())).collect();
        }
        let plans: Vec<Plan> = machines
            .iter()
            .map(|m| {
                let plan = self.join_plan(m);
                let detail = format!(
                    "{} by {} to the {} control plane",
                    m.name,
                    plan.as_ref()
                        .map_or("its profile's method", |(jc, _)| jc.method.name()),
                    self.cp
                        .as_ref()
                        .map_or(ProviderKind::Local, |cp| cp.provider)
                );
                emit(Event::PhaseStarted {
                    phase: Phase::Join,
                    detail,
                    node: Some(m.name.clone()),
                });
                plan
            })
            .collect();
        let cp = self.cp.as_ref().expect("started");
        let joins: Vec<Option<Ran>> = std::thread::scope(|s| {
            let threads: Vec<_> = machines
                .iter_mut()
                .zip(&plans)
                .map(|(m, plan)| {
                    let (jc, token) = plan.as_ref().ok()?;
                    let ssh = &mut m.ssh;
                    Some(s.spawn(move || {
                        let t = Instant::now();
                        let r = cluster::join(cp, token, ssh, jc);
                        (r, t.elapsed(), Instant::now())
                    }))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.map(|t| t.join().expect("a join thread does not panic")))
                .collect()
        });
        let mut outcomes = Vec::new();
        for ((m, plan), joined) in machines.iter_mut().zip(plans).zip(joins) {
            let (r, took) = match (plan, joined) {
                (Ok((_, token)), Some((r, took, ended))) => {
                    if r.is_ok() {
                        m.ready_at = Some(ended);
                    }
                    (self.joined(m, token, r, emit), took)
                }
                (Err(s), _) => (Err(s), Duration::ZERO),
                (Ok(_), None) => unreachable!("every planned join runs"),
            };
            emit(Event::PhaseFinished {
                phase: Phase::Join,
                duration: took,
                error: r.as_ref().err().map(|s| s.reason.clone()),
                node: Some(m.name.clone()),
            });
            let r = r.and_then(|()| {
                if route {
                    self.route_pods(m, emit)
                } else {
                    Ok(())
                }
            });
            outcomes.push(r);
        }
        outcomes
    }

    /// What one machine's join needs: its configuration and a fresh bootstrap token
    /// (noted in the run's record on someone else's cluster).
    fn join_plan(&mut self, m: &Machine) -> Plan {
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
            JoinMethodName::BootstrapKubeconfig => JoinMethod::BootstrapKubeconfig {
                path,
                unit: p.services.kubelet.to_string(),
            },
            JoinMethodName::Script => JoinMethod::Script { path },
        };
        let mut jc = JoinConfig::new(&m.name, method);
        jc.budget = p.budgets.join;
        jc.kubelet = p.kubelet.settings();
        jc.kubeadm_version = m.kubeadm.clone();
        // Valid only as long as the join may take: a token left by a killed run expires
        // soon, and the cluster's token cleaner removes it.
        let token = cp
            .create_token(jc.budget + Duration::from_secs(600))
            .map_err(|e| stop(classify(e.exit_code()), Phase::Join, e.to_string()))?;
        if cp.provider == ProviderKind::Kubeconfig {
            // Someone else's cluster: what a killed run leaves there is recorded.
            let object = |kind: &str, namespace: Option<&str>, name: String| RemoteObject {
                kubectl: cp.kubectl.bin.clone(),
                kubeconfig: cp.kubectl.kubeconfig.clone(),
                kind: kind.into(),
                namespace: namespace.map(String::from),
                name,
            };
            self.rundir.note_remote(object(
                "secret",
                Some("kube-system"),
                token.token().secret_name(),
            ));
            self.rundir
                .note_remote(object("node", None, m.name.clone()));
        }
        Ok((jc, token))
    }

    /// Takes a finished join: the machine keeps its Node and token, or the stop says whose
    /// fault it was (after the failed node's diagnosis and logs are collected).
    fn joined(
        &mut self,
        m: &mut Machine,
        token: BootstrapToken,
        r: Result<JoinedNode, ClusterError>,
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), Stop> {
        let cp = self.cp.as_ref().expect("started");
        let artifacts_dir = self.config.artifacts.clone();
        match r {
            Ok(node) => {
                node_fact(
                    emit,
                    &m.name,
                    "join.ready_secs",
                    format!("{:.1}", node.timings.ready.as_secs_f64()),
                );
                m.joined = Some((node, token));
                Ok(())
            }
            Err(_) if interrupt::interrupted() => Err(stop(
                StopKind::Interrupted,
                Phase::Join,
                "interrupted during the join".into(),
            )),
            // The VM and the cluster answered; the node did not join: the image's fault,
            // if the guest still answers (else the host or the VM failed).
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
                let s = stop(classify(e.exit_code()), Phase::Join, e.to_string());
                artifacts::collect_logs(m, &artifacts_dir, &self.config.profile, emit);
                Err(s)
            }
        }
    }

    /// Gives a joined node of a multi-node run its part of the pod network: a route to
    /// its range at the gateway and its CNI configuration (see [`super::pod_network`]).
    pub(super) fn route_pods(
        &mut self,
        m: &mut Machine,
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), Stop> {
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
        node_fact(emit, &m.name, "pod_cidr", cidr);
        Ok(())
    }
}
