//! Verification of a signed manifest and of the artifacts it names.
//!
//! The manifest, its signature and the artifacts are only opened for reading. Checks run
//! in this order, and the first failure is the answer: read manifest and signature ->
//! parse (schema, format rules) -> key trusted -> signature (strict Ed25519) -> expiry ->
//! rollback -> each artifact (inside the folder, present, size, sha256) -> the disk is
//! the format the manifest states and references no other file.
//!
//! Each artifact is opened once and hashed through that descriptor. With a snapshot
//! folder ([`VerifyOptions::snapshot`]) the bytes are copied there as they are hashed,
//! and the verified paths are the copies: what boots later is exactly what was hashed,
//! whatever happens to the original files meanwhile.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::Signature;

use super::digest::{copy_hashed, sha256_bytes, sha256_open};
use super::disk_format::{self, DiskFormatError};
use super::keys::{TrustStore, TrustedKey};
use super::manifest::{
    relative_artifact_path, ArtifactRole, Manifest, ManifestError, MAX_MANIFEST_BYTES,
};
use super::signature::{default_signature_path, SIGNATURE_LEN};
use crate::exit;

/// Why an image was refused. Every variant names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read (missing, unreadable).
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A file that must have content is empty.
    #[error("{path}: file is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The manifest is larger than any sane manifest.
    #[error("{path}: manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge {
        /// The manifest.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The signature file is not a raw 64-byte Ed25519 signature.
    #[error("{path}: signature file is {len} bytes, an Ed25519 signature is {SIGNATURE_LEN}")]
    SignatureLength {
        /// The signature file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The manifest is not a valid format v1 manifest.
    #[error("{path}: {source}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        source: ManifestError,
    },
    /// The manifest's key id is not in the trust store.
    #[error("{path}: signed by key {key_id}, which the trust store {trust} does not hold")]
    UntrustedKey {
        /// The manifest.
        path: PathBuf,
        /// The key id it names.
        key_id: String,
        /// The trust store.
        trust: PathBuf,
    },
    /// The signature does not verify: the manifest was edited or signed by another key.
    #[error("{path}: signature {signature} does not match the manifest for key {key_id} ({key_path}): manifest edited or signed by another key")]
    BadSignature {
        /// The manifest.
        path: PathBuf,
        /// The signature file.
        signature: PathBuf,
        /// The key id.
        key_id: String,
        /// Where the trusted key came from.
        key_path: PathBuf,
    },
    /// The manifest's expiry is past.
    #[error("{path}: manifest expired at {expires}")]
    Expired {
        /// The manifest.
        path: PathBuf,
        /// Its expiry.
        expires: String,
    },
    /// The manifest is older than the minimum version allowed.
    #[error("{path}: version {version} is older than the minimum {min_version}: rollback refused")]
    Rollback {
        /// The manifest.
        path: PathBuf,
        /// Its version.
        version: u64,
        /// The minimum.
        min_version: u64,
    },
    /// An artifact path leaves the manifest's folder (through `..` or a symbolic link).
    #[error("{path}: artifact {artifact:?} leaves the manifest's folder {folder}")]
    ArtifactEscapes {
        /// The manifest.
        path: PathBuf,
        /// The artifact path as written.
        artifact: String,
        /// The folder it must stay in.
        folder: PathBuf,
    },
    /// An artifact named by the manifest does not exist.
    #[error("{path}: artifact missing (named by {manifest})")]
    ArtifactMissing {
        /// The artifact.
        path: PathBuf,
        /// The manifest naming it.
        manifest: PathBuf,
    },
    /// An artifact has the wrong size (truncated or appended to).
    #[error("{path}: size {actual} bytes, manifest says {expected}: truncated or modified")]
    SizeMismatch {
        /// The artifact.
        path: PathBuf,
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// An artifact's content differs from the manifest's digest.
    #[error("{path}: sha256 {actual} does not match the manifest's {expected}: content modified")]
    DigestMismatch {
        /// The artifact.
        path: PathBuf,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the file.
        actual: String,
    },
    /// The disk is not the format the manifest states, or pulls in other files.
    #[error("{path}: {source}")]
    DiskFormat {
        /// The disk image.
        path: PathBuf,
        /// What is wrong.
        source: DiskFormatError,
    },
    /// The verified copy could not be written (disk full, unwritable folder).
    #[error("{path}: cannot keep the verified copy: {source}")]
    Snapshot {
        /// The copy.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

impl VerifyError {
    /// The process exit code for this refusal: bad input or integrity failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            VerifyError::Read { .. }
            | VerifyError::Empty { .. }
            | VerifyError::TooLarge { .. }
            | VerifyError::SignatureLength { .. }
            | VerifyError::Manifest { .. }
            | VerifyError::ArtifactEscapes { .. }
            | VerifyError::ArtifactMissing { .. } => exit::BAD_INPUT,
            VerifyError::UntrustedKey { .. }
            | VerifyError::BadSignature { .. }
            | VerifyError::Expired { .. }
            | VerifyError::Rollback { .. }
            | VerifyError::SizeMismatch { .. }
            | VerifyError::DigestMismatch { .. }
            | VerifyError::DiskFormat { .. } => exit::INTEGRITY,
            VerifyError::Snapshot { .. } => exit::ENVIRONMENT,
        }
    }
}

