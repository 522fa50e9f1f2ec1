//! The directory store, the server's [`Store`] for `--dir DIR`: one part file and one info
//! file per upload under `DIR/.partial/`, and publishing a finished part under its final name
//! in `DIR`.
//!
//! ```text
//! DIR/debian.iso                    published: complete and verified (or unverified, see mod)
//! DIR/alice/debian.iso              the same with per-token directories, for token `alice`
//! DIR/.partial/<id>.part            the bytes received so far (may run past the offset)
//! DIR/.partial/<id>.info            JSON: the committed offset, length, metadata, state
//! DIR/.partial/<id>.info.tmp        an info file being replaced
//! DIR/.partial/<id>.lock            the claim of a `serve --stdio` process: flock'd, its pid
//! DIR/.partial/<id>.built           a delta upload's new file, built from its recipe
//! DIR/.upload-index/<name>.sha256   the identity and SHA-256 of DIR/<name>, recorded at publishing
//! DIR/.upload-index/<name>.idx      the chunk index of DIR/<name> (made when first asked for)
//! DIR/alice/.upload-index/...       the same for DIR/alice/
//! ```
//!
//! `.upload-index` starts with a dot, which no published name or token name can
//! (`names::safe_name`, `names::check_dir_name`), so it can never be published over or be
//! mistaken for a file. Both sidecars are caches, never the truth: a record whose identity
//! (size, mtime ns, inode, device) no longer matches its file is ignored, and an index whose
//! header does not is made again.
//!
//! Claims ([`Store::claim`]): `serve --stdio` runs once per ssh session, so a session that died
//! on a dead link can leave its process behind, holding an upload in a PATCH that waits for
//! bytes that never come, while the client's next session starts another. The claim is an
//! exclusive `flock` on the lock file, held until the process exits (or drops it), with the
//! holder's pid written inside. The new process asks the holder to stop (SIGTERM, and SIGCONT
//! in case it was stopped): it interrupts its request, keeps or discards the partial body as
//! for any interruption, and exits; after [`EVICT_GRACE`] it gets SIGKILL. Only when the
//! kernel released the lock (the holder is dead: a claim is kept until the process exits, or
//! its upload is removed) does the new one load the upload from disk, so the old one never
//! writes after losing it, not even from a blocking write still under way as it shuts down. Only holders that wrote
//! `serve --stdio` into the file are signalled.
//!
//! The info file is the truth about what was received: it is only rewritten (tmp, fsync,
//! rename, fsync dir) after the part file's bytes up to the new offset are on disk (fdatasync).
//! After a crash the part file may hold more than the offset (bytes written, never committed);
//! loading truncates it. A finished upload's part file left by a kill during publishing goes at
//! the next start ([`DirStore::recover`]). Everything here is blocking `std::fs`: callers run it on the blocking
//! pool.

use super::delta::{Assembled, DeltaStore, Refusal};
use super::names::{self, Id};
use super::running_sha::RunningSha;
use super::store::{Capabilities, Info, Part, State, Store, TokenDir};
use crate::delta::{FileIdentity, FormatError, Index, Params, RecipeReader, recipe};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The directory of unfinished uploads, inside `DIR` so that publishing is a hard link on the
/// same file system; the dot keeps it out of casual listings.
pub const PARTIAL_DIR: &str = ".partial";

/// Where each publishing directory keeps what it knows of its files (see the module doc).
pub const INDEX_DIR: &str = ".upload-index";

/// The upload directory and its `.partial` subdirectory.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    partial: PathBuf,
    /// Held while an index is made: a second request for the same index (a client retrying
    /// while a big file is read) waits and finds it made, instead of reading the file again.
    indexing: std::sync::Mutex<()>,
    /// The lock files of the claims this process holds, kept open (locked) until it exits.
    claimed: std::sync::Mutex<std::collections::HashMap<Id, File>>,
}

impl DirStore {
    /// Creates `DIR/.partial` (and `DIR`) when missing.
    pub fn open(dir: &Path) -> io::Result<DirStore> {
        let partial = dir.join(PARTIAL_DIR);
        fs::create_dir_all(&partial)?;
        Ok(DirStore {
            dir: dir.to_path_buf(),
            partial,
            indexing: std::sync::Mutex::new(()),
            claimed: std::sync::Mutex::default(),
        })
    }

    fn part_path(&self, id: &Id) -> PathBuf {
        self.partial.join(format!("{id}.part"))
    }

    fn info_path(&self, id: &Id) -> PathBuf {
        self.partial.join(format!("{id}.info"))
    }

    /// A delta upload's new file, built from its recipe (the part file) and its base.
    fn built_path(&self, id: &Id) -> PathBuf {
        self.partial.join(format!("{id}.built"))
    }

    /// The publishing directory of `subdir` (a token name), or `DIR`; `None` when it is not
    /// a usable directory (nothing is published there then, so nothing can be read).
    fn published_dir(&self, subdir: Option<&str>) -> Option<PathBuf> {
        match subdir {
            None => Some(self.dir.clone()),
            Some(name) => {
                names::check_dir_name(name).ok()?;
                matches!(self.token_dir(name), Ok(TokenDir::Directory)).then(|| self.dir.join(name))
            }
        }
    }

