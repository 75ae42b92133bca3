//! Built-in checks that look at the node through the control plane.

use std::time::Duration;

use serde_json::{json, Value};

use super::builtin::Builtin;
use super::context::{Attempt, CheckEnv, Failure};
use crate::cluster::{ready_condition, Kubectl};

fn get_node(kubectl: &Kubectl, name: &str, attempt: &mut Attempt) -> Result<Value, Failure> {
    attempt.note(format!("kubectl get node {name} -o json"));
    match kubectl.get("node", None, name) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Failure::new(format!("Node {name} does not exist"))),
        Err(e) => Err(Failure::new(format!("kubectl: {e}"))),
    }
}

/// The status of the Ready condition ("True", "False", "Unknown" or "absent").
pub(super) fn ready_status(node: &Value) -> String {
    ready_condition(node)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("absent")
        .to_string()
}

/// Waits, within the attempt's deadline, until the Node is Ready.
pub fn wait_node_ready(env: &CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let m = env.member()?;
    loop {
        let node = get_node(m.kubectl, m.node.name(), attempt)?;
        let status = ready_status(&node);
        if status == "True" {
            return Ok(());
        }
        if attempt.remaining() < Duration::from_secs(3) {
            return Err(Failure::mismatch(
                format!("Node {} is not Ready", m.node.name()),
                "Ready=True",
                format!("Ready={status}"),
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `node-ready`: the Node registered and became Ready within `budget` of the join, and
/// is Ready now.
pub fn node_ready(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let budget = b.duration("budget").map_err(Failure::new)?;
    let m = env.member()?;
    let t = m.node.timings;
    attempt.note(format!(
        "join command {:.1}s, registered {:.1}s, Ready {:.1}s after the join started",
        t.join_command.as_secs_f64(),
        t.register.as_secs_f64(),
        t.ready.as_secs_f64()
    ));
    if t.ready > budget {
        return Err(Failure::mismatch(
            format!("Node {} became Ready over budget", m.node.name()),
            format!("Ready within {}", crate::message::duration(budget)),
            format!("{:.1}s", t.ready.as_secs_f64()),
        ));
    }
    wait_node_ready(env, attempt)
}

/// The container runtime as the kubelet reports it in the Node's Ready condition:
/// `Some(ready)` where the condition says, `None` where it does not.
#[derive(Debug, PartialEq, Eq)]
struct RuntimeView {
    runtime_ready: Option<bool>,
    network_ready: Option<bool>,
    /// `Ready=STATUS (REASON: MESSAGE)`.
    condition: String,
}

fn tri(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "true",
        Some(false) => "false",
        None => "unknown",
    }
}

impl RuntimeView {
    fn summary(&self) -> String {
        format!(
            "RuntimeReady={} NetworkReady={}",
            tri(self.runtime_ready),
            tri(self.network_ready)
        )
    }
}

/// Reads the kubelet's view of the runtime (the CRI `Status` call's RuntimeReady and
/// NetworkReady) from the Ready condition: the kubelet is Ready only when both hold, and
/// names the one that does not in the condition's message.
fn runtime_view(node: &Value) -> RuntimeView {
    let Some(c) = ready_condition(node) else {
        return RuntimeView {
            runtime_ready: None,
            network_ready: None,
            condition: "no Ready condition".into(),
        };
    };
    let field = |k: &str| c[k].as_str().unwrap_or("").to_string();
    let (status, reason, message) = (field("status"), field("reason"), field("message"));
    let condition = format!("Ready={status} ({reason}: {message})");
    if status == "True" {
        return RuntimeView {
            runtime_ready: Some(true),
            network_ready: Some(true),
            condition,
        };
    }
    let runtime_down = [
        "container runtime is down",
        "container runtime not ready",
        "runtime status check may not have completed",
    ]
    .iter()
    .any(|m| message.contains(m));
    let network_down = message.contains("network not ready");
    let (runtime_ready, network_ready) = match (runtime_down, network_down) {
        (true, _) => (Some(false), None),
        (false, true) => (Some(true), Some(false)),
        // Not Ready for another reason (PLEG, a kubelet that stopped posting status).
        (false, false) => (None, None),
    };
    RuntimeView {
        runtime_ready,
        network_ready,
        condition,
    }
}

/// `node-runtime-ready`: the kubelet sees the runtime's CRI socket answer with
/// RuntimeReady and NetworkReady, as its node status reports.
pub fn runtime_ready(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let m = env.member()?;
    let node = get_node(m.kubectl, m.node.name(), attempt)?;
    let v = runtime_view(&node);
    let found = v.summary();
    attempt.note(format!("{found}; {}", v.condition));
    let what = match (v.runtime_ready, v.network_ready) {
        (Some(true), Some(true)) => return Ok(()),
        (None, None) => "is not Ready, for a reason other than the runtime (see the condition)",
        _ => "reports the container runtime not ready",
    };
    Err(Failure::mismatch(
        format!(
            "the kubelet on {} {what}: {}; see containerd.log and kubelet.log in the artifacts",
            m.node.name(),
            v.condition
        ),
        "RuntimeReady=true NetworkReady=true",
        found,
    ))
}

/// `node-info`: each param names a field of `status.nodeInfo` and its expected value.
pub fn node_info(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let m = env.member()?;
    let node = get_node(m.kubectl, m.node.name(), attempt)?;
    let info = &node["status"]["nodeInfo"];
    for (field, want) in &b.params {
        let found = info[field].as_str().unwrap_or("absent");
        attempt.note(format!("nodeInfo.{field} = {found}"));
        if !version_matches(field, found, want) {
            return Err(Failure::mismatch(
                format!(
                    "Node {} reports nodeInfo.{field} other than expected",
                    m.node.name()
                ),
                want.clone(),
                found,
            ));
        }
    }
    Ok(())
}

/// Equal, or for `*Version` fields equal once the packaging suffix (from `~` or `+`) is
/// dropped from the expected value: the CRI reports containerd `1.6.20` for Debian's
/// `1.6.20~ds1`.
fn version_matches(field: &str, found: &str, want: &str) -> bool {
    if found == want {
        return true;
    }
    field.ends_with("Version") && want.split(['~', '+']).next() == Some(found)
}

/// `node-taints`: the Node carries no taint but those whose keys `allowed` lists.
pub fn node_taints(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let allowed: Vec<&str> = b
        .param("allowed")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let m = env.member()?;
    let node = get_node(m.kubectl, m.node.name(), attempt)?;
    let taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap_or(""),
                        t["effect"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    attempt.note(format!("taints: {taints:?}"));
    let unexpected: Vec<&String> = taints
        .iter()
        .filter(|t| !allowed.contains(&t.split(':').next().unwrap_or("")))
        .collect();
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(Failure::mismatch(
            format!("Node {} carries unexpected taints", m.node.name()),
            format!("only {allowed:?}"),
            format!("{unexpected:?}"),
        ))
    }
}

/// An object in the `default` namespace that a check made; deleted when dropped.
pub(super) struct ObjectGuard<'k> {
    pub(super) kubectl: &'k Kubectl,
    pub(super) kind: &'static str,
    pub(super) name: String,
}

/// A pod a check made.
pub(super) type PodGuard<'k> = ObjectGuard<'k>;

impl Drop for ObjectGuard<'_> {
    fn drop(&mut self) {
        let _ = self.kubectl.delete(self.kind, Some("default"), &self.name);
    }
}

/// A name for an object a check makes, unique within the cluster for this run.
pub(super) fn unique_name(suffix: &str) -> String {
    static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("nodegate-{suffix}-{}-{n}", std::process::id())
}

/// A pod command that serves a page `served-by-NODE` on port 8080 (busybox httpd).
pub(super) fn serve_node_name(node: &str) -> String {
    format!(
        "mkdir -p /tmp/w && echo served-by-{node} > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"
    )
}

/// Creates a pod pinned to the node running `sh -c command` in `image`; the guard
/// deletes it.
pub(super) fn create_pod<'k>(
    kubectl: &'k Kubectl,
    node: &str,
    suffix: &str,
    image: &str,
    command: &str,
    attempt: &mut Attempt,
) -> Result<PodGuard<'k>, Failure> {
    create_labeled_pod(kubectl, node, suffix, image, command, None, attempt)
}

