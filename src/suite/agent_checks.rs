//! Agent connectivity: nodegate hosts the agent's endpoint during the run (forwarded into
//! the guest) and judges what arrives there. The protocol's paths, token, identity field,
//! interval and the agent's config file come from the profile's `[agent]` section.

use std::time::{Duration, Instant};

use super::builtin::Builtin;
use super::context::{shell_quote, Attempt, CheckEnv, Failure, Guest};
use crate::agent_endpoint::Received;
use crate::network::Impairment;
use crate::profile::{AgentProfile, AgentProvision, Profile};
use crate::timeline::{Mark, MarkKind};
use crate::vm::qemu::NIC_ID;

/// Requests from this node that the endpoint answered 200, on `path`.
fn accepted<'r>(
    log: &'r [Received],
    a: &AgentProfile,
    node: &str,
    path: &str,
) -> Vec<&'r Received> {
    let field = &a.identity_field;
    log.iter()
        .filter(|r| r.status == 200 && r.path == path && r.body[field.as_str()] == node)
        .collect()
}

/// The profile's agent (the run runs no agent check for a profile without one).
fn agent(profile: &Profile) -> Result<&AgentProfile, Failure> {
    profile
        .agent
        .as_ref()
        .ok_or_else(|| Failure::new("the profile has no [agent]"))
}

/// What the endpoint received so far (nothing when the run hosts none).
fn requests(g: &Guest<'_>) -> Vec<Received> {
    g.endpoint
        .as_ref()
        .map(|e| e.requests())
        .unwrap_or_default()
}

/// Points the agent at the endpoint (once), as the profile's `provision` says: the seed
/// did it at boot, or its config file is written in the guest (and its unit restarted).
fn configure(profile: &Profile, g: &mut Guest<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let a = agent(profile)?;
    let endpoint = format!("http://{}:{}", a.guest_addr, a.guest_port);
    if a.provision == AgentProvision::Seed {
        attempt.note(format!(
            "{} was written by the first-boot seed ({}), pointing at {endpoint}",
            a.config_path,
            profile.vm.first_boot.as_str()
        ));
        return Ok(());
    }
    if !accepted(&requests(g), a, g.name, &a.register_path).is_empty() {
        return Ok(());
    }
    let text = a.render_config(g.name);
    let tmp = "/tmp/nodegate-agent-config";
    attempt.note(format!("write {} pointing at {endpoint}", a.config_path));
    g.ssh
        .upload_bytes(text.as_bytes(), tmp, 0o600)
        .map_err(|e| Failure::new(format!("ssh upload: {e}")))?;
    let o = attempt.exec_root(
        g.ssh,
        &format!(
            "install -D -m 0600 {tmp} {} && rm -f {tmp}",
            shell_quote(&a.config_path)
        ),
    )?;
    if o.status != 0 {
        return Err(Failure::new(format!(
            "cannot write {}: {}",
            a.config_path,
            o.stderr.trim()
        )));
    }
    if a.provision == AgentProvision::WriteRestart {
        let unit =
            profile.services.agent.as_ref().ok_or_else(|| {
                Failure::new("provision = \"write-restart\" needs [services] agent")
            })?;
        attempt.note(format!(
            "restart {unit}: the agent reads its config at start"
        ));
        let o = attempt.exec_root(g.ssh, &format!("systemctl restart {}", shell_quote(unit)))?;
        if o.status != 0 {
            return Err(Failure::new(format!(
                "cannot restart {unit}: {}",
                o.stderr.trim()
            )));
        }
    }
    Ok(())
}