    /// Removes the part files of finished uploads, at start-up. Publishing records the name and
    /// only then removes the part file, which is by then a second hard link to the published
    /// file (and a failed upload's record is written before its data goes): a kill in between
    /// leaves the part file beside a record that no longer needs it, for as long as the record
    /// lives (the expiry, a week by default). Returns how many went.
    pub fn recover(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.partial)? {
            let file_name = entry?.file_name();
            let Some(id) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".info"))
                .and_then(Id::parse)
            else {
                continue;
            };
            let part = self.part_path(&id);
            if !part.exists() {
                continue;
            }
            let Ok(json) = fs::read(self.info_path(&id)) else {
                continue;
            };
            let finished = serde_json::from_slice::<Info>(&json)
                .is_ok_and(|info| !matches!(info.state, State::Partial));
            if finished {
                tracing::info!(%id, "removing the part file of a finished upload");
                remove_if_present(&part)?;
                remove_if_present(&self.built_path(&id))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.partial)?;
        }
        Ok(removed)
    }

    /// `DIR/<name>`, created when absent; an error of kind `NotADirectory` when something else
    /// stands there (see [`Store::token_dir`]).
    fn make_token_dir(&self, name: &str) -> io::Result<PathBuf> {
        let path = self.dir.join(name);
        for _ in 0..2 {
            match self.token_dir(name)? {
                TokenDir::Directory => return Ok(path),
                TokenDir::Unusable(what) => {
                    return Err(io::Error::new(
                        ErrorKind::NotADirectory,
                        format!("{} is {what}", path.display()),
                    ));
                }
                TokenDir::Absent => match fs::create_dir(&path) {
                    Ok(()) => {
                        sync_dir(&self.dir)?;
                        return Ok(path);
                    }
                    // Created in between: look again at what it is.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Err(io::Error::new(
            ErrorKind::NotADirectory,
            format!("{} keeps changing", path.display()),
        ))
    }

    /// Publishes the complete file `part` (a part file, or what a recipe built) as
    /// [`Store::publish`] says, and records the published file's identity and SHA-256 (see
    /// [`recorded_sameness`]).
    fn publish_file(
        &self,
        part: &Path,
        id: &Id,
        subdir: Option<&str>,
        name: &str,
        len: u64,
        sha256: &[u8; 32],
    ) -> io::Result<String> {
        File::open(part)?.sync_all()?;
        let dir = match subdir {
            None => self.dir.clone(),
            Some(subdir) => {
                // Token names are checked at start-up; this one came back from an info file.
                names::check_dir_name(subdir).map_err(|why| {
                    io::Error::other(format!("owner {subdir:?} in the info file: {why}"))
                })?;
                self.make_token_dir(subdir)?
            }
        };
        for n in 0..10_000 {
            let candidate = names::candidate(name, n);
            let target = dir.join(&candidate);
            match fs::hard_link(part, &target) {
                Ok(()) => {
                    sync_dir(&dir)?;
                    record_digest(&dir, &candidate, sha256);
                    return Ok(candidate);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let same = match recorded_sameness(&dir, &candidate, len, sha256) {
                        Some(same) => same,
                        None => {
                            let same = same_content(&target, part, len)?;
                            if same {
                                record_digest(&dir, &candidate, sha256);
                            }
                            same
                        }
                    };
                    if same {
                        tracing::info!(%id, name = %candidate, "identical file already published");
                        return Ok(candidate);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "10000 files named like {name:?} exist already"
        )))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the uploads idle longer than `expire_after` that no process claims, taking each
    /// claim only for the look (never evicting a holder). What a `serve --stdio` does at start
    /// instead of running the sweeper: sweeping would keep the claim of every upload it
    /// looked at for its whole life (see the `server` module doc). Returns how many went.
    pub fn expire_unclaimed(&self, expire_after: Duration) -> io::Result<usize> {
        use rustix::fs::{FlockOperation, flock};
        let now = SystemTime::now();
        let mut removed = 0;
        for id in Store::list(self, expire_after)? {
            if self
                .claimed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&id)
            {
                continue;
            }
            let lock = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.lock_path(&id))?;
            if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
                continue;
            }
            // Held: nobody else writes it while it is looked at (and loading may truncate).
            if let Some(info) = self.load(&id)?
                && info.is_expired(expire_after, now)
            {
                tracing::info!(%id, "upload expired");
                Store::remove(self, &id)?;
                removed += 1;
            }
            // Dropping `lock` lets go again.
        }
        Ok(removed)
    }

    /// Bytes an unprivileged process can still write in the upload directory's file system.
    pub fn free_space(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

/// How long a lingering holder of a claim gets to stop after SIGTERM before SIGKILL; and how
/// long after that the kernel gets to release its lock before the claim is refused (503).
pub const EVICT_GRACE: Duration = Duration::from_secs(3);
const EVICT_KILL_WAIT: Duration = Duration::from_secs(3);
const CLAIM_POLL: Duration = Duration::from_millis(50);
/// What a holder writes in the lock file after its pid, so that only such a process is
/// signalled (a recycled pid would read differently, or name another program).
const CLAIM_HOLDER: &str = "serve --stdio";

/// Claims outlive the store: its last blocking write may still run as the process shuts down,
/// and the claim must end only with the process (see the module doc).
impl Drop for DirStore {
    fn drop(&mut self) {
        let claimed = self.claimed.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, lock_file) in claimed.drain() {
            std::mem::forget(lock_file);
        }
    }
}

