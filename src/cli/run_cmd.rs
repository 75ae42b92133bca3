//! `nodegate run`: from an image to a gate verdict.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use libtest_mimic::Arguments;

use super::CliError;
use crate::cluster::{self, ControlPlaneConfig};
use crate::profile::Profile;
use crate::report::terminal::Terminal;
use crate::report::ReportPaths;
use crate::run::{self, RunConfig};
use crate::runner::{Partition, RunOptions, Selection};
use crate::suite;
use crate::vm::AccelChoice;
use crate::{exit, interrupt};

/// Colour on the terminal.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Color {
    /// When stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The disk image; default the manifest's disk artifact (if given, it must be that
    /// disk byte for byte).
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// The signed manifest.
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// The manifest's signature (default MANIFEST.sig).
    #[arg(long, value_name = "PATH")]
    signature: Option<PathBuf>,
    /// Trusted public keys: one file or a folder of *.pub / *.pem.
    #[arg(long, value_name = "PATH")]
    trust: Option<PathBuf>,
    /// Refuse manifests older than this version (rollback protection).
    #[arg(long, value_name = "N")]
    min_version: Option<u64>,
    /// Boot an image that is not verified; recorded in the report, and the integrity
    /// checks fail. Cannot be combined with --trust (a run either verifies or does not).
    #[arg(long, conflicts_with = "trust")]
    allow_unsigned: bool,
    /// A signed upgrade bundle's manifest (hot upgrade suite), verified with --trust.
    #[arg(long, value_name = "PATH")]
    upgrade_bundle: Option<PathBuf>,
    /// The signed manifest of the image in the field, that the image is rolled out into
    /// (the roll-out suite's legacy image), verified with --trust.
    #[arg(long, value_name = "PATH")]
    legacy_manifest: Option<PathBuf>,
    /// The roll-out's pool: legacy=N,candidate=M nodes (default: the profile's
    /// [rollout]).
    #[arg(long, value_name = "legacy=N,candidate=M")]
    pool: Option<crate::profile::PoolSpec>,
    /// The image profile (profiles/*.toml).
    #[arg(long, value_name = "PATH", required_unless_present = "list")]
    profile: Option<PathBuf>,
    /// Suite folder or file (repeatable).
    #[arg(long = "suites", value_name = "PATH", default_value = "suites")]
    suites: Vec<PathBuf>,
    /// Suites to run: all, or names separated by commas.
    #[arg(
        long,
        value_name = "NAMES",
        default_value = "all",
        value_delimiter = ','
    )]
    suite: Vec<String>,
    /// Control plane: auto (kind where a probe shows it runs here with --kind-image, else
    /// local), kind, local, local=BIN_DIR or kubeconfig=PATH. Given several times, the
    /// node-level checks run against each in turn and the report has an image × control
    /// plane grid.
    #[arg(long, value_name = "PROVIDER", default_value = "auto")]
    control_plane: Vec<String>,
    /// Another kubectl to drive control planes with (repeatable): each control plane gets
    /// the kubectl nearest its server's release, the provider's own or one of these.
    #[arg(long, value_name = "PATH")]
    kubectl: Vec<PathBuf>,
    /// The kind node image (default: kind's own); a local image is used as is.
    #[arg(long, value_name = "IMAGE", value_parser = parse_image_ref)]
    kind_image: Option<String>,
    /// Accelerator: auto probes KVM and falls back to TCG.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// Network: auto (the run's own bridge where nodegate may make a network namespace
    /// and dnsmasq is installed, else user mode), bridge (or fail), user (QEMU's NAT per
    /// VM; checks that need the cluster network are not run).
    #[arg(long, default_value = "auto")]
    network: crate::network::NetworkChoice,
    /// Nodes that join the cluster together (checks run on the first; cluster checks
    /// on all). More than one needs the run's bridge.
    #[arg(long, default_value_t = 1, value_name = "N")]
    nodes: usize,
    /// At most N VMs boot at once (default: as many as the host's cores hold at the
    /// profile's vCPUs each).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Boot each destructive check's VM while the checks before it run: auto (when the
    /// host's cores hold every VM then running at the profile's vCPUs), on (whenever the
    /// memory holds one more VM), off (when its check starts).
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    boot_ahead: crate::run::BootAheadChoice,
    /// JUnit XML report.
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// HTML page of the report (default: the JSON report's path with `.html`).
    #[arg(long, value_name = "PATH")]
    html: Option<PathBuf>,
    /// Signed certification evidence: a folder, or a tar file if PATH ends in `.tar`
    /// (docs/evidence.md). Needs --evidence-key.
    #[arg(long, value_name = "PATH", requires = "evidence_key")]
    evidence: Option<PathBuf>,
    /// The gate's private key that signs the evidence (`nodegate keygen`).
    #[arg(long, value_name = "KEY", requires = "evidence")]
    evidence_key: Option<PathBuf>,
    /// JSON report (docs/report-schema.md).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Folder for console logs, guest logs and the effective profile.
    #[arg(long, value_name = "DIR", default_value = "nodegate-artifacts")]
    artifacts: PathBuf,
    /// Reruns of a failed check; a pass after a failure is reported as flaky.
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: usize,
    /// Stop at the first failed check (the rest are reported as not run).
    #[arg(long)]
    fail_fast: bool,
    /// Run only checks with one of these tags (repeatable).
    #[arg(long, value_name = "TAG")]
    tag: Vec<String>,
    /// Skip checks with this tag (repeatable).
    #[arg(long, value_name = "TAG")]
    skip_tag: Vec<String>,
    /// Run shard M of N: hash:M/N (stable across machines).
    #[arg(long, value_name = "hash:M/N")]
    partition: Option<Partition>,
    /// List the selected checks and exit.
    #[arg(long)]
    list: bool,
    /// Filters match check ids exactly.
    #[arg(long)]
    exact: bool,
    /// Skip checks whose id contains FILTER (repeatable).
    #[arg(long, value_name = "FILTER")]
    skip: Vec<String>,
    /// Run only ignored checks.
    #[arg(long)]
    ignored: bool,
    /// Run ignored checks too.
    #[arg(long)]
    include_ignored: bool,
    /// Colour: auto, always, never.
    #[arg(long, value_enum, default_value = "auto")]
    color: Color,
    /// Run only checks whose id (`suite::name`) contains FILTER.
    #[arg(value_name = "FILTER")]
    filter: Option<String>,
}

