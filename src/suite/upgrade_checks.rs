//! Hot upgrade: a signed bundle (`--upgrade-bundle`) applied in place to a joined node,
//! with a canary workload that must not notice. Destructive: runs on a VM of its own.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::builtin::Builtin;
use super::cluster_checks::{create_pod, ready_status, wait_pod};
use super::component_checks::{listed_digest, read_version, reader};
use super::context::{shell_quote, Attempt, CheckEnv, Failure, Verification};
use crate::image::{ArtifactRole, VerifiedImage};

/// The verified bundle, or why there is none.
pub(super) fn verified(bundle: Option<&Verification>) -> Result<&VerifiedImage, String> {
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
/// unexpired and intact, and says what to expect after it is applied: a `kubelet`
/// version, and for each component a binary the profile can read and the bundle lists
/// with its digest (checked before anything boots).
pub fn bundle_verified(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let v = verified(env.bundle).map_err(Failure::new)?;
    attempt.note(format!(
        "{} v{} signed by {}: {}",
        v.manifest.name,
        v.manifest.version,
        v.manifest.key_id,
        v.manifest_path.display()
    ));
    for (name, c, version, digest) in bundle_targets(env.profile, v)? {
        attempt.note(format!(
            "expects {name} {version} from {} ({digest})",
            c.path
        ));
    }
    Ok(())
}

/// The bundle a hot upgrade applies; when it is not verified, the upgrade's failure:
/// nothing is applied, and it names the kubelet the node stays on.
fn applicable<'a>(
    image: &Verification,
    bundle: Option<&'a Verification>,
) -> Result<&'a VerifiedImage, Failure> {
    verified(bundle).map_err(|why| {
        let stays = match image.manifest().and_then(|m| m.components.get("kubelet")) {
            Some(k) => format!("; nothing applied, the node stays on kubelet {k}"),
            None => "; nothing applied".into(),
        };
        Failure::mismatch(
            format!("{why}{stays}"),
            "a verified bundle, applied",
            "refused",
        )
    })
}

/// The failure of a hot upgrade whose bundle is not verified, decided before boot.
pub(super) fn refused(image: &Verification, bundle: Option<&Verification>) -> Option<Failure> {
    applicable(image, bundle).err()
}

/// A bundle component the upgrade must leave running: name, how to read it, the
/// version and the digest the bundle lists.
pub(super) type Target<'b> = (
    &'b str,
    &'b crate::profile::ComponentProfile,
    &'b str,
    &'b str,
);

/// What is recorded before and compared after.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    boot_id: String,
    pod_uid: String,
    container_id: String,
    restarts: i64,
    /// The canary's task: `PID STATUS` as containerd lists it.
    task: String,
}

/// Whether the Node's Ready condition is True.
fn ready(node: &Value) -> bool {
    ready_status(node) == "True"
}

/// The bundle's versions of the components the profile can read, each with the binary
/// path and the digest the bundle lists for it.
pub(super) fn bundle_targets<'b>(
    profile: &'b crate::profile::Profile,
    bundle: &'b VerifiedImage,
) -> Result<Vec<Target<'b>>, Failure> {
    if !bundle.manifest.components.contains_key("kubelet") {
        return Err(Failure::new(
            "the bundle manifest lists no `kubelet` component: nothing to expect after the upgrade",
        ));
    }
    bundle
        .manifest
        .components
        .iter()
        .map(|(name, version)| {
            let c = reader(profile, name)?;
            let digest = listed_digest(&bundle.manifest, &c.path, "bundle")?;
            Ok((name.as_str(), c, version.as_str(), digest))
        })
        .collect()
}

/// The running containerd task of `container_id` (`PID STATUS`), from `ctr tasks ls`.
fn canary_task(
    attempt: &mut Attempt,
    ssh: &mut crate::ssh::SshSession,
    container_id: &str,
) -> Result<String, Failure> {
    let short = container_id.rsplit('/').next().unwrap_or("");
    if short.is_empty() {
        return Err(Failure::new("the canary pod reports no container id"));
    }
    let o = attempt.exec_root(ssh, "ctr -n k8s.io tasks ls")?;
    if !o.success() {
        return Err(Failure::new(format!(
            "ctr -n k8s.io tasks ls ended with {}: {}",
            o.describe_end(),
            o.stderr.trim()
        )));
    }
    o.stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&short))
        .and_then(|f| match f.as_slice() {
            [_, pid, status, ..] if pid.parse::<u32>().is_ok_and(|p| p > 0) => {
                Some(format!("{pid} {status}"))
            }
            _ => None,
        })
        .ok_or_else(|| {
            Failure::new(format!(
                "containerd lists no task with a PID for the canary container {short}"
            ))
        })
}

