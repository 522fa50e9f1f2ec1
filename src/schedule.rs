//! Wall-clock time for transfers: upload windows (`23:00-07:00`), the local times people type
//! (`--start "2026-01-01 23:00"`), the bandwidth timetable, and placing bytes into it.
//!
//! The bandwidth timetable (`--timetable "07:00,32kbit 23:00,off"`, as in rclone's `--bwlimit`
//! timetable) is the uplink [`Budget`] from each wall-clock time (daily, or on one weekday) until
//! the next entry's. Its boundaries are resolved in the caller's time zone day by day, so a night
//! that crosses a daylight-saving change is as long as the clock on the wall says, not 8 h of
//! arithmetic.
//!
//! Windows are wall-clock ranges that repeat every day; a range whose end is not after its start
//! runs past midnight. They are one kind of timetable ([`Timetable::from_windows`]: `off` inside,
//! `pause` outside), so there is one placement, [`Timetable::place`], with one horizon and one
//! error type: `upload estimate`'s windows and the scheduler's finish outlook (`status`,
//! `queue add`) place bytes the same way.

use crate::units::{Rate, UnitError, parse_rate};
use chrono::{
    DateTime, Datelike, Days, Duration as ChronoDuration, NaiveDate, NaiveDateTime, NaiveTime,
    TimeZone, Timelike, Weekday,
};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A bad window or time, with what was expected and an example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "invalid window \"{0}\": expected START-END in 24-hour local time, e.g. 23:00-07:00 (a window may run past midnight)"
    )]
    Window(String),
    #[error("invalid window \"{0}\": start and end are the same; for all day write 00:00-24:00")]
    EmptyWindow(String),
    #[error(
        "invalid time \"{0}\": expected a local date and time, e.g. \"2026-01-01 23:00\", 23:00 (today), \"Fri 07:00\" (the next Friday) or 2026-01-01T23:00:00+01:00"
    )]
    Time(String),
    #[error("the time \"{0}\" does not exist in the local time zone (a daylight-saving gap)")]
    NonexistentTime(String),
}

/// Why bytes cannot be placed: the one error of [`Timetable::place`], for windows and
/// timetables alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// Every slot is `pause`; windows always open, so only a timetable can say this.
    #[error("the timetable pauses uploading all the time: nothing can be sent")]
    AlwaysPaused,
    /// The bytes would still be moving at [`PLACEMENT_HORIZON_YEARS`].
    #[error("the upload would not finish within {0} years, the furthest a plan looks ahead")]
    TooLong(u32),
}

/// A daily wall-clock range during which uploads may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Opens at this wall-clock time.
    pub start: NaiveTime,
    /// Closes at this wall-clock time (on the next day when not after `start`); `None` is 24:00.
    pub end: Option<NaiveTime>,
}

impl Window {
    /// The window's length in seconds of wall-clock time.
    pub fn seconds(&self) -> i64 {
        let end = self.end.map_or(86_400, seconds_of_day);
        let start = seconds_of_day(self.start);
        if end > start {
            end - start
        } else {
            end + 86_400 - start
        }
    }
}

fn seconds_of_day(t: NaiveTime) -> i64 {
    i64::from(t.num_seconds_from_midnight())
}

impl FromStr for Window {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ScheduleError::Window(s.to_string());
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let start = parse_clock(a).ok_or_else(bad)?;
        let end = match b.trim() {
            "24:00" => None,
            other => Some(parse_clock(other).ok_or_else(bad)?),
        };
        if end == Some(start) {
            return Err(ScheduleError::EmptyWindow(s.to_string()));
        }
        Ok(Window { start, end })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .end
            .map_or_else(|| "24:00".to_string(), |e| e.format("%H:%M").to_string());
        write!(f, "{}-{}", self.start.format("%H:%M"), end)
    }
}

/// The one timestamp format of every `--json` output (status, queue list, estimate, send and
/// run events): RFC 3339 in UTC to the second, `2026-01-04T01:10:00Z`. One format, so a script
/// parses every command's output the same way; UTC, so it sorts as text and never depends on
/// the zone of the machine that printed it.
pub fn json_time<Tz: TimeZone>(t: &DateTime<Tz>) -> String {
    t.with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `H:MM`, `HH:MM` or `HH:MM:SS`, 24-hour.
pub fn parse_clock(s: &str) -> Option<NaiveTime> {
    let s = s.trim();
    NaiveTime::parse_from_str(s, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
        .ok()
}

/// `Fri 07:00`, `Friday 7:00` or `Fri-07:00` (as in weekly timetables): the weekday and the
/// time, apart.
fn parse_weekday_clock(s: &str) -> Option<(Weekday, NaiveTime)> {
    let (day, clock) = s.split_once([' ', '-'])?;
    Some((parse_day(day.trim())?, parse_clock(clock)?))
}

/// Parses the local times people type: `2026-01-01 23:00`, `2026-01-01T23:00:00`, an RFC 3339
/// time with an offset, a bare `23:00` meaning that time on `now`'s day, or a weekday and a
/// time, `Fri 07:00`, meaning the next such moment after `now` (today's when still ahead).
pub fn parse_local_time<Tz: TimeZone>(
    s: &str,
    tz: &Tz,
    now: DateTime<Tz>,
) -> Result<DateTime<Tz>, ScheduleError> {
    let t = s.trim();
    if let Ok(fixed) = DateTime::parse_from_rfc3339(t) {
        return Ok(fixed.with_timezone(tz));
    }
    if let Some((day, clock)) = parse_weekday_clock(t) {
        let today = now.date_naive();
        let ahead = (7 + day.num_days_from_monday() as i64
            - today.weekday().num_days_from_monday() as i64)
            % 7;
        let mut date = today + ChronoDuration::days(ahead);
        if ahead == 0 && resolve(tz, date.and_time(clock)) <= now {
            date += ChronoDuration::days(7);
        }
        return Ok(resolve(tz, date.and_time(clock)));
    }
    let naive = [
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .ok()
            .map(|d| d.and_time(NaiveTime::MIN))
    })
    .or_else(|| parse_clock(t).map(|c| now.date_naive().and_time(c)))
    .ok_or_else(|| ScheduleError::Time(s.to_string()))?;
    tz.from_local_datetime(&naive)
        .earliest()
        .ok_or_else(|| ScheduleError::NonexistentTime(s.to_string()))
}

/// Converts a wall-clock instant to `tz`, moving a time inside a daylight-saving gap forward to
/// the first instant that exists (a window that "opens at 02:30" or at 02:10 on that night opens
/// at 03:00). Monotonic, so boundaries resolved in wall-clock order stay in order.
fn resolve<Tz: TimeZone>(tz: &Tz, naive: NaiveDateTime) -> DateTime<Tz> {
    if let Some(t) = tz.from_local_datetime(&naive).earliest() {
        return t;
    }
    let mut probe = naive;
    for _ in 0..8 {
        probe += ChronoDuration::minutes(30);
        let Some(after) = tz.from_local_datetime(&probe).earliest() else {
            continue;
        };
        // `after` shows a wall-clock time past `naive`; the gap ends at most 4 h before it.
        // Search that stretch for the first second whose wall-clock time is past `naive`: the
        // end of the gap.
        let (mut lo, mut hi) = (-4 * 3600_i64, 0_i64);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if (after.clone() + ChronoDuration::seconds(mid)).naive_local() > naive {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        return after + ChronoDuration::seconds(hi);
    }
    // No zone has a gap longer than a few hours; treat the naive time as UTC if one does.
    tz.from_utc_datetime(&naive)
}

/// When bytes placed through a timetable from `start` are through.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement<Tz: TimeZone> {
    pub finish_at: DateTime<Tz>,
    /// How many separate sending stretches (windows, nights) the bytes move in: a pause ends
    /// one. 1 when nothing pauses them.
    pub windows_used: u32,
    /// Seconds from `start` to `finish_at`, waits between stretches included.
    pub elapsed_seconds: f64,
}

fn duration_from_secs(s: f64) -> ChronoDuration {
    ChronoDuration::milliseconds((s * 1000.0).round() as i64)
}

// ---------------------------------------------------------------------------
// Bandwidth timetable
// ---------------------------------------------------------------------------

/// The form every timetable error ends with.
const TIMETABLE_FORM: &str = r#"expected HH:MM,RATE entries, e.g. "07:00,32kbit 23:00,off", "07:00,polite 23:00,off" or "Mon-07:00,32kbit Sat-00:00,off""#;

/// How far ahead [`Timetable::place`] looks before it gives up on a job: far enough for any
/// upload worth planning (100 GiB at an hour a night at 128 kbit/s is about 5 years), near
/// enough that a hopeless one is refused after walking a few thousand days, not centuries.
pub const PLACEMENT_HORIZON_YEARS: u32 = 10;

/// What the uplink budget is during a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// `off`: no limit, the link's own rate.
    Unlimited,
    /// `pause`: no uploading.
    Paused,
    /// At most this rate.
    Limited(Rate),
    /// `polite`: the idle link's rate, yielding within seconds to any other traffic (see
    /// `polite`).
    Polite,
}

