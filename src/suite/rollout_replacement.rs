//! `replacement`: the legacy nodes replaced by the candidate nodes one by one while the
//! client sends to the workload without pause. Each legacy node leaves the client's
//! rotation, is cordoned and drained (`kubectl drain`, which evicts through the API and
//! so respects the PodDisruptionBudget; a drain blocked past the profile's budget fails
//! naming the budget that blocks it), its workload comes up Ready on other nodes, then
//! its VM is shut down and its Node deleted, as a cloud replaces an instance.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::builtin::Builtin;
use super::context::{Attempt, CheckEnv, Failure};
use super::rollout_checks::{conclude, placement, serving_pool, start_client, wait_pods};
use crate::cluster::Kubectl;
use crate::rollout::{PoolMember, PoolRole};
use crate::timeline::{Mark, MarkKind};

/// What a drain may take beyond its own budget (kubectl's start and its last retry).
const DRAIN_MARGIN: Duration = Duration::from_secs(30);

/// `replacement`: see the module's doc.
pub fn replacement(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let profile = env.profile;
    let rollout = &profile.rollout;
    let pool = serving_pool(env, b.param("image"), attempt)?;
    let in_cluster =
        |m: &PoolMember<'_>, role: PoolRole| m.node.role == role && m.node.absent.is_none();
    if !pool
        .members
        .iter()
        .any(|m| in_cluster(m, PoolRole::Candidate))
    {
        return Err(Failure::new(
            "no candidate node is in the cluster to take the legacy nodes' workload",
        ));
    }
    let client = start_client(pool, rollout.request_interval, |_| true)?;
    let kubectl = pool.kubectl;
    let w = pool.workload.as_ref().expect("made above");
    let mut problems = Vec::new();
    let mut replaced: Vec<String> = Vec::new();
    let legacy_total = pool
        .members
        .iter()
        .filter(|m| m.node.role == PoolRole::Legacy)
        .count();
    for m in pool
        .members
        .iter_mut()
        .filter(|m| in_cluster(m, PoolRole::Legacy))
    {
        let node = m.node.name.clone();
        let who = m.node.describe();
        // Out of the load balancer's rotation, then unschedulable.
        client.withdraw(&node);
        run(
            attempt,
            kubectl,
            &["cordon", &node],
            Duration::from_secs(30),
        )?;
        attempt.mark(Mark::instant(
            &node,
            MarkKind::Cordon,
            Instant::now(),
            "cordoned (out of the client's rotation first)".into(),
        ));
        let budget = rollout.drain_budget;
        let start = Instant::now();
        let drained = run(
            attempt,
            kubectl,
            &[
                "drain",
                &node,
                "--ignore-daemonsets",
                &format!("--timeout={}s", budget.as_secs().max(1)),
            ],
            budget + DRAIN_MARGIN,
        );
        attempt.mark(Mark::span(
            &node,
            MarkKind::Drain,
            start,
            Instant::now(),
            match &drained {
                Ok(_) => "drained".into(),
                Err(_) => "drain blocked".into(),
            },
        ));
        if let Err(f) = drained {
            let blocking = blocking_budgets(kubectl, &node);
            problems.push(format!(
                "the drain of {who} was blocked past its budget of {}: {blocking} (kubectl: {})",
                crate::message::duration(budget),
                f.message
            ));
            break;
        }
        attempt.note(format!(
            "{who} drained in {:.1}s",
            start.elapsed().as_secs_f64()
        ));
        // Its replicas Ready again, on nodes that stay.
        let gone: Vec<String> = replaced.iter().cloned().chain([node.clone()]).collect();
        let within = Duration::from_secs(300).min(attempt.remaining());
        let moved = wait_pods(w, within, |pods| {
            let n = pods
                .iter()
                .filter(|p| p.ready && !p.terminating && !gone.contains(&p.node))
                .count();
            if n >= w.replicas {
                Ok(())
            } else {
                Err(format!(
                    "{n} of {} replicas Ready off the replaced nodes",
                    w.replicas
                ))
            }
        });
        match moved {
            Ok(pods) => attempt.note(format!("after draining {node}: {}", placement(&pods))),
            Err((_, why)) => {
                problems.push(format!("after the drain of {who}: {why}"));
                break;
            }
        }
        // The instance goes: its VM shut down, then its Node deleted.
        if let Some(vm) = m.vm.take() {
            if let Err(e) = vm.qmp().and_then(|mut q| q.quit().map_err(Into::into)) {
                attempt.note(format!("shutting {node}'s VM down: {e}"));
            }
        }
        m.ssh = None;
        kubectl
            .delete("node", None, &node)
            .map_err(|e| Failure::new(format!("kubectl delete node {node}: {e}")))?;
        attempt.mark(Mark::instant(
            &node,
            MarkKind::Deleted,
            Instant::now(),
            "replaced: VM shut down, Node deleted".into(),
        ));
        m.node.absent = Some("replaced: drained, its VM shut down and its Node deleted".into());
        replaced.push(node);
    }
    attempt.figure(
        "legacy_replaced",
        format!("{}/{legacy_total}", replaced.len()),
    );
    conclude(
        attempt,
        (client, rollout.lost_requests, "the replacement"),
        problems,
        format!(
            "every legacy node drained within {} and replaced, at most {} request(s) lost",
            crate::message::duration(rollout.drain_budget),
            rollout.lost_requests
        ),
    )
}

