//! One transfer in progress: its state (the confirmed offset and hash state, the upload URL,
//! what the server said) and [`Session::run`], a loop over named [`Phase`]s: discover the
//! server, learn its offset, send chunks (or verify what it already holds) until the file is on
//! the server, verified; a failure goes back to learning the offset after the delay
//! [`retry`](super::retry) decides.

use super::chunking::Chunking;
use super::destination::{DeltaBase, Destination};
use super::metering::{RateMeter, WireCount};
use super::read_ahead::ReadAhead;
use super::retry::{Decision, Failing};
use super::source::{Identity, read_range};
use super::{Event, SendError, SendOptions, Summary, blocking};
use crate::client::ClientError;
use crate::protocol::Algorithm;
use crate::store::{AsyncStore, LinkSample, StoreError, Transfer, TransferState};
use crate::throttle::{Gate, Throttle};
use crate::units::Rate;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use url::Url;

/// Where we are: the confirmed offset and the SHA-256 state of the bytes before it.
pub(super) struct Position {
    pub(super) offset: u64,
    pub(super) hasher: Sha256,
}

/// sha256-upto checksums rejected in a row before a session checks chunks with crc32.
const UPTO_REJECTIONS: u32 = 3;

/// One transfer in progress.
pub(super) struct Session<D> {
    pub(super) store: AsyncStore,
    pub(super) row: Transfer,
    pub(super) path: PathBuf,
    pub(super) identity: Identity,
    pub(super) destination: D,
    pub(super) throttle: Throttle,
    pub(super) checksum: Option<Algorithm>,
    /// Chunks in a row whose sha256-upto checksum the server rejected; at
    /// [`UPTO_REJECTIONS`] the session has given sha256-upto up for crc32 and the count
    /// stays (see [`Session::checksum_rejected`]).
    pub(super) upto_rejected: u32,
    /// The destination's smallest worthwhile write (`Capabilities::piece_floor`).
    pub(super) piece_floor: usize,
    pub(super) stall: Duration,
    pub(super) wire: Arc<WireCount>,
    /// Payload confirmed by this process and the time spent sending it, for link samples.
    pub(super) confirmed_here: u64,
    pub(super) sending_time: Duration,
    /// The highest rate the throttle held a chunk to, bits per second: a sample of a
    /// throttled transfer measured the throttle, not the link.
    pub(super) throttled_to: Option<f64>,
    /// What we know locally: the confirmed offset and the hash state before it.
    pub(super) pos: Option<Position>,
    /// From the last HEAD of a finished upload.
    pub(super) server_sha256: Option<[u8; 32]>,
    pub(super) published_as: Option<String>,
    /// Pass one of the next chunks, running while the current one is sent.
    pub(super) read_ahead: ReadAhead,
    pub(super) meter: RateMeter,
    pub(super) gate: Gate,
    /// The confirmed rate after the last acknowledged chunk, bits per second.
    pub(super) rate_bps: f64,
    /// How the next chunk is sized.
    pub(super) chunking: Chunking,
    /// The size of the last acknowledged chunk.
    pub(super) last_chunk: u64,
    /// The server answered for the current upload URL (a HEAD or an acknowledged PATCH). A
    /// 404 to a PATCH on such a URL means the upload vanished since (expired during a long
    /// pause, deleted), and a HEAD sorts it out; on a URL that never answered, it means the
    /// server's Location does not lead back to it (a proxy's path prefix), and starting over
    /// would only create uploads that cannot be reached, forever.
    pub(super) url_answered: bool,
    /// The database's byte counters when this process began.
    pub(super) base_sent: u64,
    pub(super) base_resent: u64,
    /// The payload is a delta recipe against this base (see `send::delta`).
    pub(super) delta: Option<DeltaBase>,
    /// For a recipe, the SHA-256 of the file it builds: what the transfer is done with.
    pub(super) target_sha256: Option<String>,
    /// The size of the file delivered (for a recipe, the file it builds).
    pub(super) file_size: u64,
    /// For a recipe: the file it was made from, and its identity then.
    pub(super) delta_source: Option<(PathBuf, Identity)>,
}

