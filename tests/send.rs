//! `upload send` against a real `upload serve`, both the real binary: full uploads, resumes
//! after kills and restarts, damaged chunks, changed sources, auth, and the error statuses.

use crate::helper::proxy::Proxy;
use crate::helper::send_json as send;
use crate::helper::{
    Env, event, kill9, pattern, run, send_until, send_until_progress, sha256_file, wait_at_most,
};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_full_upload_arrives_identical_and_teaches_estimate() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("image.iso", 3 * 1024 * 1024 + 17);
    let (code, ev, stderr) = send(&env, &file, &server.url(), &["--chunk", "1MiB"]);
    assert_eq!(code, Some(0), "{stderr}");
    let done = event(&ev, "done").expect("done event");
    assert_eq!(done["sha256"], sha256_file(&file));
    assert_eq!(done["bytes_sent"], 3 * 1024 * 1024 + 17);
    assert_eq!(done["resent_bytes"], 0);
    assert_eq!(done["published_as"], "image.iso");
    let published = server.dir.join("image.iso");
    assert_eq!(sha256_file(&published), sha256_file(&file));
    // Progress counts what the server confirmed: one event per chunk, ending at the size.
    let offsets: Vec<u64> = ev
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1 << 20, 2 << 20, 3 << 20, (3 << 20) + 17]);
    // The completed transfer is a link sample: estimate now uses history for this host.
    let (out, stdout, _) =
        run(env
            .upload()
            .args(["estimate", "1GiB", "--to", "127.0.0.1", "--json"]));
    assert!(out.status.success());
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["rate_source"], "history");
    // Sending the same, finished file again is a new transfer; the server keeps one copy.
    let (code, ev, _) = send(&env, &file, &server.url(), &[]);
    assert_eq!(code, Some(0));
    assert_eq!(event(&ev, "done").unwrap()["published_as"], "image.iso");
}

/// A server whose `Location` does not lead back to it (a proxy's path prefix it was told
/// about wrongly): the sender stops with a clear error after one creation, instead of creating
/// uploads it cannot reach, forever.
#[test]
fn a_location_that_does_not_lead_back_stops_after_one_creation() {
    let env = Env::new();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let listen = format!("127.0.0.1:{port}");
    let public = format!("http://{listen}/tus/files/");
    let server = env.serve_on(&listen, &["--public-url", &public]);
    let file = env.file("lost.bin", 100_000);
    let (code, _, stderr) = send(&env, &file, &server.url(), &["--max-retries", "3"]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("Location does not lead back"), "{stderr}");
    let created = std::fs::read_dir(server.dir.join(".partial"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "info")
        })
        .count();
    assert_eq!(created, 1, "uploads created");
}

#[test]
fn empty_and_one_byte_files() {
    let env = Env::new();
    let server = env.serve(&[]);
    for (name, len) in [("empty.bin", 0usize), ("one.bin", 1)] {
        let file = env.file(name, len);
        let (code, ev, stderr) = send(&env, &file, &server.url(), &[]);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        let done = event(&ev, "done").unwrap();
        assert_eq!(done["sha256"], sha256_file(&file));
        // An empty file is published at creation; the client still learns where.
        assert_eq!(done["published_as"], name, "{done}");
        assert_eq!(
            std::fs::read(server.dir.join(name)).unwrap(),
            pattern(len, 7)
        );
    }
}

#[test]
fn resumes_after_the_client_is_killed() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("big.iso", 2 * 1024 * 1024);
    let args = ["--limit", "4Mbit", "--chunk", "128KiB"];
    let mut child = send_until_progress(&env, &file, &server.url(), &args, 256 * 1024);
    kill9(&mut child);
    assert!(
        !server.dir.join("big.iso").exists(),
        "nothing incomplete is published"
    );
    let (code, ev, stderr) = send(&env, &file, &server.url(), &args);
    assert_eq!(code, Some(0), "{stderr}");
    let started = event(&ev, "started").unwrap();
    assert_eq!(started["resumed"], true);
    assert!(
        started["offset"].as_u64().unwrap() >= 256 * 1024,
        "{started}"
    );
    server.assert_delivered("big.iso", &file);
}

