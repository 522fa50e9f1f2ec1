//! `upload serve`: a tus 1.0.0 server (core, creation, creation-with-upload,
//! creation-defer-length, checksum, termination, expiration, and our `delta`) that receives
//! uploads into a directory, verifies them, and publishes them under their names. Of these,
//! creation-defer-length, termination, expiration and delta depend on what the store can do:
//! `Tus-Extension` names those the store in use supports (`store::Capabilities`; the
//! directory store supports all), and the server serves no others.
//!
//! This module owns the server's life: binding, the accept loop, graceful shutdown, and the
//! expiry sweeper. What its parts share lives beside them, so that none imports from here:
//! `config`: what the server is told ([`Config`]); `app`: what every request shares;
//! `error`: why the server cannot start ([`ServerError`]) and why a request failed. The rest
//! is split the way the protocol is:
//! - `handlers`: routes, method override, version and token checks, one function per tus
//!   request (extension by extension);
//! - `append`: streaming a body into the store, commit/discard, checksum, whole-file SHA-256,
//!   publish;
//! - `uploads`: the per-upload lock and takeover of a request stuck on a dead link;
//! - `store`: the seam between the protocol and where uploads are kept: the `Store` trait, a
//!   body on its way in (`Part`), an upload's record (`Info`);
//! - `dir_store`: the store for `--dir DIR`: the files (`DIR/.partial/<id>.part` and
//!   `.info`), crash consistency, publishing by hard link;
//! - `s3_store`: the store for `--store s3://BUCKET/PREFIX`: the record in the bucket as the
//!   commit point, pieces and parts, the lease that lets several instances share a bucket;
//! - `running_sha`: the upload's SHA-256 in progress, saved with each record and resumed;
//! - `delta`: delta uploads (issue 13): the index route, the base check at creation, and
//!   assembling a finished recipe into the new file (a store capability, `DeltaStore`);
//! - `names`: ids and safe published names; `auth`: bearer tokens and their names;
//!   `receiving`: the cap on bodies received at once; `cors`: browser clients from other
//!   origins.
//!
//! Publishing and name clashes. A finished upload is hard-linked from its part file to
//! `DIR/<name>`, where `<name>` is the metadata `filename` (or `name`) reduced to a safe base
//! name (see [`names::safe_name`]). A published file is never overwritten: if `DIR/<name>`
//! exists with identical content (same size and SHA-256) the upload counts as delivered there;
//! otherwise it is published as `stem.1.ext`, `stem.2.ext`, … (the first free or identical
//! one). The name used is returned in `Upload-Published-As` (percent-encoded outside printable
//! ASCII) with the file's `Repr-Digest`. Nothing incomplete ever sits under a final name.
//!
//! Tokens keep apart. Each token has a name (see `auth`: `TOKEN NAME` in the token file, or a
//! default derived from the token's hash); an upload records the name of the token that
//! created it (the name, never the token) in its info file, and HEAD, PATCH and DELETE with
//! another token answer 404 exactly as for an unknown id, without asking a request in progress
//! on it to stop: a token that learns another's upload URL can neither read its progress nor
//! add to it nor remove it. Uploads recorded without an owner (created without auth, or before
//! owners were recorded) are nobody's and answer 404 to every token. `Config::shared_uploads`
//! (`--shared-uploads`) turns this off: every token reaches every upload, as one namespace.
//!
//! Per-token directories (`Config::per_token_dirs`, requires tokens, not with shared uploads):
//! maintainers who share a server do not see each other's files either. A finished upload is
//! published in `DIR/<NAME>/` (created when missing) under the same no-clobber policy, and
//! `Upload-Published-As` names the file within that directory. `DIR/<NAME>` must be a real
//! directory (or absent): a symbolic link or a file there stops the server at start-up, and
//! one that appears later gets that token's creation, HEAD and PATCH a 409 that says the
//! operator must fix it (nothing is written through a link; what was received is kept).
//! Without per-token directories everything lands in `DIR`.
//!
//! Size: `Config::max_size`, by default 95 % of what `DIR`'s file system has free at start-up
//! ([`default_max_size`]), advertised as `Tus-Max-Size`; a larger `Upload-Length` gets 413 at
//! creation.
//!
//! Concurrent bodies (`Config::max_uploads_per_token`, see `receiving`): a token may have at
//! most that many PATCH or creation-with-upload bodies being received at once; one more gets
//! 429 + Retry-After: 5 before its body is read. Without auth, all clients share one cap (the
//! server then listens on loopback only, where "a client" is not a useful distinction). A
//! PATCH counts after it has taken its upload over, so a client resuming after a dead link is
//! not refused because of its own stalled earlier request.
//!
//! Whole-file integrity: the expected SHA-256 comes from metadata `sha256` or the `Repr-Digest`
//! of a PATCH (in practice the last one), and is written to the info file before any byte of
//! that PATCH is kept. So nothing declared is ever lost: a last PATCH cut off after its final
//! byte, a crash before the check, or a HEAD that finishes the upload later, all check it. On
//! a mismatch the data is deleted, the PATCH gets 422 and HEAD 410 (both mean "nothing was
//! published"). A second, different digest for one upload is refused (400) before its body is
//! read. Only an upload for which no digest was ever declared is published unverified
//! (third-party clients); the log says so.
//!
//! TLS (`Config::tls`): each accepted connection does its handshake in its own task, bounded by
//! the idle timeout, so a slow or silent client never holds up accepting. A plain-HTTP request
//! to a TLS port gets a plain 400 that says to use https, instead of a dropped connection that
//! a client would retry forever.
//!
//! One connection on a pipe ([`serve_stdio`], `upload serve --stdio`): what an ssh session
//! runs for an `ssh://` client. The same app and store, no listener, no TLS, no token (the ssh
//! login is the authentication; uploads have no owner, as without auth), the same publishing
//! rules; it ends when the pipe closes. Several such processes may serve one directory at once,
//! so their uploads are claimed across processes (`uploads`, `Store::claim`), and SIGTERM (a
//! newer session's process wants an upload) interrupts the request at once. No expiry sweeper
//! runs in it (sweeping would keep the claim of every upload it looked at); instead it removes,
//! at start, the expired uploads that no other process claims (`DirStore::expire_unclaimed`).
//!
//! Statuses where tus is silent: 431 for metadata over 4 KiB; 408 / 409 / 400 for a body cut
//! off by the idle timeout / by a newer request for the upload / by a broken connection (the
//! offset is in the response either way); 503 + Retry-After when a takeover does not get the
//! upload within 5 s; 429 + Retry-After over the cap on concurrent bodies; 507 on a full
//! disk; 405 + Allow for other methods.