/// A step's failure: either the engine's own (stop) or the server's (maybe retry).
pub(super) enum StepError {
    Stop(SendError),
    Net(ClientError),
    /// Only the source's change time moved (chmod, chown, a hard link, an xattr, or an edit
    /// that put the modification time back): prove what was uploaded again by content, from
    /// the server's offset, before sending more.
    Recheck,
}

impl From<SendError> for StepError {
    fn from(e: SendError) -> Self {
        StepError::Stop(e)
    }
}

impl From<ClientError> for StepError {
    fn from(e: ClientError) -> Self {
        StepError::Net(e)
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Stop(e.into())
    }
}

/// Where a session is. Each turn of [`Session::run`] does one phase and names the next; a
/// failure sends it back to [`Phase::Sync`] (the server is the truth after any failure), or
/// to [`Phase::Discover`] when the server was never reached.
enum Phase {
    /// Ask the server what it supports: the chunk checksum, the largest upload.
    Discover,
    /// Learn the server's offset (creating the upload when there is none) and bring the hash
    /// state to it, proving the part already uploaded unchanged.
    Sync,
    /// Send the next chunk.
    Send,
    /// The server holds every byte already: compare its digest with ours.
    Verify,
    /// On the server, verified.
    Done(Verified),
}

impl Phase {
    /// Where to go on after a failed phase.
    fn after_failure(&self) -> Phase {
        match self {
            Phase::Discover => Phase::Discover,
            _ => Phase::Sync,
        }
    }
}

/// The end of the last chunk or of [`Phase::Verify`]: the whole file's SHA-256 (hex) and the
/// name the server published it as.
pub(super) struct Verified {
    pub(super) sha256: String,
    pub(super) published_as: Option<String>,
}

