//! Verification of a signed manifest and of the artifacts it names.
//!
//! Nothing here writes: the manifest, its signature and the artifacts are only opened for
//! reading. Checks run in this order, and the first failure is the answer:
//! read manifest and signature -> parse (schema, format rules) -> key trusted ->
//! signature (strict Ed25519) -> expiry -> rollback -> each artifact (inside the folder,
//! present, size, sha256).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::Signature;

use super::digest::{sha256_bytes, sha256_file};
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
    #[error("{path}: artifact {artifact} leaves the manifest's folder {folder}")]
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
            | VerifyError::DigestMismatch { .. } => exit::INTEGRITY,
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
    /// Refuse manifests whose version is below this.
    pub min_version: Option<u64>,
    /// The instant expiry is judged at.
    pub now: SystemTime,
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
}

impl VerifiedImage {
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
    /// Resolved absolute path.
    pub path: PathBuf,
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
    if let Some(min_version) = opts.min_version {
        if manifest.version < min_version {
            return Err(VerifyError::Rollback {
                path: manifest_path.to_owned(),
                version: manifest.version,
                min_version,
            });
        }
    }

    let artifacts = manifest
        .artifacts
        .iter()
        .map(|a| verify_artifact(manifest_path, a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VerifiedImage {
        manifest_sha256: sha256_bytes(&bytes),
        manifest,
        manifest_path: manifest_path.to_owned(),
        signature_path,
        key: key.clone(),
        artifacts,
    })
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

fn verify_artifact(
    manifest_path: &Path,
    artifact: &super::manifest::Artifact,
) -> Result<VerifiedArtifact, VerifyError> {
    let folder = manifest_folder(manifest_path);
    let escapes = || VerifyError::ArtifactEscapes {
        path: manifest_path.to_owned(),
        artifact: artifact.path.clone(),
        folder: folder.clone(),
    };
    let relative = relative_artifact_path(&artifact.path).map_err(|_| escapes())?;
    let joined = match manifest_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(&relative),
        _ => relative,
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
    if !resolved.starts_with(&base) {
        return Err(escapes());
    }
    let read_err = |source| VerifyError::Read {
        path: joined.clone(),
        source,
    };
    let size = fs::metadata(&resolved).map_err(read_err)?.len();
    if size != artifact.size {
        return Err(VerifyError::SizeMismatch {
            path: joined,
            expected: artifact.size,
            actual: size,
        });
    }
    let start = Instant::now();
    let digest = sha256_file(&resolved).map_err(read_err)?;
    let hash_time = start.elapsed();
    if digest.size != artifact.size {
        return Err(VerifyError::SizeMismatch {
            path: joined,
            expected: artifact.size,
            actual: digest.size,
        });
    }
    if digest.sha256 != artifact.sha256 {
        return Err(VerifyError::DigestMismatch {
            path: joined,
            expected: artifact.sha256.clone(),
            actual: digest.sha256,
        });
    }
    Ok(VerifiedArtifact {
        role: artifact.role,
        path: resolved,
        size: digest.size,
        sha256: digest.sha256,
        hash_time,
    })
}
