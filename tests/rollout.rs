//! The hybrid roll-out on the test bed (suites/rollout.toml): image v2 (the candidate)
//! rolled out into a pool of image v1 nodes (the legacy image) on one local control plane,
//! with a client on the run's network counting every request:
//! - 1 legacy + 1 candidate pass every roll-out check: a mixed pool serving from both, the
//!   provisioning of both measured, the legacy node hot-upgraded in place and then
//!   replaced with nothing lost, each node's timeline and the client's in the reports;
//! - a candidate whose kubelet crash-loops fails the mixed pool by name while the legacy
//!   node keeps serving;
//! - a careless bundle (it restarts every container) fails the pool upgrade with the lost
//!   requests counted, and a PodDisruptionBudget that allows nothing fails the replacement
//!   naming the budget (one run: the upgrade comes before the replacement);
//! - a candidate whose kubelet is newer than the API server is refused by the skew check,
//!   naming both versions, before anything boots;
//! - and the bad inputs, before anything boots.
//!
//! Needs the test bed (`fixtures/build`: the image-v2 and signed-v2 steps); VM runs are
//! serialized (2 cores).

mod common;

use std::path::PathBuf;
use std::sync::Mutex;

use common::check_in;
use serde_json::Value;

static VM: Mutex<()> = Mutex::new(());

const CHECKS: [&str; 5] = [
    "rollout::version_skew",
    "rollout::mixed_pool",
    "rollout::faster_provisioning",
    "rollout::pool_upgrade",
    "rollout::replacement",
];

/// A run's folder with its reports.
struct Out {
    dir: tempfile::TempDir,
}

impl Out {
    fn new() -> Out {
        Out {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.path("report.json")).unwrap()).unwrap()
    }

    /// The fixture profile with `edit` applied to its text, in this folder; its path.
    fn profile(&self, edit: impl Fn(&str) -> String) -> String {
        let fixture =
            std::fs::read_to_string(common::repo("profiles/debian-fixture.toml")).unwrap();
        let edited = edit(&fixture);
        let path = self.path("profile.toml");
        std::fs::write(&path, edited).unwrap();
        path.display().to_string()
    }

    /// `nodegate run --suite rollout` of the `candidate` manifest over the `legacy` one
    /// on the local control plane, with `profile`, the `bundle` manifest and `extra`.
    fn rollout(
        &self,
        (candidate, legacy): (&str, &str),
        profile: &str,
        bundle: &str,
        extra: &[&str],
    ) -> common::Run {
        let trust = signed("trust");
        let suites = common::repo("suites");
        let mut args = vec![
            "run",
            "--manifest",
            candidate,
            "--legacy-manifest",
            legacy,
            "--trust",
            &trust,
            "--profile",
            profile,
            "--suites",
            &suites,
            "--suite",
            "rollout",
            "--upgrade-bundle",
            bundle,
            "--control-plane",
            "local",
        ];
        args.extend_from_slice(&common::TCG_REPORTS);
        args.extend_from_slice(extra);
        common::run(&args, self.dir.path())
    }
}

/// A file of the signed-v2 step (image v2 and its negative releases).
fn v2(rel: &str) -> String {
    let dir = common::testbed("signed-v2", "v2-direct");
    dir.join(rel).display().to_string()
}

/// A file of the signed step (image v1, its trust store, its negative releases).
fn signed(rel: &str) -> String {
    let dir = common::testbed("signed", "trust");
    dir.join(rel).display().to_string()
}

/// Image v2 over image v1, the roll-out of the test bed.
fn v2_over_v1(candidate: &str) -> (String, String) {
    (
        v2(&format!("{candidate}/node.manifest.json")),
        signed("v1-direct/node.manifest.json"),
    )
}

/// The report's nodes of `role` (`legacy`, `candidate`), by name.
fn nodes_of(json: &Value, role: &str) -> Vec<String> {
    json["nodes"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, facts)| facts["role"] == role)
        .map(|(name, _)| name.clone())
        .collect()
}

