//! The roll-out's client: it sends HTTP requests to the workload without pause while the
//! pool changes under it, from the run's own network (a thread inside the run's
//! namespace), and counts what was lost.
//!
//! It plays the part of a cloud load balancer in front of the pool's NodePorts: requests go
//! round-robin to the nodes in service, and a node leaves the rotation before it is
//! cordoned ([`TrafficClient::withdraw`]), as a load balancer drains a node that is being
//! replaced. What it then still loses is what the cluster lost: a pod stopped before every
//! proxy had dropped it, a container restarted under it, a node that went away.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::network::Dialer;

/// How long one request may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one request may take to be answered once connected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// The failures kept with their details (the count is always complete).
const KEPT_FAILURES: usize = 200;
/// The largest answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// A node's NodePort the client may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node's name.
    pub node: String,
    /// Its address and the Service's NodePort.
    pub addr: SocketAddr,
}

/// One request that got no good answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFailure {
    /// When it was sent, from the client's start.
    pub at: Duration,
    /// The node it was sent to.
    pub node: String,
    /// What went wrong (`connect: Connection refused`, `answer: timed out`, `HTTP 503`).
    pub reason: String,
}

/// What the client saw, from its start to its finish.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    /// When it started (wall clock).
    pub started: SystemTime,
    /// How long it ran.
    pub duration: Duration,
    /// Requests sent.
    pub sent: u64,
    /// Requests without a good answer.
    pub failed: u64,
    /// The longest stretch without a good answer (from the start, between answers, and
    /// until the end).
    pub longest_gap: Duration,
    /// The first failures, with their details.
    pub failures: Vec<RequestFailure>,
    /// Per second from the start: good answers and failures.
    pub seconds: Vec<(u32, u32)>,
    /// Good answers by the node whose pod gave them.
    pub served_by: BTreeMap<String, u64>,
}

impl Traffic {
    /// One line of figures: sent, failed, longest gap.
    pub fn summary(&self) -> String {
        format!(
            "{} requests sent over {}, {} failed, longest gap without an answer {}",
            self.sent,
            crate::message::duration(self.duration),
            self.failed,
            crate::message::duration(self.longest_gap)
        )
    }
}

struct Shared {
    stop: AtomicBool,
    targets: Mutex<Vec<Target>>,
}

/// The running client; dropping it stops it.
pub struct TrafficClient {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<std::io::Result<Traffic>>>,
}

impl TrafficClient {
    /// Starts sending to `targets` in turn, one request every `interval`, from where
    /// `dialer` opens its sockets.
    pub fn start(
        dialer: &Dialer,
        targets: Vec<Target>,
        interval: Duration,
    ) -> std::io::Result<TrafficClient> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            targets: Mutex::new(targets),
        });
        let s = shared.clone();
        let thread = dialer.spawn("nodegate-traffic", move || send_until_stopped(&s, interval))?;
        Ok(TrafficClient {
            shared,
            thread: Some(thread),
        })
    }

    /// Takes `node` out of the rotation (a load balancer draining it); returns whether
    /// it was in.
    pub fn withdraw(&self, node: &str) -> bool {
        let mut t = self.targets();
        let before = t.len();
        t.retain(|x| x.node != node);
        let gone = t.len() < before;
        *self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = t;
        gone
    }

    /// The nodes in the rotation now.
    pub fn targets(&self) -> Vec<Target> {
        self.shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the client and returns what it saw.
    pub fn finish(mut self) -> Result<Traffic, String> {
        self.stop()
    }

    fn stop(&mut self) -> Result<Traffic, String> {
        self.shared.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Ok(traffic))) => Ok(traffic),
            Some(Ok(Err(e))) => Err(format!("the client could not enter the run's network: {e}")),
            Some(Err(_)) => Err("the client's thread panicked".into()),
            None => Err("the client was already stopped".into()),
        }
    }
}

