//! Interoperability with the official Node.js tus implementations (tests/interop, pinned in its
//! package-lock.json): tus-js-client against `upload serve`, and `upload send` against
//! @tus/server with @tus/file-store, and tus-js-client's browser build in headless Chromium
//! on another origin (CORS). Needs Node.js, npm and Chromium, so a plain `cargo test` leaves these
//! out (`#[ignore]`) and `cargo test -- --include-ignored` runs them; run, they fail (never skip)
//! without them.

use crate::helper::node::{NodeProcess, TusNodeServer, node, run_within};
use crate::helper::{Env, event, json_events as events, sha256_file};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const MIB: usize = 1 << 20;
/// Every single script or client run; whole tests stay well under a minute.
const LIMIT: Duration = Duration::from_secs(40);

/// Runs js_upload.mjs (tus-js-client) and returns its one JSON line.
fn js_upload(endpoint: &str, file: &Path, extra: &[&str]) -> Value {
    let mut cmd = node("js_upload.mjs");
    cmd.arg(endpoint)
        .arg(file)
        .args(extra)
        .args(["--timeout", "35"]);
    let (out, stdout, stderr) = run_within(&mut cmd, LIMIT);
    assert!(
        out.status.success(),
        "js_upload.mjs {extra:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "js_upload.mjs should print one line:\n{stdout}\nstderr:\n{stderr}"
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {:?}", lines[0]))
}

/// Names in `dir` (not recursive).
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn send_cmd(env: &Env, file: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = env.upload();
    cmd.arg("send")
        .arg(file)
        .arg(url)
        .args(["--json", "--max-retries", "3"])
        .args(extra);
    cmd
}

/// The one upload @tus/file-store holds in `store`: its data file (named by the upload id) and
/// the parsed `ID.json` sidecar.
fn stored_upload(store: &Path) -> (PathBuf, Value) {
    let all = names(store);
    let data: Vec<&String> = all.iter().filter(|n| !n.ends_with(".json")).collect();
    assert_eq!(
        data.len(),
        1,
        "expected one upload in the @tus/file-store dir, found {all:?}"
    );
    let id = data[0];
    assert!(
        all.contains(&format!("{id}.json")),
        "no sidecar for {id}: {all:?}"
    );
    let sidecar = std::fs::read_to_string(store.join(format!("{id}.json"))).unwrap();
    (
        store.join(id),
        serde_json::from_str(&sidecar).expect("sidecar JSON"),
    )
}

#[test]
#[ignore = "needs Node.js 20.19+ and npm (cargo test -- --include-ignored)"]
fn tus_js_client_uploads_to_our_server() {
    let env = Env::new();
    let file = env.file("three-mib.bin", 3 * MIB);
    let server = env.serve(&[]);

    let done = js_upload(&server.url(), &file, &["--chunk-size", &MIB.to_string()]);
    assert_eq!(done["bytes"], 3 * MIB, "{done}");
    let url = done["url"].as_str().expect("url");
    assert!(
        url.starts_with(&server.url()),
        "upload URL {url} not under {}",
        server.url()
    );

    let published = server.dir.join("three-mib.bin");
    assert!(
        published.is_file(),
        "not published: {:?}",
        names(&server.dir)
    );
    assert_eq!(sha256_file(&published), sha256_file(&file));
    // `.upload-index` holds what the server records of its published files (issue 13).
    let expected: BTreeSet<String> = ["three-mib.bin", ".partial", ".upload-index"]
        .map(String::from)
        .into();
    assert_eq!(names(&server.dir), expected, "leftovers in the upload dir");
    let recorded: BTreeSet<String> = ["three-mib.bin.sha256"].map(String::from).into();
    assert_eq!(names(&server.dir.join(".upload-index")), recorded);
}

#[test]
#[ignore = "needs Node.js 20.19+ and npm (cargo test -- --include-ignored)"]
fn tus_js_client_resumes_on_our_server() {
    let env = Env::new();
    let file = env.file("resume-me.bin", 3 * MIB);
    let server = env.serve(&[]);
    let chunk = MIB.to_string();

    let first = js_upload(
        &server.url(),
        &file,
        &["--chunk-size", &chunk, "--abort-after", &chunk],
    );
    assert_eq!(first["aborted"], true, "{first}");
    let offset = first["offset"].as_u64().expect("offset");
    assert!(offset >= MIB as u64 && offset < 3 * MIB as u64, "{first}");
    let url = first["url"].as_str().expect("url").to_string();
    assert!(
        !server.dir.join("resume-me.bin").exists(),
        "published although only {offset} of {} bytes were sent",
        3 * MIB
    );

    let done = js_upload(
        &server.url(),
        &file,
        &["--chunk-size", &chunk, "--resume-url", &url],
    );
    assert_eq!(
        done["url"],
        url.as_str(),
        "resumed into another upload: {done}"
    );
    assert_eq!(done["bytes"], 3 * MIB, "{done}");
    assert_eq!(
        done["resumed_from"], offset,
        "HEAD should report the offset the first run had acknowledged: {done}"
    );

    let published = server.dir.join("resume-me.bin");
    assert!(
        published.is_file(),
        "not published: {:?}",
        names(&server.dir)
    );
    assert_eq!(sha256_file(&published), sha256_file(&file));
}

#[test]
#[ignore = "needs Node.js 20.19+ and npm (cargo test -- --include-ignored)"]
fn our_client_uploads_to_tus_node_server() {
    let env = Env::new();
    let file = env.file("to-node.bin", 3 * MIB + 12345);
    let tus = TusNodeServer::start(&env.path("tus-store"));

    let (out, stdout, stderr) = run_within(&mut send_cmd(&env, &file, &tus.url, &[]), LIMIT);
    assert!(
        out.status.success(),
        "send failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let all = events(&stdout);
    let done = event(&all, "done").unwrap_or_else(|| panic!("no done event:\n{stdout}\n{stderr}"));
    assert_eq!(done["sha256"], sha256_file(&file).as_str(), "{done}");

    let (data, sidecar) = stored_upload(&tus.store);
    assert_eq!(
        sha256_file(&data),
        sha256_file(&file),
        "stored bytes differ"
    );
    assert_eq!(sidecar["size"], 3 * MIB + 12345, "{sidecar}");
    assert_eq!(sidecar["metadata"]["filename"], "to-node.bin", "{sidecar}");
}

#[test]
#[ignore = "needs Node.js 20.19+ and npm (cargo test -- --include-ignored)"]
fn our_client_resumes_on_tus_node_server() {
    let env = Env::new();
    let file = env.file("slow-to-node.bin", 2 * MIB);
    let tus = TusNodeServer::start(&env.path("tus-store"));
    let args = ["--limit", "512KiB/s", "--chunk", "256KiB"];

    // First run: SIGKILL once it reports progress.
    let mut cmd = send_cmd(&env, &file, &tus.url, &args);
    let mut child = NodeProcess {
        child: cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start upload send"),
    };
    let stdout = child.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let progress = line.contains(r#""event":"progress""#);
            if tx.send(line).is_err() || progress {
                break;
            }
        }
    });
    let mut first = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let progress = line.contains(r#""event":"progress""#);
                first.push(line);
                if progress {
                    break;
                }
            }
            Err(e) => panic!("no progress event from the first send ({e}); got:\n{first:#?}"),
        }
    }
    child.kill(); // SIGKILL
    assert!(!child.child.wait().unwrap().success());

    // Second run: the same command resumes.
    let (out, stdout, stderr) = run_within(&mut send_cmd(&env, &file, &tus.url, &args), LIMIT);
    assert!(
        out.status.success(),
        "second send failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let all = events(&stdout);
    let started = event(&all, "started").unwrap_or_else(|| panic!("no started event:\n{stdout}"));
    assert_eq!(
        started["resumed"], true,
        "second run did not resume: {started}\n{stdout}"
    );
    let offset = started["offset"].as_u64().expect("offset");
    assert!(offset > 0, "resumed from 0: {started}");
    assert!(
        event(&all, "done").is_some(),
        "no done event:\n{stdout}\n{stderr}"
    );

    let (data, _) = stored_upload(&tus.store);
    assert_eq!(
        sha256_file(&data),
        sha256_file(&file),
        "stored bytes differ"
    );
}

