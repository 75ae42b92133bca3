//! `nodegate run`: verify -> (control plane) -> boot -> join -> checks -> teardown, with
//! events to the terminal and the report files. Everything that can be refused before a
//! VM boots (profile, suites, variables, the manifest file itself) is refused first.

pub mod artifacts;
pub mod environment;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::cluster::ControlPlaneConfig;
use crate::config_file::ConfigError;
use crate::exit;
use crate::image::keys::{KeyError, TrustStore};
use crate::image::{self, ArtifactRole, Manifest, VerifyError, VerifyOptions};
use crate::profile::{flatten, Firmware, Profile};
use crate::report::terminal::Terminal;
use crate::report::{ReportPaths, ReportWriter};
use crate::runner::{self, Event, Phase, RunOptions, Selection, Verdict};
use crate::suite::{self, Need, PlanError, SuiteDef, Verification};
use crate::vm::{AccelChoice, Boot};

use environment::NodeEnvironment;

/// Everything a run needs, parsed and checked by the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The disk image; default the manifest's disk artifact.
    pub image: Option<PathBuf>,
    /// The signed manifest.
    pub manifest: Option<PathBuf>,
    /// Its signature (default MANIFEST.sig).
    pub signature: Option<PathBuf>,
    /// Trusted keys (file or folder).
    pub trust: Option<PathBuf>,
    /// Rollback floor.
    pub min_version: Option<u64>,
    /// Boot without verification (recorded in the report).
    pub allow_unsigned: bool,
    /// A signed upgrade bundle's manifest, for the hot upgrade suite.
    pub upgrade_bundle: Option<PathBuf>,
    /// The image profile.
    pub profile: Profile,
    /// Where the profile came from.
    pub profile_path: PathBuf,
    /// The control plane to join.
    pub control_plane: ControlPlaneConfig,
    /// Accelerator.
    pub accel: AccelChoice,
    /// Artifacts folder.
    pub artifacts: PathBuf,
    /// Report files.
    pub reports: ReportPaths,
}

/// Why a run could not start. One line each, naming the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A suite file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A check cannot be planned (unknown variable, bad pattern).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The manifest or signature file itself is unreadable or malformed.
    #[error(transparent)]
    Manifest(VerifyError),
    /// The trust store is unreadable.
    #[error(transparent)]
    Trust(#[from] KeyError),
    /// The options do not make a run.
    #[error("{0}")]
    Usage(String),
    /// A report file could not be written.
    #[error(transparent)]
    Report(#[from] crate::report::WriteError),
}

impl RunError {
    /// Exit code class.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Usage(_) => exit::USAGE,
            RunError::Report(_) => exit::ENVIRONMENT,
            _ => exit::BAD_INPUT,
        }
    }
}

/// Keeps the checks the selection can run or list (not those it rules out).
pub fn select(defs: Vec<SuiteDef>, selection: &Selection) -> Vec<SuiteDef> {
    defs.into_iter()
        .map(|mut s| {
            s.checks.retain(|c| {
                selection.decide(&s.name, &c.name, &c.tags, c.ignore.as_deref()) != Verdict::Out
            });
            s
        })
        .collect()
}

/// Lines like `cargo test -- --list` for selected suites (no verification, no boot).
pub fn list(selected: &[SuiteDef]) -> Vec<String> {
    selected
        .iter()
        .flat_map(|s| {
            s.checks
                .iter()
                .map(move |c| format!("{}::{}: test", s.name, c.name))
        })
        .collect()
}

/// Does the verification; `Err` only when the manifest file itself cannot be used.
fn verify(config: &RunConfig) -> Result<Verification, RunError> {
    let Some(manifest) = &config.manifest else {
        return Ok(Verification::Unsigned(None));
    };
    let v = verify_file(
        config,
        manifest,
        config.signature.clone(),
        config.min_version,
    )?;
    match (v, &config.image) {
        (Verification::Verified(mut v), Some(img)) => {
            if let Err(e) = same_disk(img, &v) {
                return Ok(Verification::Refused(e));
            }
            if let Some(a) = v
                .artifacts
                .iter_mut()
                .find(|a| a.role == ArtifactRole::Disk)
            {
                a.path = img.clone();
            }
            Ok(Verification::Verified(v))
        }
        (v, _) => Ok(v),
    }
}

