//! The source file: opening it, its identity as the file system reports it, reading byte
//! ranges of it, and proving after its last byte was read that it is still the file that was
//! hashed.

use super::SendError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The file's identity as the file system reports it: any write changes mtime or ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) size: u64,
    pub(super) mtime_ns: i64,
    pub(super) ctime_ns: i64,
    pub(super) inode: u64,
}

impl Identity {
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Identity {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            inode: meta.ino(),
        }
    }

    /// Everything but the change time is the same.
    pub(super) fn same_but_ctime(&self, now: &Identity) -> bool {
        Identity {
            ctime_ns: now.ctime_ns,
            ..*self
        } == *now
    }

    /// What differs, in words, or `None`.
    pub(super) fn difference(&self, now: &Identity) -> Option<String> {
        if self.size != now.size {
            Some(format!(
                "its size changed from {} to {} bytes",
                self.size, now.size
            ))
        } else if self.inode != now.inode {
            Some("it was replaced by another file".into())
        } else if self.mtime_ns != now.mtime_ns {
            Some("its modification time changed".into())
        } else if self.ctime_ns != now.ctime_ns {
            Some("it was written to (its change time moved)".into())
        } else {
            None
        }
    }
}

/// What a look at the source after its last byte was read found.
#[derive(Debug)]
pub(super) enum LastBytes {
    /// Not the last chunk: nothing to prove here.
    NotFinal,
    /// The file is the one that was hashed (perhaps with a moved change time, now adopted).
    Proved(Identity),
    /// It is not, in words.
    Changed(String),
}

/// Whether the file at `path` is still the one whose every byte hashes to `digest`, as
/// `identity` described it. A moved change time alone (a chmod, or an edit that put the
/// modification time back) is settled by reading the file again: rare, and cheap next to
/// publishing the wrong bytes.
pub(super) fn prove_unchanged(path: &Path, identity: Identity, digest: &[u8; 32]) -> LastBytes {
    let now = match std::fs::metadata(path) {
        Ok(m) => Identity::of(&m),
        Err(e) => return LastBytes::Changed(format!("it can no longer be read ({e})")),
    };
    match identity.difference(&now) {
        None => LastBytes::Proved(now),
        Some(_) if identity.same_but_ctime(&now) => {
            let mut h = Sha256::new();
            match read_range(path, 0, now.size, |b| h.update(b)) {
                Ok(()) if <[u8; 32]>::from(h.finalize()) == *digest => LastBytes::Proved(now),
                Ok(()) => LastBytes::Changed(
                    "its content changed while it was being sent (its size and modification \
                     time are the same)"
                        .into(),
                ),
                Err(e) => LastBytes::Changed(format!("it can no longer be read ({e})")),
            }
        }
        Some(what) => LastBytes::Changed(format!("{what} while it was being sent")),
    }
}

const READ_BUF: usize = 1 << 20;

/// Reads `[start, start+len)` of `path`, feeding every byte to `each`.
pub(super) fn read_range(
    path: &Path,
    start: u64,
    len: u64,
    each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    read_range_unless(path, start, len, &AtomicBool::new(false), each)
}

/// [`read_range`], given up (an error) at the next buffer once `stop` is set: a read nobody
/// waits for any more.
pub(super) fn read_range_unless(
    path: &Path,
    start: u64,
    len: u64,
    stop: &AtomicBool,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; READ_BUF.min(len.max(1) as usize)];
    let mut left = len;
    while left > 0 {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the read is no longer wanted",
            ));
        }
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file is shorter than when the upload began",
            ));
        }
        each(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

pub(super) fn open_source(file: &Path) -> Result<(PathBuf, Identity), SendError> {
    let meta = std::fs::metadata(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SendError::SourceMissing { path: file.into() },
        _ => SendError::SourceUnreadable {
            path: file.into(),
            source: e,
        },
    })?;
    if !meta.is_file() {
        return Err(SendError::NotAFile { path: file.into() });
    }
    File::open(file).map_err(|e| SendError::SourceUnreadable {
        path: file.into(),
        source: e,
    })?;
    let path = std::fs::canonicalize(file).map_err(|e| SendError::SourceUnreadable {
        path: file.into(),
        source: e,
    })?;
    Ok((path, Identity::of(&meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names_what_changed() {
        let a = Identity {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            inode: 4,
        };
        assert_eq!(a.difference(&a), None);
        let b = Identity { size: 5, ..a };
        assert!(
            a.difference(&b)
                .unwrap()
                .contains("size changed from 1 to 5")
        );
        let c = Identity { ctime_ns: 9, ..a };
        assert!(a.difference(&c).unwrap().contains("written"));
    }

    #[test]
    fn the_last_bytes_are_proved_against_the_digest() {
        use std::os::unix::fs::{FileExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").unwrap();
        let identity = Identity::of(&std::fs::metadata(&path).unwrap());
        let digest: [u8; 32] = Sha256::digest(b"hello world").into();
        assert!(matches!(
            prove_unchanged(&path, identity, &digest),
            LastBytes::Proved(_)
        ));
        // A chmod moves only the change time: proved by content, and adopted.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let LastBytes::Proved(now) = prove_unchanged(&path, identity, &digest) else {
            panic!("a chmod is no change");
        };
        // An edit that puts the modification time back is caught by content.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(b"J", 0).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let LastBytes::Changed(what) = prove_unchanged(&path, now, &digest) else {
            panic!("a hidden edit slipped by");
        };
        assert!(what.contains("content"), "{what}");
        // Replaced by another file of the same size.
        let other = dir.path().join("g");
        std::fs::write(&other, b"hello world").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let LastBytes::Changed(what) = prove_unchanged(&path, now, &digest) else {
            panic!("a replacement slipped by");
        };
        assert!(what.contains("replaced"), "{what}");
    }
}
