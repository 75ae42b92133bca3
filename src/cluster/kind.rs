//! The kind provider: a kind cluster whose API server the VM reaches through a port
//! published on the host's loopback, forwarded into the VM's user network.
//!
//! External calls, all plain: `kind create cluster --name N --config FILE --wait T` (or
//! `kind get clusters` with `reuse`), `docker ps` (find the control-plane container by
//! kind's labels), `docker port CTR 6443/tcp`, `kind get kubeconfig --name N`,
//! `docker exec CTR cat /etc/kubernetes/pki/ca.crt`, `docker exec CTR kubeadm token
//! create|delete`, `kubectl` (cluster-info's server for the guest) and on teardown
//! `kind delete cluster --name N`.

use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::kubectl::run_command;
use super::local::adapt_cluster_info;
use super::provider::{env_path, ControlPlane, ProviderKind, Teardown};
use super::{ca_cert_hash, find_on_path, ClusterError, Kubectl, GUEST_API_ADDR};

const PROVIDER: ProviderKind = ProviderKind::Kind;

/// How to get a kind cluster.
#[derive(Debug, Clone)]
pub struct KindConfig {
    /// The cluster name.
    pub cluster: String,
    /// Use an existing cluster of that name instead of creating one (never deleted).
    pub reuse: bool,
    /// Leave a created cluster behind on teardown.
    pub keep: bool,
    /// Host loopback port to publish the API server on; default a free one.
    pub host_port: Option<u16>,
    /// Where `kind` and `docker` are looked up (a `PATH` list); default `$PATH`.
    pub path: Option<OsString>,
    /// Folder holding kubectl (default `cache_dir()/kubernetes/bin`).
    pub bin_dir: PathBuf,
    /// Folder for the kind config and kubeconfig; default a temporary folder.
    pub state_dir: Option<PathBuf>,
    /// The API server's address as the guest sees it (added to the certificate SANs).
    pub guest_addr: String,
    /// `kind create cluster --wait`.
    pub wait: Duration,
}

impl Default for KindConfig {
    fn default() -> Self {
        KindConfig {
            cluster: "nodegate".into(),
            reuse: false,
            keep: false,
            host_port: None,
            path: None,
            bin_dir: crate::cache_dir().join("kubernetes/bin"),
            state_dir: None,
            guest_addr: GUEST_API_ADDR.into(),
            wait: Duration::from_secs(300),
        }
    }
}

/// The kind cluster configuration: API server published on 127.0.0.1:PORT, certificate
/// SANs including the guest-side address.
pub fn kind_config(port: u16, guest_addr: &str) -> String {
    format!(
        r#"kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: "127.0.0.1"
  apiServerPort: {port}
kubeadmConfigPatches:
- |
  kind: ClusterConfiguration
  apiServer:
    certSANs: ["localhost", "127.0.0.1", "{guest_addr}"]
"#
    )
}

/// Deletes a freshly created cluster unless disarmed (a start that fails half-way).
struct DeleteOnError {
    kind: PathBuf,
    name: String,
    armed: bool,
}

impl Drop for DeleteOnError {
    fn drop(&mut self) {
        if self.armed {
            let _ = crate::process::run_bounded(
                Command::new(&self.kind).args(["delete", "cluster", "--name", &self.name]),
                None,
                std::time::Duration::from_secs(120),
            );
        }
    }
}

fn tool(name: &str, path: &std::ffi::OsStr) -> Result<PathBuf, ClusterError> {
    find_on_path(name, path).ok_or_else(|| ClusterError::MissingTool {
        provider: PROVIDER,
        tool: name.into(),
        looked: format!("PATH={}", path.to_string_lossy()),
    })
}

/// The loopback port in `docker port` output (`127.0.0.1:PORT` or `0.0.0.0:PORT` lines).
pub fn published_port(output: &str) -> Option<u16> {
    output.lines().find_map(|l| {
        let (host, port) = l.trim().rsplit_once(':')?;
        matches!(host, "127.0.0.1" | "0.0.0.0").then(|| port.parse().ok())?
    })
}

