//! Making a manifest from files on disk (`nodegate manifest create`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::digest::sha256_file;
use super::keys::KeyId;
use super::manifest::{
    format_time, Artifact, ArtifactRole, GuestFile, Manifest, ManifestError, SCHEMA_VERSION,
};
use super::verify::manifest_folder;

/// Why a manifest could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// An input could not be read or the manifest could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// An artifact lies outside the folder the manifest is written to.
    #[error("{path}: artifact is outside the manifest's folder {folder}; artifacts must sit beside or below the manifest")]
    Outside {
        /// The artifact.
        path: PathBuf,
        /// The manifest's folder.
        folder: PathBuf,
    },
    /// A line of a guest file list is not `<sha256>  <absolute path>`.
    #[error("{path}:{line}: {reason}")]
    GuestFiles {
        /// The list.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A disk image nodegate would refuse to boot (it references other files).
    #[error("{path}: {source}")]
    Disk {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        source: super::disk_format::DiskFormatError,
    },
    /// The values given make an invalid manifest.
    #[error("{path}: {source}")]
    Invalid {
        /// The manifest being made.
        path: PathBuf,
        /// The rule broken.
        source: ManifestError,
    },
}

/// What a manifest should say, before the artifacts are hashed.
#[derive(Debug, Clone)]
pub struct ManifestSpec {
    /// Image name.
    pub name: String,
    /// Release number.
    pub version: u64,
    /// CPU architecture.
    pub architecture: String,
    /// Creation instant.
    pub created: SystemTime,
    /// Validity period from `created`.
    pub valid_for: Duration,
    /// The key that will sign it.
    pub key_id: KeyId,
    /// Artifacts by role; paths as given on the command line.
    pub artifacts: Vec<(ArtifactRole, PathBuf)>,
    /// Component versions.
    pub components: BTreeMap<String, String>,
    /// In-guest files.
    pub files: Vec<GuestFile>,
}

/// Hashes the artifacts and builds the manifest that will be written at `manifest_path`.
pub fn build(spec: &ManifestSpec, manifest_path: &Path) -> Result<Manifest, CreateError> {
    let folder = manifest_folder(manifest_path);
    let base = folder.canonicalize().map_err(|source| CreateError::Io {
        path: folder.clone(),
        source,
    })?;
    let mut artifacts = Vec::new();
    for (role, path) in &spec.artifacts {
        let io_err = |source| CreateError::Io {
            path: path.clone(),
            source,
        };
        let resolved = path.canonicalize().map_err(io_err)?;
        let relative = resolved
            .strip_prefix(&base)
            .map_err(|_| CreateError::Outside {
                path: path.clone(),
                folder: folder.clone(),
            })?;
        let digest = sha256_file(&resolved).map_err(io_err)?;
        let format = detect_format(*role, &resolved).map_err(io_err)?;
        if *role == ArtifactRole::Disk {
            let head = File::open(&resolved)
                .and_then(super::disk_format::read_head)
                .map_err(io_err)?;
            super::disk_format::inspect(&head, Some(&format)).map_err(|source| {
                CreateError::Disk {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        artifacts.push(Artifact {
            role: *role,
            path: relative.to_string_lossy().into_owned(),
            format,
            size: digest.size,
            sha256: digest.sha256,
        });
    }
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        name: spec.name.clone(),
        version: spec.version,
        architecture: spec.architecture.clone(),
        created: format_time(spec.created),
        expires: format_time(spec.created + spec.valid_for),
        key_id: spec.key_id.to_string(),
        artifacts,
        components: spec.components.clone(),
        files: spec.files.clone(),
    };
    manifest.validate().map_err(|source| CreateError::Invalid {
        path: manifest_path.to_owned(),
        source,
    })?;
    Ok(manifest)
}

/// Names a file's format from its role and first bytes.
fn detect_format(role: ArtifactRole, path: &Path) -> io::Result<String> {
    let mut head = [0u8; 0x206];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    let format = match role {
        _ if head.starts_with(b"QFI\xfb") => "qcow2",
        ArtifactRole::Disk => "raw",
        ArtifactRole::Kernel if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" => {
            "linux-kernel"
        }
        ArtifactRole::Initrd => "initramfs",
        ArtifactRole::Cmdline => "text",
        _ => "file",
    };
    Ok(format.to_string())
}

/// Reads a list of in-guest files in `sha256sum` output form: `<sha256>  <absolute path>`
/// per line (blank lines and `#` comments allowed).
pub fn read_guest_files(path: &Path) -> Result<Vec<GuestFile>, CreateError> {
    let text = fs::read_to_string(path).map_err(|source| CreateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| CreateError::GuestFiles {
            path: path.to_owned(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let (hash, rest) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `<sha256>  <absolute path>`"))?;
        let guest_path = rest.trim_start_matches([' ', '*']);
        if !guest_path.starts_with('/') {
            return Err(bad("the guest path must be absolute"));
        }
        files.push(GuestFile {
            path: guest_path.to_string(),
            sha256: hash.to_ascii_lowercase(),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_file_list_reads_sha256sum_output() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("files");
        let h = "c".repeat(64);
        fs::write(
            &list,
            format!("# comment\n{h}  /usr/bin/kubelet\n\n{h} */usr/bin/ctr\n"),
        )
        .unwrap();
        let files = read_guest_files(&list).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].path, "/usr/bin/ctr");
        fs::write(&list, format!("{h}  usr/bin/kubelet\n")).unwrap();
        let err = read_guest_files(&list).unwrap_err().to_string();
        assert!(err.contains(":1: the guest path must be absolute"), "{err}");
    }

    #[test]
    fn artifacts_outside_the_manifest_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("out");
        fs::create_dir(&sub).unwrap();
        let image = dir.path().join("disk.img");
        fs::write(&image, b"data").unwrap();
        let spec = ManifestSpec {
            name: "x".into(),
            version: 1,
            architecture: "x86_64".into(),
            created: SystemTime::now(),
            valid_for: Duration::from_secs(3600),
            key_id: KeyId::of(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key()),
            artifacts: vec![(ArtifactRole::Disk, image)],
            components: BTreeMap::new(),
            files: vec![],
        };
        let err = build(&spec, &sub.join("m.json")).unwrap_err();
        assert!(matches!(err, CreateError::Outside { .. }), "{err}");
        let m = build(&spec, &dir.path().join("m.json")).unwrap();
        assert_eq!(m.artifacts[0].path, "disk.img");
        assert_eq!(m.artifacts[0].format, "raw");
        assert_eq!(m.artifacts[0].size, 4);
    }
}
