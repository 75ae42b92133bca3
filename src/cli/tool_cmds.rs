//! `nodegate doctor`, `nodegate report merge`, `nodegate evidence verify` and `nodegate
//! suites check`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use crate::exit;
use crate::report::junit;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Merge JUnit files from sharded runs (`--partition hash:M/N`) into one.
    Merge(MergeArgs),
    /// Write each testsuite of a JUnit file as DIR/TEST-SUITE.xml (Maven Surefire's layout).
    Split(SplitArgs),
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The JUnit file.
    #[arg(value_name = "JUNIT")]
    input: PathBuf,
    /// The folder for the files.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// JUnit files to merge.
    #[arg(required = true, value_name = "JUNIT")]
    inputs: Vec<PathBuf>,
    /// The merged file.
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Check a bundle offline: signed by a trusted key, every file as listed, nothing
    /// added (exit 0; 4 when it is not what was signed, naming the file).
    Verify(EvidenceVerifyArgs),
}

#[derive(Debug, Args)]
pub struct EvidenceVerifyArgs {
    /// The bundle: a folder or a .tar file.
    #[arg(value_name = "EVIDENCE")]
    bundle: PathBuf,
    /// Trusted gate keys: one public key file or a folder of *.pub / *.pem.
    #[arg(long, value_name = "PATH")]
    trust: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum SuitesCommand {
    /// Find what suites say about one image that belongs in its profile or manifest:
    /// literal paths, units, component binaries, profile values, versions (exit 1 when
    /// any, one line each naming the file and check).
    Check(SuitesCheckArgs),
}

#[derive(Debug, Args)]
pub struct SuitesCheckArgs {
    /// Suite files or folders of them.
    #[arg(long = "suites", value_name = "PATH", default_value = "suites")]
    suites: Vec<PathBuf>,
    /// The profile whose components and values count as image-specific.
    #[arg(long, value_name = "PATH")]
    profile: PathBuf,
}

pub fn suites(cmd: SuitesCommand) -> Result<i32, CliError> {
    match cmd {
        SuitesCommand::Check(a) => {
            let defs = crate::suite::load(&a.suites).map_err(crate::run::RunError::from)?;
            let profile =
                crate::profile::Profile::load(&a.profile).map_err(crate::run::RunError::from)?;
            let rules = crate::suite::lint::Rules::new(&profile);
            let findings: Vec<_> = defs.iter().flat_map(|d| rules.check(d)).collect();
            for f in &findings {
                say!("{f}");
            }
            let checks: usize = defs.iter().map(|d| d.checks.len()).sum();
            say!(
                "{} suites, {checks} checks: {}",
                defs.len(),
                match findings.len() {
                    0 => "nothing image-specific outside the profile and the manifest".into(),
                    n => format!("{n} literals belong in the profile or the manifest"),
                }
            );
            Ok(if findings.is_empty() {
                exit::PASS
            } else {
                exit::CHECKS_FAILED
            })
        }
    }
}

pub fn evidence(cmd: EvidenceCommand) -> Result<i32, CliError> {
    match cmd {
        EvidenceCommand::Verify(a) => {
            let trust = crate::image::keys::TrustStore::load(&a.trust)?;
            let v = crate::evidence::verify(&a.bundle, &trust)?;
            say!(
                "{}: evidence verified: {} files, signed by {}",
                a.bundle.display(),
                v.files,
                v.key_id.as_str()
            );
            Ok(exit::PASS)
        }
    }
}

pub fn report(cmd: ReportCommand) -> Result<i32, CliError> {
    match cmd {
        ReportCommand::Split(a) => {
            let report = junit::merge(std::slice::from_ref(&a.input))?;
            let files = junit::split(&report)
                .map_err(|e| CliError::Usage(format!("cannot serialize JUnit: {e}")))?;
            for (name, xml) in &files {
                crate::report::write(&a.output.join(name), xml.as_bytes())
                    .map_err(crate::run::RunError::from)?;
            }
            say!("{}: {} files", a.output.display(), files.len());
            Ok(exit::PASS)
        }
        ReportCommand::Merge(a) => {
            let merged = junit::merge(&a.inputs)?;
            let xml = junit::to_xml(&merged)
                .map_err(|e| CliError::Usage(format!("cannot serialize JUnit: {e}")))?;
            crate::report::write(&a.output, xml.as_bytes()).map_err(crate::run::RunError::from)?;
            say!(
                "{}: {} tests, {} failures, {} errors, {} skipped from {} files",
                a.output.display(),
                merged.tests,
                merged.failures,
                merged.errors,
                merged.skipped,
                a.inputs.len()
            );
            Ok(if merged.failures + merged.errors > 0 {
                exit::CHECKS_FAILED
            } else {
                exit::PASS
            })
        }
    }
}

/// `nodegate doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The kind node image the kind probe tries (as `nodegate run --kind-image`).
    #[arg(long, value_name = "IMAGE", value_parser = super::run_cmd::parse_image_ref)]
    kind_image: Option<String>,
}

pub fn doctor(args: &DoctorArgs) -> Result<i32, CliError> {
    let findings = crate::doctor::diagnose(args.kind_image.as_deref());
    let width = findings.iter().map(|f| f.item.len()).max().unwrap_or(0);
    let mut can_run = true;
    for f in &findings {
        let word = if f.ok {
            "ok"
        } else if f.required {
            "MISSING"
        } else {
            "no"
        };
        say!("{:width$}  {word:7}  {}", f.item, f.detail);
        if !f.ok {
            say!("{:width$}           prevents: {}", "", f.prevents);
            if f.required {
                can_run = false;
            }
        }
    }
    if can_run {
        say!("\nthis machine can run nodegate");
        Ok(exit::PASS)
    } else {
        say!("\nthis machine cannot boot images: install what is MISSING (ci/install-deps.sh)");
        Ok(exit::ENVIRONMENT)
    }
}
