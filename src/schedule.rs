//! Wall-clock time for transfers: upload windows (`23:00-07:00`), the local times people type
//! (`--start "2026-01-01 23:00"`), and placing a number of busy seconds into those windows.
//!
//! Windows are wall-clock ranges that repeat every day; a range whose end is not after its start
//! runs past midnight. Windows are turned into absolute instants day by day in the caller's time
//! zone, so a night that crosses a daylight-saving change is as long as the clock on the wall
//! says, not 8 h of arithmetic.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
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
        "invalid time \"{0}\": expected a local date and time, e.g. \"2026-01-01 23:00\", 23:00 (today) or 2026-01-01T23:00:00+01:00"
    )]
    Time(String),
    #[error("the time \"{0}\" does not exist in the local time zone (a daylight-saving gap)")]
    NonexistentTime(String),
    #[error("the windows never open: nothing can be scheduled")]
    NeverOpen,
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

    /// The window that opens on `day`, as naive wall-clock start and end.
    fn on(&self, day: NaiveDate) -> (NaiveDateTime, NaiveDateTime) {
        let start = day.and_time(self.start);
        let end = match self.end {
            None => (day + ChronoDuration::days(1)).and_time(NaiveTime::MIN),
            Some(end) if end > self.start => day.and_time(end),
            Some(end) => (day + ChronoDuration::days(1)).and_time(end),
        };
        (start, end)
    }
}

