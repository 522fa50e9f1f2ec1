//! Chunk sizing, in one place: how many bytes the next PATCH carries, for `upload send`, for
//! each transfer of `upload run` and for the planner (`upload estimate`, the queue's outlook).
//!
//! A chunk should take about [`CHUNK_SECONDS`] on the wire at the rate the transfer is allowed:
//! long enough that per-request overhead is small, short enough that an outage loses little (a
//! fixed 64 MiB chunk on a 128 kbit/s link meant one outage threw away up to 70 minutes of
//! sending; measured by bench_link.py: a 60 s cut re-sent the whole 2 MiB file). The allowed
//! rate is the throttle's current rate when the transfer is limited (a `--limit`, its share of
//! a run's budget, which the scheduler changes as transfers come and go), else the confirmed
//! rate, which starts unknown: then chunks start at [`FIRST_CHUNK`] and at most quadruple.
//!
//! The largest chunk, `CHUNK_MAX`, is what a fast link sends in those 20 s (256 MiB: 21 s at
//! 100 Mbit/s), not less: every chunk ends in a turnaround (the client waits for the server to
//! read, verify and commit what is still in its socket buffer, then the server waits for the
//! next request), and on loopback each one cost about 12 ms of a 1 GiB upload's 1.8 s. Measured
//! (1 GiB from /dev/shm, fresh server per case, 3-4 interleaved rounds, quiet machine), against
//! curl's PATCH with `openssl dgst -sha256` beside it: 64 MiB chunks reaching it by quadrupling
//! 0.86x; by doubling 0.86x; 128 MiB 0.90x; 256 MiB 0.95x; 512 MiB 0.95x.
//!
//! Unlimited, chunks grow fourfold from 256 KiB, planned so; the next chunk is read and hashed
//! (pass one, see `read_ahead`) while this one is on the wire, and where that read is behind
//! the chunk is cut to where it has got, at least half the plan ([`Chunking::shortest`]).
//! Waiting for it instead (chunks doubling) left the server idle at every turnaround, up to
//! 67 ms before the first 256 MiB chunk of a 1 GiB upload over loopback.
//!
//! An S3 multipart upload cuts the file in parts of one size, chosen when the upload is
//! created and kept to its end ([`part_size`]): at least 5 MiB (S3's minimum for all parts but
//! the last), at most 10 000 of them, otherwise the chunk the rate asks for. Each chunk is
//! then exactly one part ([`Chunking::Parts`]), never shortened (not even before a pause), so
//! a part's number follows from its offset. At 128 kbit/s a 5 MiB part takes 5.5 minutes, the
//! price of S3's minimum: an outage re-sends at most that.

use crate::units::Rate;

/// Seconds of link time a chunk should take.
pub const CHUNK_SECONDS: f64 = 20.0;
const CHUNK_GRAIN: u64 = 64 * 1024;
const CHUNK_MIN: u64 = 256 * 1024;
const CHUNK_MAX: u64 = 256 * 1024 * 1024;

/// The smallest chunk: a zero-byte PATCH would never move the offset.
pub const MIN_CHUNK: u64 = 1;

/// The first chunk of a transfer whose speed is not known yet: 16 s at 128 kbit/s, a
/// millisecond on loopback; the next ones follow the measured rate.
pub const FIRST_CHUNK: u64 = 256 * 1024;

/// The chunk size for a rate: about [`CHUNK_SECONDS`] on the wire, in 64 KiB grains, between
/// 256 KiB and 256 MiB; an unlimited rate gets the largest.
pub fn chunk_size_for(rate: Option<Rate>) -> u64 {
    match rate {
        None => CHUNK_MAX,
        Some(r) => {
            let bytes = (r.bytes_per_second() * CHUNK_SECONDS) as u64;
            let grains = bytes.div_ceil(CHUNK_GRAIN).max(1);
            (grains * CHUNK_GRAIN).clamp(CHUNK_MIN, CHUNK_MAX)
        }
    }
}

/// How a transfer's chunks are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Given (`--chunk`): every chunk has this size.
    Fixed(u64),
    /// About [`CHUNK_SECONDS`] at the rate the transfer is allowed.
    FollowRate,
    /// Parts of this size, set by the destination (S3 multipart): never shortened.
    Parts(u64),
}

impl Chunking {
    /// `--chunk`, if given.
    pub fn from_flag(chunk: Option<u64>) -> Chunking {
        chunk.map_or(Chunking::FollowRate, Chunking::Fixed)
    }

    /// The chunk to plan with for a transfer expected to move at `rate`.
    pub fn planned(self, rate: Option<Rate>) -> u64 {
        match self {
            Chunking::Fixed(n) | Chunking::Parts(n) => n.max(MIN_CHUNK),
            Chunking::FollowRate => chunk_size_for(rate),
        }
    }

    /// The shortest a chunk planned at `len` bytes may be cut to when its read-ahead is
    /// behind (see `read_ahead`): half, for chunks that follow the rate (one turnaround more
    /// costs less than a server left waiting); a given chunk or an S3 part is never cut.
    pub fn shortest(self, len: u64) -> u64 {
        match self {
            Chunking::FollowRate => len.div_ceil(2),
            Chunking::Fixed(_) | Chunking::Parts(_) => len,
        }
    }