impl Drop for TrafficClient {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

/// The client's loop: one request per `interval` until told to stop.
fn send_until_stopped(shared: &Shared, interval: Duration) -> Traffic {
    let start = Instant::now();
    let mut t = Traffic {
        started: SystemTime::now(),
        duration: Duration::ZERO,
        sent: 0,
        failed: 0,
        longest_gap: Duration::ZERO,
        failures: Vec::new(),
        seconds: Vec::new(),
        served_by: BTreeMap::new(),
    };
    let mut last_answer = start;
    let mut turn = 0usize;
    while !shared.stop.load(Ordering::SeqCst) {
        let sent_at = Instant::now();
        let target = {
            let targets = shared.targets.lock().unwrap_or_else(|p| p.into_inner());
            (!targets.is_empty()).then(|| targets[turn % targets.len()].clone())
        };
        turn = turn.wrapping_add(1);
        let result = match &target {
            Some(target) => request(target.addr),
            None => Err("no node in service".into()),
        };
        let second = sent_at.duration_since(start).as_secs() as usize;
        if t.seconds.len() <= second {
            t.seconds.resize(second + 1, (0, 0));
        }
        t.sent += 1;
        match result {
            Ok(node) => {
                let now = Instant::now();
                t.longest_gap = t.longest_gap.max(now.duration_since(last_answer));
                last_answer = now;
                t.seconds[second].0 += 1;
                *t.served_by.entry(node).or_default() += 1;
            }
            Err(reason) => {
                t.failed += 1;
                t.seconds[second].1 += 1;
                if t.failures.len() < KEPT_FAILURES {
                    t.failures.push(RequestFailure {
                        at: sent_at.duration_since(start),
                        node: target.map(|x| x.node).unwrap_or_default(),
                        reason,
                    });
                }
            }
        }
        let next = sent_at + interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    let end = Instant::now();
    t.longest_gap = t.longest_gap.max(end.duration_since(last_answer));
    t.duration = end.duration_since(start);
    t
}

/// One `GET /` to `addr`: the node whose pod answered (`served-by-POD@NODE`), or why
/// there was no good answer.
fn request(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect: {}", brief(&e)))?;
    let io = |e: std::io::Error| format!("answer: {}", brief(&e));
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(io)?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
    served_by(&String::from_utf8_lossy(&answer))
}

/// The node named by a good answer's page, or why the answer is not good.
fn served_by(answer: &str) -> Result<String, String> {
    let status = answer.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") {
        return Err(if answer.is_empty() {
            "answer: closed without a reply".into()
        } else {
            format!("answer: not HTTP: {:?}", crate::message::one_line(status))
        });
    }
    if code != "200" {
        return Err(format!("HTTP {code}"));
    }
    answer
        .split("served-by-")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|who| who.rsplit_once('@'))
        .map(|(_, node)| node.to_string())
        .ok_or_else(|| "answer: HTTP 200 without the workload's page".into())
}

/// An I/O error's kind in a few words (`Connection refused`, `timed out`).
fn brief(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_good_answer_names_the_node_that_served_it() {
        let ok = "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\nserved-by-web-7d9f@node-a\n";
        assert_eq!(served_by(ok).unwrap(), "node-a");
        assert_eq!(
            served_by("HTTP/1.0 404 Not Found\r\n\r\n").unwrap_err(),
            "HTTP 404"
        );
        assert!(served_by("").unwrap_err().contains("closed"));
        assert!(served_by("HTTP/1.0 200 OK\r\n\r\nhello").is_err());
    }

    /// A server that answers like the workload's pods, then stops answering.
    fn server(answers: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            for s in l.incoming().take(answers) {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nserved-by-p@node-a\n");
            }
        });
        (addr, t)
    }

    #[test]
    fn the_client_counts_answers_and_failures_and_the_longest_gap() {
        let (good, t) = server(usize::MAX);
        // A port nothing listens on: connection refused.
        let refused = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let targets = vec![
            Target {
                node: "node-a".into(),
                addr: good,
            },
            Target {
                node: "node-b".into(),
                addr: refused,
            },
        ];
        let c = TrafficClient::start(&Dialer::Host, targets, Duration::from_millis(20)).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(c.withdraw("node-b"));
        assert!(!c.withdraw("node-b"));
        std::thread::sleep(Duration::from_millis(400));
        let traffic = c.finish().unwrap();
        assert!(traffic.sent >= 20, "{traffic:?}");
        assert!(traffic.failed >= 5, "{traffic:?}");
        assert!(traffic.failed < traffic.sent / 2 + 1, "{traffic:?}");
        assert!(traffic.failures.iter().all(|f| f.node == "node-b"));
        assert!(
            traffic.failures[0].reason.starts_with("connect:"),
            "{traffic:?}"
        );
        assert_eq!(traffic.served_by["node-a"], traffic.sent - traffic.failed);
        assert!(
            traffic.longest_gap < Duration::from_millis(300),
            "{traffic:?}"
        );
        let counted: u64 = traffic.seconds.iter().map(|(a, b)| u64::from(a + b)).sum();
        assert_eq!(counted, traffic.sent);
        drop(t);
    }
}
