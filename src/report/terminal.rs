//! The terminal view: one line per check like `cargo test`, a spinner with the current
//! phase only when stderr is a terminal, colour only when stdout is one and NO_COLOR is
//! unset.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::grid::Grid;
use crate::runner::{CheckRecord, Event, Status};

/// Prints run events for people (and stays plain for CI logs).
pub struct Terminal {
    color: bool,
    spinner: Option<ProgressBar>,
    progress: bool,
    failures: Vec<CheckRecord>,
    counts: [usize; 5],
    /// In a run with several control planes: the grid, and each column's heading.
    grid: Option<(Grid, Vec<String>)>,
    out: Box<dyn Write + Send>,
}

impl Terminal {
    /// A terminal reporter on stdout; `color`: `None` decides from the TTY and NO_COLOR.
    pub fn stdout(color: Option<bool>) -> Terminal {
        let tty = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Terminal {
            color: color.unwrap_or(tty && !no_color),
            spinner: None,
            progress: std::io::stderr().is_terminal(),
            failures: Vec::new(),
            counts: [0; 5],
            grid: None,
            out: Box::new(std::io::stdout()),
        }
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn status_word(&self, r: &CheckRecord) -> String {
        match r.status {
            Status::Passed => self.paint("ok", "32"),
            Status::Failed => self.paint("FAILED", "31"),
            Status::Flaky => self.paint(
                &format!("FLAKY (passed on attempt {})", r.attempts.len()),
                "33",
            ),
            Status::NotRun => self.paint("not run", "33"),
            Status::Ignored => self.paint("ignored", "33"),
        }
    }

    fn line(&mut self, text: &str) {
        match &self.spinner {
            Some(s) => s.println(text),
            None => {
                let _ = writeln!(self.out, "{text}");
            }
        }
    }

    /// Takes one event.
    pub fn event(&mut self, e: &Event) {
        match e {
            Event::RunStarted { to_run, ignored } => {
                self.line(&format!("\nrunning {to_run} checks ({ignored} ignored)"));
            }
            Event::PhaseStarted { phase, detail, .. } => {
                if self.progress {
                    if let Some(old) = self.spinner.take() {
                        old.finish_and_clear();
                    }
                    let s = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                    s.set_style(
                        ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    s.set_prefix(phase.as_str());
                    s.set_message(detail.clone());
                    s.enable_steady_tick(Duration::from_millis(120));
                    self.spinner = Some(s);
                }
            }
            Event::PhaseFinished {
                phase,
                duration,
                error,
                node,
            } => {
                if let Some(s) = self.spinner.take() {
                    s.finish_and_clear();
                }
                let verdict = match error {
                    None => self.paint("ok", "32"),
                    Some(e) => format!("{}: {e}", self.paint("FAILED", "31")),
                };
                let of = node.as_ref().map_or(String::new(), |n| format!(" {n}"));
                self.line(&format!(
                    "phase {}{of} ... {verdict} ({:.1}s)",
                    phase.as_str(),
                    duration.as_secs_f64()
                ));
            }
            Event::ControlPlaneStarted {
                name, index, of, ..
            } if *of > 1 => {
                self.line(&format!("\ncontrol plane {name} ({} of {of})", index + 1));
                let (grid, headings) = self.grid.get_or_insert_with(Default::default);
                grid.column(name);
                headings.push(name.clone());
            }
            Event::Property { name, value } if name == "kubernetes.version" => {
                if let Some(heading) = self.grid.as_mut().and_then(|(_, h)| h.last_mut()) {
                    heading.push_str(&format!(" {value}"));
                }
            }
            Event::ControlPlaneStarted { .. }
            | Event::Property { .. }
            | Event::NodeProperty { .. }
            | Event::Artifact { .. }
            | Event::Mark(_)
            | Event::Traffic { .. }
            | Event::CheckStarted { .. } => {}
            Event::CheckRetrying {
                id,
                attempt,
                failure,
            } => {
                let w = self.paint("retrying", "33");
                self.line(&format!(
                    "test {id} ... {w} after attempt {attempt}: {}",
                    failure.message
                ));
            }
            Event::CheckFinished(r) => {
                self.counts[r.status as usize] += 1;
                let word = self.status_word(r);
                let tail = match r.status {
                    Status::NotRun | Status::Ignored => {
                        format!(" ({})", r.reason.clone().unwrap_or_default())
                    }
                    _ => format!(" ({:.1}s){}", r.duration().as_secs_f64(), figures(r)),
                };
                let at = match (&r.control_plane, self.grid.as_mut()) {
                    (Some(cp), Some((grid, _))) => {
                        grid.add(&r.suite, cp, r.status);
                        format!(" @{cp}")
                    }
                    _ => String::new(),
                };
                self.line(&format!("test {}{at} ... {word}{tail}", r.id));
                if r.status == Status::Failed {
                    self.failures.push((**r).clone());
                }
            }
            Event::RunFinished { stop, exit_code } => {
                if !self.failures.is_empty() {
                    self.line("\nfailures:");
                    for r in std::mem::take(&mut self.failures) {
                        let at = r
                            .control_plane
                            .as_ref()
                            .map_or(String::new(), |c| format!(" @{c}"));
                        self.line(&format!("\n---- {}{at} ----", r.id));
                        if let Some(f) = r.failure() {
                            let mut text = f.message.clone();
                            if let Some(e) = &f.expected {
                                text.push_str(&format!("\n  expected: {e}"));
                            }
                            if let Some(a) = &f.actual {
                                text.push_str(&format!("\n  actual:   {a}"));
                            }
                            self.line(&text);
                        }
                    }
                }
                if let Some(s) = stop {
                    self.line(&format!(
                        "\nstopped in {}: {} ({})",
                        s.phase.as_str(),
                        s.kind.as_str(),
                        s.reason
                    ));
                }
                if let Some((grid, headings)) = self.grid.take().filter(|(g, _)| !g.rows.is_empty())
                {
                    self.line("\nimage × control plane:");
                    for l in grid.render(&headings) {
                        self.line(&format!("  {l}"));
                    }
                }
                let [passed, failed, flaky, not_run, ignored] = self.counts;
                let result = if *exit_code == 0 {
                    self.paint("ok", "32")
                } else {
                    self.paint("FAILED", "31")
                };
                self.line(&format!(
                    "\ntest result: {result}. {passed} passed; {failed} failed; {flaky} flaky; {not_run} not run; {ignored} ignored"
                ));
            }
        }
    }
}

/// A check's run-wide figures (not its per-node ones, whose names carry the node after a
/// dot), for its line: ` [requests_sent=523 requests_failed=0]`.
fn figures(r: &crate::runner::CheckRecord) -> String {
    let shown: Vec<String> = r
        .attempts
        .last()
        .map(|a| {
            a.figures
                .iter()
                .filter(|(k, _)| !k.contains('.'))
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    if shown.is_empty() {
        String::new()
    } else {
        format!(" [{}]", shown.join(" "))
    }
}
