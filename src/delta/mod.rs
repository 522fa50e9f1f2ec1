//! Delta uploads: sending only what the server lacks of a file when it already holds an older
//! version of it (issue 13). Three words, as casync and desync use them:
//!
//! - A **base** is a file already published on the server, which the new file is sent against.
//!   It is only ever read.
//! - An **index** ([`index`]) is the compact description of a base: its length, SHA-256 and
//!   identity on the server, then the length and a strong hash of each of its content-defined
//!   chunks ([`chunker`]). The server makes it and serves it to a client allowed to read the
//!   base; about 18 bytes per chunk, so 3.9 MB per GiB at the chunker's 4 KiB average.
//! - A **recipe** ([`recipe`]) is what the client sends instead of the new file: runs copied
//!   from the base and literal bytes, with the new file's length and SHA-256. The client makes
//!   it in one streaming pass over the new file ([`matcher`]); the server assembles the new
//!   file from the base and the recipe, and publishes it only if its SHA-256 is the one the
//!   recipe declared.
//!
//! Everything here is pure encoding and computing over `Read`/`Write`: no network, no paths of
//! the server. Decoders take hostile input: every length is checked against what it may be
//! before anything is allocated, and every failure is a typed [`FormatError`], never a panic.

pub mod chunker;
pub mod index;
pub mod matcher;
pub mod recipe;

pub use chunker::{Chunker, Params};
pub use index::{FileIdentity, Index};
pub use matcher::{Matched, make_recipe};
pub use recipe::{Op, RecipeHeader, RecipeReader};

/// The index of a local file, as a server would make it of a published one (for
/// `upload estimate --base-file`).
pub fn index_file(path: &std::path::Path) -> std::io::Result<Index> {
    let file = std::fs::File::open(path)?;
    let identity = FileIdentity::of(&file.metadata()?);
    Index::build(
        std::io::BufReader::with_capacity(1 << 20, file),
        Params::DEFAULT,
        identity,
        None,
    )
}

/// What a recipe of the file at `path` against `index` would be, without writing it.
pub fn measure_file(
    path: &std::path::Path,
    index: &Index,
    base_name: &str,
) -> std::io::Result<Matched> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    make_recipe(
        std::io::BufReader::with_capacity(1 << 20, file),
        len,
        index,
        base_name,
        std::io::sink(),
    )
}

/// Bytes of BLAKE3 kept per chunk. 128 bits make an accidental collision between two chunks
/// of a pair of images negligible (2^-100 for a million chunks), and any collision would still
/// be caught: the assembled file's SHA-256 must be the declared one before it is published.
pub const CHUNK_HASH_LEN: usize = 16;

/// A chunk's strong hash, as the index keeps it.
pub type ChunkHash = [u8; CHUNK_HASH_LEN];

/// The strong hash of one chunk.
pub fn chunk_hash(data: &[u8]) -> ChunkHash {
    let full = blake3::hash(data);
    let mut h = [0u8; CHUNK_HASH_LEN];
    h.copy_from_slice(&full.as_bytes()[..CHUNK_HASH_LEN]);
    h
}

/// Why an index or a recipe cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not {what} (wrong magic bytes)")]
    Magic { what: &'static str },
    #[error("{what} format version {found}, this program reads version {supported}")]
    Version {
        what: &'static str,
        found: u8,
        supported: u8,
    },
    #[error("it ends early, in {at}")]
    Truncated { at: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error("reading it: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and checks the opening of an index or a recipe: its eight magic bytes, then its
/// format version. `what` names the format in the error.
pub(crate) fn read_preamble(
    r: &mut impl std::io::Read,
    magic: &[u8; 8],
    version: u8,
    what: &'static str,
) -> Result<(), FormatError> {
    let mut found = [0u8; 8];
    read_exact(r, &mut found, "the magic bytes")?;
    if &found != magic {
        return Err(FormatError::Magic { what });
    }
    let found = read_u8(r, "the version")?;
    if found != version {
        return Err(FormatError::Version {
            what,
            found,
            supported: version,
        });
    }
    Ok(())
}

/// Reads one unsigned LEB128 varint; refuses more than 10 bytes or a value past `u64`.
pub(crate) fn read_varint(
    r: &mut impl std::io::Read,
    at: &'static str,
) -> Result<u64, FormatError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let b = read_u8(r, at)?;
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err(FormatError::Invalid(format!(
                "a number in {at} is too large"
            )));
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(FormatError::Invalid(format!(
        "a number in {at} is too long"
    )))
}

pub(crate) fn write_varint(w: &mut impl std::io::Write, mut v: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = b;
            n += 1;
            break;
        }
        buf[n] = b | 0x80;
        n += 1;
    }
    w.write_all(&buf[..n])
}

pub(crate) fn read_u8(r: &mut impl std::io::Read, at: &'static str) -> Result<u8, FormatError> {
    let mut b = [0u8; 1];
    read_exact(r, &mut b, at)?;
    Ok(b[0])
}

pub(crate) fn read_exact(
    r: &mut impl std::io::Read,
    buf: &mut [u8],
    at: &'static str,
) -> Result<(), FormatError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FormatError::Truncated { at },
        _ => FormatError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_refuse_overlong() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            write_varint(&mut buf, v).unwrap();
            assert_eq!(read_varint(&mut &buf[..], "t").unwrap(), v);
        }
        let overlong = [0xffu8; 11];
        assert!(read_varint(&mut &overlong[..], "t").is_err());
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(read_varint(&mut &too_big[..], "t").is_err());
        assert!(matches!(
            read_varint(&mut &[0x80u8][..], "t"),
            Err(FormatError::Truncated { .. })
        ));
    }
}
