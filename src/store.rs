//! Persistent state: the one SQLite file that remembers transfers, link samples
//! and settings across crashes and across processes.
//!
//! This is the only module that speaks SQL. Everything else sees plain Rust types
//! ([`Transfer`], [`LinkSample`], [`TransferState`]) and synchronous `&self` methods
//! on [`Store`]; async code (the engine, the scheduler) uses [`AsyncStore`], whose methods
//! run the same calls on tokio's blocking pool.
//!
//! What it owns:
//! - **One file.** Default `$XDG_STATE_HOME/upload/upload.db`, else
//!   `$HOME/.local/state/upload/upload.db` ([`default_db_path`]); the CLI layers
//!   `--db PATH` / `UPLOAD_DB` on top.
//! - **Schema and migrations.** The schema version lives in `PRAGMA user_version`.
//!   [`MIGRATIONS`]`[i]` takes version `i` to `i + 1`; all pending ones run in one
//!   `BEGIN IMMEDIATE` transaction at open, so a crash mid-migration leaves the old
//!   version intact and two processes opening a fresh file cannot both migrate.
//!   A file with a version newer than this binary knows is refused
//!   ([`StoreError::TooNew`]) before anything is written to it: an older `upload`
//!   must never "repair" a newer one's data.
//! - **Concurrency.** `upload run` (the queue daemon) and `upload queue add` /
//!   `upload send` in other processes share the file. WAL lets readers proceed
//!   while one process writes; `busy_timeout` of 30 s makes a second writer wait
//!   rather than fail with "database is locked"; every read-then-write is a
//!   `BEGIN IMMEDIATE` transaction, which takes the write lock up front so no
//!   update is lost and SQLite never has to abort a reader that tried to upgrade.
//!   Single-statement writes are their own (autocommit) transactions.
//!   `synchronous=NORMAL` is durable across process crashes in WAL mode and only
//!   risks the last commits on power loss — the cost is re-sending a chunk, which
//!   the resume logic handles anyway — while saving an fsync per chunk.
//! - **Within a process** a [`Store`] is one connection behind `Arc<Mutex<..>>`:
//!   cheap to clone, `Send + Sync`, and calls are serialized, which SQLite would do
//!   for writes anyway.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

/// How long a writer waits for another process's write lock before giving up.
/// Chunk commits take milliseconds; 30 s only runs out if something is badly stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Forward migrations: index `i` migrates `user_version` `i` -> `i + 1`.
/// Append only; never edit a shipped entry, because files already at that version
/// will not run it again.
pub const MIGRATIONS: &[&str] = &[
    // 0 -> 1: initial schema.
    r#"
    CREATE TABLE link_samples (
        id      INTEGER PRIMARY KEY,
        host    TEXT    NOT NULL,
        at      INTEGER NOT NULL,  -- unix seconds
        bytes   INTEGER NOT NULL,
        seconds REAL    NOT NULL
    );
    CREATE INDEX link_samples_host_at ON link_samples (host, at);

    CREATE TABLE transfers (
        id             INTEGER PRIMARY KEY,
        name           TEXT    NOT NULL,
        source_path    TEXT    NOT NULL,
        size           INTEGER NOT NULL,
        mtime_ns       INTEGER NOT NULL,
        sha256         TEXT,              -- hex of whole file, known when complete
        prefix_sha256  TEXT,              -- hex sha256 of source bytes [0, offset), detects edits on resume
        dest_url       TEXT    NOT NULL,
        upload_url     TEXT,
        offset         INTEGER NOT NULL DEFAULT 0,  -- confirmed by the server
        chunk_size     INTEGER NOT NULL,
        state          TEXT    NOT NULL,  -- queued|running|paused|done|failed
        priority       INTEGER NOT NULL DEFAULT 0,
        deadline       INTEGER,           -- unix seconds
        rate_limit_bps REAL,
        bytes_sent     INTEGER NOT NULL DEFAULT 0,
        resent_bytes   INTEGER NOT NULL DEFAULT 0,
        attempts       INTEGER NOT NULL DEFAULT 0,
        last_error     TEXT,
        lock_owner     TEXT,              -- "pid@host" of the process sending it
        lock_heartbeat INTEGER,           -- unix seconds
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL,
        finished_at    INTEGER
    );
    CREATE INDEX transfers_queue ON transfers (state, priority DESC, deadline, created_at);
    CREATE INDEX transfers_source_dest ON transfers (source_path, dest_url);

    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 1 -> 2: the confirmed rate of a running transfer, for `upload status`.
    r#"
    ALTER TABLE transfers ADD COLUMN rate_bps REAL;  -- bits per second the server confirmed lately
    "#,
    // 2 -> 3: who asked for a transfer. Only `upload queue add`'s are the run's work; an
    // interrupted `upload send` must not be sent by the next `upload run` (issue 10, item 4).
    // Rows from before cannot be told apart and stay what they were: queued work.
    r#"
    ALTER TABLE transfers ADD COLUMN origin TEXT NOT NULL DEFAULT 'queue';  -- queue|send
    "#,
    // 3 -> 4: whether a link sample was held to a rate (a --limit, the run's budget): then it
    // measured the limit, not what the link can do (issue 10, item 5). Older samples cannot
    // be told apart and count as unlimited, as they did.
    r#"
    ALTER TABLE link_samples ADD COLUMN limit_bps REAL;  -- the throttle's rate; NULL: unthrottled
    "#,
    // 4 -> 5: whether a transfer's chunk size was given (--chunk) or follows the rate it is
    // allowed, so a queued transfer's chunks follow the share the scheduler gives it. Rows
    // from before were all sent at their chunk_size and stay so.
    r#"
    ALTER TABLE transfers ADD COLUMN chunk_fixed INTEGER NOT NULL DEFAULT 1;  -- 0: follows the rate
    "#,
    // 5 -> 6: delta uploads (issue 13). What base the user asked for, which one the current
    // upload is a recipe against, and the recipe's size (what progress counts). Rows from
    // before were full uploads; they keep the default (a base of the same name, if any) for
    // their next start only if nothing was sent yet (see send::delta).
    r#"
    ALTER TABLE transfers ADD COLUMN base TEXT;          -- NULL: same name if published; '': none
    ALTER TABLE transfers ADD COLUMN delta_base TEXT;    -- the base the upload is a recipe against
    ALTER TABLE transfers ADD COLUMN payload_size INTEGER;  -- the recipe's bytes; NULL: size
    "#,
    // 6 -> 7: polite queued transfers (issue 15, `upload queue add --polite`): inside `upload
    // run` they share one polite controller's part of the budget. Rows from before were not
    // polite (a `polite` timetable slot is the run's, not the row's).
    r#"
    ALTER TABLE transfers ADD COLUMN polite INTEGER NOT NULL DEFAULT 0;  -- 1: yields to all else
    "#,
];

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// Opening or migrating a specific file failed; the path is what the user needs.
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "database {} has schema version {found}, but this upload only knows up to {supported}: \
         it was written by a newer `upload`. It was not modified. \
         Use that newer `upload`, or pass --db PATH to use a different database.",
        path.display()
    )]
    TooNew {
        found: u32,
        supported: u32,
        path: PathBuf,
    },

    #[error("no transfer with id {0}")]
    NotFound(i64),

    /// The advisory lock on a transfer is no longer ours (a stale-lock takeover
    /// happened): the sender must stop so two processes never send the same bytes.
    #[error("lost the lock on transfer {id}: now held by {}", holder.as_deref().unwrap_or("nobody"))]
    LockLost { id: i64, holder: Option<String> },

    #[error(
        "cannot find where to keep the upload database: neither XDG_STATE_HOME nor HOME is set. \
         Pass --db PATH or set UPLOAD_DB, e.g. UPLOAD_DB=/var/lib/upload/upload.db"
    )]
    NoStateDir,
}

