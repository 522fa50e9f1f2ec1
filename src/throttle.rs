//! The one bandwidth limiter of a process. A policy sets one rate, the budget: a lone `upload
//! send`'s `--limit`, or under `upload run` the timetable and `upload limit` (polite mode will
//! steer the same number). The [`Uplink`] splits the budget between the transfers sending
//! under it, each a share with a weight and its own cap, and paces each share's part with a
//! token bucket counting bytes (GCRA), fed in small pieces so the link sees an even stream
//! instead of lumps. [`Throttle`] is one transfer's handle: its share. The budget and the
//! parts change at run time without dropping a transfer.
//!
//! Why it is built this way (measured, see issue 4):
//! - A bucket holds two pieces (about 1/10 s of data) and starts empty: governor's default, a
//!   whole second of burst in a full bucket, let the first second out at twice the rate. Two,
//!   not one: with room for exactly one piece, every late timer wake-up (a millisecond per
//!   50 ms piece) was lost credit, and the mean rate fell 1.5 % short; the second piece
//!   absorbs the lateness.
//! - A request larger than the bucket could never be granted, so [`Throttle::acquire`] takes
//!   [`Throttle::piece`] bytes at a time.
//! - The split is water-filling (`allocate`) over the shares that are asking: in proportion
//!   to weight, none above its cap, the excess of capped ones to the others. Each share's own
//!   bucket then runs at its part, so two transfers at weights 2:1 get 2:1 (65 591 and
//!   32 768 B/s of 96 KiB/s on the wire, tests/queue.rs; exact on a virtual clock) and each
//!   one's bytes are as even as a lone transfer's.
//!   A share that has asked for nothing for `IDLE` (retrying a server that is down, waiting
//!   out a backoff) gives its part to the others until it asks again, and then starts empty,
//!   so the credit of its pause is no lump on the link.
//! - The buckets are our own GCRA on tokio's clock, not governor's: parts change whenever a
//!   share starts, stops or idles, governor has no `set_rate` (a new limiter per change lost
//!   the old one's credit and started empty again), and its waits run on a clock of its own,
//!   out of reach of tests on tokio's paused one. A re-rated bucket keeps its credit in bytes,
//!   so a new rate lets no burst out.
//! - Unlimited is a bypass, not a huge rate: no bucket to keep, no timer to wake.
//! - A group of shares can be held under one cap together ([`Uplink::grouped_share`],
//!   [`Uplink::set_group_rate`]): `upload run`'s polite transfers, whose combined part polite
//!   mode steers while the others use the budget as before. In the split the group is one
//!   share (its members' weights summed, the group's cap), and its part is split again among
//!   its members the same way; what the group does not take goes to the others.

use crate::client::{LinkProbe, TcpStats};
use crate::units::Rate;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Seconds of data in one piece: small enough that the modem's buffer never holds a lump.
const PIECE_SECONDS: f64 = 0.05;
const PIECE_MIN: usize = 256;
const PIECE_MAX: usize = 64 * 1024;
/// The piece size when nothing limits the rate: large reads, few wake-ups.
pub const UNLIMITED_PIECE: usize = 256 * 1024;
/// A share that has asked for nothing this long is idle: its part goes to the others. Well
/// above the pause between two chunks of a transfer (the server's answer, one commit, the next
/// request: the longest silence on the wire in 60 s of `scripts/bench_loopback.py --only
/// throttle`, chunk boundaries included, was 0.05 to 0.21 s on 2 shared cores), so a busy share
/// keeps its part from chunk to chunk, and a transfer that stopped (retrying, backing off,
/// held by a pause) gives it up within a second.
const IDLE: Duration = Duration::from_secs(1);

/// A full TCP segment's payload (Ethernet MTU, IPv4, TCP timestamps).
const SEGMENT: f64 = 1448.0;
/// The longest a piece may take to be filled up to a full segment.
const SEGMENT_SECONDS: f64 = 0.1;

/// The piece size for a rate: about [`PIECE_SECONDS`] of data, but a full TCP segment where
/// that takes at most [`SEGMENT_SECONDS`]. Each piece leaves as its own segment (the socket
/// has `TCP_NODELAY`), and 52 bytes of TCP/IP headers on the 800-byte pieces of 128 kbit/s
/// cost 6 % of the link: polite mode, which fills the link with paced pieces, measured 85 %
/// of it with them.
pub fn piece_for(rate: Option<Rate>) -> usize {
    match rate {
        None => UNLIMITED_PIECE,
        Some(r) => {
            let bps = r.bytes_per_second();
            let piece = (bps * PIECE_SECONDS).max(SEGMENT.min(bps * SEGMENT_SECONDS));
            (piece as usize).clamp(PIECE_MIN, PIECE_MAX)
        }
    }
}