/// The figure `name` of check `id`.
fn figure(json: &Value, id: &str, name: &str) -> String {
    let c = check_in(json, "id", id);
    c["figures"][name]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no figure {name}: {c}"))
        .to_string()
}

/// The timeline's marks of `kind` on `node`.
fn marks(json: &Value, node: &str, kind: &str) -> usize {
    json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["node"] == node && m["kind"] == kind)
        .count()
}

/// The client's record during check `id`.
fn traffic<'j>(json: &'j Value, id: &str) -> &'j Value {
    json["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["check"] == id)
        .unwrap_or_else(|| panic!("no traffic recorded for {id}"))
}

#[test]
fn a_legacy_and_a_candidate_node_pass_every_rollout_check() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let host_before = common::host_network();
    let o = Out::new();
    let profile = common::repo("profiles/debian-fixture.toml");
    let m = v2_over_v1("v2-direct");
    let r = o.rollout(
        (&m.0, &m.1),
        &profile,
        &common::bundle("bundle-v2"),
        &["--pool", "legacy=1,candidate=1"],
    );
    eprintln!("{}", r.stdout);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    for id in CHECKS {
        let c = check_in(&json, "id", id);
        assert_eq!(c["status"], "passed", "{c}");
    }
    let (legacy, candidate) = (nodes_of(&json, "legacy"), nodes_of(&json, "candidate"));
    assert_eq!((legacy.len(), candidate.len()), (1, 1), "{}", json["nodes"]);
    let (l, c) = (&legacy[0], &candidate[0]);
    // Each reported its own image's kubelet in the mixed pool (before the upgrade).
    assert_eq!(
        figure(&json, "rollout::mixed_pool", &format!("kubelet.{l}")),
        "v1.20.2"
    );
    assert_eq!(
        figure(&json, "rollout::mixed_pool", &format!("kubelet.{c}")),
        "v1.20.3"
    );
    assert_eq!(figure(&json, "rollout::mixed_pool", "serving.legacy"), *l);
    assert_eq!(
        figure(&json, "rollout::mixed_pool", "serving.candidate"),
        *c
    );
    assert_eq!(
        figure(&json, "rollout::version_skew", "api_server"),
        "v1.20.2"
    );
    // Provisioning both ways and as a ratio, from each node's own VM start to its Ready.
    let secs = |name: &str| -> f64 {
        figure(&json, "rollout::faster_provisioning", name)
            .parse()
            .unwrap()
    };
    let (lp, cp, ratio) = (
        secs("legacy_provisioning_secs"),
        secs("candidate_provisioning_secs"),
        secs("provisioning_ratio"),
    );
    assert!(lp > 10.0 && cp > 10.0, "{lp} {cp}");
    assert!((ratio - cp / lp).abs() < 0.02, "{ratio} vs {cp}/{lp}");
    for n in [l, c] {
        assert!(
            json["nodes"][n]["provisioning_secs"].is_string(),
            "{}",
            json["nodes"]
        );
    }
    // Nothing lost while the legacy node was upgraded in place, then replaced.
    for id in ["rollout::pool_upgrade", "rollout::replacement"] {
        assert_eq!(figure(&json, id, "requests_failed"), "0", "{id}");
        let sent: u64 = figure(&json, id, "requests_sent").parse().unwrap();
        assert!(sent >= 50, "{id}: only {sent} requests");
        let t = traffic(&json, id);
        assert_eq!(t["failed"], 0);
        assert_eq!(t["sent"].as_u64(), Some(sent));
        let per_second: u64 = t["seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[0].as_u64().unwrap() + s[1].as_u64().unwrap())
            .sum();
        assert_eq!(
            per_second, sent,
            "{id}: the seconds add up to what was sent"
        );
    }
    // The replacement moved the workload to the candidate: it answered all along.
    let served = &traffic(&json, "rollout::replacement")["served_by"];
    assert!(served[c].as_u64().unwrap() > 0, "{served}");
    assert!(figure(
        &json,
        "rollout::pool_upgrade",
        &format!("not_ready_secs.{l}")
    )
    .parse::<f64>()
    .is_ok());
    assert_eq!(
        figure(&json, "rollout::replacement", "legacy_replaced"),
        "1/1"
    );
    // Each node's timeline: the legacy node's upgrade, cordon, drain and deletion.
    for kind in ["upgrade", "cordon", "drain", "deleted"] {
        assert_eq!(
            marks(&json, l, kind),
            1,
            "{kind} on {l}: {}",
            json["timeline"]
        );
        assert_eq!(marks(&json, c, kind), 0, "{kind} on {c}");
    }
    for n in [l, c] {
        for phase in ["boot", "join"] {
            assert!(
                json["phases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == phase && p["node"] == n.as_str() && p["error"].is_null()),
                "{phase} of {n}"
            );
        }
    }
    // JUnit: one testcase per check, with its figures as its testsuite's properties.
    let xml = std::fs::read_to_string(o.path("junit.xml")).unwrap();
    common::junit_rules::assert_strict("the roll-out run", &xml);
    assert!(
        xml.contains("name=\"check.replacement.figure.requests_failed\" value=\"0\""),
        "{xml}"
    );
    assert!(xml.contains("name=\"check.faster_provisioning.figure.provisioning_ratio\""));
    // The page shows the client's row and the legacy node's roll-out marks.
    let page = common::browser::render(&o.path("report.html"));
    for marker in [
        "data-node=\"client\"",
        "data-kind=\"cordon\"",
        "data-kind=\"deleted\"",
        "data-kind=\"requests\"",
    ] {
        assert!(page.dom.contains(marker), "{marker} not on the page");
    }
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
    assert_eq!(
        common::host_network(),
        host_before,
        "the host's namespace changed"
    );
    eprintln!(
        "roll-out figures: provisioning legacy {lp}s candidate {cp}s ratio {ratio}; pool upgrade {} requests {} lost, longest gap {}s, NotReady {}s; replacement {} requests {} lost, longest gap {}s; run {}s",
        figure(&json, "rollout::pool_upgrade", "requests_sent"),
        figure(&json, "rollout::pool_upgrade", "requests_failed"),
        figure(&json, "rollout::pool_upgrade", "longest_gap_secs"),
        figure(&json, "rollout::pool_upgrade", &format!("not_ready_secs.{l}")),
        figure(&json, "rollout::replacement", "requests_sent"),
        figure(&json, "rollout::replacement", "requests_failed"),
        figure(&json, "rollout::replacement", "longest_gap_secs"),
        json["duration_secs"]
    );
}

#[test]
fn a_candidate_whose_kubelet_crash_loops_fails_the_mixed_pool_by_name_while_the_legacy_node_serves()
{
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = Out::new();
    // A healthy node joins in 30-55 s under TCG: this one never will.
    let profile = o.profile(|p| {
        let short = p.replace("join = \"600s\"", "join = \"90s\"");
        assert_ne!(short, p, "the profile's join budget moved");
        short
    });
    let m = v2_over_v1("neg/v2-kubelet-crashloop");
    let r = o.rollout(
        (&m.0, &m.1),
        &profile,
        &common::bundle("bundle-v2"),
        &[
            "--skip",
            "pool_upgrade",
            "--skip",
            "replacement",
            "--skip",
            "faster_provisioning",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    assert_eq!(
        check_in(&json, "id", "rollout::version_skew")["status"],
        "passed"
    );
    let (legacy, candidate) = (nodes_of(&json, "legacy"), nodes_of(&json, "candidate"));
    let (l, c) = (&legacy[0], &candidate[0]);
    let mixed = check_in(&json, "id", "rollout::mixed_pool");
    assert_eq!(mixed["status"], "failed", "{mixed}");
    let message = mixed["message"].as_str().unwrap();
    eprintln!("rollout::mixed_pool: {message}");
    for part in [
        format!("{c} (candidate) is not in the cluster: its join failed"),
        "unknown flag: --nodegate-broken-flag".to_string(),
        format!("the pool still serves from {l}"),
    ] {
        assert!(message.contains(&part), "{part:?} not in {message}");
    }
    // The legacy node served every request the client sent to it.
    let t = traffic(&json, "rollout::mixed_pool");
    assert!(t["sent"].as_u64().unwrap() > 10, "{t}");
    assert_eq!(t["failed"], 0, "{t}");
    assert_eq!(t["served_by"][l], t["sent"]);
    assert_eq!(figure(&json, "rollout::mixed_pool", "serving.legacy"), *l);
    assert_eq!(
        figure(&json, "rollout::mixed_pool", "serving.candidate"),
        ""
    );
    // The run itself finished: an image's fault is a failed check, not a stop.
    assert!(json["stop"].is_null(), "{}", json["stop"]);
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
}

#[test]
fn a_careless_bundle_loses_requests_and_a_budget_that_allows_nothing_blocks_the_replacement() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let o = Out::new();
    // A drain budget of 30 s, and a PodDisruptionBudget that allows no disruption.
    let profile = o.profile(|p| {
        let (budget, pdb) = (
            ("drain_budget = \"300s\"", "drain_budget = \"30s\""),
            (
                "max_unavailable = 1            # the PodDisruptionBudget",
                "max_unavailable = 0            # the PodDisruptionBudget",
            ),
        );
        assert!(
            p.contains(budget.0) && p.contains(pdb.0),
            "the profile's roll-out settings moved"
        );
        p.replace(budget.0, budget.1).replace(pdb.0, pdb.1)
    });
    let m = v2_over_v1("v2-direct");
    let r = o.rollout(
        (&m.0, &m.1),
        &profile,
        &v2("neg/bundle-restarts-workloads/bundle.manifest.json"),
        // The pass test shows those two; this run is about the changes.
        &["--skip", "faster_provisioning", "--skip", "mixed_pool"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    let l = &nodes_of(&json, "legacy")[0];
    assert_eq!(
        check_in(&json, "id", "rollout::version_skew")["status"],
        "passed"
    );
    // The upgrade itself went through (no reboot, the bundle's versions), but the
    // workload lost requests, counted.
    let up = check_in(&json, "id", "rollout::pool_upgrade");
    assert_eq!(up["status"], "failed", "{up}");
    let message = up["message"].as_str().unwrap();
    eprintln!("rollout::pool_upgrade: {message}");
    assert!(
        message.contains("requests lost during the pool upgrade (the profile allows 0)"),
        "{message}"
    );
    assert!(!message.contains("boot_id"), "{message}");
    let lost: u64 = figure(&json, "rollout::pool_upgrade", "requests_failed")
        .parse()
        .unwrap();
    assert!(lost > 0);
    assert!(message.starts_with(&format!("{lost} of ")), "{message}");
    assert_eq!(
        traffic(&json, "rollout::pool_upgrade")["failed"].as_u64(),
        Some(lost)
    );
    assert_eq!(marks(&json, l, "upgrade"), 1);
    // The replacement: the drain is blocked by the budget, named, past 30 s.
    let rep = check_in(&json, "id", "rollout::replacement");
    assert_eq!(rep["status"], "failed", "{rep}");
    let message = rep["message"].as_str().unwrap();
    eprintln!("rollout::replacement: {message}");
    for part in [
        format!("the drain of {l} (legacy) was blocked past its budget of 30s"),
        "PodDisruptionBudget default/nodegate-rollout-".to_string(),
        "maxUnavailable 0, disruptions allowed now: 0".to_string(),
    ] {
        assert!(message.contains(&part), "{part:?} not in {message}");
    }
    assert_eq!(marks(&json, l, "cordon"), 1);
    assert_eq!(marks(&json, l, "drain"), 1);
    assert_eq!(
        marks(&json, l, "deleted"),
        0,
        "a node whose drain failed is not deleted"
    );
    assert_eq!(
        figure(&json, "rollout::replacement", "legacy_replaced"),
        "0/1"
    );
    assert_eq!(common::leftover_qemus(&json), 0, "no QEMU left behind");
}

#[test]
fn a_candidate_whose_kubelet_is_newer_than_the_api_server_is_refused_before_anything_boots() {
    let o = Out::new();
    let profile = common::repo("profiles/debian-fixture.toml");
    let m = v2_over_v1("neg/v2-kubelet-newer");
    let r = o.rollout((&m.0, &m.1), &profile, &common::bundle("bundle-v2"), &[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    let skew = check_in(&json, "id", "rollout::version_skew");
    assert_eq!(skew["status"], "failed", "{skew}");
    let message = skew["message"].as_str().unwrap();
    eprintln!("rollout::version_skew: {message}");
    for part in [
        "candidate image nodegate-node v2",
        "kubelet v1.21.0 is newer than the API server v1.20.2",
        "0 newer",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    assert_eq!(
        figure(&json, "rollout::version_skew", "candidate.kubelet"),
        "v1.21.0"
    );
    assert_eq!(
        figure(&json, "rollout::version_skew", "legacy.kubelet"),
        "v1.20.2"
    );
    // The others are not tried: each names the skew check.
    for id in &CHECKS[1..] {
        let c = check_in(&json, "id", id);
        assert_eq!(c["status"], "failed", "{c}");
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("requires rollout::"),
            "{c}"
        );
    }
    let booted = common::phase_names(&json)
        .iter()
        .filter(|p| *p == "boot")
        .count();
    assert_eq!(booted, 0, "nothing boots");
}

#[test]
fn roll_out_inputs_are_checked_before_anything_boots() {
    let o = Out::new();
    let profile = common::repo("profiles/debian-fixture.toml");
    // A pool the command line cannot make: a usage error, one line.
    let m = v2_over_v1("v2-direct");
    for pool in [
        "legacy=0,candidate=1",
        "legacy=1",
        "legacy=1,candidate=x",
        "legacy=9,candidate=9",
    ] {
        let r = o.rollout(
            (&m.0, &m.1),
            &profile,
            &common::bundle("bundle-v2"),
            &["--pool", pool],
        );
        assert_eq!(r.code, 2, "--pool {pool}: {}", r.stderr);
        assert!(r.stderr.contains("--pool"), "{}", r.stderr);
    }
    // A legacy manifest that is not there: bad input, one line naming it.
    let r = common::run(
        &[
            "run",
            "--manifest",
            "m.json",
            "--legacy-manifest",
            "nope.json",
            "--allow-unsigned",
            "--profile",
            &profile,
        ],
        o.dir.path(),
    );
    common::assert_refused(&r, 3, "nope.json", "No such file");
    // A tampered legacy image: refused at verification, named by the skew check, and
    // nothing boots.
    let tampered = signed("neg/flipped-byte/node.manifest.json");
    let r = o.rollout(
        (&m.0, &tampered),
        &profile,
        &common::bundle("bundle-v2"),
        &[],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let json = o.json();
    let skew = check_in(&json, "id", "rollout::version_skew");
    let message = skew["message"].as_str().unwrap();
    assert!(
        message.contains("legacy image nodegate-node v1: refused at verification"),
        "{message}"
    );
    assert!(message.contains("root.qcow2"), "{message}");
    let phases: Vec<String> = common::phase_names(&json);
    assert!(!phases.iter().any(|p| p == "boot"), "{phases:?}");
    let mixed = check_in(&json, "id", "rollout::mixed_pool");
    assert!(
        mixed["message"]
            .as_str()
            .unwrap()
            .contains("requires rollout::version_skew"),
        "{mixed}"
    );
    // Without a legacy image the roll-out is not run, saying why; nothing boots.
    let (trust, suites) = (signed("trust"), common::repo("suites"));
    let r = common::run(
        &[
            "run",
            "--manifest",
            &m.0,
            "--trust",
            &trust,
            "--profile",
            &profile,
            "--suites",
            &suites,
            "--suite",
            "rollout",
            "--json",
            "plain.json",
        ],
        o.dir.path(),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(o.path("plain.json")).unwrap()).unwrap();
    for id in CHECKS {
        let c = check_in(&json, "id", id);
        assert_eq!(c["status"], "not-run", "{c}");
        assert!(
            c["reason"].as_str().unwrap().contains("--legacy-manifest"),
            "{c}"
        );
    }
}