/// `$XDG_STATE_HOME/upload/upload.db`, else `$HOME/.local/state/upload/upload.db`.
pub fn default_db_path() -> Result<PathBuf, StoreError> {
    // The XDG spec says relative values are invalid and must be ignored.
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(dir) => dir,
        None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local").join("state"),
            None => return Err(StoreError::NoStateDir),
        },
    };
    Ok(base.join("upload").join("upload.db"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    Queued,
    Running,
    Paused,
    Done,
    Failed,
}

impl TransferState {
    pub const ALL: [TransferState; 5] = [
        TransferState::Queued,
        TransferState::Running,
        TransferState::Paused,
        TransferState::Done,
        TransferState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Queued => "queued",
            TransferState::Running => "running",
            TransferState::Paused => "paused",
            TransferState::Done => "done",
            TransferState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for TransferState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transfer state {0:?} (expected queued, running, paused, done or failed)")]
pub struct ParseStateError(pub String);

impl FromStr for TransferState {
    type Err = ParseStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TransferState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseStateError(s.to_owned()))
    }
}

/// Who asked for a transfer: `upload queue add` (the run's work) or `upload send` (its own
/// process's, continued by rerunning it, or handed to the run by `upload queue resume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Queue,
    Send,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Queue => "queue",
            Origin::Send => "send",
        }
    }

    fn from_column(s: &str) -> Option<Origin> {
        [Origin::Queue, Origin::Send]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// One measurement of the link: `bytes` acknowledged in `seconds` to `host`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkSample {
    pub host: String,
    pub at: DateTime<Utc>,
    pub bytes: u64,
    pub seconds: f64,
    /// The highest rate the transfer was throttled to, bits per second; `None` when it was
    /// not throttled, so the sample shows what the link could do.
    pub limit_bps: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    pub id: i64,
    pub name: String,
    pub source_path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: Option<String>,
    pub prefix_sha256: Option<String>,
    pub dest_url: String,
    pub upload_url: Option<String>,
    pub offset: u64,
    pub chunk_size: u64,
    /// The chunk size was given (`--chunk`); otherwise chunks follow the rate the transfer is
    /// allowed, and `chunk_size` is what it was planned with.
    pub chunk_fixed: bool,
    pub state: TransferState,
    pub priority: i64,
    pub deadline: Option<DateTime<Utc>>,
    pub rate_limit_bps: Option<f64>,
    pub bytes_sent: u64,
    pub resent_bytes: u64,
    pub attempts: u64,
    pub last_error: Option<String>,
    pub lock_owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Bits per second the server confirmed over the last minute, while running.
    pub rate_bps: Option<f64>,
    pub origin: Origin,
    /// Which base to send a delta against (issue 13).
    pub base: BaseChoice,
    /// The base the current upload is a recipe against; `None`: the file itself is sent.
    pub delta_base: Option<String>,
    /// The bytes that cross the link: the recipe's size for a delta, else `size`.
    pub payload_size: Option<u64>,
    /// Sent politely inside `upload run` (`upload queue add --polite`): it uses only what the
    /// link has spare.
    pub polite: bool,
}

impl Transfer {
    /// What must cross the link: the recipe for a delta, else the file. Progress and finish
    /// times count these bytes (`offset` is an offset into them).
    pub fn bytes_to_send(&self) -> u64 {
        self.payload_size.unwrap_or(self.size)
    }
}

/// Which published file a transfer is sent as a delta against (`--base`, `--no-base`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum BaseChoice {
    /// A published file of the transfer's own name, when the server holds one.
    #[default]
    SameName,
    /// This published file.
    Named(String),
    /// None: the whole file (`--no-base`, or after a refused delta).
    Full,
}

impl BaseChoice {
    fn to_column(&self) -> Option<&str> {
        match self {
            BaseChoice::SameName => None,
            BaseChoice::Named(name) => Some(name),
            BaseChoice::Full => Some(""),
        }
    }

