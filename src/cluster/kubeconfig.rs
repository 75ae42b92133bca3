//! The kubeconfig provider: an existing cluster. nodegate starts and stops nothing; it
//! creates a short-lived bootstrap token Secret through the API (deleted afterwards) and
//! the Node it joins is deleted on teardown.

use std::path::PathBuf;

use base64ct::{Base64, Encoding};

use super::provider::{ControlPlane, ProviderKind, Teardown};
use super::{ca_cert_hash, ClusterError, Kubectl, GUEST_API_ADDR};

const PROVIDER: ProviderKind = ProviderKind::Kubeconfig;

/// An existing cluster.
#[derive(Debug, Clone)]
pub struct KubeconfigConfig {
    /// The kubeconfig (its current context is used).
    pub path: PathBuf,
    /// Folder holding kubectl (default `cache_dir()/kubernetes/bin`).
    pub bin_dir: PathBuf,
    /// The API server's address as the guest sees it.
    pub guest_addr: String,
}

impl KubeconfigConfig {
    /// Defaults for everything but the kubeconfig.
    pub fn new(path: PathBuf) -> KubeconfigConfig {
        KubeconfigConfig {
            path,
            bin_dir: crate::cache_dir().join("kubernetes/bin"),
            guest_addr: GUEST_API_ADDR.into(),
        }
    }
}

/// The loopback port of an `https://127.0.0.1:PORT` (or localhost) server URL.
pub fn loopback_port(server: &str) -> Option<u16> {
    let rest = server.strip_prefix("https://")?.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    match host {
        "127.0.0.1" | "localhost" | "[::1]" => port.parse().ok(),
        _ => None,
    }
}

/// Reads the kubeconfig's current cluster (server, CA) through kubectl.
pub fn attach(config: &KubeconfigConfig) -> Result<ControlPlane, ClusterError> {
    let bad = |reason: String| ClusterError::BadKubeconfig {
        path: config.path.clone(),
        reason,
    };
    std::fs::File::open(&config.path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let kubectl = Kubectl::new(&config.bin_dir, &config.path, PROVIDER)?;
    let view = kubectl
        .json(&["config", "view", "--raw", "--minify"])
        .map_err(|e| bad(e.to_string()))?;
    let cluster = &view["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .ok_or_else(|| bad("its current context names no cluster server".into()))?
        .to_string();
    let ca_pem = if let Some(data) = cluster["certificate-authority-data"].as_str() {
        let bytes = Base64::decode_vec(data.trim())
            .map_err(|e| bad(format!("certificate-authority-data is not base64: {e}")))?;
        String::from_utf8(bytes).map_err(|_| bad("certificate-authority-data is not PEM".into()))?
    } else if let Some(file) = cluster["certificate-authority"].as_str() {
        std::fs::read_to_string(file)
            .map_err(|e| bad(format!("certificate-authority {file}: {e}")))?
    } else {
        return Err(bad("its cluster has no certificate authority".into()));
    };
    let ca_hash = ca_cert_hash(&ca_pem).map_err(|e| bad(e.to_string()))?;
    let port = loopback_port(&server).ok_or(ClusterError::NotLoopback {
        provider: PROVIDER,
        server: server.clone(),
    })?;
    // The credentials work and the API answers.
    kubectl.run(&["get", "--raw", "/readyz"])?;
    Ok(ControlPlane {
        provider: PROVIDER,
        kubectl,
        host_port: port,
        guest_endpoint: format!("{}:{port}", config.guest_addr),
        ca_pem,
        ca_hash,
        teardown: Teardown::Nothing,
        _state: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_servers_can_be_forwarded() {
        assert_eq!(loopback_port("https://127.0.0.1:6443"), Some(6443));
        assert_eq!(loopback_port("https://localhost:34567/"), Some(34567));
        assert_eq!(loopback_port("https://10.1.2.3:6443"), None);
        assert_eq!(loopback_port("http://127.0.0.1:8080"), None);
    }
}
