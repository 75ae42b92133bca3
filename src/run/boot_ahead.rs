//! Booting ahead: the next destructive check's VM boots while the checks before it run,
//! so its boot leaves the run's critical path.
//!
//! QEMU starts on the main thread (its parent-death signal is tied to the thread that
//! forked it); a thread of its own waits for SSH and systemd; the destructive check's
//! prepare takes the machine and joins it then. At most one VM boots ahead, and only
//! while no other boot runs, so `--jobs` still caps the boots at once; one that no check
//! takes is killed at teardown.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::runner::{Event, Phase, Stop, StopKind};
use crate::vm;

use super::environment::{node_fact, stop, NodeEnvironment};
use super::machines::{Machine, Waited};

/// Whether destructive checks' VMs boot ahead (`nodegate run --boot-ahead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootAheadChoice {
    /// When the host's cores hold every VM that would then run at once.
    #[default]
    Auto,
    /// Whenever the host's memory holds one more VM.
    On,
    /// Each destructive check boots its VM when it starts.
    Off,
}

impl std::str::FromStr for BootAheadChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BootAheadChoice::Auto),
            "on" => Ok(BootAheadChoice::On),
            "off" => Ok(BootAheadChoice::Off),
            _ => Err(format!("unknown boot-ahead {s:?} (auto, on, off)")),
        }
    }
}

/// A VM booting for a destructive check still to come.
pub(super) struct BootAhead {
    pid: u32,
    name: String,
    started: Instant,
    wait: JoinHandle<Waited>,
}

impl NodeEnvironment<'_> {
    /// Starts the next destructive check's VM in the background when one is still to
    /// come, none boots ahead yet, `--boot-ahead` allows it (auto: the host's cores hold
    /// every VM that would then run, at the profile's vCPUs each) and the host has the
    /// memory for one more VM; else the check boots its VM when it starts and the report
    /// says why under `boot_ahead`.
    pub(super) fn boot_ahead(&mut self, emit: &mut dyn FnMut(Event)) {
        // The run's own nodes serve the first destructive checks: none boots for them.
        if self.ahead.is_some() || self.fresh_planned <= self.spares() {
            return;
        }
        let vcpus = self.config.profile.vm.vcpus.max(1) as usize;
        let at_once = self.peers.len()
            + usize::from(self.shared.is_some())
            + usize::from(self.fresh.is_some())
            + 1;
        let off = refusal(
            self.config.boot_ahead,
            super::machines::host_cores(),
            at_once,
            vcpus,
        );
        if let Some(why) = off {
            emit(Event::Property {
                name: "boot_ahead".into(),
                value: why,
            });
            return;
        }
        let Ok(image) = self.image() else {
            return;
        };
        let per_vm = vm::footprint_mib(self.config.profile.vm.memory_mib);
        if let Some(available) = vm::mem_available_mib().filter(|a| *a < per_vm) {
            emit(Event::Property {
                name: "boot_ahead".into(),
                value: format!(
                    "off: {available} MiB available, a VM needs {per_vm} MiB; each \
                     destructive check boots its VM when it starts"
                ),
            });
            return;
        }
        // A VM that cannot start now is started again, and its error said, by the check.
        let Ok(b) = self.start_vm(&image, None, emit) else {
            return;
        };
        node_fact(emit, &b.name, "boot.ahead", "true".into());
        let (pid, name, started) = (b.vm.qemu_pid(), b.name.clone(), b.started);
        let wait = std::thread::spawn(move || b.wait());
        self.ahead = Some(BootAhead {
            pid,
            name,
            started,
            wait,
        });
    }

    /// The machine booted ahead, once its boot has finished; `None` when none was.
    pub(super) fn take_ahead(
        &mut self,
        emit: &mut dyn FnMut(Event),
    ) -> Option<Result<Machine, Stop>> {
        let a = self.ahead.take()?;
        Some(match a.wait.join() {
            Ok(w) => self.booted(w, emit),
            Err(_) => Err(stop(
                StopKind::Infrastructure,
                Phase::Boot,
                "the thread waiting for a VM booting ahead panicked".into(),
            )),
        })
    }

    /// Kills a VM booting ahead that no check will take (the run stopped, or its checks
    /// were not run) and ends its boot phase saying so. The waiting thread sees QEMU gone
    /// at its next probe; one caught in an SSH connect is left to finish it (it holds only
    /// the dead VM's guard) rather than holding up the teardown.
    pub(super) fn cancel_ahead(&mut self, emit: &mut dyn FnMut(Event)) {
        let Some(a) = self.ahead.take() else {
            return;
        };
        // The Vm holds QEMU's child unreaped until it drops: the pid is still QEMU's.
        unsafe { libc::kill(a.pid as i32, libc::SIGKILL) };
        let t = Instant::now();
        while !a.wait.is_finished() && t.elapsed() < CANCEL_WAIT {
            std::thread::sleep(Duration::from_millis(50));
        }
        if a.wait.is_finished() {
            // Its guard drops here: QEMU reaped, the tap and agent endpoint gone.
            drop(a.wait.join());
        }
        emit(Event::PhaseFinished {
            phase: Phase::Boot,
            duration: a.started.elapsed(),
            error: Some("stopped: no check took this VM booted ahead".into()),
            node: Some(a.name),
        });
    }
}

/// Why `choice` does not boot a VM ahead on `cores` with `at_once` VMs (this one
/// included) of `vcpus` each then running; `None`: it does.
fn refusal(choice: BootAheadChoice, cores: usize, at_once: usize, vcpus: usize) -> Option<String> {
    match choice {
        BootAheadChoice::Off => Some("off: asked for (--boot-ahead off)".into()),
        BootAheadChoice::Auto if cores < at_once * vcpus => Some(format!(
            "off: {cores} cores hold fewer than the {at_once} VMs of {vcpus} vCPUs that would \
             run at once (--boot-ahead on boots ahead anyway)"
        )),
        _ => None,
    }
}

/// How long teardown waits for the thread of a killed VM booting ahead.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::{refusal, BootAheadChoice::*};

    #[test]
    fn auto_boots_ahead_only_where_the_cores_hold_every_vm_then_running() {
        // Two cores, two nodes of 2 vCPUs and one more: measured slower (docs/decisions.md).
        let why = refusal(Auto, 2, 3, 2).expect("off on two cores");
        assert!(
            why.contains("2 cores hold fewer than the 3 VMs of 2 vCPUs"),
            "{why}"
        );
        assert_eq!(refusal(Auto, 6, 3, 2), None);
        assert_eq!(refusal(On, 2, 3, 2), None);
        assert!(refusal(Off, 64, 2, 1).unwrap().contains("--boot-ahead off"));
        assert_eq!(
            "sometimes".parse::<super::BootAheadChoice>().unwrap_err(),
            "unknown boot-ahead \"sometimes\" (auto, on, off)"
        );
    }
}
