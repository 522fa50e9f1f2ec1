//! Metering: the confirmed-progress rate, and the count of payload bytes this process put on
//! the wire (sent, and sent again).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-process accounting of bytes put on the wire.
#[derive(Default)]
pub(super) struct WireCount {
    pub(super) sent: AtomicU64,
    pub(super) resent: AtomicU64,
    /// The highest offset this process has sent up to.
    pub(super) high_water: AtomicU64,
}

impl WireCount {
    pub(super) fn record(&self, start: u64, len: u64) {
        let end = start + len;
        let hw = self.high_water.fetch_max(end, Ordering::Relaxed);
        let again = hw.min(end).saturating_sub(start);
        self.sent.fetch_add(len, Ordering::Relaxed);
        self.resent.fetch_add(again, Ordering::Relaxed);
    }
}

/// Confirmed-progress rate over the last minute of acknowledgements.
pub(super) struct RateMeter {
    pub(super) acks: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    pub(super) fn new(now: Instant, offset: u64) -> Self {
        let mut acks = VecDeque::new();
        acks.push_back((now, offset));
        RateMeter { acks }
    }

    pub(super) fn ack(&mut self, now: Instant, offset: u64) -> f64 {
        self.acks.push_back((now, offset));
        while self.acks.len() > 2 && now.duration_since(self.acks[1].0) > Duration::from_secs(60) {
            self.acks.pop_front();
        }
        let (t0, o0) = self.acks[0];
        let secs = now.duration_since(t0).as_secs_f64();
        if secs > 0.0 {
            offset.saturating_sub(o0) as f64 * 8.0 / secs
        } else {
            0.0
        }
    }

    /// Forget the rate across an outage, so the next figure is the link's, not the wait's.
    pub(super) fn restart(&mut self, now: Instant, offset: u64) {
        self.acks.clear();
        self.acks.push_back((now, offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_count_separates_resent_bytes() {
        let w = WireCount::default();
        w.record(0, 100);
        w.record(100, 100);
        w.record(50, 100); // 50..150 again
        w.record(150, 100); // 150..200 again, 200..250 new
        assert_eq!(w.sent.load(Ordering::Relaxed), 400);
        assert_eq!(w.resent.load(Ordering::Relaxed), 150);
    }

    #[test]
    fn rate_meter_reports_bits_per_second() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0, 0);
        let r = m.ack(t0 + Duration::from_secs(2), 32_000);
        assert!((r - 128_000.0).abs() < 1.0, "{r}");
    }
}
