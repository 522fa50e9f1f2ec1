//! The upload engine behind `upload send FILE URL`: one file to one destination, resumable
//! across crashes, kills and dead links, verified end to end.
//!
//! How a byte is never lost nor sent as a mix of two versions:
//! - The server is the truth for what arrived: every (re)start and every failure ends in a
//!   HEAD, and sending continues from the server's offset, never from our record alone.
//! - The database is the truth for what was asked: after every acknowledged chunk it holds the
//!   upload URL, the confirmed offset and the SHA-256 of the source's first `offset` bytes, so
//!   a rerun finds the upload and proves the file's prefix is unchanged (an edit that restores
//!   the mtime is caught by content, not by stat).
//! - Each chunk is read twice: once to compute its `Upload-Checksum` (and advance the running
//!   whole-file SHA-256), once to send it. A change in between makes the server answer 460,
//!   and a change anywhere else changes the file's mtime or ctime, checked before every chunk
//!   and before the final one carries the whole file's digest (`Repr-Digest`).
//! - The last chunk is different: nothing comes after it to notice a change, and the server
//!   publishes as soon as its last byte arrives. So its last piece is held back until the file
//!   is proved to be the one that was hashed ([`source::prove_unchanged`], after the last byte
//!   was read): a change then aborts the request, the server never has every byte and
//!   publishes nothing (issue 11, item 3). A change in the instant after that proof is still
//!   seen after the server's answer, and reported as what it is: the version read was
//!   published.
//! - Only a chunk the server acknowledged advances the offset and the running hash.
//!
//! Reading streams through a bounded channel in pieces sized by the [`Throttle`], so memory is
//! a few pieces whatever the file size, and a throttled transfer sleeps between pieces.
//!
//! The engine is split by concern: [`source`] (the file's identity and reads), [`pipeline`]
//! (the two-pass chunk: hash ahead, then stream; [`read_ahead`] its first pass, ahead of
//! the wire), [`session`] (one transfer's phases),
//! [`retry`] (when to try again), [`metering`] (rates and bytes on the wire), [`destination`]
//! (the seam to where bytes go; [`tus`] the first kind, [`ssh`] tus over a child ssh),
//! [`delta`] (what a transfer sends: the file, or a recipe against a base the destination
//! holds, and the fall back to the file when the recipe is refused). This file holds the API
//! (options, events, errors) and [`send`], which sets a session up and tidies after it.

pub mod chunking;
mod delta;
mod destination;
mod metering;
mod pipeline;
mod read_ahead;
mod retry;
mod s3;
mod session;
mod source;
pub mod ssh;
mod tus;

pub use destination::check_url;
pub use ssh::SshOptions;

use crate::client::ClientError;
pub use crate::store::BaseChoice;
use crate::store::{
    AsyncStore, NewTransfer, Origin, Store, StoreError, Transfer, TransferState, lock_owner,
};
use crate::throttle::{Gate, Throttle};
use crate::units::Rate;
use chrono::{DateTime, Utc};
use chunking::Chunking;
pub use delta::remove_recipe;
use metering::{RateMeter, WireCount};
use session::Session;
use source::{Identity, open_source};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to send where, and how.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub file: PathBuf,
    pub url: String,
    /// The name on the server; the file's own name by default.
    pub name: Option<String>,
    /// Bytes per PATCH; by default they follow the rate the transfer is allowed (see
    /// [`chunking`]).
    pub chunk: Option<u64>,
    pub limit: Option<Rate>,
    pub token: Option<String>,
    /// Trust only the CA certificates in this PEM file for https, instead of the system's.
    pub ca: Option<PathBuf>,
    /// Consecutive failed attempts before giving up; `None` retries forever.
    pub max_retries: Option<u32>,
    /// Forget an earlier, unfinished upload of this file to this URL and start over.
    pub restart: bool,
    /// With no confirmed progress for this long, the connection is considered dead.
    pub stall_timeout: Duration,
    /// Give up when failing continuously for this long; `None` never gives up this way.
    pub give_up_after: Option<Duration>,
    /// Send this queued transfer (by id) instead of finding one by file and URL.
    pub transfer_id: Option<i64>,
    /// The scheduler's pause slots; always open for a lone `upload send`.
    pub gate: Gate,
    /// Which published file to send a delta against (`--base`, `--no-base`); by default one
    /// of the same name, when the server holds one.
    pub base: BaseChoice,
    /// How `ssh://` destinations run ssh.
    pub ssh: SshOptions,
}

