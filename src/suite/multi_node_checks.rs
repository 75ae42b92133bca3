//! Checks across the run's nodes (`--nodes 2` or more, on the run's bridge): pods on
//! different nodes reach each other, and the nodes reach each other's ports as the
//! profile says.

use std::net::Ipv4Addr;

use super::builtin::Builtin;
use std::time::Duration;

use super::cluster_checks::{create_pod, serve_node_name, wait_pod, PodGuard};
use super::context::{Attempt, CheckEnv, Failure};
use super::pod_access_checks::retry;

/// Another node of the run, as a check sees it.
pub struct Peer<'a> {
    /// Its name (the Node's).
    pub name: &'a str,
    /// Its address on the run's bridge.
    pub addr: Ipv4Addr,
    /// A logged-in session.
    pub ssh: &'a mut crate::ssh::SshSession,
}

/// `pods-across-nodes`: a pod on each node serves a page naming its node; from each
/// pod, `kubectl exec` fetches every other node's pod's page by pod IP.
pub fn pods_across_nodes(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let nodes = env.node_names()?;
    let m = env.member()?;
    let mut pods: Vec<(String, PodGuard<'_>, String)> = Vec::new();
    for node in &nodes {
        let pod = create_pod(
            m.kubectl,
            node,
            "across",
            b.param("image"),
            &serve_node_name(node),
            attempt,
        )?;
        pods.push((node.clone(), pod, String::new()));
    }
    for (node, pod, ip) in &mut pods {
        let p = wait_pod(pod, node, attempt, "Running with a pod IP", |p| {
            p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
                || p["status"]["phase"] == "Failed"
        })?;
        *ip = p["status"]["podIP"].as_str().unwrap_or("").to_string();
        attempt.note(format!("pod {} on {node}: {ip}", pod.name));
    }
    let mut failed = Vec::new();
    for (from, pod, _) in &pods {
        for (to, _, ip) in pods.iter().filter(|(n, _, _)| n != from) {
            // busybox's nc (Debian's static busybox wget crashes); the IP is the API's,
            // checked to be an address before it reaches the pod's shell.
            let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                failed.push(format!(
                    "{from} -> {to}: pod IP {ip:?} is not an IPv4 address"
                ));
                continue;
            };
            let fetch =
                format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 8080");
            let want = format!("served-by-{to}");
            let got = retry(Duration::from_secs(30), || {
                let out = m
                    .kubectl
                    .run(&[
                        "exec", "-n", "default", &pod.name, "-c", "c", "--", "sh", "-c", &fetch,
                    ])
                    .map_err(|e| e.to_string())?;
                if out.contains(&want) {
                    Ok(())
                } else {
                    Err(out.trim().to_string())
                }
            });
            let (reached, last) = match got {
                Ok(()) => (true, String::new()),
                Err(e) => (false, e),
            };
            attempt.note(format!(
                "{from} -> {to} ({ip}): {}",
                if reached { "ok" } else { &last }
            ));
            if !reached {
                failed.push(format!("{from} -> {to} ({ip}): {last}"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::mismatch(
            format!(
                "pods on different nodes do not reach each other: {}",
                failed.join("; ")
            ),
            "every pod reaches every other node's pod",
            format!(
                "{} of {} paths failed",
                failed.len(),
                pods.len() * (pods.len() - 1)
            ),
        ))
    }
}

/// The `reachable` param: whether the port should answer between nodes.
pub fn expected_reachable(value: &str) -> Result<bool, String> {
    match value {
        "reachable" => Ok(true),
        "closed" => Ok(false),
        other => Err(format!(
            "param `reachable` = {other:?}: \"reachable\" or \"closed\""
        )),
    }
}

/// Whether a TCP connection from the node behind `ssh` to `addr:port` opens.
fn connects(
    attempt: &mut Attempt,
    ssh: &mut crate::ssh::SshSession,
    addr: Ipv4Addr,
    port: u16,
) -> Result<bool, Failure> {
    let o = attempt.exec(
        ssh,
        &format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null"),
    )?;
    Ok(o.success())
}

/// `peer-port`: between every pair of nodes, `port` is reachable or closed as `reachable`
/// says (the kubelet's 10250: the profile's word).
pub fn peer_port(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let want = expected_reachable(b.param("reachable")).map_err(Failure::new)?;
    let port: u16 = b
        .param("port")
        .parse()
        .map_err(|e| Failure::new(format!("param `port`: {e}")))?;
    let g = env
        .guest
        .as_mut()
        .ok_or_else(|| Failure::new("internal: no guest for a guest check"))?;
    let (first, first_addr) = (
        g.name.to_string(),
        g.vm.config
            .bridge
            .as_ref()
            .map(|b| b.addr)
            .ok_or_else(|| Failure::new("the node is not on the run's bridge"))?,
    );
    let mut wrong = Vec::new();
    for p in env.peers.iter_mut() {
        for (from, to, to_addr, ssh) in [
            (first.as_str(), p.name, p.addr, &mut *g.ssh),
            (p.name, first.as_str(), first_addr, &mut *p.ssh),
        ] {
            let open = connects(attempt, ssh, to_addr, port)?;
            attempt.note(format!(
                "{from} -> {to} ({to_addr}:{port}): {}",
                if open { "open" } else { "closed" }
            ));
            if open != want {
                wrong.push(format!(
                    "{from} -> {to}:{port} {}",
                    if open { "open" } else { "closed" }
                ));
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Failure::mismatch(
            format!(
                "port {port} between nodes is not as the profile says: {}",
                wrong.join(", ")
            ),
            if want { "reachable" } else { "closed" },
            wrong.join(", "),
        ))
    }
}
