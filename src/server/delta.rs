//! Delta uploads on the server (issue 13): serving the index of a published file, and turning
//! a finished upload that is a recipe into the new file.
//!
//! Delta is a store capability ([`DeltaStore`], reached through `Store::delta`): a store that
//! has none (an object store) is never asked, `Tus-Extension` does not name `delta`, and
//! clients send such a server whole files.
//!
//! - `GET /files/index/NAME` answers the index of `NAME` in the caller's namespace, the
//!   directory where its uploads are published (with `--per-token-dirs` its own). A file of
//!   another token's namespace is looked for only in the caller's, so it answers exactly like
//!   an unknown one: same status, same body. The index is made when first asked for, or again
//!   when the file's identity no longer is the one indexed (files that predate the feature get
//!   one this way too); publishing records the file's identity and SHA-256 so that this costs
//!   one chunking pass and no second hashing.
//! - A creation whose metadata names a base (`delta-base`, `delta-base-sha256`) is refused at
//!   once (412, `Upload-Delta-Refused`) when the base is missing or no longer the file of that
//!   SHA-256: the client sends the whole file instead, before sending a byte of the recipe.
//! - When such an upload completes (its bytes verified against its own SHA-256, as any
//!   upload's), the store builds the new file from the base and the recipe, checks its SHA-256
//!   against the recipe's, and only then is it published, under the usual names and no-clobber
//!   rules. The base is only read. A base changed since (or a recipe that does not build its
//!   declared file) is refused the same way, and the upload removed.

use super::app::App;
use super::error::ApiError;
use super::names::{Id, safe_name};
use super::uploads::blocking;
use crate::protocol::{Metadata, meta};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::io;

/// Why a delta upload was refused. The client sends the whole file after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the base {0:?} is not published here")]
    BaseMissing(String),
    #[error("the base {0:?} changed since its index was made")]
    BaseChanged(String),
    #[error("the recipe cannot be used: {0}")]
    BadRecipe(String),
    #[error("the file built from the recipe has SHA-256 {built}, the recipe declares {declared}")]
    TargetMismatch { built: String, declared: String },
    #[error("this server's store does not assemble delta uploads")]
    Unsupported,
    /// One recorded in an upload's state, said again to a later request.
    #[error("{why}")]
    Recorded { code: &'static str, why: String },
}

impl Refusal {
    /// The `Upload-Delta-Refused` value.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refusal::BaseMissing(_) => "base-missing",
            Refusal::BaseChanged(_) => "base-changed",
            Refusal::BadRecipe(_) => "bad-recipe",
            Refusal::TargetMismatch { .. } => "target-mismatch",
            Refusal::Unsupported => "unsupported",
            Refusal::Recorded { code, .. } => code,
        }
    }

    /// The refusal an upload's state recorded (`code` as [`Refusal::code`] gave it).
    pub(crate) fn recorded(code: &str, why: String) -> Refusal {
        let code = match code {
            "base-missing" => "base-missing",
            "base-changed" => "base-changed",
            "target-mismatch" => "target-mismatch",
            "unsupported" => "unsupported",
            _ => "bad-recipe",
        };
        Refusal::Recorded { code, why }
    }
}

/// What the store built from a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Assembled {
    pub len: u64,
    pub sha256: [u8; 32],
}

/// What a store that supports delta uploads does beyond [`super::store::Store`]. `subdir` is
/// the namespace (a token's directory with per-token directories), as for `Store::publish`.
pub(crate) trait DeltaStore: Send + Sync {
    /// The encoded index ([`crate::delta::Index`]) of the published file `name`, made when
    /// missing or stale. `None` when no regular file of that name is published there.
    fn index(&self, subdir: Option<&str>, name: &str) -> io::Result<Option<Vec<u8>>>;

    /// Builds the new file from upload `id`'s bytes (a recipe) and the published `base`, whose
    /// index had SHA-256 `base_sha256`, and keeps it beside the upload for
    /// [`DeltaStore::publish_assembled`].
    fn assemble(
        &self,
        id: &Id,
        subdir: Option<&str>,
        base: &str,
        base_sha256: &[u8; 32],
    ) -> io::Result<Result<Assembled, Refusal>>;

    /// Publishes what [`DeltaStore::assemble`] built, as `Store::publish` publishes a part; it
    /// goes with `Store::remove_part`.
    fn publish_assembled(
        &self,
        id: &Id,
        subdir: Option<&str>,
        name: &str,
        len: u64,
        sha256: &[u8; 32],
    ) -> io::Result<String>;
}

/// A base named by a client is a published name, or no base at all: a name that
/// [`safe_name`] would change cannot be one (it never reaches the file system).
fn published_name(requested: &str) -> Option<&str> {
    (safe_name(Some(requested.as_bytes()), &Id::random()) == requested).then_some(requested)
}

