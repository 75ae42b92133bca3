//! A network namespace of nodegate's own, held by a file descriptor.
//!
//! The namespace is anonymous: it is made by `unshare(CLONE_NEWNET)` on a short-lived
//! thread and kept alive only by the descriptor this guard holds (and by processes
//! started inside it), never by a name under `/run/netns`. When nodegate exits, however
//! it exits (SIGKILL included), the descriptor closes; the processes inside die with it
//! (each is a [`crate::process::ProcessGroup`], which carries `PR_SET_PDEATHSIG`), and the
//! kernel then destroys the namespace with every bridge, tap and address in it. Nothing
//! is ever added to the host's own namespace.
//!
//! nodegate reaches into the namespace two ways: children start inside it
//! ([`Namespace::enter`] calls `setns` between fork and exec), and sockets are opened on
//! a scoped thread that has entered it ([`Namespace::within`]); a socket stays in the
//! namespace it was made in, so any thread can use it afterwards.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::run_bounded;

/// How long one `ip` or `tc` command may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a namespace could not be made or set up.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// `unshare(CLONE_NEWNET)` was refused (no root, no CAP_NET_ADMIN, a seccomp filter).
    #[error("cannot make a network namespace: {0}")]
    Unshare(io::Error),
    /// Entering the namespace from a thread failed.
    #[error("cannot enter the run's network namespace: {0}")]
    Enter(io::Error),
    /// A tool (`ip`, `tc`) run inside the namespace failed.
    #[error("{tool} {args} (in the run's namespace): {detail}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// The arguments, joined by spaces.
        args: String,
        /// What went wrong.
        detail: String,
    },
}

/// A network namespace torn down when the last holder goes: this guard's descriptor, then
/// the processes started inside it.
#[derive(Debug)]
pub struct Namespace {
    fd: File,
    inode: u64,
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread.
fn set_ns(fd: i32) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag; it changes only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

impl Namespace {
    /// Makes a namespace with its loopback up.
    pub fn create() -> Result<Namespace, NamespaceError> {
        let fd = std::thread::spawn(|| -> io::Result<File> {
            // SAFETY: unshare changes only this thread's namespaces; the thread ends next.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(last_error());
            }
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .map_err(|_| NamespaceError::Unshare(io::Error::other("the thread panicked")))?
        .map_err(NamespaceError::Unshare)?;
        let inode = fd.metadata().map_err(NamespaceError::Unshare)?.ino();
        let ns = Namespace { fd, inode };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Holds the namespace of process `pid` (a container's, say): it lives on at least
    /// as long as this guard, and is not destroyed by it.
    pub fn of_process(pid: u32) -> Result<Namespace, NamespaceError> {
        let fd = File::open(format!("/proc/{pid}/ns/net")).map_err(NamespaceError::Enter)?;
        let inode = fd.metadata().map_err(NamespaceError::Enter)?.ino();
        Ok(Namespace { fd, inode })
    }

    /// The namespace's inode: what `/proc/PID/ns/net` of a process inside links to
    /// (`net:[INODE]`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Makes `cmd` start inside the namespace.
    pub fn enter<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        let fd = self.fd.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the descriptor is open in the forked child
        // (it closes on exec, after this runs).
        unsafe { cmd.pre_exec(move || set_ns(fd)) }
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns. Sockets
    /// made by `f` belong to the namespace.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NamespaceError> {
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                set_ns(fd)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread panicked")))
        })
        .map_err(NamespaceError::Enter)
    }

    /// Starts a thread that lives inside the namespace for all its life (a client that
    /// opens many sockets there); it holds the namespace until it ends.
    pub fn spawn<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<io::Result<T>>> {
        let ns = self.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                set_ns(ns.fd.as_raw_fd())?;
                Ok(f())
            })
    }

    /// A TCP connection to `addr` inside the namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.within(|| TcpStream::connect_timeout(&addr, timeout))
            .map_err(io::Error::other)?
    }

    /// Runs `ip ARGS` inside the namespace (the arguments are nodegate's own, never an
    /// input's) and returns its output.
    pub fn ip(&self, args: &[&str]) -> Result<String, NamespaceError> {
        self.tool("ip", args)
    }

    /// Runs `tool ARGS` (a tool from iproute2: `ip`, `tc`) inside the namespace.
    pub fn tool(&self, tool: &'static str, args: &[&str]) -> Result<String, NamespaceError> {
        let fail = |detail: String| NamespaceError::Tool {
            tool,
            args: args.join(" "),
            detail,
        };
        // Root's PATH has /usr/sbin; a user's may not.
        let bin = crate::cluster::find_on_path(tool, &crate::cluster::provider::env_path())
            .unwrap_or_else(|| Path::new("/usr/sbin").join(tool));
        let mut cmd = Command::new(bin);
        cmd.args(args);
        self.enter(&mut cmd);
        let out = run_bounded(&mut cmd, None, TOOL_TIMEOUT).map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(crate::message::one_line(out.stderr_text().trim())));
        }
        Ok(out.stdout_text())
    }
}

#[cfg(test)]
mod tests {
    use super::Namespace;

    #[test]
    fn a_namespace_is_not_the_callers() {
        // The tests run as root (CI does): without the privilege this fails, never skips.
        let ns = Namespace::create().unwrap();
        let own = std::fs::metadata("/proc/self/ns/net").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        assert_ne!(own.unwrap(), ns.inode());
        let inside = ns
            .within(|| {
                std::fs::read_link("/proc/thread-self/ns/net")
                    .unwrap()
                    .display()
                    .to_string()
            })
            .unwrap();
        assert_eq!(inside, format!("net:[{}]", ns.inode()));
    }
}
