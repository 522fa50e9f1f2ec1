//! Receiving bytes: streaming a PATCH (or creation-with-upload) body into the part file, then
//! committing or discarding it, and completing the upload when the last byte is in.
//!
//! Memory stays flat: a body is read frame by frame into one buffer of [`WRITE_CHUNK`] bytes,
//! written with one large sequential write when full, never held whole. Each frame read has the
//! idle timeout, so a client that stops sending is cut off while a slow one that keeps sending
//! small frames is not. The running SHA-256 of the whole upload is cloned at the start and only
//! stored back on commit, so a discarded body leaves no trace in it.
//!
//! How a body ends decides what is kept:
//! - complete, checksum matches (or none): commit;
//! - complete, checksum differs: discard, 460;
//! - interrupted (client gone, idle timeout, takeover): with an `Upload-Checksum` the partial
//!   body cannot be verified and is discarded; without one what arrived is committed, as tus
//!   recommends;
//! - past the upload length (or the maximum size for a deferred length): discard, 413.

use super::App;
use super::error::{ApiError, Interruption};
use super::names::{Id, safe_name};
use super::storage::{Info, State, now_ms};
use super::uploads::{Held, blocking};
use crate::protocol::{Checksum, Metadata, meta};
use axum::body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;

/// Bytes gathered before one write: large sequential writes, one blocking-pool hop per MiB.
const WRITE_CHUNK: usize = 1 << 20;

/// What a request says about its body, beyond the offset checked by the caller.
#[derive(Debug, Default)]
pub(crate) struct BodyHeaders {
    pub checksum: Option<Checksum>,
    /// `Repr-Digest`: the whole file's SHA-256, checked if this body completes the upload.
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
    let upload = held.upload();
    let id = upload.id.clone();
    let start = upload.info.offset;
    let limit = upload
        .info
        .length
        .or(app.config.max_size)
        .unwrap_or(u64::MAX);
    let room = limit - start;
    if let Some(n) = headers.content_length
        && n > room
    {
        return Err(too_large(start, n, limit));
    }
    let mut sha = match &upload.sha {
        Some(sha) => sha.clone(),
        None => rebuild_sha(app, &id, start).await?,
    };
    let mut checksum = headers.checksum.as_ref().map(|c| c.algorithm.hasher());
    let store = app.uploads.store().clone();
    let open_id = id.clone();
    let file = blocking(move || store.open_part(&open_id, start)).await?;
    let mut sink = Sink {
        file: Some(file),
        buf: Vec::with_capacity(WRITE_CHUNK),
    };

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
            sink.discard(start).await?;
            return Err(too_large(start, received + data.len() as u64, limit));
        }
        received += data.len() as u64;
        sha.update(&data);
        if let Some(c) = &mut checksum {
            c.update(&data);
        }
        if let Err(e) = sink.push(&data).await {
            sink.discard(start).await?;
            return Err(e);
        }
    };

    if let Some(why) = stop {
        tracing::info!(%id, ?why, received, "body interrupted");
        let offset = if headers.checksum.is_some() {
            // Part of a checksummed body cannot be verified: keeping it would let
            // corrupted bytes in.
            sink.discard(start).await?;
            start
        } else {
            commit(app, held, sink, received, sha).await?
        };
        return Err(ApiError::Interrupted { why, offset });
    }
    if let (Some(expected), Some(hasher)) = (&headers.checksum, checksum)
        && hasher.finish() != *expected
    {
        sink.discard(start).await?;
        return Err(ApiError::ChecksumMismatch { offset: start });
    }
    commit(app, held, sink, received, sha).await?;
    if held.upload().info.is_complete() {
        complete(app, held, headers.repr_digest).await.map(Some)
    } else {
        if headers.repr_digest.is_some() {
            tracing::debug!(%id, "Repr-Digest on a PATCH that does not complete the upload: ignored");
        }
        Ok(None)
    }
}

fn too_large(start: u64, body: u64, limit: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "{body} bytes at offset {start} would go past the upload's end at {limit} bytes; nothing was kept"
    ))
}

