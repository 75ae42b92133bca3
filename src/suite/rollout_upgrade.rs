//! `pool-upgrade`: the legacy nodes of the pool hot-upgraded in place with the signed
//! bundle (`--upgrade-bundle`), `max_unavailable` at a time, while the client sends to the
//! workload without pause: no node reboots, every node ends on the bundle's versions, no
//! request is lost, and each node's NotReady window is measured.

use std::time::{Duration, Instant};

use super::builtin::Builtin;
use super::context::{Attempt, CheckEnv, Failure};
use super::rollout_checks::{conclude, serving_pool, start_client};
use super::upgrade_checks::{
    apply_bundle, boot_id, bundle_targets, check_components, mark_upgrade, verified, wait_upgraded,
    NotReady, Target,
};
use crate::cluster::Kubectl;
use crate::image::VerifiedImage;
use crate::profile::Profile;
use crate::rollout::PoolRole;
use crate::ssh::SshSession;

/// How long a node that dropped its session may take to answer again.
const RECONNECT: Duration = Duration::from_secs(120);

/// What one node's upgrade needs besides its session.
struct Upgrade<'u> {
    kubectl: &'u Kubectl,
    profile: &'u Profile,
    bundle: &'u VerifiedImage,
    targets: &'u [Target<'u>],
    want_kubelet: &'u str,
    ready_budget: Duration,
}

/// How one node's upgrade went.
struct Upgraded {
    took: Duration,
    not_ready: Vec<NotReady>,
}

/// `pool-upgrade`: see the module's doc.
pub fn pool_upgrade(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let ready_budget = b.duration("ready_budget").map_err(Failure::new)?;
    let profile = env.profile;
    let bundle = verified(env.bundle).map_err(|why| {
        Failure::mismatch(
            format!("{why}; nothing applied, the legacy nodes stay on their image's kubelet"),
            "a verified bundle, applied",
            "refused",
        )
    })?;
    let targets = bundle_targets(profile, bundle)?;
    let want_kubelet = bundle.manifest.components["kubelet"].clone();
    let rollout = &profile.rollout;
    let pool = serving_pool(env, b.param("image"), attempt)?;
    let client = start_client(pool, rollout.request_interval, |_| true)?;
    attempt.note(format!(
        "client: one request every {} to {:?}",
        crate::message::duration(rollout.request_interval),
        client
            .targets()
            .iter()
            .map(|t| t.node.as_str())
            .collect::<Vec<_>>()
    ));
    let job = Upgrade {
        kubectl: pool.kubectl,
        profile,
        bundle,
        targets: &targets,
        want_kubelet: &want_kubelet,
        ready_budget,
    };
    let mut legacy: Vec<(&str, &mut SshSession)> = pool
        .members
        .iter_mut()
        .filter(|m| m.node.role == PoolRole::Legacy && m.node.absent.is_none())
        .filter_map(|m| Some((m.node.name.as_str(), m.ssh.as_deref_mut()?)))
        .collect();
    let mut problems = Vec::new();
    if legacy.is_empty() {
        problems.push("no legacy node is in the cluster to upgrade".to_string());
    }
    let started = Instant::now();
    for batch in legacy.chunks_mut(rollout.max_unavailable) {
        let done: Vec<(String, Attempt, Result<Upgraded, Failure>)> = std::thread::scope(|s| {
            let threads: Vec<_> = batch
                .iter_mut()
                .map(|(node, ssh)| {
                    let mut child = attempt.child();
                    let job = &job;
                    let node = node.to_string();
                    s.spawn(move || {
                        let r = upgrade_node(&mut child, ssh, &node, job);
                        (node, child, r)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("an upgrade thread does not panic"))
                .collect()
        });
        for (node, child, r) in done {
            attempt.merge(&format!("hot upgrade of {node}"), child);
            match r {
                Ok(u) => {
                    let window: f64 = u
                        .not_ready
                        .iter()
                        .map(|(a, b)| b.unwrap_or(*a).duration_since(*a).as_secs_f64())
                        .sum();
                    attempt.figure(
                        format!("upgrade_secs.{node}"),
                        format!("{:.1}", u.took.as_secs_f64()),
                    );
                    attempt.figure(format!("not_ready_secs.{node}"), format!("{window:.1}"));
                }
                Err(f) => problems.push(format!("{node}: {}", f.message)),
            }
        }
    }
    attempt.figure(
        "pool_upgrade_secs",
        format!("{:.1}", started.elapsed().as_secs_f64()),
    );
    conclude(
        attempt,
        (client, rollout.lost_requests, "the pool upgrade"),
        problems,
        format!(
            "every legacy node on kubelet {want_kubelet} in place, no reboot, at most {} request(s) lost",
            rollout.lost_requests
        ),
    )
}

/// Upgrades one node in place and checks it: the same boot_id after, Ready again with
/// the bundle's kubelet within the budget, every component at the bundle's version.
fn upgrade_node(
    attempt: &mut Attempt,
    ssh: &mut SshSession,
    node: &str,
    job: &Upgrade<'_>,
) -> Result<Upgraded, Failure> {
    let before = boot_id(attempt, ssh)?;
    let applied = Instant::now();
    let mut not_ready = Vec::new();
    let r = apply_bundle(attempt, ssh, job.profile, job.bundle).and_then(|()| {
        wait_upgraded(
            attempt,
            job.kubectl,
            node,
            job.want_kubelet,
            (applied, job.ready_budget),
            &mut not_ready,
        )
    });
    mark_upgrade(attempt, node, applied, &not_ready);
    r?;
    let took = applied.elapsed();
    // A node that rebooted dropped the session: a new one tells its boot_id.
    let after = match boot_id(attempt, ssh) {
        Ok(id) => id,
        Err(first) => {
            attempt.note(format!("{}; reconnecting", first.message));
            ssh.reconnect(RECONNECT)
                .map_err(|e| Failure::new(format!("the node no longer answers over SSH: {e}")))?;
            boot_id(attempt, ssh)?
        }
    };
    if after != before {
        return Err(Failure::mismatch(
            "the node rebooted during its hot upgrade (boot_id changed)",
            before,
            after,
        ));
    }
    check_components(attempt, ssh, job.targets)?;
    Ok(Upgraded { took, not_ready })
}