    fn from_column(value: Option<String>) -> BaseChoice {
        match value {
            None => BaseChoice::SameName,
            Some(v) if v.is_empty() => BaseChoice::Full,
            Some(v) => BaseChoice::Named(v),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub name: String,
    pub source_path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub dest_url: String,
    pub chunk_size: u64,
    /// The chunk size was given (`--chunk`); otherwise chunks follow the rate the transfer is
    /// allowed, and `chunk_size` is what it was planned with.
    pub chunk_fixed: bool,
    pub state: TransferState,
    pub priority: i64,
    pub deadline: Option<DateTime<Utc>>,
    pub rate_limit_bps: Option<f64>,
    pub origin: Origin,
    pub base: BaseChoice,
}

/// A handle on the database. Clones share one connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const TRANSFER_COLUMNS: &str = "id, name, source_path, size, mtime_ns, sha256, prefix_sha256, \
     dest_url, upload_url, offset, chunk_size, state, priority, deadline, rate_limit_bps, \
     bytes_sent, resent_bytes, attempts, last_error, lock_owner, created_at, updated_at, finished_at, \
     rate_bps, origin, chunk_fixed, base, delta_base, payload_size, polite";

// Queue order: most important first, then earliest deadline (none = last), then FIFO.
const QUEUE_ORDER: &str =
    "ORDER BY priority DESC, deadline IS NULL, deadline ASC, created_at ASC, id ASC";

impl Store {
    /// Open (creating it and its parent directories if needed) and migrate.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let ctx = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(ctx)?;
        // Before anything else, so even the first read waits for a busy writer.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(ctx)?;
        // Refuse a newer file before the journal_mode pragma, which would rewrite
        // its header; this check only reads.
        check_not_too_new(&conn, path)?;
        enable_wal(&conn).map_err(ctx)?;
        configure(&conn).map_err(ctx)?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: Some(path.to_owned()),
        })
    }

    /// A private database that vanishes on drop; for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        migrate(&mut conn, Path::new(":memory:"))?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: None,
        })
    }

    /// The file backing this store; `None` when in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(user_version(&self.conn())?)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock unwinds through rusqlite's Transaction,
        // whose drop rolls back, so the connection is still consistent: keep going.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- link samples ----

    pub fn add_link_sample(&self, s: &LinkSample) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO link_samples (host, at, bytes, seconds, limit_bps) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.host, s.at.timestamp(), s.bytes, s.seconds, s.limit_bps],
        )?;
        Ok(())
    }

    /// The most recent `limit` samples, newest first, of `host` when given, else all hosts.
    pub fn recent_link_samples(
        &self,
        host: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LinkSample>, StoreError> {
        self.link_samples(host, limit, false)
    }

    /// As [`Self::recent_link_samples`], only those of unthrottled transfers: what the link
    /// could do, for estimates.
    pub fn recent_unthrottled_link_samples(
        &self,
        host: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LinkSample>, StoreError> {
        self.link_samples(host, limit, true)
    }

    fn link_samples(
        &self,
        host: Option<&str>,
        limit: usize,
        unthrottled_only: bool,
    ) -> Result<Vec<LinkSample>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.conn();
        // `?1 IS NULL OR host = ?1` keeps one statement; with a host the
        // (host, at) index still serves it.
        let mut stmt = conn.prepare_cached(
            "SELECT host, at, bytes, seconds, limit_bps FROM link_samples \
             WHERE (?1 IS NULL OR host = ?1) AND (NOT ?3 OR limit_bps IS NULL) \
             ORDER BY at DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![host, limit, unthrottled_only], |r| {
            Ok(LinkSample {
                host: r.get(0)?,
                at: time_from_row(r, 1)?,
                bytes: r.get(2)?,
                seconds: r.get(3)?,
                limit_bps: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- transfers ----

    pub fn insert_transfer(&self, t: &NewTransfer) -> Result<Transfer, StoreError> {
        self.insert_transfer_as(t, false)
    }

    /// [`Store::insert_transfer`], marked polite or not in the same statement (so `upload run`
    /// never sees the row without its mark).
    pub fn insert_transfer_as(
        &self,
        t: &NewTransfer,
        polite: bool,
    ) -> Result<Transfer, StoreError> {
        let source = path_text(&t.source_path)?;
        let now = Utc::now().timestamp();
        let mut conn = self.conn();
        // Insert and read back atomically so the returned row is exactly what was stored.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO transfers (name, source_path, size, mtime_ns, dest_url, chunk_size, \
             state, priority, deadline, rate_limit_bps, created_at, updated_at, origin, \
             chunk_fixed, base, polite) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14, ?15)",
            params![
                t.name,
                source,
                t.size,
                t.mtime_ns,
                t.dest_url,
                t.chunk_size,
                t.state.as_str(),
                t.priority,
                t.deadline.map(|d| d.timestamp()),
                t.rate_limit_bps,
                now,
                t.origin.as_str(),
                t.chunk_fixed,
                t.base.to_column(),
                polite,
            ],
        )?;
        let id = tx.last_insert_rowid();
        let row = get_transfer(&tx, id)?;
        tx.commit()?;
        Ok(row)
    }

    pub fn transfer(&self, id: i64) -> Result<Transfer, StoreError> {
        get_transfer(&self.conn(), id)
    }

    /// The newest transfer of this source path to this destination that is not Done (to resume `upload send FILE URL`).
    pub fn find_unfinished(
        &self,
        source_path: &Path,
        dest_url: &str,
    ) -> Result<Option<Transfer>, StoreError> {
        let source = path_text(source_path)?;
        let conn = self.conn();
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers \
             WHERE source_path = ?1 AND dest_url = ?2 AND state <> 'done' \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        Ok(conn
            .prepare_cached(&sql)?
            .query_row(params![source, dest_url], transfer_from_row)
            .optional()?)
    }

    /// All transfers in queue order: priority DESC, deadline ASC (none last), created_at, id.
    pub fn list_transfers(&self) -> Result<Vec<Transfer>, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers {QUEUE_ORDER}");
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], transfer_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_upload_url(&self, id: i64, upload_url: Option<&str>) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE transfers SET upload_url = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, upload_url, Utc::now().timestamp()],
        )
    }

    /// After every acknowledged chunk: one small transaction.
    ///
    /// All values are absolute (not deltas) so replaying a call is harmless.
    pub fn record_progress(
        &self,
        id: i64,
        offset: u64,
        prefix_sha256: &str,
        bytes_sent: u64,
        resent_bytes: u64,
        rate_bps: Option<f64>,
    ) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE transfers SET offset = ?2, prefix_sha256 = ?3, bytes_sent = ?4, \
             resent_bytes = ?5, updated_at = ?6, rate_bps = ?7 WHERE id = ?1",
            params![
                id,
                offset,
                prefix_sha256,
                bytes_sent,
                resent_bytes,
                Utc::now().timestamp(),
                rate_bps
            ],
        )
    }

    /// Sets `state` and `last_error` (None clears it). Entering Done stamps
    /// `finished_at` (keeping an earlier stamp); any other state clears it.
    /// Entering Running counts one more attempt.
    pub fn set_state(
        &self,
        id: i64,
        state: TransferState,
        last_error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE transfers SET state = ?2, last_error = ?3, updated_at = ?4, \
             finished_at = CASE WHEN ?2 = 'done' THEN coalesce(finished_at, ?4) END, \
             attempts = attempts + (?2 = 'running') \
             WHERE id = ?1",
            params![id, state.as_str(), last_error, Utc::now().timestamp()],
        )
    }

    /// Mark complete and verified: state done, whole-file `sha256`, `finished_at`,
    /// `last_error` cleared.
    pub fn finish(&self, id: i64, sha256: &str) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE transfers SET state = 'done', sha256 = ?2, last_error = NULL, \
             updated_at = ?3, finished_at = ?3 WHERE id = ?1",
            params![id, sha256, Utc::now().timestamp()],
        )
    }

    /// Start over (the user passed --restart): upload_url NULL, offset 0, prefix NULL, sha256 NULL, new size/mtime, state queued.
    ///
    /// Also clears `last_error` and `finished_at`. The traffic counters
    /// (`bytes_sent`, `resent_bytes`, `attempts`) are kept: they describe what
    /// the link carried, which a restart does not undo.
    pub fn reset_transfer(&self, id: i64, size: u64, mtime_ns: i64) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE transfers SET upload_url = NULL, offset = 0, prefix_sha256 = NULL, \
             sha256 = NULL, size = ?2, mtime_ns = ?3, state = 'queued', last_error = NULL, \
             finished_at = NULL, delta_base = NULL, payload_size = NULL, updated_at = ?4 \
             WHERE id = ?1",
            params![id, size, mtime_ns, Utc::now().timestamp()],
        )
    }

    /// What the transfer's upload is from now on: a recipe of `payload_size` bytes against
    /// `delta_base`, or (both `None`) the file itself. Only with no upload begun.
    pub fn set_payload(
        &self,
        id: i64,
        delta_base: Option<&str>,
        payload_size: Option<u64>,
    ) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE transfers SET delta_base = ?2, payload_size = ?3, updated_at = ?4 \
             WHERE id = ?1",
            params![id, delta_base, payload_size, Utc::now().timestamp()],
        )
    }

    /// Which base the transfer is sent against from now on (a refused delta: none).
    pub fn set_base_choice(&self, id: i64, base: &BaseChoice) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE transfers SET base = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, base.to_column(), Utc::now().timestamp()],
        )
    }

    /// `upload queue resume` of an `upload send`'s transfer: it becomes the run's work.
    pub fn hand_to_queue(&self, id: i64) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE transfers SET origin = 'queue', state = 'queued', last_error = NULL, \
             updated_at = ?2 WHERE id = ?1",
            params![id, Utc::now().timestamp()],
        )
    }

    pub fn delete_transfer(&self, id: i64) -> Result<(), StoreError> {
        self.update(id, "DELETE FROM transfers WHERE id = ?1", params![id])
    }

    /// Advisory lock so two processes never send the same transfer: succeeds when
    /// unlocked, when already owned by `owner`, or when the holder's heartbeat is
    /// older than `stale_after` (the holder presumably died); returns
    /// `Ok(Err(current_owner))` when someone else holds it. One IMMEDIATE transaction.
    pub fn try_lock(
        &self,
        id: i64,
        owner: &str,
        stale_after: Duration,
    ) -> Result<Result<(), String>, StoreError> {
        let now = Utc::now().timestamp();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (holder, beat): (Option<String>, Option<i64>) = tx
            .query_row(
                "SELECT lock_owner, lock_heartbeat FROM transfers WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))?;
        if let Some(holder) = holder.filter(|h| h != owner) {
            let stale_secs = i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX);
            // A lock without a heartbeat cannot be vouched for: treat it as stale.
            let stale = beat.is_none_or(|b| now.saturating_sub(b) > stale_secs);
            if !stale {
                return Ok(Err(holder));
            }
        }
        // Lock bookkeeping deliberately leaves updated_at alone: heartbeats every
        // few seconds would drown the timestamp of real changes.
        tx.execute(
            "UPDATE transfers SET lock_owner = ?2, lock_heartbeat = ?3 WHERE id = ?1",
            params![id, owner, now],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Takes the lock from a holder known to be dead (same host, its process is gone), whose
    /// heartbeat may still look fresh.
    /// Returns false when the lock is no longer `dead_holder`'s (someone else took it first):
    /// a compare-and-swap, so two processes taking over the same dead lock cannot both win.
    pub fn take_lock(&self, id: i64, owner: &str, dead_holder: &str) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp();
        let n = self.conn().execute(
            "UPDATE transfers SET lock_owner = ?2, lock_heartbeat = ?3 \
             WHERE id = ?1 AND lock_owner IS ?4",
            params![id, owner, now, dead_holder],
        )?;
        Ok(n == 1)
    }

    /// Refresh `owner`'s lock. Fails with [`StoreError::LockLost`] when someone
    /// else took the lock over (it had gone stale): the caller must stop sending.
    pub fn heartbeat(&self, id: i64, owner: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        // The owner check is in the WHERE clause, so this single statement is
        // atomic without an explicit transaction.
        let n = conn.execute(
            "UPDATE transfers SET lock_heartbeat = ?3 WHERE id = ?1 AND lock_owner = ?2",
            params![id, owner, Utc::now().timestamp()],
        )?;
        if n == 1 {
            return Ok(());
        }
        let holder: Option<String> = conn
            .query_row(
                "SELECT lock_owner FROM transfers WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))?;
        Err(StoreError::LockLost { id, holder })
    }

    /// Release `owner`'s lock. A no-op when `owner` does not hold it (never
    /// steal someone else's) or the transfer is gone, so it is safe in cleanup paths.
    pub fn unlock(&self, id: i64, owner: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE transfers SET lock_owner = NULL, lock_heartbeat = NULL \
             WHERE id = ?1 AND lock_owner = ?2",
            params![id, owner],
        )?;
        Ok(())
    }

    /// Takes the lock of transfer `id` for `owner`: free, stale (no heartbeat for
    /// [`LOCK_STALE_AFTER`]) or held by a process of this host that is gone (killed while its
    /// heartbeat still looks fresh). Returns `Ok(Err(holder))` when a live process holds it,
    /// or took the dead one's lock first.
    pub fn acquire_lock(&self, id: i64, owner: &str) -> Result<Result<(), String>, StoreError> {
        match self.try_lock(id, owner, LOCK_STALE_AFTER)? {
            Ok(()) => Ok(Ok(())),
            Err(holder) if owner_is_dead(&holder) => {
                if self.take_lock(id, owner, &holder)? {
                    Ok(Ok(()))
                } else {
                    Ok(Err(holder))
                }
            }
            Err(holder) => Ok(Err(holder)),
        }
    }

    // ---- settings ----

    pub fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Deletes `key` only while it still holds `value`: a run removes its own owner record,
    /// never a later run's.
    pub fn delete_setting_if(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM settings WHERE key = ?1 AND value = ?2",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn delete_setting(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM settings WHERE key = ?1", [key])?;
        Ok(())
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// One-statement write to the transfer `id`; NotFound when no row matched.
    fn update(
        &self,
        id: i64,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<(), StoreError> {
        let n = self.conn().prepare_cached(sql)?.execute(params)?;
        if n == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }
}

/// Switch the file to WAL (persistent in the file, so a no-op after the first time).
///
/// Switching out of rollback mode needs an exclusive lock and SQLite reports
/// SQLITE_BUSY for it *without* consulting the busy handler, so several
/// processes opening a brand-new file at once would fail: retry for as long as
/// `busy_timeout` would have waited. If the filesystem cannot do WAL, SQLite
/// keeps the old mode; that only costs concurrency, so it is not an error.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.map(drop),
        }
    }
}

