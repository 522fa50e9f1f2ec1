//! `upload serve --tls-cert --tls-key` and `upload send https://…`, both the real binary, with a
//! private CA made here: a verified upload, an untrusted certificate that stops at once, a
//! plain-HTTP client on the TLS port (and the reverse), and resumes after kill -9.

use crate::helper::{Env, run, serve::ServeProcess, sha256_file};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A CA and a server certificate for localhost and 127.0.0.1, as PEM files in the test's dir.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A second CA that signed nothing here.
    other_ca: PathBuf,
}

fn new_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

fn pki(env: &Env) -> Pki {
    let (ca, issuer) = new_ca("upload test CA");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (other, _) = new_ca("some other CA");
    let write = |name: &str, pem: String| {
        let p = env.path(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        // The chain a server sends: its certificate, then the CA's.
        cert: write("cert.pem", format!("{}{}", cert.pem(), ca.pem())),
        key: write("key.pem", key.serialize_pem()),
        other_ca: write("other-ca.pem", other.pem()),
    }
}

/// `upload serve` with TLS, a token file, and the token.
fn serve_tls(env: &Env, pki: &Pki, listen: &str) -> ServeProcess {
    let tokens = env.path("tokens");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let server = env.serve_on(
        listen,
        &[
            "--tls-cert",
            pki.cert.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
            "--token-file",
            tokens.to_str().unwrap(),
        ],
    );
    assert_eq!(server.scheme, "https");
    server
}

fn https_url(server: &ServeProcess, host: &str) -> String {
    format!("https://{host}:{}/files/", server.addr.port())
}

fn send_cmd(env: &Env, file: &Path, url: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = env.upload();
    cmd.arg("send")
        .arg(file)
        .arg(url)
        .arg("--json")
        .env("UPLOAD_TOKEN", "s3cret")
        .args(extra);
    cmd
}

/// Exit status, JSON events and stderr.
fn send(env: &Env, file: &Path, url: &str, extra: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let (out, stdout, stderr) = run(&mut send_cmd(env, file, url, extra));
    let events = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code(), events, stderr)
}

/// Runs `cmd`, killing it (and failing) if it runs past `limit`: a permanent error must not
/// turn into a retry loop. Exit status, stdout, stderr.
fn run_at_most(cmd: &mut std::process::Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn event<'a>(all: &'a [Value], name: &str) -> Option<&'a Value> {
    all.iter().find(|e| e["event"] == name)
}

