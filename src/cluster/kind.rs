//! The kind provider: a kind cluster of the run's own, its control-plane node wired into
//! the run's network.
//!
//! Each run creates cluster `nodegate-<run>` on a docker network of the same name
//! (`KIND_EXPERIMENTAL_DOCKER_NETWORK`), from the node image asked for (`--kind-image`,
//! else kind's default). Before anything is created, [`probe`] proves the machine can run
//! it: a supported kind, a Docker engine that answers and runs a privileged container of
//! that image, and the image is a kind node image (`/kind/version`). Once the cluster is
//! up, a veth pair joins the control-plane container's network namespace to the run's:
//! the API server answers at [`GUEST_API_ADDR`]:6443 on the nodes' segment (its
//! certificate carries that name) and reaches every node's kubelet there (logs, exec,
//! port-forward). nodegate's kubectl runs inside the run's namespace like the nodes. The
//! engine may live in a network namespace of its own (the test bed's does); nothing of
//! the topology touches the host's namespace.
//!
//! External calls, all plain: `kind version`, `docker version`, `docker run --rm
//! --privileged --entrypoint cat IMAGE /kind/version`, `kind create cluster`, `docker ps`
//! and `docker inspect` (the control-plane container and its pid), `kind get kubeconfig`,
//! `docker exec CTR cat /etc/kubernetes/pki/ca.crt`, and on teardown `kind delete cluster`
//! and `docker network rm`.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::kubectl::{run_command, run_command_within, set_server};
use super::local::{adapt_cluster_info, grant_nodes_proxier};
use super::provider::{env_path, ControlPlane, ProviderKind, Teardown};
use super::{ca_cert_hash, find_on_path, ClusterError, Kubectl, GUEST_API_ADDR};
use crate::network::{Namespace, RunNetwork};
use crate::wait::{Poll, WaitError};

const PROVIDER: ProviderKind = ProviderKind::Kind;
/// The API server's port inside the control-plane container.
const API_PORT: u16 = 6443;
/// The oldest kind release nodegate drives (labels, `--image`, per-cluster networks and
/// the node contract it relies on); v0.27.0 is the one tested.
pub const MIN_KIND: (u32, u32) = (0, 20);

/// How to get a kind cluster.
#[derive(Debug, Clone)]
pub struct KindConfig {
    /// The cluster name; default `nodegate-<run>`, set by the run.
    pub cluster: Option<String>,
    /// The node image (`--kind-image`); default kind's own.
    pub image: Option<String>,
    /// Use an existing cluster of that name instead of creating one (never deleted).
    pub reuse: bool,
    /// Leave a created cluster behind on teardown.
    pub keep: bool,
    /// Where `kind` and `docker` are looked up (a `PATH` list); default `$PATH`.
    pub path: Option<OsString>,
    /// Folder holding kubectl (default `cache_dir()/kubernetes/bin`).
    pub bin_dir: PathBuf,
    /// Folder for the kind config and kubeconfig; default a temporary folder.
    pub state_dir: Option<PathBuf>,
    /// How long the API server may take to answer after `kind create cluster`.
    pub wait: Duration,
    /// [`probe`] already passed for `image` (the command line runs it before anything
    /// starts): `start` does not run it again.
    pub probed: bool,
}

impl Default for KindConfig {
    fn default() -> Self {
        KindConfig {
            cluster: None,
            image: None,
            reuse: false,
            keep: false,
            path: None,
            bin_dir: crate::cache_dir().join("kubernetes/bin"),
            state_dir: None,
            wait: Duration::from_secs(300),
            probed: false,
        }
    }
}

/// Why this machine cannot run kind, found before anything is created. One line each.
#[derive(Debug, thiserror::Error)]
pub enum KindUnusable {
    /// `kind version` is older than [`MIN_KIND`] or unreadable.
    #[error("{}: kind {version} is not supported (nodegate needs kind v{}.{} or later; tested with v0.27.0)", kind.display(), MIN_KIND.0, MIN_KIND.1)]
    Version {
        /// The binary.
        kind: PathBuf,
        /// What it said.
        version: String,
    },
    /// No Docker engine answers.
    #[error("no Docker engine answers {where_} (`docker version`: {detail})")]
    NoEngine {
        /// `DOCKER_HOST=...` or the default socket.
        where_: String,
        /// What docker said.
        detail: String,
    },
    /// The engine cannot run privileged containers, which kind nodes are.
    #[error("the Docker engine at {where_} cannot run a privileged container ({detail}); kind nodes are privileged (on a host whose capability set lacks CAP_SYS_RESOURCE, give dockerd a runtime that drops it: fixtures/kind/README.md)")]
    NotPrivileged {
        /// `DOCKER_HOST=...` or the default socket.
        where_: String,
        /// What docker said.
        detail: String,
    },
    /// The image cannot be had (absent, and not pullable).
    #[error("node image {image}: not in the Docker engine and not pullable ({detail})")]
    NoImage {
        /// The image.
        image: String,
        /// What docker said.
        detail: String,
    },
    /// The image is not a kind node image.
    #[error("node image {image} is not a kind node image: no Kubernetes version in /kind/version ({detail})")]
    NotKindImage {
        /// The image.
        image: String,
        /// What was found.
        detail: String,
    },
}

