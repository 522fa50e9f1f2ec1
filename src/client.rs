//! The tus client transport: one HTTP/1.1 connection that we open ourselves (so we choose its
//! socket options), the tus requests (OPTIONS, POST, HEAD, PATCH, DELETE), and the mapping of
//! every failure to whether a retry can help.
//!
//! The connection is hyper's low-level `client::conn::http1` over our own `TcpStream`, not a
//! pooled client: an upload talks to one server, and owning the socket lets us keep its send
//! queue short (`TCP_NOTSENT_LOWAT`), so bytes handed to the kernel are close to bytes on the
//! wire and a dead link shows up as a stalled body within seconds.
//!
//! For https the socket is tuned and handed to the [`LinkProbe`] first, then wrapped in TLS
//! (rustls, SNI = the URL's host): the probe reads TCP's own counters, which TLS does not hide.
//! A certificate that does not verify is permanent (retrying cannot make it trusted); a reset or
//! a timeout during the handshake is temporary like any other connection failure.
//!
//! The connection's origin is a seam ([`Dialer`]): TCP (and TLS over it) by default, or a pipe
//! some other party opens, such as the stdin and stdout of a child `ssh` running
//! `upload serve --stdio` (`send::ssh`). The requests, checksums and digests are the same over
//! either; a dialer brings its own progress probe (a pipe has no TCP_INFO of ours) and tells
//! why its connection closed ([`Dialed::why_closed`]), so that a refused ssh login is reported
//! as what it is instead of as a closed connection.

use crate::protocol::{self, Algorithm, Checksum, Metadata};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use url::Url;

/// How a failure should be treated by the retry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Stop and tell the user (bad token, too large, protocol violation).
    Permanent,
    /// Back off briefly and try again (connection reset, timeout, 5xx).
    Temporary,
    /// Back off long and try again (server disk full).
    Persistent,
}

/// A tus request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid upload URL \"{url}\": {why}; expected e.g. http://server:8080/files/")]
    BadUrl { url: String, why: String },
    /// An `ssh://` URL that names no remote directory we can use (see `send::ssh`).
    #[error(
        "invalid ssh URL \"{url}\": {why}; expected e.g. ssh://user@host/srv/inbox/ or \
         ssh://host:2222/~/inbox/ (under the remote home)"
    )]
    BadSshUrl { url: String, why: String },
    /// The URL reaches a server but no tus endpoint (404 to OPTIONS or the creation POST):
    /// a wrong path, most often a missing `/files/`. Retrying cannot help; `hint` names the
    /// endpoint that does answer, when one of the likely ones does.
    #[error("no tus upload endpoint at {url} ({status}){hint}")]
    NoEndpoint {
        url: String,
        status: StatusCode,
        hint: String,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to the server failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the server's certificate is not trusted: {0} (pass --ca FILE for a private CA)")]
    Untrusted(rustls::Error),
    #[error("the TLS handshake with the server failed: {0}{hint}", hint = tls_hint(.0))]
    Tls(rustls::Error),
    #[error("no response from the server for {0:?}")]
    Timeout(Duration),
    #[error("the connection moved no data for {0:?}: the link looks dead")]
    Stalled(Duration),
    #[error("the server cut the request off ({status}): {body}")]
    CutOff { status: StatusCode, body: String },
    #[error("the server refused the credentials ({status}){hint}")]
    Auth { status: StatusCode, hint: String },
    #[error("the server refused the size: {0}")]
    TooLarge(String),
    #[error("the upload is gone from the server ({0}): it expired or was deleted")]
    Gone(StatusCode),
    /// [`ClientError::Gone`] on an upload the server answered for earlier: asking again
    /// (HEAD) tells whether to start over.
    #[error("the upload vanished from the server ({0}) since it last answered; asking again")]
    Vanished(StatusCode),
    #[error("the server is at offset {}, not {ours}", server.map_or("unknown".to_string(), |s| s.to_string()))]
    OffsetMismatch { server: Option<u64>, ours: u64 },
    #[error("the server rejected a chunk's checksum (460): it was damaged on the way")]
    ChecksumMismatch,
    #[error("the server received the whole file but its SHA-256 did not match: {0}")]
    Verification(String),
    #[error("the server has no space left ({0})")]
    InsufficientStorage(StatusCode),
    #[error("the server has too many uploads from us at once (429){}", .retry_after.map_or(String::new(), |d| format!("; it asks to retry in {d:?}")))]
    TooManyUploads { retry_after: Option<Duration> },
    #[error("server error {status}: {body}")]
    Server { status: StatusCode, body: String },
    #[error("unexpected response {status} to {method}: {body}")]
    Unexpected {
        method: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("the server's response is not valid tus: {0}")]
    Protocol(String),
    #[error("the request body could not be produced: {0}")]
    Body(String),
    /// A delta upload the server will not assemble (its base is gone or changed, issue 13):
    /// the whole file can still be sent.
    #[error("the server refused the delta upload ({code}): {why}")]
    DeltaRefused { code: String, why: String },
    /// The pipe a [`Dialer`] opened failed in a way it could explain (an ssh login refused,
    /// the remote `upload` missing): `message` says what was wrong and how to fix it.
    #[error("{message}")]
    Pipe { kind: PipeFailure, message: String },
    /// An S3 error answer the variants above do not cover: its code and status say what a
    /// retry can do (`SlowDown`, `InternalError`, any 5xx: wait and retry; `NoSuchBucket`,
    /// `EntityTooSmall`: stop).
    #[error("the object store refused {op}: {code} ({status}): {message}")]
    ObjectStore {
        op: &'static str,
        status: StatusCode,
        code: String,
        message: String,
    },
}

