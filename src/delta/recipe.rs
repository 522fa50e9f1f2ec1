//! The recipe: how to build the new file from the base and the bytes the base lacks.
//!
//! ```text
//! magic "UPLDRCP\n", version 1 (u8)
//! the base: its name (varint length, UTF-8, at most 1024 bytes), its index's SHA-256 (32 bytes)
//! the target's length (varint)
//! ops, each a tag byte:
//!   1 Copy     base offset (varint), length (varint): that run of the base
//!   2 Literal  length (varint), then that many bytes
//!   0 End
//! the target's SHA-256 (32 bytes), then nothing
//! ```
//!
//! The writer merges adjacent copied chunks into one run, so an unchanged stretch of the file
//! costs a few bytes whatever its length. The reader checks every op before acting on it: a
//! copy past the base's end, ops that make more (or less) than the target's length, a
//! truncated recipe or trailing bytes are refused with a typed error. Literal bytes are handed
//! over in pieces of a fixed buffer, so a recipe's size never decides an allocation.

use super::{FormatError, read_exact, read_preamble, read_u8, read_varint, write_varint};
use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"UPLDRCP\n";
const VERSION: u8 = 1;
const WHAT: &str = "a delta recipe";
/// The longest base name a recipe may carry (published names are at most 200 bytes).
const MAX_BASE_NAME: u64 = 1024;

const TAG_END: u8 = 0;
const TAG_COPY: u8 = 1;
const TAG_LITERAL: u8 = 2;

/// What a recipe says before its ops: what it is built against, and what it builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeHeader {
    /// The base's published name.
    pub base_name: String,
    /// The SHA-256 of the base, as its index gave it.
    pub base_sha256: [u8; 32],
    pub target_length: u64,
}

/// One step of building the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Copy {
        base_offset: u64,
        len: u64,
    },
    /// `len` literal bytes follow: read them with [`RecipeReader::literal`].
    Literal {
        len: u64,
    },
}

/// Writes a recipe, merging adjacent copies.
pub struct RecipeWriter<W: Write> {
    out: W,
    pending: Option<(u64, u64)>,
    written: u64,
    /// Target bytes described so far, copied and literal.
    pub copied: u64,
    pub literal: u64,
}

impl<W: Write> RecipeWriter<W> {
    pub fn new(mut out: W, header: &RecipeHeader) -> io::Result<Self> {
        let mut head = Vec::with_capacity(64 + header.base_name.len());
        head.extend_from_slice(MAGIC);
        head.push(VERSION);
        write_varint(&mut head, header.base_name.len() as u64)?;
        head.extend_from_slice(header.base_name.as_bytes());
        head.extend_from_slice(&header.base_sha256);
        write_varint(&mut head, header.target_length)?;
        out.write_all(&head)?;
        Ok(RecipeWriter {
            out,
            pending: None,
            written: head.len() as u64,
            copied: 0,
            literal: 0,
        })
    }

    /// `len` bytes of the target are the base's from `base_offset`.
    pub fn copy(&mut self, base_offset: u64, len: u64) -> io::Result<()> {
        self.copied += len;
        match &mut self.pending {
            Some((off, l)) if *off + *l == base_offset => *l += len,
            _ => {
                self.flush_copy()?;
                self.pending = Some((base_offset, len));
            }
        }
        Ok(())
    }

    /// The next bytes of the target are these.
    pub fn literal(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.flush_copy()?;
        self.literal += bytes.len() as u64;
        let mut head = Vec::with_capacity(11);
        head.push(TAG_LITERAL);
        write_varint(&mut head, bytes.len() as u64)?;
        self.emit(&head)?;
        self.emit(bytes)
    }

    /// Ends the recipe with the target's SHA-256; returns the recipe's size and the writer.
    pub fn finish(mut self, target_sha256: &[u8; 32]) -> io::Result<(u64, W)> {
        self.flush_copy()?;
        self.emit(&[TAG_END])?;
        self.emit(target_sha256)?;
        self.out.flush()?;
        Ok((self.written, self.out))
    }

