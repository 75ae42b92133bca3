//! SSH to guests with ssh2 (libssh2): one persistent session per VM, the guest's host
//! key pinned (never "accept any"), `exec` with exit status, stdout, stderr and a
//! deadline, file upload, and reconnection when the guest restarts sshd.

mod keys;

pub use keys::{generate_keypair, SshKeyPair};

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors talking SSH; each names the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// TCP connection failed.
    #[error("ssh {addr}: connect: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The SSH protocol failed (handshake, channel, transfer).
    #[error("ssh {addr}: {what}: {message}")]
    Protocol {
        /// The endpoint.
        addr: SocketAddr,
        /// The step.
        what: &'static str,
        /// libssh2's message.
        message: String,
    },
    /// The server presented another host key than the pinned one.
    #[error("ssh {addr}: host key mismatch: expected {expected}, server presented {actual}")]
    HostKeyMismatch {
        /// The endpoint.
        addr: SocketAddr,
        /// Pinned key (OpenSSH one-line form).
        expected: String,
        /// What the server sent (base64 blob).
        actual: String,
    },
    /// The server refused the key.
    #[error("ssh {addr}: user {user} not accepted with key {key}: {message}")]
    Auth {
        /// The endpoint.
        addr: SocketAddr,
        /// The user.
        user: String,
        /// The private key file.
        key: PathBuf,
        /// libssh2's message.
        message: String,
    },
    /// A command ran past its deadline (it was abandoned; the session reconnects).
    #[error("ssh {addr}: command {command:?} still running after {}; output so far: {partial:?}", crate::message::duration(*timeout))]
    Timeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The command.
        command: String,
        /// The deadline.
        timeout: Duration,
        /// The last output seen.
        partial: String,
    },
    /// SIGINT or SIGTERM arrived while a command ran (it was abandoned).
    #[error("ssh {addr}: interrupted while {command:?} ran")]
    Interrupted {
        /// The endpoint.
        addr: SocketAddr,
        /// The command.
        command: String,
    },
    /// The caller's watch said waiting is pointless (the console shows a fatal state).
    #[error("ssh {addr}: stopped waiting for {command:?}: {reason}")]
    Stopped {
        /// The endpoint.
        addr: SocketAddr,
        /// The command.
        command: String,
        /// What the watch saw.
        reason: String,
    },
}

/// How much of each output stream of a guest command is kept; the rest is read and
/// dropped, and the count reported ([`ExecOutput::dropped`]).
pub const EXEC_OUTPUT_CAP: usize = 8 << 20;
/// How long closing an abandoned channel may take (after a timeout or an interrupt).
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long any single blocking SSH step (open a channel, start a command) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Host address (127.0.0.1 and the forwarded port, for VMs in user mode; the node's
    /// address on the run's bridge otherwise).
    pub addr: SocketAddr,
    /// Where the TCP connection is opened from (the run's namespace, for a bridge).
    pub dialer: crate::network::Dialer,
    /// Login user.
    pub user: String,
    /// Client key pair.
    pub key: SshKeyPair,
    /// The guest's host public key, OpenSSH one-line form (`ssh-ed25519 AAAA... comment`).
    pub host_key: String,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; 128 + the signal's number when a signal killed it.
    pub status: i32,
    /// The signal that killed the command (`KILL`, `TERM`...), as the server reported
    /// it (SSH `exit-signal`): such a command has no exit status of its own.
    pub signal: Option<String>,
    /// Standard output (at most [`EXEC_OUTPUT_CAP`] bytes).
    pub stdout: String,
    /// Standard error (at most [`EXEC_OUTPUT_CAP`] bytes).
    pub stderr: String,
    /// Bytes of output dropped beyond the cap.
    pub dropped: u64,
}

impl ExecOutput {
    /// Whether the command exited 0 (and was not killed by a signal).
    pub fn success(&self) -> bool {
        self.status == 0 && self.signal.is_none()
    }

    /// `exit 3` or `killed by signal KILL`, for messages.
    pub fn describe_end(&self) -> String {
        match &self.signal {
            Some(sig) => format!("killed by signal SIG{sig}"),
            None => format!("exit {}", self.status),
        }
    }
}

/// The number of a signal named without its SIG prefix (Linux x86 numbering).
fn signal_number(name: &str) -> i32 {
    const NAMES: [&str; 15] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM",
    ];
    NAMES
        .iter()
        .position(|n| *n == name)
        .map_or(0, |i| i as i32 + 1)
}

/// A connected, authenticated session.
pub struct SshSession {
    target: SshTarget,
    session: ssh2::Session,
    /// A command was abandoned on this session: reconnect before the next one.
    broken: bool,
}

