//! tus checksum, and the whole file's SHA-256 (metadata sha256, Repr-Digest).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_keeps_the_offset() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let data = pattern(3000, 4);
    let path = create(&server, 3000, &[("filename", b"c.bin")]).await;
    for (i, algorithm) in [Algorithm::Crc32, Algorithm::Sha1, Algorithm::Sha256]
        .into_iter()
        .enumerate()
    {
        let chunk = &data[i * 1000..(i + 1) * 1000];
        let offset = i as u64 * 1000;
        let wrong = server
            .req("PATCH", &path)
            .header("Upload-Offset", offset)
            .header(
                "Upload-Checksum",
                Checksum::of(algorithm, b"something else"),
            )
            .chunk(chunk.to_vec())
            .send()
            .await;
        assert_eq!(wrong.status, 460, "{algorithm:?}: {wrong:?}");
        assert_eq!(wrong.offset(), offset);
        assert_eq!(head(&server, &path).await.offset(), offset);
        let right = server
            .req("PATCH", &path)
            .header("Upload-Offset", offset)
            .header("Upload-Checksum", Checksum::of(algorithm, chunk))
            .chunk(chunk.to_vec())
            .send()
            .await;
        assert_eq!(right.status, 204, "{algorithm:?}: {right:?}");
    }
    assert_eq!(std::fs::read(server.dir.join("c.bin")).unwrap(), data);
}