impl SendOptions {
    pub fn new(file: impl Into<PathBuf>, url: impl Into<String>) -> Self {
        SendOptions {
            file: file.into(),
            url: url.into(),
            name: None,
            chunk: None,
            limit: None,
            token: None,
            ca: None,
            max_retries: None,
            restart: false,
            stall_timeout: Duration::from_secs(10),
            give_up_after: None,
            transfer_id: None,
            gate: Gate::always_open(),
            base: BaseChoice::SameName,
            ssh: SshOptions::default(),
        }
    }
}

/// What the engine tells its caller (the CLI prints these; the engine never does).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The upload is known on the server; `offset` bytes were already there.
    Started {
        size: u64,
        offset: u64,
        upload_url: String,
        resumed: bool,
    },
    /// Something the user should know that is not an error.
    Notice(String),
    /// The server confirmed `offset` bytes.
    Progress {
        offset: u64,
        size: u64,
        rate_bps: f64,
        eta_seconds: Option<f64>,
    },
    /// An attempt failed and the next one starts after `delay`.
    Retry {
        attempt: u32,
        delay: Duration,
        error: String,
    },
    Done(Summary),
}

/// The end of a successful transfer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub sha256: String,
    pub size: u64,
    /// Payload bytes this process put on the wire.
    pub bytes_sent: u64,
    /// Of those, bytes this process had sent before.
    pub resent_bytes: u64,
    pub published_as: Option<String>,
    pub upload_url: String,
    pub seconds: f64,
}