/// Splits `budget` (bytes per second; `None` is unlimited) between shares given as (weight,
/// own cap), in proportion to weight, none above its cap, the excess of capped ones shared
/// among the others (water-filling). `None` in the result means unlimited.
fn allocate(budget: Option<f64>, wants: &[(f64, Option<f64>)]) -> Vec<Option<f64>> {
    let Some(mut left) = budget else {
        return wants.iter().map(|(_, cap)| *cap).collect();
    };
    let mut out: Vec<Option<f64>> = vec![None; wants.len()];
    let mut open: Vec<usize> = (0..wants.len()).collect();
    // Each round fixes every share whose cap is below its fair part; at most n rounds.
    loop {
        let total: f64 = open.iter().map(|&i| wants[i].0).sum();
        if open.is_empty() || total <= 0.0 {
            break;
        }
        let capped: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| {
                wants[i]
                    .1
                    .is_some_and(|cap| cap < left * wants[i].0 / total)
            })
            .collect();
        if capped.is_empty() {
            for &i in &open {
                out[i] = Some(left * wants[i].0 / total);
            }
            break;
        }
        for &i in &capped {
            let cap = wants[i].1.expect("capped ones have caps");
            out[i] = Some(cap);
            left -= cap;
        }
        open.retain(|i| !capped.contains(i));
    }
    out
}

/// [`allocate`] with some shares (`grouped`) held together under `group_cap`: the group takes
/// part in the split as one share (its weights summed, capped at `group_cap`, or lower where
/// its members' own caps sum below it), and its part is split among its members. Without a
/// group cap the grouped shares are ordinary ones.
fn allocate_grouped(
    budget: Option<f64>,
    group_cap: Option<f64>,
    wants: &[(f64, Option<f64>, bool)],
) -> Vec<Option<f64>> {
    let plain = |w: &[(f64, Option<f64>, bool)]| -> Vec<(f64, Option<f64>)> {
        w.iter().map(|(weight, cap, _)| (*weight, *cap)).collect()
    };
    let members: Vec<usize> = (0..wants.len()).filter(|&i| wants[i].2).collect();
    let Some(group_cap) = group_cap.filter(|_| !members.is_empty()) else {
        return allocate(budget, &plain(wants));
    };
    let weight: f64 = members.iter().map(|&i| wants[i].0).sum();
    let own_caps: Option<f64> = members.iter().map(|&i| wants[i].1).sum();
    let cap = own_caps.map_or(group_cap, |c| c.min(group_cap));
    let others: Vec<usize> = (0..wants.len()).filter(|&i| !wants[i].2).collect();
    let mut outer: Vec<(f64, Option<f64>)> =
        others.iter().map(|&i| (wants[i].0, wants[i].1)).collect();
    outer.push((weight, Some(cap)));
    let outer_parts = allocate(budget, &outer);
    let group_part = outer_parts.last().copied().flatten();
    let inner: Vec<(f64, Option<f64>)> =
        members.iter().map(|&i| (wants[i].0, wants[i].1)).collect();
    let inner_parts = allocate(group_part, &inner);
    let mut out = vec![None; wants.len()];
    for (k, &i) in others.iter().enumerate() {
        out[i] = outer_parts[k];
    }
    for (k, &i) in members.iter().enumerate() {
        out[i] = inner_parts[k];
    }
    out
}

/// A wait of `s` seconds, at most a billion: beyond any real wait (a piece at the smallest
/// part of a tiny budget), and an instant that far ahead cannot overflow.
fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e9))
}

/// A GCRA token bucket of bytes at some rate, holding at most `burst` bytes of credit.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// When every byte granted so far is paid for at the rate (GCRA's theoretical arrival
    /// time); never more than `burst` bytes' worth ahead of now.
    paid_until: Instant,
}

impl Bucket {
    /// A bucket holding `credit` bytes at `now` (0: empty).
    fn holding(credit: f64, rate: f64, burst: usize, now: Instant) -> Bucket {
        let owed = (burst as f64 - credit.min(burst as f64)).max(0.0);
        Bucket {
            paid_until: now + seconds(owed / rate),
        }
    }

    /// The bytes that may go out at once at `now`.
    fn credit(&self, rate: f64, burst: usize, now: Instant) -> f64 {
        let owed = self.paid_until.saturating_duration_since(now).as_secs_f64() * rate;
        (burst as f64 - owed).max(0.0)
    }

    /// Takes `n` bytes (at most `burst`) if they may go out at `now`, else says when they may.
    fn take(&mut self, n: usize, rate: f64, burst: usize, now: Instant) -> Result<(), Instant> {
        let start = self.paid_until.max(now);
        // Computed the same way at every call, so a waiter woken at the instant it was given
        // is granted there (no rounding pushes it a timer tick later).
        let allowed = seconds(burst.saturating_sub(n) as f64 / rate);
        let owed = start - now;
        if owed <= allowed {
            self.paid_until = start + seconds(n as f64 / rate);
            Ok(())
        } else {
            Err(now + (owed - allowed))
        }
    }
}

/// One transfer's part of the budget and the bucket that paces it.
struct Share {
    weight: f64,
    /// Its own limit, bytes per second.
    cap: Option<f64>,
    /// Its part now (while idle: what it gets when it asks); `None`: nothing limits it.
    rate: Option<Rate>,
    piece: usize,
    bucket: Bucket,
    /// `acquire` calls in progress.
    asking: usize,
    /// When an `acquire` last began or ended.
    last_asked: Instant,
    /// Counted in the split: asking, or asked within [`IDLE`].
    active: bool,
    /// The connection its bytes go over, for a policy that reads the link (polite mode).
    link: Option<LinkProbe>,
    /// One of the group held under the group's cap ([`Uplink::grouped_share`]).
    grouped: bool,
}

