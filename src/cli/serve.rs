//! `upload serve --dir DIR`: turns the arguments into a [`server::Config`], refuses to run an
//! open server on a reachable address, runs the server on its own tokio runtime, and prints the
//! one line scripts and tests wait for: `listening on http://ADDR/files/` (https with TLS).
//! With `--stdio` it serves one connection on stdin and stdout instead (what an `ssh://`
//! client starts over ssh): nothing but the protocol goes to stdout, logs go to stderr, and a
//! directory it cannot use ends it with its own status (`exit::REMOTE_DIR`), which the client
//! reads from ssh's exit status.

use super::{Failure, Global};
use crate::server::{self, Config, Server};
use crate::units::{self, Size};
use anyhow::anyhow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const AFTER_HELP: &str = "\
Examples:
  upload serve --dir /srv/uploads --listen 0.0.0.0:8080 --token-file /etc/upload/tokens
  upload serve --dir ./incoming --no-auth      (DIR must exist; loopback only, e.g. behind a proxy)
  upload serve --dir /srv/uploads --token-file tokens --max-size 50GiB --expire-after 3d
  upload serve --dir /srv/uploads --listen 0.0.0.0:8443 --token-file tokens \
               --tls-cert /etc/upload/fullchain.pem --tls-key /etc/upload/key.pem
  upload serve --dir /srv/uploads --listen 0.0.0.0:8080 --token-file tokens --per-token-dirs
  upload serve --store s3://uploads/incoming/ --endpoint http://127.0.0.1:9000 --no-auth

Clients upload to http://HOST:PORT/files/ (tus 1.0.0: creation, creation-with-upload,
creation-defer-length, checksum, termination, expiration). Unfinished uploads wait in
DIR/.partial; a finished upload is published in DIR under its metadata filename, reduced to a
safe base name, once its SHA-256 matches the one declared (metadata sha256 or Repr-Digest).
Without a declared SHA-256 it is published unverified.

TLS: with --tls-cert FILE and --tls-key FILE (PEM) the server speaks only https, and clients
upload to https://HOST:PORT/files/ (a client with a private CA passes --ca FILE). The
certificate must name the host clients use. The files are read once, at start.

Name clashes: a file in DIR is never overwritten. If DIR/NAME exists with identical content,
the upload counts as delivered there; otherwise it is published as STEM.1.EXT, STEM.2.EXT, ...
(e.g. debian.1.iso; the first free one). The response names it in Upload-Published-As.

Token file: one TOKEN or TOKEN NAME per line; blank lines and lines starting with # are
ignored. Clients send Authorization: Bearer TOKEN. NAME (letters, digits, -, _ and ., not
starting with .) is how the server refers to the token, in its records and as its directory; a
token without one is named token-<first 12 hex digits of its SHA-256>. A bad name, a repeated
name or a repeated token stops the server at start, naming the line. Without --token-file,
--no-auth is required and only allowed on a loopback address.
  # /etc/upload/tokens
  3f9c0e7a1b2d4c6e8f0a1b2c3d4e5f60 alice
  9a8b7c6d5e4f30211f2e3d4c5b6a7988 bob

