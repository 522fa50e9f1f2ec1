//! Matching a new file against a base's index: one streaming pass that chunks the new file
//! with the index's parameters, looks each chunk up by its strong hash, writes the recipe
//! (copies for chunks the base has, literals for the rest) and computes the new file's
//! SHA-256 on the way. Memory is the index's table and the chunker's buffer, whatever the size
//! of the new file.

use super::chunker::Chunker;
use super::index::Index;
use super::recipe::{RecipeHeader, RecipeWriter};
use super::{ChunkHash, chunk_hash};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, Read, Write};

/// What a recipe made of a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// The recipe's size: what must cross the link.
    pub recipe_len: u64,
    /// Bytes of the new file the base provides, and those sent as literals.
    pub copied: u64,
    pub literal: u64,
    pub target_sha256: [u8; 32],
}

impl Matched {
    /// The share of the new file copied from the base, in percent.
    pub fn copied_percent(&self) -> f64 {
        let total = self.copied + self.literal;
        if total == 0 {
            0.0
        } else {
            self.copied as f64 * 100.0 / total as f64
        }
    }
}

/// Writes to `out` the recipe that builds what `new` produces (`target_length` bytes) from
/// the base that `index` (published as `base_name`) describes.
pub fn make_recipe(
    new: impl Read,
    target_length: u64,
    index: &Index,
    base_name: &str,
    out: impl Write,
) -> io::Result<Matched> {
    let mut table: HashMap<ChunkHash, (u64, u32)> = HashMap::with_capacity(index.chunks.len());
    let mut offset = 0u64;
    for c in &index.chunks {
        table.entry(c.hash).or_insert((offset, c.len));
        offset += u64::from(c.len);
    }
    let header = RecipeHeader {
        base_name: base_name.to_string(),
        base_sha256: index.sha256,
        target_length,
    };
    let mut recipe = RecipeWriter::new(out, &header)?;
    let mut chunker = Chunker::new(new, index.params);
    let mut sha = Sha256::new();
    let mut read = 0u64;
    while let Some(chunk) = chunker.next_chunk()? {
        sha.update(chunk);
        read += chunk.len() as u64;
        match table.get(&chunk_hash(chunk)) {
            Some(&(at, len)) if len as usize == chunk.len() => recipe.copy(at, u64::from(len))?,
            _ => recipe.literal(chunk)?,
        }
    }
    if read != target_length {
        return Err(io::Error::other(format!(
            "the file has {read} bytes, not {target_length}: it changed while it was read"
        )));
    }
    let target_sha256: [u8; 32] = sha.finalize().into();
    let (copied, literal) = (recipe.copied, recipe.literal);
    let (recipe_len, _) = recipe.finish(&target_sha256)?;
    Ok(Matched {
        recipe_len,
        copied,
        literal,
        target_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::chunker::tests::noise;
    use crate::delta::recipe::{RecipeReader, apply};
    use crate::delta::{FileIdentity, Params};

    fn index_of(data: &[u8]) -> Index {
        let identity = FileIdentity {
            size: data.len() as u64,
            ..Default::default()
        };
        Index::build(data, Params::DEFAULT, identity, None).unwrap()
    }

    fn rebuild(recipe: &[u8], base: &[u8]) -> (Vec<u8>, [u8; 32]) {
        let (_, pending) = RecipeReader::open(recipe).unwrap();
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
        )
        .unwrap();
        (out, sha)
    }

    #[test]
    fn a_small_edit_sends_little_and_rebuilds_the_file() {
        let base = noise(11, 2_000_000);
        let mut new = base.clone();
        new[1_000_000..1_000_100].copy_from_slice(&[0xAA; 100]);
        new.splice(300_000..300_000, b"inserted".iter().copied());
        let index = index_of(&base);
        let mut recipe = Vec::new();
        let m = make_recipe(&new[..], new.len() as u64, &index, "RC1.iso", &mut recipe).unwrap();
        assert_eq!(m.recipe_len as usize, recipe.len());
        assert_eq!(m.copied + m.literal, new.len() as u64);
        assert!(m.recipe_len < 100_000, "recipe {} bytes", m.recipe_len);
        assert!(m.copied_percent() > 95.0);
        let (rebuilt, sha) = rebuild(&recipe, &base);
        assert!(rebuilt == new, "the rebuilt file differs");
        assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&new)));
    }

    #[test]
    fn an_unrelated_file_is_all_literal() {
        let base = noise(12, 100_000);
        let new = noise(13, 100_000);
        let mut recipe = Vec::new();
        let m = make_recipe(&new[..], 100_000, &index_of(&base), "b", &mut recipe).unwrap();
        assert_eq!(m.copied, 0);
        assert_eq!(rebuild(&recipe, &base).0, new);
        // A new file that is not the length it was said to have changed while it was read.
        assert!(make_recipe(&new[..], 99, &index_of(&base), "b", io::sink()).is_err());
    }
}
