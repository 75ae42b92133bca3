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
