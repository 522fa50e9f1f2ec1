//! The two-pass chunk pipeline: pass one reads a chunk to compute its checksum and advance the
//! whole-file hash (read ahead while the chunk before it is on the wire, see
//! [`read_ahead`](super::read_ahead)); pass two streams it,
//! paced by the throttle and watched for progress, and holds the last piece of the last chunk
//! back until the file is proved unchanged.

use super::chunking::Chunking;
use super::destination::Destination;
use super::metering::WireCount;
use super::session::{Session, StepError, Verified, digest_mismatch};
use super::source::{Identity, LastBytes, prove_unchanged};
use super::{SendError, blocking};
use crate::client::{ChannelBody, ClientError, LinkProbe};
use crate::throttle::Throttle;
use bytes::Bytes;
use sha2::Digest;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl<D: Destination> Session<D> {
    /// Sends the next chunk. Returns the digest and published name when it was the last.
    pub(super) async fn send_chunk(&mut self) -> Result<Option<Verified>, StepError> {
        // A scheduler's pause slot holds us here, between chunks, and sizes the last chunk
        // before it so that nothing sent is thrown away.
        let speed = match self.throttle.rate() {
            Some(r) => Some(r.bytes_per_second()),
            None => (self.rate_bps > 0.0).then_some(self.rate_bps / 8.0),
        };
        let fits = self.gate.admit(speed).await;
        self.check_identity().await?;
        let size = self.identity.size;
        let pos = self.pos.as_ref().expect("synced");
        let offset = pos.offset;
        // A part of an S3 upload is never shortened to fit before a pause: all parts but the
        // last must have the upload's part size.
        let fits = fits.filter(|_| !matches!(self.chunking, Chunking::Parts(_)));
        let planned = self
            .chunk_target()
            .min(size - offset)
            .min(fits.unwrap_or(u64::MAX));

        // Pass one: the chunk's checksum and the hash state after it, usually read ahead
        // while the chunk before it was on the wire, and cut short where that read has got
        // to when it is behind (see `read_ahead`).
        let least = self.chunking.shortest(planned);
        let prepared = self
            .read_ahead
            .take(
                &self.path,
                self.checksum,
                offset,
                planned,
                least,
                &pos.hasher,
            )
            .await
            .map_err(|e| SendError::SourceUnreadable {
                path: self.path.clone(),
                source: e,
            })?;
        let (len, checksum, hasher_after) =
            (prepared.len, prepared.checksum, prepared.hasher_after);
        let is_final = offset + len == size;
        let digest: Option<[u8; 32]> = is_final.then(|| hasher_after.clone().finalize().into());
        if is_final {
            // Everything before this chunk was read at other times: one last proof that the
            // file did not change under us before its digest is declared.
            self.check_identity().await?;
        } else {
            // Hash the next chunk while this one is on the wire: unthrottled, hashing would
            // otherwise halve the speed.
            let next = offset + len;
            let next_len = self.chunk_target_after(len).min(size - next);
            (self.read_ahead).plan(&self.path, self.checksum, next, next_len, &hasher_after);
        }

        // Pass two: stream the chunk, paced by the throttle, watched for progress.
        let url = self.upload_url()?;
        let probe = self.destination.connect(self.throttle.rate()).await?;
        self.throttle.watch_link(probe.clone());
        let (tx, body) = ChannelBody::new(len, 4);
        let (path, throttle, wire) = (self.path.clone(), self.throttle.clone(), self.wire.clone());
        let floor = self.piece_floor;
        let runtime = tokio::runtime::Handle::current();
        let last = digest.map(|d| (self.identity, d));
        let verdict = Arc::new(std::sync::Mutex::new(LastBytes::NotFinal));
        let found = verdict.clone();
        tokio::task::spawn_blocking(move || {
            produce(
                path, offset, len, last, found, tx, throttle, floor, wire, runtime,
            )
        });
        let began = Instant::now();
        let throttled_at_start = self.throttle.rate();
        let stall = self.stall;
        let patch =
            self.destination
                .append(&url, offset, len, body, checksum.as_ref(), digest.as_ref());
        let result = tokio::select! {
            r = patch => r,
            () = watchdog(probe, stall) => Err(ClientError::Stalled(stall)),
        };
        // For the last chunk, what the producer found decides before anything the server
        // said. It is not awaited: after a stall it may be blocked on a connection only a
        // disconnect ends. A proof it had not reached yet is made again before the next
        // attempt (`check_identity`), and the last bytes were not sent without one.
        let found = std::mem::replace(
            &mut *verdict.lock().expect("verdict lock"),
            LastBytes::NotFinal,
        );
        match found {
            LastBytes::NotFinal => {}
            LastBytes::Proved(now) => self.identity = now,
            LastBytes::Changed(what) => {
                return Err(StepError::Stop(SendError::SourceChanged {
                    path: self.path.clone(),
                    what: format!(
                        "{what} (its last bytes were held back: the server publishes nothing)"
                    ),
                }));
            }
        }
        let outcome = match result {
            Ok(o) => o,
            Err(ClientError::ChecksumMismatch) => {
                // Damaged on the wire, or the file changed between the two reads.
                self.check_identity().await?;
                return Err(StepError::Net(ClientError::ChecksumMismatch));
            }
            Err(ClientError::Gone(status)) if self.url_answered => {
                return Err(StepError::Net(ClientError::Vanished(status)));
            }
            Err(ClientError::Gone(status)) => {
                return Err(StepError::Net(ClientError::Protocol(format!(
                    "the server created the upload at {url} but answers {status} there: its \
                     Location does not lead back to it (behind a reverse proxy that adds a path \
                     prefix, the server must be told the public URL)"
                ))));
            }
            Err(e) => return Err(e.into()),
        };
        if outcome.offset != offset + len {
            return Err(StepError::Net(ClientError::OffsetMismatch {
                server: Some(outcome.offset),
                ours: offset + len,
            }));
        }
        self.url_answered = true;
        // The rate may have changed while the chunk was sent (a run's budget); either one
        // held it.
        for rate in [throttled_at_start, self.throttle.rate()]
            .into_iter()
            .flatten()
        {
            let bps = rate.bits_per_second();
            self.throttled_to = Some(self.throttled_to.map_or(bps, |t| t.max(bps)));
        }
        self.sending_time += began.elapsed();
        self.confirmed_here += len;
        self.last_chunk = len;
        let pos = self.pos.as_mut().expect("synced");
        pos.offset += len;
        pos.hasher = hasher_after;
        let prefix = hex::encode(pos.hasher.clone().finalize());
        self.rate_bps = self.meter.ack(Instant::now(), pos.offset);
        let rate = (self.rate_bps > 0.0).then_some(self.rate_bps);
        self.row.offset = pos.offset;
        self.row.prefix_sha256 = Some(prefix.clone());
        let offset = pos.offset;
        let sent = self.base_sent + self.wire.sent.load(Ordering::Relaxed);
        let resent = self.base_resent + self.wire.resent.load(Ordering::Relaxed);
        self.store
            .record_progress(self.row.id, offset, &prefix, sent, resent, rate)
            .await?;

        if let Some(ours) = digest {
            if let Some(theirs) = outcome.sha256
                && theirs != ours
            {
                return Err(StepError::Net(digest_mismatch(
                    &theirs,
                    &ours,
                    outcome.published_as.as_deref(),
                )));
            }
            // Success is reported only for the file as it is now.
            let (path, identity) = (self.path.clone(), self.identity);
            if let LastBytes::Changed(what) =
                blocking(move || prove_unchanged(&path, identity, &ours)).await
            {
                return Err(StepError::Stop(SendError::ChangedAfterPublished {
                    path: self.path.clone(),
                    what,
                    published_as: outcome.published_as,
                    sha256: hex::encode(ours),
                }));
            }
            return Ok(Some(Verified {
                sha256: hex::encode(ours),
                published_as: outcome.published_as,
            }));
        }
        Ok(None)
    }
}

