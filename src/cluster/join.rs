//! Joining a booted node: checks that fail fast on the host (token, CA pin, node name,
//! cluster-info), a reachability probe from the VM, the image's [`JoinMethod`] over SSH,
//! then waiting for the Node to register and become Ready. [`JoinedNode`] deletes the
//! Node object on drop.

use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding};

use super::token::{check_cluster_info, BootstrapToken};
use super::{last_lines, ClusterError, ControlPlane, Kubectl};
use crate::ssh::{shell_quote as quote, SshError, SshSession};
use crate::wait::{wait_until, Poll, WaitError};

/// How an image joins a cluster (from its profile).
///
/// The bootstrap token never appears on a command line in the guest (where `ps` and
/// sudo's journal entries would show it): kubeadm reads it from a JoinConfiguration
/// file, a script from an environment file, the kubelet from its bootstrap kubeconfig;
/// each is uploaded with mode 0600 and removed after use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinMethod {
    /// `kubeadm join --config FILE`, the file naming the endpoint, the token and the CA
    /// pin (`discovery.bootstrapToken`).
    Kubeadm {
        /// kubeadm preflight checks the image knowingly fails (`ignorePreflightErrors`),
        /// e.g. `FileExisting-crictl` on an image without crictl.
        ignore_preflight_errors: Vec<String>,
    },
    /// Write a bootstrap kubeconfig to `path` and restart the kubelet's `unit` (the
    /// kubelet is preconfigured in the image; the node name is the guest's hostname).
    BootstrapKubeconfig {
        /// Where the kubelet reads its bootstrap kubeconfig.
        path: String,
        /// The kubelet's systemd unit (the profile's `services.kubelet`).
        unit: String,
    },
    /// Run a vendor script with `NODEGATE_API_SERVER`, `NODEGATE_TOKEN`,
    /// `NODEGATE_CA_CERT_HASH`, `NODEGATE_CA_FILE` and `NODEGATE_NODE_NAME` in its
    /// environment (read from an uploaded file, not passed on the command line).
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
    /// The kubeadm version on the node (`v1.20.2`), which decides the JoinConfiguration
    /// API version; `None`: v1beta2, which kubeadm 1.15 to 1.25 read.
    pub kubeadm_version: Option<String>,
    /// What this node's kubelet must be told to match its image (its profile's
    /// `[kubelet]`), whatever the cluster's shared kubelet configuration says.
    pub kubelet: KubeletSettings,
}

/// Kubelet settings that belong to the node's image, not to the cluster: given to the
/// node's kubelet as flags when it joins (kubeadm's `kubeletExtraArgs`, which override
/// the cluster's kubelet-config ConfigMap; `NODEGATE_KUBELET_*` for a join script). A
/// pool that mixes images mixes these. Values were validated by the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeletSettings {
    /// `cgroupfs` or `systemd`: must match the image's container runtime.
    pub cgroup_driver: Option<String>,
    /// The CRI socket (`unix:///run/containerd/containerd.sock`).
    pub container_runtime_endpoint: Option<String>,
    /// The resolv.conf the kubelet gives pods (`/run/systemd/resolve/resolv.conf` on
    /// an image with systemd-resolved).
    pub resolv_conf: Option<String>,
}

