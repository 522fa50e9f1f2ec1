//! The seam between the engine and where bytes go. A session asks its [`Destination`] what it
//! supports, to create or find an upload, for the upload's offset, to append a chunk (with its
//! checksum, and with the whole file's digest on the last), and to delete an upload; it never
//! speaks a protocol itself.
//!
//! As in rustus's storage trait and tusd's composer, the session works from what the
//! destination says it can do ([`Capabilities`]): a destination without chunk checksums is
//! still sent to, each chunk unchecked on the way. [`for_url`] is the one place a URL picks
//! its destination ([`Destinations`], one variant per kind): a tus endpoint ([`Tus`], `http`
//! and `https`), a peer over ssh ([`Ssh`], `ssh://`, tus over the pipe of a child ssh), or an
//! S3 bucket ([`S3`], `s3://`, multipart upload). A destination of another kind is another
//! file beside `tus.rs` and another variant there; a payload of another kind (a delta recipe)
//! is sent through the same calls, as an ordinary upload. A destination whose uploads are cut
//! in parts of one size (S3 multipart) says so ([`Destination::part_size`]); each chunk is
//! then one whole part.
//!
//! Delta uploads (issue 13) add two calls with defaults, so a destination without them needs
//! nothing: [`Destination::index`] (a base's index; `None` by default, and the session then
//! sends the whole file) and [`Destination::create_delta`].
//!
//! Errors are [`ClientError`]s, so each destination classifies its failures by what a retry
//! can do and the session's retry policy reads only that.

use super::s3::S3;
use super::ssh::Ssh;
use super::tus::Tus;
use super::{SendError, SendOptions};
use crate::client::{ChannelBody, ClientError, LinkProbe, PatchOutcome, UploadInfo};
use crate::protocol::{Algorithm, Checksum};
use crate::units::Rate;
use std::future::Future;
use url::Url;

/// What a destination can do, asked once per session before anything is sent.
#[derive(Debug, Clone, Default)]
pub(super) struct Capabilities {
    /// The chunk checksum it verifies, if any.
    pub(super) checksum: Option<Algorithm>,
    /// The largest upload it accepts, in bytes.
    pub(super) max_size: Option<u64>,
    /// The smallest write worth making into its connection: where every write costs a frame
    /// of its own (ssh: a packet of about 36 bytes), the throttle's small pieces (1/20 s of
    /// data, 800 bytes at 128 kbit/s) are gathered up to this. 0: none.
    pub(super) piece_floor: usize,
}

/// Where the bytes of one upload go. Futures are `Send`: a scheduler runs sessions in tasks.
pub(super) trait Destination: Send {
    /// What it supports.
    fn discover(&mut self) -> impl Future<Output = Result<Capabilities, ClientError>> + Send;

    /// A new, empty upload of `size` bytes, to be published as `name`; where it is.
    fn create(
        &mut self,
        size: u64,
        name: &str,
    ) -> impl Future<Output = Result<Url, ClientError>> + Send;

    /// What it holds of `upload`: the offset, and for a finished upload its digest and name.
    fn offset(
        &mut self,
        upload: &Url,
    ) -> impl Future<Output = Result<UploadInfo, ClientError>> + Send;

    /// Opens the connection the next chunk goes over, sized for a chunk paced at `rate`, and
    /// returns the probe that watches its progress.
    fn connect(
        &mut self,
        rate: Option<Rate>,
    ) -> impl Future<Output = Result<LinkProbe, ClientError>> + Send;

    /// Appends the `len` bytes `body` produces at `offset`, with the chunk's checksum, and for
    /// the last chunk the whole file's SHA-256.
    fn append(
        &mut self,
        upload: &Url,
        offset: u64,
        len: u64,
        body: ChannelBody,
        checksum: Option<&Checksum>,
        digest: Option<&[u8; 32]>,
    ) -> impl Future<Output = Result<PatchOutcome, ClientError>> + Send;

    /// Deletes `upload` and what it holds.
    fn delete(&mut self, upload: &Url) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Drops the connection after a failure: the next attempt starts on a fresh one.
    fn disconnect(&mut self);

    /// The host whose link the transfer measured, for link samples.
    fn host(&self) -> &str;

    /// The part size of `upload` when its parts must all have one size (but the last): the
    /// engine then sends exactly one part per chunk, never a shortened one. `None` (tus):
    /// chunks follow the rate.
    fn part_size(&self, _upload: &Url) -> Option<u64> {
        None
    }