#[test]
fn resumes_after_the_server_restarts() {
    let env = Env::new();
    let mut server = env.serve(&[]);
    let addr = server.addr.to_string();
    let file = env.file("img.iso", 2 * 1024 * 1024);
    let args = ["--limit", "4Mbit", "--chunk", "128KiB"];
    let child = send_until_progress(&env, &file, &server.url(), &args, 256 * 1024);
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    let server = env.serve_on(&addr, &[]);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "client failed after the server came back"
    );
    server.assert_delivered("img.iso", &file);
}

#[test]
fn a_damaged_chunk_is_refused_and_resent() {
    let env = Env::new();
    let server = env.serve(&[]);
    let proxy = Proxy::start(server.addr);
    proxy.corrupt(2, 1000);
    let file = env.file("c.iso", 512 * 1024);
    let (code, ev, stderr) = send(&env, &file, &proxy.url(), &["--chunk", "128KiB"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        proxy
            .counters
            .corrupted
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(
        ev.iter()
            .any(|e| e["event"] == "retry" && e["error"].as_str().unwrap().contains("460")),
        "{ev:?}"
    );
    let done = event(&ev, "done").unwrap();
    eprintln!(
        "byte flipped on the wire: {} bytes re-sent",
        done["resent_bytes"]
    );
    assert_eq!(done["resent_bytes"], 128 * 1024);
    assert_eq!(proxy.patch_body_bytes(), 512 * 1024 + 128 * 1024);
    server.assert_delivered("c.iso", &file);
}

/// Our server checks chunks with sha256-upto (a digest of the upload from its first byte), which
/// a rejection repeats forever when the server holds other bytes before the chunk: three
/// rejections in a row make the session say so and check chunks with crc32, and the file
/// still arrives whole.
#[test]
fn sha256_upto_rejected_three_times_in_a_row_falls_back_to_crc32() {
    let env = Env::new();
    let server = env.serve(&[]);
    let proxy = Proxy::start(server.addr);
    proxy.corrupt_several(2, 3, 1000);
    let file = env.file("u.iso", 512 * 1024);
    let (code, ev, stderr) = send(&env, &file, &proxy.url(), &["--chunk", "128KiB"]);
    assert_eq!(code, Some(0), "{stderr}");
    let rejected = ev
        .iter()
        .filter(|e| e["event"] == "retry" && e["error"].as_str().unwrap().contains("460"))
        .count();
    assert_eq!(rejected, 3, "{ev:?}");
    let notices: Vec<&str> = (ev.iter())
        .filter(|e| e["event"] == "notice")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("sha256-upto") && n.contains("crc32 from here")),
        "{notices:?}"
    );
    let done = event(&ev, "done").unwrap();
    assert_eq!(done["resent_bytes"], 3 * 128 * 1024);
    // The first chunk and the three damaged attempts at the second went with sha256-upto,
    // every PATCH after them with crc32.
    let algorithms = proxy.checksum_algorithms();
    assert!(algorithms.len() > 4, "{algorithms:?}");
    assert!(
        algorithms[..4].iter().all(|a| a == "sha256-upto"),
        "{algorithms:?}"
    );
    assert!(
        algorithms[4..].iter().all(|a| a == "crc32"),
        "{algorithms:?}"
    );
    server.assert_delivered("u.iso", &file);
}

/// Kills the client, then edits the source before the rerun.
fn interrupted_upload(env: &Env, url: &str) -> std::path::PathBuf {
    let file = env.file("s.iso", 1024 * 1024);
    let mut child = send_until_progress(
        env,
        &file,
        url,
        &["--limit", "2Mbit", "--chunk", "64KiB"],
        128 * 1024,
    );
    kill9(&mut child);
    file
}

