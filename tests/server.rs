//! `upload serve`: the tus server booted in-process on a temp dir and spoken to in raw HTTP,
//! one test per rule; and the real binary for start-up and signals.

use crate::helper::http::{Reply, TestServer, read_head, stalled_patch};
use crate::helper::{Env, pattern, run};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use upload::protocol::{Algorithm, Checksum, Metadata, format_repr_digest};
use upload::server::{Config, Cors, Token};

fn metadata(pairs: &[(&str, &[u8])]) -> String {
    let mut m = Metadata::default();
    for (k, v) in pairs {
        m.insert(k, v.to_vec());
    }
    m.to_string()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Creates an upload of `len` bytes named `name` and returns its path (`/files/<id>`).
async fn create(server: &TestServer, len: u64, meta: &[(&str, &[u8])]) -> String {
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Length", len)
        .header("Upload-Metadata", metadata(meta))
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    reply.header("Location").expect("Location").to_string()
}

async fn patch(server: &TestServer, path: &str, offset: u64, data: &[u8]) -> Reply {
    server
        .req("PATCH", path)
        .header("Upload-Offset", offset)
        .chunk(data.to_vec())
        .send()
        .await
}

async fn head(server: &TestServer, path: &str) -> Reply {
    server.req("HEAD", path).send().await
}

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
                "creation,creation-with-upload,creation-defer-length,checksum,termination,expiration"
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

/// A browser page on an allowed origin can preflight, create, resume and read what tus-js-client
/// needs; another origin gets the same answers without CORS headers, which the browser withholds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_allowed_pages_upload_from_a_browser() {
    let env = Env::new();
    let mut config = Config::new(env.path("up"));
    config.tokens = Some(vec!["s3cret".into()]);
    config.cors = Cors::from_origins(&["http://localhost:5173"]).unwrap();
    let server = TestServer::start(config).await;
    let page = "http://localhost:5173";

    // The preflight carries no token and no Tus-Resumable, and must still pass.
    let pre = server
        .req("OPTIONS", "/files/")
        .without("Tus-Resumable")
        .header("Origin", page)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,tus-resumable,upload-length,upload-metadata",
        )
        .send()
        .await;
    assert_eq!(pre.status, 204, "{pre:?}");
    assert_eq!(pre.header("Access-Control-Allow-Origin"), Some(page));
    let methods = pre.header("Access-Control-Allow-Methods").unwrap();
    for m in ["POST", "HEAD", "PATCH", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let allowed = pre
        .header("Access-Control-Allow-Headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "tus-resumable",
        "upload-length",
        "upload-metadata",
    ] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert_eq!(pre.header("Access-Control-Max-Age"), Some("86400"));
    assert!(pre.header("Access-Control-Allow-Credentials").is_none());

    // The real requests expose what a resuming client reads.
    let created = server
        .req("POST", "/files/")
        .header("Authorization", "Bearer s3cret")
        .header("Origin", page)
        .header("Upload-Length", 5)
        .send()
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.header("Access-Control-Allow-Origin"), Some(page));
    assert_eq!(created.header("Vary"), Some("Origin"));
    let exposed = created
        .header("Access-Control-Expose-Headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "location",
        "upload-offset",
        "upload-length",
        "tus-resumable",
    ] {
        assert!(exposed.contains(h), "{exposed}");
    }
    let url = created.header("Location").unwrap().to_string();
    let path = url.trim_start_matches(&format!("http://{}", server.addr));
    let sent = server
        .req("PATCH", path)
        .header("Authorization", "Bearer s3cret")
        .header("Origin", page)
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .body(&b"hello"[..])
        .send()
        .await;
    assert_eq!(sent.status, 204, "{sent:?}");
    assert_eq!(sent.header("Access-Control-Allow-Origin"), Some(page));

    // Errors are readable too, or the page cannot tell a bad token from a dead server.
    let refused = server.req("HEAD", path).header("Origin", page).send().await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("Access-Control-Allow-Origin"), Some(page));

    // Another origin: same answers, no CORS headers.
    for other in ["http://localhost:5174", "https://localhost:5173", "null"] {
        let reply = server
            .req("OPTIONS", "/files/")
            .without("Tus-Resumable")
            .header("Origin", other)
            .header("Access-Control-Request-Method", "POST")
            .send()
            .await;
        assert_eq!(reply.status, 204, "{other}: {reply:?}");
        assert!(
            reply.header("Access-Control-Allow-Origin").is_none()
                && reply.header("Access-Control-Allow-Methods").is_none(),
            "{other}: {reply:?}"
        );
    }
    server.stop().await;

    // Off by default: nothing at all.
    let server = TestServer::on(&env.path("up2")).await;
    let reply = server
        .req("OPTIONS", "/files/")
        .header("Origin", page)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await;
    assert_eq!(reply.status, 204);
    assert!(
        reply.header("Access-Control-Allow-Origin").is_none() && reply.header("Vary").is_none(),
        "{reply:?}"
    );
    server.stop().await;
}

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
async fn termination_removes_everything() {
    let env = Env::new();
    let server = TestServer::on(&env.path("up")).await;
    let path = create(&server, 100, &[]).await;
    assert_eq!(patch(&server, &path, 0, &[1; 50]).await.status, 204);
    assert_eq!(server.req("DELETE", &path).send().await.status, 204);
    assert_eq!(head(&server, &path).await.status, 404);
    assert_eq!(patch(&server, &path, 50, &[1; 50]).await.status, 404);
    assert_eq!(server.req("DELETE", &path).send().await.status, 404);
    assert!(
        server.partial_files().is_empty(),
        "{:?}",
        server.partial_files()
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partial_uploads_expire() {
    let env = Env::new();
    let mut config = Config::new(env.path("up"));
    config.expire_after = Duration::from_millis(600);
    config.sweep_interval = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Length", 10)
        .send()
        .await;
    let expires = httpdate::parse_http_date(reply.header("Upload-Expires").unwrap()).unwrap();
    assert!(expires > std::time::SystemTime::now() - Duration::from_secs(2));
    let path = reply.header("Location").unwrap().to_string();
    assert_eq!(server.partial_files().len(), 2);

    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.partial_files().is_empty() {
        assert!(
            Instant::now() < deadline,
            "not swept: {:?}",
            server.partial_files()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(head(&server, &path).await.status, 404);
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

/// A request with `token` as its bearer token.
fn with_token(
    server: &TestServer,
    token: &str,
    method: &str,
    path: &str,
) -> crate::helper::http::Req {
    server
        .req(method, path)
        .header("Authorization", format!("Bearer {token}"))
}

/// What a client can see of a reply, but for its `Date`.
fn seen(reply: &Reply) -> (u16, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
        .collect();
    headers.sort();
    (reply.status, headers, reply.body.clone())
}

fn two_maintainers(env: &Env) -> Config {
    let mut config = Config::new(env.path("up"));
    config.tokens = Some(vec![
        Token::named("tok-a", "alice"),
        Token::named("tok-b", "bob"),
    ]);
    config
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
    let (out, _, stderr) = run(env
        .upload()
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--dir"])
        .arg(&typo));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{} does not exist", typo.display()))
            && stderr.contains("mkdir -p"),
        "{stderr}"
    );
    assert!(!typo.exists(), "created {}", typo.display());
}
