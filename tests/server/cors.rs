//! Browsers on other origins (CORS).

use super::*;

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
