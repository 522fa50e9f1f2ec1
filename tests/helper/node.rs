//! Node.js for the interop tests: installs `tests/interop` (the official tus client and server,
//! pinned in its package-lock.json) once, runs its scripts with deadlines, and kills them on drop.
//!
//! The tests that use it are `#[ignore]`d in a plain `cargo test`; run (`--include-ignored`),
//! they need Node.js and npm: without them they fail, they are never skipped.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// @tus/server 2 and @tus/file-store 2 need this (their `engines`); tus-js-client 4 needs 18.
const MIN_NODE: (u32, u32) = (20, 19);

const INSTALL_HINT: &str = "the interop tests need Node.js 20.19 or newer and npm on PATH \
     (e.g. `apt-get install nodejs npm`, or from https://nodejs.org/); \
     they install their packages themselves with `npm ci` in tests/interop";

/// `tests/interop`, where package.json and the scripts are.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("interop")
}

/// Makes sure node is new enough and `tests/interop/node_modules` matches package-lock.json,
/// running `npm ci` when node_modules is missing or older than the lock file. Once per test
/// process; a file lock keeps parallel test processes from running npm at the same time.
/// Panics (fails the test) with a clear message when Node.js or npm is missing.
pub fn ensure_npm_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = DONE.get_or_init(install) {
        panic!("{e}");
    }
}

fn install() -> Result<(), String> {
    check_node()?;
    let dir = interop_dir();
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-npm-install.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    // Blocks until no other test process is installing; released when `lock` is closed.
    // SAFETY: flock on a file descriptor that stays open for this whole function.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    if !installed_is_current(&dir) {
        let mut cmd = Command::new("npm");
        cmd.args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir);
        let (out, stdout, stderr) = match output_within(&mut cmd, Duration::from_secs(300)) {
            Ok(r) => r,
            Err(e) => {
                return Err(format!(
                    "`npm ci` in {}: {e}; {INSTALL_HINT}",
                    dir.display()
                ));
            }
        };
        if !out.status.success() {
            return Err(format!(
                "`npm ci` in {} failed ({}):\n{stdout}\n{stderr}",
                dir.display(),
                out.status
            ));
        }
        if !installed_is_current(&dir) {
            return Err(format!(
                "`npm ci` in {} left no node_modules/.package-lock.json",
                dir.display()
            ));
        }
    }
    drop(lock);
    Ok(())
}

fn check_node() -> Result<(), String> {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `node --version`: {e}; {INSTALL_HINT}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().trim_start_matches('v');
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return Err(format!("`node --version` printed {text:?}; {INSTALL_HINT}"));
    };
    if (major, minor) < MIN_NODE {
        return Err(format!("found Node.js {version}, too old: {INSTALL_HINT}"));
    }
    Command::new("npm")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `npm --version`: {e}; {INSTALL_HINT}"))?;
    Ok(())
}

/// npm writes node_modules/.package-lock.json on every install: current when it is at least
/// as new as package-lock.json.
fn installed_is_current(dir: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let lock = modified(dir.join("package-lock.json")).unwrap_or(SystemTime::now());
    match modified(dir.join("node_modules").join(".package-lock.json")) {
        Some(installed) => installed >= lock,
        None => false,
    }
}

/// `node SCRIPT` in tests/interop (installed first), SCRIPT being a file there.
pub fn node(script: &str) -> Command {
    ensure_npm_installed();
    let mut cmd = Command::new("node");
    cmd.arg(interop_dir().join(script))
        .current_dir(interop_dir());
    cmd
}

/// Runs `cmd` to its end, killing it and failing the test past `limit`.
pub fn run_within(cmd: &mut Command, limit: Duration) -> (Output, String, String) {
    output_within(cmd, limit).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn output_within(cmd: &mut Command, limit: Duration) -> Result<(Output, String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            return Err(format!(
                "still running after {limit:?}, killed\nstdout:\n{stdout}\nstderr:\n{stderr}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok((output, stdout, stderr))
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct NodeProcess {
    pub child: Child,
}

impl NodeProcess {
    /// Starts `cmd` with stdout piped and waits up to `limit` for its first line, which it
    /// returns; later stdout lines are drained and dropped. stderr goes to the test's stderr.
    pub fn start_and_read_line(mut cmd: Command, limit: Duration) -> (Self, String) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut proc = NodeProcess { child };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        match rx.recv_timeout(limit) {
            Ok(line) => (proc, line),
            Err(_) => {
                proc.kill();
                panic!(
                    "{cmd:?} printed no line within {limit:?} ({:?})",
                    proc.child.try_wait()
                );
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The official tus server (@tus/server + @tus/file-store) storing into `store`.
pub struct TusNodeServer {
    pub process: NodeProcess,
    /// `http://127.0.0.1:PORT/files/`
    pub url: String,
    pub store: PathBuf,
}

impl TusNodeServer {
    pub fn start(store: &Path) -> Self {
        let mut cmd = node("tus_server.mjs");
        cmd.arg(store);
        let (process, line) = NodeProcess::start_and_read_line(cmd, Duration::from_secs(20));
        let url = line
            .strip_prefix("listening on ")
            .filter(|u| u.starts_with("http://127.0.0.1:") && u.ends_with("/files/"))
            .unwrap_or_else(|| panic!("tus_server.mjs: unexpected first line {line:?}"))
            .to_string();
        TusNodeServer {
            process,
            url,
            store: store.to_path_buf(),
        }
    }
}
