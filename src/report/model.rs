//! The JSON report (schema in docs/report-schema.md) and the recorder that builds it from
//! run events. JUnit is derived from the same record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::grid::Grid;
use crate::image::manifest::format_time;
use crate::runner::{CheckRecord, Event, Status};

/// Version of the JSON report's schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 2;

/// A run's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// nodegate's version.
    pub nodegate_version: String,
    /// RFC 3339 UTC.
    pub started: String,
    /// RFC 3339 UTC; `null` while the run is still going (a partial report).
    pub finished: Option<String>,
    /// Seconds from start to finish (or to the last update).
    pub duration_secs: f64,
    /// `running`, `passed`, `failed`, `integrity`, `error` or `interrupted`.
    pub verdict: String,
    /// The exit code; `null` while running.
    pub exit_code: Option<i32>,
    /// Why the run stopped early.
    pub stop: Option<StopReport>,
    /// Facts for dashboards: image, digest, accel, control plane, Kubernetes version.
    pub properties: BTreeMap<String, String>,
    /// Facts about each node, by node name: role, address, pod range, boot and join times.
    #[serde(default)]
    pub nodes: BTreeMap<String, BTreeMap<String, String>>,
    /// Phases in the order they ran.
    pub phases: Vec<PhaseReport>,
    /// Checks in the order they ended.
    pub checks: Vec<CheckReport>,
    /// Counts by status.
    pub summary: Summary,
    /// Files kept: name -> path.
    pub artifacts: BTreeMap<String, PathBuf>,
    /// What happened on the nodes besides phases and checks, in the order it was
    /// recorded (NotReady windows, link cuts, upgrades, heartbeats).
    #[serde(default)]
    pub timeline: Vec<MarkReport>,
    /// The control planes the run joined its nodes to, in order, each with its own facts.
    #[serde(default)]
    pub control_planes: Vec<ControlPlaneReport>,
    /// The image × control plane grid; `null` in a run with one control plane.
    #[serde(default)]
    pub grid: Option<Grid>,
    /// What each roll-out check's client sent and lost, second by second.
    #[serde(default)]
    pub traffic: Vec<TrafficReport>,
}

/// What a check's client sent while the check ran (the roll-out's), and what it lost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficReport {
    /// The check it ran for.
    pub check: String,
    /// In a run with several control planes, the one the check ran against.
    #[serde(default)]
    pub control_plane: Option<String>,
    /// RFC 3339 UTC, milliseconds.
    pub started: String,
    /// Seconds it ran.
    pub duration_secs: f64,
    /// Requests sent.
    pub sent: u64,
    /// Requests without a good answer.
    pub failed: u64,
    /// The longest stretch without a good answer, in seconds.
    pub longest_gap_secs: f64,
    /// Per second from `started`: `[answered, failed]`.
    pub seconds: Vec<[u32; 2]>,
    /// Good answers by the node whose pod gave them.
    pub served_by: BTreeMap<String, u64>,
    /// The first failures: seconds from `started`, the node sent to, why.
    pub failures: Vec<RequestFailureReport>,
}

/// One request that got no good answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFailureReport {
    /// Seconds from the client's start.
    pub at_secs: f64,
    /// The node it was sent to.
    pub node: String,
    /// Why it failed.
    pub reason: String,
}

impl TrafficReport {
    fn new(
        check: &str,
        control_plane: Option<String>,
        t: &crate::rollout::client::Traffic,
    ) -> TrafficReport {
        TrafficReport {
            check: check.into(),
            control_plane,
            started: humantime::format_rfc3339_millis(t.started).to_string(),
            duration_secs: t.duration.as_secs_f64(),
            sent: t.sent,
            failed: t.failed,
            longest_gap_secs: t.longest_gap.as_secs_f64(),
            seconds: t.seconds.iter().map(|(a, b)| [*a, *b]).collect(),
            served_by: t.served_by.clone(),
            failures: t
                .failures
                .iter()
                .map(|f| RequestFailureReport {
                    at_secs: f.at.as_secs_f64(),
                    node: f.node.clone(),
                    reason: f.reason.clone(),
                })
                .collect(),
        }
    }
}

/// One control plane of the run (a grid column).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneReport {
    /// As given (`local`, `kind`, `kubeconfig=PATH`); the checks' `control_plane`.
    pub name: String,
    /// `local`, `kind` or `kubeconfig`.
    pub provider: String,
    /// Its facts ([`column_fact`]): `control_plane.reason`, `kubernetes.version`,
    /// `control_plane.kubectl`, `network`...
    pub properties: BTreeMap<String, String>,
}

/// Whether a property is a fact of one control plane's part of the run (its provider,
/// Kubernetes version, kubectl, network) rather than of the whole run.
pub fn column_fact(name: &str) -> bool {
    ["control_plane", "kubernetes", "network"]
        .iter()
        .any(|p| name == *p || name.strip_prefix(p).is_some_and(|r| r.starts_with('.')))
}

