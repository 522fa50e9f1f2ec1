//! Why the server cannot start ([`ServerError`]), why a request failed ([`ApiError`]), and the
//! one place that turns the latter into an HTTP status: one enum per phase.
//!
//! Handlers return `Result<Response, ApiError>` and never pick an error status themselves, so
//! the mapping below is the whole story of what a client can see go wrong. The body is one
//! line of plain text for people and logs; clients act on the status alone.

use crate::protocol::{self, ProtocolError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use {} as the upload directory: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot use {url} as the upload store: {source}; the bucket must exist and the \
         credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials) may \
         write to it, e.g. upload serve --store s3://my-bucket/uploads/ --endpoint \
         http://127.0.0.1:9000 --no-auth"
    )]
    Store { url: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} holds no token: put one per line (lines starting with # are comments)",
        path.as_ref().map_or("the token list".to_string(), |p| p.display().to_string())
    )]
    NoTokens { path: Option<PathBuf> },
    #[error("{at}: {why}")]
    BadToken { at: String, why: String },
    #[error(
        "{} is {what}, not a directory: with --per-token-dirs the uploads of token {name:?} are \
         published there, and never through a link or into a file. Move it away (e.g. mv {} \
         {}.old; the server then creates the directory) and start the server again",
        path.display(), path.display(), path.display()
    )]
    TokenDir {
        path: PathBuf,
        name: String,
        what: &'static str,
    },
    #[error(
        "per-token directories keep each token's uploads apart; shared uploads put them \
         together: give one or the other"
    )]
    PerTokenDirsShared,
    #[error("per-token directories need tokens: give --token-file FILE")]
    PerTokenDirsWithoutTokens,
    #[error("the cap on uploads per token must be at least 1")]
    NoUploadsAllowed,
}

/// Why an upload's body stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interruption {
    /// Nothing arrived for the idle timeout (a dead link, or a slowloris).
    Idle,
    /// A newer request for the same upload took over (the client gave up on this one).
    Superseded,
    /// The connection broke or the body was malformed.
    Broken,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("no such upload")]
    NotFound,
    #[error("{0}")]
    Gone(String),
    /// The same for a file of another token's namespace as for an unknown one (issue 13).
    #[error("no published file of that name")]
    NoSuchFile,
    #[error("delta upload refused: {0}; send the whole file instead")]
    DeltaRefused(super::delta::Refusal),
    #[error("this server speaks tus 1.0.0: send Tus-Resumable: 1.0.0")]
    Version,
    #[error("unauthorized")]
    Unauthorized,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("Upload-Metadata is longer than {max} bytes")]
    MetadataTooLarge { max: usize },
    #[error("a PATCH body must be {}", protocol::OFFSET_OCTET_STREAM)]
    ContentType,
    #[error("{0}")]
    TooLarge(String),
    #[error("Upload-Offset {sent} does not match the upload's offset {offset}")]
    OffsetMismatch { sent: u64, offset: u64 },
    #[error("the body does not match its Upload-Checksum; the offset stays at {offset}")]
    ChecksumMismatch { offset: u64 },
    #[error(
        "whole-file SHA-256 mismatch: declared {declared}, received {received}; nothing was published"
    )]
    DigestMismatch { declared: String, received: String },
    #[error("the body stopped ({why:?}); the offset is now {offset}")]
    Interrupted { why: Interruption, offset: u64 },
    #[error("another request holds this upload and did not let go; retry shortly")]
    Busy,
    #[error("too many uploads sending data at once (at most {max} per token); retry shortly")]
    TooManyUploads { max: usize },
    #[error(
        "this server cannot publish the uploads of token {name:?}: where their directory goes \
         there is {what}; the server's operator must make it a directory (what was received \
         is kept, and the upload can go on then)"
    )]
    TokenDir { name: String, what: &'static str },
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Errors that reject a request body but leave the upload itself usable: after a
    /// creation-with-upload they still mean "created", at the offset that was committed.
    pub fn rejects_body_only(&self) -> bool {
        matches!(
            self,
            ApiError::ChecksumMismatch { .. }
                | ApiError::Interrupted { .. }
                | ApiError::TooLarge(_)
        )
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound | ApiError::NoSuchFile => StatusCode::NOT_FOUND,
            // No retry of the same recipe can succeed; the whole file can (the header says why).
            ApiError::DeltaRefused(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Version => StatusCode::PRECONDITION_FAILED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) | ApiError::Protocol(_) => StatusCode::BAD_REQUEST,
            ApiError::MetadataTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::OffsetMismatch { .. } => StatusCode::CONFLICT,
            // The server's state is in the way, and no retry changes it until the operator
            // acts: a 5xx would have clients retry forever. (Ours stops: 409 without an
            // offset, then HEAD, which gets the same.)
            ApiError::TokenDir { .. } => StatusCode::CONFLICT,
            ApiError::ChecksumMismatch { .. } => {
                StatusCode::from_u16(protocol::STATUS_CHECKSUM_MISMATCH)
                    .expect("460 is a valid status")
            }
            ApiError::DigestMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            // tus is silent here. 408 says "you were too slow", 409 "someone else has this
            // upload now" (a client answers both with HEAD and resume), 400 "your request broke".
            ApiError::Interrupted { why, .. } => match why {
                Interruption::Idle => StatusCode::REQUEST_TIMEOUT,
                Interruption::Superseded => StatusCode::CONFLICT,
                Interruption::Broken => StatusCode::BAD_REQUEST,
            },
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyUploads { .. } => StatusCode::TOO_MANY_REQUESTS,
            // A full disk is worth its own status: the client can wait instead of hammering.
            ApiError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            ApiError::Io(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(%status, error = %self, "request failed");
        } else {
            tracing::debug!(%status, error = %self, "request refused");
        }
        // 401 says nothing about the token: a prober learns no more than "not this way".
        let text = match &self {
            ApiError::Io(_) | ApiError::Internal(_) => "internal storage error\n".to_string(),
            _ => format!("{self}\n"),
        };
        let mut response = (status, text).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Version => {
                headers.insert(
                    protocol::TUS_VERSION_HEADER,
                    HeaderValue::from_static(protocol::TUS_VERSION),
                );
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::OffsetMismatch { offset, .. }
            | ApiError::ChecksumMismatch { offset }
            | ApiError::Interrupted { offset, .. } => {
                headers.insert(protocol::UPLOAD_OFFSET, HeaderValue::from(*offset));
            }
            ApiError::DeltaRefused(why) => {
                headers.insert(
                    protocol::UPLOAD_DELTA_REFUSED,
                    HeaderValue::from_static(why.code()),
                );
            }
            ApiError::Busy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // Long enough for a chunk to finish on a slow link, short enough not to idle.
            ApiError::TooManyUploads { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        // The request body may not have been read to its end: do not try to reuse the
        // connection (hyper would have to drain an unknown amount first).
        if matches!(
            self,
            ApiError::TooLarge(_)
                | ApiError::Interrupted { .. }
                | ApiError::ContentType
                | ApiError::Busy
                | ApiError::TooManyUploads { .. }
                // Refused at creation, before a creation-with-upload body was read.
                | ApiError::DeltaRefused(_)
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
