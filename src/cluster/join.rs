//! Joining a booted node: checks that fail fast on the host (token, CA pin, node name,
//! cluster-info), a reachability probe from the VM, the image's [`JoinMethod`] over SSH,
//! then waiting for the Node to register and become Ready. [`JoinedNode`] deletes the
//! Node object on drop.

use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding};

use super::token::{check_cluster_info, BootstrapToken};
use super::{last_lines, ClusterError, ControlPlane, Kubectl};
use crate::ssh::{SshError, SshSession};
use crate::wait::{wait_until, Poll, WaitError};

/// How an image joins a cluster (from its profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinMethod {
    /// `kubeadm join ENDPOINT --token T --discovery-token-ca-cert-hash sha256:...`.
    Kubeadm {
        /// kubeadm preflight checks the image knowingly fails (`--ignore-preflight-errors`),
        /// e.g. `FileExisting-crictl` on an image without crictl.
        ignore_preflight_errors: Vec<String>,
    },
    /// Write a bootstrap kubeconfig to `path` and restart kubelet (the kubelet is
    /// preconfigured in the image; the node name is the guest's hostname).
    BootstrapKubeconfig {
        /// Where the kubelet reads its bootstrap kubeconfig.
        path: String,
    },
    /// Run a vendor script with `NODEGATE_API_SERVER`, `NODEGATE_TOKEN`,
    /// `NODEGATE_CA_CERT_HASH`, `NODEGATE_CA_FILE` and `NODEGATE_NODE_NAME` set.
    Script {
        /// The script's path on the node.
        path: String,
    },
}

impl JoinMethod {
    /// `kubeadm join` with every preflight check enforced.
    pub fn kubeadm() -> JoinMethod {
        JoinMethod::Kubeadm {
            ignore_preflight_errors: Vec::new(),
        }
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            JoinMethod::Kubeadm { .. } => "kubeadm",
            JoinMethod::BootstrapKubeconfig { .. } => "bootstrap-kubeconfig",
            JoinMethod::Script { .. } => "script",
        }
    }
}

/// What a join should do.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The Node's name.
    pub node_name: String,
    /// How the image joins.
    pub method: JoinMethod,
    /// From the start of the join command to Node Ready.
    pub budget: Duration,
    /// The CA hash the node must pin; default the control plane's own.
    pub ca_pin: Option<String>,
    /// The API server address the VM dials; default the control plane's guest endpoint.
    pub endpoint: Option<String>,
    /// How long the VM may take to reach the API server.
    pub reach_timeout: Duration,
    /// How long the controller manager may take to sign cluster-info for the token.
    pub signed_timeout: Duration,
}

impl JoinConfig {
    /// Defaults: a 10-minute budget, 60 s to reach the API server, 120 s for signing.
    pub fn new(node_name: &str, method: JoinMethod) -> JoinConfig {
        JoinConfig {
            node_name: node_name.into(),
            method,
            budget: Duration::from_secs(600),
            ca_pin: None,
            endpoint: None,
            reach_timeout: Duration::from_secs(60),
            signed_timeout: Duration::from_secs(120),
        }
    }
}

/// Times of one join, from the start of the join command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinTimings {
    /// The join command (or script) itself.
    pub join_command: Duration,
    /// Until the Node object exists.
    pub register: Duration,
    /// Until its Ready condition is True.
    pub ready: Duration,
}

/// A Node that joined; dropping it deletes the Node object.
#[derive(Debug)]
pub struct JoinedNode {
    kubectl: Kubectl,
    name: String,
    /// How long it took.
    pub timings: JoinTimings,
    deleted: bool,
}

impl JoinedNode {
    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the Node object now.
    pub fn delete(mut self) -> Result<(), ClusterError> {
        self.deleted = true;
        self.kubectl.delete("node", None, &self.name)
    }
}

impl Drop for JoinedNode {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.kubectl.delete("node", None, &self.name);
        }
    }
}

/// A kubeconfig that authenticates with a bootstrap token (kubelet TLS bootstrap).
pub fn bootstrap_kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = Base64::encode_string(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: nodegate\ncontexts:\n- context:\n    cluster: nodegate\n    user: tls-bootstrap-token-user\n  name: tls-bootstrap-token-user@nodegate\ncurrent-context: tls-bootstrap-token-user@nodegate\nusers:\n- name: tls-bootstrap-token-user\n  user:\n    token: {token}\n"
    )
}

