//! Writing files safely: private from their first byte, complete or absent, and never
//! through a symbolic link someone planted.
//!
//! [`write_atomic`] writes into a fresh temporary file in the target's folder (created
//! with `O_EXCL`, so a planted name or symbolic link makes it fail instead of being
//! followed), fsyncs it, renames it over the target (a rename replaces a link at the
//! target rather than following it) and fsyncs the folder. Readers see the old file or
//! the new one, never half of one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of files that hold secrets (keys, seeds, tokens).
pub const PRIVATE: u32 = 0o600;
/// Mode of files meant to be read by others (reports, public keys, manifests).
pub const PUBLIC: u32 = 0o644;

/// The folder a path lives in (`.` for a bare file name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` with `mode`: temporary sibling, fsync, rename, fsync of the
/// folder. The folder must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // tempfile opens with O_CREAT|O_EXCL and mode 0600; the mode is set on the open file
    // (fchmod) before any byte is written, so it is never wider than asked.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode & 0o600))
        .tempfile_in(&dir)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable once the folder is.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a new file at `path` with `mode` and writes `bytes`, refusing to replace
/// anything that exists there (a file or a symbolic link). For files in folders nodegate
/// made itself.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // The umask may have narrowed the mode; set exactly what was asked.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_replace_the_file_and_set_the_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report.json");
        write_atomic(&p, b"one", PUBLIC).unwrap();
        write_atomic(&p, b"two", PRIVATE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // Only the file itself is left: no temporary siblings.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = d.path().join("report.json");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_atomic(&p, b"report", PUBLIC).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&p).unwrap(), b"report");
    }

    #[test]
    fn write_new_refuses_an_existing_name_or_link() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let link = d.path().join("seed.img");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write_new(&link, b"x", PRIVATE).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let fresh = d.path().join("key");
        write_new(&fresh, b"secret", PRIVATE).unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);
    }
}
