//! Delta uploads (issue 13) end to end: the real `upload serve` on a loopback port and the
//! real `upload send`, `queue add` and `run`: a rebuilt file sent against the older one the
//! server holds, kill -9 in mid-delta, a base that is missing or changes on the server (the
//! whole file is sent instead), a base in another token's namespace (refused exactly like an
//! unknown file), and a base found by the file's own name.

use crate::helper::send_json as send;
use crate::helper::{Env, event, kill9, pattern, run, send_until_progress, wait_at_most};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn notices(ev: &[Value]) -> String {
    ev.iter()
        .filter(|e| e["event"] == "notice")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// RC1, and RC2: RC1 with `changed` fresh bytes inserted at 1 MiB and 4 KiB overwritten
/// three quarters in, the way a rebuilt image differs from the one before.
fn rc_pair(env: &Env, len: usize, changed: usize) -> (PathBuf, PathBuf) {
    let rc1 = pattern(len, 1);
    let mut rc2 = rc1.clone();
    rc2.splice(MIB..MIB, pattern(changed, 2));
    let at = len * 3 / 4;
    rc2[at..at + 4096].copy_from_slice(&pattern(4096, 3));
    let (p1, p2) = (env.path("RC1.iso"), env.path("RC2.iso"));
    std::fs::write(&p1, &rc1).unwrap();
    std::fs::write(&p2, &rc2).unwrap();
    (p1, p2)
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn a_rebuilt_file_is_sent_as_a_delta_and_published_identical() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (rc1, rc2) = rc_pair(&env, 4 * MIB, 10_000);
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, ev, stderr) = send(&env, &rc2, &server.url(), &["--base", "RC1.iso"]);
    assert_eq!(code, Some(0), "{stderr}");
    let said = notices(&ev);
    assert!(said.contains("delta against RC1.iso"), "{said}");
    assert!(said.contains("copied from the base"), "{said}");
    let done = event(&ev, "done").expect("done");
    assert_eq!(done["published_as"], "RC2.iso");
    assert_eq!(done["sha256"], crate::helper::sha256_file(&rc2));
    assert_eq!(done["size"], rc2.metadata().unwrap().len());
    // 10 000 new bytes, 4 KiB rewritten: a few chunks cross the link, not 4 MiB.
    let sent = done["bytes_sent"].as_u64().unwrap();
    assert!(sent < 150_000, "{sent} bytes sent");
    // Progress counted the recipe: what crossed the link.
    let started = event(&ev, "started").unwrap();
    assert!(started["size"].as_u64().unwrap() < 150_000, "{started}");
    assert!(same(&server.dir.join("RC2.iso"), &rc2), "RC2.iso differs");
    assert!(same(&server.dir.join("RC1.iso"), &rc1), "the base changed");
    // Nothing of the delta is left behind: no recipe, no built file, no part.
    assert!(!env.path("recipes/1.recipe").exists());
    assert!(std::fs::read_dir(env.path("recipes")).map_or(true, |d| d.count() == 0));
    let partial: Vec<_> = std::fs::read_dir(server.dir.join(".partial"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".info"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
}

#[test]
fn a_file_of_the_same_name_on_the_server_is_the_base_and_the_output_says_so() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (rc1, rc2) = rc_pair(&env, 3 * MIB + 5000, 20_000);
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &["--name", "image.iso"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, ev, stderr) = send(&env, &rc2, &server.url(), &["--name", "image.iso"]);
    assert_eq!(code, Some(0), "{stderr}");
    let said = notices(&ev);
    assert!(
        said.contains("already holds a file named image.iso"),
        "{said}"
    );
    assert!(said.contains("--no-base"), "{said}");
    let done = event(&ev, "done").unwrap();
    assert_eq!(done["published_as"], "image.1.iso");
    assert!(done["bytes_sent"].as_u64().unwrap() < 150_000, "{done}");
    assert!(same(&server.dir.join("image.1.iso"), &rc2));
    assert!(same(&server.dir.join("image.iso"), &rc1));
    // --no-base sends the whole file.
    let rc3 = env.path("RC3.iso");
    let mut data = std::fs::read(&rc2).unwrap();
    data.extend_from_slice(b"and a little more");
    std::fs::write(&rc3, &data).unwrap();
    let (code, ev, stderr) = send(
        &env,
        &rc3,
        &server.url(),
        &["--name", "image.iso", "--no-base"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!notices(&ev).contains("delta"), "{}", notices(&ev));
    assert_eq!(event(&ev, "done").unwrap()["bytes_sent"], data.len());
}

#[test]
fn a_missing_base_means_the_whole_file_and_the_reason_is_said() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (_, rc2) = rc_pair(&env, 2 * MIB, 1000);
    let (code, ev, stderr) = send(&env, &rc2, &server.url(), &["--base", "RC1.iso"]);
    assert_eq!(code, Some(0), "{stderr}");
    let said = notices(&ev);
    assert!(said.contains("no published file \"RC1.iso\""), "{said}");
    assert!(said.contains("sending the whole file"), "{said}");
    let done = event(&ev, "done").unwrap();
    assert_eq!(done["bytes_sent"], rc2.metadata().unwrap().len());
    assert!(same(&server.dir.join("RC2.iso"), &rc2));
}

/// The base is rewritten on the server while the recipe is on its way: the server refuses to
/// build from it (412, base-changed), and the client sends the whole file, saying why.
#[test]
fn a_base_changed_on_the_server_after_its_index_is_refused_and_the_whole_file_sent() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (rc1, rc2) = rc_pair(&env, 2 * MIB, 400_000);
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let log = env.path("send.log");
    let mut child = crate::helper::send_until(
        &env,
        &rc2,
        &server.url(),
        &[
            "--base", "RC1.iso", "--limit", "800KiB/s", "--chunk", "64KiB",
        ],
        std::fs::File::create(&log).unwrap().into(),
        "the first chunk of the recipe",
        |v| v["event"] == "progress",
    );
    // Rewritten in place by someone on the server: new content, new modification time.
    let base = server.dir.join("RC1.iso");
    let mut f = std::fs::OpenOptions::new().write(true).open(&base).unwrap();
    f.write_all(&pattern(4096, 9)).unwrap();
    drop(f);
    let status = wait_at_most(&mut child, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(same(&server.dir.join("RC2.iso"), &rc2), "RC2.iso differs");
    let slog = std::fs::read_to_string(&server.log).unwrap();
    assert!(slog.contains("delta upload refused"), "{slog}");
    // A rerun finds the transfer done, a full upload now.
    let (out, stdout, _) = run(env.upload().args(["queue", "list", "--json"]));
    assert!(out.status.success());
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let t = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "RC2.iso")
        .unwrap()
        .clone();
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["delta_base"], Value::Null, "{t}");
}

