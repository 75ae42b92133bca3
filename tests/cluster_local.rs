//! The cluster module against a real control plane: the local provider (processes
//! started by nodegate's Rust code), node image v1 joined with kubeadm and Ready within
//! budget; then the kubeconfig provider against the same running control plane, the same
//! VM reset with `kubeadm reset`. One TCG boot in all.
//!
//! Needs the test bed (`fixtures/build`): a missing test bed fails loudly.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nodegate::cluster::{
    join, ClusterError, ControlPlane, ControlPlaneConfig, JoinConfig, JoinMethod, KubeconfigConfig,
    KubeletSettings, LocalConfig, ProviderKind,
};
use nodegate::vm::{AccelChoice, Boot, Vm, VmConfig};
use nodegate::wait::{wait_until, Poll};

fn testbed_direct() -> PathBuf {
    let dir = nodegate::cache_dir().join("image/direct");
    assert!(
        dir.join("root.qcow2").is_file(),
        "test bed missing at {}; run fixtures/build (ci/test.sh does)",
        dir.display()
    );
    assert!(
        nodegate::cache_dir()
            .join("kubernetes/bin/kube-apiserver")
            .is_file(),
        "test bed missing: no kubernetes/bin; run fixtures/build (ci/test.sh does)"
    );
    dir
}

fn start_local() -> ControlPlane {
    let t = Instant::now();
    let cp = ControlPlaneConfig::Local(LocalConfig::default())
        .start(None)
        .unwrap_or_else(|e| panic!("local control plane: {e}"));
    eprintln!(
        "local control plane up in {:?} (API on 127.0.0.1:{}, guest {})",
        t.elapsed(),
        cp.host_port,
        cp.guest_endpoint
    );
    cp
}

/// The test bed image has no crictl (Debian ships none), which kubeadm 1.20's preflight
/// demands for containerd; see fixtures/image/README.md.
fn kubeadm_for_the_test_bed() -> JoinMethod {
    JoinMethod::Kubeadm {
        ignore_preflight_errors: vec!["FileExisting-crictl".into()],
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still answers kill(0); the guards reap their leaders, so a live pid is real.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn gone(cp: &ControlPlane, kind: &str, ns: Option<&str>, name: &str) {
    wait_until(
        format!("{kind} {name} deleted"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        || match cp.kubectl.get(kind, ns, name) {
            Ok(None) => Poll::Ready(()),
            Ok(Some(_)) => Poll::Pending("still there".into()),
            Err(e) => Poll::Pending(e.to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Local control planes for the tests without a VM, one at a time (2 cores).
static ONE_CONTROL_PLANE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cp() -> std::sync::MutexGuard<'static, ()> {
    ONE_CONTROL_PLANE.lock().unwrap_or_else(|e| e.into_inner())
}

fn preflight(
    cp: &ControlPlane,
    token: &nodegate::cluster::BootstrapToken,
    c: &JoinConfig,
) -> Result<(), ClusterError> {
    nodegate::cluster::join::preflight(cp, token, c)
}

#[test]
fn bad_join_node_name_clash() {
    testbed_direct();
    let _one = one_cp();
    let cp = start_local();
    let clash =
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "clash"}});
    cp.kubectl.create(&clash).unwrap();
    let token = cp.create_token(Duration::from_secs(600)).unwrap();
    let e = preflight(
        &cp,
        &token,
        &JoinConfig::new("clash", JoinMethod::kubeadm()),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "node name clash: a Node named clash already exists in the cluster"
    );
    assert_eq!(e.exit_code(), 3);
    preflight(
        &cp,
        &token,
        &JoinConfig::new("fresh", JoinMethod::kubeadm()),
    )
    .unwrap();

    // The token is kubeadm's Secret; dropping the guard deletes it.
    let name = token.token().secret_name();
    assert!(cp
        .kubectl
        .get("secret", Some("kube-system"), &name)
        .unwrap()
        .is_some());
    drop(token);
    gone(&cp, "secret", Some("kube-system"), &name);

    // Teardown stops every component.
    let pids = cp.component_pids();
    assert_eq!(
        pids.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler"
        ]
    );
    drop(cp);
    for (name, pid) in pids {
        assert!(!alive(pid), "{name} (pid {pid}) survived teardown");
    }
}

#[test]
fn bad_join_wrong_ca_hash() {
    testbed_direct();
    let _one = one_cp();
    let cp = start_local();
    let token = cp.create_token(Duration::from_secs(600)).unwrap();
    let mut c = JoinConfig::new("fresh", JoinMethod::kubeadm());
    c.ca_pin = Some(format!("sha256:{}", "0".repeat(64)));
    let e = preflight(&cp, &token, &c).unwrap_err();
    let msg = e.to_string();
    assert_eq!(
        msg,
        format!(
            "CA hash mismatch: expected sha256:{}, the cluster CA is {}",
            "0".repeat(64),
            cp.ca_hash
        )
    );
    assert_eq!(e.exit_code(), 3);
    c.ca_pin = Some(cp.ca_hash.clone());
    preflight(&cp, &token, &c).unwrap();

    // The CA hash nodegate computes is the one kubeadm computes.
    let out = std::process::Command::new(nodegate::cache_dir().join("kubernetes/bin/kubeadm"))
        .args(["token", "create", "--print-join-command", "--kubeconfig"])
        .arg(cp.kubeconfig())
        .output()
        .unwrap();
    let join_cmd = String::from_utf8_lossy(&out.stdout);
    assert!(
        join_cmd.contains(&format!("--discovery-token-ca-cert-hash {}", cp.ca_hash)),
        "kubeadm says {join_cmd}, nodegate {}",
        cp.ca_hash
    );
}

#[test]
fn bad_join_expired_token() {
    testbed_direct();
    let _one = one_cp();
    let cp = start_local();
    // The kubeconfig provider's token Secret, with a 5 s lifetime: long enough to read
    // the Secret before the controller manager's token cleaner deletes it once expired
    // (1 s was not, on a loaded host).
    let kc = ControlPlaneConfig::Kubeconfig(KubeconfigConfig::new(cp.kubeconfig().to_owned()))
        .start(None)
        .unwrap();
    let short = kc.create_token(Duration::from_secs(5)).unwrap();
    let secret = cp
        .kubectl
        .get("secret", Some("kube-system"), &short.token().secret_name())
        .unwrap()
        .expect("the token Secret");
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    std::thread::sleep(Duration::from_millis(5500));
    let e = preflight(
        &kc,
        &short,
        &JoinConfig::new("fresh", JoinMethod::kubeadm()),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "bootstrap token {}: expired at 20",
            short.token().id()
        )),
        "{msg}"
    );
    assert_eq!(e.exit_code(), 3);
}