/// sha256-upto (ours) is the SHA-256 of the upload from its first byte through the body: the
/// body's own SHA-256 is refused for any chunk but the first, and a refused chunk leaves the
/// running hash as it was, so the right digest is taken next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_upto_covers_the_upload_from_its_first_byte() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let data = pattern(3000, 6);
    let path = create(&server, 3000, &[("filename", b"u.bin")]).await;
    for i in 0..3 {
        let (offset, end) = (i * 1000, (i + 1) * 1000);
        let upto = |bytes: &[u8]| Checksum::of(Algorithm::Sha256Upto, bytes);
        if i > 0 {
            let body_only = server
                .req("PATCH", &path)
                .header("Upload-Offset", offset)
                .header("Upload-Checksum", upto(&data[offset..end]))
                .chunk(data[offset..end].to_vec())
                .send()
                .await;
            assert_eq!(body_only.status, 460, "chunk {i}: {body_only:?}");
            assert_eq!(head(&server, &path).await.offset(), offset as u64);
        }
        let right = server
            .req("PATCH", &path)
            .header("Upload-Offset", offset)
            .header("Upload-Checksum", upto(&data[..end]))
            .chunk(data[offset..end].to_vec())
            .send()
            .await;
        assert_eq!(right.status, 204, "chunk {i}: {right:?}");
    }
    assert_eq!(std::fs::read(server.dir.join("u.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_file_digest_mismatch_publishes_nothing() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let data = pattern(2000, 5);
    let path = create(&server, 2000, &[("filename", b"bad.iso")]).await;
    assert_eq!(patch(&server, &path, 0, &data[..1000]).await.status, 204);
    let wrong = sha256(b"not the data");
    let reply = server
        .req("PATCH", &path)
        .header("Upload-Offset", 1000)
        .header("Repr-Digest", format_repr_digest(&wrong))
        .chunk(data[1000..].to_vec())
        .send()
        .await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert!(
        reply.body.contains("whole-file SHA-256 mismatch"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains(&hex::encode(wrong)), "{}", reply.body);
    assert!(
        reply.body.contains(&hex::encode(sha256(&data))),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("nothing was published"),
        "{}",
        reply.body
    );
    assert!(server.published().is_empty());
    assert!(server.partial_files().iter().all(|f| !f.ends_with(".part")));
    assert_eq!(head(&server, &path).await.status, 410);

    // The same through metadata sha256.
    let path = create(
        &server,
        2000,
        &[
            ("filename", b"bad.iso"),
            ("sha256", hex::encode(wrong).as_bytes()),
        ],
    )
    .await;
    assert_eq!(patch(&server, &path, 0, &data).await.status, 422);
    assert_eq!(head(&server, &path).await.status, 410);
    assert!(server.published().is_empty());
}

/// A PATCH with a chunked body: sends its head and every byte of `data` as one chunk, but never
/// the last (empty) chunk, so the body is not over when the client breaks off.
async fn unfinished_chunked_patch(
    server: &TestServer,
    path: &str,
    headers: &[(&str, String)],
    data: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n",
        server.addr
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("\r\n{:x}\r\n", data.len()));
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(data).await.unwrap();
    stream.write_all(b"\r\n").await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Waits until the upload is no longer in the hands of a request (HEAD answers something
/// other than 503) and returns that answer.
async fn settled_head(server: &TestServer, path: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = head(server, path).await;
        if h.status != 503 || Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 11, item 1: the last PATCH declares the whole file's SHA-256 in `Repr-Digest`, has no
/// `Upload-Checksum`, and breaks off after its last data byte (connection dropped, or stalled
/// into the idle timeout). The bytes are kept, and the digest with them: a body with one
/// flipped bit is never published, however the upload is completed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_digest_survives_a_last_patch_that_breaks_off() {
    let env = Env::new();
    let mut config = Config::new(env.path("up"));
    config.idle_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let good = pattern(1 << 20, 12);
    let mut bad = good.clone();
    bad[700_000] ^= 0x10;
    let digest = ("Repr-Digest", format_repr_digest(&sha256(&good)));

    // Dropped after the last byte: 400 (broken) for nobody; HEAD must not publish it.
    let dropped = create(&server, good.len() as u64, &[("filename", b"dropped.iso")]).await;
    let offset = ("Upload-Offset", "0".to_string());
    let stream =
        unfinished_chunked_patch(&server, &dropped, &[offset.clone(), digest.clone()], &bad).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    let h = settled_head(&server, &dropped).await;
    assert_eq!(
        h.status, 410,
        "corrupt bytes under a declared digest: {h:?}"
    );

    // Stalled after the last byte until the idle timeout: the answer says nothing was
    // published, and so does HEAD.
    let stalled = create(&server, good.len() as u64, &[("filename", b"stalled.iso")]).await;
    let mut stream =
        unfinished_chunked_patch(&server, &stalled, &[offset.clone(), digest.clone()], &bad).await;
    let answer = read_head(&mut stream).await;
    assert!(
        !answer.starts_with("HTTP/1.1 2"),
        "a stalled corrupt body was accepted: {answer}"
    );
    assert_eq!(settled_head(&server, &stalled).await.status, 410);
    assert!(
        server.published().is_empty(),
        "published: {:?}",
        server.published()
    );

    // The same with the right bytes: verified and published, without waiting for a HEAD.
    let fine = create(&server, good.len() as u64, &[("filename", b"fine.iso")]).await;
    let mut stream = unfinished_chunked_patch(&server, &fine, &[offset, digest], &good).await;
    let _ = read_head(&mut stream).await;
    assert_eq!(server.published(), ["fine.iso"]);
    assert_eq!(std::fs::read(server.dir.join("fine.iso")).unwrap(), good);
    let h = head(&server, &fine).await;
    assert_eq!(h.header("Upload-Published-As"), Some("fine.iso"), "{h:?}");
    assert_eq!(
        h.header("Repr-Digest"),
        Some(format_repr_digest(&sha256(&good)).as_str())
    );
    server.stop().await;
}

/// The digest declared on an interrupted last PATCH is on disk with its bytes: a server that
/// stops (or crashes) before checking it checks it after the restart, never publishing
/// unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_digest_is_checked_after_a_restart() {
    let env = Env::new();
    let dir = env.path("up");
    let good = pattern(300_000, 13);
    let mut bad = good.clone();
    bad[1] ^= 1;
    let server = TestServer::on(&dir).await;
    let path = create(&server, good.len() as u64, &[("filename", b"r.iso")]).await;
    assert_eq!(patch(&server, &path, 0, &bad[..100_000]).await.status, 204);
    let reply = server
        .req("PATCH", &path)
        .header("Upload-Offset", 100_000)
        .header("Repr-Digest", format_repr_digest(&sha256(&good)))
        .chunk(bad[100_000..200_000].to_vec())
        .send()
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    server.stop().await;
    // Recorded with the bytes of that PATCH, before any of the last ones arrive.
    let id = path.rsplit('/').next().unwrap();
    let info = std::fs::read_to_string(dir.join(format!(".partial/{id}.info"))).unwrap();
    assert!(info.contains(&hex::encode(sha256(&good))), "{info}");

    let server = TestServer::on(&dir).await;
    let reply = patch(&server, &path, 200_000, &bad[200_000..]).await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert!(
        reply.body.contains("nothing was published"),
        "{}",
        reply.body
    );
    assert_eq!(head(&server, &path).await.status, 410);
    assert!(server.published().is_empty());

    // A later PATCH cannot swap in another digest either.
    let path = create(
        &server,
        10,
        &[("sha256", hex::encode(sha256(&good)).as_bytes())],
    )
    .await;
    let swapped = server
        .req("PATCH", &path)
        .header("Upload-Offset", 0)
        .header("Repr-Digest", format_repr_digest(&sha256(&[0; 10])))
        .chunk(vec![0; 10])
        .send()
        .await;
    assert_eq!(swapped.status, 400, "{swapped:?}");
    assert!(swapped.body.contains("declared"), "{}", swapped.body);
    assert_eq!(head(&server, &path).await.offset(), 0);
    server.stop().await;
}
