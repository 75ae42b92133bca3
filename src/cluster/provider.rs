//! The provider choice ([`ControlPlaneConfig`], parsed from `kind|local|kubeconfig=PATH`)
//! and the running [`ControlPlane`] guard every provider returns.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::client_skew::{self, KubeVersion, KubectlClient};
use super::kind::{self, KindConfig};
use super::kubeconfig::{self, KubeconfigConfig};
use super::local::{self, LocalConfig};
use super::token::BootstrapToken;
use super::{find_on_path, ClusterError, Kubectl, GUEST_API_ADDR};
use crate::network::RunNetwork;
use crate::process::ProcessGroup;
use crate::vm::GuestForward;

/// Which provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// A kind cluster.
    Kind,
    /// A control plane run as local processes.
    Local,
    /// An existing cluster named by a kubeconfig.
    Kubeconfig,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::Kind => "kind",
            ProviderKind::Local => "local",
            ProviderKind::Kubeconfig => "kubeconfig",
        })
    }
}

/// What control plane to use, checked before anything starts.
#[derive(Debug, Clone)]
pub enum ControlPlaneConfig {
    /// A kind cluster.
    Kind(KindConfig),
    /// Local processes.
    Local(LocalConfig),
    /// An existing cluster.
    Kubeconfig(KubeconfigConfig),
}

impl ControlPlaneConfig {
    /// What `--control-plane auto` picks, and why: kind when [`kind::probe`] shows this
    /// machine really runs it with `kind_image` (or kind's default image), the local
    /// control plane otherwise.
    pub fn auto(path: &std::ffi::OsStr, kind_image: Option<&str>) -> (ControlPlaneConfig, String) {
        let local = |why: String| (ControlPlaneConfig::Local(LocalConfig::default()), why);
        if find_on_path("kind", path).is_none() || find_on_path("docker", path).is_none() {
            return local("auto: local (kind or docker is not on PATH)".into());
        }
        let config = KindConfig {
            image: kind_image.map(String::from),
            path: Some(path.to_owned()),
            ..KindConfig::default()
        };
        match kind::probe(&config) {
            Ok(p) => (
                ControlPlaneConfig::Kind(KindConfig {
                    image: Some(p.image.clone()),
                    probed: true,
                    ..config
                }),
                format!("auto: kind (probe: {})", p.describe()),
            ),
            Err(e) => local(format!("auto: local (kind probe: {e})")),
        }
    }

    /// The provider.
    pub fn kind(&self) -> ProviderKind {
        match self {
            ControlPlaneConfig::Kind(_) => ProviderKind::Kind,
            ControlPlaneConfig::Local(_) => ProviderKind::Local,
            ControlPlaneConfig::Kubeconfig(_) => ProviderKind::Kubeconfig,
        }
    }

    /// Starts (or attaches to) the control plane; kind wires its node into `net`, the
    /// run's network. Local processes are tied to the calling thread (they get SIGKILL if
    /// it dies): call this from a long-lived thread.
    pub fn start(&self, net: Option<&RunNetwork>) -> Result<ControlPlane, ClusterError> {
        match self {
            ControlPlaneConfig::Kind(c) => kind::start(c, net),
            ControlPlaneConfig::Local(c) => local::start(c),
            ControlPlaneConfig::Kubeconfig(c) => kubeconfig::attach(c),
        }
    }
}

impl FromStr for ControlPlaneConfig {
    type Err = String;
    /// `kind`, `local`, `local=BIN_DIR` or `kubeconfig=PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            None if s == "kind" => Ok(ControlPlaneConfig::Kind(KindConfig::default())),
            None if s == "local" => Ok(ControlPlaneConfig::Local(LocalConfig::default())),
            Some(("local", dir)) if !dir.is_empty() => Ok(ControlPlaneConfig::Local(LocalConfig {
                bin_dir: dir.into(),
                ..LocalConfig::default()
            })),
            Some(("kubeconfig", path)) if !path.is_empty() => Ok(ControlPlaneConfig::Kubeconfig(
                KubeconfigConfig::new(path.into()),
            )),
            _ => Err(format!(
                "unknown control plane {s:?} (kind, local, local=BIN_DIR, kubeconfig=PATH)"
            )),
        }
    }
}

/// The `PATH` tools are looked up on: `$PATH`, or the empty list.
pub fn env_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

/// What dropping a [`ControlPlane`] undoes.
#[derive(Debug)]
pub(crate) enum Teardown {
    /// Nothing (an existing cluster, or a kept/reused one).
    Nothing,
    /// Stop these components, last first.
    Processes(Vec<ProcessGroup>),
    /// `kind delete cluster --name NAME`, then its docker network.
    KindCluster {
        /// The kind binary.
        kind: PathBuf,
        /// The docker CLI.
        docker: PathBuf,
        /// The cluster.
        name: String,
    },
}

/// A control plane a node can join. Dropping it tears down what its provider started:
/// the local processes (scheduler and controller manager first, etcd last) or the kind
/// cluster (unless reused or kept); an existing cluster is left alone.
#[derive(Debug)]
pub struct ControlPlane {
    /// The provider.
    pub provider: ProviderKind,
    /// kubectl with an admin kubeconfig (the host's view: https://127.0.0.1:PORT).
    pub kubectl: Kubectl,
    /// The API server's port on the host's loopback.
    pub host_port: u16,
    /// The API server's address as the VM dials it (`10.0.2.100:PORT`).
    pub guest_endpoint: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// Its kubeadm pin, `sha256:...`.
    pub ca_hash: String,
    pub(crate) teardown: Teardown,
    pub(crate) _state: Option<tempfile::TempDir>,
}