/// Why a transfer stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot read \"{}\": {source}", path.display())]
    SourceUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("\"{}\" does not exist", path.display())]
    SourceMissing { path: PathBuf },
    #[error("\"{}\" is not a regular file: give the file to upload, e.g. upload send image.iso http://server:8080/files/", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "\"{}\" changed since its upload began: {what}. Nothing mixed was published. \
         Rerun with --restart to upload the new version from the beginning",
        path.display()
    )]
    SourceChanged { path: PathBuf, what: String },
    /// The race that no hold-back can close: the file changed after its last byte was read
    /// and proved, while the server verified and published what was read.
    #[error(
        "\"{}\" changed just after its last byte was sent: {what}. The server verified and \
         published the version that was read{}, SHA-256 {sha256}, which is not the file as it \
         is now. Rerun with --restart to upload the new version",
        path.display(),
        published_as.as_deref().map(|n| format!(" as {n}")).unwrap_or_default()
    )]
    ChangedAfterPublished {
        path: PathBuf,
        what: String,
        published_as: Option<String>,
        sha256: String,
    },
    #[error(
        "this transfer is being sent by another upload process ({owner}); wait for it or stop it"
    )]
    Busy { owner: String },
    #[error("{0}")]
    Url(ClientError),
    /// The TLS trust roots cannot be loaded (a bad `--ca` file, no system roots).
    #[error("{0}")]
    Tls(crate::tls::TlsError),
    #[error(
        "{error} (gave up after {attempts} attempts; --max-retries and --give-up-after, or \
         give_up_after in the configuration file, set when)"
    )]
    GaveUp { attempts: u32, error: ClientError },
    #[error("{0}")]
    Server(ClientError),
    #[error("the state database: {0}")]
    Store(#[from] StoreError),
    /// An `s3://` destination that cannot be tried: its URL, credentials or TLS set-up.
    #[error("{0}")]
    S3(#[from] crate::s3::ConfigError),
    #[error("interrupted")]
    Interrupted,
}

/// Reads and stats of the source, off the runtime's threads (the store has its own hand-off,
/// [`AsyncStore`]).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// A task that ends with its handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a file. `events` receives progress; `throttle` is the process' shared limiter
/// (`Throttle::new(opts.limit)` for a lone transfer). When `shutdown` resolves the transfer
/// stops, is unlocked and goes back to the queue ([`SendError::Interrupted`]).
pub async fn send(
    store: Store,
    opts: SendOptions,
    throttle: Throttle,
    events: &(dyn Fn(Event) + Send + Sync),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Summary, SendError> {
    let destination = destination::for_url(&opts)?;
    send_to(destination, store, opts, throttle, events, shutdown).await
}

/// [`send`] to the destination its URL picked.
async fn send_to(
    mut destination: destination::Destinations,
    store: Store,
    opts: SendOptions,
    throttle: Throttle,
    events: &(dyn Fn(Event) + Send + Sync),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Summary, SendError> {
    let started = Instant::now();
    let store = AsyncStore::new(store);
    let (path, identity) = open_source(&opts.file)?;
    let name = opts.name.clone().unwrap_or_else(|| default_name(&path));
    let chunk = Chunking::from_flag(opts.chunk).planned(opts.limit);

    let mut row = find_or_create_row(&store, &opts, &path, identity, &name, chunk).await?;
    let (id, origin) = (row.id, row.origin);
    let owner = lock_owner();
    acquire_lock(&store, id, &owner).await?;
    // Aborted on every way out, including this future being dropped (a scheduler stopping it).
    // A lock taken over by another process (ours looked stale, e.g. this one was suspended)
    // ends this transfer: two senders would take the upload from each other forever.
    let (lost_tx, mut lost_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let heartbeat = {
        let (store, owner) = (store.clone(), owner.clone());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                match store.heartbeat(id, &owner).await {
                    Ok(()) => {}
                    Err(StoreError::LockLost { holder, .. }) => {
                        let _ = lost_tx.send(Some(holder.unwrap_or_else(|| "nobody".into())));
                        return;
                    }
                    Err(e) => tracing::warn!("lock heartbeat: {e}"),
                }
            }
        }))
    };
    let lock_lost = async move {
        loop {
            if lost_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if let Some(holder) = lost_rx.borrow().clone() {
                return holder;
            }
        }
    };

    let work = async {
        if opts.restart {
            session::restart(&mut destination, &store, &mut row, identity, events).await?;
            delta::forget_recipe(&store, id);
        }
        let payload = delta::prepare(
            &store,
            &mut row,
            &opts,
            &path,
            identity,
            &mut destination,
            events,
        )
        .await?;
        let is_delta = payload.delta.is_some();
        let mut t = session(
            &store,
            row,
            payload,
            destination,
            &throttle,
            &opts,
            (&path, identity),
        );
        let result = t.run(&opts, &name, events, started).await;
        match result {
            Err(SendError::Server(why @ ClientError::DeltaRefused { .. })) if is_delta => {
                let Session {
                    mut row,
                    destination,
                    ..
                } = t;
                delta::fall_back(&store, &mut row, identity, &why, events).await?;
                let full = delta::Payload::file(&path, identity);
                let mut t = session(
                    &store,
                    row,
                    full,
                    destination,
                    &throttle,
                    &opts,
                    (&path, identity),
                );
                t.run(&opts, &name, events, started).await
            }
            Ok(summary) if is_delta => {
                delta::forget_recipe(&store, id);
                // The recipe was a snapshot of the file, checked before every chunk; a change
                // after the last one is not in what was published, which the user must hear.
                // A moved change time alone is settled by content, as for a full upload.
                let digest = protocol_digest(&summary.sha256);
                let (p, sha) = (path.clone(), digest);
                match blocking(move || source::prove_unchanged(&p, identity, &sha)).await {
                    source::LastBytes::Changed(what) => Err(SendError::ChangedAfterPublished {
                        path: path.clone(),
                        what,
                        published_as: summary.published_as,
                        sha256: summary.sha256,
                    }),
                    _ => Ok(summary),
                }
            }
            other => other,
        }
    };
    let result = tokio::select! {
        r = work => r,
        () = shutdown => Err(SendError::Interrupted),
        holder = lock_lost => Err(SendError::Busy { owner: holder }),
    };
    drop(heartbeat);
    // Only releases the lock if it is still ours.
    let _ = store.unlock(id, &owner).await;
    let state = match &result {
        Ok(_) => None,
        // Progress is in the database. A queued transfer goes back to the queue; an
        // `upload send`'s is held until that command is rerun (or `upload queue resume`
        // hands it to the run): nobody asked `upload run` to send it.
        Err(SendError::Interrupted) if origin == Origin::Queue => Some(TransferState::Queued),
        Err(SendError::Interrupted) => Some(TransferState::Paused),
        // Another process has it now: its state is its own.
        Err(SendError::Busy { .. }) => None,
        Err(_) => Some(TransferState::Failed),
    };
    if let (Some(state), Err(e)) = (state, &result) {
        let _ = store.set_state(id, state, Some(&e.to_string())).await;
    }
    result
}

