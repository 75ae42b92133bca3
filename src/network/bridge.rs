//! The run's own network: one bridge inside the run's [`Namespace`], a tap per node, and
//! DHCP from a dnsmasq started inside the namespace.
//!
//! The address plan is QEMU's user network, on purpose: 10.0.2.0/24 with the gateway at
//! .2 and nodes from .15, so the addresses a profile names for guests (the API server's
//! 10.0.2.100, the agent's `guest_addr`) mean the same in both modes; here they are
//! addresses of the bridge, where the run's own servers listen. The plan cannot collide
//! with anything: the namespace holds nothing but loopback and this bridge, and it has no
//! route out, so no address of the host or of any other run is reachable from it.
//!
//! A node's slot decides everything about its link: tap `ngtapN`, MAC `52:54:00:6e:67:N`
//! and address `10.0.2.(15+N)`, all handed out by dnsmasq as static leases for that MAC.
//! A guest that asks DHCP (what images do in clouds) gets its address without any
//! nodegate-specific configuration in the image.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::shaping::{self, Impairment, Shaper, Wire};
use super::{Dialer, Namespace, NamespaceError};
use crate::process::ProcessGroup;
use crate::wait::{wait_until, Poll};

/// The bridge's own address: the nodes' gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The nodes' segment, the gateway's /24.
const SEGMENT: &str = "10.0.2.0/24";
/// The first node's last octet (slot 0).
const FIRST_NODE: u8 = 15;
/// Nodes on one run network at once (10.0.2.15-31, the user network's DHCP range).
pub const MAX_NODES: usize = 17;
/// The bridge's name (private to the namespace).
const BRIDGE: &str = "ngbr0";

/// Why the run network could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RunNetworkError {
    /// The namespace or a link in it.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// No DHCP server to run.
    #[error("dnsmasq (the run network's DHCP server) is not on PATH: install Debian's dnsmasq-base, or run with --network user")]
    MissingDnsmasq,
    /// dnsmasq exited or never said it serves.
    #[error("dnsmasq (the run network's DHCP server) did not start: {reason} (log: {})", log.display())]
    Dnsmasq {
        /// Its log.
        log: PathBuf,
        /// What it said.
        reason: String,
    },
    /// The link emulator for a node.
    #[error("the link emulator for {tap}: {reason}")]
    Emulator {
        /// The node's tap.
        tap: String,
        /// What failed.
        reason: String,
    },
    /// Every slot is taken.
    #[error("the run network holds at most {MAX_NODES} nodes at once")]
    Full,
    /// The log folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A node's end of the bridge, as QEMU needs it.
#[derive(Debug, Clone)]
pub struct BridgePort {
    /// The run's namespace: QEMU starts inside it and opens the tap there.
    pub ns: Arc<Namespace>,
    /// The tap's name inside the namespace.
    pub tap: String,
    /// The NIC's MAC address.
    pub mac: String,
    /// The address DHCP gives that MAC.
    pub addr: Ipv4Addr,
    /// The link emulator's switch QEMU plugs into instead of the tap (wirefilter).
    pub vde: Option<PathBuf>,
}

/// A bridge in a namespace of the run's own, with DHCP on it.
pub struct RunNetwork {
    // Field order is drop order: the DHCP server stops before the namespace goes.
    _dnsmasq: ProcessGroup,
    ns: Arc<Namespace>,
    slots: Arc<Mutex<[bool; MAX_NODES]>>,
    /// How nodes' links are shaped, or why they cannot be; `None` when the run asked for
    /// no shaping (its nodes' frames then go straight to their taps).
    shaper: Option<Result<Shaper, String>>,
    dir: PathBuf,
}

/// A node's tap on the bridge; dropping it removes the tap and frees the slot.
pub struct NodeLink {
    /// What QEMU is given.
    pub port: BridgePort,
    /// Ranges routed to this node at the gateway (its pods).
    routes: Vec<String>,
    /// Its wire through the link emulator (wirefilter), if the run shapes links with it.
    wire: Option<Wire>,
    /// Whether the link can be shaped (netem or its wire).
    shapeable: bool,
    slot: usize,
    slots: Arc<Mutex<[bool; MAX_NODES]>>,
}

fn slot_mac(slot: usize) -> String {
    format!("52:54:00:6e:67:{slot:02x}")
}

fn slot_addr(slot: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, FIRST_NODE + slot as u8)
}

/// dnsmasq on PATH.
pub(super) fn dnsmasq_bin() -> Option<PathBuf> {
    crate::cluster::find_on_path("dnsmasq", &crate::cluster::provider::env_path())
}