/// What to verify against.
#[derive(Debug, Clone)]
pub struct VerifyOptions<'a> {
    /// Trusted public keys.
    pub trust: &'a TrustStore,
    /// Signature file; default: the manifest path with `.sig` appended.
    pub signature: Option<PathBuf>,
    /// Refuse manifests whose version is below this (beside the trust store's
    /// released versions; the higher floor applies).
    pub min_version: Option<u64>,
    /// The instant expiry is judged at.
    pub now: SystemTime,
    /// A private folder to copy each artifact into as it is hashed; the verified paths
    /// are then the copies (see the module doc).
    pub snapshot: Option<&'a Path>,
    /// Verify this file as the manifest's disk artifact instead of the one it names.
    pub disk: Option<&'a Path>,
    /// Whether the trust store's released versions are a floor (not for an image that is
    /// itself in the field, such as a roll-out's legacy image).
    pub released_floor: bool,
}

impl<'a> VerifyOptions<'a> {
    /// Options for `trust`, judged now: the default signature path, no extra floor, no
    /// snapshot.
    pub fn new(trust: &'a TrustStore) -> VerifyOptions<'a> {
        VerifyOptions {
            trust,
            signature: None,
            min_version: None,
            now: SystemTime::now(),
            snapshot: None,
            disk: None,
            released_floor: true,
        }
    }
}

/// The rollback floor a manifest was judged against, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackFloor {
    /// The lowest version accepted.
    pub version: u64,
    /// `--min-version` or the trust store's released-versions file.
    pub source: String,
}

/// A manifest that verified, with what was checked.
#[derive(Debug, Clone)]
pub struct VerifiedImage {
    /// The manifest.
    pub manifest: Manifest,
    /// Its path.
    pub manifest_path: PathBuf,
    /// SHA-256 of the manifest bytes that were verified.
    pub manifest_sha256: String,
    /// The signature file.
    pub signature_path: PathBuf,
    /// The key that verified the signature.
    pub key: TrustedKey,
    /// Each artifact, resolved and hashed.
    pub artifacts: Vec<VerifiedArtifact>,
    /// The rollback floor applied; `None` when none was given (rollback not judged).
    pub rollback_floor: Option<RollbackFloor>,
}

impl VerifiedImage {
    /// How rollback was judged: `Ok("version V >= F (SOURCE)")`, or `Err` saying why it
    /// was not (no floor).
    pub fn rollback(&self) -> Result<String, String> {
        match &self.rollback_floor {
            Some(f) => Ok(format!(
                "version {} >= {} ({})",
                self.manifest.version, f.version, f.source
            )),
            None => Err(format!(
                "rollback not judged: no floor for {} (give --min-version, or list the last release in the trust store's {})",
                self.manifest.name,
                super::keys::RELEASED_FILE
            )),
        }
    }

    /// The first artifact with this role.
    pub fn artifact(&self, role: ArtifactRole) -> Option<&VerifiedArtifact> {
        self.artifacts.iter().find(|a| a.role == role)
    }
}

/// An artifact whose size and digest matched.
#[derive(Debug, Clone)]
pub struct VerifiedArtifact {
    /// Its role.
    pub role: ArtifactRole,
    /// The verified bytes: the snapshot copy when one was asked for, else the original.
    pub path: PathBuf,
    /// The original file, resolved.
    pub source: PathBuf,
    /// The manifest's `format`.
    pub format: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Time spent hashing it.
    pub hash_time: Duration,
}

