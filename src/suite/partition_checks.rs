//! `node-partition`: the node's link on the run's bridge goes down for longer than the
//! control plane's node-monitor grace period; the Node goes NotReady, and Ready again
//! once the link is back. Both times are reported.

use std::time::{Duration, Instant};

use super::builtin::Builtin;
use super::cluster_checks::ready_status;
use super::context::{Attempt, CheckEnv, Failure};
use crate::timeline::{Mark, MarkKind};

/// Polls the Node's Ready status every second until `done` accepts it or `within`
/// passes; returns the time it took.
fn wait_status(
    kubectl: &crate::cluster::Kubectl,
    node: &str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> Result<Duration, String> {
    let t = Instant::now();
    let mut last = String::from("unknown");
    while t.elapsed() < within {
        if let Ok(Some(n)) = kubectl.get("node", None, node) {
            last = ready_status(&n);
            if done(&last) {
                return Ok(t.elapsed());
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(last)
}

/// `node-partition`: cut the node's link for `down`; the Node must go NotReady during the
/// cut and be Ready again within `budget` of the link coming back.
pub fn node_partition(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let down = b.duration("down").map_err(Failure::new)?;
    let budget = b.duration("budget").map_err(Failure::new)?;
    let m = env.member()?;
    let (kubectl, node) = (m.kubectl, m.node.name().to_string());
    let g = env
        .guest
        .as_ref()
        .ok_or_else(|| Failure::new("internal: no guest for a node check"))?;
    let link = g.bridge_link("cut")?;
    wait_status(kubectl, &node, Duration::from_secs(30), |s| s == "True").map_err(|s| {
        Failure::mismatch(
            format!("Node {node} is not Ready before the partition"),
            "Ready=True",
            format!("Ready={s}"),
        )
    })?;
    let heal = link
        .cut()
        .map_err(|e| Failure::new(format!("cannot cut the link: {e}")))?;
    let cut = Instant::now();
    attempt.note(format!(
        "{node}: link {} down for {}",
        link.port.tap,
        crate::message::duration(down)
    ));
    let not_ready = wait_status(kubectl, &node, down, |s| s != "True");
    std::thread::sleep(down.saturating_sub(cut.elapsed()));
    drop(heal);
    let healed = Instant::now();
    attempt.mark(Mark::span(
        &node,
        MarkKind::LinkCut,
        cut,
        healed,
        format!("link {} cut", link.port.tap),
    ));
    attempt.note(format!(
        "{node}: link up after {:.1}s",
        cut.elapsed().as_secs_f64()
    ));
    let not_ready = not_ready.map_err(|_| {
        Failure::mismatch(
            format!(
                "Node {node} stayed Ready through a {} partition: the control plane did not notice",
                crate::message::duration(down)
            ),
            "Ready=False or Unknown during the partition",
            "Ready=True throughout",
        )
    })?;
    attempt.note(format!(
        "{node}: NotReady {:.1}s into the partition",
        not_ready.as_secs_f64()
    ));
    let back = wait_status(kubectl, &node, budget, |s| s == "True");
    attempt.mark(Mark::span(
        &node,
        MarkKind::NotReady,
        cut + not_ready,
        healed + *back.as_ref().unwrap_or(&budget),
        "NotReady during the partition".into(),
    ));
    let back = back.map_err(|s| {
        Failure::mismatch(
            format!("Node {node} did not come back Ready after the partition healed"),
            format!("Ready=True within {}", crate::message::duration(budget)),
            format!("Ready={s}"),
        )
    })?;
    attempt.note(format!(
        "{node}: Ready {:.1}s after the link came back (NotReady {:.1}s after the cut)",
        back.as_secs_f64(),
        not_ready.as_secs_f64()
    ));
    Ok(())
}