impl Budget {
    /// The rate to send at under this budget on a link of `link`; `None` when paused.
    pub fn rate_on(self, link: Rate) -> Option<Rate> {
        match self {
            // Planned as the whole link: polite mode uses what other traffic leaves, and a
            // window given to it is one the user expects to be quiet (the night).
            Budget::Unlimited | Budget::Polite => Some(link),
            Budget::Paused => None,
            Budget::Limited(r) if r.bits_per_second() < link.bits_per_second() => Some(r),
            Budget::Limited(_) => Some(link),
        }
    }
}

/// A budget that is neither `off`, `pause` nor a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// rclone's `--bwlimit 0` means no limit; a user may as well mean "stop".
    #[error(
        "{0:?} is ambiguous: rclone reads 0 as no limit; write off (no limit) or pause (no uploading)"
    )]
    Zero(String),
    #[error(
        "invalid budget {0:?}: expected off (no limit), pause (no uploading), polite (the idle link, yielding to other traffic) or a rate, e.g. 32kbit or 16KiB/s"
    )]
    Unknown(String),
    #[error(transparent)]
    Rate(#[from] UnitError),
}

impl FromStr for Budget {
    type Err = BudgetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(Budget::Unlimited);
        }
        if t.eq_ignore_ascii_case("pause") {
            return Ok(Budget::Paused);
        }
        if t.eq_ignore_ascii_case("polite") {
            return Ok(Budget::Polite);
        }
        if t.is_empty() || t.starts_with(|c: char| c.is_alphabetic()) {
            return Err(BudgetError::Unknown(s.to_string()));
        }
        match parse_rate(t) {
            Ok(rate) => Ok(Budget::Limited(rate)),
            Err(_) if is_zero_rate(t) => Err(BudgetError::Zero(s.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

/// `0`, `0kbit`, `0.0 KiB/s`: a zero in any unit a rate could have (or in none).
fn is_zero_rate(t: &str) -> bool {
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(end);
    let well_formed = number.split('.').count() <= 2
        && number
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    well_formed
        && number.bytes().all(|b| b == b'0' || b == b'.')
        && matches!(
            parse_rate(&format!("1{unit}")),
            Ok(_) | Err(UnitError::Ambiguous { .. })
        )
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Unlimited => f.pad("off"),
            Budget::Paused => f.pad("pause"),
            Budget::Polite => f.pad("polite"),
            Budget::Limited(rate) => rate.fmt(f),
        }
    }
}

/// A budget as one timetable word, exact: `off`, `pause`, `32kbit`, `131072bit`.
fn budget_word(budget: Budget) -> String {
    match budget {
        Budget::Limited(rate) => {
            // The rate's Display has a space and three decimals; use it only when it is exact.
            let shown = rate.to_string().replace(' ', "");
            let shown = shown.trim_end_matches("/s");
            if parse_rate(shown).ok() == Some(rate) {
                shown.to_string()
            } else {
                // Rust prints the shortest decimal that reads back as the same f64.
                format!("{}bit", rate.bits_per_second())
            }
        }
        other => other.to_string(),
    }
}

/// A timetable entry that cannot be read, or a timetable with none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimetableError {
    #[error("invalid timetable entry {entry:?}: {problem}; {TIMETABLE_FORM}")]
    Entry { entry: String, problem: String },
    #[error("the timetable is empty; {TIMETABLE_FORM}")]
    Empty,
}

/// One boundary: from `at` on `day` (every day when `None`) the budget is `budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slot {
    day: Option<Weekday>,
    at: NaiveTime,
    budget: Budget,
}

