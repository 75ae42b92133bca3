//! Disk image formats, read from the bytes themselves, never probed by QEMU.
//!
//! nodegate boots two formats: `raw` and `qcow2`. A qcow2 file can pull bytes from other
//! files (a backing file, an external data file): the signed bytes would then be a small
//! header while the guest reads whatever the referenced host file holds. Such images are
//! refused, as are encrypted qcow2 (QEMU would need a secret) and qcow2 versions or
//! incompatible features nodegate does not know. The header is parsed here, in Rust, from
//! the first bytes of the file (the qcow2 specification keeps the header, its extensions
//! and the backing file name in the first cluster).

use std::io::{self, Read};

/// The formats nodegate boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Bytes as the guest sees them.
    Raw,
    /// QEMU's copy-on-write format, self-contained.
    Qcow2,
}

impl DiskFormat {
    /// The name manifests and QEMU use.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// Parses a manifest's `format` of a disk artifact.
    pub fn parse(s: &str) -> Option<DiskFormat> {
        match s {
            "raw" => Some(DiskFormat::Raw),
            "qcow2" => Some(DiskFormat::Qcow2),
            _ => None,
        }
    }
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many leading bytes [`inspect`] needs: the largest qcow2 cluster (2 MiB).
pub const HEAD_BYTES: usize = 2 << 20;

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Incompatible feature bits nodegate knows: dirty, corrupt, external data file,
/// compression type, extended L2 entries.
const KNOWN_INCOMPATIBLE: u64 = 0b1_1111;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_ENCRYPTION: u32 = 0x0537_be77;

/// Why a disk image is refused. Messages are fragments for "PATH: MESSAGE".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskFormatError {
    /// The manifest names a format nodegate does not boot.
    #[error("disk format {0:?} is not supported (raw or qcow2)")]
    Unsupported(String),
    /// The manifest says one format, the bytes are another.
    #[error("the manifest says {stated}, but the file is {found}")]
    Mismatch {
        /// What the manifest says.
        stated: DiskFormat,
        /// What the bytes are.
        found: DiskFormat,
    },
    /// A qcow2 that reads a backing file.
    #[error("qcow2 image references backing file {0:?}: the guest would read bytes outside the signed file")]
    BackingFile(String),
    /// A qcow2 whose data lives in another file.
    #[error("qcow2 image references external data file {0:?}: the guest would read bytes outside the signed file")]
    DataFile(String),
    /// An encrypted qcow2.
    #[error("qcow2 image is encrypted: nodegate boots only images it can read")]
    Encrypted,
    /// A qcow2 header nodegate cannot judge.
    #[error("qcow2 header: {0}")]
    Header(String),
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

/// The format of a file from its first bytes: qcow2 by its magic, raw otherwise.
pub fn detect(head: &[u8]) -> DiskFormat {
    if head.starts_with(QCOW2_MAGIC) {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    }
}

fn name_at(head: &[u8], offset: u64, len: u64) -> String {
    let (o, l) = (offset as usize, len as usize);
    match head.get(o..o.saturating_add(l.min(4096))) {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => format!("(name at byte {offset}, beyond the first cluster)"),
    }
}

/// Checks a qcow2 header (the file's first bytes) for references to other files and for
/// what nodegate cannot judge.
pub fn check_qcow2(head: &[u8]) -> Result<(), DiskFormatError> {
    let bad = |m: &str| DiskFormatError::Header(m.to_string());
    if !head.starts_with(QCOW2_MAGIC) {
        return Err(bad("no qcow2 magic"));
    }
    let version = be32(head, 4).ok_or_else(|| bad("truncated"))?;
    if !(2..=3).contains(&version) {
        return Err(DiskFormatError::Header(format!(
            "version {version} (nodegate reads 2 and 3)"
        )));
    }
    let backing_offset = be64(head, 8).ok_or_else(|| bad("truncated"))?;
    let backing_size = be32(head, 16).ok_or_else(|| bad("truncated"))?;
    if backing_offset != 0 {
        return Err(DiskFormatError::BackingFile(name_at(
            head,
            backing_offset,
            backing_size.into(),
        )));
    }
    let cluster_bits = be32(head, 20).ok_or_else(|| bad("truncated"))?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(DiskFormatError::Header(format!(
            "cluster_bits {cluster_bits} out of range"
        )));
    }
    if be32(head, 32).ok_or_else(|| bad("truncated"))? != 0 {
        return Err(DiskFormatError::Encrypted);
    }
    let (incompatible, header_length) = if version == 3 {
        (
            be64(head, 72).ok_or_else(|| bad("truncated"))?,
            be32(head, 100).ok_or_else(|| bad("truncated"))? as usize,
        )
    } else {
        (0, 72)
    };
    if incompatible & !KNOWN_INCOMPATIBLE != 0 {
        return Err(DiskFormatError::Header(format!(
            "unknown incompatible features {:#x}",
            incompatible & !KNOWN_INCOMPATIBLE
        )));
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(bad("marked corrupt"));
    }
    if header_length < 72 || header_length > head.len().min(1 << cluster_bits) {
        return Err(DiskFormatError::Header(format!(
            "header length {header_length} out of range"
        )));
    }
    // Header extensions: type, length, data padded to 8 bytes, until type 0.
    let mut at = header_length;
    let mut data_file = None;
    loop {
        let (Some(kind), Some(len)) = (be32(head, at), be32(head, at + 4)) else {
            return Err(bad("header extensions run past the first cluster"));
        };
        if kind == EXT_END {
            break;
        }
        let start = at + 8;
        let padded = (len as usize).div_ceil(8) * 8;
        if start + padded > head.len() {
            return Err(bad("header extension runs past the first cluster"));
        }
        match kind {
            EXT_DATA_FILE => data_file = Some(name_at(head, start as u64, len.into())),
            EXT_ENCRYPTION => return Err(DiskFormatError::Encrypted),
            _ => {}
        }
        at = start + padded;
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 || data_file.is_some() {
        return Err(DiskFormatError::DataFile(
            data_file.unwrap_or_else(|| "(unnamed)".into()),
        ));
    }
    Ok(())
}

/// Judges a disk from its first bytes against the format the manifest states (`None`:
/// no manifest; the format is read from the bytes). Returns the format to boot it as.
pub fn inspect(head: &[u8], stated: Option<&str>) -> Result<DiskFormat, DiskFormatError> {
    let found = detect(head);
    let format = match stated {
        None => found,
        Some(s) => {
            let stated =
                DiskFormat::parse(s).ok_or_else(|| DiskFormatError::Unsupported(s.into()))?;
            if stated != found {
                return Err(DiskFormatError::Mismatch { stated, found });
            }
            stated
        }
    };
    if format == DiskFormat::Qcow2 {
        check_qcow2(head)?;
    }
    Ok(format)
}

/// Reads up to [`HEAD_BYTES`] from the start of `r`.
pub fn read_head<R: Read>(r: R) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(64 * 1024);
    r.take(HEAD_BYTES as u64).read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal qcow2 v3 header with 64 KiB clusters and the given extensions.
    fn qcow2(backing: Option<&str>, incompatible: u64, exts: &[(u32, &[u8])]) -> Vec<u8> {
        let mut h = vec![0u8; 65536];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        let mut at = 112;
        for (kind, data) in exts {
            h[at..at + 4].copy_from_slice(&kind.to_be_bytes());
            h[at + 4..at + 8].copy_from_slice(&(data.len() as u32).to_be_bytes());
            h[at + 8..at + 8 + data.len()].copy_from_slice(data);
            at += 8 + data.len().div_ceil(8) * 8;
        }
        if let Some(b) = backing {
            let off = 4096usize;
            h[8..16].copy_from_slice(&(off as u64).to_be_bytes());
            h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
            h[off..off + b.len()].copy_from_slice(b.as_bytes());
        }
        h
    }

