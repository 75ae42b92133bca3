//! Per-run SSH key pairs, made with OpenSSH's `ssh-keygen` (Debian's openssh-client), in
//! the OpenSSH private key format libssh2 reads.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A key pair on disk.
#[derive(Debug, Clone)]
pub struct SshKeyPair {
    /// Private key file (mode 0600).
    pub private: PathBuf,
    /// Public key, OpenSSH one-line form.
    pub public: String,
}

impl SshKeyPair {
    /// The private key's text.
    pub fn private_pem(&self) -> std::io::Result<String> {
        std::fs::read_to_string(&self.private)
    }
}

/// Generates a fresh Ed25519 key pair at `path` (and `path.pub`).
pub fn generate_keypair(path: &Path, comment: &str) -> Result<SshKeyPair, String> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path);
    let out = crate::process::run_bounded(&mut c, None, std::time::Duration::from_secs(30))
        .map_err(|e| format!("{e} (install openssh-client)"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen -f {}: {}",
            path.display(),
            out.stderr_text().trim()
        ));
    }
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let public = std::fs::read_to_string(&pub_path)
        .map_err(|e| format!("{}: {e}", PathBuf::from(&pub_path).display()))?;
    Ok(SshKeyPair {
        private: path.to_owned(),
        public: public.trim().to_string(),
    })
}