/// Verifies a manifest, its signature and every artifact it names.
pub fn verify(
    manifest_path: &Path,
    opts: &VerifyOptions<'_>,
) -> Result<VerifiedImage, VerifyError> {
    let bytes = read_manifest(manifest_path)?;
    let signature_path = opts
        .signature
        .clone()
        .unwrap_or_else(|| default_signature_path(manifest_path));
    let signature = read_signature(&signature_path)?;
    let manifest = Manifest::parse(&bytes).map_err(|source| VerifyError::Manifest {
        path: manifest_path.to_owned(),
        source,
    })?;

    let key = opts
        .trust
        .get(&manifest.key_id)
        .ok_or_else(|| VerifyError::UntrustedKey {
            path: manifest_path.to_owned(),
            key_id: manifest.key_id.clone(),
            trust: opts.trust.source.clone(),
        })?;
    key.key
        .verify_strict(&bytes, &signature)
        .map_err(|_| VerifyError::BadSignature {
            path: manifest_path.to_owned(),
            signature: signature_path.clone(),
            key_id: manifest.key_id.clone(),
            key_path: key.path.clone(),
        })?;

    if opts.now >= manifest.expires_at() {
        return Err(VerifyError::Expired {
            path: manifest_path.to_owned(),
            expires: manifest.expires.clone(),
        });
    }
    let rollback_floor = rollback_floor(&manifest.name, opts);
    if let Some(floor) = &rollback_floor {
        if manifest.version < floor.version {
            return Err(VerifyError::Rollback {
                path: manifest_path.to_owned(),
                version: manifest.version,
                min_version: floor.version,
            });
        }
    }

    let mut disk_override = opts.disk;
    let artifacts = manifest
        .artifacts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let instead = match a.role {
                ArtifactRole::Disk => disk_override.take(),
                _ => None,
            };
            verify_artifact(manifest_path, a, i, instead, opts.snapshot)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VerifiedImage {
        manifest_sha256: sha256_bytes(&bytes),
        manifest,
        manifest_path: manifest_path.to_owned(),
        signature_path,
        key: key.clone(),
        artifacts,
        rollback_floor,
    })
}

