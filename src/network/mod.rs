//! The networks VMs sit on, and what this machine can do with them.
//!
//! A run gets one of two networks ([`NetworkMode`]): its own bridge inside a
//! [`Namespace`] of nodegate's own ([`RunNetwork`]: every node on one segment, the control
//! plane beside them), or, without the privilege, QEMU's user-mode NAT per VM. This module
//! makes the first, chooses between them, and probes what this machine can do with them
//! (link faults), so `nodegate doctor` and the report can say which network a run gets and
//! why. nodegate's own clients reach into the namespace through a [`Dialer`].

mod bridge;
mod mode;
mod namespace;
pub mod shaping;

pub use bridge::{
    BridgePort, LinkCut, NodeLink, RunNetwork, RunNetworkError, Shaped, GATEWAY, MAX_NODES,
};
pub use mode::{NetworkChoice, NetworkMode};
pub use namespace::{Namespace, NamespaceError};
pub use shaping::{Impairment, Shaper};

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Where nodegate's own clients and servers open their sockets and start their children:
/// in the host's namespace, or inside the run's.
#[derive(Debug, Clone, Default)]
pub enum Dialer {
    /// The host's own namespace.
    #[default]
    Host,
    /// The run's namespace.
    Namespace(Arc<Namespace>),
}

impl Dialer {
    /// A TCP connection to `addr`.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        match self {
            Dialer::Host => TcpStream::connect_timeout(&addr, timeout),
            Dialer::Namespace(ns) => ns.connect(addr, timeout),
        }
    }

    /// A listening socket on `addr`.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        match self {
            Dialer::Host => TcpListener::bind(addr),
            Dialer::Namespace(ns) => ns
                .within(|| TcpListener::bind(addr))
                .map_err(io::Error::other)?,
        }
    }

    /// Makes `cmd` start where this dialer's sockets live.
    pub fn command<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        match self {
            Dialer::Host => cmd,
            Dialer::Namespace(ns) => ns.enter(cmd),
        }
    }

    /// Starts a thread whose sockets live where this dialer's do, for all its life.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<io::Result<T>>> {
        match self {
            Dialer::Host => std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || Ok(f())),
            Dialer::Namespace(ns) => ns.spawn(name, f),
        }
    }

    /// Whether this is the run's namespace.
    pub fn is_namespace(&self) -> bool {
        matches!(self, Dialer::Namespace(_))
    }
}

/// Names used inside a probe namespace (private to it: they cannot clash with the host's).
const PROBE_BRIDGE: &str = "ngbr0";
const PROBE_TAP: &str = "ngtap0";

/// A kind of fault injected on a node's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// A node cut off (link down).
    Partition,
    /// A bandwidth cap (`tbf`).
    Bandwidth,
    /// Added delay (`netem`, else vde2's `wirefilter`).
    Latency,
    /// Dropped frames (`netem`, else vde2's `wirefilter`).
    Loss,
}

impl LinkFault {
    /// Every kind, in report order.
    pub const ALL: [LinkFault; 4] = [
        LinkFault::Partition,
        LinkFault::Bandwidth,
        LinkFault::Latency,
        LinkFault::Loss,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            LinkFault::Partition => "partition",
            LinkFault::Bandwidth => "bandwidth",
            LinkFault::Latency => "latency",
            LinkFault::Loss => "loss",
        }
    }
}

/// What a probe found.
#[derive(Debug)]
pub struct Probe {
    /// A namespace with a bridge and a tap could be made, or why not.
    pub bridge: Result<(), String>,
    /// Each fault kind: how it would be injected, or why it cannot be.
    pub faults: Vec<(LinkFault, Result<String, String>)>,
}

/// Makes a throwaway namespace with a bridge and a tap, and tries each fault kind on it.
pub fn probe() -> Probe {
    let ns = match Namespace::create() {
        Ok(ns) => ns,
        Err(e) => return unavailable(mode::no_namespace(&e)),
    };
    let setup = [
        vec!["link", "add", PROBE_BRIDGE, "type", "bridge"],
        vec!["tuntap", "add", "dev", PROBE_TAP, "mode", "tap"],
        vec!["link", "set", PROBE_TAP, "master", PROBE_BRIDGE],
        vec!["link", "set", PROBE_BRIDGE, "up"],
    ];
    for args in &setup {
        if let Err(e) = ns.ip(args) {
            return unavailable(e.to_string());
        }
    }
    let faults = LinkFault::ALL
        .iter()
        .map(|&f| (f, fault_works(&ns, f)))
        .collect();
    Probe {
        bridge: Ok(()),
        faults,
    }
}

fn unavailable(reason: String) -> Probe {
    Probe {
        faults: LinkFault::ALL
            .iter()
            .map(|&f| (f, Err(format!("no namespace: {reason}"))))
            .collect(),
        bridge: Err(reason),
    }
}

fn fault_works(ns: &Namespace, fault: LinkFault) -> Result<String, String> {
    let root = |qdisc: &[&str]| {
        let mut args = vec!["qdisc", "replace", "dev", PROBE_TAP, "root"];
        args.extend_from_slice(qdisc);
        ns.tool("tc", &args).map(|_| ()).map_err(|e| e.to_string())
    };
    match fault {
        LinkFault::Partition => ns
            .ip(&["link", "set", PROBE_TAP, "down"])
            .map(|_| "link down".into())
            .map_err(|e| e.to_string()),
        LinkFault::Bandwidth => root(&[
            "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms",
        ])
        .map(|_| "tbf".into()),
        LinkFault::Latency | LinkFault::Loss => match Shaper::detect(ns)? {
            Shaper::Netem => Ok("netem".into()),
            Shaper::Wirefilter { no_netem, .. } => Ok(format!("wirefilter; no netem: {no_netem}")),
        },
    }
}
