//! `keygen`, `manifest create`, `sign`, `verify` and `digest`: the image integrity commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Subcommand};

use super::CliError;
use crate::exit;
use crate::image::create::{self, ManifestSpec};
use crate::image::digest::sha256_file;
use crate::image::keys::{self, KeyId, TrustStore};
use crate::image::manifest::{parse_time, ArtifactRole};
use crate::image::signature::{sign_manifest, write_atomically};
use crate::image::{verify as verify_image, VerifyOptions};

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Path prefix of the key pair: writes PREFIX.key and PREFIX.pub.
    #[arg(long, short, value_name = "PREFIX")]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Hash the image (and other artifacts) and write an unsigned manifest.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The disk image (shorthand for --artifact disk=PATH).
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Another artifact, as ROLE=PATH (roles: disk, kernel, initrd, cmdline, efi-vars, payload).
    #[arg(long = "artifact", value_name = "ROLE=PATH")]
    artifacts: Vec<String>,
    /// Image name.
    #[arg(long)]
    name: String,
    /// Release number; must increase from one release to the next.
    #[arg(long = "image-version", value_name = "N")]
    version: u64,
    /// CPU architecture.
    #[arg(long, default_value = std::env::consts::ARCH)]
    arch: String,
    /// The key that will sign the manifest (public or private key file): sets key_id.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Creation time, RFC 3339 UTC (default: now).
    #[arg(long, value_name = "TIME")]
    created: Option<String>,
    /// Validity period from the creation time, e.g. 90d, 12h.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    valid_for: Duration,
    /// A component version the image promises, as NAME=VERSION (containerd, kubelet, agent, kernel...).
    #[arg(long = "component", value_name = "NAME=VERSION")]
    components: Vec<String>,
    /// In-guest files and their digests, in sha256sum format (`<sha256>  /abs/path`).
    #[arg(long, value_name = "FILE")]
    guest_files: Option<PathBuf>,
    /// Where to write the manifest (default: the image path with extension .manifest.json).
    #[arg(long, short, value_name = "PATH")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Private key (PKCS#8 PEM, as written by `nodegate keygen` or `openssl genpkey`).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Signature output (default: MANIFEST.sig).
    #[arg(long, short, value_name = "PATH")]
    out: Option<PathBuf>,
    /// The manifest to sign.
    manifest: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Trusted public keys: one SPKI PEM file, or a folder of *.pub / *.pem files.
    #[arg(long, value_name = "DIR|FILE")]
    trust: PathBuf,
    /// Signature file (default: MANIFEST.sig).
    #[arg(long, value_name = "PATH")]
    signature: Option<PathBuf>,
    /// Refuse a manifest whose version is lower than N (rollback protection).
    #[arg(long, value_name = "N")]
    min_version: Option<u64>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The manifest to verify.
    manifest: PathBuf,
}

#[derive(Debug, Args)]
pub struct DigestArgs {
    /// Also print size, time and throughput of each file on stderr.
    #[arg(long)]
    stats: bool,
    /// Files to hash.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn keygen(args: KeygenArgs) -> Result<i32, CliError> {
    let key = keys::generate()?;
    let paths = keys::write_keypair(&key, &args.out, args.force)?;
    say!(
        "wrote {} (private, 0600) and {} (public), key id {}",
        paths.private.display(),
        paths.public.display(),
        KeyId::of(&key.verifying_key())
    );
    Ok(exit::PASS)
}

pub fn manifest(cmd: ManifestCommand) -> Result<i32, CliError> {
    match cmd {
        ManifestCommand::Create(args) => create_manifest(args),
    }
}

fn split_pair<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str), CliError> {
    s.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| CliError::Usage(format!("{flag} {s:?}: expected KEY=VALUE")))
}

