//! Hot upgrade: a signed bundle (`--upgrade-bundle`) applied in place to a joined node,
//! with a canary workload that must not notice. Destructive: runs on a VM of its own.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::builtin::Builtin;
use super::cluster_checks::{create_pod, ready_status, wait_pod};
use super::context::{shell_quote, Attempt, CheckEnv, Failure, Verification};
use crate::image::{ArtifactRole, VerifiedImage};

/// The verified bundle, or why there is none.
fn verified(bundle: Option<&Verification>) -> Result<&VerifiedImage, String> {
    match bundle {
        Some(Verification::Verified(v)) => Ok(v),
        None => Err("no --upgrade-bundle given".into()),
        Some(Verification::Refused(e)) => Err(format!("bundle refused: {e}")),
        Some(Verification::Unsigned(_)) => {
            Err("bundle not verified: the run was started with --allow-unsigned".into())
        }
    }
}

/// `upgrade-bundle`: the bundle given with `--upgrade-bundle` is signed by a trusted key,
/// unexpired and intact (checked before anything boots).
pub fn bundle_verified(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let v = verified(env.bundle).map_err(Failure::new)?;
    attempt.note(format!(
        "{} v{} signed by {}: {}",
        v.manifest.name,
        v.manifest.version,
        v.manifest.key_id,
        v.manifest_path.display()
    ));
    Ok(())
}

/// What is recorded before and compared after.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    boot_id: String,
    kubelet: String,
    agent: String,
    pod_uid: String,
    container_id: String,
    restarts: i64,
    container_pid: String,
}

/// Whether the Node's Ready condition is True.
fn ready(node: &Value) -> bool {
    ready_status(node) == "True"
}

