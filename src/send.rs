//! The upload engine behind `upload send FILE URL`: one file to one tus endpoint, resumable
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
//!   is proved to be the one that was hashed ([`prove_unchanged`], after the last byte was
//!   read): a change then aborts the request, the server never has every byte and publishes
//!   nothing (issue 11, item 3). A change in the instant after that proof is still seen after
//!   the server's answer, and reported as what it is: the version read was published.
//! - Only a chunk the server acknowledged advances the offset and the running hash.
//!
//! Reading streams through a bounded channel in pieces sized by the [`Throttle`], so memory is
//! a few pieces whatever the file size, and a throttled transfer sleeps between pieces.

use crate::client::{ChannelBody, ClientError, LinkProbe, Retry, TusClient, parse_endpoint};
use crate::estimate::chunk_size_for;
use crate::protocol::{Algorithm, Checksum, ChecksumHasher, Metadata, ext, meta};
use crate::store::{LinkSample, NewTransfer, Origin, Store, StoreError, Transfer, TransferState};
use crate::throttle::{Gate, Throttle};
use crate::units::Rate;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use url::Url;

/// What to send where, and how.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub file: PathBuf,
    pub url: String,
    /// The name on the server; the file's own name by default.
    pub name: Option<String>,
    /// Bytes per PATCH; by default about 20 s at the limit (see [`chunk_size_for`]).
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
    #[error("interrupted")]
    Interrupted,
}