impl KindUnusable {
    /// Bad input (3) for an image that is not a kind node image; environment (5) else.
    pub fn exit_code(&self) -> i32 {
        match self {
            KindUnusable::NotKindImage { .. } => crate::exit::BAD_INPUT,
            _ => crate::exit::ENVIRONMENT,
        }
    }
}

/// What a successful [`probe`] found.
#[derive(Debug, Clone)]
pub struct KindProbe {
    /// `v0.27.0`.
    pub kind_version: String,
    /// The engine's version.
    pub engine_version: String,
    /// The engine's default OCI runtime (`runc`, or an adjusted one).
    pub runtime: String,
    /// The node image (kind's default when none was asked for).
    pub image: String,
    /// Its Kubernetes version, from `/kind/version`.
    pub kubernetes: String,
}

impl KindProbe {
    /// One line for `doctor` and the run's reason.
    pub fn describe(&self) -> String {
        format!(
            "kind {} with Docker {} ({}, default runtime {}), node image {} (Kubernetes {})",
            self.kind_version,
            self.engine_version,
            engine_where(),
            self.runtime,
            self.image,
            self.kubernetes
        )
    }
}

/// Where docker connects: `DOCKER_HOST=...` or the default socket.
fn engine_where() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => format!("DOCKER_HOST={h}"),
        _ => "unix:///var/run/docker.sock".into(),
    }
}

/// The kind cluster configuration: the API server's certificate also names the address
/// the nodes dial; no CNI and no kube-proxy of kind's (the run's network routes pod
/// ranges and the node images bring their own kube-proxy); and no kubelet cgroup root of
/// kind's (`/kubelet`): the cluster's kubelet configuration is what joining nodes get,
/// and a node image's kubelet must not need a folder only kind's nodes make.
pub fn kind_config(guest_addr: &str) -> String {
    format!(
        r#"kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: "127.0.0.1"
  disableDefaultCNI: true
  kubeProxyMode: none
kubeadmConfigPatches:
- |
  kind: ClusterConfiguration
  apiServer:
    certSANs: ["localhost", "127.0.0.1", "{guest_addr}"]
- |
  kind: KubeletConfiguration
  cgroupRoot: ""
"#
    )
}

/// `(major, minor, text)` of `kind version` output (`kind v0.27.0 go1.24.4 linux/amd64`).
pub fn parse_kind_version(output: &str) -> Option<(u32, u32, String)> {
    let word = output.split_whitespace().find(|w| w.starts_with('v'))?;
    let mut parts = word.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, word.to_string()))
}

/// A Kubernetes version as `/kind/version` holds it (`v1.20.2`).
fn kube_version(text: &str) -> Option<String> {
    let v = text.trim();
    let ok = v.starts_with('v')
        && v.len() < 64
        && !v.contains(char::is_whitespace)
        && super::client_skew::KubeVersion::parse(v).is_some();
    ok.then(|| v.to_string())
}

fn tool(name: &str, path: &std::ffi::OsStr) -> Result<PathBuf, ClusterError> {
    find_on_path(name, path).ok_or_else(|| ClusterError::MissingTool {
        provider: PROVIDER,
        tool: name.into(),
        looked: format!("PATH={}", path.to_string_lossy()),
    })
}

/// Kind's default node image, as its binary names it (`kind create cluster --help`).
fn default_image(kind: &Path) -> Option<String> {
    let out = crate::process::run_bounded(
        Command::new(kind).args(["create", "cluster", "--help"]),
        None,
        Duration::from_secs(20),
    )
    .ok()?;
    let text = out.stdout_text();
    let line = text.lines().find(|l| l.contains("--image"))?;
    let at = line.find("kindest/node")?;
    let image: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ')')
        .collect();
    Some(image)
}

