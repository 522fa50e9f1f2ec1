//! The index of a published file: what a client needs to find which of its new file's chunks
//! the server already has, and what the server needs to tell that the base is still the file
//! the index describes.
//!
//! ```text
//! magic "UPLDIDX\n", version 1 (u8)
//! chunk sizes min, avg, max (varints)
//! the file's length (varint), its SHA-256 (32 bytes)
//! its identity on the server: size, mtime ns (i64 LE), inode, device (varints)
//! chunk count (varint), then per chunk: length (varint), BLAKE3 truncated to 16 bytes
//! ```
//!
//! About 18 bytes per chunk: 3.9 MB for a 1 GiB file at 4 KiB chunks. Decoding refuses
//! anything inconsistent (chunk lengths outside the sizes or not adding up to the length, more
//! chunks than the length allows, trailing bytes) before it allocates for it.

use super::chunker::{Chunker, Params};
use super::{
    CHUNK_HASH_LEN, ChunkHash, FormatError, chunk_hash, read_exact, read_preamble, read_varint,
    write_varint,
};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"UPLDIDX\n";
const VERSION: u8 = 1;
const WHAT: &str = "a chunk index";

/// A file's identity as the server's file system reports it: when it holds, the file is the
/// one that was indexed (any write moves the modification time; a replacement, the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileIdentity {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub dev: u64,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// One chunk of the indexed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexChunk {
    pub len: u32,
    pub hash: ChunkHash,
}

/// The index of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub params: Params,
    pub length: u64,
    pub sha256: [u8; 32],
    pub identity: FileIdentity,
    pub chunks: Vec<IndexChunk>,
}

impl Index {
    /// Chunks and hashes everything `reader` produces (the file `identity` describes). With
    /// `sha256` known (recorded when the file was published), the file is not hashed again.
    pub fn build(
        reader: impl Read,
        params: Params,
        identity: FileIdentity,
        sha256: Option<[u8; 32]>,
    ) -> io::Result<Index> {
        let mut chunker = Chunker::new(reader, params);
        let mut sha = sha256.is_none().then(Sha256::new);
        let mut chunks = Vec::new();
        let mut length = 0u64;
        while let Some(data) = chunker.next_chunk()? {
            if let Some(sha) = sha.as_mut() {
                sha.update(data);
            }
            length += data.len() as u64;
            chunks.push(IndexChunk {
                len: data.len() as u32,
                hash: chunk_hash(data),
            });
        }
        if length != identity.size {
            return Err(io::Error::other(format!(
                "the file has {length} bytes, its identity says {}: it changed while indexed",
                identity.size
            )));
        }
        let sha256 = match sha {
            Some(sha) => sha.finalize().into(),
            None => sha256.expect("given when not computed"),
        };
        Ok(Index {
            params,
            length,
            sha256,
            identity,
            chunks,
        })
    }

