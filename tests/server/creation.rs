//! tus creation, creation-with-upload, creation-defer-length, and the size cap.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_advertises_the_extensions_without_auth() {
    let env = Env::new();
    let mut config = Config::new(env.path("up"));
    config.max_size = Some(1 << 30);
    config.tokens = Some(vec!["s3cret".into()]);
    let server = TestServer::start(config).await;
    for path in ["/files/", "/files/0123456789abcdef0123456789abcdef"] {
        let reply = server
            .req("OPTIONS", path)
            .without("Tus-Resumable")
            .send()
            .await;
        assert_eq!(reply.status, 204, "{path}: {reply:?}");
        assert_eq!(reply.header("Tus-Resumable"), Some("1.0.0"));
        assert_eq!(reply.header("Tus-Version"), Some("1.0.0"));
        assert_eq!(
            reply.header("Tus-Extension"),
            Some(
                "creation,creation-with-upload,creation-defer-length,checksum,termination,expiration,\
                 delta"
            )
        );
        assert_eq!(reply.header("Tus-Max-Size"), Some("1073741824"));
        assert_eq!(
            reply.header("Tus-Checksum-Algorithm"),
            Some(Algorithm::header_value().as_str())
        );
    }
}

/// Behind a proxy that maps the server under /tus/, Location names the public URL, and the
/// proxied path (`/files/<id>`) is what the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_follows_the_public_url() {
    let env = Env::new();
    let mut config = Config::new(env.path("up"));
    config.public_url = Some("https://example.org/tus/files/".parse().unwrap());
    let server = TestServer::start(config).await;
    let location = create(&server, 3, &[]).await;
    let id = location
        .strip_prefix("https://example.org/tus/files/")
        .unwrap_or_else(|| panic!("Location {location}"));
    assert_eq!(id.len(), 32, "{location}");
    assert_eq!(head(&server, &format!("/files/{id}")).await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_with_upload() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let data = pattern(10_000, 2);
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Length", data.len())
        .header("Upload-Metadata", metadata(&[("filename", b"a.bin")]))
        .chunk(data[..4000].to_vec())
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.offset(), 4000);
    let path = reply.header("Location").unwrap().to_string();
    let reply = patch(&server, &path, 4000, &data[4000..]).await;
    assert_eq!(reply.header("Upload-Published-As"), Some("a.bin"));
    assert_eq!(std::fs::read(server.dir.join("a.bin")).unwrap(), data);

    // The whole file in the POST: published at creation.
    let reply = server
        .req("POST", "/files")
        .header("Upload-Length", data.len())
        .header("Upload-Metadata", metadata(&[("filename", b"b.bin")]))
        .header("Upload-Checksum", Checksum::of(Algorithm::Sha1, &data))
        .chunk(data.clone())
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.offset(), data.len() as u64);
    assert_eq!(reply.header("Upload-Published-As"), Some("b.bin"));
    assert_eq!(std::fs::read(server.dir.join("b.bin")).unwrap(), data);

    // A creation body with a bad checksum: the upload exists, at offset 0.
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Length", data.len())
        .header("Upload-Checksum", Checksum::of(Algorithm::Sha1, b"other"))
        .chunk(data.clone())
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.offset(), 0);
    let path = reply.header("Location").unwrap().to_string();
    assert_eq!(head(&server, &path).await.offset(), 0);
}