/// Proves this machine can run kind with `config`'s image, changing nothing: kind's
/// version, the engine, a privileged container of the image reading `/kind/version`.
pub fn probe(config: &KindConfig) -> Result<KindProbe, ClusterError> {
    let path = config.path.clone().unwrap_or_else(env_path);
    let kind = tool("kind", &path)?;
    let docker = tool("docker", &path)?;
    let unusable = |e: KindUnusable| ClusterError::KindUnusable(Box::new(e));
    let said = run_command(PROVIDER, Command::new(&kind).arg("version"), None)?;
    let kind_version = match parse_kind_version(&said) {
        Some((maj, min, text)) if (maj, min) >= MIN_KIND => text,
        _ => {
            return Err(unusable(KindUnusable::Version {
                kind,
                version: crate::message::one_line(said.trim()),
            }))
        }
    };
    let engine = crate::process::run_bounded(
        Command::new(&docker).args(["version", "-f", "{{.Server.Version}}"]),
        None,
        Duration::from_secs(30),
    );
    let engine_version = match engine {
        Ok(o) if o.status.success() && !o.stdout_text().trim().is_empty() => {
            o.stdout_text().trim().to_string()
        }
        Ok(o) => {
            return Err(unusable(KindUnusable::NoEngine {
                where_: engine_where(),
                detail: super::last_lines(&o.stderr_text(), 1),
            }))
        }
        Err(e) => {
            return Err(unusable(KindUnusable::NoEngine {
                where_: engine_where(),
                detail: e.to_string(),
            }))
        }
    };
    let runtime = run_command(
        PROVIDER,
        Command::new(&docker).args(["info", "-f", "{{.DefaultRuntime}}"]),
        None,
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "unknown".into());
    let image = match &config.image {
        Some(i) => i.clone(),
        None => default_image(&kind).ok_or_else(|| ClusterError::Unexpected {
            provider: PROVIDER,
            command: "kind create cluster --help".into(),
            detail: "no default node image named (give one with --kind-image)".into(),
        })?,
    };
    let out = crate::process::run_bounded(
        Command::new(&docker)
            .args(["run", "--rm", "--privileged", "--entrypoint", "cat"])
            .args(["--", &image, "/kind/version"]),
        None,
        Duration::from_secs(300),
    )
    .map_err(|e| ClusterError::Command {
        provider: PROVIDER,
        command: format!("docker run --privileged {image}"),
        status: "not run".into(),
        stderr: e.to_string(),
    })?;
    let stderr = super::last_lines(&out.stderr_text(), 2);
    if !out.status.success() {
        let low = stderr.to_lowercase();
        let e = if low.contains("apply caps") || low.contains("operation not permitted") {
            KindUnusable::NotPrivileged {
                where_: engine_where(),
                detail: stderr,
            }
        } else if low.contains("unable to find image")
            || low.contains("pull access denied")
            || low.contains("no such image")
            || low.contains("manifest unknown")
            || low.contains("dial tcp")
            || low.contains("lookup ")
        {
            KindUnusable::NoImage {
                image,
                detail: stderr,
            }
        } else if low.contains("no such file")
            || low.contains("executable file not found")
            || low.contains("not found")
        {
            KindUnusable::NotKindImage {
                image,
                detail: stderr,
            }
        } else {
            return Err(ClusterError::Command {
                provider: PROVIDER,
                command: format!("docker run --privileged {image}"),
                status: out.status.to_string(),
                stderr,
            });
        };
        return Err(unusable(e));
    }
    let kubernetes = kube_version(&out.stdout_text()).ok_or_else(|| {
        unusable(KindUnusable::NotKindImage {
            image: image.clone(),
            detail: format!(
                "it holds {:?}",
                crate::message::one_line(out.stdout_text().trim())
            ),
        })
    })?;
    Ok(KindProbe {
        kind_version,
        engine_version,
        runtime,
        image,
        kubernetes,
    })
}

/// Deletes a cluster unless disarmed (a start that fails half-way).
struct DeleteOnError {
    kind: PathBuf,
    docker: PathBuf,
    name: String,
    armed: bool,
}

impl Drop for DeleteOnError {
    fn drop(&mut self) {
        if self.armed {
            delete_cluster(&self.kind, &self.docker, &self.name, None);
        }
    }
}

