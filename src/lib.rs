//! nodegate: the release gate for Kubernetes node OS images.
//!
//! It verifies an image's signed manifest, boots the image under QEMU, joins it to a
//! Kubernetes control plane, runs conformance suites and writes reports a release
//! pipeline can gate on. The library is split by concept:
//!
//! - [`image`]: signed image manifests, keys, digests and verification (no VM, no cluster).
//! - [`exit`]: the process exit codes, one per class of outcome.
//! - [`vm`]: QEMU virtual machines on throwaway overlays, reached over SSH.
//! - [`cluster`]: control planes (kind, local processes, a kubeconfig), bootstrap tokens
//!   and joining a booted node to them.
//! - [`process`], [`wait`], [`interrupt`]: process-group guards, the one polling
//!   primitive, and SIGINT/SIGTERM routing.
//! - [`fsutil`], [`rundir`]: files written safely; each run's private folder, and the
//!   clean-up after a killed run.
//! - [`network`]: the run's own network namespace, and what this machine can do with it.
//! - [`rollout`]: the hybrid roll-out: a pool of legacy and candidate nodes, its workload,
//!   the client that counts lost requests, the version skew policy.
//! - [`cli`]: the command-line front end.

pub mod agent_endpoint;
pub mod cli;
pub mod cluster;
pub mod config_file;
pub mod doctor;
pub mod evidence;
pub mod exit;
pub mod fsutil;
pub mod image;
pub mod interrupt;
pub mod message;
pub mod network;
pub mod process;
pub mod profile;
pub mod report;
pub mod rollout;
pub mod run;
pub mod rundir;
pub mod runner;
pub mod ssh;
pub mod suite;
pub mod timeline;
pub mod vm;
pub mod wait;

/// The cache folder for the test bed and probes: `$NODEGATE_CACHE`, default
/// `~/.cache/nodegate`.
pub fn cache_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("NODEGATE_CACHE") {
        return d.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::PathBuf::from(home).join(".cache/nodegate")
}
