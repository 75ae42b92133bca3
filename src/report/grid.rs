//! The image × control plane grid of a run with several control planes: for each suite
//! and control plane, how its checks ended. The JSON report, JUnit and the terminal all
//! draw it from the same [`Grid`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::runner::Status;

/// How one suite ended against one control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    /// `failed` if any check failed, else `passed` if any passed (flaky counts), else
    /// `not-run` (nothing ran: not run or ignored).
    pub status: String,
    /// Passed first time.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Passed after failing.
    pub flaky: usize,
    /// Not run.
    pub not_run: usize,
    /// Ignored.
    pub ignored: usize,
}

impl Cell {
    fn add(&mut self, status: Status) {
        match status {
            Status::Passed => self.passed += 1,
            Status::Failed => self.failed += 1,
            Status::Flaky => self.flaky += 1,
            Status::NotRun => self.not_run += 1,
            Status::Ignored => self.ignored += 1,
        }
        self.status = if self.failed > 0 {
            "failed"
        } else if self.passed + self.flaky > 0 {
            "passed"
        } else {
            "not-run"
        }
        .into();
    }

    /// `ok 9/10 (1 not run)`, `FAILED 3/4`: the terminal's cell.
    pub fn summary(&self) -> String {
        let word = match self.status.as_str() {
            "passed" => "ok",
            "failed" => "FAILED",
            _ => "not run",
        };
        let counted = self.passed + self.failed + self.flaky + self.not_run;
        let mut s = format!("{word} {}/{counted}", self.passed + self.flaky);
        let mut notes = Vec::new();
        if self.flaky > 0 {
            notes.push(format!("{} flaky", self.flaky));
        }
        if self.not_run > 0 && self.status != "not-run" {
            notes.push(format!("{} not run", self.not_run));
        }
        if !notes.is_empty() {
            s.push_str(&format!(" ({})", notes.join(", ")));
        }
        s
    }
}

/// One suite's row: a cell per control plane, by column name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// The suite.
    pub suite: String,
    /// Column name -> cell.
    pub cells: BTreeMap<String, Cell>,
}

/// The grid: suites in the order their first check ended, columns in the run's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Column names, in the order the run took them.
    pub columns: Vec<String>,
    /// One per suite with checks run against a control plane.
    pub rows: Vec<Row>,
}

impl Grid {
    /// Adds a column (a control plane the run turns to).
    pub fn column(&mut self, name: &str) {
        if !self.columns.iter().any(|c| c == name) {
            self.columns.push(name.into());
        }
    }

    /// Counts one check of `suite` that ended `status` against `column`.
    pub fn add(&mut self, suite: &str, column: &str, status: Status) {
        self.column(column);
        let row = match self.rows.iter().position(|r| r.suite == suite) {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    suite: suite.into(),
                    cells: BTreeMap::new(),
                });
                self.rows.last_mut().expect("just pushed")
            }
        };
        row.cells.entry(column.into()).or_default().add(status);
    }

    /// The grid as aligned text: a header of `headers` (one per column), a line per
    /// suite; a column a suite never ran against shows `-`.
    pub fn render(&self, headers: &[String]) -> Vec<String> {
        let mut table: Vec<Vec<String>> = vec![std::iter::once("suite".to_string())
            .chain(headers.iter().cloned())
            .collect()];
        for r in &self.rows {
            table.push(
                std::iter::once(r.suite.clone())
                    .chain(
                        self.columns
                            .iter()
                            .map(|c| r.cells.get(c).map_or("-".into(), Cell::summary)),
                    )
                    .collect(),
            );
        }
        let width = |i: usize| {
            table
                .iter()
                .map(|row| row.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..=self.columns.len()).map(width).collect();
        table
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_fails_on_any_failure_and_passes_only_when_something_passed() {
        let mut g = Grid::default();
        g.column("local");
        g.column("kind");
        for s in [Status::Passed, Status::Passed, Status::NotRun] {
            g.add("kubelet", "local", s);
        }
        for s in [Status::Passed, Status::Failed, Status::Flaky] {
            g.add("kubelet", "kind", s);
        }
        g.add("cluster", "local", Status::Ignored);
        let cells = &g.rows[0].cells;
        assert_eq!(cells["local"].status, "passed");
        assert_eq!(cells["local"].summary(), "ok 2/3 (1 not run)");
        assert_eq!(cells["kind"].status, "failed");
        assert_eq!(cells["kind"].summary(), "FAILED 2/3 (1 flaky)");
        assert_eq!(g.rows[1].cells["local"].status, "not-run");
        let text = g.render(&["local (v1.20.2)".into(), "kind (v1.20.2)".into()]);
        assert_eq!(text[0], "suite    local (v1.20.2)     kind (v1.20.2)");
        assert_eq!(text[1], "kubelet  ok 2/3 (1 not run)  FAILED 2/3 (1 flaky)");
        assert_eq!(text[2], "cluster  not run 0/0         -");
    }
}
