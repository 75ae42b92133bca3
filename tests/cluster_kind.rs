//! The kind provider against real kind (the test bed's: fixtures/kind): clusters of their
//! own wired into their run's network, torn down without a trace, two at once.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Instant;

mod common;

use common::kind_bed::{kind_bed, KindBed};
use nodegate::cluster::{ControlPlane, ControlPlaneConfig, KindConfig, ProviderKind};
use nodegate::network::RunNetwork;

fn config(bed: &KindBed, name: &str, state: &Path) -> ControlPlaneConfig {
    ControlPlaneConfig::Kind(KindConfig {
        cluster: Some(name.into()),
        image: Some(bed.image.clone()),
        path: Some(bed.path().into()),
        state_dir: Some(state.to_owned()),
        ..KindConfig::default()
    })
}

/// What one cluster must show: its own single node, the address the nodes dial in
/// cluster-info, and a way back from the API server's namespace to the nodes' segment.
fn assert_wired(bed: &KindBed, name: &str, cp: &ControlPlane, net: &RunNetwork) {
    assert_eq!(cp.provider, ProviderKind::Kind);
    assert_eq!(cp.guest_server(), "https://10.0.2.100:6443");
    let nodes = cp.kubectl.json(&["get", "nodes"]).unwrap();
    let names: Vec<&str> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [format!("{name}-control-plane")], "{nodes}");
    let v = cp.kubectl.json(&["version"]).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.20.2", "{v}");
    let ci = cp
        .kubectl
        .get("configmap", Some("kube-public"), "cluster-info")
        .unwrap()
        .unwrap();
    let kc = ci["data"]["kubeconfig"].as_str().unwrap();
    assert!(kc.contains("server: https://10.0.2.100:6443"), "{kc}");

    // The API server's namespace reaches the nodes' segment (as it reaches a kubelet):
    // a server at the gateway address answers a client started in the kind node.
    let listener = net
        .dialer()
        .bind(SocketAddr::from((Ipv4Addr::new(10, 0, 2, 2), 0)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let greeting = format!("hello from {name}'s run network\n");
    let serve = {
        let greeting = greeting.clone();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(greeting.as_bytes()).unwrap();
        })
    };
    let got = bed.docker(&[
        "exec",
        &format!("{name}-control-plane"),
        "socat",
        "-T5",
        "-",
        &format!("TCP:10.0.2.2:{port},connect-timeout=5"),
    ]);
    serve.join().unwrap();
    assert_eq!(got, greeting);
}