/// Per-connection settings (the journal mode is per file and set in `open`).
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

fn check_not_too_new(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let found = user_version(conn).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            supported: SCHEMA_VERSION,
            path: path.to_owned(),
        });
    }
    Ok(found)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let ctx = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ctx)?;
    // Re-read under the write lock: another process may have migrated meanwhile.
    let from = check_not_too_new(&tx, path)?;
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(sql).map_err(ctx)?;
        // user_version is part of the transaction, so schema and version commit together.
        tx.pragma_update(None, "user_version", v as u32 + 1)
            .map_err(ctx)?;
    }
    tx.commit().map_err(ctx)?;
    Ok(())
}

/// Paths are stored as TEXT so they are readable and comparable in SQL; a
/// non-UTF-8 path is refused rather than stored lossily, which could make two
/// different files look like the same transfer.
fn path_text(p: &Path) -> Result<&str, StoreError> {
    p.to_str().ok_or_else(|| StoreError::Io {
        path: p.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "path is not valid UTF-8; the upload database stores paths as text",
        ),
    })
}

fn time_from_secs(idx: usize, secs: i64) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0).ok_or(rusqlite::Error::IntegralValueOutOfRange(idx, secs))
}

fn time_from_row(r: &Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    time_from_secs(idx, r.get(idx)?)
}