/// Puts the upgrade (from the script's start until now) and its NotReady stretches on
/// the node's timeline.
pub(super) fn mark_upgrade(
    attempt: &mut Attempt,
    node: &str,
    applied_at: Instant,
    not_ready: &[(Instant, Option<Instant>)],
) {
    use crate::timeline::{Mark, MarkKind};
    let now = Instant::now();
    attempt.mark(Mark::span(
        node,
        MarkKind::Upgrade,
        applied_at,
        now,
        "hot upgrade: the bundle's script until Ready with its kubelet".into(),
    ));
    for (start, end) in not_ready {
        let end = end.unwrap_or(now);
        attempt.mark(Mark::span(
            node,
            MarkKind::NotReady,
            *start,
            end,
            format!(
                "NotReady {} during the hot upgrade",
                crate::message::duration(end - *start)
            ),
        ));
    }
}

/// `hot-upgrade`: verifies the bundle, starts a canary pod, applies the bundle's script
/// in place, then checks: no reboot; every component the bundle lists is at its version,
/// read from the binary the bundle lists (by digest) and, where a unit runs it, running;
/// the canary untouched (UID, container id, task PID and state, restart count); the node
/// Ready again within `ready_budget` reporting the bundle's kubelet; the NotReady window
/// is measured.
pub fn hot_upgrade(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let budget = b.duration("ready_budget").map_err(Failure::new)?;
    let (profile, image, bundle) = (env.profile, env.verification, env.bundle);
    let member = env.member()?;
    let (kubectl, node) = (member.kubectl, member.node.name().to_string());
    let g = env.guest()?;
    let bundle = applicable(image, bundle)?;
    let targets = bundle_targets(profile, bundle)?;
    let want_kubelet = bundle.manifest.components["kubelet"].clone();

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
        let boot_id = boot_id(attempt, ssh)?;
        let task = canary_task(attempt, ssh, &container_id)?;
        let restarts = cs["restartCount"]
            .as_i64()
            .ok_or_else(|| Failure::new("the canary pod reports no restartCount"))?;
        let pod_uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if pod_uid.is_empty() {
            return Err(Failure::new("the canary pod has no UID"));
        }
        Ok(Snapshot {
            boot_id,
            pod_uid,
            container_id,
            restarts,
            task,
        })
    };
    let before = snapshot(attempt, g.ssh, &p)?;
    attempt.note(format!("before: {before:?}"));

    let applied_at = Instant::now();
    let mut not_ready = Vec::new();
    let r = apply_bundle(attempt, g.ssh, profile, bundle).and_then(|()| {
        wait_upgraded(
            attempt,
            kubectl,
            &node,
            &want_kubelet,
            (applied_at, budget),
            &mut not_ready,
        )
    });
    mark_upgrade(attempt, &node, applied_at, &not_ready);
    r?;
    check_components(attempt, g.ssh, &targets)?;

    let p = pod
        .kubectl
        .get("pod", Some("default"), &pod.name)
        .map_err(|e| Failure::new(format!("kubectl: {e}")))?
        .unwrap_or(Value::Null);
    let after = snapshot(attempt, g.ssh, &p)?;
    attempt.note(format!("after: {after:?}"));
    let checks = [
        ("boot_id (no reboot)", &before.boot_id, &after.boot_id),
        ("canary pod UID", &before.pod_uid, &after.pod_uid),
        (
            "canary container id",
            &before.container_id,
            &after.container_id,
        ),
        ("canary task PID and state", &before.task, &after.task),
    ];
    for (what, want, got) in checks {
        if want != got {
            return Err(Failure::mismatch(
                format!("after the hot upgrade: {what} differs"),
                want.clone(),
                got.clone(),
            ));
        }
    }
    if before.restarts != after.restarts {
        return Err(Failure::mismatch(
            "after the hot upgrade: canary restartCount differs",
            before.restarts.to_string(),
            after.restarts.to_string(),
        ));
    }
    Ok(())
}

/// Uploads the bundle's payloads to the guest behind `ssh` and runs its script there as
/// root, after checking the payloads against the signed manifest again in the guest.
pub(super) fn apply_bundle(
    attempt: &mut Attempt,
    ssh: &mut crate::ssh::SshSession,
    profile: &crate::profile::Profile,
    bundle: &VerifiedImage,
) -> Result<(), Failure> {
    let dir = &profile.upgrade.guest_dir;
    let staging = format!("/tmp/nodegate-upgrade-{}", std::process::id());
    attempt.exec(ssh, &format!("mkdir -p {staging}"))?;
    let payloads = || {
        bundle
            .artifacts
            .iter()
            .filter(|a| a.role == ArtifactRole::Payload)
    };
    let file_of = |a: &crate::image::VerifiedArtifact| {
        a.path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("payload")
            .to_string()
    };
    for a in payloads() {
        let file = file_of(a);
        let t = Instant::now();
        ssh.upload(&a.path, &format!("{staging}/{file}"), 0o755)
            .map_err(|e| Failure::new(format!("upload {}: {e}", a.path.display())))?;
        attempt.note(format!(
            "uploaded {file} ({} bytes) in {:.1}s",
            a.size,
            t.elapsed().as_secs_f64()
        ));
    }
    let sums: Vec<String> = payloads()
        .map(|a| shell_quote(&format!("{}  {}", a.sha256, file_of(a))))
        .collect();
    let script = shell_quote(&profile.upgrade.script);
    let apply = format!(
        "set -e; rm -rf {dir}; mkdir -p {dir}; cp {staging}/* {dir}/; rm -rf {staging}; cd {dir}; printf '%s\\n' {} | sha256sum -c --quiet; ./{script}",
        sums.join(" "),
        dir = shell_quote(dir),
    );
    let o = attempt.exec_root(ssh, &apply)?;
    if !o.success() {
        return Err(Failure::mismatch(
            format!("the upgrade script failed: {}", o.stderr.trim()),
            "exit status 0",
            o.describe_end(),
        ));
    }
    Ok(())
}

