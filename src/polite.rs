//! Polite mode: a throttle policy that uses the idle uplink and yields within seconds to any
//! other traffic on it, in the manner of LEDBAT (RFC 6817) and LEDBAT++: keep the queueing
//! delay our bytes add at the modem at or below a target, measured, never guessed.
//!
//! What it owns: the [`Controller`] (queueing delay in, rate out; a plain state machine on a
//! clock it is given, so the tests drive it over a simulated link), the delay signal taken from
//! the upload connections' `TCP_INFO` ([`Signal`]), and [`steer`], the task that feeds one to
//! the other and sets the result as the budget of an [`Uplink`]: the one limiter that `--limit`
//! and the timetable drive, under another policy. [`steer_group`] does the same for the cap of
//! the uplink's grouped shares: `upload queue add --polite` transfers inside a run, which
//! yield to everything else, the run's other transfers included, while those use the budget
//! as before.
//!
//! Why it is built this way:
//! - **The actuator is pacing.** At 128 kbit/s TCP's window is already at its floor, so only
//!   pacing can keep the modem's queue short; the connection's unsent queue is kept small
//!   (`TCP_NOTSENT_LOWAT`, see `client`) so the kernel hides none.
//! - **The signal is the connection's own round trip.** `tcpi_rtt` is smoothed (each ack moves
//!   it an eighth of the way), which at the floor rate (a few acks a second) would take
//!   ten seconds to show that a competitor's queue has drained. The kernel's smoothing is
//!   undone from the number of acks since the last reading (`tcpi_segs_in`): with one ack,
//!   the raw sample is `old + 8 (new - old)`. An ack that is overdue counts too: data sent
//!   longer ago than the round trip we believe and still unacknowledged means a queue, before
//!   any ack says so. The base (the round trip through an empty queue) is the minimum over ten
//!   minutes, kept per minute as LEDBAT does, together with the kernel's own `tcpi_min_rtt`.
//! - **Periodic slowdowns** (LEDBAT++): every [`SLOWDOWN_EVERY`] the rate drops to the floor for
//!   about a second, so our own standing queue drains and the base is measured through an
//!   empty queue; otherwise a transfer that starts behind another's queue (the latecomer)
//!   takes that queue for the base and never yields to it.
//! - **The rate is set from the link's rate, not integrated.** Once the bottleneck's rate is
//!   known, the rate is that rate moved by the queue's distance from the target ([`PULL`]:
//!   15 % more at an empty queue, 15 % less at twice the target), settling over [`SETTLE`].
//!   So a queue of about the target stands and the link never runs dry; the queue itself is
//!   the integrator. (Two integrating controllers measured on the lab's link, additive up and
//!   multiplicative down, swung between a quarter and all of the link every few seconds and
//!   used 74-86 % of it.) Before the rate is known it grows by e per second until the queue
//!   reaches half the target. Far above the target ([`PUSHED_ABOVE`]) the queue is someone
//!   else's: the rate falls in proportion to the excess, at most halving per reading, and a
//!   competitor filling a 2 s modem buffer has the link within about a second; when its queue
//!   drains the rate is back at the link's within the signal's lag.
//! - **Never stopped.** The rate never goes below a floor (1.5 % of the link's rate, at least
//!   256 B/s), so the transfer always advances and its acks keep the signal alive.
//! - **The link's rate is learned.** The delivered rate (bytes acknowledged per second over
//!   two seconds) can never exceed the bottleneck's, so its maximum is the capacity estimate;
//!   it decays slowly (half in ten minutes) so a slower link is learned too. It is what
//!   `upload estimate` can use as the link's rate: polite mode is the one policy that measures
//!   the bottleneck itself, not a limit of ours.

use crate::client::TcpStats;
use crate::store::{AsyncStore, LinkSample, StoreError};
use crate::throttle::Uplink;
use crate::units::Rate;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::sync::watch;

/// The queueing delay polite mode allows itself by default, beyond the serialisation of its
/// own packet (94 ms for 1500 bytes at 128 kbit/s, which other traffic also waits out when it
/// arrives mid-packet): LEDBAT++'s 60 ms. With 100 ms, other traffic's connect time on the
/// lab's 128 kbit/s link was 190 ms (median).
pub const TARGET: Duration = Duration::from_millis(60);
/// How often the rate is reconsidered.
pub const TICK: Duration = Duration::from_millis(100);
/// Before the link's rate is known: growth by e per second from the start rate.
const START_RAMP: f64 = 1.0;
/// Seconds over which a queue twice the target halves the rate.
const FALL: f64 = 0.5;
/// Above this multiple of the target (and two of our packets' serialisation beyond it) the
/// queue is pushed: fall fast.
const PUSHED_ABOVE: f64 = 2.0;
/// How far from the link's rate the queue's distance from the target moves the rate: at an
/// empty queue 15 % above it, at twice the target 15 % below (and the fall begins).
const PULL: f64 = 0.15;
/// Seconds over which the rate settles on what the queue asks for: a single noisy reading
/// moves it a third of the way.
const SETTLE: f64 = 0.3;
/// How often our own queue is drained to measure the base again.
pub const SLOWDOWN_EVERY: Duration = Duration::from_secs(30);
/// The first slowdown, once the start's ramp has met the link.
const FIRST_SLOWDOWN: Duration = Duration::from_secs(12);
/// The longest a slowdown holds the floor. It needs only as long as our own queue takes to
/// drain (twice the queue it starts from, with one of our packets on the wire) and two base
/// round trips: at 128 kbit/s about 0.35 s, where a fixed 0.8 s left the link idle 2.3 % of
/// the time.
const SLOWDOWN_FOR: Duration = Duration::from_millis(800);
/// Minutes of base-delay history.
const BASE_MINUTES: u64 = 10;
/// The floor: this share of the link's rate, and never less than [`FLOOR_MIN`] bytes/s. A
/// competitor should keep at least 90 % of the link: at 4 % (with our headers on small
/// pieces) a bulk upload got 83 % at 128 kbit/s.
const FLOOR_SHARE: f64 = 0.015;
const FLOOR_MIN: f64 = 256.0;
/// A full segment on the wire (payload, TCP/IP headers), for its serialisation time.
const SEGMENT_WIRE: f64 = 1500.0;
/// Where the rate starts when nothing is known of the link.
const START_RATE: f64 = 4096.0;
/// The window over which the delivered rate is measured.
const DELIVERY_WINDOW: Duration = Duration::from_secs(2);
/// Half-life of the capacity estimate.
const CAPACITY_HALF_LIFE: f64 = 600.0;
/// Beyond any uplink (10 Gbit/s): where nothing ever queues (loopback), or under a budget
/// below the link's rate, the start's ramp would otherwise grow the rate without end, to
/// infinity in twelve minutes, which no throttle can take.
const CEILING: f64 = 1.25e9;