/// The file's identity as the file system reports it: any write changes mtime or ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Identity {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            inode: meta.ino(),
        }
    }

    /// Everything but the change time is the same.
    fn same_but_ctime(&self, now: &Identity) -> bool {
        Identity {
            ctime_ns: now.ctime_ns,
            ..*self
        } == *now
    }

    /// What differs, in words, or `None`.
    fn difference(&self, now: &Identity) -> Option<String> {
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
enum LastBytes {
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
fn prove_unchanged(path: &Path, identity: Identity, digest: &[u8; 32]) -> LastBytes {
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

/// Where we are: the confirmed offset and the SHA-256 state of the bytes before it.
struct Position {
    offset: u64,
    hasher: Sha256,
}

/// Per-process accounting of bytes put on the wire.
#[derive(Default)]
struct WireCount {
    sent: AtomicU64,
    resent: AtomicU64,
    /// The highest offset this process has sent up to.
    high_water: AtomicU64,
}

impl WireCount {
    fn record(&self, start: u64, len: u64) {
        let end = start + len;
        let hw = self.high_water.fetch_max(end, Ordering::Relaxed);
        let again = hw.min(end).saturating_sub(start);
        self.sent.fetch_add(len, Ordering::Relaxed);
        self.resent.fetch_add(again, Ordering::Relaxed);
    }
}

const READ_BUF: usize = 1 << 20;

/// The smallest chunk: a zero-byte PATCH would never move the offset.
const MIN_CHUNK: u64 = 1;

/// The first chunk of a transfer whose speed is not known yet: 16 s at 128 kbit/s, a
/// millisecond on loopback; the next ones follow the measured rate.
const ADAPTIVE_FIRST_CHUNK: u64 = 256 * 1024;

/// Reads `[start, start+len)` of `path`, feeding every byte to `each`.
fn read_range(
    path: &Path,
    start: u64,
    len: u64,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; READ_BUF.min(len.max(1) as usize)];
    let mut left = len;
    while left > 0 {
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

/// `pid@host` of this process, the owner name of transfer locks.
pub fn lock_owner() -> String {
    format!("{}@{}", std::process::id(), hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A lock whose owner is a process on this host that no longer runs (killed, crashed).
pub fn owner_is_dead(owner: &str) -> bool {
    let Some((pid, host)) = owner.split_once('@') else {
        return false;
    };
    host == hostname()
        && pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
}

/// Exponential backoff with jitter: 1, 2, 4 ... s, capped at 60 s (10 min when the server
/// said it is out of space: that will not change in a minute).
fn backoff(failures: u32, retry: Retry) -> Duration {
    let cap = if retry == Retry::Persistent {
        600.0
    } else {
        60.0
    };
    let base = (2f64.powi(failures.saturating_sub(1).min(16) as i32)).min(cap);
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    Duration::from_secs_f64((base * jitter).min(cap))
}

/// How long to wait before the next attempt after `e`, the `failures`-th in a row, with the
/// server unreachable or failing for `down_for`.
fn retry_delay(e: &ClientError, failures: u32, down_for: Duration) -> Duration {
    /// While a link is down, a connection attempt is the probe that notices it is back; one
    /// every second or so costs a SYN and gets data flowing within seconds of the return
    /// (TCP's own backoff would leave a dead connection idle for up to a minute).
    const PROBE_EVERY: f64 = 0.5;
    const PROBE_FOR: Duration = Duration::from_secs(600);
    let jitter = || rand::random::<f64>() * 0.5 + 0.75;
    match e {
        // A damaged chunk or a moved offset is not the link being down: retry now.
        ClientError::ChecksumMismatch
        | ClientError::OffsetMismatch { .. }
        | ClientError::Vanished(_)
            if failures <= 3 =>
        {
            Duration::ZERO
        }
        // The server said when to come back; jitter so a crowd does not return at once.
        ClientError::TooManyUploads {
            retry_after: Some(after),
        } => after.mul_f64(jitter()).min(Duration::from_secs(600)),
        // The connection died silently: reconnect at once, the attempt probes the link.
        ClientError::Stalled(_) | ClientError::Http(_) if failures == 1 => Duration::ZERO,
        ClientError::Connect { .. } | ClientError::Stalled(_) | ClientError::Http(_)
            if down_for < PROBE_FOR =>
        {
            Duration::from_secs_f64(PROBE_EVERY * jitter())
        }
        _ => backoff(failures, e.retry()),
    }
}

/// Confirmed-progress rate over the last minute of acknowledgements.
struct RateMeter {
    acks: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn new(now: Instant, offset: u64) -> Self {
        let mut acks = VecDeque::new();
        acks.push_back((now, offset));
        RateMeter { acks }
    }

    fn ack(&mut self, now: Instant, offset: u64) -> f64 {
        self.acks.push_back((now, offset));
        while self.acks.len() > 2 && now.duration_since(self.acks[1].0) > Duration::from_secs(60) {
            self.acks.pop_front();
        }
        let (t0, o0) = self.acks[0];
        let secs = now.duration_since(t0).as_secs_f64();
        if secs > 0.0 {
            offset.saturating_sub(o0) as f64 * 8.0 / secs
        } else {
            0.0
        }
    }

    /// Forget the rate across an outage, so the next figure is the link's, not the wait's.
    fn restart(&mut self, now: Instant, offset: u64) {
        self.acks.clear();
        self.acks.push_back((now, offset));
    }
}

/// One transfer in progress.
struct Transfer_ {
    store: Store,
    row: Transfer,
    path: PathBuf,
    identity: Identity,
    client: TusClient,
    throttle: Throttle,
    checksum: Option<Algorithm>,
    stall: Duration,
    wire: Arc<WireCount>,
    /// Payload confirmed by this process and the time spent sending it, for link samples.
    confirmed_here: u64,
    sending_time: Duration,
    /// The highest rate the throttle held a chunk to, bits per second: a sample of a
    /// throttled transfer measured the throttle, not the link.
    throttled_to: Option<f64>,
    /// What we know locally: the confirmed offset and the hash state before it.
    pos: Option<Position>,
    /// From the last HEAD of a finished upload.
    server_sha256: Option<[u8; 32]>,
    published_as: Option<String>,
    /// Pass one of the next chunk, running while the current one is sent.
    prefetch: Option<Prefetch>,
    meter: RateMeter,
    gate: Gate,
    /// The confirmed rate after the last acknowledged chunk, bits per second.
    rate_bps: f64,
    /// Whether the chunk size follows the measured rate (no `--chunk`, no `--limit`).
    adaptive_chunk: bool,
    /// The size of the last acknowledged chunk.
    last_chunk: u64,
    /// The server answered for the current upload URL (a HEAD or an acknowledged PATCH). A
    /// 404 to a PATCH on such a URL means the upload vanished since (expired during a long
    /// pause, deleted), and a HEAD sorts it out; on a URL that never answered, it means the
    /// server's Location does not lead back to it (a proxy's path prefix), and starting over
    /// would only create uploads that cannot be reached, forever.
    url_answered: bool,
    /// The database's byte counters when this process began.
    base_sent: u64,
    base_resent: u64,
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
    let started = Instant::now();
    let endpoint = parse_endpoint(&opts.url).map_err(SendError::Url)?;
    // A given --ca is checked even for http, so a typo shows before the URL changes to https.
    let tls = if endpoint.scheme() == "https" || opts.ca.is_some() {
        Some(crate::tls::client_config(opts.ca.as_deref()).map_err(SendError::Tls)?)
    } else {
        None
    };
    let (path, identity) = open_source(&opts.file)?;
    let name = opts.name.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into())
    });
    let chunk = opts
        .chunk
        .unwrap_or_else(|| chunk_size_for(opts.limit))
        .max(MIN_CHUNK);

    let row = find_or_create_row(&store, &opts, &path, identity, &name, chunk).await?;
    let owner = lock_owner();
    acquire_lock(&store, row.id, &owner).await?;
    // Aborted on every way out, including this future being dropped (a scheduler stopping it).
    // A lock taken over by another process (ours looked stale, e.g. this one was suspended)
    // ends this transfer: two senders would take the upload from each other forever.
    let (lost_tx, mut lost_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let heartbeat = {
        let store = store.clone();
        let owner = owner.clone();
        let id = row.id;
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let (s, o) = (store.clone(), owner.clone());
                match blocking(move || s.heartbeat(id, &o)).await {
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

    let mut t = Transfer_ {
        store: store.clone(),
        path,
        identity,
        client: match tls {
            Some(config) => TusClient::new(endpoint, opts.token.clone()).with_tls(config),
            None => TusClient::new(endpoint, opts.token.clone()),
        },
        throttle,
        checksum: None,
        stall: opts.stall_timeout,
        wire: Arc::new(WireCount::default()),
        confirmed_here: 0,
        sending_time: Duration::ZERO,
        throttled_to: None,
        pos: None,
        server_sha256: None,
        published_as: None,
        prefetch: None,
        meter: RateMeter::new(Instant::now(), 0),
        gate: opts.gate.clone(),
        rate_bps: 0.0,
        adaptive_chunk: opts.chunk.is_none() && opts.limit.is_none(),
        last_chunk: 0,
        url_answered: false,
        base_sent: row.bytes_sent,
        base_resent: row.resent_bytes,
        row,
    };
    let result = tokio::select! {
        r = t.run(&opts, &name, events, started) => r,
        () = shutdown => Err(SendError::Interrupted),
        holder = lock_lost => Err(SendError::Busy { owner: holder }),
    };
    drop(heartbeat);
    let (s, id, o) = (store.clone(), t.row.id, owner);
    // Only releases the lock if it is still ours.
    let _ = blocking(move || s.unlock(id, &o)).await;
    let state = match &result {
        Ok(_) => None,
        // Progress is in the database. A queued transfer goes back to the queue; an
        // `upload send`'s is held until that command is rerun (or `upload queue resume`
        // hands it to the run): nobody asked `upload run` to send it.
        Err(SendError::Interrupted) if t.row.origin == Origin::Queue => Some(TransferState::Queued),
        Err(SendError::Interrupted) => Some(TransferState::Paused),
        // Another process has it now: its state is its own.
        Err(SendError::Busy { .. }) => None,
        Err(_) => Some(TransferState::Failed),
    };
    if let (Some(state), Err(e)) = (state, &result) {
        let (s, id, msg) = (store.clone(), t.row.id, e.to_string());
        let _ = blocking(move || s.set_state(id, state, Some(&msg))).await;
    }
    result
}

fn open_source(file: &Path) -> Result<(PathBuf, Identity), SendError> {
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

async fn find_or_create_row(
    store: &Store,
    opts: &SendOptions,
    path: &Path,
    identity: Identity,
    name: &str,
    chunk: u64,
) -> Result<Transfer, SendError> {
    let (s, p, u) = (store.clone(), path.to_path_buf(), opts.url.clone());
    let existing = match opts.transfer_id {
        Some(id) => {
            let row = blocking(move || s.transfer(id)).await?;
            if row.upload_url.is_none()
                && (row.size != identity.size || row.mtime_ns != identity.mtime_ns)
            {
                // Queued, nothing sent yet: the file may change until its turn comes.
                let s = store.clone();
                let (size, mtime) = (identity.size, identity.mtime_ns);
                Some(
                    blocking(move || {
                        s.reset_transfer(id, size, mtime)?;
                        s.transfer(id)
                    })
                    .await?,
                )
            } else {
                Some(row)
            }
        }
        None => blocking(move || s.find_unfinished(&p, &u)).await?,
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
        state: TransferState::Running,
        priority: 0,
        deadline: None,
        rate_limit_bps: opts.limit.map(Rate::bits_per_second),
        origin: Origin::Send,
    };
    let s = store.clone();
    Ok(blocking(move || s.insert_transfer(&new)).await?)
}

async fn acquire_lock(store: &Store, id: i64, owner: &str) -> Result<(), SendError> {
    let (s, o) = (store.clone(), owner.to_string());
    let got = blocking(move || s.try_lock(id, &o, Duration::from_secs(60))).await?;
    match got {
        Ok(()) => Ok(()),
        Err(holder) if owner_is_dead(&holder) => {
            let (s, o, h) = (store.clone(), owner.to_string(), holder.clone());
            if blocking(move || s.take_lock(id, &o, &h)).await? {
                Ok(())
            } else {
                // Another process took the dead lock first.
                Err(SendError::Busy { owner: holder })
            }
        }
        Err(holder) => Err(SendError::Busy { owner: holder }),
    }
}

/// A step's failure: either the engine's own (stop) or the server's (maybe retry).
enum StepError {
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

impl Transfer_ {
    async fn run(
        &mut self,
        opts: &SendOptions,
        name: &str,
        events: &(dyn Fn(Event) + Send + Sync),
        started: Instant,
    ) -> Result<Summary, SendError> {
        let size = self.identity.size;
        if opts.restart {
            self.restart(events).await?;
        }
        let (s, id) = (self.store.clone(), self.row.id);
        blocking(move || s.set_state(id, TransferState::Running, None)).await?;

        let mut synced = false;
        let mut caps_known = false;
        let mut failures = 0u32;
        let mut failing_since: Option<Instant> = None;
        let mut announced = false;
        let mut final_digest: Option<(String, Option<String>)> = None;
        loop {
            let step: Result<bool, StepError> = async {
                if !caps_known {
                    self.discover(events).await?;
                    caps_known = true;
                }
                if !synced {
                    let offset = self.sync(name, events).await?;
                    synced = true;
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
                }
                if self.offset() == size {
                    final_digest = Some(self.verify_complete()?);
                    return Ok(true);
                }
                let outcome = self.send_chunk().await?;
                let offset = self.offset();
                let rate = self.rate_bps;
                let eta = (rate > 0.0).then(|| (size - offset) as f64 * 8.0 / rate);
                events(Event::Progress {
                    offset,
                    size,
                    rate_bps: rate,
                    eta_seconds: eta,
                });
                if let Some(done) = outcome {
                    final_digest = Some(done);
                    return Ok(true);
                }
                Ok(false)
            }
            .await;
            match step {
                Ok(true) => break,
                Ok(false) => {
                    failures = 0;
                    failing_since = None;
                }
                Err(StepError::Stop(e)) => return Err(e),
                Err(StepError::Recheck) => synced = false,
                Err(StepError::Net(e)) => {
                    let retry = e.retry();
                    if retry == Retry::Permanent {
                        return Err(SendError::Server(e));
                    }
                    failures += 1;
                    let down_for = failing_since.get_or_insert_with(Instant::now).elapsed();
                    if opts.max_retries.is_some_and(|max| failures > max)
                        || opts.give_up_after.is_some_and(|limit| down_for > limit)
                    {
                        return Err(SendError::GaveUp {
                            attempts: failures,
                            error: e,
                        });
                    }
                    // A damaged chunk or a moved offset is not the link being down: retry now.
                    let delay = retry_delay(&e, failures, down_for);
                    // Debug only: the caller renders the Retry event, folded (crate::outage).
                    tracing::debug!(attempt = failures, ?delay, "{e}");
                    events(Event::Retry {
                        attempt: failures,
                        delay,
                        error: e.to_string(),
                    });
                    let (s, id, msg) = (self.store.clone(), self.row.id, e.to_string());
                    let _ =
                        blocking(move || s.set_state(id, TransferState::Running, Some(&msg))).await;
                    self.client.disconnect();
                    tokio::time::sleep(delay).await;
                    // The server is the truth after any failure: learn its offset again (our
                    // hash state is kept and reused when the offsets agree).
                    synced = false;
                }
            }
        }
        let (sha256, published_as) = final_digest.expect("loop ends with a digest");
        let (s, id, sha) = (self.store.clone(), self.row.id, sha256.clone());
        blocking(move || s.finish(id, &sha)).await?;
        if self.confirmed_here > 0 && self.sending_time > Duration::ZERO {
            let sample = LinkSample {
                host: self
                    .client
                    .endpoint()
                    .host_str()
                    .unwrap_or_default()
                    .to_string(),
                at: chrono::Utc::now(),
                bytes: self.confirmed_here,
                seconds: self.sending_time.as_secs_f64(),
                limit_bps: self.throttled_to,
            };
            let s = self.store.clone();
            blocking(move || s.add_link_sample(&sample)).await?;
        }
        let summary = Summary {
            sha256,
            size,
            bytes_sent: self.wire.sent.load(Ordering::Relaxed),
            resent_bytes: self.wire.resent.load(Ordering::Relaxed),
            published_as,
            upload_url: self.row.upload_url.clone().unwrap_or_default(),
            seconds: started.elapsed().as_secs_f64(),
        };
        events(Event::Done(summary.clone()));
        Ok(summary)
    }
}

impl Transfer_ {
    fn offset(&self) -> u64 {
        self.pos.as_ref().map_or(0, |p| p.offset)
    }

    /// The next chunk's size. Given by `--chunk` (or a queue), or derived from a `--limit`, it
    /// is fixed. Otherwise it follows the confirmed rate (about 20 s of it), starting small and
    /// at most quadrupling per chunk: a fixed 64 MiB chunk on a 128 kbit/s link meant one
    /// outage threw away up to 70 minutes of sending (measured by bench_link.py: a 60 s cut
    /// re-sent the whole 2 MiB file).
    fn chunk_target(&self) -> u64 {
        self.chunk_target_after(self.last_chunk)
    }

    /// [`Self::chunk_target`] once a chunk of `last` bytes is acknowledged: what the read-ahead
    /// of the next chunk must guess, or it is hashed twice while the size ramps up.
    fn chunk_target_after(&self, last: u64) -> u64 {
        if !self.adaptive_chunk {
            return self.row.chunk_size.max(MIN_CHUNK);
        }
        let measured = (self.rate_bps > 0.0)
            .then(|| Rate::from_bits_per_second(self.rate_bps).ok())
            .flatten();
        let Some(rate) = measured else {
            return ADAPTIVE_FIRST_CHUNK;
        };
        chunk_size_for(Some(rate)).min(last.max(ADAPTIVE_FIRST_CHUNK) * 4)
    }

    fn upload_url(&self) -> Result<Url, StepError> {
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
    async fn check_identity(&mut self) -> Result<(), StepError> {
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
                self.prefetch = None;
                Err(StepError::Recheck)
            }
            Some(what) => Err(StepError::Stop(SendError::SourceChanged {
                path: self.path.clone(),
                what,
            })),
        }
    }

    /// `--restart`: drop the earlier upload on the server (best effort) and in the database.
    async fn restart(&mut self, events: &(dyn Fn(Event) + Send + Sync)) -> Result<(), SendError> {
        if let Some(u) = self
            .row
            .upload_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
            && let Err(e) = self.client.delete(&u).await
        {
            events(Event::Notice(format!(
                "could not delete the earlier upload on the server ({e}); it will expire there"
            )));
        }
        let (s, id, size, mtime) = (
            self.store.clone(),
            self.row.id,
            self.identity.size,
            self.identity.mtime_ns,
        );
        self.row = blocking(move || {
            s.reset_transfer(id, size, mtime)?;
            s.transfer(id)
        })
        .await?;
        self.pos = None;
        Ok(())
    }

    /// OPTIONS: choose the chunk checksum, and refuse early what the server cannot take.
    async fn discover(&mut self, events: &(dyn Fn(Event) + Send + Sync)) -> Result<(), StepError> {
        let caps = self.client.options().await?;
        self.checksum = if caps.has(ext::CHECKSUM) {
            caps.checksum
        } else {
            None
        };
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
                let mut md = Metadata::default();
                md.insert(meta::FILENAME, name.as_bytes().to_vec());
                if size == 0 {
                    // No PATCH will carry a Repr-Digest; declare the (empty) digest up front.
                    md.insert(meta::SHA256, hex::encode(Sha256::digest(b"")).into_bytes());
                }
                let url = self.client.create(size, &md).await?;
                self.url_answered = false;
                let (s, id, u) = (self.store.clone(), self.row.id, url.to_string());
                blocking(move || s.set_upload_url(id, Some(&u))).await?;
                self.row.upload_url = Some(url.to_string());
                self.row.offset = 0;
                self.row.prefix_sha256 = None;
                self.pos = Some(Position {
                    offset: 0,
                    hasher: Sha256::new(),
                });
                return Ok(0);
            }
            let url = self.upload_url()?;
            let info = match self.client.head(&url).await {
                Ok(info) => {
                    self.url_answered = true;
                    info
                }
                Err(ClientError::Gone(status)) => {
                    events(Event::Notice(format!(
                        "the server no longer has the earlier upload ({status}: expired or \
                         deleted); starting over"
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

    async fn forget_upload(&mut self) -> Result<(), StepError> {
        let (s, id) = (self.store.clone(), self.row.id);
        blocking(move || s.set_upload_url(id, None)).await?;
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
    fn verify_complete(&self) -> Result<(String, Option<String>), StepError> {
        let ours: [u8; 32] = self
            .pos
            .as_ref()
            .map(|p| p.hasher.clone().finalize().into())
            .unwrap_or_else(|| Sha256::digest(b"").into());
        if let Some(theirs) = self.server_sha256
            && theirs != ours
        {
            return Err(StepError::Net(ClientError::Verification(format!(
                "the server holds SHA-256 {}, the file has {}",
                hex::encode(theirs),
                hex::encode(ours)
            ))));
        }
        Ok((hex::encode(ours), self.published_as.clone()))
    }

    /// Sends the next chunk. Returns the digest and published name when it was the last.
    async fn send_chunk(&mut self) -> Result<Option<(String, Option<String>)>, StepError> {
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
        let len = self
            .chunk_target()
            .min(size - offset)
            .min(fits.unwrap_or(u64::MAX));
        let is_final = offset + len == size;

        // Pass one: the chunk's checksum and the hash state after it, usually read ahead
        // while the previous chunk was on the wire.
        let prepared = match self.prefetch.take() {
            Some(p) if p.offset == offset && p.len == len => {
                p.task.await.expect("read-ahead task panicked")
            }
            _ => {
                prepare(
                    self.path.clone(),
                    self.checksum,
                    offset,
                    len,
                    pos.hasher.clone(),
                )
                .await
            }
        }
        .map_err(|e| SendError::SourceUnreadable {
            path: self.path.clone(),
            source: e,
        })?;
        let (checksum, hasher_after) = (prepared.checksum, prepared.hasher_after);
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
            let (path, alg, h) = (self.path.clone(), self.checksum, hasher_after.clone());
            self.prefetch = Some(Prefetch {
                offset: next,
                len: next_len,
                task: tokio::spawn(prepare(path, alg, next, next_len, h)),
            });
        }

        // Pass two: stream the chunk, paced by the throttle, watched for progress.
        let url = self.upload_url()?;
        let lowat =
            crate::client::notsent_lowat_for(self.throttle.rate().map(Rate::bytes_per_second));
        self.client.set_notsent_lowat(lowat);
        self.client.connect().await?;
        let probe = self.client.probe();
        let (tx, body) = ChannelBody::new(len, 4);
        let (path, throttle, wire) = (self.path.clone(), self.throttle.clone(), self.wire.clone());
        let runtime = tokio::runtime::Handle::current();
        let last = digest.map(|d| (self.identity, d));
        let verdict = Arc::new(std::sync::Mutex::new(LastBytes::NotFinal));
        let found = verdict.clone();
        tokio::task::spawn_blocking(move || {
            produce(path, offset, len, last, found, tx, throttle, wire, runtime)
        });
        let began = Instant::now();
        let throttled_at_start = self.throttle.rate();
        let stall = self.stall;
        let patch = self
            .client
            .patch(&url, offset, len, body, checksum.as_ref(), digest.as_ref());
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
        let (s, id, off) = (self.store.clone(), self.row.id, pos.offset);
        let sent = self.base_sent + self.wire.sent.load(Ordering::Relaxed);
        let resent = self.base_resent + self.wire.resent.load(Ordering::Relaxed);
        blocking(move || s.record_progress(id, off, &prefix, sent, resent, rate)).await?;

        if let Some(ours) = digest {
            if let Some(theirs) = outcome.sha256
                && theirs != ours
            {
                return Err(StepError::Net(ClientError::Verification(format!(
                    "the server computed {}, the file has {}",
                    hex::encode(theirs),
                    hex::encode(ours)
                ))));
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
            return Ok(Some((hex::encode(ours), outcome.published_as)));
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
#[allow(clippy::too_many_arguments)]
fn produce(
    path: PathBuf,
    offset: u64,
    len: u64,
    last: Option<(Identity, [u8; 32])>,
    verdict: Arc<std::sync::Mutex<LastBytes>>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    throttle: Throttle,
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
        let piece = (throttle.piece() as u64).min(end - at) as usize;
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
async fn watchdog(probe: LinkProbe, stall: Duration) {
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

/// A chunk's checksum and the whole-file hash state after it (pass one).
struct Prepared {
    checksum: Option<Checksum>,
    hasher_after: Sha256,
}

/// Pass one, read ahead for the chunk at `offset`.
struct Prefetch {
    offset: u64,
    len: u64,
    task: tokio::task::JoinHandle<std::io::Result<Prepared>>,
}

/// Reads a chunk once to compute its checksum and advance the whole-file hash.
async fn prepare(
    path: PathBuf,
    alg: Option<Algorithm>,
    offset: u64,
    len: u64,
    hasher: Sha256,
) -> std::io::Result<Prepared> {
    blocking(move || {
        let mut sum: Option<ChecksumHasher> = alg.map(Algorithm::hasher);
        let mut h = hasher;
        read_range(&path, offset, len, |b| {
            h.update(b);
            if let Some(s) = sum.as_mut() {
                s.update(b);
            }
        })?;
        Ok(Prepared {
            checksum: sum.map(ChecksumHasher::finish),
            hasher_after: h,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_count_separates_resent_bytes() {
        let w = WireCount::default();
        w.record(0, 100);
        w.record(100, 100);
        w.record(50, 100); // 50..150 again
        w.record(150, 100); // 150..200 again, 200..250 new
        assert_eq!(w.sent.load(Ordering::Relaxed), 400);
        assert_eq!(w.resent.load(Ordering::Relaxed), 150);
    }

    #[test]
    fn a_dead_link_is_probed_often_then_less() {
        let refused = ClientError::Connect {
            addr: "x:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let early = retry_delay(&refused, 20, Duration::from_secs(30));
        assert!(early <= Duration::from_secs(1), "{early:?}");
        let late = retry_delay(&refused, 20, Duration::from_secs(3600));
        assert!(late >= Duration::from_secs(30), "{late:?}");
        let busy = ClientError::TooManyUploads {
            retry_after: Some(Duration::from_secs(5)),
        };
        let d = retry_delay(&busy, 1, Duration::ZERO);
        assert!(
            d >= Duration::from_millis(3750) && d <= Duration::from_millis(6250),
            "{d:?}"
        );
        let stalled = ClientError::Stalled(Duration::from_secs(10));
        assert_eq!(retry_delay(&stalled, 1, Duration::ZERO), Duration::ZERO);
        let server = ClientError::Server {
            status: http::StatusCode::BAD_GATEWAY,
            body: String::new(),
        };
        assert!(retry_delay(&server, 4, Duration::from_secs(10)) >= Duration::from_secs(6));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let d1 = backoff(1, Retry::Temporary).as_secs_f64();
        assert!((0.75..=1.25).contains(&d1), "{d1}");
        let d5 = backoff(5, Retry::Temporary).as_secs_f64();
        assert!((12.0..=20.0).contains(&d5), "{d5}");
        assert!(backoff(30, Retry::Temporary) <= Duration::from_secs(60));
        assert!(backoff(30, Retry::Persistent) > Duration::from_secs(60));
    }

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

    #[test]
    fn dead_owners_are_recognised() {
        assert!(!owner_is_dead(&lock_owner()));
        assert!(owner_is_dead(&format!("4000000000@{}", hostname())));
        assert!(!owner_is_dead("1@another-host"));
    }

    #[test]
    fn rate_meter_reports_bits_per_second() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0, 0);
        let r = m.ack(t0 + Duration::from_secs(2), 32_000);
        assert!((r - 128_000.0).abs() < 1.0, "{r}");
    }
}