#[test]
fn an_edit_that_restores_the_mtime_is_caught() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = interrupted_upload(&env, &server.url());
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let mut data = std::fs::read(&file).unwrap();
    data[10] ^= 0xff; // inside the part already uploaded
    std::fs::write(&file, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (code, ev, stderr) = send(&env, &file, &server.url(), &["--chunk", "64KiB"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains("content") && stderr.contains("--restart"),
        "{stderr}"
    );
    assert_eq!(event(&ev, "error").unwrap()["exit_code"], 5);
    assert!(!server.dir.join("s.iso").exists());
    // --restart uploads the new version from the beginning.
    let (code, _, stderr) = send(&env, &file, &server.url(), &["--restart"]);
    assert_eq!(code, Some(0), "{stderr}");
    server.assert_delivered("s.iso", &file);
}

/// While a transfer runs: a chmod (only the change time moves) does not end it, and the part
/// already sent is proved again by content; an edit of that part that puts the mtime back is
/// caught by the same proof.
#[test]
fn a_chmod_mid_transfer_goes_on_but_a_hidden_edit_stops_it() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let server = env.serve(&[]);
    let args = ["--limit", "128KiB/s", "--chunk", "64KiB"];

    let file = env.file("chmod.iso", 512 * 1024);
    let mut child = send_until_progress(&env, &file, &server.url(), &args, 64 * 1024);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    server.assert_delivered("chmod.iso", &file);

    let file = env.file("edit.iso", 512 * 1024);
    let mut child = send_until_progress(&env, &file, &server.url(), &args, 64 * 1024);
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"!", 10).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let status = wait_at_most(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(5));
    assert!(!server.dir.join("edit.iso").exists());
}

#[test]
fn a_changed_size_is_caught() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = interrupted_upload(&env, &server.url());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all_at_end(b"more");
    let (code, _, stderr) = send(&env, &file, &server.url(), &[]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("size changed"), "{stderr}");
}

trait AppendExt {
    fn write_all_at_end(self, data: &[u8]);
}

impl AppendExt for std::fs::File {
    fn write_all_at_end(mut self, data: &[u8]) {
        use std::io::Write;
        self.write_all(data).unwrap();
    }
}

