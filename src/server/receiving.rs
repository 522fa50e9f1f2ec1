//! The cap on bodies received at once per token (`Config::max_uploads_per_token`).
//!
//! One token (or, without auth, everyone together) may have at most that many PATCH or
//! creation-with-upload bodies coming in at a time; the next is refused with 429 before its
//! body is read. What is counted is bodies being received right now, not uploads that exist:
//! a client that uploads many files one after another never meets the cap, a script that
//! opens a connection per file at once does. Each counted body holds a [`Receipt`] that
//! gives its place back when dropped, so every way out of a request (an answer, an error, a
//! panic) lowers the count.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bodies being received, per group (a token's index; one group without auth).
pub(crate) struct Receiving {
    max: usize,
    counts: Arc<[AtomicUsize]>,
}

/// One body being received; its place is given back on drop.
#[must_use = "the body counts only while the receipt is held"]
pub(crate) struct Receipt {
    counts: Arc<[AtomicUsize]>,
    group: usize,
}

impl Receiving {
    pub fn new(groups: usize, max: usize) -> Receiving {
        Receiving {
            max,
            counts: (0..groups.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts one more body for `group`; `None` when it already has `max`.
    pub fn start(&self, group: usize) -> Option<Receipt> {
        self.counts[group]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Receipt {
            counts: self.counts.clone(),
            group,
        })
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        self.counts[self.group].fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_per_group_and_receipts_give_back() {
        let receiving = Receiving::new(2, 2);
        let first = receiving.start(0).unwrap();
        let _second = receiving.start(0).unwrap();
        assert!(receiving.start(0).is_none());
        let _other = receiving.start(1).expect("another token has its own cap");
        drop(first);
        let _third = receiving
            .start(0)
            .expect("a dropped receipt frees its place");
        assert!(receiving.start(0).is_none());
    }
}
