//! The signed image manifest, format v1 (documented in docs/manifest.md).
//!
//! A manifest is a JSON file beside the image that names what the image is and promises:
//! its artifacts with sizes and digests, the component versions it carries and the
//! in-guest files whose digests later checks compare. Its detached Ed25519 signature
//! covers the exact bytes of the file.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::keys::KeyId;

/// The schema version this nodegate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Manifests larger than this are refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// A parsed manifest. Field names and meanings are those of docs/manifest.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Image name, e.g. `debian-fixture`.
    pub name: String,
    /// Release number; strictly increases from one release of `name` to the next.
    pub version: u64,
    /// CPU architecture, e.g. `x86_64`.
    pub architecture: String,
    /// When the manifest was made, RFC 3339 UTC (`2026-11-29T06:00:00Z`).
    pub created: String,
    /// After this instant the manifest is refused, RFC 3339 UTC.
    pub expires: String,
    /// Id of the key that signs this manifest (see [`KeyId`]).
    pub key_id: String,
    /// Files shipped beside the manifest.
    pub artifacts: Vec<Artifact>,
    /// Component versions the image promises: `containerd`, `kubelet`, `agent`,
    /// `kernel`, and any other a vendor adds.
    #[serde(default)]
    pub components: BTreeMap<String, String>,
    /// Files inside the guest and their digests, for in-guest integrity checks.
    #[serde(default)]
    pub files: Vec<GuestFile>,
}

/// A file shipped beside the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// What the file is for.
    pub role: ArtifactRole,
    /// Path relative to the manifest's folder; never absolute, never leaving it.
    pub path: String,
    /// File format: `qcow2`, `raw`, `linux-kernel`, `initramfs`, `text` or `file`.
    pub format: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hexadecimal SHA-256.
    pub sha256: String,
}

/// The role of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactRole {
    /// A bootable disk image (qcow2 or raw).
    Disk,
    /// A kernel for direct kernel boot.
    Kernel,
    /// An initramfs for direct kernel boot.
    Initrd,
    /// The kernel command line for direct kernel boot.
    Cmdline,
    /// UEFI variable store template.
    EfiVars,
    /// A file of an upgrade bundle (binary, script).
    Payload,
}

impl ArtifactRole {
    /// The textual form used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactRole::Disk => "disk",
            ArtifactRole::Kernel => "kernel",
            ArtifactRole::Initrd => "initrd",
            ArtifactRole::Cmdline => "cmdline",
            ArtifactRole::EfiVars => "efi-vars",
            ArtifactRole::Payload => "payload",
        }
    }

    /// Parses the textual form.
    pub fn parse(s: &str) -> Option<ArtifactRole> {
        [
            ArtifactRole::Disk,
            ArtifactRole::Kernel,
            ArtifactRole::Initrd,
            ArtifactRole::Cmdline,
            ArtifactRole::EfiVars,
            ArtifactRole::Payload,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A file inside the guest and its expected digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestFile {
    /// Absolute path inside the guest.
    pub path: String,
    /// Lowercase hexadecimal SHA-256.
    pub sha256: String,
}

/// Why a manifest could not be read as format v1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape (unknown or missing fields).
    #[error("malformed manifest JSON: {}", crate::message::one_line(.0))]
    Json(String),
    /// `schema_version` is missing or not one this nodegate reads.
    #[error("unsupported schema_version {found} (this nodegate reads {SCHEMA_VERSION})")]
    Schema {
        /// What the file says.
        found: String,
    },
    /// Well-formed JSON whose values break a rule of the format.
    #[error("invalid manifest: {}", crate::message::one_line(.0))]
    Invalid(String),
}

impl Manifest {
    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        let found = value.get("schema_version");
        if found.and_then(|v| v.as_u64()) != Some(SCHEMA_VERSION as u64) {
            return Err(ManifestError::Schema {
                found: found.map_or_else(|| "(missing)".to_string(), |v| v.to_string()),
            });
        }
        // Parse the bytes again (not the Value) so errors carry line and column.
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The canonical bytes nodegate writes: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Checks the rules of format v1 that JSON types cannot express.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |m: String| Err(ManifestError::Invalid(m));
        if self.name.trim().is_empty() {
            return invalid("name is empty".into());
        }
        if self.architecture.trim().is_empty() {
            return invalid("architecture is empty".into());
        }
        let created = parse_time("created", &self.created)?;
        let expires = parse_time("expires", &self.expires)?;
        if expires <= created {
            return invalid(format!(
                "expires ({}) is not after created ({})",
                self.expires, self.created
            ));
        }
        if !KeyId::is_well_formed(&self.key_id) {
            return invalid(format!(
                "key_id {:?} is not of the form ed25519:<32 hex digits>",
                self.key_id
            ));
        }
        if self.artifacts.is_empty() {
            return invalid("artifacts is empty".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.artifacts {
            check_sha256(&format!("artifact {:?}", a.path), &a.sha256)?;
            relative_artifact_path(&a.path)?;
            if !seen.insert(&a.path) {
                return invalid(format!("artifact {:?} is listed twice", a.path));
            }
        }
        for f in &self.files {
            if !f.path.starts_with('/') {
                return invalid(format!("guest file {:?} is not an absolute path", f.path));
            }
            check_sha256(&format!("guest file {:?}", f.path), &f.sha256)?;
        }
        Ok(())
    }

    /// When the manifest expires.
    pub fn expires_at(&self) -> SystemTime {
        parse_time("expires", &self.expires).expect("validated on parse")
    }

    /// The first artifact with this role.
    pub fn artifact(&self, role: ArtifactRole) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.role == role)
    }
}

