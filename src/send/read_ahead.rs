//! Pass one, ahead of the wire: the next chunk's checksum and the whole-file hash state after
//! it, computed while the chunk before it is sent.
//!
//! While chunks ramp up (each a multiple of the last), the read-ahead hashes more bytes than
//! the wire carries in the same time, and unthrottled it shares the machine's cores with the
//! server: it was often not done when the chunk before it was answered. Waiting for it left the server
//! idle (a 1 GiB upload over loopback, tcpdump: 67 ms before the first 256 MiB chunk, 3-9 ms
//! before smaller ones; about 100 ms of the upload's 1.7 s). So the read-ahead publishes its
//! state after every buffer it reads (a [`Checkpoint`]), and a chunk whose read-ahead is
//! behind may be cut where it has got to, once that is at least the length its caller can
//! accept: the server is kept busy, and the rest of the bytes go in the next chunk, read ahead
//! from the cut. A chunk that may not be shortened (a fixed `--chunk`, an S3 part) waits for
//! its whole length as before.
//!
//! A read-ahead for another chunk than the one asked for (the rate changed, a pause shortened
//! it) is dropped and the chunk hashed on the spot; a dropped read stops at its next buffer.

use super::source::read_range_unless;
use crate::protocol::{Algorithm, Checksum, ChecksumHasher};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// Pass one of a chunk: its length (shorter than asked when it was cut), its checksum and the
/// whole-file hash state after it.
pub(super) struct Prepared {
    pub(super) len: u64,
    pub(super) checksum: Option<Checksum>,
    pub(super) hasher_after: Sha256,
}

/// How far a read has got: the hash states after `end`.
#[derive(Clone)]
struct Checkpoint {
    end: u64,
    /// A body checksum's state; none for sha256-upto, which is `hasher`'s digest.
    checksum: Option<ChecksumHasher>,
    hasher: Sha256,
}

/// The read ahead of the next chunk, if one runs.
#[derive(Default)]
pub(super) struct ReadAhead {
    pending: Option<Read>,
}

