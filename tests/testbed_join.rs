//! The test bed end to end: node image v1 boots under QEMU, joins a real control plane
//! run as host processes with `kubeadm join`, becomes Ready, and runs a pod pinned to it.
//!
//! Plain commands over nodegate's VM engine; the cluster module (issue 5) will take this
//! over. Needs the test bed (`fixtures/build`); a missing test bed fails loudly.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nodegate::vm::{AccelChoice, Boot, GuestForward, Vm, VmConfig};
use nodegate::wait::{wait_until, Poll};

/// The address the guest dials for the API server (forwarded to the host's loopback).
const GUEST_API_ADDR: &str = "10.0.2.100";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// fixtures/controlplane/up, torn down with fixtures/controlplane/down on drop.
struct ControlPlane {
    state: tempfile::TempDir,
    values: std::collections::HashMap<String, String>,
    port: u16,
}

impl ControlPlane {
    fn up() -> ControlPlane {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let state = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = Command::new(repo.join("fixtures/controlplane/up"))
            .arg(state.path())
            .env("NODEGATE_APISERVER_PORT", port.to_string())
            .env("NODEGATE_ETCD_PORT", free_port().to_string())
            .env("NODEGATE_ETCD_PEER_PORT", free_port().to_string())
            .env("NODEGATE_GUEST_HOST", GUEST_API_ADDR)
            .output()
            .unwrap();
        let cp = ControlPlane {
            values: String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state,
            port,
        };
        assert!(
            out.status.success(),
            "control plane did not come up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cp
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(nodegate::cache_dir().join("kubernetes/bin/kubectl"))
            .arg("--kubeconfig")
            .arg(&self.values["KUBECONFIG"])
            .arg("--request-timeout=20s")
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let _ = Command::new(repo.join("fixtures/controlplane/down"))
            .arg(self.state.path())
            .status();
    }
}

#[test]
fn image_v1_joins_the_process_control_plane_and_runs_a_pinned_pod() {
    let layout = common::testbed("image/direct", "root.qcow2");
    let cp = ControlPlane::up();
    let run = tempfile::tempdir().unwrap();
    let mut config = VmConfig::new(
        "node-v1",
        layout.join("root.qcow2"),
        Boot::Kernel {
            kernel: layout.join("vmlinuz"),
            initrd: Some(layout.join("initrd.img")),
            cmdline: fs::read_to_string(layout.join("cmdline"))
                .unwrap()
                .trim()
                .into(),
        },
        run.path().into(),
    );
    config.accel = AccelChoice::Auto;
    config.memory_mib = 2560;
    config.forwards.push(GuestForward {
        guest_addr: GUEST_API_ADDR.into(),
        guest_port: cp.port,
        host_port: cp.port,
    });
    let mut vm = Vm::start(config, None).unwrap();
    let mut ssh = vm.wait_ready().unwrap_or_else(|e| panic!("boot: {e}"));
    eprintln!(
        "boot timings: {:?} (accel {})",
        vm.timings,
        vm.accel.accel.as_str()
    );
    let out = ssh
        .exec("systemctl is-system-running", Duration::from_secs(30))
        .unwrap();
    assert_eq!(out.stdout.trim(), "running");

    // Debian packages no crictl, so kubeadm's preflight check for it is waived.
    let join = format!(
        "sudo kubeadm join {GUEST_API_ADDR}:{} --token {} --discovery-token-ca-cert-hash {} --node-name node-v1 --ignore-preflight-errors=FileExisting-crictl",
        cp.port, cp.values["TOKEN"], cp.values["CA_CERT_HASH"]
    );
    let t_join = Instant::now();
    let out = ssh.exec(&join, Duration::from_secs(600)).unwrap();
    assert!(
        out.success(),
        "kubeadm join failed: {}{}",
        out.stdout,
        out.stderr
    );
    let joined = t_join.elapsed();

    let ready = wait_until(
        "node-v1 Ready",
        Duration::from_secs(600),
        Duration::from_secs(3),
        || {
            let o = cp.kubectl(&["get", "node", "node-v1", "-o", "json"]);
            if !o.status.success() {
                return Poll::Pending(String::from_utf8_lossy(&o.stderr).trim().to_string());
            }
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let ready = v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                Poll::Ready(())
            } else {
                Poll::Pending("Ready condition not True".into())
            }
        },
    );
    ready.unwrap_or_else(|e| panic!("{e}"));
    let to_ready = t_join.elapsed();
    eprintln!("kubeadm join took {joined:?}; join to Ready {to_ready:?}");

    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pinned"},
      "spec":{"nodeName":"node-v1","restartPolicy":"Never","containers":[{"name":"c",
      "image":"nodegate.local/busybox:1","imagePullPolicy":"Never",
      "command":["sh","-c","echo hello-from-the-node; sleep 3600"]}]}}"#;
    let pod_file = run.path().join("pod.json");
    fs::write(&pod_file, pod).unwrap();
    let o = cp.kubectl(&["apply", "-f", pod_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let running = wait_until(
        "pod pinned Running",
        Duration::from_secs(300),
        Duration::from_secs(3),
        || {
            let o = cp.kubectl(&["get", "pod", "pinned", "-o", "jsonpath={.status.phase}"]);
            match String::from_utf8_lossy(&o.stdout).trim() {
                "Running" => Poll::Ready(()),
                "Failed" => Poll::Fatal("pod failed".into()),
                other => Poll::Pending(format!("phase {other:?}")),
            }
        },
    );
    if let Err(e) = running {
        let events = cp.kubectl(&[
            "get",
            "events",
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ]);
        let pod = cp.kubectl(&["get", "pod", "pinned", "-o", "jsonpath={.status}"]);
        let journal = ssh
            .exec("sudo journalctl -u kubelet -u containerd --no-pager | grep -iE 'error|fail' | tail -n 25; sudo ctr -n k8s.io images ls -q", Duration::from_secs(60))
            .map(|o| o.stdout)
            .unwrap_or_default();
        panic!(
            "{e}\nevents:\n{}\npod status: {}\nguest:\n{journal}",
            String::from_utf8_lossy(&events.stdout),
            String::from_utf8_lossy(&pod.stdout)
        );
    }
    // The API server cannot reach the kubelet behind QEMU's user network, so the
    // container's output is read where the kubelet writes it.
    let out = ssh
        .exec(
            "sudo sh -c 'cat /var/log/pods/default_pinned_*/c/*.log'",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        out.stdout.contains("hello-from-the-node"),
        "pod log: {}{}",
        out.stdout,
        out.stderr
    );
    drop(ssh);
    drop(vm);
}
