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

/// `service-recovers`: after SIGKILL of its main process, the unit is active again with a
/// new PID, and the Node is Ready again, within the check's timeout.
pub fn service_recovers(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let unit = b.param("unit").to_string();
    let g = env.guest()?;
    let before = main_pid(attempt, g, &unit)?;
    if before == 0 {
        return Err(Failure::new(format!("{unit} has no main process to kill")));
    }
    attempt.exec_root(g.ssh, &format!("kill -KILL {before}"))?;
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
    if env.member.is_some() {
        cluster_checks::wait_node_ready(env, attempt)?;
        attempt.note(format!(
            "node Ready {:.1}s after the kill",
            killed.elapsed().as_secs_f64()
        ));
    }
    Ok(())
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
