//! A disk image's root file system read offline, without booting it: what the image
//! ships, before cloud-init or first boot change anything (baked SSH host keys, say).
//!
//! The image is converted to a raw copy in a temporary folder with `qemu-img` (the image
//! itself is only read), its partitions are listed with `partx`, and the first ext2/3/4
//! file system holding `/etc` is read with `debugfs` (read-only).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::ProcessGroup;

/// Why the root file system could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RootFsError {
    /// A tool is missing or could not run.
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
        /// qemu-img's complaint, or the timeout.
        reason: String,
    },
    /// No ext2/3/4 file system with `/etc` on the disk.
    #[error("{}: no ext2/3/4 root file system (with /etc) found at {offsets}; nodegate reads ext2/3/4 only", path.display())]
    NoRoot {
        /// The image.
        path: PathBuf,
        /// Byte offsets tried.
        offsets: String,
    },
}

/// A read-only view of the root file system of a disk image; the raw copy is removed
/// on drop.
#[derive(Debug)]
pub struct RootFs {
    raw: PathBuf,
    /// Byte offset of the file system in the disk (0: the disk is the file system).
    pub offset: u64,
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

impl RootFs {
    /// Converts `disk` (any format qemu-img reads) to a raw copy and finds its root file
    /// system, within `timeout`.
    pub fn open(disk: &Path, timeout: Duration) -> Result<RootFs, RootFsError> {
        let temp = tempfile::Builder::new()
            .prefix("nodegate-rootfs.")
            .tempdir()
            .map_err(|e| RootFsError::Convert {
                path: disk.to_owned(),
                reason: format!("temporary folder: {e}"),
            })?;
        let raw = temp.path().join("disk.raw");
        let log = temp.path().join("qemu-img.log");
        let stderr = std::fs::File::create(&log).map_err(|e| RootFsError::Convert {
            path: disk.to_owned(),
            reason: format!("{}: {e}", log.display()),
        })?;
        let mut cmd = Command::new("qemu-img");
        cmd.args(["convert", "-O", "raw"])
            .arg(disk)
            .arg(&raw)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child =
            ProcessGroup::spawn("qemu-img", &mut cmd).map_err(|e| tool("qemu-img", e))?;
        let reason = match child
            .wait_timeout(timeout)
            .map_err(|e| tool("qemu-img", e))?
        {
            None => Some(format!(
                "qemu-img convert still running after {}",
                humantime::format_duration(timeout)
            )),
            Some(s) if !s.success() => Some(
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches("qemu-img: ")
                    .to_string(),
            ),
            Some(_) => None,
        };
        drop(child);
        if let Some(reason) = reason {
            return Err(RootFsError::Convert {
                path: disk.to_owned(),
                reason,
            });
        }
        let mut offsets = vec![0];
        offsets.extend(partition_offsets(&raw)?);
        let mut fs = RootFs {
            raw,
            offset: 0,
            _temp: temp,
        };
        for &offset in &offsets {
            fs.offset = offset;
            if matches!(fs.list("/etc"), Ok(Some(_))) {
                return Ok(fs);
            }
        }
        Err(RootFsError::NoRoot {
            path: disk.to_owned(),
            offsets: offsets
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The names in folder `dir` (absolute), or `None` if there is no such folder.
    pub fn list(&self, dir: &str) -> Result<Option<Vec<String>>, RootFsError> {
        let target = format!("{}?offset={}", self.raw.display(), self.offset);
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("ls -p {}", debugfs_quote(dir)))
            .arg(target)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| tool("debugfs", e))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // debugfs exits 0 even when it cannot open the file system; it says so on stderr.
        if stderr.contains("Could not open") || stderr.contains("Bad magic number") {
            return Ok(None);
        }
        let names = parse_ls(&String::from_utf8_lossy(&out.stdout));
        if names.is_empty() && stderr.contains("File not found") {
            return Ok(None);
        }
        Ok(Some(names))
    }
}

/// Byte offsets of the disk's partitions (none for a bare file system).
fn partition_offsets(raw: &Path) -> Result<Vec<u64>, RootFsError> {
    let out = Command::new("partx")
        .args(["--raw", "--noheadings", "--output", "START"])
        .arg(raw)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool("partx", e))?;
    // partx fails when there is no partition table: a bare file system.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .map(|sector| sector * 512)
        .collect())
}

/// Quotes a path for debugfs' own command parser.
fn debugfs_quote(path: &str) -> String {
    format!("\"{}\"", path.replace('"', ""))
}

/// Names from `debugfs ls -p` lines: `/INODE/MODE/UID/GID/NAME/SIZE/`.
fn parse_ls(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.trim().split('/').collect();
            (fields.len() >= 7 && fields[0].is_empty()).then(|| fields[5].to_string())
        })
        .filter(|n| n != "." && n != "..")
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
        assert_eq!(parse_ls(out), ["moduli", "ssh_config.d"]);
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