mod app;
mod append;
mod auth;
mod config;
mod cors;
mod delta;
mod dir_store;
mod error;
mod handlers;
mod names;
mod receiving;
mod running_sha;
mod s3_store;
mod store;
mod uploads;

pub use auth::{Token, load_token_file};
pub use config::{Config, S3Target, default_max_size};
pub use cors::{BadOrigin, Cors};
pub use error::ServerError;
pub use names::{Id, is_invisible, safe_name};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use app::App;
use store::{Store, TokenDir};

/// How long in-flight requests may go on after a shutdown signal before their bodies are
/// interrupted (and committed or discarded like any interrupted body).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long interrupted requests get to commit and answer before their connections are cut.
const SHUTDOWN_STOP: Duration = Duration::from_secs(2);

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    app: Arc<App>,
}

impl Server {
    /// Creates `DIR/.partial` when missing and binds `addr` (port 0 picks a free port).
    pub async fn bind(config: Config, addr: SocketAddr) -> Result<Server, ServerError> {
        let s3 = match &config.s3 {
            Some(target) => Some(s3_store::S3Store::open(target.clone()).await.map_err(
                |source| ServerError::Store {
                    url: target.url(),
                    source,
                },
            )?),
            None => None,
        };
        let app = prepare(config, s3, false)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Server {
            listener,
            local_addr,
            app: Arc::new(app),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests run
    /// for a few seconds, interrupts the rest (their bodies are committed or discarded as for
    /// any interruption), and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            listener,
            local_addr,
            app,
        } = self;
        let router = handlers::router(app.clone());
        let sweeper = app
            .capabilities
            .expiration
            .then(|| tokio::spawn(sweep(app.clone())));
        let (stop, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        let tls = app.config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let dir = match &app.config.s3 {
            Some(target) => target.url(),
            None => app.config.dir.display().to_string(),
        };
        tracing::info!(%local_addr, %dir, tls = tls.is_some(), "serving");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let connection = serve_connection(
                            stream,
                            tls.clone(),
                            router.clone(),
                            stopping.clone(),
                            app.config.idle_timeout,
                        );
                        connections.spawn(connection.instrument(tracing::info_span!("conn", %peer)));
                    }
                    Err(e) => {
                        // Out of file descriptors or the like: wait for some to free up
                        // rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        drop(listener);
        tracing::info!(in_flight = connections.len(), "shutting down");
        let _ = stop.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, drain(&mut connections))
            .await
            .is_err()
        {
            app.uploads.interrupt_all();
            if tokio::time::timeout(SHUTDOWN_STOP, drain(&mut connections))
                .await
                .is_err()
            {
                tracing::warn!(left = connections.len(), "cutting connections");
                connections.abort_all();
            }
        }
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        Ok(())
    }
}