Tokens keep apart: a token reaches only the uploads it created (HEAD, PATCH and DELETE of
another token's upload answer 404, as for an unknown upload), even if it learns the URL.
Uploads made without a token (an earlier --no-auth server on DIR) answer 404 to every token;
their clients start over. --shared-uploads makes one namespace instead: every token reaches
every upload.

Per-token directories (--per-token-dirs): each token's finished uploads are published in
DIR/NAME/ instead of DIR. DIR/NAME must be a directory or absent (then it is created): a
symbolic link or a file there stops the server at start, and one that appears later gets
that token's requests a 409 that says so.

Size: without --max-size, the largest upload accepted is 95 % of what DIR's file system has
free when the server starts (the log says how much): a file that cannot fit is refused with
413 at creation, not after nights of sending. It is advertised as Tus-Max-Size; --max-size
SIZE sets it instead.

Concurrent uploads: one token may send at most --max-uploads-per-token bodies at once; one
more is refused with 429 Too Many Requests and Retry-After: 5 before its body is read, and the
client retries. Without auth all clients share that cap.

Behind a reverse proxy that maps the server under another path (e.g. nginx location /tus/ ->
http://127.0.0.1:8080/), give --public-url https://example.org/tus/files/: new uploads'
Location is built on it, so clients come back through the proxy.

Browsers: a web page on another origin may upload (tus-js-client) only with --cors-origin
ORIGIN, e.g. --cors-origin https://uploads.example.org (repeatable; * allows any page, still
subject to the token). Tokens travel in Authorization, never in cookies.

Over ssh (--stdio): an ssh:// client runs `upload serve --stdio --dir DIR` itself, one
process per ssh session, which speaks tus on stdin and stdout and exits when the session
ends; nothing listens, and the ssh login is the authentication. Several may serve one DIR at
once: a newer session takes an upload over from a lingering process of a dead one (SIGTERM,
then SIGKILL after 3 s). At start it removes the uploads idle longer than --expire-after that
no other process holds. A DIR that is missing, not a directory or not writable ends it with
status 13. Do not serve the same DIR with a listening `upload serve` at the same time: that
one does not take part in the claims.

In S3 (--store s3://BUCKET/PREFIX, credentials and region as for upload send to s3://):
an upload's record and its bytes wait under PREFIX/.uploads/ (a multipart upload, and small
PATCHes as pieces until they fill a 5 MiB part); a finished upload is published as the
object PREFIX/NAME (PREFIX/TOKEN-NAME/NAME with --per-token-dirs) under the same no-clobber
rules, its SHA-256 in the metadata x-amz-meta-sha256. Nothing per upload is kept on this
machine, so several servers on one bucket and prefix, behind one address, continue each
other's uploads: a request holds a lease on its upload in the bucket (renewed every 5 s,
15 s long), another server answers 503 + Retry-After meanwhile, and takes over once it is
released or has lapsed (its holder died). Not supported there: creation-defer-length and
delta (Tus-Extension says so). Without --max-size the limit is S3's 5 TiB.

Uploads idle longer than --expire-after are removed. SIGINT or SIGTERM stop the server: it
stops accepting, lets running requests go on for a few seconds, then keeps what each
interrupted upload received (or discards it when it carried a checksum) and exits 0.";

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("kept").required(true).args(["dir", "store"])))]
pub struct Args {
    /// Where finished uploads are published (it must exist); unfinished ones wait in
    /// DIR/.partial (created when missing). The same as --store DIR.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Where uploads are kept: a directory (as --dir), or s3://BUCKET/PREFIX, an S3 bucket
    /// (nothing per upload on this disk; several servers may share it), e.g.
    /// --store s3://uploads/incoming/ --endpoint http://127.0.0.1:9000
    #[arg(long, value_name = "DIR|S3_URL", conflicts_with_all = ["dir", "stdio"])]
    pub store: Option<String>,

    /// The S3 endpoint of an S3-compatible store (MinIO, Ceph, Garage, SeaweedFS), e.g.
    /// http://127.0.0.1:9000 [default: AWS_ENDPOINT_URL, else AWS's own]
    #[arg(long, value_name = "URL", requires = "store")]
    pub endpoint: Option<String>,