/// What polite mode is told.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// The queueing delay to stay at or below.
    pub target: Duration,
    /// Never above this (a `--limit` beside `--polite`), bytes per second.
    pub max: Option<f64>,
    /// The link's rate from its history, bytes per second: a start that needs no ramp.
    pub known_capacity: Option<f64>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            target: TARGET,
            max: None,
            known_capacity: None,
        }
    }
}

/// One reading of the delay signal: a round trip through the modem's queue as it is now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The latest round trip (raw, not smoothed).
    pub rtt: Duration,
    /// The smallest round trip the connection has seen.
    pub min_rtt: Duration,
    /// Bytes acknowledged so far, over every connection (monotonic).
    pub delivered: u64,
}

/// What the controller decided, for the throttle and for the user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steer {
    /// Bytes per second.
    pub rate: f64,
    pub state: State,
    /// The queueing delay measured, over the base.
    pub queue_delay: Duration,
    pub base: Option<Duration>,
    /// The bottleneck's rate as measured, bytes per second.
    pub capacity: Option<f64>,
}

/// Where the controller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Finding the link's rate.
    Probing,
    /// Using the link; the queue is ours and short.
    Using,
    /// Other traffic is queued: held near the floor until it is gone.
    Yielding,
    /// Draining our own queue to measure the base again.
    Slowdown,
}

impl State {
    /// One word, for JSON and settings.
    pub fn word(self) -> &'static str {
        match self {
            State::Probing => "probing",
            State::Using => "using",
            State::Yielding => "yielding",
            State::Slowdown => "slowdown",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            State::Probing => "probing the link",
            State::Using => "using the idle link",
            State::Yielding => "yielding to other traffic",
            State::Slowdown => "measuring the base delay",
        }
    }
}

/// The minimum round trip per minute, for ten minutes.
#[derive(Debug, Default)]
struct BaseHistory {
    minutes: VecDeque<(u64, Duration)>,
}

impl BaseHistory {
    fn note(&mut self, now: Duration, rtt: Duration) {
        let minute = now.as_secs() / 60;
        match self.minutes.back_mut() {
            Some((m, min)) if *m == minute => *min = (*min).min(rtt),
            _ => self.minutes.push_back((minute, rtt)),
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| *m + BASE_MINUTES <= minute)
        {
            self.minutes.pop_front();
        }
    }

    fn base(&self) -> Option<Duration> {
        self.minutes.iter().map(|(_, d)| *d).min()
    }
}

/// Queueing delay in, rate out.
#[derive(Debug)]
pub struct Controller {
    params: Params,
    rate: f64,
    capacity: Option<f64>,
    base: BaseHistory,
    delivered: VecDeque<(Duration, u64)>,
    last: Option<Duration>,
    next_slowdown: Duration,
    /// A slowdown in progress: until when, and the rate to return to.
    slowdown: Option<(Duration, f64)>,
    state: State,
    queue_delay: Duration,
}

impl Controller {
    pub fn new(params: Params) -> Controller {
        let start = params.known_capacity.map_or(START_RATE, |c| c * 0.5);
        let mut c = Controller {
            params,
            rate: start,
            capacity: params.known_capacity,
            base: BaseHistory::default(),
            delivered: VecDeque::new(),
            last: None,
            next_slowdown: FIRST_SLOWDOWN,
            slowdown: None,
            state: State::Probing,
            queue_delay: Duration::ZERO,
        };
        c.rate = c.clamp(c.rate);
        c
    }

    /// The rate in force, bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// A new ceiling (bytes per second), the rate brought under it at once.
    pub fn set_max(&mut self, max: Option<f64>) {
        self.params.max = max;
        self.rate = self.clamp(self.rate);
    }

    fn floor(&self) -> f64 {
        let floor = self
            .capacity
            .map_or(FLOOR_MIN, |c| (c * FLOOR_SHARE).max(FLOOR_MIN));
        self.params.max.map_or(floor, |m| floor.min(m))
    }

