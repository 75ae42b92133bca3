//! JUnit XML from a run report (quick-junit: properties and flaky reruns, which
//! junit-report lacks; see docs/decisions.md), and merging sharded JUnit files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quick_junit::{
    NonSuccessKind, NonSuccessReruns, Property, Report, TestCase, TestCaseStatus, TestRerun,
    TestSuite,
};

use super::model::{AttemptReport, CheckReport, RunReport};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// "message (expected X, found Y)": what a dashboard shows in one line.
fn one_line(
    message: &Option<String>,
    expected: &Option<String>,
    actual: &Option<String>,
) -> String {
    let m = message.clone().unwrap_or_else(|| "failed".into());
    match (expected, actual) {
        (Some(e), Some(a)) => format!("{m} (expected {e}, found {a})"),
        _ => m,
    }
}

fn rerun(a: &AttemptReport) -> TestRerun {
    let mut r = TestRerun::new(NonSuccessKind::Failure);
    r.set_time(secs(a.duration_secs))
        .set_message(one_line(&a.message, &a.expected, &a.actual))
        .set_system_out(a.output.clone());
    r
}

fn case(c: &CheckReport) -> TestCase {
    let failed_runs: Vec<TestRerun> = c
        .attempts
        .iter()
        .filter(|a| a.status == "failed")
        .map(rerun)
        .collect();
    let status = match c.status.as_str() {
        "passed" => TestCaseStatus::success(),
        "flaky" => TestCaseStatus::Success {
            flaky_runs: failed_runs,
        },
        "failed" => {
            let mut runs = failed_runs;
            let last = runs.pop();
            TestCaseStatus::NonSuccess {
                kind: NonSuccessKind::Failure,
                message: Some(one_line(&c.message, &c.expected, &c.actual).into()),
                ty: Some("check failed".into()),
                description: Some(
                    format!(
                        "{}\nexpected: {}\nactual: {}\n",
                        c.message.clone().unwrap_or_default(),
                        c.expected.clone().unwrap_or_else(|| "-".into()),
                        c.actual.clone().unwrap_or_else(|| "-".into())
                    )
                    .into(),
                ),
                reruns: NonSuccessReruns {
                    kind: quick_junit::FlakyOrRerun::Rerun,
                    runs: if last.is_some() { runs } else { Vec::new() },
                },
            }
        }
        _ => TestCaseStatus::Skipped {
            message: Some(c.reason.clone().unwrap_or_else(|| c.status.clone()).into()),
            ty: Some(c.status.clone().into()),
            description: None,
        },
    };
    let mut t = TestCase::new(c.name.clone(), status);
    t.set_classname(c.suite.clone())
        .set_time(secs(c.duration_secs));
    if let Some(last) = c.attempts.last() {
        t.set_system_out(last.output.clone());
    }
    t.add_property(Property::new("description", c.description.clone()));
    if !c.tags.is_empty() {
        t.add_property(Property::new("tags", c.tags.join(",")));
    }
    t
}

/// The JUnit report: one testsuite per suite, the run's properties on each.
pub fn to_junit(r: &RunReport) -> Report {
    let mut report = Report::new("nodegate");
    report.set_time(secs(r.duration_secs));
    let mut suites: Vec<TestSuite> = Vec::new();
    for c in &r.checks {
        let i = match suites.iter().position(|s| s.name.as_str() == c.suite) {
            Some(i) => i,
            None => {
                let mut s = TestSuite::new(c.suite.clone());
                for (k, v) in &r.properties {
                    s.add_property(Property::new(k.clone(), v.clone()));
                }
                s.add_property(Property::new("nodegate.verdict", r.verdict.clone()));
                suites.push(s);
                suites.len() - 1
            }
        };
        let s = &mut suites[i];
        s.add_test_case(case(c));
        s.set_time(s.time.unwrap_or_default() + secs(c.duration_secs));
    }
    if let Some(stop) = &r.stop {
        // A run stopped before any check still tells the dashboard why.
        if suites.is_empty() {
            let mut s = TestSuite::new("nodegate");
            for (k, v) in &r.properties {
                s.add_property(Property::new(k.clone(), v.clone()));
            }
            suites.push(s);
        }
        let text = format!(
            "stopped in {}: {} ({})\n",
            stop.phase, stop.kind, stop.reason
        );
        for s in &mut suites {
            s.set_system_err(text.clone());
        }
    }
    report.add_test_suites(suites);
    report
}

/// Why JUnit files could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file is not JUnit XML.
    #[error("{path}: not JUnit XML: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The same check appears in two shards.
    #[error(
        "{path}: testcase {suite}::{case} also appears in an earlier file (overlapping shards)"
    )]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// Suite.
        suite: String,
        /// Case.
        case: String,
    },
}

/// Merges shard reports: testsuites of the same name are combined; a testcase present
/// in two files is an error (shards must not overlap).
pub fn merge(paths: &[PathBuf]) -> Result<Report, MergeError> {
    let mut out = Report::new("nodegate");
    let mut suites: Vec<TestSuite> = Vec::new();
    let mut total = Duration::ZERO;
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|source| MergeError::Read {
            path: p.clone(),
            source,
        })?;
        let r = Report::deserialize_from_str(&text).map_err(|e| MergeError::Parse {
            path: p.clone(),
            message: e.to_string(),
        })?;
        total += r.time.unwrap_or_default();
        for s in r.test_suites {
            match suites.iter_mut().find(|x| x.name == s.name) {
                None => suites.push(s),
                Some(into) => {
                    for c in s.test_cases {
                        if into.test_cases.iter().any(|x| x.name == c.name) {
                            return Err(dup(p, &s.name, &c.name));
                        }
                        into.add_test_case(c);
                    }
                    into.set_time(into.time.unwrap_or_default() + s.time.unwrap_or_default());
                    for prop in s.properties {
                        if !into.properties.iter().any(|x| x.name == prop.name) {
                            into.add_property(prop);
                        }
                    }
                }
            }
        }
    }
    out.set_time(total);
    out.add_test_suites(suites);
    Ok(out)
}

fn dup(p: &Path, suite: &quick_junit::XmlString, case: &quick_junit::XmlString) -> MergeError {
    MergeError::Duplicate {
        path: p.to_owned(),
        suite: suite.to_string(),
        case: case.to_string(),
    }
}