/// Verifies one manifest (image or bundle) with the run's trust store.
fn verify_file(
    config: &RunConfig,
    manifest: &Path,
    signature: Option<PathBuf>,
    min_version: Option<u64>,
) -> Result<Verification, RunError> {
    let unreadable = |e: VerifyError| RunError::Manifest(e);
    if config.allow_unsigned && config.trust.is_none() {
        let bytes = std::fs::read(manifest).map_err(|source| {
            unreadable(VerifyError::Read {
                path: manifest.to_owned(),
                source,
            })
        })?;
        let m = Manifest::parse(&bytes).map_err(|source| {
            unreadable(VerifyError::Manifest {
                path: manifest.to_owned(),
                source,
            })
        })?;
        return Ok(Verification::Unsigned(Some(Box::new(m))));
    }
    let trust_path = config.trust.as_ref().ok_or_else(|| {
        RunError::Usage("--trust is required to verify the manifest (or --allow-unsigned)".into())
    })?;
    let trust = TrustStore::load(trust_path)?;
    let opts = VerifyOptions {
        trust: &trust,
        signature,
        min_version,
        now: SystemTime::now(),
    };
    match image::verify(manifest, &opts) {
        Ok(v) => Ok(Verification::Verified(Box::new(v))),
        Err(
            e @ (VerifyError::Empty { .. }
            | VerifyError::TooLarge { .. }
            | VerifyError::Manifest { .. }),
        ) => Err(unreadable(e)),
        Err(VerifyError::Read { path, source }) if path == manifest => {
            Err(unreadable(VerifyError::Read { path, source }))
        }
        Err(e) => Ok(Verification::Refused(e)),
    }
}

/// `--image` given beside a manifest must be the manifest's disk, byte for byte.
fn same_disk(img: &Path, v: &image::VerifiedImage) -> Result<(), VerifyError> {
    let Some(disk) = v.artifact(ArtifactRole::Disk) else {
        return Ok(());
    };
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if canon(img).is_some() && canon(img) == canon(&disk.path) {
        return Ok(());
    }
    let d = image::digest::sha256_file(img).map_err(|source| VerifyError::Read {
        path: img.to_owned(),
        source,
    })?;
    if d.sha256 != disk.sha256 {
        return Err(VerifyError::DigestMismatch {
            path: img.to_owned(),
            expected: disk.sha256.clone(),
            actual: d.sha256,
        });
    }
    Ok(())
}

/// The manifest for variables: the verified one, else the file as it is (a refused image
/// still gets its checks planned, so that each refusal is a failing testcase).
fn manifest_for_vars(config: &RunConfig, v: &Verification) -> Option<Manifest> {
    v.manifest().cloned().or_else(|| {
        let bytes = std::fs::read(config.manifest.as_ref()?).ok()?;
        Manifest::parse(&bytes).ok()
    })
}

/// Where the disk is and how it boots.
fn disk_and_boot(
    config: &RunConfig,
    v: &Verification,
    m: Option<&Manifest>,
) -> (PathBuf, Option<Boot>) {
    let folder = config
        .manifest
        .as_deref()
        .map(image::verify::manifest_folder);
    let path_of = |role: ArtifactRole| -> Option<PathBuf> {
        if let Verification::Verified(v) = v {
            return v.artifact(role).map(|a| a.path.clone());
        }
        let a = m?.artifact(role)?;
        Some(folder.as_ref()?.join(&a.path))
    };
    let disk = config
        .image
        .clone()
        .or_else(|| path_of(ArtifactRole::Disk))
        .unwrap_or_default();
    let boot = match path_of(ArtifactRole::Kernel) {
        Some(kernel) => Some(Boot::Kernel {
            kernel,
            initrd: path_of(ArtifactRole::Initrd),
            cmdline: path_of(ArtifactRole::Cmdline)
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "console=ttyS0 root=/dev/vda rw".into()),
        }),
        None if disk.as_os_str().is_empty() => None,
        None => Some(match config.profile.vm.firmware {
            Firmware::Uefi => Boot::debian_uefi(),
            Firmware::Bios => Boot::Bios,
        }),
    };
    (disk, boot)
}