impl<D: Destination> Session<D> {
    pub(super) async fn run(
        &mut self,
        opts: &SendOptions,
        name: &str,
        events: &(dyn Fn(Event) + Send + Sync),
        started: Instant,
    ) -> Result<Summary, SendError> {
        let size = self.identity.size;
        self.store
            .set_state(self.row.id, TransferState::Running, None)
            .await?;

        let mut failing = Failing::new(opts.max_retries, opts.give_up_after);
        let mut announced = false;
        let mut phase = Phase::Discover;
        let verified = loop {
            let on_failure = phase.after_failure();
            let next = match phase {
                Phase::Done(verified) => break verified,
                Phase::Discover => self.discover(events).await.map(|()| Phase::Sync),
                Phase::Sync => self.sync(name, events).await.map(|offset| {
                    if !announced {
                        events(Event::Started {
                            size,
                            offset,
                            upload_url: self.row.upload_url.clone().unwrap_or_default(),
                            resumed: offset > 0,
                        });
                        announced = true;
                    }
                    self.meter.restart(Instant::now(), offset);
                    if offset == size {
                        Phase::Verify
                    } else {
                        Phase::Send
                    }
                }),
                Phase::Send => self.send_chunk().await.map(|last| {
                    // A chunk went through: the run of failures is over.
                    failing.clear();
                    if !self.upto_given_up() {
                        self.upto_rejected = 0;
                    }
                    self.report_progress(events);
                    last.map_or(Phase::Send, Phase::Done)
                }),
                Phase::Verify => self.verify_complete().map(Phase::Done),
            };
            phase = match next {
                Ok(next) => next,
                Err(StepError::Stop(e)) => return Err(e),
                Err(StepError::Recheck) => Phase::Sync,
                Err(StepError::Net(e)) => {
                    if matches!(e, ClientError::ChecksumMismatch) && self.checksum_rejected() {
                        events(Event::Notice(format!(
                            "the server rejected {UPTO_REJECTIONS} chunks in a row checked with \
                             sha256-upto (a digest of the upload from its first byte): either \
                             every one was damaged on the way, or the server's copy of the \
                             bytes before offset {} is not this file's; checking chunks with \
                             crc32 from here, and the whole file's SHA-256 decides at the end",
                            self.offset()
                        )));
                    }
                    let (attempt, delay) = match failing.decide(&e) {
                        Decision::Stop => return Err(SendError::Server(e)),
                        Decision::GiveUp { attempts } => {
                            return Err(SendError::GaveUp { attempts, error: e });
                        }
                        Decision::Retry { attempt, delay } => (attempt, delay),
                    };
                    // Debug only: the caller renders the Retry event, folded (crate::outage).
                    tracing::debug!(attempt, ?delay, "{e}");
                    events(Event::Retry {
                        attempt,
                        delay,
                        error: e.to_string(),
                    });
                    let msg = e.to_string();
                    let _ = (self.store)
                        .set_state(self.row.id, TransferState::Running, Some(&msg))
                        .await;
                    self.destination.disconnect();
                    tokio::time::sleep(delay).await;
                    // Our hash state is kept and reused when the server's offset agrees.
                    on_failure
                }
            };
        };
        let sha256 = self.target_sha256.clone().unwrap_or(verified.sha256);
        self.store.finish(self.row.id, &sha256).await?;
        if self.confirmed_here > 0 && self.sending_time > Duration::ZERO {
            let sample = LinkSample {
                host: self.destination.host().to_string(),
                at: chrono::Utc::now(),
                bytes: self.confirmed_here,
                seconds: self.sending_time.as_secs_f64(),
                limit_bps: self.throttled_to,
            };
            self.store.add_link_sample(sample).await?;
        }
        let summary = Summary {
            sha256,
            size: self.file_size,
            bytes_sent: self.wire.sent.load(Ordering::Relaxed),
            resent_bytes: self.wire.resent.load(Ordering::Relaxed),
            published_as: verified.published_as,
            upload_url: self.row.upload_url.clone().unwrap_or_default(),
            seconds: started.elapsed().as_secs_f64(),
        };
        events(Event::Done(summary.clone()));
        Ok(summary)
    }
}

impl<D: Destination> Session<D> {
    pub(super) fn offset(&self) -> u64 {
        self.pos.as_ref().map_or(0, |p| p.offset)
    }

    /// Tells the caller the confirmed offset, the rate and what it means for the finish.
    fn report_progress(&self, events: &(dyn Fn(Event) + Send + Sync)) {
        let (offset, size, rate) = (self.offset(), self.identity.size, self.rate_bps);
        let eta = (rate > 0.0).then(|| (size - offset) as f64 * 8.0 / rate);
        events(Event::Progress {
            offset,
            size,
            rate_bps: rate,
            eta_seconds: eta,
        });
    }

    /// The next chunk's size: given, or following the rate the throttle allows now, else the
    /// confirmed rate ([`Chunking::next`]).
    pub(super) fn chunk_target(&self) -> u64 {
        self.chunk_target_after(self.last_chunk)
    }

    /// [`Self::chunk_target`] once a chunk of `last` bytes is acknowledged: what the read-ahead
    /// of the next chunk must guess, or it is hashed twice while the size ramps up.
    pub(super) fn chunk_target_after(&self, last: u64) -> u64 {
        let confirmed = (self.rate_bps > 0.0)
            .then(|| Rate::from_bits_per_second(self.rate_bps).ok())
            .flatten();
        self.chunking.next(self.throttle.rate(), confirmed, last)
    }

    pub(super) fn upload_url(&self) -> Result<Url, StepError> {
        let u = self.row.upload_url.as_deref().unwrap_or_default();
        Url::parse(u).map_err(|e| {
            StepError::Net(ClientError::Protocol(format!(
                "stored upload URL \"{u}\": {e}"
            )))
        })
    }

