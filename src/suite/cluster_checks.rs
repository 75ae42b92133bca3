//! Built-in checks that look at the node through the control plane.

use std::time::Duration;

use serde_json::{json, Value};

use super::builtin::Builtin;
use super::context::{Attempt, CheckEnv, Failure, Member};
use crate::cluster::Kubectl;

fn member<'e, 'a>(env: &'e CheckEnv<'a>) -> Result<&'e Member<'a>, Failure> {
    env.member
        .as_ref()
        .ok_or_else(|| Failure::new("internal: no cluster membership for a node check"))
}

fn get_node(kubectl: &Kubectl, name: &str, attempt: &mut Attempt) -> Result<Value, Failure> {
    attempt.note(format!("kubectl get node {name} -o json"));
    match kubectl.get("node", None, name) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Failure::new(format!("Node {name} does not exist"))),
        Err(e) => Err(Failure::new(format!("kubectl: {e}"))),
    }
}

/// The status of the Ready condition ("True", "False", "Unknown" or "absent").
fn ready_status(node: &Value) -> String {
    node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("absent")
        .to_string()
}

/// Waits, within the attempt's deadline, until the Node is Ready.
pub fn wait_node_ready(env: &CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let m = member(env)?;
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
    let m = member(env)?;
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
            format!("Ready within {}", humantime::format_duration(budget)),
            format!("{:.1}s", t.ready.as_secs_f64()),
        ));
    }
    wait_node_ready(env, attempt)
}

/// `node-info`: each param names a field of `status.nodeInfo` and its expected value.
pub fn node_info(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let m = member(env)?;
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
    let m = member(env)?;
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

/// Deletes the pod when dropped.
struct PodGuard<'k> {
    kubectl: &'k Kubectl,
    name: String,
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let _ = self.kubectl.delete("pod", Some("default"), &self.name);
    }
}

/// `pod-runs`: a pod pinned to the node runs `command` in `image` to completion and its
/// log (read on the node) contains `output`.
pub fn pod_runs(b: &Builtin, env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let m = member(env)?;
    let kubectl = m.kubectl;
    let node = m.node.name().to_string();
    let name = format!("nodegate-pod-{}", std::process::id());
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "c", "image": b.param("image"), "imagePullPolicy": "Never",
                "command": ["sh", "-c", b.param("command")],
            }],
        },
    });
    attempt.note(format!("kubectl create pod {name} on {node}"));
    kubectl
        .create(&pod)
        .map_err(|e| Failure::new(format!("kubectl: {e}")))?;
    let _guard = PodGuard {
        kubectl,
        name: name.clone(),
    };
    let (phase, uid) = loop {
        let p = kubectl
            .get("pod", Some("default"), &name)
            .map_err(|e| Failure::new(format!("kubectl: {e}")))?
            .unwrap_or(Value::Null);
        let phase = p["status"]["phase"]
            .as_str()
            .unwrap_or("Pending")
            .to_string();
        let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if phase == "Succeeded" || phase == "Failed" {
            break (phase, uid);
        }
        if attempt.remaining() < Duration::from_secs(3) {
            let why = p["status"]["containerStatuses"][0]["state"].to_string();
            return Err(Failure::mismatch(
                format!("pod {name} on {node} did not complete (container state {why})"),
                "Succeeded",
                phase,
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    attempt.note(format!("pod {name} {phase}"));
    let g = env
        .guest
        .as_mut()
        .ok_or_else(|| Failure::new("internal: no guest for pod-runs"))?;
    let log = attempt.exec_root(
        g.ssh,
        &format!("cat /var/log/pods/default_{name}_{uid}/c/*.log"),
    )?;
    let want = b.param("output");
    if phase != "Succeeded" || !log.stdout.contains(want) {
        return Err(Failure::mismatch(
            format!("pod {name} on {node} ended {phase}; its log (on the node) lacks the expected output"),
            format!("Succeeded, log containing {want:?}"),
            format!("{phase}, log {:?}", log.stdout.trim()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
