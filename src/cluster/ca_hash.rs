//! The `--discovery-token-ca-cert-hash` of a cluster CA: `sha256:` and the hex SHA-256 of
//! the CA certificate's SubjectPublicKeyInfo (DER), as kubeadm computes it.

use sha2::{Digest, Sha256};
use x509_cert::der::{DecodePem, Encode};
use x509_cert::Certificate;

use super::ClusterError;

/// The kubeadm CA pin (`sha256:<64 hex>`) of a PEM certificate.
pub fn ca_cert_hash(pem: &str) -> Result<String, ClusterError> {
    let cert = Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| ClusterError::BadCa(format!("not a PEM X.509 certificate: {e}")))?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| ClusterError::BadCa(format!("cannot encode its public key: {e}")))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&spki))))
}

/// Whether `s` has the form of a CA pin (`sha256:` and 64 lowercase hex digits).
pub fn is_ca_pin(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let e = ca_cert_hash("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("CA certificate: "), "{e}");
        assert_eq!(e.exit_code(), crate::exit::BAD_INPUT);
    }

    #[test]
    fn pin_form() {
        assert!(is_ca_pin(&format!("sha256:{}", "ab".repeat(32))));
        assert!(!is_ca_pin(&format!("sha256:{}", "AB".repeat(32))));
        assert!(!is_ca_pin("sha256:abc"));
    }
}
