//! The cloud-init NoCloud seed: a small FAT volume labelled `CIDATA` holding `meta-data`
//! and `user-data`, made in memory with the fatfs crate (no mkfs or mtools needed).

use std::io::{self, Cursor, Write};
use std::path::Path;

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

/// Size of the seed volume.
const SEED_BYTES: usize = 2 << 20;

/// What the seed tells cloud-init.
#[derive(Debug, Clone)]
pub struct SeedConfig {
    /// `instance-id`: unique per VM so cloud-init runs its first-boot modules.
    pub instance_id: String,
    /// `local-hostname`.
    pub hostname: String,
    /// The login user created by cloud-init (passwordless sudo).
    pub user: String,
    /// The user's authorized key, OpenSSH one-line form.
    pub authorized_key: String,
    /// The SSH host key the guest must use: (private OpenSSH PEM, public one-line).
    /// Knowing it in advance lets the harness pin it instead of trusting the first key
    /// it sees.
    pub host_key: (String, String),
    /// Files written at first boot (`write_files`).
    pub files: Vec<SeedFile>,
}

/// A file the seed writes in the guest at first boot, owned by root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    /// Absolute guest path (validated by its source, e.g. the profile).
    pub path: String,
    /// Its bytes (carried base64-encoded: any content is one YAML scalar).
    pub content: Vec<u8>,
    /// Its mode, e.g. 0o600.
    pub mode: u32,
}

impl SeedConfig {
    /// The `meta-data` document.
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.hostname
        )
    }

    /// The `user-data` document (#cloud-config, valid for `cloud-init schema`). Besides
    /// the login and the host key it makes the node's name resolve in the guest
    /// (`manage_etc_hosts: localhost`, as cloud metadata does): without that, every `sudo`
    /// in an image that has no DNS for it waits for a lookup to time out. With `ssh_keys`
    /// given, cloud-init generates no other host key (an empty `ssh_genkeytypes`, which
    /// said so before, is refused by its schema).
    pub fn user_data(&self) -> String {
        let indent = |s: &str| {
            s.lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        use base64ct::{Base64, Encoding};
        let files: String = self
            .files
            .iter()
            .map(|f| {
                format!(
                    "  - path: {}\n    encoding: b64\n    content: {}\n    permissions: '{:04o}'\n    owner: root:root\n",
                    serde_json::Value::from(f.path.as_str()),
                    Base64::encode_string(&f.content),
                    f.mode
                )
            })
            .collect();
        let write_files = if files.is_empty() {
            String::new()
        } else {
            format!("write_files:\n{files}")
        };
        format!(
            "#cloud-config\n\
             users:\n  - name: {user}\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {key}\n\
             manage_etc_hosts: localhost\n\
             ssh_pwauth: false\n\
             ssh_deletekeys: true\n\
             ssh_keys:\n  ed25519_private: |\n{private}\n  ed25519_public: {public}\n\
             {write_files}",
            user = self.user,
            key = self.authorized_key.trim(),
            private = indent(self.host_key.0.trim()),
            public = self.host_key.1.trim(),
        )
    }
}

/// Builds the seed volume image in memory.
pub fn build(config: &SeedConfig) -> io::Result<Vec<u8>> {
    let mut disk = Cursor::new(vec![0u8; SEED_BYTES]);
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .volume_label(*b"CIDATA     ")
            .fat_type(FatType::Fat12),
    )?;
    {
        let fs = FileSystem::new(&mut disk, FsOptions::new())?;
        for (name, body) in [
            ("meta-data", config.meta_data()),
            ("user-data", config.user_data()),
        ] {
            let mut f = fs.root_dir().create_file(name)?;
            f.truncate()?;
            f.write_all(body.as_bytes())?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// Writes the seed volume to `path` (raw image, attach read-only), mode 0600 from its
/// first byte: it holds the guest's SSH host private key. `path` must not exist.
pub fn write(config: &SeedConfig, path: &Path) -> io::Result<()> {
    crate::fsutil::write_new(path, &build(config)?, crate::fsutil::PRIVATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn config() -> SeedConfig {
        SeedConfig {
            instance_id: "nodegate-1234".into(),
            hostname: "node-a".into(),
            user: "nodegate".into(),
            authorized_key: "ssh-ed25519 AAAAC3Nza user@host".into(),
            host_key: (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
                "ssh-ed25519 AAAAhost nodegate-host".into(),
            ),
            files: vec![SeedFile {
                path: "/etc/agent dir/config.json".into(),
                content: b"{\"token\": \"t\"}\n".to_vec(),
                mode: 0o600,
            }],
        }
    }

    #[test]
    fn seed_is_a_fat_volume_labelled_cidata_with_both_documents() {
        let image = build(&config()).unwrap();
        let mut disk = Cursor::new(image.clone());
        let fs = FileSystem::new(&mut disk, FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim_end(), "CIDATA");
        let mut user_data = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut user_data)
            .unwrap();
        assert!(user_data.starts_with("#cloud-config\n"));
        assert!(user_data.contains("\nmanage_etc_hosts: localhost\n"));
        assert!(
            !user_data.contains("ssh_genkeytypes"),
            "refused by cloud-init's schema"
        );
        assert!(
            user_data.ends_with(
                "write_files:\n  - path: \"/etc/agent dir/config.json\"\n    encoding: b64\n    content: eyJ0b2tlbiI6ICJ0In0K\n    permissions: '0600'\n    owner: root:root\n"
            ),
            "{user_data}"
        );
        assert!(user_data.contains("      - ssh-ed25519 AAAAC3Nza user@host\n"));
        assert!(user_data.contains("    -----BEGIN OPENSSH PRIVATE KEY-----\n    abc\n"));
        let mut meta = String::new();
        fs.root_dir()
            .open_file("meta-data")
            .unwrap()
            .read_to_string(&mut meta)
            .unwrap();
        assert_eq!(meta, "instance-id: nodegate-1234\nlocal-hostname: node-a\n");
        drop(fs);
        // The label blkid (and so cloud-init) reads.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        std::fs::write(&path, &image).unwrap();
        let out = std::process::Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "LABEL"])
            .arg(&path)
            .output()
            .expect("blkid (util-linux, essential on Debian) runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "CIDATA");
    }
}
