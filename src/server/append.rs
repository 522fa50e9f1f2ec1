//! Receiving bytes: streaming a PATCH (or creation-with-upload) body into the store, then
//! committing or discarding it, and completing the upload when the last byte is in.
//!
//! Memory stays flat: the request task reads a body frame by frame and gathers the frames in
//! batches of up to 256 KiB (or 50 ms, for a slow upload), each hashed and written by a job on
//! the blocking pool while the next batch arrives: never a body whole, and receiving and
//! hashing run on two cores. Each frame read has the idle timeout, so a client that stops sending is cut off
//! while a slow one that keeps sending small frames is not. The running SHA-256 of the whole
//! upload is cloned at the start and only stored back on commit, so a discarded body leaves no
//! trace in it.
//!
//! How a body ends decides what is kept:
//! - complete, checksum matches (or none): commit; a `sha256-upto` checksum is the running
//!   SHA-256 after the body, so it costs no pass of its own;
//! - complete, checksum differs: discard, 460;
//! - interrupted (client gone, idle timeout, takeover): with an `Upload-Checksum` the partial
//!   body cannot be verified and is discarded; without one what arrived is committed, as tus
//!   recommends;
//! - past the upload length (or the maximum size for a deferred length): discard, 413.

use super::app::App;
use super::error::{ApiError, Interruption};
use super::names::{Id, safe_name};
use super::running_sha::RunningSha;
use super::store::{Info, Part, State, now_ms};
use super::uploads::{Held, blocking};
use crate::protocol::{Algorithm, Checksum, ChecksumHasher, Metadata, meta};
use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;

/// What a request says about its body, beyond the offset checked by the caller.
#[derive(Debug, Default)]
pub(crate) struct BodyHeaders {
    pub checksum: Option<Checksum>,
    /// `Repr-Digest`: the whole file's SHA-256, recorded for the upload before the body is read
    /// (see [`declare_digest`]) and checked when the upload completes.
    pub repr_digest: Option<[u8; 32]>,
    pub content_length: Option<u64>,
}

/// A finished upload: where it went and what it was.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub name: String,
    pub sha256: [u8; 32],
}

impl Published {
    pub fn of(info: &Info) -> Option<Published> {
        match &info.state {
            State::Published { name, sha256 } => Some(Published {
                name: name.clone(),
                sha256: crate::protocol::parse_hex_sha256(sha256)?,
            }),
            _ => None,
        }
    }
}

