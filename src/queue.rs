//! The scheduler behind `upload run`: which queued transfers run, how the one uplink budget is
//! shared between them, and when the bandwidth timetable lets them send at all.
//!
//! One throttle mechanism, several policies: the timetable (or `upload limit`) sets the
//! budget of the run's one [`Uplink`], and each transfer sends through its share of it, at a
//! weight from its priority ([`weight`]: each step doubles a share) and capped by its own
//! limit; the uplink splits the budget and paces every share. Polite transfers (`upload queue
//! add --polite`) are one group in that split, whose combined part one polite controller steers
//! ([`polite::steer_group`]): they use what the link has spare, yielding to everything else, the
//! run's other transfers included, which use the budget as before. (In a `polite` slot the
//! controller steers the whole budget, and every transfer is polite already.) A `pause`
//! slot closes the [`Gate`]: transfers stop between chunks, the last chunk before the pause
//! sized to end at the boundary, and connections are not dropped for a rate change.
//!
//! The database is the queue: `upload queue add/pause/rm` in other processes change rows, and
//! the daemon reconciles with them every [`POLL`]. Only rows `queue add` made (or `queue
//! resume` handed over) are its work; an `upload send`'s row is that process's ([`Origin`]). Every transfer is an ordinary
//! [`send::send`], so a daemon killed with SIGKILL and restarted resumes each one from the
//! server's offset; the lock in the store keeps a transfer from being sent twice.
//!
//! Finish times follow the timetable ([`outlook`]): the queue is played forward in order
//! through the slots' rates, `off` slots at the link's measured (or assumed) rate.

use crate::estimate::LinkRate;
use crate::outage::Outage;
use crate::polite;
use crate::schedule::{Budget, Timetable};
use crate::send::{self, Event, SendError, SendOptions};
use crate::store::{self, AsyncStore, Origin, Store, StoreError, Transfer, TransferState};
use crate::throttle::{Gate, GateState, Uplink};
use crate::units::Rate;
use chrono::{DateTime, FixedOffset, Local, TimeDelta};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the daemon looks at the queue, the clock and `upload limit`.
pub const POLL: Duration = Duration::from_secs(1);
/// The settings key `upload limit` writes and the daemon reads.
pub const BUDGET_OVERRIDE: &str = "budget_override";
/// The settings key where a running daemon publishes its timetable, for `upload status`.
pub const TIMETABLE: &str = "timetable";
/// The settings key where a running `upload run` publishes what polite mode is doing
/// ([`PoliteState`], JSON), for `upload status`: in a `polite` slot, or while it sends polite
/// transfers.
pub const POLITE_STATE: &str = "polite_state";

/// What polite mode was doing at `at`, as `upload status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoliteState {
    pub at: DateTime<chrono::Utc>,
    /// "probing", "using", "yielding" or "slowdown".
    pub state: String,
    pub rate_bps: f64,
    pub queue_delay_ms: f64,
    pub capacity_bps: Option<f64>,
    /// It steers only the polite transfers' part (`queue add --polite`), not the whole budget.
    #[serde(default)]
    pub transfers_only: bool,
}

impl PoliteState {
    pub fn of(
        steer: &polite::Steer,
        at: DateTime<chrono::Utc>,
        transfers_only: bool,
    ) -> PoliteState {
        PoliteState {
            at,
            transfers_only,
            state: steer.state.word().to_string(),
            rate_bps: steer.rate * 8.0,
            queue_delay_ms: steer.queue_delay.as_secs_f64() * 1000.0,
            capacity_bps: steer.capacity.map(|c| c * 8.0),
        }
    }
}

/// The settings key where a running `upload run` records itself (`pid@host`), so `upload
/// limit` can say whether anyone takes its budget now.
pub const RUN_OWNER: &str = "run_owner";

