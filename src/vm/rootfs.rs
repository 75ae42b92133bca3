//! A disk image's root file system read offline, without booting it: what the image
//! ships, before cloud-init or first boot change anything (baked SSH host keys, say).
//!
//! The image is converted to a raw copy in a temporary folder with `qemu-img` (the image
//! itself is only read), its partitions are listed with `partx`, and every ext2/3/4 file
//! system holding `/etc` is read with `debugfs` (read-only).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::vm::disk::DiskError;

/// Why the root file system could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RootFsError {
    /// The image is not a disk image qemu-img can read.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A tool is missing or failed.
    #[error("{tool}: {reason}")]
    Tool {
        /// `qemu-img`, `partx` or `debugfs`.
        tool: &'static str,
        /// Why.
        reason: String,
    },
    /// The image could not be converted.
    #[error("{}: cannot read the disk image: {reason}", path.display())]
    Convert {
        /// The image.
        path: PathBuf,
        /// qemu-img's complaint, the timeout or the interruption.
        reason: String,
    },
    /// No ext2/3/4 file system with `/etc` on the disk.
    #[error("{}: no ext2/3/4 root file system with /etc that nodegate can read; tried {tried}", path.display())]
    NoRoot {
        /// The image.
        path: PathBuf,
        /// Each byte offset tried and why it was not a root.
        tried: String,
    },
}

/// A read-only view of the root file systems of a disk image; the raw copy is removed
/// on drop.
#[derive(Debug)]
pub struct RootFs {
    raw: PathBuf,
    /// Byte offsets of every ext2/3/4 file system holding `/etc` (0: the disk is the file
    /// system). More than one on A/B or recovery layouts: checks look at them all.
    pub roots: Vec<u64>,
    _temp: tempfile::TempDir,
}

fn tool(tool: &'static str, e: std::io::Error) -> RootFsError {
    RootFsError::Tool {
        tool,
        reason: format!("cannot run it ({e}); install {}", package(tool)),
    }
}

fn package(tool: &str) -> &'static str {
    match tool {
        "qemu-img" => "qemu-utils",
        "partx" => "util-linux",
        _ => "e2fsprogs",
    }
}

/// Runs `qemu-img convert` of `disk` to raw at `raw` within `timeout`; a signal stops it.
fn convert(disk: &Path, format: &str, raw: &Path, timeout: Duration) -> Result<(), RootFsError> {
    let failed = |reason: String| RootFsError::Convert {
        path: disk.to_owned(),
        reason,
    };
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-U", "-f", format, "-O", "raw"])
        .arg(disk)
        .arg(raw);
    match crate::process::run_bounded(&mut cmd, None, timeout) {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(failed(
            o.stderr_text()
                .trim()
                .trim_start_matches("qemu-img: ")
                .to_string(),
        )),
        Err(crate::process::CommandError::Spawn { source, .. }) => Err(tool("qemu-img", source)),
        Err(e) => Err(failed(e.to_string())),
    }
}

impl RootFs {
    /// Converts `disk` (of the `format` its manifest states, or the one its bytes show)
    /// to a raw copy in a temporary folder under `scratch` and finds its root file
    /// systems, within `timeout`.
    pub fn open(
        disk: &Path,
        format: Option<&str>,
        scratch: &Path,
        timeout: Duration,
    ) -> Result<RootFs, RootFsError> {
        let info = crate::vm::disk::inspect(disk, format)?;
        let temp = tempfile::Builder::new()
            .prefix("rootfs.")
            .tempdir_in(scratch)
            .map_err(|e| RootFsError::Convert {
                path: disk.to_owned(),
                reason: format!("temporary folder: {e}"),
            })?;
        let raw = temp.path().join("disk.raw");
        convert(disk, info.format.as_str(), &raw, timeout)?;
        let mut fs = RootFs {
            raw,
            roots: Vec::new(),
            _temp: temp,
        };
        let mut tried = Vec::new();
        // A bare file system first; partitions only when the disk is not one.
        fs.probe(0, &mut tried);
        if fs.roots.is_empty() {
            match partition_offsets(&fs.raw) {
                Ok(offsets) => offsets.into_iter().for_each(|o| fs.probe(o, &mut tried)),
                Err(why) => tried.push(format!("partitions ({why})")),
            }
        }
        if fs.roots.is_empty() {
            return Err(RootFsError::NoRoot {
                path: disk.to_owned(),
                tried: tried.join("; "),
            });
        }
        Ok(fs)
    }