/// `GET /files/index/NAME`.
pub(crate) async fn serve_index(
    app: &App,
    subdir: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    if app.uploads.store().delta().is_none() {
        return Err(ApiError::NotFound);
    }
    let Some(name) = published_name(name) else {
        return Err(ApiError::NoSuchFile);
    };
    let store = app.uploads.store().clone();
    let (subdir, name) = (subdir.map(str::to_string), name.to_string());
    let index = blocking(move || {
        let delta = store.delta().expect("checked above");
        delta.index(subdir.as_deref(), &name)
    })
    .await?
    .ok_or(ApiError::NoSuchFile)?;
    let mut response = (StatusCode::OK, index).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The base a creation's metadata names, with the SHA-256 its index had; `None` for an
/// ordinary upload. Refuses a malformed pair (400), a server without delta, or a base that is
/// missing or changed (412): before the upload exists, so the client sends the file whole.
pub(crate) async fn base_of_creation(
    app: &App,
    subdir: Option<&str>,
    metadata: &Metadata,
) -> Result<Option<(String, [u8; 32])>, ApiError> {
    let Some((base, sha)) = base_in(metadata)? else {
        return Ok(None);
    };
    if app.uploads.store().delta().is_none() {
        return Err(ApiError::DeltaRefused(Refusal::Unsupported));
    }
    let Some(name) = published_name(&base) else {
        return Err(ApiError::DeltaRefused(Refusal::BaseMissing(base)));
    };
    let store = app.uploads.store().clone();
    let (sub, n) = (subdir.map(str::to_string), name.to_string());
    let index = blocking(move || {
        store
            .delta()
            .expect("checked above")
            .index(sub.as_deref(), &n)
    })
    .await?;
    let Some(index) = index else {
        return Err(ApiError::DeltaRefused(Refusal::BaseMissing(base)));
    };
    let index = crate::delta::Index::decode(&index)
        .map_err(|e| ApiError::Internal(format!("the stored index of {base:?}: {e}")))?;
    if index.sha256 != sha {
        return Err(ApiError::DeltaRefused(Refusal::BaseChanged(base)));
    }
    Ok(Some((base, sha)))
}

/// The `delta-base` and `delta-base-sha256` metadata, both or neither.
pub(crate) fn base_in(metadata: &Metadata) -> Result<Option<(String, [u8; 32])>, ApiError> {
    let base = metadata.0.get(meta::DELTA_BASE);
    let sha = metadata.0.get(meta::DELTA_BASE_SHA256);
    match (base, sha) {
        (None, None) => Ok(None),
        (Some(base), Some(sha)) => {
            let base = String::from_utf8(base.clone())
                .map_err(|_| ApiError::BadRequest("metadata delta-base is not UTF-8".into()))?;
            let sha = std::str::from_utf8(sha)
                .ok()
                .and_then(crate::protocol::parse_hex_sha256)
                .ok_or_else(|| {
                    ApiError::BadRequest("metadata delta-base-sha256 is not 64 hex digits".into())
                })?;
            Ok(Some((base, sha)))
        }
        _ => Err(ApiError::BadRequest(
            "a delta upload names its base with both delta-base and delta-base-sha256, e.g. \
             delta-base UkMxLmlzbw==,delta-base-sha256 <base64 of 64 hex digits>"
                .into(),
        )),
    }
}

/// Builds and publishes a complete recipe upload; the name it was published as and the new
/// file's SHA-256. A refusal is returned for the caller to remove the upload.
pub(crate) async fn assemble_and_publish(
    app: &App,
    id: &Id,
    subdir: Option<String>,
    base: (String, [u8; 32]),
    wanted: String,
) -> Result<(String, Assembled), ApiError> {
    // Checked at creation; an info file is not trusted to name a path.
    if published_name(&base.0).is_none() {
        return Err(ApiError::DeltaRefused(Refusal::BaseMissing(base.0)));
    }
    let store = app.uploads.store().clone();
    let (assemble_id, assemble_sub) = (id.clone(), subdir.clone());
    let assembled = blocking(move || {
        let Some(delta) = store.delta() else {
            return Ok(Err(Refusal::Unsupported));
        };
        delta.assemble(&assemble_id, assemble_sub.as_deref(), &base.0, &base.1)
    })
    .await?
    .map_err(ApiError::DeltaRefused)?;
    let store = app.uploads.store().clone();
    let publish_id = id.clone();
    let name = blocking(move || {
        let delta = store.delta().expect("it assembled");
        delta.publish_assembled(
            &publish_id,
            subdir.as_deref(),
            &wanted,
            assembled.len,
            &assembled.sha256,
        )
    })
    .await?;
    Ok((name, assembled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_published_names_can_be_bases() {
        assert_eq!(published_name("RC1.iso"), Some("RC1.iso"));
        for bad in [
            "../etc/passwd",
            ".upload-index",
            ".partial",
            "a/b",
            "",
            " x",
        ] {
            assert_eq!(published_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_base_metadata_comes_in_pairs() {
        let mut md = Metadata::default();
        assert!(base_in(&md).unwrap().is_none());
        md.insert(meta::DELTA_BASE, b"RC1.iso".to_vec());
        assert!(base_in(&md).is_err());
        md.insert(meta::DELTA_BASE_SHA256, hex::encode([5u8; 32]).into_bytes());
        assert_eq!(base_in(&md).unwrap(), Some(("RC1.iso".into(), [5; 32])));
    }
}