/// Why a [`Dialer`]'s connection failed, by what the user or a retry can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeFailure {
    /// The program that opens the pipe (ssh) cannot be run.
    NoProgram,
    /// The peer refused our credentials (ssh keys).
    LoginRefused,
    /// The peer's identity could not be verified (unknown host key, or a changed one).
    HostKey,
    /// The peer has no `upload` to run.
    NoRemoteUpload,
    /// The remote directory is missing, not a directory, or not writable.
    RemoteDir,
    /// The peer could not be reached (refused, timed out, no route, name not resolved).
    Unreachable,
    /// The pipe closed for another reason (the link died, the remote side exited).
    Closed,
}

impl ClientError {
    pub fn retry(&self) -> Retry {
        match self {
            ClientError::Connect { .. }
            | ClientError::Http(_)
            | ClientError::Timeout(_)
            | ClientError::Stalled(_)
            | ClientError::CutOff { .. }
            | ClientError::Server { .. }
            | ClientError::OffsetMismatch { .. }
            | ClientError::Vanished(_)
            | ClientError::ChecksumMismatch
            | ClientError::TooManyUploads { .. }
            | ClientError::Body(_)
            | ClientError::Pipe {
                kind: PipeFailure::Unreachable | PipeFailure::Closed,
                ..
            } => Retry::Temporary,
            ClientError::InsufficientStorage(_) => Retry::Persistent,
            ClientError::ObjectStore { status, code, .. } => {
                let retryable = status.is_server_error()
                    || matches!(
                        code.as_str(),
                        "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                            // A part missing at completion: asking ListParts again sorts it out.
                            | "InvalidPart" | "InvalidPartOrder"
                    );
                if retryable {
                    Retry::Temporary
                } else {
                    Retry::Permanent
                }
            }
            ClientError::BadUrl { .. }
            | ClientError::BadSshUrl { .. }
            | ClientError::NoEndpoint { .. }
            | ClientError::Untrusted(_)
            | ClientError::Tls(_)
            | ClientError::Auth { .. }
            | ClientError::TooLarge(_)
            | ClientError::Gone(_)
            | ClientError::Verification(_)
            | ClientError::Unexpected { .. }
            | ClientError::DeltaRefused { .. }
            | ClientError::Protocol(_)
            | ClientError::Pipe {
                kind:
                    PipeFailure::NoProgram
                    | PipeFailure::LoginRefused
                    | PipeFailure::HostKey
                    | PipeFailure::NoRemoteUpload
                    | PipeFailure::RemoteDir,
                ..
            } => Retry::Permanent,
        }
    }
}

/// Why a handshake may have failed, when rustls' message alone would puzzle.
fn tls_hint(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidMessage(_) => {
            " (does the server speak plain http? then use an http:// URL)"
        }
        _ => "",
    }
}

/// How long the answer to an index request may take to begin: a server makes a file's index
/// when it is first asked for, reading the whole file (about 2 s per GiB measured here).
const INDEX_TIMEOUT: Duration = Duration::from_secs(300);

/// The largest index a client accepts: a 16 GiB file at 4 KiB chunks has one of 60 MB.
pub const MAX_INDEX_BYTES: usize = 128 << 20;

/// What a server said it supports (OPTIONS).
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    pub extensions: Vec<String>,
    pub max_size: Option<u64>,
    pub checksum: Option<Algorithm>,
}

impl Capabilities {
    pub fn has(&self, ext: &str) -> bool {
        self.extensions.iter().any(|e| e == ext)
    }
}

/// What HEAD says about an upload.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadInfo {
    pub offset: u64,
    pub length: Option<u64>,
    /// Our server's SHA-256 of a finished upload (RFC 9530 Repr-Digest).
    pub sha256: Option<[u8; 32]>,
    pub published_as: Option<String>,
}

/// What a PATCH achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOutcome {
    pub offset: u64,
    pub sha256: Option<[u8; 32]>,
    pub published_as: Option<String>,
}

/// A PATCH body: pieces arrive through a bounded channel from the reader task, so at most a
/// few pieces sit in memory and a stalled connection stops the reader.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    remaining: u64,
}