/// One mark on a node's timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkReport {
    /// The node.
    pub node: String,
    /// `not-ready`, `link-cut`, `link-shaped`, `upgrade`, `heartbeat`, `cordon`, `drain`
    /// or `deleted`.
    pub kind: String,
    /// RFC 3339 UTC, milliseconds.
    pub at: String,
    /// Seconds; `null` for an instant.
    pub duration_secs: Option<f64>,
    /// One line.
    pub label: String,
}

/// An early stop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopReport {
    /// `integrity`, `infrastructure`, `interrupted` or `fail-fast`.
    pub kind: String,
    /// The phase it happened in.
    pub phase: String,
    /// One line.
    pub reason: String,
}

/// One phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseReport {
    /// `verify`, `control-plane`, `boot`, `join`, `checks`, `artifacts`, `teardown`.
    pub name: String,
    /// What it did.
    pub detail: String,
    /// The node it concerns (boot, join, a node's teardown).
    #[serde(default)]
    pub node: Option<String>,
    /// RFC 3339 UTC.
    #[serde(default)]
    pub started: Option<String>,
    /// Seconds; `null` if it never finished.
    pub duration_secs: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckReport {
    /// `suite::name`.
    pub id: String,
    /// Suite.
    pub suite: String,
    /// Name.
    pub name: String,
    /// What it proves.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Ran on its own VM.
    pub destructive: bool,
    /// The node its last attempt ran on.
    #[serde(default)]
    pub node: Option<String>,
    /// The control plane it ran against, in a run with several (a name of
    /// `control_planes`); `null` for a check run once per image.
    #[serde(default)]
    pub control_plane: Option<String>,
    /// `passed`, `failed`, `flaky`, `not-run` or `ignored`.
    pub status: String,
    /// Why it did not run.
    pub reason: Option<String>,
    /// RFC 3339 UTC.
    pub started: Option<String>,
    /// Seconds over all attempts.
    pub duration_secs: f64,
    /// The deciding failure's message.
    pub message: Option<String>,
    /// Its expected value.
    pub expected: Option<String>,
    /// Its actual value.
    pub actual: Option<String>,
    /// What its last attempt measured (name -> value), e.g. `requests_lost`.
    #[serde(default)]
    pub figures: BTreeMap<String, String>,
    /// Every attempt.
    pub attempts: Vec<AttemptReport>,
}

/// One attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptReport {
    /// `passed` or `failed`.
    pub status: String,
    /// Seconds.
    pub duration_secs: f64,
    /// The node it ran on.
    #[serde(default)]
    pub node: Option<String>,
    /// Failure message.
    pub message: Option<String>,
    /// Expected value.
    pub expected: Option<String>,
    /// Actual value.
    pub actual: Option<String>,
    /// Commands run and their output.
    pub output: String,
}

/// Counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Checks reported.
    pub total: usize,
    /// Passed first time.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Passed after failing.
    pub flaky: usize,
    /// Selected, not run.
    pub not_run: usize,
    /// Ignored.
    pub ignored: usize,
}

impl CheckReport {
    fn from_record(r: &CheckRecord) -> CheckReport {
        let f = r.failure();
        CheckReport {
            id: r.id.clone(),
            suite: r.suite.clone(),
            name: r.name.clone(),
            description: r.description.clone(),
            tags: r.tags.clone(),
            destructive: r.destructive,
            node: r.attempts.last().and_then(|a| a.node.clone()),
            control_plane: r.control_plane.clone(),
            status: r.status.as_str().into(),
            reason: r.reason.clone(),
            started: r.started.map(format_time),
            duration_secs: r.duration().as_secs_f64(),
            message: f.map(|f| f.message.clone()),
            expected: f.and_then(|f| f.expected.clone()),
            actual: f.and_then(|f| f.actual.clone()),
            figures: r
                .attempts
                .last()
                .map(|a| a.figures.clone())
                .unwrap_or_default(),
            attempts: r
                .attempts
                .iter()
                .map(|a| AttemptReport {
                    status: if a.failure.is_some() {
                        "failed"
                    } else {
                        "passed"
                    }
                    .into(),
                    duration_secs: a.duration.as_secs_f64(),
                    node: a.node.clone(),
                    message: a.failure.as_ref().map(|f| f.message.clone()),
                    expected: a.failure.as_ref().and_then(|f| f.expected.clone()),
                    actual: a.failure.as_ref().and_then(|f| f.actual.clone()),
                    output: a.transcript.clone(),
                })
                .collect(),
        }
    }
}

/// Builds a [`RunReport`] from events.
pub struct Recorder {
    /// The report so far.
    pub report: RunReport,
    start: Instant,
}