/// `kind delete cluster --name NAME` and `docker network rm NAME` (on the engine at
/// `docker_host`, default the inherited one); what went wrong, if anything. Deleting a
/// cluster that does not exist succeeds. A first SIGINT/SIGTERM does not stop it (it is
/// teardown); a second one does, and the cluster is named as left behind.
pub fn delete_cluster(
    kind: &Path,
    docker: &Path,
    name: &str,
    docker_host: Option<&str>,
) -> Vec<String> {
    let timeout = Duration::from_secs(120);
    let run = |args: &[&str], on: &Path| {
        let mut c = Command::new(on);
        c.args(args);
        if let Some(h) = docker_host {
            c.env("DOCKER_HOST", h);
        }
        crate::process::run_teardown(&mut c, timeout)
    };
    let label = format!("label=io.x-k8s.kind.cluster={name}");
    let mut problems = Vec::new();
    // A create cut short may still land a node container in the engine after kind is
    // gone (the engine finishes a request its client left): delete until none is left.
    let mut empty_before = false;
    for round in 0..10 {
        problems.clear();
        match run(&["delete", "cluster", "--name", name], kind) {
            Ok(o) if o.status.success() => {}
            Ok(o) => problems.push(format!(
                "kind delete cluster {name}: {}",
                o.stderr_text().trim()
            )),
            Err(e) => {
                problems.push(format!(
                    "kind delete cluster {name}: {e}; left behind (delete it: kind delete cluster --name {name})"
                ));
                return problems;
            }
        }
        // Empty twice, a second apart: no request of a cut-short create is still landing.
        let empty = matches!(
            run(&["ps", "-a", "-q", "--filter", &label], docker),
            Ok(o) if o.status.success() && o.stdout_text().trim().is_empty()
        );
        if empty && empty_before {
            break;
        }
        if round == 9 {
            problems.push(format!("kind cluster {name}: node containers remain"));
        }
        empty_before = empty;
        std::thread::sleep(Duration::from_secs(1));
    }
    match run(&["network", "rm", name], docker) {
        Ok(o) if o.status.success() || o.stderr_text().contains("No such network") => {}
        Ok(o) => problems.push(format!(
            "docker network rm {name}: {}",
            o.stderr_text().trim()
        )),
        Err(e) => problems.push(format!("docker network rm {name}: {e}")),
    }
    problems
}

/// Creates (or reuses) the cluster and wires its control-plane node into `net`.
pub fn start(config: &KindConfig, net: Option<&RunNetwork>) -> Result<ControlPlane, ClusterError> {
    let net = net.ok_or_else(|| ClusterError::Unexpected {
        provider: PROVIDER,
        command: "nodegate run".into(),
        detail: "the kind provider needs the run's own network (--network bridge)".into(),
    })?;
    let name = config
        .cluster
        .clone()
        .ok_or_else(|| ClusterError::Unexpected {
            provider: PROVIDER,
            command: "nodegate run".into(),
            detail: "no cluster name".into(),
        })?;
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
    let mut kubectl = Kubectl::new(&config.bin_dir, &kubeconfig, PROVIDER)?;
    kubectl.dialer = net.dialer();

    let path = config.path.clone().unwrap_or_else(env_path);
    let (kind, docker) = (tool("kind", &path)?, tool("docker", &path)?);
    let mut guard = DeleteOnError {
        kind: kind.clone(),
        docker: docker.clone(),
        name: name.clone(),
        armed: false,
    };
    let created = !config.reuse;
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
        let image = match (&config.image, config.probed) {
            (Some(image), true) => image.clone(),
            _ => probe(config)?.image,
        };
        let file = state.join("kind.yaml");
        fs::write(&file, kind_config(GUEST_API_ADDR)).map_err(io(&file))?;
        let mut c = Command::new(&kind);
        c.args(["create", "cluster", "--name", &name, "--image", &image])
            .arg("--config")
            .arg(&file)
            .env("KIND_EXPERIMENTAL_DOCKER_NETWORK", &name);
        // Armed before the create: a cluster of this run's own name can only be ours.
        guard.armed = !config.keep;
        run_command_within(PROVIDER, &mut c, None, config.wait)?;
    }

    let container = control_plane_container(&docker, &name)?;
    let pid: u32 = run_command(
        PROVIDER,
        Command::new(&docker).args(["inspect", "-f", "{{.State.Pid}}", &container]),
        None,
    )?
    .trim()
    .parse()
    .ok()
    .filter(|p| *p > 0)
    .ok_or_else(|| ClusterError::Unexpected {
        provider: PROVIDER,
        command: format!("docker inspect {container}"),
        detail: "no process id: the container is not running".into(),
    })?;
    let peer = Namespace::of_process(pid).map_err(|e| ClusterError::Unexpected {
        provider: PROVIDER,
        command: format!("open /proc/{pid}/ns/net"),
        detail: e.to_string(),
    })?;
    let addr = GUEST_API_ADDR.parse().expect("a literal address");
    net.attach_peer(&peer, pid, addr)
        .map_err(|e| ClusterError::Unexpected {
            provider: PROVIDER,
            command: format!("wire {container} into the run's network"),
            detail: e.to_string(),
        })?;

    let guest_endpoint = format!("{GUEST_API_ADDR}:{API_PORT}");
    let kc = run_command(
        PROVIDER,
        Command::new(&kind).args(["get", "kubeconfig", "--name", &name]),
        None,
    )?;
    fs::write(
        &kubeconfig,
        set_server(&kc, &format!("https://{guest_endpoint}")),
    )
    .map_err(io(&kubeconfig))?;
    fs::set_permissions(&kubeconfig, fs::Permissions::from_mode(0o600)).map_err(io(&kubeconfig))?;
    wait_ready(&kubectl, config.wait)?;
    let ca_pem = run_command(
        PROVIDER,
        Command::new(&docker).args(["exec", &container, "cat", "/etc/kubernetes/pki/ca.crt"]),
        None,
    )?;
    let ca_hash = ca_cert_hash(&ca_pem)?;
    adapt_cluster_info(&kubectl, &format!("https://{guest_endpoint}"))?;
    if created {
        // kind's own kube-proxy is off (kubeProxyMode: none); the images bring theirs.
        grant_nodes_proxier(&kubectl)?;
    }

    guard.armed = false;
    let teardown = if created && !config.keep {
        Teardown::KindCluster { kind, docker, name }
    } else {
        Teardown::Nothing
    };
    Ok(ControlPlane {
        provider: PROVIDER,
        kubectl,
        host_port: API_PORT,
        guest_endpoint,
        ca_pem,
        ca_hash,
        teardown,
        _state: temp,
    })
}

