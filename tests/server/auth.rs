//! Tokens: who may do what, isolation between tokens, per-token directories, and the cap on
//! bodies received at once.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens() {
    let env = Env::new();
    let mut config = Config::new(env.path("up"));
    config.tokens = Some(vec!["s3cret".into(), "other".into()]);
    // Every listed token is accepted; with shared uploads, on each other's uploads too.
    config.shared_uploads = true;
    let server = TestServer::start(config).await;
    let post = || server.req("POST", "/files/").header("Upload-Length", 10);

    let missing = post().send().await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("WWW-Authenticate"), Some("Bearer"));
    let wrong = post().header("Authorization", "Bearer s3cre").send().await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body, missing.body, "no hint which part was wrong");
    assert!(server.partial_files().is_empty());

    let ok = post().header("Authorization", "Bearer s3cret").send().await;
    assert_eq!(ok.status, 201);
    let path = ok.header("Location").unwrap();
    assert_eq!(head(&server, path).await.status, 401);
    let h = server
        .req("HEAD", path)
        .header("Authorization", "Bearer other")
        .send()
        .await;
    assert_eq!(h.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_dirs_keep_maintainers_apart() {
    let env = Env::new();
    let mut config = two_maintainers(&env);
    config.per_token_dirs = true;
    let server = TestServer::start(config).await;
    let a = |method, path| with_token(&server, "tok-a", method, path);
    let b = |method, path| with_token(&server, "tok-b", method, path);
    let meta = metadata(&[("filename", b"report.pdf")]);
    let ours = pattern(10, 21);

    let created = a("POST", "/files/")
        .header("Upload-Length", 10)
        .header("Upload-Metadata", &meta)
        .send()
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let path = created.header("Location").unwrap().to_string();
    let id = path.rsplit('/').next().unwrap();
    let info = std::fs::read_to_string(server.dir.join(format!(".partial/{id}.info"))).unwrap();
    assert!(info.contains("\"owner\":\"alice\""), "{info}");
    assert!(
        !info.contains("tok-a"),
        "the token itself is never stored: {info}"
    );

    // Alice's body is on its way (stalled) while Bob probes her upload.
    let mut stalled = stalled_patch(
        server.addr,
        &path,
        &[
            ("Upload-Offset", "0".into()),
            ("Authorization", "Bearer tok-a".into()),
        ],
        10,
        &ours[..4],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unknown = "/files/0123456789abcdef0123456789abcdef";
    for method in ["HEAD", "PATCH", "DELETE"] {
        let probe = |path| {
            b(method, path)
                .header("Upload-Offset", 0)
                .chunk(b"theirs".to_vec())
        };
        let theirs = probe(&path).send().await;
        let nothing = probe(unknown).send().await;
        assert_eq!(theirs.status, 404, "{method}: {theirs:?}");
        assert_eq!(seen(&theirs), seen(&nothing), "{method}: no hint it exists");
    }
    // Bob's requests did not take Alice's upload over: her body is still being received.
    let mut buf = [0u8; 64];
    let quiet = tokio::time::timeout(Duration::from_millis(500), stalled.read(&mut buf)).await;
    assert!(quiet.is_err(), "Alice's PATCH was answered: {quiet:?}");
    drop(stalled);

    let h = a("HEAD", &path).send().await;
    assert_eq!((h.status, h.offset()), (200, 4), "{h:?}");
    let done = a("PATCH", &path)
        .header("Upload-Offset", 4)
        .chunk(ours[4..].to_vec())
        .send()
        .await;
    assert_eq!(done.status, 204, "{done:?}");
    assert_eq!(done.header("Upload-Published-As"), Some("report.pdf"));
    assert_eq!(
        std::fs::read(server.dir.join("alice/report.pdf")).unwrap(),
        ours
    );
    // Finished, it stays hers.
    assert_eq!(b("HEAD", &path).send().await.status, 404);
    assert_eq!(a("HEAD", &path).send().await.status, 200);

    // Bob's file of the same name lands in his directory; Alice's is untouched.
    let his = pattern(7, 22);
    let created = b("POST", "/files/")
        .header("Upload-Length", 7)
        .header("Upload-Metadata", &meta)
        .chunk(his.clone())
        .send()
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.header("Upload-Published-As"), Some("report.pdf"));
    assert_eq!(
        std::fs::read(server.dir.join("bob/report.pdf")).unwrap(),
        his
    );
    assert_eq!(
        std::fs::read(server.dir.join("alice/report.pdf")).unwrap(),
        ours
    );
    assert_eq!(server.published(), ["alice", "bob"]);
}

/// Issue 11, items 2 and 5: with per-token directories, `DIR/<name>` that is a symbolic link
/// (uploads would be written wherever it points) or a regular file (every upload failed with
/// 500, retried forever) stops the server at start-up, naming the path and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_directory_that_is_not_a_directory_stops_the_start() {
    let env = Env::new();
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for (what, make) in [
        (
            "a symbolic link",
            &(|p: &std::path::Path| std::os::unix::fs::symlink(env.path("elsewhere"), p).unwrap())
                as &dyn Fn(&std::path::Path),
        ),
        ("a regular file", &|p: &std::path::Path| {
            std::fs::write(p, b"not a directory").unwrap()
        }),
    ] {
        let mut config = two_maintainers(&env);
        config.per_token_dirs = true;
        std::fs::create_dir_all(&config.dir).unwrap();
        let alice = config.dir.join("alice");
        make(&alice);
        let err = upload::server::Server::bind(config, "127.0.0.1:0".parse().unwrap())
            .await
            .err()
            .unwrap_or_else(|| panic!("started with {what} at {}", alice.display()));
        let message = err.to_string();
        assert!(
            message.contains(&alice.display().to_string())
                && message.contains(what)
                && message.contains("alice"),
            "{message}"
        );
        assert!(
            message.contains("mkdir") || message.contains("mv "),
            "{message}"
        );
        std::fs::remove_file(&alice).unwrap();
    }
}

