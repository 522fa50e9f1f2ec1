//! Folding a run of failed attempts into a few report lines, for every rendering of the
//! engine's retry events that people read (`upload send`'s plain output, `upload run`'s log).
//!
//! While a server is down the engine tries again every half second, because a connection
//! attempt is how it notices the link is back within a second (see `send::retry_delay`). One
//! line per attempt was 19 lines in 10 s and thousands in a night, burying the one line that
//! mattered. An [`Outage`] reports the first failure, every error it has not reported yet in
//! this outage, and otherwise one reminder after an interval that doubles from
//! [`FIRST_REMINDER`] to [`MAX_REMINDER`], each with the attempt count; and, once a chunk is
//! confirmed again, how long it lasted. `--json` keeps every attempt: a program counts them.

use std::time::{Duration, Instant};

/// The first reminder that the same error goes on.
pub const FIRST_REMINDER: Duration = Duration::from_secs(10);
/// The longest gap between reminders: a night-long outage logs about 60 lines, not 60 000.
pub const MAX_REMINDER: Duration = Duration::from_secs(600);
/// Distinct errors remembered per outage: a server flapping between two errors is reported
/// twice, not at every flap, and a pathological stream of new texts cannot grow memory.
const REMEMBERED_ERRORS: usize = 8;

/// What to say about a failed attempt that is worth a line.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryReport {
    /// Attempts failed in a row so far.
    pub attempts: u32,
    /// Since the first of them.
    pub failing_for: Duration,
    /// The next attempt starts after this.
    pub delay: Duration,
    pub error: String,
}

/// The end of an outage: a chunk was confirmed again.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    pub attempts: u32,
    pub lasted: Duration,
}

/// The failures in a row of one transfer, and what of them was reported.
#[derive(Debug, Default)]
pub struct Outage {
    began: Option<Instant>,
    attempts: u32,
    last_error: String,
    reported: Vec<String>,
    next_reminder: Option<Instant>,
    reminder: Duration,
}

impl Outage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records failed attempt number `attempt` (the engine's count of failures in a row) and
    /// returns a report when this one deserves a line.
    pub fn retry(
        &mut self,
        now: Instant,
        attempt: u32,
        delay: Duration,
        error: &str,
    ) -> Option<RetryReport> {
        let began = *self.began.get_or_insert(now);
        self.attempts = attempt;
        self.last_error = error.to_string();
        let new_error = !self.reported.iter().any(|e| e == error);
        let reminder_due = self.next_reminder.is_some_and(|t| now >= t);
        if !new_error && !reminder_due {
            return None;
        }
        if new_error {
            if self.reported.len() == REMEMBERED_ERRORS {
                self.reported.remove(0);
            }
            self.reported.push(error.to_string());
        }
        self.reminder = if self.next_reminder.is_none() {
            FIRST_REMINDER
        } else if reminder_due {
            (self.reminder * 2).min(MAX_REMINDER)
        } else {
            self.reminder
        };
        self.next_reminder = Some(now + self.reminder);
        Some(self.report(now, began, delay))
    }

    /// The outage as it stands, for a status line that is redrawn in place.
    pub fn current(&self, now: Instant, delay: Duration) -> Option<RetryReport> {
        self.began.map(|began| self.report(now, began, delay))
    }

    /// A chunk was confirmed: the outage, if there was one, is over.
    pub fn recovered(&mut self, now: Instant) -> Option<Recovery> {
        let began = self.began?;
        let recovery = Recovery {
            attempts: self.attempts,
            lasted: now.saturating_duration_since(began),
        };
        *self = Outage::default();
        Some(recovery)
    }

    fn report(&self, now: Instant, began: Instant, delay: Duration) -> RetryReport {
        RetryReport {
            attempts: self.attempts,
            failing_for: now.saturating_duration_since(began),
            delay,
            error: self.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = "cannot connect to 127.0.0.1:9: Connection refused (os error 111)";

    /// The case: the server down for 10 s, an attempt every half second. It was 19
    /// lines; now the first failure and one reminder, the count in each.
    #[test]
    fn ten_seconds_of_the_same_error_make_two_lines() {
        let t0 = Instant::now();
        let mut o = Outage::new();
        let lines: Vec<RetryReport> = (1..=21)
            .filter_map(|n| {
                let at = t0 + Duration::from_millis(500) * (n - 1);
                o.retry(at, n, Duration::from_millis(500), REFUSED)
            })
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].attempts, 1);
        assert_eq!(lines[1].attempts, 21);
        assert_eq!(lines[1].failing_for, Duration::from_secs(10));
        let back = o.recovered(t0 + Duration::from_secs(11)).unwrap();
        assert_eq!(back.attempts, 21);
        assert_eq!(o.recovered(t0 + Duration::from_secs(12)), None);
    }

    /// A night at one attempt per half second: reminders double up to ten minutes apart.
    #[test]
    fn a_night_long_outage_logs_dozens_of_lines_not_thousands() {
        let t0 = Instant::now();
        let mut o = Outage::new();
        let night = 8 * 3600 * 2;
        let lines = (1..=night)
            .filter(|&n| {
                let at = t0 + Duration::from_millis(500) * (n - 1);
                o.retry(at, n, Duration::from_millis(500), REFUSED)
                    .is_some()
            })
            .count();
        assert!((40..=70).contains(&lines), "{lines} lines in a night");
    }

    /// A new error is reported at once; one already reported in this outage waits for the
    /// reminder, so a server flapping between two errors does not print every flap.
    #[test]
    fn a_new_error_is_reported_at_once_a_flapping_one_is_not() {
        let t0 = Instant::now();
        let mut o = Outage::new();
        let d = Duration::from_millis(500);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(o.retry(at(0), 1, d, REFUSED).is_some());
        assert!(o.retry(at(500), 2, d, REFUSED).is_none());
        let reset = "connection to the server failed: connection reset";
        let r = o.retry(at(1000), 3, d, reset).unwrap();
        assert_eq!((r.attempts, r.error.as_str()), (3, reset));
        assert!(o.retry(at(1500), 4, d, REFUSED).is_none());
        assert!(o.retry(at(2000), 5, d, reset).is_none());
        // The status line shows the last error whether or not it was reported.
        assert_eq!(o.current(at(2500), d).unwrap().error, reset);
        // After a recovery the same error is news again.
        o.recovered(at(3000));
        assert!(o.retry(at(3500), 1, d, REFUSED).is_some());
    }
}