/// The higher of `--min-version` and the trust store's last released version of `name`.
fn rollback_floor(name: &str, opts: &VerifyOptions<'_>) -> Option<RollbackFloor> {
    let flag = opts.min_version.map(|v| RollbackFloor {
        version: v,
        source: format!("--min-version {v}"),
    });
    let released = opts
        .trust
        .released(name)
        .filter(|_| opts.released_floor)
        .map(|(v, file)| RollbackFloor {
            version: v,
            source: format!("{} ({name} = {v})", file.display()),
        });
    match (flag, released) {
        (Some(a), Some(b)) => Some(if b.version > a.version { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn read_manifest(path: &Path) -> Result<Vec<u8>, VerifyError> {
    let read_err = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let size = fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(VerifyError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let bytes = fs::read(path).map_err(read_err)?;
    if bytes.is_empty() {
        return Err(VerifyError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn read_signature(path: &Path) -> Result<Signature, VerifyError> {
    let read_err = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let len = fs::metadata(path).map_err(read_err)?.len();
    if len == 0 {
        return Err(VerifyError::Empty {
            path: path.to_owned(),
        });
    }
    let wrong_length = |len: u64| VerifyError::SignatureLength {
        path: path.to_owned(),
        len: len as usize,
    };
    if len != SIGNATURE_LEN as u64 {
        return Err(wrong_length(len));
    }
    let bytes = fs::read(path).map_err(read_err)?;
    let raw: [u8; SIGNATURE_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| wrong_length(bytes.len() as u64))?;
    Ok(Signature::from_bytes(&raw))
}

/// The folder artifact paths are relative to.
pub fn manifest_folder(manifest_path: &Path) -> PathBuf {
    match manifest_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Opens `path` for reading without following a final symbolic link, and checks through
/// the descriptor that the file it reached is a regular file inside `base` (`None`: any
/// place, for a disk named on the command line).
fn open_inside(path: &Path, base: Option<&Path>) -> io::Result<Option<File>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if let Some(base) = base {
        // What the descriptor really points at, whatever a path component became.
        let real = fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ))?;
        if !real.starts_with(base) {
            return Ok(None);
        }
    }
    Ok(Some(file))
}

/// Positioned reads from the start of a file, whatever its descriptor's offset.
struct ReadAt<'f>(&'f File, u64);

impl io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read_at(buf, self.1)?;
        self.1 += n as u64;
        Ok(n)
    }
}

fn verify_artifact(
    manifest_path: &Path,
    artifact: &super::manifest::Artifact,
    index: usize,
    instead: Option<&Path>,
    snapshot: Option<&Path>,
) -> Result<VerifiedArtifact, VerifyError> {
    let folder = manifest_folder(manifest_path);
    let escapes = || VerifyError::ArtifactEscapes {
        path: manifest_path.to_owned(),
        artifact: artifact.path.clone(),
        folder: folder.clone(),
    };
    let relative = relative_artifact_path(&artifact.path).map_err(|_| escapes())?;
    let joined = match instead {
        Some(p) => p.to_owned(),
        None => match manifest_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join(&relative),
            _ => relative,
        },
    };
    let base = folder.canonicalize().map_err(|source| VerifyError::Read {
        path: folder.clone(),
        source,
    })?;
    let resolved = match joined.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VerifyError::ArtifactMissing {
                path: joined,
                manifest: manifest_path.to_owned(),
            })
        }
        Err(source) => {
            return Err(VerifyError::Read {
                path: joined,
                source,
            })
        }
    };
    let inside = instead.is_none().then_some(base.as_path());
    if inside.is_some_and(|b| !resolved.starts_with(b)) {
        return Err(escapes());
    }
    let read_err = |source| VerifyError::Read {
        path: joined.clone(),
        source,
    };
    let file = open_inside(&resolved, inside)
        .map_err(read_err)?
        .ok_or_else(escapes)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size != artifact.size {
        return Err(VerifyError::SizeMismatch {
            path: joined,
            expected: artifact.size,
            actual: size,
        });
    }
    let start = Instant::now();
    let (path, digest) = match snapshot {
        Some(dir) => {
            let name = resolved.file_name().unwrap_or_default();
            let sub = dir.join(index.to_string());
            let copy = sub.join(name);
            let snap_err = |source| VerifyError::Snapshot {
                path: copy.clone(),
                source,
            };
            fs::create_dir_all(&sub).map_err(snap_err)?;
            let mut dst = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&copy)
                .map_err(snap_err)?;
            // A read error is the original's; a write error the copy's.
            let digest = copy_hashed(ReadAt(&file, 0), &mut dst).map_err(|e| {
                let _ = fs::remove_file(&copy);
                match e.kind() {
                    io::ErrorKind::StorageFull | io::ErrorKind::PermissionDenied => {
                        VerifyError::Snapshot {
                            path: copy.clone(),
                            source: e,
                        }
                    }
                    _ => read_err(e),
                }
            })?;
            (copy, digest)
        }
        None => (resolved.clone(), sha256_open(&file).map_err(read_err)?),
    };
    let hash_time = start.elapsed();
    let refuse = |e: VerifyError| {
        if snapshot.is_some() {
            let _ = fs::remove_file(&path);
        }
        e
    };
    if digest.size != artifact.size {
        return Err(refuse(VerifyError::SizeMismatch {
            path: joined,
            expected: artifact.size,
            actual: digest.size,
        }));
    }
    if digest.sha256 != artifact.sha256 {
        return Err(refuse(VerifyError::DigestMismatch {
            path: joined,
            expected: artifact.sha256.clone(),
            actual: digest.sha256,
        }));
    }
    if artifact.role == ArtifactRole::Disk {
        // Judged on the verified bytes: the copy, or the descriptor that was hashed.
        let head = match snapshot {
            Some(_) => File::open(&path).and_then(disk_format::read_head),
            None => disk_format::read_head(ReadAt(&file, 0)),
        }
        .map_err(read_err)?;
        disk_format::inspect(&head, Some(&artifact.format)).map_err(|source| {
            refuse(VerifyError::DiskFormat {
                path: joined.clone(),
                source,
            })
        })?;
    }
    Ok(VerifiedArtifact {
        role: artifact.role,
        path,
        source: resolved,
        format: artifact.format.clone(),
        size: digest.size,
        sha256: digest.sha256,
        hash_time,
    })
}
