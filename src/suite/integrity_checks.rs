//! Pre-boot integrity: one check per aspect of the manifest's verification.

use super::builtin::Builtin;
use super::context::{Attempt, CheckEnv, Failure, Verification};
use crate::image::{ArtifactRole, VerifyError};

/// The aspects of verification, in the order `image::verify` establishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aspect {
    /// Signature by a trusted key over the exact manifest bytes.
    Signature,
    /// Not expired.
    Expiry,
    /// Not older than `--min-version`.
    Rollback,
    /// Every artifact's size and sha256.
    Digests,
    /// The disk is the format the manifest states and pulls in no other file.
    Format,
}

const ASPECTS: [(&str, Aspect); 5] = [
    ("signature", Aspect::Signature),
    ("expiry", Aspect::Expiry),
    ("rollback", Aspect::Rollback),
    ("digests", Aspect::Digests),
    ("format", Aspect::Format),
];

/// Parses an aspect name.
pub fn aspect(name: &str) -> Result<Aspect, String> {
    ASPECTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            format!("unknown aspect `{name}` (signature, expiry, rollback, digests, format)")
        })
}

fn aspect_name(a: Aspect) -> &'static str {
    ASPECTS
        .iter()
        .find(|(_, x)| *x == a)
        .map_or("?", |(n, _)| n)
}

/// The aspect a verification error belongs to.
pub fn aspect_of(e: &VerifyError) -> Aspect {
    match e {
        VerifyError::Read { .. }
        | VerifyError::Empty { .. }
        | VerifyError::TooLarge { .. }
        | VerifyError::SignatureLength { .. }
        | VerifyError::Manifest { .. }
        | VerifyError::UntrustedKey { .. }
        | VerifyError::BadSignature { .. } => Aspect::Signature,
        VerifyError::Expired { .. } => Aspect::Expiry,
        VerifyError::Rollback { .. } => Aspect::Rollback,
        VerifyError::ArtifactEscapes { .. }
        | VerifyError::ArtifactMissing { .. }
        | VerifyError::SizeMismatch { .. }
        | VerifyError::DigestMismatch { .. }
        | VerifyError::Snapshot { .. } => Aspect::Digests,
        VerifyError::DiskFormat { .. } => Aspect::Format,
    }
}

/// `manifest` with `aspect`: passes when verification established that aspect.
pub fn manifest(b: &Builtin, env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let want = aspect(b.param("aspect")).map_err(Failure::new)?;
    match env.verification {
        Verification::Verified(v) => {
            match want {
                Aspect::Signature => attempt.note(format!(
                    "{} signed by {} ({}), trusted",
                    v.manifest_path.display(),
                    v.manifest.key_id,
                    v.key.path.display()
                )),
                Aspect::Expiry => attempt.note(format!("expires {}", v.manifest.expires)),
                Aspect::Rollback => match v.rollback() {
                    Ok(judged) => attempt.note(judged),
                    Err(why) => return Err(Failure::mismatch(why, "a rollback floor", "none")),
                },
                Aspect::Digests => {
                    for a in &v.artifacts {
                        attempt.note(format!("{}  {}", a.sha256, a.source.display()));
                    }
                }
                Aspect::Format => {
                    for a in v.artifacts.iter().filter(|a| a.role == ArtifactRole::Disk) {
                        attempt.note(format!(
                            "{}: {}, references no other file",
                            a.source.display(),
                            a.format
                        ));
                    }
                }
            }
            Ok(())
        }
        Verification::Unsigned(_) => Err(Failure::new(
            "not verified: the run was started with --allow-unsigned",
        )),
        Verification::Refused(e) => {
            let failed = aspect_of(e);
            if want < failed {
                attempt.note(format!(
                    "{} holds; verification stopped later, at {}",
                    aspect_name(want),
                    aspect_name(failed)
                ));
                Ok(())
            } else if want == failed {
                Err(refusal(e))
            } else {
                Err(Failure::new(format!(
                    "not verified: verification stopped at the {} ({e})",
                    aspect_name(failed)
                )))
            }
        }
    }
}

/// The failure for a refusal, with expected/actual where the error has them.
fn refusal(e: &VerifyError) -> Failure {
    match e {
        VerifyError::DigestMismatch {
            expected, actual, ..
        } => Failure::mismatch(e.to_string(), expected.clone(), actual.clone()),
        VerifyError::SizeMismatch {
            expected, actual, ..
        } => Failure::mismatch(e.to_string(), expected.to_string(), actual.to_string()),
        VerifyError::Rollback {
            version,
            min_version,
            ..
        } => Failure::mismatch(
            e.to_string(),
            format!("version >= {min_version}"),
            version.to_string(),
        ),
        VerifyError::Expired { expires, .. } => Failure::mismatch(
            e.to_string(),
            format!(
                "expiry after {}",
                crate::image::manifest::format_time(std::time::SystemTime::now())
            ),
            expires.clone(),
        ),
        _ => Failure::new(e.to_string()),
    }
}
