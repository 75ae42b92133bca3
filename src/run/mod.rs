//! `nodegate run`: verify -> (control plane) -> boot -> join -> checks -> teardown, with
//! events to the terminal and the report files. Everything that can be refused before a
//! VM boots (profile, suites, variables, the manifest file itself) is refused first.

pub mod artifacts;
mod boot_ahead;
pub use boot_ahead::BootAheadChoice;
pub mod environment;
mod evidence;
mod joining;
pub mod machines;
mod pod_network;
pub mod pool;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cluster::client_skew::KubectlClient;
use crate::cluster::{ControlPlaneConfig, ProviderKind};
use crate::config_file::ConfigError;
use crate::exit;
use crate::image::keys::{KeyError, TrustStore};
use crate::image::{self, ArtifactRole, Manifest, VerifyError, VerifyOptions};
use crate::network::NetworkChoice;
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
    /// The signed manifest of the image in the field, that the image under test is rolled
    /// out into (the roll-out suite).
    pub legacy_manifest: Option<PathBuf>,
    /// The roll-out's pool from the command line (`--pool`), over the profile's.
    pub pool: Option<crate::profile::PoolSpec>,
    /// The image profile.
    pub profile: Profile,
    /// Where the profile came from.
    pub profile_path: PathBuf,
    /// The control planes to join, in order: one, or the columns of an image × control
    /// plane grid (node-level checks run against each).
    pub control_planes: Vec<ControlPlaneChoice>,
    /// kubectl clients besides each provider's own (`--kubectl`): each control plane is
    /// driven by the one nearest its server's release.
    pub kubectl: Vec<KubectlClient>,
    /// Accelerator.
    pub accel: AccelChoice,
    /// The network asked for.
    pub network: NetworkChoice,
    /// Nodes that boot and join together (the first is where node checks run).
    pub nodes: usize,
    /// At most this many VMs boot at once (`None`: as many as the cores hold).
    pub jobs: Option<usize>,
    /// Whether the next destructive check's VM boots while the checks before it run.
    pub boot_ahead: BootAheadChoice,
    /// Artifacts folder.
    pub artifacts: PathBuf,
    /// Report files.
    pub reports: ReportPaths,
    /// Signed evidence of the run (`--evidence`).
    pub evidence: Option<crate::evidence::EvidenceConfig>,
}

/// One control plane of a run (a column of the grid), decided before anything starts.
#[derive(Debug, Clone)]
pub struct ControlPlaneChoice {
    /// Its name in the report: as given (`local`, `local=DIR`, `kind`, `kubeconfig=PATH`),
    /// or the provider `auto` picked.
    pub name: String,
    /// The provider and its settings.
    pub config: ControlPlaneConfig,
    /// Why it was chosen (`auto`, kind's probe): `control_plane.reason` in the report.
    pub reason: Option<String>,
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
    /// The evidence could not be written.
    #[error(transparent)]
    Evidence(#[from] crate::evidence::EvidenceError),
    /// The run's private folder or the verified copies could not be made.
    #[error("{0}")]
    Environment(String),
}

impl RunError {
    /// Exit code class.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Usage(_) => exit::USAGE,
            RunError::Report(_) | RunError::Environment(_) | RunError::Evidence(_) => {
                exit::ENVIRONMENT
            }
            _ => exit::BAD_INPUT,
        }
    }
}

/// The disk the VMs boot, its stated format, and how they boot it.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// The verified copy (or, unsigned, the file given).
    pub path: PathBuf,
    /// The format the manifest states; `None` without a manifest (read from the bytes).
    pub format: Option<String>,
    /// How it boots, or the image fault that keeps it from booting.
    pub boot: Result<Boot, String>,
}

/// Whether a check of `def` reads the image's bytes (boots it, or reads its disk):
/// then the run verifies into private copies first.
fn reads_image(def: &suite::CheckDef) -> bool {
    match &def.builtin {
        Some(b) => b == "image-files-absent" || suite::builtin::need(b).0 != Need::Manifest,
        None => true,
    }
}

