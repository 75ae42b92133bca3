//! The whole gate on the test bed, as CI runs it: image v1 on two nodes of the run's own
//! network, every suite but the roll-out (image v1 has no older image in the field to roll
//! into: tests/rollout.rs rolls image v2 into it), against the local control plane and a real kind cluster of the
//! run's own (fixtures/kind) in one run, which is the image × control plane grid. Every
//! check that passes on local passes on kind; each control plane is driven by the kubectl
//! inside its client skew (the test bed's v1.20.2, not the v1.32.3 also offered); no
//! bootstrap token is on a host command line; nothing of either control plane is left.
//! Needs the test bed (`fixtures/build`, with its kind step).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::check_in;
use common::kind_bed::{kind_bed, KindBed};
use quick_junit::Report;
use serde_json::Value;

/// The grid's columns, in the order given.
const COLUMNS: [&str; 2] = ["local", "kind"];

/// Watches every process's command line on the host while it runs, and returns those
/// that carried something shaped like a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`)
/// beside a word of the join (kubeadm, kubectl, token, nodegate).
struct TokenWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl TokenWatch {
    fn start() -> TokenWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let token = regex::Regex::new(r"(^|[^a-z0-9.])[a-z0-9]{6}\.[a-z0-9]{16}([^a-z0-9.]|$)")
                .unwrap();
            let mut seen = Vec::new();
            while !s.load(Ordering::SeqCst) {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                        continue;
                    };
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    let joinish = ["kubeadm", "kubectl", "token", "nodegate"]
                        .iter()
                        .any(|w| line.contains(w));
                    if joinish && token.is_match(&line) && !seen.contains(&line) {
                        seen.push(line);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        TokenWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The whole gate on image v1, two nodes on each control plane's own network, every
/// suite, local and kind: each node gets its address from the run's DHCP and its pod
/// range from the controller manager; kubectl logs/exec/port-forward reach pods on both,
/// pods reach each other across the nodes, the kubelet port answers between them, a
/// ClusterIP Service reaches both nodes' pods from each node (kube-proxy), a partitioned
/// node goes NotReady and comes back, the kubelet recovers from a kill and the bundle
/// upgrades a node in place, each against both control planes; the destructive checks run
/// last, each on one of its column's two nodes (no VM boots for them).
#[test]
fn the_full_flow_passes_on_two_nodes_of_image_v1_on_local_and_kind() {
    let bed = kind_bed();
    let host_before = common::host_network();
    let clusters_before = bed.clusters();
    let networks_before = bed.networks();
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel).display().to_string();
    let mut args = common::v1_run_args();
    args.extend([
        "--suites".into(),
        common::repo("suites"),
        "--control-plane".into(),
        "local".into(),
        "--control-plane".into(),
        "kind".into(),
        "--kind-image".into(),
        bed.image.clone(),
        "--kubectl".into(),
        bed.newer_kubectl().display().to_string(),
        "--upgrade-bundle".into(),
        common::bundle("bundle-v2"),
        // Image v1 has no older image in the field to roll into: the roll-out is
        // tests/rollout.rs's, image v2 over image v1.
        "--skip-tag".into(),
        "rollout".into(),
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
    let watch = TokenWatch::start();
    let r = common::run_env(&args, dir.path(), &env);
    let leaked = watch.finish();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        leaked.is_empty(),
        "a bootstrap token was on a host command line: {leaked:#?}"
    );
    assert_full_flow(dir.path(), &r.stdout, &bed);
    // Nothing of the run's clusters is left: kind cluster, docker network, host network.
    assert_eq!(bed.clusters(), clusters_before);
    assert_eq!(bed.networks(), networks_before);
    assert_eq!(
        common::host_network(),
        host_before,
        "the host's namespace changed"
    );
}

/// What the passing run in `dir` (`junit.xml`, `report.json`, `report.html`,
/// `artifacts/`) and its `stdout` must show.
fn assert_full_flow(dir: &Path, stdout: &str, bed: &KindBed) {
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"], "passed");
    assert_eq!(json["exit_code"], 0);
    assert!(json["finished"].is_string());
    assert_terminal(stdout);
    assert_columns(&json, bed);
    assert_grid(&json, stdout);
    assert_junit(dir, &json);
    let groups = assert_nodes(&json);
    assert_cluster_checks(&json, &groups);
    assert_destructive_on_the_runs_nodes(&json, &groups);
    assert_timeline_and_page(dir, &json);
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
}

/// The terminal: both control planes in turn, the node-level checks against each.
fn assert_terminal(stdout: &str) {
    for ok in [
        "control plane local (1 of 2)",
        "control plane kind (2 of 2)",
        "test kubelet::pinned_pod_runs @local ... ok",
        "test kubelet::kubectl_reaches_pod @local ... ok",
        "test kubelet::partition_not_ready_then_ready @local ... ok",
        "test agent::heartbeats_under_latency_and_loss ... ok",
        "test agent::reregisters_after_partition ... ok",
        "test cluster::pods_across_nodes @local ... ok",
        "test cluster::service_across_nodes @local ... ok",
        "test cluster::peer_kubelet_port @local ... ok",
        "test kubelet::pinned_pod_runs @kind ... ok",
        "test kubelet::kubectl_reaches_pod @kind ... ok",
        "test kubelet::partition_not_ready_then_ready @kind ... ok",
        "test kubelet::recovers_from_kill @kind ... ok",
        "test hot-upgrade::in_place @kind ... ok",
        "test cluster::pods_across_nodes @kind ... ok",
        "test cluster::service_across_nodes @kind ... ok",
        "test cluster::peer_kubelet_port @kind ... ok",
        "image × control plane:",
        "test result: ok.",
    ] {
        assert!(stdout.contains(ok), "{ok}: {stdout}");
    }
    let header = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("suite "))
        .unwrap_or_default();
    assert!(
        header.contains("local v1.20.2") && header.contains("kind v1.20.2"),
        "{header}: {stdout}"
    );
}

/// Each control plane with its own facts: provider, version, network, why, its kubectl.
fn assert_columns(json: &Value, bed: &KindBed) {
    let cps = json["control_planes"].as_array().unwrap();
    let names: Vec<&str> = cps.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, COLUMNS);
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
    // A column's facts are its own, not the run's; the run's are the run's.
    let run = &json["properties"];
    for k in ["kubernetes.version", "control_plane", "network"] {
        assert!(run.get(k).is_none(), "{k}: {run}");
    }
    assert_eq!(run["nodes"], "2", "{run}");
    // This machine's kernel has no netem: the link emulator shaped the agent's link.
    let shaping = run["link.shaping"].as_str().unwrap_or("absent");
    assert!(["netem", "wirefilter"].contains(&shaping), "{shaping}");
}