/// Where the bootstrap kubeconfig is uploaded before it is installed.
const BOOTSTRAP_UPLOAD: &str = "/tmp/nodegate-bootstrap.kubeconfig";
/// Where the cluster CA is uploaded for a join script.
const CA_UPLOAD: &str = "/tmp/nodegate-ca.crt";

/// The shell command that joins the node with `method` (files already uploaded).
pub fn node_command(
    method: &JoinMethod,
    endpoint: &str,
    token: &str,
    pin: &str,
    node: &str,
) -> String {
    match method {
        JoinMethod::Kubeadm {
            ignore_preflight_errors,
        } => {
            let mut c = format!(
                "sudo kubeadm join {endpoint} --token {token} --discovery-token-ca-cert-hash {pin} --node-name {}",
                quote(node)
            );
            if !ignore_preflight_errors.is_empty() {
                c.push_str(" --ignore-preflight-errors=");
                c.push_str(&quote(&ignore_preflight_errors.join(",")));
            }
            c
        }
        JoinMethod::BootstrapKubeconfig { path } => format!(
            "sudo install -D -m 0600 {BOOTSTRAP_UPLOAD} {} && rm -f {BOOTSTRAP_UPLOAD} && sudo systemctl restart kubelet",
            quote(path)
        ),
        JoinMethod::Script { path } => format!(
            "sudo env NODEGATE_API_SERVER=https://{endpoint} NODEGATE_TOKEN={token} NODEGATE_CA_CERT_HASH={pin} NODEGATE_CA_FILE={CA_UPLOAD} NODEGATE_NODE_NAME={} {}",
            quote(node),
            quote(path)
        ),
    }
}

/// Single-quotes `s` for the guest's shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn wait_err(e: WaitError, node: &str, what: &'static str, budget: Duration) -> ClusterError {
    match e {
        WaitError::Interrupted { what } => ClusterError::Interrupted(what),
        WaitError::Timeout { last, .. } => ClusterError::NotReady {
            node: node.into(),
            what,
            budget,
            last: last.unwrap_or_else(|| "nothing seen".into()),
        },
        WaitError::Fatal { reason, .. } => ClusterError::NotReady {
            node: node.into(),
            what,
            budget,
            last: reason,
        },
    }
}

/// The Node's `Ready` condition object, if it has one.
pub fn ready_condition(node: &serde_json::Value) -> Option<&serde_json::Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Polls the Node until `judge` is satisfied, within `left`. When the last poll could not
/// reach the API server, that error is returned rather than `NotReady`: the control
/// plane failed, not the node.
fn wait_node(
    cp: &ControlPlane,
    node: &str,
    what: &'static str,
    budget: Duration,
    left: Duration,
    judge: impl Fn(Option<&serde_json::Value>) -> Poll<()>,
) -> Result<(), ClusterError> {
    let mut api_error = None;
    let r = wait_until(
        format!("node {node} {what}"),
        left,
        Duration::from_secs(2),
        || match cp.kubectl.get("node", None, node) {
            Ok(n) => {
                api_error = None;
                judge(n.as_ref())
            }
            Err(e) => {
                let msg = e.to_string();
                api_error = Some(e);
                Poll::Pending(msg)
            }
        },
    );
    match (r, api_error) {
        (Ok(()), _) => Ok(()),
        (Err(WaitError::Timeout { .. }), Some(e)) => Err(e),
        (Err(e), _) => Err(wait_err(e, node, what, budget)),
    }
}

/// Checks what can be checked on the host: the token is live and known, the CA pin
/// matches the cluster CA, no Node has this name yet.
pub fn preflight(
    cp: &ControlPlane,
    token: &BootstrapToken,
    config: &JoinConfig,
) -> Result<(), ClusterError> {
    token.check(&cp.kubectl)?;
    if let Some(pin) = &config.ca_pin {
        if *pin != cp.ca_hash {
            return Err(ClusterError::CaHashMismatch {
                expected: pin.clone(),
                actual: cp.ca_hash.clone(),
            });
        }
    }
    if cp.kubectl.get("node", None, &config.node_name)?.is_some() {
        return Err(ClusterError::NodeExists {
            node: config.node_name.clone(),
        });
    }
    Ok(())
}

