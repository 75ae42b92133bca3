//! Image profiles (`profiles/*.toml`): everything image-specific that the suites need,
//! so that a vendor certifies an image by writing a profile rather than code.
//! The format is documented in docs/profiles.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config_file::{self, ConfigError};

/// A parsed profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name, e.g. `debian-fixture`.
    pub name: String,
    /// One line about the image family it describes.
    #[serde(default)]
    pub description: String,
    /// How the VM is shaped.
    #[serde(default)]
    pub vm: VmProfile,
    /// How nodegate logs in.
    #[serde(default)]
    pub ssh: SshProfile,
    /// How the node joins a control plane.
    #[serde(default)]
    pub join: JoinProfile,
    /// systemd unit names of the components.
    #[serde(default)]
    pub services: Services,
    /// Time budgets the image promises.
    #[serde(default)]
    pub budgets: Budgets,
    /// The node agent's protocol, for the endpoint nodegate hosts during a run.
    #[serde(default)]
    pub agent: AgentProfile,
    /// How a hot upgrade bundle is applied.
    #[serde(default)]
    pub upgrade: UpgradeProfile,
    /// Values the checks expect that the manifest does not carry.
    #[serde(default)]
    pub expect: BTreeMap<String, toml::Value>,
    /// Free-form values for vendor suites (`${profile.vars.NAME}`).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// VM shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmProfile {
    /// Firmware when the manifest has no kernel artifact: `uefi` or `bios`.
    pub firmware: Firmware,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Default for VmProfile {
    fn default() -> Self {
        VmProfile {
            firmware: Firmware::Uefi,
            vcpus: 2,
            memory_mib: 2048,
        }
    }
}

/// Firmware for disk boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// OVMF.
    Uefi,
    /// SeaBIOS.
    Bios,
}

/// SSH login.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshProfile {
    /// The user cloud-init creates (with passwordless sudo).
    pub user: String,
}

impl Default for SshProfile {
    fn default() -> Self {
        SshProfile {
            user: "nodegate".into(),
        }
    }
}

/// How the image joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinProfile {
    /// `kubeadm`, `bootstrap-kubeconfig` or `script`.
    pub method: JoinMethodName,
    /// kubeadm preflight errors the image knowingly fails.
    #[serde(default)]
    pub ignore_preflight_errors: Vec<String>,
    /// For `bootstrap-kubeconfig`: where the kubelet reads it; for `script`: the script.
    #[serde(default)]
    pub path: Option<String>,
}

impl Default for JoinProfile {
    fn default() -> Self {
        JoinProfile {
            method: JoinMethodName::Kubeadm,
            ignore_preflight_errors: Vec::new(),
            path: None,
        }
    }
}

/// Join methods by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JoinMethodName {
    /// `kubeadm join` with a bootstrap token.
    Kubeadm,
    /// A bootstrap kubeconfig written where the kubelet reads it.
    BootstrapKubeconfig,
    /// The vendor's own script.
    Script,
}

/// Unit names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Services {
    /// containerd's unit.
    pub containerd: String,
    /// The kubelet's unit.
    pub kubelet: String,
    /// The node agent's unit.
    pub agent: String,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            containerd: "containerd.service".into(),
            kubelet: "kubelet.service".into(),
            agent: "nodegate-agent.service".into(),
        }
    }
}

/// The node agent's side of the run: how to point it at nodegate's endpoint and what the
/// endpoint expects of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentProfile {
    /// The endpoint's address as the guest dials it (forwarded to a host port).
    pub guest_addr: String,
    /// The endpoint's port as the guest dials it.
    pub guest_port: u16,
    /// The bearer token the agent must send.
    pub token: String,
    /// Registration path.
    pub register_path: String,
    /// Heartbeat path.
    pub heartbeat_path: String,
    /// The request JSON field naming the node.
    pub identity_field: String,
    /// The promised heartbeat interval.
    #[serde(with = "duration_serde")]
    pub heartbeat_interval: Duration,
    /// Where the agent reads its config in the guest.
    pub config_path: String,
    /// The config file's content; `@ENDPOINT@`, `@TOKEN@` and `@NODE_NAME@` are replaced.
    pub config: String,
    /// The agent's local state, fetched in the guest (JSON).
    pub state_url: String,
}