/// The same found while serving (it appeared after the start): every request of that token
/// that would write is refused with 409 and an explanation, a permanent answer, never a 500
/// to retry; nothing is written through the link; once it is a directory again, the upload
/// goes on and is published there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_directory_replaced_while_serving_is_refused_permanently() {
    let env = Env::new();
    let mut config = two_maintainers(&env);
    config.per_token_dirs = true;
    let server = TestServer::start(config).await;
    let a = |method, path| with_token(&server, "tok-a", method, path);
    let data = pattern(1000, 15);
    let created = a("POST", "/files/")
        .header("Upload-Length", 1000)
        .header("Upload-Metadata", metadata(&[("filename", b"x.iso")]))
        .chunk(data[..400].to_vec())
        .send()
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let path = created.header("Location").unwrap().to_string();

    let elsewhere = env.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, server.dir.join("alice")).unwrap();
    let finish = || {
        a("PATCH", &path)
            .header("Upload-Offset", 400)
            .chunk(data[400..].to_vec())
            .send()
    };
    let refused = finish().await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert!(
        refused.body.contains("symbolic link") && refused.body.contains("operator"),
        "{}",
        refused.body
    );
    let new = a("POST", "/files/").header("Upload-Length", 5).send().await;
    assert_eq!(new.status, 409, "{new:?}");
    assert_eq!(a("HEAD", &path).send().await.status, 409);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

    // Bob's directory name is taken by a file: his uploads are refused the same way.
    std::fs::write(server.dir.join("bob"), b"").unwrap();
    let bobs = with_token(&server, "tok-b", "POST", "/files/")
        .header("Upload-Length", 5)
        .send()
        .await;
    assert_eq!(bobs.status, 409, "{bobs:?}");
    assert!(bobs.body.contains("regular file"), "{}", bobs.body);

    std::fs::remove_file(server.dir.join("alice")).unwrap();
    let h = a("HEAD", &path).send().await;
    assert_eq!((h.status, h.offset()), (200, 400), "{h:?}");
    let done = finish().await;
    assert_eq!(done.status, 204, "{done:?}");
    assert_eq!(std::fs::read(server.dir.join("alice/x.iso")).unwrap(), data);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// Issue 11, item 7: without per-token directories too, a token reaches only the uploads it
