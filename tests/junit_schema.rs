//! The JUnit nodegate writes, for every kind of outcome, against the strict readers'
//! rules: the Jenkins xunit plugin's junit-10.xsd (installed from PyPI by fixtures/build,
//! validated with xmllint) and Maven Surefire's test-report rules (no registry ships that
//! schema: its rules are this test's own assertions, in common::junit_rules).

mod common;

use std::time::{Duration, SystemTime};

use nodegate::report::{junit, model::Recorder};
use nodegate::runner::{AttemptRecord, CheckRecord, Event, Phase, Status, Stop, StopKind};
use nodegate::suite::Failure;

fn check(name: &str, status: Status, attempts: &[Option<Failure>]) -> CheckRecord {
    CheckRecord {
        id: format!("kubelet::{name}"),
        suite: "kubelet".into(),
        name: name.into(),
        description: format!("{name} <proves> & \"says\" so"),
        tags: vec!["node".into(), "fast".into()],
        destructive: false,
        status,
        reason: (status == Status::NotRun).then(|| "fail-fast: kubelet::a failed".into()),
        started: Some(SystemTime::now()),
        attempts: attempts
            .iter()
            .map(|f| AttemptRecord {
                duration: Duration::from_millis(1234),
                failure: f.clone(),
                transcript: "$ systemctl is-active kubelet\nactive\n".into(),
                node: Some("node-1".into()),
                figures: Default::default(),
            })
            .collect(),
        control_plane: None,
    }
}

/// Every outcome a run can report: passed, failed, flaky, not run, ignored, with a stop.
fn every_outcome(stop: Option<Stop>, code: i32) -> String {
    let mut rec = Recorder::new([("image.name".to_string(), "debian-node".to_string())].into());
    let fail = || {
        Some(Failure::mismatch(
            "kubelet is not Ready <x>",
            "True",
            "False",
        ))
    };
    rec.record(&Event::PhaseStarted {
        phase: Phase::Verify,
        detail: "m".into(),
        node: None,
    });
    rec.record(&Event::PhaseFinished {
        phase: Phase::Verify,
        duration: Duration::from_millis(300),
        error: None,
        node: None,
    });
    rec.record(&Event::NodeProperty {
        node: "node-1".into(),
        name: "role".into(),
        value: "shared".into(),
    });
    for c in [
        check("passes", Status::Passed, &[None]),
        check("fails", Status::Failed, &[fail(), fail()]),
        check("flaky", Status::Flaky, &[fail(), None]),
        check("not-run", Status::NotRun, &[]),
        check("ignored", Status::Ignored, &[]),
    ] {
        rec.record(&Event::CheckFinished(Box::new(c)));
    }
    rec.record(&Event::RunFinished {
        stop,
        exit_code: code,
    });
    junit::to_xml(&junit::to_junit(&rec.report)).unwrap()
}

#[test]
fn every_outcome_meets_the_xunit_schema_and_the_surefire_rules() {
    let xml = every_outcome(None, 1);
    common::junit_rules::assert_strict("every outcome", &xml);
}

#[test]
fn a_stopped_run_meets_the_xunit_schema_and_the_surefire_rules() {
    let stop = Stop {
        kind: StopKind::Integrity,
        phase: Phase::Verify,
        reason: "image refused at verification: sha256 mismatch".into(),
    };
    let xml = every_outcome(Some(stop), 4);
    common::junit_rules::assert_strict("stopped run", &xml);
}

#[test]
fn a_grid_gives_each_control_plane_its_facts_cells_and_testsuites() {
    let mut rec = Recorder::new([("image.name".to_string(), "debian-node".to_string())].into());
    for (index, (name, version, status)) in [
        ("local", "v1.20.2", Status::Passed),
        ("kubeconfig=/k/staging.yaml", "v1.32.1", Status::Failed),
    ]
    .into_iter()
    .enumerate()
    {
        rec.record(&Event::ControlPlaneStarted {
            name: name.into(),
            provider: name.split('=').next().unwrap().into(),
            index,
            of: 2,
        });
        rec.record(&Event::Property {
            name: "kubernetes.version".into(),
            value: version.into(),
        });
        rec.record(&Event::Property {
            name: "accel".into(),
            value: "tcg".into(),
        });
        let fails = (status == Status::Failed).then(|| Failure::new("not Ready"));
        for (check_name, s) in [("node_ready", status), ("version", Status::Passed)] {
            let mut c = check(
                check_name,
                s,
                &[if s == Status::Failed {
                    fails.clone()
                } else {
                    None
                }],
            );
            c.control_plane = Some(name.into());
            rec.record(&Event::CheckFinished(Box::new(c)));
        }
    }
    rec.record(&Event::RunFinished {
        stop: None,
        exit_code: 1,
    });
    let r = &rec.report;
    // Each control plane's facts are its own; the run's stay the run's.
    assert_eq!(r.control_planes.len(), 2);
    assert_eq!(
        r.control_planes[1].properties["kubernetes.version"],
        "v1.32.1"
    );
    assert!(!r.properties.contains_key("kubernetes.version"));
    assert_eq!(r.properties["accel"], "tcg");
    let grid = r.grid.as_ref().expect("a grid with two control planes");
    assert_eq!(grid.columns, ["local", "kubeconfig=/k/staging.yaml"]);
    assert_eq!(grid.rows.len(), 1);
    assert_eq!(grid.rows[0].cells["local"].status, "passed");
    let remote = &grid.rows[0].cells["kubeconfig=/k/staging.yaml"];
    assert_eq!(
        (remote.status.as_str(), remote.passed, remote.failed),
        ("failed", 1, 1)
    );
    // JUnit: a testsuite per suite and control plane, strict readers' rules kept.
    let xml = junit::to_xml(&junit::to_junit(r)).unwrap();
    common::junit_rules::assert_strict("grid", &xml);
    for suite in ["kubelet@local", "kubelet@kubeconfig=/k/staging.yaml"] {
        assert!(
            xml.contains(&format!("<testsuite name=\"{suite}\"")),
            "{xml}"
        );
    }
    assert!(xml.contains(r#"<property name="kubernetes.version" value="v1.32.1"/>"#));
}