/// The budget `upload limit` saved, if any: it holds every run instead of the timetable until
/// `upload limit --clear`.
pub fn budget_override(store: &Store) -> Result<Option<Budget>, StoreError> {
    Ok(store
        .get_setting(BUDGET_OVERRIDE)?
        .and_then(|v| v.parse().ok()))
}

/// The `pid@host` of the `upload run` using this database now, if one is. A run killed with
/// SIGKILL leaves its record behind; a dead process on this host does not count.
pub fn active_run(store: &Store) -> Result<Option<String>, StoreError> {
    Ok(store
        .get_setting(RUN_OWNER)?
        .filter(|owner| !store::owner_is_dead(owner)))
}

/// The host the running transfers (of those `which` picks) send to, when they all send to one:
/// whose link polite mode measures.
fn running_host(
    rows: &[Transfer],
    running: &HashMap<i64, Running>,
    which: impl Fn(&Transfer) -> bool,
) -> Option<String> {
    let mut hosts = rows
        .iter()
        .filter(|t| running.contains_key(&t.id) && which(t))
        .filter_map(|t| {
            url::Url::parse(&t.dest_url)
                .ok()?
                .host_str()
                .map(str::to_string)
        });
    let first = hosts.next()?;
    hosts.all(|h| h == first).then_some(first)
}

/// What the run's polite transfers' own controller should do this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
enum GroupSteering {
    /// None is wanted: no polite work, or a `polite` slot steers the whole budget (they are
    /// ordinary shares of it then).
    Off,
    /// Steer, keeping to this ceiling (bytes per second; `None`: none).
    Under(Option<f64>),
    /// Keep steering as it is: while paused nothing sends, and the ceiling stays for when the
    /// pause ends.
    Keep,
}

/// [`GroupSteering`] at `budget`; `polite_work`: polite transfers are running or about to.
fn group_steering(budget: Budget, polite_work: bool) -> GroupSteering {
    match budget {
        _ if !polite_work => GroupSteering::Off,
        Budget::Polite => GroupSteering::Off,
        Budget::Paused => GroupSteering::Keep,
        Budget::Limited(r) => GroupSteering::Under(Some(r.bytes_per_second())),
        Budget::Unlimited => GroupSteering::Under(None),
    }
}

/// The share weight of a priority: each step up doubles a transfer's share of the budget.
pub fn weight(priority: i64) -> f64 {
    2f64.powi(priority.clamp(-16, 16) as i32)
}

/// Wall-clock time for the scheduler. Tests start it at a chosen instant
/// (`UPLOAD_CLOCK_START`, RFC 3339) so a timetable boundary comes seconds, not hours, after
/// the start; it then advances in real time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    offset: TimeDelta,
}

impl Clock {
    pub fn from_env() -> Result<Clock, String> {
        match std::env::var("UPLOAD_CLOCK_START") {
            Err(_) => Ok(Clock::default()),
            Ok(v) => {
                let start = DateTime::parse_from_rfc3339(&v).map_err(|e| {
                    format!(
                        "UPLOAD_CLOCK_START=\"{v}\": {e}; expected e.g. 2026-01-01T06:59:58+00:00"
                    )
                })?;
                Ok(Clock {
                    offset: start.with_timezone(&Local) - Local::now(),
                })
            }
        }
    }

    pub fn now(&self) -> DateTime<Local> {
        Local::now() + self.offset
    }
}

/// Errors that stop the daemon itself (a transfer's failure only fails that transfer).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the state database: {0}")]
    Store(#[from] StoreError),
}