    /// Serve one connection on stdin and stdout, as started over ssh by an ssh:// client,
    /// e.g. upload serve --stdio --dir ~/inbox
    #[arg(long, conflicts_with_all = ["listen", "token_file", "no_auth", "per_token_dirs",
        "shared_uploads", "tls_cert", "tls_key", "cors_origins", "public_url"])]
    pub stdio: bool,

    /// The IP address and port to listen on; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Accept only the bearer tokens in this file (one per line, # comments).
    #[arg(long, value_name = "FILE", conflicts_with = "no_auth")]
    pub token_file: Option<PathBuf>,

    /// Accept uploads without a token; only on a loopback --listen address.
    #[arg(long)]
    pub no_auth: bool,

    /// Publish each token's uploads in DIR/NAME/ (NAME from the token file).
    #[arg(long, requires = "token_file")]
    pub per_token_dirs: bool,

    /// Let every token reach every upload whose URL it has (HEAD, PATCH, DELETE), as one
    /// namespace [default: a token reaches only the uploads it created].
    #[arg(long, requires = "token_file", conflicts_with = "per_token_dirs")]
    pub shared_uploads: bool,

    /// At most this many uploads sending data at once per token (all clients together
    /// without auth); more get 429 Too Many Requests.
    #[arg(long, value_name = "N", default_value_t = Config::DEFAULT_MAX_UPLOADS_PER_TOKEN)]
    pub max_uploads_per_token: usize,

    /// Refuse uploads larger than this, e.g. 50GiB [default: 95 % of the space free in DIR's
    /// file system at start-up].
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<Size>,

    /// Remove uploads (and records of finished ones) idle this long, e.g. 3d or 12h.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "7d")]
    pub expire_after: Duration,

    /// Treat an upload whose client sends nothing for this long as interrupted, e.g. 60s.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,

    /// Serve https with this certificate chain (PEM, server certificate first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Let web pages from this origin upload from a browser (tus-js-client), e.g.
    /// https://uploads.example.org; repeat for more, or * for any [default: none].
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,

    /// Behind a reverse proxy that maps this server under another path: the URL clients use
    /// for /files/, e.g. https://example.org/tus/files/ (new uploads' Location is built on it).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
}

pub fn run(_global: &Global, args: Args) -> Result<(), Failure> {
    if args.stdio {
        return run_stdio(args);
    }
    let config = config(&args)?;
    let listen = args.listen;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::from(anyhow!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        // Signal handlers first: a SIGTERM right after the "listening" line must stop the
        // server gracefully, not kill it with the default action.
        let shutdown = shutdown_signal()?;
        let server = Server::bind(config, listen).await?;
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "listening on {scheme}://{}/files/",
            server.local_addr()
        )?;
        stdout.flush()?;
        drop(stdout);
        server.run(shutdown).await?;
        Ok(())
    })
}

/// `--stdio`: one connection on stdin and stdout, no auth (the ssh login was it).
fn run_stdio(args: Args) -> Result<(), Failure> {
    let remote_dir = |e: anyhow::Error| Failure::new(super::exit::REMOTE_DIR, e);
    let Some(dir_path) = args.dir.clone() else {
        return Err(remote_dir(anyhow!(
            "--stdio needs --dir DIR, e.g. upload serve --stdio --dir ~/inbox"
        )));
    };
    let dir = dir_path.display().to_string();
    usable_dir(&dir_path).map_err(remote_dir)?;
    let mut config = Config::new(dir_path);
    config.max_uploads_per_token = args.max_uploads_per_token.max(1);
    config.max_size = args.max_size.map(Size::bytes);
    config.expire_after = args.expire_after.max(Duration::from_secs(1));
    config.idle_timeout = args.idle_timeout.max(Duration::from_secs(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::from(anyhow!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        server::serve_stdio(config, io, shutdown)
            .await
            .map_err(|e| match e {
                server::ServerError::Dir { .. } => remote_dir(anyhow!(e)),
                e => Failure::from(e),
            })
    });
    // A read of stdin may still block a thread of the runtime: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    tracing::debug!(%dir, "the connection ended");
    result
}

/// `--dir` exists, is a directory and can be written: else nothing can be published there,
/// which must be said now, not after a night of sending.
fn usable_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let shown = dir.display();
    if !dir.is_dir() {
        // `file/` is not found, but it is there: say what it is.
        let bare = std::path::Path::new(dir.to_str().map_or("", |d| d.trim_end_matches('/')));
        let why = if dir.exists() || bare.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(anyhow!(
            "--dir {shown} {why}: give the directory uploads are published in, or create it \
             first, e.g. mkdir -p {shown}"
        ));
    }
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).map_err(|e| {
        anyhow!("--dir {shown} is not writable by this user ({e}): give one that is, e.g. ~/inbox")
    })?;
    Ok(())
}

/// Where uploads are kept, from `--dir` or `--store`.
enum StoreArg {
    Dir(PathBuf),
    S3(Box<server::S3Target>),
}

