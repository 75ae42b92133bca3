//! Which network a run gets: its own bridge, or QEMU's user-mode NAT per VM.

use super::Namespace;

/// What was asked for (`nodegate run --network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkChoice {
    /// The run's own bridge where this machine allows it, else user mode.
    #[default]
    Auto,
    /// The run's own bridge, or fail.
    Bridge,
    /// QEMU's user-mode network (no cluster network).
    User,
}

impl std::str::FromStr for NetworkChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(NetworkChoice::Auto),
            "bridge" => Ok(NetworkChoice::Bridge),
            "user" => Ok(NetworkChoice::User),
            _ => Err(format!("unknown network {s:?} (auto, bridge, user)")),
        }
    }
}

/// The network a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Every node on the run's bridge, the control plane beside them.
    Bridge,
    /// Each VM alone behind QEMU's user-mode NAT.
    User,
}

impl NetworkMode {
    /// `bridge` or `user`, as reports say it.
    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::User => "user",
        }
    }
}

impl NetworkChoice {
    /// Decides the mode. `outside` names a control plane that lives outside any
    /// namespace nodegate makes (a kubeconfig's cluster, kind), which user mode reaches
    /// through a forward and the bridge cannot. Returns the mode and why, or why the
    /// bridge that was asked for cannot be had.
    pub fn decide(self, outside: Option<&str>) -> Result<(NetworkMode, String), String> {
        if self == NetworkChoice::User {
            return Ok((NetworkMode::User, "asked for (--network user)".into()));
        }
        let blocker = bridge_blocker(outside);
        match (self, blocker) {
            (_, None) => Ok((
                NetworkMode::Bridge,
                "nodegate can make a network namespace and dnsmasq serves DHCP in it".into(),
            )),
            (NetworkChoice::Bridge, Some(why)) => {
                Err(format!("--network bridge cannot be had: {why}"))
            }
            (_, Some(why)) => Ok((NetworkMode::User, why)),
        }
    }
}

/// Why this machine cannot give a run its bridge, if it cannot.
fn bridge_blocker(outside: Option<&str>) -> Option<String> {
    if let Some(cp) = outside {
        return Some(format!(
            "the {cp} control plane lives outside the run's namespace"
        ));
    }
    if let Err(e) = Namespace::create() {
        return Some(no_namespace(&e));
    }
    if super::bridge::dnsmasq_bin().is_none() {
        return Some(
            "dnsmasq (the run network's DHCP server) is not on PATH (Debian: dnsmasq-base)".into(),
        );
    }
    None
}

/// Why the run's namespace could not be made: `e`, and for a user other than root what
/// that means on this host.
pub(super) fn no_namespace(e: &super::NamespaceError) -> String {
    match unprivileged_taps() {
        Some(why) => format!("{e}; {why}"),
        None => e.to_string(),
    }
}

/// For a user other than root: why a user namespace of its own (CAP_NET_ADMIN over the
/// namespaces it makes) would still not give the run its bridge on this host, if it
/// would not. Its taps need /dev/net/tun, whose mode the host decides (Debian 0666; some
/// sandboxes 0600, root only); nodegate makes the run's namespace as root only.
fn unprivileged_taps() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return None;
    }
    // SAFETY: access reads a NUL-terminated path.
    let open = unsafe { libc::access(c"/dev/net/tun".as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    let root_only = format!("nodegate makes the run's namespace as root only (uid {uid} here)");
    Some(if open {
        root_only
    } else {
        format!(
            "{root_only}, and even a user namespace of its own could not make taps: \
             /dev/net/tun is not open to uid {uid}"
        )
    })
}
