//! Publishing: names, clashes, and what a kill during publishing leaves.

use super::*;

/// Issue 11, item 6: a kill between recording a publication and removing the part file leaves
/// a second hard link to the published file in `.partial` (and one of a failed upload's data).
/// The next start removes both, before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_part_files_of_finished_uploads_go_at_start_up() {
    let env = Env::new();
    let dir = env.path("up");
    let server = TestServer::on(&dir).await;
    let data = pattern(5000, 14);
    let published = create(&server, 5000, &[("filename", b"done.iso")]).await;
    assert_eq!(patch(&server, &published, 0, &data).await.status, 204);
    let failed = create(
        &server,
        5000,
        &[("sha256", hex::encode(sha256(b"other")).as_bytes())],
    )
    .await;
    assert_eq!(patch(&server, &failed, 0, &data).await.status, 422);
    server.stop().await;

    // What the kill leaves behind.
    let part = |path: &str| {
        let id = path.rsplit('/').next().unwrap();
        dir.join(format!(".partial/{id}.part"))
    };
    std::fs::hard_link(dir.join("done.iso"), part(&published)).unwrap();
    std::fs::write(part(&failed), &data).unwrap();

    let server = TestServer::on(&dir).await;
    assert!(
        server.partial_files().iter().all(|f| f.ends_with(".info")),
        "{:?}",
        server.partial_files()
    );
    assert_eq!(std::fs::read(dir.join("done.iso")).unwrap(), data);
    let h = head(&server, &published).await;
    assert_eq!(h.header("Upload-Published-As"), Some("done.iso"), "{h:?}");
    assert_eq!(head(&server, &failed).await.status, 410);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_clashes_never_overwrite() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let a = pattern(1000, 6);
    let b = pattern(1000, 7);
    let mut names = Vec::new();
    for data in [&a, &b, &a] {
        let digest = hex::encode(sha256(data));
        let path = create(
            &server,
            1000,
            &[("filename", b"x.iso"), ("sha256", digest.as_bytes())],
        )
        .await;
        let reply = patch(&server, &path, 0, data).await;
        assert_eq!(reply.status, 204, "{reply:?}");
        names.push(reply.header("Upload-Published-As").unwrap().to_string());
    }
    assert_eq!(names, ["x.iso", "x.1.iso", "x.iso"]);
    assert_eq!(server.published(), ["x.1.iso", "x.iso"]);
    assert_eq!(std::fs::read(server.dir.join("x.iso")).unwrap(), a);
    assert_eq!(std::fs::read(server.dir.join("x.1.iso")).unwrap(), b);

    // A hostile name stays inside DIR.
    let path = create(&server, 3, &[("filename", b"../../etc/passwd")]).await;
    let reply = patch(&server, &path, 0, b"abc").await;
    assert_eq!(reply.header("Upload-Published-As"), Some("passwd"));
    assert!(server.dir.join("passwd").exists());
}

/// Issue 11, item 4, end to end: an NFD name meets the NFC file of the same look as a clash
/// (numbered, or delivered when identical), never as a second file that looks the same; a
/// right-to-left override does not reach the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_look_alike_are_one_name() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let mut published = Vec::new();
    for (name, seed) in [
        ("caf\u{e9}.txt", 30),
        ("cafe\u{301}.txt", 31),
        ("cafe\u{301}.txt", 30),
        ("rtl\u{202e}TXT.exe", 32),
    ] {
        let path = create(&server, 10, &[("filename", name.as_bytes())]).await;
        let reply = patch(&server, &path, 0, &pattern(10, seed)).await;
        assert_eq!(reply.status, 204, "{reply:?}");
        published.push(upload::protocol::decode_header_text(
            reply.header("Upload-Published-As").unwrap(),
        ));
    }
    assert_eq!(
        published,
        [
            "caf\u{e9}.txt",
            "caf\u{e9}.1.txt",
            "caf\u{e9}.txt",
            "rtlTXT.exe"
        ]
    );
    assert_eq!(
        server.published(),
        ["caf\u{e9}.1.txt", "caf\u{e9}.txt", "rtlTXT.exe"]
    );
}
