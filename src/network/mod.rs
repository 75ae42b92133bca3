//! The networks VMs sit on, and what this machine can do with them.
//!
//! Today every VM sits behind its own QEMU user-mode NAT. The run's own network (issue
//! 13) lives in a [`Namespace`] of nodegate's own: this module makes it and probes what
//! it can hold (a bridge, taps, link faults), so `nodegate doctor` can say which network
//! a run on this machine gets and why.

mod namespace;

pub use namespace::{Namespace, NamespaceError};

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
    /// Added delay and jitter (`netem`, else `vde_wirefilter`).
    Latency,
}

impl LinkFault {
    /// Every kind, in report order.
    pub const ALL: [LinkFault; 3] = [
        LinkFault::Partition,
        LinkFault::Bandwidth,
        LinkFault::Latency,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            LinkFault::Partition => "partition",
            LinkFault::Bandwidth => "bandwidth",
            LinkFault::Latency => "latency",
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
        Err(e) => return unavailable(e.to_string()),
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
        LinkFault::Latency => match root(&["netem", "delay", "200ms"]) {
            Ok(()) => Ok("netem".into()),
            Err(netem) => {
                match crate::cluster::find_on_path(
                    "vde_wirefilter",
                    &crate::cluster::provider::env_path(),
                ) {
                    Some(p) => Ok(format!("{} (the kernel has no netem)", p.display())),
                    None => Err(format!("{netem}; and vde_wirefilter (vde2) is not on PATH")),
                }
            }
        },
    }
}