impl ChannelBody {
    /// A body of exactly `len` bytes and the sender that feeds it.
    pub fn new(len: u64, depth: usize) -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Self) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        (tx, ChannelBody { rx, remaining: len })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.remaining = self.remaining.saturating_sub(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the body ended early",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A request body on the owned connection: empty, or a chunk streamed from the file.
pub type ReqBody = BoxBody<Bytes, std::io::Error>;

/// The unsent part of the socket's send queue when nothing limits the rate. Limited transfers
/// use [`notsent_lowat_for`]: without a bound a connection held 55 to 121 KiB unsent here,
/// 3.5 to 7.7 s at 128 kbit/s, bytes that look sent but are lost on a kill.
pub const NOTSENT_LOWAT_UNLIMITED: u32 = 256 * 1024;
/// Short, because a connection attempt on a dead link is how we notice it is back: a new SYN
/// goes out within a couple of seconds instead of waiting out TCP's SYN backoff.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a small request (OPTIONS, POST, HEAD, DELETE) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The unsent-queue bound for a rate in bytes per second: about a quarter second of data,
/// between 4 KiB and 256 KiB.
pub fn notsent_lowat_for(bytes_per_second: Option<f64>) -> u32 {
    match bytes_per_second {
        None => NOTSENT_LOWAT_UNLIMITED,
        Some(r) => ((r * 0.25) as u32).clamp(4 * 1024, NOTSENT_LOWAT_UNLIMITED),
    }
}

/// A second handle on the live connection's socket, to read how far TCP got (bytes the server
/// acknowledged or sent back) while hyper owns the stream; or, for a [`Dialer`]'s pipe, the
/// dialer's own count of that.
#[derive(Clone, Default)]
pub struct LinkProbe(std::sync::Arc<std::sync::Mutex<Option<ProbeSource>>>);

/// What a [`LinkProbe`] reads.
#[derive(Clone)]
enum ProbeSource {
    Tcp(Arc<socket2::Socket>),
    Counter(Arc<dyn Fn() -> Option<u64> + Send + Sync>),
}

impl LinkProbe {
    /// A probe that reads `progress` (see [`LinkProbe::progress`]).
    pub fn from_fn(progress: impl Fn() -> Option<u64> + Send + Sync + 'static) -> LinkProbe {
        LinkProbe(Arc::new(std::sync::Mutex::new(Some(ProbeSource::Counter(
            Arc::new(progress),
        )))))
    }

    /// Bytes acknowledged by the peer plus bytes received from it on the current connection,
    /// or `None` where TCP_INFO is not available. Any increase means the link is alive.
    pub fn progress(&self) -> Option<u64> {
        let source = self.0.lock().expect("probe lock").clone()?;
        match source {
            ProbeSource::Tcp(sock) => tcp_progress(&sock),
            ProbeSource::Counter(f) => f(),
        }
    }

    /// The connection's round-trip and delivery counters (polite mode's delay signal), or
    /// `None` without a TCP connection of ours or where TCP_INFO is not available.
    pub fn stats(&self) -> Option<TcpStats> {
        let source = self.0.lock().expect("probe lock").clone()?;
        match source {
            ProbeSource::Tcp(sock) => tcp_stats(&sock),
            ProbeSource::Counter(_) => None,
        }
    }

    fn set(&self, source: Option<ProbeSource>) {
        *self.0.lock().expect("probe lock") = source;
    }

    fn set_notsent_lowat(&self, bytes: u32) {
        if let Some(ProbeSource::Tcp(s)) = self.0.lock().expect("probe lock").as_ref() {
            set_notsent_lowat(s.as_ref(), bytes);
        }
    }
}

/// What `TCP_INFO` tells of a connection's round trip and delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpStats {
    /// The kernel's smoothed round trip (each ack moves it an eighth of the way).
    pub srtt: Duration,
    /// The smallest round trip seen (the kernel keeps a 5-minute window).
    pub min_rtt: Duration,
    /// Bytes the peer acknowledged.
    pub bytes_acked: u64,
    /// Segments received from the peer (while uploading: its acks).
    pub segs_in: u64,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Time since data was last sent: while some is unacknowledged, a lower bound on how long
    /// the youngest of it has been waiting in the queue.
    pub since_sent: Duration,
}

/// Bytes acknowledged by the peer plus bytes received from it on a TCP socket (TCP_INFO), for
/// a dialer that can see the socket its pipe ends in.
pub fn socket_progress(sock: &socket2::Socket) -> Option<u64> {
    tcp_progress(sock)
}

/// A connection that is not our own TCP socket: anything that reads and writes bytes.
pub trait Pipe: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Pipe for T {}

/// A future a dialer returns, boxed: the trait is used as an object.
pub type DialFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Opens the client's connection some other way than TCP (see the module doc).
pub trait Dialer: Send + Sync + 'static {
    /// A new connection, ready for HTTP/1.1.
    fn dial(&self) -> DialFuture<'_, Result<Dialed, ClientError>>;
}

/// A connection a [`Dialer`] opened.
pub struct Dialed {
    pub io: Box<dyn Pipe>,
    /// Watches the link under the pipe (see [`LinkProbe::progress`]).
    pub probe: LinkProbe,
    /// After the connection failed: why, when the dialer can tell (it waits a moment for the
    /// other end to say), else `None` and the HTTP error stands.
    pub why_closed: Arc<dyn Fn() -> DialFuture<'static, Option<ClientError>> + Send + Sync>,
}

/// A tus client for one server: the base (creation) URL, the token, and one live connection.
pub struct TusClient {
    endpoint: Url,
    token: Option<String>,
    /// Set for https URLs (see [`TusClient::with_tls`]).
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<SendRequest<ReqBody>>,
    conn_task: Option<tokio::task::JoinHandle<()>>,
    probe: LinkProbe,
    notsent_lowat: u32,
    /// Set when the connection is not TCP to the endpoint's host (see [`TusClient::with_dialer`]).
    dialer: Option<Arc<dyn Dialer>>,
    /// The current dialed connection's explanation of its end.
    why_closed: Option<Arc<dyn Fn() -> DialFuture<'static, Option<ClientError>> + Send + Sync>>,
}

impl Drop for TusClient {
    fn drop(&mut self) {
        if let Some(task) = self.conn_task.take() {
            task.abort();
        }
    }
}