impl Share {
    /// Moves the share to `rate`, keeping its credit in bytes; whether anything changed.
    fn rerate(&mut self, rate: Option<Rate>, now: Instant) -> bool {
        if self.rate.map(Rate::bytes_per_second) == rate.map(Rate::bytes_per_second) {
            return false;
        }
        let piece = piece_for(rate);
        if let Some(new) = rate {
            // From unlimited a bucket starts empty, as at construction.
            let credit = self.rate.map_or(0.0, |old| {
                self.bucket
                    .credit(old.bytes_per_second(), 2 * self.piece, now)
            });
            self.bucket = Bucket::holding(credit, new.bytes_per_second(), 2 * piece, now);
        }
        self.rate = rate;
        self.piece = piece;
        true
    }
}

/// The budget and its shares, under one lock (never held across an await).
struct Split {
    budget: Option<Rate>,
    /// The cap of the grouped shares together; `None`: they are ordinary shares.
    group_cap: Option<Rate>,
    shares: BTreeMap<u64, Share>,
    next_id: u64,
}

impl Split {
    /// Recomputes every share's part; whether any changed.
    fn reallocate(&mut self, now: Instant) -> bool {
        let budget = self.budget.map(Rate::bytes_per_second);
        let group_cap = self.group_cap.map(Rate::bytes_per_second);
        let want = |s: &Share| (s.weight, s.cap, s.grouped);
        let active: Vec<u64> = (self.shares.iter())
            .filter(|(_, s)| s.active)
            .map(|(id, _)| *id)
            .collect();
        let wants: Vec<(f64, Option<f64>, bool)> =
            active.iter().map(|id| want(&self.shares[id])).collect();
        let mut parts: Vec<(u64, Option<f64>)> = active
            .iter()
            .copied()
            .zip(allocate_grouped(budget, group_cap, &wants))
            .collect();
        // An idle share is told the part it would get by asking, so a transfer sizes its next
        // chunk (and the last one before a pause) by what it will be allowed.
        for (id, s) in self.shares.iter().filter(|(_, s)| !s.active) {
            let mut with = wants.clone();
            with.push(want(s));
            parts.push((
                *id,
                allocate_grouped(budget, group_cap, &with).pop().flatten(),
            ));
        }
        let mut changed = false;
        for (id, part) in parts {
            let rate = part.and_then(|b| Rate::from_bytes_per_second(b).ok());
            let share = self.shares.get_mut(&id).expect("listed above");
            changed |= share.rerate(rate, now);
        }
        changed
    }

    /// Takes the part of shares that stopped asking [`IDLE`] ago; whether any part changed.
    fn expire_idle(&mut self, now: Instant) -> bool {
        let mut expired = false;
        for s in self.shares.values_mut() {
            if s.active && s.asking == 0 && now.duration_since(s.last_asked) >= IDLE {
                s.active = false;
                expired = true;
            }
        }
        expired && self.reallocate(now)
    }
}

struct Inner {
    split: Mutex<Split>,
    /// Bumped when any share's part changes: waiters wake and wait on their new part.
    changed: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Split> {
        self.split.lock().expect("throttle lock")
    }