    fn clamp(&self, rate: f64) -> f64 {
        let mut r = rate.max(self.floor());
        if let Some(c) = self.capacity {
            // Sending faster than the link only builds a queue (after a pause between chunks,
            // say); a quarter above lets the estimate grow when the link is faster than
            // believed. (Twice swung the rate between a fifth and twice the link.)
            r = r.min((c * 1.25).max(self.floor()));
        }
        if let Some(m) = self.params.max {
            r = r.min(m);
        }
        r.min(CEILING)
    }

    fn steer(&self) -> Steer {
        Steer {
            rate: self.rate,
            state: self.state,
            queue_delay: self.queue_delay,
            base: self.base.base(),
            capacity: self.capacity,
        }
    }

    /// Takes the reading at `now` (`None`: no connection is sending) and decides the rate.
    pub fn update(&mut self, now: Duration, sample: Option<Sample>) -> Steer {
        let dt = self
            .last
            .map_or(TICK, |l| now.saturating_sub(l))
            .min(Duration::from_secs(1))
            .as_secs_f64();
        self.last = Some(now);
        let Some(s) = sample else {
            return self.steer();
        };
        if let Some(c) = self.capacity.as_mut() {
            *c *= 0.5f64.powf(dt / CAPACITY_HALF_LIFE);
        }
        self.base.note(now, s.min_rtt.min(s.rtt));
        let base = self.base.base().unwrap_or(s.rtt);
        // A full segment's own serialisation at the bottleneck is in every data round trip but
        // not in the base (the smallest round trip is a small packet's): 94 ms at 128 kbit/s,
        // nearly the whole target. Without taking it off the link ran 84 % full. Only half of
        // it is taken off: other traffic's small packet, arriving while one of ours is on the
        // wire, waits out half of it on average, and that wait is what the target is for.
        // Taking off all of it read the queue 45-50 ms short of what other traffic met
        // (scripts/bench_polite_signal.py, 128 kbit/s), and their connect time was 138-141 ms;
        // with half, 86-95 ms, the share of the link alone the same (89.6-89.9 against
        // 89.9-90.1 %, scripts/bench_polite.py, interleaved runs).
        let own = self.capacity.map_or(Duration::ZERO, |c| {
            Duration::from_secs_f64((SEGMENT_WIRE / 2.0 / c).min(0.1))
        });
        self.queue_delay = s.rtt.saturating_sub(base + own);
        self.learn_capacity(now, s.delivered);

        if let Some((until, before)) = self.slowdown {
            if now < until {
                self.rate = self.floor();
                return self.steer();
            }
            self.slowdown = None;
            self.rate = self.clamp(before);
            self.next_slowdown = now + SLOWDOWN_EVERY;
        }

        let target = self.params.target.as_secs_f64();
        let qd = self.queue_delay.as_secs_f64();
        // Samples come a packet at a time: at 128 kbit/s each 1500-byte packet is 94 ms on
        // the wire, so a reading strays by a packet or two. Only a queue beyond that is pushed.
        let pushed = (target * PUSHED_ABOVE).max(target + 2.0 * own.as_secs_f64());
        match self.capacity {
            // Pushed far above the target: a queue that is not ours (or our overshoot).
            _ if qd > pushed => {
                let excess = qd / target - 1.0;
                self.rate -= self.rate * (excess * dt / FALL).min(0.5);
            }
            // The link's rate unknown: grow until the queue says we reached it.
            None if qd < target / 2.0 => self.rate += self.rate * dt / START_RAMP,
            None => {}
            // Known: send at the link's rate, more when the queue is short of the target and
            // less when it is over, so a queue of about the target stands (the link never
            // runs dry) and a competitor's queue moves us down. Set, not integrated: the
            // queue integrates already, and a controller that integrated too swung between a
            // quarter and all of the link every few seconds (86 % used).
            Some(c) => {
                let want = c * (1.0 + PULL * (1.0 - qd / target));
                self.rate += (want - self.rate) * (dt / SETTLE).min(1.0);
            }
        }
        self.rate = self.clamp(self.rate);

        let yielding = qd > target && self.capacity.is_some_and(|c| self.rate < c * 0.5);
        self.state = if yielding {
            State::Yielding
        } else if self.capacity.is_none() {
            State::Probing
        } else {
            State::Using
        };
        if now >= self.next_slowdown {
            if yielding {
                // At the floor already, behind a queue that is not ours: nothing to drain.
                self.next_slowdown = now + SLOWDOWN_EVERY;
            } else {
                let packet = self.capacity.map_or(Duration::ZERO, |c| {
                    Duration::from_secs_f64(SEGMENT_WIRE / c)
                });
                let hold = ((self.queue_delay + packet) * 2)
                    .min(SLOWDOWN_FOR)
                    .max(base * 2);
                self.slowdown = Some((now + hold, self.rate));
                self.rate = self.floor();
                self.state = State::Slowdown;
            }
        }
        self.steer()
    }

    fn learn_capacity(&mut self, now: Duration, delivered: u64) {
        if self.delivered.back().is_some_and(|(_, d)| delivered < *d) {
            self.delivered.clear();
        }
        self.delivered.push_back((now, delivered));
        while self
            .delivered
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > DELIVERY_WINDOW)
        {
            self.delivered.pop_front();
        }
        let Some(&(t0, d0)) = self.delivered.front() else {
            return;
        };
        let span = now.saturating_sub(t0).as_secs_f64();
        if span < DELIVERY_WINDOW.as_secs_f64() * 0.75 {
            return;
        }
        let rate = (delivered - d0) as f64 / span;
        // Only a rate the bottleneck was pressed at says what it can do; an idle stretch
        // (between chunks, while yielding) says nothing.
        let pressed = self.queue_delay >= self.params.target / 2;
        if rate > 0.0 && (pressed || self.capacity.is_some_and(|c| rate > c)) {
            self.capacity = Some(self.capacity.map_or(rate, |c| c.max(rate)));
        }
    }
}