/// `hot-upgrade`: verifies the bundle, starts a canary pod, applies the bundle's script
/// in place, then checks: no reboot, the bundle's kubelet and agent versions, the canary
/// untouched (UID, container id, PID, restart count), the node Ready again within
/// `ready_budget`; the NotReady window is measured.
pub fn hot_upgrade(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let budget = b.duration("ready_budget").map_err(Failure::new)?;
    let (profile, bundle) = (env.profile, env.bundle);
    let member = env.member()?;
    let (kubectl, node) = (member.kubectl, member.node.name().to_string());
    let g = env.guest()?;
    let versions = |attempt: &mut Attempt,
                    ssh: &mut crate::ssh::SshSession|
     -> Result<(String, String), Failure> {
        let u = &profile.upgrade;
        let k = attempt.exec_root(ssh, &u.kubelet_version_command)?;
        let a = attempt.exec_root(ssh, &u.agent_version_command)?;
        Ok((k.stdout.trim().to_string(), a.stdout.trim().to_string()))
    };
    let bundle = match verified(bundle) {
        Ok(v) => v,
        Err(why) => {
            let (kubelet, agent) = versions(attempt, g.ssh)?;
            return Err(Failure::mismatch(
                format!("{why}; nothing applied, the node stays on {kubelet}, {agent}"),
                "a verified bundle, applied",
                "refused",
            ));
        }
    };
    let want_kubelet = bundle
        .manifest
        .components
        .get("kubelet")
        .cloned()
        .unwrap_or_default();
    let want_agent = bundle
        .manifest
        .components
        .get("agent")
        .cloned()
        .unwrap_or_default();

    // The canary.
    let image = b.param("canary_image");
    let pod = create_pod(
        kubectl,
        &node,
        "canary",
        image,
        "echo canary-up; exec sleep 100000",
        attempt,
    )?;
    let p = wait_pod(&pod, &node, attempt, "Running", |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    })?;
    let snapshot = |attempt: &mut Attempt,
                    ssh: &mut crate::ssh::SshSession,
                    p: &Value|
     -> Result<Snapshot, Failure> {
        let cs = &p["status"]["containerStatuses"][0];
        let container_id = cs["containerID"].as_str().unwrap_or("").to_string();
        let short = container_id.rsplit('/').next().unwrap_or("").to_string();
        let o = attempt.exec_root(
            ssh,
            &format!(
                "cat /proc/sys/kernel/random/boot_id; ctr -n k8s.io tasks ls | awk '$1 == \"{short}\" {{print $2, $3}}'"
            ),
        )?;
        let mut l = o.stdout.lines().map(|s| s.trim().to_string());
        let boot_id = l.next().unwrap_or_default();
        let container_pid = l.next().unwrap_or_default();
        let (kubelet, agent) = versions(attempt, ssh)?;
        Ok(Snapshot {
            boot_id,
            kubelet,
            agent,
            pod_uid: p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            container_id,
            restarts: cs["restartCount"].as_i64().unwrap_or(-1),
            container_pid,
        })
    };
    let before = snapshot(attempt, g.ssh, &p)?;
    attempt.note(format!("before: {before:?}"));

    // Upload and apply.
    let dir = &profile.upgrade.guest_dir;
    let staging = format!("/tmp/nodegate-upgrade-{}", std::process::id());
    attempt.exec(g.ssh, &format!("mkdir -p {staging}"))?;
    for a in bundle
        .artifacts
        .iter()
        .filter(|a| a.role == ArtifactRole::Payload)
    {
        let file = a
            .path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("payload");
        let t = Instant::now();
        g.ssh
            .upload(&a.path, &format!("{staging}/{file}"), 0o755)
            .map_err(|e| Failure::new(format!("upload {}: {e}", a.path.display())))?;
        attempt.note(format!(
            "uploaded {file} ({} bytes) in {:.1}s",
            a.size,
            t.elapsed().as_secs_f64()
        ));
    }
    // In the guest, check the payloads against the signed manifest again before running.
    let sums: Vec<String> = bundle
        .artifacts
        .iter()
        .filter(|a| a.role == ArtifactRole::Payload)
        .map(|a| {
            format!(
                "{}  {}",
                a.sha256,
                a.path.file_name().and_then(|f| f.to_str()).unwrap_or("")
            )
        })
        .collect();
    let script = shell_quote(&profile.upgrade.script);
    let apply = format!(
        "set -e; rm -rf {dir}; mkdir -p {dir}; cp {staging}/* {dir}/; rm -rf {staging}; cd {dir}; printf '%s\\n' {} | sha256sum -c --quiet; ./{script}",
        sums.iter().map(|s| shell_quote(s)).collect::<Vec<_>>().join(" "),
        dir = shell_quote(dir),
    );
    // Watch Ready from just before the script until the node is back.
    let mut not_ready: Vec<(Instant, Option<Instant>)> = Vec::new();
    let watch = |not_ready: &mut Vec<(Instant, Option<Instant>)>| -> Option<Value> {
        let n = kubectl.get("node", None, &node).ok().flatten()?;
        let now = Instant::now();
        match (ready(&n), not_ready.last_mut()) {
            (false, Some((_, None))) => {}
            (false, _) => not_ready.push((now, None)),
            (true, Some((_, end @ None))) => *end = Some(now),
            (true, _) => {}
        }
        Some(n)
    };
    watch(&mut not_ready);
    let applied_at = Instant::now();
    let o = attempt.exec_root(g.ssh, &apply)?;
    if o.status != 0 {
        return Err(Failure::mismatch(
            format!("the upgrade script failed: {}", o.stderr.trim()),
            "exit status 0",
            format!("exit status {}", o.status),
        ));
    }
    // Until Ready with the new kubelet version, within the budget.
    let deadline = applied_at + budget;
    loop {
        let n = watch(&mut not_ready);
        let reported = n
            .as_ref()
            .and_then(|n| {
                n["status"]["nodeInfo"]["kubeletVersion"]
                    .as_str()
                    .map(String::from)
            })
            .unwrap_or_default();
        if n.as_ref().is_some_and(ready) && reported == want_kubelet {
            break;
        }
        if Instant::now() >= deadline || attempt.remaining() < Duration::from_secs(5) {
            return Err(Failure::mismatch(
                format!(
                    "node {node} not Ready with the bundle's kubelet within {}",
                    humantime::format_duration(budget)
                ),
                format!("Ready, kubelet {want_kubelet}"),
                format!(
                    "Ready {}, kubelet {reported}",
                    n.as_ref().is_some_and(ready)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let window: f64 = not_ready
        .iter()
        .map(|(a, b)| {
            b.unwrap_or_else(Instant::now)
                .duration_since(*a)
                .as_secs_f64()
        })
        .sum();
    attempt.note(format!(
        "node Ready with {want_kubelet} {:.1}s after the upgrade started; NotReady window {window:.1}s ({} stretches)",
        applied_at.elapsed().as_secs_f64(),
        not_ready.len()
    ));

    let p = pod
        .kubectl
        .get("pod", Some("default"), &pod.name)
        .map_err(|e| Failure::new(format!("kubectl: {e}")))?
        .unwrap_or(Value::Null);
    let after = snapshot(attempt, g.ssh, &p)?;
    attempt.note(format!("after: {after:?}"));
    let checks = [
        (
            "boot_id (no reboot)",
            before.boot_id.clone(),
            after.boot_id.clone(),
        ),
        (
            "kubelet version",
            want_kubelet.clone(),
            after.kubelet.clone(),
        ),
        ("agent version", want_agent.clone(), after.agent.clone()),
        (
            "canary pod UID",
            before.pod_uid.clone(),
            after.pod_uid.clone(),
        ),
        (
            "canary container id",
            before.container_id.clone(),
            after.container_id.clone(),
        ),
        (
            "canary container PID and state",
            before.container_pid.clone(),
            after.container_pid.clone(),
        ),
        (
            "canary restartCount",
            before.restarts.to_string(),
            after.restarts.to_string(),
        ),
    ];
    for (what, want, got) in checks {
        let ok = if what.ends_with("version") {
            got.contains(&want)
        } else {
            want == got
        };
        if !ok {
            return Err(Failure::mismatch(
                format!("after the hot upgrade: {what} differs"),
                want,
                got,
            ));
        }
    }
    Ok(())
}