    /// Stats the source and fails if it is not the file the upload began with. When only its
    /// change time moved, adopts it and asks for the uploaded part to be proved again
    /// ([`StepError::Recheck`]): a chmod must not end a transfer, an edit must not slip by.
    pub(super) async fn check_identity(&mut self) -> Result<(), StepError> {
        self.check_delta_source().await?;
        let path = self.path.clone();
        let meta = blocking(move || std::fs::metadata(&path))
            .await
            .map_err(|e| SendError::SourceUnreadable {
                path: self.path.clone(),
                source: e,
            })?;
        let now = Identity::of(&meta);
        match self.identity.difference(&now) {
            None => Ok(()),
            Some(_) if self.identity.same_but_ctime(&now) => {
                tracing::info!(path = %self.path.display(), "the source's change time moved; \
                               proving the uploaded part by content again");
                self.identity = now;
                // Forget the hash state and the read-ahead: both came from reads before the
                // change. The row keeps the digest of the acknowledged prefix, which
                // `reconcile` checks against the file as it is now.
                self.pos = None;
                self.read_ahead.clear();
                Err(StepError::Recheck)
            }
            Some(what) => Err(StepError::Stop(SendError::SourceChanged {
                path: self.path.clone(),
                what,
            })),
        }
    }

    /// For a recipe: the file it was made from must still be that file, or the rest of the
    /// recipe is not sent (the server never has all of it, and publishes nothing). Only its
    /// change time moving (a chmod) is no reason to stop: the end of the transfer proves the
    /// file by content then (`send::delta`).
    async fn check_delta_source(&self) -> Result<(), StepError> {
        let Some((path, identity)) = self.delta_source.clone() else {
            return Ok(());
        };
        let stat_path = path.clone();
        let meta = blocking(move || std::fs::metadata(&stat_path))
            .await
            .map_err(|e| SendError::SourceUnreadable {
                path: path.clone(),
                source: e,
            })?;
        let now = Identity::of(&meta);
        match identity.difference(&now) {
            Some(what) if !identity.same_but_ctime(&now) => {
                Err(StepError::Stop(SendError::SourceChanged {
                    path,
                    what: format!("{what} while its delta was being sent"),
                }))
            }
            _ => Ok(()),
        }
    }

    /// Counts a chunk the server rejected for its checksum; `true` when that makes this
    /// session give sha256-upto up. A sha256-upto digest covers the upload from its first
    /// byte, so unlike a body checksum it also fails, every time, when the server holds other
    /// bytes before the chunk than the file does (a file changed and changed back, a damaged
    /// copy on the server): retrying it would never end. Body checksums pass then, and the
    /// whole file's digest fails at the end, as it would have without sha256-upto.
    pub(super) fn checksum_rejected(&mut self) -> bool {
        if self.checksum != Some(Algorithm::Sha256Upto) {
            return false;
        }
        self.upto_rejected += 1;
        if !self.upto_given_up() {
            return false;
        }
        // A server that offers sha256-upto offers crc32 too (see `Algorithm::Sha256Upto`).
        self.checksum = Some(Algorithm::Crc32);
        true
    }

    fn upto_given_up(&self) -> bool {
        self.upto_rejected >= UPTO_REJECTIONS
    }

    /// Choose the chunk checksum, and refuse early what the server cannot take.
    async fn discover(&mut self, events: &(dyn Fn(Event) + Send + Sync)) -> Result<(), StepError> {
        let caps = self.destination.discover().await?;
        self.checksum = match caps.checksum {
            Some(Algorithm::Sha256Upto) if self.upto_given_up() => Some(Algorithm::Crc32),
            offered => offered,
        };
        self.piece_floor = caps.piece_floor;
        if self.checksum.is_none() {
            events(Event::Notice(
                "the server does not offer the tus checksum extension: chunks are not checked \
                 on the way (each TCP segment still is, and the whole file is when the server \
                 verifies Repr-Digest)"
                    .into(),
            ));
        }
        if let Some(max) = caps.max_size
            && self.identity.size > max
        {
            return Err(StepError::Net(ClientError::TooLarge(format!(
                "the file has {} bytes, the server accepts at most {max}",
                self.identity.size
            ))));
        }
        Ok(())
    }