/// Reads `[offset, offset+len)` in throttle-sized pieces into the PATCH body, on a blocking
/// thread of its own (plain reads straight into the piece: tokio's file type would copy every
/// byte once more); the bounded channel stops it when the connection does not take more, and
/// it ends when the request is gone.
///
/// For the last chunk (`last`: the identity the file was hashed with and the whole file's
/// digest) the last piece is read, then the file is proved unchanged (the result left in
/// `verdict` before anything else happens), and only then is the piece sent; a changed file
/// fails the body instead, so the server never has every byte.
///
/// Pieces are at least `floor` bytes (the destination's [`piece_floor`]), still paced: the
/// throttle is asked for the whole piece before it goes.
///
/// [`piece_floor`]: super::destination::Capabilities::piece_floor
#[allow(clippy::too_many_arguments)]
pub(super) fn produce(
    path: PathBuf,
    offset: u64,
    len: u64,
    last: Option<(Identity, [u8; 32])>,
    verdict: Arc<std::sync::Mutex<LastBytes>>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    throttle: Throttle,
    floor: usize,
    wire: Arc<WireCount>,
    runtime: tokio::runtime::Handle,
) {
    let mut file = match File::open(&path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        Ok(f)
    }) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let piece = (throttle.piece().max(floor) as u64).min(end - at) as usize;
        // Read into spare capacity: no zero-fill of a buffer the read overwrites anyway.
        let mut buf = Vec::with_capacity(piece);
        let read = (&mut file).take(piece as u64).read_to_end(&mut buf);
        if let Err(e) = read.and_then(|n| {
            if n == piece {
                Ok(())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than when the upload began",
                ))
            }
        }) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        // Sleeping here is fine: this thread exists to feed this one chunk.
        runtime.block_on(throttle.acquire(piece));
        if at + piece as u64 == end
            && let Some((identity, digest)) = &last
        {
            let found = prove_unchanged(&path, *identity, digest);
            let changed = matches!(found, LastBytes::Changed(_));
            *verdict.lock().expect("verdict lock") = found;
            if changed {
                let _ = tx.blocking_send(Err(std::io::Error::other(
                    "the source changed while its last chunk was sent",
                )));
                return;
            }
        }
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return;
        }
        wire.record(at, piece as u64);
        at += piece as u64;
    }
}

