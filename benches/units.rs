//! Parsing people's units and planning an estimate: both run once per command, so these
//! benches mostly guard against an accidental quadratic (e.g. a window search that walks
//! minute by minute) rather than chase nanoseconds.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use upload::estimate::{self, RateSource, Request};
use upload::units::{Rate, parse_rate, parse_size};

fn parsing(c: &mut Criterion) {
    c.bench_function("parse_size 4.7GB", |b| {
        b.iter(|| parse_size(black_box("4.7GB")))
    });
    c.bench_function("parse_rate 128 kbit/s", |b| {
        b.iter(|| parse_rate(black_box("128 kbit/s")))
    });
}

fn planning(c: &mut Criterion) {
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T23:00:00+00:00").unwrap();
    let req = |windows: Vec<&str>, bytes: u64| Request {
        bytes,
        rate: Rate::from_bits_per_second(128_000.0).unwrap(),
        rate_source: RateSource::Flag,
        chunk: None,
        framing: estimate::Framing::Plain,
        start,
        windows: windows.into_iter().map(|w| w.parse().unwrap()).collect(),
        remote_build: None,
        delta: None,
    };
    let plain = req(vec![], 1 << 30);
    c.bench_function("plan 1GiB, no windows", |b| {
        b.iter(|| estimate::plan(black_box(&plain)))
    });
    let nights = req(vec!["23:00-07:00"], 1 << 30);
    c.bench_function("plan 1GiB, nightly window", |b| {
        b.iter(|| estimate::plan(black_box(&nights)))
    });
    // 100 GiB through one hour a night: 1 800 windows to walk.
    let long = req(vec!["01:00-02:00"], 100 << 30);
    c.bench_function("plan 100GiB, 1 h a night", |b| {
        b.iter(|| estimate::plan(black_box(&long)))
    });
}

criterion_group!(benches, parsing, planning);
criterion_main!(benches);