/// A SHA-256 in hex as bytes (ours, so always 64 hex digits).
fn protocol_digest(hex: &str) -> [u8; 32] {
    crate::protocol::parse_hex_sha256(hex).unwrap_or_default()
}

/// A session sending `payload` for transfer `row`, of the file `source` with `identity`.
fn session<D: destination::Destination>(
    store: &AsyncStore,
    row: Transfer,
    payload: delta::Payload,
    destination: D,
    throttle: &Throttle,
    opts: &SendOptions,
    (source, identity): (&Path, Identity),
) -> Session<D> {
    let is_recipe = payload.delta.is_some();
    Session {
        store: store.clone(),
        path: payload.path,
        identity: payload.identity,
        destination,
        throttle: throttle.clone(),
        checksum: None,
        piece_floor: 0,
        stall: opts.stall_timeout,
        wire: Arc::new(WireCount::default()),
        confirmed_here: 0,
        sending_time: Duration::ZERO,
        throttled_to: None,
        pos: None,
        server_sha256: None,
        published_as: None,
        read_ahead: Default::default(),
        meter: RateMeter::new(Instant::now(), 0),
        gate: opts.gate.clone(),
        rate_bps: 0.0,
        // A given chunk keeps the size the transfer began with, as it always did.
        chunking: match opts.chunk {
            Some(_) => Chunking::Fixed(row.chunk_size),
            None => Chunking::FollowRate,
        },
        last_chunk: 0,
        url_answered: false,
        upto_rejected: 0,
        base_sent: row.bytes_sent,
        base_resent: row.resent_bytes,
        delta: payload.delta,
        target_sha256: payload.target_sha256,
        file_size: identity.size,
        delta_source: is_recipe.then(|| (source.to_path_buf(), identity)),
        row,
    }
}

pub use s3::Abandoned;

/// What `upload queue rm` leaves on the destination: a transfer to S3 has its multipart
/// upload aborted (S3 would keep its parts, and bill them, forever); `true` if one was. A tus
/// upload is left to expire on its server.
pub async fn abort_upload(row: &Transfer) -> Result<bool, SendError> {
    if !row.dest_url.starts_with("s3://") || row.state == TransferState::Done {
        return Ok(false);
    }
    s3::abort(&row.dest_url, row.upload_url.as_deref()).await
}

/// Multipart uploads under the S3 keys of `rows` that none of them is sending (`upload
/// status` lists them), and the buckets that could not be asked, as text.
pub async fn abandoned_uploads(rows: &[Transfer]) -> (Vec<Abandoned>, Vec<String>) {
    s3::abandoned(rows).await
}

