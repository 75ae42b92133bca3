//! Signed certification evidence: what a certification programme keeps of a run (the
//! manifest and its signature, the effective profile and suites, the reports, the logs,
//! nodegate's version), a digest list of all of it (`SHA256SUMS`, the format `sha256sum`
//! reads) and a raw Ed25519 signature of that list (`SHA256SUMS.sig`, as `openssl pkeyutl
//! -sign -rawin` writes) by the gate's own key. A folder, or a tar file when the path
//! ends in `.tar`. Format: docs/evidence.md.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::image::digest::{sha256_bytes, sha256_reader};
use crate::image::keys::{public_pem, KeyId, TrustStore};

/// The digest list.
pub const SUMS: &str = "SHA256SUMS";
/// Its signature.
pub const SUMS_SIG: &str = "SHA256SUMS.sig";
/// The signing key's public half, for people (verification uses the trusted keys given).
pub const SIGNER_KEY: &str = "signer.pub.pem";

/// Where evidence goes and the key that signs it (`--evidence`, `--evidence-key`).
#[derive(Debug, Clone)]
pub struct EvidenceConfig {
    /// A folder (created, must not exist or be empty) or a `.tar` file.
    pub path: PathBuf,
    /// The gate's key.
    pub key: SigningKey,
}

/// Why evidence could not be written or was refused.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The bundle is not laid out as evidence (an entry that is not a plain file, a
    /// path that leaves the bundle, a malformed digest list).
    #[error("{}: not nodegate evidence: {reason}", path.display())]
    Format {
        /// The bundle.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The digest list's signature is not from a trusted key.
    #[error("{}: {SUMS_SIG} is not a valid signature of {SUMS} by any trusted key ({keys})", path.display())]
    Signature {
        /// The bundle.
        path: PathBuf,
        /// The trusted key ids.
        keys: String,
    },
    /// A file differs from its digest, is missing, or is not listed.
    #[error("{}: {file}: {what}", path.display())]
    Tampered {
        /// The bundle.
        path: PathBuf,
        /// The file inside it.
        file: String,
        /// What is wrong.
        what: String,
    },
}

impl EvidenceError {
    /// The exit code: a bundle that is not what was signed is an integrity failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            EvidenceError::Signature { .. } | EvidenceError::Tampered { .. } => {
                crate::exit::INTEGRITY
            }
            EvidenceError::Format { .. } => crate::exit::BAD_INPUT,
            EvidenceError::Io { .. } => crate::exit::ENVIRONMENT,
        }
    }
}

/// Evidence being gathered: file names inside the bundle and their bytes.
#[derive(Default)]
pub struct Evidence {
    files: BTreeMap<String, Vec<u8>>,
}

/// A name is `a/b/c`: relative, plain components of printable characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.chars().any(|c| c.is_control() || c == '\\')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

impl Evidence {
    /// Adds a file (a later one of the same name replaces it).
    pub fn add(&mut self, name: &str, bytes: Vec<u8>) {
        debug_assert!(valid_name(name), "{name}");
        self.files.insert(name.to_string(), bytes);
    }

    /// Lists and signs everything, then writes the bundle; returns the number of files.
    pub fn write(mut self, to: &EvidenceConfig) -> Result<usize, EvidenceError> {
        self.add(SIGNER_KEY, public_pem(&to.key.verifying_key()).into_bytes());
        let sums: String = self
            .files
            .iter()
            .map(|(name, bytes)| format!("{}  {name}\n", sha256_bytes(bytes)))
            .collect();
        let signature = to.key.sign(sums.as_bytes());
        self.add(SUMS, sums.into_bytes());
        self.add(SUMS_SIG, signature.to_bytes().to_vec());
        let n = self.files.len();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| EvidenceError::Io { path, source }
        };
        if is_tar(&to.path) {
            let mut b = tar::Builder::new(Vec::new());
            for (name, bytes) in &self.files {
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, name, bytes.as_slice())
                    .map_err(io(&to.path))?;
            }
            let bytes = b.into_inner().map_err(io(&to.path))?;
            crate::report::write(&to.path, &bytes).map_err(|e| EvidenceError::Io {
                path: to.path.clone(),
                source: std::io::Error::other(e.message),
            })?;
        } else {
            if std::fs::read_dir(&to.path).is_ok_and(|mut d| d.next().is_some()) {
                return Err(EvidenceError::Io {
                    path: to.path.clone(),
                    source: std::io::Error::other("the evidence folder exists and is not empty"),
                });
            }
            for (name, bytes) in &self.files {
                let p = to.path.join(name);
                crate::report::write(&p, bytes).map_err(|e| EvidenceError::Io {
                    path: p.clone(),
                    source: std::io::Error::other(e.message),
                })?;
            }
        }
        Ok(n)
    }
}

fn is_tar(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "tar")
}

/// A bundle that verified.
#[derive(Debug)]
pub struct Verified {
    /// Files listed and checked (besides the list and its signature).
    pub files: usize,
    /// The trusted key that signed it.
    pub key_id: KeyId,
}