/// Checks that `url` is an http or https URL we can upload to.
pub fn parse_endpoint(url: &str) -> Result<Url, ClientError> {
    let bad = |why: &str| ClientError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(bad(&format!(
                "the scheme must be http, https or ssh, not {other}"
            )));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(parsed)
}

/// Where the creation endpoint probably is when `url` is not it: `upload serve`'s `/files/`
/// under the given path (a proxy's prefix, `http://host/tus` -> `http://host/tus/files/`), then
/// at the root (`http://host:8080` -> `http://host:8080/files/`); an upload's URL pasted for the
/// endpoint is cut back to its `/files/`. Most likely first.
pub fn likely_endpoints(url: &Url) -> Vec<Url> {
    let path = url.path().trim_end_matches('/');
    let mut out: Vec<Url> = Vec::new();
    for base in [path, ""] {
        let mut candidate = url.clone();
        candidate.set_query(None);
        candidate.set_fragment(None);
        // An upload's own URL (`/files/ID`) pasted for the endpoint: cut it back.
        let stem = match base.find("/files/") {
            Some(i) => &base[..i],
            None => base.strip_suffix("/files").unwrap_or(base),
        };
        candidate.set_path(&format!("{stem}/files/"));
        if candidate.path() != url.path() && !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn read_body_text(resp: Response<Incoming>) -> String {
    match tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await {
        Ok(Ok(b)) => {
            let bytes = b.to_bytes();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]);
            text.trim().to_string()
        }
        _ => String::new(),
    }
}

/// The error for a status that is not the answer a request hoped for: what every request can
/// get, classified by [`ClientError::retry`]. `token_sent` picks the 401 hint.
fn status_error(
    method: &'static str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: String,
    token_sent: bool,
) -> ClientError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ClientError::Auth {
            status,
            hint: if token_sent {
                ": check the token".into()
            } else {
                ": no token was sent; pass --token-file FILE or set UPLOAD_TOKEN".into()
            },
        },
        StatusCode::TOO_MANY_REQUESTS => ClientError::TooManyUploads { retry_after },
        StatusCode::PAYLOAD_TOO_LARGE => ClientError::TooLarge(if body.is_empty() {
            "413 Payload Too Large".into()
        } else {
            body
        }),
        StatusCode::NOT_FOUND | StatusCode::GONE if method != "POST" => ClientError::Gone(status),
        StatusCode::INSUFFICIENT_STORAGE => ClientError::InsufficientStorage(status),
        s if s.as_u16() == protocol::STATUS_CHECKSUM_MISMATCH => ClientError::ChecksumMismatch,
        StatusCode::UNPROCESSABLE_ENTITY => ClientError::Verification(body),
        s if s.is_server_error() => {
            // A full disk is a 5xx whose text says so on servers without 507.
            if body.to_ascii_lowercase().contains("no space") {
                ClientError::InsufficientStorage(s)
            } else {
                ClientError::Server { status: s, body }
            }
        }
        s => ClientError::Unexpected {
            method,
            status: s,
            body,
        },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not worth parsing here: servers that throttle
/// send seconds), capped at 10 minutes so a confused server cannot park an upload for days.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(600)))
}

impl TusClient {
    pub fn new(endpoint: Url, token: Option<String>) -> Self {
        TusClient {
            endpoint,
            token,
            tls: None,
            conn: None,
            conn_task: None,
            probe: LinkProbe::default(),
            notsent_lowat: NOTSENT_LOWAT_UNLIMITED,
            dialer: None,
            why_closed: None,
        }
    }

    /// Opens connections with `dialer` instead of TCP to the endpoint's host; the endpoint's
    /// URL is then only the requests' path and `Host`.
    pub fn with_dialer(mut self, dialer: Arc<dyn Dialer>) -> Self {
        self.dialer = Some(dialer);
        self
    }

    /// Uses TLS with `config` for https URLs (see [`crate::tls::client_config`]).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsConnector::from(config));
        self
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Watches the connection's TCP progress (see [`LinkProbe`]).
    pub fn probe(&self) -> LinkProbe {
        self.probe.clone()
    }

    /// Bounds the unsent bytes in the socket (now and for later connections).
    pub fn set_notsent_lowat(&mut self, bytes: u32) {
        if bytes != self.notsent_lowat {
            self.notsent_lowat = bytes;
            self.probe.set_notsent_lowat(bytes);
        }
    }