/// Finds the token for a destination host.
pub type TokenLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How `upload run` behaves.
pub struct RunOptions {
    /// Transfers sent at once.
    pub jobs: usize,
    pub timetable: Timetable,
    /// Stop (as on SIGTERM) at this time.
    pub until: Option<DateTime<Local>>,
    /// Keep running when the queue is empty, waiting for `upload queue add`.
    pub daemon: bool,
    /// A transfer failing continuously this long is marked failed.
    pub give_up_after: Duration,
    pub tokens: TokenLookup,
    /// For https: the CA file every transfer trusts instead of the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// For ssh:// transfers: how ssh is run.
    pub ssh: send::SshOptions,
    pub clock: Clock,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunReport {
    pub done: Vec<i64>,
    pub failed: Vec<i64>,
}

/// One transfer being sent by this daemon.
struct Running {
    task: JoinHandle<Result<send::Summary, SendError>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The budget now, and when the gate closes next (the start of the next `pause` slot).
fn budget_now<Tz: chrono::TimeZone>(
    timetable: &Timetable,
    over: Option<Budget>,
    now: &DateTime<Tz>,
) -> (Budget, Option<Duration>) {
    if let Some(b) = over {
        return (b, None);
    }
    let budget = timetable.budget_at(now);
    let mut closes_in = None;
    if budget != Budget::Paused {
        // Look ahead through the next few changes for a pause (a rate change is no pause).
        let mut t = now.clone();
        for _ in 0..8 {
            let Some(next) = timetable.next_change(&t) else {
                break;
            };
            if timetable.budget_at(&next) == Budget::Paused {
                closes_in = (next.clone() - now.clone()).to_std().ok();
                break;
            }
            t = next;
        }
    }
    (budget, closes_in)
}

/// Logs a transfer's events; retries folded by `outage` (one line per attempt was thousands a
/// night while a server was down).
fn log_event(id: i64, e: &Event, outage: &std::sync::Mutex<Outage>) {
    let now = std::time::Instant::now();
    let mut outage = outage.lock().expect("outage lock");
    match e {
        Event::Started {
            size,
            offset,
            upload_url,
            resumed,
        } => tracing::info!(id, size, offset, upload_url, resumed, "sending"),
        Event::Notice(text) => tracing::info!(id, "{text}"),
        Event::Progress {
            offset,
            size,
            rate_bps,
            ..
        } => {
            if let Some(r) = outage.recovered(now) {
                tracing::info!(id, attempts = r.attempts, lasted = ?r.lasted, "sending again");
            }
            tracing::debug!(id, offset, size, rate_bps, "confirmed")
        }
        Event::Retry {
            attempt,
            delay,
            error,
        } => {
            if let Some(r) = outage.retry(now, *attempt, *delay, error) {
                let failing_for = r.failing_for;
                tracing::warn!(id, attempt, ?delay, ?failing_for, "retrying: {error}");
            }
        }
        Event::Done(s) => tracing::info!(
            id,
            sha256 = s.sha256,
            bytes_sent = s.bytes_sent,
            resent_bytes = s.resent_bytes,
            published_as = s.published_as,
            "done"
        ),
    }
}

/// What a transfer is doing, as far as the database can tell: its stored state, corrected for
/// what the row cannot say itself. A row stays `running` when its process dies (kill -9, a
/// pipe's Ctrl-C) or while the run's gate holds it in a `pause` slot; `upload status` must not
/// show a rate for either (issue 10, item 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    Queued,
    Running,
    /// Held: `upload queue pause`, an interrupted `upload send`, or the run's budget is
    /// `pause` (timetable or `upload limit pause`).
    Paused,
    Done,
    Failed,
    /// Marked running, but the process sending it is gone; the next `upload run` (queued
    /// work) or a rerun of `upload send` continues it.
    Interrupted,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Queued => "queued",
            Activity::Running => "running",
            Activity::Paused => "paused",
            Activity::Done => "done",
            Activity::Failed => "failed",
            Activity::Interrupted => "interrupted",
        }
    }
}