/// Turns `TCP_INFO` readings of each connection into raw round trips: the kernel's smoothing
/// undone from the number of acks since the last reading, an overdue ack counted as a delay.
#[derive(Debug, Default)]
pub struct Signal {
    last: BTreeMap<u64, TcpStats>,
    raw: BTreeMap<u64, Duration>,
    /// Bytes acknowledged on connections that have gone.
    gone: u64,
}

impl Signal {
    /// One reading of every live connection, by a key that stays the same for a connection.
    pub fn read(&mut self, stats: &[(u64, TcpStats)]) -> Option<Sample> {
        let mut live = BTreeMap::new();
        let mut worst: Option<(Duration, Duration)> = None;
        for (key, now) in stats {
            let raw = match self.last.get(key) {
                Some(old) if old.bytes_acked <= now.bytes_acked => {
                    let acks = now.segs_in.saturating_sub(old.segs_in);
                    let prev = self.raw.get(key).copied().unwrap_or(now.srtt);
                    let mut raw = if acks == 0 || now.srtt == old.srtt {
                        prev
                    } else {
                        unsmooth(old.srtt, now.srtt, acks)
                    };
                    if now.unacked > 0 {
                        raw = raw.max(now.since_sent);
                    }
                    raw
                }
                _ => now.srtt,
            };
            self.raw.insert(*key, raw);
            live.insert(*key, *now);
            let qd = raw.saturating_sub(now.min_rtt);
            if worst.is_none_or(|(w, _)| qd > w.saturating_sub(now.min_rtt)) {
                worst = Some((raw, now.min_rtt));
            }
        }
        for (key, old) in &self.last {
            if !live.contains_key(key) {
                self.gone += old.bytes_acked;
                self.raw.remove(key);
            }
        }
        self.last = live;
        let delivered = self.gone + self.last.values().map(|s| s.bytes_acked).sum::<u64>();
        worst.map(|(rtt, min_rtt)| Sample {
            rtt,
            min_rtt,
            delivered,
        })
    }
}

/// The raw round trip that moved the kernel's smoothed one from `old` to `new` over `acks`
/// samples (each `srtt += (sample - srtt) / 8`), taking them as equal.
fn unsmooth(old: Duration, new: Duration, acks: u64) -> Duration {
    let kept = 0.875f64.powi(acks.min(16) as i32);
    let raw = old.as_secs_f64() + (new.as_secs_f64() - old.as_secs_f64()) / (1.0 - kept);
    Duration::from_secs_f64(raw.max(0.0))
}

/// What polite mode steers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Steered {
    /// The uplink's whole budget: `upload send --polite`, a `polite` slot of `upload run`.
    Budget,
    /// The cap of the uplink's grouped shares: `upload run`'s polite transfers among others
    /// ([`Uplink::grouped_share`]).
    Group,
}

/// Steers `uplink`'s budget for as long as the returned handle lives: reads the connections
/// sending under it every [`TICK`], and sets the controller's rate; `report` receives each
/// decision (for the progress line and `upload status`).
pub fn steer(uplink: Uplink, params: Params, report: watch::Sender<Option<Steer>>) -> Steering {
    steer_as(Steered::Budget, uplink, params, report)
}

/// Steers the cap of `uplink`'s grouped shares together (`upload queue add --polite`
/// transfers inside `upload run`), as [`steer`] does the budget: only the group's own
/// connections are read, so the run's other transfers are other traffic to it, and the cap is
/// lifted when the handle goes.
pub fn steer_group(
    uplink: Uplink,
    params: Params,
    report: watch::Sender<Option<Steer>>,
) -> Steering {
    steer_as(Steered::Group, uplink, params, report)
}

fn steer_as(
    steered: Steered,
    uplink: Uplink,
    params: Params,
    report: watch::Sender<Option<Steer>>,
) -> Steering {
    let set = move |uplink: &Uplink, rate: f64| {
        let rate = Rate::from_bytes_per_second(rate).ok();
        match steered {
            Steered::Budget => uplink.set_rate(rate),
            Steered::Group => uplink.set_group_rate(rate),
        }
    };
    let mut controller = Controller::new(params);
    // At once, so no byte goes out before the controller has a say.
    set(&uplink, controller.rate());
    let (max, mut max_rx) = watch::channel(params.max);
    let task = {
        let uplink = uplink.clone();
        tokio::spawn(async move {
            let mut signal = Signal::default();
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if max_rx.has_changed().unwrap_or(false) {
                    controller.set_max(*max_rx.borrow_and_update());
                }
                let stats = match steered {
                    Steered::Budget => uplink.link_stats(),
                    Steered::Group => uplink.group_link_stats(),
                };
                let sample = signal.read(&stats);
                let steer = controller.update(start.elapsed(), sample);
                // Every decision with the raw signal behind it, for the lab's comparison of
                // delay signals (scripts/bench_polite_signal.py): RUST_LOG=upload::polite=trace.
                if let Some(s) = sample {
                    tracing::trace!(
                        rtt_ms = s.rtt.as_secs_f64() * 1e3,
                        min_rtt_ms = s.min_rtt.as_secs_f64() * 1e3,
                        queue_delay_ms = steer.queue_delay.as_secs_f64() * 1e3,
                        base_ms = steer.base.map(|b| b.as_secs_f64() * 1e3),
                        rate_bps = steer.rate * 8.0,
                        state = steer.state.word(),
                        "polite tick"
                    );
                }
                set(&uplink, steer.rate);
                report.send_replace(Some(steer));
            }
        })
    };
    Steering {
        task,
        max,
        lift: (steered == Steered::Group).then_some(uplink),
    }
}