impl StoreArg {
    fn of(args: &Args) -> Result<StoreArg, Failure> {
        match (&args.store, &args.dir) {
            (Some(url), _) if url.starts_with("s3:") => {
                server::S3Target::parse(url, args.endpoint.as_deref())
                    .map(|t| StoreArg::S3(Box::new(t)))
                    .map_err(|e| Failure::usage(anyhow!(e)))
            }
            (Some(_), _) if args.endpoint.is_some() => Err(Failure::usage(anyhow!(
                "--endpoint is for an S3 store, e.g. --store s3://uploads/incoming/ \
                 --endpoint http://127.0.0.1:9000"
            ))),
            (Some(dir), _) => Ok(StoreArg::Dir(PathBuf::from(dir))),
            (None, Some(dir)) => Ok(StoreArg::Dir(dir.clone())),
            (None, None) => Err(Failure::usage(anyhow!(
                "give --dir DIR or --store s3://BUCKET/PREFIX, e.g. upload serve --dir \
                 /srv/uploads --token-file /etc/upload/tokens"
            ))),
        }
    }

    /// As the user wrote it, for messages.
    fn shown(&self) -> String {
        match self {
            StoreArg::Dir(d) => format!("--dir {}", d.display()),
            StoreArg::S3(t) => format!("--store {}", t.url()),
        }
    }
}

fn config(args: &Args) -> Result<Config, Failure> {
    let store = StoreArg::of(args)?;
    let shown = store.shown();
    let tokens = match (&args.token_file, args.no_auth) {
        (Some(path), _) => Some(server::load_token_file(path).map_err(Failure::usage)?),
        (None, true) if args.listen.ip().is_loopback() => None,
        (None, true) => {
            return Err(Failure::usage(anyhow!(
                "--no-auth is only allowed on a loopback address, and {} is not one: anyone who \
                 can reach it could fill the disk. Give --token-file FILE (one token per line), \
                 e.g. upload serve {shown} --listen {} --token-file /etc/upload/tokens",
                args.listen,
                args.listen
            )));
        }
        (None, false) => {
            return Err(Failure::usage(anyhow!(
                "the server needs --token-file FILE (one token per line), e.g. upload serve \
                 {shown} --token-file /etc/upload/tokens; or --no-auth to accept anyone, only \
                 on a loopback address, e.g. upload serve {shown} --listen 127.0.0.1:8080 \
                 --no-auth"
            )));
        }
    };
    if args.expire_after.is_zero() {
        return Err(Failure::usage(anyhow!(
            "--expire-after must be more than 0, e.g. 7d"
        )));
    }
    // clap's `requires` is not checked when --no-auth (which conflicts with --token-file) is
    // given, so say it here too.
    if args.per_token_dirs && tokens.is_none() {
        return Err(Failure::usage(anyhow!(
            "--per-token-dirs keeps each token's uploads apart, so it needs --token-file FILE \
             (one TOKEN NAME per line), not --no-auth"
        )));
    }
    if args.max_uploads_per_token == 0 {
        return Err(Failure::usage(anyhow!(
            "--max-uploads-per-token must be at least 1, e.g. 32"
        )));
    }
    if args.idle_timeout.is_zero() {
        return Err(Failure::usage(anyhow!(
            "--idle-timeout must be more than 0, e.g. 60s"
        )));
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(crate::tls::server_config(cert, key).map_err(Failure::usage)?)
        }
        (None, None) => None,
        _ => {
            return Err(Failure::usage(anyhow!(
                "--tls-cert and --tls-key go together, e.g. --tls-cert fullchain.pem --tls-key \
                 key.pem"
            )));
        }
    };
    let cors =
        server::Cors::from_origins(&args.cors_origins).map_err(|e| Failure::usage(anyhow!(e)))?;
    let public_url = args.public_url.as_deref().map(public_url).transpose()?;
    let (dir, s3) = match store {
        StoreArg::Dir(dir) => {
            // A mistyped --dir would otherwise become a new, empty directory that quietly
            // collects the uploads meant for the real one.
            if !dir.is_dir() {
                let shown = dir.display();
                let why = if dir.exists() {
                    "is not a directory"
                } else {
                    "does not exist"
                };
                return Err(Failure::usage(anyhow!(
                    "--dir {shown} {why}: give the directory uploads are published in, or \
                     create it first, e.g. mkdir -p {shown} && upload serve --dir {shown} ..."
                )));
            }
            (dir, None)
        }
        StoreArg::S3(target) => (PathBuf::new(), Some(*target)),
    };
    Ok(Config {
        dir,
        s3,
        tokens,
        per_token_dirs: args.per_token_dirs,
        shared_uploads: args.shared_uploads,
        max_uploads_per_token: args.max_uploads_per_token,
        max_size: args.max_size.map(Size::bytes),
        expire_after: args.expire_after,
        // A short expiry (tests, a scratch server) is pointless if only checked hourly.
        sweep_interval: Config::DEFAULT_SWEEP_INTERVAL
            .min(args.expire_after / 4)
            .max(Duration::from_secs(1)),
        idle_timeout: args.idle_timeout,
        tls,
        cors,
        public_url,
    })
}

