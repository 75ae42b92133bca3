//! What happened to a node and when, beyond its phases and checks: NotReady windows, link
//! cuts, shaped links, upgrade steps, heartbeats received, and a roll-out's cordons,
//! drains and deletions. Checks and the environment
//! record marks; the report keeps them (`timeline`) and the HTML page draws them.

use std::time::{Duration, Instant, SystemTime};

/// What a mark shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// The Node's Ready condition was not True.
    NotReady,
    /// The node's link was down.
    LinkCut,
    /// The node's link was shaped (latency, loss, bandwidth).
    LinkShaped,
    /// An in-place upgrade ran, from the script's start until the node was back.
    Upgrade,
    /// The agent endpoint accepted a heartbeat from the node.
    Heartbeat,
    /// The node was cordoned (after it left the client's rotation).
    Cordon,
    /// The node was drained: from the drain's start until its pods were evicted.
    Drain,
    /// The node was replaced: its VM shut down and its Node deleted.
    Deleted,
}

impl MarkKind {
    /// Lowercase name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkKind::NotReady => "not-ready",
            MarkKind::LinkCut => "link-cut",
            MarkKind::LinkShaped => "link-shaped",
            MarkKind::Upgrade => "upgrade",
            MarkKind::Heartbeat => "heartbeat",
            MarkKind::Cordon => "cordon",
            MarkKind::Drain => "drain",
            MarkKind::Deleted => "deleted",
        }
    }
}

/// One thing that happened on a node: at an instant, or for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// The node's name.
    pub node: String,
    /// What.
    pub kind: MarkKind,
    /// When it began.
    pub at: SystemTime,
    /// How long it lasted (`None`: an instant).
    pub duration: Option<Duration>,
    /// One line for people.
    pub label: String,
}

impl Mark {
    /// A stretch from `start` to `end` (monotonic clock), placed on the wall clock.
    pub fn span(node: &str, kind: MarkKind, start: Instant, end: Instant, label: String) -> Mark {
        Mark {
            node: node.to_string(),
            kind,
            at: wall(start),
            duration: Some(end.saturating_duration_since(start)),
            label,
        }
    }

    /// An instant (monotonic clock), placed on the wall clock.
    pub fn instant(node: &str, kind: MarkKind, at: Instant, label: String) -> Mark {
        Mark {
            node: node.to_string(),
            kind,
            at: wall(at),
            duration: None,
            label,
        }
    }
}

/// The wall-clock time of a past monotonic instant.
pub fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    let ago = now.saturating_duration_since(at);
    let ahead = at.saturating_duration_since(now);
    (SystemTime::now() - ago) + ahead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_keeps_its_length_and_lands_before_now() {
        let start = Instant::now() - Duration::from_secs(5);
        let m = Mark::span(
            "n1",
            MarkKind::NotReady,
            start,
            start + Duration::from_secs(2),
            "x".into(),
        );
        assert_eq!(m.duration, Some(Duration::from_secs(2)));
        let ago = SystemTime::now().duration_since(m.at).unwrap();
        assert!(
            ago >= Duration::from_secs(5) && ago < Duration::from_secs(6),
            "{ago:?}"
        );
        assert_eq!(m.kind.as_str(), "not-ready");
    }
}