/// Appends a body at the upload's committed offset. Returns the upload's publication when this
/// body completed it.
pub(crate) async fn append(
    app: &App,
    held: &mut Held,
    mut body: Body,
    headers: BodyHeaders,
) -> Result<Option<Published>, ApiError> {
    if let Some(digest) = headers.repr_digest {
        declare_digest(app, held.upload(), &digest).await?;
    }
    let upload = held.upload();
    let id = upload.id.clone();
    let start = upload.info.offset;
    let limit = upload.info.length.unwrap_or(app.max_size);
    // A deferred-length upload may already hold more than a --max-size lowered since.
    let room = limit
        .checked_sub(start)
        .ok_or_else(|| too_large(start, headers.content_length.unwrap_or(0), limit))?;
    if let Some(n) = headers.content_length
        && n > room
    {
        return Err(too_large(start, n, limit));
    }
    let sha = match &upload.sha {
        Some(sha) => sha.clone(),
        None => {
            // Kept at once, not only on commit: hashing a multi-GB part file can outlast the
            // client's patience, and a discarded body must not make the next one hash again.
            let sha = rebuild_sha(app, &id, &upload.info).await?;
            held.upload().sha = Some(sha.clone());
            sha
        }
    };
    // A body checksum is computed beside the write; sha256-upto is the running SHA-256's.
    let checksum = (headers.checksum.as_ref())
        .map(|c| c.algorithm)
        .filter(|a| !a.covers_upload())
        .map(Algorithm::hasher);
    let store = app.uploads.store().clone();
    let open_id = id.clone();
    let part = blocking(move || store.open_part(&open_id, start)).await?;
    // Hashing and writing run on their own thread while this task receives the next frames:
    // one upload is no longer bound to one core (SHA-256 alone is half the server's work).
    let mut writer = Writer::spawn(part, sha, checksum);

    let mut received: u64 = 0;
    let idle = app.config.idle_timeout;
    let stop = loop {
        let frame = tokio::select! {
            biased;
            _ = held.takeover.changed() => break Some(Interruption::Superseded),
            frame = tokio::time::timeout(idle, body.frame()) => frame,
        };
        let data = match frame {
            Err(_) => break Some(Interruption::Idle),
            Ok(None) => break None,
            Ok(Some(Err(e))) => {
                tracing::debug!(%id, error = %e, "body broke off");
                break Some(Interruption::Broken);
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
        };
        if data.len() as u64 > room - received {
            let written = writer.finish().await;
            discard(written.part).await?;
            return Err(too_large(start, received + data.len() as u64, limit));
        }
        received += data.len() as u64;
        if !writer.push(data).await {
            // The writer stopped on an error (a full disk): it is in the outcome below.
            break None;
        }
    };
    let Written {
        part,
        sha,
        checksum,
        error,
    } = writer.finish().await;
    if let Some(e) = error {
        discard(part).await?;
        return Err(ApiError::Io(e));
    }

    if let Some(why) = stop {
        tracing::info!(%id, ?why, received, "body interrupted");
        let offset = if headers.checksum.is_some() {
            // Part of a checksummed body cannot be verified: keeping it would let
            // corrupted bytes in.
            discard(part).await?;
            start
        } else {
            commit(app, held, part, received, sha).await?
        };
        // Every byte is in, only the body's end is missing (a chunked body cut off after its
        // last data): finish now, against the declared digest, rather than leave a complete
        // upload for whichever request comes next.
        if held.upload().info.is_complete() {
            return complete(app, held).await.map(Some);
        }
        return Err(ApiError::Interrupted { why, offset });
    }
    if let Some(expected) = &headers.checksum
        && body_checksum(checksum, &sha) != *expected
    {
        discard(part).await?;
        return Err(ApiError::ChecksumMismatch { offset: start });
    }
    commit(app, held, part, received, sha).await?;
    if held.upload().info.is_complete() {
        complete(app, held).await.map(Some)
    } else {
        Ok(None)
    }
}

/// The checksum of a whole body: its hasher's, or without one (sha256-upto) the running SHA-256
/// of the upload after it (`sha`).
fn body_checksum(hasher: Option<ChecksumHasher>, sha: &RunningSha) -> Checksum {
    hasher.map_or_else(
        || Checksum::sha256_upto(sha.clone().finalize()),
        ChecksumHasher::finish,
    )
}

/// Records a whole-file SHA-256 declared by a request (`Repr-Digest`), on disk before any byte
/// of that request is kept: whatever happens to the request afterwards (a body cut off after
/// its last byte, a crash before the check), completing the upload checks this digest. An
/// upload has one declared digest; a request that declares another is refused (400) before
/// its body is read, since no file can match both.
pub(crate) async fn declare_digest(
    app: &App,
    upload: &mut super::uploads::Upload,
    digest: &[u8; 32],
) -> Result<(), ApiError> {
    let digest = hex::encode(digest);
    match &upload.info.expected_sha256 {
        Some(declared) if *declared == digest => Ok(()),
        Some(declared) => Err(ApiError::BadRequest(format!(
            "Repr-Digest declares SHA-256 {digest}, but this upload was declared with {declared}; \
             a file cannot match both (start a new upload for another file)"
        ))),
        None => {
            upload.info.expected_sha256 = Some(digest);
            save(app, &upload.id, &upload.info).await
        }
    }
}

fn too_large(start: u64, body: u64, limit: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "{body} bytes at offset {start} would go past the upload's end at {limit} bytes; nothing was kept"
    ))
}

/// Makes the received bytes durable, then records the new offset: never the other way round,
/// so a committed offset is never ahead of what survives a crash.
async fn commit(
    app: &App,
    held: &mut Held,
    part: Box<dyn Part>,
    received: u64,
    sha: RunningSha,
) -> Result<u64, ApiError> {
    blocking(move || part.commit()).await?;
    let upload = held.upload();
    upload.info.offset += received;
    upload.info.last_activity_ms = now_ms();
    upload.info.running_sha256 = Some(sha.save());
    upload.sha = Some(sha);
    save(app, &upload.id, &upload.info).await?;
    tracing::debug!(id = %upload.id, received, offset = upload.info.offset, "committed");
    Ok(upload.info.offset)
}

pub(crate) async fn save(app: &App, id: &Id, info: &Info) -> Result<(), ApiError> {
    let store = app.uploads.store().clone();
    let (id, info) = (id.clone(), info.clone());
    blocking(move || store.save_info(&info, &id)).await
}

/// The SHA-256 state of what an upload has received, for one first touched since a restart
/// (or, on a shared store, since this request began): the state saved in its record, else
/// read back once from the store.
async fn rebuild_sha(app: &App, id: &Id, info: &Info) -> Result<RunningSha, ApiError> {
    if let Some(sha) = info.resume_sha() {
        return Ok(sha);
    }
    if info.offset == 0 {
        return Ok(RunningSha::new());
    }
    let len = info.offset;
    tracing::info!(%id, bytes = len, "rebuilding the running SHA-256 from the part file");
    let store = app.uploads.store().clone();
    let id = id.clone();
    blocking(move || store.hash_part(&id, len)).await
}