fn host_key_blob(line: &str) -> Option<Vec<u8>> {
    use base64ct::{Base64, Encoding};
    line.split_whitespace()
        .nth(1)
        .and_then(|b| Base64::decode_vec(b).ok())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64ct::{Base64, Encoding};
    Base64::encode_string(bytes)
}

impl SshSession {
    /// Connects, checks the pinned host key and authenticates, each step bounded by
    /// `timeout`.
    pub fn connect(target: &SshTarget, timeout: Duration) -> Result<SshSession, SshError> {
        let addr = target.addr;
        let proto = |what: &'static str| {
            move |e: ssh2::Error| SshError::Protocol {
                addr,
                what,
                message: e.message().to_string(),
            }
        };
        let tcp = target
            .dialer
            .connect(addr, timeout)
            .map_err(|source| SshError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let mut session = ssh2::Session::new().map_err(proto("session"))?;
        session.set_timeout(timeout.as_millis() as u32);
        session.set_tcp_stream(tcp);
        session.handshake().map_err(proto("handshake"))?;
        let expected = host_key_blob(&target.host_key).unwrap_or_default();
        let actual = session
            .host_key()
            .map(|(k, _)| k.to_vec())
            .unwrap_or_default();
        if expected.is_empty() || actual != expected {
            return Err(SshError::HostKeyMismatch {
                addr,
                expected: target.host_key.clone(),
                actual: base64_encode(&actual),
            });
        }
        session
            .userauth_pubkey_file(&target.user, None, &target.key.private, None)
            .map_err(|e| SshError::Auth {
                addr,
                user: target.user.clone(),
                key: target.key.private.clone(),
                message: e.message().to_string(),
            })?;
        Ok(SshSession {
            target: target.clone(),
            session,
            broken: false,
        })
    }

    /// The target this session talks to.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Opens a new session to the same target (after the guest restarted sshd).
    pub fn reconnect(&mut self, timeout: Duration) -> Result<(), SshError> {
        *self = SshSession::connect(&self.target, timeout)?;
        Ok(())
    }