    /// Learns the server's offset (creating the upload when there is none) and brings the
    /// local hash state to it. Returns the offset.
    async fn sync(
        &mut self,
        name: &str,
        events: &(dyn Fn(Event) + Send + Sync),
    ) -> Result<u64, StepError> {
        let size = self.identity.size;
        loop {
            if self.row.upload_url.is_none() {
                let url = match &self.delta {
                    Some(base) => self.destination.create_delta(size, name, base).await?,
                    None => self.destination.create(size, name).await?,
                };
                self.url_answered = false;
                (self.store)
                    .set_upload_url(self.row.id, Some(url.as_str()))
                    .await?;
                self.row.upload_url = Some(url.to_string());
                self.follow_parts(&url);
                self.row.offset = 0;
                self.row.prefix_sha256 = None;
                self.pos = Some(Position {
                    offset: 0,
                    hasher: Sha256::new(),
                });
                // An empty file is complete once created (the server publishes it then):
                // ask, as after a resume, for its digest and the name it was published under.
                if size > 0 {
                    return Ok(0);
                }
                continue;
            }
            let url = self.upload_url()?;
            self.follow_parts(&url);
            let info = match self.destination.offset(&url).await {
                Ok(info) => {
                    self.url_answered = true;
                    info
                }
                Err(ClientError::Gone(status)) => {
                    // Our server also answers 410 for an upload its whole-file check refused
                    // (nothing published); sending it again from the file is the cure then too.
                    events(Event::Notice(format!(
                        "the server no longer has the earlier upload ({status}: expired, \
                         deleted, or refused by its whole-file check); starting over"
                    )));
                    self.forget_upload().await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if info.length.is_some_and(|l| l != size) || info.offset > size {
                events(Event::Notice(format!(
                    "the server's upload {url} is for {} bytes, not {size}; starting over",
                    info.length.unwrap_or(info.offset)
                )));
                self.forget_upload().await?;
                continue;
            }
            self.server_sha256 = info.sha256;
            self.published_as = info.published_as;
            self.reconcile(info.offset).await?;
            return Ok(info.offset);
        }
    }

    /// An upload cut in parts of one size (S3) is sent one whole part per chunk.
    fn follow_parts(&mut self, url: &Url) {
        if let Some(part) = self.destination.part_size(url) {
            self.chunking = Chunking::Parts(part);
        }
    }

    async fn forget_upload(&mut self) -> Result<(), StepError> {
        self.store.set_upload_url(self.row.id, None).await?;
        self.row.upload_url = None;
        self.pos = None;
        Ok(())
    }

    /// Brings the hash state to the server's offset `server`, proving on the way that the
    /// part already uploaded is still what the file holds.
    async fn reconcile(&mut self, server: u64) -> Result<(), StepError> {
        self.check_identity().await?;
        let path = self.path.clone();
        let unreadable = |e: std::io::Error| {
            StepError::Stop(SendError::SourceUnreadable {
                path: self.path.clone(),
                source: e,
            })
        };
        match self.pos.take() {
            Some(p) if p.offset == server => self.pos = Some(p),
            Some(mut p) if p.offset < server => {
                // The server has more than we saw confirmed (its answer was lost): those
                // bytes came from this file, hash them on.
                let from = p.offset;
                p.hasher = blocking(move || {
                    let mut h = p.hasher;
                    read_range(&path, from, server - from, |b| h.update(b)).map(|()| h)
                })
                .await
                .map_err(unreadable)?;
                p.offset = server;
                self.pos = Some(p);
            }
            _ => {
                // First contact in this process, or the server is behind us: hash the prefix
                // from the start, checking the digest we stored at our own offset.
                let stored = self.row.offset.min(self.identity.size);
                let stored_digest = self.row.prefix_sha256.clone();
                let (at_server, at_stored) = blocking(move || {
                    let mut h = Sha256::new();
                    let (lo, hi) = (server.min(stored), server.max(stored));
                    read_range(&path, 0, lo, |b| h.update(b))?;
                    let at_lo = h.clone();
                    read_range(&path, lo, hi - lo, |b| h.update(b))?;
                    let (at_server, at_stored) = if server <= stored {
                        (at_lo, h)
                    } else {
                        (h, at_lo)
                    };
                    Ok::<_, std::io::Error>((at_server, hex::encode(at_stored.finalize())))
                })
                .await
                .map_err(unreadable)?;
                if stored_digest.is_some_and(|d| d != at_stored) {
                    return Err(StepError::Stop(SendError::SourceChanged {
                        path: self.path.clone(),
                        what: format!(
                            "the content of its first {stored} bytes, already uploaded, is \
                             different now (its size and modification time are the same)"
                        ),
                    }));
                }
                self.pos = Some(Position {
                    offset: server,
                    hasher: at_server,
                });
            }
        }
        Ok(())
    }

    /// The server already has every byte: compare its digest with ours.
    fn verify_complete(&self) -> Result<Verified, StepError> {
        let ours: [u8; 32] = self
            .pos
            .as_ref()
            .map(|p| p.hasher.clone().finalize().into())
            .unwrap_or_else(|| Sha256::digest(b"").into());
        if let Some(theirs) = self.server_sha256
            && theirs != ours
        {
            return Err(StepError::Net(digest_mismatch(
                &theirs,
                &ours,
                self.published_as.as_deref(),
            )));
        }
        Ok(Verified {
            sha256: hex::encode(ours),
            published_as: self.published_as.clone(),
        })
    }
}

/// `--restart`: drops the earlier upload on the server (best effort) and in the database.
pub(super) async fn restart<D: Destination>(
    destination: &mut D,
    store: &AsyncStore,
    row: &mut Transfer,
    identity: Identity,
    events: &(dyn Fn(Event) + Send + Sync),
) -> Result<(), SendError> {
    if let Some(u) = row.upload_url.as_deref().and_then(|u| Url::parse(u).ok())
        && let Err(e) = destination.delete(&u).await
    {
        events(Event::Notice(format!(
            "could not delete the earlier upload on the server ({e}); it will expire there"
        )));
    }
    *row = store
        .reset_transfer(row.id, identity.size, identity.mtime_ns)
        .await?;
    Ok(())
}

/// The whole file's SHA-256 on the server is not the file's. Our server then publishes nothing;
/// a server that ignores `Repr-Digest` may have published it all the same, and the user must
/// hear that a wrong copy sits under that name rather than "nothing was published".
pub(super) fn digest_mismatch(
    theirs: &[u8; 32],
    ours: &[u8; 32],
    published_as: Option<&str>,
) -> ClientError {
    let published = match published_as {
        None => String::new(),
        Some(name) => format!(
            "; yet the server published it as {name} (it does not check the whole-file \
             digest): that copy is not this file, delete it on the server"
        ),
    };
    ClientError::Verification(format!(
        "the server holds SHA-256 {}, the file has {}{published}",
        hex::encode(theirs),
        hex::encode(ours)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_says_whether_a_wrong_copy_was_published() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let quiet = digest_mismatch(&a, &b, None).to_string();
        assert!(
            quiet.contains(&hex::encode(a)) && quiet.contains(&hex::encode(b)),
            "{quiet}"
        );
        assert!(!quiet.contains("published"), "{quiet}");
        let loud = digest_mismatch(&a, &b, Some("image.iso")).to_string();
        assert!(loud.contains("published it as image.iso"), "{loud}");
        assert!(loud.contains("delete it"), "{loud}");
    }
}