/// [`create_pod`] with the label `app` (what a Service selects).
pub(super) fn create_labeled_pod<'k>(
    kubectl: &'k Kubectl,
    node: &str,
    suffix: &str,
    image: &str,
    command: &str,
    app: Option<&str>,
    attempt: &mut Attempt,
) -> Result<PodGuard<'k>, Failure> {
    let name = unique_name(suffix);
    let mut metadata = json!({"name": name, "namespace": "default"});
    if let Some(app) = app {
        metadata["labels"] = json!({ "app": app });
    }
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "c", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", command],
            }],
        },
    });
    attempt.note(format!("kubectl create pod {name} on {node}"));
    kubectl
        .create(&pod)
        .map_err(|e| Failure::new(format!("kubectl: {e}")))?;
    Ok(ObjectGuard {
        kubectl,
        kind: "pod",
        name,
    })
}

/// Polls the pod until `done` says its status is what the check waits for.
pub(super) fn wait_pod(
    pod: &PodGuard<'_>,
    node: &str,
    attempt: &mut Attempt,
    want: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, Failure> {
    loop {
        let p = pod
            .kubectl
            .get("pod", Some("default"), &pod.name)
            .map_err(|e| Failure::new(format!("kubectl: {e}")))?
            .unwrap_or(Value::Null);
        if done(&p) {
            return Ok(p);
        }
        if attempt.remaining() < Duration::from_secs(3) {
            let phase = p["status"]["phase"]
                .as_str()
                .unwrap_or("Pending")
                .to_string();
            let why = p["status"]["containerStatuses"][0]["state"].to_string();
            return Err(Failure::mismatch(
                format!(
                    "pod {} on {node} did not get there (container state {why})",
                    pod.name
                ),
                want,
                phase,
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `pod-runs`: a pod pinned to the node runs `command` in `image` to completion and its
/// log (`kubectl logs` on the run's bridge; read on the node in user mode) contains
/// `output`.
pub fn pod_runs(b: &Builtin, env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let m = env.member()?;
    let node = m.node.name().to_string();
    let pod = create_pod(
        m.kubectl,
        &node,
        "pod",
        b.param("image"),
        b.param("command"),
        attempt,
    )?;
    let p = wait_pod(&pod, &node, attempt, "Succeeded", |p| {
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    })?;
    let phase = p["status"]["phase"].as_str().unwrap_or("").to_string();
    let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
    attempt.note(format!("pod {} {phase}", pod.name));
    // The Kubernetes path where the API server reaches the kubelet; on user-mode
    // networking it cannot, and the log is read on the node.
    let log = if env.network == crate::network::NetworkMode::Bridge {
        attempt.note("kubectl logs (API server to kubelet)");
        m.kubectl
            .run(&["logs", "-n", "default", &pod.name, "-c", "c"])
            .map_err(|e| Failure::new(format!("kubectl logs {}: {e}", pod.name)))?
    } else {
        attempt.note(
            "log read on the node (user-mode network: the API server cannot reach the kubelet)",
        );
        let g = env.guest()?;
        attempt
            .exec_root(
                g.ssh,
                &format!("cat /var/log/pods/default_{}_{uid}/c/*.log", pod.name),
            )?
            .stdout
    };
    let want = b.param("output");
    if phase != "Succeeded" || !log.contains(want) {
        return Err(Failure::mismatch(
            format!(
                "pod {} on {node} ended {phase}; its log lacks the expected output",
                pod.name
            ),
            format!("Succeeded, log containing {want:?}"),
            format!("{phase}, log {:?}", log.trim()),
        ));
    }
    Ok(())
}

/// Whether IPv4 `ip` lies in `cidr` (`10.244.0.0/24`).
pub fn in_cidr(ip: &str, cidr: &str) -> bool {
    let parse = |s: &str| s.parse::<std::net::Ipv4Addr>().ok().map(u32::from);
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    match (parse(ip), parse(net), bits.parse::<u32>()) {
        (Some(ip), Some(net), Ok(bits)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            ip & mask == net & mask
        }
        _ => false,
    }
}

/// `pod-serves`: a pod pinned to the node gets an IP in `cidr` from the CNI, serves HTTP
/// on port 8080 (busybox httpd in `image`), and the node reaches it.
pub fn pod_serves(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let m = env.member()?;
    let node = m.node.name().to_string();
    let marker = format!("nodegate-pod-http-{}", std::process::id());
    let command = format!(
        "mkdir -p /tmp/w && echo {marker} > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"
    );
    let pod = create_pod(
        m.kubectl,
        &node,
        "http",
        b.param("image"),
        &command,
        attempt,
    )?;
    let p = wait_pod(&pod, &node, attempt, "Running with a pod IP", |p| {
        p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
            || p["status"]["phase"] == "Failed"
    })?;
    let ip = p["status"]["podIP"].as_str().unwrap_or("").to_string();
    // The image's own CNI range (`cidr`), unless the run's network gave the node a range
    // of the cluster's (a run of several nodes): then that one.
    let routed = env.guest()?.link.and_then(|l| l.routes().first().cloned());
    let cidr = routed.as_deref().unwrap_or(b.param("cidr")).to_string();
    let cidr = cidr.as_str();
    attempt.note(format!(
        "pod {} Running, IP {ip} (expected in {cidr}: {})",
        pod.name,
        if routed.is_some() {
            "the node's range on the run's network"
        } else {
            "the image's CNI range"
        }
    ));
    if !in_cidr(&ip, cidr) {
        return Err(Failure::mismatch(
            format!("pod {} on {node} got an IP outside the CNI range", pod.name),
            format!("an IP in {cidr}"),
            if ip.is_empty() {
                "no IP".to_string()
            } else {
                ip
            },
        ));
    }
    let g = env.guest()?;
    let mut last = String::new();
    while attempt.remaining() > Duration::from_secs(5) {
        let o = attempt.exec(
            g.ssh,
            &format!("curl -s --max-time 3 http://{ip}:8080/index.html"),
        )?;
        if o.stdout.contains(&marker) {
            return Ok(());
        }
        last = format!("curl exit {}: {}", o.status, o.stdout.trim());
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(Failure::mismatch(
        format!("the node cannot reach pod {} at {ip}:8080", pod.name),
        marker,
        last,
    ))
}

#[cfg(test)]
mod tests {
    use super::runtime_view;
    use serde_json::{json, Value};

    fn node_with(status: &str, reason: &str, message: &str) -> Value {
        json!({"status": {"conditions": [
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": status, "reason": reason, "message": message}
        ]}})
    }

    #[test]
    fn runtime_view_reads_the_kubelets_ready_condition() {
        let view = |status, message| {
            runtime_view(&node_with(status, "KubeletNotReady", message)).summary()
        };
        assert_eq!(
            view("True", "kubelet is posting ready status"),
            "RuntimeReady=true NetworkReady=true"
        );
        assert_eq!(
            view("False", "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"),
            "RuntimeReady=true NetworkReady=false"
        );
        assert_eq!(
            view("False", "container runtime is down"),
            "RuntimeReady=false NetworkReady=unknown"
        );
        assert_eq!(
            view("Unknown", "Kubelet stopped posting node status."),
            "RuntimeReady=unknown NetworkReady=unknown"
        );
        let none = runtime_view(&json!({"status": {}}));
        assert_eq!(none.summary(), "RuntimeReady=unknown NetworkReady=unknown");
        assert_eq!(none.condition, "no Ready condition");
        let no_cni = runtime_view(&node_with(
            "False",
            "KubeletNotReady",
            "NetworkReady=false message:cni plugin not initialized; network not ready",
        ));
        assert!(no_cni.condition.contains("cni plugin not initialized"));
    }

    #[test]
    fn cidr_membership() {
        use super::in_cidr;
        assert!(in_cidr("10.244.0.7", "10.244.0.0/24"));
        assert!(!in_cidr("10.244.1.7", "10.244.0.0/24"));
        assert!(in_cidr("1.2.3.4", "0.0.0.0/0"));
        assert!(!in_cidr("", "10.244.0.0/24"));
        assert!(!in_cidr("10.244.0.7", "10.244.0.0"));
    }

    #[test]
    fn versions_compare_without_the_packaging_suffix() {
        use super::version_matches as m;
        assert!(m(
            "containerRuntimeVersion",
            "containerd://1.6.20",
            "containerd://1.6.20~ds1"
        ));
        assert!(m("kubeletVersion", "v1.20.2", "v1.20.2"));
        assert!(!m(
            "containerRuntimeVersion",
            "containerd://1.6.2",
            "containerd://1.6.20~ds1"
        ));
        assert!(!m("osImage", "Debian", "Debian~x"));
    }
}