impl DirStore {
    fn lock_path(&self, id: &Id) -> PathBuf {
        self.partial.join(format!("{id}.lock"))
    }
}

/// The pid in a lock file, when it was written by a `serve --stdio` that still runs `upload`.
fn claim_holder(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    let (pid, what) = text.trim().split_once(' ')?;
    let pid: i32 = pid.parse().ok().filter(|&p| p > 1)?;
    if what != CLAIM_HOLDER || pid == std::process::id() as i32 {
        return None;
    }
    // The pid may have been recycled since: signal only a process whose command line still
    // says it is this server.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let says = |w: &str| words.contains(&w.as_bytes());
    (says("serve") && says("--stdio")).then_some(pid)
}

impl Store for DirStore {
    fn claim(&self, id: &Id) -> io::Result<Option<super::store::Claim>> {
        use rustix::fs::{FlockOperation, flock};
        let claimed = || self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        if claimed().contains_key(id) {
            return Ok(Some(super::store::Claim::default()));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.lock_path(id))?;
        let started = std::time::Instant::now();
        let mut signalled: Option<(i32, bool)> = None;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    file.set_len(0)?;
                    file.seek(SeekFrom::Start(0))?;
                    writeln!(file, "{} {CLAIM_HOLDER}", std::process::id())?;
                    if let Some((pid, _)) = signalled {
                        tracing::info!(%id, pid, waited = ?started.elapsed(), "took the upload over from a lingering server");
                    }
                    claimed().insert(id.clone(), file);
                    return Ok(Some(super::store::Claim::default()));
                }
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {}
                Err(e) => return Err(e.into()),
            }
            let waited = started.elapsed();
            match signalled {
                None => match claim_holder(&mut file) {
                    Some(pid) => {
                        tracing::info!(%id, pid, "the upload is held by a lingering server: asking it to stop");
                        // SAFETY: kill with a pid and a signal number has no memory effects.
                        unsafe {
                            libc::kill(pid, libc::SIGTERM);
                            libc::kill(pid, libc::SIGCONT);
                        }
                        signalled = Some((pid, false));
                    }
                    // Written in a moment, or not a server we may stop: wait our turn.
                    None if waited >= EVICT_GRACE + EVICT_KILL_WAIT => return Ok(None),
                    None => {}
                },
                Some((pid, false)) if waited >= EVICT_GRACE => {
                    tracing::warn!(%id, pid, "the lingering server did not stop: killing it");
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    signalled = Some((pid, true));
                }
                Some((_, true)) if waited >= EVICT_GRACE + EVICT_KILL_WAIT => return Ok(None),
                Some(_) => {}
            }
            std::thread::sleep(CLAIM_POLL);
        }
    }

    /// Creates an empty part file and the first info file.
    fn create(&self, info: &Info, id: &Id) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.part_path(id))?;
        self.save_info(info, id)
    }

    /// Replaces the info file atomically: a crash leaves the old one or the new one, whole.
    fn save_info(&self, info: &Info, id: &Id) -> io::Result<()> {
        let path = self.info_path(id);
        let tmp = path.with_extension("info.tmp");
        let json = serde_json::to_vec(info).map_err(io::Error::other)?;
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(&self.partial)
    }

    /// Reads an upload's info, and makes the part file agree with it: bytes past the committed
    /// offset were never acknowledged and go. `None` when there is no such upload.
    fn load(&self, id: &Id) -> io::Result<Option<Info>> {
        let json = match fs::read(self.info_path(id)) {
            Ok(json) => json,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut info: Info = match serde_json::from_slice(&json) {
            Ok(info) => info,
            Err(e) => {
                // Not ours or damaged beyond use: treat as absent rather than fail every
                // request for it; the sweeper removes it when it expires by mtime.
                tracing::error!(%id, error = %e, "unreadable info file; ignoring the upload");
                return Ok(None);
            }
        };
        if info.state != State::Partial {
            return Ok(Some(info));
        }
        let part = OpenOptions::new().write(true).open(self.part_path(id));
        let part = match part {
            Ok(part) => part,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::error!(%id, "part file missing; restarting the upload at 0");
                File::create(self.part_path(id))?;
                info.offset = 0;
                self.save_info(&info, id)?;
                return Ok(Some(info));
            }
            Err(e) => return Err(e),
        };
        let on_disk = part.metadata()?.len();
        if on_disk > info.offset {
            tracing::info!(%id, on_disk, committed = info.offset, "dropping uncommitted bytes");
            part.set_len(info.offset)?;
        } else if on_disk < info.offset {
            // fdatasync before every commit should make this impossible; a disk or file
            // system that lies gets the upload resumed from what is really there.
            tracing::error!(%id, on_disk, committed = info.offset, "part file shorter than committed");
            info.offset = on_disk;
            self.save_info(&info, id)?;
        }
        Ok(Some(info))
    }

    /// Opens the part file to append at `offset`, dropping anything past it first (left by a
    /// request that failed between writing and committing).
    fn open_part(&self, id: &Id, offset: u64) -> io::Result<Box<dyn Part>> {
        let mut file = OpenOptions::new().write(true).open(self.part_path(id))?;
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(PartFile {
            file,
            start: offset,
        }))
    }

    /// The SHA-256 state of the first `len` bytes of the part file, for an upload first touched
    /// since a restart.
    fn hash_part(&self, id: &Id, len: u64) -> io::Result<RunningSha> {
        let file = File::open(self.part_path(id))?;
        let mut sha = RunningSha::new();
        let mut reader = file.take(len);
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
        }
        Ok(sha)
    }

    /// Removes an upload. The info file goes first: once it is gone the upload is gone, and a
    /// part file left by a crash in between is an orphan the sweeper removes.
    fn remove(&self, id: &Id) -> io::Result<()> {
        remove_if_present(&self.info_path(id))?;
        remove_if_present(&self.lock_path(id))?;
        self.claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.remove_part(id)
    }

    fn remove_part(&self, id: &Id) -> io::Result<()> {
        remove_if_present(&self.part_path(id))?;
        remove_if_present(&self.built_path(id))?;
        sync_dir(&self.partial)
    }

    /// Publishes a complete part file under `name` or, when taken, the first free `stem.N.ext`
    /// (see the clash policy in the module doc of `server`), in `DIR` or, with `subdir` (a
    /// token name), in `DIR/<subdir>`, created when missing. Never overwrites: the hard link
    /// fails atomically when the name exists. If a candidate already holds identical content,
    /// the upload counts as delivered there. Returns the name (within its directory); the part
    /// file is left for the caller to remove once the info file records the name.
    fn publish(
        &self,
        id: &Id,
        subdir: Option<&str>,
        name: &str,
        len: u64,
        sha256: &[u8; 32],
    ) -> io::Result<String> {
        self.publish_file(&self.part_path(id), id, subdir, name, len, sha256)
    }
    /// What stands at `DIR/<name>`, where a token's uploads are published with per-token
    /// directories. Never follows a symbolic link there: the uploads would land wherever it
    /// points.
    fn token_dir(&self, name: &str) -> io::Result<TokenDir> {
        let path = self.dir.join(name);
        let file_type = match fs::symlink_metadata(&path) {
            Ok(meta) => meta.file_type(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(TokenDir::Absent),
            Err(e) => return Err(e),
        };
        Ok(if file_type.is_dir() {
            TokenDir::Directory
        } else if file_type.is_symlink() {
            TokenDir::Unusable("a symbolic link")
        } else if file_type.is_file() {
            TokenDir::Unusable("a regular file")
        } else {
            TokenDir::Unusable("not a directory")
        })
    }

    /// Ids of all uploads on disk, and removal of leftovers no upload owns: part files without
    /// an info file and stale tmp files (a crash in between), once older than `expire_after`.
    fn list(&self, expire_after: Duration) -> io::Result<Vec<Id>> {
        let mut ids = Vec::new();
        let now = SystemTime::now();
        for entry in fs::read_dir(&self.partial)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let Some((stem, ext)) = file_name.split_once('.') else {
                continue;
            };
            let Some(id) = Id::parse(stem) else {
                continue;
            };
            let leftover = match ext {
                "info" => {
                    ids.push(id);
                    false
                }
                "part" | "built" | "lock" => !self.info_path(&id).exists(),
                "info.tmp" => true,
                _ => false,
            };
            // Old enough that no request can still be about to use it.
            if leftover && entry.metadata()?.modified()? + expire_after <= now {
                tracing::info!(file = file_name, "removing leftover file");
                remove_if_present(&entry.path())?;
            }
        }
        Ok(ids)
    }

    /// Everything: removing is unlinking, and a listing of `.partial` finds every upload.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            defer_length: true,
            termination: true,
            expiration: true,
        }
    }

    fn delta(&self) -> Option<&dyn DeltaStore> {
        Some(self)
    }
}

