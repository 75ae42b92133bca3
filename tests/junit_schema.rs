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
            })
            .collect(),
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