/// Creates (or reuses) the cluster and prepares it for the VM.
pub fn start(config: &KindConfig) -> Result<ControlPlane, ClusterError> {
    let path = config.path.clone().unwrap_or_else(env_path);
    let kind = tool("kind", &path)?;
    let docker = tool("docker", &path)?;
    let (temp, state) = match &config.state_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("nodegate-kind-")
                .tempdir()
                .map_err(|source| ClusterError::Io {
                    path: "/tmp".into(),
                    source,
                })?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| ClusterError::Io { path: p, source }
    };
    fs::create_dir_all(&state).map_err(io(&state))?;
    let kubeconfig = state.join("kind.kubeconfig");
    let kubectl = Kubectl::new(&config.bin_dir, &kubeconfig, PROVIDER)?;
    let name = &config.cluster;

    let mut guard = DeleteOnError {
        kind: kind.clone(),
        name: name.clone(),
        armed: false,
    };
    let mut created = false;
    if config.reuse {
        let out = run_command(
            PROVIDER,
            Command::new(&kind).args(["get", "clusters"]),
            None,
        )?;
        if !out.lines().any(|l| l.trim() == name) {
            return Err(ClusterError::Unexpected {
                provider: PROVIDER,
                command: "kind get clusters".into(),
                detail: format!(
                    "no cluster named {name} to reuse (found: {})",
                    out.split_whitespace().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    } else {
        let port = match config.host_port {
            Some(p) => p,
            None => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(io(Path::new("127.0.0.1:0")))?,
        };
        let file = state.join("kind.yaml");
        fs::write(&file, kind_config(port, &config.guest_addr)).map_err(io(&file))?;
        let mut c = Command::new(&kind);
        c.args(["create", "cluster", "--name", name, "--config"])
            .arg(&file)
            .arg("--wait")
            .arg(format!("{}s", config.wait.as_secs()));
        // Armed only once created: a create that fails (say, the name is taken) must
        // not delete someone else's cluster.
        run_command(PROVIDER, &mut c, None)?;
        created = true;
        guard.armed = !config.keep;
    }

    let ps = run_command(
        PROVIDER,
        Command::new(&docker).args([
            "ps",
            "--filter",
            &format!("label=io.x-k8s.kind.cluster={name}"),
            "--filter",
            "label=io.x-k8s.kind.role=control-plane",
            "--format",
            "{{.Names}}",
        ]),
        None,
    )?;
    let container = ps
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| ClusterError::Unexpected {
            provider: PROVIDER,
            command: "docker ps".into(),
            detail: format!("no running control-plane container of kind cluster {name}"),
        })?
        .to_string();
    let ports = run_command(
        PROVIDER,
        Command::new(&docker).args(["port", &container, "6443/tcp"]),
        None,
    )?;
    let host_port = published_port(&ports).ok_or_else(|| ClusterError::NotLoopback {
        provider: PROVIDER,
        server: format!("{container}:6443 (published as {:?})", ports.trim()),
    })?;
    let kc = run_command(
        PROVIDER,
        Command::new(&kind).args(["get", "kubeconfig", "--name", name]),
        None,
    )?;
    fs::write(&kubeconfig, kc).map_err(io(&kubeconfig))?;
    fs::set_permissions(&kubeconfig, fs::Permissions::from_mode(0o600)).map_err(io(&kubeconfig))?;
    let ca_pem = run_command(
        PROVIDER,
        Command::new(&docker).args(["exec", &container, "cat", "/etc/kubernetes/pki/ca.crt"]),
        None,
    )?;
    let ca_hash = ca_cert_hash(&ca_pem)?;
    let guest_endpoint = format!("{}:{host_port}", config.guest_addr);
    adapt_cluster_info(&kubectl, &format!("https://{guest_endpoint}"))?;

    guard.armed = false;
    let teardown = if created && !config.keep {
        Teardown::KindCluster {
            kind,
            name: name.clone(),
        }
    } else {
        Teardown::Nothing
    };
    Ok(ControlPlane {
        provider: PROVIDER,
        kubectl,
        host_port,
        guest_endpoint,
        ca_pem,
        ca_hash,
        teardown,
        _state: temp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_port_prefers_loopback_lines() {
        assert_eq!(published_port("127.0.0.1:40123\n"), Some(40123));
        assert_eq!(published_port("0.0.0.0:40123\n[::]:40123\n"), Some(40123));
        assert_eq!(published_port("192.168.1.5:40123\n"), None);
        assert_eq!(published_port(""), None);
    }

    #[test]
    fn config_publishes_on_loopback_with_the_guest_san() {
        let c = kind_config(40123, "10.0.2.100");
        assert!(c.contains("apiServerAddress: \"127.0.0.1\"\n  apiServerPort: 40123\n"));
        assert!(c.contains(r#"certSANs: ["localhost", "127.0.0.1", "10.0.2.100"]"#));
    }
}