    fn parts_changed(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The process' limiter: one budget, split between shares. `upload run` holds one and gives
/// each transfer a share of it; a lone `upload send` has one inside its [`Throttle::new`].
#[derive(Clone)]
pub struct Uplink {
    inner: Arc<Inner>,
}

impl Uplink {
    /// A budget of `budget`, or none at all, with no shares yet.
    pub fn new(budget: Option<Rate>) -> Uplink {
        let (changed, _) = watch::channel(0);
        Uplink {
            inner: Arc::new(Inner {
                split: Mutex::new(Split {
                    budget,
                    group_cap: None,
                    shares: BTreeMap::new(),
                    next_id: 0,
                }),
                changed,
            }),
        }
    }

    /// Changes the budget; every share's part follows, and senders waiting on an old part
    /// wake and wait on the new one.
    pub fn set_rate(&self, budget: Option<Rate>) {
        set_budget(&self.inner, budget);
    }

    /// The round-trip counters of the connection of every share that has one, keyed by share
    /// (and connection: a share's new connection is a new key).
    pub fn link_stats(&self) -> Vec<(u64, TcpStats)> {
        self.stats_of(|_| true)
    }

    /// [`Uplink::link_stats`] of the grouped shares only: what the group's own bytes meet.
    pub fn group_link_stats(&self) -> Vec<(u64, TcpStats)> {
        self.stats_of(|s| s.grouped)
    }

    fn stats_of(&self, which: impl Fn(&Share) -> bool) -> Vec<(u64, TcpStats)> {
        let probes: Vec<(u64, LinkProbe)> = self
            .inner
            .lock()
            .shares
            .iter()
            .filter(|(_, s)| which(s))
            .filter_map(|(id, s)| s.link.clone().map(|p| (*id, p)))
            .collect();
        probes
            .into_iter()
            .filter_map(|(id, p)| p.stats().map(|s| (id, s)))
            .collect()
    }

    /// A new share at `weight` (positive: a share of weight 2 gets twice one of weight 1),
    /// never above `cap`. It counts in the split from its first [`Throttle::acquire`] and
    /// leaves it when its last handle is dropped.
    pub fn share(&self, weight: f64, cap: Option<Rate>) -> Throttle {
        self.new_share(weight, cap, false)
    }

    /// A share like [`Uplink::share`] that is one of the group: the group's parts together
    /// stay within [`Uplink::set_group_rate`]'s cap.
    pub fn grouped_share(&self, weight: f64, cap: Option<Rate>) -> Throttle {
        self.new_share(weight, cap, true)
    }

    /// Caps the grouped shares together (`None`: no cap, they are ordinary shares); the
    /// others' parts follow, and waiting senders wake on their new parts.
    pub fn set_group_rate(&self, cap: Option<Rate>) {
        let changed = {
            let mut split = self.inner.lock();
            if split.group_cap.map(Rate::bytes_per_second) == cap.map(Rate::bytes_per_second) {
                return;
            }
            split.group_cap = cap;
            split.reallocate(Instant::now())
        };
        if changed {
            self.inner.parts_changed();
        }
    }

    fn new_share(&self, weight: f64, cap: Option<Rate>, grouped: bool) -> Throttle {
        let now = Instant::now();
        let mut split = self.inner.lock();
        let id = split.next_id;
        split.next_id += 1;
        split.shares.insert(
            id,
            Share {
                weight,
                cap: cap.map(Rate::bytes_per_second),
                rate: None,
                piece: UNLIMITED_PIECE,
                bucket: Bucket { paid_until: now },
                asking: 0,
                last_asked: now,
                active: false,
                link: None,
                grouped,
            },
        );
        // Only its own part is new: the others' change when it begins to ask.
        split.reallocate(now);
        drop(split);
        Throttle {
            share: Arc::new(ShareKey {
                inner: self.inner.clone(),
                id,
            }),
        }
    }
}

fn set_budget(inner: &Inner, budget: Option<Rate>) {
    let changed = {
        let mut split = inner.lock();
        if split.budget.map(Rate::bytes_per_second) == budget.map(Rate::bytes_per_second) {
            return;
        }
        split.budget = budget;
        split.reallocate(Instant::now())
    };
    if changed {
        inner.parts_changed();
    }
}

/// Removes its share from the split when the last handle goes.
struct ShareKey {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for ShareKey {
    fn drop(&mut self) {
        let Ok(mut split) = self.inner.split.lock() else {
            return;
        };
        split.shares.remove(&self.id);
        let changed = split.reallocate(Instant::now());
        drop(split);
        if changed {
            self.inner.parts_changed();
        }
    }
}

/// One transfer's handle on the process' limiter: its share. Clones are the same share.
#[derive(Clone)]
pub struct Throttle {
    share: Arc<ShareKey>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("rate", &self.rate())
            .finish()
    }
}

/// Marks a share as asking for as long as an `acquire` runs, however it ends.
struct Asking<'a>(&'a ShareKey);

impl<'a> Asking<'a> {
    fn begin(key: &'a ShareKey) -> Asking<'a> {
        let now = Instant::now();
        let changed = {
            let mut split = key.inner.lock();
            let s = split
                .shares
                .get_mut(&key.id)
                .expect("a share lives as long as its handles");
            let idle = !s.active || (s.asking == 0 && now.duration_since(s.last_asked) >= IDLE);
            s.asking += 1;
            s.last_asked = now;
            if idle {
                s.active = true;
                // Back from idle it starts empty, as a new share does.
                if let Some(r) = s.rate {
                    s.bucket = Bucket::holding(0.0, r.bytes_per_second(), 2 * s.piece, now);
                }
            }
            idle && split.reallocate(now)
        };
        if changed {
            key.inner.parts_changed();
        }
        Asking(key)
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Ok(mut split) = self.0.inner.split.lock()
            && let Some(s) = split.shares.get_mut(&self.0.id)
        {
            s.asking -= 1;
            s.last_asked = Instant::now();
        }
    }
}

impl Throttle {
    /// A limiter at `rate`, or none at all: a budget with this one share.
    pub fn new(rate: Option<Rate>) -> Self {
        Uplink::new(rate).share(1.0, None)
    }

    pub fn unlimited() -> Self {
        Self::new(None)
    }

    /// Reads this share after taking the parts of shares gone idle.
    fn read<T>(&self, f: impl FnOnce(&Share) -> T) -> T {
        let key = &self.share;
        let (out, changed) = {
            let mut split = key.inner.lock();
            let changed = split.expire_idle(Instant::now());
            (f(&split.shares[&key.id]), changed)
        };
        if changed {
            key.inner.parts_changed();
        }
        out
    }

    /// The rate this share is allowed now, `None` when unlimited.
    pub fn rate(&self) -> Option<Rate> {
        self.read(|s| s.rate)
    }

    /// The most bytes to ask for at once.
    pub fn piece(&self) -> usize {
        self.read(|s| s.piece)
    }

