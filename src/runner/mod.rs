//! Runs selected checks against an [`Environment`] and emits [`Event`]s: retries and flaky
//! marking, fail-fast, interruption, infrastructure stops. It never writes reports.

pub mod event;
pub mod select;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Instant, SystemTime};

pub use event::{AttemptRecord, CheckRecord, Event, Phase, Status, Stop, StopKind};
pub use select::{Partition, Selection, Verdict};

use crate::suite::{Attempt, Check, Failure, Need};
use crate::{exit, interrupt};

/// What checks run against: it boots, joins and hands out VMs as checks need them.
pub trait Environment {
    /// Makes `need` available on the shared VM (booting and joining on first use).
    fn prepare(&mut self, need: Need, emit: &mut dyn FnMut(Event)) -> Result<(), Stop>;
    /// Makes `need` available on a fresh VM of its own, for a destructive check.
    fn prepare_fresh(&mut self, need: Need, emit: &mut dyn FnMut(Event)) -> Result<(), Stop>;
    /// Tears down the fresh VM, if one exists.
    fn release_fresh(&mut self, emit: &mut dyn FnMut(Event));
    /// Runs one attempt of `check` on the fresh VM (destructive) or the shared one.
    fn run(&mut self, check: &Check, attempt: &mut Attempt) -> Result<(), Failure>;
    /// Collects logs after a failed check.
    fn on_failure(&mut self, check: &Check, emit: &mut dyn FnMut(Event));
    /// A failure decided before anything is prepared for `check` (a hot upgrade whose
    /// bundle was refused: no VM is booted to refuse it). `None`: run it.
    fn decided(&mut self, _check: &Check) -> Option<Failure> {
        None
    }
    /// The node the prepared `check` runs on, for its record.
    fn node(&self, _check: &Check) -> Option<String> {
        None
    }
    /// Why `check` cannot run in this environment at all (it needs the cluster network
    /// and the run has none), decided before anything is prepared. `None`: run it.
    fn unavailable(&mut self, _check: &Check) -> Option<String> {
        None
    }
}

/// How the runner treats failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Extra attempts for a failed check.
    pub retries: usize,
    /// Stop at the first failed check.
    pub fail_fast: bool,
}

/// The checks of a run in run order: manifest checks first, then shared-VM checks, then
/// node checks, then destructive ones (each on its own VM), then the roll-out's pool
/// checks (on the pool, once the other VMs are gone); suite order otherwise.
pub fn order(mut checks: Vec<Check>) -> Vec<Check> {
    checks.sort_by_key(|c| (c.need == Need::Pool, c.destructive, c.need));
    checks
}

fn record(c: &Check, status: Status, reason: Option<String>) -> CheckRecord {
    CheckRecord {
        id: c.id(),
        suite: c.suite.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        tags: c.tags.clone(),
        destructive: c.destructive,
        status,
        reason,
        started: None,
        attempts: Vec::new(),
        control_plane: None,
    }
}

/// Whether `c` judges what `s` says went wrong (the boot for an image stop, the join
/// for a node stop).
fn judges(c: &Check, s: &Stop) -> bool {
    match s.kind {
        StopKind::Node => c.judges_join(),
        StopKind::Image => c.judges_boot(),
        StopKind::SecureBoot => c.judges_boot() || c.judges_secure_boot(),
        _ => false,
    }
}

/// The record of a check that could not run because of `s`. An image fault (boot or
/// join) is a failure of the checks that judge it, and of `c` itself when `blame` (it
/// triggered the boot or join and no check that judges it is left to run: the failure
/// is never silent). Every other check is not run.
fn stopped(c: &Check, s: &Stop, blame: bool) -> CheckRecord {
    if s.is_image_fault() && (blame || judges(c, s)) {
        let mut r = record(c, Status::Failed, None);
        r.attempts.push(AttemptRecord {
            duration: std::time::Duration::ZERO,
            failure: Some(Failure::new(s.reason.clone())),
            transcript: String::new(),
            node: None,
            figures: Default::default(),
        });
        return r;
    }
    record(c, Status::NotRun, Some(s.not_run_reason()))
}

