//! `nodegate run --control-plane kind` end to end on the test bed: image v1 on two nodes
//! against a real kind cluster of the run's own (fixtures/kind), the checks where the
//! control plane is half of what is checked (the join and Ready, `kubectl logs`/`exec`/
//! `port-forward` through the kubelet, a pod on the node's range, NotReady after a
//! partition and Ready again, pods and Services across nodes, the peers' kubelet port),
//! and nothing of the cluster left afterwards. The rest (the agent suite talks to
//! nodegate's own endpoint; the destructive checks boot VMs of their own) runs on the
//! local control plane in CI (tests/run_vm.rs), to keep CI's wall time: `--suite all` on
//! kind passes too: 50 checks pass and the Secure Boot check is not run, as on local
//! (docs/cluster.md has the command and its figures).

mod common;

use common::kind_bed::kind_bed;

#[test]
fn image_v1_passes_on_two_nodes_with_a_kind_control_plane_and_leaves_no_cluster() {
    let bed = kind_bed();
    let before = common::host_network();
    let clusters_before = bed.clusters();
    let networks_before = bed.networks();
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel).display().to_string();
    let mut args = common::v1_run_args();
    args.extend([
        "--suites".into(),
        common::repo("suites"),
        "--suite".into(),
        "kubelet,cluster".into(),
        "--skip".into(),
        "kubelet::recovers_from_kill".into(),
        "--control-plane".into(),
        "kind".into(),
        "--kind-image".into(),
        bed.image.clone(),
        "--nodes".into(),
        "2".into(),
        "--accel".into(),
        "tcg".into(),
        "--junit".into(),
        p("junit.xml"),
        "--json".into(),
        p("report.json"),
        "--artifacts".into(),
        p("artifacts"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = bed.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = common::run_env(&args, dir.path(), &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for ok in [
        "phase control-plane ... ok",
        "test kubelet::pinned_pod_runs ... ok",
        "test kubelet::kubectl_reaches_pod ... ok",
        "test kubelet::partition_not_ready_then_ready ... ok",
        "test cluster::pods_across_nodes ... ok",
        "test cluster::service_across_nodes ... ok",
        "test kubelet::node_ready ... ok",
        "test result: ok.",
    ] {
        assert!(r.stdout.contains(ok), "{ok}: {}", r.stdout);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"], "passed");
    let props = &json["properties"];
    assert_eq!(props["control_plane"], "kind");
    assert_eq!(props["kubernetes.version"], "v1.20.2");
    assert_eq!(props["network"], "bridge");
    let why = props["control_plane.reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("asked for; probe: kind v0.27.0 with Docker 20.10.24"),
        "{why}"
    );
    assert!(why.contains(&bed.image), "{why}");
    // Every selected check ran and passed.
    let checks = json["checks"].as_array().unwrap();
    let not_passed: Vec<&str> = checks
        .iter()
        .filter(|c| ["failed", "flaky", "not-run"].contains(&c["status"].as_str().unwrap()))
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(not_passed.is_empty(), "{not_passed:?}: {}", r.stdout);
    let passed = checks.iter().filter(|c| c["status"] == "passed").count();
    assert!(passed >= 20, "{passed} passed: {}", r.stdout);
    assert!(!r.stdout.contains("test kubelet::recovers_from_kill ... ok"));
    assert_eq!(json["nodes"].as_object().unwrap().len(), 2);

    // Nothing of the run's cluster is left: cluster, docker network, host network.
    assert_eq!(bed.clusters(), clusters_before);
    assert_eq!(bed.networks(), networks_before);
    assert_eq!(
        common::host_network(),
        before,
        "the host's namespace changed"
    );
}