    /// The limiter this share is part of, for a policy that steers its budget.
    pub fn uplink(&self) -> Uplink {
        Uplink {
            inner: self.share.inner.clone(),
        }
    }

    /// Tells the limiter which connection this share's bytes go over now.
    pub fn watch_link(&self, probe: LinkProbe) {
        if let Some(s) = self.share.inner.lock().shares.get_mut(&self.share.id) {
            s.link = Some(probe);
        }
    }

    /// Changes the budget this share draws from: a lone `upload send`'s rate (under `upload
    /// run` the scheduler sets the budget on its [`Uplink`]).
    pub fn set_rate(&self, rate: Option<Rate>) {
        set_budget(&self.share.inner, rate);
    }

    /// Waits until `bytes` may go out. Larger requests than one piece are split.
    pub async fn acquire(&self, mut bytes: usize) {
        if bytes == 0 {
            return;
        }
        let key = &*self.share;
        let _asking = Asking::begin(key);
        let mut changes = key.inner.changed.subscribe();
        while bytes > 0 {
            let now = Instant::now();
            let (ready, changed) = {
                let mut split = key.inner.lock();
                let changed = split.expire_idle(now);
                let s = split
                    .shares
                    .get_mut(&key.id)
                    .expect("a share lives as long as its handles");
                let ready = match s.rate {
                    None => Ok(bytes),
                    Some(rate) => {
                        let n = bytes.min(s.piece);
                        s.bucket
                            .take(n, rate.bytes_per_second(), 2 * s.piece, now)
                            .map(|()| n)
                    }
                };
                (ready, changed)
            };
            if changed {
                key.inner.parts_changed();
            }
            match ready {
                Ok(n) => bytes -= n,
                Err(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        _ = changes.changed() => {}
                    }
                }
            }
        }
    }
}

/// Whether sending may start a chunk now, and when it must have stopped: how the scheduler's
/// `pause` slots reach a running transfer without dropping its connection. The throttle sets
/// how fast; the gate sets whether and until when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateState {
    pub open: bool,
    /// When an open gate will close (the next `pause` slot), so the last chunk can be sized to
    /// end before it and no partial chunk is thrown away.
    pub closes_at: Option<tokio::time::Instant>,
}

/// The receiving side of a gate; [`Gate::always_open`] for a transfer nobody schedules.
#[derive(Debug, Clone)]
pub struct Gate(Option<watch::Receiver<GateState>>);

/// The scheduler's side of a gate.
#[derive(Debug)]
pub struct GateControl(watch::Sender<GateState>);

/// Below this, a chunk before a pause is not worth its request: wait for the pause instead.
const GATE_MIN_CHUNK: u64 = 16 * 1024;

impl Gate {
    pub fn always_open() -> Gate {
        Gate(None)
    }

    /// A gate, open, and its control.
    pub fn new() -> (GateControl, Gate) {
        let (tx, rx) = watch::channel(GateState {
            open: true,
            closes_at: None,
        });
        (GateControl(tx), Gate(Some(rx)))
    }

    fn state(&self) -> GateState {
        self.0.as_ref().map_or(
            GateState {
                open: true,
                closes_at: None,
            },
            |rx| *rx.borrow(),
        )
    }

    /// Waits until a chunk of useful size may start, and returns the most bytes it may carry
    /// at `bytes_per_second` (`None`: no bound) so that it ends before the gate closes.
    pub async fn admit(&mut self, bytes_per_second: Option<f64>) -> Option<u64> {
        loop {
            let st = self.state();
            if st.open {
                // No pause ahead: any chunk fits.
                let closes = st.closes_at?;
                let left = closes.saturating_duration_since(tokio::time::Instant::now());
                let Some(rate) = bytes_per_second else {
                    // Unknown speed: cannot size the chunk; send it, the pause waits for it.
                    return None;
                };
                // 90 %: the rate is a ceiling, the response takes a moment too.
                let fits = (rate * left.as_secs_f64() * 0.9) as u64;
                if fits >= GATE_MIN_CHUNK {
                    return Some(fits);
                }
                // Too close to the pause: wait for it (or for the plan to change).
                if let Some(rx) = self.0.as_mut() {
                    let _ =
                        tokio::time::timeout(left + Duration::from_millis(50), rx.changed()).await;
                }
                continue;
            }
            match self.0.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        // The scheduler is gone: nothing will open the gate again.
                        std::future::pending::<()>().await;
                    }
                }
                None => return None,
            }
        }
    }
}