    /// Opens the connection now if there is none (so a probe watches the right socket).
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        self.connection().await.map(|_| ())
    }

    /// Opens the connection for a chunk paced at `bytes_per_second` (its unsent queue bounded
    /// to match, see [`notsent_lowat_for`]) and returns the probe that watches it: what every
    /// destination over this client does before a chunk.
    pub async fn connect_paced(
        &mut self,
        bytes_per_second: Option<f64>,
    ) -> Result<LinkProbe, ClientError> {
        self.set_notsent_lowat(notsent_lowat_for(bytes_per_second));
        self.connect().await?;
        Ok(self.probe())
    }

    /// Drops the connection; the next request opens a new one.
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.why_closed = None;
        self.probe.set(None);
        if let Some(task) = self.conn_task.take() {
            task.abort();
        }
    }

    async fn connection(&mut self) -> Result<&mut SendRequest<ReqBody>, ClientError> {
        loop {
            let alive = self.conn.as_ref().is_some_and(|c| !c.is_closed());
            if !alive {
                self.disconnect();
                if let Some(dialer) = self.dialer.clone() {
                    let dialed = dialer.dial().await?;
                    self.probe
                        .set(dialed.probe.0.lock().expect("probe lock").clone());
                    let why_closed = dialed.why_closed.clone();
                    let (sender, task) = match start_http(dialed.io).await {
                        Ok(started) => started,
                        Err(e) => return Err(why_closed().await.unwrap_or(e)),
                    };
                    self.why_closed = Some(why_closed);
                    self.conn_task = Some(task);
                    self.conn = Some(sender);
                    let ready = self.conn.as_mut().expect("connected above").ready().await;
                    if let Err(e) = ready {
                        let why = match self.why_closed.clone() {
                            Some(why_closed) => why_closed().await,
                            None => None,
                        };
                        self.disconnect();
                        return Err(why.unwrap_or(e.into()));
                    }
                    return Ok(self.conn.as_mut().expect("connected above"));
                }
                let host = self.endpoint.host_str().unwrap_or_default().to_string();
                let port = self.endpoint.port_or_known_default().unwrap_or(80);
                let addr = format!("{host}:{port}");
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
                    .await
                    .map_err(|_| ClientError::Connect {
                        addr: addr.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                    })?
                    .map_err(|source| ClientError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
                tune_socket(&stream, self.notsent_lowat);
                self.probe.set(
                    socket2::SockRef::from(&stream)
                        .try_clone()
                        .ok()
                        .map(|s| ProbeSource::Tcp(Arc::new(s))),
                );
                let (sender, task) = if self.endpoint.scheme() == "https" {
                    let stream = self.tls_handshake(stream, &addr).await?;
                    start_http(stream).await?
                } else {
                    start_http(stream).await?
                };
                self.conn_task = Some(task);
                self.conn = Some(sender);
            }
            let conn = self.conn.as_mut().expect("connected above");
            match conn.ready().await {
                Ok(()) => break,
                // A kept connection the server closed after its last answer (S3 servers such as
                // moto send `Connection: close`) is no failure: open a fresh one, once.
                Err(_) if alive => self.disconnect(),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    async fn tls_handshake(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let Some(connector) = &self.tls else {
            return Err(ClientError::BadUrl {
                url: self.endpoint.to_string(),
                why: "https needs a TLS configuration (TusClient::with_tls)".into(),
            });
        };
        let server_name = match self.endpoint.host() {
            Some(url::Host::Domain(d)) => ServerName::try_from(d.to_string()).ok(),
            Some(url::Host::Ipv4(ip)) => Some(ServerName::from(std::net::IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => Some(ServerName::from(std::net::IpAddr::V6(ip))),
            None => None,
        }
        .ok_or_else(|| ClientError::BadUrl {
            url: self.endpoint.to_string(),
            why: "its host is not a valid TLS server name".into(),
        })?;
        let handshake = connector.connect(server_name, stream);
        match tokio::time::timeout(REQUEST_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(tls_error(e, addr)),
            Err(_) => Err(ClientError::Connect {
                addr: addr.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the TLS handshake timed out",
                ),
            }),
        }
    }

    fn request(&self, method: Method, url: &Url) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(url.as_str())
            .header(http::header::HOST, host_header(url))
            .header(protocol::TUS_RESUMABLE, protocol::TUS_VERSION)
            .header(
                http::header::USER_AGENT,
                concat!("upload/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b
    }

    async fn send(
        &mut self,
        req: Request<ReqBody>,
        timeout: Option<Duration>,
    ) -> Result<Response<Incoming>, ClientError> {
        let conn = self.connection().await?;
        let fut = conn.send_request(req);
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| ClientError::Timeout(t))?,
            None => fut.await,
        };
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                // A pipe's far end may know better than "connection closed": ask it first.
                let why = match self.why_closed.clone() {
                    Some(why_closed) => why_closed().await,
                    None => None,
                };
                self.disconnect();
                Err(why.unwrap_or(e.into()))
            }
        }
    }

    /// Sends a request the caller built, on the owned connection: the S3 destination signs
    /// its own requests but keeps this connection's socket options and probe. Without a
    /// `timeout` the request takes as long as its body needs (the engine watches for stalls).
    pub async fn send_request(
        &mut self,
        req: Request<ReqBody>,
        timeout: Option<Duration>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.send(req, timeout).await
    }

    /// An empty request body.
    pub fn empty() -> ReqBody {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    /// Maps the statuses every request can get.
    async fn common_error(&self, method: &'static str, resp: Response<Incoming>) -> ClientError {
        let status = resp.status();
        let retry_after = header_str(resp.headers(), http::header::RETRY_AFTER.as_str())
            .and_then(parse_retry_after);
        // A server that cut a body off (idle timeout, broken stream) says where the upload
        // stands: that is an interruption to resume from, not a refusal.
        let cut_off = method == "PATCH"
            && matches!(
                status,
                StatusCode::REQUEST_TIMEOUT | StatusCode::BAD_REQUEST
            )
            && resp.headers().contains_key(protocol::UPLOAD_OFFSET);
        let refused = (status == StatusCode::PRECONDITION_FAILED)
            .then(|| header_str(resp.headers(), protocol::UPLOAD_DELTA_REFUSED))
            .flatten()
            .map(str::to_string);
        let body = read_body_text(resp).await;
        if let Some(code) = refused {
            return ClientError::DeltaRefused { code, why: body };
        }
        if cut_off || status == StatusCode::REQUEST_TIMEOUT {
            return ClientError::CutOff { status, body };
        }
        status_error(method, status, retry_after, body, self.token.is_some())
    }

    /// OPTIONS: which extensions and checksum algorithms the server offers. A server that does
    /// not answer OPTIONS is treated as core-only.
    pub async fn options(&mut self) -> Result<Capabilities, ClientError> {
        let endpoint = self.endpoint.clone();
        let req = self
            .request(Method::OPTIONS, &endpoint)
            .body(Self::empty())
            .expect("valid request");
        let resp = self.send(req, Some(REQUEST_TIMEOUT)).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            // Nothing at this path; a server without OPTIONS would say 405, not 404. Saying
            // so now keeps "no checksum extension" notes from hiding the real problem.
            let _ = read_body_text(resp).await;
            return Err(self.no_endpoint(status).await);
        }
        if !status.is_success() {
            if status.is_server_error() || status == StatusCode::UNAUTHORIZED {
                return Err(self.common_error("OPTIONS", resp).await);
            }
            let _ = read_body_text(resp).await;
            return Ok(Capabilities::default());
        }
        let h = resp.headers();
        let caps = Capabilities {
            extensions: header_str(h, protocol::TUS_EXTENSION)
                .unwrap_or("")
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            max_size: header_str(h, protocol::TUS_MAX_SIZE).and_then(|v| v.parse().ok()),
            checksum: header_str(h, protocol::TUS_CHECKSUM_ALGORITHM).and_then(Algorithm::choose),
        };
        let _ = read_body_text(resp).await;
        Ok(caps)
    }

    /// The error for a creation URL that answers 404: asks the likely endpoints
    /// ([`likely_endpoints`]) whether they speak tus, and names the first that does, or else
    /// the most likely one.
    async fn no_endpoint(&mut self, status: StatusCode) -> ClientError {
        let url = self.endpoint.to_string();
        let candidates = likely_endpoints(&self.endpoint);
        let mut found = None;
        for candidate in &candidates {
            if self.speaks_tus(candidate).await {
                found = Some(candidate.clone());
                break;
            }
        }
        let hint = match (found, candidates.first()) {
            (Some(c), _) => format!("; a tus server answers at {c}: use that URL"),
            (None, Some(c)) => format!("; is the path right? `upload serve` receives at {c}"),
            (None, None) => String::new(),
        };
        ClientError::NoEndpoint { url, status, hint }
    }

    /// Whether `url` answers OPTIONS as a tus endpoint does (success and `Tus-Version`).
    async fn speaks_tus(&mut self, url: &Url) -> bool {
        let req = self
            .request(Method::OPTIONS, url)
            .body(Self::empty())
            .expect("valid request");
        match self.send(req, Some(REQUEST_TIMEOUT)).await {
            Ok(resp) => {
                let yes = resp.status().is_success()
                    && resp.headers().contains_key(protocol::TUS_VERSION_HEADER);
                let _ = read_body_text(resp).await;
                yes
            }
            Err(_) => false,
        }
    }

    /// POST: creates an upload of `length` bytes and returns its URL.
    pub async fn create(&mut self, length: u64, metadata: &Metadata) -> Result<Url, ClientError> {
        let endpoint = self.endpoint.clone();
        let mut b = self
            .request(Method::POST, &endpoint)
            .header(protocol::UPLOAD_LENGTH, length)
            .header(http::header::CONTENT_LENGTH, 0);
        let meta = metadata.to_string();
        if !meta.is_empty() {
            b = b.header(protocol::UPLOAD_METADATA, meta);
        }
        let resp = self
            .send(
                b.body(Self::empty()).expect("valid request"),
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let _ = read_body_text(resp).await;
            return Err(self.no_endpoint(StatusCode::NOT_FOUND).await);
        }
        if resp.status() != StatusCode::CREATED {
            return Err(self.common_error("POST", resp).await);
        }
        let location = header_str(resp.headers(), http::header::LOCATION.as_str())
            .ok_or_else(|| ClientError::Protocol("201 Created without a Location".into()))?
            .to_string();
        let _ = read_body_text(resp).await;
        endpoint
            .join(&location)
            .map_err(|e| ClientError::Protocol(format!("Location \"{location}\": {e}")))
    }

    /// HEAD: where the server is in an upload.
    pub async fn head(&mut self, upload: &Url) -> Result<UploadInfo, ClientError> {
        let req = self
            .request(Method::HEAD, upload)
            .body(Self::empty())
            .expect("valid request");
        let resp = self.send(req, Some(REQUEST_TIMEOUT)).await?;
        if !resp.status().is_success() {
            return Err(self.common_error("HEAD", resp).await);
        }
        let h = resp.headers();
        let offset = header_str(h, protocol::UPLOAD_OFFSET)
            .ok_or_else(|| ClientError::Protocol("HEAD without Upload-Offset".into()))
            .and_then(|v| {
                protocol::parse_offset(v).map_err(|e| ClientError::Protocol(e.to_string()))
            })?;
        let info = UploadInfo {
            offset,
            length: header_str(h, protocol::UPLOAD_LENGTH)
                .and_then(|v| protocol::parse_length(v).ok()),
            sha256: header_str(h, protocol::REPR_DIGEST)
                .and_then(|v| protocol::parse_repr_digest(v).ok()),
            published_as: header_str(h, protocol::UPLOAD_PUBLISHED_AS)
                .map(protocol::decode_header_text),
        };
        let _ = read_body_text(resp).await;
        Ok(info)
    }

    /// PATCH: appends `len` bytes at `offset`. `body` produces exactly `len` bytes. The final
    /// chunk carries the whole file's SHA-256 as `Repr-Digest`.
    pub async fn patch(
        &mut self,
        upload: &Url,
        offset: u64,
        len: u64,
        body: ChannelBody,
        checksum: Option<&Checksum>,
        repr_digest: Option<&[u8; 32]>,
    ) -> Result<PatchOutcome, ClientError> {
        let mut b = self
            .request(Method::PATCH, upload)
            .header(http::header::CONTENT_TYPE, protocol::OFFSET_OCTET_STREAM)
            .header(http::header::CONTENT_LENGTH, len)
            .header(protocol::UPLOAD_OFFSET, offset);
        if let Some(c) = checksum {
            b = b.header(protocol::UPLOAD_CHECKSUM, c.to_string());
        }
        if let Some(d) = repr_digest {
            b = b.header(protocol::REPR_DIGEST, protocol::format_repr_digest(d));
        }
        let req = b.body(body.boxed()).expect("valid request");
        // No overall timeout: a chunk takes as long as the link needs. The engine watches for
        // stalled progress instead.
        let resp = self.send(req, None).await?;
        let status = resp.status();
        if status == StatusCode::CONFLICT {
            let server = header_str(resp.headers(), protocol::UPLOAD_OFFSET)
                .and_then(|v| protocol::parse_offset(v).ok());
            let _ = read_body_text(resp).await;
            return Err(ClientError::OffsetMismatch {
                server,
                ours: offset,
            });
        }
        if !status.is_success() {
            return Err(self.common_error("PATCH", resp).await);
        }
        let h = resp.headers();
        let new_offset = header_str(h, protocol::UPLOAD_OFFSET)
            .ok_or_else(|| ClientError::Protocol("PATCH response without Upload-Offset".into()))
            .and_then(|v| {
                protocol::parse_offset(v).map_err(|e| ClientError::Protocol(e.to_string()))
            })?;
        let outcome = PatchOutcome {
            offset: new_offset,
            sha256: header_str(h, protocol::REPR_DIGEST)
                .and_then(|v| protocol::parse_repr_digest(v).ok()),
            published_as: header_str(h, protocol::UPLOAD_PUBLISHED_AS)
                .map(protocol::decode_header_text),
        };
        let _ = read_body_text(resp).await;
        Ok(outcome)
    }

    /// GET of a published file's index (issue 13), from `index/NAME` under the endpoint;
    /// `None` when the server has no such file for us (404). An index larger than
    /// [`MAX_INDEX_BYTES`] is refused: it would not be one of ours.
    pub async fn index(&mut self, name: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let encoded =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        let url = self
            .endpoint
            .join(&format!("index/{encoded}"))
            .map_err(|e| ClientError::Protocol(format!("the index URL of {name:?}: {e}")))?;
        let req = self
            .request(Method::GET, &url)
            .body(Self::empty())
            .expect("valid request");
        let resp = self.send(req, Some(INDEX_TIMEOUT)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let _ = read_body_text(resp).await;
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.common_error("GET", resp).await);
        }
        let mut body = resp.into_body();
        let mut index = Vec::new();
        // The index travels the downlink: minutes for a big one on a slow link, so the
        // deadline is per frame, as a stall, not for the whole body.
        loop {
            let frame = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
                .await
                .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?;
            let Some(frame) = frame else { break };
            let frame = frame.inspect_err(|_| self.disconnect())?;
            if let Ok(data) = frame.into_data() {
                if index.len() + data.len() > MAX_INDEX_BYTES {
                    self.disconnect();
                    return Err(ClientError::Protocol(format!(
                        "the index of {name:?} is larger than {MAX_INDEX_BYTES} bytes"
                    )));
                }
                index.extend_from_slice(&data);
            }
        }
        Ok(Some(index))
    }

    /// DELETE (termination): best effort, used by `--restart`.
    pub async fn delete(&mut self, upload: &Url) -> Result<(), ClientError> {
        let req = self
            .request(Method::DELETE, upload)
            .body(Self::empty())
            .expect("valid request");
        let resp = self.send(req, Some(REQUEST_TIMEOUT)).await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            let _ = read_body_text(resp).await;
            Ok(())
        } else {
            Err(self.common_error("DELETE", resp).await)
        }
    }
}