/// Parses an RFC 3339 timestamp field.
pub fn parse_time(field: &str, value: &str) -> Result<SystemTime, ManifestError> {
    humantime::parse_rfc3339(value).map_err(|e| {
        ManifestError::Invalid(format!(
            "{field} {value:?} is not an RFC 3339 UTC time like 2026-01-31T12:00:00Z ({e})"
        ))
    })
}

/// Formats an instant the way manifests store it (seconds precision, UTC).
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn check_sha256(what: &str, hex: &str) -> Result<(), ManifestError> {
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Invalid(format!(
            "{what}: sha256 {hex:?} is not 64 lowercase hex digits"
        )))
    }
}

/// Checks that an artifact path stays inside the manifest's folder, lexically: relative,
/// no `..`, not empty. (Symbolic links are checked when the file is opened.)
pub fn relative_artifact_path(path: &str) -> Result<PathBuf, ManifestError> {
    let p = Path::new(path);
    let escapes = path.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(ManifestError::Invalid(format!(
            "artifact path {path:?} leaves the manifest's folder"
        )));
    }
    Ok(p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            schema_version: 1,
            name: "debian-fixture".into(),
            version: 3,
            architecture: "x86_64".into(),
            created: "2026-01-01T00:00:00Z".into(),
            expires: "2027-01-01T00:00:00Z".into(),
            key_id: "ed25519:0123456789abcdef0123456789abcdef".into(),
            artifacts: vec![Artifact {
                role: ArtifactRole::Disk,
                path: "node.qcow2".into(),
                format: "qcow2".into(),
                size: 1,
                sha256: "a".repeat(64),
            }],
            components: [("kubelet".to_string(), "v1.20.2".to_string())].into(),
            files: vec![GuestFile {
                path: "/usr/bin/kubelet".into(),
                sha256: "b".repeat(64),
            }],
        }
    }

    #[test]
    fn round_trips_through_bytes() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["colour"] = "blue".into();
        let err = Manifest::parse(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn schema_version_is_checked_first() {
        let err = Manifest::parse(br#"{"schema_version": 2, "whatever": true}"#).unwrap_err();
        assert_eq!(err, ManifestError::Schema { found: "2".into() });
        let err = Manifest::parse(br#"{"name": "x"}"#).unwrap_err();
        assert!(matches!(err, ManifestError::Schema { .. }));
    }

    #[test]
    fn escaping_and_absolute_paths_are_invalid() {
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(relative_artifact_path(bad).is_err(), "{bad}");
        }
        for good in ["node.qcow2", "./boot/vmlinuz", "a/b"] {
            assert!(relative_artifact_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn rules_beyond_json_types_are_checked() {
        let mut m = sample();
        m.expires = m.created.clone();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.artifacts[0].sha256 = "XYZ".into();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.files[0].path = "usr/bin/kubelet".into();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.created = "yesterday".into();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.artifacts.push(m.artifacts[0].clone());
        assert!(m.validate().is_err());
    }
}