    fn flush_copy(&mut self) -> io::Result<()> {
        if let Some((off, len)) = self.pending.take() {
            let mut op = Vec::with_capacity(21);
            op.push(TAG_COPY);
            write_varint(&mut op, off)?;
            write_varint(&mut op, len)?;
            self.emit(&op)?;
        }
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Reads a recipe against a base of `base_length` bytes, checking each op.
pub struct RecipeReader<R: Read> {
    input: R,
    header: RecipeHeader,
    base_length: u64,
    /// Target bytes the ops so far make.
    made: u64,
    /// Literal bytes announced and not yet read.
    literal_left: u64,
    ended: bool,
}

impl<R: Read> RecipeReader<R> {
    /// Reads the header. The base's length is asked for once its name is known
    /// ([`RecipeReader::against`]).
    pub fn open(mut input: R) -> Result<(RecipeHeader, PendingBase<R>), FormatError> {
        let r = &mut input;
        read_preamble(r, MAGIC, VERSION, WHAT)?;
        let name_len = read_varint(r, "the base's name")?;
        if name_len > MAX_BASE_NAME {
            return Err(FormatError::Invalid(format!(
                "a base name of {name_len} bytes (at most {MAX_BASE_NAME})"
            )));
        }
        let mut name = vec![0u8; name_len as usize];
        read_exact(r, &mut name, "the base's name")?;
        let base_name = String::from_utf8(name)
            .map_err(|_| FormatError::Invalid("the base's name is not UTF-8".into()))?;
        let mut base_sha256 = [0u8; 32];
        read_exact(r, &mut base_sha256, "the base's SHA-256")?;
        let target_length = read_varint(r, "the target's length")?;
        let header = RecipeHeader {
            base_name,
            base_sha256,
            target_length,
        };
        Ok((header.clone(), PendingBase { input, header }))
    }

    pub fn header(&self) -> &RecipeHeader {
        &self.header
    }

    /// The next op, or `None` after the last (then [`RecipeReader::target_sha256`]).
    pub fn next_op(&mut self) -> Result<Option<Op>, FormatError> {
        if self.literal_left > 0 {
            return Err(FormatError::Invalid(
                "the next op was asked for before a literal was read".into(),
            ));
        }
        if self.ended {
            return Ok(None);
        }
        let left = self.header.target_length - self.made;
        let op = match read_u8(&mut self.input, "an op")? {
            TAG_END => {
                if left != 0 {
                    return Err(FormatError::Invalid(format!(
                        "the ops make {} bytes, the target has {}",
                        self.made, self.header.target_length
                    )));
                }
                self.ended = true;
                return Ok(None);
            }
            TAG_COPY => {
                let base_offset = read_varint(&mut self.input, "a copy")?;
                let len = read_varint(&mut self.input, "a copy")?;
                let end = base_offset.checked_add(len);
                if len == 0 || end.is_none_or(|e| e > self.base_length) {
                    return Err(FormatError::Invalid(format!(
                        "a copy of {len} bytes from {base_offset} runs past the base's end \
                         ({} bytes)",
                        self.base_length
                    )));
                }
                Op::Copy { base_offset, len }
            }
            TAG_LITERAL => {
                let len = read_varint(&mut self.input, "a literal")?;
                if len == 0 {
                    return Err(FormatError::Invalid("an empty literal".into()));
                }
                self.literal_left = len;
                Op::Literal { len }
            }
            tag => return Err(FormatError::Invalid(format!("an op of unknown kind {tag}"))),
        };
        let len = match op {
            Op::Copy { len, .. } | Op::Literal { len } => len,
        };
        if len > left {
            return Err(FormatError::Invalid(format!(
                "the ops make more than the target's {} bytes",
                self.header.target_length
            )));
        }
        self.made += len;
        Ok(Some(op))
    }

    /// Hands the announced literal's bytes to `each`, in pieces of at most `buf.len()`.
    pub fn literal(
        &mut self,
        buf: &mut [u8],
        mut each: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), FormatError> {
        while self.literal_left > 0 {
            let n = (buf.len() as u64).min(self.literal_left) as usize;
            read_exact(&mut self.input, &mut buf[..n], "a literal")?;
            each(&buf[..n])?;
            self.literal_left -= n as u64;
        }
        Ok(())
    }

    /// After the last op: the SHA-256 the target must have; nothing may follow it.
    pub fn target_sha256(mut self) -> Result<[u8; 32], FormatError> {
        if !self.ended {
            return Err(FormatError::Invalid("the ops have not ended".into()));
        }
        let mut sha = [0u8; 32];
        read_exact(&mut self.input, &mut sha, "the target's SHA-256")?;
        let mut extra = [0u8; 1];
        if self.input.read(&mut extra)? != 0 {
            return Err(FormatError::Invalid("bytes after the recipe's end".into()));
        }
        Ok(sha)
    }
}

/// A recipe whose header is read, waiting for the length of the base it names.
pub struct PendingBase<R: Read> {
    input: R,
    header: RecipeHeader,
}

impl<R: Read> PendingBase<R> {
    pub fn against(self, base_length: u64) -> RecipeReader<R> {
        RecipeReader {
            input: self.input,
            header: self.header,
            base_length,
            made: 0,
            literal_left: 0,
            ended: false,
        }
    }
}

/// Builds the target from `base` (read at offsets) and a recipe, handing its bytes to `out` in
/// order: what the server's assembly and the tests share.
pub fn apply<R: Read>(
    mut recipe: RecipeReader<R>,
    mut read_base: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    mut out: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<[u8; 32], FormatError> {
    let mut buf = vec![0u8; 1 << 20];
    while let Some(op) = recipe.next_op()? {
        match op {
            Op::Copy { base_offset, len } => {
                let mut done = 0u64;
                while done < len {
                    let n = (buf.len() as u64).min(len - done) as usize;
                    read_base(base_offset + done, &mut buf[..n])?;
                    out(&buf[..n])?;
                    done += n as u64;
                }
            }
            Op::Literal { .. } => recipe.literal(&mut buf, &mut out)?,
        }
    }
    recipe.target_sha256()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u64) -> RecipeHeader {
        RecipeHeader {
            base_name: "RC1.iso".into(),
            base_sha256: [3; 32],
            target_length: len,
        }
    }

    fn build(ops: &[(Option<u64>, &[u8])], len: u64) -> Vec<u8> {
        let mut w = RecipeWriter::new(Vec::new(), &header(len)).unwrap();
        for (copy, bytes) in ops {
            match copy {
                Some(off) => w.copy(*off, bytes.len() as u64).unwrap(),
                None => w.literal(bytes).unwrap(),
            }
        }
        w.finish(&[7; 32]).unwrap().1
    }

    fn run(recipe: &[u8], base: &[u8]) -> Result<(Vec<u8>, [u8; 32]), FormatError> {
        let (h, pending) = RecipeReader::open(recipe)?;
        assert_eq!(h, header(h.target_length));
        let mut out = Vec::new();
        let sha = apply(
            pending.against(base.len() as u64),
            |off, buf| {
                buf.copy_from_slice(&base[off as usize..off as usize + buf.len()]);
                Ok(())
            },
            |b| {
                out.extend_from_slice(b);
                Ok(())
            },
        )?;
        Ok((out, sha))
    }

    #[test]
    fn a_recipe_round_trips_and_merges_adjacent_copies() {
        let base = b"0123456789abcdef";
        let recipe = build(
            &[
                (Some(0), b"0123"),
                (Some(4), b"4567"),
                (None, b"XY"),
                (Some(12), b"cdef"),
            ],
            14,
        );
        let (out, sha) = run(&recipe, base).unwrap();
        assert_eq!(out, b"01234567XYcdef");
        assert_eq!(sha, [7; 32]);
        // Two copies (merged 0..8, then 12..16), one literal: tags 1, 2, 1, 0.
        let tags = recipe.iter().filter(|&&b| b == TAG_COPY).count();
        assert!(tags >= 2);
        let mut w = RecipeWriter::new(Vec::new(), &header(8)).unwrap();
        w.copy(0, 4).unwrap();
        w.copy(4, 4).unwrap();
        let (size, merged) = w.finish(&[0; 32]).unwrap();
        assert_eq!(size as usize, merged.len());
        let (_, pending) = RecipeReader::open(&merged[..]).unwrap();
        let mut r = pending.against(8);
        assert_eq!(
            r.next_op().unwrap(),
            Some(Op::Copy {
                base_offset: 0,
                len: 8
            })
        );
        assert_eq!(r.next_op().unwrap(), None);
    }

    #[test]
    fn hostile_recipes_are_refused_with_a_reason() {
        let base = b"0123456789abcdef";
        let good = build(&[(Some(0), b"0123"), (None, b"XY")], 6);
        for cut in 0..good.len() {
            assert!(run(&good[..cut], base).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(run(&long, base).is_err());
        // A copy past the base's end, and one whose end overflows.
        let past = build(&[(Some(14), b"0123")], 4);
        let e = run(&past, base).unwrap_err().to_string();
        assert!(e.contains("past the base's end"), "{e}");
        let mut overflow = RecipeWriter::new(Vec::new(), &header(4)).unwrap();
        overflow.copy(u64::MAX - 1, 4).unwrap();
        let overflow = overflow.finish(&[0; 32]).unwrap().1;
        assert!(run(&overflow, base).is_err());
        // Ops making more or less than the target's length.
        assert!(run(&build(&[(None, b"abc")], 2), base).is_err());
        assert!(run(&build(&[(None, b"abc")], 4), base).is_err());
        // A literal announced far beyond what follows: refused at the end, nothing allocated.
        let mut huge = RecipeWriter::new(Vec::new(), &header(u64::MAX))
            .unwrap()
            .out;
        huge.push(TAG_LITERAL);
        write_varint(&mut huge, u64::MAX / 2).unwrap();
        huge.extend_from_slice(b"short");
        assert!(matches!(
            run(&huge, base),
            Err(FormatError::Truncated { .. })
        ));
        // A huge base name.
        let mut name = MAGIC.to_vec();
        name.push(VERSION);
        write_varint(&mut name, u64::MAX).unwrap();
        assert!(matches!(
            RecipeReader::open(&name[..]),
            Err(FormatError::Invalid(_))
        ));
        // Not a recipe at all.
        assert!(matches!(
            RecipeReader::open(&b"\x7fELF and more bytes"[..]),
            Err(FormatError::Magic { .. })
        ));
    }
}