/// Starts HTTP/1.1 on an open connection: the request handle, and the task that drives it.
async fn start_http<IO>(
    io: IO,
) -> Result<(SendRequest<ReqBody>, tokio::task::JoinHandle<()>), ClientError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection ended: {e}");
        }
    });
    Ok((sender, task))
}

/// A failed TLS handshake: rustls' own verdicts are permanent, an I/O failure (reset, EOF) is
/// a connection failure like any other.
fn tls_error(e: std::io::Error, addr: &str) -> ClientError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(bad @ rustls::Error::InvalidCertificate(_)) => ClientError::Untrusted(bad.clone()),
        Some(other) => ClientError::Tls(other.clone()),
        None => ClientError::Connect {
            addr: addr.to_string(),
            source: e,
        },
    }
}

/// The `Host` header for `url`: its host, and its port when not the scheme's default.
pub fn host_header(url: &Url) -> HeaderValue {
    let host = url.host_str().unwrap_or_default();
    let value = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// Socket options: no Nagle delay for request headers, a short unsent queue, keepalive probes
/// so an idle dead connection is noticed.
fn tune_socket(stream: &TcpStream, notsent_lowat: u32) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10)),
    );
    set_notsent_lowat(stream, notsent_lowat);
}

#[cfg(target_os = "linux")]
fn set_notsent_lowat(sock: &impl std::os::fd::AsRawFd, bytes: u32) {
    // TCP_NOTSENT_LOWAT is 25 on Linux; socket2 has no wrapper for it.
    const TCP_NOTSENT_LOWAT: libc::c_int = 25;
    let value = bytes as libc::c_int;
    // SAFETY: a valid socket fd, a pointer to a c_int and its size, as setsockopt expects.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "TCP_NOTSENT_LOWAT not set: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_notsent_lowat(_sock: &impl std::os::fd::AsRawFd, _bytes: u32) {}

#[cfg(target_os = "linux")]
fn tcp_progress(sock: &socket2::Socket) -> Option<u64> {
    tcp_info(sock).map(|info| info.tcpi_bytes_acked + info.tcpi_bytes_received)
}

#[cfg(target_os = "linux")]
fn tcp_stats(sock: &socket2::Socket) -> Option<TcpStats> {
    tcp_info(sock).map(|i| TcpStats {
        srtt: Duration::from_micros(u64::from(i.tcpi_rtt)),
        min_rtt: Duration::from_micros(u64::from(i.tcpi_min_rtt)),
        bytes_acked: i.tcpi_bytes_acked,
        segs_in: u64::from(i.tcpi_segs_in),
        unacked: i.tcpi_unacked,
        since_sent: Duration::from_millis(u64::from(i.tcpi_last_data_sent)),
    })
}

#[cfg(not(target_os = "linux"))]
fn tcp_stats(_sock: &socket2::Socket) -> Option<TcpStats> {
    None
}

#[cfg(target_os = "linux")]
fn tcp_info(sock: &socket2::Socket) -> Option<libc::tcp_info> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; getsockopt fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

#[cfg(not(target_os = "linux"))]
fn tcp_progress(_sock: &socket2::Socket) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unsent-queue bound really reaches the socket, and follows the rate: without it
    /// progress would count bytes parked in the kernel (55-121 KiB measured here).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_unsent_queue_bound_reaches_the_socket() {
        fn lowat(s: &TcpStream) -> u32 {
            use std::os::fd::AsRawFd;
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: reading one c_int option into a c_int.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    25,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            v as u32
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_socket(&stream, notsent_lowat_for(Some(16_000.0)));
        assert_eq!(lowat(&stream), 4096);
        set_notsent_lowat(&stream, notsent_lowat_for(Some(200_000.0)));
        assert_eq!(lowat(&stream), 50_000);
        assert_eq!(notsent_lowat_for(None), NOTSENT_LOWAT_UNLIMITED);
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(parse_endpoint("http://127.0.0.1:8080/files/").is_ok());
        assert!(parse_endpoint("https://localhost:8443/files/").is_ok());
        for bad in ["ftp://x/files/", "files", "http://", "https://"] {
            let e = parse_endpoint(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn likely_endpoints_add_the_missing_files_path() {
        let likely = |u: &str| -> Vec<String> {
            likely_endpoints(&Url::parse(u).unwrap())
                .iter()
                .map(Url::to_string)
                .collect()
        };
        assert_eq!(likely("http://h:8080"), ["http://h:8080/files/"]);
        assert_eq!(likely("http://h:8080/"), ["http://h:8080/files/"]);
        assert_eq!(
            likely("https://h/tus/"),
            ["https://h/tus/files/", "https://h/files/"]
        );
        assert_eq!(likely("http://h/files/x?y"), ["http://h/files/"]);
        assert_eq!(likely("http://h/files/"), Vec::<String>::new());
        assert_eq!(
            likely("http://h/up/files"),
            ["http://h/up/files/", "http://h/files/"]
        );
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(ClientError::ChecksumMismatch.retry(), Retry::Temporary);
        assert_eq!(
            ClientError::TooLarge(String::new()).retry(),
            Retry::Permanent
        );
        assert_eq!(
            ClientError::InsufficientStorage(StatusCode::INSUFFICIENT_STORAGE).retry(),
            Retry::Persistent
        );
    }

    #[test]
    fn too_many_requests_is_temporary() {
        let status = |method, retry_after| {
            status_error(
                method,
                StatusCode::TOO_MANY_REQUESTS,
                retry_after,
                "too many uploads".into(),
                true,
            )
        };
        for method in ["PATCH", "POST"] {
            let e = status(method, parse_retry_after("5"));
            assert_eq!(e.retry(), Retry::Temporary, "{method}: {e}");
            assert!(
                matches!(e, ClientError::TooManyUploads { retry_after: Some(d) } if d == Duration::from_secs(5)),
                "{e:?}"
            );
        }
        assert_eq!(status("PATCH", None).retry(), Retry::Temporary);
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("86400"), Some(Duration::from_secs(600)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        // What was there before stays: an unknown 4xx is permanent.
        let teapot = status_error("PATCH", StatusCode::IM_A_TEAPOT, None, String::new(), true);
        assert_eq!(teapot.retry(), Retry::Permanent);
    }
}
