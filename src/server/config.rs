//! What the server is told at start-up ([`Config`]), and the defaults it derives from the
//! machine it runs on ([`default_max_size`]).

use super::auth::Token;
use super::cors::Cors;
pub use super::s3_store::S3Target;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the server needs to know; `Config::new` has the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Finished uploads land here; unfinished ones in `dir/.partial`. Unused with `s3`.
    pub dir: PathBuf,
    /// Keep uploads in this S3 bucket and prefix instead of `dir` (`--store s3://...`):
    /// nothing per upload on this machine's disk, and several instances may share it.
    pub s3: Option<S3Target>,
    /// Accepted bearer tokens; `None` accepts anyone.
    pub tokens: Option<Vec<Token>>,
    /// Publish each token's uploads in `dir/<token name>/` and hide them from other tokens
    /// (see the `server` module doc). Requires `tokens`.
    pub per_token_dirs: bool,
    /// How many bodies one token (all clients together without auth) may send at once.
    pub max_uploads_per_token: usize,
    /// The largest upload accepted (`Tus-Max-Size`). `None`: what `dir`'s file system has free
    /// for unprivileged users at start-up, less 5 % (see [`default_max_size`]): an upload
    /// that cannot fit is refused at creation, not after nights of sending, with a 507.
    pub max_size: Option<u64>,
    /// Let every token reach (HEAD, PATCH, DELETE) every upload whose URL it has, as one
    /// namespace. Off: a token reaches only the uploads it created (see the `server` module doc).
    pub shared_uploads: bool,
    /// An upload idle this long is removed (and so is the record of a finished one).
    pub expire_after: Duration,
    /// How often expired uploads are looked for.
    pub sweep_interval: Duration,
    /// A body that sends nothing for this long is treated as interrupted.
    pub idle_timeout: Duration,
    /// Serve https with this configuration (see [`crate::tls::server_config`]); `None` is
    /// plain http.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Which web origins may call the server from a browser (see `cors`).
    pub cors: Cors,
    /// Where clients reach `/files/` when a reverse proxy maps the server under another path
    /// (ending in `/`); `Location` then names it, so clients come back through the proxy.
    /// `None`: `Location: /files/<id>`, relative to whatever host the client used.
    pub public_url: Option<url::Url>,
}

impl Config {
    pub const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
    pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_MAX_UPLOADS_PER_TOKEN: usize = 32;

    /// No auth, the size limit from the free space, default timings.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            s3: None,
            tokens: None,
            per_token_dirs: false,
            max_uploads_per_token: Self::DEFAULT_MAX_UPLOADS_PER_TOKEN,
            max_size: None,
            shared_uploads: false,
            expire_after: Self::DEFAULT_EXPIRE_AFTER,
            sweep_interval: Self::DEFAULT_SWEEP_INTERVAL,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            tls: None,
            cors: Cors::Off,
            public_url: None,
        }
    }
}

/// The largest upload by default, from the bytes free in the upload directory's file system
/// at start-up: 95 % of them, leaving room for the info files and whatever else uses the disk.
/// An upload larger than the free space can never be completed; refused at creation, the
/// client learns it at once (413) instead of after nights of sending (507).
pub fn default_max_size(free: u64) -> u64 {
    free / 20 * 19
}
