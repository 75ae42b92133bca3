//! What a run reports as it goes. Runners emit these; reporters consume them.

use std::time::{Duration, SystemTime};

use crate::suite::Failure;

/// A run's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Manifest, signature and digests.
    Verify,
    /// Control plane start (or attach).
    ControlPlane,
    /// QEMU until the guest is ready.
    Boot,
    /// Join until the Node is Ready.
    Join,
    /// The checks.
    Checks,
    /// Guards dropped: Node, token, VM, control plane.
    Teardown,
}

impl Phase {
    /// Lowercase name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Verify => "verify",
            Phase::ControlPlane => "control-plane",
            Phase::Boot => "boot",
            Phase::Join => "join",
            Phase::Checks => "checks",
            Phase::Teardown => "teardown",
        }
    }
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Passed on the first attempt.
    Passed,
    /// Failed every attempt.
    Failed,
    /// Failed, then passed on a retry: reported, never counted as a plain pass.
    Flaky,
    /// Selected but not run (fail-fast, interrupted, boot failed); the reason says which.
    NotRun,
    /// Ignored (`ignore = "..."` in the suite) and not asked for.
    Ignored,
}

impl Status {
    /// Lowercase name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Flaky => "flaky",
            Status::NotRun => "not-run",
            Status::Ignored => "ignored",
        }
    }
}

/// One attempt of a check.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// How long it took.
    pub duration: Duration,
    /// Why it failed; `None` if it passed.
    pub failure: Option<Failure>,
    /// Commands and output.
    pub transcript: String,
    /// The node it ran on (none for checks that boot nothing).
    pub node: Option<String>,
    /// What it measured (`requests_lost`, `provisioning_ratio`).
    pub figures: std::collections::BTreeMap<String, String>,
}

/// The result of one check.
#[derive(Debug, Clone)]
pub struct CheckRecord {
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
    /// Outcome.
    pub status: Status,
    /// Why it did not run (not-run, ignored).
    pub reason: Option<String>,
    /// When it started.
    pub started: Option<SystemTime>,
    /// Attempts in order (empty when not run).
    pub attempts: Vec<AttemptRecord>,
    /// The control plane it ran against, in a run with several (its grid column);
    /// `None` for a check that runs once per image.
    pub control_plane: Option<String>,
}

impl CheckRecord {
    /// Total time over all attempts.
    pub fn duration(&self) -> Duration {
        self.attempts.iter().map(|a| a.duration).sum()
    }

    /// The failure that decided the outcome (the last failed attempt).
    pub fn failure(&self) -> Option<&Failure> {
        self.attempts.iter().rev().find_map(|a| a.failure.as_ref())
    }
}

/// Why a run stopped before running every selected check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// The image failed verification: nothing booted.
    Integrity,
    /// Boot, join or the control plane failed.
    Infrastructure,
    /// The node booted and the cluster answered, but the node did not join or become
    /// Ready: the image (its kubelet, its join path) is at fault. The checks that judge
    /// the join fail with the reason; the run ends as failed, not as an infrastructure
    /// error.
    Node,
    /// The image did not boot: a disk with nothing to boot, a kernel panic or an
    /// emergency shell on the console. The checks that judge the boot fail with the
    /// reason (quoting the console line); the run ends as failed.
    Image,
    /// The image did not boot because Secure Boot refused its boot loader or kernel
    /// (the profile demands Secure Boot): the checks that judge the boot and the one
    /// that judges Secure Boot fail with the console line; the run ends as failed.
    SecureBoot,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// `--fail-fast` after a failed check.
    FailFast,
}

impl StopKind {
    /// Lowercase name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            StopKind::Integrity => "integrity",
            StopKind::Infrastructure => "infrastructure",
            StopKind::Node => "node",
            StopKind::Image => "image",
            StopKind::SecureBoot => "secure-boot",
            StopKind::Interrupted => "interrupted",
            StopKind::FailFast => "fail-fast",
        }
    }
}

/// A stop: its kind, the phase it happened in, and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Kind.
    pub kind: StopKind,
    /// Phase.
    pub phase: Phase,
    /// Reason.
    pub reason: String,
}

impl Stop {
    /// Whether this stop is the image's fault (boot or join): checks that judge it fail.
    pub fn is_image_fault(&self) -> bool {
        matches!(
            self.kind,
            StopKind::Node | StopKind::Image | StopKind::SecureBoot
        )
    }

    /// Why a check did not run because of this stop: `KIND: REASON`.
    pub fn not_run_reason(&self) -> String {
        format!("{}: {}", self.kind.as_str(), self.reason)
    }
}

/// Everything a reporter hears.
#[derive(Debug, Clone)]
pub enum Event {
    /// Selection is done.
    RunStarted {
        /// Checks that will run.
        to_run: usize,
        /// Checks listed as ignored.
        ignored: usize,
    },
    /// A run with several control planes turns to the next one: the phases, facts and
    /// checks that follow, up to the next such event, concern it.
    ControlPlaneStarted {
        /// Its column's name, as given (`local`, `kind`, `kubeconfig=PATH`).
        name: String,
        /// The provider (`local`, `kind`, `kubeconfig`).
        provider: String,
        /// Its place, from 0.
        index: usize,
        /// How many the run has.
        of: usize,
    },
    /// A phase began.
    PhaseStarted {
        /// Which.
        phase: Phase,
        /// What it is doing, for progress displays.
        detail: String,
        /// The node it concerns (boot, join, a node's teardown).
        node: Option<String>,
    },
    /// A phase ended.
    PhaseFinished {
        /// Which.
        phase: Phase,
        /// How long.
        duration: Duration,
        /// Why it failed, if it did.
        error: Option<String>,
        /// The node it concerns (pairs it with its start).
        node: Option<String>,
    },
    /// A fact about one node (its role, address, pod range, boot and join times).
    NodeProperty {
        /// The node's name.
        node: String,
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// A fact for the report's properties (accel, Kubernetes version, ...).
    Property {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// A file kept for the people who look into a failure.
    Artifact {
        /// What it is (`console`, `journal`, `profile`).
        name: String,
        /// Where.
        path: std::path::PathBuf,
    },
    /// Something that happened on a node, for its timeline.
    Mark(crate::timeline::Mark),
    /// What a check's client sent and lost while the check ran (a roll-out's).
    Traffic {
        /// The check's id.
        id: String,
        /// What the client saw.
        traffic: Box<crate::rollout::client::Traffic>,
    },
    /// A check began.
    CheckStarted {
        /// Its id.
        id: String,
    },
    /// An attempt failed and the check will be retried.
    CheckRetrying {
        /// Its id.
        id: String,
        /// The attempt that failed (1-based).
        attempt: usize,
        /// Why.
        failure: Failure,
    },
    /// A check ended (or was ruled out: not-run, ignored).
    CheckFinished(Box<CheckRecord>),
    /// The run ended.
    RunFinished {
        /// Why it stopped early, if it did.
        stop: Option<Stop>,
        /// The exit code it will end with.
        exit_code: i32,
    },
}