/// created: one that learns another's upload URL cannot read its progress, add bytes or
/// delete it, and is told no more than for an unknown upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reach_only_their_own_uploads_by_default() {
    let env = Env::new();
    let server = TestServer::start(two_maintainers(&env)).await;
    let a = |method, path| with_token(&server, "tok-a", method, path);
    let b = |method, path| with_token(&server, "tok-b", method, path);
    let data = pattern(10, 25);
    let created = a("POST", "/files/")
        .header("Upload-Length", 10)
        .header("Upload-Metadata", metadata(&[("filename", b"a.bin")]))
        .chunk(data[..4].to_vec())
        .send()
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let path = created.header("Location").unwrap().to_string();
    let unknown = "/files/0123456789abcdef0123456789abcdef";
    for method in ["HEAD", "PATCH", "DELETE"] {
        let probe = |path| {
            b(method, path)
                .header("Upload-Offset", 4)
                .chunk(b"theirs".to_vec())
        };
        let theirs = probe(&path).send().await;
        let nothing = probe(unknown).send().await;
        assert_eq!(theirs.status, 404, "{method}: {theirs:?}");
        assert_eq!(seen(&theirs), seen(&nothing), "{method}: no hint it exists");
    }
    let h = a("HEAD", &path).send().await;
    assert_eq!((h.status, h.offset()), (200, 4), "{h:?}");
    let done = a("PATCH", &path)
        .header("Upload-Offset", 4)
        .chunk(data[4..].to_vec())
        .send()
        .await;
    assert_eq!(
        done.header("Upload-Published-As"),
        Some("a.bin"),
        "{done:?}"
    );
    assert_eq!(std::fs::read(server.dir.join("a.bin")).unwrap(), data);
    assert_eq!(b("HEAD", &path).send().await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_uploads_put_tokens_in_one_namespace() {
    let env = Env::new();
    let mut config = two_maintainers(&env);
    config.shared_uploads = true;
    let server = TestServer::start(config).await;
    let meta = metadata(&[("filename", b"x.bin")]);
    let upload = |token: &'static str, data: Vec<u8>| {
        with_token(&server, token, "POST", "/files/")
            .header("Upload-Length", data.len())
            .header("Upload-Metadata", &meta)
            .chunk(data)
            .send()
    };
    let a = upload("tok-a", pattern(5, 23)).await;
    assert_eq!(a.header("Upload-Published-As"), Some("x.bin"), "{a:?}");
    let path = a.header("Location").unwrap();
    assert_eq!(
        with_token(&server, "tok-b", "HEAD", path)
            .send()
            .await
            .status,
        200
    );
    let b = upload("tok-b", pattern(5, 24)).await;
    assert_eq!(b.header("Upload-Published-As"), Some("x.1.bin"), "{b:?}");
    assert_eq!(server.published(), ["x.1.bin", "x.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bodies_per_token_are_capped() {
    let env = Env::new();
    let mut config = two_maintainers(&env);
    config.max_uploads_per_token = 2;
    let server = &TestServer::start(config).await;
    let create = |token| async move {
        let reply = with_token(server, token, "POST", "/files/")
            .header("Upload-Length", 100)
            .send()
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        reply.header("Location").unwrap().to_string()
    };
    let (first, second, third) = (
        create("tok-a").await,
        create("tok-a").await,
        create("tok-a").await,
    );
    let bobs = create("tok-b").await;
    let stall = |path: String| async move {
        stalled_patch(
            server.addr,
            &path,
            &[
                ("Upload-Offset", "0".into()),
                ("Authorization", "Bearer tok-a".into()),
            ],
            100,
            &[1; 10],
        )
        .await
    };
    let stalled = stall(first).await;
    let _also_stalled = stall(second).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let patch_third = || {
        with_token(server, "tok-a", "PATCH", &third)
            .header("Upload-Offset", 0)
            .chunk(vec![3; 100])
            .send()
    };
    let refused = patch_third().await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("Retry-After"), Some("5"));
    assert_eq!(refused.header("Tus-Resumable"), Some("1.0.0"));
    let h = with_token(server, "tok-a", "HEAD", &third).send().await;
    assert_eq!(h.offset(), 0, "the refused body was not read");
    // Creation-with-upload counts too, and creates nothing when refused.
    let before = server.partial_files();
    let refused = with_token(server, "tok-a", "POST", "/files/")
        .header("Upload-Length", 5)
        .chunk(vec![5; 5])
        .send()
        .await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(server.partial_files(), before);
    // Another token has its own cap.
    let reply = with_token(server, "tok-b", "PATCH", &bobs)
        .header("Upload-Offset", 0)
        .chunk(vec![4; 100])
        .send()
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");

    // A connection that goes away gives its place back.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = patch_third().await;
        if reply.status == 204 {
            break;
        }
        assert_eq!(reply.status, 429, "{reply:?}");
        assert!(Instant::now() < deadline, "the count never went down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        with_token(server, "tok-a", "HEAD", &third)
            .send()
            .await
            .offset(),
        100
    );
}

/// Per-token directories keep tokens apart and shared uploads put them together: asking for
/// both is refused at start, by the library as by the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_dirs_and_shared_uploads_exclude_each_other() {
    let env = Env::new();
    let mut config = two_maintainers(&env);
    config.per_token_dirs = true;
    config.shared_uploads = true;
    let err = upload::server::Server::bind(config, "127.0.0.1:0".parse().unwrap())
        .await
        .err()
        .expect("both at once");
    assert!(err.to_string().contains("one or the other"), "{err}");

    std::fs::write(env.path("tokens"), "alpha alice\n").unwrap();
    let (out, _, stderr) = run(env
        .upload()
        .args([
            "serve",
            "--per-token-dirs",
            "--shared-uploads",
            "--token-file",
        ])
        .arg(env.path("tokens"))
        .arg("--dir")
        .arg(env.path("up")));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--shared-uploads"), "{stderr}");
}
