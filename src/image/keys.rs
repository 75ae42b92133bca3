//! Ed25519 signing keys, public keys, key ids and trust stores.
//!
//! Keys are stored in the standard formats OpenSSL reads and writes: PKCS#8 PEM for
//! private keys (`openssl genpkey -algorithm ed25519`) and SubjectPublicKeyInfo PEM for
//! public keys (`openssl pkey -pubout`).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::digest::sha256_bytes;

/// Errors reading, writing or finding keys; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not a key of the expected kind.
    #[error("{path}: not an Ed25519 {kind} in PEM form ({reason})")]
    Format {
        /// The key file.
        path: PathBuf,
        /// "private key (PKCS#8)" or "public key (SPKI)".
        kind: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// A trust store folder holds no public key.
    #[error("{path}: trust store holds no public key (*.pub or *.pem)")]
    EmptyTrustStore {
        /// The folder.
        path: PathBuf,
    },
    /// keygen would overwrite a key.
    #[error("{path}: already exists (use --force to replace it)")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The system random number generator failed.
    #[error("cannot generate a key: random source failed: {0}")]
    Random(String),
    /// The trust store's list of released versions is malformed.
    #[error("{0}")]
    Released(String),
}

/// The file in a trust store folder that holds the last released version of each image
/// name, the rollback floor: `[released]` then `NAME = VERSION` lines.
pub const RELEASED_FILE: &str = "released.toml";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleasedFile {
    released: BTreeMap<String, u64>,
}

/// A short, stable identifier of a public key: `ed25519:` and the first 16 bytes of the
/// SHA-256 of the raw 32-byte public key, in hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// The id of a public key.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = sha256_bytes(key.as_bytes());
        KeyId(format!("ed25519:{}", &digest[..32]))
    }

    /// The textual form, as written in manifests.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a string has the form of a key id.
    pub fn is_well_formed(s: &str) -> bool {
        s.strip_prefix("ed25519:").is_some_and(|h| {
            h.len() == 32
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Generates a fresh signing key from the operating system's random source.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Paths written by [`write_keypair`].
#[derive(Debug, Clone)]
pub struct KeyPairPaths {
    /// `PREFIX.key`, PKCS#8 PEM, mode 0600.
    pub private: PathBuf,
    /// `PREFIX.pub`, SPKI PEM.
    pub public: PathBuf,
}

/// Writes `PREFIX.key` (mode 0600, never world-readable, even briefly) and `PREFIX.pub`.
pub fn write_keypair(
    key: &SigningKey,
    prefix: &Path,
    force: bool,
) -> Result<KeyPairPaths, KeyError> {
    let paths = KeyPairPaths {
        private: with_suffix(prefix, ".key"),
        public: with_suffix(prefix, ".pub"),
    };
    if let Some(parent) = prefix.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| KeyError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    if !force {
        for p in [&paths.private, &paths.public] {
            if p.exists() {
                return Err(KeyError::Exists { path: p.clone() });
            }
        }
    }
    // PKCS#8 v1 (no embedded public key): the form `openssl genpkey` writes and the only
    // one OpenSSL 3.0 reads; ed25519-dalek's own encoder writes v2.
    let private_pem = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .expect("an Ed25519 key always encodes");
    let public_pem = public_pem(&key.verifying_key());
    write_file(&paths.private, private_pem.as_bytes(), 0o600)?;
    write_file(&paths.public, public_pem.as_bytes(), 0o644)?;
    Ok(paths)
}

/// A public key as SPKI PEM, the form `PREFIX.pub` holds and trust stores read.
pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 key always encodes")
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    crate::fsutil::write_atomic(path, bytes, mode).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a PKCS#8 PEM Ed25519 private key.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = read_text(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Format {
        path: path.to_owned(),
        kind: "private key (PKCS#8)",
        reason: e.to_string(),
    })
}

/// Reads an SPKI PEM Ed25519 public key, or derives it from a PKCS#8 private key file.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read_text(path)?;
    if pem.contains("PRIVATE KEY-----") {
        return Ok(load_signing_key(path)?.verifying_key());
    }
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Format {
        path: path.to_owned(),
        kind: "public key (SPKI)",
        reason: e.to_string(),
    })
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    let bytes = fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| KeyError::Format {
        path: path.to_owned(),
        kind: "key",
        reason: "file is not text".into(),
    })
}

/// A public key the trust store holds, with the file it came from.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The key.
    pub key: VerifyingKey,
    /// The file it was read from.
    pub path: PathBuf,
}

