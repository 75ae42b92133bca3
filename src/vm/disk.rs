//! Disk images: inspection with `qemu-img info` and throwaway qcow2 overlays.
//!
//! The base image is never opened for writing: QEMU writes only to the overlay in the
//! run folder, and opens the base read-only as the overlay's backing file.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `qemu-img` is not installed.
    #[error("qemu-img not found (install qemu-utils): {0}")]
    NoQemuImg(std::io::Error),
    /// The image file is missing or unreadable.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not a disk image QEMU can use, or it is corrupt.
    #[error("{path}: not a usable disk image: {reason}")]
    NotADisk {
        /// The image.
        path: PathBuf,
        /// qemu-img's complaint.
        reason: String,
    },
    /// The overlay could not be created.
    #[error("{path}: cannot create overlay: {reason}")]
    Overlay {
        /// The overlay path.
        path: PathBuf,
        /// qemu-img's complaint.
        reason: String,
    },
}

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    /// `qcow2`, `raw`...
    pub format: String,
    /// Size the guest sees.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
}

fn qemu_img(args: &[&str], path: &Path) -> Result<std::process::Output, DiskError> {
    Command::new("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .map_err(DiskError::NoQemuImg)
}

/// Inspects an image: readable, a format QEMU knows, and (for qcow2) not corrupt.
pub fn inspect(path: &Path) -> Result<ImageInfo, DiskError> {
    let meta = std::fs::metadata(path).map_err(|e| DiskError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(DiskError::Unreadable {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    if let Err(e) = std::fs::File::open(path) {
        return Err(DiskError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        });
    }
    if meta.len() < 512 {
        return Err(DiskError::NotADisk {
            path: path.to_owned(),
            reason: format!("only {} bytes", meta.len()),
        });
    }
    let out = qemu_img(&["info", "--output=json", "-U"], path)?;
    if !out.status.success() {
        return Err(DiskError::NotADisk {
            path: path.to_owned(),
            reason: first_line(&out.stderr),
        });
    }
    let info: ImageInfo = serde_json::from_slice(&out.stdout).map_err(|e| DiskError::NotADisk {
        path: path.to_owned(),
        reason: format!("qemu-img info: {e}"),
    })?;
    if info.format == "qcow2" {
        let out = qemu_img(&["check", "-q", "-U"], path)?;
        if !out.status.success() {
            let reason = first_line(&out.stderr);
            return Err(DiskError::NotADisk {
                path: path.to_owned(),
                reason: if reason.is_empty() {
                    "qcow2 metadata is corrupt (qemu-img check failed)".into()
                } else {
                    format!("corrupt qcow2: {reason}")
                },
            });
        }
    } else if info.format == "raw" && !looks_bootable(path) {
        return Err(DiskError::NotADisk {
            path: path.to_owned(),
            reason: "raw file with neither a partition table nor a filesystem QEMU could boot"
                .into(),
        });
    }
    Ok(info)
}

/// A raw image is plausible if it has an MBR/GPT signature or an ext2/3/4 superblock.
fn looks_bootable(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 2048];
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    let mbr = head[510] == 0x55 && head[511] == 0xaa;
    let ext = head[1080] == 0x53 && head[1081] == 0xef;
    let _ = f.seek(SeekFrom::Start(0));
    mbr || ext
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .trim_start_matches("qemu-img: ")
        .to_string()
}

/// Creates a qcow2 overlay at `overlay` backed by `base` (absolute path, read-only).
pub fn create_overlay(base: &Path, info: &ImageInfo, overlay: &Path) -> Result<(), DiskError> {
    let base = base.canonicalize().map_err(|e| DiskError::Unreadable {
        path: base.to_owned(),
        reason: e.to_string(),
    })?;
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", &info.format, "-b"])
        .arg(&base)
        .arg(overlay)
        .output()
        .map_err(DiskError::NoQemuImg)?;
    if !out.status.success() {
        return Err(DiskError::Overlay {
            path: overlay.to_owned(),
            reason: first_line(&out.stderr),
        });
    }
    Ok(())
}
