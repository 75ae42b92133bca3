//! Files kept for whoever looks into a run: each VM's serial console and QEMU log, and the
//! guest's journal and component logs after a failure.

use std::path::Path;
use std::time::Duration;

use super::machines::{machine_dir, Machine};
use crate::profile::Profile;
use crate::runner::Event;
use crate::vm::Vm;

fn keep(dir: &Path, file: &str, bytes: &[u8], name: String, emit: &mut dyn FnMut(Event)) {
    let path = dir.join(file);
    if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&path, bytes).is_ok() {
        emit(Event::Artifact { name, path });
    }
}

/// Copies the VM's console log and QEMU's stderr into `artifacts/NAME/`.
pub fn keep_console(vm: &Vm, artifacts: &Path, name: &str, emit: &mut dyn FnMut(Event)) {
    let dir = machine_dir(artifacts, name);
    for (src, file, what) in [
        (&vm.files.console, "console.log", "console"),
        (&vm.files.qemu_log, "qemu.log", "qemu"),
    ] {
        if let Ok(bytes) = std::fs::read(src) {
            keep(&dir, file, &bytes, format!("{name}/{what}"), emit);
        }
    }
}

/// How long collecting a guest's logs may take in all, after a failure.
pub const LOG_BUDGET: std::time::Duration = std::time::Duration::from_secs(40);

/// Saves the journal and the kubelet, containerd and agent logs of the guest into
/// `artifacts/NAME/` (best effort, within [`LOG_BUDGET`]: a dead guest yields what it
/// can; after Ctrl-C nothing is collected).
pub fn collect_logs(
    m: &mut Machine,
    artifacts: &Path,
    profile: &Profile,
    emit: &mut dyn FnMut(Event),
) {
    let dir = machine_dir(artifacts, &m.name);
    let s = &profile.services;
    let mut jobs = vec![
        (
            "journal",
            "journal.log",
            "sudo journalctl -b --no-pager -o short-precise".to_string(),
        ),
        (
            "kubelet",
            "kubelet.log",
            format!("sudo journalctl -b --no-pager -u {}", s.kubelet),
        ),
        (
            "containerd",
            "containerd.log",
            format!("sudo journalctl -b --no-pager -u {}", s.containerd),
        ),
        (
            "units",
            "failed-units.txt",
            "systemctl --failed --no-pager".to_string(),
        ),
    ];
    if let Some(agent) = &s.agent {
        jobs.push((
            "agent",
            "agent.log",
            format!("sudo journalctl -b --no-pager -u {agent}"),
        ));
    }
    let name = m.name.clone();
    let deadline = std::time::Instant::now() + LOG_BUDGET;
    for (what, file, cmd) in jobs {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if crate::interrupt::interrupted() || left < Duration::from_secs(1) {
            break;
        }
        if let Ok(o) = m.ssh().exec(&cmd, left) {
            keep(
                &dir,
                file,
                o.stdout.as_bytes(),
                format!("{name}/{what}"),
                emit,
            );
        }
    }
}

/// One line on `unit` in the guest: its state, restart count and last error line, e.g.
/// `kubelet.service activating/auto-restart, restarted 7 times, last error: "..."`. An
/// error means the guest no longer answers over SSH.
pub fn unit_diagnosis(m: &mut Machine, unit: &str) -> Result<String, crate::ssh::SshError> {
    let q = crate::suite::context::shell_quote(unit);
    let cmd = format!(
        "systemctl show -p ActiveState,SubState,NRestarts {q} | paste -sd' '; \
         sudo journalctl -b -o cat --no-pager -u {q} | grep -E '^(Error|error)[: ]|^[EF][0-9]{{4}} |unknown flag' | tail -n 1"
    );
    let o = m.ssh().exec(&cmd, Duration::from_secs(10))?;
    let mut lines = o.stdout.lines();
    // `KEY=VALUE` pairs, in systemd's order rather than ours.
    let state: std::collections::BTreeMap<&str, &str> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let last = lines.next().unwrap_or("").trim();
    let get = |k: &str| state.get(k).copied().unwrap_or("?");
    let mut d = format!(
        "{unit} {}/{}, restarted {} times",
        get("ActiveState"),
        get("SubState"),
        get("NRestarts")
    );
    if !last.is_empty() {
        let short: String = last.chars().take(200).collect();
        d.push_str(&format!(", last error: {short:?}"));
    }
    Ok(d)
}
