//! Scheduler overhead with a long queue: the daemon re-reads the queue every second and picks
//! what to run, and `upload status` plays the whole queue forward through the timetable.
//! With 1000 queued transfers both must stay far below the one-second poll.
//!
//! `cargo bench --bench queue` also prints the database's size with those 1000 rows.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use upload::queue;
use upload::schedule::Timetable;
use upload::store::{NewTransfer, Origin, Store, TransferState};
use upload::units::Rate;

fn queue_of(n: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let store = Store::open(&path).unwrap();
    for i in 0..n {
        store
            .insert_transfer(&NewTransfer {
                name: format!("image-{i}.iso"),
                source_path: format!("/srv/images/image-{i}.iso").into(),
                size: 1 << 30,
                mtime_ns: 1_700_000_000_000_000_000,
                dest_url: "https://files.example.org/files/".into(),
                chunk_size: 327_680,
                chunk_fixed: false,
                state: TransferState::Queued,
                priority: (i % 5) as i64,
                deadline: None,
                rate_limit_bps: None,
                origin: Origin::Queue,
                base: Default::default(),
            })
            .unwrap();
    }
    // Checkpoint so the main file's size is the whole database.
    drop(store);
    let store = Store::open(&path).unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "{n} queued transfers: database {bytes} bytes ({} per transfer)",
        bytes / n as u64
    );
    (dir, store)
}

fn scheduler(c: &mut Criterion) {
    let (_dir, store) = queue_of(1000);
    c.bench_function("pick next of 1000 (read queue in order)", |b| {
        b.iter(|| {
            let rows = store.list_transfers().unwrap();
            black_box(rows.into_iter().find(|t| t.state == TransferState::Queued))
        })
    });
    let rows = store.list_transfers().unwrap();
    let tt: Timetable = "07:00,32kbit 23:00,off".parse().unwrap();
    let link = upload::estimate::LinkRate {
        rate: Rate::from_bits_per_second(128_000.0).unwrap(),
        measured: false,
    };
    let now = chrono::Local::now();
    c.bench_function("outlook of 1000 through a timetable", |b| {
        b.iter(|| black_box(queue::outlook(&rows, &tt, link, now)))
    });
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