/// Waits until `pick` finds something in the endpoint's log, or `budget` passes.
fn wait_for<T>(
    g: &Guest<'_>,
    attempt: &Attempt,
    budget: Duration,
    mut pick: impl FnMut(&[Received]) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + budget.min(attempt.remaining());
    loop {
        if let Some(v) = pick(&requests(g)) {
            return Some(v);
        }
        if Instant::now() >= deadline || crate::interrupt::interrupted() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Configures the agent and waits for its registration; returns when it arrived.
fn registered(
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
    budget: Duration,
) -> Result<Instant, Failure> {
    let profile = env.profile;
    let a = agent(profile)?;
    let g = env.guest()?;
    configure(profile, g, attempt)?;
    let (name, path) = (g.name.to_string(), a.register_path.clone());
    wait_for(g, attempt, budget, |log| {
        accepted(log, a, &name, &path).first().map(|r| r.at)
    })
    .ok_or_else(|| {
        let seen = requests(g);
        let last = seen.last().map_or("nothing".into(), |r| {
            format!("{} {} (authorized {})", r.path, r.status, r.authorized)
        });
        Failure::mismatch(
            format!(
                "no registration from {name} at the endpoint within {}",
                crate::message::duration(budget)
            ),
            format!("POST {path} with {} = {name}", a.identity_field),
            format!("{} requests, last: {last}", seen.len()),
        )
    })
}

/// `agent-registers`: the registration arrives within `budget` carrying the node's
/// identity (name, machine-id, boot_id as the guest has them).
pub fn registers(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let budget = b.duration("budget").map_err(Failure::new)?;
    let start = Instant::now();
    let at = registered(env, attempt, budget)?;
    attempt.note(match at.checked_duration_since(start) {
        Some(after) => format!(
            "registered {:.1}s after the agent was configured",
            after.as_secs_f64()
        ),
        None => format!(
            "registered {:.1}s before this check began",
            start.duration_since(at).as_secs_f64()
        ),
    });
    let a = agent(env.profile)?;
    let g = env.guest()?;
    let log = requests(g);
    let reg = accepted(&log, a, g.name, &a.register_path)[0].clone();
    let o = attempt.exec(g.ssh, "cat /etc/machine-id /proc/sys/kernel/random/boot_id")?;
    let mut lines = o.stdout.lines();
    for (field, want) in [("machine_id", lines.next()), ("boot_id", lines.next())] {
        let want = want.unwrap_or("").trim();
        let got = reg.body[field].as_str().unwrap_or("absent");
        if got != want {
            return Err(Failure::mismatch(
                format!("the registration's {field} is not the guest's"),
                want,
                got,
            ));
        }
    }
    Ok(())
}

/// Requests from this node (whatever the answer) that arrived after `since`.
fn from_node_since(g: &Guest<'_>, a: &AgentProfile, since: Instant) -> usize {
    let field = a.identity_field.as_str();
    requests(g)
        .iter()
        .filter(|r| r.at > since && r.body[field] == g.name)
        .count()
}

/// Heartbeats accepted from `node` after `since`, in arrival order.
fn beats_since(g: &Guest<'_>, a: &AgentProfile, since: Instant) -> Vec<Instant> {
    accepted(&requests(g), a, g.name, &a.heartbeat_path)
        .into_iter()
        .filter(|r| r.at > since)
        .map(|r| r.at)
        .collect()
}

/// The heartbeats the endpoint accepted from `node`, as timeline marks (none for a
/// profile without an agent).
pub fn heartbeat_marks(log: &[Received], profile: &Profile, node: &str) -> Vec<Mark> {
    let Some(a) = &profile.agent else {
        return Vec::new();
    };
    accepted(log, a, node, &a.heartbeat_path)
        .into_iter()
        .map(|r| Mark::instant(node, MarkKind::Heartbeat, r.at, "heartbeat accepted".into()))
        .collect()
}

/// `agent-heartbeats`: `count` heartbeats arrive at the profile's interval, the mean
/// within `tolerance`; the jitter (largest deviation) is reported. With `latency` and/or
/// `loss`, the node's link is shaped so while they are counted (the run's bridge).
pub fn heartbeats(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let count: usize = b
        .param("count")
        .parse()
        .map_err(|_| Failure::new("param `count` is not a number"))?;
    let tolerance = b.duration("tolerance").map_err(Failure::new)?;
    let a = agent(env.profile)?;
    let interval = a.heartbeat_interval;
    let impairment =
        Impairment::from_params(b.param("latency"), b.param("loss")).map_err(Failure::new)?;
    registered(env, attempt, attempt.remaining())?;
    let g = env.guest()?;
    // Shaped while the heartbeats are counted; the guard clears it, pass or fail.
    let _shaped = match &impairment {
        Some(imp) => {
            let link = g.bridge_link("shape")?;
            let shaped = link
                .shape(imp)
                .map_err(|e| Failure::new(format!("cannot shape the link: {e}")))?;
            attempt.note(format!("{}: {imp}", link.port.tap));
            Some(shaped)
        }
        None => None,
    };
    let since = Instant::now();
    let budget = attempt.remaining();
    let beats = wait_for(g, attempt, budget, |_| {
        let b = beats_since(g, a, since);
        (b.len() > count).then_some(b)
    });
    if let Some(imp) = &impairment {
        attempt.mark(Mark::span(
            g.name,
            MarkKind::LinkShaped,
            since,
            Instant::now(),
            format!("link shaped: {imp}"),
        ));
    }
    let beats = beats.ok_or_else(|| {
        Failure::mismatch(
            format!("heartbeats stopped arriving from {}", g.name),
            format!(
                "{} heartbeats every {}",
                count + 1,
                crate::message::duration(interval)
            ),
            format!("{}", beats_since(g, a, since).len()),
        )
    })?;
    let gaps: Vec<f64> = beats
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let want = interval.as_secs_f64();
    let jitter = gaps.iter().map(|g| (g - want).abs()).fold(0.0, f64::max);
    attempt.note(format!(
        "intervals {gaps:.2?} s: mean {mean:.2} s, jitter {jitter:.2} s"
    ));
    if (mean - want).abs() > tolerance.as_secs_f64() {
        return Err(Failure::mismatch(
            format!("heartbeats arrive off the promised interval (jitter {jitter:.2}s)"),
            format!("mean {want:.2}s ± {:.2}s", tolerance.as_secs_f64()),
            format!("mean {mean:.2}s"),
        ));
    }
    Ok(())
}

/// `agent-link-cut`: with the VM's link down for `down` (QMP), nothing arrives; after
/// it is restored, heartbeats resume within `budget`.
pub fn link_cut(b: &Builtin, env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let down = b.duration("down").map_err(Failure::new)?;
    let budget = b.duration("budget").map_err(Failure::new)?;
    registered(env, attempt, attempt.remaining())?;
    let a = agent(env.profile)?;
    let g = env.guest()?;
    let mut qmp = g.vm.qmp().map_err(|e| Failure::new(format!("qmp: {e}")))?;
    qmp.set_link(NIC_ID, false)
        .map_err(|e| Failure::new(format!("qmp set_link off: {e}")))?;
    let cut = Instant::now();
    attempt.note(format!(
        "link {NIC_ID} down for {}",
        crate::message::duration(down)
    ));
    std::thread::sleep(down);
    let during = from_node_since(g, a, cut + Duration::from_secs(1));
    qmp.set_link(NIC_ID, true)
        .map_err(|e| Failure::new(format!("qmp set_link on: {e}")))?;
    let up = Instant::now();
    attempt.mark(Mark::span(
        g.name,
        MarkKind::LinkCut,
        cut,
        up,
        format!("link {NIC_ID} down (QMP)"),
    ));
    if during > 0 {
        return Err(Failure::new(format!(
            "{during} requests arrived while the link was down: the cut did not cut"
        )));
    }
    let resumed = wait_for(g, attempt, budget, |_| {
        beats_since(g, a, up).first().copied()
    });
    match resumed {
        Some(at) => {
            attempt.note(format!(
                "heartbeats resumed {:.1}s after the link came back",
                (at - up).as_secs_f64()
            ));
            Ok(())
        }
        None => Err(Failure::mismatch(
            format!("no heartbeat from {} after the link came back", g.name),
            format!("a heartbeat within {}", crate::message::duration(budget)),
            "none",
        )),
    }
}

/// `agent-partition`: the node's tap on the run's bridge goes down for `down`; nothing
/// arrives from it meanwhile, and once the link is back the agent registers again (its
/// session broke) and heartbeats within `budget`. Both times are reported.
pub fn partition(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let down = b.duration("down").map_err(Failure::new)?;
    let budget = b.duration("budget").map_err(Failure::new)?;
    registered(env, attempt, attempt.remaining())?;
    let a = agent(env.profile)?;
    let g = env.guest()?;
    let link = g.bridge_link("cut")?;
    let heal = link
        .cut()
        .map_err(|e| Failure::new(format!("cannot cut the link: {e}")))?;
    let cut = Instant::now();
    attempt.note(format!(
        "{}: link {} down for {}",
        g.name,
        link.port.tap,
        crate::message::duration(down)
    ));
    std::thread::sleep(down);
    let during = from_node_since(g, a, cut + Duration::from_secs(1));
    drop(heal);
    let up = Instant::now();
    attempt.mark(Mark::span(
        g.name,
        MarkKind::LinkCut,
        cut,
        up,
        format!("link {} cut", link.port.tap),
    ));
    if during > 0 {
        return Err(Failure::new(format!(
            "{during} requests from {} arrived while its link was down: the partition did not cut",
            g.name
        )));
    }
    let name = g.name.to_string();
    let back = wait_for(g, attempt, budget, |log| {
        let reg = accepted(log, a, &name, &a.register_path)
            .into_iter()
            .find(|r| r.at > up)?
            .at;
        let beat = accepted(log, a, &name, &a.heartbeat_path)
            .into_iter()
            .find(|r| r.at > reg)?
            .at;
        Some((reg, beat))
    });
    match back {
        Some((reg, beat)) => {
            attempt.note(format!(
                "registered again {:.1}s and heartbeat {:.1}s after the link came back",
                (reg - up).as_secs_f64(),
                (beat - up).as_secs_f64()
            ));
            Ok(())
        }
        None => Err(Failure::mismatch(
            format!("{name} did not register again after the partition healed"),
            format!(
                "a registration, then a heartbeat, within {}",
                crate::message::duration(budget)
            ),
            "not both",
        )),
    }
}

/// `agent-reconnects`: after the endpoint restarts (forgetting the node), the agent
/// registers again and heartbeats resume within `budget`.
pub fn reconnects(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let budget = b.duration("budget").map_err(Failure::new)?;
    registered(env, attempt, attempt.remaining())?;
    let a = agent(env.profile)?;
    let g = env.guest()?;
    let endpoint = g
        .endpoint
        .as_mut()
        .ok_or_else(|| Failure::new("no agent endpoint for this node"))?;
    endpoint
        .restart()
        .map_err(|e| Failure::new(e.to_string()))?;
    let restarted = Instant::now();
    let generation = endpoint.generation();
    attempt.note("endpoint restarted (it forgot the node)");
    let name = g.name.to_string();
    let back = wait_for(g, attempt, budget, |log| {
        let ours = |path: &str| {
            accepted(log, a, &name, path)
                .into_iter()
                .find(|r| r.generation == generation)
                .map(|r| r.at)
        };
        Some((ours(&a.register_path)?, ours(&a.heartbeat_path)?))
    });
    match back {
        Some((reg, beat)) => {
            attempt.note(format!(
                "registered again {:.1}s and heartbeat {:.1}s after the restart",
                (reg - restarted).as_secs_f64(),
                (beat - restarted).as_secs_f64()
            ));
            Ok(())
        }
        None => Err(Failure::mismatch(
            format!("{name} did not reconnect after the endpoint restarted"),
            format!(
                "registration and heartbeat within {}",
                crate::message::duration(budget)
            ),
            "not both",
        )),
    }
}

/// `agent-state`: the agent's local state agrees with what the endpoint saw: connected,
/// registered, the same node, and its counts of accepted registrations and heartbeats.
pub fn state(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    registered(env, attempt, attempt.remaining())?;
    let a = agent(env.profile)?;
    let g = env.guest()?;
    let o = attempt.exec(
        g.ssh,
        &format!("curl -s --max-time 10 {}", shell_quote(&a.state_url)),
    )?;
    let s: serde_json::Value = serde_json::from_str(&o.stdout).map_err(|e| {
        Failure::mismatch(
            format!("the agent's state is not JSON: {e}"),
            "JSON",
            o.stdout.trim(),
        )
    })?;
    let pid = s["pid"].clone();
    let log = requests(g);
    let count = |path: &str| {
        accepted(&log, a, g.name, path)
            .into_iter()
            .filter(|r| r.body["agent_pid"] == pid)
            .count() as i64
    };
    let seen = [
        ("registrations", count(&a.register_path)),
        ("heartbeats_sent", count(&a.heartbeat_path)),
    ];
    attempt.note(format!("endpoint accepted: {seen:?}"));
    let field = &a.identity_field;
    if s[field.as_str()] != g.name || s["connected"] != true || s["registered"] != true {
        return Err(Failure::mismatch(
            "the agent's local state disagrees with the endpoint",
            format!("{field} {}, connected, registered", g.name),
            format!(
                "{field} {}, connected {}, registered {}",
                s[field.as_str()],
                s["connected"],
                s["registered"]
            ),
        ));
    }
    for (key, endpoint) in seen {
        let local = s[key].as_i64().unwrap_or(-1);
        // The endpoint records a request before the agent hears the answer: one in
        // flight, and one more if an answer was lost to the link cut.
        if !(0..=2).contains(&(endpoint - local)) {
            return Err(Failure::mismatch(
                format!("the agent's {key} disagrees with what the endpoint accepted"),
                format!("{endpoint} (or up to 2 fewer)"),
                local.to_string(),
            ));
        }
    }
    Ok(())
}