/// The record of a check the selection ignores (`why`: its reason, if any).
fn ignored(c: &Check, why: &str) -> CheckRecord {
    let reason = if why.is_empty() { "ignored" } else { why };
    record(c, Status::Ignored, Some(reason.into()))
}

/// Reports the checks of `checks` that `selection` picks as not run because of `stop`
/// (a part of the run an earlier stop keeps from starting), the ignored ones as ignored.
pub fn not_run(checks: &[Check], selection: &Selection, stop: &Stop, emit: &mut dyn FnMut(Event)) {
    for c in checks {
        let rec = match selection.verdict(c) {
            Verdict::Out => continue,
            Verdict::Ignored(why) => ignored(c, &why),
            Verdict::Run => stopped(c, stop, false),
        };
        emit(Event::CheckFinished(Box::new(rec)));
    }
}

/// The exit code for a run that stopped with `stop` and has `failed` failed checks.
pub fn exit_code(stop: Option<&Stop>, failed: usize) -> i32 {
    match stop.map(|s| s.kind) {
        Some(StopKind::Interrupted) => exit::INTERRUPTED,
        Some(StopKind::Infrastructure) => exit::ENVIRONMENT,
        Some(StopKind::Integrity) => exit::INTEGRITY,
        Some(StopKind::FailFast | StopKind::Node | StopKind::Image | StopKind::SecureBoot) => {
            exit::CHECKS_FAILED
        }
        None if failed > 0 => exit::CHECKS_FAILED,
        None => exit::PASS,
    }
}

/// Runs `checks` (already ordered) as `selection` decides; returns the exit code and
/// the stop, if the run stopped early. The caller emits [`Event::RunFinished`] once it has
/// torn down.
pub fn run(
    checks: &[Check],
    selection: &Selection,
    options: RunOptions,
    env: &mut dyn Environment,
    emit: &mut dyn FnMut(Event),
) -> (i32, Option<Stop>) {
    let verdicts: Vec<Verdict> = checks.iter().map(|c| selection.verdict(c)).collect();
    emit(Event::RunStarted {
        to_run: verdicts.iter().filter(|v| **v == Verdict::Run).count(),
        ignored: verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Ignored(_)))
            .count(),
    });
    let mut stop: Option<Stop> = None;
    let mut failed = 0;
    // Checks failed so far, with their failure's first line, for `requires`.
    let mut failures: HashMap<String, String> = HashMap::new();
    for (i, (c, v)) in checks.iter().zip(&verdicts).enumerate() {
        match v {
            Verdict::Out => continue,
            Verdict::Ignored(why) => {
                emit(Event::CheckFinished(Box::new(ignored(c, why))));
                continue;
            }
            Verdict::Run => {}
        }
        if stop.is_none() && interrupt::interrupted() {
            stop = Some(Stop {
                kind: StopKind::Interrupted,
                phase: Phase::Checks,
                reason: "interrupted by a signal".into(),
            });
        }
        if let Some(s) = &stop {
            let rec = stopped(c, s, false);
            failed += usize::from(rec.status == Status::Failed);
            emit(Event::CheckFinished(Box::new(rec)));
            continue;
        }
        let (mut rec, stop_now) = run_one(c, options, env, emit, &failures);
        if let Some(s) = stop_now.as_ref().filter(|s| s.is_image_fault()) {
            let judged_later = checks[i + 1..]
                .iter()
                .zip(&verdicts[i + 1..])
                .any(|(c, v)| *v == Verdict::Run && judges(c, s));
            if !judged_later {
                rec = stopped(c, s, true);
            }
        }
        let status = rec.status;
        if status == Status::Failed {
            failures.insert(c.id(), first_failure(&rec));
        }
        emit(Event::CheckFinished(Box::new(rec)));
        if stop_now.is_some() {
            failed += usize::from(status == Status::Failed);
            stop = stop_now;
        } else if status == Status::Failed {
            failed += 1;
            if options.fail_fast {
                stop = Some(Stop {
                    kind: StopKind::FailFast,
                    phase: Phase::Checks,
                    reason: format!("{} failed", c.id()),
                });
            }
        }
    }
    (exit_code(stop.as_ref(), failed), stop)
}