#[test]
fn auth_is_required_and_checked() {
    let env = Env::new();
    let tokens = env.path("tokens");
    std::fs::write(&tokens, "# team tokens\ns3cret-token\n").unwrap();
    let server = env.serve(&["--token-file", tokens.to_str().unwrap()]);
    let file = env.file("a.iso", 1000);
    let (code, _, stderr) = send(&env, &file, &server.url(), &[]);
    assert_eq!(code, Some(7), "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    let wrong = env.path("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let (code, _, _) = send(
        &env,
        &file,
        &server.url(),
        &["--token-file", wrong.to_str().unwrap()],
    );
    assert_eq!(code, Some(7));
    let (code, _, stderr) = send(
        &env,
        &file,
        &server.url(),
        &["--token-file", tokens.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{stderr}");
    // The token may come from the environment too.
    let file2 = env.file("b.iso", 10);
    let (out, _, stderr) = run(env
        .upload()
        .env("UPLOAD_TOKEN", "s3cret-token")
        .arg("send")
        .arg(&file2)
        .arg(server.url()));
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn each_failure_has_its_exit_status() {
    let env = Env::new();
    let server = env.serve(&["--max-size", "1KiB"]);
    let file = env.file("f.iso", 100);
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec![env.path("missing.iso").display().to_string(), server.url()],
            3,
            "does not exist",
        ),
        (
            vec![env.dir.path().display().to_string(), server.url()],
            4,
            "not a regular file",
        ),
        (
            vec![file.display().to_string(), "ftp://x/files/".into()],
            2,
            "ftp://x/files/",
        ),
        (
            vec![file.display().to_string(), "not a url".into()],
            2,
            "not a url",
        ),
        // A closed port: retried, then given up with --max-retries.
        (
            vec![
                file.display().to_string(),
                "http://127.0.0.1:9/files/".into(),
                "--max-retries".into(),
                "1".into(),
            ],
            6,
            "gave up",
        ),
        (
            vec![
                env.file("big.iso", 4096).display().to_string(),
                server.url(),
            ],
            8,
            "4096",
        ),
    ];
    for (args, want, needle) in cases {
        let (out, _, stderr) = run(env.upload().arg("send").args(&args));
        assert_eq!(out.status.code(), Some(want), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

#[test]
fn a_second_sender_of_the_same_transfer_is_told_it_is_busy() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("busy.iso", 1024 * 1024);
    let args = ["--limit", "1Mbit", "--chunk", "64KiB"];
    let mut first = send_until_progress(&env, &file, &server.url(), &args, 0);
    let (code, _, stderr) = send(&env, &file, &server.url(), &args);
    assert_eq!(code, Some(10), "{stderr}");
    assert!(stderr.contains("another upload process"), "{stderr}");
    kill9(&mut first);
    // Once the first is dead, its lock does not block a rerun.
    let (code, _, stderr) = send(&env, &file, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
}

/// The promise: kill -9 at random moments (ten in CI; `UPLOAD_KILLS=20` in the full
/// fault suite), and the bytes sent twice stay within one chunk per kill, counted on the wire
/// by a proxy. The schedule is seeded, so a failure reproduces.
#[test]
fn random_kills_resend_at_most_a_chunk_each() {
    use rand::{Rng, SeedableRng};
    let env = Env::new();
    let server = env.serve(&[]);
    let proxy = Proxy::start(server.addr);
    let kills: u64 = std::env::var("UPLOAD_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(10);
    // Big enough that the last kill still lands mid-transfer (each run sends for 0.2-0.9 s
    // at 2 Mbit/s).
    let size = kills as usize * 320 * 1024;
    let chunk = 64 * 1024;
    let file = env.file("k.iso", size);
    let args = ["--limit", "2Mbit", "--chunk", "64KiB", "--json"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261125);
    for _ in 0..kills {
        let mut child = env
            .upload()
            .arg("send")
            .arg(&file)
            .arg(proxy.url())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(200..900)));
        kill9(&mut child);
    }
    let (code, ev, stderr) = send(&env, &file, &proxy.url(), &["--chunk", "64KiB"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(event(&ev, "done").is_some());
    server.assert_delivered("k.iso", &file);
    let on_wire = proxy.patch_body_bytes();
    let resent = on_wire - size as u64;
    eprintln!("{kills} kills: {on_wire} PATCH body bytes on the wire for {size}, {resent} re-sent");
    assert!(
        resent <= kills * chunk,
        "re-sent {resent} bytes over {kills} kills, chunk {chunk}"
    );
}

/// A connection that dies silently (no FIN, no RST: the proxy just stops moving bytes) is
/// noticed by the absence of TCP progress, not TCP's minutes of backoff; the new connection
/// takes the upload over from the server's stuck request.
#[test]
fn a_silently_dead_connection_is_replaced_within_the_stall_timeout() {
    let env = Env::new();
    let server = env.serve(&[]);
    let proxy = Proxy::start(server.addr);
    let file = env.file("dead.iso", 2 * 1024 * 1024);
    let args = [
        "--limit",
        "8Mbit",
        "--chunk",
        "256KiB",
        "--stall-timeout",
        "2s",
    ];
    let mut child = send_until_progress(&env, &file, &proxy.url(), &args, 0);
    let frozen_at = Instant::now();
    proxy.freeze_open_connections();
    let status = wait_at_most(&mut child, Duration::from_secs(30));
    let took = frozen_at.elapsed();
    eprintln!("frozen connection, --stall-timeout 2s: finished {took:?} after the freeze");
    assert!(status.success());
    server.assert_delivered("dead.iso", &file);
    // 2 MiB at 8 Mbit/s is about 2 s of sending; the stall costs 2 s more, plus a reconnect.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        proxy
            .counters
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
}

/// The limiter as the wire sees it: an even rate from the first second, no initial burst.
#[test]
fn a_throttled_send_is_smooth_on_the_wire() {
    let env = Env::alone();
    let server = env.serve(&[]);
    let proxy = Proxy::start(server.addr);
    let file = env.file("smooth.iso", 4 * 1024 * 1024);
    let rate = 64.0 * 1024.0;
    let mut child = env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(proxy.url())
        .args(["--limit", "64KiB/s", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Sample the proxy's count every 50 ms for 4 s, from the first byte on.
    let start = Instant::now();
    while proxy.patch_body_bytes() == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let mut samples = vec![(0.0f64, proxy.patch_body_bytes())];
    while t0.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(50));
        samples.push((t0.elapsed().as_secs_f64(), proxy.patch_body_bytes()));
    }
    kill9(&mut child);
    let (t_end, b_end) = *samples.last().unwrap();
    let mean = (b_end - samples[0].1) as f64 / t_end;
    let mut worst = 0.0f64;
    for (i, &(ta, ba)) in samples.iter().enumerate() {
        if let Some(&(tb, bb)) = samples[i..].iter().find(|(t, _)| *t >= ta + 1.0) {
            worst = worst.max((bb - ba) as f64 / (tb - ta));
        }
    }
    eprintln!(
        "mean {:.3} x, worst 1-s window {:.3} x",
        mean / rate,
        worst / rate
    );
    assert!(
        (mean / rate - 1.0).abs() < 0.03,
        "mean {mean} B/s for {rate}"
    );
    assert!(
        worst / rate < 1.15,
        "a 1-s window carried {worst} B/s for {rate}"
    );
}

/// Whoever reads `--json` may go away (a closed pipe): the upload goes on and succeeds.
#[test]
fn a_closed_stdout_does_not_stop_an_upload() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("pipe.iso", 512 * 1024);
    let mut child = env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(server.url())
        .args(["--json", "--limit", "4Mbit", "--chunk", "64KiB"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = wait_at_most(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    server.assert_delivered("pipe.iso", &file);
}

/// Without --chunk and --limit the chunk size follows the confirmed rate: it starts at
/// 256 KiB and at most quadruples per chunk, so a slow link never stakes a huge chunk on one
/// request and a fast one soon sends large ones; a chunk whose read-ahead is behind is cut,
/// never below twice the one before.
#[test]
fn unthrottled_chunks_start_small_and_grow() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("ramp.iso", 8 << 20);
    let (code, ev, stderr) = send(&env, &file, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let offsets: Vec<u64> = ev
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    // 256 KiB first; then each chunk is planned at four times the one before (or what is
    // left) and may be cut to half of that where its read-ahead is behind.
    assert_eq!(offsets.first(), Some(&(256 * 1024)), "{offsets:?}");
    assert_eq!(offsets.last(), Some(&(8 << 20)), "{offsets:?}");
    let ends: Vec<u64> = std::iter::once(0).chain(offsets.iter().copied()).collect();
    for w in ends.windows(3) {
        let (last, len) = (w[1] - w[0], w[2] - w[1]);
        let planned = (4 * last).min((8 << 20) - w[1]);
        assert!(len <= planned && 2 * len >= planned, "{offsets:?}");
    }
}

/// Starts `send --json` and returns once the upload exists on the server (its `started`
/// event), so a test can change the source while the first (here: only) chunk is on the wire.
fn send_until_started(env: &Env, file: &Path, url: &str, extra: &[&str]) -> Child {
    send_until(
        env,
        file,
        url,
        extra,
        Stdio::piped(),
        "started event",
        |v| v["event"] == "started",
    )
}

/// Issue 11, item 3: a change to the source while its last (here its only) chunk is sent is
/// caught before success is reported (exit 5), and the server publishes nothing under the
/// file's name: the last bytes are held back until the file is proved unchanged. Each case
/// sends 96 KiB at 16 KiB/s (one chunk, about 6 s) and changes the file 1.5 s in, in a part
/// both reads had already passed, so only a check after the last byte can see it.
#[test]
fn a_change_during_the_last_chunk_is_caught() {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    let server = env.serve(&[]);
    let args = ["--limit", "16KiB/s"];
    let size = 96 * 1024;
    type Change = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "append.iso",
            Box::new(|f: &Path| {
                let mut f = std::fs::OpenOptions::new().append(true).open(f).unwrap();
                f.write_all(b"more").unwrap();
            }),
        ),
        (
            "edit.iso",
            Box::new(|f: &Path| {
                let mtime = std::fs::metadata(f).unwrap().modified().unwrap();
                let file = std::fs::File::options().write(true).open(f).unwrap();
                file.write_all_at(b"!", 10).unwrap();
                file.set_modified(mtime).unwrap();
            }),
        ),
        (
            "renamed.iso",
            Box::new(|f: &Path| {
                let other = f.with_extension("new");
                std::fs::write(&other, pattern(96 * 1024, 99)).unwrap();
                std::fs::rename(&other, f).unwrap();
            }),
        ),
    ];
    for (name, change) in cases {
        let file = env.file(name, size);
        let mut child = send_until_started(&env, &file, &server.url(), &args);
        std::thread::sleep(Duration::from_millis(1500));
        change(&file);
        let status = wait_at_most(&mut child, Duration::from_secs(30));
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(5), "{name}: {stderr}");
        assert!(stderr.contains("changed"), "{name}: {stderr}");
        assert!(
            !server.dir.join(name).exists(),
            "{name} was published although it changed while being sent"
        );
    }
}

/// A file still being written when `upload send` starts: the server must not end up with a
/// truncated copy while the sender says "verified".
#[test]
fn a_file_still_being_written_is_not_published_truncated() {
    use std::io::Write;
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("growing.iso", 32 * 1024);
    let writer = {
        let file = file.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            for i in 0..20 {
                f.write_all(&pattern(4096, i)).unwrap();
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let (code, _, stderr) = send(&env, &file, &server.url(), &["--limit", "16KiB/s"]);
    writer.join().unwrap();
    assert_eq!(code, Some(5), "{stderr}");
    assert!(!server.dir.join("growing.iso").exists());
}

/// Issue 11's closing remark: a `give_up_after` in the configuration file (which `config
/// show` reports) is what `upload send` does; a flag still overrides it.
#[test]
fn the_config_files_give_up_after_is_honoured_by_send() {
    let env = Env::new();
    let config = env.path("config/upload/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "give_up_after = \"2s\"\n").unwrap();
    let file = env.file("f.iso", 100);
    // A closed port: failing from the first attempt.
    let dead = "http://127.0.0.1:9/files/";
    let (out, stdout, _) = run(env.upload().args(["config", "show", "--json"]));
    assert!(out.status.success());
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["settings"]["give_up_after"]["source"], "config");
    assert_eq!(shown["settings"]["give_up_after"]["send_seconds"], 2.0);

    let began = Instant::now();
    let mut child = env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(dead)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("gave up"), "{stderr}");
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );

    // The flag wins over the file: 1 h would not end within the test's patience.
    let mut child = env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(dead)
        .args(["--give-up-after", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().unwrap().is_none(), "gave up before 1 h");
    kill9(&mut child);
}

/// Starts a plain (non-JSON) `upload send` and returns it with its stderr lines arriving on
/// a channel.
fn send_plain(
    env: &Env,
    file: &Path,
    url: &str,
    extra: &[&str],
) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = env
        .upload()
        .arg("send")
        .arg(file)
        .arg(url)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Ctrl-C is not an error: the user is told that nothing confirmed is lost and how to go on.
#[test]
fn ctrl_c_says_progress_is_saved_and_how_to_continue() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("ctrlc.iso", 1024 * 1024);
    let (mut child, lines) = send_plain(
        &env,
        &file,
        &server.url(),
        &["--limit", "256kbit", "--chunk", "16KiB"],
    );
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(" of 1.0 MiB ")) {
        seen.push(
            lines
                .recv_timeout(Duration::from_secs(30))
                .expect("a progress line"),
        );
    }
    crate::helper::signal(child.id(), "-INT");
    let status = wait_at_most(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    let rest: Vec<String> = lines.iter().collect();
    let last = rest.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("interrupted: progress is saved ("),
        "{rest:?}"
    );
    assert!(last.contains("run the same command again"), "{last}");
    assert!(!last.contains("error"), "{last}");
    // And the same command does continue.
    let (code, ev, stderr) = send(&env, &file, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(event(&ev, "started").unwrap()["resumed"], true);
}

/// A URL without `/files/` reaches the server but no endpoint: say where the endpoint is,
/// with the usage status, and no note about checksums that hides the real problem.
#[test]
fn a_url_without_files_is_told_where_the_endpoint_is() {
    let env = Env::new();
    let server = env.serve(&[]);
    let file = env.file("nofiles.iso", 1000);
    for url in [
        format!("http://{}", server.addr),
        format!("http://{}/upload/", server.addr),
    ] {
        let (out, _, stderr) = run(env.upload().arg("send").arg(&file).arg(&url));
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("no tus upload endpoint"), "{stderr}");
        assert!(
            stderr.contains(&format!("a tus server answers at {}", server.url())),
            "{stderr}"
        );
        assert!(!stderr.contains("checksum"), "{stderr}");
    }
}

/// While the server is down the engine tries every half second; plain output says so on the
/// first failure and then at growing intervals, with the count, instead of once per attempt
/// (12 lines in 6 s before).
#[test]
fn retries_while_the_server_is_down_are_folded() {
    let env = Env::new();
    let file = env.file("down.iso", 1000);
    let (out, _, stderr) = run(env.upload().arg("send").arg(&file).args([
        "http://127.0.0.1:9/files/",
        "--give-up-after",
        "6s",
    ]));
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    let retries: Vec<&str> = stderr.lines().filter(|l| l.starts_with("retry ")).collect();
    assert_eq!(retries.len(), 1, "{stderr}");
    assert!(retries[0].starts_with("retry 1 in "), "{stderr}");
    assert!(retries[0].contains("Connection refused"), "{stderr}");
    let gave_up = stderr.lines().last().unwrap();
    assert!(gave_up.contains("gave up after"), "{stderr}");
}

/// From the first line the plain display shows the rate in the unit of the limit and an ETA
/// (the limit is known before anything is confirmed), each progress line a percentage; the
/// JSON events carry the same figures and one timestamp format.
#[test]
fn progress_shows_percent_and_the_limits_unit_from_the_start() {
    let env = Env::new();
    let server = env.serve(&[]);
    for (limit, unit) in [("256kbit", " kbit/s"), ("16KiB/s", " KiB/s")] {
        let file = env.file(
            &format!("units-{}.iso", unit.trim().replace('/', "")),
            40_000,
        );
        let (mut child, lines) = send_plain(
            &env,
            &file,
            &server.url(),
            &["--limit", limit, "--chunk", "16KiB"],
        );
        assert!(wait_at_most(&mut child, Duration::from_secs(30)).success());
        let lines: Vec<String> = lines.iter().collect();
        let planned = &lines[1];
        assert!(planned.starts_with("planned: "), "{lines:?}");
        assert!(
            planned.contains(unit) && planned.contains("(--limit), about "),
            "{planned}"
        );
        let progress: Vec<&String> = lines.iter().filter(|l| l.contains(" % ")).collect();
        assert!(!progress.is_empty(), "{lines:?}");
        for l in &progress {
            assert!(l.contains(unit) && l.contains(" of 39.1 KiB "), "{l}");
            assert!(!l.contains("ETA ?"), "{l}");
        }
        assert!(
            progress
                .last()
                .unwrap()
                .starts_with("100.0 %  39.1 KiB of 39.1 KiB")
        );
    }
    let file = env.file("units.json.iso", 40_000);
    let (code, ev, stderr) = send(&env, &file, &server.url(), &["--limit", "256kbit"]);
    assert_eq!(code, Some(0), "{stderr}");
    let started = event(&ev, "started").unwrap();
    assert_eq!(started["planned_rate_bps"], 256_000.0, "{started}");
    assert!(started["eta_seconds"].as_f64().unwrap() > 1.0, "{started}");
    assert_eq!(event(&ev, "progress").unwrap()["percent"], 100.0);
    for e in &ev {
        let t = e["timestamp"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.len() == 20 && t.ends_with('Z'),
            "{e}"
        );
    }
}

/// A server that comes up after the first attempts: one retry line, then one line that the
/// outage is over and how long it lasted, then the upload as usual.
#[test]
fn the_end_of_an_outage_is_reported_once() {
    let env = Env::new();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let file = env.file("late.iso", 100_000);
    let url = format!("http://{addr}/files/");
    let (mut child, lines) = send_plain(&env, &file, &url, &[]);
    let first = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.starts_with("retry 1 in "), "{first}");
    std::thread::sleep(Duration::from_secs(2));
    let server = env.serve_on(&addr.to_string(), &[]);
    assert!(wait_at_most(&mut child, Duration::from_secs(30)).success());
    let rest: Vec<String> = lines.iter().collect();
    let retries = rest.iter().filter(|l| l.starts_with("retry ")).count();
    assert_eq!(retries, 0, "{rest:?}");
    let back: Vec<&String> = rest
        .iter()
        .filter(|l| l.starts_with("sending again after "))
        .collect();
    assert_eq!(back.len(), 1, "{rest:?}");
    assert!(back[0].contains(" failed attempts over "), "{rest:?}");
    server.assert_delivered("late.iso", &file);
}