/// Makes the received bytes durable, then records the new offset.
async fn commit(
    app: &App,
    held: &mut Held,
    sink: Sink,
    received: u64,
    sha: Sha256,
) -> Result<u64, ApiError> {
    sink.finish().await?;
    let upload = held.upload();
    upload.info.offset += received;
    upload.info.last_activity_ms = now_ms();
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

/// The SHA-256 state of what an upload has received, for one first touched since a restart:
/// read back once from the part file.
async fn rebuild_sha(app: &App, id: &Id, len: u64) -> Result<Sha256, ApiError> {
    tracing::info!(%id, bytes = len, "rebuilding the running SHA-256 from the part file");
    let store = app.uploads.store().clone();
    let id = id.clone();
    blocking(move || store.hash_part(&id, len)).await
}

/// Finishes an upload that has all its bytes: compares its SHA-256 with every declared one,
/// then publishes it or, on a mismatch, deletes the data and remembers the failure (HEAD: 410).
pub(crate) async fn complete(
    app: &App,
    held: &mut Held,
    repr_digest: Option<[u8; 32]>,
) -> Result<Published, ApiError> {
    let upload = held.upload();
    let id = upload.id.clone();
    let sha = match upload.sha.take() {
        Some(sha) => sha,
        None => rebuild_sha(app, &id, upload.info.offset).await?,
    };
    let received: [u8; 32] = sha.finalize().into();
    let upload = held.upload();
    let declared_in_metadata = upload
        .info
        .expected_sha256
        .as_deref()
        .and_then(crate::protocol::parse_hex_sha256);
    let declared: Vec<[u8; 32]> = [declared_in_metadata, repr_digest]
        .into_iter()
        .flatten()
        .collect();
    if let Some(wrong) = declared.iter().find(|d| **d != received) {
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
    if declared.is_empty() {
        tracing::warn!(%id, "no SHA-256 declared; publishing unverified");
    }

    let metadata = Metadata::parse(&upload.info.metadata).unwrap_or_default();
    let wanted = metadata
        .0
        .get(meta::FILENAME)
        .or_else(|| metadata.0.get("name"));
    let wanted = safe_name(wanted.map(Vec::as_slice), &id);
    let length = upload.info.offset;
    let store = app.uploads.store().clone();
    let publish_id = id.clone();
    let name = blocking(move || store.publish(&publish_id, &wanted, length, &received)).await?;
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
    tracing::info!(%id, %name, bytes = length, verified = !declared.is_empty(), "published");
    Ok(Published {
        name,
        sha256: received,
    })
}

/// Finishes what a crash interrupted: an upload with all its bytes committed but neither
/// published nor failed. A digest mismatch is recorded in the upload's state, not returned.
pub(crate) async fn settle(app: &App, held: &mut Held) -> Result<(), ApiError> {
    let info = &held.upload().info;
    if info.state != State::Partial || !info.is_complete() {
        return Ok(());
    }
    match complete(app, held, None).await {
        Ok(_) | Err(ApiError::DigestMismatch { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The part file and the bytes not yet written to it.
struct Sink {
    /// `None` only while a write is running on the blocking pool.
    file: Option<File>,
    buf: Vec<u8>,
}

impl Sink {
    async fn push(&mut self, data: &[u8]) -> Result<(), ApiError> {
        if self.buf.len() + data.len() > WRITE_CHUNK && !self.buf.is_empty() {
            self.flush().await?;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ApiError> {
        let mut file = self.take_file()?;
        let mut buf = std::mem::take(&mut self.buf);
        // The file comes back even when the write failed, so the caller can still cut it back.
        let (file, buf, written) = blocking(move || {
            let written = file.write_all(&buf);
            buf.clear();
            Ok((file, buf, written))
        })
        .await?;
        self.file = Some(file);
        self.buf = buf;
        written.map_err(ApiError::Io)
    }

    /// Writes what is left and makes it durable (fdatasync): the caller commits next.
    async fn finish(mut self) -> Result<(), ApiError> {
        if !self.buf.is_empty() {
            self.flush().await?;
        }
        let file = self.take_file()?;
        blocking(move || file.sync_data()).await
    }

    /// Cuts the part file back to the committed offset.
    async fn discard(&mut self, offset: u64) -> Result<(), ApiError> {
        self.buf.clear();
        let file = self.take_file()?;
        blocking(move || file.set_len(offset)).await
    }

    fn take_file(&mut self) -> Result<File, ApiError> {
        self.file
            .take()
            .ok_or_else(|| ApiError::Internal("part file used after a failed write".into()))
    }
}