/// A GET on the raw socket: the status and the body.
fn get(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer \
         {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn a_base_in_another_tokens_namespace_is_refused_exactly_like_an_unknown_file() {
    let env = Env::new();
    std::fs::write(env.path("tokens"), "alpha-token alice\nbravo-token bob\n").unwrap();
    std::fs::write(env.path("alice.token"), "alpha-token\n").unwrap();
    std::fs::write(env.path("bob.token"), "bravo-token\n").unwrap();
    let tokens = env.path("tokens");
    let server = env.serve(&["--token-file", tokens.to_str().unwrap(), "--per-token-dirs"]);
    let (rc1, rc2) = rc_pair(&env, 2 * MIB, 1000);
    let alice = [
        "--token-file",
        env.path("alice.token").to_str().unwrap().to_string().leak(),
    ];
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &alice);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(server.dir.join("alice/RC1.iso").is_file());

    let (ok, index) = get(server.addr, "/files/index/RC1.iso", "alpha-token");
    assert_eq!(ok, 200);
    assert!(!index.is_empty());
    let theirs = get(server.addr, "/files/index/RC1.iso", "bravo-token");
    let unknown = get(server.addr, "/files/index/no-such-file.iso", "bravo-token");
    assert_eq!(theirs.0, 404);
    assert_eq!(theirs, unknown, "another token's file must look unknown");
    // Nor can a path reach it.
    let around = get(
        server.addr,
        "/files/index/..%2Falice%2FRC1.iso",
        "bravo-token",
    );
    assert_eq!(around, unknown);

    // Bob's delta against it is no delta: his whole file is sent, into his directory.
    let bob = [
        "--token-file",
        env.path("bob.token").to_str().unwrap().to_string().leak(),
    ];
    let mut args = bob.to_vec();
    args.extend(["--base", "RC1.iso"]);
    let (code, ev, stderr) = send(&env, &rc2, &server.url(), &args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        notices(&ev).contains("no published file"),
        "{}",
        notices(&ev)
    );
    assert_eq!(
        event(&ev, "done").unwrap()["bytes_sent"],
        rc2.metadata().unwrap().len()
    );
    assert!(same(&server.dir.join("bob/RC2.iso"), &rc2));
}

/// kill -9 of the client in mid-delta, then the same command again: it resumes the same
/// recipe from the server's offset, and the published file is the new one.
#[test]
fn a_delta_killed_midway_resumes_and_resends_at_most_a_chunk() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (rc1, rc2) = rc_pair(&env, 3 * MIB, 600_000);
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let args = [
        "--base", "RC1.iso", "--chunk", "64KiB", "--limit", "512KiB/s",
    ];
    let mut child = send_until_progress(&env, &rc2, &server.url(), &args, 64 * 1024);
    kill9(&mut child);
    let recipes = || std::fs::read_dir(env.path("recipes")).map_or(0, |d| d.count());
    assert_eq!(recipes(), 1, "the recipe is kept for the rerun");
    let (code, ev, stderr) = send(&env, &rc2, &server.url(), &args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        notices(&ev).contains("resuming the delta against RC1.iso"),
        "{}",
        notices(&ev)
    );
    let started = event(&ev, "started").unwrap();
    assert_eq!(started["resumed"], true, "{started}");
    let done = event(&ev, "done").unwrap();
    assert!(
        done["resent_bytes"].as_u64().unwrap() <= 64 * 1024,
        "{done}"
    );
    assert!(same(&server.dir.join("RC2.iso"), &rc2), "RC2.iso differs");
}

