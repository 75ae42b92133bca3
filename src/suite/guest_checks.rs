//! Built-in checks that look inside the guest over SSH.

use std::time::{Duration, Instant};

use super::builtin::Builtin;
use super::cluster_checks;
use super::context::{shell_quote, Attempt, CheckEnv, Failure, Guest};

/// `service-active`: the unit is enabled and active.
pub fn service_active(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let unit = b.param("unit");
    let g = env.guest()?;
    let q = shell_quote(unit);
    let o = attempt.exec(
        g.ssh,
        &format!("systemctl is-enabled {q} 2>&1; systemctl is-active {q} 2>&1"),
    )?;
    let mut lines = o.stdout.lines().map(str::trim);
    let enabled = lines.next().unwrap_or("").to_string();
    let active = lines.next().unwrap_or("").to_string();
    if enabled == "enabled" && active == "active" {
        return Ok(());
    }
    Err(Failure::mismatch(
        format!("{unit} is {enabled} and {active}; see `journalctl -u {unit}` (journal.log in the artifacts)"),
        "enabled, active",
        format!("{enabled}, {active}"),
    ))
}

/// The main PID of `unit` (0 when it has none).
fn main_pid(attempt: &mut Attempt, g: &mut Guest<'_>, unit: &str) -> Result<u32, Failure> {
    let o = attempt.exec(
        g.ssh,
        &format!("systemctl show -p MainPID --value {}", shell_quote(unit)),
    )?;
    o.stdout
        .trim()
        .parse()
        .map_err(|_| Failure::new(format!("{unit}: MainPID unreadable: {:?}", o.stdout.trim())))
}

/// The Node's Lease `spec.renewTime` (kube-node-lease), the kubelet's heartbeat.
fn lease_renewed(env: &CheckEnv<'_>, attempt: &mut Attempt) -> Result<String, Failure> {
    let m = env.member()?;
    let name = m.node.name();
    attempt.note(format!("kubectl -n kube-node-lease get lease {name}"));
    let lease = m
        .kubectl
        .get("lease", Some("kube-node-lease"), name)
        .map_err(|e| Failure::new(format!("kubectl: {e}")))?
        .ok_or_else(|| {
            Failure::new(format!(
                "no Lease kube-node-lease/{name}: the kubelet's heartbeats cannot be observed"
            ))
        })?;
    lease["spec"]["renewTime"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Failure::new(format!("Lease kube-node-lease/{name} has no renewTime")))
}