/// The public keys a verifier trusts, by key id.
///
/// Key rotation is a matter of files: during an overlap the folder holds the old and the
/// new key; removing a file revokes its key.
#[derive(Debug, Clone)]
pub struct TrustStore {
    /// Where the keys were read from (a folder or one file).
    pub source: PathBuf,
    keys: BTreeMap<KeyId, TrustedKey>,
    /// The last released version per image name ([`RELEASED_FILE`]), and that file.
    released: Option<(PathBuf, BTreeMap<String, u64>)>,
}

impl TrustStore {
    /// Reads one public key file, or every `*.pub` and `*.pem` file of a folder.
    pub fn load(path: &Path) -> Result<TrustStore, KeyError> {
        let meta = fs::metadata(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            let entries = fs::read_dir(path).map_err(|source| KeyError::Io {
                path: path.to_owned(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| KeyError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                let p = entry.path();
                let is_key = matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("pub") | Some("pem")
                );
                if is_key && p.is_file() {
                    files.push(p);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(KeyError::EmptyTrustStore {
                    path: path.to_owned(),
                });
            }
            files
        } else {
            vec![path.to_owned()]
        };
        let mut keys = BTreeMap::new();
        for file in files {
            let key = load_public_key(&file)?;
            keys.insert(KeyId::of(&key), TrustedKey { key, path: file });
        }
        let released_path = path.join(RELEASED_FILE);
        let released = if meta.is_dir() && released_path.exists() {
            let f: ReleasedFile = crate::config_file::load(&released_path)
                .map_err(|e| KeyError::Released(e.to_string()))?;
            Some((released_path, f.released))
        } else {
            None
        };
        Ok(TrustStore {
            source: path.to_owned(),
            keys,
            released,
        })
    }

    /// The last released version of image `name`, and the file that says so.
    pub fn released(&self, name: &str) -> Option<(u64, &Path)> {
        let (path, map) = self.released.as_ref()?;
        map.get(name).map(|v| (*v, path.as_path()))
    }

    /// The released-versions file, if the trust store has one.
    pub fn released_file(&self) -> Option<&Path> {
        self.released.as_ref().map(|(p, _)| p.as_path())
    }

    /// The key with this id, if trusted.
    pub fn get(&self, id: &str) -> Option<&TrustedKey> {
        self.keys
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, v)| v)
    }

    /// The ids of every trusted key.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_stable_and_well_formed() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let id = KeyId::of(&key.verifying_key());
        assert!(KeyId::is_well_formed(id.as_str()), "{id}");
        assert_eq!(id, KeyId::of(&key.verifying_key()));
        assert!(!KeyId::is_well_formed("ed25519:XYZ"));
        assert!(!KeyId::is_well_formed(
            "rsa:0123456789abcdef0123456789abcdef"
        ));
    }

    #[test]
    fn keypair_round_trips_and_private_key_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = generate().unwrap();
        let paths = write_keypair(&key, &dir.path().join("k"), false).unwrap();
        let mode = fs::metadata(&paths.private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = load_signing_key(&paths.private).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        let public = load_public_key(&paths.public).unwrap();
        assert_eq!(public, key.verifying_key());
        assert!(matches!(
            write_keypair(&key, &dir.path().join("k"), false),
            Err(KeyError::Exists { .. })
        ));
    }

    #[test]
    fn trust_store_folder_holds_several_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate().unwrap();
        let b = generate().unwrap();
        write_keypair(&a, &dir.path().join("a"), false).unwrap();
        write_keypair(&b, &dir.path().join("b"), false).unwrap();
        // Private keys (*.key) in the folder are ignored, not trusted twice.
        let store = TrustStore::load(dir.path()).unwrap();
        assert_eq!(store.ids().count(), 2);
        assert!(store.get(KeyId::of(&a.verifying_key()).as_str()).is_some());
        assert!(store.get(KeyId::of(&b.verifying_key()).as_str()).is_some());
    }

    #[test]
    fn the_released_file_gives_rollback_floors() {
        let dir = tempfile::tempdir().unwrap();
        write_keypair(&generate().unwrap(), &dir.path().join("a"), false).unwrap();
        fs::write(
            dir.path().join(RELEASED_FILE),
            "# last releases\n[released]\nnode = 4\n",
        )
        .unwrap();
        let store = TrustStore::load(dir.path()).unwrap();
        assert_eq!(store.released("node").map(|(v, _)| v), Some(4));
        assert_eq!(store.released("other"), None);
        fs::write(dir.path().join(RELEASED_FILE), "[released]\nnode = \"4\"\n").unwrap();
        let e = TrustStore::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("released.toml:2:8"), "{e}");
    }

    #[test]
    fn empty_trust_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            TrustStore::load(dir.path()),
            Err(KeyError::EmptyTrustStore { .. })
        ));
    }
}