/// Finishes an upload that has all its bytes: compares its SHA-256 with the declared one (see
/// [`declare_digest`]), then publishes it or, on a mismatch, deletes the data and remembers the
/// failure (HEAD: 410). Only an upload for which no digest was ever declared is published
/// unverified.
pub(crate) async fn complete(app: &App, held: &mut Held) -> Result<Published, ApiError> {
    // Per-token directories: the owner's; an upload without one (older than the flag) is
    // never acquired then, so DIR is only a fallback. Checked first: a refusal here must not
    // cost the running SHA-256 (rebuilding it reads the whole part file again).
    let subdir = held
        .upload()
        .info
        .owner
        .clone()
        .filter(|_| app.config.per_token_dirs);
    if let Some(subdir) = &subdir {
        super::handlers::token_dir_usable(app, subdir).await?;
    }
    let upload = held.upload();
    let id = upload.id.clone();
    let sha = match upload.sha.take() {
        Some(sha) => sha,
        None => rebuild_sha(app, &id, &upload.info).await?,
    };
    let received: [u8; 32] = sha.finalize();
    let upload = held.upload();
    let declared = match upload.info.expected_sha256.as_deref() {
        None => None,
        // Written by `create` or `declare_digest` from 32 parsed bytes: unreadable only if
        // damaged, and then nothing can be verified, so nothing is published.
        Some(hex) => Some(crate::protocol::parse_hex_sha256(hex).ok_or_else(|| {
            ApiError::Internal(format!(
                "the declared SHA-256 {hex:?} in the info file is damaged"
            ))
        })?),
    };
    if let Some(wrong) = declared.filter(|d| *d != received) {
        let (declared, received) = (hex::encode(wrong), hex::encode(received));
        tracing::warn!(%id, %declared, %received, "whole-file SHA-256 mismatch; deleting the data");
        upload.info.state = State::Failed {
            declared: declared.clone(),
            received: received.clone(),
        };
        save(app, &id, &upload.info).await?;
        let store = app.uploads.store().clone();
        let part_id = id.clone();
        blocking(move || store.remove_part(&part_id)).await?;
        return Err(ApiError::DigestMismatch { declared, received });
    }
    if declared.is_none() {
        tracing::warn!(%id, "no SHA-256 declared; publishing unverified");
    }

    let metadata = Metadata::parse(&upload.info.metadata).unwrap_or_default();
    let wanted = metadata
        .0
        .get(meta::FILENAME)
        .or_else(|| metadata.0.get("name"));
    let wanted = safe_name(wanted.map(Vec::as_slice), &id);
    let length = upload.info.offset;
    // A delta recipe (issue 13): what is published is the file it builds, verified against
    // the recipe's SHA-256; the upload's own digest (the recipe's, checked above) is what
    // HEAD and the PATCH answer with, as for any upload.
    let name = match super::delta::base_in(&metadata)? {
        Some(base) => {
            match super::delta::assemble_and_publish(app, &id, subdir, base, wanted).await {
                Ok((name, built)) => {
                    tracing::info!(%id, %name, bytes = built.len, sha256 = %hex::encode(built.sha256),
                                   recipe_bytes = length, "assembled from the base");
                    name
                }
                Err(ApiError::DeltaRefused(why)) => {
                    tracing::warn!(%id, %why, "delta upload refused; removing it");
                    upload.info.state = State::Refused {
                        code: why.code().to_string(),
                        why: why.to_string(),
                    };
                    save(app, &id, &upload.info).await?;
                    let store = app.uploads.store().clone();
                    let part_id = id.clone();
                    blocking(move || store.remove_part(&part_id)).await?;
                    return Err(ApiError::DeltaRefused(why));
                }
                Err(e) => return Err(e),
            }
        }
        None => {
            let store = app.uploads.store().clone();
            let publish_id = id.clone();
            blocking(move || {
                store.publish(&publish_id, subdir.as_deref(), &wanted, length, &received)
            })
            .await?
        }
    };
    upload.info.state = State::Published {
        name: name.clone(),
        sha256: hex::encode(received),
    };
    upload.info.last_activity_ms = now_ms();
    save(app, &id, &upload.info).await?;
    // The name is recorded: the part file is now only a second link to the published file.
    let store = app.uploads.store().clone();
    let part_id = id.clone();
    if let Err(e) = blocking(move || store.remove_part(&part_id)).await {
        tracing::error!(%id, error = %e, "cannot remove the published part file");
    }
    tracing::info!(%id, %name, bytes = length, verified = declared.is_some(), "published");
    Ok(Published {
        name,
        sha256: received,
    })
}

