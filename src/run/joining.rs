//! Joining the run's machines to its control plane, and their part of the pod network.

use std::time::Duration;

use crate::cluster::{self, JoinConfig, JoinMethod, ProviderKind};
use crate::interrupt;
use crate::profile::JoinMethodName;
use crate::rundir::RemoteObject;
use crate::runner::{Event, Phase, Stop, StopKind};
use crate::suite::context::shell_quote;

use super::environment::{classify, node_fact, phase, stop, NodeEnvironment};
use super::machines::{machine_dir, Machine};
use super::{artifacts, pod_network};

impl NodeEnvironment<'_> {
    pub(super) fn join(
        &mut self,
        m: &mut Machine,
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), Stop> {
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
            JoinMethodName::BootstrapKubeconfig => JoinMethod::BootstrapKubeconfig {
                path,
                unit: p.services.kubelet.to_string(),
            },
            JoinMethodName::Script => JoinMethod::Script { path },
        };
        let mut jc = JoinConfig::new(&m.name, method);
        jc.budget = p.budgets.join;
        jc.kubelet = p.kubelet.settings();
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
        let name = m.name.clone();
        let r = phase(emit, Phase::Join, detail, Some(&name), |emit| {
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
                    node_fact(
                        emit,
                        &name,
                        "join.ready_secs",
                        format!("{:.1}", node.timings.ready.as_secs_f64()),
                    );
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