/// dnsmasq's arguments: DHCP only (no DNS), static leases for every slot, nothing read
/// from or written to the host's configuration. It keeps root (`--user=root`): a process
/// that changes its user loses the parent-death signal that ties it to nodegate.
fn dnsmasq_args(pid_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port=0",
        "--leasefile-ro",
        "--dhcp-authoritative",
        "--log-facility=-",
        "--log-dhcp",
        "--user=root",
        "--group=root",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--interface={BRIDGE}"));
    args.push(format!("--pid-file={}", pid_file.display()));
    args.push(format!(
        "--dhcp-range={},static,255.255.255.0,12h",
        slot_addr(0)
    ));
    args.push(format!("--dhcp-option=option:router,{GATEWAY}"));
    for slot in 0..MAX_NODES {
        args.push(format!(
            "--dhcp-host={},{}",
            slot_mac(slot),
            slot_addr(slot)
        ));
    }
    args
}

impl RunNetwork {
    /// Makes the namespace and the bridge (the gateway address and `services`, the
    /// addresses the run's servers listen on), and starts DHCP; its log goes to `dir`.
    /// With `shape`, it finds how nodes' links can be shaped ([`Shaper::detect`]).
    pub fn create(
        services: &[Ipv4Addr],
        dir: &Path,
        shape: bool,
    ) -> Result<RunNetwork, RunNetworkError> {
        let dnsmasq = dnsmasq_bin().ok_or(RunNetworkError::MissingDnsmasq)?;
        fs::create_dir_all(dir).map_err(|source| RunNetworkError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let ns = Arc::new(Namespace::create()?);
        ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE])?;
        let mut seen = vec![GATEWAY];
        for a in services {
            if !seen.contains(a) {
                seen.push(*a);
                ns.ip(&["addr", "add", &format!("{a}/32"), "dev", BRIDGE])?;
            }
        }
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        // The gateway routes between the nodes' pod ranges (this namespace's own sysctl).
        ns.within(|| fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?
            .map_err(|source| RunNetworkError::Io {
                path: "/proc/sys/net/ipv4/ip_forward (in the run's namespace)".into(),
                source,
            })?;

        let log = dir.join("dnsmasq.log");
        let io = |source| RunNetworkError::Io {
            path: log.clone(),
            source,
        };
        let out = fs::File::create(&log).map_err(io)?;
        let mut cmd = Command::new(&dnsmasq);
        cmd.args(dnsmasq_args(&dir.join("dnsmasq.pid")))
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(io)?)
            .stderr(out);
        ns.enter(&mut cmd);
        let mut group = ProcessGroup::spawn("dnsmasq", &mut cmd).map_err(io)?;
        let fail = |reason: String| RunNetworkError::Dnsmasq {
            log: log.clone(),
            reason,
        };
        wait_until(
            "dnsmasq to serve DHCP",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let text = fs::read_to_string(&log).unwrap_or_default();
                if let Ok(Some(status)) = group.try_status() {
                    let said = text.lines().last().unwrap_or("no message").to_string();
                    return Poll::Fatal(format!("exited ({status}): {said}"));
                }
                if text.contains("DHCP, static leases") {
                    Poll::Ready(())
                } else {
                    Poll::Pending("no DHCP line in its log yet".into())
                }
            },
        )
        .map_err(|e| fail(e.to_string()))?;
        let shaper = shape.then(|| Shaper::detect(&ns));
        Ok(RunNetwork {
            _dnsmasq: group,
            ns,
            slots: Arc::new(Mutex::new([false; MAX_NODES])),
            shaper,
            dir: dir.to_owned(),
        })
    }

    /// How the nodes' links are shaped, or why they cannot be (`None`: not asked for).
    pub fn shaper(&self) -> Option<&Result<Shaper, String>> {
        self.shaper.as_ref()
    }

    /// The namespace.
    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.ns
    }

    /// A dialer into the namespace.
    pub fn dialer(&self) -> Dialer {
        Dialer::Namespace(self.ns.clone())
    }

    /// Makes `addr` (a service address the nodes dial, such as the API server's) the
    /// address of another namespace, `peer` (a kind node's), over a veth pair: `addr` is
    /// given to the peer's end, routed to it from the bridge (proxy ARP answers for it
    /// there), and the peer routes the nodes' segment back through the gateway. The pair
    /// goes when either namespace goes. `peer_pid` is a process inside `peer`.
    pub fn attach_peer(
        &self,
        peer: &Namespace,
        peer_pid: u32,
        addr: Ipv4Addr,
    ) -> Result<(), NamespaceError> {
        let (here, there) = ("ngpeer0", "ngpeer1");
        let gw = GATEWAY.to_string();
        self.ns.ip(&[
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            &peer_pid.to_string(),
        ])?;
        self.ns.ip(&["link", "set", here, "up"])?;
        self.ns.ip(&[
            "route",
            "add",
            &format!("{addr}/32"),
            "dev",
            here,
            "src",
            &gw,
        ])?;
        self.ns
            .within(|| fs::write(format!("/proc/sys/net/ipv4/conf/{BRIDGE}/proxy_arp"), "1"))?
            .map_err(|e| NamespaceError::Tool {
                tool: "sysctl",
                args: format!("net.ipv4.conf.{BRIDGE}.proxy_arp=1"),
                detail: e.to_string(),
            })?;
        let a = addr.to_string();
        peer.ip(&["addr", "add", &format!("{a}/32"), "dev", there])?;
        peer.ip(&["link", "set", there, "up"])?;
        peer.ip(&[
            "route", "add", SEGMENT, "via", &gw, "dev", there, "onlink", "src", &a,
        ])?;
        Ok(())
    }

    /// A tap for a new node on the bridge, in the lowest free slot.
    pub fn node_link(&self) -> Result<NodeLink, RunNetworkError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots
                .iter()
                .position(|taken| !taken)
                .ok_or(RunNetworkError::Full)?;
            slots[slot] = true;
            slot
        };
        let mut link = NodeLink {
            port: BridgePort {
                ns: self.ns.clone(),
                tap: format!("ngtap{slot}"),
                mac: slot_mac(slot),
                addr: slot_addr(slot),
                vde: None,
            },
            routes: Vec::new(),
            wire: None,
            shapeable: matches!(self.shaper, Some(Ok(_))),
            slot,
            slots: self.slots.clone(),
        };
        let tap = link.port.tap.clone();
        // A failure here drops `link`, which frees the slot and removes a half-made tap.
        self.ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        self.ns.ip(&["link", "set", &tap, "master", BRIDGE])?;
        self.ns.ip(&["link", "set", &tap, "up"])?;
        if let Some(Ok(Shaper::Wirefilter { switch, filter, .. })) = &self.shaper {
            let dir = self.dir.join(format!("link{slot}"));
            let wire = Wire::start(&self.ns, switch, filter, &tap, &dir)
                .map_err(|reason| RunNetworkError::Emulator { tap, reason })?;
            link.port.vde = Some(wire.qemu_socket.clone());
            link.wire = Some(wire);
        }
        Ok(link)
    }
}