    /// The index of the published file `name` (issue 13: a delta upload's base), as the
    /// destination serves it; `None` when it has no such file, or keeps no indexes (a
    /// destination without delta uploads need not implement this).
    fn index(
        &mut self,
        _name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, ClientError>> + Send {
        async { Ok(None) }
    }

    /// [`Destination::create`] for an upload that is a delta recipe against `base`: the
    /// destination assembles the file named `name` from it. Only asked of a destination that
    /// served an index.
    fn create_delta(
        &mut self,
        _size: u64,
        _name: &str,
        _base: &DeltaBase,
    ) -> impl Future<Output = Result<Url, ClientError>> + Send {
        async {
            Err(ClientError::DeltaRefused {
                code: "unsupported".into(),
                why: "this destination does not take delta uploads".into(),
            })
        }
    }
}

/// The base a delta upload's recipe was made against: its published name and the SHA-256 its
/// index gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeltaBase {
    pub(super) name: String,
    pub(super) sha256: [u8; 32],
}

/// Every kind of destination, so that the session stays one type and free of branches on
/// the kind.
pub(super) enum Destinations {
    Tus(Tus),
    Ssh(Ssh),
    S3(Box<S3>),
}

/// Calls the same method on whichever destination it is.
macro_rules! each {
    ($self:ident, $d:ident => $call:expr) => {
        match $self {
            Destinations::Tus($d) => $call,
            Destinations::Ssh($d) => $call,
            Destinations::S3($d) => $call,
        }
    };
}

impl Destination for Destinations {
    async fn discover(&mut self) -> Result<Capabilities, ClientError> {
        each!(self, d => d.discover().await)
    }

    async fn create(&mut self, size: u64, name: &str) -> Result<Url, ClientError> {
        each!(self, d => d.create(size, name).await)
    }

    async fn offset(&mut self, upload: &Url) -> Result<UploadInfo, ClientError> {
        each!(self, d => d.offset(upload).await)
    }

    async fn connect(&mut self, rate: Option<Rate>) -> Result<LinkProbe, ClientError> {
        each!(self, d => d.connect(rate).await)
    }

    async fn append(
        &mut self,
        upload: &Url,
        offset: u64,
        len: u64,
        body: ChannelBody,
        checksum: Option<&Checksum>,
        digest: Option<&[u8; 32]>,
    ) -> Result<PatchOutcome, ClientError> {
        each!(self, d => d.append(upload, offset, len, body, checksum, digest).await)
    }

    async fn delete(&mut self, upload: &Url) -> Result<(), ClientError> {
        each!(self, d => d.delete(upload).await)
    }

    fn disconnect(&mut self) {
        each!(self, d => d.disconnect())
    }

    fn host(&self) -> &str {
        each!(self, d => d.host())
    }

    fn part_size(&self, upload: &Url) -> Option<u64> {
        each!(self, d => d.part_size(upload))
    }

    async fn index(&mut self, name: &str) -> Result<Option<Vec<u8>>, ClientError> {
        each!(self, d => d.index(name).await)
    }

    async fn create_delta(
        &mut self,
        size: u64,
        name: &str,
        base: &DeltaBase,
    ) -> Result<Url, ClientError> {
        each!(self, d => d.create_delta(size, name, base).await)
    }
}

/// Whether `url` names a destination `upload` can send to (checked at `queue add`, before
/// anything is sent): an http(s) tus endpoint or an `ssh://` directory.
pub fn check_url(url: &str) -> Result<(), ClientError> {
    if url.starts_with("ssh://") {
        super::ssh::parse_ssh_url(url).map(|_| ())
    } else {
        crate::client::parse_endpoint(url).map(|_| ())
    }
}

/// The destination `opts.url` names, with its credentials and trust roots.
pub(super) fn for_url(opts: &SendOptions) -> Result<Destinations, SendError> {
    if opts.url.starts_with("ssh://") {
        return Ssh::open(&opts.url, &opts.ssh).map(Destinations::Ssh);
    }
    if opts.url.starts_with("s3://") {
        return S3::open(opts).map(|d| Destinations::S3(Box::new(d)));
    }
    Tus::open(&opts.url, opts.token.clone(), opts.ca.as_deref()).map(Destinations::Tus)
}