    fn proto(&self, what: &'static str) -> impl Fn(ssh2::Error) -> SshError + '_ {
        move |e| SshError::Protocol {
            addr: self.target.addr,
            what,
            message: e.message().to_string(),
        }
    }

    /// Runs a shell command; fails if it is still running after `timeout` (the failure
    /// comes within [`CLOSE_GRACE`] of the deadline) or when a signal arrives.
    pub fn exec(&mut self, command: &str, timeout: Duration) -> Result<ExecOutput, SshError> {
        self.exec_watched(command, timeout, &mut || None)
    }

    /// Like [`SshSession::exec`], and gives up as soon as `watch` returns a reason
    /// (asked about twice a second): a console that shows a fatal state, say.
    pub fn exec_watched(
        &mut self,
        command: &str,
        timeout: Duration,
        watch: &mut dyn FnMut() -> Option<String>,
    ) -> Result<ExecOutput, SshError> {
        let addr = self.target.addr;
        let deadline = Instant::now() + timeout;
        if self.broken {
            self.reconnect(STEP_TIMEOUT.min(timeout.max(Duration::from_secs(1))))?;
        }
        self.session.set_blocking(true);
        self.session
            .set_timeout(timeout.min(STEP_TIMEOUT).as_millis().max(1) as u32);
        let mut channel = self
            .session
            .channel_session()
            .map_err(self.proto("open channel"))?;
        channel.exec(command).map_err(self.proto("exec"))?;
        self.session.set_blocking(false);
        let mut out = [Vec::new(), Vec::new()];
        let mut dropped = 0u64;
        let mut buf = [0u8; 32 * 1024];
        let mut next_watch = Instant::now();
        enum End {
            Eof,
            Timeout,
            Interrupted,
            Stopped(String),
        }
        let end = loop {
            let mut progressed = false;
            for (stream, kept) in out.iter_mut().enumerate() {
                let mut s = channel.stream(stream as i32);
                match s.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        let room = EXEC_OUTPUT_CAP.saturating_sub(kept.len()).min(n);
                        kept.extend_from_slice(&buf[..room]);
                        dropped += (n - room) as u64;
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.session.set_blocking(true);
                        self.broken = true;
                        return Err(SshError::Protocol {
                            addr,
                            what: "read",
                            message: e.to_string(),
                        });
                    }
                }
            }
            if channel.eof() {
                break End::Eof;
            }
            if crate::interrupt::interrupted() {
                break End::Interrupted;
            }
            if Instant::now() >= deadline {
                break End::Timeout;
            }
            if Instant::now() >= next_watch {
                next_watch = Instant::now() + Duration::from_millis(500);
                if let Some(reason) = watch() {
                    break End::Stopped(reason);
                }
            }
            if !progressed {
                self.wait_socket(Duration::from_millis(50));
            }
        };
        self.session.set_blocking(true);
        if !matches!(end, End::Eof) {
            // Abandon the command: a short close, and a fresh session for the next one
            // (libssh2's state after a timed-out close is not to be trusted).
            self.session.set_timeout(CLOSE_GRACE.as_millis() as u32);
            let _ = channel.close();
            self.broken = true;
            let command = command.to_string();
            return Err(match end {
                End::Interrupted => SshError::Interrupted { addr, command },
                End::Stopped(reason) => SshError::Stopped {
                    addr,
                    command,
                    reason,
                },
                _ => SshError::Timeout {
                    addr,
                    command,
                    timeout,
                    partial: tail_text(&out[0], &out[1]),
                },
            });
        }
        // After EOF the server sends the exit status and closes at once.
        let left = deadline.saturating_duration_since(Instant::now());
        self.session.set_timeout(
            left.clamp(Duration::from_secs(1), Duration::from_secs(5))
                .as_millis() as u32,
        );
        if channel.wait_close().is_err() {
            self.broken = true;
        }
        let signal = channel.exit_signal().ok().and_then(|s| s.exit_signal);
        let status = match &signal {
            Some(sig) => 128 + signal_number(sig),
            None => channel.exit_status().unwrap_or(255),
        };
        let [stdout, stderr] = out;
        Ok(ExecOutput {
            status,
            signal,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            dropped,
        })
    }

    /// Waits until the session's socket is readable (or `max` passes).
    fn wait_socket(&self, max: Duration) {
        let fd = self.session.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, bounded timeout.
        unsafe { libc::poll(&mut pfd, 1, max.as_millis() as i32) };
    }

    /// Uploads bytes to `remote` with `mode` (over SCP); a signal stops it between
    /// chunks.
    pub fn upload_bytes(&mut self, bytes: &[u8], remote: &str, mode: i32) -> Result<(), SshError> {
        if self.broken {
            self.reconnect(STEP_TIMEOUT)?;
        }
        self.session.set_blocking(true);
        // Each blocking step (one chunk) gets a minute, whatever an earlier exec left set.
        self.session.set_timeout(60_000);
        let mut ch = self
            .session
            .scp_send(Path::new(remote), mode, bytes.len() as u64, None)
            .map_err(self.proto("scp open"))?;
        for chunk in bytes.chunks(1 << 20) {
            if crate::interrupt::interrupted() {
                self.session.set_timeout(CLOSE_GRACE.as_millis() as u32);
                let _ = ch.close();
                self.broken = true;
                return Err(SshError::Interrupted {
                    addr: self.target.addr,
                    command: format!("upload to {remote}"),
                });
            }
            if let Err(e) = ch.write_all(chunk) {
                self.broken = true;
                return Err(SshError::Protocol {
                    addr: self.target.addr,
                    what: "scp write",
                    message: e.to_string(),
                });
            }
        }
        ch.send_eof().map_err(self.proto("scp eof"))?;
        ch.wait_eof().map_err(self.proto("scp eof"))?;
        ch.close().map_err(self.proto("scp close"))?;
        ch.wait_close().map_err(self.proto("scp close"))?;
        Ok(())
    }

    /// Uploads a local file to `remote` with `mode`.
    pub fn upload(&mut self, local: &Path, remote: &str, mode: i32) -> Result<(), SshError> {
        let bytes = std::fs::read(local).map_err(|e| SshError::Protocol {
            addr: self.target.addr,
            what: "read local file",
            message: format!("{}: {e}", local.display()),
        })?;
        self.upload_bytes(&bytes, remote, mode)
    }
}

/// Single-quotes `s` as one word for the guest's POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn tail_text(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let start = text.len().saturating_sub(400);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_have_their_numbers() {
        assert_eq!(signal_number("KILL"), 9);
        assert_eq!(signal_number("TERM"), 15);
        assert_eq!(signal_number("WEIRD"), 0);
        let o = ExecOutput {
            status: 137,
            signal: Some("KILL".into()),
            stdout: String::new(),
            stderr: String::new(),
            dropped: 0,
        };
        assert!(!o.success());
        assert_eq!(o.describe_end(), "killed by signal SIGKILL");
    }

    #[test]
    fn host_key_blob_is_the_base64_field_of_an_openssh_line() {
        let blob = host_key_blob("ssh-ed25519 Zm9vYmFy nodegate-host").unwrap();
        assert_eq!(blob, b"foobar");
        assert_eq!(base64_encode(&blob), "Zm9vYmFy");
        assert!(host_key_blob("garbage").is_none());
    }
}