/// The first line of a failed record's last failure.
fn first_failure(rec: &CheckRecord) -> String {
    rec.attempts
        .iter()
        .rev()
        .find_map(|a| a.failure.as_ref())
        .map(|f| f.message.lines().next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// The failed record of `c` when a check it requires has failed (it is not tried: it
/// would only wait out its budget for what the failed check already showed missing).
fn requirement_failed(c: &Check, failures: &HashMap<String, String>) -> Option<CheckRecord> {
    let (id, why) = c
        .requires
        .iter()
        .find_map(|r| failures.get(r).map(|why| (r, why)))?;
    let mut rec = record(c, Status::Failed, None);
    rec.started = Some(SystemTime::now());
    rec.attempts.push(AttemptRecord {
        duration: std::time::Duration::ZERO,
        failure: Some(Failure::new(format!(
            "not tried: it requires {id}, which failed: {why}"
        ))),
        transcript: String::new(),
        node: None,
        figures: Default::default(),
    });
    Some(rec)
}

/// Runs one check with its retries (not at all when the environment cannot hold it or a
/// check it requires has failed); the stop is set when the environment could not be
/// prepared or a signal arrived.
fn run_one(
    c: &Check,
    options: RunOptions,
    env: &mut dyn Environment,
    emit: &mut dyn FnMut(Event),
    failures: &HashMap<String, String>,
) -> (CheckRecord, Option<Stop>) {
    let not_run = |s: Stop| (stopped(c, &s, false), Some(s));
    if let Some(reason) = c.unset() {
        return (record(c, Status::NotRun, Some(reason.to_string())), None);
    }
    if let Some(reason) = env.unavailable(c) {
        return (record(c, Status::NotRun, Some(reason)), None);
    }
    if let Some(rec) = requirement_failed(c, failures) {
        emit(Event::CheckStarted { id: c.id() });
        return (rec, None);
    }
    let mut rec = record(c, Status::Failed, None);
    if let Some(failure) = env.decided(c) {
        emit(Event::CheckStarted { id: c.id() });
        rec.started = Some(SystemTime::now());
        rec.attempts.push(AttemptRecord {
            duration: std::time::Duration::ZERO,
            failure: Some(failure),
            transcript: String::new(),
            node: None,
            figures: Default::default(),
        });
        return (rec, None);
    }
    for n in 1..=options.retries + 1 {
        let prepared = if c.destructive {
            env.prepare_fresh(c.need, emit)
        } else {
            env.prepare(c.need, emit)
        };
        if let Err(s) = prepared {
            env.release_fresh(emit);
            return not_run(s);
        }
        if n == 1 {
            emit(Event::CheckStarted { id: c.id() });
            rec.started = Some(SystemTime::now());
        }
        let mut attempt = Attempt::new(c.timeout);
        let node = env.node(c);
        let t = Instant::now();
        let result =
            catch_unwind(AssertUnwindSafe(|| env.run(c, &mut attempt))).unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(Failure::new(format!("check panicked: {msg}")))
            });
        let duration = t.elapsed();
        if result.is_err() {
            env.on_failure(c, emit);
        }
        if c.destructive {
            env.release_fresh(emit);
        }
        if interrupt::interrupted() {
            return not_run(Stop {
                kind: StopKind::Interrupted,
                phase: Phase::Checks,
                reason: format!("interrupted during {}", c.id()),
            });
        }
        for m in std::mem::take(&mut attempt.marks) {
            emit(Event::Mark(m));
        }
        for traffic in std::mem::take(&mut attempt.traffic) {
            emit(Event::Traffic {
                id: c.id(),
                traffic: Box::new(traffic),
            });
        }
        let failure = result.err();
        let passed = failure.is_none();
        rec.attempts.push(AttemptRecord {
            duration,
            failure: failure.clone(),
            transcript: attempt.transcript,
            node,
            figures: attempt.figures,
        });
        if passed {
            rec.status = if n == 1 {
                Status::Passed
            } else {
                Status::Flaky
            };
            return (rec, None);
        }
        if n <= options.retries {
            emit(Event::CheckRetrying {
                id: c.id(),
                attempt: n,
                failure: failure.expect("failed"),
            });
        }
    }
    rec.status = Status::Failed;
    (rec, None)
}

#[cfg(test)]
mod tests;
