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

/// "message\nexpected: X\nactual: Y": a failure's whole text.
fn failure_text(
    message: &Option<String>,
    expected: &Option<String>,
    actual: &Option<String>,
) -> String {
    format!(
        "{}\nexpected: {}\nactual: {}\n",
        message.clone().unwrap_or_default(),
        expected.clone().unwrap_or_else(|| "-".into()),
        actual.clone().unwrap_or_else(|| "-".into())
    )
}

/// A failed attempt as a rerun or flaky element: `type` and a `stackTrace` (both
/// required by Surefire's schema), the attempt's time in the message (the strict
/// xunit schema has no `time` attribute there).
fn rerun(a: &AttemptReport) -> TestRerun {
    let mut r = TestRerun::new(NonSuccessKind::Failure);
    r.set_type("check failed")
        .set_message(format!(
            "{} [attempt of {}]",
            one_line(&a.message, &a.expected, &a.actual),
            crate::message::duration(secs(a.duration_secs))
        ))
        .set_stack_trace(failure_text(&a.message, &a.expected, &a.actual))
        .set_system_out(a.output.clone());
    r
}

/// A check's testcase, of the testsuite `classname`.
fn case(c: &CheckReport, classname: &str) -> TestCase {
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
                description: Some(failure_text(&c.message, &c.expected, &c.actual).into()),
                reruns: NonSuccessReruns {
                    kind: quick_junit::FlakyOrRerun::Rerun,
                    runs: if last.is_some() { runs } else { Vec::new() },
                },
            }
        }
        // Surefire's schema allows no `type` on <skipped>: the status leads the message.
        _ => TestCaseStatus::Skipped {
            message: Some(
                match &c.reason {
                    Some(r) => format!("{}: {r}", c.status),
                    None => c.status.clone(),
                }
                .into(),
            ),
            ty: None,
            description: None,
        },
    };
    let mut t = TestCase::new(c.name.clone(), status);
    t.set_classname(classname.to_string())
        .set_time(secs(c.duration_secs));
    if let Some(last) = c.attempts.last() {
        t.set_system_out(last.output.clone());
    }
    t
}

/// A check's own facts, as properties of its testsuite (the strict schema allows no
/// `<properties>` in a testcase): `check.NAME.description`, `check.NAME.tags`, and what
/// it measured, `check.NAME.figure.FIGURE`.
fn case_properties(c: &CheckReport) -> Vec<Property> {
    let mut p = vec![Property::new(
        format!("check.{}.description", c.name),
        c.description.clone(),
    )];
    if !c.tags.is_empty() {
        p.push(Property::new(
            format!("check.{}.tags", c.name),
            c.tags.join(","),
        ));
    }
    for (k, v) in &c.figures {
        p.push(Property::new(
            format!("check.{}.figure.{k}", c.name),
            v.clone(),
        ));
    }
    p
}

/// The suite holding the run's own testcase ([`RUN_CASE`]); check suites may not take
/// this name.
pub use crate::suite::RUN_SUITE;
/// The testcase that says whether the run itself finished: an `<error>` for a run that
/// stopped early (whatever the stop), was killed, or is still going, so a reader of the
/// JUnit alone never takes a run that did not finish for a clean one.
pub const RUN_CASE: &str = "run";

