//! The roll-out suite's checks of the pool as it stands (suites/rollout.toml): kubelets
//! within the skew policy, a mixed pool that serves from every node, and provisioning
//! measured both ways; plus what the changing checks share (the workload, the client,
//! judging what it lost). The changes themselves are in `rollout_upgrade` (in place) and
//! `rollout_replacement` (drain and delete).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::builtin::Builtin;
use super::cluster_checks::ready_status;
use super::context::{Attempt, CheckEnv, Failure};
use crate::rollout::client::{Target, Traffic, TrafficClient};
use crate::rollout::workload::{Workload, WorkloadPod, WorkloadSpec, SERVICE_PORT};
use crate::rollout::{skew, PoolRole, PoolView};
use crate::ssh::SshSession;
use crate::wait::{wait_until, Poll};

/// How long the workload may take to be Ready when a check starts.
const WORKLOAD_READY: Duration = Duration::from_secs(300);
/// Requests one node sends to the Service's ClusterIP (every backend answers one of them
/// with probability close to 1 after a few rounds).
const SERVICE_REQUESTS: usize = 20;
/// How long the mixed pool's client sends to every NodePort.
const NODE_PORT_PROBE: Duration = Duration::from_secs(4);

/// `version-skew`: every kubelet of the pool is within the profile's skew policy of the
/// API server: each image's manifest (an image out of policy was not booted) and each
/// joined node's reported kubelet, which must also be its image's.
pub fn version_skew(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let policy = env.profile.rollout.skew.clone();
    let pool = env.pool()?;
    attempt.figure("api_server", pool.server);
    let mut bad = Vec::new();
    for img in pool.images {
        let role = img.role.as_str();
        if let Some(why) = &img.refused {
            bad.push(format!("{role} image {}: {why}", img.label));
        }
        match &img.kubelet {
            Some(k) => {
                attempt.figure(format!("{role}.kubelet"), k);
                match skew::judge(k, pool.server, &policy) {
                    Ok(line) => attempt.note(format!("{role} image {}: {line}", img.label)),
                    Err(e) => bad.push(format!("{role} image {}: {e}", img.label)),
                }
            }
            None => bad.push(format!(
                "{role} image {}: its manifest names no kubelet version: the skew cannot be judged",
                img.label
            )),
        }
    }
    for m in &pool.members {
        if m.node.absent.is_some() {
            continue;
        }
        let n = pool
            .kubectl
            .get("node", None, &m.node.name)
            .map_err(|e| Failure::new(format!("kubectl: {e}")))?
            .unwrap_or_default();
        let reported = n["status"]["nodeInfo"]["kubeletVersion"]
            .as_str()
            .unwrap_or_default();
        let who = m.node.describe();
        attempt.note(format!("{who} reports kubelet {reported:?}"));
        if let Err(e) = skew::judge(reported, pool.server, &policy) {
            bad.push(format!("{who}: {e}"));
        }
        let promised = pool.image(m.node.role).and_then(|i| i.kubelet.as_deref());
        if promised.is_some_and(|p| p != reported) {
            bad.push(format!(
                "{who} reports kubelet {reported:?}, its image's manifest promises {}",
                promised.unwrap_or_default()
            ));
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Failure::mismatch(
        bad.join("; "),
        format!(
            "every kubelet within {} minor release(s) older and {} newer than the API server {}",
            policy.kubelet_older_minors, policy.kubelet_newer_minors, pool.server
        ),
        bad.join("; "),
    ))
}

/// `mixed-pool`: every node of the pool, legacy and candidate, is Ready reporting its own
/// image's kubelet; the workload (made here if no check made it before) runs a Ready pod
/// on every Ready node; from every Ready node the Service's ClusterIP answers from every
/// node that has a pod; from the run's network every Ready node's NodePort answers. A
/// node that is not in the pool is named with the reason, beside the nodes that still
/// serve.
pub fn mixed_pool(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let profile = env.profile;
    let pool = booted_pool(env)?;
    let mut problems = Vec::new();
    let mut ready = Vec::new();
    for m in &pool.members {
        let who = m.node.describe();
        if let Some(why) = &m.node.absent {
            problems.push(format!("{who} is not in the cluster: {why}"));
            continue;
        }
        let n = pool
            .kubectl
            .get("node", None, &m.node.name)
            .map_err(|e| Failure::new(format!("kubectl: {e}")))?;
        let Some(n) = n else {
            problems.push(format!("{who} has no Node object"));
            continue;
        };
        let status = ready_status(&n);
        let reported = n["status"]["nodeInfo"]["kubeletVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let promised = pool.image(m.node.role).and_then(|i| i.kubelet.clone());
        attempt.note(format!("{who}: Ready={status}, kubelet {reported}"));
        attempt.figure(format!("kubelet.{}", m.node.name), &reported);
        if status != "True" {
            problems.push(format!("{who} is not Ready (Ready={status})"));
            continue;
        }
        if promised.as_deref() != Some(reported.as_str()) {
            problems.push(format!(
                "{who} reports kubelet {reported}, its image promises {}",
                promised.unwrap_or_else(|| "none".into())
            ));
        }
        ready.push(m.node.name.clone());
    }
    attempt.figure(
        "nodes_ready",
        format!("{}/{}", ready.len(), pool.members.len()),
    );
    if ready.is_empty() {
        return Err(Failure::mismatch(
            format!("no node of the pool is Ready: {}", problems.join("; ")),
            "every node of the pool Ready",
            "none",
        ));
    }
    ensure_workload(pool, profile, b.param("image"), attempt)?;
    let w = pool.workload.as_ref().expect("made above");
    // A Ready pod on every Ready node.
    let within = WORKLOAD_READY.min(attempt.remaining().saturating_sub(Duration::from_secs(60)));
    let pods = match wait_pods(w, within, |pods| {
        let missing: Vec<&String> = ready.iter().filter(|n| !serves_on(pods, n)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no Ready pod of the Deployment on {missing:?}"))
        }
    }) {
        Ok(pods) => pods,
        Err((pods, why)) => {
            problems.push(why);
            pods
        }
    };
    let serving: BTreeSet<String> = pods
        .iter()
        .filter(|p| p.ready && !p.terminating)
        .map(|p| p.node.clone())
        .collect();
    attempt.note(format!("the workload's Ready pods run on {serving:?}"));
    // The Service from every Ready node.
    let ip = w.cluster_ip;
    for m in pool.members.iter_mut() {
        let (true, Some(ssh)) = (ready.contains(&m.node.name), m.ssh.as_deref_mut()) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        let r = super::pod_access_checks::retry(
            Duration::from_secs(60).min(attempt.remaining()),
            || {
                seen.extend(service_backends(attempt, ssh, ip).map_err(|f| f.message)?);
                if serving.is_subset(&seen) {
                    Ok(())
                } else {
                    Err(format!("answered from {seen:?}"))
                }
            },
        );
        attempt.note(format!(
            "from {}: {ip}:{SERVICE_PORT} answered from {seen:?}",
            m.node.name
        ));
        if r.is_err() {
            problems.push(format!(
                "from {}: the Service answered from {seen:?}, not from every node with a pod ({serving:?})",
                m.node.name
            ));
        }
    }
    // Every Ready node's NodePort, from the run's network.
    let rollout = &profile.rollout;
    let client = start_client(
        pool,
        rollout.request_interval.min(Duration::from_millis(50)),
        |m| ready.contains(&m),
    )?;
    std::thread::sleep(NODE_PORT_PROBE);
    let traffic = client.finish().map_err(Failure::new)?;
    let mut lost: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &traffic.failures {
        *lost.entry(&f.node).or_default() += 1;
    }
    attempt.note(format!(
        "NodePort {} from the run's network: {}",
        w.node_port,
        traffic.summary()
    ));
    for (node, n) in &lost {
        problems.push(format!("the NodePort on {node} failed {n} request(s)"));
    }
    let by_role = |role: PoolRole| -> Vec<String> {
        pool.members
            .iter()
            .filter(|m| m.node.role == role && serving.contains(&m.node.name))
            .map(|m| m.node.name.clone())
            .collect()
    };
    let (legacy, candidate) = (by_role(PoolRole::Legacy), by_role(PoolRole::Candidate));
    attempt.figure("serving.legacy", legacy.join(","));
    attempt.figure("serving.candidate", candidate.join(","));
    let served = format!(
        "the pool still serves from {} ({} of {} NodePort requests answered)",
        if serving.is_empty() {
            "no node".to_string()
        } else {
            serving.iter().cloned().collect::<Vec<_>>().join(", ")
        },
        traffic.sent - traffic.failed,
        traffic.sent
    );
    attempt.traffic.push(traffic);
    if problems.is_empty() {
        attempt.note(served);
        return Ok(());
    }
    Err(Failure::mismatch(
        format!("{}; {served}", problems.join("; ")),
        "every node of the pool Ready with its image's kubelet, running a pod and serving",
        format!("{} of {} nodes serve", serving.len(), pool.members.len()),
    ))
}

/// `provisioning`: the time from each node's VM start to its Node Ready, legacy against
/// candidate in the same run, as the mean of each and their ratio, held to the profile's
/// `[rollout] provisioning_ratio`.
pub fn provisioning(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let budget = env.profile.rollout.provisioning_ratio;
    let pool = booted_pool(env)?;
    let mut times: BTreeMap<PoolRole, Vec<f64>> = BTreeMap::new();
    let mut missing = Vec::new();
    for m in &pool.members {
        let n = &m.node;
        match n.provisioning() {
            Some(d) => {
                attempt.note(format!(
                    "{}: VM start to Node Ready {:.1}s (boot {:.1}s, join {:.1}s)",
                    n.describe(),
                    d.as_secs_f64(),
                    n.boot.unwrap_or_default().as_secs_f64(),
                    n.join.unwrap_or_default().as_secs_f64()
                ));
                attempt.figure(
                    format!("provisioning_secs.{}", n.name),
                    format!("{:.1}", d.as_secs_f64()),
                );
                times.entry(n.role).or_default().push(d.as_secs_f64());
            }
            None => missing.push(format!(
                "{} was never Ready ({})",
                n.describe(),
                n.absent.as_deref().unwrap_or("no Ready time recorded")
            )),
        }
    }
    if !missing.is_empty() {
        return Err(Failure::new(format!(
            "cannot compare provisioning: {}",
            missing.join("; ")
        )));
    }
    let mean = |role: PoolRole| {
        let v = &times[&role];
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (legacy, candidate) = (mean(PoolRole::Legacy), mean(PoolRole::Candidate));
    let ratio = candidate / legacy;
    attempt.figure("legacy_provisioning_secs", format!("{legacy:.1}"));
    attempt.figure("candidate_provisioning_secs", format!("{candidate:.1}"));
    attempt.figure("provisioning_ratio", format!("{ratio:.2}"));
    attempt.figure("provisioning_budget", format!("{budget:.2}"));
    let said = format!(
        "candidate nodes provisioned in {candidate:.1}s, legacy nodes in {legacy:.1}s: ratio {ratio:.2} (the candidate is {})",
        if ratio <= 1.0 {
            format!("{:.0}% faster", (1.0 - ratio) * 100.0)
        } else {
            format!("{:.0}% slower", (ratio - 1.0) * 100.0)
        }
    );
    attempt.note(&said);
    if ratio > budget {
        return Err(Failure::mismatch(
            format!("{said}, above the profile's budget of {budget:.2}"),
            format!("ratio at most {budget:.2}"),
            format!("{ratio:.2}"),
        ));
    }
    Ok(())
}

/// The pool, unless nothing of it booted (an image was refused): then the refusal.
pub(super) fn booted_pool<'e, 'a>(
    env: &'e mut CheckEnv<'a>,
) -> Result<&'e mut PoolView<'a>, Failure> {
    let pool = env.pool()?;
    match pool.blocked() {
        Some(why) => Err(Failure::new(why)),
        None => Ok(pool),
    }
}

/// The booted pool with every replica of its workload Ready (the workload made here
/// unless a check before made it): where a changing check starts.
pub(super) fn serving_pool<'e, 'a>(
    env: &'e mut CheckEnv<'a>,
    image: &str,
    attempt: &mut Attempt,
) -> Result<&'e mut PoolView<'a>, Failure> {
    let profile = env.profile;
    let pool = booted_pool(env)?;
    ensure_workload(pool, profile, image, attempt)?;
    workload_ready(workload(pool), attempt)?;
    Ok(pool)
}

/// Makes the roll-out's workload unless a check before made it.
pub(super) fn ensure_workload(
    pool: &mut PoolView<'_>,
    profile: &crate::profile::Profile,
    image: &str,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    if pool.workload.is_some() {
        return Ok(());
    }
    let r = &profile.rollout;
    let spec = WorkloadSpec {
        name: pool.name.to_string(),
        image: image.to_string(),
        replicas: r.replicas(pool.members.len()),
        max_unavailable: r.workload.max_unavailable,
        drain_delay: r.workload.drain_delay,
    };
    attempt.note(format!(
        "creating the workload {}: a Deployment of {} replicas of {} (one per node preferred), a NodePort Service, a PodDisruptionBudget with maxUnavailable {}",
        spec.name, spec.replicas, spec.image, spec.max_unavailable
    ));
    let w = Workload::create(pool.kubectl, &spec, pool.server).map_err(Failure::new)?;
    attempt.note(format!(
        "Service {}: ClusterIP {}, NodePort {}",
        w.name, w.cluster_ip, w.node_port
    ));
    *pool.workload = Some(w);
    Ok(())
}

/// The made workload, after [`ensure_workload`].
pub(super) fn workload<'p>(pool: &'p PoolView<'_>) -> &'p Workload {
    pool.workload.as_ref().expect("ensure_workload ran")
}

/// Whether a Ready pod that is not terminating runs on `node`.
pub(super) fn serves_on(pods: &[WorkloadPod], node: &str) -> bool {
    pods.iter()
        .any(|p| p.node == node && p.ready && !p.terminating)
}

/// Polls the workload's pods every 2 s until `done` accepts them, within `within`: the
/// pods, or the pods last seen and why they were not accepted.
pub(super) fn wait_pods(
    w: &Workload,
    within: Duration,
    mut done: impl FnMut(&[WorkloadPod]) -> Result<(), String>,
) -> Result<Vec<WorkloadPod>, (Vec<WorkloadPod>, String)> {
    let mut last = Vec::new();
    let r = wait_until(
        format!("the pods of {}", w.name),
        within,
        Duration::from_secs(2),
        || match w.pods() {
            Ok(pods) => {
                let r = done(&pods);
                last = pods;
                match r {
                    Ok(()) => Poll::Ready(()),
                    Err(why) => Poll::Pending(why),
                }
            }
            Err(e) => Poll::Pending(format!("kubectl: {e}")),
        },
    );
    match r {
        Ok(()) => Ok(last),
        Err(e) => Err((last, e.to_string())),
    }
}

/// Waits until every replica of the workload is Ready (the start of a changing check).
pub(super) fn workload_ready(
    w: &Workload,
    attempt: &mut Attempt,
) -> Result<Vec<WorkloadPod>, Failure> {
    let replicas = w.replicas;
    let within = WORKLOAD_READY.min(attempt.remaining());
    let pods = wait_pods(w, within, |pods| {
        let n = pods.iter().filter(|p| p.ready && !p.terminating).count();
        if n >= replicas {
            Ok(())
        } else {
            Err(format!("{n} of {replicas} replicas Ready"))
        }
    })
    .map_err(|(_, why)| {
        Failure::new(format!(
            "the workload is not Ready before the change: {why}"
        ))
    })?;
    attempt.note(format!("the workload's pods: {}", placement(&pods)));
    Ok(pods)
}

/// `POD on NODE` of each Ready pod.
pub(super) fn placement(pods: &[WorkloadPod]) -> String {
    pods.iter()
        .filter(|p| p.ready && !p.terminating)
        .map(|p| format!("{} on {}", p.name, p.node))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts the client on the NodePorts of the pool's nodes in the cluster that `pick`
/// accepts (by name).
pub(super) fn start_client(
    pool: &PoolView<'_>,
    interval: Duration,
    pick: impl Fn(String) -> bool,
) -> Result<TrafficClient, Failure> {
    let port = workload(pool).node_port;
    let targets: Vec<Target> = pool
        .members
        .iter()
        .filter(|m| m.node.absent.is_none() && pick(m.node.name.clone()))
        .filter_map(|m| {
            Some(Target {
                node: m.node.name.clone(),
                addr: SocketAddr::from((m.node.addr?, port)),
            })
        })
        .collect();
    if targets.is_empty() {
        return Err(Failure::new(
            "no node of the pool has an address on the run's network for the client",
        ));
    }
    TrafficClient::start(&pool.dialer, targets, interval)
        .map_err(|e| Failure::new(format!("cannot start the client in the run's network: {e}")))
}

/// A changing check's end: stops the client and records what it saw `during` the change
/// (figures, the first failures, the traffic for the report); more than `allowed`
/// requests lost is a problem too. Passed when nothing went wrong, else every problem in
/// one line against what was `expected`.
pub(super) fn conclude(
    attempt: &mut Attempt,
    (client, allowed, during): (TrafficClient, u64, &str),
    mut problems: Vec<String>,
    expected: String,
) -> Result<(), Failure> {
    let traffic = client.finish().map_err(Failure::new)?;
    problems.extend(judge_traffic(attempt, traffic, allowed, during));
    if problems.is_empty() {
        return Ok(());
    }
    let all = problems.join("; ");
    Err(Failure::mismatch(all.clone(), expected, all))
}

/// What the client saw: figures, the first failures, the traffic for the report; whether
/// it lost more than `allowed` requests.
fn judge_traffic(
    attempt: &mut Attempt,
    traffic: Traffic,
    allowed: u64,
    during: &str,
) -> Option<String> {
    attempt.figure("requests_sent", traffic.sent);
    attempt.figure("requests_failed", traffic.failed);
    attempt.figure(
        "longest_gap_secs",
        format!("{:.2}", traffic.longest_gap.as_secs_f64()),
    );
    attempt.note(format!("client during {during}: {}", traffic.summary()));
    for f in traffic.failures.iter().take(10) {
        attempt.note(format!(
            "  lost at +{:.1}s via {}: {}",
            f.at.as_secs_f64(),
            f.node,
            f.reason
        ));
    }
    let verdict = (traffic.failed > allowed).then(|| {
        let first = traffic
            .failures
            .first()
            .map(|f| format!("; the first at +{:.1}s via {}: {}", f.at.as_secs_f64(), f.node, f.reason))
            .unwrap_or_default();
        format!(
            "{} of {} requests lost during {during} (the profile allows {allowed}), longest gap without an answer {}{first}",
            traffic.failed,
            traffic.sent,
            crate::message::duration(traffic.longest_gap)
        )
    });
    attempt.traffic.push(traffic);
    verdict
}

/// The nodes whose pods answered `SERVICE_REQUESTS` requests to the Service's ClusterIP
/// `ip` from the node behind `ssh`.
fn service_backends(
    attempt: &mut Attempt,
    ssh: &mut SshSession,
    ip: std::net::Ipv4Addr,
) -> Result<BTreeSet<String>, Failure> {
    let o = attempt.exec(
        ssh,
        &format!(
            "for i in $(seq {SERVICE_REQUESTS}); do curl -s --max-time 3 http://{ip}:{SERVICE_PORT}/; echo; done"
        ),
    )?;
    Ok(o.stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("served-by-"))
        .filter_map(|who| who.rsplit_once('@').map(|(_, node)| node.to_string()))
        .collect())
}