/// Resolves when the connection made no progress (nothing acknowledged by the server, nothing
/// received from it) for `stall`: the link died silently, whatever TCP's own backoff thinks.
/// Where TCP_INFO is unavailable it never resolves and the OS timeouts apply.
pub(super) async fn watchdog(probe: LinkProbe, stall: Duration) {
    let tick = (stall / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut last = probe.progress();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = probe.progress();
        if now.is_none() {
            std::future::pending::<()>().await;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= stall {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Rate;

    /// A paced body to ssh comes in pieces of at least the floor: each write into ssh's pipe
    /// becomes one ssh packet of its own, and 1/20 s pieces cost 5 % in packet framing.
    #[test]
    fn pieces_are_gathered_up_to_the_destinations_floor() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 24 * 1024]).unwrap();
        // 40 KB/s: pieces of 2000 bytes, under the 4 KiB floor.
        let throttle = Throttle::new(Some(Rate::from_bytes_per_second(40_000.0).unwrap()));
        assert!(throttle.piece() < 4096, "{}", throttle.piece());
        let sizes = |floor: usize| {
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let (path, throttle, handle) =
                (path.clone(), throttle.clone(), runtime.handle().clone());
            let verdict = Arc::new(std::sync::Mutex::new(LastBytes::NotFinal));
            let producer = std::thread::spawn(move || {
                let wire = Arc::new(WireCount::default());
                produce(
                    path,
                    0,
                    24 * 1024,
                    None,
                    verdict,
                    tx,
                    throttle,
                    floor,
                    wire,
                    handle,
                )
            });
            let mut sizes = Vec::new();
            while let Some(Ok(piece)) = rx.blocking_recv() {
                sizes.push(piece.len());
            }
            producer.join().unwrap();
            sizes
        };
        let gathered = sizes(4096);
        assert_eq!(gathered, vec![4096; 6], "{gathered:?}");
        let small = sizes(0);
        assert!(
            small.iter().all(|&n| n < 4096) && small.len() > 6,
            "{small:?}"
        );
    }
}