/// Finishes what a crash interrupted: an upload with all its bytes committed but neither
/// published nor failed. A digest mismatch or a refused delta is recorded in the upload's state, not returned.
pub(crate) async fn settle(app: &App, held: &mut Held) -> Result<(), ApiError> {
    let info = &held.upload().info;
    if info.state != State::Partial || !info.is_complete() {
        return Ok(());
    }
    match complete(app, held).await {
        Ok(_) | Err(ApiError::DigestMismatch { .. } | ApiError::DeltaRefused(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Forgets a body: the upload stays at its committed offset.
async fn discard(part: Box<dyn Part>) -> Result<(), ApiError> {
    blocking(move || part.discard()).await
}

/// What hashing and writing leave: the part (to commit or discard), the hashes of everything
/// handed over, and the write error that stopped it, if any.
struct Written {
    part: Box<dyn Part>,
    sha: RunningSha,
    checksum: Option<ChecksumHasher>,
    error: Option<std::io::Error>,
}

/// Bytes gathered before they are hashed and written: one blocking-pool job per batch.
const BATCH: usize = 256 * 1024;
/// A batch older than this is handed over however small, so a slow upload holds only what
/// arrived in the last moment, not a quarter megabyte.
const BATCH_AGE: std::time::Duration = std::time::Duration::from_millis(50);

/// Hashes and writes a body's frames in order, one batch at a time on the blocking pool, while
/// the request task receives the next batch. Hashing and writing a batch are two jobs that run
/// side by side: each is a chain of its own (the hashes must see the bytes in order, and so
/// must the part), and one after the other they were one upload's limit (the SHA-256 alone is
/// about half the server's work). No thread is held by an upload between batches (500 slow
/// uploads do not need 500 threads). Frames are handed to the store's [`Part`] as they came,
/// never copied into a staging buffer.
struct Writer {
    /// Here between jobs; inside the jobs while they run.
    idle: Option<(RunningSha, Appending)>,
    jobs: Option<(
        tokio::task::JoinHandle<RunningSha>,
        tokio::task::JoinHandle<Appending>,
    )>,
    batch: Vec<Bytes>,
    batch_len: usize,
    batch_since: Option<std::time::Instant>,
}

/// The writing job's state, with the body's checksum: the upload's SHA-256 is the longer
/// chain (a crc32 takes a fraction of its time), so the checksum goes with the write.
struct Appending {
    part: Box<dyn Part>,
    checksum: Option<ChecksumHasher>,
    error: Option<std::io::Error>,
}

impl Writer {
    fn spawn(part: Box<dyn Part>, sha: RunningSha, checksum: Option<ChecksumHasher>) -> Writer {
        Writer {
            idle: Some((
                sha,
                Appending {
                    part,
                    checksum,
                    error: None,
                },
            )),
            jobs: None,
            batch: Vec::new(),
            batch_len: 0,
            batch_since: None,
        }
    }

    /// Takes a frame; `false` when writing stopped on an error (it is in [`Writer::finish`]'s
    /// outcome).
    async fn push(&mut self, data: Bytes) -> bool {
        self.batch_len += data.len();
        self.batch.push(data);
        let since = *self.batch_since.get_or_insert_with(std::time::Instant::now);
        if self.batch_len >= BATCH || since.elapsed() >= BATCH_AGE {
            return self.hand_over().await;
        }
        true
    }

    /// Waits for the previous batch's jobs.
    async fn settle(&mut self) -> (RunningSha, Appending) {
        match self.jobs.take() {
            Some((hashing, writing)) => (
                hashing.await.expect("body hasher panicked"),
                writing.await.expect("body writer panicked"),
            ),
            None => self
                .idle
                .take()
                .expect("the writer's state is idle or in jobs"),
        }
    }

    /// Waits for the previous batch's jobs, then starts the current batch's.
    async fn hand_over(&mut self) -> bool {
        let (mut sha, mut store) = self.settle().await;
        if store.error.is_some() {
            self.idle = Some((sha, store));
            return false;
        }
        let mut batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        self.batch_since = None;
        // The same frames for both jobs: a clone of a frame is a reference count.
        let for_hashing = batch.clone();
        let hashing = tokio::task::spawn_blocking(move || {
            for b in &for_hashing {
                sha.update(b);
            }
            sha
        });
        let writing = tokio::task::spawn_blocking(move || {
            if let Some(c) = store.checksum.as_mut() {
                for b in &batch {
                    c.update(b);
                }
            }
            if let Err(e) = store.part.append(&mut batch) {
                store.error = Some(e);
            }
            store
        });
        self.jobs = Some((hashing, writing));
        true
    }

    /// Waits until everything taken is hashed and written.
    async fn finish(mut self) -> Written {
        if !self.batch.is_empty() {
            self.hand_over().await;
        }
        let (sha, store) = self.settle().await;
        Written {
            part: store.part,
            sha,
            checksum: store.checksum,
            error: store.error,
        }
    }
}
