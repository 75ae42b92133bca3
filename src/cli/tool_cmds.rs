//! `nodegate doctor` and `nodegate report merge`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use crate::exit;
use crate::report::junit;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Merge JUnit files from sharded runs (`--partition hash:M/N`) into one.
    Merge(MergeArgs),
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

pub fn report(cmd: ReportCommand) -> Result<i32, CliError> {
    match cmd {
        ReportCommand::Merge(a) => {
            let merged = junit::merge(&a.inputs)?;
            let xml = merged
                .to_string()
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

pub fn doctor() -> Result<i32, CliError> {
    let findings = crate::doctor::diagnose();
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
