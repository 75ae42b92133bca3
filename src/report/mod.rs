//! Reports from run events: the terminal view, the JSON report and JUnit. Reports are
//! rewritten atomically after every check and phase, so a run that dies still leaves a
//! report of what ran (with `finished: null`). This module never touches a VM.

pub mod grid;
pub mod junit;
pub mod model;
pub mod page;
pub mod terminal;

use std::path::{Path, PathBuf};

pub use model::{Recorder, RunReport};

use crate::image::signature::write_atomically;
use crate::runner::Event;

/// Where reports go.
#[derive(Debug, Clone, Default)]
pub struct ReportPaths {
    /// JUnit XML.
    pub junit: Option<PathBuf>,
    /// JSON report.
    pub json: Option<PathBuf>,
    /// The HTML page.
    pub html: Option<PathBuf>,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot write report: {message}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// Records events and keeps the report files current.
pub struct ReportWriter {
    /// The record.
    pub recorder: Recorder,
    paths: ReportPaths,
    /// The first write error (reported at the end; the run goes on).
    pub error: Option<WriteError>,
}

impl ReportWriter {
    /// A writer for `paths` starting a report with `properties`.
    pub fn new(
        paths: ReportPaths,
        properties: std::collections::BTreeMap<String, String>,
    ) -> ReportWriter {
        ReportWriter {
            recorder: Recorder::new(properties),
            paths,
            error: None,
        }
    }

    /// Records the event; rewrites the files when something worth keeping happened.
    pub fn event(&mut self, e: &Event) {
        self.recorder.record(e);
        if matches!(
            e,
            Event::PhaseStarted { .. }
                | Event::PhaseFinished { .. }
                | Event::CheckFinished(_)
                | Event::RunFinished { .. }
        ) {
            self.flush();
        }
    }

    /// Writes the files now.
    pub fn flush(&mut self) {
        let r = &self.recorder.report;
        let mut results = Vec::new();
        if let Some(p) = &self.paths.json {
            results.push(write(p, json_text(r).as_bytes()));
        }
        if let Some(p) = &self.paths.html {
            results.push(write(p, page::render(r).as_bytes()));
        }
        if let Some(p) = &self.paths.junit {
            let xml = junit::to_xml(&junit::to_junit(r)).map_err(|e| WriteError {
                path: p.clone(),
                message: e.to_string(),
            });
            results.push(xml.and_then(|x| write(p, x.as_bytes())));
        }
        for r in results {
            self.keep(r);
        }
    }

    fn keep(&mut self, r: Result<(), WriteError>) {
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }
}

/// Marks the reports of a run that was killed (a JSON report still `running`, a JUnit
/// report whose run testcase is unfinished) as killed, saying `reason`, and draws the
/// page again from the marked JSON. Returns the files changed; reports that are
/// unreadable or already finished are left as they are.
pub fn mark_killed(paths: &ReportPaths, reason: &str) -> Vec<PathBuf> {
    let mut changed = Vec::new();
    if let Some(p) = &paths.json {
        let report: Option<RunReport> = std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(mut r) = report.filter(|r| r.verdict == "running") {
            r.verdict = "killed".into();
            let phase = r
                .phases
                .last()
                .map_or("unknown".to_string(), |p| p.name.clone());
            r.stop = Some(model::StopReport {
                kind: "killed".into(),
                phase,
                reason: reason.into(),
            });
            let text = json_text(&r);
            if write(p, text.as_bytes()).is_ok() {
                changed.push(p.to_owned());
            }
            if let Some(h) = &paths.html {
                if write(h, page::render(&r).as_bytes()).is_ok() {
                    changed.push(h.to_owned());
                }
            }
        }
    }
    if let Some(p) = &paths.junit {
        let parsed = std::fs::read_to_string(p)
            .ok()
            .and_then(|t| quick_junit::Report::deserialize_from_str(&t).ok());
        if let Some(mut r) = parsed {
            if junit::mark_killed(&mut r, reason) {
                if let Ok(x) = junit::to_xml(&r) {
                    if write(p, x.as_bytes()).is_ok() {
                        changed.push(p.to_owned());
                    }
                }
            }
        }
    }
    changed
}

/// The JSON report's text, as every writer of it writes it.
pub fn json_text(r: &RunReport) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default() + "\n"
}

/// Writes `bytes` to `path` atomically (temporary file, then rename), creating the folder.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |e: std::io::Error| WriteError {
        path: path.to_owned(),
        message: e.to_string(),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    write_atomically(path, bytes).map_err(err)
}
