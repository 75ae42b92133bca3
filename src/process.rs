//! Child processes owned by a guard: each lives in its own process group, and dropping
//! the guard terminates the whole group (SIGTERM, a grace period, SIGKILL) and reaps it.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

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

    /// Terminates the group: SIGTERM, up to the grace period, then SIGKILL; reaps the
    /// leader. Returns true if SIGKILL was needed.
    pub fn terminate(&mut self) -> bool {
        let pgid = self.child.id() as libc::pid_t;
        let leader_alive = matches!(self.try_status(), Ok(None));
        // SAFETY: killpg only sends a signal to the group we created.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        let exited = leader_alive && matches!(self.wait_timeout(self.grace), Ok(Some(_)));
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
