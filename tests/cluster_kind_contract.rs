//! The kind provider's contract: nodegate against stand-in `kind` and `docker`
//! executables (and a stand-in kubectl) that record their arguments and answer like the
//! real tools. kind and Docker are not available on these machines; the same join path
//! runs for real against the local provider (tests/cluster_local.rs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nodegate::cluster::{ClusterError, ControlPlaneConfig, KindConfig, ProviderKind};

/// A folder of stand-ins: `path/` (kind, docker), `bin/` (kubectl), `calls.log`.
struct Stubs {
    dir: tempfile::TempDir,
}

fn write_exe(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

impl Stubs {
    fn new() -> Stubs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        fs::create_dir_all(dir.path().join("path")).unwrap();
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        let port = format!(
            "port=$(cat {d}/port 2>/dev/null || sed -n 's/^  apiServerPort: //p' {d}/kind-config.yaml)"
        );
        write_exe(
            &dir.path().join("path/kind"),
            &format!(
                r#"#!/bin/bash
echo "kind $*" >> {d}/calls.log
case "$1 $2" in
  "create cluster")
    while [ $# -gt 0 ]; do [ "$1" = --config ] && cp "$2" {d}/kind-config.yaml; shift; done
    echo "Creating cluster \"nodegate\" ..." >&2 ;;
  "get clusters") cat {d}/clusters 2>/dev/null ;;
  "get kubeconfig")
    {port}
    printf 'apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:%s\n  name: kind-nodegate\n' "$port" ;;
  "delete cluster") echo "Deleting cluster \"$4\" ..." >&2 ;;
  *) echo "ERROR: unknown command $*" >&2; exit 1 ;;
esac
"#
            ),
        );
        write_exe(
            &dir.path().join("path/docker"),
            &format!(
                r#"#!/bin/bash
echo "docker $*" >> {d}/calls.log
case "$1" in
  ps) cat {d}/containers 2>/dev/null || echo nodegate-control-plane ;;
  port) {port}; echo "127.0.0.1:$port" ;;
  exec)
    case "$3" in
      cat) cat {d}/ca.crt ;;
      kubeadm) [ "$5" = create ] && echo "$6" || echo "bootstrap token \"$6\" deleted" ;;
      *) echo "OCI runtime exec failed" >&2; exit 126 ;;
    esac ;;
  *) echo "docker: unknown command $1" >&2; exit 1 ;;
esac
"#
            ),
        );
        write_exe(
            &dir.path().join("bin/kubectl"),
            &format!(
                r#"#!/bin/bash
echo "kubectl $*" >> {d}/calls.log
case "$*" in
  *" get configmap cluster-info "*)
    printf '{{"apiVersion":"v1","kind":"ConfigMap","data":{{"kubeconfig":"apiVersion: v1\\nclusters:\\n- cluster:\\n    certificate-authority-data: QQ==\\n    server: https://nodegate-control-plane:6443\\n  name: \\"\\"\\n"}}}}' ;;
  *" patch configmap cluster-info "*) echo "configmap/cluster-info patched" ;;
  *" create -f -") cat > {d}/created.json; echo "secret created" ;;
  *" delete secret "*) echo "secret deleted" ;;
  *) echo "error: unexpected kubectl call" >&2; exit 1 ;;
esac
"#
            ),
        );
        let key = dir.path().join("ca.key");
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=kubernetes",
                "-days",
                "1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(dir.path().join("ca.crt"))
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        Stubs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("path")
    }

    fn config(&self) -> KindConfig {
        KindConfig {
            path: Some(self.path().into_os_string()),
            bin_dir: self.dir.path().join("bin"),
            state_dir: Some(self.dir.path().join("state")),
            ..KindConfig::default()
        }
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The CA pin as openssl computes it.
    fn openssl_ca_hash(&self) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -in {}/ca.crt -noout -pubkey | openssl pkey -pubin -outform der | sha256sum",
                self.dir.path().display()
            ))
            .output()
            .unwrap();
        format!(
            "sha256:{}",
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
        )
    }
}

