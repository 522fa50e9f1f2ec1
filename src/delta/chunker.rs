//! Content-defined chunking: FastCDC (the 2020 paper's version, the `fastcdc` crate's `v2020`
//! cut function, normalization level 1), streamed from any reader with one fixed buffer.
//!
//! Boundaries depend only on the bytes around them, so an insertion or a removal in the middle
//! of a file moves the boundaries near it and no others: a rebuilt squashfs, whose blocks are
//! packed end to end and shift by every changed file, still shares most chunks with the old
//! one (fixed-size blocks share none, as measured in issue 13).
//!
//! Chunk sizes ([`Params::DEFAULT`]): minimum 1 KiB, average 4 KiB, maximum 16 KiB, chosen
//! by measurement on the live-ISO-like pairs of `scripts/rc_pair.py` (a 256 MiB tree in an
//! xz squashfs in an ISO; RC2 with a small and a larger change), with `cargo bench --bench
//! delta` (`UPLOAD_DELTA_PAIR=OLD:NEW`, minimum avg/4, maximum 4 avg):
//!
//! | average | small change: sent (rsync 1 866 725) | larger change: sent (rsync 18 372 081) | index per 100 MB |
//! |---|---|---|---|
//! | 4 KiB | 1 716 369 (0.92x) | 17 289 978 (0.94x) | 381 KB |
//! | 8 KiB | 2 061 944 (1.10x) | 19 447 505 (1.06x) | 191 KB |
//! | 16 KiB | 2 721 149 (1.46x) | 23 769 160 (1.29x) | 98 KB |
//! | 64 KiB | 5 737 090 (3.07x) | 38 654 782 (2.10x) | 25 KB |
//!
//! 4 KiB is the only size that sends no more than rsync (issue 13's best case; its target is
//! 1.3x), for an index of about 3.9 MB per GiB. The index travels the downlink, which on the
//! links this is for is many times faster than the uplink: on 8 Mbit/s down and 128 kbit/s up,
//! 4 KiB instead of 8 KiB costs 2 s more downloading a 1 GiB image's index and saves about
//! 20 s of uplink for the small change, 2 min for the larger one. The parameters travel in
//! every index, so a server and a client never disagree about them, and a later change of
//! default only needs new indexes.
//!
//! The buffer is 1 MiB plus one maximum chunk: the scan never waits on a read for less than a
//! chunk, and memory stays flat whatever the file's size.

use super::FormatError;
use fastcdc::v2020::{MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MIN, Normalization, cut, select_masks};
use std::io::{self, Read};

/// The chunk sizes of one chunking, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Params {
    /// See the module doc for why.
    pub const DEFAULT: Params = Params {
        min: 1024,
        avg: 4 * 1024,
        max: 16 * 1024,
    };

    /// Chunk sizes FastCDC accepts, as read from an index: `min < avg < max`, even, within the
    /// crate's bounds (which also bounds every allocation made from them).
    pub fn checked(min: u64, avg: u64, max: u64) -> Result<Params, FormatError> {
        let ok = min >= MINIMUM_MIN as u64
            && min < avg
            && avg < max
            && max >= MAXIMUM_MIN as u64
            && max <= MAXIMUM_MAX as u64
            && avg >= fastcdc::v2020::AVERAGE_MIN as u64
            && [min, avg, max].iter().all(|v| v % 2 == 0);
        if !ok {
            return Err(FormatError::Invalid(format!(
                "chunk sizes {min}/{avg}/{max} are not ones FastCDC can use"
            )));
        }
        Ok(Params {
            min: min as u32,
            avg: avg as u32,
            max: max as u32,
        })
    }
}

/// Bytes read ahead of the scan, beyond one maximum chunk.
const READ_AHEAD: usize = 1 << 20;

/// Cuts what `reader` produces into content-defined chunks, in order.
pub struct Chunker<R> {
    reader: R,
    params: Params,
    masks: (u64, u64),
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, params: Params) -> Self {
        Chunker {
            reader,
            params,
            masks: select_masks(params.avg as usize, Normalization::Level1),
            buf: vec![0; READ_AHEAD + params.max as usize],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// The next chunk, or `None` at the end. A chunk is only cut with a maximum chunk's worth
    /// of bytes in view (or at the end of the input), so the boundaries do not depend on how
    /// the reader happens to split its reads.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        if self.end - self.start < self.params.max as usize && !self.eof {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            while self.end < self.buf.len() {
                match self.reader.read(&mut self.buf[self.end..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if self.start == self.end {
            return Ok(None);
        }
        let (mask_s, mask_l) = self.masks;
        let (_, len) = cut(
            &self.buf[self.start..self.end],
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        let chunk = &self.buf[self.start..self.start + len];
        self.start += len;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no files.
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn lengths(data: &[u8], params: Params) -> Vec<usize> {
        let mut c = Chunker::new(data, params);
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().unwrap() {
            out.push(chunk.len());
        }
        out
    }

    /// A reader that hands out at most 7 bytes per read.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunks_cover_the_input_within_the_bounds() {
        let data = noise(1, 3 * READ_AHEAD + 12345);
        let p = Params::DEFAULT;
        let lens = lengths(&data, p);
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        let (last, rest) = lens.split_last().unwrap();
        assert!(
            rest.iter()
                .all(|&l| l >= p.min as usize && l <= p.max as usize)
        );
        assert!(*last <= p.max as usize);
        let avg = data.len() / lens.len();
        assert!(avg > 2 * 1024 && avg < 8 * 1024, "average {avg}");
        assert!(lengths(&[], p).is_empty());
    }

    #[test]
    fn boundaries_do_not_depend_on_how_reads_are_split() {
        let data = noise(2, 300_000);
        let mut c = Chunker::new(Dribble(&data), Params::DEFAULT);
        let mut dribbled = Vec::new();
        while let Some(chunk) = c.next_chunk().unwrap() {
            dribbled.push(chunk.len());
        }
        assert_eq!(dribbled, lengths(&data, Params::DEFAULT));
    }

    #[test]
    fn an_insertion_moves_only_nearby_boundaries() {
        let data = noise(3, 1_000_000);
        let mut edited = data[..500_000].to_vec();
        edited.extend_from_slice(b"a few inserted bytes");
        edited.extend_from_slice(&data[500_000..]);
        let hashes = |d: &[u8]| {
            let mut c = Chunker::new(d, Params::DEFAULT);
            let mut set = std::collections::HashSet::new();
            while let Some(chunk) = c.next_chunk().unwrap() {
                set.insert(super::super::chunk_hash(chunk));
            }
            set
        };
        let (old, new) = (hashes(&data), hashes(&edited));
        let shared = new.intersection(&old).count();
        assert!(shared + 3 >= old.len(), "{shared} of {} shared", old.len());
    }

    #[test]
    fn unusable_parameters_are_refused() {
        assert!(Params::checked(2048, 8192, 32768).is_ok());
        for (a, b, c) in [
            (0, 8192, 32768),
            (8192, 8192, 32768),
            (2048, 8192, 1 << 30),
            (2047, 8192, 32768),
        ] {
            assert!(Params::checked(a, b, c).is_err(), "{a}/{b}/{c}");
        }
    }
}
