//! The image × control plane grid on the test bed: image v1 on two nodes, first against
//! the local control plane, then against a real kind cluster of the run's own
//! (fixtures/kind), with the checks where the control plane is half of what is checked
//! (the join and Ready, `kubectl logs`/`exec`/`port-forward` through the kubelet, a pod
//! on the node's range, NotReady after a partition and Ready again, pods and Services
//! across nodes, the peers' kubelet port). Every check that passes on local passes on
//! kind; each control plane is driven by the kubectl inside its client skew (the test
//! bed's v1.20.2, not the v1.32.3 also offered); nothing of either is left afterwards.
//! The rest (the agent suite talks to nodegate's own endpoint; the destructive checks
//! boot VMs of their own) runs on the local control plane in CI (tests/run_vm.rs), to
//! keep CI's wall time: `--suite all` on kind passes too: 50 checks pass and the Secure
//! Boot check is not run, as on local (docs/cluster.md has the command and its figures).

mod common;

use common::kind_bed::kind_bed;

#[test]
fn image_v1_on_local_and_kind_gives_a_grid_of_passes_and_leaves_no_cluster() {
    let bed = kind_bed();
    let before = common::host_network();
    let clusters_before = bed.clusters();
    let networks_before = bed.networks();
    let newer = bed.newer_kubectl();
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
        "local".into(),
        "--control-plane".into(),
        "kind".into(),
        "--kind-image".into(),
        bed.image.clone(),
        "--kubectl".into(),
        newer.display().to_string(),
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
        "control plane local (1 of 2)",
        "control plane kind (2 of 2)",
        "test kubelet::node_ready @local ... ok",
        "test kubelet::pinned_pod_runs @kind ... ok",
        "test kubelet::kubectl_reaches_pod @kind ... ok",
        "test kubelet::partition_not_ready_then_ready @kind ... ok",
        "test cluster::pods_across_nodes @kind ... ok",
        "test cluster::service_across_nodes @kind ... ok",
        "image × control plane:",
        "test result: ok.",
    ] {
        assert!(r.stdout.contains(ok), "{ok}: {}", r.stdout);
    }
    let header = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("suite "))
        .unwrap_or_default();
    assert!(
        header.contains("local v1.20.2") && header.contains("kind v1.20.2"),
        "{header}: {}",
        r.stdout
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"], "passed");

    // Each control plane with its own facts: provider, version, why, and its kubectl.
    let cps = json["control_planes"].as_array().unwrap();
    let names: Vec<&str> = cps.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["local", "kind"]);
    for cp in cps {
        let facts = &cp["properties"];
        assert_eq!(facts["control_plane"], cp["provider"], "{cp}");
        assert_eq!(facts["kubernetes.version"], "v1.20.2", "{cp}");
        assert_eq!(facts["network"], "bridge", "{cp}");
        let kubectl = facts["control_plane.kubectl"].as_str().unwrap_or_default();
        assert!(
            kubectl.starts_with("kubectl v1.20.2 (")
                && kubectl.contains("for server v1.20.2: within the client skew")
                && kubectl.ends_with("nearest of 2"),
            "the test bed's kubectl, not v1.32.3: {kubectl}"
        );
    }
    let why = cps[1]["properties"]["control_plane.reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.starts_with("asked for; probe: kind v0.27.0 with Docker 20.10.24")
            && why.contains(&bed.image),
        "{why}"
    );
    // A column's facts are its own, not the run's.
    assert!(
        json["properties"].get("kubernetes.version").is_none(),
        "{}",
        json["properties"]
    );

    // The grid: both suites, both control planes, every check passed.
    let grid = &json["grid"];
    assert_eq!(grid["columns"], serde_json::json!(["local", "kind"]));
    let rows = grid["rows"].as_array().unwrap();
    let mut suites: Vec<&str> = rows.iter().map(|r| r["suite"].as_str().unwrap()).collect();
    suites.sort();
    assert_eq!(suites, ["cluster", "kubelet"], "{grid}");
    for row in rows {
        for cp in ["local", "kind"] {
            let cell = &row["cells"][cp];
            assert_eq!(cell["status"], "passed", "{row}");
            assert_eq!(cell["failed"], 0, "{row}");
            assert_eq!(cell["not_run"], 0, "{row}");
        }
        assert_eq!(
            row["cells"]["local"]["passed"], row["cells"]["kind"]["passed"],
            "{row}"
        );
    }
    // Every check that passes on local passes on kind, and nothing else ran.
    let checks = json["checks"].as_array().unwrap();
    let passed_on = |cp: &str| -> Vec<&str> {
        let mut ids: Vec<&str> = checks
            .iter()
            .filter(|c| c["control_plane"] == cp && c["status"] == "passed")
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        ids.sort();
        ids
    };
    assert!(passed_on("local").len() >= 12, "{}", r.stdout);
    assert_eq!(passed_on("local"), passed_on("kind"));
    // The checks of the booted guest alone (kubelet::version, ...) are the image's: once.
    let once: Vec<&serde_json::Value> = checks
        .iter()
        .filter(|c| c["control_plane"].is_null())
        .collect();
    assert!(once.len() >= 5, "{}", r.stdout);
    assert!(once
        .iter()
        .all(|c| c["status"] == "passed" && c["suite"] == "kubelet"));
    assert_eq!(
        checks.len(),
        once.len() + 2 * passed_on("local").len(),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("test kubelet::recovers_from_kill"));
    assert_eq!(json["nodes"].as_object().unwrap().len(), 4);

    // JUnit: a testsuite per suite and control plane, with that control plane's facts.
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    for suite in [
        "kubelet@local",
        "kubelet@kind",
        "cluster@local",
        "cluster@kind",
    ] {
        assert!(
            junit.contains(&format!("<testsuite name=\"{suite}\"")),
            "{suite}: {junit}"
        );
        assert!(junit.contains(&format!("classname=\"{suite}\"")), "{suite}");
    }
    assert!(junit.contains(r#"<property name="control_plane.name" value="kind"/>"#));

    // Nothing of the run's clusters is left: kind cluster, docker network, host network.
    assert_eq!(bed.clusters(), clusters_before);
    assert_eq!(bed.networks(), networks_before);
    assert_eq!(
        common::host_network(),
        before,
        "the host's namespace changed"
    );
}
