//! Bootstrap tokens: [`Token`] (the `id.secret` string) and the [`BootstrapToken`] guard
//! whose `Drop` deletes it.
//!
//! Every provider creates a token the same way: a `bootstrap.kubernetes.io/token` Secret
//! sent to `kubectl create -f -` on its standard input. The secret part is never on a
//! command line (`kubeadm token create TOKEN` would show it to every user of `ps`).

use std::time::{Duration, SystemTime};

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{ClusterError, Kubectl};

/// A bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}.<secret>)", self.id)
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl std::str::FromStr for Token {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<Token, ClusterError> {
        let ok = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match s.split_once('.') {
            Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(Token {
                id: id.into(),
                secret: secret.into(),
            }),
            _ => Err(ClusterError::BadToken(s.into())),
        }
    }
}

impl Token {
    /// A fresh random token.
    pub fn generate() -> Token {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        // Rejection sampling: bytes >= 252 (7 * 36) would bias the first letters.
        let mut s = String::with_capacity(22);
        while s.len() < 22 {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("the OS random source works");
            for b in bytes.iter().filter(|b| **b < 252) {
                if s.len() < 22 {
                    s.push(ALPHABET[(*b as usize) % ALPHABET.len()] as char);
                }
            }
        }
        Token {
            id: s[..6].into(),
            secret: s[6..].into(),
        }
    }

    /// The public part (`abcdef`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret part.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Its Secret's name in kube-system.
    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id)
    }
}

/// The RFC 3339 form (UTC, seconds) of a time.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A bootstrap token in the cluster; dropping it deletes it (unless kept).
#[derive(Debug)]
pub struct BootstrapToken {
    token: Token,
    expires: SystemTime,
    kubectl: Kubectl,
    deleted: bool,
}

impl BootstrapToken {
    /// Creates a fresh token valid for `ttl` (whole seconds, at least 1) as a Secret,
    /// through `kubectl`'s standard input.
    pub fn create(kubectl: &Kubectl, ttl: Duration) -> Result<BootstrapToken, ClusterError> {
        let token = Token::generate();
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let expires = SystemTime::now() + ttl;
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": token.secret_name(), "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "description": "nodegate join",
                "token-id": token.id(),
                "token-secret": token.secret(),
                "expiration": rfc3339(expires),
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "true",
                "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            }
        });
        kubectl.create(&secret)?;
        Ok(BootstrapToken {
            token,
            expires,
            kubectl: kubectl.clone(),
            deleted: false,
        })
    }

    /// The token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// When it expires.
    pub fn expires(&self) -> SystemTime {
        self.expires
    }

    /// Refuses a token that has expired or that the cluster does not know.
    pub fn check(&self, kubectl: &Kubectl) -> Result<(), ClusterError> {
        let expired = |at: SystemTime| ClusterError::TokenExpired {
            id: self.token.id().into(),
            expired: rfc3339(at),
        };
        if self.expires <= SystemTime::now() {
            return Err(expired(self.expires));
        }
        let secret = kubectl
            .get("secret", Some("kube-system"), &self.token.secret_name())?
            .ok_or_else(|| ClusterError::TokenUnknown {
                id: self.token.id().into(),
            })?;
        let field = |k: &str| {
            secret["data"][k]
                .as_str()
                .and_then(|b| Base64::decode_vec(b).ok())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        if field("token-secret").as_deref() != Some(self.token.secret()) {
            return Err(ClusterError::TokenUnknown {
                id: self.token.id().into(),
            });
        }
        if let Some(at) = field("expiration").and_then(|e| humantime::parse_rfc3339(&e).ok()) {
            if at <= SystemTime::now() {
                return Err(expired(at));
            }
        }
        Ok(())
    }

    /// Deletes the token now; errors are returned (Drop ignores them).
    pub fn delete(mut self) -> Result<(), ClusterError> {
        self.delete_inner()
    }

    fn delete_inner(&mut self) -> Result<(), ClusterError> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        self.kubectl
            .delete("secret", Some("kube-system"), &self.token.secret_name())
    }
}

impl Drop for BootstrapToken {
    fn drop(&mut self) {
        let _ = self.delete_inner();
    }
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Checks a `cluster-info` ConfigMap (JSON) as a joining node's discovery will: its
/// kubeconfig names `server`, and it carries a valid detached JWS for `token`.
/// Returns what is wrong.
pub fn check_cluster_info(cm: &Value, token: &Token, server: &str) -> Result<(), String> {
    let content = cm["data"]["kubeconfig"]
        .as_str()
        .ok_or("no kubeconfig in ConfigMap kube-public/cluster-info")?;
    let named = content
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server:"))
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect::<Vec<_>>();
    if named.iter().all(|s| s != server) {
        return Err(format!(
            "kube-public/cluster-info names server {named:?}, the VM reaches the API server as {server}"
        ));
    }
    let key = format!("jws-kubeconfig-{}", token.id());
    let sig = cm["data"][&key]
        .as_str()
        .ok_or_else(|| format!("no {key} in kube-public/cluster-info yet"))?;
    let (header, signature) = sig
        .split_once("..")
        .ok_or_else(|| format!("{key} is not a detached JWS"))?;
    let signing_input = format!(
        "{header}.{}",
        Base64UrlUnpadded::encode_string(content.as_bytes())
    );
    let want = Base64UrlUnpadded::encode_string(&hmac_sha256(
        token.secret().as_bytes(),
        signing_input.as_bytes(),
    ));
    if signature != want {
        return Err(format!(
            "{key} does not sign the current cluster-info content"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_generate() {
        let t: Token = "abcdef.0123456789abcdef".parse().unwrap();
        assert_eq!(t.id(), "abcdef");
        assert_eq!(t.secret_name(), "bootstrap-token-abcdef");
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
        ] {
            let e = bad.parse::<Token>().unwrap_err();
            assert_eq!(e.exit_code(), crate::exit::BAD_INPUT, "{e}");
        }
        let g = Token::generate();
        assert_eq!(g.to_string().parse::<Token>().unwrap(), g);
        assert_ne!(Token::generate(), g);
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn cluster_info_signature_is_checked() {
        let token: Token = "abcdef.0123456789abcdef".parse().unwrap();
        let content =
            "apiVersion: v1\nclusters:\n- cluster:\n    server: https://10.0.2.100:6443\n";
        let header = Base64UrlUnpadded::encode_string(br#"{"alg":"HS256","kid":"abcdef"}"#);
        let input = format!(
            "{header}.{}",
            Base64UrlUnpadded::encode_string(content.as_bytes())
        );
        let sig =
            Base64UrlUnpadded::encode_string(&hmac_sha256(b"0123456789abcdef", input.as_bytes()));
        let cm = json!({"data": {"kubeconfig": content, "jws-kubeconfig-abcdef": format!("{header}..{sig}")}});
        check_cluster_info(&cm, &token, "https://10.0.2.100:6443").unwrap();
        let e = check_cluster_info(&cm, &token, "https://10.0.2.100:7443").unwrap_err();
        assert!(e.contains("names server"), "{e}");
        let other: Token = "abcdef.0123456789abcdee".parse().unwrap();
        let e = check_cluster_info(&cm, &other, "https://10.0.2.100:6443").unwrap_err();
        assert!(e.contains("does not sign"), "{e}");
    }
}
