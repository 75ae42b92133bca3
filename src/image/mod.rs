//! Host-side image integrity: manifests, keys, digests, signing and verification.
//!
//! This module knows nothing of VMs or clusters, so a signing pipeline can use it alone.

pub mod create;
pub mod digest;
pub mod disk_format;
pub mod keys;
pub mod manifest;
pub mod signature;
pub mod verify;

pub use manifest::{Artifact, ArtifactRole, GuestFile, Manifest};
pub use verify::{
    verify, RollbackFloor, VerifiedArtifact, VerifiedImage, VerifyError, VerifyOptions,
};
