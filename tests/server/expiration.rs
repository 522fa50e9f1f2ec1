//! tus expiration.

use super::*;

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
