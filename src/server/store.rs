//! What the server needs from wherever uploads are kept: the [`Store`] trait, the bytes of one
//! request on their way in ([`Part`]), and the record of an upload ([`Info`]).
//!
//! The protocol code (`handlers`, `append`, `uploads`) speaks only to this trait; the
//! directory store (`dir_store`, `--dir`) and the S3 store (`s3_store`, `--store s3://`) are
//! its implementations. The seam is cut where a store
//! that keeps nothing on the server's disk (an object store, shared by several servers) differs
//! from a directory, and nowhere else:
//! - A body is appended through a [`Part`], in batches, and only [`Part::commit`] says the
//!   bytes are durable; the caller records the new offset ([`Store::save_info`]) after it. So a
//!   store may gather small PATCHes into larger pieces (an object store's parts have a minimum
//!   size) and decide at commit how to keep the remainder, as long as a committed offset is
//!   never ahead of what survives a crash. [`Part::discard`] forgets a rejected body (checksum,
//!   size, interruption of a checksummed body) back to where the part started.
//! - The record ([`Info`]) is saved and loaded whole, never patched field by field: one write
//!   per change, which an object store can make conditional.
//! - Publishing names a file by the upload's id, the owner's directory and a wanted name, and
//!   the store applies the no-clobber policy where the names live.
//! - Nothing here is about the local disk (free space, recovery at start-up, paths): those are
//!   the directory store's own, used while the server starts.
//!
//! Every method blocks: callers run them on the blocking pool (`uploads::blocking`), which is
//! also what lets a body's batches be hashed and written while the next ones arrive. The
//! per-upload lock stays in `uploads`, in memory. Where several server processes share one
//! store (`upload serve --stdio`, one process per ssh session; or server instances on one
//! bucket, [`Store::shared`]), [`Store::claim`] keeps them apart, upload by upload; a store
//! used by one process only needs nothing for it (the default). An upload's running SHA-256
//! travels in its record ([`Info::running_sha256`]), so no store has to read bytes back.

use super::names::Id;
use super::running_sha::{RunningSha, ShaState};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where uploads are kept while they arrive, and published once complete.
pub(crate) trait Store: Send + Sync + 'static {
    /// Creates an empty upload with its first record. Fails if `id` exists.
    fn create(&self, info: &Info, id: &Id) -> io::Result<()>;

    /// Replaces an upload's record atomically: after a crash the old one or the new one is
    /// there, whole.
    fn save_info(&self, info: &Info, id: &Id) -> io::Result<()>;

    /// An upload's record, with its bytes made to agree with it (anything past the committed
    /// offset was never acknowledged and goes). `None` when there is no such upload.
    fn load(&self, id: &Id) -> io::Result<Option<Info>>;

    /// Starts appending at `offset`, the committed one; anything kept past it (left by a
    /// request that failed between writing and committing) is dropped first.
    fn open_part(&self, id: &Id, offset: u64) -> io::Result<Box<dyn Part>>;

    /// The SHA-256 state of an upload's first `len` bytes, read back from the store, for an
    /// upload first touched since a restart whose record holds no state
    /// ([`Info::running_sha256`], absent from records older than it). A store that cannot
    /// read its bytes back says so with an error.
    fn hash_part(&self, id: &Id, len: u64) -> io::Result<RunningSha>;

    /// Removes an upload, its record first: once the record is gone the upload is gone.
    fn remove(&self, id: &Id) -> io::Result<()>;

    /// Removes an upload's bytes and keeps its record: after publishing (the published file
    /// has them) or a whole-file digest mismatch (the record says so).
    fn remove_part(&self, id: &Id) -> io::Result<()>;

    /// Publishes a complete upload of `len` bytes and SHA-256 `sha256` under `name` or, when
    /// taken by other content, the first free `stem.N.ext`, in the top level or, with
    /// `subdir` (a token name), in that token's directory. Never overwrites; identical content
    /// under a candidate counts as delivered there. Returns the name used (within its
    /// directory). The bytes stay until [`Store::remove_part`], once the record names it.
    fn publish(
        &self,
        id: &Id,
        subdir: Option<&str>,
        name: &str,
        len: u64,
        sha256: &[u8; 32],
    ) -> io::Result<String>;

    /// What stands where token `name`'s uploads are published: nothing is published through
    /// anything but a real directory.
    fn token_dir(&self, name: &str) -> io::Result<TokenDir>;

    /// The ids of every upload kept, removing leftovers older than `expire_after` that no
    /// upload owns (remains of a crash between two steps).
    fn list(&self, expire_after: Duration) -> io::Result<Vec<Id>>;

    /// Which of the tus extensions that depend on the store this one supports: the server
    /// advertises and serves exactly those.
    fn capabilities(&self) -> Capabilities;

    /// Delta uploads (issue 13), when this store supports them: indexes of published files
    /// and assembly of recipes (see `server::delta`). `Tus-Extension` names `delta` exactly
    /// when this is `Some`; a store without it needs nothing more.
    fn delta(&self) -> Option<&dyn super::delta::DeltaStore> {
        None
    }

    /// Takes upload `id` for this process alone, against other server processes on the same
    /// store, for as long as the returned [`Claim`] lives; called before the upload is loaded
    /// or created, only by servers started to share their store (`serve --stdio`). A holder
    /// that is a lingering `serve --stdio` (its ssh session died) is told to stop and let go;
    /// it must not write once it has (the directory store's claim ends only with the holder's
    /// process or its claim). `Ok(None)`: another process holds it and did not let go.
    /// The default, for a store only one process uses, claims nothing.
    fn claim(&self, id: &Id) -> io::Result<Option<Claim>> {
        let _ = id;
        Ok(Some(Claim::default()))
    }

    /// Whether several server instances use this store at once, each started on its own
    /// (`serve --store s3://...` behind one address): then every request claims its upload
    /// ([`Store::claim`]) for its own length only and reads the record again, since another
    /// instance may have moved it on since this one last looked (see `uploads`).
    fn shared(&self) -> bool {
        false
    }
}