    /// Records `offset` as a root if an ext file system there has `/etc`, else notes why
    /// not in `tried`.
    fn probe(&mut self, offset: u64, tried: &mut Vec<String>) {
        match self.list(offset, "/etc") {
            Ok(Some(_)) => self.roots.push(offset),
            Ok(None) => tried.push(format!("{offset} (no /etc)")),
            Err(e) => tried.push(format!("{offset} ({e})")),
        }
    }

    /// The names in folder `dir` (absolute) of the file system at byte `offset`, or
    /// `None` if there is no such folder; an error if debugfs could not read it there.
    pub fn list(&self, offset: u64, dir: &str) -> Result<Option<Vec<String>>, RootFsError> {
        let target = format!("{}?offset={offset}", self.raw.display());
        let mut c = Command::new("debugfs");
        c.arg("-R")
            .arg(format!("ls -p {}", debugfs_quote(dir)))
            .arg(target);
        let out = bounded("debugfs", &mut c)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // debugfs exits 0 whatever happened: a listing has a `.` entry; anything else is
        // a missing folder or an error, never an empty folder (a check must not pass
        // because it could not look).
        let entries = parse_ls(&String::from_utf8_lossy(&out.stdout));
        if entries.iter().any(|n| n == ".") {
            return Ok(Some(
                entries
                    .into_iter()
                    .filter(|n| n != "." && n != "..")
                    .collect(),
            ));
        }
        if stderr.contains("File not found") {
            return Ok(None);
        }
        Err(RootFsError::Tool {
            tool: "debugfs",
            reason: format!(
                "cannot list {dir}: {}",
                stderr
                    .lines()
                    .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
                    .map(|l| l.trim_start_matches("debugfs: "))
                    .collect::<Vec<_>>()
                    .join("; ")
                    .replace(&self.raw.display().to_string(), "the disk")
            ),
        })
    }
}

/// How long one debugfs or partx call may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a read-only tool within [`TOOL_TIMEOUT`].
fn bounded(
    name: &'static str,
    cmd: &mut Command,
) -> Result<crate::process::CommandOutput, RootFsError> {
    crate::process::run_bounded(cmd, None, TOOL_TIMEOUT).map_err(|e| match e {
        crate::process::CommandError::Spawn { source, .. } => tool(name, source),
        other => RootFsError::Tool {
            tool: name,
            reason: other.to_string(),
        },
    })
}

/// Byte offsets of the disk's partitions, or partx's complaint (no partition table).
fn partition_offsets(raw: &Path) -> Result<Vec<u64>, String> {
    let mut c = Command::new("partx");
    c.args(["--raw", "--noheadings", "--output", "START"])
        .arg(raw);
    let out = bounded("partx", &mut c).map_err(|e| e.to_string())?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.trim().trim_start_matches("partx: ");
        return Err(why
            .strip_prefix(&format!("{}: ", raw.display()))
            .unwrap_or(why)
            .to_string());
    }
    // partx counts in 512-byte sectors whatever the disk's sector size.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .map(|sector| sector * 512)
        .collect())
}

/// Quotes a path for debugfs' own command parser (paths holding `"` are refused when
/// the check is planned).
fn debugfs_quote(path: &str) -> String {
    format!("\"{path}\"")
}

/// Names from `debugfs ls -p` lines, `.` and `..` included: `/INODE/MODE/UID/GID/NAME/SIZE/`.
fn parse_ls(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.trim().split('/').collect();
            (fields.len() >= 7 && fields[0].is_empty()).then(|| fields[5].to_string())
        })
        .collect()
}

/// Whether `name` matches the shell glob `pattern` (`*` and `?`; no folders).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Classic two-pointer wildcard match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_lines_give_names() {
        let out = "/412/040755/0/0/.//\n/33/040755/0/0/..//\n/413/100644/0/0/moduli/573928/\n/415/040755/0/0/ssh_config.d//\n";
        assert_eq!(parse_ls(out), [".", "..", "moduli", "ssh_config.d"]);
    }

    #[test]
    fn globs() {
        assert!(glob_matches("ssh_host_*", "ssh_host_ed25519_key.pub"));
        assert!(glob_matches("ssh_host_*_key", "ssh_host_rsa_key"));
        assert!(!glob_matches("ssh_host_*_key", "ssh_host_rsa_key.pub"));
        assert!(glob_matches("machine-i?", "machine-id"));
        assert!(!glob_matches("ssh_host_*", "sshd_config"));
        assert!(glob_matches("*", ""));
    }
}