impl NodeLink {
    /// The ranges routed to this node at the gateway (its pod range, in a run of several
    /// nodes).
    pub fn routes(&self) -> &[String] {
        &self.routes
    }

    /// Brings the node's link down (`up == false`: a partition) or up again.
    pub fn set_up(&self, up: bool) -> Result<(), NamespaceError> {
        let state = if up { "up" } else { "down" };
        self.port
            .ns
            .ip(&["link", "set", &self.port.tap, state])
            .map(|_| ())
    }

    /// Partitions the node (its link down) until the guard is dropped.
    pub fn cut(&self) -> Result<LinkCut<'_>, NamespaceError> {
        self.set_up(false)?;
        Ok(LinkCut(self))
    }

    /// Shapes the frames towards the node as `imp` says until the guard is dropped.
    /// Fails when the run has no shaper (it did not ask for one, or the machine has none).
    pub fn shape(&self, imp: &Impairment) -> Result<Shaped<'_>, String> {
        if !self.shapeable {
            return Err(format!("{}: this run does not shape links", self.port.tap));
        }
        shaping::apply(&self.port.ns, &self.port.tap, self.wire.as_ref(), Some(imp))?;
        Ok(Shaped(self))
    }

    /// Routes `cidr` (the node's pod range, checked by the caller) to the node at the
    /// run's gateway, the way a cloud's route table does; removed with the link.
    pub fn route(&mut self, cidr: &str) -> Result<(), NamespaceError> {
        let via = self.port.addr.to_string();
        self.port
            .ns
            .ip(&["route", "replace", cidr, "via", &via, "dev", BRIDGE])?;
        self.routes.push(cidr.to_string());
        Ok(())
    }
}

/// A partitioned node's link: dropping it brings the link back up, so a failing check
/// never leaves the node cut off.
pub struct LinkCut<'l>(&'l NodeLink);

impl Drop for LinkCut<'_> {
    fn drop(&mut self) {
        let _ = self.0.set_up(true);
    }
}

/// A shaped node's link: dropping it clears the shaping.
pub struct Shaped<'l>(&'l NodeLink);

impl Drop for Shaped<'_> {
    fn drop(&mut self) {
        let l = self.0;
        let _ = shaping::apply(&l.port.ns, &l.port.tap, l.wire.as_ref(), None);
    }
}

impl Drop for NodeLink {
    fn drop(&mut self) {
        // The emulator lets go of the tap before it goes.
        self.wire.take();
        for r in &self.routes {
            let _ = self.port.ns.ip(&["route", "del", r]);
        }
        let _ = self.port.ns.ip(&["link", "del", &self.port.tap]);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots[self.slot] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_its_own_lease_inside_the_user_networks_dhcp_range() {
        let args = dnsmasq_args(Path::new("/run/x/dnsmasq.pid"));
        let hosts: Vec<&String> = args
            .iter()
            .filter(|a| a.starts_with("--dhcp-host="))
            .collect();
        assert_eq!(hosts.len(), MAX_NODES);
        assert_eq!(hosts[0], "--dhcp-host=52:54:00:6e:67:00,10.0.2.15");
        assert_eq!(hosts[16], "--dhcp-host=52:54:00:6e:67:10,10.0.2.31");
        assert!(args.contains(&"--port=0".to_string()), "DHCP only, no DNS");
        assert!(args.contains(&"--user=root".to_string()));
    }
}