/// Whether the host can hold the run's nodes: their number on the run's network, and
/// their memory (the nodes, plus the fresh node of a destructive check, at once).
fn check_capacity(
    config: &RunConfig,
    network: &(crate::network::NetworkMode, String),
    checks: &[suite::Check],
) -> Result<(), RunError> {
    use crate::network::{NetworkMode, MAX_NODES};
    let n = config.nodes;
    if n == 0 || n > MAX_NODES {
        return Err(RunError::Usage(format!(
            "--nodes {n}: a run has 1 to {MAX_NODES} nodes"
        )));
    }
    if config.jobs == Some(0) {
        return Err(RunError::Usage(
            "--jobs 0: at least one VM must boot".into(),
        ));
    }
    if n > 1 && network.0 == NetworkMode::User {
        return Err(RunError::Environment(format!(
            "--nodes {n} needs the run's cluster network; this run gets user-mode networking: {}",
            network.1
        )));
    }
    let boots = checks.iter().any(|c| c.need != Need::Manifest);
    // The pool boots once every other VM is gone.
    let r = &config.profile.rollout;
    let pool = if checks.iter().any(|c| c.need == Need::Pool) {
        config
            .pool
            .map_or(r.legacy + r.candidate, |p| p.legacy + p.candidate)
    } else {
        0
    };
    let at_once = (n + usize::from(checks.iter().any(|c| c.destructive))).max(pool);
    let per_vm = crate::vm::footprint_mib(config.profile.vm.memory_mib);
    let needed = at_once as u64 * per_vm;
    match crate::vm::mem_available_mib() {
        Some(available) if boots && needed > available => Err(RunError::Environment(format!(
            "{at_once} VMs at once ({}) need {needed} MiB ({per_vm} MiB each: the \
             profile's vm.memory_mib and QEMU's own); this host has {available} MiB available",
            if pool == at_once {
                "the roll-out's pool".to_string()
            } else if at_once > n {
                format!("--nodes {n} and a destructive check's own node")
            } else {
                format!("--nodes {n}")
            }
        ))),
        _ => Ok(()),
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

/// Does the verification (into `snapshot` when given); `Err` only when the manifest file
/// itself cannot be used.
fn verify(config: &RunConfig, snapshot: Option<&Path>) -> Result<Verification, RunError> {
    let Some(manifest) = &config.manifest else {
        return Ok(Verification::Unsigned(None));
    };
    verify_file(
        config,
        manifest,
        (config.signature.clone(), config.min_version, true),
        config.image.as_deref(),
        snapshot,
    )
}

/// Verifies one manifest (image, bundle or legacy image) with the run's trust store, with
/// its signature file, rollback floor and whether the trust store's released versions are
/// a floor too; `disk`: verify this file as its disk (`--image`); `snapshot`: copy the
/// artifacts there as they are hashed.
fn verify_file(
    config: &RunConfig,
    manifest: &Path,
    (signature, min_version, released_floor): (Option<PathBuf>, Option<u64>, bool),
    disk: Option<&Path>,
    snapshot: Option<&Path>,
) -> Result<Verification, RunError> {
    let unreadable = |e: VerifyError| RunError::Manifest(e);
    if config.allow_unsigned {
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
    let mut opts = VerifyOptions::new(&trust);
    opts.signature = signature;
    opts.min_version = min_version;
    opts.snapshot = snapshot;
    opts.disk = disk;
    opts.released_floor = released_floor;
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
        Err(e @ VerifyError::Snapshot { .. }) => Err(RunError::Environment(e.to_string())),
        Err(e) => Ok(Verification::Refused(e)),
    }
}

/// The manifest for variables: the verified one, else the file as it is (a refused image
/// still gets its checks planned, so that each refusal is a failing testcase).
fn manifest_for_vars(config: &RunConfig, v: &Verification) -> Option<Manifest> {
    v.manifest().cloned().or_else(|| {
        let bytes = std::fs::read(config.manifest.as_ref()?).ok()?;
        Manifest::parse(&bytes).ok()
    })
}

/// The longest kernel command line x86 Linux takes (`COMMAND_LINE_SIZE`).
const MAX_CMDLINE: usize = 2048;

/// Reads a kernel command line artifact: one line of printable text within
/// [`MAX_CMDLINE`] bytes (it becomes one QEMU argument, never spliced).
fn read_cmdline(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{}: the kernel command line is not UTF-8", path.display()))?;
    let line = text.trim();
    if line.len() > MAX_CMDLINE || line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "{}: the kernel command line must be one printable line of at most {MAX_CMDLINE} bytes",
            path.display()
        ));
    }
    Ok(line.to_string())
}

