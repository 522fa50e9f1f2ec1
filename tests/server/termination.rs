//! tus termination.

use super::*;

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