/// How often the learned capacity goes into the link history.
const LEARN_EVERY: Duration = Duration::from_secs(60);

/// Capacity learning: every [`LEARN_EVERY`] while polite mode steers, the bottleneck's rate it
/// measured goes into the link history as an unthrottled sample (what the link can do, which
/// `upload estimate` uses), while the transfers' own samples stay marked as throttled (what we
/// let them do).
#[derive(Debug, Default)]
pub struct Learning {
    last: Option<tokio::time::Instant>,
}

impl Learning {
    /// Records `steer`'s capacity for `host` if it is time and there is one.
    pub async fn note(
        &mut self,
        db: &AsyncStore,
        host: &str,
        steer: &Steer,
    ) -> Result<(), StoreError> {
        let now = tokio::time::Instant::now();
        let Some(capacity) = steer.capacity else {
            return Ok(());
        };
        let last = *self.last.get_or_insert(now);
        if now.duration_since(last) < LEARN_EVERY {
            return Ok(());
        }
        self.last = Some(now);
        let seconds = LEARN_EVERY.as_secs_f64();
        db.add_link_sample(LinkSample {
            host: host.to_string(),
            at: chrono::Utc::now(),
            bytes: (capacity * seconds) as u64,
            seconds,
            limit_bps: None,
        })
        .await
    }
}

/// The link's rate from its history (bytes per second): where polite mode starts without a
/// ramp. The newest unthrottled samples of `host`, their median.
pub async fn known_capacity(db: &AsyncStore, host: Option<String>) -> Option<f64> {
    let samples = db.recent_unthrottled_link_samples(host, 5).await.ok()?;
    let mut rates: Vec<f64> = samples
        .iter()
        .filter(|s| s.seconds > 0.0)
        .map(|s| s.bytes as f64 / s.seconds)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied()
}

/// A running [`steer`] or [`steer_group`] task; dropping it stops the steering (the budget
/// stays where it was; a group's cap is lifted, its shares ordinary ones again).
pub struct Steering {
    task: tokio::task::JoinHandle<()>,
    max: watch::Sender<Option<f64>>,
    lift: Option<Uplink>,
}