/// Where the disk of the image whose manifest is `manifest` (`image`: `--image`) is, its
/// format and how it boots. Verified artifacts are read from their verified copies.
fn disk_and_boot(
    config: &RunConfig,
    (manifest, image): (Option<&Path>, Option<&Path>),
    v: &Verification,
    m: Option<&Manifest>,
) -> BootDisk {
    let folder = manifest.map(image::verify::manifest_folder);
    let verified = matches!(v, Verification::Verified(_));
    let path_of = |role: ArtifactRole| -> Option<PathBuf> {
        if let Verification::Verified(v) = v {
            return v.artifact(role).map(|a| a.path.clone());
        }
        let a = m?.artifact(role)?;
        Some(folder.as_ref()?.join(&a.path))
    };
    let path = match image {
        Some(img) if !verified => Some(img.to_owned()),
        _ => path_of(ArtifactRole::Disk),
    }
    .unwrap_or_default();
    // The format the manifest states, for its own disk (or --image verified as it).
    let format = m
        .and_then(|m| m.artifact(ArtifactRole::Disk))
        .filter(|_| verified || image.is_none())
        .map(|a| a.format.clone());
    let secure_boot = config.profile.vm.secure_boot;
    let boot = match path_of(ArtifactRole::Kernel) {
        Some(_) if secure_boot => Err(
            "the profile demands Secure Boot, but the manifest boots a kernel directly (QEMU's -kernel bypasses the firmware that would verify it)".into(),
        ),
        Some(kernel) => {
            let cmdline = match path_of(ArtifactRole::Cmdline) {
                Some(p) => read_cmdline(&p),
                None => Ok("console=ttyS0 root=/dev/vda rw".into()),
            };
            cmdline.map(|cmdline| Boot::Kernel {
                kernel,
                initrd: path_of(ArtifactRole::Initrd),
                cmdline,
            })
        }
        None if path.as_os_str().is_empty() => {
            Err("no boot method: the manifest has no kernel and no disk".into())
        }
        None => Ok(match config.profile.vm.firmware {
            Firmware::Uefi => Boot::debian_uefi(secure_boot),
            Firmware::Bios => Boot::Bios,
        }),
    };
    BootDisk { path, format, boot }
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
    if let Some(path) = &config.legacy_manifest {
        p.insert("rollout.legacy".into(), path.display().to_string());
    }
    p
}

/// How bad an exit code is, to merge the columns' codes: interrupted, then integrity, then
/// an error of the host or input, then failed checks.
fn rank(code: i32) -> u8 {
    match code {
        exit::PASS => 0,
        exit::CHECKS_FAILED => 1,
        exit::INTEGRITY => 3,
        exit::INTERRUPTED => 4,
        _ => 2,
    }
}

/// What each control plane's part of the run borrows in turn: the verifications of the
/// image, the bundle and the legacy image.
struct Lent {
    verification: Option<Verification>,
    bundle: Option<Verification>,
    legacy: Option<pool::LegacyImage>,
}