fn properties(
    config: &RunConfig,
    v: &Verification,
    m: Option<&Manifest>,
) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    p.insert("nodegate.version".into(), env!("CARGO_PKG_VERSION").into());
    p.insert("profile.name".into(), config.profile.name.clone());
    p.insert(
        "profile.path".into(),
        config.profile_path.display().to_string(),
    );
    p.insert(
        "image.signed".into(),
        matches!(v, Verification::Verified(_)).to_string(),
    );
    p.insert(
        "image.allow_unsigned".into(),
        config.allow_unsigned.to_string(),
    );
    if let Some(m) = m {
        p.insert("image.name".into(), m.name.clone());
        p.insert("image.version".into(), m.version.to_string());
        p.insert("image.key_id".into(), m.key_id.clone());
        if let Some(d) = m.artifact(ArtifactRole::Disk) {
            p.insert("image.disk_sha256".into(), d.sha256.clone());
        }
        for (k, val) in &m.components {
            p.insert(format!("image.components.{k}"), val.clone());
        }
    }
    if let Verification::Verified(v) = v {
        p.insert("image.manifest_sha256".into(), v.manifest_sha256.clone());
    }
    if let Some(path) = &config.manifest {
        p.insert("image.manifest".into(), path.display().to_string());
    }
    if let Some(path) = &config.upgrade_bundle {
        p.insert("upgrade.bundle".into(), path.display().to_string());
    }
    p
}

/// Runs the checks of `defs` (loaded suites) that `selection` picks; returns the exit
/// code. Reports are kept current as the run goes.
pub fn execute(
    config: &RunConfig,
    defs: Vec<SuiteDef>,
    selection: &Selection,
    options: RunOptions,
    terminal: &mut Terminal,
) -> Result<i32, RunError> {
    let started = Instant::now();
    let verification = verify(config)?;
    let bundle = match &config.upgrade_bundle {
        Some(b) => Some(verify_file(config, b, None, None)?),
        None => None,
    };
    let verify_time = started.elapsed();
    let manifest = manifest_for_vars(config, &verification);
    let mut vars = config.profile.variables();
    if let Some(m) = &manifest {
        if let Ok(value) = serde_json::to_value(m) {
            flatten("manifest", &value, &mut vars);
        }
    }
    // Only what the selection can run is planned: a variable an unselected check uses
    // (a component this manifest does not list) does not block the others.
    let defs = select(defs, selection);
    let checks = runner::order(suite::plan(&defs, &vars)?);
    let (disk, boot) = disk_and_boot(config, &verification, manifest.as_ref());
    if matches!(verification, Verification::Unsigned(_)) && disk.as_os_str().is_empty() {
        return Err(RunError::Usage(
            "--image is required without a manifest".into(),
        ));
    }
    let mut writer = ReportWriter::new(
        config.reports.clone(),
        properties(config, &verification, manifest.as_ref()),
    );
    let mut emit = |e: Event| {
        terminal.event(&e);
        writer.event(&e);
    };
    emit(Event::PhaseStarted {
        phase: Phase::Verify,
        detail: config
            .manifest
            .as_ref()
            .map_or("no manifest".into(), |m| m.display().to_string()),
    });
    emit(Event::PhaseFinished {
        phase: Phase::Verify,
        duration: verify_time,
        error: match &verification {
            Verification::Refused(e) => Some(e.to_string()),
            Verification::Unsigned(_) => Some("not verified: --allow-unsigned".into()),
            Verification::Verified(_) => None,
        },
    });
    let profile_copy = config.artifacts.join("profile.toml");
    if crate::report::write(&profile_copy, config.profile.to_toml().as_bytes()).is_ok() {
        emit(Event::Artifact {
            name: "profile".into(),
            path: profile_copy,
        });
    }
    let will_join = checks
        .iter()
        .any(|c| c.need == Need::Node && matches!(selection.verdict(c), Verdict::Run));
    let mut env = NodeEnvironment::new(config, verification, disk, boot, will_join);
    env.bundle = bundle;
    let (mut code, mut stop) = runner::run(&checks, selection, options, &mut env, &mut emit);
    if let Verification::Refused(e) = &env.verification {
        // A refused image is an integrity verdict whatever else stopped the run (only
        // pre-boot checks selected, --fail-fast), unless a signal did.
        let interrupted = stop.as_ref().map(|s| s.kind) == Some(runner::StopKind::Interrupted);
        if !interrupted {
            if stop.is_none() {
                stop = Some(runner::Stop {
                    kind: runner::StopKind::Integrity,
                    phase: Phase::Verify,
                    reason: format!("image refused at verification: {e}"),
                });
            }
            code = exit::INTEGRITY;
        }
    }
    env.finish(&mut emit);
    emit(Event::RunFinished {
        stop,
        exit_code: code,
    });
    if let Some(e) = writer.error.take() {
        return Err(e.into());
    }
    Ok(code)
}