/// `service-recovers`: after SIGKILL of its main process, the unit is active again with a
/// new PID within the check's timeout. With `evidence = "node-lease"` (the kubelet) the
/// restarted process must also serve the API server again: the Node's Lease is renewed
/// after the new PID runs (a Ready condition alone would not flip within the
/// node-monitor grace period), and the Node is Ready.
pub fn service_recovers(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let unit = b.param("unit").to_string();
    let lease = match b.param("evidence") {
        "" => false,
        "node-lease" => true,
        other => return Err(Failure::new(format!("unknown evidence `{other}`"))),
    };
    let g = env.guest()?;
    let before = main_pid(attempt, g, &unit)?;
    if before == 0 {
        return Err(Failure::new(format!("{unit} has no main process to kill")));
    }
    let o = attempt.exec_root(g.ssh, &format!("kill -KILL {before}"))?;
    if !o.success() {
        return Err(Failure::new(format!(
            "kill -KILL {before} ended with {}: {}",
            o.describe_end(),
            o.stderr.trim()
        )));
    }
    let killed = Instant::now();
    let after = loop {
        let pid = main_pid(attempt, g, &unit)?;
        let active = attempt.exec(
            g.ssh,
            &format!("systemctl is-active {}", shell_quote(&unit)),
        )?;
        if pid != 0 && pid != before && active.stdout.trim() == "active" {
            break pid;
        }
        if attempt.remaining() < Duration::from_secs(2) {
            return Err(Failure::mismatch(
                format!("{unit} did not come back after SIGKILL of PID {before}"),
                "active with a new main PID",
                format!("MainPID {pid}, {}", active.stdout.trim()),
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    attempt.note(format!(
        "{unit}: PID {before} killed, PID {after} active after {:.1}s",
        killed.elapsed().as_secs_f64()
    ));
    if !lease {
        return Ok(());
    }
    // Read once the new PID runs: any later renewal is the new process's.
    let seen = lease_renewed(env, attempt)?;
    loop {
        let now = lease_renewed(env, attempt)?;
        if now != seen {
            attempt.note(format!(
                "Lease renewed at {now} (was {seen}), {:.1}s after the kill",
                killed.elapsed().as_secs_f64()
            ));
            break;
        }
        if attempt.remaining() < Duration::from_secs(3) {
            return Err(Failure::mismatch(
                format!("{unit} (PID {after}) runs but does not serve the API server: the Node's Lease was not renewed after the restart"),
                "a Lease renewal after the restart",
                format!("renewTime still {seen}"),
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    cluster_checks::wait_node_ready(env, attempt)?;
    attempt.note(format!(
        "node Ready {:.1}s after the kill",
        killed.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `guest-boots`: the image booted to a running system: no console trouble (panic,
/// emergency shell, Oops, BUG, OOM kill, ordering cycle), SSH with the seeded key,
/// systemd settled. Boot faults found while booting fail this check with the console
/// line (the runner sees to that); this reports the times and the rest.
pub fn boots(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let g = env.guest()?;
    let t = g.vm.timings;
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()));
    attempt.note(format!(
        "console {}, ssh {}, systemd settled {} after QEMU started ({}, {} boot); system {}",
        secs(t.console),
        secs(t.ssh),
        secs(t.ready),
        g.vm.accel.accel.as_str(),
        g.vm.config.boot.kind(),
        g.vm.health.state
    ));
    match g.vm.health.findings.as_slice() {
        [] => Ok(()),
        found => Err(Failure::mismatch(
            format!(
                "the console shows {}; see console.log in the artifacts",
                found
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            "a console free of kernel and systemd trouble",
            found[0].line.clone(),
        )),
    }
}

/// `failed-units`: systemd lists no failed unit; otherwise the check names each with the
/// last lines of its journal.
pub fn failed_units(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let g = env.guest()?;
    let o = attempt.exec(g.ssh, "systemctl --failed --plain --no-legend --no-pager")?;
    if !o.success() {
        return Err(Failure::new(format!(
            "cannot list failed units ({}): {}",
            o.describe_end(),
            o.stderr.trim()
        )));
    }
    let units: Vec<String> = o
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if units.is_empty() {
        return Ok(());
    }
    let mut excerpts = Vec::new();
    for u in units.iter().take(5) {
        let j = attempt.exec_root(
            g.ssh,
            &format!("journalctl -b --no-pager -o cat -n 6 -u {}", shell_quote(u)),
        )?;
        let last: Vec<&str> = j.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        let text: String = last.join(" | ").chars().take(500).collect();
        excerpts.push(format!("{u}: {text:?}"));
    }
    Err(Failure::mismatch(
        format!(
            "{} failed unit(s) on {}: {}; see journal.log in the artifacts",
            units.len(),
            g.name,
            excerpts.join("; ")
        ),
        "no failed units",
        units.join(", "),
    ))
}

/// `guest-files`: every file the manifest lists has its sha256 in the guest.
pub fn guest_files(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let files = env
        .verification
        .manifest()
        .map(|m| m.files.clone())
        .unwrap_or_default();
    if files.is_empty() {
        return Err(Failure::new("the manifest lists no guest files to check"));
    }
    let g = env.guest()?;
    let args: Vec<String> = files.iter().map(|f| shell_quote(&f.path)).collect();
    let o = attempt.exec_root(g.ssh, &format!("sha256sum {} 2>&1", args.join(" ")))?;
    let mut bad = Vec::new();
    for f in &files {
        let found = o
            .stdout
            .lines()
            .find_map(|l| {
                let (sum, path) = l.split_once("  ")?;
                (path == f.path).then(|| sum.to_string())
            })
            .unwrap_or_else(|| "missing".into());
        if found != f.sha256 {
            bad.push((f, found));
        }
    }
    match bad.as_slice() {
        [] => Ok(()),
        [(f, found), ..] => Err(Failure::mismatch(
            format!(
                "{} of {} manifest files differ in the guest, first {}",
                bad.len(),
                files.len(),
                f.path
            ),
            f.sha256.clone(),
            found.clone(),
        )),
    }
}

/// `process-exe`: the unit's running executable is `path`, with the manifest's digest.
pub fn process_exe(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let (unit, path) = (b.param("unit"), b.param("path"));
    let expected_sum = env
        .verification
        .manifest()
        .and_then(|m| m.files.iter().find(|f| f.path == path))
        .map(|f| f.sha256.clone());
    let g = env.guest()?;
    let pid = main_pid(attempt, g, unit)?;
    if pid == 0 {
        return Err(Failure::new(format!("{unit} is not running")));
    }
    let o = attempt.exec_root(
        g.ssh,
        &format!("readlink /proc/{pid}/exe; sha256sum /proc/{pid}/exe"),
    )?;
    let mut lines = o.stdout.lines();
    let exe = lines.next().unwrap_or("").trim().to_string();
    let sum = lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    if exe != path {
        return Err(Failure::mismatch(
            format!("{unit} (PID {pid}) runs another executable than the listed one"),
            path,
            exe,
        ));
    }
    match expected_sum {
        Some(want) if want != sum => Err(Failure::mismatch(
            format!("{unit} (PID {pid}) runs {path} with a digest other than the manifest's"),
            want,
            sum,
        )),
        Some(_) => Ok(()),
        None => Err(Failure::new(format!(
            "the manifest lists no digest for {path}"
        ))),
    }
}
