//! Disk images: their format (read from the bytes by [`crate::image::disk_format`], never
//! probed by QEMU), whether they hold anything a machine could boot, and throwaway qcow2
//! overlays.
//!
//! The base image is never opened for writing: QEMU writes only to the overlay in the
//! run folder, and opens the base read-only as the overlay's backing file, in the format
//! the manifest states.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::exit;
use crate::image::disk_format::{self, DiskFormat, DiskFormatError};
use crate::process::{run_bounded, CommandError};

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `qemu-img` is not installed or did not finish.
    #[error("qemu-img (install qemu-utils): {0}")]
    QemuImg(CommandError),
    /// The image file is missing or unreadable.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The image is not the format it should be, or pulls in other files.
    #[error("{path}: {source}")]
    Format {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        source: DiskFormatError,
    },
    /// The file is not a disk image QEMU can use, or it is corrupt.
    #[error("{path}: not a usable disk image: {reason}")]
    NotADisk {
        /// The image.
        path: PathBuf,
        /// qemu-img's complaint.
        reason: String,
    },
    /// A well-formed image with nothing a machine could boot: no partition table, no
    /// file system. An image fault.
    #[error("{path}: {reason}")]
    NotBootable {
        /// The image.
        path: PathBuf,
        /// What was looked for.
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

impl DiskError {
    /// The exit code of this error's class.
    pub fn exit_code(&self) -> i32 {
        match self {
            DiskError::QemuImg(CommandError::Interrupted { .. }) => exit::INTERRUPTED,
            DiskError::QemuImg(_) | DiskError::Overlay { .. } => exit::ENVIRONMENT,
            DiskError::Format {
                source: DiskFormatError::BackingFile(_) | DiskFormatError::DataFile(_),
                ..
            } => exit::INTEGRITY,
            DiskError::NotBootable { .. } => exit::CHECKS_FAILED,
            _ => exit::BAD_INPUT,
        }
    }
}

/// What nodegate knows of an image before it boots it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format it is booted as.
    pub format: DiskFormat,
}

/// How long one qemu-img call may take.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(120);

fn qemu_img(args: &[&str], path: &Path) -> Result<crate::process::CommandOutput, DiskError> {
    let mut c = Command::new("qemu-img");
    c.args(args).arg(path);
    run_bounded(&mut c, None, QEMU_IMG_TIMEOUT).map_err(DiskError::QemuImg)
}

/// Inspects an image: a regular, readable file of the `stated` format (`None`: the
/// format its bytes show) that references no other file, and (for qcow2) not corrupt.
pub fn inspect(path: &Path, stated: Option<&str>) -> Result<ImageInfo, DiskError> {
    let unreadable = |reason: String| DiskError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable("not a regular file".into()));
    }
    let head = std::fs::File::open(path)
        .and_then(disk_format::read_head)
        .map_err(|e| unreadable(e.to_string()))?;
    if meta.len() < 512 {
        return Err(DiskError::NotADisk {
            path: path.to_owned(),
            reason: format!("only {} bytes", meta.len()),
        });
    }
    let format = disk_format::inspect(&head, stated).map_err(|source| DiskError::Format {
        path: path.to_owned(),
        source,
    })?;
    if format == DiskFormat::Qcow2 {
        let out = qemu_img(&["check", "-q", "-U", "-f", "qcow2"], path)?;
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
    }
    Ok(ImageInfo { format })
}

/// Byte offsets and magic numbers of what a machine can boot or mount as root.
const BOOT_SIGNATURES: &[(&str, usize, &[u8])] = &[
    ("an MBR or protective MBR", 510, b"\x55\xaa"),
    ("a GPT", 512, b"EFI PART"),
    ("an ext2/3/4 file system", 1080, b"\x53\xef"),
    ("an XFS file system", 0, b"XFSB"),
    ("a btrfs file system", 0x10040, b"_BHRfS_M"),
    ("a squashfs file system", 0, b"hsqs"),
    ("an EROFS file system", 1024, b"\xe2\xe1\xf5\xe0"),
    ("an ISO 9660 file system", 0x8001, b"CD001"),
];