/// Runs browser_upload.mjs: headless Chromium on a page at `page_port` uploading `size` bytes
/// with tus-js-client's browser build; returns its one JSON line.
fn browser_upload(endpoint: &str, page_port: u16, size: usize, token: Option<&str>) -> Value {
    let mut cmd = node("browser_upload.mjs");
    cmd.args(["--page-port", &page_port.to_string(), endpoint])
        .arg(size.to_string())
        .args(["--timeout", "35"]);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let (out, stdout, stderr) = run_within(&mut cmd, LIMIT);
    assert!(
        out.status.success(),
        "browser_upload.mjs failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}\n{stderr}"))
}

/// The page's bytes: byte i is (31 i + i / 1024) mod 251, as browser_upload.mjs builds them.
fn page_bytes(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((31 * i + i / 1024) % 251) as u8)
        .collect()
}

/// A real browser (headless Chromium, from Debian's `chromium`) on another origin: with that
/// origin allowed, tus-js-client creates, stops after one chunk, resumes with a HEAD and
/// finishes, every request a CORS request with a token; with it not allowed, the browser
/// withholds the first answer and nothing is stored.
#[test]
#[ignore = "needs Node.js 20.19+, npm and Chromium (cargo test -- --include-ignored)"]
fn a_browser_page_uploads_and_resumes_from_another_origin() {
    let env = Env::new();
    let page_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let tokens = env.path("tokens");
    std::fs::write(&tokens, "tok-browser alice\n").unwrap();
    let size = 300_000;

    let server = env.serve(&[
        "--token-file",
        tokens.to_str().unwrap(),
        "--cors-origin",
        &origin,
    ]);
    let r = browser_upload(&server.url(), page_port, size, Some("tok-browser"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["resumed_from"], 65536, "{r}");
    let published = server.dir.join("from-browser.bin");
    assert_eq!(
        std::fs::read(&published).expect("published"),
        page_bytes(size)
    );
    drop(server);

    // The same page, a server that allows another origin.
    std::fs::remove_file(&published).unwrap();
    let server = env.serve(&["--cors-origin", "https://uploads.example.org"]);
    let records = || {
        std::fs::read_dir(server.dir.join(".partial"))
            .unwrap()
            .count()
    };
    let before = records();
    let r = browser_upload(&server.url(), page_port, size, None);
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("failed to create upload")),
        "{r}"
    );
    assert!(!published.exists());
    assert_eq!(records(), before, "the refused page created an upload");
}