impl RunArgs {
    fn selection(&self) -> Selection {
        let libtest = Arguments {
            filter: self.filter.clone(),
            exact: self.exact,
            skip: self.skip.clone(),
            ignored: self.ignored,
            include_ignored: self.include_ignored,
            ..Arguments::default()
        };
        Selection {
            libtest,
            suites: if self.suite.iter().any(|s| s == "all") {
                Vec::new()
            } else {
                self.suite.clone()
            },
            tags: self.tag.clone(),
            skip_tags: self.skip_tag.clone(),
            partition: self.partition,
        }
    }
}

pub fn run(args: RunArgs) -> Result<i32, CliError> {
    let selection = args.selection();
    if args.list {
        let defs = suite::load(&args.suites).map_err(run::RunError::from)?;
        check_suite_names(&defs, &selection)?;
        let lines = run::list(&run::select(defs, &selection));
        for l in &lines {
            say!("{l}");
        }
        say!("\n{} tests, 0 benchmarks", lines.len());
        return Ok(exit::PASS);
    }
    interrupt::install()
        .map_err(|e| CliError::Usage(format!("cannot install signal handlers: {e}")))?;
    if args.manifest.is_none() && !args.allow_unsigned {
        return Err(CliError::Usage(
            "--manifest (with --trust) is required; --allow-unsigned boots an unverified --image"
                .into(),
        ));
    }
    for file in [&args.image, &args.legacy_manifest].into_iter().flatten() {
        std::fs::metadata(file).map_err(|source| CliError::Input {
            path: file.clone(),
            source,
        })?;
    }
    let profile_path = args.profile.clone().expect("clap requires --profile");
    let profile = Profile::load(&profile_path).map_err(run::RunError::from)?;
    let defs = suite::load(&args.suites).map_err(run::RunError::from)?;
    check_suite_names(&defs, &selection)?;
    let mut control_planes: Vec<run::ControlPlaneChoice> = Vec::new();
    for given in &args.control_plane {
        let choice = control_plane_choice(given, args.kind_image.as_deref())?;
        if let Some(same) = control_planes.iter().find(|c| c.name == choice.name) {
            return Err(CliError::Usage(format!(
                "--control-plane {given}: control plane {} is given twice",
                same.name
            )));
        }
        control_planes.push(choice);
    }
    let kubectl = args
        .kubectl
        .iter()
        .map(|p| cluster::client_skew::KubectlClient::probe(p))
        .collect::<Result<Vec<_>, _>>()?;
    let evidence = match (&args.evidence, &args.evidence_key) {
        (Some(path), Some(key)) => Some(crate::evidence::EvidenceConfig {
            path: path.clone(),
            key: crate::image::keys::load_signing_key(key)?,
        }),
        _ => None,
    };
    let config = RunConfig {
        evidence,
        image: args.image.clone(),
        manifest: args.manifest.clone(),
        signature: args.signature.clone(),
        trust: args.trust.clone(),
        min_version: args.min_version,
        allow_unsigned: args.allow_unsigned,
        upgrade_bundle: args.upgrade_bundle.clone(),
        legacy_manifest: args.legacy_manifest.clone(),
        pool: args.pool,
        profile,
        profile_path,
        control_planes,
        kubectl,
        accel: args.accel,
        network: args.network,
        nodes: args.nodes,
        jobs: args.jobs,
        boot_ahead: args.boot_ahead,
        artifacts: args.artifacts.clone(),
        reports: ReportPaths {
            junit: args.junit.clone(),
            json: args.json.clone(),
            html: args.html.clone().or_else(|| {
                let j = args.json.as_ref()?;
                Some(j.with_extension("html")).filter(|h| h != j)
            }),
        },
    };
    let mut terminal = Terminal::stdout(match args.color {
        Color::Auto => None,
        Color::Always => Some(true),
        Color::Never => Some(false),
    });
    let options = RunOptions {
        retries: args.retries,
        fail_fast: args.fail_fast,
    };
    Ok(run::execute(
        &config,
        defs,
        &selection,
        options,
        &mut terminal,
    )?)
}