/// How much of the guest-visible disk [`check_bootable`] reads.
const BOOT_PROBE_BYTES: usize = 1 << 20;

/// Which boot signature `head` (the first bytes the guest sees) carries, if any.
pub fn boot_signature(head: &[u8]) -> Option<&'static str> {
    BOOT_SIGNATURES
        .iter()
        .find(|(_, at, magic)| head.get(*at..*at + magic.len()) == Some(magic))
        .map(|(what, _, _)| *what)
}

/// Checks that the disk, as the guest will see it, starts with a partition table or a
/// file system: otherwise no firmware or kernel could boot from it (an image fault, found
/// before anything starts). Returns what it found.
pub fn check_bootable(
    path: &Path,
    info: &ImageInfo,
    scratch: &Path,
) -> Result<&'static str, DiskError> {
    let head = match info.format {
        DiskFormat::Raw => {
            use std::io::Read;
            let mut head = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(BOOT_PROBE_BYTES as u64).read_to_end(&mut head))
                .map_err(|e| DiskError::Unreadable {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            head
        }
        DiskFormat::Qcow2 => {
            let out_path = scratch.join("boot-probe.raw");
            let _ = std::fs::remove_file(&out_path);
            let mut c = Command::new("qemu-img");
            c.args(["dd", "-f", "qcow2", "-O", "raw", "bs=65536"])
                .arg(format!("count={}", BOOT_PROBE_BYTES / 65536))
                .arg(format!("if={}", path.display()))
                .arg(format!("of={}", out_path.display()));
            let out = run_bounded(&mut c, None, QEMU_IMG_TIMEOUT).map_err(DiskError::QemuImg)?;
            if !out.status.success() {
                return Err(DiskError::NotADisk {
                    path: path.to_owned(),
                    reason: first_line(&out.stderr),
                });
            }
            let head = std::fs::read(&out_path).map_err(|e| DiskError::Unreadable {
                path: out_path.clone(),
                reason: e.to_string(),
            })?;
            let _ = std::fs::remove_file(&out_path);
            head
        }
    };
    boot_signature(&head).ok_or_else(|| DiskError::NotBootable {
        path: path.to_owned(),
        reason: format!(
            "the disk's first {} KiB hold neither a partition table (MBR, GPT) nor a file system (ext, XFS, btrfs, squashfs, EROFS, ISO 9660): nothing could boot from it",
            head.len() / 1024
        ),
    })
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

/// Creates a qcow2 overlay at `overlay` backed by `base` (absolute path, read-only), in
/// the format `info` names.
pub fn create_overlay(base: &Path, info: &ImageInfo, overlay: &Path) -> Result<(), DiskError> {
    let base = base.canonicalize().map_err(|e| DiskError::Unreadable {
        path: base.to_owned(),
        reason: e.to_string(),
    })?;
    let mut c = Command::new("qemu-img");
    c.args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        info.format.as_str(),
        "-b",
    ])
    .arg(&base)
    .arg(overlay);
    let out = run_bounded(&mut c, None, QEMU_IMG_TIMEOUT).map_err(DiskError::QemuImg)?;
    if !out.status.success() {
        return Err(DiskError::Overlay {
            path: overlay.to_owned(),
            reason: first_line(&out.stderr),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_signatures_are_recognised() {
        let mut mbr = vec![0u8; 4096];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(boot_signature(&mbr), Some("an MBR or protective MBR"));
        let mut ext = vec![0u8; 4096];
        ext[1080] = 0x53;
        ext[1081] = 0xef;
        assert_eq!(boot_signature(&ext), Some("an ext2/3/4 file system"));
        assert_eq!(boot_signature(&[0u8; 1 << 20]), None);
        assert_eq!(boot_signature(&[]), None);
    }
}