fn opt_time_from_row(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    r.get::<_, Option<i64>>(idx)?
        .map(|s| time_from_secs(idx, s))
        .transpose()
}

// u64 columns go through rusqlite's u64 FromSql/ToSql, which are checked
// (out-of-range is an error, never a silent wrap).
fn transfer_from_row(r: &Row<'_>) -> rusqlite::Result<Transfer> {
    let state: String = r.get(11)?;
    let state = state.parse::<TransferState>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(11, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Transfer {
        id: r.get(0)?,
        name: r.get(1)?,
        source_path: PathBuf::from(r.get::<_, String>(2)?),
        size: r.get(3)?,
        mtime_ns: r.get(4)?,
        sha256: r.get(5)?,
        prefix_sha256: r.get(6)?,
        dest_url: r.get(7)?,
        upload_url: r.get(8)?,
        offset: r.get(9)?,
        chunk_size: r.get(10)?,
        state,
        priority: r.get(12)?,
        deadline: opt_time_from_row(r, 13)?,
        rate_limit_bps: r.get(14)?,
        bytes_sent: r.get(15)?,
        resent_bytes: r.get(16)?,
        attempts: r.get(17)?,
        last_error: r.get(18)?,
        lock_owner: r.get(19)?,
        created_at: time_from_row(r, 20)?,
        updated_at: time_from_row(r, 21)?,
        finished_at: opt_time_from_row(r, 22)?,
        rate_bps: r.get(23)?,
        origin: {
            let o: String = r.get(24)?;
            Origin::from_column(&o).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    24,
                    rusqlite::types::Type::Text,
                    format!("unknown origin {o:?}").into(),
                )
            })?
        },
        chunk_fixed: r.get(25)?,
        base: BaseChoice::from_column(r.get(26)?),
        delta_base: r.get(27)?,
        payload_size: r.get(28)?,
        polite: r.get(29)?,
    })
}

fn get_transfer(conn: &Connection, id: i64) -> Result<Transfer, StoreError> {
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = ?1");
    conn.prepare_cached(&sql)?
        .query_row([id], transfer_from_row)
        .optional()?
        .ok_or(StoreError::NotFound(id))
}

/// The [`Store`] for async code. A call can wait up to [`BUSY_TIMEOUT`] for another process's
/// write lock, and a runtime thread that waits stalls every transfer on it: each method runs
/// its call on tokio's blocking pool, here, once, so no caller hand-rolls the hand-off.
#[derive(Debug, Clone)]
pub struct AsyncStore(Store);

impl AsyncStore {
    pub fn new(store: Store) -> Self {
        AsyncStore(store)
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("a store call panicked")
    }

    /// The database file; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.0.path()
    }

    pub async fn transfer(&self, id: i64) -> Result<Transfer, StoreError> {
        self.call(move |s| s.transfer(id)).await
    }

    pub async fn find_unfinished(
        &self,
        source_path: &Path,
        dest_url: &str,
    ) -> Result<Option<Transfer>, StoreError> {
        let (path, url) = (source_path.to_path_buf(), dest_url.to_string());
        self.call(move |s| s.find_unfinished(&path, &url)).await
    }

    pub async fn list_transfers(&self) -> Result<Vec<Transfer>, StoreError> {
        self.call(|s| s.list_transfers()).await
    }

    pub async fn insert_transfer(&self, t: NewTransfer) -> Result<Transfer, StoreError> {
        self.call(move |s| s.insert_transfer(&t)).await
    }

    /// [`Store::reset_transfer`], returning the row as it is now.
    pub async fn reset_transfer(
        &self,
        id: i64,
        size: u64,
        mtime_ns: i64,
    ) -> Result<Transfer, StoreError> {
        self.call(move |s| {
            s.reset_transfer(id, size, mtime_ns)?;
            s.transfer(id)
        })
        .await
    }

    pub async fn set_upload_url(
        &self,
        id: i64,
        upload_url: Option<&str>,
    ) -> Result<(), StoreError> {
        let url = upload_url.map(str::to_string);
        self.call(move |s| s.set_upload_url(id, url.as_deref()))
            .await
    }

    pub async fn record_progress(
        &self,
        id: i64,
        offset: u64,
        prefix_sha256: &str,
        bytes_sent: u64,
        resent_bytes: u64,
        rate_bps: Option<f64>,
    ) -> Result<(), StoreError> {
        let prefix = prefix_sha256.to_string();
        self.call(move |s| {
            s.record_progress(id, offset, &prefix, bytes_sent, resent_bytes, rate_bps)
        })
        .await
    }

    pub async fn set_state(
        &self,
        id: i64,
        state: TransferState,
        last_error: Option<&str>,
    ) -> Result<(), StoreError> {
        let error = last_error.map(str::to_string);
        self.call(move |s| s.set_state(id, state, error.as_deref()))
            .await
    }

    pub async fn set_payload(
        &self,
        id: i64,
        delta_base: Option<String>,
        payload_size: Option<u64>,
    ) -> Result<(), StoreError> {
        self.call(move |s| s.set_payload(id, delta_base.as_deref(), payload_size))
            .await
    }

    pub async fn set_base_choice(&self, id: i64, base: BaseChoice) -> Result<(), StoreError> {
        self.call(move |s| s.set_base_choice(id, &base)).await
    }

    pub async fn finish(&self, id: i64, sha256: &str) -> Result<(), StoreError> {
        let sha = sha256.to_string();
        self.call(move |s| s.finish(id, &sha)).await
    }

    pub async fn add_link_sample(&self, sample: LinkSample) -> Result<(), StoreError> {
        self.call(move |s| s.add_link_sample(&sample)).await
    }

    pub async fn acquire_lock(
        &self,
        id: i64,
        owner: &str,
    ) -> Result<Result<(), String>, StoreError> {
        let owner = owner.to_string();
        self.call(move |s| s.acquire_lock(id, &owner)).await
    }

    pub async fn heartbeat(&self, id: i64, owner: &str) -> Result<(), StoreError> {
        let owner = owner.to_string();
        self.call(move |s| s.heartbeat(id, &owner)).await
    }

    pub async fn unlock(&self, id: i64, owner: &str) -> Result<(), StoreError> {
        let owner = owner.to_string();
        self.call(move |s| s.unlock(id, &owner)).await
    }

    pub async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.call(move |s| s.get_setting(&key)).await
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.call(move |s| s.set_setting(&key, &value)).await
    }

    pub async fn delete_setting(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call(move |s| s.delete_setting(&key)).await
    }

    pub async fn recent_unthrottled_link_samples(
        &self,
        host: Option<String>,
        limit: usize,
    ) -> Result<Vec<LinkSample>, StoreError> {
        self.call(move |s| s.recent_unthrottled_link_samples(host.as_deref(), limit))
            .await
    }

    pub async fn delete_setting_if(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.call(move |s| s.delete_setting_if(&key, &value)).await
    }
}

