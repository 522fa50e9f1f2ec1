//! The uploads in memory: one slot per upload, holding its state behind a lock, and takeover.
//!
//! A request that works on an upload holds its slot's lock for the whole request, so two
//! requests never interleave on one part file. A PATCH whose client vanished without a FIN
//! (a silently dead uplink) would hold that lock until the idle timeout; the client meanwhile
//! reconnects and sends HEAD. So a request that finds the lock taken does not wait or answer
//! "locked": it bumps the slot's takeover counter, which the running PATCH selects against its
//! body frames; that PATCH stops, commits or discards its partial body, and lets go.
//!
//! A token may only see its own uploads (unless uploads are shared, or there is no auth). Someone else's
//! upload is `NotFound`, and that is decided before any takeover: a request must not be able
//! to interrupt (or, by its timing, detect) another token's upload in progress. The slot
//! remembers the owner once the upload is loaded, so this needs no lock.
//!
//! The state here is small (the info and a SHA-256 state, about 100 bytes) and the store stays
//! the truth: an upload not yet touched since start is loaded on first use.
//!
//! Several processes on one store (`serve --stdio`, one per ssh session): with claims on
//! ([`Uploads::with_claims`]) an upload is claimed from the store ([`Store::claim`]) before it
//! is loaded or created, and the claim stays with its slot for the life of the process; so what
//! is cached here cannot go stale behind our back, and a newer session's process takes an
//! upload over from a lingering one instead of waiting for it.
//!
//! Several server instances on one shared store (`Store::shared`, the S3 store): each request
//! claims its upload for its own length (the claim is in [`Held`] and goes with it), and reads
//! the upload's record again after claiming, since another instance may have moved it on
//! since this one last looked; what is cached here only serves the request holding it.

use super::error::ApiError;
use super::names::Id;
use super::running_sha::RunningSha;
use super::store::{Claim, Info, State, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, watch};

/// How long a request waits for an in-progress request to let go of an upload after asking it
/// to. Stopping takes one fdatasync and one info rewrite, so this is generous; past it the
/// holder is stuck on the disk and the client is told to retry (503).
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// How often the takeover request is repeated while waiting: a request that grabbed the lock
/// in between (and so never saw the first one) is asked too.
const TAKEOVER_REPEAT: Duration = Duration::from_millis(200);

/// One upload, loaded.
pub(crate) struct Upload {
    pub id: Id,
    pub info: Info,
    /// SHA-256 of the part file's bytes `0..info.offset`. `None` until rebuilt from disk (after
    /// a restart) or once published.
    pub sha: Option<RunningSha>,
}

// One per upload, already behind its own Arc: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Unloaded,
    Loaded(Upload),
    Gone,
}

struct Slot {
    entry: Arc<AsyncMutex<Entry>>,
    /// Bumped by every request that wants the upload while someone else holds it.
    takeover: watch::Sender<u64>,
    /// The upload's owner (`Info::owner`), set when it is first loaded or created. It never
    /// changes, so checking it needs no lock on the entry.
    owner: OnceLock<Option<String>>,
    /// The cross-process claim, with claims on: taken before the entry is loaded, kept while
    /// the slot lives.
    claim: Mutex<Option<Claim>>,
}

/// Exclusive use of one upload for the length of a request.
pub(crate) struct Held {
    guard: OwnedMutexGuard<Entry>,
    /// Changes when another request wants this upload: stop and let go.
    pub takeover: watch::Receiver<u64>,
    /// On a shared store: this request's claim, let go with it.
    _claim: Option<Claim>,
}

impl Held {
    pub fn upload(&mut self) -> &mut Upload {
        match &mut *self.guard {
            Entry::Loaded(upload) => upload,
            // `Uploads::acquire` only hands out loaded entries and `remove` consumes the Held.
            Entry::Unloaded | Entry::Gone => unreachable!("a Held entry is loaded"),
        }
    }
}

pub(crate) struct Uploads {
    store: Arc<dyn Store>,
    slots: Mutex<HashMap<Id, Arc<Slot>>>,
    /// `None` when the store does not support expiration: nothing expires then.
    expire_after: Option<Duration>,
    /// Claim each upload from the store before loading it (see the module doc).
    claims: bool,
    /// The store is shared by instances: claim and reload per request (see the module doc).
    per_request: bool,
}

