//! SSH to guests with ssh2 (libssh2): one persistent session per VM, the guest's host
//! key pinned (never "accept any"), `exec` with exit status, stdout, stderr and a
//! deadline, file upload, and reconnection when the guest restarts sshd.

mod keys;

pub use keys::{generate_keypair, SshKeyPair};

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    /// A command ran past its deadline.
    #[error("ssh {addr}: command {command:?} still running after {timeout:?}; output so far: {partial:?}")]
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
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Host address (127.0.0.1 and the forwarded port, for VMs).
    pub addr: SocketAddr,
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
    /// Exit status (255 if the command died without one).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ExecOutput {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A connected, authenticated session.
pub struct SshSession {
    target: SshTarget,
    session: ssh2::Session,
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
        let tcp = TcpStream::connect_timeout(&addr, timeout)
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

    /// Runs a shell command; fails if it is still running after `timeout`.
    pub fn exec(&mut self, command: &str, timeout: Duration) -> Result<ExecOutput, SshError> {
        let addr = self.target.addr;
        let deadline = Instant::now() + timeout;
        self.session.set_blocking(true);
        self.session.set_timeout(timeout.as_millis().max(1) as u32);
        let mut channel = self
            .session
            .channel_session()
            .map_err(self.proto("open channel"))?;
        channel.exec(command).map_err(self.proto("exec"))?;
        self.session.set_blocking(false);
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut buf = [0u8; 32 * 1024];
        let result = loop {
            let mut progressed = false;
            for (stream, out) in [(0, &mut stdout), (1, &mut stderr)] {
                let mut s = channel.stream(stream);
                match s.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.session.set_blocking(true);
                        return Err(SshError::Protocol {
                            addr,
                            what: "read",
                            message: e.to_string(),
                        });
                    }
                }
            }
            if channel.eof() {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(());
            }
            if !progressed {
                self.wait_socket(Duration::from_millis(50));
            }
        };
        self.session.set_blocking(true);
        if result.is_err() {
            let _ = channel.close();
            return Err(SshError::Timeout {
                addr,
                command: command.to_string(),
                timeout,
                partial: tail_text(&stdout, &stderr),
            });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.session
            .set_timeout(remaining.as_millis().max(1000) as u32);
        let _ = channel.wait_close();
        let status = channel.exit_status().unwrap_or(255);
        Ok(ExecOutput {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
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

    /// Uploads bytes to `remote` with `mode` (over SCP).
    pub fn upload_bytes(&mut self, bytes: &[u8], remote: &str, mode: i32) -> Result<(), SshError> {
        self.session.set_blocking(true);
        // Each blocking step (one chunk) gets a minute, whatever an earlier exec left set.
        self.session.set_timeout(60_000);
        let mut ch = self
            .session
            .scp_send(Path::new(remote), mode, bytes.len() as u64, None)
            .map_err(self.proto("scp open"))?;
        ch.write_all(bytes).map_err(|e| SshError::Protocol {
            addr: self.target.addr,
            what: "scp write",
            message: e.to_string(),
        })?;
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
    fn host_key_blob_is_the_base64_field_of_an_openssh_line() {
        let blob = host_key_blob("ssh-ed25519 Zm9vYmFy nodegate-host").unwrap();
        assert_eq!(blob, b"foobar");
        assert_eq!(base64_encode(&blob), "Zm9vYmFy");
        assert!(host_key_blob("garbage").is_none());
    }
}