impl Slot {
    /// Daily entries first, then by weekday from Monday, then by time: one order per table,
    /// so that equal tables compare equal.
    fn order(&self) -> (u32, NaiveTime) {
        (self.day.map_or(0, |d| d.number_from_monday()), self.at)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Constant(Budget),
    /// Sorted by [`Slot::order`], never empty, no two at the same time of the same day.
    Slots(Vec<Slot>),
}

/// Uplink budgets by time of day (and day of week), as in rclone's `--bwlimit` timetable:
/// each entry's budget holds from its time until the next entry's, wrapping around the day (a
/// daily table) or the week (a table with at least one weekday entry, where a daily entry applies
/// on every day).
#[derive(Debug, Clone, PartialEq)]
pub struct Timetable {
    kind: Kind,
}

const DAY_NAMES: [(Weekday, &str, &str); 7] = [
    (Weekday::Mon, "Mon", "Monday"),
    (Weekday::Tue, "Tue", "Tuesday"),
    (Weekday::Wed, "Wed", "Wednesday"),
    (Weekday::Thu, "Thu", "Thursday"),
    (Weekday::Fri, "Fri", "Friday"),
    (Weekday::Sat, "Sat", "Saturday"),
    (Weekday::Sun, "Sun", "Sunday"),
];

fn parse_day(s: &str) -> Option<Weekday> {
    DAY_NAMES
        .iter()
        .find(|(_, short, long)| s.eq_ignore_ascii_case(short) || s.eq_ignore_ascii_case(long))
        .map(|(day, _, _)| *day)
}

fn day_name(day: Weekday) -> &'static str {
    DAY_NAMES
        .iter()
        .find(|(d, _, _)| *d == day)
        .map_or("", |(_, short, _)| short)
}

impl FromStr for Timetable {
    type Err = TimetableError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let entries: Vec<&str> = s.split_whitespace().collect();
        if entries.is_empty() {
            return Err(TimetableError::Empty);
        }
        let mut slots: Vec<(&str, Slot)> = Vec::new();
        for &entry in &entries {
            let bad = |problem: String| TimetableError::Entry {
                entry: entry.to_string(),
                problem,
            };
            let Some((when, budget)) = entry.split_once(',') else {
                // A budget without a time holds all the time, so it must be alone.
                if entry.contains(':') {
                    return Err(bad("the budget after the time is missing".into()));
                }
                let budget = entry.parse::<Budget>().map_err(|e| bad(e.to_string()))?;
                if entries.len() > 1 {
                    return Err(bad("an entry without a time must be the only one".into()));
                }
                return Ok(Timetable::constant(budget));
            };
            let (day, clock) = match when.split_once('-') {
                Some((day, clock)) => {
                    let day = parse_day(day).ok_or_else(|| {
                        bad(format!(
                            "{day:?} is not a day; write Mon, Tue, Wed, Thu, Fri, Sat or Sun"
                        ))
                    })?;
                    (Some(day), clock)
                }
                None => (None, when),
            };
            let at = parse_clock(clock)
                .ok_or_else(|| bad(format!("{clock:?} is not a 24-hour time such as 07:00")))?;
            let budget = budget.parse::<Budget>().map_err(|e| bad(e.to_string()))?;
            slots.push((entry, Slot { day, at, budget }));
        }

        // In a weekly table a daily entry stands for seven, and may collide with a weekday's.
        let weekly = slots.iter().any(|(_, slot)| slot.day.is_some());
        let mut taken: HashMap<(Option<Weekday>, NaiveTime), &str> = HashMap::new();
        for &(entry, slot) in &slots {
            let days: Vec<Option<Weekday>> = match slot.day {
                Some(day) => vec![Some(day)],
                None if weekly => DAY_NAMES.iter().map(|(d, _, _)| Some(*d)).collect(),
                None => vec![None],
            };
            for day in days {
                // Refused rather than letting the weekday win: which one was meant is a guess.
                if let Some(first) = taken.insert((day, slot.at), entry) {
                    let daily = if weekly && !first.contains('-') {
                        " (a daily entry applies on every day)"
                    } else {
                        ""
                    };
                    return Err(TimetableError::Entry {
                        entry: entry.to_string(),
                        problem: format!("its time is already taken by {first:?}{daily}"),
                    });
                }
            }
        }
        let mut slots: Vec<Slot> = slots.into_iter().map(|(_, slot)| slot).collect();
        slots.sort_by_key(Slot::order);
        Ok(Timetable {
            kind: Kind::Slots(slots),
        })
    }
}

impl fmt::Display for Timetable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots = match &self.kind {
            Kind::Constant(budget) => return f.write_str(&budget_word(*budget)),
            Kind::Slots(slots) => slots,
        };
        for (i, slot) in slots.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if let Some(day) = slot.day {
                write!(f, "{}-", day_name(day))?;
            }
            let clock = if slot.at.second() == 0 {
                slot.at.format("%H:%M")
            } else {
                slot.at.format("%H:%M:%S")
            };
            write!(f, "{clock},{}", budget_word(slot.budget))?;
        }
        Ok(())
    }
}

/// Seconds from `a` to `b`, to the millisecond, as placements count them.
fn seconds_between<Tz: TimeZone>(a: &DateTime<Tz>, b: &DateTime<Tz>) -> f64 {
    (b.clone() - a.clone()).num_milliseconds() as f64 / 1000.0
}

impl Timetable {
    /// The same budget all the time.
    pub fn constant(budget: Budget) -> Timetable {
        Timetable {
            kind: Kind::Constant(budget),
        }
    }

