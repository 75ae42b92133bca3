//! Pod traffic across nodes, provided the way a cloud provides it. The controller manager
//! gives each Node its own pod range (`spec.podCIDR`); nodegate, as the run's network,
//! routes that range to the node at the run's gateway (a route table entry, as a cloud's
//! route controller makes) and installs the node's CNI configuration for it (as a CNI
//! DaemonSet such as kindnet does: a bridge with host-local addresses from the node's
//! range, under a name that sorts before the image's own). Only in runs of several
//! nodes: a single node keeps the image's own CNI configuration.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::Kubectl;
use crate::ssh::SshSession;
use crate::suite::context::shell_quote;

/// The CNI configuration file nodegate installs (containerd reads the first by name).
pub const CONFLIST: &str = "/etc/cni/net.d/05-nodegate-cluster.conflist";

/// A checked IPv4 range `a.b.c.d/n`: the network address and the prefix length.
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (net, bits) = text.split_once('/')?;
    let net: Ipv4Addr = net.parse().ok()?;
    let bits: u8 = bits.parse().ok().filter(|b| (8..=30).contains(b))?;
    let mask = u32::MAX << (32 - bits);
    (u32::from(net) & !mask == 0).then_some((net, bits))
}

/// The node's CNI configuration for its range.
pub fn conflist(net: Ipv4Addr, bits: u8) -> String {
    let gateway = Ipv4Addr::from(u32::from(net) + 1);
    json!({
        "cniVersion": "0.4.0",
        "name": "nodegate-cluster",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("{net}/{bits}"), "gateway": gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// Waits (up to `within`) for the controller manager to give Node `name` its range.
pub fn pod_cidr(kubectl: &Kubectl, name: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let node = kubectl.get("node", None, name).map_err(|e| e.to_string())?;
        if let Some(c) = node
            .as_ref()
            .and_then(|n| n["spec"]["podCIDR"].as_str())
            .filter(|c| !c.is_empty())
        {
            return Ok(c.to_string());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "Node {name} got no podCIDR from the controller manager within {}s",
                within.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Installs the node's CNI configuration for `cidr` over its session.
pub fn install(ssh: &mut SshSession, cidr: &str) -> Result<(), String> {
    let (net, bits) =
        parse_cidr(cidr).ok_or_else(|| format!("podCIDR {cidr:?} is not an IPv4 range"))?;
    let cmd = format!(
        "printf '%s\\n' {} | sudo tee {CONFLIST} >/dev/null",
        shell_quote(&conflist(net, bits))
    );
    let out = ssh
        .exec(&cmd, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(format!(
            "writing {CONFLIST} on the node: {} {}",
            out.describe_end(),
            out.stderr.trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv4_network_ranges_are_routed() {
        assert_eq!(
            parse_cidr("10.244.1.0/24"),
            Some((Ipv4Addr::new(10, 244, 1, 0), 24))
        );
        for bad in [
            "10.244.1.5/24",
            "10.244.1.0",
            "fd00::/64",
            "10.244.1.0/33",
            "x/24",
            "10.0.0.0/4",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
        let c: serde_json::Value =
            serde_json::from_str(&conflist(Ipv4Addr::new(10, 244, 1, 0), 24)).unwrap();
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.244.1.1"
        );
    }
}