/// Starts a send and returns once the server confirmed more than `min` bytes, with the events
/// so far.
fn send_until_progress(
    env: &Env,
    file: &Path,
    url: &str,
    extra: &[&str],
    min: u64,
) -> (Child, Vec<Value>) {
    let mut child = send_cmd(env, file, url, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: Value = serde_json::from_str(&line).unwrap();
        let done = v["event"] == "progress" && v["offset"].as_u64().unwrap() > min;
        seen.push(v);
        if done {
            std::thread::spawn(move || for _ in lines {});
            return (child, seen);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no progress beyond {min} within 30 s");
}

#[test]
fn an_upload_over_tls_with_a_private_ca_arrives_identical() {
    let env = Env::new();
    let pki = pki(&env);
    let server = serve_tls(&env, &pki, "127.0.0.1:0");
    let ca = pki.ca.to_str().unwrap();
    let file = env.file("image.iso", 2 * 1024 * 1024 + 5);
    let (code, ev, stderr) = send(
        &env,
        &file,
        &https_url(&server, "localhost"),
        &["--ca", ca, "--chunk", "512KiB"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(event(&ev, "done").unwrap()["sha256"], sha256_file(&file));
    server.assert_delivered("image.iso", &file);
    // The certificate names the address too.
    let small = env.file("small.bin", 1000);
    let (code, _, stderr) = send(
        &env,
        &small,
        &https_url(&server, "127.0.0.1"),
        &["--ca", ca],
    );
    assert_eq!(code, Some(0), "{stderr}");
    server.assert_delivered("small.bin", &small);
}

#[test]
fn an_untrusted_certificate_stops_at_once_with_status_7() {
    let env = Env::new();
    let pki = pki(&env);
    let server = serve_tls(&env, &pki, "127.0.0.1:0");
    let url = https_url(&server, "localhost");
    let file = env.file("a.bin", 10_000);
    // The system's roots (here a bundle without our CA; SSL_CERT_FILE and SSL_CERT_DIR stand
    // in for the system's, as in OpenSSL), and a --ca of the wrong CA.
    for ca in [None, Some(pki.other_ca.to_str().unwrap())] {
        let mut extra = vec!["--max-retries", "50"];
        extra.extend(ca.map(|c| ["--ca", c]).into_iter().flatten());
        let mut cmd = send_cmd(&env, &file, &url, &extra);
        cmd.env("SSL_CERT_FILE", &pki.other_ca)
            .env_remove("SSL_CERT_DIR");
        let (code, stdout, stderr) = run_at_most(&mut cmd, Duration::from_secs(10));
        assert_eq!(code, Some(7), "{ca:?}: {stdout} {stderr}");
        assert!(
            stderr.contains("certificate is not trusted") && stderr.contains("--ca FILE"),
            "{stderr}"
        );
        assert!(
            !stdout.contains("\"retry\""),
            "permanent, not retried: {stdout}"
        );
    }
    assert!(!server.dir.join("a.bin").exists());
    // No system roots at all, and no --ca: told what to pass.
    let empty = env.path("no-roots.pem");
    std::fs::write(&empty, "").unwrap();
    let mut cmd = send_cmd(&env, &file, &url, &[]);
    cmd.env("SSL_CERT_FILE", &empty).env_remove("SSL_CERT_DIR");
    let (out, _, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no trusted root certificates") && stderr.contains("--ca FILE"));
}

#[test]
fn plain_http_and_tls_mixed_up_fail_cleanly() {
    let env = Env::new();
    let pki = pki(&env);
    let server = serve_tls(&env, &pki, "127.0.0.1:0");
    let file = env.file("a.bin", 10_000);
    // A plain-HTTP client on the TLS port is told to use https, and stops.
    let plain = format!("http://127.0.0.1:{}/files/", server.addr.port());
    let mut cmd = send_cmd(&env, &file, &plain, &["--max-retries", "50"]);
    let (code, _, stderr) = run_at_most(&mut cmd, Duration::from_secs(10));
    assert_eq!(code, Some(11), "{stderr}");
    assert!(stderr.contains("use an https:// URL"), "{stderr}");
    // The server still serves TLS afterwards.
    let ca = pki.ca.to_str().unwrap();
    let (code, _, stderr) = send(&env, &file, &https_url(&server, "localhost"), &["--ca", ca]);
    assert_eq!(code, Some(0), "{stderr}");
    drop(server);

    // A TLS client on a plain server is told it may be plain http.
    let env = Env::new();
    let plain_server = env.serve(&[]);
    let url = format!("https://localhost:{}/files/", plain_server.addr.port());
    let mut cmd = send_cmd(&env, &file, &url, &["--ca", ca, "--max-retries", "50"]);
    let (code, _, stderr) = run_at_most(&mut cmd, Duration::from_secs(10));
    assert_eq!(code, Some(11), "{stderr}");
    assert!(stderr.contains("TLS handshake"), "{stderr}");
    assert!(stderr.contains("use an http:// URL"), "{stderr}");
}

#[test]
fn a_tls_upload_resumes_after_kill_9_of_either_end() {
    let env = Env::new();
    let pki = pki(&env);
    let mut server = serve_tls(&env, &pki, "127.0.0.1:0");
    let listen = server.addr.to_string();
    let url = https_url(&server, "localhost");
    let file = env.file("big.iso", 2 * 1024 * 1024);
    let args = [
        "--ca",
        pki.ca.to_str().unwrap(),
        "--limit",
        "4Mbit",
        "--chunk",
        "128KiB",
    ];

    let (mut client, _) = send_until_progress(&env, &file, &url, &args, 256 * 1024);
    let _ = client.kill();
    let _ = client.wait();
    assert!(!server.dir.join("big.iso").exists());

    // Resumed by a new process; then the server is killed under it and comes back.
    let (client, ev) = send_until_progress(&env, &file, &url, &args, 768 * 1024);
    let started = event(&ev, "started").unwrap();
    assert_eq!(started["resumed"], true);
    assert!(
        started["offset"].as_u64().unwrap() >= 256 * 1024,
        "{started}"
    );
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    let server = serve_tls(&env, &pki, &listen);
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the client failed after the server came back"
    );
    server.assert_delivered("big.iso", &file);
}