/// A deferred-length upload that already holds more than a `max_size` lowered since: more
/// data is refused with 413, not accepted without limit (or a panic on the subtraction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_size_refuses_more_on_a_deferred_upload() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Defer-Length", 1)
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let path = reply.header("Location").unwrap().to_string();
    assert_eq!(patch(&server, &path, 0, &[7u8; 8]).await.status, 204);
    server.stop().await;

    let mut config = Config::new(env.path("up"));
    config.max_size = Some(5);
    let server = TestServer::start(config).await;
    let reply = patch(&server, &path, 8, &[7u8; 1]).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(head(&server, &path).await.offset(), 8);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_length_is_declared_once() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let data = pattern(5000, 3);
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Defer-Length", 1)
        .header("Upload-Metadata", metadata(&[("filename", b"later.bin")]))
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let path = reply.header("Location").unwrap().to_string();
    let h = head(&server, &path).await;
    assert_eq!(h.header("Upload-Defer-Length"), Some("1"));
    assert_eq!(h.header("Upload-Length"), None);

    assert_eq!(patch(&server, &path, 0, &data[..2000]).await.status, 204);
    let reply = server
        .req("PATCH", &path)
        .header("Upload-Offset", 2000)
        .header("Upload-Length", data.len())
        .chunk(data[2000..3000].to_vec())
        .send()
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let h = head(&server, &path).await;
    assert_eq!(h.header("Upload-Length"), Some("5000"));
    assert_eq!(h.header("Upload-Defer-Length"), None);

    let changed = server
        .req("PATCH", &path)
        .header("Upload-Offset", 3000)
        .header("Upload-Length", 6000)
        .chunk(Vec::new())
        .send()
        .await;
    assert_eq!(changed.status, 400, "{changed:?}");

    let reply = patch(&server, &path, 3000, &data[3000..]).await;
    assert_eq!(reply.header("Upload-Published-As"), Some("later.bin"));
    assert_eq!(std::fs::read(server.dir.join("later.bin")).unwrap(), data);

    let neither = server.req("POST", "/files/").send().await;
    assert_eq!(neither.status, 400);
    let both = server
        .req("POST", "/files/")
        .header("Upload-Length", 5)
        .header("Upload-Defer-Length", 1)
        .send()
        .await;
    assert_eq!(both.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_is_enforced_before_storing() {
    let env = Env::new();
    let mut config = Config::new(env.path("up"));
    config.max_size = Some(1000);
    let server = TestServer::start(config).await;
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Length", 1001)
        .send()
        .await;
    assert_eq!(reply.status, 413);
    assert!(server.partial_files().is_empty());

    // A deferred length cannot sneak past it either.
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Defer-Length", 1)
        .send()
        .await;
    let path = reply.header("Location").unwrap().to_string();
    assert_eq!(patch(&server, &path, 0, &[0; 1001]).await.status, 413);
    assert_eq!(head(&server, &path).await.offset(), 0);
    let declare = server
        .req("PATCH", &path)
        .header("Upload-Offset", 0)
        .header("Upload-Length", 2000)
        .chunk(Vec::new())
        .send()
        .await;
    assert_eq!(declare.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_upload_publishes_an_empty_file() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Length", 0)
        .header("Upload-Metadata", metadata(&[("filename", b"empty.txt")]))
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("Upload-Published-As"), Some("empty.txt"));
    assert_eq!(std::fs::read(server.dir.join("empty.txt")).unwrap(), b"");
}

/// Issue 11, item 7: without `max_size` the largest upload is derived from the free space at
/// start-up and advertised; nothing larger (2^64 - 1 bytes, say) is accepted. An explicit
/// maximum wins (see `options_advertises_the_extensions_without_auth`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_max_size_comes_from_the_free_space() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let options = server.req("OPTIONS", "/files/").send().await;
    let max: u64 = options
        .header("Tus-Max-Size")
        .unwrap_or_else(|| panic!("no Tus-Max-Size: {options:?}"))
        .parse()
        .unwrap();
    let free = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&server.dir)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    // df runs a moment later: allow for what other processes wrote or freed meanwhile.
    let expected = upload::server::default_max_size(free) as f64;
    assert!(
        (max as f64 - expected).abs() < expected * 0.01 + (64 << 20) as f64,
        "Tus-Max-Size {max}, 95 % of {free} free is {expected}"
    );
    assert!(max < free, "{max} >= {free}");
    for length in [u64::MAX, max + 1] {
        let reply = server
            .req("POST", "/files/")
            .header("Upload-Length", length)
            .send()
            .await;
        assert_eq!(reply.status, 413, "{length}: {reply:?}");
        assert!(reply.body.contains("free"), "{}", reply.body);
    }
    assert!(server.partial_files().is_empty());
    let fits = server
        .req("POST", "/files/")
        .header("Upload-Length", max)
        .send()
        .await;
    assert_eq!(fits.status, 201, "{fits:?}");
    server.stop().await;
}