/// The grid: every suite with node-level checks, both columns, every cell passed with
/// the same count; the checks of the image alone ran once; every check ran but the one
/// image v1's profile does not ask for.
fn assert_grid(json: &Value, stdout: &str) {
    let grid = &json["grid"];
    assert_eq!(grid["columns"], serde_json::json!(COLUMNS));
    let rows = grid["rows"].as_array().unwrap();
    let mut suites: Vec<&str> = rows.iter().map(|r| r["suite"].as_str().unwrap()).collect();
    suites.sort();
    for s in ["cluster", "hot-upgrade", "kubelet"] {
        assert!(suites.contains(&s), "{s}: {grid}");
    }
    for row in rows {
        for cp in COLUMNS {
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
    let local = passed_on("local");
    assert!(local.len() >= 15, "{local:?}");
    assert_eq!(local, passed_on("kind"), "every check that passes on local");
    let once: Vec<&Value> = checks
        .iter()
        .filter(|c| c["control_plane"].is_null())
        .collect();
    let listed = common::ok(
        &[
            "run",
            "--list",
            "--suites",
            &common::repo("suites"),
            "--skip-tag",
            "rollout",
        ],
        Path::new("."),
    );
    let listed = listed.stdout.matches(": test").count();
    assert_eq!(
        once.len() + local.len(),
        listed,
        "every check, once per column"
    );
    assert_eq!(checks.len(), once.len() + 2 * local.len(), "{stdout}");
    let not_run: Vec<&str> = checks
        .iter()
        .filter(|c| c["status"] != "passed")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(not_run, ["integrity::secure_boot"], "{stdout}");
    let secure_boot = check_in(json, "id", "integrity::secure_boot");
    assert_eq!(secure_boot["status"], "not-run", "{secure_boot}");
    assert!(
        secure_boot["reason"]
            .as_str()
            .is_some_and(|r| r.contains("does not demand Secure Boot")),
        "{secure_boot}"
    );
    // The agent talks to nodegate's own endpoint: the image's, once, on the link shaped.
    let shaped = check_in(json, "id", "agent::heartbeats_under_latency_and_loss");
    assert!(shaped["control_plane"].is_null(), "{shaped}");
    let out = shaped["attempts"][0]["output"].as_str().unwrap_or_default();
    assert!(out.contains("200 ms latency, 10% loss"), "{out}");
}

/// JUnit: the image's suites once, a testsuite per suite and control plane with that
/// control plane's facts, every testcase counted, strict, the guest's output kept.
fn assert_junit(dir: &Path, json: &Value) {
    let xml = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    common::junit_rules::assert_strict("the full flow's JUnit", &xml);
    let junit = Report::deserialize_from_str(&xml).unwrap();
    assert_eq!(junit.failures + junit.errors, 0);
    assert_eq!(common::junit_skipped(&junit), 1, "every other check ran");
    // Every check of the report, and the run's own testcase, which passed.
    assert_eq!(junit.tests, json["checks"].as_array().unwrap().len() + 1);
    assert_eq!(common::run_error(&dir.join("junit.xml")), None);
    let suite = |name: &str| {
        junit
            .test_suites
            .iter()
            .find(|s| s.name.as_str() == name)
            .unwrap_or_else(|| panic!("no testsuite {name}"))
    };
    let prop = |s: &quick_junit::TestSuite, n: &str| {
        s.properties
            .iter()
            .find(|p| p.name.as_str() == n)
            .map(|p| p.value.to_string())
            .unwrap_or_else(|| panic!("{}: no property {n}", s.name.as_str()))
    };
    for s in ["integrity", "containerd", "kubelet", "agent"] {
        suite(s);
    }
    for s in ["kubelet", "cluster", "hot-upgrade"] {
        for cp in COLUMNS {
            let name = format!("{s}@{cp}");
            let ts = suite(&name);
            assert!(xml.contains(&format!("classname=\"{name}\"")), "{name}");
            assert_eq!(prop(ts, "control_plane.name"), cp);
            assert_eq!(prop(ts, "control_plane"), cp);
            assert_eq!(prop(ts, "kubernetes.version"), "v1.20.2");
        }
    }
    let run = &junit.test_suites[0];
    assert_eq!(prop(run, "image.name"), "nodegate-node");
    assert_eq!(prop(run, "image.version"), "1");
    assert_eq!(prop(run, "image.signed"), "true");
    assert_eq!(prop(run, "accel"), "tcg");
    assert_eq!(prop(run, "image.disk_sha256").len(), 64);
    assert_eq!(prop(run, "nodegate.version"), env!("CARGO_PKG_VERSION"));
    // Output of the guest's commands lands in system-out.
    let version = suite("kubelet")
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == "version")
        .unwrap();
    let out = version.system_out.as_ref().unwrap().to_string();
    assert!(out.contains("Kubernetes v1.20.2"), "{out}");
}

/// Eight nodes, four per control plane (its two, one per destructive check), named
/// `PREFIX-N` per control plane; each node's facts under its name: deterministic address
/// and MAC per slot on its own network, two pod ranges, its boot and join times, its
/// role; a boot and a join phase per node, each naming it. The nodes by prefix.
fn assert_nodes(json: &Value) -> BTreeMap<String, Vec<String>> {
    let nodes = json["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in nodes.keys() {
        let (prefix, _) = name.rsplit_once('-').unwrap();
        groups.entry(prefix.into()).or_default().push(name.clone());
    }
    assert_eq!(groups.len(), 2, "{groups:?}");
    let fact = |node: &str, k: &str| -> String {
        nodes[node][k]
            .as_str()
            .unwrap_or_else(|| panic!("{node}: no {k}: {}", nodes[node]))
            .to_string()
    };
    for names in groups.values_mut() {
        names.sort_by_key(|n| n.rsplit_once('-').unwrap().1.parse::<u32>().unwrap());
        assert_eq!(fact(&names[0], "address"), "10.0.2.15");
        assert_eq!(fact(&names[0], "mac"), "52:54:00:6e:67:00");
        assert_eq!(fact(&names[1], "address"), "10.0.2.16");
        let roles: Vec<String> = names.iter().map(|n| fact(n, "role")).collect();
        assert_eq!(roles, ["shared", "peer"], "{names:?}");
        // Once the node-level checks were done, each was a destructive check's own.
        for n in names.iter() {
            assert_eq!(fact(n, "reused"), "true", "{n}");
        }
        assert_ne!(fact(&names[0], "pod_cidr"), fact(&names[1], "pod_cidr"));
        for n in names.iter() {
            for k in ["boot.ssh_secs", "boot.ready_secs", "join.ready_secs"] {
                assert!(fact(n, k).parse::<f64>().is_ok(), "{n}: {k}");
            }
        }
    }
    for p in ["boot", "join"] {
        let mut of: Vec<&str> = json["phases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["name"] == p)
            .map(|x| x["node"].as_str().unwrap())
            .collect();
        of.sort();
        let mut all: Vec<&str> = nodes.keys().map(String::as_str).collect();
        all.sort();
        assert_eq!(of, all, "{p}");
    }
    let phases = common::phase_names(json);
    for p in ["verify", "control-plane", "boot", "join", "teardown"] {
        assert!(phases.iter().any(|q| q == p), "{phases:?}");
    }
    assert!(json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["duration_secs"].is_number() && p["started"].is_string()));
    groups
}

/// The entry of check `id` against control plane `cp`.
fn check_on(json: &Value, id: &str, cp: &str) -> Value {
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id && c["control_plane"] == cp)
        .unwrap_or_else(|| panic!("{id} @{cp} not in the report"))
        .clone()
}