/// Checks `config`, opens and recovers the store (the S3 store `s3`, opened already, or the
/// directory), and builds what every request shares.
/// `shared`: other server processes use the directory too (`serve --stdio`): claim uploads.
fn prepare(
    config: Config,
    s3: Option<s3_store::S3Store>,
    shared: bool,
) -> Result<App, ServerError> {
    if config.tokens.as_ref().is_some_and(Vec::is_empty) {
        return Err(ServerError::NoTokens { path: None });
    }
    if config.per_token_dirs && config.tokens.is_none() {
        return Err(ServerError::PerTokenDirsWithoutTokens);
    }
    if config.max_uploads_per_token == 0 {
        return Err(ServerError::NoUploadsAllowed);
    }
    if config.per_token_dirs && config.shared_uploads {
        return Err(ServerError::PerTokenDirsShared);
    }
    let tokens = config
        .tokens
        .as_deref()
        .map(auth::Tokens::new)
        .transpose()?;
    let (store, max_size): (Arc<dyn Store>, u64) = match s3 {
        // Nothing on this disk to recover or measure: S3's largest object is the limit.
        Some(store) => (
            Arc::new(store),
            config.max_size.unwrap_or(crate::s3::MAX_OBJECT),
        ),
        None => {
            let store = open_dir_store(&config, tokens.as_ref(), shared)?;
            let max_size = match config.max_size {
                Some(max) => max,
                None => {
                    let free = store.free_space().map_err(|source| ServerError::Dir {
                        path: config.dir.clone(),
                        source,
                    })?;
                    let max = default_max_size(free);
                    let (free, largest) = (crate::units::Size(free), crate::units::Size(max));
                    tracing::info!(
                        %free,
                        %largest,
                        "largest upload: 95 % of the free space (--max-size to choose)"
                    );
                    max
                }
            };
            (Arc::new(store), max_size)
        }
    };
    let groups = tokens.as_ref().map_or(1, auth::Tokens::count);
    let capabilities = store.capabilities();
    let expire_after = capabilities.expiration.then_some(config.expire_after);
    let uploads = uploads::Uploads::new(store, expire_after);
    Ok(App {
        max_size,
        capabilities,
        tokens,
        uploads: if shared {
            uploads.with_claims()
        } else {
            uploads
        },
        receiving: receiving::Receiving::new(groups, config.max_uploads_per_token),
        config,
    })
}

/// Opens and recovers the directory store; with `shared` (`serve --stdio`) removes the
/// expired uploads no other process claims.
fn open_dir_store(
    config: &Config,
    tokens: Option<&auth::Tokens>,
    shared: bool,
) -> Result<dir_store::DirStore, ServerError> {
    let store = dir_store::DirStore::open(&config.dir).map_err(|source| ServerError::Dir {
        path: config.dir.clone(),
        source,
    })?;
    store.recover().map_err(|source| ServerError::Dir {
        path: config.dir.clone(),
        source,
    })?;
    if shared {
        let expired = store
            .expire_unclaimed(config.expire_after)
            .map_err(|source| ServerError::Dir {
                path: config.dir.clone(),
                source,
            })?;
        if expired > 0 {
            tracing::info!(expired, "expired uploads removed");
        }
    }
    if config.per_token_dirs {
        check_token_dirs(&store, tokens)?;
    }
    Ok(store)
}

