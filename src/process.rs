//! Child processes owned by a guard: each lives in its own process group, and dropping
//! the guard terminates the whole group (SIGTERM, a grace period, SIGKILL) and reaps it.
//! [`run_bounded`] runs a one-shot command the same way, with a deadline, the interrupt
//! flag honoured and its output capped: no child of nodegate runs without a timeout.

use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use crate::interrupt;

/// Time between SIGTERM and SIGKILL when a guard is dropped.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A child process and its process group, torn down on drop.
#[derive(Debug)]
pub struct ProcessGroup {
    name: String,
    child: Child,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl ProcessGroup {
    /// Spawns `cmd` as the leader of a new process group. The leader also gets SIGKILL
    /// if nodegate dies without running its teardown (killed with SIGKILL itself), so a
    /// QEMU never outlives the harness; spawn from a thread that lives as long as the
    /// guard (the main thread), since the kernel ties this to the spawning thread.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> io::Result<ProcessGroup> {
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(ProcessGroup {
            name: name.into(),
            child,
            grace: DEFAULT_GRACE,
            status: None,
        })
    }

    /// Sets the grace period between SIGTERM and SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The leader's pid, which is also the process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A name for messages (`qemu`, `etcd`...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leader's exit status if it has exited; never blocks.
    pub fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the leader to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Terminates the group: SIGTERM, up to the grace period (shortened after Ctrl-C,
    /// none after a second one), then SIGKILL; reaps the leader. Returns true if SIGKILL
    /// was needed.
    pub fn terminate(&mut self) -> bool {
        let pgid = self.child.id() as libc::pid_t;
        let leader_alive = matches!(self.try_status(), Ok(None));
        // SAFETY: killpg only sends a signal to the group we created.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        let grace = interrupt::grace(self.grace);
        let exited = leader_alive && matches!(self.wait_timeout(grace), Ok(Some(_)));
        let group_alive = unsafe { libc::killpg(pgid, 0) } == 0;
        let mut killed = false;
        if group_alive || (leader_alive && !exited) {
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            killed = true;
        }
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        killed
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// How much of each output stream [`run_bounded`] keeps; the rest is read and dropped
/// (and counted), so a chatty child can neither block nor exhaust memory.
pub const OUTPUT_CAP: usize = 16 << 20;

/// Grace between SIGTERM and SIGKILL for a bounded command that ran out of time.
const BOUNDED_GRACE: Duration = Duration::from_secs(2);

/// Why a bounded command gave no result.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (missing, not executable).
    #[error("{program}: cannot start: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// What the OS said.
        source: io::Error,
    },
    /// It ran past its deadline and was stopped.
    #[error("{program}: still running after {}; stopped", crate::message::duration(*timeout))]
    TimedOut {
        /// The program.
        program: String,
        /// The deadline.
        timeout: Duration,
    },
    /// SIGINT or SIGTERM arrived; it was stopped.
    #[error("{program}: interrupted by a signal; stopped")]
    Interrupted {
        /// The program.
        program: String,
    },
}

/// What a bounded command did.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output, at most [`OUTPUT_CAP`] bytes.
    pub stdout: Vec<u8>,
    /// Standard error, at most [`OUTPUT_CAP`] bytes.
    pub stderr: Vec<u8>,
    /// Bytes dropped beyond the cap (stdout + stderr).
    pub dropped: u64,
}

impl CommandOutput {
    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Reads `r` to its end, keeping the first `cap` bytes; returns them and the count dropped.
fn capped<R: Read>(mut r: R, cap: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                dropped += (n - room) as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, dropped)
}

/// Runs `cmd` in a process group of its own, feeding it `stdin`, and returns its output
/// once it exits; stops it (SIGTERM, then SIGKILL) when `timeout` passes or a signal
/// arrives. Output beyond [`OUTPUT_CAP`] per stream is dropped and counted.
pub fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<CommandOutput, CommandError> {
    run_until(cmd, stdin, timeout, interrupt::interrupted)
}