/// A lock whose heartbeat is older than this is taken over: its holder stopped beating
/// (heartbeats come every 10 s), perhaps on another host where we cannot look for it.
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(60);

/// `pid@host` of this process: the owner name of transfer locks and of a run.
pub fn lock_owner() -> String {
    format!("{}@{}", std::process::id(), hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A lock owner (`pid@host`) that is a process on this host that no longer runs (killed,
/// crashed). An owner on another host is never declared dead here: only its heartbeat can.
pub fn owner_is_dead(owner: &str) -> bool {
    let Some((pid, host)) = owner.split_once('@') else {
        return false;
    };
    host == hostname()
        && pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_is_deleted_only_while_it_holds_the_value() {
        let s = Store::open_in_memory().unwrap();
        s.set_setting("run_owner", "1@a").unwrap();
        s.delete_setting_if("run_owner", "2@a").unwrap();
        assert_eq!(s.get_setting("run_owner").unwrap().as_deref(), Some("1@a"));
        s.delete_setting_if("run_owner", "1@a").unwrap();
        assert_eq!(s.get_setting("run_owner").unwrap(), None);
    }

    #[test]
    fn a_transfer_remembers_its_base_and_its_payload() {
        let s = Store::open_in_memory().unwrap();
        let mut new = new_transfer("RC2.iso");
        new.base = BaseChoice::Named("RC1.iso".into());
        let t = s.insert_transfer(&new).unwrap();
        assert_eq!(t.base, BaseChoice::Named("RC1.iso".into()));
        assert_eq!((t.delta_base.as_deref(), t.bytes_to_send()), (None, t.size));
        s.set_payload(t.id, Some("RC1.iso"), Some(1234)).unwrap();
        let t = s.transfer(t.id).unwrap();
        assert_eq!(
            (t.delta_base.as_deref(), t.bytes_to_send()),
            (Some("RC1.iso"), 1234)
        );
        s.set_base_choice(t.id, &BaseChoice::Full).unwrap();
        assert_eq!(s.transfer(t.id).unwrap().base, BaseChoice::Full);
        s.reset_transfer(t.id, 5, 6).unwrap();
        let t = s.transfer(t.id).unwrap();
        assert_eq!(
            (t.delta_base, t.payload_size, t.base),
            (None, None, BaseChoice::Full)
        );
        let plain = s.insert_transfer(&new_transfer("x")).unwrap();
        assert_eq!(plain.base, BaseChoice::SameName);
    }

    #[test]
    fn a_version_6_database_gains_the_polite_mark_and_its_rows_are_not_polite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v6.db");
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..6] {
                c.execute_batch(m).unwrap();
            }
            c.execute_batch(
                "INSERT INTO transfers (name, source_path, size, mtime_ns, dest_url, chunk_size, \
                 state, created_at, updated_at) VALUES ('old.iso', '/old.iso', 10, 1, \
                 'http://h/files/', 5, 'queued', 0, 0); PRAGMA user_version = 6;",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let old = &s.list_transfers().unwrap()[0];
        assert_eq!((old.name.as_str(), old.polite), ("old.iso", false));
        let polite = s
            .insert_transfer_as(&new_transfer("new.iso"), true)
            .unwrap();
        assert!(polite.polite);
        assert!(s.transfer(polite.id).unwrap().polite, "read back");
        assert!(
            !s.insert_transfer(&new_transfer("plain.iso"))
                .unwrap()
                .polite
        );
    }

    #[test]
    fn dead_owners_are_recognised() {
        assert!(!owner_is_dead(&lock_owner()));
        assert!(owner_is_dead(&format!("4000000000@{}", hostname())));
        assert!(!owner_is_dead("1@another-host"));
    }

    fn new_transfer(name: &str) -> NewTransfer {
        NewTransfer {
            name: name.to_owned(),
            source_path: PathBuf::from(format!("/data/{name}")),
            size: 10_000_000_000,
            mtime_ns: 1_700_000_000_123_456_789,
            dest_url: "https://files.example/uploads".to_owned(),
            chunk_size: 4 << 20,
            chunk_fixed: true,
            state: TransferState::Queued,
            priority: 0,
            deadline: None,
            rate_limit_bps: None,
            origin: Origin::Queue,
            base: BaseChoice::SameName,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    /// Tests may poke columns the API deliberately does not expose.
    fn exec(store: &Store, sql: &str, p: &[&dyn rusqlite::ToSql]) {
        store.conn().execute(sql, p).unwrap();
    }

    #[test]
    fn migrations_create_current_version() {
        let s = Store::open_in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(SCHEMA_VERSION, 7);
        assert!(s.path().is_none());
    }

    #[test]
    fn open_creates_dirs_and_reopen_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/upload.db");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.path(), Some(path.as_path()));
        let id = s.insert_transfer(&new_transfer("x")).unwrap().id;
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.transfer(id).unwrap().name, "x");
        let s2 = Store::open(&path).unwrap();
        assert_eq!(s2.list_transfers().unwrap().len(), 1);
    }

    #[test]
    fn a_version_1_database_is_migrated_forward_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(
                "INSERT INTO transfers (name, source_path, size, mtime_ns, dest_url, chunk_size, \
                 state, created_at, updated_at) VALUES ('old.iso', '/old.iso', 10, 1, \
                 'http://h/files/', 5, 'queued', 0, 0); PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let t = &s.list_transfers().unwrap()[0];
        assert_eq!((t.name.as_str(), t.size, t.rate_bps), ("old.iso", 10, None));
        // Rows from before origins were recorded stay queued work.
        assert_eq!(t.origin, Origin::Queue);
    }

    #[test]
    fn a_sends_transfer_is_handed_to_the_queue_explicitly() {
        let s = Store::open_in_memory().unwrap();
        let mut new = new_transfer("adhoc.iso");
        new.origin = Origin::Send;
        let t = s.insert_transfer(&new).unwrap();
        assert_eq!(t.origin, Origin::Send);
        s.set_state(t.id, TransferState::Paused, Some("interrupted"))
            .unwrap();
        s.hand_to_queue(t.id).unwrap();
        let t = s.transfer(t.id).unwrap();
        assert_eq!(
            (t.origin, t.state, t.last_error),
            (Origin::Queue, TransferState::Queued, None)
        );
        assert!(matches!(
            s.hand_to_queue(999),
            Err(StoreError::NotFound(999))
        ));
    }

    #[test]
    fn too_new_is_refused_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE future (x TEXT); INSERT INTO future VALUES ('keep me');
                 PRAGMA user_version = 99;",
            )
            .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        match &err {
            StoreError::TooNew {
                found,
                supported,
                path: p,
            } => {
                assert_eq!((*found, *supported), (99, SCHEMA_VERSION));
                assert_eq!(p, &path);
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("newer `upload`"), "{msg}");
        assert!(msg.contains("not modified"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "file bytes changed");
        let c = Connection::open(&path).unwrap();
        assert_eq!(user_version(&c).unwrap(), 99);
        let x: String = c
            .query_row("SELECT x FROM future", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, "keep me");
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }

    #[test]
    fn wal_and_pragmas_are_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("u.db")).unwrap();
        let c = s.conn();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = c
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let fk: i64 = c
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let timeout: i64 = c
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, 30_000);
    }

    #[test]
    fn default_path_layout() {
        // Only checks the shape for whatever the environment has; mutating env
        // vars would race with other tests.
        if let Ok(p) = default_db_path() {
            assert!(p.ends_with("upload/upload.db"), "{}", p.display());
        }
        assert!(StoreError::NoStateDir.to_string().contains("UPLOAD_DB="));
    }

    #[test]
    fn link_samples_round_trip_filter_order_limit() {
        let s = Store::open_in_memory().unwrap();
        for i in 0..5 {
            for host in ["a.example", "b.example"] {
                s.add_link_sample(&LinkSample {
                    host: host.to_owned(),
                    at: at(1_700_000_000 + i),
                    bytes: 1000 * (i as u64 + 1),
                    seconds: 0.5 + i as f64,
                    limit_bps: None,
                })
                .unwrap();
            }
        }
        let a = s.recent_link_samples(Some("a.example"), 3).unwrap();
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|x| x.host == "a.example"));
        assert_eq!(
            a[0],
            LinkSample {
                host: "a.example".into(),
                at: at(1_700_000_004),
                bytes: 5000,
                seconds: 4.5,
                limit_bps: None,
            }
        );
        assert!(a.windows(2).all(|w| w[0].at >= w[1].at));
        let all = s.recent_link_samples(None, 100).unwrap();
        assert_eq!(all.len(), 10);
        assert!(all.windows(2).all(|w| w[0].at >= w[1].at));
        assert!(
            s.recent_link_samples(Some("c.example"), 3)
                .unwrap()
                .is_empty()
        );
        assert!(s.recent_link_samples(None, 0).unwrap().is_empty());
    }

    #[test]
    fn throttled_link_samples_are_kept_but_left_out_of_estimates() {
        let s = Store::open_in_memory().unwrap();
        for (i, limit) in [None, Some(1e6), None].into_iter().enumerate() {
            s.add_link_sample(&LinkSample {
                host: "a.example".into(),
                at: at(1_700_000_000 + i as i64),
                bytes: 1000,
                seconds: 1.0,
                limit_bps: limit,
            })
            .unwrap();
        }
        let all = s.recent_link_samples(None, 10).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].limit_bps, Some(1e6));
        let free = s
            .recent_unthrottled_link_samples(Some("a.example"), 10)
            .unwrap();
        assert_eq!(free.len(), 2);
        assert!(free.iter().all(|x| x.limit_bps.is_none()));
    }

    #[test]
    fn a_version_3_databases_link_samples_count_as_unthrottled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..3] {
                c.execute_batch(m).unwrap();
            }
            c.execute_batch(
                "INSERT INTO link_samples (host, at, bytes, seconds) \
                 VALUES ('a.example', 5, 16000, 1.0); PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let got = s.recent_unthrottled_link_samples(None, 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].bytes, got[0].limit_bps), (16000, None));
    }

    #[test]
    fn transfer_lifecycle() {
        let s = Store::open_in_memory().unwrap();
        let mut nt = new_transfer("big.iso");
        nt.deadline = Some(at(1_800_000_000));
        nt.rate_limit_bps = Some(125_000.0);
        let t = s.insert_transfer(&nt).unwrap();
        assert_eq!(t.state, TransferState::Queued);
        assert_eq!((t.offset, t.bytes_sent, t.attempts), (0, 0, 0));
        assert_eq!(t.size, 10_000_000_000);
        assert_eq!(t.deadline, Some(at(1_800_000_000)));
        assert_eq!(t.rate_limit_bps, Some(125_000.0));
        assert!(t.upload_url.is_none() && t.finished_at.is_none());
        assert_eq!(s.transfer(t.id).unwrap().name, "big.iso");
        assert!(matches!(s.transfer(999), Err(StoreError::NotFound(999))));

        s.set_upload_url(t.id, Some("https://files.example/uploads/abc"))
            .unwrap();
        s.set_state(t.id, TransferState::Running, None).unwrap();
        s.record_progress(t.id, 8 << 20, "ab12", 9 << 20, 1 << 20, Some(128_000.0))
            .unwrap();
        let t1 = s.transfer(t.id).unwrap();
        assert_eq!(t1.state, TransferState::Running);
        assert_eq!(t1.attempts, 1);
        assert_eq!(t1.offset, 8 << 20);
        assert_eq!(t1.prefix_sha256.as_deref(), Some("ab12"));
        assert_eq!((t1.bytes_sent, t1.resent_bytes), (9 << 20, 1 << 20));
        assert!(matches!(
            s.record_progress(999, 1, "x", 1, 0, None),
            Err(StoreError::NotFound(999))
        ));

        s.set_state(t.id, TransferState::Paused, Some("link down"))
            .unwrap();
        assert_eq!(
            s.transfer(t.id).unwrap().last_error.as_deref(),
            Some("link down")
        );
        let found = s
            .find_unfinished(&nt.source_path, &nt.dest_url)
            .unwrap()
            .unwrap();
        assert_eq!(found.id, t.id);

        s.finish(t.id, "deadbeef").unwrap();
        let done = s.transfer(t.id).unwrap();
        assert_eq!(done.state, TransferState::Done);
        assert_eq!(done.sha256.as_deref(), Some("deadbeef"));
        assert!(done.finished_at.is_some() && done.last_error.is_none());
        assert!(
            s.find_unfinished(&nt.source_path, &nt.dest_url)
                .unwrap()
                .is_none(),
            "Done transfers are not resumable"
        );

        s.reset_transfer(t.id, 42, 7).unwrap();
        let r = s.transfer(t.id).unwrap();
        assert_eq!(r.state, TransferState::Queued);
        assert_eq!((r.size, r.mtime_ns, r.offset), (42, 7, 0));
        assert!(r.upload_url.is_none() && r.prefix_sha256.is_none() && r.sha256.is_none());
        assert!(r.finished_at.is_none());

        s.set_state(t.id, TransferState::Done, None).unwrap();
        assert!(s.transfer(t.id).unwrap().finished_at.is_some());
        s.delete_transfer(t.id).unwrap();
        assert!(matches!(
            s.delete_transfer(t.id),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn find_unfinished_picks_newest_not_done() {
        let s = Store::open_in_memory().unwrap();
        let nt = new_transfer("f");
        let old = s.insert_transfer(&nt).unwrap();
        let new = s.insert_transfer(&nt).unwrap();
        let done = s.insert_transfer(&nt).unwrap();
        s.finish(done.id, "x").unwrap();
        exec(
            &s,
            "UPDATE transfers SET created_at = 100 WHERE id = ?1",
            &[&old.id],
        );
        exec(
            &s,
            "UPDATE transfers SET created_at = 200 WHERE id = ?1",
            &[&new.id],
        );
        let f = s.find_unfinished(&nt.source_path, &nt.dest_url).unwrap();
        assert_eq!(f.unwrap().id, new.id);
        assert!(
            s.find_unfinished(&nt.source_path, "https://elsewhere.example/")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn list_in_queue_order() {
        let s = Store::open_in_memory().unwrap();
        let mut ids = std::collections::HashMap::new();
        let specs: [(&str, i64, Option<i64>, i64); 6] = [
            ("low", -1, None, 10),
            ("nodeadline_old", 0, None, 10),
            ("nodeadline_new", 0, None, 20),
            ("late", 0, Some(5_000), 30),
            ("soon", 0, Some(1_000), 40),
            ("urgent", 5, None, 50),
        ];
        for (name, prio, deadline, created) in specs {
            let mut nt = new_transfer(name);
            nt.priority = prio;
            nt.deadline = deadline.map(at);
            let id = s.insert_transfer(&nt).unwrap().id;
            exec(
                &s,
                "UPDATE transfers SET created_at = ?2 WHERE id = ?1",
                &[&id, &created],
            );
            ids.insert(id, name);
        }
        let names: Vec<_> = s
            .list_transfers()
            .unwrap()
            .iter()
            .map(|t| ids[&t.id])
            .collect();
        assert_eq!(
            names,
            [
                "urgent",
                "soon",
                "late",
                "nodeadline_old",
                "nodeadline_new",
                "low"
            ]
        );
    }

    #[test]
    fn try_lock_semantics() {
        let s = Store::open_in_memory().unwrap();
        let id = s.insert_transfer(&new_transfer("l")).unwrap().id;
        let stale = Duration::from_secs(60);
        assert_eq!(s.try_lock(id, "1@a", stale).unwrap(), Ok(()));
        assert_eq!(s.try_lock(id, "1@a", stale).unwrap(), Ok(()), "same owner");
        assert_eq!(s.try_lock(id, "2@b", stale).unwrap(), Err("1@a".to_owned()));
        assert_eq!(s.transfer(id).unwrap().lock_owner.as_deref(), Some("1@a"));
        s.heartbeat(id, "1@a").unwrap();

        // The holder goes quiet for longer than stale_after: takeover.
        let old = Utc::now().timestamp() - 120;
        exec(
            &s,
            "UPDATE transfers SET lock_heartbeat = ?2 WHERE id = ?1",
            &[&id, &old],
        );
        assert_eq!(s.try_lock(id, "2@b", stale).unwrap(), Ok(()));
        assert_eq!(s.transfer(id).unwrap().lock_owner.as_deref(), Some("2@b"));
        // The old holder learns it lost the lock, and cannot release the new one.
        match s.heartbeat(id, "1@a") {
            Err(StoreError::LockLost { holder, .. }) => assert_eq!(holder.as_deref(), Some("2@b")),
            other => panic!("expected LockLost, got {other:?}"),
        }
        s.unlock(id, "1@a").unwrap();
        assert_eq!(s.transfer(id).unwrap().lock_owner.as_deref(), Some("2@b"));
        s.unlock(id, "2@b").unwrap();
        assert_eq!(s.transfer(id).unwrap().lock_owner, None);
        assert_eq!(s.try_lock(id, "3@c", stale).unwrap(), Ok(()));
        assert!(matches!(
            s.try_lock(999, "1@a", stale),
            Err(StoreError::NotFound(999))
        ));
    }

    #[test]
    fn settings_round_trip() {
        let s = Store::open_in_memory().unwrap();
        assert_eq!(s.get_setting("budget_bps").unwrap(), None);
        s.set_setting("budget_bps", "1000").unwrap();
        s.set_setting("budget_bps", "2000").unwrap();
        assert_eq!(
            s.get_setting("budget_bps").unwrap().as_deref(),
            Some("2000")
        );
    }

    #[test]
    fn state_names_round_trip() {
        for st in TransferState::ALL {
            assert_eq!(st.as_str().parse::<TransferState>().unwrap(), st);
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
        assert!("Done".parse::<TransferState>().is_err());
    }

    #[test]
    fn store_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<Store>();
    }

    #[test]
    fn concurrent_first_open_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.db");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Store::open(&path).unwrap().schema_version().unwrap())
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), SCHEMA_VERSION);
        }
    }

    #[test]
    fn two_processes_worth_of_connections_do_not_hit_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let seed = Store::open(&path).unwrap();
        let base = seed.insert_transfer(&new_transfer("seed")).unwrap().id;
        drop(seed);
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Each thread has its own connection, as separate processes would.
                    let s = Store::open(&path).unwrap();
                    for i in 0..200u64 {
                        if i % 2 == 0 {
                            s.record_progress(base, i, "00", i, t, None).unwrap();
                        } else {
                            s.insert_transfer(&new_transfer(&format!("t{t}-{i}")))
                                .unwrap();
                        }
                        s.try_lock(base, &format!("{t}@h"), Duration::from_secs(3600))
                            .unwrap()
                            .ok();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list_transfers().unwrap().len(), 1 + 2 * 100);
    }
}
