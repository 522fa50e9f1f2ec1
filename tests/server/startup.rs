//! The real binary: start-up checks of its arguments, its address line, and SIGTERM.

use super::*;

#[test]
fn serve_checks_the_token_file_and_its_flags() {
    let env = Env::new();
    let (out, _, stderr) = run(env
        .upload()
        .args(["serve", "--no-auth", "--per-token-dirs", "--dir"])
        .arg(env.path("up")));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");

    for bad in [
        "example.org/tus/files/",
        "ftp://example.org/",
        "https://example.org/?a=1",
    ] {
        let (out, _, stderr) = run(env
            .upload()
            .args(["serve", "--no-auth", "--public-url", bad, "--dir"])
            .arg(env.path("up")));
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(bad) && stderr.contains("e.g. https://example.org/tus/files/"),
            "{stderr}"
        );
    }

    let (out, _, stderr) = run(env
        .upload()
        .args([
            "serve",
            "--no-auth",
            "--cors-origin",
            "uploads.example.org/",
            "--dir",
        ])
        .arg(env.path("up")));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("uploads.example.org/") && stderr.contains("e.g. https://"),
        "{stderr}"
    );

    std::fs::write(env.path("tokens"), "# team\nalpha alice\nbeta ../bob\n").unwrap();
    let (out, _, stderr) = run(env
        .upload()
        .args(["serve", "--per-token-dirs", "--token-file"])
        .arg(env.path("tokens"))
        .arg("--dir")
        .arg(env.path("up")));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("../bob"),
        "{stderr}"
    );
}

#[test]
fn serve_prints_its_address_and_stops_on_sigterm() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("up")).unwrap();
    let mut child = env
        .upload()
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--dir"])
        .arg(env.path("up"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start upload serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on http://")
        .expect(&line);
    let addr = url.strip_suffix("/files/").expect(url);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::options("/files/")
            .header("Host", addr)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.send_request(request).await.unwrap().status()
    });
    assert_eq!(status, 204);

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(env.path("up").join(".partial").is_dir());
}

#[test]
fn serve_refuses_an_open_server_on_a_reachable_address() {
    let env = Env::new();
    let (out, _, stderr) = run(env
        .upload()
        .args(["serve", "--listen", "0.0.0.0:0", "--no-auth", "--dir"])
        .arg(env.path("up")));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--token-file") && stderr.contains("--no-auth"),
        "{stderr}"
    );

    let (out, _, stderr) = run(env.upload().args(["serve", "--dir"]).arg(env.path("up")));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--token-file") && stderr.contains("--no-auth"),
        "{stderr}"
    );

    std::fs::write(env.path("tokens"), "# none yet\n").unwrap();
    let (out, _, stderr) = run(env
        .upload()
        .args(["serve", "--token-file"])
        .arg(env.path("tokens"))
        .arg("--dir")
        .arg(env.path("up")));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no token"), "{stderr}");
}

/// Issue 10, item 10: a mistyped `--dir` is refused, not created as a new directory that
/// quietly collects the uploads.
#[test]
fn serve_refuses_a_directory_that_does_not_exist() {
    let env = Env::new();
    let typo = env.path("uplaods");
    // Spawned and bounded: a server that accepts the path runs until killed.
    let mut child = env
        .upload()
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--dir"])
        .arg(&typo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = crate::helper::wait_at_most(&mut child, Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{} does not exist", typo.display()))
            && stderr.contains("mkdir -p"),
        "{stderr}"
    );
    assert!(!typo.exists(), "created {}", typo.display());
}