/// `t`'s [`Activity`] while the run's budget is `budget`.
pub fn activity(t: &Transfer, budget: Budget) -> Activity {
    match t.state {
        TransferState::Queued => Activity::Queued,
        TransferState::Paused => Activity::Paused,
        TransferState::Done => Activity::Done,
        TransferState::Failed => Activity::Failed,
        TransferState::Running => match t.lock_owner.as_deref() {
            None => Activity::Interrupted,
            Some(owner) if store::owner_is_dead(owner) => Activity::Interrupted,
            // Only the run's transfers pass its gate.
            Some(_) if t.origin == Origin::Queue && budget == Budget::Paused => Activity::Paused,
            Some(_) => Activity::Running,
        },
    }
}

/// The run's budget at `now`: `upload limit`'s override, else the timetable's.
pub fn budget_in_force<Tz: chrono::TimeZone>(
    timetable: &Timetable,
    over: Option<Budget>,
    now: &DateTime<Tz>,
) -> Budget {
    budget_now(timetable, over, now).0
}

/// Whether the daemon may pick up this row: queued work (not an `upload send`'s), queued or
/// left running by a process that died.
fn runnable(t: &Transfer) -> bool {
    if t.origin != Origin::Queue {
        return false;
    }
    match t.state {
        TransferState::Queued => true,
        TransferState::Running => t.lock_owner.as_deref().is_none_or(store::owner_is_dead),
        _ => false,
    }
}

