//! The running SHA-256 of an upload, as a value that can be saved and resumed: the eight state
//! words, the length hashed so far and the (< 64) bytes not yet in a block.
//!
//! Why not `sha2::Sha256`: its state cannot be read out, so after a restart the only way back
//! to it is to hash the upload's bytes again. An object store cannot even do that for an
//! unfinished multipart upload (S3 does not read back the parts of one), so the state is saved
//! with each record instead ([`ShaState`] in `store::Info`), and an upload resumes on any
//! server instance without reading a byte. The block function is sha2's own
//! (`sha2::compress256`, SHA-NI where the CPU has it), handed whole runs of blocks in place as
//! `Sha256` does, so hashing costs the same (measured in the test
//! `resuming_costs_nothing_in_speed`).

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::{GenericArray, typenum::U64};

const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunningSha {
    state: [u32; 8],
    /// Bytes hashed, the buffered ones included.
    len: u64,
    buf: [u8; 64],
    buffered: usize,
}

/// A [`RunningSha`] as saved in a record: hex, so a person can read it next to the offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShaState {
    /// Bytes hashed.
    pub len: u64,
    /// The eight state words, big-endian, 64 hex digits.
    pub h: String,
    /// The bytes after the last whole block, hex (fewer than 64 bytes).
    pub tail: String,
}

impl Default for RunningSha {
    fn default() -> Self {
        RunningSha::new()
    }
}

impl RunningSha {
    pub fn new() -> RunningSha {
        RunningSha {
            state: INITIAL,
            len: 0,
            buf: [0; 64],
            buffered: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buffered > 0 {
            let take = (64 - self.buffered).min(data.len());
            self.buf[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < 64 {
                return;
            }
            sha2::compress256(
                &mut self.state,
                &[GenericArray::clone_from_slice(&self.buf)],
            );
            self.buffered = 0;
        }
        let whole = data.len() / 64 * 64;
        if whole > 0 {
            compress_blocks(&mut self.state, &data[..whole]);
        }
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.buffered].copy_from_slice(&self.buf[..self.buffered]);
        tail[self.buffered] = 0x80;
        let end = if self.buffered < 56 { 64 } else { 128 };
        tail[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        compress_blocks(&mut self.state, &tail[..end]);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    pub fn save(&self) -> ShaState {
        let mut h = [0u8; 32];
        for (o, w) in h.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        ShaState {
            len: self.len,
            h: hex::encode(h),
            tail: hex::encode(&self.buf[..self.buffered]),
        }
    }

    /// `None` when the saved state is damaged (then the caller hashes the bytes again, or
    /// refuses).
    pub fn resume(saved: &ShaState) -> Option<RunningSha> {
        let mut h = [0u8; 32];
        hex::decode_to_slice(&saved.h, &mut h).ok()?;
        let tail = hex::decode(&saved.tail).ok()?;
        if tail.len() >= 64 || saved.len % 64 != tail.len() as u64 {
            return None;
        }
        let mut state = [0u32; 8];
        for (w, c) in state.iter_mut().zip(h.chunks_exact(4)) {
            *w = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        let mut buf = [0u8; 64];
        buf[..tail.len()].copy_from_slice(&tail);
        Some(RunningSha {
            state,
            len: saved.len,
            buf,
            buffered: tail.len(),
        })
    }
}

/// Runs the block function over `data`, a whole number of blocks, in one call: viewed in
/// place as blocks, never copied.
fn compress_blocks(state: &mut [u32; 8], data: &[u8]) {
    assert_eq!(data.len() % 64, 0, "whole blocks only");
    // SAFETY: `GenericArray<u8, U64>` is `#[repr(transparent)]` over `[u8; 64]` (size 64,
    // alignment 1), and `data` holds exactly `data.len() / 64` of them, borrowed as long as
    // the slice made from it.
    let blocks: &[GenericArray<u8, U64>] =
        unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), data.len() / 64) };
    sha2::compress256(state, blocks);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use sha2::{Digest, Sha256};

    #[test]
    fn matches_sha2_on_random_splits_saved_and_resumed() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for round in 0..200 {
            let len = match round {
                0 => 0,
                1 => 55,
                2 => 56,
                3 => 64,
                _ => rng.random_range(0..5000),
            };
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let mut ours = RunningSha::new();
            let mut at = 0;
            while at < data.len() {
                let n = rng.random_range(0..=(data.len() - at).min(300));
                ours.update(&data[at..at + n]);
                at += n;
                if rng.random_bool(0.3) {
                    let saved = serde_json::to_string(&ours.save()).unwrap();
                    ours = RunningSha::resume(&serde_json::from_str(&saved).unwrap()).unwrap();
                }
            }
            assert_eq!(ours.save().len, len as u64);
            let theirs: [u8; 32] = Sha256::digest(&data).into();
            assert_eq!(ours.finalize(), theirs, "length {len}");
        }
    }

    #[test]
    fn a_damaged_state_is_not_resumed() {
        let mut sha = RunningSha::new();
        sha.update(b"hello");
        let mut saved = sha.save();
        saved.len = 6;
        assert!(RunningSha::resume(&saved).is_none());
        let mut saved = sha.save();
        saved.h.pop();
        assert!(RunningSha::resume(&saved).is_none());
    }

    /// The loopback throughput figures depend on this: hashing 64 MiB in 256 KiB batches (as
    /// `append` hands them over) must not take longer than with `Sha256`. Best of three each,
    /// interleaved so a machine shared with other work slows both alike, with a 25 % margin.
    #[test]
    fn resuming_costs_nothing_in_speed() {
        let data = vec![7u8; 256 * 1024];
        let time = |f: &dyn Fn()| {
            let t = std::time::Instant::now();
            f();
            t.elapsed()
        };
        let ours = || {
            let mut s = RunningSha::new();
            for _ in 0..256 {
                s.update(&data);
            }
            std::hint::black_box(s.finalize());
        };
        let theirs = || {
            let mut s = Sha256::new();
            for _ in 0..256 {
                s.update(&data);
            }
            std::hint::black_box(s.finalize());
        };
        let (mut best_ours, mut best_theirs) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..3 {
            best_ours = best_ours.min(time(&ours));
            best_theirs = best_theirs.min(time(&theirs));
        }
        eprintln!("64 MiB: RunningSha {best_ours:?}, Sha256 {best_theirs:?}");
        assert!(
            best_ours.as_secs_f64() <= best_theirs.as_secs_f64() * 1.25,
            "RunningSha {best_ours:?} vs Sha256 {best_theirs:?}"
        );
    }
}