/// Runs kubectl with `args` within `timeout`, noting the command and its output.
fn run(
    attempt: &mut Attempt,
    kubectl: &Kubectl,
    args: &[&str],
    timeout: Duration,
) -> Result<String, Failure> {
    attempt.note(format!("$ kubectl {}", args.join(" ")));
    match kubectl.run_within(args, timeout) {
        Ok(out) => {
            attempt.note(out.trim_end());
            Ok(out)
        }
        Err(e) => {
            attempt.note(format!("[failed: {e}]"));
            Err(Failure::new(e.to_string()))
        }
    }
}

/// The PodDisruptionBudgets that select the pods left on `node`, each with its budget
/// and what it allows now, in one line.
fn blocking_budgets(kubectl: &Kubectl, node: &str) -> String {
    let selector = format!("spec.nodeName={node}");
    let pods = match kubectl.json(&["get", "pods", "-A", "--field-selector", &selector]) {
        Ok(v) => v["items"].as_array().cloned().unwrap_or_default(),
        Err(e) => return format!("the pods left on it cannot be listed: {e}"),
    };
    let budgets = match kubectl.json(&["get", "poddisruptionbudgets", "-A"]) {
        Ok(v) => v["items"].as_array().cloned().unwrap_or_default(),
        Err(e) => return format!("the PodDisruptionBudgets cannot be listed: {e}"),
    };
    let left: Vec<&Value> = pods
        .iter()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .collect();
    let names = |ps: &[&Value]| {
        ps.iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().unwrap_or(""),
                    p["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut found = Vec::new();
    for b in &budgets {
        let ns = b["metadata"]["namespace"].as_str().unwrap_or_default();
        let selected: Vec<&Value> = left
            .iter()
            .copied()
            .filter(|p| {
                p["metadata"]["namespace"] == ns
                    && selects(&b["spec"]["selector"], &p["metadata"]["labels"])
            })
            .collect();
        if selected.is_empty() {
            continue;
        }
        let spec = &b["spec"];
        let limit = if !spec["maxUnavailable"].is_null() {
            format!("maxUnavailable {}", spec["maxUnavailable"])
        } else {
            format!("minAvailable {}", spec["minAvailable"])
        };
        let status = &b["status"];
        let allowed = status["disruptionsAllowed"]
            .as_i64()
            .or_else(|| status["podDisruptionsAllowed"].as_i64())
            .map_or("unknown".to_string(), |n| n.to_string());
        found.push(format!(
            "PodDisruptionBudget {ns}/{} ({limit}, disruptions allowed now: {allowed}) protects {}",
            b["metadata"]["name"].as_str().unwrap_or_default(),
            names(&selected)
        ));
    }
    if found.is_empty() {
        format!(
            "no PodDisruptionBudget selects the pods left on it ({})",
            if left.is_empty() {
                "none".to_string()
            } else {
                names(&left)
            }
        )
    } else {
        found.join("; ")
    }
}

/// Whether a label selector's `matchLabels` all hold for `labels` (a selector with
/// `matchExpressions` is judged by its `matchLabels` alone).
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .is_some_and(|want| want.iter().all(|(k, v)| labels[k] == *v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_budget_selects_pods_that_carry_all_its_labels() {
        let sel = json!({"matchLabels": {"app": "web", "tier": "front"}});
        assert!(selects(
            &sel,
            &json!({"app": "web", "tier": "front", "x": "y"})
        ));
        assert!(!selects(&sel, &json!({"app": "web"})));
        assert!(!selects(&json!({}), &json!({"app": "web"})));
    }
}