impl Uploads {
    pub fn new(store: Arc<dyn Store>, expire_after: Option<Duration>) -> Uploads {
        Uploads {
            per_request: store.shared(),
            store,
            slots: Mutex::new(HashMap::new()),
            expire_after,
            claims: false,
        }
    }

    /// On a shared store, this request's claim on `id`, read fresh from the store; `Busy`
    /// while another instance holds it. `None` elsewhere.
    async fn claim_for_request(&self, id: &Id) -> Result<Option<Claim>, ApiError> {
        if !self.per_request {
            return Ok(None);
        }
        let (store, claim_id) = (self.store.clone(), id.clone());
        match blocking(move || store.claim(&claim_id)).await? {
            Some(claim) => Ok(Some(claim)),
            None => Err(ApiError::Busy),
        }
    }

    /// Claims every upload from the store before using it: for a process that shares its store
    /// with others (`serve --stdio`).
    pub fn with_claims(mut self) -> Uploads {
        self.claims = true;
        self
    }

    /// Takes the store's claim on `id` for `slot`, once, with claims on; `Busy` when another
    /// process keeps it.
    async fn claim(&self, id: &Id, slot: &Arc<Slot>) -> Result<(), ApiError> {
        if !self.claims
            || slot
                .claim
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
        {
            return Ok(());
        }
        let (store, claim_id) = (self.store.clone(), id.clone());
        match blocking(move || store.claim(&claim_id)).await? {
            Some(claim) => {
                *slot.claim.lock().unwrap_or_else(|e| e.into_inner()) = Some(claim);
                Ok(())
            }
            None => Err(ApiError::Busy),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Arc<Slot>>> {
        // A panic while holding this lock leaves the map itself consistent (inserts and
        // removes are single calls), so poisoning carries no information here.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, id: &Id) -> Arc<Slot> {
        self.slots()
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    entry: Arc::new(AsyncMutex::new(Entry::Unloaded)),
                    takeover: watch::Sender::new(0),
                    owner: OnceLock::new(),
                    claim: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Registers a new upload and holds it, before its files exist: the sweeper, which finds
    /// uploads by their files, then finds it in use and leaves it alone.
    pub async fn insert(&self, upload: Upload) -> Result<Held, ApiError> {
        let slot = self.slot(&upload.id.clone());
        let mut guard = slot.entry.clone().lock_owned().await;
        self.claim(&upload.id, &slot).await?;
        let claim = self.claim_for_request(&upload.id).await?;
        let _ = slot.owner.set(upload.info.owner.clone());
        *guard = Entry::Loaded(upload);
        Ok(Held {
            guard,
            takeover: slot.takeover.subscribe(),
            _claim: claim,
        })
    }

    /// Takes an upload for a request, taking it over from a request still holding it.
    /// Unknown, removed and expired uploads are `NotFound`, and so, with `owner`, are uploads
    /// that `owner` did not create (see the module doc).
    pub async fn acquire(&self, id: &Id, owner: Option<&str>) -> Result<Held, ApiError> {
        let visible = |o: &Option<String>| owner.is_none_or(|name| o.as_deref() == Some(name));
        let slot = self.slot(id);
        if slot.owner.get().is_some_and(|o| !visible(o)) {
            return Err(ApiError::NotFound);
        }
        let guard = match slot.entry.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => take_over(&slot).await?,
        };
        match self.ready(id, &slot, guard).await? {
            Ready::Held(mut held) => {
                if visible(&held.upload().info.owner) {
                    Ok(held)
                } else {
                    Err(ApiError::NotFound)
                }
            }
            Ready::Missing | Ready::Expired => Err(ApiError::NotFound),
        }
    }

    /// Loads the entry when needed; removes it when it is gone or expired.
    async fn ready(
        &self,
        id: &Id,
        slot: &Arc<Slot>,
        mut guard: OwnedMutexGuard<Entry>,
    ) -> Result<Ready, ApiError> {
        let claim = self.claim_for_request(id).await?;
        if claim.is_some() && matches!(*guard, Entry::Loaded(_)) {
            // Another instance may have moved it on: read it again.
            *guard = Entry::Unloaded;
        }
        if let Entry::Unloaded = *guard {
            // Before loading: loading truncates the part to its committed offset, which must
            // not happen under a process still appending to it.
            self.claim(id, slot).await?;
            let store = self.store.clone();
            let load_id = id.clone();
            *guard = match blocking(move || store.load(&load_id)).await? {
                Some(info) => {
                    let _ = slot.owner.set(info.owner.clone());
                    Entry::Loaded(Upload {
                        id: id.clone(),
                        info,
                        sha: None,
                    })
                }
                None => {
                    if self.claims && !self.per_request {
                        // No such upload: the lock file the claim made goes again.
                        let (store, gone) = (self.store.clone(), id.clone());
                        blocking(move || store.remove(&gone)).await?;
                    }
                    Entry::Gone
                }
            };
        }
        let mut held = Held {
            guard,
            takeover: slot.takeover.subscribe(),
            _claim: claim,
        };
        let expired = match &*held.guard {
            Entry::Loaded(upload) => self
                .expire_after
                .is_some_and(|after| upload.info.is_expired(after, SystemTime::now())),
            Entry::Gone => {
                self.forget(id, slot);
                return Ok(Ready::Missing);
            }
            Entry::Unloaded => unreachable!("loaded above"),
        };
        if expired {
            tracing::info!(%id, "upload expired");
            self.remove(&mut held, id).await?;
            return Ok(Ready::Expired);
        }
        Ok(Ready::Held(held))
    }

    /// Removes an upload's files and forgets it: later requests get 404.
    pub async fn remove(&self, held: &mut Held, id: &Id) -> Result<(), ApiError> {
        let store = self.store.clone();
        let remove_id = id.clone();
        blocking(move || store.remove(&remove_id)).await?;
        *held.guard = Entry::Gone;
        let slot = self.slots().get(id).cloned();
        if let Some(slot) = slot {
            self.forget(id, &slot);
        }
        Ok(())
    }

    /// Drops the slot from the map if it is still this one. Requests already waiting on it
    /// find it `Gone`; new ones get a fresh slot and load from disk (and find nothing).
    fn forget(&self, id: &Id, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        if slots.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(id);
        }
    }

    /// Asks every request in progress to stop (at shutdown, once the grace period is over).
    pub fn interrupt_all(&self) {
        for slot in self.slots().values() {
            slot.takeover.send_modify(|n| *n += 1);
        }
    }

    /// Removes uploads idle longer than `expire_after`, finished or not. Uploads in use are
    /// active by definition and left alone; the others are loaded, which removes the expired
    /// ones. What stays loaded is small, and needed soon (partial) or until it expires.
    /// Nothing to do when uploads do not expire.
    pub async fn sweep(&self) -> Result<usize, ApiError> {
        let Some(expire_after) = self.expire_after else {
            return Ok(0);
        };
        let store = self.store.clone();
        let ids = blocking(move || store.list(expire_after)).await?;
        let mut removed = 0;
        for id in ids {
            let slot = self.slot(&id);
            let Ok(guard) = slot.entry.clone().try_lock_owned() else {
                continue;
            };
            match self.ready(&id, &slot, guard).await {
                Ok(Ready::Expired) => removed += 1,
                Ok(_) => {}
                // In use by another instance: active, so not expired.
                Err(ApiError::Busy) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

enum Ready {
    Held(Held),
    Missing,
    Expired,
}

async fn take_over(slot: &Arc<Slot>) -> Result<OwnedMutexGuard<Entry>, ApiError> {
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    loop {
        slot.takeover.send_modify(|n| *n += 1);
        match tokio::time::timeout(TAKEOVER_REPEAT, slot.entry.clone().lock_owned()).await {
            Ok(guard) => return Ok(guard),
            Err(_) if tokio::time::Instant::now() >= deadline => return Err(ApiError::Busy),
            Err(_) => {}
        }
    }
}

/// Runs blocking store work on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))?
        .map_err(ApiError::Io)
}

impl Upload {
    /// Why a delta recipe upload was refused, once it was.
    pub fn refusal(&self) -> Option<super::delta::Refusal> {
        match &self.info.state {
            State::Refused { code, why } => {
                Some(super::delta::Refusal::recorded(code, why.clone()))
            }
            _ => None,
        }
    }

    pub fn is_failed(&self) -> Option<(&str, &str)> {
        match &self.info.state {
            State::Failed { declared, received } => Some((declared, received)),
            _ => None,
        }
    }
}