    pub fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&[VERSION])?;
        for v in [self.params.min, self.params.avg, self.params.max] {
            write_varint(w, u64::from(v))?;
        }
        write_varint(w, self.length)?;
        w.write_all(&self.sha256)?;
        write_varint(w, self.identity.size)?;
        w.write_all(&self.identity.mtime_ns.to_le_bytes())?;
        write_varint(w, self.identity.inode)?;
        write_varint(w, self.identity.dev)?;
        write_varint(w, self.chunks.len() as u64)?;
        for c in &self.chunks {
            write_varint(w, u64::from(c.len))?;
            w.write_all(&c.hash)?;
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.chunks.len() * (CHUNK_HASH_LEN + 3));
        self.encode(&mut out).expect("writing to a Vec");
        out
    }

    /// Decodes a whole index; anything after its last chunk is refused.
    pub fn decode(mut bytes: &[u8]) -> Result<Index, FormatError> {
        let r = &mut bytes;
        read_preamble(r, MAGIC, VERSION, WHAT)?;
        let at = "the chunk sizes";
        let params = Params::checked(
            read_varint(r, at)?,
            read_varint(r, at)?,
            read_varint(r, at)?,
        )?;
        let length = read_varint(r, "the length")?;
        let mut sha256 = [0u8; 32];
        read_exact(r, &mut sha256, "the SHA-256")?;
        let size = read_varint(r, "the identity")?;
        let mut mtime = [0u8; 8];
        read_exact(r, &mut mtime, "the identity")?;
        let identity = FileIdentity {
            size,
            mtime_ns: i64::from_le_bytes(mtime),
            inode: read_varint(r, "the identity")?,
            dev: read_varint(r, "the identity")?,
        };
        let count = read_varint(r, "the chunk count")?;
        // Every chunk but the last has at least `min` bytes, and every chunk takes at least
        // 17 bytes here: a count beyond either is a lie, refused before allocating for it.
        let most = length
            .div_ceil(u64::from(params.min))
            .max(u64::from(length > 0));
        if count > most || count > (r.len() / (CHUNK_HASH_LEN + 1)) as u64 {
            return Err(FormatError::Invalid(format!(
                "{count} chunks cannot make a file of {length} bytes in an index of this size"
            )));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut total = 0u64;
        for _ in 0..count {
            let len = read_varint(r, "a chunk")?;
            if len == 0 || len > u64::from(params.max) {
                return Err(FormatError::Invalid(format!(
                    "a chunk of {len} bytes, outside 1..={}",
                    params.max
                )));
            }
            let mut hash = [0u8; CHUNK_HASH_LEN];
            read_exact(r, &mut hash, "a chunk")?;
            total += len;
            chunks.push(IndexChunk {
                len: len as u32,
                hash,
            });
        }
        if total != length {
            return Err(FormatError::Invalid(format!(
                "the chunks add up to {total} bytes, the file has {length}"
            )));
        }
        if !r.is_empty() {
            return Err(FormatError::Invalid(format!(
                "{} bytes after the last chunk",
                r.len()
            )));
        }
        Ok(Index {
            params,
            length,
            sha256,
            identity,
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::chunker::tests::noise;

    fn sample() -> (Vec<u8>, Index) {
        let data = noise(7, 200_000);
        let identity = FileIdentity {
            size: data.len() as u64,
            mtime_ns: -5,
            inode: 42,
            dev: 7,
        };
        let index = Index::build(&data[..], Params::DEFAULT, identity, None).unwrap();
        (data, index)
    }

    #[test]
    fn an_index_round_trips_and_knows_its_file() {
        let (data, index) = sample();
        assert_eq!(index.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        assert!(index.chunks.len() > 5);
        let bytes = index.to_bytes();
        assert!(
            bytes.len() < 64 + index.chunks.len() * 20,
            "{} bytes",
            bytes.len()
        );
        assert_eq!(Index::decode(&bytes).unwrap(), index);
        // A known SHA-256 is trusted, not recomputed.
        let known =
            Index::build(&data[..], Params::DEFAULT, index.identity, Some([9; 32])).unwrap();
        assert_eq!(known.sha256, [9; 32]);
        // A file that is not the size its identity says changed while indexed.
        let wrong = FileIdentity {
            size: 1,
            ..index.identity
        };
        assert!(Index::build(&data[..], Params::DEFAULT, wrong, None).is_err());
    }

    #[test]
    fn hostile_indexes_are_refused_with_a_reason() {
        let (_, index) = sample();
        let bytes = index.to_bytes();
        // Every truncation.
        for cut in 0..bytes.len() {
            assert!(Index::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Trailing bytes, a wrong magic, a future version.
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(Index::decode(&long), Err(FormatError::Invalid(_))));
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert!(matches!(
            Index::decode(&magic),
            Err(FormatError::Magic { .. })
        ));
        let mut version = bytes.clone();
        version[8] = 9;
        assert!(matches!(
            Index::decode(&version),
            Err(FormatError::Version { found: 9, .. })
        ));
        // A huge chunk count is refused before anything is allocated for it.
        let mut huge = Vec::new();
        let lying = Index {
            chunks: Vec::new(),
            length: u64::MAX / 2,
            ..index.clone()
        };
        lying.encode(&mut huge).unwrap();
        huge.pop(); // the count 0
        write_varint(&mut huge, u64::MAX / 4).unwrap();
        assert!(matches!(Index::decode(&huge), Err(FormatError::Invalid(_))));
        // Chunks that do not add up to the length.
        let short = Index {
            length: index.length + 1,
            ..index.clone()
        };
        assert!(Index::decode(&short.to_bytes()).is_err());
        // A chunk longer than the maximum.
        let mut big = index.clone();
        big.chunks[0].len = big.params.max + 2;
        big.length += u64::from(big.params.max + 2) - u64::from(index.chunks[0].len);
        assert!(Index::decode(&big.to_bytes()).is_err());
    }
}
