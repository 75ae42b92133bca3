//! The `nodegate` command line: argument parsing and dispatch to the library.
//!
//! Each subcommand lives in its own file; this file owns the top-level parser, the error
//! type every subcommand returns and its mapping to exit codes.

/// Prints a line on stdout. A closed pipe (`nodegate verify ... | head -1`) is not an
/// error: the line is dropped and the command still ends with its own exit code.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints a line on stderr; a closed stderr is ignored (never a panic).
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod boot_cmd;
mod image_cmds;
mod run_cmd;
mod tool_cmds;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::exit;
use crate::image::create::CreateError;
use crate::image::keys::KeyError;
use crate::image::signature::SignError;
use crate::image::VerifyError;

/// Release gate for Kubernetes node OS images: verify, boot, join, certify.
#[derive(Debug, Parser)]
#[command(name = "nodegate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an Ed25519 signing key (PREFIX.key, mode 0600) and its public key (PREFIX.pub).
    Keygen(image_cmds::KeygenArgs),
    /// Make image manifests.
    #[command(subcommand)]
    Manifest(image_cmds::ManifestCommand),
    /// Sign a manifest (writes the raw 64-byte Ed25519 signature to MANIFEST.sig).
    Sign(image_cmds::SignArgs),
    /// Verify a manifest's signature, trust, expiry and version, and every artifact's digest.
    Verify(image_cmds::VerifyArgs),
    /// Boot an image under QEMU, wait until it is ready and print how to reach it.
    Boot(Box<boot_cmd::BootArgs>),
    /// Print the SHA-256 of files, like sha256sum (streaming, SHA-NI when available).
    Digest(image_cmds::DigestArgs),
    /// Verify, boot, join and run the conformance suites; write JUnit and JSON reports.
    Run(Box<run_cmd::RunArgs>),
    /// Show what this machine can do (QEMU, KVM, firmware, control planes, memory, disk).
    Doctor(tool_cmds::DoctorArgs),
    /// Work with reports.
    #[command(subcommand)]
    Report(tool_cmds::ReportCommand),
    /// Work with signed evidence (`nodegate run --evidence`).
    #[command(subcommand)]
    Evidence(tool_cmds::EvidenceCommand),
    /// Work with suites.
    #[command(subcommand)]
    Suites(tool_cmds::SuitesCommand),
}

/// Everything a subcommand can fail with. The message is one line that names the file,
/// host or phase concerned; [`CliError::exit_code`] gives its class.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Image verification refused the input.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A key could not be read, written or generated.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A manifest could not be made.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// A manifest could not be signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// An input file could not be read.
    #[error("{path}: {source}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An output file could not be written.
    #[error("{path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A control plane, token or join failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A VM could not be started or reached.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// A run could not start or could not write its reports.
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    /// JUnit files could not be merged.
    #[error(transparent)]
    Merge(#[from] crate::report::junit::MergeError),
    /// Evidence was refused or could not be read.
    #[error(transparent)]
    Evidence(#[from] crate::evidence::EvidenceError),
    /// Arguments that parse but make no sense together.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The exit code of this error's class (see [`crate::exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Verify(e) => e.exit_code(),
            CliError::Vm(e) => e.exit_code(),
            CliError::Cluster(e) => e.exit_code(),
            CliError::Key(KeyError::Random(_)) => exit::ENVIRONMENT,
            CliError::Key(_) => exit::BAD_INPUT,
            CliError::Create(_) | CliError::Sign(_) | CliError::Input { .. } => exit::BAD_INPUT,
            CliError::Output { .. } => exit::ENVIRONMENT,
            CliError::Run(e) => e.exit_code(),
            CliError::Merge(_) => exit::BAD_INPUT,
            CliError::Evidence(e) => e.exit_code(),
            CliError::Usage(_) => exit::USAGE,
        }
    }
}

/// Parses the process arguments, runs the subcommand and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help to stdout; a closed pipe there is not a panic either.
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::PASS
                }
                _ => exit::USAGE,
            };
        }
    };
    let result = match cli.command {
        Command::Keygen(args) => image_cmds::keygen(args),
        Command::Manifest(cmd) => image_cmds::manifest(cmd),
        Command::Sign(args) => image_cmds::sign(args),
        Command::Verify(args) => image_cmds::verify(args),
        Command::Digest(args) => image_cmds::digest(args),
        Command::Boot(args) => boot_cmd::boot(*args),
        Command::Run(args) => run_cmd::run(*args),
        Command::Doctor(args) => tool_cmds::doctor(&args),
        Command::Report(cmd) => tool_cmds::report(cmd),
        Command::Evidence(cmd) => tool_cmds::evidence(cmd),
        Command::Suites(cmd) => tool_cmds::suites(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tell!("nodegate: error: {e}");
            e.exit_code()
        }
    }
}
