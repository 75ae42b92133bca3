//! What a check runs against, what it records, and how it fails.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::agent_endpoint::AgentEndpoint;
use crate::cluster::{JoinedNode, Kubectl};
use crate::image::{Manifest, VerifiedImage, VerifyError};
use crate::profile::Profile;
use crate::ssh::{ExecOutput, SshSession};
use crate::vm::Vm;

/// The outcome of verifying the image before boot.
#[derive(Debug)]
pub enum Verification {
    /// Signature, trust, expiry, rollback and digests all hold.
    Verified(Box<VerifiedImage>),
    /// Verification refused the image.
    Refused(VerifyError),
    /// `--allow-unsigned`: nothing was verified; the manifest, if given, was read as is.
    Unsigned(Option<Box<Manifest>>),
}

impl Verification {
    /// The manifest, verified or not.
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Verification::Verified(v) => Some(&v.manifest),
            Verification::Refused(_) => None,
            Verification::Unsigned(m) => m.as_deref(),
        }
    }
}

/// A booted guest.
pub struct Guest<'a> {
    /// The VM.
    pub vm: &'a Vm,
    /// A logged-in session.
    pub ssh: &'a mut SshSession,
    /// The node's name (the Node's, when it joins).
    pub name: &'a str,
    /// The agent endpoint forwarded into this guest (none for a profile without an agent).
    pub endpoint: Option<&'a mut AgentEndpoint>,
    /// Its tap on the run's bridge (none in user mode).
    pub link: Option<&'a crate::network::NodeLink>,
}

/// A guest joined to a control plane.
pub struct Member<'a> {
    /// Admin kubectl.
    pub kubectl: &'a Kubectl,
    /// The Node.
    pub node: &'a JoinedNode,
}

/// Everything a check may use; what it needs is present (the runner saw to that).
pub struct CheckEnv<'a> {
    /// The image profile.
    pub profile: &'a Profile,
    /// Pre-boot verification.
    pub verification: &'a Verification,
    /// The disk image the VMs boot from (the verified copy; empty when the manifest has
    /// none).
    pub disk: &'a std::path::Path,
    /// Its format as the manifest states it (`None`: read from its bytes).
    pub disk_format: Option<&'a str>,
    /// A private folder of the run for temporary files.
    pub scratch: &'a std::path::Path,
    /// The upgrade bundle's verification (`--upgrade-bundle`).
    pub bundle: Option<&'a Verification>,
    /// The booted guest, for checks that need one.
    pub guest: Option<Guest<'a>>,
    /// The cluster membership, for checks that need one.
    pub member: Option<Member<'a>>,
    /// The run's network: on the bridge the API server reaches every kubelet.
    pub network: crate::network::NetworkMode,
    /// The run's other nodes (`--nodes`), for checks across nodes.
    pub peers: Vec<super::multi_node_checks::Peer<'a>>,
    /// The roll-out's pool of legacy and candidate nodes, for the roll-out's checks.
    pub pool: Option<crate::rollout::PoolView<'a>>,
}

impl<'a> Guest<'a> {
    /// Its tap on the run's bridge, for a check that cuts or shapes it (`what`).
    pub fn bridge_link(&self, what: &str) -> Result<&'a crate::network::NodeLink, Failure> {
        self.link.ok_or_else(|| {
            Failure::new(format!(
                "the node has no link on the run's bridge to {what}"
            ))
        })
    }
}

impl<'a> CheckEnv<'a> {
    /// The booted guest (present for checks that need one).
    pub fn guest(&mut self) -> Result<&mut Guest<'a>, Failure> {
        self.guest
            .as_mut()
            .ok_or_else(|| Failure::new("internal: no guest for a guest check"))
    }

    /// The joined node's name and its peers' (`--nodes`), the node checks run on first.
    pub fn node_names(&self) -> Result<Vec<String>, Failure> {
        let mut names = vec![self.member()?.node.name().to_string()];
        names.extend(self.peers.iter().map(|p| p.name.to_string()));
        Ok(names)
    }

    /// The roll-out's pool (present for the roll-out's checks).
    pub fn pool(&mut self) -> Result<&mut crate::rollout::PoolView<'a>, Failure> {
        self.pool
            .as_mut()
            .ok_or_else(|| Failure::new("internal: no pool for a roll-out check"))
    }

    /// The cluster membership (present for checks that need the joined node).
    pub fn member(&self) -> Result<&Member<'a>, Failure> {
        self.member
            .as_ref()
            .ok_or_else(|| Failure::new("internal: no cluster membership for a node check"))
    }
}

/// Why a check failed: what was expected, what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One line: what went wrong and where to look.
    pub message: String,
    /// The expected value, when there is one.
    pub expected: Option<String>,
    /// The value found.
    pub actual: Option<String>,
}

impl Failure {
    /// A failure with only a message.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            expected: None,
            actual: None,
        }
    }

    /// A failure comparing an expected and an actual value.
    pub fn mismatch(
        message: impl Into<String>,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) -> Failure {
        Failure {
            message: message.into(),
            expected: Some(expected.into()),
            actual: Some(actual.into()),
        }
    }
}