impl KubeletSettings {
    /// The settings as kubelet flags: (flag name, value), in a fixed order.
    pub fn flags(&self) -> Vec<(&'static str, &str)> {
        [
            ("cgroup-driver", &self.cgroup_driver),
            (
                "container-runtime-endpoint",
                &self.container_runtime_endpoint,
            ),
            ("resolv-conf", &self.resolv_conf),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
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
            kubelet: KubeletSettings::default(),
            kubeadm_version: None,
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
/// Where kubeadm's JoinConfiguration (with the token) is uploaded.
const KUBEADM_UPLOAD: &str = "/tmp/nodegate-join.yaml";
/// Where a join script's environment (with the token) is uploaded.
const ENV_UPLOAD: &str = "/tmp/nodegate-join.env";

/// The JoinConfiguration API version kubeadm `version` reads: v1beta2 up to 1.21
/// (and without a version), v1beta3 from 1.22 (v1beta2 was removed in 1.26).
pub fn kubeadm_api(version: Option<&str>) -> &'static str {
    let minor = version
        .and_then(|v| v.trim_start_matches('v').split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= 22 => "kubeadm.k8s.io/v1beta3",
        _ => "kubeadm.k8s.io/v1beta2",
    }
}

/// A JSON string literal (valid YAML too) of `s`.
fn yaml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// kubeadm's JoinConfiguration for a token join.
pub fn kubeadm_join_config(
    api: &str,
    endpoint: &str,
    token: &str,
    pin: &str,
    node: &str,
    ignore_preflight_errors: &[String],
    kubelet: &KubeletSettings,
) -> String {
    let ignored: Vec<String> = ignore_preflight_errors
        .iter()
        .map(|e| yaml_str(e))
        .collect();
    let flags = kubelet.flags();
    let extra = if flags.is_empty() {
        String::new()
    } else {
        let args: Vec<String> = flags
            .iter()
            .map(|(k, v)| format!("{}: {}", yaml_str(k), yaml_str(v)))
            .collect();
        format!("  kubeletExtraArgs: {{{}}}\n", args.join(", "))
    };
    format!(
        "apiVersion: {api}\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: {}\n    token: {}\n    caCertHashes: [{}]\nnodeRegistration:\n  name: {}\n  ignorePreflightErrors: [{}]\n{extra}",
        yaml_str(endpoint),
        yaml_str(token),
        yaml_str(pin),
        yaml_str(node),
        ignored.join(", ")
    )
}

/// A join script's environment file: `NAME='value'` lines for `sh`'s `.`.
pub fn script_env(
    endpoint: &str,
    token: &str,
    pin: &str,
    node: &str,
    kubelet: &KubeletSettings,
) -> String {
    let mut vars = vec![
        (
            "NODEGATE_API_SERVER".to_string(),
            format!("https://{endpoint}"),
        ),
        ("NODEGATE_TOKEN".into(), token.to_string()),
        ("NODEGATE_CA_CERT_HASH".into(), pin.to_string()),
        ("NODEGATE_CA_FILE".into(), CA_UPLOAD.to_string()),
        ("NODEGATE_NODE_NAME".into(), node.to_string()),
    ];
    for (flag, value) in kubelet.flags() {
        let name = format!("NODEGATE_KUBELET_{}", flag.replace('-', "_").to_uppercase());
        vars.push((name, value.to_string()));
    }
    vars.iter()
        .map(|(k, v)| format!("{k}={}\n", quote(v)))
        .collect()
}

/// The shell command that joins the node with `method`, once its files are uploaded:
/// it names files only, never the token.
pub fn node_command(method: &JoinMethod) -> String {
    match method {
        JoinMethod::Kubeadm { .. } => format!(
            "sudo kubeadm join --config {KUBEADM_UPLOAD}; s=$?; rm -f {KUBEADM_UPLOAD}; exit $s"
        ),
        JoinMethod::BootstrapKubeconfig { path, unit } => format!(
            "sudo install -D -m 0600 {BOOTSTRAP_UPLOAD} {} && rm -f {BOOTSTRAP_UPLOAD} && sudo systemctl restart {}",
            quote(path),
            quote(unit)
        ),
        JoinMethod::Script { path } => format!(
            "sudo sh -c 'set -a; . {ENV_UPLOAD}; set +a; rm -f {ENV_UPLOAD}; exec \"$0\"' {}",
            quote(path)
        ),
    }
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
    // The whole join, discovery and reachability included, fits in the budget.
    let deadline = Instant::now() + config.budget;
    let left = || deadline.saturating_duration_since(Instant::now());
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
        config.signed_timeout.min(left()),
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

    probe_from_vm(ssh, &endpoint, config.reach_timeout.min(left()))?;

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
        JoinMethod::Kubeadm {
            ignore_preflight_errors,
        } => {
            let api = kubeadm_api(config.kubeadm_version.as_deref());
            let yaml = kubeadm_join_config(
                api,
                &endpoint,
                &tok,
                &pin,
                node,
                ignore_preflight_errors,
                &config.kubelet,
            );
            ssh.upload_bytes(yaml.as_bytes(), KUBEADM_UPLOAD, 0o600)?
        }
        JoinMethod::BootstrapKubeconfig { .. } => {
            let kubeconfig = bootstrap_kubeconfig(&server, &cp.ca_pem, &tok);
            ssh.upload_bytes(kubeconfig.as_bytes(), BOOTSTRAP_UPLOAD, 0o600)?
        }
        JoinMethod::Script { .. } => {
            ssh.upload_bytes(cp.ca_pem.as_bytes(), CA_UPLOAD, 0o644)?;
            let env = script_env(&endpoint, &tok, &pin, node, &config.kubelet);
            ssh.upload_bytes(env.as_bytes(), ENV_UPLOAD, 0o600)?
        }
    }
    let command = node_command(&config.method);
    let out = ssh.exec(&command, left()).map_err(|e| match e {
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

    let remaining = left;
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
    fn node_commands_name_files_never_the_token() {
        let token = "abcdef.0123456789abcdef";
        let pin = format!("sha256:{}", "a".repeat(64));
        for m in [
            JoinMethod::kubeadm(),
            JoinMethod::BootstrapKubeconfig {
                path: "/etc/kubernetes/bootstrap-kubelet.conf".into(),
                unit: "kubelet.service".into(),
            },
            JoinMethod::Script {
                path: "/opt/vendor/join.sh".into(),
            },
        ] {
            let c = node_command(&m);
            assert!(!c.contains("0123456789abcdef"), "{c}");
        }
        assert_eq!(
            node_command(&JoinMethod::kubeadm()),
            "sudo kubeadm join --config /tmp/nodegate-join.yaml; s=$?; rm -f /tmp/nodegate-join.yaml; exit $s"
        );
        let y = kubeadm_join_config(
            kubeadm_api(Some("v1.20.2")),
            "10.0.2.100:6443",
            token,
            &pin,
            "n1",
            &["FileExisting-crictl".into()],
            &KubeletSettings::default(),
        );
        assert!(
            y.starts_with("apiVersion: kubeadm.k8s.io/v1beta2\nkind: JoinConfiguration\n"),
            "{y}"
        );
        assert!(
            y.contains("    token: \"abcdef.0123456789abcdef\"\n"),
            "{y}"
        );
        assert!(
            y.contains("  ignorePreflightErrors: [\"FileExisting-crictl\"]\n"),
            "{y}"
        );
        assert!(!y.contains("kubeletExtraArgs"), "{y}");
        let kubelet = KubeletSettings {
            cgroup_driver: Some("systemd".into()),
            container_runtime_endpoint: None,
            resolv_conf: Some("/run/systemd/resolve/resolv.conf".into()),
        };
        let y = kubeadm_join_config("v", "e:1", token, &pin, "n1", &[], &kubelet);
        assert!(
            y.ends_with("  kubeletExtraArgs: {\"cgroup-driver\": \"systemd\", \"resolv-conf\": \"/run/systemd/resolve/resolv.conf\"}\n"),
            "{y}"
        );
        assert_eq!(kubeadm_api(Some("v1.29.0")), "kubeadm.k8s.io/v1beta3");
        let env = script_env("10.0.2.100:6443", token, &pin, "it's", &kubelet);
        assert!(env.contains("NODEGATE_NODE_NAME='it'\\''s'\n"), "{env}");
        assert!(
            env.ends_with("NODEGATE_KUBELET_CGROUP_DRIVER='systemd'\nNODEGATE_KUBELET_RESOLV_CONF='/run/systemd/resolve/resolv.conf'\n"),
            "{env}"
        );
        assert!(node_command(&JoinMethod::Script {
            path: "/opt/j.sh".into()
        })
        .ends_with(" '/opt/j.sh'"));
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