impl Recorder {
    /// An empty report starting now, with the given properties.
    pub fn new(properties: BTreeMap<String, String>) -> Recorder {
        Recorder {
            report: RunReport {
                schema_version: SCHEMA_VERSION,
                nodegate_version: env!("CARGO_PKG_VERSION").into(),
                started: format_time(SystemTime::now()),
                finished: None,
                duration_secs: 0.0,
                verdict: "running".into(),
                exit_code: None,
                stop: None,
                properties,
                nodes: BTreeMap::new(),
                phases: Vec::new(),
                checks: Vec::new(),
                summary: Summary::default(),
                artifacts: BTreeMap::new(),
                timeline: Vec::new(),
                control_planes: Vec::new(),
                grid: None,
                traffic: Vec::new(),
            },
            start: Instant::now(),
        }
    }

    /// Takes one event into the report.
    pub fn record(&mut self, e: &Event) {
        let r = &mut self.report;
        r.duration_secs = self.start.elapsed().as_secs_f64();
        match e {
            Event::RunStarted { .. } | Event::CheckStarted { .. } | Event::CheckRetrying { .. } => {
            }
            Event::PhaseStarted {
                phase,
                detail,
                node,
            } => r.phases.push(PhaseReport {
                name: phase.as_str().into(),
                detail: detail.clone(),
                node: node.clone(),
                started: Some(format_time(SystemTime::now())),
                duration_secs: None,
                error: None,
            }),
            Event::PhaseFinished {
                phase,
                duration,
                error,
                node,
            } => {
                if let Some(p) = r.phases.iter_mut().rev().find(|p| {
                    p.name == phase.as_str() && p.node == *node && p.duration_secs.is_none()
                }) {
                    p.duration_secs = Some(duration.as_secs_f64());
                    p.error = error.clone();
                }
            }
            Event::ControlPlaneStarted {
                name, provider, of, ..
            } => {
                r.control_planes.push(ControlPlaneReport {
                    name: name.clone(),
                    provider: provider.clone(),
                    properties: BTreeMap::new(),
                });
                if *of > 1 {
                    r.grid.get_or_insert_with(Grid::default).column(name);
                }
            }
            Event::Property { name, value } => {
                let column = r.control_planes.last_mut().filter(|_| column_fact(name));
                let shared = r.grid.is_none() || column.is_none();
                if let Some(c) = column {
                    c.properties.insert(name.clone(), value.clone());
                }
                // With several control planes, each one's facts are its own.
                if shared {
                    r.properties.insert(name.clone(), value.clone());
                }
            }
            Event::NodeProperty { node, name, value } => {
                r.nodes
                    .entry(node.clone())
                    .or_default()
                    .insert(name.clone(), value.clone());
            }
            Event::Mark(m) => r.timeline.push(MarkReport {
                node: m.node.clone(),
                kind: m.kind.as_str().into(),
                at: humantime::format_rfc3339_millis(m.at).to_string(),
                duration_secs: m.duration.map(|d| d.as_secs_f64()),
                label: m.label.clone(),
            }),
            Event::Traffic { id, traffic } => {
                // In a grid, the control plane whose part of the run is going.
                let column = r
                    .grid
                    .as_ref()
                    .and(r.control_planes.last())
                    .map(|c| c.name.clone());
                r.traffic.push(TrafficReport::new(id, column, traffic))
            }
            Event::Artifact { name, path } => {
                r.artifacts.insert(name.clone(), path.clone());
            }
            Event::CheckFinished(rec) => {
                let s = &mut r.summary;
                s.total += 1;
                match rec.status {
                    Status::Passed => s.passed += 1,
                    Status::Failed => s.failed += 1,
                    Status::Flaky => s.flaky += 1,
                    Status::NotRun => s.not_run += 1,
                    Status::Ignored => s.ignored += 1,
                }
                if let (Some(g), Some(cp)) = (r.grid.as_mut(), &rec.control_plane) {
                    g.add(&rec.suite, cp, rec.status);
                }
                r.checks.push(CheckReport::from_record(rec));
            }
            Event::RunFinished { stop, exit_code } => {
                r.finished = Some(format_time(SystemTime::now()));
                r.exit_code = Some(*exit_code);
                r.verdict = verdict(*exit_code).into();
                r.stop = stop.as_ref().map(|s| StopReport {
                    kind: s.kind.as_str().into(),
                    phase: s.phase.as_str().into(),
                    reason: s.reason.clone(),
                });
            }
        }
    }
}

/// The verdict word for an exit code.
pub fn verdict(code: i32) -> &'static str {
    match code {
        crate::exit::PASS => "passed",
        crate::exit::CHECKS_FAILED => "failed",
        crate::exit::INTEGRITY => "integrity",
        crate::exit::INTERRUPTED => "interrupted",
        _ => "error",
    }
}