/// [`run_bounded`] for teardown (deleting what a run made): a first signal does not stop
/// it, a second one does ([`interrupt::hurry`]).
pub fn run_teardown(cmd: &mut Command, timeout: Duration) -> Result<CommandOutput, CommandError> {
    run_until(cmd, None, timeout, interrupt::hurry)
}

fn run_until(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    stop: fn() -> bool,
) -> Result<CommandOutput, CommandError> {
    let program = std::path::Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut group =
        ProcessGroup::spawn(program.clone(), cmd).map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
    group.grace = BOUNDED_GRACE;
    let (tx, rx) = mpsc::channel();
    for (i, stream) in [
        group
            .child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        group
            .child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        let stream = stream.expect("piped");
        thread::spawn(move || {
            let _ = tx.send((i, capped(stream, OUTPUT_CAP)));
        });
    }
    if let (Some(bytes), Some(mut pipe)) = (stdin, group.child.stdin.take()) {
        let bytes = bytes.to_vec();
        // A child that does not read its input must not block us: write on a thread.
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match group.try_status() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(source) => {
                return Err(CommandError::Spawn { program, source });
            }
        }
        if stop() {
            group.terminate();
            return Err(CommandError::Interrupted { program });
        }
        if Instant::now() >= deadline {
            group.terminate();
            return Err(CommandError::TimedOut { program, timeout });
        }
        thread::sleep(Duration::from_millis(10));
    };
    // The leader exited; reap the rest of its group, then collect what the readers
    // kept. A descendant that left the group may hold a pipe open: wait a moment only.
    group.terminate();
    let mut out = CommandOutput {
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
        dropped: 0,
    };
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok((0, (bytes, dropped))) => {
                out.stdout = bytes;
                out.dropped += dropped;
            }
            Ok((_, (bytes, dropped))) => {
                out.stderr = bytes;
                out.dropped += dropped;
            }
            Err(_) => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A reaped or never-existing pid: kill(pid, 0) fails with ESRCH.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[test]
    fn drop_terminates_the_leader_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 300 & echo $! > {}; wait", pidfile.display()));
        let group = ProcessGroup::spawn("sh", &mut cmd).unwrap();
        let leader = group.pid();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
            assert!(Instant::now() < deadline, "child never started");
            thread::sleep(Duration::from_millis(20));
        }
        let child: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(child));
        drop(group);
        assert!(!alive(leader), "leader survived");
        // The grandchild was in the group: SIGTERM reached it too; give init a moment to reap.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(child) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(child), "child of the group survived");
    }

    #[test]
    fn bounded_commands_give_output_stop_at_their_deadline_and_cap_output() {
        let mut c = Command::new("sh");
        c.arg("-c").arg("cat; echo err >&2; exit 3");
        let o = run_bounded(&mut c, Some(b"input"), Duration::from_secs(10)).unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(o.stdout, b"input");
        assert_eq!(o.stderr, b"err\n");

        let mut c = Command::new("sh");
        c.arg("-c").arg("trap '' TERM; sleep 300");
        let t = Instant::now();
        let e = run_bounded(&mut c, None, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, CommandError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("still running after 300ms"), "{e}");
        // The deadline, plus the SIGTERM grace: never the child's own 300 s.
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("head -c {} /dev/zero", OUTPUT_CAP + 1000));
        let o = run_bounded(&mut c, None, Duration::from_secs(30)).unwrap();
        assert_eq!(o.stdout.len(), OUTPUT_CAP);
        assert_eq!(o.dropped, 1000);

        let e = run_bounded(
            &mut Command::new("/nonexistent/tool"),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("tool: cannot start"), "{e}");
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("trap '' TERM; sleep 300");
        let mut group = ProcessGroup::spawn("stubborn", &mut cmd)
            .unwrap()
            .with_grace(Duration::from_millis(300));
        thread::sleep(Duration::from_millis(200));
        assert!(group.terminate(), "SIGKILL should have been needed");
        assert!(group.try_status().unwrap().is_some());
    }
}