impl Default for AgentProfile {
    fn default() -> Self {
        AgentProfile {
            guest_addr: "10.0.2.101".into(),
            guest_port: 18080,
            token: "nodegate-agent-token".into(),
            register_path: "/v1/register".into(),
            heartbeat_path: "/v1/heartbeat".into(),
            identity_field: "node_name".into(),
            heartbeat_interval: Duration::from_secs(5),
            config_path: "/etc/nodegate-agent/config.json".into(),
            config: "{\"endpoint\": \"@ENDPOINT@\", \"token\": \"@TOKEN@\", \"node_name\": \"@NODE_NAME@\"}\n".into(),
            state_url: "http://127.0.0.1:9101/state".into(),
        }
    }
}

/// How the image applies a hot upgrade bundle (`--upgrade-bundle`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeProfile {
    /// The bundle payload that applies it, run as root from `guest_dir`.
    pub script: String,
    /// Where the verified payloads are placed in the guest.
    pub guest_dir: String,
    /// Prints the kubelet's version (compared with the bundle's `kubelet` component).
    pub kubelet_version_command: String,
    /// Prints the agent's version (compared with the bundle's `agent` component).
    pub agent_version_command: String,
}

impl Default for UpgradeProfile {
    fn default() -> Self {
        UpgradeProfile {
            script: "upgrade.sh".into(),
            guest_dir: "/var/lib/nodegate/upgrade".into(),
            kubelet_version_command: "kubelet --version".into(),
            agent_version_command: "nodegate-agent --version".into(),
        }
    }
}

/// Time budgets, as humantime strings ("90s", "5m") in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    /// From QEMU's start until SSH answers.
    #[serde(with = "duration_serde")]
    pub ssh: Duration,
    /// From SSH until `systemctl is-system-running` settles.
    #[serde(with = "duration_serde")]
    pub ready: Duration,
    /// From the join command until the Node is Ready.
    #[serde(with = "duration_serde")]
    pub join: Duration,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            ssh: Duration::from_secs(600),
            ready: Duration::from_secs(600),
            join: Duration::from_secs(600),
        }
    }
}

impl Profile {
    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Profile, ConfigError> {
        let p: Profile = config_file::load(path)?;
        if p.name.trim().is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "`name` is empty".into(),
            });
        }
        if p.join.method != JoinMethodName::Kubeadm && p.join.path.is_none() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "[join] `path` is required for this join method".into(),
            });
        }
        Ok(p)
    }

    /// The profile as TOML (the effective profile written to the artifacts).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Variables `profile.*` for suites: every scalar of the profile by its dotted path.
    pub fn variables(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(value) = serde_json::to_value(self) {
            flatten("profile", &value, &mut out);
        }
        out
    }
}

/// Flattens a JSON tree into `prefix.a.b = value` entries (arrays joined by commas).
pub fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(prefix.to_string(), parts.join(","));
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

pub(crate) mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn defaults_fill_what_a_minimal_profile_leaves_out() {
        let (_d, p) = write("name = \"x\"\n");
        let prof = Profile::load(&p).unwrap();
        assert_eq!(prof.ssh.user, "nodegate");
        assert_eq!(prof.budgets.join, Duration::from_secs(600));
        let vars = prof.variables();
        assert_eq!(vars["profile.services.kubelet"], "kubelet.service");
        assert_eq!(vars["profile.budgets.join"], "10m");
    }

    #[test]
    fn a_misspelt_key_is_refused_with_its_line() {
        let (_d, p) = write("name = \"x\"\n[services]\nkubelett = \"k\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("p.toml:3:1: unknown field `kubelett`"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_the_value() {
        let (_d, p) = write("name = \"x\"\n[budgets]\nssh = \"soon\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains(":3:7: invalid duration \"soon\""), "{e}");
    }
}