/// `--suite NAME` must name a suite that exists.
fn check_suite_names(defs: &[suite::SuiteDef], selection: &Selection) -> Result<(), CliError> {
    for s in &selection.suites {
        if !defs.iter().any(|d| d.name == *s) {
            let known: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
            return Err(CliError::Usage(format!(
                "--suite {s}: no such suite (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// A container image reference as docker takes it: `[host[:port]/]path[:tag][@digest]`,
/// nothing that could read as an option or carry whitespace.
pub(super) fn parse_image_ref(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.starts_with(['-', '/', ':', '@', '.'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a container image reference (name[:tag], letters, digits and ._-/:@)"
        ))
    }
}

/// One `--control-plane` value, decided: `auto` picks kind or local (saying why); kind is
/// probed here, before anything starts, so that a machine that cannot run kind, or an
/// image that is not a kind node image, is one line and its exit code.
fn control_plane_choice(
    given: &str,
    kind_image: Option<&str>,
) -> Result<run::ControlPlaneChoice, CliError> {
    if given == "auto" {
        let (config, why) = ControlPlaneConfig::auto(&cluster::provider::env_path(), kind_image);
        return Ok(run::ControlPlaneChoice {
            name: config.kind().to_string(),
            config,
            reason: Some(why),
        });
    }
    let mut config = given
        .parse::<ControlPlaneConfig>()
        .map_err(CliError::Usage)?;
    let mut reason = None;
    if let ControlPlaneConfig::Kind(k) = &mut config {
        k.image = kind_image.map(String::from);
        let probe = cluster::kind::probe(k)?;
        k.image = Some(probe.image.clone());
        k.probed = true;
        reason = Some(format!("asked for; probe: {}", probe.describe()));
    }
    Ok(run::ControlPlaneChoice {
        name: given.to_string(),
        config,
        reason,
    })
}

#[cfg(test)]
mod image_ref_tests {
    use super::parse_image_ref;

    #[test]
    fn image_references_are_names_never_options_or_shell() {
        for ok in [
            "nodegate.local/kind-node:v1.20.2-385652acedc2",
            "kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f",
            "registry.example:5000/team/node:1",
        ] {
            assert_eq!(parse_image_ref(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "--privileged",
            "-v/:/host",
            "a b",
            "x;rm -rf /",
            "/abs",
            "$(id)",
            "x\ny",
        ] {
            let e = parse_image_ref(bad).unwrap_err();
            assert!(e.contains("is not a container image reference"), "{e}");
        }
    }
}