#[test]
fn two_kind_clusters_at_once_each_on_its_own_run_network_and_nothing_left_after() {
    let bed = kind_bed();
    let before = common::host_network();
    let pid = std::process::id();
    let names = [format!("nodegate-t{pid}a"), format!("nodegate-t{pid}b")];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let t0 = Instant::now();
    let made: Vec<(RunNetwork, ControlPlane)> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(&dirs)
            .map(|(name, dir)| {
                let bed = &bed;
                s.spawn(move || {
                    let net = RunNetwork::create(&[], &dir.path().join("net"), false).unwrap();
                    let cp = config(bed, name, &dir.path().join("cp"))
                        .start(Some(&net))
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    (net, cp)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "two kind clusters up in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for (name, (net, cp)) in names.iter().zip(&made) {
        assert_wired(&bed, name, cp, net);
    }
    // Both answer at the same address, each in its own run's namespace: the two CAs differ.
    assert_ne!(made[0].1.ca_hash, made[1].1.ca_hash);
    let clusters = bed.clusters();
    assert!(names.iter().all(|n| clusters.contains(n)), "{clusters:?}");
    let networks = bed.networks();
    assert!(names.iter().all(|n| networks.contains(n)), "{networks:?}");
    assert_eq!(
        common::host_network(),
        before,
        "the host's namespace changed"
    );

    drop(made);
    let clusters = bed.clusters();
    assert!(!names.iter().any(|n| clusters.contains(n)), "{clusters:?}");
    let networks = bed.networks();
    assert!(!names.iter().any(|n| networks.contains(n)), "{networks:?}");
    let containers = bed.docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        !names.iter().any(|n| containers.contains(n.as_str())),
        "{containers}"
    );
}

/// `nodegate run --control-plane kind` on image v1 with `extra` arguments and `env`
/// added to the test bed's kind environment; the probe stops it before anything starts.
fn kind_run(bed: &KindBed, extra: &[&str], env: &[(&str, String)]) -> common::Run {
    let dir = tempfile::tempdir().unwrap();
    let mut args = common::v1_run_args();
    args.extend([
        "--suites".into(),
        common::repo("suites"),
        "--suite".into(),
        "kubelet".into(),
        "--control-plane".into(),
        "kind".into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let all = bed.env_with(env);
    let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::run_env(&args, dir.path(), &env)
}

/// Exactly one line on stderr, with `needle` in it; nothing on stdout.
fn assert_one_line(r: &common::Run, code: i32, needle: &str) {
    assert_eq!(r.code, code, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains(needle),
        "{needle:?} not in {:?}",
        lines[0]
    );
    assert!(r.stdout.trim().is_empty(), "{}", r.stdout);
}

/// A tiny image in `docker import`'s input format: busybox, and `/kind/version` holding
/// `version` if given.
fn busybox_tar(dir: &Path, version: Option<&str>) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = root.join("bin/busybox");
    std::fs::copy("/bin/busybox", &busybox).unwrap();
    for a in ["sh", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    if let Some(v) = version {
        std::fs::create_dir_all(root.join("kind")).unwrap();
        std::fs::write(root.join("kind/version"), v).unwrap();
    }
    let tar = dir.join("image.tar");
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    tar
}

#[test]
fn a_machine_that_cannot_run_kind_is_one_line_before_anything_starts() {
    let bed = kind_bed();
    let before = bed.clusters();

    // No engine where DOCKER_HOST points.
    let none = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}/docker.sock", none.path().display());
    let r = kind_run(
        &bed,
        &["--kind-image", &bed.image],
        &[("DOCKER_HOST", sock.clone())],
    );
    assert_one_line(
        &r,
        5,
        &format!("kind provider: no Docker engine answers DOCKER_HOST={sock}"),
    );

    // A kind too old to drive, found first on PATH.
    let old = tempfile::tempdir().unwrap();
    let fake = old.path().join("kind");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'kind v0.9.0 go1.15.2 linux/amd64'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = kind_run(
        &bed,
        &["--kind-image", &bed.image],
        &[("PATH", format!("{}:{}", old.path().display(), bed.path()))],
    );
    assert_one_line(
        &r,
        5,
        "kind v0.9.0 go1.15.2 linux/amd64 is not supported (nodegate needs kind v0.20 or later",
    );

    // An image that is not a kind node image: bad input.
    let work = tempfile::tempdir().unwrap();
    let tar = busybox_tar(work.path(), None);
    let tag = "nodegate.local/not-a-kind-node:1";
    bed.docker(&["import", &tar.display().to_string(), tag]);
    let r = kind_run(&bed, &["--kind-image", tag], &[]);
    assert_one_line(
        &r,
        3,
        &format!("kind provider: node image {tag} is not a kind node image: no Kubernetes version in /kind/version"),
    );
    // An image nobody has, on a machine that cannot pull.
    let r = kind_run(&bed, &["--kind-image", "nodegate.local/absent:1"], &[]);
    assert_one_line(
        &r,
        5,
        "node image nodegate.local/absent:1: not in the Docker engine and not pullable",
    );
    assert_eq!(bed.clusters(), before, "a failed probe created a cluster");
}

/// A second dockerd of the test's own, in a namespace of its own, started with a
/// capability bounding set that lacks CAP_SYS_RESOURCE (`setpriv`): privileged containers
/// fail there on any host, as on this sandbox without the runtime adjustment.
struct BareEngine {
    _dockerd: nodegate::process::ProcessGroup,
    _ns: nodegate::network::Namespace,
    dir: tempfile::TempDir,
}

impl BareEngine {
    fn start(bed: &KindBed) -> BareEngine {
        let dir = tempfile::tempdir().unwrap();
        let ns = nodegate::network::Namespace::create().unwrap();
        let d = dir.path();
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--bounding-set", "-sys_resource", "--"])
            .arg(bed.bin.join("dockerd"))
            .arg(format!("--host=unix://{}/docker.sock", d.display()))
            .arg(format!("--data-root={}/data", d.display()))
            .arg(format!("--exec-root={}/exec", d.display()))
            .arg(format!("--pidfile={}/dockerd.pid", d.display()))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .env("PATH", bed.path())
            .stdout(std::fs::File::create(d.join("dockerd.log")).unwrap())
            .stderr(std::fs::File::create(d.join("dockerd.err")).unwrap());
        ns.enter(&mut cmd);
        let dockerd = nodegate::process::ProcessGroup::spawn("dockerd", &mut cmd).unwrap();
        let engine = BareEngine {
            _dockerd: dockerd,
            _ns: ns,
            dir,
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while !engine.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the bare dockerd did not answer: {}",
                std::fs::read_to_string(engine.dir.path().join("dockerd.err")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(kind_bed().bin.join("docker"))
            .env("DOCKER_HOST", self.host())
            .args(args)
            .output()
            .unwrap()
    }
}

#[test]
fn an_engine_that_cannot_run_privileged_containers_is_named_with_the_reason() {
    let bed = kind_bed();
    let engine = BareEngine::start(&bed);
    let work = tempfile::tempdir().unwrap();
    let tar = busybox_tar(work.path(), Some("v1.20.2\n"));
    let tag = "nodegate.local/tiny-kind-node:1";
    let o = engine.docker(&["import", &tar.display().to_string(), tag]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = kind_run(
        &bed,
        &["--kind-image", tag],
        &[("DOCKER_HOST", engine.host())],
    );
    assert_one_line(
        &r,
        5,
        &format!(
            "kind provider: the Docker engine at DOCKER_HOST={} cannot run a privileged container",
            engine.host()
        ),
    );
    assert!(r.stderr.contains("apply caps"), "{}", r.stderr);
    // doctor runs the same probe and says the same.
    let line = doctor_kind_line(&bed, tag, &engine.host());
    assert!(line.contains(" no "), "{line}");
    assert!(line.contains("cannot run a privileged container"), "{line}");
}

/// `nodegate doctor --kind-image IMAGE`'s kind line, on the engine at `docker_host`.
fn doctor_kind_line(bed: &KindBed, image: &str, docker_host: &str) -> String {
    let env = bed.env_with(&[("DOCKER_HOST", docker_host.to_string())]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let r = common::run_env(&["doctor", "--kind-image", image], dir.path(), &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.stdout
        .lines()
        .find(|l| l.starts_with("kind "))
        .unwrap_or_else(|| panic!("no kind line: {}", r.stdout))
        .to_string()
}

#[test]
fn doctor_shows_the_kind_probe_and_the_engines_runtime() {
    let bed = kind_bed();
    let line = doctor_kind_line(&bed, &bed.image, &bed.docker_host);
    assert!(line.contains(" ok "), "{line}");
    assert!(
        line.contains(&format!(
            "kind v0.27.0 with Docker 20.10.24+dfsg1 (DOCKER_HOST={}",
            bed.docker_host
        )),
        "{line}"
    );
    assert!(line.contains("(Kubernetes v1.20.2)"), "{line}");
    // This sandbox lacks CAP_SYS_RESOURCE: the test bed's engine runs the adjusted runtime,
    // and doctor says both. (On a host that has it, the engine's runtime is runc.)
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    if bnd >> 24 & 1 == 0 {
        assert!(line.contains("default runtime nodegate-runc"), "{line}");
        assert!(line.contains("lacks CAP_SYS_RESOURCE"), "{line}");
    } else {
        assert!(line.contains("default runtime runc"), "{line}");
        assert!(!line.contains("lacks CAP_SYS_RESOURCE"), "{line}");
    }
}

/// A `nodegate run --control-plane kind` on image v1 in the background, once the node
/// container of its cluster exists (kind is creating it): the child and the cluster's
/// name, as the run noted it in its record (other tests make clusters at the same time).
fn kind_run_until_its_cluster_exists(
    bed: &KindBed,
    state: &Path,
    work: &Path,
) -> (std::process::Child, String) {
    let mut child = common::nodegate()
        .args(common::v1_run_args())
        .args(["--suites", &common::repo("suites"), "--suite", "kubelet"])
        .args(["--control-plane", "kind", "--kind-image", &bed.image])
        .env("NODEGATE_STATE", state)
        .envs(bed.env())
        .current_dir(work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let noted = std::fs::read_dir(state)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("run.json")).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .find_map(|r| r["kind_clusters"][0]["name"].as_str().map(String::from));
        if let Some(n) = noted {
            let containers = bed.docker(&["ps", "-a", "--format", "{{.Names}}"]);
            if containers
                .lines()
                .any(|c| c == format!("{n}-control-plane"))
            {
                return (child, n);
            }
        }
        assert!(Instant::now() < deadline, "no kind node container appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "nodegate ended before its cluster appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Neither the cluster nor its network nor its node container is there.
fn assert_gone(bed: &KindBed, name: &str) {
    assert!(
        !bed.clusters().iter().any(|c| c == name),
        "{:?}",
        bed.clusters()
    );
    assert!(
        !bed.networks().iter().any(|n| n == name),
        "{:?}",
        bed.networks()
    );
    let containers = bed.docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!containers.contains(name), "{containers}");
}

#[test]
fn a_killed_runs_kind_cluster_is_found_and_deleted_by_the_next_nodegate() {
    let bed = kind_bed();
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (mut child, name) = kind_run_until_its_cluster_exists(&bed, state.path(), work.path());
    child.kill().unwrap();
    child.wait().unwrap();
    // Let kind's own create, now orphaned, finish or fail: what it leaves is the case.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let r = common::run_env(
        &["doctor"],
        work.path(),
        &[
            ("NODEGATE_STATE", state.path().to_str().unwrap()),
            ("DOCKER_HOST", &bed.docker_host),
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let stale = r
        .stdout
        .lines()
        .find(|l| l.starts_with("stale runs"))
        .unwrap_or_default();
    assert!(
        stale.contains(&format!("kind cluster {name} deleted")),
        "{}",
        r.stdout
    );
    assert_gone(&bed, &name);
}

#[test]
fn sigterm_while_kind_creates_the_cluster_deletes_it_before_nodegate_exits() {
    let bed = kind_bed();
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (child, name) = kind_run_until_its_cluster_exists(&bed, state.path(), work.path());
    // SAFETY: kill(2) on a child of ours that has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert_gone(&bed, &name);
    let left: Vec<_> = std::fs::read_dir(state.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}