fn create_manifest(args: CreateArgs) -> Result<i32, CliError> {
    let mut artifacts = Vec::new();
    if let Some(image) = &args.image {
        artifacts.push((ArtifactRole::Disk, image.clone()));
    }
    for a in &args.artifacts {
        let (role, path) = split_pair("--artifact", a)?;
        let role = ArtifactRole::parse(role).ok_or_else(|| {
            CliError::Usage(format!(
                "--artifact {a:?}: unknown role {role:?} (disk, kernel, initrd, cmdline, efi-vars, payload)"
            ))
        })?;
        artifacts.push((role, PathBuf::from(path)));
    }
    let Some((_, first)) = artifacts.first() else {
        return Err(CliError::Usage(
            "manifest create: give --image or at least one --artifact".into(),
        ));
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| first.with_extension("manifest.json"));
    let mut components = BTreeMap::new();
    for c in &args.components {
        let (name, version) = split_pair("--component", c)?;
        components.insert(name.to_string(), version.to_string());
    }
    let created = match &args.created {
        Some(t) => parse_time("--created", t).map_err(|e| CliError::Usage(e.to_string()))?,
        None => SystemTime::now(),
    };
    let files = match &args.guest_files {
        Some(p) => create::read_guest_files(p)?,
        None => Vec::new(),
    };
    let spec = ManifestSpec {
        name: args.name,
        version: args.version,
        architecture: args.arch,
        created,
        valid_for: args.valid_for,
        key_id: KeyId::of(&keys::load_public_key(&args.key)?),
        artifacts,
        components,
        files,
    };
    let manifest = create::build(&spec, &out)?;
    write_atomically(&out, &manifest.to_bytes()).map_err(|source| CliError::Output {
        path: out.clone(),
        source,
    })?;
    say!(
        "wrote {} ({} v{}, {} artifact(s), {} guest file(s), expires {})",
        out.display(),
        manifest.name,
        manifest.version,
        manifest.artifacts.len(),
        manifest.files.len(),
        manifest.expires
    );
    Ok(exit::PASS)
}

pub fn sign(args: SignArgs) -> Result<i32, CliError> {
    let key = keys::load_signing_key(&args.key)?;
    let sig = sign_manifest(&args.manifest, &key, args.out.as_deref())?;
    say!(
        "signed {} with {}: {}",
        args.manifest.display(),
        KeyId::of(&key.verifying_key()),
        sig.display()
    );
    Ok(exit::PASS)
}

pub fn verify(args: VerifyArgs) -> Result<i32, CliError> {
    let trust = TrustStore::load(&args.trust)?;
    let mut opts = VerifyOptions::new(&trust);
    opts.signature = args.signature;
    opts.min_version = args.min_version;
    let v = verify_image(&args.manifest, &opts)?;
    if args.json {
        let artifacts: Vec<_> = v
            .artifacts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "role": a.role.as_str(),
                    "path": a.path,
                    "size": a.size,
                    "sha256": a.sha256,
                    "hash_seconds": a.hash_time.as_secs_f64(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "verified": true,
            "manifest": v.manifest_path,
            "manifest_sha256": v.manifest_sha256,
            "signature": v.signature_path,
            "key_id": v.manifest.key_id,
            "key_file": v.key.path,
            "name": v.manifest.name,
            "version": v.manifest.version,
            "expires": v.manifest.expires,
            "components": v.manifest.components,
            "artifacts": artifacts,
            "rollback": match v.rollback() {
                Ok(judged) => serde_json::json!({"judged": true, "detail": judged}),
                Err(why) => serde_json::json!({"judged": false, "detail": why}),
            },
        });
        say!("{out:#}");
    } else {
        say!(
            "verified {}: {} v{} ({}), key {} from {}, expires {}",
            v.manifest_path.display(),
            v.manifest.name,
            v.manifest.version,
            v.manifest.architecture,
            v.manifest.key_id,
            v.key.path.display(),
            v.manifest.expires
        );
        for a in &v.artifacts {
            say!(
                "  {:<8} {}  {} bytes  sha256 {}  ({})",
                a.role.as_str(),
                a.path.display(),
                a.size,
                a.sha256,
                throughput(a.size, a.hash_time)
            );
        }
        match v.rollback() {
            Ok(judged) => say!("  rollback {judged}"),
            Err(why) => say!("  {why}"),
        }
    }
    Ok(exit::PASS)
}

pub fn digest(args: DigestArgs) -> Result<i32, CliError> {
    let stdout = std::io::stdout();
    for path in &args.files {
        let start = Instant::now();
        let d = sha256_file(path).map_err(|source| CliError::Input {
            path: path.clone(),
            source,
        })?;
        let elapsed = start.elapsed();
        let _ = writeln!(stdout.lock(), "{}  {}", d.sha256, path.display());
        if args.stats {
            tell!(
                "{}: {} bytes in {:.3} s ({})",
                path.display(),
                d.size,
                elapsed.as_secs_f64(),
                throughput(d.size, elapsed)
            );
        }
    }
    Ok(exit::PASS)
}

fn throughput(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "instant".into();
    }
    format!("{:.0} MB/s", bytes as f64 / secs / 1e6)
}
