//! Shared fixtures: a temp dir with its own state database, and the real `upload` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh directory and state database for one test.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// This test's hold on the suite: shared, or the whole of it ([`Env::alone`]).
    _suite: Suite,
}

/// Tests run two at a time on two cores; one that measures a rate on the wire measures the
/// CPU it gets as well. Such a test holds the suite alone: it starts once the tests running
/// have ended, and the others wait for it (std's lock lets no new reader in while a writer
/// waits). Seen without it: two transfers under a 96 KiB/s budget got 92 % of it while the
/// delta, S3 and ssh tests ran beside them, and 100.06 % alone.
static SUITE: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum Suite {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
    /// A second `Env` of a test that holds one already: asking again could wait for a test
    /// that waits for this one.
    Nested,
}

thread_local! {
    /// How many `Env`s this thread (one test) holds.
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl Drop for Env {
    fn drop(&mut self) {
        HELD.with(|h| h.set(h.get().saturating_sub(1)));
    }
}

impl Env {
    pub fn new() -> Self {
        let suite = if HELD.with(|h| h.get()) > 0 {
            Suite::Nested
        } else {
            Suite::Shared(SUITE.read().unwrap_or_else(|e| e.into_inner()))
        };
        HELD.with(|h| h.set(h.get() + 1));
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
            _suite: suite,
        }
    }

    /// As [`Env::new`], for a test that measures a rate or a time on the wire: it runs with no
    /// other test beside it.
    pub fn alone() -> Self {
        let alone = SUITE.write().unwrap_or_else(|e| e.into_inner());
        HELD.with(|h| h.set(h.get() + 1));
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
            _suite: Suite::Alone(alone),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db(&self) -> PathBuf {
        self.path("state.db")
    }

    /// The real binary, with this test's database, UTC as local time, and no inherited
    /// configuration.
    pub fn upload(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_upload"));
        cmd.env("UPLOAD_DB", self.db())
            .env("TZ", "UTC")
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env_remove("UPLOAD_TOKEN")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Writes `len` bytes of a repeatable pattern and returns the path.
    pub fn file(&self, name: &str, len: usize) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, pattern(len, 7)).expect("write test file");
        p
    }
}

/// Deterministic, non-repeating-looking bytes (a small xorshift), so offsets matter.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a command and returns its output, with stdout and stderr as text for assertions.
pub fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run upload");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let data = std::fs::read(path).expect("read for hash");
    hex::encode(sha2::Sha256::digest(&data))
}
pub mod http;

pub mod proxy;
pub mod s3;
pub mod serve;
pub mod sshd;

impl Env {
    /// Starts `upload serve` on a free loopback port, storing into `inbox/`, without auth.
    pub fn serve(&self, extra: &[&str]) -> serve::ServeProcess {
        self.serve_on("127.0.0.1:0", extra)
    }

    pub fn serve_on(&self, listen: &str, extra: &[&str]) -> serve::ServeProcess {
        let dir = self.path("inbox");
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = self.upload();
        cmd.args(["serve", "--dir"])
            .arg(&dir)
            .args(["--listen", listen]);
        if !extra.contains(&"--token-file") {
            cmd.arg("--no-auth");
        }
        cmd.args(extra);
        serve::ServeProcess::start(cmd, &dir)
    }
}
pub mod node;

/// The JSON objects among a command's output lines (`--json` events, log lines).
pub fn json_events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The first event named `name`.
pub fn event<'a>(all: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    all.iter().find(|e| e["event"] == name)
}

/// Waits for the child, killing it (and failing the test) if it runs past `limit`.
pub fn wait_at_most(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            kill9(child);
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn kill9(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends a signal (`-STOP`, `-TERM`, ...) to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Starts `send --json` and returns once it reported confirmed progress beyond `min_offset`.
pub fn send_until_progress(
    env: &Env,
    file: &Path,
    url: &str,
    extra: &[&str],
    min_offset: u64,
) -> std::process::Child {
    send_until(
        env,
        file,
        url,
        extra,
        std::process::Stdio::null(),
        &format!("progress beyond {min_offset}"),
        |v| v["event"] == "progress" && v["offset"].as_u64().unwrap() > min_offset,
    )
}

/// Starts `send --json` (its stderr as given) and returns once an event satisfies `reached`,
/// keeping stdout drained; kills it and panics, naming `what`, after 30 s without one.
pub fn send_until(
    env: &Env,
    file: &Path,
    url: &str,
    extra: &[&str],
    stderr: std::process::Stdio,
    what: &str,
    reached: impl Fn(&serde_json::Value) -> bool,
) -> std::process::Child {
    let mut child = env
        .upload()
        .arg("send")
        .arg(file)
        .arg(url)
        .arg("--json")
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if reached(&v) {
            // Keep the pipe drained in the background so the client never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return child;
        }
    }
    kill9(&mut child);
    panic!("no {what} within 30 s");
}

/// `upload send FILE URL --json EXTRA...`: its exit status, its JSON events and its stderr.
pub fn send_json(
    env: &Env,
    file: &Path,
    url: &str,
    extra: &[&str],
) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let (out, stdout, stderr) = run(env
        .upload()
        .arg("send")
        .arg(file)
        .arg(url)
        .arg("--json")
        .args(extra));
    (out.status.code(), json_events(&stdout), stderr)
}