/// Against each control plane: the cluster's checks ran on that control plane's shared
/// node and say so, reached pods on both nodes, the Service answered from both nodes,
/// the partitioned node went NotReady and came back, the upgrade's NotReady window.
fn assert_cluster_checks(json: &Value, groups: &BTreeMap<String, Vec<String>>) {
    let mut shared = Vec::new();
    for cp in COLUMNS {
        let node = check_on(json, "cluster::pods_across_nodes", cp)["node"]
            .as_str()
            .unwrap()
            .to_string();
        let group = groups
            .values()
            .find(|g| g[0] == node)
            .unwrap_or_else(|| panic!("{cp}: {node} is no group's shared node: {groups:?}"));
        for c in json["checks"].as_array().unwrap() {
            if c["control_plane"] == cp && c["node"].is_string() {
                let on = c["node"].as_str().unwrap();
                assert!(group.iter().any(|n| n == on), "{cp}: {c}");
            }
        }
        let across = check_on(json, "kubelet::kubectl_reaches_pod", cp);
        assert_eq!(across["node"].as_str(), Some(node.as_str()), "{across}");
        let out = across["attempts"][0]["output"].as_str().unwrap_or_default();
        assert_eq!(
            out.matches("kubectl port-forward ok").count(),
            2,
            "{cp}: {out}"
        );
        let service = check_on(json, "cluster::service_across_nodes", cp);
        let out = service["attempts"][0]["output"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(out.matches("answered by {").count(), 2, "{cp}: {out}");
        let partition = check_on(json, "kubelet::partition_not_ready_then_ready", cp);
        let out = partition["attempts"][0]["output"]
            .as_str()
            .unwrap_or_default();
        assert!(
            out.contains("NotReady") && out.contains("after the link came back"),
            "{cp}: {out}"
        );
        let upgrade = check_on(json, "hot-upgrade::in_place", cp);
        let out = upgrade["attempts"][0]["output"]
            .as_str()
            .unwrap_or_default();
        assert!(out.contains("NotReady window"), "{cp}: {out}");
        shared.push(node);
    }
    assert_ne!(
        shared[0], shared[1],
        "each control plane has nodes of its own"
    );
}

/// The destructive checks ran last, each on a node of its column that no other check
/// needed any more: no VM booted for them, and none ran on a node another had changed.
fn assert_destructive_on_the_runs_nodes(json: &Value, groups: &BTreeMap<String, Vec<String>>) {
    let destructive: Vec<&Value> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["destructive"] == true && c["status"] == "passed")
        .collect();
    assert_eq!(destructive.len(), 4, "two per control plane");
    for cp in COLUMNS {
        let mut on: Vec<&str> = destructive
            .iter()
            .filter(|c| c["control_plane"] == cp)
            .map(|c| c["node"].as_str().unwrap())
            .collect();
        on.sort();
        let group = groups
            .values()
            .find(|g| g.iter().any(|n| n == on[0]))
            .unwrap_or_else(|| panic!("{cp}: {on:?} in no group: {groups:?}"));
        let mut nodes: Vec<&str> = group.iter().map(String::as_str).collect();
        nodes.sort();
        assert_eq!(on, nodes, "{cp}: one destructive check on each node");
    }
    let boots = common::phase_names(json)
        .iter()
        .filter(|p| *p == "boot")
        .count();
    assert_eq!(
        boots, 4,
        "two boots per control plane, none for the destructive checks"
    );
}

