//! The seam between the engine and where bytes go. A session asks its [`Destination`] what it
//! supports, to create or find an upload, for the upload's offset, to append a chunk (with its
//! checksum, and with the whole file's digest on the last), and to delete an upload; it never
//! speaks a protocol itself.
//!
//! As in rustus's storage trait and tusd's composer, the session works from what the
//! destination says it can do ([`Capabilities`]): a destination without chunk checksums is
//! still sent to, each chunk unchecked on the way. [`for_url`] is the one place a URL picks
//! its destination: a tus endpoint ([`Tus`], `http(s)://`) or an S3 bucket ([`S3`], `s3://`).
//! A destination of another kind (a peer over ssh) is another file beside `tus.rs` and another
//! arm there; a payload of another kind (a delta recipe) is sent through the same calls, as an
//! ordinary upload. A destination whose uploads are cut in parts of one size (S3 multipart)
//! says so ([`Destination::part_size`]); each chunk is then one whole part.
//!
//! Errors are [`ClientError`]s, so each destination classifies its failures by what a retry
//! can do and the session's retry policy reads only that.

use super::s3::S3;
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
}

/// The destination a URL names.
pub(super) enum Picked {
    Tus(Tus),
    S3(Box<S3>),
}

/// The destination `opts.url` names, with its credentials and trust roots.
pub(super) fn for_url(opts: &SendOptions) -> Result<Picked, SendError> {
    if opts.url.starts_with("s3://") {
        return S3::open(opts).map(|d| Picked::S3(Box::new(d)));
    }
    Tus::open(&opts.url, opts.token.clone(), opts.ca.as_deref()).map(Picked::Tus)
}