/// Runs the queue until it is empty (or forever with `daemon`), until `until`, or until
/// `shutdown` resolves; transfers still running then are put back in the queue.
pub async fn run(
    store: Store,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, QueueError> {
    let mut report = RunReport::default();
    let owner = store::lock_owner();
    let (gate_control, gate) = Gate::new();
    // The one limiter of this run: the budget below is set on it, each transfer's share drawn
    // from it.
    let uplink = Uplink::new(None);
    let mut running: HashMap<i64, Running> = HashMap::new();
    let mut busy_until: HashMap<i64, tokio::time::Instant> = HashMap::new();
    let mut last_budget: Option<Budget> = None;
    // Polite mode steers the same uplink's budget while a `polite` slot lasts.
    let mut steering: Option<polite::Steering> = None;
    let (polite_tx, polite_rx) = tokio::sync::watch::channel(None);
    // Outside a `polite` slot, one controller steers the polite transfers' part together.
    let mut group: Option<polite::Steering> = None;
    let (group_tx, group_rx) = tokio::sync::watch::channel(None);
    let mut learning = polite::Learning::default();
    let db = AsyncStore::new(store.clone());
    {
        db.set_setting(TIMETABLE, &opts.timetable.to_string())
            .await?;
        db.set_setting(RUN_OWNER, &owner).await?;
        // A run before this one may have left what its polite mode was doing.
        db.delete_setting(POLITE_STATE).await?;
        let over = db.get_setting(BUDGET_OVERRIDE).await?;
        if let Some(b) = over.and_then(|v| v.parse::<Budget>().ok()) {
            // Saved perhaps long ago: the timetable does not apply until `upload limit --clear`.
            tracing::warn!(
                budget = %b,
                timetable = %opts.timetable,
                "budget override from `upload limit` in force"
            );
        }
    }
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = opts.clock.now();
        let rows = db.list_transfers().await?;
        let over = db.get_setting(BUDGET_OVERRIDE).await?;
        let over = over.and_then(|v| v.parse::<Budget>().ok());
        let (budget, closes_in) = budget_now(&opts.timetable, over, &now);
        if last_budget != Some(budget) {
            tracing::info!(%budget, "uplink budget");
            last_budget = Some(budget);
        }
        // Before the gate opens, so a transfer let out of a pause sends at the new budget.
        match budget {
            Budget::Limited(r) => uplink.set_rate(Some(r)),
            Budget::Unlimited => uplink.set_rate(None),
            Budget::Polite if steering.is_none() => {
                let host = running_host(&rows, &running, |_| true);
                let params = polite::Params {
                    known_capacity: polite::known_capacity(&db, host).await,
                    ..polite::Params::default()
                };
                steering = Some(polite::steer(uplink.clone(), params, polite_tx.clone()));
            }
            Budget::Polite => {
                let steer = *polite_rx.borrow();
                if let Some(steer) = steer {
                    let state = PoliteState::of(&steer, chrono::Utc::now(), false);
                    let json = serde_json::to_string(&state).expect("plain data");
                    db.set_setting(POLITE_STATE, &json).await?;
                    if let Some(host) = running_host(&rows, &running, |_| true) {
                        learning.note(&db, &host, &steer).await?;
                    }
                }
            }
            // The gate holds every transfer; the rate waits for the next slot.
            Budget::Paused => {}
        }
        if budget != Budget::Polite && steering.take().is_some() {
            db.delete_setting(POLITE_STATE).await?;
        }
        let polite_work = rows
            .iter()
            .any(|t| t.polite && (running.contains_key(&t.id) || runnable(t)));
        let wanted = group_steering(budget, polite_work);
        if wanted != GroupSteering::Off {
            let max = match wanted {
                GroupSteering::Under(max) => max,
                _ => None,
            };
            match &group {
                Some(g) if wanted != GroupSteering::Keep => g.set_max(max),
                Some(_) => {}
                None => {
                    let host = running_host(&rows, &running, |t| t.polite);
                    let params = polite::Params {
                        max,
                        known_capacity: polite::known_capacity(&db, host).await,
                        ..polite::Params::default()
                    };
                    group = Some(polite::steer_group(
                        uplink.clone(),
                        params,
                        group_tx.clone(),
                    ));
                }
            }
            let steer = *group_rx.borrow();
            if let Some(steer) = steer {
                let state = PoliteState::of(&steer, chrono::Utc::now(), true);
                let json = serde_json::to_string(&state).expect("plain data");
                db.set_setting(POLITE_STATE, &json).await?;
                // Only when the polite transfers are all that runs is what they deliver the
                // link's rate; beside others it is what was left to them.
                let all_polite = rows
                    .iter()
                    .filter(|t| running.contains_key(&t.id))
                    .all(|t| t.polite);
                if all_polite && let Some(host) = running_host(&rows, &running, |_| true) {
                    learning.note(&db, &host, &steer).await?;
                }
            }
        } else if group.take().is_some() {
            group_tx.send_replace(None);
            if budget != Budget::Polite {
                db.delete_setting(POLITE_STATE).await?;
            }
        }
        gate_control.set(GateState {
            open: budget != Budget::Paused,
            closes_at: closes_in.map(|d| tokio::time::Instant::now() + d),
        });

        // Reap what finished.
        let finished: Vec<i64> = running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            let mut r = running.remove(&id).expect("listed above");
            match (&mut r.task).await {
                Ok(Ok(_)) => report.done.push(id),
                Ok(Err(SendError::Busy { owner })) => {
                    tracing::info!(id, "another process is sending it ({owner}); later");
                    busy_until.insert(id, tokio::time::Instant::now() + Duration::from_secs(30));
                }
                Ok(Err(e)) => {
                    tracing::error!(id, "failed: {e}");
                    report.failed.push(id);
                }
                Err(join) => tracing::error!(id, "transfer task ended: {join}"),
            }
        }

        // Follow the database: paused or removed transfers stop.
        let by_id: HashMap<i64, &Transfer> = rows.iter().map(|t| (t.id, t)).collect();
        let stopped: Vec<i64> = running
            .keys()
            .copied()
            .filter(|id| {
                by_id.get(id).is_none_or(|t| {
                    !matches!(t.state, TransferState::Running | TransferState::Queued)
                })
            })
            .collect();
        for id in stopped {
            tracing::info!(id, "stopped (paused or removed)");
            running.remove(&id);
            let _ = db.unlock(id, &owner).await;
        }

        let stopping = opts.until.is_some_and(|u| now >= u);
        if !stopping {
            let tnow = tokio::time::Instant::now();
            busy_until.retain(|_, until| *until > tnow);
            for t in rows.iter().filter(|t| runnable(t)) {
                if running.len() >= opts.jobs {
                    break;
                }
                if running.contains_key(&t.id) || busy_until.contains_key(&t.id) {
                    continue;
                }
                running.insert(t.id, start(&store, t, &opts, &uplink, gate.clone()));
            }
        }

        let queue_empty = running.is_empty() && !rows.iter().any(runnable);
        if stopping || (queue_empty && !opts.daemon) {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => {
                tracing::info!("stopping: transfers go back to the queue");
                break;
            }
        }
    }
    if steering.is_some() || group.is_some() {
        let _ = db.delete_setting(POLITE_STATE).await;
    }
    let _ = db.delete_setting_if(RUN_OWNER, &owner).await;
    // Put what still runs back in the queue; its progress is already in the database.
    for (id, r) in running.drain() {
        drop(r);
        if db
            .transfer(id)
            .await
            .is_ok_and(|t| t.state == TransferState::Running)
        {
            let _ = db.set_state(id, TransferState::Queued, None).await;
        }
        let _ = db.unlock(id, &owner).await;
    }
    Ok(report)
}

