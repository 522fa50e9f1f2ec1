//! The tus server in-process on a temp dir, and a minimal HTTP/1.1 client that sends exactly
//! what a test says (no tus library in between): one connection per request, so a test sees
//! the server's answer to each request and nothing is pooled.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use upload::server::{Config, Server};

/// A running server; stops when dropped (or explicitly with `stop`, to restart on its dir).
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let dir = config.dir.clone();
        let server = Server::bind(config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("server run");
        });
        TestServer {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A server with default settings and no auth on `dir`.
    pub async fn on(dir: &Path) -> TestServer {
        Self::start(Config::new(dir)).await
    }

    /// Stops the server and waits until it has let go of everything.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.expect("server task");
    }

    pub fn req(&self, method: &str, path: &str) -> Req {
        Req {
            addr: self.addr,
            method: method.to_string(),
            path: path.to_string(),
            headers: vec![("Tus-Resumable".into(), "1.0.0".into())],
            body: Bytes::new(),
        }
    }

    /// The files in `.partial` (part and info files of unfinished uploads).
    pub fn partial_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join(".partial"))
            .expect("read .partial")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The published files (everything in DIR but `.partial`).
    pub fn published(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("read dir")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            // The store's own: unfinished uploads, and what it knows of published files.
            .filter(|n| n != ".partial" && n != ".upload-index")
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A request to the server at `addr` (an `upload serve` process, say), built as
/// [`TestServer::req`] builds one.
pub fn req_to(addr: SocketAddr, method: &str, path: &str) -> Req {
    Req {
        addr,
        method: method.to_string(),
        path: path.to_string(),
        headers: vec![("Tus-Resumable".into(), "1.0.0".into())],
        body: Bytes::new(),
    }
}

/// A request being built; `Tus-Resumable: 1.0.0` is there unless removed.
pub struct Req {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Req {
    pub fn header(mut self, name: &str, value: impl ToString) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// A PATCH-style body: sets Content-Type application/offset+octet-stream.
    pub fn chunk(self, data: impl Into<Bytes>) -> Req {
        self.header("Content-Type", "application/offset+octet-stream")
            .body(data)
    }

    pub fn body(mut self, data: impl Into<Bytes>) -> Req {
        self.body = data.into();
        self
    }

    pub async fn send(self) -> Reply {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str())
            .header("Host", self.addr.to_string());
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Full::new(self.body)).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
            .await
            .expect("the server answers within 20 s")
            .expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    pub fn offset(&self) -> u64 {
        self.header("Upload-Offset")
            .expect("Upload-Offset")
            .parse()
            .expect("a number")
    }
}

/// A PATCH that sends its head and the first part of its body, then nothing: the connection
/// stays open as on a link that died silently.
pub async fn stalled_patch(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    declared_len: usize,
    sent: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {declared_len}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(sent).await.expect("write body");
    stream.flush().await.expect("flush");
    stream
}

/// The status line and headers the server sent on a raw connection, as text (waits up to 10 s).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}