/// Drops the `--kubeconfig FILE --request-timeout=..` prefix of recorded kubectl calls.
fn plain(call: &str) -> String {
    let mut words: Vec<&str> = call.split(' ').collect();
    if words[0] == "kubectl" {
        words.drain(1..4);
    }
    words.join(" ")
}

#[test]
fn kind_contract_create_token_and_teardown() {
    let stubs = Stubs::new();
    let cp = ControlPlaneConfig::Kind(stubs.config())
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cp.provider, ProviderKind::Kind);
    let kind_yaml = fs::read_to_string(stubs.dir.path().join("kind-config.yaml")).unwrap();
    let port = cp.host_port;
    assert!(
        kind_yaml.contains(&format!(
            "  apiServerAddress: \"127.0.0.1\"\n  apiServerPort: {port}\n"
        )),
        "{kind_yaml}"
    );
    assert!(
        kind_yaml.contains(r#"certSANs: ["localhost", "127.0.0.1", "10.0.2.100"]"#),
        "{kind_yaml}"
    );
    assert_eq!(cp.guest_endpoint, format!("10.0.2.100:{port}"));
    let fwd = cp.forward();
    assert_eq!(
        (
            fwd.guest_addr.to_string().as_str(),
            fwd.guest_port,
            fwd.host_port
        ),
        ("10.0.2.100", port, port)
    );
    assert_eq!(cp.ca_hash, stubs.openssl_ca_hash());
    let kubeconfig = fs::read_to_string(cp.kubeconfig()).unwrap();
    assert!(kubeconfig.contains(&format!("server: https://127.0.0.1:{port}")));

    let state = stubs.dir.path().join("state");
    let calls: Vec<String> = stubs.calls().iter().map(|c| plain(c)).collect();
    assert_eq!(calls.len(), 7, "{calls:#?}");
    assert_eq!(
        calls[0],
        format!(
            "kind create cluster --name nodegate --config {}/kind.yaml --wait 300s",
            state.display()
        )
    );
    assert_eq!(calls[1], "docker ps --filter label=io.x-k8s.kind.cluster=nodegate --filter label=io.x-k8s.kind.role=control-plane --format {{.Names}}");
    assert_eq!(calls[2], "docker port nodegate-control-plane 6443/tcp");
    assert_eq!(calls[3], "kind get kubeconfig --name nodegate");
    assert_eq!(
        calls[4],
        "docker exec nodegate-control-plane cat /etc/kubernetes/pki/ca.crt"
    );
    assert_eq!(
        calls[5],
        "kubectl get configmap cluster-info --ignore-not-found -n kube-public -o json"
    );
    assert!(
        calls[6]
            .starts_with("kubectl -n kube-public patch configmap cluster-info --type merge -p "),
        "{}",
        calls[6]
    );
    assert!(
        calls[6].contains(&format!("server: https://10.0.2.100:{port}")),
        "{}",
        calls[6]
    );
    assert!(
        !calls[6].contains("nodegate-control-plane:6443"),
        "{}",
        calls[6]
    );

    let token = cp.create_token(Duration::from_secs(600)).unwrap();
    let secret = token.token().secret().to_string();
    let id = token.token().id().to_string();
    drop(token);
    drop(cp);
    let calls: Vec<String> = stubs.calls().iter().map(|c| plain(c)).collect();
    // The token is a Secret sent on kubectl's standard input: its secret part is on no
    // command line.
    assert_eq!(
        &calls[7..],
        [
            "kubectl create -f -".to_string(),
            format!("kubectl delete secret bootstrap-token-{id} --ignore-not-found --wait=false -n kube-system"),
            "kind delete cluster --name nodegate".to_string(),
        ]
    );
    assert!(calls.iter().all(|c| !c.contains(&secret)), "{calls:#?}");
    let created = fs::read_to_string(stubs.dir.path().join("created.json")).unwrap();
    assert!(
        created.contains(&format!("\"token-secret\":\"{secret}\"")),
        "{created}"
    );
}