/// Serves one HTTP/1.1 connection on `io` (stdin and stdout of `upload serve --stdio`) until
/// it closes, or until `shutdown`: then the request in progress is interrupted at once (its
/// body kept or discarded as for any interruption) and given [`SHUTDOWN_STOP`] to answer.
/// See the module doc.
pub async fn serve_stdio(
    config: Config,
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = Arc::new(prepare(config, None, true)?);
    let router = handlers::router(app.clone());
    let (stop, stopping) = watch::channel(false);
    let dir = app.config.dir.display();
    tracing::info!(%dir, "serving one connection on stdin and stdout");
    let connection = tokio::spawn(serve_http(io, router, stopping, app.config.idle_timeout));
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        () = shutdown => {
            app.uploads.interrupt_all();
            let _ = stop.send(true);
            if tokio::time::timeout(SHUTDOWN_STOP, &mut connection).await.is_err() {
                tracing::warn!("the interrupted request did not end: stopping");
                connection.abort();
            }
        }
    }
    Ok(())
}

/// Refuses to start when a token's directory is taken by something that is not a directory:
/// found only at its first publication, it would fail that token's uploads one by one.
fn check_token_dirs(
    store: &dir_store::DirStore,
    tokens: Option<&auth::Tokens>,
) -> Result<(), ServerError> {
    let Some(tokens) = tokens else {
        return Ok(());
    };
    for name in tokens.names() {
        let path = store.dir().join(name);
        match store.token_dir(name) {
            Ok(TokenDir::Absent | TokenDir::Directory) => {}
            Ok(TokenDir::Unusable(what)) => {
                return Err(ServerError::TokenDir {
                    path,
                    name: name.to_string(),
                    what,
                });
            }
            Err(source) => return Err(ServerError::Dir { path, source }),
        }
    }
    Ok(())
}

async fn drain(connections: &mut JoinSet<()>) {
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    mut stopping: watch::Receiver<bool>,
    idle_timeout: Duration,
) {
    // Small responses (204s) go out at once instead of waiting on Nagle.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_http(QuickAck(stream), router, stopping, idle_timeout).await;
    };
    let handshake = async {
        if !starts_with_tls(&stream).await? {
            refuse_plain_http(stream).await;
            return Ok(None);
        }
        acceptor.accept(QuickAck(stream)).await.map(Some)
    };
    let stream = tokio::select! {
        result = tokio::time::timeout(idle_timeout, handshake) => match result {
            Ok(Ok(Some(stream))) => stream,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
        () = async { drop(stopping.wait_for(|stop| *stop).await) } => return,
    };
    serve_http(stream, router, stopping, idle_timeout).await;
}

/// A connection that acknowledges what it receives at once. A slow client's paced upload
/// arrives a segment at a time, and each lone segment's ACK would wait for the delayed-ACK
/// timer (40 ms or more): time the client's round trips then count as queueing delay, which
/// polite mode steers by (measured on the lab's 128 kbit/s link: the link ran 84 % full, 90 %
/// with immediate ACKs). Linux leaves quick-ACK mode on its own, so it is set again after
/// every read; one cheap system call per read.
struct QuickAck(TcpStream);

impl QuickAck {
    fn rearm(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let on: libc::c_int = 1;
            // SAFETY: a plain integer option on a socket we own.
            unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.0).poll_read(cx, buf);
        if polled.is_ready() {
            this.rearm();
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Whether the client's first byte opens a TLS handshake record (content type 22).
async fn starts_with_tls(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(first[0] == 0x16),
    }
}

/// Answers a plain-HTTP request on the TLS port with a 400 that says what to do, as nginx
/// does, so the client stops instead of retrying a connection that always drops.
async fn refuse_plain_http(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "this server speaks TLS: use an https:// URL\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    tracing::debug!("plain HTTP on the TLS port");
    let mut buf = [0u8; 8192];
    // Read what the request sent so far: closing with unread data would reset the connection
    // and could destroy the answer before the client reads it.
    let _ = stream.read(&mut buf).await;
    if stream.write_all(response.as_bytes()).await.is_ok() && stream.shutdown().await.is_ok() {
        let drain = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}

/// HTTP/1.1 on a connection, plain or TLS, until it ends or the server stops.
async fn serve_http(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    router: axum::Router,
    mut stopping: watch::Receiver<bool>,
    idle_timeout: Duration,
) {
    let mut builder = http1::Builder::new();
    // A client that never finishes its headers holds a connection for at most this long.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        // The guard `wait_for` returns is not Send: drop it inside.
        () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Every `sweep_interval`, removes uploads idle longer than `expire_after`.
async fn sweep(app: Arc<App>) {
    let mut interval = tokio::time::interval(app.config.sweep_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match app.uploads.sweep().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "expired uploads removed"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired uploads failed"),
        }
    }
}