/// Starts sending one transfer in its own task, through its own share of the run's budget.
fn start(store: &Store, t: &Transfer, opts: &RunOptions, uplink: &Uplink, gate: Gate) -> Running {
    let host = url::Url::parse(&t.dest_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let cap = t
        .rate_limit_bps
        .and_then(|b| Rate::from_bits_per_second(b).ok());
    let throttle = if t.polite {
        uplink.grouped_share(weight(t.priority), cap)
    } else {
        uplink.share(weight(t.priority), cap)
    };
    let mut so = SendOptions::new(&t.source_path, &t.dest_url);
    so.name = Some(t.name.clone());
    // A given chunk stays; otherwise chunks follow the share the uplink allows.
    so.chunk = t.chunk_fixed.then_some(t.chunk_size);
    so.limit = cap;
    so.token = (opts.tokens)(&host);
    so.ca = opts.ca.clone();
    so.ssh = opts.ssh.clone();
    so.give_up_after = Some(opts.give_up_after);
    so.transfer_id = Some(t.id);
    so.gate = gate;
    let (s, id) = (store.clone(), t.id);
    tracing::info!(id, name = t.name, "starting");
    let task = tokio::spawn(async move {
        let outage = std::sync::Mutex::new(Outage::new());
        let events = move |e: Event| log_event(id, &e, &outage);
        // The daemon stops a transfer by dropping this task; it tidies up the row itself.
        send::send(s, so, throttle, &events, std::future::pending()).await
    });
    Running { task }
}

/// When each transfer should finish, playing the queue forward through the timetable.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outlook {
    pub id: i64,
    /// In queue order, after everything ahead of it; `None` when paused, done or failed.
    pub finish_at: Option<DateTime<FixedOffset>>,
    /// If it went first, alone.
    pub earliest_finish: Option<DateTime<FixedOffset>>,
    /// Its deadline is before `finish_at`.
    pub late: bool,
    /// How many separate sending stretches (nights) until it finishes.
    pub windows: Option<u32>,
}