impl Steering {
    /// A new ceiling (bytes per second; `None`: none), e.g. when `upload run`'s budget changes
    /// under its polite transfers: the controller keeps what it has learned.
    pub fn set_max(&self, max: Option<f64>) {
        self.max.send_if_modified(|m| {
            let changed = *m != max;
            *m = max;
            changed
        });
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(uplink) = &self.lift {
            uplink.set_group_rate(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bottleneck with a drop-tail FIFO queue on a virtual clock: our paced flow, and a
    /// competitor that keeps the queue full while it runs (a bulk TCP upload does, with a
    /// buffer this size). Acks come back per piece of ours drained; the kernel-like smoothed
    /// round trip moves an eighth per ack, and the controller reads it through [`Signal`].
    struct Link {
        capacity: f64,
        buffer: f64,
        propagation: Duration,
        /// Bytes queued: ours, in pieces as sent (time sent, size), and the competitor's.
        ours: VecDeque<f64>,
        theirs: f64,
        ours_queued: f64,
        srtt: Duration,
        min_rtt: Duration,
        segs_in: u64,
        acked: u64,
        pending_ack: f64,
        /// Bytes delivered, ours and theirs, for the figures.
        ours_delivered: f64,
        theirs_delivered: f64,
        last_sent: Duration,
    }

    const DT: Duration = Duration::from_millis(5);

    impl Link {
        fn new(bits_per_second: f64, buffer: Duration) -> Link {
            let capacity = bits_per_second / 8.0;
            Link {
                capacity,
                buffer: capacity * buffer.as_secs_f64(),
                propagation: Duration::from_millis(20),
                ours: VecDeque::new(),
                theirs: 0.0,
                ours_queued: 0.0,
                srtt: Duration::from_millis(20),
                // The smallest round trip is a small packet's (the request's headers, sent
                // into the empty queue at the start), with little serialisation in it.
                min_rtt: Duration::from_millis(20) + Duration::from_secs_f64(300.0 / capacity),
                segs_in: 0,
                acked: 0,
                pending_ack: 0.0,
                ours_delivered: 0.0,
                theirs_delivered: 0.0,
                last_sent: Duration::ZERO,
            }
        }

        fn queued(&self) -> f64 {
            self.ours_queued + self.theirs
        }

        fn delay(&self) -> Duration {
            self.propagation + Duration::from_secs_f64(self.queued().max(0.0) / self.capacity)
        }

        /// One step: our `rate` offered, the competitor's if `competing`, the queue drained.
        fn step(&mut self, now: Duration, rate: f64, competing: bool) {
            let dt = DT.as_secs_f64();
            let ours_in = (rate * dt).min((self.buffer - self.queued()).max(0.0));
            if ours_in > 0.0 {
                self.last_sent = now;
                self.ours.push_back(ours_in);
                self.ours_queued += ours_in;
            }
            if competing {
                self.theirs = (self.buffer - self.ours_queued).max(self.theirs);
            }
            // FIFO, approximated as proportional: the queue drains in the mix it holds.
            let drain = (self.capacity * dt).min(self.queued());
            if drain > 0.0 {
                let ours_part = drain * self.ours_queued / self.queued();
                self.theirs = (self.theirs - (drain - ours_part)).max(0.0);
                self.theirs_delivered += drain - ours_part;
                self.ours_delivered += ours_part;
                let mut left = ours_part;
                while left > 0.0 {
                    let Some(front) = self.ours.front_mut() else {
                        break;
                    };
                    let take = front.min(left);
                    *front -= take;
                    left -= take;
                    self.ours_queued -= take;
                    self.pending_ack += take;
                    if *front <= 1e-9 {
                        self.ours.pop_front();
                    }
                }
            }
            // An ack per segment of ours delivered, carrying the delay it met; segments are the
            // throttle's pieces (50 ms of data, at least 256 B), up to one MSS.
            let segment = (rate * 0.05).clamp(256.0, 1448.0);
            while self.pending_ack >= segment {
                self.pending_ack -= segment;
                self.acked += segment as u64;
                self.segs_in += 1;
                // The segment's own serialisation is in its round trip, as on a real link.
                let sample =
                    self.delay() + Duration::from_secs_f64((segment + 52.0) / self.capacity);
                self.min_rtt = self.min_rtt.min(sample);
                self.srtt = self.srtt.mul_f64(0.875) + sample.mul_f64(0.125);
            }
        }

        fn stats(&self, now: Duration) -> TcpStats {
            TcpStats {
                srtt: self.srtt,
                min_rtt: self.min_rtt,
                bytes_acked: self.acked,
                segs_in: self.segs_in,
                unacked: u32::from(self.ours_queued > 0.0),
                since_sent: now.saturating_sub(self.last_sent),
            }
        }
    }

    /// Runs our polite flow over `link` for `secs`, the competitor on during `competing`;
    /// returns per-second (ours, theirs) delivered bytes and the mean queueing delay per second.
    fn run(
        link: &mut Link,
        secs: u64,
        competing: std::ops::Range<u64>,
    ) -> (Vec<(f64, f64)>, Vec<Duration>) {
        let mut controller = Controller::new(Params::default());
        let mut signal = Signal::default();
        let mut per_second = Vec::new();
        let mut delays = Vec::new();
        let mut now = Duration::ZERO;
        let mut next_tick = Duration::ZERO;
        for second in 0..secs {
            let (o0, t0) = (link.ours_delivered, link.theirs_delivered);
            let mut delay_sum = Duration::ZERO;
            let steps = (1.0 / DT.as_secs_f64()) as u32;
            for _ in 0..steps {
                if now >= next_tick {
                    let sample = signal.read(&[(1, link.stats(now))]);
                    controller.update(now, sample);
                    next_tick += TICK;
                }
                link.step(now, controller.rate(), competing.contains(&second));
                delay_sum += link.delay() - link.propagation;
                now += DT;
            }
            per_second.push((link.ours_delivered - o0, link.theirs_delivered - t0));
            if std::env::var_os("POLITE_TRACE").is_some() {
                let st = controller.steer();
                eprintln!(
                    "{second:4} ours {:8.0} theirs {:8.0} rate {:8.0} qd {:?} base {:?} cap {:?} {:?} srtt {:?}",
                    per_second.last().unwrap().0,
                    per_second.last().unwrap().1,
                    st.rate,
                    st.queue_delay,
                    st.base,
                    st.capacity.map(|c| c as u64),
                    st.state,
                    link.srtt
                );
            }
            delays.push(delay_sum / steps);
        }
        (per_second, delays)
    }

    fn share(v: &[(f64, f64)], range: std::ops::Range<usize>, capacity: f64) -> (f64, f64) {
        let n = range.len() as f64;
        let (o, t) = v[range]
            .iter()
            .fold((0.0, 0.0), |(a, b), (o, t)| (a + o, b + t));
        (o / n / capacity, t / n / capacity)
    }

    /// Alone, then a bulk upload from 60 s to 90 s, then alone again: the three
    /// figures at 128 kbit/s, 1 Mbit/s and 10 Mbit/s with a 2 s modem buffer.
    #[test]
    fn uses_the_idle_link_and_yields_to_a_competitor_at_three_rates() {
        for bits in [128e3, 1e6, 10e6] {
            let mut link = Link::new(bits, Duration::from_secs(2));
            let capacity = link.capacity;
            let (secs, delays) = run(&mut link, 110, 60..90);
            let (alone, _) = share(&secs, 20..60, capacity);
            assert!(alone >= 0.90, "{bits} bit/s: alone {alone:.3} of the link");
            let mut sorted: Vec<_> = delays[20..60].to_vec();
            sorted.sort();
            let median = sorted[sorted.len() / 2];
            assert!(
                median <= Duration::from_millis(150),
                "{bits} bit/s: median queueing delay alone {median:?}"
            );
            let (_, theirs) = share(&secs, 70..90, capacity);
            assert!(
                theirs >= 0.90,
                "{bits} bit/s: the competitor got {theirs:.3} from 10 s after its start"
            );
            // The competitor's queue drains for up to 2 s; 5 s after it stops we are back.
            let (back, _) = share(&secs, 95..96, capacity);
            assert!(
                back >= 0.70,
                "{bits} bit/s: {back:.3} of the link 5 s after the competitor stopped"
            );
            assert!(secs.iter().all(|(o, _)| *o > 0.0), "{bits}: stalled");
        }
    }

    /// A flow that starts behind another's standing queue must not take that queue for the
    /// base (the latecomer problem: it would then push the first flow to its floor and keep a
    /// queue of its own). The periodic slowdowns let it see the empty queue: its base is the
    /// true one, neither flow is starved, and together they keep the queue near the target.
    /// (Two of our transfers never meet like this: under `upload run` one controller steers
    /// them all; this is another machine's polite upload on the same line.)
    /// A slowdown holds the floor only as long as our own queue takes to drain (a few tenths
    /// of a second at 128 kbit/s: the queue it starts from and a packet on the wire, twice),
    /// not a fixed 0.8 s that left the link idle most of it; and slowdowns keep coming.
    #[test]
    fn a_slowdown_lasts_as_long_as_our_queue_takes_to_drain() {
        let mut link = Link::new(128_000.0, Duration::from_secs(2));
        let mut controller = Controller::new(Params::default());
        let mut signal = Signal::default();
        let (mut now, mut next_tick) = (Duration::ZERO, Duration::ZERO);
        let (mut episodes, mut began) = (Vec::new(), None);
        while now < Duration::from_secs(130) {
            if now >= next_tick {
                let sample = signal.read(&[(1, link.stats(now))]);
                let slowing = controller.update(now, sample).state == State::Slowdown;
                match (slowing, began) {
                    (true, None) => began = Some(now),
                    (false, Some(at)) => {
                        episodes.push(now - at);
                        began = None;
                    }
                    _ => {}
                }
                next_tick += TICK;
            }
            link.step(now, controller.rate(), false);
            now += DT;
        }
        assert!(episodes.len() >= 3, "{episodes:?}");
        assert!(
            episodes.iter().all(|e| *e <= Duration::from_millis(500)),
            "{episodes:?}"
        );
    }

    #[test]
    fn a_latecomer_learns_the_true_base_and_neither_starves() {
        let mut link = Link::new(1e6, Duration::from_secs(2));
        let mut first = Controller::new(Params::default());
        let mut late = Controller::new(Params::default());
        let (mut s1, mut s2) = (Signal::default(), Signal::default());
        let start_late = Duration::from_secs(40);
        let mut now = Duration::ZERO;
        let mut next_tick = Duration::ZERO;
        // The latecomer's bytes wait in the same queue as the competitor's ("theirs"), with
        // acks and a smoothed round trip of their own.
        let (mut late_acked, mut late_segs, mut late_pending) = (0u64, 0u64, 0.0);
        let mut late_srtt = link.propagation;
        let mut late_min = Duration::from_secs(10);
        let (mut first_at_start, mut theirs_at_start) = (0.0, 0.0);
        let mut delay_sum = Duration::ZERO;
        let mut steps = 0u32;
        while now < Duration::from_secs(240) {
            let late_on = now >= start_late;
            if now == start_late {
                (first_at_start, theirs_at_start) = (link.ours_delivered, link.theirs_delivered);
            }
            if now >= next_tick {
                first.update(now, s1.read(&[(1, link.stats(now))]));
                if late_on {
                    let st = TcpStats {
                        srtt: late_srtt,
                        min_rtt: late_min,
                        bytes_acked: late_acked,
                        segs_in: late_segs,
                        unacked: 0,
                        since_sent: Duration::ZERO,
                    };
                    late.update(now - start_late, s2.read(&[(2, st)]));
                }
                next_tick += TICK;
            }
            let before = link.theirs_delivered;
            link.step(now, first.rate(), false);
            if late_on {
                // Drop-tail: what does not fit waits in the sender, as TCP's window would.
                let add =
                    (late.rate() * DT.as_secs_f64()).min((link.buffer - link.queued()).max(0.0));
                link.theirs += add;
                late_pending += link.theirs_delivered - before;
                let segment = (late.rate() * 0.05).clamp(256.0, 1448.0);
                while late_pending >= segment {
                    late_pending -= segment;
                    late_acked += segment as u64;
                    late_segs += 1;
                    let d = link.delay();
                    late_min = late_min.min(d);
                    late_srtt = late_srtt.mul_f64(0.875) + d.mul_f64(0.125);
                }
                delay_sum += link.delay() - link.propagation;
                steps += 1;
            }
            now += DT;
        }
        let base = late.steer().base.expect("a base");
        assert!(
            base <= link.propagation + Duration::from_millis(60),
            "the latecomer took {base:?} for the base (true {:?})",
            link.propagation
        );
        let shared = (now - start_late).as_secs_f64() * link.capacity;
        let first_share = (link.ours_delivered - first_at_start) / shared;
        let late_share = (link.theirs_delivered - theirs_at_start) / shared;
        assert!(
            first_share > 0.2 && late_share > 0.05,
            "first {first_share:.3}, latecomer {late_share:.3} of the link"
        );
        assert!(
            first_share + late_share > 0.9,
            "{first_share} + {late_share}"
        );
        let mean = delay_sum / steps;
        assert!(mean <= TARGET * 2, "mean queueing delay {mean:?}");
    }

    /// Capacity learning: a minute after polite mode starts steering, what it measured of the
    /// bottleneck is in the link history as an unthrottled sample (what `estimate` reads as the
    /// link's rate), and `known_capacity` gives it back as where the next start begins.
    #[tokio::test(start_paused = true)]
    async fn the_measured_capacity_goes_into_the_link_history_every_minute() {
        let db = AsyncStore::new(crate::store::Store::open_in_memory().unwrap());
        let steer = Steer {
            rate: 15_000.0,
            state: State::Using,
            queue_delay: Duration::from_millis(60),
            base: Some(Duration::from_millis(20)),
            capacity: Some(16_000.0),
        };
        let mut learning = Learning::default();
        learning
            .note(&db, "files.example.org", &steer)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        learning
            .note(&db, "files.example.org", &steer)
            .await
            .unwrap();
        assert_eq!(
            known_capacity(&db, None).await,
            None,
            "nothing before a minute"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        learning
            .note(&db, "files.example.org", &steer)
            .await
            .unwrap();
        let samples = db
            .recent_unthrottled_link_samples(Some("files.example.org".into()), 5)
            .await
            .unwrap();
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert_eq!(samples[0].limit_bps, None);
        let known = known_capacity(&db, Some("files.example.org".into())).await;
        assert!((known.unwrap() - 16_000.0).abs() < 1.0, "{known:?}");
        // Without a capacity measured there is nothing to learn.
        tokio::time::advance(Duration::from_secs(61)).await;
        let unknown = Steer {
            capacity: None,
            ..steer
        };
        learning
            .note(&db, "files.example.org", &unknown)
            .await
            .unwrap();
        let samples = db.recent_unthrottled_link_samples(None, 5).await.unwrap();
        assert_eq!(samples.len(), 1);
    }

    #[test]
    fn the_smoothing_is_undone_from_the_ack_count() {
        let old = Duration::from_millis(2000);
        // One ack of a 100 ms sample moves srtt to 2000 - 1900/8.
        let new = Duration::from_secs_f64(2.0 - 1.9 / 8.0);
        let raw = unsmooth(old, new, 1);
        assert!((raw.as_secs_f64() - 0.1).abs() < 1e-6, "{raw:?}");
        let two = Duration::from_secs_f64(0.1 + 1.9 * 0.875 * 0.875);
        assert!((unsmooth(old, two, 2).as_secs_f64() - 0.1).abs() < 1e-6);
    }

    #[test]
    fn an_overdue_ack_counts_as_delay_and_the_floor_holds() {
        let mut signal = Signal::default();
        let stats = |srtt_ms, since_ms, segs| TcpStats {
            srtt: Duration::from_millis(srtt_ms),
            min_rtt: Duration::from_millis(50),
            bytes_acked: 1000,
            segs_in: segs,
            unacked: 1,
            since_sent: Duration::from_millis(since_ms),
        };
        signal.read(&[(1, stats(60, 10, 5))]);
        let s = signal.read(&[(1, stats(60, 1500, 5))]).unwrap();
        assert_eq!(s.rtt, Duration::from_millis(1500));
        let mut c = Controller::new(Params::default());
        for i in 0..100 {
            c.update(
                TICK * i,
                Some(Sample {
                    rtt: Duration::from_secs(2),
                    min_rtt: Duration::from_millis(50),
                    delivered: 0,
                }),
            );
        }
        assert_eq!(c.rate(), FLOOR_MIN);
    }

    /// `steer_group` caps the grouped shares from the start, before any byte, leaves the other
    /// shares the rest of the budget, and lifts the cap when it goes.
    #[tokio::test(start_paused = true)]
    async fn group_steering_caps_only_the_group_and_lifts_the_cap_when_dropped() {
        let uplink = Uplink::new(Rate::from_bytes_per_second(100_000.0).ok());
        let polite = uplink.grouped_share(1.0, None);
        let other = uplink.share(1.0, None);
        let (tx, _rx) = watch::channel(None);
        let steering = steer_group(uplink.clone(), Params::default(), tx);
        let rate = |t: &crate::throttle::Throttle| t.rate().unwrap().bytes_per_second();
        assert_eq!(rate(&polite), START_RATE);
        // Both asking: the other has what the group does not take.
        let (p, o) = (polite.clone(), other.clone());
        let asking = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::join!(p.acquire(p.piece()), o.acquire(o.piece()));
            }
        });
        asking.await.unwrap();
        assert!(rate(&polite) < 10_000.0, "{}", rate(&polite));
        assert!((rate(&polite) + rate(&other) - 100_000.0).abs() < 1.0);
        drop(steering);
        assert_eq!(rate(&polite), 50_000.0, "an ordinary share again");
    }

    /// On a link where nothing queues the start's ramp meets no queue: the rate stays finite
    /// (an infinite one is no rate at all to the throttle), and a new ceiling takes at once.
    #[test]
    fn a_ramp_without_a_queue_stays_finite_and_a_new_max_takes_at_once() {
        let mut c = Controller::new(Params::default());
        let quiet = |i: u32| Sample {
            rtt: Duration::from_micros(50),
            min_rtt: Duration::from_micros(50),
            delivered: u64::from(i) * 1000,
        };
        for i in 0..20_000 {
            c.update(TICK * i, Some(quiet(i)));
        }
        assert!(c.rate().is_finite() && c.rate() <= CEILING, "{}", c.rate());
        c.set_max(Some(8000.0));
        assert_eq!(c.rate(), 8000.0);
        c.update(TICK * 20_000, Some(quiet(20_000)));
        assert!(c.rate() <= 8000.0);
    }

    #[test]
    fn a_limit_caps_polite_mode() {
        let mut c = Controller::new(Params {
            max: Some(2000.0),
            ..Params::default()
        });
        for i in 0..100 {
            c.update(
                TICK * i,
                Some(Sample {
                    rtt: Duration::from_millis(50),
                    min_rtt: Duration::from_millis(50),
                    delivered: i as u64 * 100,
                }),
            );
        }
        assert!(c.rate() <= 2000.0);
    }
}