    #[test]
    fn a_self_contained_qcow2_and_raw_pass() {
        assert_eq!(
            inspect(&qcow2(None, 0, &[]), Some("qcow2")),
            Ok(DiskFormat::Qcow2)
        );
        assert_eq!(inspect(&[0u8; 4096], Some("raw")), Ok(DiskFormat::Raw));
        assert_eq!(inspect(&[0u8; 4096], None), Ok(DiskFormat::Raw));
    }

    #[test]
    fn references_to_other_files_are_named() {
        let e = inspect(&qcow2(Some("/etc/shadow"), 0, &[]), Some("qcow2")).unwrap_err();
        assert_eq!(e, DiskFormatError::BackingFile("/etc/shadow".into()));
        let e = inspect(
            &qcow2(None, INCOMPAT_DATA_FILE, &[(EXT_DATA_FILE, b"/dev/sda")]),
            None,
        )
        .unwrap_err();
        assert_eq!(e, DiskFormatError::DataFile("/dev/sda".into()));
        assert!(e.to_string().contains("outside the signed file"), "{e}");
    }

    #[test]
    fn formats_must_match_and_be_known() {
        let e = inspect(&qcow2(None, 0, &[]), Some("raw")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the manifest says raw, but the file is qcow2"
        );
        let e = inspect(&[0u8; 512], Some("vmdk")).unwrap_err();
        assert!(matches!(e, DiskFormatError::Unsupported(_)));
        let e = inspect(&qcow2(None, 1 << 9, &[]), None).unwrap_err();
        assert!(e.to_string().contains("unknown incompatible"), "{e}");
        let e = inspect(&qcow2(None, 0, &[(EXT_ENCRYPTION, &[0; 16])]), None).unwrap_err();
        assert_eq!(e, DiskFormatError::Encrypted);
    }

    #[test]
    fn truncated_and_garbled_headers_are_refused_not_panicked_on() {
        let full = qcow2(None, 0, &[]);
        for n in [4, 8, 20, 40, 80, 104, 111] {
            assert!(check_qcow2(&full[..n]).is_err(), "{n} bytes accepted");
        }
        let mut h = full.clone();
        h[100..104].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(check_qcow2(&h).is_err());
        let mut h = full;
        h[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        h[112..116].copy_from_slice(&7u32.to_be_bytes());
        assert!(check_qcow2(&h).is_err());
    }
}