/// Exclusive use of one upload across processes (see [`Store::claim`]). A store whose claim
/// ends before the process does (a lease) keeps it in `token`: dropping it lets go.
#[derive(Default)]
pub(crate) struct Claim {
    #[allow(dead_code)]
    pub(crate) token: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// The tus extensions a store may or may not support, as tusd's composer has them: the rest
/// (creation, creation-with-upload, checksum) the server implements over any store, since
/// they need only creating, appending and discarding. A store without one is never asked for
/// it, and `Tus-Extension` does not name it, so a client learns it before it relies on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// creation-defer-length: an upload may be created before its length is known (a store
    /// that lays out its pieces by the length, or reserves it, needs it at creation).
    pub defer_length: bool,
    /// termination: a client may remove its upload ([`Store::remove`] on request).
    pub termination: bool,
    /// expiration: [`Store::list`] finds every upload kept, so idle ones are removed after
    /// `Config::expire_after` and each response says when (`Upload-Expires`). Without it
    /// uploads stay until terminated, and nothing is swept.
    pub expiration: bool,
}

/// The bytes of one request being appended to an upload, from the offset it was opened at.
/// It moves between the request task and the blocking pool, one batch at a time.
pub(crate) trait Part: Send + 'static {
    /// Appends `batch`, in order, and empties it. Appended is not yet durable.
    fn append(&mut self, batch: &mut Vec<Bytes>) -> io::Result<()>;

    /// Makes everything appended durable; only then may the offset be recorded past it.
    fn commit(self: Box<Self>) -> io::Result<()>;

    /// Forgets everything appended: the upload stays at the offset the part was opened at.
    fn discard(self: Box<Self>) -> io::Result<()>;
}

/// What the server keeps about one upload: the record a store saves and loads whole (the
/// directory store as `<id>.info`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Info {
    pub id: String,
    /// `None` until a deferred length is declared.
    pub length: Option<u64>,
    /// Committed bytes: made durable by [`Part::commit`] before this was saved.
    pub offset: u64,
    /// `Upload-Metadata` as received, echoed on HEAD.
    pub metadata: String,
    /// The declared whole-file SHA-256 (hex): metadata `sha256` at creation, or the first
    /// `Repr-Digest` a request carried, recorded before any byte of that request was kept.
    /// Completing the upload checks it; only an upload without one is published unverified.
    pub expected_sha256: Option<String>,
    /// The name of the token that created the upload (never the token itself). `None` without
    /// auth, and in info files written before owners were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The running SHA-256 of bytes `0..offset`, saved with the offset it belongs to, so the
    /// upload resumes without reading its bytes again (an object store cannot). Absent in
    /// records written before it was kept: the store then hashes what it holds
    /// ([`Store::hash_part`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_sha256: Option<ShaState>,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds of the last POST or PATCH: expiry counts from here.
    pub last_activity_ms: u64,
    pub state: State,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Partial,
    /// Complete and published as `<name>`; kept so HEAD can say where, until it expires.
    Published {
        name: String,
        sha256: String,
    },
    /// Complete but its SHA-256 was not the declared one: the data is gone; HEAD says 410.
    Failed {
        declared: String,
        received: String,
    },
    /// A delta recipe that could not be used (see `server::delta`): nothing was published;
    /// HEAD and PATCH say 412 with `code` (`Upload-Delta-Refused`) and `why`.
    Refused {
        code: String,
        why: String,
    },
}

impl Info {
    pub fn expires_at(&self, expire_after: Duration) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.last_activity_ms) + expire_after
    }

    pub fn is_expired(&self, expire_after: Duration, now: SystemTime) -> bool {
        self.expires_at(expire_after) <= now
    }

    pub fn is_complete(&self) -> bool {
        self.length == Some(self.offset)
    }

    /// The saved running SHA-256, when there is one for exactly the committed offset.
    pub(crate) fn resume_sha(&self) -> Option<RunningSha> {
        self.running_sha256
            .as_ref()
            .filter(|s| s.len == self.offset)
            .and_then(RunningSha::resume)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What stands where a token's uploads are published (see [`Store::token_dir`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDir {
    /// Nothing yet: created on the first publication.
    Absent,
    /// A real directory.
    Directory,
    /// Something that must not be used, said for people ("a symbolic link", ...).
    Unusable(&'static str),
}