impl DeltaStore for DirStore {
    /// Reads `DIR[/subdir]/.upload-index/<name>.idx` when its header's identity is the file's;
    /// otherwise chunks the file (trusting the SHA-256 recorded at publishing while its
    /// identity holds, else hashing it too) and keeps the new index, replaced atomically.
    fn index(&self, subdir: Option<&str>, name: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(dir) = self.published_dir(subdir) else {
            return Ok(None);
        };
        let Some((file, identity)) = open_published(&dir.join(name))? else {
            return Ok(None);
        };
        let path = sidecar(&dir, name, "idx");
        let fresh = || {
            fs::read(&path)
                .ok()
                .filter(|bytes| Index::decode(bytes).is_ok_and(|i| i.identity == identity))
        };
        if let Some(bytes) = fresh() {
            return Ok(Some(bytes));
        }
        let _one_at_a_time = self.indexing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = fresh() {
            return Ok(Some(bytes));
        }
        let known = read_record(&dir, name)
            .filter(|r| r.identity == identity)
            .map(|r| r.sha256);
        let started = std::time::Instant::now();
        let index = Index::build(
            io::BufReader::with_capacity(1 << 20, file),
            Params::DEFAULT,
            identity,
            known,
        )?;
        let bytes = index.to_bytes();
        tracing::info!(
            file = name,
            chunks = index.chunks.len(),
            index_bytes = bytes.len(),
            seconds = started.elapsed().as_secs_f64(),
            "indexed a published file"
        );
        write_sidecar(&path, &bytes)?;
        if known.is_none() {
            write_record(
                &dir,
                name,
                &Record {
                    identity,
                    sha256: index.sha256,
                },
            );
        }
        Ok(Some(bytes))
    }