#[test]
fn a_queued_delta_is_sent_by_the_run() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (rc1, rc2) = rc_pair(&env, 2 * MIB, 5000);
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let (out, _, stderr) = run(env
        .upload()
        .args(["queue", "add"])
        .arg(&rc2)
        .arg(server.url())
        .args(["--base", "RC1.iso", "--name", "RC2-final.iso"]));
    assert!(out.status.success(), "{stderr}");
    let mut runner = env.upload().args(["run"]).spawn().unwrap();
    let status = wait_at_most(&mut runner, Duration::from_secs(60));
    assert!(status.success());
    assert!(
        same(&server.dir.join("RC2-final.iso"), &rc2),
        "RC2-final.iso differs"
    );
    let (_, stdout, _) = run(env.upload().args(["queue", "list", "--json"]));
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let t = &list.as_array().unwrap()[1];
    assert_eq!(t["state"], "done", "{t}");
    assert!(t["bytes_sent"].as_u64().unwrap() < 100_000, "{t}");
}

#[test]
fn estimate_gives_the_exact_bytes_of_a_delta_from_the_server_or_a_local_base() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (rc1, rc2) = rc_pair(&env, 3 * MIB, 30_000);
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let estimate = |extra: &[&str]| {
        let (out, stdout, stderr) = run(env
            .upload()
            .arg("estimate")
            .arg(&rc2)
            .args(["--rate", "128kbit"])
            .args(extra));
        assert!(out.status.success(), "{stderr}");
        stdout
    };
    let local: Value =
        serde_json::from_str(&estimate(&["--base-file", rc1.to_str().unwrap(), "--json"])).unwrap();
    let remote: Value = serde_json::from_str(&estimate(&[
        "--base",
        "RC1.iso",
        "--to",
        &server.url(),
        "--json",
    ]))
    .unwrap();
    let size = rc2.metadata().unwrap().len();
    for v in [&local, &remote] {
        let d = &v["delta"];
        assert_eq!(d["file_bytes"], size, "{v}");
        assert_eq!(v["bytes"], d["recipe_bytes"], "{v}");
        assert!(d["recipe_bytes"].as_u64().unwrap() < 150_000, "{v}");
        assert!(d["copied_percent"].as_f64().unwrap() > 95.0, "{v}");
        assert!(d["speedup"].as_f64().unwrap() > 10.0, "{v}");
        assert!(
            v["total_seconds"].as_f64() < d["full_total_seconds"].as_f64(),
            "{v}"
        );
    }
    // The same chunking on both sides: the same recipe.
    assert_eq!(
        local["delta"]["recipe_bytes"],
        remote["delta"]["recipe_bytes"]
    );
    assert_eq!(local["delta"]["index_bytes"], Value::Null);
    assert!(remote["delta"]["index_bytes"].as_u64().unwrap() > 0);
    let human = estimate(&["--base-file", rc1.to_str().unwrap()]);
    assert!(human.contains("delta against"), "{human}");
    assert!(human.contains("whole file:"), "{human}");
    // And it is exactly what the delta upload then sends.
    let (code, ev, stderr) = send(&env, &rc2, &server.url(), &["--base", "RC1.iso"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        event(&ev, "done").unwrap()["bytes_sent"],
        remote["delta"]["recipe_bytes"]
    );
    // A base the server does not have is said, not guessed at.
    let (out, _, stderr) = run(env.upload().arg("estimate").arg(&rc2).args([
        "--base",
        "nothing.iso",
        "--to",
        &server.url(),
    ]));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no published file \"nothing.iso\""),
        "{stderr}"
    );
}

