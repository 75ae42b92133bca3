//! The roll-out's workload: a Deployment spread across the pool (preferred anti-affinity
//! by host, one replica per node by default), behind a NodePort Service, protected by a
//! PodDisruptionBudget. Each pod serves `served-by-POD@NODE`; a terminating pod keeps
//! serving for the profile's drain delay (a preStop pause) so that every node's proxy drops
//! it before it stops. The guard deletes all three.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::cluster::client_skew::KubeVersion;
use crate::cluster::Kubectl;

/// The port the pods serve on.
pub const POD_PORT: u16 = 8080;
/// The Service's port.
pub const SERVICE_PORT: u16 = 80;

/// What to create.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// The name of the Deployment, Service and PodDisruptionBudget (and the `app` label).
    pub name: String,
    /// The container image (present on the nodes: it is never pulled).
    pub image: String,
    /// Replicas.
    pub replicas: usize,
    /// The PodDisruptionBudget's `maxUnavailable`.
    pub max_unavailable: usize,
    /// The preStop pause of a terminating pod.
    pub drain_delay: std::time::Duration,
}

/// A pod of the workload as the API server shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadPod {
    /// Its name.
    pub name: String,
    /// The node it was scheduled to (empty while pending).
    pub node: String,
    /// Whether its Ready condition is True.
    pub ready: bool,
    /// Whether it is being deleted.
    pub terminating: bool,
}

/// The created workload; dropping it deletes it.
#[derive(Debug)]
pub struct Workload {
    kubectl: Kubectl,
    /// The objects' name.
    pub name: String,
    /// The Service's ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The Service's NodePort.
    pub node_port: u16,
    /// The replicas asked for.
    pub replicas: usize,
    /// The PodDisruptionBudget as created (`maxUnavailable N`).
    pub budget: String,
}

/// The PodDisruptionBudget API for a server: `policy/v1` from v1.21, `policy/v1beta1`
/// before.
fn pdb_api(server: Option<KubeVersion>) -> &'static str {
    match server {
        Some(v) if (v.major, v.minor) < (1, 21) => "policy/v1beta1",
        _ => "policy/v1",
    }
}

/// The three objects of `spec`, as JSON: Deployment, Service, PodDisruptionBudget.
pub fn objects(spec: &WorkloadSpec, server: Option<KubeVersion>) -> [Value; 3] {
    let name = &spec.name;
    let labels = json!({ "app": name });
    let page = "mkdir -p /tmp/w && echo \"served-by-$POD_NAME@$NODE_NAME\" > /tmp/w/index.html \
                && exec httpd -f -p 8080 -h /tmp/w";
    let delay = spec.drain_delay.as_secs();
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": delay + 10,
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": labels},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }]}},
                    "containers": [{
                        "name": "web", "image": spec.image, "imagePullPolicy": "Never",
                        "command": ["sh", "-c", page],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        ],
                        "ports": [{"containerPort": POD_PORT}],
                        "readinessProbe": {
                            "httpGet": {"path": "/", "port": POD_PORT},
                            "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1,
                        },
                        "lifecycle": {"preStop": {"exec": {"command": ["sleep", delay.to_string()]}}},
                    }],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "selector": labels,
            "ports": [{"port": SERVICE_PORT, "targetPort": POD_PORT, "protocol": "TCP"}],
        },
    });
    let pdb = json!({
        "apiVersion": pdb_api(server), "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"maxUnavailable": spec.max_unavailable, "selector": {"matchLabels": labels}},
    });
    [deployment, service, pdb]
}

