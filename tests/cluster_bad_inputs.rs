//! Bad inputs to the cluster providers: each refused with one line naming what and which
//! provider, and an exit-code class (3 bad input, 5 environment). No VM, no control plane.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use nodegate::cluster::{ControlPlaneConfig, KubeconfigConfig, LocalConfig};

fn testbed_bin() -> PathBuf {
    let bin = nodegate::cache_dir().join("kubernetes/bin");
    assert!(
        bin.join("kubectl").is_file(),
        "test bed missing: {} has no kubectl; run fixtures/build (ci/test.sh does)",
        bin.display()
    );
    bin
}

#[test]
fn local_provider_with_an_incomplete_binary_folder() {
    let dir = tempfile::tempdir().unwrap();
    for b in ["etcd", "kubeadm", "kubectl"] {
        fs::write(dir.path().join(b), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.path().join(b), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let e = ControlPlaneConfig::Local(LocalConfig {
        bin_dir: dir.path().into(),
        ..LocalConfig::default()
    })
    .start(None)
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: control plane binary folder incomplete, missing kube-apiserver, kube-controller-manager, kube-scheduler (build it: fixtures/build kubernetes)",
            dir.path().display()
        )
    );
    assert_eq!(e.exit_code(), 5);
}

#[test]
fn local_provider_with_its_port_taken() {
    let bin = testbed_bin();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = ControlPlaneConfig::Local(LocalConfig {
        bin_dir: bin,
        apiserver_port: Some(port),
        ..LocalConfig::default()
    })
    .start(None)
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("local provider: 127.0.0.1:{port} already in use")
    );
    assert_eq!(e.exit_code(), 5);
}

#[test]
fn kubeconfig_provider_without_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("admin.conf");
    fs::write(&kc, "apiVersion: v1\nkind: Config\n").unwrap();
    let mut c = KubeconfigConfig::new(kc);
    c.bin_dir = dir.path().join("bin");
    let e = ControlPlaneConfig::Kubeconfig(c).start(None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "kubeconfig provider needs kubectl: not found ({}/bin/kubectl)",
            dir.path().display()
        )
    );
    assert_eq!(e.exit_code(), 5);
}

#[test]
fn kubeconfig_provider_with_a_missing_file() {
    let e = "kubeconfig=/nonexistent/admin.conf"
        .parse::<ControlPlaneConfig>()
        .unwrap()
        .start(None)
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("/nonexistent/admin.conf: kubeconfig provider: cannot read it: "),
        "{msg}"
    );
    assert_eq!(e.exit_code(), 3);
}

fn kubeconfig_with(dir: &std::path::Path, server: &str, ca_data: &str) -> PathBuf {
    let kc = dir.join("admin.conf");
    fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca_data}\n    server: {server}\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n  name: c\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: x\n"
        ),
    )
    .unwrap();
    kc
}

#[test]
fn kubeconfig_provider_refuses_a_server_the_vm_cannot_reach_and_a_bad_ca() {
    let bin = testbed_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=kubernetes -days 1 -keyout ca.key -out ca.crt 2>/dev/null && base64 -w0 ca.crt",
            dir.path().display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let ca = String::from_utf8(out.stdout).unwrap();

    let kc = kubeconfig_with(dir.path(), "https://192.0.2.10:6443", &ca);
    let mut c = KubeconfigConfig::new(kc);
    c.bin_dir = bin.clone();
    let e = ControlPlaneConfig::Kubeconfig(c).start(None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kubeconfig provider: API server https://192.0.2.10:6443 is not on this host's loopback; the VM reaches only forwarded loopback ports"
    );
    assert_eq!(e.exit_code(), 5);

    let kc = kubeconfig_with(dir.path(), "https://127.0.0.1:6443", "bm90IGEgY2VydA==");
    let mut c = KubeconfigConfig::new(kc.clone());
    c.bin_dir = bin;
    let e = ControlPlaneConfig::Kubeconfig(c).start(None).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: kubeconfig provider: CA certificate: not a PEM X.509 certificate",
            kc.display()
        )),
        "{msg}"
    );
    assert_eq!(e.exit_code(), 3);
}
