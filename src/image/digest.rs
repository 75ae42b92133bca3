//! Streaming SHA-256 of files.
//!
//! Regular files are memory-mapped and hashed in place: no copy through a read buffer.
//! A helper thread prefaults the page tables of the next windows (`MADV_POPULATE_READ`)
//! while the calling thread hashes the current one, so with a spare core the throughput
//! is that of the hash itself (sha2 uses SHA-NI when the CPU has it); without one it
//! degrades to plain faulting. Other inputs (pipes, empty files, files that cannot be
//! mapped) are read in [`BUFFER_SIZE`] chunks. docs/decisions.md has the measurements.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use sha2::{Digest, Sha256};

/// Size of the read buffer, and of each chunk handed to the hash.
pub const BUFFER_SIZE: usize = 4 << 20;
/// Size of the windows the prefault thread populates ahead of the hash.
const WINDOW: usize = 16 << 20;

/// The SHA-256 and the length of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Lowercase hexadecimal SHA-256.
    pub sha256: String,
    /// Number of bytes hashed.
    pub size: u64,
}

/// Hashes a whole file.
pub fn sha256_file(path: &Path) -> io::Result<FileDigest> {
    sha256_open(&File::open(path)?)
}

/// Hashes an open file from its start, through this descriptor only.
pub fn sha256_open(file: &File) -> io::Result<FileDigest> {
    let meta = file.metadata()?;
    if meta.is_file() && meta.len() > 0 {
        // SAFETY: the mapping is read-only and private to this call. If another process
        // truncates the file while it is hashed, the kernel raises SIGBUS and nodegate
        // dies with a non-zero status: the image is refused, never accepted.
        if let Ok(map) = unsafe { memmap2::Mmap::map(file) } {
            let _ = map.advise(memmap2::Advice::Sequential);
            return Ok(FileDigest {
                sha256: hash_mapped(&map),
                size: map.len() as u64,
            });
        }
    }
    use std::os::unix::fs::FileExt;
    // Streamed with positioned reads, so the descriptor's offset does not matter.
    struct At<'f>(&'f File, u64);
    impl Read for At<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read_at(buf, self.1)?;
            self.1 += n as u64;
            Ok(n)
        }
    }
    sha256_reader(At(file, 0))
}

/// Copies everything `src` yields into `dst` while hashing it, in one pass: the digest is
/// that of exactly the bytes written. Blocks of zeros become holes, so a sparse raw
/// image stays sparse. `dst` must be empty; its length is set at the end.
pub fn copy_hashed<R: Read>(mut src: R, dst: &mut File) -> io::Result<FileDigest> {
    use std::io::{Seek, SeekFrom, Write};
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        if crate::interrupt::interrupted() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "interrupted by a signal",
            ));
        }
        // Fill the buffer (short reads happen on pipes), so holes are block-aligned.
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if chunk.iter().all(|b| *b == 0) {
            dst.seek(SeekFrom::Current(n as i64))?;
        } else {
            dst.write_all(chunk)?;
        }
        size += n as u64;
    }
    dst.set_len(size)?;
    dst.sync_all()?;
    Ok(FileDigest {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

/// Hashes a mapping window by window while a helper thread prefaults the next window.
fn hash_mapped(map: &memmap2::Mmap) -> String {
    let windows = map.len().div_ceil(WINDOW);
    let window = |i: usize| i * WINDOW..map.len().min((i + 1) * WINDOW);
    let mut hasher = Sha256::new();
    thread::scope(|scope| {
        // The hasher announces the window it starts; the helper populates up to the next
        // one. Announcements are dropped when the helper lags: it never slows the hash.
        let (at_tx, at_rx) = mpsc::sync_channel::<usize>(4);
        scope.spawn(move || {
            let mut next = 0;
            for at in at_rx {
                next = next.max(at);
                while next <= at + 1 && next < windows {
                    let r = window(next);
                    let _ = map.advise_range(memmap2::Advice::PopulateRead, r.start, r.len());
                    next += 1;
                }
            }
        });
        for i in 0..windows {
            let _ = at_tx.try_send(i);
            for chunk in map[window(i)].chunks(BUFFER_SIZE) {
                hasher.update(chunk);
            }
        }
    });
    hex::encode(hasher.finalize())
}

/// Hashes everything a reader yields, in [`BUFFER_SIZE`] chunks.
pub fn sha256_reader<R: Read>(mut reader: R) -> io::Result<FileDigest> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(FileDigest {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

/// Hashes a byte slice in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_input_has_the_known_digest() {
        let d = sha256_reader(io::empty()).unwrap();
        assert_eq!(d.sha256, EMPTY);
        assert_eq!(d.size, 0);
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(sha256_file(f.path()).unwrap().sha256, EMPTY);
    }

    #[test]
    fn mapped_and_streamed_digests_agree_across_chunk_boundaries() {
        let data: Vec<u8> = (0..(2 * BUFFER_SIZE + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &data).unwrap();
        let mapped = sha256_file(f.path()).unwrap();
        let streamed = sha256_reader(&data[..]).unwrap();
        assert_eq!(mapped, streamed);
        assert_eq!(mapped.sha256, sha256_bytes(&data));
        assert_eq!(mapped.size, data.len() as u64);
    }

    #[test]
    fn a_hashed_copy_has_the_source_digest_and_keeps_holes() {
        let mut data = vec![0u8; 3 * BUFFER_SIZE + 100];
        data[5] = 1;
        let n = data.len();
        data[n - 1] = 7;
        let d = tempfile::tempdir().unwrap();
        let mut dst = File::create(d.path().join("copy")).unwrap();
        let digest = copy_hashed(&data[..], &mut dst).unwrap();
        assert_eq!(digest.sha256, sha256_bytes(&data));
        assert_eq!(std::fs::read(d.path().join("copy")).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(d.path().join("copy")).unwrap().blocks();
        assert!(
            blocks * 512 < 3 * BUFFER_SIZE as u64,
            "zeros were written out"
        );
        let f = File::open(d.path().join("copy")).unwrap();
        assert_eq!(sha256_open(&f).unwrap(), digest);
    }

    #[test]
    fn read_errors_are_reported() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let err = sha256_reader(Broken).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }
}