    /// Writes `.partial/<id>.built` from the recipe in the part file and the base, which must
    /// be the file its index describes before and after (its identity checked at both ends;
    /// the new file's SHA-256 catches what an identity cannot).
    fn assemble(
        &self,
        id: &Id,
        subdir: Option<&str>,
        base: &str,
        base_sha256: &[u8; 32],
    ) -> io::Result<Result<Assembled, Refusal>> {
        use std::os::unix::fs::FileExt;
        let missing = || Ok(Err(Refusal::BaseMissing(base.to_string())));
        let changed = || Ok(Err(Refusal::BaseChanged(base.to_string())));
        let Some(dir) = self.published_dir(subdir) else {
            return missing();
        };
        let Some(index) = self.index(subdir, base)? else {
            return missing();
        };
        let index = Index::decode(&index).map_err(io::Error::other)?;
        if index.sha256 != *base_sha256 {
            return changed();
        }
        let Some((base_file, identity)) = open_published(&dir.join(base))? else {
            return missing();
        };
        if identity != index.identity {
            return changed();
        }
        let recipe = io::BufReader::with_capacity(1 << 20, File::open(self.part_path(id))?);
        let (header, pending) = match RecipeReader::open(recipe) {
            Ok(opened) => opened,
            Err(e) => return Ok(Err(Refusal::BadRecipe(e.to_string()))),
        };
        if header.base_name != base || header.base_sha256 != *base_sha256 {
            return Ok(Err(Refusal::BadRecipe(format!(
                "it names the base {:?}, its upload {base:?}",
                header.base_name
            ))));
        }
        let built_path = self.built_path(id);
        let mut built = io::BufWriter::with_capacity(1 << 20, File::create(&built_path)?);
        let mut sha = Sha256::new();
        let declared = match recipe::apply(
            pending.against(identity.size),
            |offset, buf| base_file.read_exact_at(buf, offset),
            |bytes| {
                sha.update(bytes);
                built.write_all(bytes)
            },
        ) {
            Ok(declared) => declared,
            Err(FormatError::Io(e)) => return Err(e),
            Err(e) => {
                drop(built);
                remove_if_present(&built_path)?;
                return Ok(Err(Refusal::BadRecipe(e.to_string())));
            }
        };
        built
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_data()?;
        let after = FileIdentity::of(&base_file.metadata()?);
        let sha256: [u8; 32] = sha.finalize().into();
        if after != identity {
            remove_if_present(&built_path)?;
            return changed();
        }
        if sha256 != declared {
            remove_if_present(&built_path)?;
            return Ok(Err(Refusal::TargetMismatch {
                built: hex::encode(sha256),
                declared: hex::encode(declared),
            }));
        }
        Ok(Ok(Assembled {
            len: header.target_length,
            sha256,
        }))
    }

    fn publish_assembled(
        &self,
        id: &Id,
        subdir: Option<&str>,
        name: &str,
        len: u64,
        sha256: &[u8; 32],
    ) -> io::Result<String> {
        self.publish_file(&self.built_path(id), id, subdir, name, len, sha256)
    }
}

/// A published regular file (never through a symbolic link) and its identity; `None` when
/// there is none of that name.
fn open_published(path: &Path) -> io::Result<Option<(File, FileIdentity)>> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let identity = FileIdentity::of(&file.metadata()?);
    Ok(Some((file, identity)))
}

/// `DIR/.upload-index/<name>.<ext>`.
fn sidecar(dir: &Path, name: &str, ext: &str) -> PathBuf {
    dir.join(INDEX_DIR).join(format!("{name}.{ext}"))
}

/// Replaces a sidecar atomically (tmp, rename). Not fsynced: it is a cache, and a lost or
/// stale one is made again.
fn write_sidecar(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// What publishing records of a published file: its identity then, and its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    identity: FileIdentity,
    sha256: [u8; 32],
}

impl Record {
    fn to_line(self) -> String {
        let i = self.identity;
        format!(
            "v1 {} {} {} {} {}\n",
            i.size,
            i.mtime_ns,
            i.inode,
            i.dev,
            hex::encode(self.sha256)
        )
    }

    fn parse(line: &str) -> Option<Record> {
        let mut f = line.split_ascii_whitespace();
        (f.next()? == "v1").then_some(())?;
        let identity = FileIdentity {
            size: f.next()?.parse().ok()?,
            mtime_ns: f.next()?.parse().ok()?,
            inode: f.next()?.parse().ok()?,
            dev: f.next()?.parse().ok()?,
        };
        let sha256 = crate::protocol::parse_hex_sha256(f.next()?)?;
        f.next().is_none().then_some(Record { identity, sha256 })
    }
}