/// A stretch of NotReady: its start, and its end once Ready again.
pub(super) type NotReady = (Instant, Option<Instant>);

/// Watches node `node` from `since` until it is Ready reporting `want_kubelet`, within
/// `budget` (and the check's time); every NotReady stretch seen is added to `not_ready`.
pub(super) fn wait_upgraded(
    attempt: &mut Attempt,
    kubectl: &crate::cluster::Kubectl,
    node: &str,
    want_kubelet: &str,
    (since, budget): (Instant, Duration),
    not_ready: &mut Vec<NotReady>,
) -> Result<(), Failure> {
    let deadline = since + budget;
    loop {
        let n = kubectl.get("node", None, node).ok().flatten();
        let now = Instant::now();
        let is_ready = n.as_ref().is_some_and(ready);
        match (is_ready, not_ready.last_mut()) {
            (false, Some((_, None))) => {}
            (false, _) => not_ready.push((now, None)),
            (true, Some((_, end @ None))) => *end = Some(now),
            (true, _) => {}
        }
        let reported = n
            .as_ref()
            .and_then(|n| n["status"]["nodeInfo"]["kubeletVersion"].as_str())
            .unwrap_or_default()
            .to_string();
        if is_ready && reported == want_kubelet {
            let window: f64 = not_ready
                .iter()
                .map(|(a, b)| b.unwrap_or(now).duration_since(*a).as_secs_f64())
                .sum();
            attempt.note(format!(
                "node {node} Ready with {want_kubelet} {:.1}s after the upgrade started; NotReady window {window:.1}s ({} stretches)",
                since.elapsed().as_secs_f64(),
                not_ready.len()
            ));
            return Ok(());
        }
        if now >= deadline || attempt.remaining() < Duration::from_secs(5) {
            return Err(Failure::mismatch(
                format!(
                    "node {node} not Ready with the bundle's kubelet within {}",
                    crate::message::duration(budget)
                ),
                format!("Ready, kubelet {want_kubelet}"),
                format!("Ready {is_ready}, kubelet {reported}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every component the bundle lists is at its version, read from the binary the bundle
/// lists (by digest), and where a unit runs it, that unit runs that binary.
pub(super) fn check_components(
    attempt: &mut Attempt,
    ssh: &mut crate::ssh::SshSession,
    targets: &[Target<'_>],
) -> Result<(), Failure> {
    for (name, c, version, digest) in targets {
        let found = read_version(attempt, ssh, name, c, digest)?;
        attempt.note(format!("{} reports {name} {found}", c.path));
        if found != *version {
            return Err(Failure::mismatch(
                format!(
                    "after the hot upgrade: {} reports another {name} version than the bundle",
                    c.path
                ),
                version.to_string(),
                found,
            ));
        }
        if let Some(unit) = &c.unit {
            let o = attempt.exec_root(
                ssh,
                &format!(
                    "sha256sum /proc/$(systemctl show -p MainPID --value {})/exe",
                    shell_quote(unit)
                ),
            )?;
            let running = o.stdout.split_whitespace().next().unwrap_or("").to_string();
            if running != *digest {
                return Err(Failure::mismatch(
                    format!(
                        "after the hot upgrade: {unit} does not run the bundle's {}",
                        c.path
                    ),
                    digest.to_string(),
                    if running.is_empty() {
                        o.describe_end()
                    } else {
                        running
                    },
                ));
            }
        }
    }
    Ok(())
}

/// The guest's boot_id (it changes with every boot).
pub(super) fn boot_id(
    attempt: &mut Attempt,
    ssh: &mut crate::ssh::SshSession,
) -> Result<String, Failure> {
    let o = attempt.exec(ssh, "cat /proc/sys/kernel/random/boot_id")?;
    let id = o.stdout.trim().to_string();
    if !o.success() || id.len() != 36 {
        return Err(Failure::new(format!(
            "cannot read the guest's boot_id: {:?}",
            o.stdout.trim()
        )));
    }
    Ok(id)
}
