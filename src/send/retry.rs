//! The retry policy: how long to wait before the next attempt after a failure, from the
//! error's classification and how long the server has been failing.

use crate::client::{ClientError, PipeFailure, Retry};
use std::time::{Duration, Instant};

/// Exponential backoff with jitter: 1, 2, 4 ... s, capped at 60 s (10 min when the server
/// said it is out of space: that will not change in a minute).
pub(super) fn backoff(failures: u32, retry: Retry) -> Duration {
    let cap = if retry == Retry::Persistent {
        600.0
    } else {
        60.0
    };
    let base = (2f64.powi(failures.saturating_sub(1).min(16) as i32)).min(cap);
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    Duration::from_secs_f64((base * jitter).min(cap))
}

/// How long to wait before the next attempt after `e`, the `failures`-th in a row, with the
/// server unreachable or failing for `down_for`.
pub(super) fn retry_delay(e: &ClientError, failures: u32, down_for: Duration) -> Duration {
    /// While a link is down, a connection attempt is the probe that notices it is back; one
    /// every second or so costs a SYN and gets data flowing within seconds of the return
    /// (TCP's own backoff would leave a dead connection idle for up to a minute).
    const PROBE_EVERY: f64 = 0.5;
    const PROBE_FOR: Duration = Duration::from_secs(600);
    let jitter = || rand::random::<f64>() * 0.5 + 0.75;
    match e {
        // A damaged chunk or a moved offset is not the link being down: retry now.
        ClientError::ChecksumMismatch
        | ClientError::OffsetMismatch { .. }
        | ClientError::Vanished(_)
            if failures <= 3 =>
        {
            Duration::ZERO
        }
        // The server said when to come back; jitter so a crowd does not return at once.
        ClientError::TooManyUploads {
            retry_after: Some(after),
        } => after.mul_f64(jitter()).min(Duration::from_secs(600)),
        // The connection died silently: reconnect at once, the attempt probes the link.
        ClientError::Stalled(_) | ClientError::Http(_) if failures == 1 => Duration::ZERO,
        // An ssh session that could not reach the host or died with the link is the same
        // probe, one level up.
        ClientError::Connect { .. }
        | ClientError::Stalled(_)
        | ClientError::Http(_)
        | ClientError::Pipe {
            kind: PipeFailure::Unreachable | PipeFailure::Closed,
            ..
        } if down_for < PROBE_FOR => Duration::from_secs_f64(PROBE_EVERY * jitter()),
        _ => backoff(failures, e.retry()),
    }
}

/// What to do after a failed attempt, from the error's classification and the run of failures
/// it ends.
#[derive(Debug, PartialEq)]
pub(super) enum Decision {
    /// No attempt can help (a bad token, a refused size): stop and say why.
    Stop,
    /// Failing for longer than the user allows (`--max-retries`, `--give-up-after`).
    GiveUp { attempts: u32 },
    /// Try again after `delay`; this is the `attempt`-th failure in a row.
    Retry { attempt: u32, delay: Duration },
}

/// A run of failed attempts: how many in a row, since when, and the limits the user set.
pub(super) struct Failing {
    max_retries: Option<u32>,
    give_up_after: Option<Duration>,
    attempts: u32,
    since: Option<Instant>,
}

impl Failing {
    pub(super) fn new(max_retries: Option<u32>, give_up_after: Option<Duration>) -> Self {
        Failing {
            max_retries,
            give_up_after,
            attempts: 0,
            since: None,
        }
    }

    /// A chunk was acknowledged: the server works again.
    pub(super) fn clear(&mut self) {
        self.attempts = 0;
        self.since = None;
    }

    /// Counts the failure `e` and decides what comes next.
    pub(super) fn decide(&mut self, e: &ClientError) -> Decision {
        if e.retry() == Retry::Permanent {
            return Decision::Stop;
        }
        self.attempts += 1;
        let down_for = self.since.get_or_insert_with(Instant::now).elapsed();
        if self.max_retries.is_some_and(|max| self.attempts > max)
            || self.give_up_after.is_some_and(|limit| down_for > limit)
        {
            return Decision::GiveUp {
                attempts: self.attempts,
            };
        }
        Decision::Retry {
            attempt: self.attempts,
            delay: retry_delay(e, self.attempts, down_for),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_link_is_probed_often_then_less() {
        let refused = ClientError::Connect {
            addr: "x:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let early = retry_delay(&refused, 20, Duration::from_secs(30));
        assert!(early <= Duration::from_secs(1), "{early:?}");
        let late = retry_delay(&refused, 20, Duration::from_secs(3600));
        assert!(late >= Duration::from_secs(30), "{late:?}");
        // ssh's own "cannot reach" and "the session died" probe the link as often.
        for kind in [PipeFailure::Unreachable, PipeFailure::Closed] {
            let ssh = ClientError::Pipe {
                kind,
                message: String::new(),
            };
            let early = retry_delay(&ssh, 20, Duration::from_secs(30));
            assert!(early <= Duration::from_secs(1), "{kind:?}: {early:?}");
        }
        let busy = ClientError::TooManyUploads {
            retry_after: Some(Duration::from_secs(5)),
        };
        let d = retry_delay(&busy, 1, Duration::ZERO);
        assert!(
            d >= Duration::from_millis(3750) && d <= Duration::from_millis(6250),
            "{d:?}"
        );
        let stalled = ClientError::Stalled(Duration::from_secs(10));
        assert_eq!(retry_delay(&stalled, 1, Duration::ZERO), Duration::ZERO);
        let server = ClientError::Server {
            status: http::StatusCode::BAD_GATEWAY,
            body: String::new(),
        };
        assert!(retry_delay(&server, 4, Duration::from_secs(10)) >= Duration::from_secs(6));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let d1 = backoff(1, Retry::Temporary).as_secs_f64();
        assert!((0.75..=1.25).contains(&d1), "{d1}");
        let d5 = backoff(5, Retry::Temporary).as_secs_f64();
        assert!((12.0..=20.0).contains(&d5), "{d5}");
        assert!(backoff(30, Retry::Temporary) <= Duration::from_secs(60));
        assert!(backoff(30, Retry::Persistent) > Duration::from_secs(60));
    }

    #[test]
    fn a_run_of_failures_is_counted_until_it_ends_or_exceeds_the_limit() {
        let mut f = Failing::new(Some(2), None);
        let stalled = ClientError::Stalled(Duration::from_secs(10));
        assert_eq!(
            f.decide(&stalled),
            Decision::Retry {
                attempt: 1,
                delay: Duration::ZERO
            }
        );
        assert!(matches!(
            f.decide(&stalled),
            Decision::Retry { attempt: 2, .. }
        ));
        assert_eq!(f.decide(&stalled), Decision::GiveUp { attempts: 3 });
        f.clear();
        assert!(matches!(
            f.decide(&stalled),
            Decision::Retry { attempt: 1, .. }
        ));
        let refused = ClientError::TooLarge("the server accepts at most 1 byte".into());
        assert_eq!(f.decide(&refused), Decision::Stop);
    }
}