    /// The next chunk, after one of `last` bytes, for a transfer its throttle holds to
    /// `allowed` now (`None`: unlimited) that the server confirmed at `confirmed` lately.
    pub fn next(self, allowed: Option<Rate>, confirmed: Option<Rate>, last: u64) -> u64 {
        match (self, allowed, confirmed) {
            (Chunking::Fixed(n) | Chunking::Parts(n), _, _) => n.max(MIN_CHUNK),
            (Chunking::FollowRate, Some(allowed), _) => chunk_size_for(Some(allowed)),
            (Chunking::FollowRate, None, None) => FIRST_CHUNK,
            // At most four times the last: a rate measured over one small chunk is a rough
            // guess. The read-ahead hashes four times the bytes while the last one is sent
            // only on a fast link, where it may cut the chunk to half (`shortest`).
            (Chunking::FollowRate, None, Some(confirmed)) => {
                chunk_size_for(Some(confirmed)).min(last.max(FIRST_CHUNK) * 4)
            }
        }
    }
}

/// The largest part planned from the rate: parts stayed at 64 MiB when tus chunks grew to
/// 256 MiB, since a part is one S3 request whatever its size, resuming re-sends a part
/// whole, and the S3 figures in README were measured with it.
pub const PART_PLANNED_MAX: u64 = 64 * 1024 * 1024;

/// The part size of an S3 multipart upload of `size` bytes planned with chunks of `planned`
/// bytes: the planned chunk in whole MiB, at most [`PART_PLANNED_MAX`], raised to S3's 5 MiB
/// minimum and to what keeps the file within 10 000 parts, at most 5 GiB.
pub fn part_size(size: u64, planned: u64) -> u64 {
    use crate::s3::{MAX_PART, MAX_PARTS, MIN_PART};
    const MIB: u64 = 1024 * 1024;
    let for_count = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    let planned = planned.min(PART_PLANNED_MAX).div_ceil(MIB) * MIB;
    planned.max(for_count).clamp(MIN_PART, MAX_PART)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(bps: f64) -> Rate {
        Rate::from_bits_per_second(bps).unwrap()
    }

    #[test]
    fn chunk_sizes_follow_the_rate() {
        // 128 kbit/s: 16 000 B/s for 20 s = 320 000 B, rounded up to 64 KiB grains.
        assert_eq!(chunk_size_for(Some(rate(128_000.0))), 327_680);
        assert_eq!(chunk_size_for(Some(rate(8_000.0))), CHUNK_MIN);
        assert_eq!(chunk_size_for(Some(rate(1e10))), CHUNK_MAX);
        assert_eq!(chunk_size_for(None), CHUNK_MAX);
    }

    #[test]
    fn chunks_follow_the_allowed_rate_then_the_confirmed_one() {
        let follow = Chunking::FollowRate;
        // A run's budget moves the share: the next chunk follows it at once.
        assert_eq!(follow.next(Some(rate(128_000.0)), None, 0), 327_680);
        assert_eq!(
            follow.next(Some(rate(1_024_000.0)), Some(rate(128_000.0)), 327_680),
            chunk_size_for(Some(rate(1_024_000.0)))
        );
        // Unlimited: small first, then the confirmed rate, at most four times the last.
        assert_eq!(follow.next(None, None, 0), FIRST_CHUNK);
        assert_eq!(
            follow.next(None, Some(rate(1e10)), FIRST_CHUNK),
            4 * FIRST_CHUNK
        );
        // Cut where its read-ahead is behind: half of a chunk that follows the rate, never a
        // given one or a part.
        assert_eq!(follow.shortest(4 * FIRST_CHUNK), 2 * FIRST_CHUNK);
        assert_eq!(Chunking::Fixed(1000).shortest(1000), 1000);
        assert_eq!(Chunking::Parts(5 << 20).shortest(5 << 20), 5 << 20);
        // Given: always the same.
        let fixed = Chunking::Fixed(64 * 1024);
        assert_eq!(
            fixed.next(Some(rate(1e10)), Some(rate(8_000.0)), 1),
            64 * 1024
        );
        assert_eq!(Chunking::Fixed(0).next(None, None, 0), MIN_CHUNK);
    }

    #[test]
    fn parts_keep_within_s3s_limits() {
        const MIB: u64 = 1024 * 1024;
        // 128 kbit/s asks for 320 KiB: S3's minimum wins.
        assert_eq!(
            part_size(GIB, chunk_size_for(Some(rate(128_000.0)))),
            5 * MIB
        );
        // Unlimited: the largest chunk.
        assert_eq!(part_size(GIB, chunk_size_for(None)), 64 * MIB);
        // 100 GiB in 5 MiB parts would be 20 480 parts: 11 MiB keeps it within 10 000.
        assert_eq!(part_size(100 * GIB, 5 * MIB), 11 * MIB);
        assert!(100 * GIB / part_size(100 * GIB, 5 * MIB) < 10_000);
        // 5 TiB, S3's largest object: 525 MiB parts.
        assert_eq!(part_size(5 * 1024 * GIB, MIB), 525 * MIB);
        assert_eq!(part_size(1, 1), 5 * MIB);
        // A part is never shortened.
        assert_eq!(
            Chunking::Parts(5 * MIB).next(Some(rate(8_000.0)), None, 0),
            5 * MIB
        );
    }

    const GIB: u64 = 1024 * 1024 * 1024;
}