/// Runs `checks` against one control plane `cp`, on its own network, nodes and control
/// plane, all torn down before it returns; the verifications are lent to it.
#[allow(clippy::too_many_arguments)]
fn run_column(
    config: &RunConfig,
    cp: &ControlPlaneChoice,
    rundir: &mut crate::rundir::RunDir,
    lent: &mut Lent,
    (disk, network): (BootDisk, (crate::network::NetworkMode, String)),
    checks: &[suite::Check],
    selection: &Selection,
    options: RunOptions,
    emit: &mut dyn FnMut(Event),
) -> (i32, Option<runner::Stop>) {
    let runs = |c: &&suite::Check| matches!(selection.verdict(c), Verdict::Run);
    let will_join = checks.iter().filter(runs).any(|c| c.need == Need::Node);
    let v = lent
        .verification
        .take()
        .expect("the verification is lent to one column at a time");
    let mut env = NodeEnvironment::new(config, cp, rundir, v, disk, will_join, network);
    env.bundle = lent.bundle.take();
    env.legacy = lent.legacy.take();
    env.shape_links = checks.iter().filter(runs).any(|c| c.needs_link_shaping());
    env.fresh_planned = checks
        .iter()
        .filter(|c| c.destructive && c.need != Need::Manifest)
        .filter(runs)
        .filter(|c| {
            runner::Environment::unavailable(&mut env, c).is_none()
                && c.decided(&env.verification, env.bundle.as_ref()).is_none()
        })
        .count();
    let r = runner::run(checks, selection, options, &mut env, emit);
    env.finish(emit);
    let (v, b, l) = env.into_verifications();
    (lent.verification, lent.bundle, lent.legacy) = (Some(v), b, l);
    r
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
    // A killed run's folder, keys and report are cleaned up by the next run.
    for stale in crate::rundir::reap(&crate::rundir::root()) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "nodegate: notice: {}",
            crate::rundir::describe(&stale)
        );
    }
    let mut rundir = crate::rundir::RunDir::create("run", &config.reports).map_err(|e| {
        RunError::Environment(format!(
            "{}: cannot make the run's folder: {e}",
            crate::rundir::root().display()
        ))
    })?;
    // Checks that boot or read the image get private copies of exactly the bytes that
    // were verified; pre-boot checks alone need none.
    let copies = select(defs.clone(), selection)
        .iter()
        .flat_map(|s| s.checks.iter())
        .any(reads_image);
    let snapshot = copies.then(|| rundir.path().join("verified"));
    let verification = verify(config, snapshot.as_deref())?;
    let bundle = match &config.upgrade_bundle {
        Some(b) => {
            let snap = copies.then(|| rundir.path().join("bundle"));
            Some(verify_file(
                config,
                b,
                (None, None, true),
                None,
                snap.as_deref(),
            )?)
        }
        None => None,
    };
    // The roll-out's legacy image, when a roll-out check is selected: verified like the
    // image, but the trust store's released versions are no floor for it (it is the image
    // in the field).
    let pool_selected = select(defs.clone(), selection)
        .iter()
        .flat_map(|s| s.checks.iter())
        .any(|c| {
            c.builtin
                .as_deref()
                .is_some_and(|b| suite::builtin::need(b).0 == Need::Pool)
        });
    let legacy = match (&config.legacy_manifest, pool_selected) {
        (Some(m), true) => {
            let snap = copies.then(|| rundir.path().join("legacy"));
            let v = verify_file(config, m, (None, None, false), None, snap.as_deref())?;
            let read = || Manifest::parse(&std::fs::read(m).ok()?).ok();
            let lm = v.manifest().cloned().or_else(read);
            let disk = disk_and_boot(config, (Some(m), None), &v, lm.as_ref());
            Some(pool::LegacyImage {
                manifest: m.clone(),
                verification: v,
                disk,
            })
        }
        _ => None,
    };
    // A signal during verification leaves it unfinished; the runner then reports every
    // check as not run and the run as interrupted.
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
    let disk = disk_and_boot(
        config,
        (config.manifest.as_deref(), config.image.as_deref()),
        &verification,
        manifest.as_ref(),
    );
    if matches!(verification, Verification::Unsigned(_)) && disk.path.as_os_str().is_empty() {
        return Err(RunError::Usage(
            "--image is required without a manifest".into(),
        ));
    }
    // Each control plane is a column of the run: its own network, control plane and
    // nodes, one after the other. The first runs every check; the others the checks that
    // need a joined node. Networks and capacity are decided before anything starts: a
    // bridge that was asked for and cannot be had stops the run here, with one line.
    let grid = config.control_planes.len() > 1;
    let mut columns = Vec::new();
    for (i, cp) in config.control_planes.iter().enumerate() {
        let outside = match cp.config.kind() {
            ProviderKind::Local | ProviderKind::Kind => None,
            other => Some(other.to_string()),
        };
        let network = config
            .network
            .decide(outside.as_deref())
            .map_err(RunError::Environment)?;
        let mine: Vec<suite::Check> = checks
            .iter()
            .filter(|c| i == 0 || c.need >= Need::Node)
            .cloned()
            .collect();
        check_capacity(config, &network, &mine)?;
        columns.push((cp, network, mine));
    }
    let mut props = properties(config, &verification, manifest.as_ref());
    props.insert("nodes".into(), config.nodes.to_string());
    let mut writer = ReportWriter::new(config.reports.clone(), props);
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
        node: None,
    });
    emit(Event::PhaseFinished {
        phase: Phase::Verify,
        duration: verify_time,
        error: match &verification {
            Verification::Refused(e) => Some(e.to_string()),
            Verification::Unsigned(_) => Some("not verified: --allow-unsigned".into()),
            Verification::Verified(_) => None,
        },
        node: None,
    });
    let profile_copy = config.artifacts.join("profile.toml");
    if crate::report::write(&profile_copy, config.profile.to_toml().as_bytes()).is_ok() {
        emit(Event::Artifact {
            name: "profile".into(),
            path: profile_copy,
        });
    }
    let mut lent = Lent {
        verification: Some(verification),
        bundle,
        legacy,
    };
    let (mut code, mut stop) = (exit::PASS, None::<runner::Stop>);
    let of = columns.len();
    for (index, (cp, network, mine)) in columns.into_iter().enumerate() {
        emit(Event::ControlPlaneStarted {
            name: cp.name.clone(),
            provider: cp.config.kind().to_string(),
            index,
            of,
        });
        let earlier = stop.as_ref().filter(|s| {
            use runner::StopKind::*;
            matches!(s.kind, Interrupted | Integrity | FailFast)
        });
        if let Some(s) = earlier {
            runner::not_run(&mine, selection, s, &mut emit);
            continue;
        }
        for (name, value) in [
            ("network", network.0.name().to_string()),
            ("network.reason", network.1.clone()),
        ] {
            emit(Event::Property {
                name: name.into(),
                value,
            });
        }
        // In a grid, a node-level check's record names its column.
        let mut emit_column = |e: Event| match e {
            Event::CheckFinished(mut rec)
                if grid
                    && mine
                        .iter()
                        .any(|c| c.need >= Need::Node && c.id() == rec.id) =>
            {
                rec.control_plane = Some(cp.name.clone());
                emit(Event::CheckFinished(rec));
            }
            e => emit(e),
        };
        let (c, s) = run_column(
            config,
            cp,
            &mut rundir,
            &mut lent,
            (disk.clone(), network),
            &mine,
            selection,
            options,
            &mut emit_column,
        );
        let s = s.map(|mut s| {
            if grid {
                s.reason = format!("control plane {}: {}", cp.name, s.reason);
            }
            s
        });
        if rank(c) > rank(code) {
            (code, stop) = (c, s);
        } else if stop.is_none() {
            stop = s;
        }
    }
    let verification = lent
        .verification
        .expect("every column gives the verification back");
    if let Verification::Refused(e) = &verification {
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
    emit(Event::RunFinished {
        stop,
        exit_code: code,
    });
    if let Some(e) = writer.error.take() {
        return Err(e.into());
    }
    if let Some(to) = &config.evidence {
        let n = evidence::gather(config, &defs, &writer.recorder.report)?.write(to)?;
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout(),
            "evidence: {} ({n} files, signed)",
            to.path.display()
        );
    }
    Ok(code)
}