impl GateControl {
    pub fn set(&self, state: GateState) {
        self.0.send_if_modified(|cur| {
            let changed = *cur != state;
            *cur = state;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn rate(bps: f64) -> Option<Rate> {
        Some(Rate::from_bytes_per_second(bps).unwrap())
    }

    /// Asks `t` for piece after piece until `until`: when each was granted, and how big.
    async fn keep_sending(t: Throttle, until: Instant) -> Vec<(Instant, usize)> {
        let mut granted = Vec::new();
        while Instant::now() < until {
            let n = t.piece();
            t.acquire(n).await;
            granted.push((Instant::now(), n));
        }
        granted
    }

    /// Bytes granted in `[from, to)`.
    fn bytes_between(granted: &[(Instant, usize)], from: Instant, to: Instant) -> usize {
        (granted.iter())
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, n)| n)
            .sum()
    }

    /// Polite mode re-rates its budget ten times a second; a re-rate must cost no rate.
    #[tokio::test(start_paused = true)]
    async fn a_budget_re_rated_ten_times_a_second_still_holds_its_rate() {
        for r in [16_000.0, 125_000.0, 1_250_000.0] {
            let t = Throttle::new(rate(r));
            let uplink = t.uplink();
            let start = Instant::now();
            let end = start + Duration::from_secs(20);
            let steer = tokio::spawn(async move {
                let mut i = 0u32;
                while Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    i += 1;
                    // A hair above and below, as the controller's output moves.
                    let wobble = if i.is_multiple_of(2) { 1.001 } else { 0.999 };
                    uplink.set_rate(rate(r * wobble));
                }
            });
            let granted = keep_sending(t, end).await;
            steer.await.unwrap();
            let sent = bytes_between(&granted, start + Duration::from_secs(2), end) as f64;
            let mean = sent / 18.0;
            assert!(mean / r > 0.98, "{r} B/s re-rated: {mean:.0} B/s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_without_an_initial_burst() {
        let t = Throttle::new(rate(100_000.0));
        let piece = t.piece();
        assert_eq!(piece, 5000);
        let start = Instant::now();
        let mut sent = 0;
        while sent < 50_000 {
            t.acquire(piece).await;
            sent += piece;
        }
        let secs = start.elapsed().as_secs_f64();
        // 50 kB at 100 kB/s is 0.5 s; a full starting bucket would make it 0.45 s or less.
        assert!(secs > 0.48 && secs < 0.6, "{secs}");
    }

    #[tokio::test(start_paused = true)]
    async fn large_requests_are_split_not_refused() {
        let t = Throttle::new(rate(200_000.0));
        let start = Instant::now();
        t.acquire(40_000).await;
        let secs = start.elapsed().as_secs_f64();
        assert!(secs > 0.18 && secs < 0.3, "{secs}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_does_not_wait() {
        let t = Throttle::unlimited();
        let start = Instant::now();
        t.acquire(1 << 30).await;
        assert!(start.elapsed() < Duration::from_millis(10));
        assert_eq!(t.piece(), UNLIMITED_PIECE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_wakes_a_waiting_sender() {
        // At 1 kB/s a 1 kB request would take a second; raising the rate mid-wait releases it.
        let t = Throttle::new(rate(1_000.0));
        let waiter = t.clone();
        let start = Instant::now();
        let task = tokio::spawn(async move { waiter.acquire(1_000).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.set_rate(None);
        task.await.unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_senders_pieces_go_out_evenly() {
        // 16 KiB/s, as the bench: full-segment pieces every 88 ms, never two at once.
        let t = Throttle::new(rate(16_384.0));
        let start = Instant::now();
        let granted = keep_sending(t, start + Duration::from_secs(10)).await;
        assert_eq!(piece_for(rate(16_384.0)), 1448);
        let piece_time = 1448.0 / 16_384.0;
        for pair in granted.windows(2) {
            let gap = (pair[1].0 - pair[0].0).as_secs_f64();
            // tokio's timer wakes on whole milliseconds.
            assert!((gap - piece_time).abs() <= 0.001, "a gap of {gap} s");
        }
        let secs = (granted.last().unwrap().0 - start).as_secs_f64();
        let mean = granted.iter().map(|(_, n)| n).sum::<usize>() as f64 / secs;
        assert!((mean / 16_384.0 - 1.0).abs() < 0.001, "{mean} B/s");
    }

    #[tokio::test(start_paused = true)]
    async fn late_wake_ups_cost_no_rate() {
        // A sender that comes back a millisecond late after every piece (as real timers do)
        // still gets the whole rate: the second piece of room absorbs it. With room for one
        // piece it would fall 2 % short.
        let t = Throttle::new(rate(100_000.0));
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed() < Duration::from_secs(10) {
            t.acquire(t.piece()).await;
            sent += t.piece();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mean = sent as f64 / start.elapsed().as_secs_f64();
        assert!(mean > 99_500.0, "{mean} B/s");
    }

    #[tokio::test(start_paused = true)]
    async fn two_shares_split_the_budget_by_weight_exactly() {
        // The 2:1 of tests/queue.rs, on a virtual clock: 96 KiB/s, weights 2 and 1.
        let uplink = Uplink::new(rate(98_304.0));
        let (a, b) = (uplink.share(2.0, None), uplink.share(1.0, None));
        let start = Instant::now();
        let until = start + Duration::from_secs(32);
        let (ta, tb) = (
            tokio::spawn(keep_sending(a.clone(), until)),
            tokio::spawn(keep_sending(b.clone(), until)),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(a.rate(), rate(65_536.0));
        assert_eq!(b.rate(), rate(32_768.0));
        let (ga, gb) = (ta.await.unwrap(), tb.await.unwrap());
        let (from, to) = (
            start + Duration::from_secs(1),
            start + Duration::from_secs(31),
        );
        let ra = bytes_between(&ga, from, to) as f64 / 30.0;
        let rb = bytes_between(&gb, from, to) as f64 / 30.0;
        assert!((ra / 65_536.0 - 1.0).abs() < 0.002, "a {ra} B/s");
        assert!((rb / 32_768.0 - 1.0).abs() < 0.002, "b {rb} B/s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_shares_part_goes_to_the_others_until_it_asks_again() {
        let budget = 64_000.0;
        let uplink = Uplink::new(rate(budget));
        let (a, b) = (uplink.share(1.0, None), uplink.share(1.0, None));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let ta = tokio::spawn(keep_sending(a.clone(), at(16)));
        // b sends for 5 s, then waits (a backoff, a server that is down) and comes back at 10 s.
        keep_sending(b.clone(), at(5)).await;
        assert_eq!(
            a.rate(),
            rate(budget / 2.0),
            "an idle second has not passed"
        );
        tokio::time::sleep_until(at(10)).await;
        assert_eq!(a.rate(), rate(budget), "b has been idle for seconds");
        assert_eq!(
            b.rate(),
            rate(budget / 2.0),
            "b is told what it gets by asking"
        );
        let back = Instant::now();
        let gb = keep_sending(b.clone(), at(16)).await;
        // Back from idle, b starts empty: its first piece comes a piece's time later, not at
        // once from credit saved while it was away.
        assert!(
            gb[0].0 - back >= Duration::from_millis(49),
            "{:?}",
            gb[0].0 - back
        );
        let ga = ta.await.unwrap();
        let ra = |from, to| bytes_between(&ga, at(from), at(to)) as f64 / (to - from) as f64;
        assert!(
            (ra(2, 5) / (budget / 2.0) - 1.0).abs() < 0.01,
            "a with b: {}",
            ra(2, 5)
        );
        assert!(
            (ra(7, 10) / budget - 1.0).abs() < 0.01,
            "a alone: {}",
            ra(7, 10)
        );
        assert!(
            (ra(11, 16) / (budget / 2.0) - 1.0).abs() < 0.01,
            "a with b again: {}",
            ra(11, 16)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_capped_or_dropped_shares_part_goes_to_the_others() {
        let uplink = Uplink::new(rate(100_000.0));
        let a = uplink.share(1.0, None);
        let b = uplink.share(4.0, rate(10_000.0));
        let start = Instant::now();
        let until = start + Duration::from_secs(11);
        let (ta, tb) = (
            tokio::spawn(keep_sending(a.clone(), until)),
            tokio::spawn(keep_sending(b.clone(), until)),
        );
        let (ga, gb) = (ta.await.unwrap(), tb.await.unwrap());
        let (from, to) = (start + Duration::from_secs(1), until);
        let ra = bytes_between(&ga, from, to) as f64 / 10.0;
        let rb = bytes_between(&gb, from, to) as f64 / 10.0;
        assert!((rb / 10_000.0 - 1.0).abs() < 0.01, "b at its cap: {rb}");
        assert!((ra / 90_000.0 - 1.0).abs() < 0.01, "a has the rest: {ra}");
        drop((b, gb));
        assert_eq!(a.rate(), rate(100_000.0), "b's share left with its handle");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_budget_reaches_every_share_without_a_burst() {
        let uplink = Uplink::new(rate(10_000.0));
        let (a, b) = (uplink.share(1.0, None), uplink.share(1.0, None));
        let start = Instant::now();
        let until = start + Duration::from_secs(4);
        let (ta, tb) = (
            tokio::spawn(keep_sending(a.clone(), until)),
            tokio::spawn(keep_sending(b.clone(), until)),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        uplink.set_rate(rate(100_000.0));
        assert_eq!(a.rate(), rate(50_000.0));
        let (ga, gb) = (ta.await.unwrap(), tb.await.unwrap());
        let changed = start + Duration::from_secs(2);
        for g in [&ga, &gb] {
            // One new piece, and perhaps the old part's last one (256 bytes): a fresh, full bucket
            // would let out two new ones at once.
            let first = bytes_between(g, changed, changed + Duration::from_millis(50));
            assert!(
                first <= piece_for(rate(50_000.0)) + 256,
                "{first} bytes at once"
            );
            let r = bytes_between(g, changed + Duration::from_millis(500), until) as f64 / 1.5;
            assert!(
                (r / 50_000.0 - 1.0).abs() < 0.01,
                "{r} B/s after the change"
            );
        }
    }

    #[test]
    fn allocation_is_weighted_and_capped() {
        let r = allocate(Some(3000.0), &[(1.0, None), (2.0, None)]);
        assert_eq!(r, vec![Some(1000.0), Some(2000.0)]);
        // The capped one's excess goes to the other.
        let r = allocate(Some(3000.0), &[(1.0, None), (2.0, Some(500.0))]);
        assert_eq!(r, vec![Some(2500.0), Some(500.0)]);
        // Everyone capped below the budget: the budget is not all used.
        let r = allocate(Some(3000.0), &[(1.0, Some(100.0)), (1.0, Some(200.0))]);
        assert_eq!(r, vec![Some(100.0), Some(200.0)]);
        // Unlimited budget: only caps apply.
        assert_eq!(
            allocate(None, &[(1.0, None), (1.0, Some(5.0))]),
            vec![None, Some(5.0)]
        );
        assert!(allocate(Some(1.0), &[]).is_empty());
    }

    #[test]
    fn a_group_is_one_share_in_the_split_and_its_cap_holds_it() {
        let g = |w, cap, grouped| (w, cap, grouped);
        // Two grouped shares and one other at 3000 B/s, the group capped at 600: the group's
        // part is split by weight inside it, the rest goes to the other.
        let r = allocate_grouped(
            Some(3000.0),
            Some(600.0),
            &[g(1.0, None, true), g(1.0, None, false), g(2.0, None, true)],
        );
        assert_eq!(r, vec![Some(200.0), Some(2400.0), Some(400.0)]);
        // A cap above the group's fair part does not raise it: weights still split the budget.
        let r = allocate_grouped(
            Some(3000.0),
            Some(2900.0),
            &[g(1.0, None, true), g(1.0, None, false)],
        );
        assert_eq!(r, vec![Some(1500.0), Some(1500.0)]);
        // Members' own caps below the group's: the rest goes to the others.
        let r = allocate_grouped(
            Some(3000.0),
            Some(1000.0),
            &[g(1.0, Some(100.0), true), g(1.0, None, false)],
        );
        assert_eq!(r, vec![Some(100.0), Some(2900.0)]);
        // An unlimited budget: the group is held at its cap, the others are unlimited.
        let r = allocate_grouped(
            None,
            Some(500.0),
            &[g(1.0, None, true), g(1.0, None, false)],
        );
        assert_eq!(r, vec![Some(500.0), None]);
        // No group cap: grouped shares are ordinary ones.
        let r = allocate_grouped(
            Some(3000.0),
            None,
            &[g(1.0, None, true), g(2.0, None, false)],
        );
        assert_eq!(r, vec![Some(1000.0), Some(2000.0)]);
    }

    /// `upload run`'s polite transfers: the group's cap holds a grouped share below its fair
    /// part while an ordinary share takes the rest of the budget, and is held even when it
    /// sends alone (the budget would give it everything); without the cap it is an ordinary
    /// share again.
    #[tokio::test(start_paused = true)]
    async fn a_grouped_share_keeps_to_the_group_cap_and_the_other_has_the_rest() {
        let budget = 100_000.0;
        let uplink = Uplink::new(rate(budget));
        uplink.set_group_rate(rate(10_000.0));
        let polite = uplink.grouped_share(1.0, None);
        let other = uplink.share(1.0, None);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let tp = tokio::spawn(keep_sending(polite.clone(), at(30)));
        let to = tokio::spawn(keep_sending(other.clone(), at(10)));
        let go = to.await.unwrap();
        assert_eq!(polite.rate(), rate(10_000.0));
        let ro = bytes_between(&go, at(1), at(10)) as f64 / 9.0;
        assert!((ro / 90_000.0 - 1.0).abs() < 0.01, "the other: {ro} B/s");
        // Alone from 10 s (the other idle within a second): still the group's cap.
        tokio::time::sleep_until(at(20)).await;
        assert_eq!(polite.rate(), rate(10_000.0));
        uplink.set_group_rate(None);
        assert_eq!(polite.rate(), rate(budget), "uncapped, alone");
        let gp = tp.await.unwrap();
        let rp = |from, to| bytes_between(&gp, at(from), at(to)) as f64 / (to - from) as f64;
        assert!(
            (rp(1, 10) / 10_000.0 - 1.0).abs() < 0.01,
            "with the other: {}",
            rp(1, 10)
        );
        assert!(
            (rp(12, 20) / 10_000.0 - 1.0).abs() < 0.01,
            "alone: {}",
            rp(12, 20)
        );
        assert!(
            (rp(21, 30) / budget - 1.0).abs() < 0.01,
            "uncapped: {}",
            rp(21, 30)
        );
    }

    #[tokio::test]
    async fn a_gate_sizes_the_last_chunk_and_holds_while_closed() {
        let (control, mut gate) = Gate::new();
        assert_eq!(gate.admit(Some(1000.0)).await, None);
        let now = tokio::time::Instant::now();
        control.set(GateState {
            open: true,
            closes_at: Some(now + Duration::from_secs(100)),
        });
        let fits = gate.admit(Some(1000.0)).await.unwrap();
        assert!((89_000..=90_000).contains(&fits), "{fits}");
        control.set(GateState {
            open: false,
            closes_at: None,
        });
        let mut waiting = gate.clone();
        let task = tokio::spawn(async move { waiting.admit(Some(1000.0)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "a closed gate admits nothing");
        control.set(GateState {
            open: true,
            closes_at: None,
        });
        assert_eq!(task.await.unwrap(), None);
    }

    #[test]
    fn pieces_scale_with_the_rate() {
        // A full segment once it fills within 0.1 s; 1/20 s of data above that.
        assert_eq!(piece_for(rate(16_000.0)), 1448);
        assert_eq!(piece_for(rate(12_000.0)), 1200);
        assert_eq!(piece_for(rate(100_000.0)), 5000);
        assert_eq!(piece_for(rate(1_000.0)), PIECE_MIN);
        assert_eq!(piece_for(rate(1e9)), PIECE_MAX);
    }
}