/// A check's deadline and the record of what it did (the JUnit system-out).
pub struct Attempt {
    deadline: Instant,
    timeout: Duration,
    /// Commands run and their output.
    pub transcript: String,
    /// What the check saw happen on its nodes, for the timeline.
    pub marks: Vec<crate::timeline::Mark>,
    /// The figures it measured (`requests_lost = 0`), for the report and JUnit.
    pub figures: std::collections::BTreeMap<String, String>,
    /// What its clients sent and lost while it ran (the roll-out's).
    pub traffic: Vec<crate::rollout::client::Traffic>,
}

impl Attempt {
    /// Starts the clock.
    pub fn new(timeout: Duration) -> Attempt {
        Attempt {
            deadline: Instant::now() + timeout,
            timeout,
            transcript: String::new(),
            marks: Vec::new(),
            figures: Default::default(),
            traffic: Vec::new(),
        }
    }

    /// An attempt with the same deadline and nothing recorded yet, for work done on
    /// another thread (one node of several); [`Attempt::merge`] takes it back.
    pub fn child(&self) -> Attempt {
        Attempt {
            deadline: self.deadline,
            timeout: self.timeout,
            transcript: String::new(),
            marks: Vec::new(),
            figures: Default::default(),
            traffic: Vec::new(),
        }
    }

    /// Takes in what a [`Attempt::child`] recorded, its transcript under `heading`.
    pub fn merge(&mut self, heading: &str, child: Attempt) {
        let _ = writeln!(self.transcript, "--- {heading}");
        self.transcript.push_str(&child.transcript);
        self.marks.extend(child.marks);
        self.figures.extend(child.figures);
        self.traffic.extend(child.traffic);
    }

    /// Records a figure the check measured.
    pub fn figure(&mut self, name: impl Into<String>, value: impl std::fmt::Display) {
        self.figures.insert(name.into(), value.to_string());
    }

    /// Time left before the deadline; none once SIGINT or SIGTERM arrived, so that every
    /// loop of a check ends at once.
    pub fn remaining(&self) -> Duration {
        if crate::interrupt::interrupted() {
            return Duration::ZERO;
        }
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The check's whole timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Notes a line in the transcript.
    pub fn note(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.transcript, "{}", line.as_ref());
    }

    /// Records what happened on a node for the timeline.
    pub fn mark(&mut self, mark: crate::timeline::Mark) {
        self.marks.push(mark);
    }

    /// Runs `command` in the guest within the time left; records it and its output.
    pub fn exec(&mut self, ssh: &mut SshSession, command: &str) -> Result<ExecOutput, Failure> {
        let _ = writeln!(self.transcript, "$ {command}");
        let left = self.remaining();
        if left.is_zero() {
            return Err(self.timed_out(command));
        }
        match ssh.exec(command, left) {
            Ok(o) => {
                // The transcript keeps a bounded share of each command's output.
                push_tail(&mut self.transcript, &o.stdout);
                if !o.stderr.is_empty() {
                    self.transcript.push_str("[stderr]\n");
                    push_tail(&mut self.transcript, &o.stderr);
                }
                if o.dropped > 0 {
                    let _ = writeln!(
                        self.transcript,
                        "[output capped at {} MiB per stream: {} bytes dropped]",
                        crate::ssh::EXEC_OUTPUT_CAP >> 20,
                        o.dropped
                    );
                }
                let _ = writeln!(self.transcript, "[{}]", o.describe_end());
                Ok(o)
            }
            Err(crate::ssh::SshError::Timeout { partial, .. }) => {
                self.transcript.push_str(&partial);
                Err(self.timed_out(command))
            }
            Err(e @ crate::ssh::SshError::Interrupted { .. }) => {
                Err(Failure::new(format!("interrupted: {e}")))
            }
            Err(e) => Err(Failure::new(format!("ssh: {e}"))),
        }
    }

    /// Runs `command` as root (through sudo and sh).
    pub fn exec_root(
        &mut self,
        ssh: &mut SshSession,
        command: &str,
    ) -> Result<ExecOutput, Failure> {
        self.exec(ssh, &format!("sudo sh -c {}", shell_quote(command)))
    }

    /// The failure of a check that ran out of time waiting for `what`.
    pub fn timed_out(&self, what: &str) -> Failure {
        Failure::new(format!(
            "timed out after {} waiting for {what}",
            crate::message::duration(self.timeout)
        ))
    }
}

pub use crate::ssh::shell_quote;

/// How much of one command's output a transcript keeps (its end, where errors are).
const TRANSCRIPT_SHARE: usize = 64 * 1024;

/// Appends the end of `s` to `transcript`, saying how much of its start was left out.
fn push_tail(transcript: &mut String, s: &str) {
    if s.len() <= TRANSCRIPT_SHARE {
        transcript.push_str(s);
        return;
    }
    let mut start = s.len() - TRANSCRIPT_SHARE;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let _ = writeln!(
        transcript,
        "[{start} bytes of output above not kept in the transcript]"
    );
    transcript.push_str(&s[start..]);
}