/// Checks a bundle offline: the digest list is signed by a key of `trust`, every listed
/// file is present with its digest, and nothing else is in the bundle.
pub fn verify(path: &Path, trust: &TrustStore) -> Result<Verified, EvidenceError> {
    let format = |reason: String| EvidenceError::Format {
        path: path.to_owned(),
        reason,
    };
    let tampered = |file: &str, what: &str| EvidenceError::Tampered {
        path: path.to_owned(),
        file: file.to_string(),
        what: what.to_string(),
    };
    let found = read_bundle(path)?;
    let sums = found
        .small
        .get(SUMS)
        .ok_or_else(|| format(format!("no {SUMS}")))?;
    let sig = found
        .small
        .get(SUMS_SIG)
        .ok_or_else(|| format(format!("no {SUMS_SIG}")))?;
    let sig = Signature::from_slice(sig)
        .map_err(|_| format(format!("{SUMS_SIG} is not a 64-byte Ed25519 signature")))?;
    let key_id = trust
        .ids()
        .find(|id| {
            trust
                .get(id.as_str())
                .is_some_and(|k| k.key.verify_strict(sums, &sig).is_ok())
        })
        .cloned()
        .ok_or_else(|| EvidenceError::Signature {
            path: path.to_owned(),
            keys: trust
                .ids()
                .map(|k| k.as_str().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let text = std::str::from_utf8(sums).map_err(|_| format(format!("{SUMS} is not text")))?;
    let mut listed = BTreeMap::new();
    for line in text.lines() {
        let (digest, name) = line
            .split_once("  ")
            .filter(|(d, n)| d.len() == 64 && valid_name(n))
            .ok_or_else(|| format(format!("{SUMS}: malformed line {line:?}")))?;
        if listed
            .insert(name.to_string(), digest.to_string())
            .is_some()
        {
            return Err(format(format!("{SUMS} lists {name} twice")));
        }
    }
    for (name, digest) in &listed {
        match found.digests.get(name) {
            None => return Err(tampered(name, "listed in SHA256SUMS but missing")),
            Some(d) if d != digest => {
                return Err(tampered(
                    name,
                    "changed since it was signed (sha256 differs)",
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = found
        .digests
        .keys()
        .find(|n| !listed.contains_key(*n) && *n != SUMS && *n != SUMS_SIG)
    {
        return Err(tampered(
            extra,
            "not listed in SHA256SUMS (added after signing)",
        ));
    }
    Ok(Verified {
        files: listed.len(),
        key_id,
    })
}

/// What a bundle holds: every file's digest, and the list and signature's bytes.
struct Found {
    digests: BTreeMap<String, String>,
    small: BTreeMap<String, Vec<u8>>,
}

impl Found {
    fn take(&mut self, bundle: &Path, name: String, r: &mut dyn Read) -> Result<(), EvidenceError> {
        let io = |source| EvidenceError::Io {
            path: bundle.join(&name),
            source,
        };
        // The list and its signature are kept (their first 16 MiB), and hashed whole.
        let keep = name == SUMS || name == SUMS_SIG;
        let mut kept = Vec::new();
        if keep {
            (&mut *r)
                .take(16 << 20)
                .read_to_end(&mut kept)
                .map_err(io)?;
        }
        let digest = sha256_reader(std::io::Cursor::new(&kept).chain(r)).map_err(io)?;
        if self.digests.insert(name.clone(), digest.sha256).is_some() {
            return Err(EvidenceError::Format {
                path: bundle.to_owned(),
                reason: format!("{name} appears twice"),
            });
        }
        if keep {
            self.small.insert(name, kept);
        }
        Ok(())
    }
}

fn read_bundle(path: &Path) -> Result<Found, EvidenceError> {
    let io = |source| EvidenceError::Io {
        path: path.to_owned(),
        source,
    };
    let format = |reason: String| EvidenceError::Format {
        path: path.to_owned(),
        reason,
    };
    let mut found = Found {
        digests: BTreeMap::new(),
        small: BTreeMap::new(),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        let mut stack = vec![(path.to_owned(), String::new())];
        while let Some((d, prefix)) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(io)? {
                let e = e.map_err(io)?;
                let name = e
                    .file_name()
                    .to_str()
                    .map(|n| format!("{prefix}{n}"))
                    .ok_or_else(|| format("a file name that is not UTF-8".into()))?;
                let t = e.file_type().map_err(io)?;
                if t.is_dir() {
                    stack.push((e.path(), format!("{name}/")));
                } else if t.is_file() {
                    let mut f = std::fs::File::open(e.path()).map_err(io)?;
                    found.take(path, name, &mut f)?;
                } else {
                    return Err(format(format!("{name} is not a regular file")));
                }
            }
        }
    } else {
        let file = std::fs::File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(file);
        for entry in archive.entries().map_err(io)? {
            let mut entry = entry.map_err(|e| format(format!("not a tar file: {e}")))?;
            let name = entry
                .path()
                .ok()
                .and_then(|p| p.to_str().map(String::from))
                .ok_or_else(|| format("an entry whose name is not UTF-8".into()))?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => continue,
                tar::EntryType::Regular => {}
                other => {
                    return Err(format(format!("{name} is not a regular file ({other:?})")));
                }
            }
            if !valid_name(&name) {
                return Err(format(format!("{name:?} is not a plain relative path")));
            }
            found.take(path, name, &mut entry)?;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9u8; 32])
    }

    #[test]
    fn names_stay_inside_the_bundle() {
        assert!(valid_name("report/junit.xml"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a\nb", "a\\b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_written_tar_verifies_and_lists_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.tar");
        let mut e = Evidence::default();
        e.add("report/report.json", b"{}".to_vec());
        e.add("nodegate.txt", b"nodegate 0.1.0\n".to_vec());
        let n = e
            .write(&EvidenceConfig {
                path: path.clone(),
                key: key(),
            })
            .unwrap();
        assert_eq!(n, 5);
        let pubf = dir.path().join("k.pub");
        std::fs::write(&pubf, public_pem(&key().verifying_key())).unwrap();
        let trust = TrustStore::load(&pubf).unwrap();
        let v = verify(&path, &trust).unwrap();
        assert_eq!(v.files, 3);
        assert_eq!(v.key_id, KeyId::of(&key().verifying_key()));
    }
}
