//! tus core: HEAD and PATCH, offsets, restarts, takeover of a stalled request, the idle
//! timeout, and refusals.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_published_whole_and_verified() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    // Over 1 MiB per chunk, so the server's write buffer fills and flushes mid-body.
    let data = pattern(3 * 1024 * 1024 + 123, 1);
    let digest = sha256(&data);
    let path = create(
        &server,
        data.len() as u64,
        &[
            ("filename", b"debian.iso"),
            ("sha256", hex::encode(digest).as_bytes()),
        ],
    )
    .await;
    assert!(path.starts_with("/files/"), "{path}");

    let mut offset = 0;
    for (i, chunk) in data.chunks(1_300_000).enumerate() {
        let algorithm = [Algorithm::Crc32, Algorithm::Sha1, Algorithm::Sha256][i];
        let reply = server
            .req("PATCH", &path)
            .header("Upload-Offset", offset)
            .header("Upload-Checksum", Checksum::of(algorithm, chunk))
            .chunk(chunk.to_vec())
            .send()
            .await;
        assert_eq!(reply.status, 204, "{reply:?}");
        offset += chunk.len() as u64;
        assert_eq!(reply.offset(), offset);
        assert!(reply.header("Upload-Expires").is_some());
        let is_last = offset == data.len() as u64;
        assert_eq!(reply.header("Upload-Published-As").is_some(), is_last);
        if is_last {
            assert_eq!(reply.header("Upload-Published-As"), Some("debian.iso"));
            assert_eq!(
                reply.header("Repr-Digest"),
                Some(format_repr_digest(&digest).as_str())
            );
        } else {
            let h = head(&server, &path).await;
            assert_eq!(h.offset(), offset);
            assert_eq!(h.header("Cache-Control"), Some("no-store"));
        }
    }
    assert_eq!(std::fs::read(server.dir.join("debian.iso")).unwrap(), data);
    assert_eq!(server.published(), ["debian.iso"]);
    // Only the finished upload's record is left, no part file.
    assert!(server.partial_files().iter().all(|f| f.ends_with(".info")));

    let h = head(&server, &path).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.offset(), data.len() as u64);
    assert_eq!(
        h.header("Upload-Length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(h.header("Upload-Published-As"), Some("debian.iso"));
    assert_eq!(
        h.header("Repr-Digest"),
        Some(format_repr_digest(&digest).as_str())
    );
    assert!(
        h.header("Upload-Metadata")
            .unwrap()
            .contains("filename ZGViaWFuLmlzbw==")
    );

    // A repeated final PATCH (its response was lost) is answered, not refused.
    let again = patch(&server, &path, data.len() as u64, b"").await;
    assert_eq!(again.status, 204, "{again:?}");
    assert_eq!(again.header("Upload-Published-As"), Some("debian.iso"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why_with_the_right_status() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let path = create(&server, 100, &[]).await;
    assert_eq!(patch(&server, &path, 0, &[1; 10]).await.status, 204);

    let wrong_offset = patch(&server, &path, 5, &[1; 10]).await;
    assert_eq!(wrong_offset.status, 409, "{wrong_offset:?}");
    assert_eq!(wrong_offset.offset(), 10);

    let no_version = server
        .req("HEAD", &path)
        .without("Tus-Resumable")
        .send()
        .await;
    assert_eq!(no_version.status, 412);
    assert_eq!(no_version.header("Tus-Version"), Some("1.0.0"));
    let old_version = server
        .req("POST", "/files/")
        .without("Tus-Resumable")
        .header("Tus-Resumable", "0.2.2")
        .header("Upload-Length", 1)
        .send()
        .await;
    assert_eq!(old_version.status, 412);

    let wrong_type = server
        .req("PATCH", &path)
        .header("Upload-Offset", 10)
        .header("Content-Type", "application/octet-stream")
        .body(vec![1; 10])
        .send()
        .await;
    assert_eq!(wrong_type.status, 415);

    let md5 = server
        .req("PATCH", &path)
        .header("Upload-Offset", 10)
        .header("Upload-Checksum", "md5 XUFAKrxLKna5cZ2REBfFkg==")
        .chunk(vec![1; 10])
        .send()
        .await;
    assert_eq!(md5.status, 400, "{md5:?}");
    assert!(md5.body.contains("md5"), "{}", md5.body);

    let bad_metadata = server
        .req("POST", "/files/")
        .header("Upload-Length", 1)
        .header("Upload-Metadata", "filename !!!")
        .send()
        .await;
    assert_eq!(bad_metadata.status, 400);
    let huge_metadata = server
        .req("POST", "/files/")
        .header("Upload-Length", 1)
        .header(
            "Upload-Metadata",
            format!("filename {}", B64.encode(vec![b'a'; 5000])),
        )
        .send()
        .await;
    assert_eq!(huge_metadata.status, 431);

    let past_the_end = patch(&server, &path, 10, &[1; 91]).await;
    assert_eq!(past_the_end.status, 413);
    assert_eq!(head(&server, &path).await.offset(), 10);

    for bad in [
        "/files/../etc/passwd",
        "/files/ABCDEF0123456789ABCDEF0123456789",
        "/files/0123456789abcdef",
        "/files/0123456789abcdef0123456789abcdef/x",
        "/other",
    ] {
        let reply = server.req("HEAD", bad).send().await;
        assert_eq!(reply.status, 404, "{bad}");
        assert_eq!(reply.header("Tus-Resumable"), Some("1.0.0"));
    }
    let unknown = head(&server, "/files/0123456789abcdef0123456789abcdef").await;
    assert_eq!(unknown.status, 404);
    let get = server.req("GET", &path).send().await;
    assert_eq!(get.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_on_post() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let path = create(&server, 10, &[("filename", b"o.bin")]).await;
    let reply = server
        .req("POST", &path)
        .header("X-HTTP-Method-Override", "PATCH")
        .header("Upload-Offset", 0)
        .chunk(vec![7; 4])
        .send()
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.offset(), 4);
    let h = server
        .req("POST", &path)
        .header("X-HTTP-Method-Override", "HEAD")
        .send()
        .await;
    assert_eq!(h.status, 200);
    assert_eq!(h.offset(), 4);
    let d = server
        .req("POST", &path)
        .header("X-HTTP-Method-Override", "DELETE")
        .send()
        .await;
    assert_eq!(d.status, 204);
    assert_eq!(head(&server, &path).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_committed_offset() {
    let env = Env::new();
    let dir = env.path("up");
    let data = pattern(200_000, 8);
    let server = TestServer::on(&dir).await;
    let path = create(&server, data.len() as u64, &[("filename", b"r.bin")]).await;
    assert_eq!(patch(&server, &path, 0, &data[..120_000]).await.status, 204);
    server.stop().await;

    // What a crash between a write and its commit leaves: bytes past the committed offset.
    let id = path.rsplit('/').next().unwrap();
    let part = dir.join(".partial").join(format!("{id}.part"));
    let mut junk = std::fs::read(&part).unwrap();
    junk.extend_from_slice(&[0xEE; 5000]);
    std::fs::write(&part, junk).unwrap();

    let server = TestServer::on(&dir).await;
    assert_eq!(head(&server, &path).await.offset(), 120_000);
    assert_eq!(
        std::fs::metadata(&part).unwrap().len(),
        120_000,
        "uncommitted bytes dropped"
    );
    let reply = server
        .req("PATCH", &path)
        .header("Upload-Offset", 120_000)
        .header("Repr-Digest", format_repr_digest(&sha256(&data)))
        .chunk(data[120_000..].to_vec())
        .send()
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(
        reply.header("Repr-Digest"),
        Some(format_repr_digest(&sha256(&data)).as_str())
    );
    assert_eq!(std::fs::read(dir.join("r.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_discards_a_stalled_checksummed_body() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let data = pattern(5000, 9);
    let path = create(&server, 5000, &[("filename", b"t.bin")]).await;
    let checksum = Checksum::of(Algorithm::Crc32, &data).to_string();
    let mut stalled = stalled_patch(
        server.addr,
        &path,
        &[("Upload-Offset", "0".into()), ("Upload-Checksum", checksum)],
        5000,
        &data[..1000],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let h = head(&server, &path).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h.status, 200);
    assert_eq!(
        h.offset(),
        0,
        "a checksummed partial body cannot be verified"
    );
    assert!(read_head(&mut stalled).await.starts_with("HTTP/1.1 409"));

    let reply = patch(&server, &path, 0, &data).await;
    assert_eq!(reply.header("Upload-Published-As"), Some("t.bin"));
    assert_eq!(std::fs::read(server.dir.join("t.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_keeps_a_stalled_plain_body() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let data = pattern(5000, 10);
    let path = create(&server, 5000, &[("filename", b"p.bin")]).await;
    let _stalled = stalled_patch(
        server.addr,
        &path,
        &[("Upload-Offset", "0".into())],
        5000,
        &data[..1000],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A PATCH takes over directly, at the offset the stalled one reached.
    let started = Instant::now();
    let reply = patch(&server, &path, 1000, &data[1000..]).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(std::fs::read(server.dir.join("p.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_cut_off_slow_ones_are_not() {
    let env = Env::new();
    let mut config = Config::new(env.path("up"));
    config.idle_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let data = pattern(4000, 11);

    let idle = create(&server, 4000, &[]).await;
    let mut stalled = stalled_patch(
        server.addr,
        &idle,
        &[("Upload-Offset", "0".into())],
        4000,
        &data[..700],
    )
    .await;
    assert!(read_head(&mut stalled).await.starts_with("HTTP/1.1 408"));
    assert_eq!(head(&server, &idle).await.offset(), 700);

    // 100 bytes every 200 ms for 2 s: slower than any real link, but never idle for 500 ms.
    let slow = create(&server, 1000, &[]).await;
    let mut stream = stalled_patch(
        server.addr,
        &slow,
        &[("Upload-Offset", "0".into())],
        1000,
        &data[..100],
    )
    .await;
    for piece in data[100..1000].chunks(100) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::io::AsyncWriteExt::write_all(&mut stream, piece)
            .await
            .unwrap();
    }
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    assert_eq!(head(&server, &slow).await.offset(), 1000);
}