    /// The timetable of a window list: inside a window the link's own rate (`off`), outside
    /// it `pause`. No windows constrain nothing (`off` all the time), and neither do windows
    /// that cover the whole day. Overlapping or touching windows become one, so a night that
    /// two windows cover is one sending stretch. The boundaries are wall-clock times like any
    /// timetable's, resolved day by day, so a night that crosses a daylight-saving change is
    /// as long as the clock on the wall says.
    pub fn from_windows(windows: &[Window]) -> Timetable {
        const DAY: i64 = 86_400;
        // Each window as seconds of the day it opens, split where it runs past midnight.
        let mut open: Vec<(i64, i64)> = Vec::with_capacity(windows.len() * 2);
        for w in windows {
            let start = seconds_of_day(w.start);
            let end = start + w.seconds();
            open.push((start, end.min(DAY)));
            if end > DAY {
                open.push((0, end - DAY));
            }
        }
        open.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(open.len());
        for (a, b) in open {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        match merged[..] {
            [] | [(0, DAY)] => return Timetable::constant(Budget::Unlimited),
            _ => {}
        }
        // A window open at midnight on both sides of it (23:00-24:00 and 00:00-07:00) is one
        // stretch: no boundary at 00:00.
        let wraps =
            merged.first().is_some_and(|f| f.0 == 0) && merged.last().is_some_and(|l| l.1 == DAY);
        let clock = |s: i64| {
            NaiveTime::from_num_seconds_from_midnight_opt((s % DAY) as u32, 0)
                .expect("seconds of a day")
        };
        let mut slots: Vec<Slot> = Vec::with_capacity(merged.len() * 2);
        for &(a, b) in &merged {
            if !(wraps && a == 0) {
                slots.push(Slot {
                    day: None,
                    at: clock(a),
                    budget: Budget::Unlimited,
                });
            }
            if !(wraps && b == DAY) {
                slots.push(Slot {
                    day: None,
                    at: clock(b),
                    budget: Budget::Paused,
                });
            }
        }
        slots.sort_by_key(Slot::order);
        Timetable {
            kind: Kind::Slots(slots),
        }
    }

    fn slots(&self) -> &[Slot] {
        match &self.kind {
            Kind::Constant(_) => &[],
            Kind::Slots(slots) => slots,
        }
    }

    /// The budget in force before any boundary this side of `from`: the last entry of the week
    /// (or day). Only used where the boundaries ran out, at the ends of the calendar.
    fn wrapped_budget(&self) -> Budget {
        match &self.kind {
            Kind::Constant(budget) => *budget,
            Kind::Slots(slots) => slots.last().map_or(Budget::Unlimited, |s| s.budget),
        }
    }

    /// The instants at which entries take effect, in order, from the wall-clock day `from` on
    /// (none for a constant table). Each day's entries are resolved in `tz`, so a boundary in a
    /// daylight-saving gap moves to the gap's end; of boundaries that land on the same instant
    /// the one latest on the wall wins.
    fn changes<'a, Tz: TimeZone>(
        &'a self,
        tz: &'a Tz,
        from: NaiveDate,
    ) -> impl Iterator<Item = (DateTime<Tz>, Budget)> + 'a {
        let slots = self.slots();
        // A constant table has no boundaries; without this guard the days would never end.
        let first_day = (!slots.is_empty()).then_some(from);
        let mut raw = std::iter::successors(first_day, |d| d.succ_opt())
            .flat_map(move |day| {
                let mut today: Vec<Slot> = slots
                    .iter()
                    .filter(|s| s.day.is_none_or(|d| d == day.weekday()))
                    .copied()
                    .collect();
                today.sort_by_key(|s| s.at);
                today
                    .into_iter()
                    .map(move |s| (resolve(tz, day.and_time(s.at)), s.budget))
            })
            .peekable();
        std::iter::from_fn(move || {
            let (at, mut budget) = raw.next()?;
            while let Some((_, later)) = raw.next_if(|(next, _)| *next == at) {
                budget = later;
            }
            Some((at, budget))
        })
    }

    /// The wall-clock day from which boundaries are generated to know the budget on `day`:
    /// the day before reaches the last entry of a daily table, a week and a day back that of
    /// any weekly one. Placing a night's window walked the eight days of the weekly lookback
    /// for a daily table (a 1 GiB estimate through nightly windows: 11 days where 4 do).
    fn lookback(&self, day: NaiveDate) -> NaiveDate {
        let weekly = self.slots().iter().any(|s| s.day.is_some());
        let days = if weekly { 8 } else { 1 };
        day.checked_sub_days(Days::new(days)).unwrap_or(day)
    }

    /// The budget in force at `t` (local wall-clock time of t's zone).
    pub fn budget_at<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> Budget {
        let tz = t.timezone();
        self.changes(&tz, self.lookback(t.date_naive()))
            .take_while(|(at, _)| at <= t)
            .last()
            .map_or_else(|| self.wrapped_budget(), |(_, budget)| budget)
    }

    /// The next instant after `t` at which the budget changes (None for a constant table, or one
    /// whose entries all have the same budget).
    pub fn next_change<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        let tz = t.timezone();
        // Every entry recurs within a week; past that nothing changes any more.
        let horizon = t.clone().checked_add_signed(ChronoDuration::days(9))?;
        let mut current = None;
        for (at, budget) in self
            .changes(&tz, self.lookback(t.date_naive()))
            .take_while(|(at, _)| *at <= horizon)
        {
            if at <= *t {
                current = Some(budget);
            } else if current != Some(budget) {
                return Some(at);
            }
        }
        None
    }

    /// When `bytes` are through if sent from `start` at each slot's rate: `off` slots at `link`
    /// (the measured or assumed link rate), limited slots at the lower of their rate and
    /// `link`, paused slots not at all. `windows_used` counts the separate sending stretches
    /// (a pause ends one). Errors when every slot is paused, or when the job would not finish
    /// within [`PLACEMENT_HORIZON_YEARS`].
    pub fn place<Tz: TimeZone>(
        &self,
        start: DateTime<Tz>,
        bytes: u64,
        link: Rate,
    ) -> Result<Placement<Tz>, PlaceError> {
        let never_sends = match &self.kind {
            Kind::Constant(budget) => *budget == Budget::Paused,
            Kind::Slots(slots) => slots.iter().all(|s| s.budget == Budget::Paused),
        };
        if never_sends {
            return Err(PlaceError::AlwaysPaused);
        }
        let too_long = PlaceError::TooLong(PLACEMENT_HORIZON_YEARS);
        let horizon = start
            .clone()
            .checked_add_signed(ChronoDuration::days(
                i64::from(PLACEMENT_HORIZON_YEARS) * 366,
            ))
            .ok_or(too_long.clone())?;

        let tz = start.timezone();
        let mut changes = self
            .changes(&tz, self.lookback(start.date_naive()))
            .peekable();
        let mut budget = self.wrapped_budget();
        while let Some((_, b)) = changes.next_if(|(at, _)| *at <= start) {
            budget = b;
        }
        let mut cursor = start.clone();
        let mut remaining = bytes as f64;
        let mut stretches = 0u32;
        let mut sending = false;
        // Each turn consumes one slot; the horizon bounds the turns.
        loop {
            let next = changes.next();
            match budget.rate_on(link) {
                Some(rate) => {
                    if !sending {
                        stretches += 1;
                        sending = true;
                    }
                    let per_second = rate.bytes_per_second();
                    let needed = remaining / per_second;
                    let slot = next
                        .as_ref()
                        .map_or(f64::INFINITY, |(at, _)| seconds_between(&cursor, at));
                    if needed <= slot {
                        if needed > seconds_between(&cursor, &horizon) {
                            return Err(too_long);
                        }
                        let finish_at = cursor + duration_from_secs(needed);
                        return Ok(Placement {
                            elapsed_seconds: seconds_between(&start, &finish_at),
                            finish_at,
                            windows_used: stretches,
                        });
                    }
                    remaining -= slot * per_second;
                }
                None => sending = false,
            }
            // Paused with no boundary left: only at the end of the calendar.
            let (at, b) = next.ok_or(too_long.clone())?;
            if at > horizon {
                return Err(too_long);
            }
            cursor = at;
            budget = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::offset::MappedLocalTime;
    use chrono::{FixedOffset, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        parse_local_time(s, &Utc, Utc::now()).unwrap()
    }

    #[test]
    fn json_time_is_utc_to_the_second_whatever_the_zone() {
        let plus2 = FixedOffset::east_opt(2 * 3600).unwrap();
        let t = parse_local_time(
            "2026-01-04 03:10:59",
            &plus2,
            Utc::now().with_timezone(&plus2),
        )
        .unwrap();
        assert_eq!(json_time(&t), "2026-01-04T01:10:59Z");
        assert_eq!(json_time(&t.with_timezone(&Utc)), "2026-01-04T01:10:59Z");
    }

    #[test]
    fn windows_parse_and_display() {
        let w: Window = "23:00-07:00".parse().unwrap();
        assert_eq!(w.seconds(), 8 * 3600);
        assert_eq!(w.to_string(), "23:00-07:00");
        let day: Window = "9:30-17:00".parse().unwrap();
        assert_eq!(day.seconds(), 7 * 3600 + 1800);
        let all: Window = "00:00-24:00".parse().unwrap();
        assert_eq!(all.seconds(), 86_400);
        for bad in ["23:00", "23-07", "25:00-07:00", "", "07:00-07:00", "a-b"] {
            let err = bad.parse::<Window>().unwrap_err().to_string();
            assert!(err.contains(&format!("\"{bad}\"")), "{err}");
        }
    }

    #[test]
    fn local_times_parse() {
        let now = at("2026-03-04 10:00");
        assert_eq!(
            parse_local_time("23:00", &Utc, now).unwrap(),
            at("2026-03-04T23:00:00")
        );
        assert_eq!(
            parse_local_time("2026-01-01T23:00:00+01:00", &Utc, now).unwrap(),
            at("2026-01-01 22:00")
        );
        assert!(parse_local_time("tomorrow", &Utc, now).is_err());
    }

    #[test]
    fn weekday_times_are_the_next_such_moment() {
        // 2026-01-01 is a Thursday.
        let now = parse_local_time("2026-01-01 12:00", &Utc, Utc::now()).unwrap();
        let at = |s: &str| parse_local_time(s, &Utc, now).unwrap().to_rfc3339();
        assert_eq!(at("Fri 07:00"), "2026-01-02T07:00:00+00:00");
        assert_eq!(at("friday 7:00"), "2026-01-02T07:00:00+00:00");
        assert_eq!(at("Fri-07:00"), "2026-01-02T07:00:00+00:00");
        // Today's when still ahead, else a week on.
        assert_eq!(at("Thu 13:00"), "2026-01-01T13:00:00+00:00");
        assert_eq!(at("Thu 11:00"), "2026-01-08T11:00:00+00:00");
        assert_eq!(at("Wed 07:00"), "2026-01-07T07:00:00+00:00");
        assert!(parse_local_time("Fri", &Utc, now).is_err());
        assert!(parse_local_time("Fry 07:00", &Utc, now).is_err());
    }

    /// Places `seconds` of link time through `windows` from `start`: on a link of one byte a
    /// second, bytes are seconds.
    fn in_windows<Tz: TimeZone>(
        windows: &[&str],
        start: DateTime<Tz>,
        seconds: u64,
    ) -> Result<Placement<Tz>, PlaceError> {
        let windows: Vec<Window> = windows.iter().map(|w| w.parse().unwrap()).collect();
        let byte_a_second = Rate::from_bytes_per_second(1.0).unwrap();
        Timetable::from_windows(&windows).place(start, seconds, byte_a_second)
    }

    #[test]
    fn no_windows_is_plain_addition() {
        let p = in_windows(&[], at("2026-01-01 00:00"), 3600).unwrap();
        assert_eq!(p.finish_at, at("2026-01-01 01:00"));
        assert_eq!(p.windows_used, 1);
    }

    #[test]
    fn seventeen_hours_over_eight_hour_nights_ends_on_the_third_night() {
        // 17.4 h of link time.
        let p = in_windows(&["23:00-07:00"], at("2026-01-01 23:00"), 62_640).unwrap();
        assert_eq!(p.windows_used, 3);
        assert_eq!(p.finish_at, at("2026-01-04 00:24"));
    }

    #[test]
    fn starting_inside_or_before_a_window() {
        let night = ["23:00-07:00"];
        // Starting at 06:00 leaves one hour of last night's window.
        let p = in_windows(&night, at("2026-01-02 06:00"), 2 * 3600).unwrap();
        assert_eq!(p.finish_at, at("2026-01-03 00:00"));
        assert_eq!(p.windows_used, 2);
        // Starting at noon waits for the evening.
        let p = in_windows(&night, at("2026-01-02 12:00"), 3600).unwrap();
        assert_eq!(p.finish_at, at("2026-01-03 00:00"));
        assert_eq!(p.windows_used, 1);
        assert_eq!(p.elapsed_seconds, 12.0 * 3600.0);
    }

    #[test]
    fn overlapping_windows_merge() {
        let both = ["22:00-02:00", "01:00-06:00"];
        let p = in_windows(&both, at("2026-01-01 22:00"), 8 * 3600).unwrap();
        assert_eq!(p.finish_at, at("2026-01-02 06:00"));
        assert_eq!(p.windows_used, 1);
    }

    #[test]
    fn long_jobs_span_many_windows() {
        let p = in_windows(&["01:00-02:00"], at("2026-01-01 00:00"), 100 * 3600).unwrap();
        assert_eq!(p.windows_used, 100);
        assert_eq!(p.finish_at, at("2026-04-10 02:00"));
    }

    // --- Bandwidth timetable -------------------------------------------------------------

    fn table(s: &str) -> Timetable {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn kbit(n: f64) -> Rate {
        Rate::from_bits_per_second(n * 1000.0).unwrap()
    }

    fn plus_one(s: &str) -> DateTime<FixedOffset> {
        let tz = FixedOffset::east_opt(3600).unwrap();
        parse_local_time(s, &tz, Utc::now().with_timezone(&tz)).unwrap()
    }

    /// Central European time with the 2026 changes: 02:00-03:00 local does not exist on
    /// 2026-03-29, and 02:00-03:00 happens twice on 2026-10-25.
    #[derive(Debug, Clone, Copy)]
    struct Cet;

    impl Cet {
        fn summer(utc: &NaiveDateTime) -> bool {
            let begin = NaiveDate::from_ymd_opt(2026, 3, 29)
                .unwrap()
                .and_hms_opt(1, 0, 0);
            let end = NaiveDate::from_ymd_opt(2026, 10, 25)
                .unwrap()
                .and_hms_opt(1, 0, 0);
            (begin.unwrap()..end.unwrap()).contains(utc)
        }
    }

    impl TimeZone for Cet {
        type Offset = FixedOffset;
        fn from_offset(_: &FixedOffset) -> Self {
            Cet
        }
        fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<FixedOffset> {
            self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
        }
        fn offset_from_local_datetime(
            &self,
            local: &NaiveDateTime,
        ) -> MappedLocalTime<FixedOffset> {
            // Summer time first: where both fit, it is the earlier instant.
            let fits: Vec<FixedOffset> = [7200, 3600]
                .into_iter()
                .map(|s| FixedOffset::east_opt(s).unwrap())
                .filter(|o| self.offset_from_utc_datetime(&(*local - *o)) == *o)
                .collect();
            match fits[..] {
                [] => MappedLocalTime::None,
                [one] => MappedLocalTime::Single(one),
                [a, b, ..] => MappedLocalTime::Ambiguous(a, b),
            }
        }
        fn offset_from_utc_date(&self, utc: &NaiveDate) -> FixedOffset {
            self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
        }
        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> FixedOffset {
            FixedOffset::east_opt(if Cet::summer(utc) { 7200 } else { 3600 }).unwrap()
        }
    }

    fn cet(s: &str) -> DateTime<Cet> {
        parse_local_time(s, &Cet, Utc::now().with_timezone(&Cet)).unwrap()
    }

    #[test]
    fn windows_are_a_timetable_of_off_and_pause() {
        let shown = |ws: &[&str]| {
            let ws: Vec<Window> = ws.iter().map(|w| w.parse().unwrap()).collect();
            Timetable::from_windows(&ws).to_string()
        };
        assert_eq!(shown(&["23:00-07:00"]), "07:00,pause 23:00,off");
        assert_eq!(shown(&["9:30-17:00"]), "09:30,off 17:00,pause");
        // Overlapping and touching windows are one.
        assert_eq!(
            shown(&["22:00-02:00", "01:00-06:00"]),
            "06:00,pause 22:00,off"
        );
        assert_eq!(
            shown(&["09:30-12:00", "12:00-17:00"]),
            "09:30,off 17:00,pause"
        );
        // Open up to midnight, and after it: two windows, a boundary at 00:00.
        assert_eq!(
            shown(&["01:00-02:00", "22:00-24:00"]),
            "00:00,pause 01:00,off 02:00,pause 22:00,off"
        );
        assert_eq!(
            shown(&["00:00-07:00", "23:00-24:00"]),
            "07:00,pause 23:00,off"
        );
        assert_eq!(shown(&["07:00-07:30:30"]), "07:00,off 07:30:30,pause");
        // Nothing constrains: off all the time.
        assert_eq!(shown(&[]), "off");
        assert_eq!(shown(&["00:00-24:00"]), "off");
        assert_eq!(shown(&["00:00-12:00", "12:00-24:00"]), "off");
        assert_eq!(shown(&["06:00-18:00", "18:00-06:00"]), "off");
    }

    #[test]
    fn budgets_parse_and_display() {
        assert_eq!("off".parse::<Budget>().unwrap(), Budget::Unlimited);
        assert_eq!("Pause".parse::<Budget>().unwrap(), Budget::Paused);
        assert_eq!(
            "32kbit".parse::<Budget>().unwrap(),
            Budget::Limited(kbit(32.0))
        );
        assert_eq!(
            "16KiB/s".parse::<Budget>().unwrap(),
            Budget::Limited(kbit(131.072))
        );
        assert_eq!(Budget::Unlimited.to_string(), "off");
        assert_eq!(Budget::Paused.to_string(), "pause");
        assert_eq!("Polite".parse::<Budget>().unwrap(), Budget::Polite);
        assert_eq!(Budget::Polite.to_string(), "polite");
        assert_eq!(Budget::Limited(kbit(32.0)).to_string(), "32 kbit/s");
        let err = "fast".parse::<Budget>().unwrap_err().to_string();
        assert!(err.contains("\"fast\"") && err.contains("pause"), "{err}");
    }

    #[test]
    fn zero_is_refused_with_the_rclone_hint() {
        for zero in ["0", "0kbit", "0.0 Mbit/s", "0KiB/s", "00k"] {
            let err = zero.parse::<Budget>().unwrap_err();
            assert_eq!(err, BudgetError::Zero(zero.to_string()));
            let msg = err.to_string();
            assert!(msg.contains("rclone reads 0 as no limit"), "{msg}");
            assert!(
                msg.contains("off (no limit)") && msg.contains("pause (no uploading)"),
                "{msg}"
            );
        }
        let msg = "07:00,0 23:00,off"
            .parse::<Timetable>()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("\"07:00,0\"") && msg.contains("rclone reads 0"),
            "{msg}"
        );
        // Other bare numbers get the units module's ambiguity error.
        let err = "128".parse::<Budget>().unwrap_err();
        assert!(
            matches!(err, BudgetError::Rate(UnitError::Ambiguous { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("128kbit"), "{err}");
        // A zero with a unit nobody knows is a bad unit, not a zero.
        assert!(matches!(
            "0xyz".parse::<Budget>().unwrap_err(),
            BudgetError::Rate(_)
        ));
    }

    #[test]
    fn timetables_round_trip() {
        for (input, shown) in [
            ("07:00,32kbit 23:00,off", "07:00,32kbit 23:00,off"),
            ("23:00,off 7:00,32kbit/s", "07:00,32kbit 23:00,off"),
            (
                "sat-00:00,off Mon-07:00,1.5Mbit",
                "Mon-07:00,1.5Mbit Sat-00:00,off",
            ),
            (
                "Saturday-09:00,pause 07:00,16KiB/s 23:00:30,off",
                "07:00,131.072kbit 23:00:30,off Sat-09:00,pause",
            ),
            ("32kbit", "32kbit"),
            ("off", "off"),
            ("  pause ", "pause"),
        ] {
            let t = table(input);
            assert_eq!(t.to_string(), shown, "{input}");
            assert_eq!(table(shown), t, "{input}");
        }
        // A rate whose Display is rounded is written exactly.
        let odd = Timetable::constant(Budget::Limited(
            Rate::from_bits_per_second(9011.2345678).unwrap(),
        ));
        assert_eq!(odd.to_string(), "9011.2345678bit");
        assert_eq!(table(&odd.to_string()), odd);
    }

    #[test]
    fn bad_timetables_name_the_entry() {
        for (input, entry) in [
            ("25:00,1Mbit", "25:00,1Mbit"),
            ("07:00", "07:00"),
            ("07:00,fast 23:00,off", "07:00,fast"),
            ("Foo-07:00,off", "Foo-07:00,off"),
            ("07:00,off 07:00,1Mbit", "07:00,1Mbit"),
            ("07:00,off Mon-07:00,1Mbit", "Mon-07:00,1Mbit"),
            ("07:00,off 32kbit", "32kbit"),
        ] {
            let err = input.parse::<Timetable>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("\"{entry}\"")), "{input}: {msg}");
            assert!(
                msg.contains(r#"expected HH:MM,RATE entries, e.g. "07:00,32kbit 23:00,off""#),
                "{msg}"
            );
        }
        let dup = "07:00,off 07:00,1Mbit".parse::<Timetable>().unwrap_err();
        assert!(dup.to_string().contains("already taken by \"07:00,off\";"));
        let dup = "07:00,off Mon-07:00,1Mbit"
            .parse::<Timetable>()
            .unwrap_err();
        assert!(dup.to_string().contains("daily entry applies on every day"));
        assert_eq!("".parse::<Timetable>(), Err(TimetableError::Empty));
        assert_eq!(" \t".parse::<Timetable>(), Err(TimetableError::Empty));
    }

    #[test]
    fn before_the_first_entry_the_previous_days_last_holds() {
        let t = table("07:00,32kbit 23:00,pause");
        assert_eq!(t.budget_at(&at("2026-01-02 03:00")), Budget::Paused);
        assert_eq!(t.budget_at(&at("2026-01-02 00:00")), Budget::Paused);
        assert_eq!(
            t.budget_at(&at("2026-01-02 07:00")),
            Budget::Limited(kbit(32.0))
        );
        assert_eq!(
            t.budget_at(&at("2026-01-02 22:59:59")),
            Budget::Limited(kbit(32.0))
        );
        assert_eq!(t.budget_at(&at("2026-01-02 23:00")), Budget::Paused);
        // The wall clock of t's own zone counts: 07:30 at +01:00 is 06:30 UTC.
        let local = plus_one("2026-01-02 07:30");
        assert_eq!(t.budget_at(&local), Budget::Limited(kbit(32.0)));
        assert_eq!(t.budget_at(&local.with_timezone(&Utc)), Budget::Paused);
        assert_eq!(
            Timetable::constant(Budget::Paused).budget_at(&local),
            Budget::Paused
        );
    }

    #[test]
    fn weekly_tables_follow_the_weekday() {
        // 2026-01-05 is a Monday.
        let t = table("Mon-07:00,1Mbit Sat-00:00,off");
        let mbit = Budget::Limited(kbit(1000.0));
        assert_eq!(t.budget_at(&at("2026-01-04 12:00")), Budget::Unlimited);
        assert_eq!(t.budget_at(&at("2026-01-05 06:59")), Budget::Unlimited);
        assert_eq!(t.budget_at(&at("2026-01-05 07:00")), mbit);
        assert_eq!(t.budget_at(&at("2026-01-07 03:00")), mbit);
        assert_eq!(t.budget_at(&at("2026-01-09 23:59")), mbit);
        assert_eq!(t.budget_at(&at("2026-01-10 00:00")), Budget::Unlimited);

        // Daily entries apply on every day, weekday entries on theirs.
        let t = table("07:00,32kbit 23:00,off Sat-08:00,off");
        let slow = Budget::Limited(kbit(32.0));
        assert_eq!(t.budget_at(&at("2026-01-02 12:00")), slow); // Friday
        assert_eq!(t.budget_at(&at("2026-01-03 07:30")), slow); // Saturday
        assert_eq!(t.budget_at(&at("2026-01-03 12:00")), Budget::Unlimited);
        assert_eq!(t.budget_at(&at("2026-01-04 12:00")), slow); // Sunday
        assert_eq!(t.budget_at(&at("2026-01-04 02:00")), Budget::Unlimited);
    }

    #[test]
    fn next_changes() {
        let t = table("07:00,32kbit 23:00,off");
        assert_eq!(
            t.next_change(&at("2026-01-01 12:00")),
            Some(at("2026-01-01 23:00"))
        );
        // Strictly after t.
        assert_eq!(
            t.next_change(&at("2026-01-01 23:00")),
            Some(at("2026-01-02 07:00"))
        );
        assert_eq!(
            t.next_change(&at("2026-01-02 03:00")),
            Some(at("2026-01-02 07:00"))
        );
        let local = plus_one("2026-01-01 12:00");
        assert_eq!(t.next_change(&local), Some(plus_one("2026-01-01 23:00")));
        // An entry that repeats the budget is no change.
        let t = table("07:00,off 12:00,off 23:00,32kbit");
        assert_eq!(
            t.next_change(&at("2026-01-01 08:00")),
            Some(at("2026-01-01 23:00"))
        );
        assert_eq!(table("07:00,off 23:00,off").next_change(&local), None);
        assert_eq!(table("32kbit").next_change(&local), None);
        // Weekly: from Friday noon to Saturday midnight, then to Monday 07:00.
        let t = table("Mon-07:00,1Mbit Sat-00:00,off");
        assert_eq!(
            t.next_change(&at("2026-01-09 12:00")),
            Some(at("2026-01-10 00:00"))
        );
        assert_eq!(
            t.next_change(&at("2026-01-10 00:00")),
            Some(at("2026-01-12 07:00"))
        );
    }

    #[test]
    fn one_gigabyte_over_slow_days_and_fast_nights() {
        let t = table("07:00,32kbit 23:00,off");
        // Link 128 kbit/s = 16 000 B/s; 32 kbit/s = 4 000 B/s.
        // Thu 23:00 - Fri 07:00, off at the link:  8 h * 3600 * 16 000 = 460 800 000 B
        // Fri 07:00 - Fri 23:00, 32 kbit:         16 h * 3600 *  4 000 = 230 400 000 B
        // left: 1 000 000 000 - 691 200 000 = 308 800 000 B, at 16 000 B/s = 19 300 s
        //       = 5 h 21 min 40 s after Fri 23:00: Sat 2026-01-03 04:21:40.
        let p = t
            .place(at("2026-01-01 23:00"), 1_000_000_000, kbit(128.0))
            .unwrap();
        assert_eq!(p.finish_at, at("2026-01-03 04:21:40"));
        assert_eq!(p.elapsed_seconds, 8.0 * 3600.0 + 16.0 * 3600.0 + 19_300.0);
        // Never paused: one stretch.
        assert_eq!(p.windows_used, 1);
        // The same in a zone an hour east: wall-clock boundaries, so the same wall-clock finish.
        let p = t
            .place(plus_one("2026-01-01 23:00"), 1_000_000_000, kbit(128.0))
            .unwrap();
        assert_eq!(p.finish_at, plus_one("2026-01-03 04:21:40"));
    }

    #[test]
    fn pauses_are_skipped() {
        let t = table("07:00,32kbit 19:00,pause 23:00,off");
        // Fri 18:00-19:00 at 4 000 B/s = 14 400 000 B; paused 19:00-23:00; then 16 000 000 B
        // at the 16 000 B/s link take 1 000 s: 23:16:40, in a second stretch.
        let p = t
            .place(at("2026-01-02 18:00"), 30_400_000, kbit(128.0))
            .unwrap();
        assert_eq!(p.finish_at, at("2026-01-02 23:16:40"));
        assert_eq!(p.windows_used, 2);
        // Starting inside the pause waits for it to end.
        let p = t
            .place(at("2026-01-02 20:00"), 16_000_000, kbit(128.0))
            .unwrap();
        assert_eq!(p.finish_at, at("2026-01-02 23:16:40"));
        assert_eq!(p.windows_used, 1);
        assert_eq!(p.elapsed_seconds, 3.0 * 3600.0 + 1000.0);
    }

    #[test]
    fn all_paused_never_finishes() {
        for t in [table("pause"), table("07:00,pause Sat-00:00,pause")] {
            assert_eq!(
                t.place(at("2026-01-01 00:00"), 1, kbit(128.0)),
                Err(PlaceError::AlwaysPaused)
            );
        }
    }

    #[test]
    fn a_constant_limit_is_bytes_times_eight_over_the_rate() {
        let t = table("1Mbit");
        let start = at("2026-01-01 00:00");
        // 10^9 B * 8 / 10^6 bit/s = 8 000 s; the 10 Mbit/s link does not limit.
        let p = t.place(start, 1_000_000_000, kbit(10_000.0)).unwrap();
        assert_eq!(p.elapsed_seconds, 8000.0);
        assert_eq!(p.finish_at, at("2026-01-01 02:13:20"));
        assert_eq!(p.windows_used, 1);
        // A 128 kbit/s link does: 10^9 * 8 / 128 000 = 62 500 s.
        let p = t.place(start, 1_000_000_000, kbit(128.0)).unwrap();
        assert_eq!(p.elapsed_seconds, 62_500.0);
    }

    #[test]
    fn multi_year_jobs_stop_at_the_horizon() {
        // A second a week at 1 bit/s: about 65 bytes a year.
        let t = table("Mon-00:00,1bit Mon-00:00:01,pause");
        let err = t.place(at("2026-01-01 00:00"), 10_000, kbit(128.0));
        assert_eq!(err, Err(PlaceError::TooLong(PLACEMENT_HORIZON_YEARS)));
        let err = table("1bit").place(at("2026-01-01 00:00"), u64::MAX, kbit(128.0));
        assert_eq!(err, Err(PlaceError::TooLong(PLACEMENT_HORIZON_YEARS)));
        // Bytes of that first table are still counted slot by slot: 3 B need 24 Mondays.
        let p = t.place(at("2026-01-05 00:00"), 3, kbit(128.0)).unwrap();
        assert_eq!(p.windows_used, 24);
        assert_eq!(p.finish_at, at("2026-06-15 00:00:01"));
    }

    #[test]
    fn boundaries_in_a_daylight_saving_gap_move_to_its_end() {
        // 02:10 and 02:30 do not exist on 2026-03-29 in Central Europe: the clock jumps from
        // 02:00 to 03:00.
        for s in ["02:10,1Mbit 12:00,off", "02:30,1Mbit 12:00,off"] {
            let t = table(s);
            assert_eq!(
                t.next_change(&cet("2026-03-29 00:00")),
                Some(cet("2026-03-29 03:00")),
                "{s}"
            );
            assert_eq!(t.budget_at(&cet("2026-03-29 01:59:59")), Budget::Unlimited);
            assert_eq!(
                t.budget_at(&cet("2026-03-29 03:00")),
                Budget::Limited(kbit(1000.0))
            );
        }
        // That night is 7 h long on the wall: 8 h of link time spill into the next night.
        let t = table("23:00,off 07:00,pause");
        let night = 7 * 3600 * 16_000;
        let p = t
            .place(cet("2026-03-28 23:00"), night, kbit(128.0))
            .unwrap();
        assert_eq!(p.finish_at, cet("2026-03-29 07:00"));
        assert_eq!(p.windows_used, 1);
        let p = t
            .place(cet("2026-03-28 23:00"), night + 3600 * 16_000, kbit(128.0))
            .unwrap();
        assert_eq!(p.finish_at, cet("2026-03-30 00:00"));
        assert_eq!(p.windows_used, 2);
        // Windows use the same rule: a window "opening at 02:10" that night opens at 03:00.
        let p = in_windows(&["02:10-04:00"], cet("2026-03-29 00:00"), 1800).unwrap();
        assert_eq!(p.finish_at, cet("2026-03-29 03:30"));
    }

    #[test]
    fn boundaries_in_a_repeated_hour_take_the_first() {
        // 02:30 happens twice on 2026-10-25; the entry takes effect at the first, 00:30 UTC.
        let t = table("02:30,1Mbit 12:00,off");
        let first = cet("2026-10-25 02:30");
        assert_eq!(first.with_timezone(&Utc), at("2026-10-25 00:30"));
        assert_eq!(t.next_change(&cet("2026-10-25 00:00")), Some(first));
        let second = at("2026-10-25 01:30").with_timezone(&Cet);
        assert_eq!(t.budget_at(&second), Budget::Limited(kbit(1000.0)));
    }
}