/// The timeline: what the checks saw happen, on the node it happened to; the page, as
/// Chromium renders it: the verdict, and a row per node with its boot, join, Ready and
/// the checks run on it (a cluster check is drawn on the node it runs from), and the
/// marks on the nodes they concern.
fn assert_timeline_and_page(dir: &Path, json: &Value) {
    let console = json["artifacts"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("/console"))
        .map(|(_, v)| PathBuf::from(v.as_str().unwrap()))
        .expect("a console artifact");
    assert!(std::fs::read_to_string(console)
        .unwrap()
        .contains("Linux version"));
    assert!(dir.join("artifacts/profile.toml").is_file());
    let marks = json["timeline"].as_array().unwrap();
    let kinds: std::collections::BTreeSet<&str> =
        marks.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    for k in [
        "not-ready",
        "link-cut",
        "link-shaped",
        "upgrade",
        "heartbeat",
    ] {
        assert!(kinds.contains(k), "no {k} mark in the timeline: {kinds:?}");
    }
    for m in marks {
        assert!(
            json["nodes"].get(m["node"].as_str().unwrap()).is_some(),
            "{m}"
        );
    }
    let page = common::browser::render(&dir.join("report.html"));
    assert_eq!(page.verdict(), "passed");
    let rows = page.timeline();
    assert_eq!(rows[0].0, "(run)", "{rows:?}");
    let mut ran_on = 0;
    for (node, _) in json["nodes"].as_object().unwrap() {
        let (_, kinds) = rows
            .iter()
            .find(|(n, _)| n == node)
            .unwrap_or_else(|| panic!("no timeline row for {node}: {rows:?}"));
        let ran_here = json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["node"] == node.as_str());
        let expected: &[&str] = if ran_here {
            &["boot", "join", "ready", "check", "teardown"]
        } else {
            &["boot", "join", "ready", "teardown"]
        };
        for k in expected {
            assert!(
                kinds.iter().any(|x| x == k),
                "{node}'s row lacks {k}: {kinds:?}"
            );
        }
        ran_on += usize::from(ran_here);
    }
    assert_eq!(
        ran_on, 4,
        "checks on every node: the shared ones', and each one's destructive check: {rows:?}"
    );
    for m in marks {
        let (node, kind) = (m["node"].as_str().unwrap(), m["kind"].as_str().unwrap());
        let row = &rows.iter().find(|(n, _)| n == node).unwrap().1;
        assert!(
            row.iter().any(|k| k == kind),
            "{kind} of {node} not drawn: {row:?}"
        );
    }
}