/// The running control-plane container of cluster `name`.
fn control_plane_container(docker: &Path, name: &str) -> Result<String, ClusterError> {
    let ps = run_command(
        PROVIDER,
        Command::new(docker).args([
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
    ps.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(String::from)
        .ok_or_else(|| ClusterError::Unexpected {
            provider: PROVIDER,
            command: "docker ps".into(),
            detail: format!("no running control-plane container of kind cluster {name}"),
        })
}

/// Waits for the API server to answer `/readyz` through the run's network.
fn wait_ready(kubectl: &Kubectl, within: Duration) -> Result<(), ClusterError> {
    let command = "kubectl get --raw /readyz";
    crate::wait::wait_until(command, within, Duration::from_secs(1), || {
        match kubectl.run(&["get", "--raw", "/readyz"]) {
            Ok(s) if s.trim() == "ok" => Poll::Ready(()),
            Ok(s) => Poll::Pending(s.trim().to_string()),
            Err(e) => Poll::Pending(e.to_string()),
        }
    })
    .map_err(|e| match e {
        WaitError::Interrupted { what } => ClusterError::Interrupted(what),
        e => ClusterError::Unexpected {
            provider: PROVIDER,
            command: command.into(),
            detail: e.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_versions_are_read_from_its_own_words() {
        assert_eq!(
            parse_kind_version("kind v0.27.0 go1.24.4 linux/amd64"),
            Some((0, 27, "v0.27.0".into()))
        );
        assert_eq!(
            parse_kind_version("kind v0.9.0 go1.15 linux/amd64").map(|v| (v.0, v.1)),
            Some((0, 9))
        );
        assert!((0, 9) < MIN_KIND && (0, 27) >= MIN_KIND && (1, 0) >= MIN_KIND);
        assert_eq!(parse_kind_version("command not found"), None);
        assert_eq!(parse_kind_version(""), None);
    }

    #[test]
    fn only_a_kubernetes_version_is_a_kind_version_file() {
        assert_eq!(kube_version("v1.20.2\n").as_deref(), Some("v1.20.2"));
        assert_eq!(
            kube_version("v1.32.2-rc.1").as_deref(),
            Some("v1.32.2-rc.1")
        );
        assert_eq!(kube_version("root:x:0:0:root:/root:/bin/sh"), None);
        assert_eq!(kube_version("v1 2 3"), None);
        assert_eq!(kube_version(""), None);
    }

    #[test]
    fn config_names_the_guest_address_and_brings_no_cni() {
        let c = kind_config("10.0.2.100");
        assert!(c.contains(r#"certSANs: ["localhost", "127.0.0.1", "10.0.2.100"]"#));
        assert!(c.contains("disableDefaultCNI: true\n  kubeProxyMode: none\n"));
    }
}