/// Probes `https://ENDPOINT/version` from the VM until any HTTP answer (401 counts).
pub fn probe_from_vm(
    ssh: &mut SshSession,
    endpoint: &str,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let cmd = format!(
        "curl -sk -o /dev/null -w '%{{http_code}}' --connect-timeout 5 --max-time 10 https://{endpoint}/version"
    );
    let mut ssh_error = None;
    let r = wait_until(
        format!("https://{endpoint} from the VM"),
        timeout,
        Duration::from_secs(2),
        || match ssh.exec(&cmd, Duration::from_secs(30)) {
            Ok(o) if o.stdout.trim() != "000" && !o.stdout.trim().is_empty() => Poll::Ready(()),
            Ok(o) => Poll::Pending(format!(
                "curl exit {}{}",
                o.status,
                match o.status {
                    7 => " (connection refused or cut)",
                    28 => " (timed out)",
                    35 => " (TLS handshake failed)",
                    _ => "",
                }
            )),
            Err(e) => {
                let msg = e.to_string();
                ssh_error = Some(e);
                Poll::Fatal(msg)
            }
        },
    );
    match r {
        Ok(()) => Ok(()),
        Err(_) if ssh_error.is_some() => Err(ssh_error.take().expect("set").into()),
        Err(WaitError::Interrupted { what }) => Err(ClusterError::Interrupted(what)),
        Err(WaitError::Timeout { last, .. }) => Err(ClusterError::Unreachable {
            addr: endpoint.into(),
            detail: last.unwrap_or_default(),
        }),
        Err(WaitError::Fatal { reason, .. }) => Err(ClusterError::Unreachable {
            addr: endpoint.into(),
            detail: reason,
        }),
    }
}

