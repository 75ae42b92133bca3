//! Detached Ed25519 signatures over the exact bytes of a manifest.
//!
//! The signature file holds the raw 64-byte signature, exactly what
//! `openssl pkeyutl -sign -rawin -inkey KEY -in MANIFEST -out MANIFEST.sig` writes, so a
//! signing service can sign with stock tools and nodegate verifies the result.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};

use super::keys::KeyId;
use super::manifest::{Manifest, ManifestError};

/// Length of a raw Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a manifest could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Reading the manifest or writing the signature failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The manifest is not a valid manifest; signing it would only sign garbage.
    #[error("{path}: {source}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        source: ManifestError,
    },
    /// The manifest names another key than the one signing it.
    #[error("{path}: manifest names key {named}, but the signing key is {signing}")]
    KeyMismatch {
        /// The manifest.
        path: PathBuf,
        /// The key id in the manifest.
        named: String,
        /// The id of the signing key.
        signing: KeyId,
    },
}

/// Where the signature of a manifest lives by default: `MANIFEST.sig`.
pub fn default_signature_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Signs a manifest file, writing the raw signature atomically to `out` (default
/// [`default_signature_path`]). Returns the signature path.
pub fn sign_manifest(
    manifest_path: &Path,
    key: &SigningKey,
    out: Option<&Path>,
) -> Result<PathBuf, SignError> {
    let bytes = fs::read(manifest_path).map_err(|source| SignError::Io {
        path: manifest_path.to_owned(),
        source,
    })?;
    let manifest = Manifest::parse(&bytes).map_err(|source| SignError::Manifest {
        path: manifest_path.to_owned(),
        source,
    })?;
    let signing = KeyId::of(&key.verifying_key());
    if manifest.key_id != signing.as_str() {
        return Err(SignError::KeyMismatch {
            path: manifest_path.to_owned(),
            named: manifest.key_id,
            signing,
        });
    }
    let signature = key.sign(&bytes);
    let out = out.map_or_else(|| default_signature_path(manifest_path), Path::to_owned);
    write_atomically(&out, &signature.to_bytes()).map_err(|source| SignError::Io {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

/// Writes a file through a temporary sibling, fsync and a rename (mode 0644), so readers
/// never see half of it and a planted symbolic link is never followed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::fsutil::write_atomic(path, bytes, crate::fsutil::PUBLIC)
}