#[test]
fn kind_contract_reuse_and_keep_leave_the_cluster() {
    let stubs = Stubs::new();
    fs::write(stubs.dir.path().join("clusters"), "other\nnodegate\n").unwrap();
    fs::write(stubs.dir.path().join("port"), "41234").unwrap();
    let mut config = stubs.config();
    config.reuse = true;
    let cp = ControlPlaneConfig::Kind(config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cp.host_port, 41234);
    drop(cp);
    let calls = stubs.calls();
    assert_eq!(calls[0], "kind get clusters");
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("kind create") || c.starts_with("kind delete")),
        "{calls:#?}"
    );

    let stubs = Stubs::new();
    let mut config = stubs.config();
    config.keep = true;
    config.cluster = "kept".into();
    fs::write(stubs.dir.path().join("containers"), "kept-control-plane\n").unwrap();
    let cp = ControlPlaneConfig::Kind(config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    drop(cp);
    let calls = stubs.calls();
    assert!(
        calls[0].starts_with("kind create cluster --name kept "),
        "{calls:#?}"
    );
    assert!(calls
        .iter()
        .any(|c| c == "docker exec kept-control-plane cat /etc/kubernetes/pki/ca.crt"));
    assert!(
        !calls.iter().any(|c| c.starts_with("kind delete")),
        "{calls:#?}"
    );
}

#[test]
fn kind_contract_missing_tools_name_the_tool_and_the_provider() {
    let stubs = Stubs::new();
    // No docker on the PATH.
    fs::remove_file(stubs.path().join("docker")).unwrap();
    let e = ControlPlaneConfig::Kind(stubs.config())
        .start()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "kind provider needs docker: not found (PATH={})",
            stubs.path().display()
        )
    );
    assert_eq!(e.exit_code(), 5);
    // No kind.
    fs::remove_file(stubs.path().join("kind")).unwrap();
    let e = ControlPlaneConfig::Kind(stubs.config())
        .start()
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("kind provider needs kind: not found"),
        "{e}"
    );
    assert_eq!(e.exit_code(), 5);
    // kubectl missing from the binaries folder: refused before any cluster is made.
    let stubs = Stubs::new();
    fs::remove_file(stubs.dir.path().join("bin/kubectl")).unwrap();
    let e = ControlPlaneConfig::Kind(stubs.config())
        .start()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "kind provider needs kubectl: not found ({}/bin/kubectl)",
            stubs.dir.path().display()
        )
    );
    assert!(matches!(e, ClusterError::MissingTool { .. }));
    assert!(stubs.calls().is_empty(), "{:?}", stubs.calls());
}

#[test]
fn kind_contract_failures_after_create_delete_the_new_cluster_only() {
    // The control-plane container cannot be found: the cluster just made is deleted.
    let stubs = Stubs::new();
    fs::write(stubs.dir.path().join("containers"), "").unwrap();
    let e = ControlPlaneConfig::Kind(stubs.config())
        .start()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "kind provider: unexpected output of `docker ps`: no running control-plane container of kind cluster nodegate"
    );
    assert_eq!(
        stubs.calls().last().unwrap(),
        "kind delete cluster --name nodegate"
    );

    // Reusing a cluster that does not exist: nothing created, nothing deleted.
    let stubs = Stubs::new();
    fs::write(stubs.dir.path().join("clusters"), "other\n").unwrap();
    let mut config = stubs.config();
    config.reuse = true;
    let e = ControlPlaneConfig::Kind(config).start().unwrap_err();
    assert!(
        e.to_string()
            .contains("no cluster named nodegate to reuse (found: other)"),
        "{e}"
    );
    assert_eq!(stubs.calls(), ["kind get clusters"]);

    // A reused cluster whose container fails: never deleted.
    let stubs = Stubs::new();
    fs::write(stubs.dir.path().join("clusters"), "nodegate\n").unwrap();
    fs::write(stubs.dir.path().join("containers"), "").unwrap();
    let mut config = stubs.config();
    config.reuse = true;
    ControlPlaneConfig::Kind(config).start().unwrap_err();
    assert!(
        !stubs.calls().iter().any(|c| c.starts_with("kind delete")),
        "{:?}",
        stubs.calls()
    );
}