/// Joins the node behind `ssh` to `cp` with `token`; returns once the Node is Ready.
pub fn join(
    cp: &ControlPlane,
    token: &BootstrapToken,
    ssh: &mut SshSession,
    config: &JoinConfig,
) -> Result<JoinedNode, ClusterError> {
    let node = config.node_name.as_str();
    preflight(cp, token, config)?;
    let endpoint = config
        .endpoint
        .clone()
        .unwrap_or_else(|| cp.guest_endpoint.clone());
    let server = format!("https://{endpoint}");
    // What the cluster tells the node after discovery: the provider's guest endpoint.
    let discovered = cp.guest_server();
    let pin = config.ca_pin.clone().unwrap_or_else(|| cp.ca_hash.clone());

    // Discovery needs cluster-info to name the guest's server and carry the token's
    // signature (the controller manager's bootstrapsigner adds it within seconds).
    wait_until(
        format!("cluster-info signed for token {}", token.token().id()),
        config.signed_timeout,
        Duration::from_secs(1),
        || match cp
            .kubectl
            .get("configmap", Some("kube-public"), "cluster-info")
        {
            Ok(Some(cm)) => match check_cluster_info(&cm, token.token(), &discovered) {
                Ok(()) => Poll::Ready(()),
                Err(e) => Poll::Pending(e),
            },
            Ok(None) => Poll::Pending("no ConfigMap kube-public/cluster-info".into()),
            Err(e) => Poll::Pending(e.to_string()),
        },
    )
    .map_err(|e| match e {
        WaitError::Interrupted { what } => ClusterError::Interrupted(what),
        WaitError::Timeout { last, .. } => ClusterError::ClusterInfo(last.unwrap_or_default()),
        WaitError::Fatal { reason, .. } => ClusterError::ClusterInfo(reason),
    })?;

    probe_from_vm(ssh, &endpoint, config.reach_timeout)?;

    let start = Instant::now();
    let mut joined = JoinedNode {
        kubectl: cp.kubectl.clone(),
        name: node.into(),
        timings: JoinTimings {
            join_command: Duration::ZERO,
            register: Duration::ZERO,
            ready: Duration::ZERO,
        },
        deleted: false,
    };
    let tok = token.token().to_string();
    match &config.method {
        JoinMethod::Kubeadm { .. } => {}
        JoinMethod::BootstrapKubeconfig { .. } => {
            let kubeconfig = bootstrap_kubeconfig(&server, &cp.ca_pem, &tok);
            ssh.upload_bytes(kubeconfig.as_bytes(), BOOTSTRAP_UPLOAD, 0o600)?
        }
        JoinMethod::Script { .. } => ssh.upload_bytes(cp.ca_pem.as_bytes(), CA_UPLOAD, 0o644)?,
    }
    let command = node_command(&config.method, &endpoint, &tok, &pin, node);
    let out = ssh.exec(&command, config.budget).map_err(|e| match e {
        SshError::Timeout { partial, .. } => ClusterError::JoinTimedOut {
            node: node.into(),
            method: config.method.name(),
            budget: config.budget,
            partial: last_lines(&partial, 2),
        },
        e => e.into(),
    })?;
    if !out.success() {
        let text = format!("{}\n{}", out.stdout, out.stderr);
        if text.contains("none of the public keys") {
            return Err(ClusterError::CaHashMismatch {
                expected: pin,
                actual: format!(
                    "the CA in {endpoint}'s cluster-info ({})",
                    last_lines(&text, 1)
                ),
            });
        }
        return Err(ClusterError::JoinFailed {
            node: node.into(),
            method: config.method.name(),
            status: out.status,
            output: last_lines(&text, 3),
        });
    }
    joined.timings.join_command = start.elapsed();

    let remaining = || config.budget.saturating_sub(start.elapsed());
    wait_node(
        cp,
        node,
        "registered",
        config.budget,
        remaining(),
        |n| match n {
            Some(_) => Poll::Ready(()),
            None => Poll::Pending("no Node object yet".into()),
        },
    )?;
    joined.timings.register = start.elapsed();
    wait_node(cp, node, "Ready", config.budget, remaining(), |n| {
        let Some(n) = n else {
            return Poll::Pending("Node object gone".into());
        };
        match ready_condition(n) {
            Some(c) if c["status"] == "True" => Poll::Ready(()),
            Some(c) => Poll::Pending(format!(
                "Ready={} ({})",
                c["status"].as_str().unwrap_or("?"),
                c["message"].as_str().unwrap_or("")
            )),
            None => Poll::Pending("no Ready condition yet".into()),
        }
    })?;
    joined.timings.ready = start.elapsed();
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_kubeconfig_carries_server_ca_and_token() {
        let k = bootstrap_kubeconfig("https://10.0.2.100:6443", "PEM", "abcdef.0123456789abcdef");
        assert!(k.contains("    server: https://10.0.2.100:6443\n"));
        assert!(k.contains("certificate-authority-data: UEVN\n"));
        assert!(k.contains("    token: abcdef.0123456789abcdef\n"));
    }

    #[test]
    fn node_commands_per_method() {
        let pin = format!("sha256:{}", "a".repeat(64));
        let c = node_command(
            &JoinMethod::kubeadm(),
            "10.0.2.100:6443",
            "abcdef.0123456789abcdef",
            &pin,
            "n1",
        );
        assert_eq!(
            c,
            format!("sudo kubeadm join 10.0.2.100:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {pin} --node-name 'n1'")
        );
        let m = JoinMethod::Kubeadm {
            ignore_preflight_errors: vec!["FileExisting-crictl".into(), "Swap".into()],
        };
        let c = node_command(&m, "10.0.2.100:6443", "t", &pin, "n1");
        assert!(
            c.ends_with(" --node-name 'n1' --ignore-preflight-errors='FileExisting-crictl,Swap'"),
            "{c}"
        );
        let m = JoinMethod::BootstrapKubeconfig {
            path: "/etc/kubernetes/bootstrap-kubelet.conf".into(),
        };
        let c = node_command(&m, "10.0.2.100:6443", "t", &pin, "n1");
        assert_eq!(c, "sudo install -D -m 0600 /tmp/nodegate-bootstrap.kubeconfig '/etc/kubernetes/bootstrap-kubelet.conf' && rm -f /tmp/nodegate-bootstrap.kubeconfig && sudo systemctl restart kubelet");
        let m = JoinMethod::Script {
            path: "/opt/vendor/join.sh".into(),
        };
        let c = node_command(&m, "10.0.2.100:6443", "t", &pin, "n1");
        assert_eq!(c, format!("sudo env NODEGATE_API_SERVER=https://10.0.2.100:6443 NODEGATE_TOKEN=t NODEGATE_CA_CERT_HASH={pin} NODEGATE_CA_FILE=/tmp/nodegate-ca.crt NODEGATE_NODE_NAME='n1' '/opt/vendor/join.sh'"));
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
