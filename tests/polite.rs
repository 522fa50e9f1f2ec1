//! `upload send --polite` against a real `upload serve`: it delivers, says what polite mode is
//! doing, and keeps under a `--limit`. The controller itself is tested on a simulated link
//! (unit tests in `src/polite.rs`); the shaped-link figures come from scripts/bench_polite.py.

use crate::helper::{Env, event, json_events, run, sha256_file};
use std::time::Instant;

#[test]
fn a_polite_send_arrives_identical_and_says_what_polite_mode_does() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("polite.iso", 1024 * 1024);
    let (out, stdout, stderr) = run(env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(server.url())
        .args(["--polite", "--json"]));
    assert!(out.status.success(), "{stderr}");
    let ev = json_events(&stdout);
    let done = event(&ev, "done").expect("done event");
    assert_eq!(done["sha256"], sha256_file(&file));
    server.assert_delivered("polite.iso", &file);
    // Polite mode starts slow on a link it does not know (4 KiB/s, growing): a megabyte
    // takes seconds, and each second says what the controller decided.
    let polite: Vec<_> = ev.iter().filter(|e| e["event"] == "polite").collect();
    assert!(!polite.is_empty(), "no polite events: {stdout}");
    for e in &polite {
        assert!(e["rate_bps"].as_f64().unwrap() > 0.0, "{e}");
        let state = e["state"].as_str().unwrap();
        assert!(
            ["probing", "using", "yielding", "slowdown"].contains(&state),
            "{e}"
        );
        assert!(e["queue_delay_ms"].as_f64().is_some(), "{e}");
    }
}

#[test]
fn a_limit_beside_polite_is_never_exceeded() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("capped.iso", 192 * 1024);
    let started = Instant::now();
    let (out, stdout, stderr) = run(env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(server.url())
        .args(["--polite", "--limit", "64KiB/s", "--json"]));
    assert!(out.status.success(), "{stderr}");
    let ev = json_events(&stdout);
    for e in ev.iter().filter(|e| e["event"] == "polite") {
        assert!(
            e["rate_bps"].as_f64().unwrap() <= 64.0 * 1024.0 * 8.0 + 1e-6,
            "above the limit: {e}"
        );
    }
    // 192 KiB at no more than 64 KiB/s (the bucket starts empty).
    assert!(
        started.elapsed().as_secs_f64() >= 2.5,
        "{:?}",
        started.elapsed()
    );
    server.assert_delivered("capped.iso", &file);
}

#[test]
fn a_budget_that_is_almost_polite_is_refused_with_the_forms_that_work() {
    let env = Env::new();
    let (out, _, stderr) = run(env.upload().args(["limit", "politely"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("polite (the idle link"), "{stderr}");
    let (out, _, stderr) = run(env.upload().args(["limit", "polite"]));
    assert!(out.status.success(), "{stderr}");
}