/// The run's own testcase: success when every selected check ran to a verdict.
fn run_case(r: &RunReport) -> TestCase {
    let phases: String = r
        .phases
        .iter()
        .map(|p| {
            format!(
                "{} {}: {}{}\n",
                p.name,
                p.detail,
                p.duration_secs
                    .map_or("unfinished".into(), |d| format!("{d:.1}s")),
                p.error
                    .as_ref()
                    .map(|e| format!(" (failed: {e})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let error = |ty: &str, message: String| TestCaseStatus::NonSuccess {
        kind: NonSuccessKind::Error,
        message: Some(message.clone().into()),
        ty: Some(ty.to_string().into()),
        description: Some(message.into()),
        reruns: NonSuccessReruns::default(),
    };
    let status = match (&r.stop, r.finished.as_ref()) {
        (Some(stop), _) => error(
            &stop.kind,
            format!(
                "the run stopped in {}: {} ({}); checks it did not run are listed as skipped",
                stop.phase, stop.kind, stop.reason
            ),
        ),
        (None, None) => error(
            "unfinished",
            "the run has not finished (still running, or killed before it could say why)".into(),
        ),
        (None, Some(_)) => TestCaseStatus::success(),
    };
    let mut t = TestCase::new(RUN_CASE, status);
    t.set_classname(RUN_SUITE)
        .set_time(secs(r.duration_secs))
        .set_system_out(phases);
    t
}

/// What the run testcase proves.
const RUN_DESCRIPTION: &str = "The run itself: verified, booted and joined what its checks needed, and ran every selected check to a verdict.";

/// The JUnit report: the run's own testsuite ([`RUN_SUITE`]), then one testsuite per
/// check suite (per suite and control plane in a grid), the run's properties (and each
/// node's as `node.NAME.KEY`) on each.
pub fn to_junit(r: &RunReport) -> Report {
    let mut report = Report::new("nodegate");
    report.set_time(secs(r.duration_secs));
    let new_suite = |name: &str| {
        let mut s = TestSuite::new(name.to_string());
        for (k, v) in &r.properties {
            s.add_property(Property::new(k.clone(), v.clone()));
        }
        for (node, facts) in &r.nodes {
            for (k, v) in facts {
                s.add_property(Property::new(format!("node.{node}.{k}"), v.clone()));
            }
        }
        s.add_property(Property::new("nodegate.verdict", r.verdict.clone()));
        if let Some(stop) = &r.stop {
            s.add_property(Property::new(
                "nodegate.stop",
                format!("stopped in {}: {} ({})", stop.phase, stop.kind, stop.reason),
            ));
        }
        s
    };
    let mut own = new_suite(RUN_SUITE);
    own.add_property(Property::new(
        format!("check.{RUN_CASE}.description"),
        RUN_DESCRIPTION,
    ));
    own.add_test_case(run_case(r));
    own.set_time(secs(r.duration_secs));
    let mut suites: Vec<TestSuite> = vec![own];
    for c in &r.checks {
        // In a grid, a suite's checks against one control plane are a testsuite of
        // their own, `SUITE@CONTROL_PLANE`, with that control plane's facts.
        let name = match &c.control_plane {
            Some(cp) => format!("{}@{cp}", c.suite),
            None => c.suite.clone(),
        };
        let i = match suites.iter().position(|s| s.name.as_str() == name) {
            Some(i) => i,
            None => {
                let mut s = new_suite(&name);
                let column = r
                    .control_planes
                    .iter()
                    .find(|p| c.control_plane.as_ref() == Some(&p.name));
                if let Some(column) = column {
                    s.add_property(Property::new("control_plane.name", column.name.clone()));
                    for (k, v) in &column.properties {
                        s.add_property(Property::new(k.clone(), v.clone()));
                    }
                }
                suites.push(s);
                suites.len() - 1
            }
        };
        let s = &mut suites[i];
        s.add_properties(case_properties(c));
        s.add_test_case(case(c, &name));
        s.set_time(s.time.unwrap_or_default() + secs(c.duration_secs));
    }
    report.add_test_suites(suites);
    report
}

/// The report as XML the strict readers take: quick-junit's serialization without the
/// `skipped` attribute of `<testsuites>`, which the xunit plugin's junit-10.xsd does not
/// allow there (each `<testsuite>` keeps its own).
pub fn to_xml(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let xml = report.to_string()?;
    let Some(start) = xml.find("<testsuites") else {
        return Ok(xml);
    };
    let end = start + xml[start..].find('>').unwrap_or(0);
    let tag = &xml[start..end];
    let cleaned = SKIPPED_ATTR.replace(tag, "");
    Ok(format!("{}{}{}", &xml[..start], cleaned, &xml[end..]))
}

/// Each testsuite of `report` as a file of its own, the layout Maven Surefire writes and
/// its schema describes (`<testsuite>` as the root): `(TEST-SUITE.xml, XML)`.
pub fn split(report: &Report) -> Result<Vec<(String, String)>, quick_junit::SerializeError> {
    let mut files = Vec::new();
    for s in &report.test_suites {
        let mut one = Report::new("nodegate");
        one.add_test_suite(s.clone());
        let xml = one.to_string()?;
        // quick-junit escapes every text and attribute, so the suite's own start tag and
        // the last `</testsuite>` delimit it.
        let body = match (xml.find("<testsuite "), xml.rfind("</testsuite>")) {
            (Some(a), Some(b)) => &xml[a..b + "</testsuite>".len()],
            _ => continue,
        };
        let name: String = s
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        files.push((
            format!("TEST-{name}.xml"),
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}\n"),
        ));
    }
    Ok(files)
}

static SKIPPED_ATTR: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r#" skipped="[0-9]+""#).expect("valid"));

/// Marks the run testcase of a JUnit report as killed (an `<error>`), unless the run had
/// finished. Returns whether the report changed.
pub fn mark_killed(report: &mut Report, reason: &str) -> bool {
    let mut changed = false;
    for s in &mut report.test_suites {
        if s.name.as_str() != RUN_SUITE {
            continue;
        }
        for c in &mut s.test_cases {
            let unfinished = matches!(&c.status, TestCaseStatus::NonSuccess { ty: Some(t), .. } if t.as_str() == "unfinished");
            if c.name.as_str() == RUN_CASE && unfinished {
                c.status = TestCaseStatus::NonSuccess {
                    kind: NonSuccessKind::Error,
                    message: Some(reason.to_string().into()),
                    ty: Some("killed".into()),
                    description: Some(reason.to_string().into()),
                    reruns: NonSuccessReruns::default(),
                };
                changed = true;
            }
        }
    }
    changed
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
    #[error("{}: not JUnit XML: {}", path.display(), crate::message::one_line(message))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The same check appears in two shards.
    #[error(
        "{}: testcase {}::{} also appears in an earlier file (overlapping shards)",
        path.display(),
        crate::message::one_line(suite),
        crate::message::one_line(case)
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
    let mut texts = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|source| MergeError::Read {
            path: p.clone(),
            source,
        })?;
        texts.push((p.clone(), text));
    }
    merge_texts(&texts)
}

/// [`merge`] of JUnit texts already read, each with the path it came from.
pub fn merge_texts(inputs: &[(PathBuf, String)]) -> Result<Report, MergeError> {
    let mut out = Report::new("nodegate");
    let mut suites: Vec<TestSuite> = Vec::new();
    let mut total = Duration::ZERO;
    for (p, text) in inputs {
        let r = Report::deserialize_from_str(text).map_err(|e| MergeError::Parse {
            path: p.clone(),
            message: e.to_string(),
        })?;
        total += r.time.unwrap_or_default();
        for mut s in r.test_suites {
            // Attributes nodegate does not write are dropped: quick-junit writes unknown
            // ones back as they came, and one whose name XML cannot carry would come out
            // as a duplicate or nameless attribute no reader takes.
            s.extra.clear();
            for c in &mut s.test_cases {
                c.extra.clear();
            }
            match suites.iter_mut().find(|x| x.name == s.name) {
                None => suites.push(s),
                Some(into) => {
                    for c in s.test_cases {
                        if let Some(at) = into.test_cases.iter().position(|x| x.name == c.name) {
                            // Every shard has the run testcase: the merged run finished
                            // only if each did, so the first that did not wins.
                            let is_run =
                                s.name.as_str() == RUN_SUITE && c.name.as_str() == RUN_CASE;
                            if !is_run {
                                return Err(dup(p, &s.name, &c.name));
                            }
                            let ok =
                                |t: &TestCase| matches!(t.status, TestCaseStatus::Success { .. });
                            if ok(&into.test_cases[at]) && !ok(&c) {
                                into.test_cases[at] = c;
                            }
                            continue;
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
    for s in &mut suites {
        recount(s);
    }
    out.add_test_suites(suites);
    Ok(out)
}

/// Recomputes a suite's counts from its testcases (after one was replaced).
fn recount(s: &mut TestSuite) {
    let cases = std::mem::take(&mut s.test_cases);
    s.tests = 0;
    s.failures = 0;
    s.errors = 0;
    s.skipped = 0;
    s.add_test_cases(cases);
}

fn dup(p: &Path, suite: &quick_junit::XmlString, case: &quick_junit::XmlString) -> MergeError {
    MergeError::Duplicate {
        path: p.to_owned(),
        suite: suite.to_string(),
        case: case.to_string(),
    }
}
