//! The local provider: a real control plane as host processes on loopback (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler), like upstream
//! `hack/local-up-cluster.sh`, prepared with kubeadm phases for `kubeadm join` from a QEMU
//! user-networking guest. A port of `fixtures/controlplane/up`; see docs/cluster.md.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::kubectl::{run_command, set_server};
use super::provider::{ControlPlane, ProviderKind, Teardown};
use super::{ca_cert_hash, is_executable, last_lines, ClusterError, Kubectl, GUEST_API_ADDR};
use crate::network::Dialer;
use crate::process::ProcessGroup;
use crate::wait::{wait_until, Poll, WaitError};

/// The binaries the local provider runs.
pub const BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubeadm",
    "kubectl",
];

const PROVIDER: ProviderKind = ProviderKind::Local;
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// kubeadm's upload-config phase polls for its own node for 2 minutes; a placeholder
/// Node, deleted afterwards, makes it finish at once.
const PLACEHOLDER_NODE: &str = "nodegate-upload-config-placeholder";

/// How to run the local control plane.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Folder with etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    /// kubeadm and kubectl (default `cache_dir()/kubernetes/bin`).
    pub bin_dir: PathBuf,
    /// State folder (PKI, etcd data, logs); default a temporary folder removed on drop.
    pub state_dir: Option<PathBuf>,
    /// kube-apiserver port on 127.0.0.1; default a free one.
    pub apiserver_port: Option<u16>,
    /// etcd client port; default a free one.
    pub etcd_port: Option<u16>,
    /// etcd peer port; default a free one.
    pub etcd_peer_port: Option<u16>,
    /// The API server's address as the guest sees it (certificates, cluster-info).
    pub guest_addr: String,
    /// Budget for the whole start-up.
    pub startup_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace per component on teardown.
    pub grace: Duration,
    /// Where the components run: on host loopback, or inside the run's namespace, where
    /// the API server listens on every address of the run's bridge (so it reaches each
    /// kubelet and each node reaches it) and etcd on the namespace's loopback only.
    pub dialer: Dialer,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            bin_dir: crate::cache_dir().join("kubernetes/bin"),
            state_dir: None,
            apiserver_port: None,
            etcd_port: None,
            etcd_peer_port: None,
            guest_addr: GUEST_API_ADDR.into(),
            startup_timeout: Duration::from_secs(240),
            grace: Duration::from_secs(10),
            dialer: Dialer::Host,
        }
    }
}

/// Lists the binaries missing from `dir`.
pub fn check_bin_dir(dir: &Path) -> Result<(), ClusterError> {
    let missing: Vec<String> = BINARIES
        .iter()
        .filter(|b| !is_executable(&dir.join(b)))
        .map(|b| b.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::IncompleteBinDir {
            dir: dir.to_owned(),
            missing,
        })
    }
}

fn pick_port(fixed: Option<u16>, taken: &[u16]) -> Result<u16, ClusterError> {
    if let Some(p) = fixed {
        return TcpListener::bind((Ipv4Addr::LOCALHOST, p))
            .map(|_| p)
            .map_err(|_| ClusterError::PortInUse {
                provider: PROVIDER,
                port: p,
            });
    }
    for _ in 0..20 {
        let p = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| ClusterError::Io {
                path: "127.0.0.1:0".into(),
                source: e,
            })?;
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
    Err(ClusterError::PortInUse {
        provider: PROVIDER,
        port: 0,
    })
}

/// The state folder and what is known while starting.
struct Start<'a> {
    config: &'a LocalConfig,
    logs: PathBuf,
    pki: PathBuf,
    deadline: Instant,
    groups: Vec<ProcessGroup>,
}