impl Workload {
    /// Creates the workload on `kubectl`'s cluster (whose API server is `server`).
    pub fn create(
        kubectl: &Kubectl,
        spec: &WorkloadSpec,
        server: &str,
    ) -> Result<Workload, String> {
        let [deployment, service, pdb] = objects(spec, KubeVersion::parse(server));
        let mut w = Workload {
            kubectl: kubectl.clone(),
            name: spec.name.clone(),
            cluster_ip: Ipv4Addr::UNSPECIFIED,
            node_port: 0,
            replicas: spec.replicas,
            budget: format!("maxUnavailable {}", spec.max_unavailable),
        };
        // Each object is owned by the guard as soon as it may exist.
        for (what, o) in [
            ("PodDisruptionBudget", &pdb),
            ("Service", &service),
            ("Deployment", &deployment),
        ] {
            kubectl
                .create(o)
                .map_err(|e| format!("creating the workload's {what} {}: {e}", spec.name))?;
        }
        let svc = kubectl
            .get("service", Some("default"), &spec.name)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
        w.cluster_ip = ip
            .parse()
            .map_err(|_| format!("Service {} has no IPv4 ClusterIP: {ip:?}", spec.name))?;
        w.node_port = svc["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("Service {} has no NodePort", spec.name))?;
        Ok(w)
    }

    /// The workload's pods now.
    pub fn pods(&self) -> Result<Vec<WorkloadPod>, String> {
        let selector = format!("app={}", self.name);
        let list = self
            .kubectl
            .json(&["get", "pods", "-n", "default", "-l", &selector])
            .map_err(|e| e.to_string())?;
        Ok(list["items"]
            .as_array()
            .map(|items| items.iter().map(pod_view).collect())
            .unwrap_or_default())
    }

    /// The `app` label selector.
    pub fn selector(&self) -> String {
        format!("app={}", self.name)
    }
}

/// One pod of a `kubectl get pods -o json` list.
fn pod_view(p: &Value) -> WorkloadPod {
    let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    WorkloadPod {
        name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
        node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
        ready,
        terminating: p["metadata"]["deletionTimestamp"].is_string(),
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for kind in ["deployment", "service", "poddisruptionbudget"] {
            let _ = self.kubectl.delete(kind, Some("default"), &self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            name: "nodegate-rollout-x".into(),
            image: "nodegate.local/busybox:1".into(),
            replicas: 2,
            max_unavailable: 0,
            drain_delay: std::time::Duration::from_secs(5),
        }
    }

    #[test]
    fn the_budget_uses_the_policy_api_the_server_has() {
        let old = KubeVersion::parse("v1.20.2");
        let [_, _, pdb] = objects(&spec(), old);
        assert_eq!(pdb["apiVersion"], "policy/v1beta1");
        assert_eq!(pdb["spec"]["maxUnavailable"], 0);
        let [_, _, pdb] = objects(&spec(), KubeVersion::parse("v1.30.1"));
        assert_eq!(pdb["apiVersion"], "policy/v1");
    }

    #[test]
    fn pods_spread_serve_their_name_and_keep_serving_while_terminating() {
        let [d, s, _] = objects(&spec(), None);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(
            pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                [0]["podAffinityTerm"]["topologyKey"],
            "kubernetes.io/hostname"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Never");
        assert!(c["command"][2]
            .as_str()
            .unwrap()
            .contains("served-by-$POD_NAME@$NODE_NAME"));
        assert_eq!(c["lifecycle"]["preStop"]["exec"]["command"][1], "5");
        assert_eq!(pod["terminationGracePeriodSeconds"], 15);
        assert_eq!(s["spec"]["type"], "NodePort");
        // The pods tolerate nothing: a cordoned node takes no new replica.
        assert!(pod["tolerations"].is_null());
    }

    #[test]
    fn a_listed_pod_says_where_it_runs_and_whether_it_serves() {
        let p = json!({
            "metadata": {"name": "w-1", "deletionTimestamp": "2026-12-07T00:00:00Z"},
            "spec": {"nodeName": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        assert_eq!(
            pod_view(&p),
            WorkloadPod {
                name: "w-1".into(),
                node: "n1".into(),
                ready: true,
                terminating: true
            }
        );
    }
}
