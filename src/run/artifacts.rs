//! Files kept for whoever looks into a run: each VM's serial console and QEMU log, and the
//! guest's journal and component logs after a failure.

use std::path::Path;
use std::time::Duration;

use super::environment::{machine_dir, Machine};
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

/// Saves the journal and the kubelet, containerd and agent logs of the guest into
/// `artifacts/NAME/` (best effort: a dead guest yields what it can).
pub fn collect_logs(
    m: &mut Machine,
    artifacts: &Path,
    profile: &Profile,
    emit: &mut dyn FnMut(Event),
) {
    let dir = machine_dir(artifacts, &m.name);
    let s = &profile.services;
    let jobs = [
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
            "agent",
            "agent.log",
            format!("sudo journalctl -b --no-pager -u {}", s.agent),
        ),
        (
            "units",
            "failed-units.txt",
            "systemctl --failed --no-pager".to_string(),
        ),
    ];
    let name = m.name.clone();
    for (what, file, cmd) in jobs {
        if let Ok(o) = m.ssh().exec(&cmd, Duration::from_secs(60)) {
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
