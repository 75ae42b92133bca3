//! Control planes and node join: where a booted node image meets a Kubernetes cluster.
//!
//! A [`ControlPlane`] guard comes from one of three providers ([`ControlPlaneConfig`]):
//! a kind cluster ([`kind`]), a control plane run as local processes ([`local`]) or an
//! existing cluster named by a kubeconfig ([`kubeconfig`]). A [`BootstrapToken`] guard
//! holds a short-lived bootstrap token; [`join()`] runs the image's [`JoinMethod`] on the
//! node over SSH and returns a [`JoinedNode`] guard once the Node is Ready. Each guard's
//! `Drop` removes what it created: the cluster (unless reused or kept), the token, the
//! Node object. All API traffic goes through the test bed's kubectl with JSON output
//! ([`Kubectl`]). The VM reaches the API server only through a
//! [`GuestForward`](crate::vm::GuestForward) at [`GUEST_API_ADDR`].

pub mod ca_hash;
pub mod client_skew;
pub mod join;
pub mod kind;
pub mod kubeconfig;
pub mod kubectl;
pub mod local;
pub mod provider;
pub mod token;

use std::path::PathBuf;
use std::time::Duration;

pub use ca_hash::ca_cert_hash;
pub use join::{
    join, ready_condition, JoinConfig, JoinMethod, JoinTimings, JoinedNode, KubeletSettings,
};
pub use kind::KindConfig;
pub use kubeconfig::KubeconfigConfig;
pub use kubectl::Kubectl;
pub use local::LocalConfig;
pub use provider::{ControlPlane, ControlPlaneConfig, ProviderKind};
pub use token::{BootstrapToken, Token};

use crate::exit;

/// The guest-side address of the API server: QEMU forwards it to a host loopback port.
pub const GUEST_API_ADDR: &str = "10.0.2.100";

