//! The queue and `upload run` through the real binaries: order, the timetable's boundaries with
//! the clock under test control, one budget shared by weight, kills and concurrent access.

use crate::helper::proxy::Proxy;
use crate::helper::{Env, run, signal};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn add(env: &Env, file: &std::path::Path, url: &str, extra: &[&str]) -> i64 {
    let (out, stdout, stderr) = run(env
        .upload()
        .args(["queue", "add"])
        .arg(file)
        .arg(url)
        .arg("--json")
        .args(extra));
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    v["id"].as_i64().unwrap()
}

fn status(env: &Env) -> Vec<Value> {
    let (out, stdout, stderr) = run(env.upload().args(["status", "--json"]));
    assert!(out.status.success(), "{stderr}");
    serde_json::from_str::<Value>(&stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn by_id(all: &[Value], id: i64) -> Value {
    all.iter().find(|t| t["id"] == id).cloned().unwrap()
}

/// `upload run` in the background, its JSON log lines collected.
struct Runner {
    child: Child,
    log: Arc<Mutex<Vec<Value>>>,
}

impl Runner {
    fn start(env: &Env, args: &[&str], clock_start: Option<&str>) -> Runner {
        let mut cmd = env.upload();
        cmd.args(["run", "--log-format", "json", "-vv"]).args(args);
        if let Some(c) = clock_start {
            cmd.env("UPLOAD_CLOCK_START", c);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Runner { child, log }
    }

    /// Log lines whose message is `msg`.
    fn events(&self, msg: &str) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["fields"]["message"] == msg)
            .cloned()
            .collect()
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "upload run still going after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn priority_then_deadline_then_age() {
    let env = Env::new();
    let server = env.serve(&[]);
    let url = server.url();
    let f = |n: &str| env.file(n, 20_000);
    let plain = add(&env, &f("plain.bin"), &url, &[]);
    let late = add(
        &env,
        &f("late.bin"),
        &url,
        &["--deadline", "2099-01-02 00:00"],
    );
    let early = add(
        &env,
        &f("early.bin"),
        &url,
        &["--deadline", "2099-01-01 00:00"],
    );
    let urgent = add(&env, &f("urgent.bin"), &url, &["--priority", "3"]);
    let order: Vec<i64> = status(&env)
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![urgent, early, late, plain]);

    let mut runner = Runner::start(&env, &["--jobs", "1"], None);
    assert!(runner.wait(Duration::from_secs(60)).success());
    let started: Vec<i64> = runner
        .events("starting")
        .iter()
        .map(|e| e["fields"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(started, vec![urgent, early, late, plain]);
    for t in status(&env) {
        assert_eq!(t["state"], "done", "{t}");
    }
    server.assert_delivered("urgent.bin", &env.path("urgent.bin"));
}

#[test]
fn a_hopeless_deadline_is_flagged_at_add_and_in_status() {
    let env = Env::new();
    let file = env.file("big.iso", 1 << 20);
    // 1 MiB at 8 kbit/s takes about 17 minutes; the deadline is in 5.
    let (out, _, stderr) = run(env
        .upload()
        .env("UPLOAD_CLOCK_START", "2026-01-01T12:00:00+00:00")
        .args(["queue", "add"])
        .arg(&file)
        .args([
            "http://127.0.0.1:9/files/",
            "--limit",
            "8kbit",
            "--deadline",
            "2026-01-01 12:05",
        ]));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot meet its deadline"), "{stderr}");
    assert!(stderr.contains("earliest"), "{stderr}");
    let (_, stdout, _) = run(env
        .upload()
        .env("UPLOAD_CLOCK_START", "2026-01-01T12:00:00+00:00")
        .args(["status", "--json"]));
    let all: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(all[0]["deadline_missed"], true);
    let finish =
        chrono::DateTime::parse_from_rfc3339(all[0]["finish_at"].as_str().unwrap()).unwrap();
    let expect = chrono::DateTime::parse_from_rfc3339("2026-01-01T12:17:28+00:00").unwrap();
    assert!((finish - expect).num_seconds().abs() < 30, "{finish}");
}

/// A pause slot stops the transfer at the boundary (its last chunk sized to end there, so
/// nothing is sent twice) and the next slot resumes it.
#[test]
fn a_timetable_pause_holds_a_running_transfer_and_the_next_slot_resumes_it() {
    let env = Env::new();
    let server = env.serve(&[]);
    let proxy = Proxy::start(server.addr);
    let size = 256 * 1024;
    let file = env.file("night.iso", size);
    add(&env, &file, &proxy.url(), &["--chunk", "32KiB"]);
    // The clock starts 3 s before 07:00: 3 s at 256 kbit/s (96 KiB), a 5 s pause, then on.
    let mut runner = Runner::start(
        &env,
        &["--timetable", "00:00,256kbit 07:00,pause 07:00:05,256kbit"],
        Some("2026-01-01T06:59:57+00:00"),
    );
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(20) && runner.child.try_wait().unwrap().is_none() {
        samples.push((t0.elapsed().as_secs_f64(), proxy.patch_body_bytes()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(runner.wait(Duration::from_secs(30)).success());
    let at = |t: f64| {
        samples
            .iter()
            .rev()
            .find(|(s, _)| *s <= t)
            .map_or(0, |x| x.1)
    };
    let during_pause = at(7.5) - at(3.5);
    assert_eq!(during_pause, 0, "bytes moved during the pause: {samples:?}");
    assert!(at(3.5) > 40 * 1024, "sent before the pause: {}", at(3.5));
    assert_eq!(
        proxy.patch_body_bytes(),
        size as u64,
        "a chunk was cut by the pause and resent"
    );
    server.assert_delivered("night.iso", &file);
}

/// The upload is deleted on the server while the transfer waits out a pause slot (as the
/// server's expiry would after a long one): the first PATCH after the pause gets 404, and the
/// transfer asks again, learns it is gone, starts over and delivers the file.
#[test]
fn an_upload_that_vanishes_during_a_pause_is_started_over() {
    let env = Env::new();
    let server = env.serve(&[]);
    let size = 256 * 1024;
    let file = env.file("gone.iso", size);
    let id = add(&env, &file, &server.url(), &["--chunk", "32KiB"]);
    // 3 s at 256 kbit/s, then a 5 s pause.
    let mut runner = Runner::start(
        &env,
        &["--timetable", "00:00,256kbit 07:00,pause 07:00:05,256kbit"],
        Some("2026-01-01T06:59:57+00:00"),
    );
    std::thread::sleep(Duration::from_millis(4500));
    let url = by_id(&status(&env), id)["upload_url"]
        .as_str()
        .expect("an upload URL by now")
        .to_string();
    let path = url.trim_start_matches(&format!("http://{}", server.addr));
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    use std::io::{Read, Write};
    write!(
        conn,
        "DELETE {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");

    assert!(runner.wait(Duration::from_secs(40)).success());
    let t = by_id(&status(&env), id);
    assert_eq!(t["state"], "done", "{t}");
    assert_ne!(t["upload_url"], url.as_str(), "{t}");
    server.assert_delivered("gone.iso", &file);
}

/// Two transfers share one budget by priority weight (2:1), measured on the wire over 30 s;
/// `upload limit` then changes the budget without dropping a connection.
#[test]
fn two_transfers_share_one_budget_by_weight() {
    let env = Env::alone();
    let server = env.serve(&[]);
    let (pa, pb) = (Proxy::start(server.addr), Proxy::start(server.addr));
    let (fa, fb) = (env.file("a.iso", 8 << 20), env.file("b.iso", 8 << 20));
    add(
        &env,
        &fa,
        &pa.url(),
        &["--priority", "1", "--chunk", "256KiB"],
    );
    add(&env, &fb, &pb.url(), &["--chunk", "256KiB"]);
    let budget = 96.0 * 1024.0;
    let _runner = Runner::start(&env, &["--jobs", "2", "--timetable", "96KiB/s"], None);
    wait_until(Duration::from_secs(20), "both transfers sending", || {
        pa.patch_body_bytes() > 0 && pb.patch_body_bytes() > 0
    });
    std::thread::sleep(Duration::from_secs(2));
    let (a0, b0, t0) = (pa.patch_body_bytes(), pb.patch_body_bytes(), Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let secs = t0.elapsed().as_secs_f64();
    let ra = (pa.patch_body_bytes() - a0) as f64 / secs;
    let rb = (pb.patch_body_bytes() - b0) as f64 / secs;
    eprintln!(
        "a {ra:.0} B/s, b {rb:.0} B/s, sum {:.0} of {budget}",
        ra + rb
    );
    assert!(
        (ra / (budget * 2.0 / 3.0) - 1.0).abs() < 0.10,
        "a got {ra} B/s"
    );
    assert!((rb / (budget / 3.0) - 1.0).abs() < 0.10, "b got {rb} B/s");
    assert!(
        ((ra + rb) / budget - 1.0).abs() < 0.03,
        "together {} B/s",
        ra + rb
    );

    // A new budget for the running daemon, through the database.
    let (out, _, stderr) = run(env.upload().args(["limit", "384KiB/s"]));
    assert!(out.status.success(), "{stderr}");
    std::thread::sleep(Duration::from_secs(2));
    let (a1, t1) = (pa.patch_body_bytes(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let ra = (pa.patch_body_bytes() - a1) as f64 / t1.elapsed().as_secs_f64();
    assert!(
        ra > 200.0 * 1024.0,
        "after upload limit, a runs at {ra} B/s"
    );
    let conns = |p: &Proxy| {
        p.counters
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(
        (conns(&pa), conns(&pb)),
        (1, 1),
        "a rate change must not drop connections"
    );
}

/// A transfer that sends nothing (its server is down, so it retries) leaves its part of the
/// budget to the others, measured on the wire: the run's one throttle gives the part of a
/// share that does not ask to those that do.
#[test]
fn a_transfer_that_cannot_send_leaves_its_share_to_the_others() {
    let env = Env::new();
    let server = env.serve(&[]);
    let proxy = Proxy::start(server.addr);
    let (down, up) = (env.file("down.iso", 1 << 20), env.file("up.iso", 4 << 20));
    let stuck = add(&env, &down, "http://127.0.0.1:9/files/", &[]);
    // One 1 MiB chunk lasts 16 s at the budget, so the 2 + 10 s measured below hold no chunk
    // boundary: what is measured is the share, not how long the server's commit (an fsync)
    // takes on a busy disk. With 256 KiB chunks, three boundaries fell in the window, and under
    // a full parallel test run they cost a third of the rate.
    add(&env, &up, &proxy.url(), &["--chunk", "1MiB"]);
    let budget = 64.0 * 1024.0;
    let runner = Runner::start(&env, &["--jobs", "2", "--timetable", "64KiB/s"], None);
    wait_until(Duration::from_secs(20), "the live transfer sending", || {
        proxy.patch_body_bytes() > 0
    });
    std::thread::sleep(Duration::from_secs(2));
    let (b0, t0) = (proxy.patch_body_bytes(), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let rate = (proxy.patch_body_bytes() - b0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("the live transfer: {rate:.0} B/s of {budget}");
    assert!(
        runner
            .events("starting")
            .iter()
            .any(|e| e["fields"]["id"] == stuck),
        "both transfers run at once"
    );
    assert!(
        (rate / budget - 1.0).abs() < 0.05,
        "the live transfer got {rate} B/s of {budget}"
    );
}

#[test]
fn run_killed_with_sigkill_resumes_every_transfer() {
    let env = Env::new();
    let server = env.serve(&[]);
    let proxy = Proxy::start(server.addr);
    let (fa, fb) = (env.file("a.iso", 512 * 1024), env.file("b.iso", 512 * 1024));
    let a = add(&env, &fa, &proxy.url(), &["--chunk", "32KiB"]);
    let b = add(&env, &fb, &proxy.url(), &["--chunk", "32KiB"]);
    let mut runner = Runner::start(&env, &["--jobs", "2", "--timetable", "1Mbit"], None);
    wait_until(Duration::from_secs(30), "progress on both", || {
        let s = status(&env);
        by_id(&s, a)["offset"].as_u64().unwrap() > 0 && by_id(&s, b)["offset"].as_u64().unwrap() > 0
    });
    runner.signal("-KILL");
    runner.wait(Duration::from_secs(5));
    // Still marked running in the database, but its process is gone: status says so and
    // shows no rate (issue 10, item 6).
    let before = status(&env);
    assert!(
        before
            .iter()
            .all(|t| t["state"] == "interrupted" && t["rate_bps"].is_null()),
        "{before:?}"
    );
    let (_, text, _) = run(env.upload().arg("status"));
    assert!(
        text.contains("is gone; the next `upload run` continues it"),
        "{text}"
    );
    let mut again = Runner::start(&env, &["--jobs", "2"], None);
    assert!(again.wait(Duration::from_secs(60)).success());
    let resumed: Vec<Value> = again.events("sending");
    assert_eq!(resumed.len(), 2);
    assert!(
        resumed.iter().all(|e| e["fields"]["resumed"] == true),
        "{resumed:?}"
    );
    for (f, name) in [(&fa, "a.iso"), (&fb, "b.iso")] {
        server.assert_delivered(name, f);
    }
    // At most the chunk in flight per transfer is sent again.
    assert!(proxy.patch_body_bytes() <= 1024 * 1024 + 2 * 32 * 1024);
}

#[test]
fn queue_add_from_another_process_while_run_is_busy_and_sigterm_stops_cleanly() {
    let env = Env::new();
    let server = env.serve(&[]);
    let first = env.file("first.iso", 8 << 20);
    let a = add(&env, &first, &server.url(), &["--chunk", "64KiB"]);
    let mut runner = Runner::start(
        &env,
        &["--daemon", "--jobs", "2", "--timetable", "2Mbit"],
        None,
    );
    wait_until(
        Duration::from_secs(20),
        "the first transfer running",
        || by_id(&status(&env), a)["offset"].as_u64().unwrap() > 0,
    );
    // Adds from other processes while the daemon writes progress: none fails as locked.
    let mut ids = Vec::new();
    for i in 0..5 {
        let f = env.file(&format!("more{i}.bin"), 1000);
        ids.push(add(&env, &f, &server.url(), &["--priority", "5"]));
    }
    wait_until(Duration::from_secs(30), "the added transfers done", || {
        let s = status(&env);
        ids.iter().all(|id| by_id(&s, *id)["state"] == "done")
    });
    runner.signal("-TERM");
    let t = Instant::now();
    let code = runner.wait(Duration::from_secs(10));
    assert!(code.success(), "{code:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        t.elapsed()
    );
    let row = by_id(&status(&env), a);
    assert_eq!(row["state"], "queued", "{row}");
    assert!(row["offset"].as_u64().unwrap() > 0);
}

#[test]
fn the_example_config_and_systemd_units_are_valid() {
    let env = Env::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/config.toml");
    let (out, stdout, stderr) = run(env
        .upload()
        .args(["--config", example, "config", "show", "--json"]));
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["settings"]["timetable"]["value"],
        "07:00,32kbit 23:00,off"
    );
    for unit in [
        "upload-run.service",
        "upload-run-nightly.service",
        "upload-run-nightly.timer",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/contrib/{unit}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        assert!(
            text.contains("[Install]") || text.contains("Type=oneshot"),
            "{unit}"
        );
        // Every `upload` invocation in a unit must parse with this binary's arguments.
        for line in text.lines().filter(|l| l.starts_with("ExecStart=")) {
            let args: Vec<&str> = line.split_whitespace().skip(1).collect();
            let (out, _, stderr) = run(env.upload().args(&args).arg("--help"));
            assert!(out.status.success(), "{unit}: {line}: {stderr}");
        }
    }
}

/// Issue 10, item 4: an `upload send` that was interrupted (Ctrl-C) or killed is not queued
/// work: a later `upload run` leaves it alone, `queue list` says how to continue it, and
/// `queue resume` hands it to the run explicitly.
#[test]
fn an_interrupted_send_is_not_sent_by_a_later_run() {
    use crate::helper::{kill9, send_until_progress};
    let env = Env::new();
    let server = env.serve(&[]);
    let url = server.url();
    let args = ["--limit", "256KiB/s", "--chunk", "64KiB"];
    let ctrl_c = env.file("ctrl-c.iso", 1024 * 1024);
    let mut child = send_until_progress(&env, &ctrl_c, &url, &args, 64 * 1024);
    signal(child.id(), "-INT");
    assert_eq!(
        crate::helper::wait_at_most(&mut child, Duration::from_secs(10)).code(),
        Some(130)
    );
    let killed = env.file("killed.iso", 1024 * 1024);
    let mut child = send_until_progress(&env, &killed, &url, &args, 64 * 1024);
    kill9(&mut child);

    let mut runner = Runner::start(&env, &[], None);
    assert!(runner.wait(Duration::from_secs(20)).success());
    assert!(
        runner.events("starting").is_empty(),
        "the run sent an ad-hoc send"
    );
    for name in ["ctrl-c.iso", "killed.iso"] {
        assert!(
            !server.dir.join(name).exists(),
            "{name} was sent by the run"
        );
    }
    let rows = status(&env);
    for row in &rows {
        assert_eq!(row["origin"], "send", "{row}");
        assert_ne!(row["state"], "queued", "{row}");
    }
    let (out, stdout, _) = run(env.upload().args(["queue", "list"]));
    assert!(out.status.success());
    assert!(
        stdout.contains("rerun `upload send` to continue"),
        "{stdout}"
    );

    // Handed over explicitly, it is the run's.
    let id = rows.iter().find(|r| r["name"] == "ctrl-c.iso").unwrap()["id"]
        .as_i64()
        .unwrap();
    let (out, _, stderr) = run(env.upload().args(["queue", "resume", &id.to_string()]));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(by_id(&status(&env), id)["origin"], "queue");
    let mut runner = Runner::start(&env, &[], None);
    assert!(runner.wait(Duration::from_secs(30)).success());
    server.assert_delivered("ctrl-c.iso", &ctrl_c);
    assert!(!server.dir.join("killed.iso").exists());
}

/// Issue 10, item 6: a transfer the run holds in a pause (`upload limit pause`, or the
/// timetable's) is shown paused, without a rate, while its row still says running.
#[test]
fn status_shows_a_held_transfer_paused() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("held.iso", 2 * 1024 * 1024);
    let id = add(&env, &file, &server.url(), &["--chunk", "16KiB"]);
    let mut runner = Runner::start(&env, &["--timetable", "256kbit"], None);
    wait_until(Duration::from_secs(30), "progress", || {
        by_id(&status(&env), id)["offset"].as_u64().unwrap() > 0
    });
    let row = by_id(&status(&env), id);
    assert_eq!(row["state"], "running", "{row}");
    assert!(row["rate_bps"].as_f64().is_some(), "{row}");
    let (out, _, stderr) = run(env.upload().args(["limit", "pause"]));
    assert!(out.status.success(), "{stderr}");
    let row = by_id(&status(&env), id);
    assert_eq!(row["state"], "paused", "{row}");
    assert!(row["rate_bps"].is_null(), "{row}");
    let (_, text, _) = run(env.upload().arg("status"));
    assert!(text.contains("paused"), "{text}");
    assert!(
        text.contains("held between chunks by the run's budget"),
        "{text}"
    );
    assert!(!text.contains("/s"), "a rate for a paused transfer: {text}");
    runner.signal("-TERM");
    runner.wait(Duration::from_secs(10));
}

/// Issue 10, item 2: `upload limit` without a run says so and what the saved budget will do;
/// without an argument it prints what is in force; an override shows in `status`, `config
/// show` and the run's start-up log, and counts in finish times.
#[test]
fn a_saved_budget_override_is_visible_everywhere() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("slow.iso", 100_000);
    let id = add(&env, &file, &server.url(), &[]);
    let eta = |env: &Env| by_id(&status(env), id)["eta_seconds"].as_f64().unwrap();
    let unlimited = eta(&env);

    let (out, stdout, stderr) = run(env.upload().args(["limit", "64kbit"]));
    assert!(out.status.success(), "{stderr}");
    let said = format!("{stdout}{stderr}");
    assert!(said.contains("no `upload run` is active"), "{said}");
    assert!(said.contains("the next `upload run`"), "{said}");

    let (out, stdout, _) = run(env.upload().arg("limit"));
    assert!(out.status.success());
    assert!(
        stdout.contains("64 kbit/s") && stdout.contains("--clear"),
        "{stdout}"
    );

    let (_, text, _) = run(env.upload().arg("status"));
    assert!(
        text.contains("budget 64 kbit/s set by `upload limit`"),
        "{text}"
    );
    let (_, shown, _) = run(env.upload().args(["config", "show"]));
    assert!(
        shown.contains("64 kbit/s") && shown.contains("upload limit"),
        "{shown}"
    );
    let (_, shown, _) = run(env.upload().args(["config", "show", "--json"]));
    let v: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["budget_override"]["bits_per_second"], 64_000.0, "{v}");
    // 100 kB at 64 kbit/s is at least 12.5 s; the assumed 128 kbit/s link half that.
    assert!(
        eta(&env) >= 12.0 && eta(&env) > unlimited * 1.8,
        "{} vs {unlimited}",
        eta(&env)
    );

    let mut runner = Runner::start(&env, &[], None);
    wait_until(Duration::from_secs(10), "the start-up log", || {
        !runner
            .events("budget override from `upload limit` in force")
            .is_empty()
    });
    let (_, stdout, _) = run(env.upload().arg("limit"));
    assert!(stdout.contains("a running `upload run`"), "{stdout}");
    runner.signal("-TERM");
    runner.wait(Duration::from_secs(10));

    let (out, _, _) = run(env.upload().args(["limit", "--clear"]));
    assert!(out.status.success());
    let (_, text, _) = run(env.upload().arg("status"));
    assert!(!text.contains("upload limit"), "{text}");
    let (_, stdout, _) = run(env.upload().arg("limit"));
    assert!(
        stdout.contains("no budget is set: no timetable"),
        "{stdout}"
    );
}

/// Issue 10, item 3: README's `--deadline "Fri 07:00"` is the next Friday at 07:00, local
/// time; a deadline already past is refused plainly instead of queued as merely late.
#[test]
fn weekday_deadlines_are_accepted_and_past_ones_refused() {
    use chrono::{Datelike, Timelike};
    let env = Env::new();
    let file = env.file("d.iso", 1000);
    let url = "http://127.0.0.1:9/files/";
    let id = add(&env, &file, url, &["--deadline", "Fri 07:00"]);
    let row = by_id(&status(&env), id);
    let deadline = chrono::DateTime::parse_from_rfc3339(row["deadline"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc); // the tests' local time is UTC
    assert_eq!(deadline.weekday(), chrono::Weekday::Fri, "{row}");
    assert_eq!((deadline.hour(), deadline.minute()), (7, 0), "{row}");
    let ahead = deadline - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::zero() && ahead <= chrono::Duration::days(7),
        "{row}"
    );

    let (out, _, stderr) = run(env
        .upload()
        .args(["queue", "add"])
        .arg(&file)
        .arg(url)
        .args(["--deadline", "2020-01-03 07:00"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already past"), "{stderr}");
    assert!(stderr.contains("Fri 07:00"), "{stderr}");
    assert_eq!(status(&env).len(), 1, "a past deadline was queued");
}

/// Issue 10, item 11: `status` and `queue add` predict a finish with estimate's wire model
/// (TCP/IP framing, HTTP), as `upload estimate` does, not from the payload alone.
#[test]
fn status_finish_times_count_the_wire_overhead_as_estimate_does() {
    let env = Env::new();
    let file = env.file("wire.iso", 1536 * 1024);
    let id = add(&env, &file, "http://127.0.0.1:9/files/", &[]);
    let eta = by_id(&status(&env), id)["eta_seconds"].as_f64().unwrap();
    let (out, stdout, _) = run(env.upload().args(["estimate", "1.5MiB", "--json"]));
    assert!(out.status.success());
    let plan: Value = serde_json::from_str(&stdout).unwrap();
    let total = plan["total_seconds"].as_f64().unwrap();
    let payload_only = plan["link_seconds"].as_f64().unwrap();
    assert!(total > payload_only + 3.0, "{plan}");
    assert!(
        (eta - total).abs() <= 1.0,
        "status {eta} s, estimate {total} s"
    );
}

/// Issue 10, item 12: every timestamp in `status`, `queue list`, `queue add` and `estimate`
/// `--json` is RFC 3339 UTC to the second (`2026-01-02T07:00:00Z`).
#[test]
fn json_timestamps_share_one_format() {
    let env = Env::new();
    let file = env.file("t.iso", 1000);
    let url = "http://127.0.0.1:9/files/";
    let (out, added, stderr) = run(env
        .upload()
        .args(["queue", "add"])
        .arg(&file)
        .arg(url)
        .args(["--deadline", "Fri 07:00", "--json"]));
    assert!(out.status.success(), "{stderr}");
    let (_, listed, _) = run(env.upload().args(["queue", "list", "--json"]));
    let (_, status, _) = run(env.upload().args(["status", "--json"]));
    let (_, estimate, _) =
        run(env
            .upload()
            .args(["estimate", "1MiB", "--json", "--window", "23:00-07:00"]));
    let (_, shown, _) = run(env.upload().args(["config", "show", "--json"]));
    let mut seen = 0;
    for text in [&added, &listed, &status, &estimate, &shown] {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                Value::Array(a) => stack.extend(a),
                Value::Object(o) => stack.extend(o.into_values()),
                Value::String(s) if chrono::DateTime::parse_from_rfc3339(&s).is_ok() => {
                    seen += 1;
                    let shape = s.len() == 20 && s.ends_with('Z') && !s.contains('.');
                    assert!(shape, "{s:?} in {text}");
                }
                _ => {}
            }
        }
    }
    assert!(seen >= 8, "only {seen} timestamps");
}

/// Issue 15: a `polite` budget steers the run's one uplink; `upload status` says what polite
/// mode is doing while the run sends, and the transfer arrives.
#[test]
fn a_polite_budget_steers_the_run_and_status_shows_it() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("polite-run.iso", 1024 * 1024);
    let id = add(&env, &file, &server.url(), &[]);
    let mut runner = Runner::start(&env, &["--timetable", "00:00,polite"], None);
    let mut seen = String::new();
    wait_until(Duration::from_secs(60), "a polite line in status", || {
        let (_, text, _) = run(env.upload().arg("status"));
        seen = text;
        seen.contains("polite: ") || by_id(&status(&env), id)["state"] == "done"
    });
    assert!(seen.contains("polite: "), "{seen}");
    assert!(seen.contains("queueing delay"), "{seen}");
    assert!(runner.wait(Duration::from_secs(60)).success());
    server.assert_delivered("polite-run.iso", &file);
}

/// Issue 15: `queue add --polite`. A polite and a normal transfer in one run under a 1 MiB/s
/// budget: the polite one's part is what its own controller allows, not half the budget. On
/// loopback no queue ever forms, so the controller only ramps from its start (4 KiB/s, by e per
/// second): over the first seconds the polite one gets a few percent of what the normal one
/// does (about 4 KiB (e^t - 1) against the rest of the budget: 51 KiB against 2.5 MiB at 2.5 s,
/// and still a ninth at 5 s), where as an ordinary share it would get the same. Both arrive
/// intact, the polite one once the other is done; status marks it and says what polite mode
/// does.
#[test]
fn a_polite_transfer_gets_only_what_its_controller_allows_and_both_arrive() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (pn, pp) = (Proxy::start(server.addr), Proxy::start(server.addr));
    let normal = env.file("bulk.iso", 8 << 20);
    let polite = env.file("gentle.iso", 2 << 20);
    let n = add(&env, &normal, &pn.url(), &["--chunk", "256KiB"]);
    let p = add(&env, &polite, &pp.url(), &["--chunk", "256KiB", "--polite"]);
    let listed = status(&env);
    assert_eq!(by_id(&listed, p)["polite"], true);
    assert_eq!(by_id(&listed, n)["polite"], false);

    let mut runner = Runner::start(&env, &["--jobs", "2", "--timetable", "1MiB/s"], None);
    wait_until(Duration::from_secs(20), "both transfers sending", || {
        pn.patch_body_bytes() > 0 && pp.patch_body_bytes() > 0
    });
    std::thread::sleep(Duration::from_millis(2500));
    let (bn, bp) = (pn.patch_body_bytes(), pp.patch_body_bytes());
    eprintln!("normal {bn} B, polite {bp} B");
    assert!(
        bp * 3 < bn,
        "the polite transfer got {bp} B beside the normal one's {bn} B: its part is not capped"
    );
    assert!(bp > 0 && bn > 1 << 20, "normal {bn} B, polite {bp} B");
    let (_, text, _) = run(env.upload().arg("status"));
    assert!(text.contains("polite transfers: "), "{text}");
    // The marker, on the polite transfer's line only.
    let marked: Vec<&str> = text.lines().filter(|l| l.contains("  polite")).collect();
    assert!(
        marked.len() == 1 && marked[0].contains("gentle.iso"),
        "{text}"
    );

    assert!(runner.wait(Duration::from_secs(120)).success());
    server.assert_delivered("bulk.iso", &normal);
    server.assert_delivered("gentle.iso", &polite);
    let done = status(&env);
    assert_eq!(by_id(&done, p)["state"], "done");
    assert_eq!(by_id(&done, p)["polite"], true);
    assert!(
        runner.events("done").len() == 2,
        "{:?}",
        runner.events("done")
    );
}