/// The changed-source rules of a full upload hold for a delta: the real file is checked before
/// every chunk of its recipe (a change stops it, nothing is published), and on a rerun (exit 5;
/// `--restart` makes a new recipe of the file as it is now).
#[test]
fn a_source_changed_during_or_after_its_delta_is_never_published_stale() {
    let env = Env::new();
    let server = env.serve(&[]);
    let (rc1, rc2) = rc_pair(&env, 2 * MIB, 500_000);
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let args = [
        "--base", "RC1.iso", "--chunk", "64KiB", "--limit", "256KiB/s",
    ];

    // Changed while its recipe is on the way.
    let mut child = send_until_progress(&env, &rc2, &server.url(), &args, 64 * 1024);
    std::thread::sleep(Duration::from_millis(300));
    let mut f = std::fs::OpenOptions::new().append(true).open(&rc2).unwrap();
    f.write_all(b"a late fix").unwrap();
    drop(f);
    let status = wait_at_most(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(5));
    assert!(
        !server.dir.join("RC2.iso").exists(),
        "a stale RC2 was published"
    );

    // The rerun is refused as for any upload; --restart sends the file as it is now.
    let (code, _, stderr) = send(&env, &rc2, &server.url(), &args);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("--restart"), "{stderr}");
    let (code, ev, stderr) = send(
        &env,
        &rc2,
        &server.url(),
        &[&args[..], &["--restart"]].concat(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        notices(&ev).contains("delta against RC1.iso"),
        "{}",
        notices(&ev)
    );
    assert!(
        same(&server.dir.join("RC2.iso"), &rc2),
        "RC2.iso is not the file as it is now"
    );
}

/// A raw request on its own connection: the status line's code, the headers (lowercase) and
/// the body.
fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        text[9..12].parse().unwrap(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

/// What the server does with recipes it must not trust: a base digest that is not the base's
/// is refused at creation, a recipe that copies past the base's end when it is complete;
/// both with 412 and the reason, nothing published, the base untouched.
#[test]
fn the_server_refuses_recipes_it_cannot_build_and_publishes_nothing() {
    use base64::Engine;
    use upload::delta::recipe::{RecipeHeader, RecipeWriter};
    let env = Env::new();
    let server = env.serve(&[]);
    let (rc1, _) = rc_pair(&env, MIB, 10);
    let (code, _, stderr) = send(&env, &rc1, &server.url(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    write!(
        s,
        "GET /files/index/RC1.iso HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nConnection: \
         close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let index = upload::delta::Index::decode(&reply[at..]).unwrap();
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let post = |base_sha: &[u8; 32], body: &[u8]| {
        let head = format!(
            "POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: {}\r\n\
             Upload-Metadata: filename {},delta-base {},delta-base-sha256 {}\r\nContent-Type: \
             application/offset+octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len(),
            b64(b"evil.iso"),
            b64(b"RC1.iso"),
            b64(hex::encode(base_sha).as_bytes()),
            body.len()
        );
        raw(server.addr, &head, body)
    };
    let recipe = |copy_from: u64| {
        let header = RecipeHeader {
            base_name: "RC1.iso".into(),
            base_sha256: index.sha256,
            target_length: 4096,
        };
        let mut w = RecipeWriter::new(Vec::new(), &header).unwrap();
        w.copy(copy_from, 4096).unwrap();
        w.finish(&[0; 32]).unwrap().1
    };
    // Another base digest: refused before the upload exists.
    let (status, headers, body) = post(&[7; 32], &recipe(0));
    assert_eq!(status, 412, "{headers}{body}");
    assert!(
        headers.contains("upload-delta-refused: base-changed"),
        "{headers}"
    );
    // A copy past the base's end: refused once complete.
    let (status, headers, body) = post(&index.sha256, &recipe(index.length - 100));
    assert_eq!(status, 412, "{headers}{body}");
    assert!(
        headers.contains("upload-delta-refused: bad-recipe"),
        "{headers}"
    );
    assert!(body.contains("past the base's end"), "{body}");
    // A recipe whose file is not the SHA-256 it declares: refused, never published.
    let (status, headers, _) = post(&index.sha256, &recipe(0));
    assert_eq!(status, 412);
    assert!(
        headers.contains("upload-delta-refused: target-mismatch"),
        "{headers}"
    );
    assert!(!server.dir.join("evil.iso").exists());
    assert!(same(&server.dir.join("RC1.iso"), &rc1), "the base changed");
}
