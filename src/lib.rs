//! nodegate: the release gate for Kubernetes node OS images.
//!
//! It verifies an image's signed manifest, boots the image under QEMU, joins it to a
//! Kubernetes control plane, runs conformance suites and writes reports a release
//! pipeline can gate on. The library is split by concept:
//!
//! - [`image`]: signed image manifests, keys, digests and verification (no VM, no cluster).
//! - [`exit`]: the process exit codes, one per class of outcome.
//! - [`cli`]: the command-line front end.

pub mod cli;
pub mod exit;
pub mod image;