/// One read of `[offset, offset+len)`. Dropped, it stops.
struct Read {
    offset: u64,
    len: u64,
    alg: Option<Algorithm>,
    progress: watch::Receiver<Checkpoint>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Read {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl ReadAhead {
    /// Pass one of the chunk at `offset` of up to `len` bytes, at least `least` of them
    /// (`least == len`: never shortened): what was read ahead for it, else read now from
    /// `hasher` (the state at `offset`).
    pub(super) async fn take(
        &mut self,
        path: &Path,
        alg: Option<Algorithm>,
        offset: u64,
        len: u64,
        least: u64,
        hasher: &Sha256,
    ) -> std::io::Result<Prepared> {
        let read = match self.pending.take() {
            Some(r) if r.offset == offset && r.len == len && r.alg == alg => r,
            // Planned for another chunk: of no use.
            _ => Read::start(path, alg, offset, len, hasher.clone()),
        };
        read.finish(least.max(1).min(len)).await
    }

    /// Starts reading the chunk `[offset, offset+len)` ahead, from `hasher` (the state at
    /// `offset`).
    pub(super) fn plan(
        &mut self,
        path: &Path,
        alg: Option<Algorithm>,
        offset: u64,
        len: u64,
        hasher: &Sha256,
    ) {
        self.pending = (len > 0).then(|| Read::start(path, alg, offset, len, hasher.clone()));
    }

    /// Forgets what was read ahead (the file changed).
    pub(super) fn clear(&mut self) {
        self.pending = None;
    }
}

impl Read {
    fn start(path: &Path, alg: Option<Algorithm>, offset: u64, len: u64, hasher: Sha256) -> Read {
        let begin = Checkpoint {
            end: offset,
            checksum: alg.filter(|a| !a.covers_upload()).map(Algorithm::hasher),
            hasher,
        };
        let (tx, progress) = watch::channel(begin.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (path, halt) = (path.to_path_buf(), stop.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut at = begin;
            read_range_unless(&path, offset, len, &halt, |b| {
                at.hasher.update(b);
                if let Some(s) = at.checksum.as_mut() {
                    s.update(b);
                }
                at.end += b.len() as u64;
                tx.send_replace(at.clone());
            })
        });
        Read {
            offset,
            len,
            alg,
            progress,
            task,
            stop,
        }
    }

    /// Waits until the read is done or has at least `least` bytes, and takes what it has.
    async fn finish(mut self, least: u64) -> std::io::Result<Prepared> {
        let offset = self.offset;
        let got = self
            .progress
            .wait_for(|c| c.end >= offset + least)
            .await
            .map(|c| c.clone());
        let cp = match got {
            Ok(cp) => cp,
            // The reader ended before it got there: its error says why.
            Err(_) => {
                (&mut self.task).await.expect("read-ahead panicked")?;
                self.progress.borrow().clone()
            }
        };
        // The chunk ends here; the rest of the read is the next chunk's, read again from here.
        let checksum = match (self.alg, cp.checksum) {
            (_, Some(body)) => Some(body.finish()),
            (Some(_), None) => Some(Checksum::sha256_upto(cp.hasher.clone().finalize().into())),
            (None, None) => None,
        };
        Ok(Prepared {
            len: cp.end - offset,
            checksum,
            hasher_after: cp.hasher,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk cut where its read-ahead had got to carries that prefix's checksum and hash
    /// state, whatever length the cut gave it; one waited for in full carries the whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_chunk_carries_the_hashes_of_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..24u32 << 20).map(|i| (i * 7 + i / 4093) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let alg = Some(Algorithm::Crc32);
        let expect = |from: usize, to: usize| {
            let mut sum = Algorithm::Crc32.hasher();
            sum.update(&data[from..to]);
            (sum.finish(), Sha256::digest(&data[..to]))
        };
        let start = Sha256::new();
        let mut ahead = ReadAhead::default();
        ahead.plan(&path, alg, 0, 24 << 20, &start);
        let cut = ahead.take(&path, alg, 0, 24 << 20, 1 << 20, &start).await;
        let cut = cut.unwrap();
        assert!(cut.len >= 1 << 20 && cut.len <= 24 << 20, "{}", cut.len);
        let (sum, sha) = expect(0, cut.len as usize);
        assert_eq!(cut.checksum, Some(sum));
        assert_eq!(cut.hasher_after.clone().finalize(), sha);
        // The rest, planned from the cut and waited for whole.
        let (at, rest) = (cut.len, (24 << 20) - cut.len);
        ahead.plan(&path, alg, at, rest, &cut.hasher_after);
        let whole = (ahead.take(&path, alg, at, rest, rest, &cut.hasher_after)).await;
        let whole = whole.unwrap();
        assert_eq!(whole.len, rest);
        let (sum, sha) = expect(at as usize, 24 << 20);
        assert_eq!(whole.checksum, Some(sum));
        assert_eq!(whole.hasher_after.finalize(), sha);
    }

    /// A read that can never reach its plan (the file holds 3 MiB of the 24 planned) gives the
    /// chunk what it read, once that is the least the caller accepts; asked for the whole
    /// plan, it fails with the reader's error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_behind_its_plan_is_cut_at_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let alg = Some(Algorithm::Crc32);
        let start = Sha256::new();
        let mut ahead = ReadAhead::default();
        ahead.plan(&path, alg, 0, 24 << 20, &start);
        let cut = (ahead.take(&path, alg, 0, 24 << 20, 1 << 20, &start)).await;
        let cut = cut.unwrap();
        assert!(cut.len >= 1 << 20 && cut.len <= 3 << 20, "{}", cut.len);
        let mut sum = Algorithm::Crc32.hasher();
        sum.update(&data[..cut.len as usize]);
        assert_eq!(cut.checksum, Some(sum.finish()));
        assert_eq!(
            cut.hasher_after.finalize(),
            Sha256::digest(&data[..cut.len as usize])
        );
        ahead.plan(&path, alg, 0, 24 << 20, &start);
        let whole = (ahead.take(&path, alg, 0, 24 << 20, 24 << 20, &start)).await;
        let err = whole.err().expect("the file ends before the plan");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    }

    /// With sha256-upto a chunk's checksum is the whole-file hash up to its end, cut or not:
    /// no body checksum is kept beside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sha256_upto_checksum_is_the_hash_of_everything_before_the_chunks_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 13 + i / 997) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let alg = Some(Algorithm::Sha256Upto);
        let upto = |to: u64| Checksum::of(Algorithm::Sha256Upto, &data[..to as usize]);
        let start = Sha256::new();
        let mut ahead = ReadAhead::default();
        ahead.plan(&path, alg, 0, 8 << 20, &start);
        let cut = (ahead.take(&path, alg, 0, 8 << 20, 1 << 20, &start)).await;
        let cut = cut.unwrap();
        assert_eq!(cut.checksum, Some(upto(cut.len)));
        let (at, rest) = (cut.len, (8 << 20) - cut.len);
        // Not read ahead: hashed on the spot, from the state at the cut.
        let rest = (ahead.take(&path, alg, at, rest, rest, &cut.hasher_after)).await;
        let rest = rest.unwrap();
        assert_eq!(rest.checksum, Some(upto(8 << 20)));
        assert_eq!(
            rest.checksum.unwrap().digest,
            Sha256::digest(&data).to_vec(),
            "the last chunk's checksum is the file's SHA-256"
        );
    }

    /// A read planned with another checksum (the session fell back from sha256-upto to
    /// crc32 after it was started) is not taken: the chunk is hashed again with the one asked
    /// for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_planned_with_another_checksum_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 241) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let start = Sha256::new();
        let mut ahead = ReadAhead::default();
        ahead.plan(&path, Some(Algorithm::Sha256Upto), 0, 2 << 20, &start);
        let crc = Some(Algorithm::Crc32);
        let taken = (ahead.take(&path, crc, 0, 2 << 20, 2 << 20, &start)).await;
        assert_eq!(
            taken.unwrap().checksum,
            Some(Checksum::of(Algorithm::Crc32, &data))
        );
    }
}