fn read_record(dir: &Path, name: &str) -> Option<Record> {
    Record::parse(&fs::read_to_string(sidecar(dir, name, "sha256")).ok()?)
}

/// Best effort: without a record the next identical upload is compared byte by byte.
fn write_record(dir: &Path, name: &str, record: &Record) {
    if let Err(e) = write_sidecar(&sidecar(dir, name, "sha256"), record.to_line().as_bytes()) {
        tracing::warn!(file = name, error = %e, "cannot record the published file's SHA-256");
    }
}

/// Records `DIR/<name>`'s identity as it is now with `sha256`, its verified content.
fn record_digest(dir: &Path, name: &str, sha256: &[u8; 32]) {
    match open_published(&dir.join(name)) {
        Ok(Some((_, identity))) => write_record(
            dir,
            name,
            &Record {
                identity,
                sha256: *sha256,
            },
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(file = name, error = %e, "cannot stat the published file"),
    }
}

/// Whether the published `DIR/<name>` holds `len` bytes of SHA-256 `sha256`, as far as its
/// record tells: `Some` while the file's identity is the recorded one, `None` (compare the
/// bytes) without a record or once the file moved, grew, or was written to. This is what
/// lets a long-running server take a re-sent copy of a 1 GiB file as delivered without reading
/// the 1 GiB it already holds (issue 12: the byte comparison read 2 GiB per 1 GiB upload and
/// held keep-mode throughput at 0.76-0.78x the hashing floor).
fn recorded_sameness(dir: &Path, name: &str, len: u64, sha256: &[u8; 32]) -> Option<bool> {
    let record = read_record(dir, name)?;
    let (_, now) = open_published(&dir.join(name)).ok()??;
    decide_by_record(&record, &now, len, sha256)
}

/// The decision of [`recorded_sameness`], on its facts.
fn decide_by_record(
    record: &Record,
    now: &FileIdentity,
    len: u64,
    sha256: &[u8; 32],
) -> Option<bool> {
    if record.identity != *now {
        return None;
    }
    Some(now.size == len && record.sha256 == *sha256)
}

/// A part file open for one request's body, written straight through (no buffer of ours):
/// the page cache is the batch, and commit is one fdatasync.
struct PartFile {
    file: File,
    /// Where this request began: the committed offset, which `discard` cuts back to.
    start: u64,
}

impl Part for PartFile {
    /// With vectored writes, so frames are never copied into a staging buffer and a batch
    /// takes as few system calls as the kernel allows.
    fn append(&mut self, batch: &mut Vec<Bytes>) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = batch.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut rest: &mut [io::IoSlice<'_>] = &mut slices;
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        drop(slices);
        batch.clear();
        Ok(())
    }

    /// fdatasync: the bytes are on disk before the info file may say so.
    fn commit(self: Box<Self>) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(self: Box<Self>) -> io::Result<()> {
        self.file.set_len(self.start)
    }
}

/// Whether the file at `path` holds exactly the `len` bytes of the complete part file `part`,
/// whose SHA-256 was verified: a byte comparison, so identical means same size and SHA-256, as
/// before, without hashing the published file again (measured: re-sending a 1 GiB file that
/// was already published spent a second hashing it before the last chunk was answered, half
/// the upload's time), and a different file of the same size is told apart at its first
/// differing block.
fn same_content(path: &Path, part: &Path, len: u64) -> io::Result<bool> {
    // Only a regular file can be "the same upload"; never follow a symlink someone planted.
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_file() || meta.len() != len {
        return Ok(false);
    }
    let (mut theirs, mut ours) = (File::open(path)?, File::open(part)?);
    let block = COMPARE_BLOCK.min(len.max(1) as usize);
    let (mut a, mut b) = (vec![0u8; block], vec![0u8; block]);
    let mut left = len;
    while left > 0 {
        let n = left.min(block as u64) as usize;
        ours.read_exact(&mut b[..n])?;
        match theirs.read_exact(&mut a[..n]) {
            // Shrunk since its size was read: not the same file.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
            r => r?,
        }
        if a[..n] != b[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    // Grown since its size was read: not the same file either.
    Ok(theirs.read(&mut a[..1])? == 0)
}

/// Bytes compared at a time by [`same_content`] (two buffers of it).
const COMPARE_BLOCK: usize = 1024 * 1024;

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a directory's entries (a rename, a new link, a removal) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::now_ms;

    /// Appends `data` the way a request does, without committing it.
    fn append(store: &DirStore, id: &Id, offset: u64, data: &[u8]) {
        let mut part = store.open_part(id, offset).unwrap();
        part.append(&mut vec![Bytes::copy_from_slice(data)])
            .unwrap();
    }

    fn info(id: &Id) -> Info {
        Info {
            id: id.to_string(),
            length: Some(10),
            offset: 0,
            metadata: String::new(),
            expected_sha256: None,
            owner: None,
            running_sha256: None,
            created_ms: now_ms(),
            last_activity_ms: now_ms(),
            state: State::Partial,
        }
    }

    #[test]
    fn loading_truncates_to_the_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let id = Id::random();
        let mut info = info(&id);
        store.create(&info, &id).unwrap();
        append(&store, &id, 0, b"0123456789");
        info.offset = 4;
        store.save_info(&info, &id).unwrap();
        assert_eq!(store.load(&id).unwrap(), Some(info));
        assert_eq!(fs::read(store.part_path(&id)).unwrap(), b"0123");
        assert_eq!(store.load(&Id::random()).unwrap(), None);
    }

    /// A `serve --stdio` has no sweeper: at start it removes what expired, except uploads
    /// another process claims, and lets go of every claim it took for the look.
    #[test]
    fn expired_uploads_go_unless_another_process_claims_them() {
        let dir = tempfile::tempdir().unwrap();
        let week = Duration::from_secs(7 * 86400);
        let ours = DirStore::open(dir.path()).unwrap();
        let (expired, claimed, fresh) = (Id::random(), Id::random(), Id::random());
        for id in [&expired, &claimed, &fresh] {
            let mut info = info(id);
            if id != &fresh {
                info.last_activity_ms -= 8 * 86400 * 1000;
            }
            ours.create(&info, id).unwrap();
        }
        // Another process's store: flocks on other open files conflict as across processes.
        let other = DirStore::open(dir.path()).unwrap();
        assert!(other.claim(&claimed).unwrap().is_some());
        assert_eq!(ours.expire_unclaimed(week).unwrap(), 1);
        assert_eq!(ours.load(&expired).unwrap(), None);
        assert!(
            ours.load(&claimed).unwrap().is_some(),
            "a claimed upload stays"
        );
        assert!(
            ours.load(&fresh).unwrap().is_some(),
            "an active upload stays"
        );
        // The look took no claim for good: a third store can claim the fresh one at once.
        let third = DirStore::open(dir.path()).unwrap();
        let started = std::time::Instant::now();
        assert!(third.claim(&fresh).unwrap().is_some());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn info_files_without_an_owner_still_load() {
        let id = Id::random();
        let mut info = info(&id);
        let json = serde_json::to_string(&info).unwrap();
        assert!(!json.contains("owner"), "{json}");
        assert_eq!(serde_json::from_str::<Info>(&json).unwrap(), info);
        info.owner = Some("alice".into());
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<Info>(&json).unwrap(), info);
    }

    #[test]
    fn publishing_in_a_token_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let id = Id::random();
        store.create(&info(&id), &id).unwrap();
        append(&store, &id, 0, b"data");
        let sha: [u8; 32] = Sha256::digest(b"data").into();
        let name = store.publish(&id, Some("alice"), "x.iso", 4, &sha).unwrap();
        assert_eq!(name, "x.iso");
        assert_eq!(fs::read(dir.path().join("alice/x.iso")).unwrap(), b"data");
        assert!(!dir.path().join("x.iso").exists());
        assert!(store.publish(&id, Some(".."), "y.iso", 4, &sha).is_err());
    }

    #[test]
    fn identical_content_is_told_byte_by_byte_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("part");
        let data: Vec<u8> = (0..COMPARE_BLOCK * 2 + 3)
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(&part, &data).unwrap();
        let len = data.len() as u64;
        let same = dir.path().join("same");
        fs::write(&same, &data).unwrap();
        assert!(same_content(&same, &part, len).unwrap());
        // The same size, one byte different in the last, short block.
        let mut other = data.clone();
        *other.last_mut().unwrap() ^= 1;
        let differs = dir.path().join("differs");
        fs::write(&differs, &other).unwrap();
        assert!(!same_content(&differs, &part, len).unwrap());
        // Another size, a directory and a symbolic link are never the same upload.
        let longer = dir.path().join("longer");
        fs::write(&longer, [&data[..], b"x"].concat()).unwrap();
        assert!(!same_content(&longer, &part, len).unwrap());
        assert!(!same_content(dir.path(), &part, len).unwrap());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&same, &link).unwrap();
        assert!(!same_content(&link, &part, len).unwrap());
    }

    #[test]
    fn publishing_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let publish = |data: &[u8]| {
            let id = Id::random();
            store.create(&info(&id), &id).unwrap();
            append(&store, &id, 0, data);
            let sha: [u8; 32] = Sha256::digest(data).into();
            let name = store
                .publish(&id, None, "x.iso", data.len() as u64, &sha)
                .unwrap();
            store.remove(&id).unwrap();
            name
        };
        assert_eq!(publish(b"first"), "x.iso");
        assert_eq!(publish(b"other"), "x.1.iso");
        assert_eq!(publish(b"first"), "x.iso");
        assert_eq!(publish(b"other"), "x.1.iso");
        assert_eq!(publish(b"third"), "x.2.iso");
        assert_eq!(fs::read(dir.path().join("x.iso")).unwrap(), b"first");
        assert_eq!(fs::read(dir.path().join("x.2.iso")).unwrap(), b"third");
        assert_eq!(
            fs::read_dir(dir.path().join(PARTIAL_DIR)).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_record_decides_only_while_the_identity_holds() {
        let identity = FileIdentity {
            size: 5,
            mtime_ns: 10,
            inode: 3,
            dev: 1,
        };
        let record = Record {
            identity,
            sha256: [1; 32],
        };
        assert_eq!(Record::parse(&record.to_line()), Some(record));
        assert_eq!(
            decide_by_record(&record, &identity, 5, &[1; 32]),
            Some(true)
        );
        assert_eq!(
            decide_by_record(&record, &identity, 5, &[2; 32]),
            Some(false)
        );
        assert_eq!(
            decide_by_record(&record, &identity, 6, &[1; 32]),
            Some(false)
        );
        for moved in [
            FileIdentity {
                mtime_ns: 11,
                ..identity
            },
            FileIdentity {
                inode: 4,
                ..identity
            },
            FileIdentity {
                size: 6,
                ..identity
            },
            FileIdentity { dev: 2, ..identity },
        ] {
            assert_eq!(decide_by_record(&record, &moved, 5, &[1; 32]), None);
        }
        assert_eq!(Record::parse("v1 1 2 3"), None);
    }

    /// Issue 12: a re-sent copy of a published file is known as delivered by the record
    /// publishing left, without reading the published file. Shown by a published file whose
    /// bytes were changed behind the record's back (same size, modification time put back):
    /// reading it would find it different and publish the upload as `x.1.iso`.
    #[test]
    fn an_identical_copy_is_known_by_its_record_without_reading_the_file() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let publish = |data: &[u8]| {
            let id = Id::random();
            store.create(&info(&id), &id).unwrap();
            append(&store, &id, 0, data);
            let sha: [u8; 32] = Sha256::digest(data).into();
            let name = store
                .publish(&id, None, "x.iso", data.len() as u64, &sha)
                .unwrap();
            store.remove(&id).unwrap();
            name
        };
        assert_eq!(publish(b"first"), "x.iso");
        assert!(dir.path().join(INDEX_DIR).join("x.iso.sha256").exists());
        let published = dir.path().join("x.iso");
        let mtime = fs::metadata(&published).unwrap().modified().unwrap();
        let f = File::options().write(true).open(&published).unwrap();
        f.write_all_at(b"F", 0).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert_eq!(publish(b"first"), "x.iso", "the record was not trusted");
        // Once the identity moves, the bytes are compared again.
        let f = File::options().write(true).open(&published).unwrap();
        f.set_modified(mtime + Duration::from_secs(1)).unwrap();
        drop(f);
        assert_eq!(publish(b"first"), "x.1.iso");
    }

    #[test]
    fn a_recipe_is_assembled_against_its_base_and_refused_once_the_base_changed() {
        use crate::delta::{Index, make_recipe};
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let base: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let id = Id::random();
        store.create(&info(&id), &id).unwrap();
        append(&store, &id, 0, &base);
        let base_sha: [u8; 32] = Sha256::digest(&base).into();
        store
            .publish(&id, None, "RC1.iso", base.len() as u64, &base_sha)
            .unwrap();
        store.remove(&id).unwrap();
        let bytes = store.index(None, "RC1.iso").unwrap().unwrap();
        let index = Index::decode(&bytes).unwrap();
        assert_eq!(index.sha256, base_sha);
        assert!(store.index(None, "nothing.iso").unwrap().is_none());
        assert!(store.index(Some("alice"), "RC1.iso").unwrap().is_none());

        let mut new = base.clone();
        new[150_000..150_010].copy_from_slice(b"0123456789");
        let mut recipe = Vec::new();
        let m = make_recipe(&new[..], new.len() as u64, &index, "RC1.iso", &mut recipe).unwrap();
        let upload = |recipe: &[u8]| {
            let id = Id::random();
            store.create(&info(&id), &id).unwrap();
            append(&store, &id, 0, recipe);
            id
        };
        let id = upload(&recipe);
        let built = store
            .assemble(&id, None, "RC1.iso", &base_sha)
            .unwrap()
            .unwrap();
        assert_eq!(built.sha256, m.target_sha256);
        let name = store
            .publish_assembled(&id, None, "RC2.iso", built.len, &built.sha256)
            .unwrap();
        assert_eq!(name, "RC2.iso");
        assert!(fs::read(dir.path().join("RC2.iso")).unwrap() == new);
        assert!(
            fs::read(dir.path().join("RC1.iso")).unwrap() == base,
            "the base changed"
        );
        store.remove(&id).unwrap();

        // A wrong base digest, a missing base, and a base rewritten since its index.
        let id = upload(&recipe);
        assert_eq!(
            store.assemble(&id, None, "RC1.iso", &[0; 32]).unwrap(),
            Err(Refusal::BaseChanged("RC1.iso".into()))
        );
        assert_eq!(
            store.assemble(&id, None, "gone.iso", &base_sha).unwrap(),
            Err(Refusal::BaseMissing("gone.iso".into()))
        );
        fs::write(dir.path().join("RC1.iso"), &new).unwrap();
        assert_eq!(
            store.assemble(&id, None, "RC1.iso", &base_sha).unwrap(),
            Err(Refusal::BaseChanged("RC1.iso".into()))
        );
        // Not a recipe at all.
        let id = upload(b"not a recipe");
        assert!(matches!(
            store
                .assemble(&id, None, "RC1.iso", &Sha256::digest(&new).into())
                .unwrap(),
            Err(Refusal::BadRecipe(_))
        ));
    }
}