fn seconds_of_day(t: NaiveTime) -> i64 {
    use chrono::Timelike;
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

/// `H:MM`, `HH:MM` or `HH:MM:SS`, 24-hour.
pub fn parse_clock(s: &str) -> Option<NaiveTime> {
    let s = s.trim();
    NaiveTime::parse_from_str(s, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
        .ok()
}

/// Parses the local times people type: `2026-01-01 23:00`, `2026-01-01T23:00:00`, an RFC 3339
/// time with an offset, or a bare `23:00` meaning that time on `now`'s day.
pub fn parse_local_time<Tz: TimeZone>(
    s: &str,
    tz: &Tz,
    now: DateTime<Tz>,
) -> Result<DateTime<Tz>, ScheduleError> {
    let t = s.trim();
    if let Ok(fixed) = DateTime::parse_from_rfc3339(t) {
        return Ok(fixed.with_timezone(tz));
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
/// the first instant that exists (a window that "opens at 02:30" on that night opens at 03:00).
fn resolve<Tz: TimeZone>(tz: &Tz, naive: NaiveDateTime) -> DateTime<Tz> {
    let mut probe = naive;
    for _ in 0..8 {
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            return t;
        }
        probe += ChronoDuration::minutes(30);
    }
    // No zone has a gap longer than a few hours; treat the naive time as UTC if one does.
    tz.from_utc_datetime(&naive)
}

/// When a job of `busy_seconds` that starts at `start` ends if it may only run inside `windows`.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement<Tz: TimeZone> {
    pub finish_at: DateTime<Tz>,
    /// How many separate windows (nights) the job runs in; 1 when no windows constrain it.
    pub windows_used: u32,
    /// Seconds from `start` to `finish_at`, waits between windows included.
    pub elapsed_seconds: f64,
}

/// The open intervals of `windows`, merged and in order, from the day before `from` onwards
/// (a window that opened yesterday evening may still be open), for `days` days.
fn open_intervals<Tz: TimeZone>(
    windows: &[Window],
    tz: &Tz,
    from: NaiveDate,
    days: i64,
) -> Vec<(DateTime<Tz>, DateTime<Tz>)> {
    let mut all: Vec<(DateTime<Tz>, DateTime<Tz>)> = Vec::new();
    for d in -1..days {
        let day = from + ChronoDuration::days(d);
        for w in windows {
            let (a, b) = w.on(day);
            all.push((resolve(tz, a), resolve(tz, b)));
        }
    }
    all.sort_by(|x, y| x.0.cmp(&y.0));
    let mut merged: Vec<(DateTime<Tz>, DateTime<Tz>)> = Vec::new();
    for (a, b) in all {
        match merged.last_mut() {
            Some(last) if a <= last.1 => {
                if b > last.1 {
                    last.1 = b;
                }
            }
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Places `busy_seconds` of work into `windows`, starting no earlier than `start`.
pub fn place<Tz: TimeZone>(
    start: DateTime<Tz>,
    windows: &[Window],
    busy_seconds: f64,
) -> Result<Placement<Tz>, ScheduleError> {
    let mut remaining = busy_seconds.max(0.0);
    if windows.is_empty() {
        let finish_at = start.clone() + duration_from_secs(remaining);
        return Ok(Placement {
            finish_at,
            windows_used: 1,
            elapsed_seconds: remaining,
        });
    }
    let tz = start.timezone();
    let mut cursor = start.clone();
    let mut used = 0u32;
    let mut last_close: Option<DateTime<Tz>> = None;
    // Each turn consumes one open interval or skips a closed day; the bound only stops a
    // pathological job (centuries long) from looping forever.
    for _ in 0..(366 * 200) {
        let next = open_intervals(windows, &tz, cursor.date_naive(), 2)
            .into_iter()
            .find(|(_, close)| *close > cursor);
        let Some((open, close)) = next else {
            cursor += ChronoDuration::days(1);
            continue;
        };
        let from = if open > cursor { open } else { cursor.clone() };
        // An interval that continues the previous one (00:00-24:00 day after day) is the same
        // window, not a new night.
        if last_close.as_ref() != Some(&from) {
            used += 1;
        }
        let available = (close.clone() - from.clone()).num_milliseconds() as f64 / 1000.0;
        if remaining <= available {
            let finish_at = from + duration_from_secs(remaining);
            let elapsed_seconds = (finish_at.clone() - start).num_milliseconds() as f64 / 1000.0;
            return Ok(Placement {
                finish_at,
                windows_used: used,
                elapsed_seconds,
            });
        }
        remaining -= available;
        last_close = Some(close.clone());
        cursor = close;
    }
    Err(ScheduleError::NeverOpen)
}

fn duration_from_secs(s: f64) -> ChronoDuration {
    ChronoDuration::milliseconds((s * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn at(s: &str) -> DateTime<Utc> {
        parse_local_time(s, &Utc, Utc::now()).unwrap()
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
    fn no_windows_is_plain_addition() {
        let p = place(at("2026-01-01 00:00"), &[], 3600.0).unwrap();
        assert_eq!(p.finish_at, at("2026-01-01 01:00"));
        assert_eq!(p.windows_used, 1);
    }

    #[test]
    fn seventeen_hours_over_eight_hour_nights_ends_on_the_third_night() {
        let w: Window = "23:00-07:00".parse().unwrap();
        let p = place(at("2026-01-01 23:00"), &[w], 17.4 * 3600.0).unwrap();
        assert_eq!(p.windows_used, 3);
        assert_eq!(p.finish_at, at("2026-01-04 00:24"));
    }

    #[test]
    fn starting_inside_or_before_a_window() {
        let w: Window = "23:00-07:00".parse().unwrap();
        // Starting at 06:00 leaves one hour of last night's window.
        let p = place(at("2026-01-02 06:00"), &[w], 2.0 * 3600.0).unwrap();
        assert_eq!(p.finish_at, at("2026-01-03 00:00"));
        assert_eq!(p.windows_used, 2);
        // Starting at noon waits for the evening.
        let p = place(at("2026-01-02 12:00"), &[w], 3600.0).unwrap();
        assert_eq!(p.finish_at, at("2026-01-03 00:00"));
        assert_eq!(p.windows_used, 1);
        assert_eq!(p.elapsed_seconds, 12.0 * 3600.0);
    }

    #[test]
    fn overlapping_windows_merge() {
        let a: Window = "22:00-02:00".parse().unwrap();
        let b: Window = "01:00-06:00".parse().unwrap();
        let p = place(at("2026-01-01 22:00"), &[a, b], 8.0 * 3600.0).unwrap();
        assert_eq!(p.finish_at, at("2026-01-02 06:00"));
        assert_eq!(p.windows_used, 1);
    }

    #[test]
    fn long_jobs_span_many_windows() {
        let w: Window = "01:00-02:00".parse().unwrap();
        let p = place(at("2026-01-01 00:00"), &[w], 100.0 * 3600.0).unwrap();
        assert_eq!(p.windows_used, 100);
        assert_eq!(p.finish_at, at("2026-04-10 02:00"));
    }
}