impl Start<'_> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
        move |source| ClusterError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.config.bin_dir.join(name)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    fn tail(&self, name: &str) -> Vec<String> {
        let text = fs::read_to_string(self.log(name)).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[lines.len().saturating_sub(5)..].to_vec()
    }

    fn component_error(&self, name: &str, reason: String) -> ClusterError {
        ClusterError::Component {
            component: name.into(),
            reason,
            log: self.log(name),
            tail: self.tail(name),
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A one-shot command within the start-up deadline, its output appended to
    /// logs/LOG.log.
    fn run_logged(&self, log: &str, cmd: &mut Command) -> Result<(), ClusterError> {
        let path = self.log(log);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Self::io(&path))?;
        use std::io::Write;
        let _ = writeln!(f, "+ {cmd:?}");
        self.config.dialer.command(cmd);
        let args: Vec<String> = cmd
            .get_args()
            .take(4)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let out = match crate::process::run_bounded(cmd, None, self.remaining()) {
            Ok(o) => o,
            Err(crate::process::CommandError::Interrupted { program }) => {
                return Err(ClusterError::Interrupted(program))
            }
            Err(e) => return Err(self.component_error(log, e.to_string())),
        };
        let _ = f.write_all(&out.stdout);
        let _ = f.write_all(&out.stderr);
        if !out.status.success() {
            return Err(self.component_error(
                log,
                format!("`{log} {}` failed ({})", args.join(" "), out.status),
            ));
        }
        Ok(())
    }

    /// Starts a component in its own process group, output to logs/NAME.log.
    fn spawn(&mut self, name: &str, args: &[String]) -> Result<(), ClusterError> {
        let path = self.log(name);
        let log = fs::File::create(&path).map_err(Self::io(&path))?;
        let mut cmd = Command::new(self.bin(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(Self::io(&path))?)
            .stderr(log);
        self.config.dialer.command(&mut cmd);
        let group = ProcessGroup::spawn(name, &mut cmd)
            .map_err(|e| self.component_error(name, format!("cannot start: {e}")))?
            .with_grace(self.config.grace);
        self.groups.push(group);
        Ok(())
    }

    /// Waits for `probe` while component `name` (the last started of that name) runs.
    fn wait_for(
        &mut self,
        name: &str,
        what: &str,
        mut probe: impl FnMut() -> Result<(), String>,
    ) -> Result<(), ClusterError> {
        let idx = self
            .groups
            .iter()
            .rposition(|g| g.name() == name)
            .expect("component was started");
        let timeout = self.remaining();
        let groups = &mut self.groups;
        let r = wait_until(
            format!("{name}: {what}"),
            timeout,
            Duration::from_millis(500),
            || {
                if let Ok(Some(status)) = groups[idx].try_status() {
                    return Poll::Fatal(format!("exited ({status})"));
                }
                match probe() {
                    Ok(()) => Poll::Ready(()),
                    Err(e) => Poll::Pending(e),
                }
            },
        );
        match r {
            Ok(()) => Ok(()),
            Err(WaitError::Interrupted { what }) => Err(ClusterError::Interrupted(what)),
            Err(WaitError::Fatal { reason, .. }) => {
                Err(self.component_error(name, format!("{reason} while waiting for {what}")))
            }
            Err(WaitError::Timeout { waited, last, .. }) => Err(self.component_error(
                name,
                format!(
                    "{what} not reached within {waited:?} (last check: {})",
                    last.unwrap_or_default()
                ),
            )),
        }
    }
}

/// Starts the control plane; on failure everything started so far is stopped.
pub fn start(config: &LocalConfig) -> Result<ControlPlane, ClusterError> {
    check_bin_dir(&config.bin_dir)?;
    // The run's namespace is empty: the standard ports are free there.
    let (port, etcd_port, etcd_peer_port) = if config.dialer.is_namespace() {
        (
            config.apiserver_port.unwrap_or(6443),
            config.etcd_port.unwrap_or(2379),
            config.etcd_peer_port.unwrap_or(2380),
        )
    } else {
        let port = pick_port(config.apiserver_port, &[])?;
        let etcd_port = pick_port(config.etcd_port, &[port])?;
        (
            port,
            etcd_port,
            pick_port(config.etcd_peer_port, &[port, etcd_port])?,
        )
    };
    if port == etcd_port || port == etcd_peer_port || etcd_port == etcd_peer_port {
        return Err(ClusterError::PortInUse {
            provider: PROVIDER,
            port: etcd_port,
        });
    }
    let (temp, state) = match &config.state_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("nodegate-cp-")
                .tempdir()
                .map_err(Start::io(Path::new("/tmp")))?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    // Fresh state: only what this provider writes.
    for d in ["pki", "etcd", "logs"] {
        let _ = fs::remove_dir_all(state.join(d));
    }
    fs::create_dir_all(state.join("logs")).map_err(Start::io(&state))?;
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).map_err(Start::io(&state))?;
    let mut s = Start {
        config,
        logs: state.join("logs"),
        pki: state.join("pki"),
        deadline: Instant::now() + config.startup_timeout,
        groups: Vec::new(),
    };
    let guest = &config.guest_addr;
    let admin = state.join("admin.conf");

    // --- PKI and kubeconfigs (kubeadm phases) ---
    let kver = run_command(
        PROVIDER,
        Command::new(s.bin("kubeadm")).args(["version", "-o", "short"]),
        None,
    )?
    .trim()
    .to_string();
    let minor = kver
        .strip_prefix('v')
        .and_then(|v| {
            let mut it = v.split('.');
            Some(format!("{}.{}", it.next()?, it.next()?))
        })
        .ok_or_else(|| ClusterError::Unexpected {
            provider: PROVIDER,
            command: "kubeadm version -o short".into(),
            detail: kver.clone(),
        })?;
    let kubeadm_yaml = state.join("kubeadm.yaml");
    fs::write(
        &kubeadm_yaml,
        kubeadm_config(&kver, guest, port, &s.pki, &state.join("etcd")),
    )
    .map_err(Start::io(&kubeadm_yaml))?;
    let cfg = kubeadm_yaml.as_os_str();
    s.run_logged(
        "kubeadm",
        Command::new(s.bin("kubeadm"))
            .args(["init", "phase", "certs", "all", "--config"])
            .arg(cfg),
    )?;
    s.run_logged(
        "kubeadm",
        Command::new(s.bin("kubeadm"))
            .args(["init", "phase", "kubeconfig", "all", "--config"])
            .arg(cfg)
            .arg("--kubeconfig-dir")
            .arg(&state),
    )?;
    // All host-side clients dial loopback, whatever kubeadm derived.
    for f in ["admin", "controller-manager", "scheduler"] {
        let p = state.join(format!("{f}.conf"));
        let text = fs::read_to_string(&p).map_err(Start::io(&p))?;
        fs::write(&p, set_server(&text, &format!("https://127.0.0.1:{port}")))
            .map_err(Start::io(&p))?;
    }
    let _ = fs::remove_file(state.join("kubelet.conf")); // the placeholder node's
    let mut kubectl = Kubectl::new(&config.bin_dir, &admin, PROVIDER)?;
    kubectl.dialer = config.dialer.clone();

    // --- etcd ---
    let pki = s.pki.display().to_string();
    let etcd_url = format!("https://127.0.0.1:{etcd_port}");
    let peer_url = format!("https://127.0.0.1:{etcd_peer_port}");
    s.spawn(
        "etcd",
        &[
            "--name=nodegate".into(),
            format!("--data-dir={}", state.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=nodegate={peer_url}"),
            "--initial-cluster-state=new".into(),
            format!("--cert-file={pki}/etcd/server.crt"),
            format!("--key-file={pki}/etcd/server.key"),
            "--client-cert-auth=true".into(),
            format!("--trusted-ca-file={pki}/etcd/ca.crt"),
            format!("--peer-cert-file={pki}/etcd/peer.crt"),
            format!("--peer-key-file={pki}/etcd/peer.key"),
            "--peer-client-cert-auth=true".into(),
            format!("--peer-trusted-ca-file={pki}/etcd/ca.crt"),
            "--snapshot-count=10000".into(),
        ],
    )?;
    // etcd's health is part of the API server's /readyz; here: its client port listens.
    s.wait_for("etcd", &format!("{etcd_url} to listen"), || {
        config
            .dialer
            .connect(
                (Ipv4Addr::LOCALHOST, etcd_port).into(),
                Duration::from_secs(2),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;

    // --- kube-apiserver ---
    s.spawn(
        "kube-apiserver",
        &[
            if config.dialer.is_namespace() {
                "--bind-address=0.0.0.0".into()
            } else {
                "--bind-address=127.0.0.1".into()
            },
            format!("--secure-port={port}"),
            "--insecure-port=0".into(),
            format!("--advertise-address={guest}"),
            "--allow-privileged=true".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--enable-bootstrap-token-auth=true".into(),
            format!("--client-ca-file={pki}/ca.crt"),
            format!("--tls-cert-file={pki}/apiserver.crt"),
            format!("--tls-private-key-file={pki}/apiserver.key"),
            format!("--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt"),
            format!("--kubelet-client-key={pki}/apiserver-kubelet-client.key"),
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
            format!("--etcd-servers={etcd_url}"),
            format!("--etcd-cafile={pki}/etcd/ca.crt"),
            format!("--etcd-certfile={pki}/apiserver-etcd-client.crt"),
            format!("--etcd-keyfile={pki}/apiserver-etcd-client.key"),
            format!("--proxy-client-cert-file={pki}/front-proxy-client.crt"),
            format!("--proxy-client-key-file={pki}/front-proxy-client.key"),
            format!("--requestheader-client-ca-file={pki}/front-proxy-ca.crt"),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={pki}/sa.pub"),
            format!("--service-account-signing-key-file={pki}/sa.key"),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        ],
    )?;
    let k = kubectl.clone();
    s.wait_for(
        "kube-apiserver",
        &format!("/readyz on https://127.0.0.1:{port}"),
        || match k.run(&["get", "--raw", "/readyz"]) {
            Ok(out) if out.trim() == "ok" => Ok(()),
            Ok(out) => Err(last_lines(&out, 1)),
            Err(e) => {
                // The failing checks, if the server answers at all.
                let verbose = k
                    .run(&["get", "--raw", "/readyz?verbose"])
                    .unwrap_or_default();
                let bad: Vec<&str> = verbose.lines().filter(|l| l.starts_with("[-]")).collect();
                Err(if bad.is_empty() {
                    e.to_string()
                } else {
                    bad.join(" ")
                })
            }
        },
    )?;

    // --- kube-controller-manager, kube-scheduler ---
    s.spawn(
        "kube-controller-manager",
        &[
            format!(
                "--kubeconfig={}",
                state.join("controller-manager.conf").display()
            ),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--leader-elect=true".into(),
            "--leader-elect-resource-lock=leases".into(),
            "--controllers=*,bootstrapsigner,tokencleaner".into(),
            "--use-service-account-credentials=true".into(),
            "--cluster-name=nodegate".into(),
            format!("--client-ca-file={pki}/ca.crt"),
            format!("--requestheader-client-ca-file={pki}/front-proxy-ca.crt"),
            format!("--root-ca-file={pki}/ca.crt"),
            format!("--service-account-private-key-file={pki}/sa.key"),
            format!("--cluster-signing-cert-file={pki}/ca.crt"),
            format!("--cluster-signing-key-file={pki}/ca.key"),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--node-cidr-mask-size=24".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        ],
    )?;
    s.spawn(
        "kube-scheduler",
        &[
            format!("--kubeconfig={}", state.join("scheduler.conf").display()),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--leader-elect=true".into(),
            "--leader-elect-resource-lock=leases".into(),
        ],
    )?;
    for name in ["kube-controller-manager", "kube-scheduler"] {
        let k = kubectl.clone();
        s.wait_for(name, "its leader lease", || {
            let lease = k
                .get("lease", Some("kube-system"), name)
                .map_err(|e| e.to_string())?;
            match lease
                .as_ref()
                .and_then(|l| l["spec"]["holderIdentity"].as_str())
            {
                Some(h) if !h.is_empty() => Ok(()),
                _ => Err(format!("lease {name} has no holder yet")),
            }
        })?;
    }

    // --- kubeadm cluster objects ---
    let placeholder = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": PLACEHOLDER_NODE, "labels": {"kubernetes.io/hostname": PLACEHOLDER_NODE}}
    });
    kubectl.create(&placeholder)?;
    let upload = s.run_logged(
        "kubeadm",
        Command::new(s.bin("kubeadm"))
            .args(["init", "phase", "upload-config", "all", "--config"])
            .arg(cfg)
            .arg("--kubeconfig")
            .arg(&admin),
    );
    kubectl.delete("node", None, PLACEHOLDER_NODE)?;
    upload?;
    s.run_logged(
        "kubeadm",
        Command::new(s.bin("kubeadm"))
            .args(["init", "phase", "bootstrap-token", "--config"])
            .arg(cfg)
            .arg("--kubeconfig")
            .arg(&admin),
    )?;
    grant_nodes_proxier(&kubectl)?;
    let guest_server = format!("https://{guest}:{port}");
    adapt_cluster_info(&kubectl, &guest_server)?;

    // kubelet-config: clientCAFile must be the node's path (kubeadm may default it to ours).
    let kcm = format!("kubelet-config-{minor}");
    let cm = kubectl
        .get("configmap", Some("kube-system"), &kcm)?
        .ok_or_else(|| s.component_error("kubeadm", format!("no ConfigMap kube-system/{kcm}")))?;
    let kubelet = cm["data"]["kubelet"].as_str().unwrap_or_default();
    let fixed = replace_yaml_key(kubelet, "    clientCAFile:", "/etc/kubernetes/pki/ca.crt");
    if fixed != kubelet {
        kubectl.merge_patch(
            "configmap",
            "kube-system",
            &kcm,
            &json!({"data": {"kubelet": fixed}}),
        )?;
    }
    // kubeadm-config: the cluster as its nodes see it (kubeadm wrote this host's paths).
    let cm = kubectl
        .get("configmap", Some("kube-system"), "kubeadm-config")?
        .ok_or_else(|| {
            s.component_error("kubeadm", "no ConfigMap kube-system/kubeadm-config".into())
        })?;
    let cc = cm["data"]["ClusterConfiguration"]
        .as_str()
        .unwrap_or_default();
    let cc = replace_yaml_key(cc, "certificatesDir:", "/etc/kubernetes/pki");
    let cc = replace_yaml_key(&cc, "controlPlaneEndpoint:", &format!("{guest}:{port}"));
    kubectl.merge_patch(
        "configmap",
        "kube-system",
        "kubeadm-config",
        &json!({"data": {"ClusterConfiguration": cc}}),
    )?;

    let ca_path = s.pki.join("ca.crt");
    let ca_pem = fs::read_to_string(&ca_path).map_err(Start::io(&ca_path))?;
    let ca_hash = ca_cert_hash(&ca_pem)?;
    let admin_copy = state.join("admin.kubeconfig");
    fs::copy(&admin, &admin_copy).map_err(Start::io(&admin_copy))?;
    fs::set_permissions(&admin_copy, fs::Permissions::from_mode(0o600))
        .map_err(Start::io(&admin_copy))?;
    let groups = std::mem::take(&mut s.groups);
    Ok(ControlPlane {
        provider: PROVIDER,
        kubectl,
        host_port: port,
        guest_endpoint: format!("{guest}:{port}"),
        ca_pem,
        ca_hash,
        teardown: Teardown::Processes(groups),
        _state: temp,
    })
}

impl Drop for Start<'_> {
    /// A failed start stops what it started, clients first.
    fn drop(&mut self) {
        while let Some(mut g) = self.groups.pop() {
            g.terminate();
        }
    }
}

/// kube-proxy on the nodes runs with the node's own credentials (the image's unit): a
/// cluster nodegate makes grants its nodes kube-proxy's role, as a provider's control
/// plane does for the proxies it ships.
pub(crate) fn grant_nodes_proxier(kubectl: &Kubectl) -> Result<(), ClusterError> {
    kubectl.create(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "nodegate:node-proxier"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-proxier"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]
    }))?;
    Ok(())
}

