//! The first-boot configuration as Ignition reads it (spec 3.3.0), for images provisioned
//! the Flatcar / Fedora CoreOS way: QEMU hands it to the guest on fw_cfg under
//! [`FW_CFG_NAME`], and Ignition applies it in the initramfs on the first boot. It says
//! what the cloud-init seed says ([`SeedConfig`]): the login user and its key, passwordless
//! sudo, the pinned host key, the node's name (resolvable), and the seed's files.

use std::io;
use std::path::Path;

use base64ct::{Base64, Encoding};
use serde_json::{json, Value};

use super::seed::SeedConfig;

/// Where QEMU's Ignition platform (`ignition.platform.id=qemu`) reads its config.
pub const FW_CFG_NAME: &str = "opt/com.coreos/config";

/// A data URL of `bytes`, as Ignition's `contents.source` takes it.
fn data(bytes: &[u8]) -> String {
    format!("data:;base64,{}", Base64::encode_string(bytes))
}

fn file(path: &str, mode: u32, bytes: &[u8]) -> Value {
    json!({"path": path, "mode": mode, "overwrite": true, "contents": {"source": data(bytes)}})
}

/// The Ignition config of `c`, as JSON text.
pub fn config(c: &SeedConfig) -> String {
    let (private, public) = &c.host_key;
    let mut files = vec![
        file(
            "/etc/ssh/ssh_host_ed25519_key",
            0o600,
            format!("{}\n", private.trim()).as_bytes(),
        ),
        file(
            "/etc/ssh/ssh_host_ed25519_key.pub",
            0o644,
            format!("{}\n", public.trim()).as_bytes(),
        ),
        file(
            &format!("/etc/sudoers.d/90-nodegate-{}", c.user),
            0o440,
            format!("{} ALL=(ALL) NOPASSWD:ALL\n", c.user).as_bytes(),
        ),
        file(
            "/etc/hostname",
            0o644,
            format!("{}\n", c.hostname).as_bytes(),
        ),
        // What cloud-init's `manage_etc_hosts: localhost` does: the name resolves.
        json!({"path": "/etc/hosts", "append": [{"source": data(format!("127.0.1.1 {}\n", c.hostname).as_bytes())}]}),
    ];
    files.extend(c.files.iter().map(|f| file(&f.path, f.mode, &f.content)));
    json!({
        "ignition": {"version": "3.3.0"},
        "passwd": {"users": [{
            "name": c.user,
            "shell": "/bin/bash",
            "sshAuthorizedKeys": [c.authorized_key.trim()],
        }]},
        "storage": {"files": files},
    })
    .to_string()
}

/// Writes the config of `c` to `path` (0600: it carries the host's private key).
pub fn write(c: &SeedConfig, path: &Path) -> io::Result<()> {
    crate::fsutil::write_new(path, config(c).as_bytes(), crate::fsutil::PRIVATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::seed::SeedFile;

    #[test]
    fn the_config_says_what_the_seed_says_in_ignitions_terms() {
        let c = SeedConfig {
            instance_id: "i".into(),
            hostname: "node-a".into(),
            user: "vendor".into(),
            authorized_key: "ssh-ed25519 AAAAuser nodegate\n".into(),
            host_key: (
                "-----BEGIN-----\nk\n-----END-----".into(),
                "ssh-ed25519 AAAAhost h".into(),
            ),
            files: vec![SeedFile {
                path: "/etc/vendor/agent.json".into(),
                content: b"{\"token\": \"t\"}".to_vec(),
                mode: 0o600,
            }],
        };
        let v: Value = serde_json::from_str(&config(&c)).unwrap();
        assert_eq!(v["ignition"]["version"], "3.3.0");
        let user = &v["passwd"]["users"][0];
        assert_eq!(user["name"], "vendor");
        assert_eq!(
            user["sshAuthorizedKeys"][0],
            "ssh-ed25519 AAAAuser nodegate"
        );
        let files = v["storage"]["files"].as_array().unwrap();
        let by_path = |p: &str| files.iter().find(|f| f["path"] == p).unwrap().clone();
        let decoded = |f: &Value| {
            let s = f["contents"]["source"].as_str().unwrap();
            let b64 = s.strip_prefix("data:;base64,").unwrap();
            String::from_utf8(Base64::decode_vec(b64).unwrap()).unwrap()
        };
        let key = by_path("/etc/ssh/ssh_host_ed25519_key");
        assert_eq!(key["mode"], 0o600);
        assert_eq!(decoded(&key), "-----BEGIN-----\nk\n-----END-----\n");
        assert_eq!(
            decoded(&by_path("/etc/sudoers.d/90-nodegate-vendor")),
            "vendor ALL=(ALL) NOPASSWD:ALL\n"
        );
        assert_eq!(by_path("/etc/sudoers.d/90-nodegate-vendor")["mode"], 0o440);
        assert_eq!(decoded(&by_path("/etc/hostname")), "node-a\n");
        let hosts = by_path("/etc/hosts");
        assert!(hosts.get("contents").is_none(), "appended, not replaced");
        let agent = by_path("/etc/vendor/agent.json");
        assert_eq!(agent["mode"], 0o600);
        assert_eq!(decoded(&agent), "{\"token\": \"t\"}");
    }
}