/// Plays the active queue (queued and running, in queue order) forward from `now` through
/// `timetable`, `off` slots at `link` (a transfer's own limit below it slows its part). An
/// unmeasured link rate carries the wire overhead of estimate's model ([`LinkRate`]); limits
/// and budgets are payload rates, as the throttle counts them.
/// Transfers share the link in reality; in sequence the total is the same, and the order is
/// the queue's.
pub fn outlook<Tz: chrono::TimeZone>(
    transfers: &[Transfer],
    timetable: &Timetable,
    link: LinkRate,
    now: DateTime<Tz>,
) -> Vec<Outlook> {
    // The queue is played forward from where the one before left off, so the whole outlook
    // walks the timetable once (1000 queued transfers: one pass, not 1000 growing ones).
    let mut cursor = now.clone();
    let mut stretches: u32 = 0;
    let mut blocked = false;
    transfers
        .iter()
        .map(|t| {
            let active = matches!(t.state, TransferState::Queued | TransferState::Running);
            if !active {
                return Outlook {
                    id: t.id,
                    finish_at: None,
                    earliest_finish: None,
                    late: false,
                    windows: None,
                };
            }
            let left = t.bytes_to_send().saturating_sub(t.offset);
            let framing = crate::estimate::Framing::for_url(&t.dest_url);
            let link = link.payload_rate(left, t.chunk_size, framing);
            // A transfer's own limit slows only its own part.
            let own_link = match t
                .rate_limit_bps
                .and_then(|b| Rate::from_bits_per_second(b).ok())
            {
                Some(cap) if cap.bits_per_second() < link.bits_per_second() => cap,
                _ => link,
            };
            let alone = timetable.place(now.clone(), left, own_link).ok();
            let queued = if blocked {
                None
            } else {
                timetable.place(cursor.clone(), left, own_link).ok()
            };
            let (finish_at, windows) = match &queued {
                Some(q) => {
                    // Starting inside the stretch the previous one ended in is not a new one.
                    stretches += q.windows_used.saturating_sub(u32::from(stretches > 0));
                    cursor = q.finish_at.clone();
                    (Some(q.finish_at.fixed_offset()), Some(stretches.max(1)))
                }
                None => {
                    blocked = true;
                    (None, None)
                }
            };
            Outlook {
                id: t.id,
                late: match (t.deadline, finish_at) {
                    (Some(d), Some(f)) => f > d,
                    _ => false,
                },
                finish_at,
                earliest_finish: alone.map(|a| a.finish_at.fixed_offset()),
                windows,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polite_transfers_get_a_controller_of_their_own_outside_a_polite_slot() {
        use GroupSteering::*;
        let rate = Rate::from_bits_per_second(64_000.0).unwrap();
        assert_eq!(
            group_steering(Budget::Limited(rate), true),
            Under(Some(8000.0)),
            "kept under the budget"
        );
        assert_eq!(group_steering(Budget::Unlimited, true), Under(None));
        assert_eq!(group_steering(Budget::Paused, true), Keep);
        assert_eq!(
            group_steering(Budget::Polite, true),
            Off,
            "the slot's controller steers them all"
        );
        for b in [Budget::Limited(rate), Budget::Unlimited, Budget::Paused] {
            assert_eq!(group_steering(b, false), Off, "no polite work");
        }
    }

    #[test]
    fn weights_double_per_priority() {
        assert_eq!(weight(0), 1.0);
        assert_eq!(weight(2), 4.0);
        assert_eq!(weight(-1), 0.5);
    }

    fn queued(id: i64, size: u64) -> Transfer {
        let now = chrono::Utc::now();
        Transfer {
            id,
            name: format!("t{id}"),
            source_path: "/x".into(),
            size,
            mtime_ns: 0,
            sha256: None,
            prefix_sha256: None,
            dest_url: "http://h/files/".into(),
            upload_url: None,
            offset: 0,
            chunk_size: 1,
            chunk_fixed: true,
            state: TransferState::Queued,
            priority: 0,
            deadline: None,
            rate_limit_bps: None,
            bytes_sent: 0,
            resent_bytes: 0,
            attempts: 0,
            last_error: None,
            lock_owner: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            rate_bps: None,
            origin: Origin::Queue,
            base: Default::default(),
            delta_base: None,
            payload_size: None,
            polite: false,
        }
    }

    #[test]
    fn the_outlook_plays_the_queue_forward_through_the_nights() {
        // Nights only (23:00-07:00) at 128 kbit/s: 8 h carry 460.8 MB.
        let tt: Timetable = "07:00,pause 23:00,128kbit".parse().unwrap();
        let link = LinkRate {
            rate: Rate::from_bits_per_second(128_000.0).unwrap(),
            measured: true,
        };
        let now = DateTime::parse_from_rfc3339("2026-01-01T23:00:00+00:00").unwrap();
        let rows = vec![queued(1, 230_400_000), queued(2, 460_800_000)];
        let o = outlook(&rows, &tt, link, now);
        // The first takes half the first night; the second the rest of it and half the next.
        assert_eq!(o[0].finish_at, Some(now + TimeDelta::hours(4)));
        assert_eq!(o[0].windows, Some(1));
        assert_eq!(o[1].finish_at, Some(now + TimeDelta::hours(24 + 4)));
        assert_eq!(o[1].windows, Some(2));
        // Alone, the second would finish on the first night.
        assert_eq!(o[1].earliest_finish, Some(now + TimeDelta::hours(8)));
    }

    #[test]
    fn an_assumed_link_rate_carries_the_wire_overhead() {
        let tt = Timetable::constant(Budget::Unlimited);
        let now = DateTime::parse_from_rfc3339("2026-01-01T23:00:00+00:00").unwrap();
        let mut t = queued(1, 1_572_864);
        t.chunk_size = 327_680;
        let rate = Rate::from_bits_per_second(128_000.0).unwrap();
        let secs = |measured| {
            let o = outlook(&[t.clone()], &tt, LinkRate { rate, measured }, now);
            (o[0].finish_at.unwrap() - now).num_milliseconds() as f64 / 1000.0
        };
        // Measured goodput: the payload alone, 1.5 MiB at 16 000 B/s.
        assert!((secs(true) - 98.304).abs() < 0.01, "{}", secs(true));
        // Assumed: as estimate's wire model has it.
        let wire = crate::estimate::wire_bytes(1_572_864, 327_680, false);
        let want = wire.total as f64 * 8.0 / 128_000.0;
        assert!(
            (secs(false) - want).abs() < 0.01,
            "{} vs {want}",
            secs(false)
        );
    }

    #[test]
    fn a_dead_or_held_transfer_is_not_shown_running() {
        let mut t = queued(1, 10);
        t.state = TransferState::Running;
        let rate = Budget::Limited(Rate::from_bits_per_second(32_000.0).unwrap());
        assert_eq!(activity(&t, rate), Activity::Interrupted, "no owner");
        t.lock_owner = Some(store::lock_owner());
        assert_eq!(activity(&t, rate), Activity::Running);
        assert_eq!(activity(&t, Budget::Paused), Activity::Paused);
        t.lock_owner = Some(format!(
            "4000000000@{}",
            store::lock_owner().split_once('@').unwrap().1
        ));
        assert_eq!(activity(&t, rate), Activity::Interrupted, "dead owner");
        // An `upload send` is not held by the run's pause.
        t.lock_owner = Some(store::lock_owner());
        t.origin = Origin::Send;
        assert_eq!(activity(&t, Budget::Paused), Activity::Running);
    }

    #[test]
    fn a_sends_transfer_is_not_the_runs_work() {
        let mut t = queued(1, 10);
        assert!(runnable(&t));
        t.origin = Origin::Send;
        assert!(!runnable(&t));
        t.state = TransferState::Running;
        assert!(
            !runnable(&t),
            "a dead ad-hoc send is not taken over by the run"
        );
    }

    #[test]
    fn the_budget_looks_ahead_to_the_next_pause() {
        let tt: Timetable = "07:00,32kbit 23:00,pause".parse().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-01-01T22:59:00+00:00").unwrap();
        let (b, closes) = budget_now(&tt, None, &now);
        assert!(matches!(b, Budget::Limited(_)));
        assert_eq!(closes, Some(Duration::from_secs(60)));
        let (b, closes) = budget_now(&tt, Some(Budget::Unlimited), &now);
        assert_eq!((b, closes), (Budget::Unlimited, None));
    }
}
