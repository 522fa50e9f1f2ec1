//! The fault suite's shaped-link cases in their short form: a real uplink shaped by the kernel
//! (the project's lab, `scripts/linklab/slowlink`: client, modem and server network namespaces,
//! tc tbf), cut silently or made lossy. Small files and fast rates keep them inside CI's budget;
//! the long runs (128 kbit/s, 60 s outages) are `scripts/bench_link.py`. They need root,
//! network namespaces and iptables, so a plain `cargo test` skips them and
//! `cargo test -- --include-ignored` runs them (.ci/run installs iptables and runs them).

use crate::helper::{Env, sha256_file};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// One lab per test, on its own /24, torn down on drop.
struct Lab {
    prefix: String,
    net: String,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Why these tests run only when asked for.
const NEEDS: &str = "needs root, network namespaces and iptables (cargo test -- --include-ignored)";

fn slowlink() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/linklab/slowlink")
}

impl Lab {
    fn up(rate: &str, latency: &str) -> Lab {
        assert!(
            slowlink().exists(),
            "{} is missing from this checkout",
            slowlink().display()
        );
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let lab = Lab {
            prefix: format!("ut{}x{n}", std::process::id() % 10000),
            net: format!("10.77.{}", 200 + (std::process::id() % 40) + n),
        };
        let out = lab
            .cmd()
            .args(["up", "--rate", rate, "--latency", latency])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", slowlink().display()));
        assert!(
            out.status.success(),
            "slowlink up failed: this test {NEEDS}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(slowlink());
        c.env("SLOWLINK_PREFIX", &self.prefix)
            .env("SLOWLINK_NET", &self.net);
        c
    }

    fn server_ip(&self) -> String {
        format!("{}.2", self.net)
    }

    /// `slowlink exec NS` + the real binary with the test's environment.
    fn upload(&self, env: &Env, ns: &str) -> Command {
        let template = env.upload();
        let mut c = self.cmd();
        c.args(["exec", ns, env!("CARGO_BIN_EXE_upload")]);
        for (k, v) in template.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    fn run(&self, args: &[&str]) {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "slowlink {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cmd().arg("down").output();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `upload serve` in the server namespace with a token; returns it and the URL.
fn serve(lab: &Lab, env: &Env) -> (Killed, String, PathBuf) {
    let dir = env.path("inbox");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(env.path("token"), "link-test-token\n").unwrap();
    let listen = format!("{}:8090", lab.server_ip());
    let mut child = lab
        .upload(env, "server")
        .args(["serve", "--dir"])
        .arg(&dir)
        .args(["--listen", &listen, "--token-file"])
        .arg(env.path("token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("listening on"), "{first}");
    (Killed(child), format!("http://{listen}/files/"), dir)
}

/// `send --json` in the client namespace; events arrive with their time since the start.
fn send(
    lab: &Lab,
    env: &Env,
    file: &std::path::Path,
    url: &str,
    args: &[&str],
) -> (Killed, std::sync::mpsc::Receiver<(f64, Value)>) {
    let mut child = lab
        .upload(env, "client")
        .arg("send")
        .arg(file)
        .arg(url)
        .arg("--token-file")
        .arg(env.path("token"))
        .arg("--json")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send((t0.elapsed().as_secs_f64(), v));
            }
        }
    });
    (Killed(child), rx)
}

/// Waits for an event named `name` (up to `limit`), returning it and its time.
fn wait_event(
    rx: &std::sync::mpsc::Receiver<(f64, Value)>,
    name: &str,
    limit: Duration,
) -> (f64, Value) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, v)) if v["event"] == name => return (t, v),
            Ok((_, v)) if v["event"] == "error" => panic!("send failed: {v}"),
            Ok(_) => {}
            Err(_) => panic!("no {name} event within {limit:?}"),
        }
    }
}

/// The link goes silent (no FIN, no RST) mid-chunk and comes back: the transfer continues by
/// itself within seconds of the return, not after TCP's minute of backoff.
#[test]
#[ignore = "needs root, network namespaces and iptables (cargo test -- --include-ignored)"]
fn a_silent_cut_mid_chunk_heals_by_itself() {
    let env = Env::new();
    let lab = Lab::up("2mbit", "200ms");
    let (_server, url, dir) = serve(&lab, &env);
    let file = env.file("cut.iso", 1 << 20);
    let (_client, rx) = send(
        &lab,
        &env,
        &file,
        &url,
        &["--chunk", "128KiB", "--stall-timeout", "3s"],
    );
    wait_event(&rx, "progress", Duration::from_secs(30));
    lab.run(&["cut"]);
    let cut_at = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    lab.run(&["restore"]);
    let restored = cut_at.elapsed().as_secs_f64();
    // The first progress after the restore, measured from the restore.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut recovered = None;
    let mut retries = 0;
    while recovered.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (t, v) = rx.recv_timeout(left).expect("the transfer went on");
        if v["event"] == "retry" {
            retries += 1;
        }
        if v["event"] == "progress" && cut_at.elapsed().as_secs_f64() > restored {
            recovered = Some(cut_at.elapsed().as_secs_f64() - restored);
            let _ = t;
        }
        if v["event"] == "done" {
            recovered = Some(cut_at.elapsed().as_secs_f64() - restored);
        }
    }
    let recovered = recovered.unwrap();
    wait_event(&rx, "done", Duration::from_secs(60));
    eprintln!(
        "silent 8 s cut at 2 Mbit/s: first confirmed chunk {recovered:.1} s after the restore, {retries} retries"
    );
    assert_eq!(sha256_file(&dir.join("cut.iso")), sha256_file(&file));
    // A 128 KiB chunk takes 0.5 s at 2 Mbit/s; reconnecting is probed every ~0.5 s.
    assert!(
        recovered < 5.0,
        "data flowed again {recovered:.1} s after the restore"
    );
}

/// 5 % of packets lost each way for the whole transfer: it completes, and the goodput is
/// what TCP can do on such a link.
#[test]
#[ignore = "needs root, network namespaces and iptables (cargo test -- --include-ignored)"]
fn five_percent_packet_loss_completes() {
    let env = Env::new();
    let lab = Lab::up("4mbit", "200ms");
    let (_server, url, dir) = serve(&lab, &env);
    lab.run(&["loss", "5%"]);
    let size = 512 * 1024;
    let file = env.file("loss.iso", size);
    let t0 = Instant::now();
    let (_client, rx) = send(&lab, &env, &file, &url, &["--chunk", "64KiB"]);
    let (_, done) = wait_event(&rx, "done", Duration::from_secs(120));
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "5 % loss at 4 Mbit/s: {size} bytes in {secs:.1} s, goodput {:.0} kbit/s, {} bytes re-sent",
        size as f64 * 8.0 / secs / 1000.0,
        done["resent_bytes"]
    );
    assert_eq!(sha256_file(&dir.join("loss.iso")), sha256_file(&file));
}