/// `--public-url`: an http(s) URL without query or fragment, kept with a trailing `/`.
fn public_url(text: &str) -> Result<url::Url, Failure> {
    let bad = |why: &str| {
        Failure::usage(anyhow!(
            "--public-url \"{text}\" {why}; expected the URL clients use for this server's \
             /files/, e.g. https://example.org/tus/files/"
        ))
    };
    let mut url = url::Url::parse(text).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("is not an http or https URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Resolves at the first SIGINT or SIGTERM. The handlers are installed now, not on first poll.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Failure> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("signal received");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("signal received");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_gets_its_trailing_slash() {
        let url = public_url("https://example.org/tus/files").unwrap();
        assert_eq!(url.as_str(), "https://example.org/tus/files/");
        let url = public_url("http://10.0.0.1:8080/files/").unwrap();
        assert_eq!(url.as_str(), "http://10.0.0.1:8080/files/");
    }

    fn args(listen: &str, token_file: Option<PathBuf>, no_auth: bool) -> Args {
        Args {
            dir: Some(std::env::temp_dir()),
            store: None,
            endpoint: None,
            listen: listen.parse().unwrap(),
            token_file,
            no_auth,
            per_token_dirs: false,
            shared_uploads: false,
            max_uploads_per_token: Config::DEFAULT_MAX_UPLOADS_PER_TOKEN,
            max_size: None,
            expire_after: Duration::from_secs(7 * 86400),
            idle_timeout: Duration::from_secs(60),
            tls_cert: None,
            tls_key: None,
            cors_origins: Vec::new(),
            public_url: None,
            stdio: false,
        }
    }

    #[test]
    fn no_auth_only_on_loopback() {
        assert!(config(&args("127.0.0.1:8080", None, true)).is_ok());
        assert!(config(&args("[::1]:8080", None, true)).is_ok());
        for (listen, no_auth) in [("0.0.0.0:8080", true), ("127.0.0.1:8080", false)] {
            let failure = config(&args(listen, None, no_auth)).unwrap_err();
            assert_eq!(failure.code, super::super::exit::USAGE);
            let message = failure.error.to_string();
            assert!(
                message.contains("--token-file") && message.contains("e.g. upload serve"),
                "{message}"
            );
        }
        let failure = config(&args("127.0.0.1:8080", None, false)).unwrap_err();
        assert!(failure.error.to_string().contains("--no-auth"));
    }

    #[test]
    fn the_directory_must_exist() {
        let scratch = tempfile::tempdir().unwrap();
        let mut a = args("127.0.0.1:0", None, true);
        let typo = scratch.path().join("typo");
        a.dir = Some(typo.clone());
        let failure = config(&a).unwrap_err();
        assert_eq!(failure.code, super::super::exit::USAGE);
        let message = failure.error.to_string();
        assert!(
            message.contains("typo does not exist") && message.contains("e.g. mkdir -p"),
            "{message}"
        );
        assert!(!typo.exists(), "nothing is created");
        std::fs::write(&typo, b"").unwrap();
        let message = config(&a).unwrap_err().error.to_string();
        assert!(message.contains("is not a directory"), "{message}");
    }

    #[test]
    fn short_expiry_sweeps_often() {
        let mut a = args("127.0.0.1:0", None, true);
        a.expire_after = Duration::from_secs(60);
        assert_eq!(config(&a).unwrap().sweep_interval, Duration::from_secs(15));
        let a = args("127.0.0.1:0", None, true);
        assert_eq!(
            config(&a).unwrap().sweep_interval,
            Duration::from_secs(3600)
        );
    }
}