/// Takes the node out: kubelet stopped (so that it cannot register again), the Node and
/// the token deleted by their guards, `kubeadm reset` on the node.
fn leave(
    cp: &ControlPlane,
    ssh: &mut nodegate::ssh::SshSession,
    node: nodegate::cluster::JoinedNode,
    token: nodegate::cluster::BootstrapToken,
) {
    let out = ssh
        .exec("sudo systemctl stop kubelet", Duration::from_secs(120))
        .unwrap();
    assert!(out.success(), "{}", out.stderr);
    let name = node.name().to_string();
    let secret = token.token().secret_name();
    drop(node);
    drop(token);
    gone(cp, "node", None, &name);
    gone(cp, "secret", Some("kube-system"), &secret);
    let out = ssh
        .exec(
            "sudo kubeadm reset -f && sudo rm -rf /etc/kubernetes/pki /var/lib/kubelet/config.yaml",
            Duration::from_secs(300),
        )
        .unwrap();
    assert!(out.success(), "kubeadm reset: {}{}", out.stdout, out.stderr);
}

/// Switches the test bed node's cgroup driver: containerd's `SystemdCgroup`, and the
/// image's own kubelet pin (`KUBELET_EXTRA_ARGS`), removed for systemd so that the join's
/// settings decide.
fn cgroup_driver(ssh: &mut nodegate::ssh::SshSession, driver: &str) {
    let (systemd, pin) = match driver {
        "systemd" => ("true", ""),
        _ => ("false", "--cgroup-driver=cgroupfs"),
    };
    let out = ssh
        .exec(
            &format!(
                "sudo sed -i 's/SystemdCgroup = .*/SystemdCgroup = {systemd}/' /etc/containerd/config.toml \
                 && sudo sed -i 's/^KUBELET_EXTRA_ARGS=.*/KUBELET_EXTRA_ARGS={pin}/' /etc/default/kubelet \
                 && sudo systemctl restart containerd"
            ),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(out.success(), "switching to {driver}: {}", out.stderr);
}

#[test]
fn image_v1_joins_the_local_provider_then_the_kubeconfig_provider() {
    let layout = testbed_direct();
    let mut cp = start_local();
    assert_eq!(cp.provider, ProviderKind::Local);
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
    config.forwards.push(cp.forward());
    let mut vm = Vm::start(config, None).unwrap();
    let mut ssh = vm.wait_ready().unwrap_or_else(|e| panic!("boot: {e}"));
    // Progress lines: a TCG boot and two joins take minutes.
    eprintln!(
        "boot timings: {:?} (accel {})",
        vm.timings,
        vm.accel.accel.as_str()
    );

    // API server unreachable from the VM: an endpoint with no forward behind it.
    let token = cp.create_token(Duration::from_secs(900)).unwrap();
    let mut bad = JoinConfig::new("node-v1", JoinMethod::kubeadm());
    let unforwarded = format!("10.0.2.100:{}", cp.host_port.wrapping_add(1).max(1024));
    bad.endpoint = Some(unforwarded.clone());
    bad.reach_timeout = Duration::from_secs(15);
    let e = join(&cp, &token, &mut ssh, &bad).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "API server unreachable from the VM: it tried https://{unforwarded}"
        )),
        "{msg}"
    );
    assert_eq!(e.exit_code(), 5);
    assert!(cp.kubectl.get("node", None, "node-v1").unwrap().is_none());
    eprintln!("unreachable endpoint refused: {msg}");

    // The local provider: kubeadm join, Ready within budget.
    let budget = Duration::from_secs(600);
    let mut jc = JoinConfig::new("node-v1", kubeadm_for_the_test_bed());
    jc.budget = budget;
    let node = join(&cp, &token, &mut ssh, &jc).unwrap_or_else(|e| panic!("join (local): {e}"));
    let t = node.timings;
    eprintln!(
        "local provider: kubeadm join {:?}, registered {:?}, Ready {:?}",
        t.join_command, t.register, t.ready
    );
    assert!(t.register <= t.ready && t.ready <= budget, "{t:?}");
    let n = cp
        .kubectl
        .get("node", None, "node-v1")
        .unwrap()
        .expect("Node node-v1");
    assert!(n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True"));
    assert!(cp.components_running());

    // Teardown of the join: the Node and the token go.
    // The kubelet stops first, so that it cannot register the Node again.
    let out = ssh
        .exec("sudo systemctl stop kubelet", Duration::from_secs(120))
        .unwrap();
    assert!(out.success(), "{}", out.stderr);
    let token_secret = token.token().secret_name();
    drop(node);
    gone(&cp, "node", None, "node-v1");
    token.delete().unwrap();
    gone(&cp, "secret", Some("kube-system"), &token_secret);

    eprintln!("node-v1 and its token deleted; resetting the VM");
    // The same VM, reset, joins again through the kubeconfig provider.
    let out = ssh
        .exec(
            "sudo kubeadm reset -f && sudo rm -rf /etc/kubernetes/pki /var/lib/kubelet/config.yaml",
            Duration::from_secs(300),
        )
        .unwrap();
    assert!(out.success(), "kubeadm reset: {}{}", out.stdout, out.stderr);
    let kc = ControlPlaneConfig::Kubeconfig(KubeconfigConfig::new(cp.kubeconfig().to_owned()))
        .start(None)
        .unwrap_or_else(|e| panic!("kubeconfig provider: {e}"));
    assert_eq!(kc.provider, ProviderKind::Kubeconfig);
    assert_eq!(kc.ca_hash, cp.ca_hash);
    assert_eq!(kc.guest_endpoint, cp.guest_endpoint);
    let token = kc.create_token(Duration::from_secs(900)).unwrap();
    let secret = cp
        .kubectl
        .get("secret", Some("kube-system"), &token.token().secret_name())
        .unwrap()
        .expect("the token Secret");
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    // This time the node is an image of the systemd cgroup driver (containerd switched to
    // SystemdCgroup, the image's own cgroupfs pin removed), while the cluster's shared
    // kubelet-config says cgroupfs: the node's settings go with its join.
    cgroup_driver(&mut ssh, "systemd");
    let mut jc = JoinConfig::new("node-v1b", kubeadm_for_the_test_bed());
    jc.budget = budget;
    jc.ca_pin = Some(cp.ca_hash.clone());
    jc.kubelet = KubeletSettings {
        cgroup_driver: Some("systemd".into()),
        container_runtime_endpoint: Some("unix:///run/containerd/containerd.sock".into()),
        resolv_conf: Some("/etc/resolv.conf".into()),
    };
    let node =
        join(&kc, &token, &mut ssh, &jc).unwrap_or_else(|e| panic!("join (kubeconfig): {e}"));
    let t = node.timings;
    eprintln!(
        "kubeconfig provider: kubeadm join {:?}, registered {:?}, Ready {:?}",
        t.join_command, t.register, t.ready
    );
    assert!(t.ready <= budget);
    let out = ssh
        .exec(
            "cat /var/lib/kubelet/kubeadm-flags.env; systemctl is-active kubepods.slice",
            Duration::from_secs(30),
        )
        .unwrap()
        .stdout;
    for flag in [
        "--cgroup-driver=systemd",
        "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
        "--resolv-conf=/etc/resolv.conf",
    ] {
        assert!(out.contains(flag), "{flag} missing: {out}");
    }
    assert!(
        out.trim_end().ends_with("\nactive"),
        "the kubelet does not run its pods under systemd slices: {out}"
    );
    cgroup_driver(&mut ssh, "cgroupfs");
    leave(&cp, &mut ssh, node, token);

    // The script method: a vendor script that reads nodegate's environment.
    let script = "#!/bin/sh\nset -eu\ntest -s \"$NODEGATE_CA_FILE\"\n\
        exec kubeadm join \"${NODEGATE_API_SERVER#https://}\" --token \"$NODEGATE_TOKEN\" \
        --discovery-token-ca-cert-hash \"$NODEGATE_CA_CERT_HASH\" --node-name \"$NODEGATE_NODE_NAME\" \
        --ignore-preflight-errors=FileExisting-crictl\n";
    ssh.upload_bytes(script.as_bytes(), "/tmp/vendor-join.sh", 0o755)
        .unwrap();
    let token = kc.create_token(Duration::from_secs(900)).unwrap();
    let mut jc = JoinConfig::new(
        "node-v1c",
        JoinMethod::Script {
            path: "/tmp/vendor-join.sh".into(),
        },
    );
    jc.budget = budget;
    let node = join(&kc, &token, &mut ssh, &jc).unwrap_or_else(|e| panic!("join (script): {e}"));
    let t = node.timings;
    eprintln!(
        "kubeconfig provider, script method: script {:?}, registered {:?}, Ready {:?}",
        t.join_command, t.register, t.ready
    );
    let flags = ssh
        .exec(
            "cat /var/lib/kubelet/kubeadm-flags.env",
            Duration::from_secs(30),
        )
        .unwrap()
        .stdout;
    assert!(flags.starts_with("KUBELET_KUBEADM_ARGS=\""), "{flags}");
    leave(&cp, &mut ssh, node, token);

    // The bootstrap-kubeconfig method, on a node whose kubelet is configured already (as
    // a vendor image's would be): config, CA and flags as kubeadm left them, the node
    // name set by --hostname-override.
    let cms = cp
        .kubectl
        .json(&["-n", "kube-system", "get", "configmap"])
        .unwrap();
    let kubelet_config = cms["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("kubelet-config-")
        })
        .expect("a kubelet-config ConfigMap")["data"]["kubelet"]
        .as_str()
        .unwrap()
        .to_string();
    let flags = format!(
        "{} --hostname-override=node-v1d\"\n",
        flags.trim().trim_end_matches('"')
    );
    for (bytes, tmp, dest) in [
        (
            kubelet_config.as_bytes(),
            "/tmp/kubelet-config.yaml",
            "/var/lib/kubelet/config.yaml",
        ),
        (
            cp.ca_pem.as_bytes(),
            "/tmp/kubelet-ca.crt",
            "/etc/kubernetes/pki/ca.crt",
        ),
        (
            flags.as_bytes(),
            "/tmp/kubeadm-flags.env",
            "/var/lib/kubelet/kubeadm-flags.env",
        ),
    ] {
        ssh.upload_bytes(bytes, tmp, 0o644).unwrap();
        let out = ssh
            .exec(
                &format!("sudo install -D -m 0644 {tmp} {dest}"),
                Duration::from_secs(30),
            )
            .unwrap();
        assert!(out.success(), "{}", out.stderr);
    }
    let token = kc.create_token(Duration::from_secs(900)).unwrap();
    let mut jc = JoinConfig::new(
        "node-v1d",
        JoinMethod::BootstrapKubeconfig {
            path: "/etc/kubernetes/bootstrap-kubelet.conf".into(),
            unit: "kubelet.service".into(),
        },
    );
    jc.budget = budget;
    let node = join(&kc, &token, &mut ssh, &jc)
        .unwrap_or_else(|e| panic!("join (bootstrap-kubeconfig): {e}"));
    let t = node.timings;
    eprintln!(
        "kubeconfig provider, bootstrap-kubeconfig method: restart {:?}, registered {:?}, Ready {:?}",
        t.join_command, t.register, t.ready
    );
    leave(&cp, &mut ssh, node, token);
    drop(kc);
    assert!(
        cp.components_running(),
        "the kubeconfig provider stopped nothing"
    );

    drop(ssh);
    drop(vm);
    let pids = cp.component_pids();
    drop(cp);
    for (name, pid) in pids {
        assert!(!alive(pid), "{name} (pid {pid}) survived teardown");
    }
}