impl ControlPlane {
    /// Drives this control plane from now on with the kubectl nearest `server`'s release
    /// (its `gitVersion`): the provider's own, or one of `others` ([`client_skew`]).
    /// Returns the report's line on the choice.
    pub fn choose_kubectl(
        &mut self,
        others: &[KubectlClient],
        server: &str,
    ) -> Result<String, ClusterError> {
        let own = KubectlClient::probe(&self.kubectl.bin)?;
        let Some(release) = KubeVersion::parse(server) else {
            return Ok(format!(
                "kubectl {} ({}): the server's release {server:?} is not vMAJOR.MINOR.PATCH; the provider's own kubectl",
                own.version,
                own.path.display()
            ));
        };
        let all: Vec<KubectlClient> = std::iter::once(own).chain(others.iter().cloned()).collect();
        let choice = client_skew::choose(&all, release).expect("one client at least");
        self.kubectl.bin = choice.client.path.clone();
        Ok(choice.describe(all.len()))
    }

    /// The forward the VM needs: [`GUEST_API_ADDR`]:PORT to the host port.
    pub fn forward(&self) -> GuestForward {
        let port = self
            .guest_endpoint
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(self.host_port);
        GuestForward {
            guest_addr: GUEST_API_ADDR.parse().expect("a literal address"),
            guest_port: port,
            host_port: self.host_port,
        }
    }

    /// `https://10.0.2.100:PORT`.
    pub fn guest_server(&self) -> String {
        format!("https://{}", self.guest_endpoint)
    }

    /// The admin kubeconfig on the host.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubectl.kubeconfig
    }

    /// A fresh bootstrap token valid for `ttl`, created the provider's way.
    pub fn create_token(&self, ttl: Duration) -> Result<BootstrapToken, ClusterError> {
        BootstrapToken::create(&self.kubectl, ttl)
    }

    /// Whether every local component still runs (always true for other providers).
    pub fn components_running(&mut self) -> bool {
        match &mut self.teardown {
            Teardown::Processes(groups) => groups
                .iter_mut()
                .all(|g| matches!(g.try_status(), Ok(None))),
            _ => true,
        }
    }

    /// Pids of the local components, in start order (empty for other providers).
    pub fn component_pids(&self) -> Vec<(String, u32)> {
        match &self.teardown {
            Teardown::Processes(groups) => groups
                .iter()
                .map(|g| (g.name().to_string(), g.pid()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.teardown, Teardown::Nothing) {
            Teardown::Nothing => {}
            Teardown::Processes(mut groups) => {
                // Clients first, etcd last: an apiserver whose etcd is gone does not exit
                // on SIGTERM.
                while let Some(mut g) = groups.pop() {
                    g.terminate();
                }
            }
            Teardown::KindCluster { kind, docker, name } => {
                for problem in kind::delete_cluster(&kind, &docker, &name, None) {
                    eprintln!("nodegate: teardown: {problem}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert!(matches!("kind".parse(), Ok(ControlPlaneConfig::Kind(_))));
        assert!(matches!("local".parse(), Ok(ControlPlaneConfig::Local(_))));
        match "local=/opt/k8s".parse() {
            Ok(ControlPlaneConfig::Local(c)) => assert_eq!(c.bin_dir, Path::new("/opt/k8s")),
            other => panic!("{other:?}"),
        }
        match "kubeconfig=/tmp/admin.conf".parse() {
            Ok(ControlPlaneConfig::Kubeconfig(c)) => {
                assert_eq!(c.path, Path::new("/tmp/admin.conf"))
            }
            other => panic!("{other:?}"),
        }
        let e = "minikube".parse::<ControlPlaneConfig>().unwrap_err();
        assert!(e.contains("kubeconfig=PATH"), "{e}");
        assert!("kubeconfig=".parse::<ControlPlaneConfig>().is_err());
    }

    #[test]
    fn auto_picks_local_without_kind_or_with_a_kind_that_fails_its_probe() {
        let empty = tempfile::tempdir().unwrap();
        let (c, why) = ControlPlaneConfig::auto(empty.path().as_os_str(), None);
        assert_eq!(c.kind(), ProviderKind::Local);
        assert_eq!(why, "auto: local (kind or docker is not on PATH)");
        // A kind too old to drive: the probe says so and auto keeps to local.
        let bin = tempfile::tempdir().unwrap();
        for (tool, body) in [
            ("kind", "echo 'kind v0.9.0 go1.15 linux/amd64'"),
            ("docker", "exit 1"),
        ] {
            let p = bin.path().join(tool);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let (c, why) = ControlPlaneConfig::auto(bin.path().as_os_str(), Some("x"));
        assert_eq!(c.kind(), ProviderKind::Local);
        assert!(why.starts_with("auto: local (kind probe: "), "{why}");
        assert!(
            why.contains("kind v0.9.0 go1.15 linux/amd64 is not supported"),
            "{why}"
        );
    }
}
