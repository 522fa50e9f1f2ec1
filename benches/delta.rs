//! Delta uploads (issue 13): what chunking and matching cost on the client, and, given a real
//! pair of images, which chunk sizes reuse the most for the index they cost.
//!
//! `cargo bench --bench delta` times indexing a base and matching a rebuilt file against it
//! (64 MiB each; CPU per GiB is 16 times that). With `UPLOAD_DELTA_PAIR=OLD:NEW` (e.g. the
//! images `scripts/rc_pair.py` builds) it first prints, for average chunk sizes from 4 to
//! 64 KiB, the recipe's size (the bytes a delta upload sends) and the index's (the bytes it
//! downloads first): the measurement behind `delta::chunker`'s choice.

use criterion::{Criterion, criterion_group};
use std::hint::black_box;
use upload::delta::{FileIdentity, Index, Params, make_recipe};

const LEN: usize = 64 << 20;

fn noise(seed: u64, len: usize) -> Vec<u8> {
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

fn identity(len: usize) -> FileIdentity {
    FileIdentity {
        size: len as u64,
        ..Default::default()
    }
}

fn chunking_and_matching(c: &mut Criterion) {
    let base = noise(1, LEN);
    let mut new = base.clone();
    // A rebuilt image: a few inserted and rewritten stretches.
    for at in [LEN / 5, LEN / 2, LEN * 4 / 5] {
        new.splice(at..at, noise(at as u64, 4096));
    }
    let index = Index::build(&base[..], Params::DEFAULT, identity(LEN), None).unwrap();
    let mut g = c.benchmark_group("delta 64MiB");
    g.sample_size(10);
    g.bench_function("index the base (chunks, BLAKE3, SHA-256)", |b| {
        b.iter(|| Index::build(black_box(&base[..]), Params::DEFAULT, identity(LEN), None))
    });
    g.bench_function(
        "match the new file (chunks, BLAKE3, SHA-256, recipe)",
        |b| {
            b.iter(|| {
                make_recipe(
                    black_box(&new[..]),
                    new.len() as u64,
                    &index,
                    "RC1.iso",
                    std::io::sink(),
                )
            })
        },
    );
    g.finish();
}

/// The sweep over chunk sizes on a real pair, printed as a table.
fn sweep(pair: &str) {
    let (old, new) = pair.split_once(':').expect(
        "UPLOAD_DELTA_PAIR=OLD:NEW, e.g. /dev/shm/rc/rc1-small.iso:/dev/shm/rc/rc2-small.iso",
    );
    let new_len = std::fs::metadata(new).unwrap().len();
    println!("{old} -> {new} ({new_len} bytes)");
    println!("| average chunk | recipe (sent) | of the new file | index (downloaded) |");
    println!("|---|---|---|---|");
    for avg in [4u32, 8, 16, 32, 64] {
        let avg = avg * 1024;
        let params =
            Params::checked(u64::from(avg / 4), u64::from(avg), u64::from(avg * 4)).unwrap();
        let file = std::fs::File::open(old).unwrap();
        let id = FileIdentity::of(&file.metadata().unwrap());
        let index = Index::build(std::io::BufReader::new(file), params, id, None).unwrap();
        let reader = std::io::BufReader::new(std::fs::File::open(new).unwrap());
        let m = make_recipe(reader, new_len, &index, "rc1.iso", std::io::sink()).unwrap();
        println!(
            "| {} KiB | {} | {:.2} % | {} |",
            avg / 1024,
            m.recipe_len,
            m.recipe_len as f64 * 100.0 / new_len as f64,
            index.to_bytes().len()
        );
    }
}

criterion_group!(benches, chunking_and_matching);

fn main() {
    if let Ok(pair) = std::env::var("UPLOAD_DELTA_PAIR") {
        sweep(&pair);
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