/// Points the `cluster-info` ConfigMap's kubeconfig at `guest_server` (what joining nodes
/// dial after discovery).
pub(crate) fn adapt_cluster_info(
    kubectl: &Kubectl,
    guest_server: &str,
) -> Result<(), ClusterError> {
    let cm = kubectl
        .get("configmap", Some("kube-public"), "cluster-info")?
        .ok_or_else(|| ClusterError::ClusterInfo("no ConfigMap kube-public/cluster-info".into()))?;
    let content = cm["data"]["kubeconfig"].as_str().ok_or_else(|| {
        ClusterError::ClusterInfo("kube-public/cluster-info has no kubeconfig".into())
    })?;
    let patched = set_server(content, guest_server);
    if patched != content {
        kubectl.merge_patch(
            "configmap",
            "kube-public",
            "cluster-info",
            &json!({"data": {"kubeconfig": patched}}),
        )?;
    }
    Ok(())
}

/// Replaces the value of every line starting with `key` (indentation included).
fn replace_yaml_key(text: &str, key: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with(key) {
            out.push_str(&format!("{key} {value}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The kubeadm configuration of the local control plane.
fn kubeadm_config(kver: &str, guest: &str, port: u16, pki: &Path, etcd: &Path) -> String {
    format!(
        r#"apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {guest}
  bindPort: {port}
nodeRegistration:
  name: {PLACEHOLDER_NODE}
  criSocket: /run/containerd/containerd.sock
  taints: []
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: {kver}
clusterName: nodegate
certificatesDir: {pki}
controlPlaneEndpoint: 127.0.0.1:{port}
apiServer:
  certSANs: ["127.0.0.1", "{guest}", "localhost"]
etcd:
  local:
    dataDir: {etcd}
networking:
  serviceSubnet: {SERVICE_CIDR}
  podSubnet: {CLUSTER_CIDR}
  dnsDomain: cluster.local
---
# Becomes the kubelet-config-1.xx ConfigMap that joining nodes write to
# /var/lib/kubelet/config.yaml: paths are the node's, not this host's.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
authentication:
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
"#,
        pki = pki.display(),
        etcd = etcd.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_bin_dir_names_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        for b in ["etcd", "kubeadm"] {
            fs::write(d.path().join(b), "#!/bin/sh\n").unwrap();
            fs::set_permissions(d.path().join(b), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(d.path().join("kubectl"), "not executable").unwrap();
        let e = check_bin_dir(d.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(
                "missing kube-apiserver, kube-controller-manager, kube-scheduler, kubectl"
            ),
            "{msg}"
        );
        assert_eq!(e.exit_code(), crate::exit::ENVIRONMENT);
    }

    #[test]
    fn config_names_the_guest_address_in_the_sans() {
        let c = kubeadm_config(
            "v1.20.2",
            "10.0.2.100",
            6443,
            Path::new("/s/pki"),
            Path::new("/s/etcd"),
        );
        assert!(c.contains(r#"certSANs: ["127.0.0.1", "10.0.2.100", "localhost"]"#));
        assert!(c.contains("kubernetesVersion: v1.20.2"));
        let y = replace_yaml_key(
            "a: 1\ncertificatesDir: /s/pki\n",
            "certificatesDir:",
            "/etc/kubernetes/pki",
        );
        assert_eq!(y, "a: 1\ncertificatesDir: /etc/kubernetes/pki\n");
    }
}