/// The name on the server when none is given: the file's own.
fn default_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".into())
}

/// What `upload queue add` asks for.
#[derive(Debug, Clone)]
pub struct QueueRequest {
    pub file: PathBuf,
    pub url: String,
    /// The name on the server; the file's own name by default.
    pub name: Option<String>,
    /// `--chunk`; by default chunks follow the rate the transfer is allowed.
    pub chunk: Option<u64>,
    pub limit: Option<Rate>,
    pub priority: i64,
    pub deadline: Option<DateTime<Utc>>,
    /// The link's rate as the planner knows it (measured, else the default).
    pub link: Rate,
    /// `--base`, `--no-base`.
    pub base: BaseChoice,
}

/// The transfer `upload queue add` records: the source as it is now (`upload run` checks it
/// again when its turn comes), its name on the server, and the chunk it is planned with at
/// the rate it is expected to get (its limit, when below the link's).
pub fn queued_transfer(req: QueueRequest) -> Result<NewTransfer, SendError> {
    let (path, identity) = open_source(&req.file)?;
    let expected = match req.limit {
        Some(l) if l.bits_per_second() < req.link.bits_per_second() => l,
        _ => req.link,
    };
    Ok(NewTransfer {
        name: req.name.unwrap_or_else(|| default_name(&path)),
        source_path: path,
        size: identity.size,
        mtime_ns: identity.mtime_ns,
        dest_url: req.url,
        chunk_size: Chunking::from_flag(req.chunk).planned(Some(expected)),
        chunk_fixed: req.chunk.is_some(),
        state: TransferState::Queued,
        priority: req.priority,
        deadline: req.deadline,
        rate_limit_bps: req.limit.map(Rate::bits_per_second),
        origin: Origin::Queue,
        base: req.base,
    })
}

async fn find_or_create_row(
    store: &AsyncStore,
    opts: &SendOptions,
    path: &Path,
    identity: Identity,
    name: &str,
    chunk: u64,
) -> Result<Transfer, SendError> {
    let existing = match opts.transfer_id {
        Some(id) => {
            let row = store.transfer(id).await?;
            if row.upload_url.is_none()
                && (row.size != identity.size || row.mtime_ns != identity.mtime_ns)
            {
                // Queued, nothing sent yet: the file may change until its turn comes.
                Some(
                    store
                        .reset_transfer(id, identity.size, identity.mtime_ns)
                        .await?,
                )
            } else {
                Some(row)
            }
        }
        None => store.find_unfinished(path, &opts.url).await?,
    };
    if let Some(row) = existing {
        if !opts.restart && row.size != identity.size {
            return Err(SendError::SourceChanged {
                path: path.into(),
                what: format!(
                    "its size changed from {} to {} bytes",
                    row.size, identity.size
                ),
            });
        }
        if !opts.restart && row.mtime_ns != identity.mtime_ns {
            return Err(SendError::SourceChanged {
                path: path.into(),
                what: "its modification time changed".into(),
            });
        }
        return Ok(row);
    }
    let new = NewTransfer {
        name: name.to_string(),
        source_path: path.to_path_buf(),
        size: identity.size,
        mtime_ns: identity.mtime_ns,
        dest_url: opts.url.clone(),
        chunk_size: chunk,
        chunk_fixed: opts.chunk.is_some(),
        state: TransferState::Running,
        priority: 0,
        deadline: None,
        rate_limit_bps: opts.limit.map(Rate::bits_per_second),
        origin: Origin::Send,
        base: opts.base.clone(),
    };
    Ok(store.insert_transfer(new).await?)
}

async fn acquire_lock(store: &AsyncStore, id: i64, owner: &str) -> Result<(), SendError> {
    store
        .acquire_lock(id, owner)
        .await?
        .map_err(|holder| SendError::Busy { owner: holder })
}
