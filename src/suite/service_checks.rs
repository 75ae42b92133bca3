//! `service-across-nodes`: a ClusterIP Service backed by a pod on every node answers from
//! every node, and each node's requests reach the backends on the other nodes too (the
//! image's kube-proxy programs the Service; the run's gateway routes the pod ranges).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;

use super::builtin::Builtin;
use super::cluster_checks::{
    create_labeled_pod, serve_node_name, unique_name, wait_pod, ObjectGuard, PodGuard,
};
use super::context::{Attempt, CheckEnv, Failure};
use super::pod_access_checks::retry;
use crate::ssh::SshSession;

/// The Service's port (the pods serve on 8080 behind it).
const SERVICE_PORT: u16 = 80;
/// Requests one round sends from a node: with two backends chosen at random, one round
/// misses a backend with probability 2 × 2⁻²⁰.
const REQUESTS: usize = 20;

/// The backends (`served-by-NODE`) that answered `REQUESTS` requests to `ip` from the
/// node behind `ssh`.
fn backends_seen(
    attempt: &mut Attempt,
    ssh: &mut SshSession,
    ip: Ipv4Addr,
) -> Result<BTreeSet<String>, Failure> {
    let o = attempt.exec(
        ssh,
        &format!(
            "for i in $(seq {REQUESTS}); do curl -s --max-time 3 http://{ip}:{SERVICE_PORT}/index.html; done"
        ),
    )?;
    Ok(o.stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("served-by-"))
        .map(String::from)
        .collect())
}

/// `service-across-nodes`: see the module's doc.
pub fn service_across_nodes(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let nodes = env.node_names()?;
    let kubectl = env.member()?.kubectl;
    let app = unique_name("svc");
    let mut pods: Vec<PodGuard<'_>> = Vec::new();
    for node in &nodes {
        pods.push(create_labeled_pod(
            kubectl,
            node,
            "svc",
            b.param("image"),
            &serve_node_name(node),
            Some(&app),
            attempt,
        )?);
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": app, "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": app},
            "ports": [{"port": SERVICE_PORT, "targetPort": 8080, "protocol": "TCP"}],
        },
    });
    attempt.note(format!(
        "kubectl create service {app} (ClusterIP, port {SERVICE_PORT})"
    ));
    kubectl
        .create(&service)
        .map_err(|e| Failure::new(format!("kubectl: {e}")))?;
    let _service = ObjectGuard {
        kubectl,
        kind: "service",
        name: app.clone(),
    };
    for (pod, node) in pods.iter().zip(&nodes) {
        wait_pod(pod, node, attempt, "Running with a pod IP", |p| {
            p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
                || p["status"]["phase"] == "Failed"
        })?;
    }
    let svc = kubectl
        .get("service", Some("default"), &app)
        .map_err(|e| Failure::new(format!("kubectl: {e}")))?
        .unwrap_or_default();
    let ip_text = svc["spec"]["clusterIP"].as_str().unwrap_or("");
    let ip: Ipv4Addr = ip_text.parse().map_err(|_| {
        Failure::mismatch(
            format!("Service {app} has no IPv4 ClusterIP"),
            "a ClusterIP",
            format!("{ip_text:?}"),
        )
    })?;
    attempt.note(format!("Service {app}: ClusterIP {ip}"));
    let want: BTreeSet<String> = nodes.iter().cloned().collect();
    let mut sessions: Vec<(String, &mut SshSession)> = Vec::new();
    if let Some(g) = env.guest.as_mut() {
        sessions.push((g.name.to_string(), &mut *g.ssh));
    }
    for p in env.peers.iter_mut() {
        sessions.push((p.name.to_string(), &mut *p.ssh));
    }
    let mut failed = Vec::new();
    for (from, ssh) in sessions {
        // kube-proxy programs a new Service within its sync period: rounds until it has.
        let mut seen = BTreeSet::new();
        let r = retry(Duration::from_secs(60).min(attempt.remaining()), || {
            let round = backends_seen(attempt, ssh, ip).map_err(|f| f.message)?;
            seen.extend(round);
            if seen == want {
                Ok(())
            } else {
                Err(format!("answered by {seen:?}"))
            }
        });
        attempt.note(format!(
            "from {from}: {ip}:{SERVICE_PORT} answered by {seen:?}"
        ));
        if let Err(e) = r {
            failed.push(format!("from {from}: {e}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::mismatch(
            format!(
                "the Service does not reach every node's backend from every node: {}",
                failed.join("; ")
            ),
            format!("answers from {want:?} from every node"),
            failed.join("; "),
        ))
    }
}