/// Why a control plane, token or join failed. One line each, naming the provider, tool,
/// address, token or node concerned; [`ClusterError::exit_code`] gives the class.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A tool a provider needs is missing.
    #[error("{provider} provider needs {tool}: not found ({looked})")]
    MissingTool {
        /// The provider.
        provider: ProviderKind,
        /// The tool (`kind`, `docker`, `kubectl`...).
        tool: String,
        /// Where it was looked for.
        looked: String,
    },
    /// The binaries folder lacks control plane binaries.
    #[error("{}: control plane binary folder incomplete, missing {} (build it: fixtures/build kubernetes)", dir.display(), missing.join(", "))]
    IncompleteBinDir {
        /// The folder.
        dir: PathBuf,
        /// Missing or non-executable binaries.
        missing: Vec<String>,
    },
    /// A kubectl (`--kubectl`, or a provider's own) that does not say its release.
    #[error("{}: not a usable kubectl: {reason}", path.display())]
    BadKubectl {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The kubeconfig cannot be used.
    #[error("{}: kubeconfig provider: {reason}", path.display())]
    BadKubeconfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The API server is somewhere the VM cannot be forwarded to.
    #[error("{provider} provider: API server {server} is not on this host's loopback; the VM reaches only forwarded loopback ports")]
    NotLoopback {
        /// The provider.
        provider: ProviderKind,
        /// The server URL.
        server: String,
    },
    /// A port the control plane needs is taken.
    #[error("{provider} provider: 127.0.0.1:{port} already in use")]
    PortInUse {
        /// The provider.
        provider: ProviderKind,
        /// The port.
        port: u16,
    },
    /// A file or folder could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A component of the local control plane failed to come up.
    #[error("local provider: {component}: {reason} (log {}): {}", log.display(), tail.join(" | "))]
    Component {
        /// `etcd`, `kube-apiserver`...
        component: String,
        /// What went wrong.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// Its last log lines.
        tail: Vec<String>,
    },
    /// An external command (kubectl, kubeadm, kind, docker) failed.
    #[error("{provider} provider: `{command}` failed ({status}): {stderr}")]
    Command {
        /// The provider.
        provider: ProviderKind,
        /// The command, shortened.
        command: String,
        /// Its exit status.
        status: String,
        /// The last line(s) of its stderr.
        stderr: String,
    },
    /// A command's output was not what the tool documents.
    #[error("{provider} provider: unexpected output of `{command}`: {detail}")]
    Unexpected {
        /// The provider.
        provider: ProviderKind,
        /// The command.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// The VM cannot reach the API server.
    #[error("API server unreachable from the VM: it tried https://{addr} ({detail}); is {addr} forwarded to the API server's host port?")]
    Unreachable {
        /// `ADDR:PORT` as the VM dialled it.
        addr: String,
        /// What the VM saw.
        detail: String,
    },
    /// The cluster CA does not match the expected hash.
    #[error("CA hash mismatch: expected {expected}, the cluster CA is {actual}")]
    CaHashMismatch {
        /// The pinned hash.
        expected: String,
        /// The cluster CA's hash (or what kubeadm reported).
        actual: String,
    },
    /// A CA certificate could not be parsed.
    #[error("CA certificate: {0}")]
    BadCa(String),
    /// A bootstrap token string is malformed.
    #[error("bootstrap token {0:?}: malformed (want [a-z0-9]{{6}}.[a-z0-9]{{16}})")]
    BadToken(String),
    /// The bootstrap token has expired.
    #[error("bootstrap token {id}: expired at {expired}")]
    TokenExpired {
        /// The token id.
        id: String,
        /// When (RFC 3339).
        expired: String,
    },
    /// The bootstrap token is not in the cluster.
    #[error("bootstrap token {id}: no Secret kube-system/bootstrap-token-{id} in the cluster")]
    TokenUnknown {
        /// The token id.
        id: String,
    },
    /// A Node of that name exists already.
    #[error("node name clash: a Node named {node} already exists in the cluster")]
    NodeExists {
        /// The name.
        node: String,
    },
    /// The cluster-info ConfigMap does not let the node discover the cluster.
    #[error("cluster-info: {0}")]
    ClusterInfo(String),
    /// The join method failed on the node.
    #[error("node {node}: {method} join failed (exit {status}): {output}")]
    JoinFailed {
        /// The node.
        node: String,
        /// The method.
        method: &'static str,
        /// Exit status on the node.
        status: i32,
        /// Its last output lines.
        output: String,
    },
    /// The join method was still running on the node when the budget ran out.
    #[error("node {node}: {method} join still running after {}: {partial}", crate::message::duration(*budget))]
    JoinTimedOut {
        /// The node.
        node: String,
        /// The method.
        method: &'static str,
        /// The join budget.
        budget: Duration,
        /// Its last output.
        partial: String,
    },
    /// The node did not register or become Ready in time.
    #[error("node {node}: not {what} within {} ({last})", crate::message::duration(*budget))]
    NotReady {
        /// The node.
        node: String,
        /// `registered` or `Ready`.
        what: &'static str,
        /// The budget.
        budget: Duration,
        /// The last thing seen.
        last: String,
    },
    /// SSH to the node failed.
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    /// This machine cannot run kind (found before anything was created).
    #[error("kind provider: {0}")]
    KindUnusable(Box<kind::KindUnusable>),
    /// SIGINT or SIGTERM.
    #[error("interrupted while waiting for {0}")]
    Interrupted(String),
}

impl ClusterError {
    /// The exit code of this error's class: bad input (3) for a wrong kubeconfig, CA
    /// hash, token or node name; interrupted (130); environment (5) for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClusterError::BadKubeconfig { .. }
            | ClusterError::BadKubectl { .. }
            | ClusterError::CaHashMismatch { .. }
            | ClusterError::BadCa(_)
            | ClusterError::BadToken(_)
            | ClusterError::TokenExpired { .. }
            | ClusterError::TokenUnknown { .. }
            | ClusterError::NodeExists { .. } => exit::BAD_INPUT,
            ClusterError::Interrupted(_) => exit::INTERRUPTED,
            ClusterError::KindUnusable(e) => e.exit_code(),
            ClusterError::MissingTool { .. }
            | ClusterError::IncompleteBinDir { .. }
            | ClusterError::NotLoopback { .. }
            | ClusterError::PortInUse { .. }
            | ClusterError::Io { .. }
            | ClusterError::Component { .. }
            | ClusterError::Command { .. }
            | ClusterError::Unexpected { .. }
            | ClusterError::Unreachable { .. }
            | ClusterError::ClusterInfo(_)
            | ClusterError::JoinFailed { .. }
            | ClusterError::JoinTimedOut { .. }
            | ClusterError::NotReady { .. }
            | ClusterError::Ssh(_) => exit::ENVIRONMENT,
        }
    }
}

impl ClusterError {
    /// Whether the node, not the control plane or the host, failed: the VM was reachable
    /// and the cluster answered, but the join command failed or ran out of time, or the
    /// Node never registered or became Ready (a broken kubelet, say).
    pub fn is_node_fault(&self) -> bool {
        matches!(
            self,
            ClusterError::JoinFailed { .. }
                | ClusterError::JoinTimedOut { .. }
                | ClusterError::NotReady { .. }
        )
    }
}

/// Finds an executable `name` in the folders of a `PATH`-style list.
pub fn find_on_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The last `n` non-empty lines of `text`, joined with " | ".
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
