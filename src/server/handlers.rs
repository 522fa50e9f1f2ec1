//! The tus routes: `/files/` (creation) and `/files/{id}` (core: HEAD, PATCH; termination:
//! DELETE), OPTIONS on both, and what every request passes first (method override, version,
//! token, which decides who the [`Caller`] is).
//!
//! Routes take any method and dispatch on the effective one themselves, because
//! `X-HTTP-Method-Override` must be applied before routing and axum's layers run after it.
//! Each request runs in its own task: hyper drops a handler's future when its connection dies,
//! and a PATCH must always get to commit or discard what it wrote.

use super::app::App;
use super::append::{self, BodyHeaders, Published, append, complete, settle};
use super::error::ApiError;
use super::names::Id;
use super::receiving::Receipt;
use super::store::{Capabilities, Info, State, TokenDir, now_ms};
use super::uploads::{Upload, blocking};
use crate::protocol::{self, Algorithm, Checksum, Metadata, ext};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use std::sync::Arc;

/// `Upload-Metadata` longer than this is refused (431): metadata is names and hashes, and what
/// is stored per upload stays small.
pub(crate) const MAX_METADATA_BYTES: usize = 4096;

const CREATION_ALLOW: &str = "OPTIONS, POST";
const UPLOAD_ALLOW: &str = "OPTIONS, HEAD, PATCH, DELETE";
/// For a store without termination.
const UPLOAD_ALLOW_KEPT: &str = "OPTIONS, HEAD, PATCH";

/// What `Tus-Extension` advertises: what the handlers below implement over any store, and of
/// the extensions that depend on the store those it supports (see [`Capabilities`]).
fn extensions(store: Capabilities, delta: bool) -> String {
    [
        (ext::CREATION, true),
        (ext::CREATION_WITH_UPLOAD, true),
        (ext::CREATION_DEFER_LENGTH, store.defer_length),
        (ext::CHECKSUM, true),
        (ext::TERMINATION, store.termination),
        (ext::EXPIRATION, store.expiration),
        (ext::DELTA, delta),
    ]
    .into_iter()
    .filter_map(|(name, supported)| supported.then_some(name))
    .collect::<Vec<_>>()
    .join(",")
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/files", any(creation_route))
        .route("/files/", any(creation_route))
        .route("/files/{id}", any(upload_route))
        .route("/files/index/{name}", any(index_route))
        .fallback(|| async { ApiError::NotFound })
        // Bodies are streamed to disk, never collected; the size limit is the upload's length.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(tus_resumable))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            super::cors::layer,
        ))
        .with_state(app)
}

async fn tus_resumable(mut response: Response) -> Response {
    response.headers_mut().insert(
        protocol::TUS_RESUMABLE,
        HeaderValue::from_static(protocol::TUS_VERSION),
    );
    response
}

#[derive(Debug)]
enum Target {
    Creation,
    /// The path segment as sent; checked only after the token.
    Upload(String),
    /// The index of a published file, by name (see `delta`).
    Index(String),
}

async fn creation_route(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: Request,
) -> Response {
    spawn(app, Target::Creation, req).await
}

async fn upload_route(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    spawn(app, Target::Upload(id), req).await
}

async fn index_route(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    spawn(app, Target::Index(name), req).await
}

async fn spawn(app: Arc<App>, target: Target, req: Request) -> Response {
    match tokio::spawn(handle(app, target, req)).await {
        Ok(result) => result.into_response(),
        Err(e) => ApiError::Internal(format!("request task failed: {e}")).into_response(),
    }
}

/// Who sent a request, as far as the server cares.
#[derive(Debug, Clone, Copy)]
struct Caller<'a> {
    /// The token's name, recorded as the owner of what it creates; `None` without auth.
    name: Option<&'a str>,
    /// Whose bodies count against one cap: the token's index (everyone is 0 without auth).
    group: usize,
    /// The only owner whose uploads this caller can see: its own name, unless uploads are
    /// shared (`Config::shared_uploads`) or there is no auth.
    scope: Option<&'a str>,
    /// With per-token directories: the directory (in `DIR`) this caller's uploads go to.
    publishes_in: Option<&'a str>,
}

impl<'a> Caller<'a> {
    /// Checks the token, if the server has any.
    fn of(app: &'a App, headers: &HeaderMap) -> Result<Caller<'a>, ApiError> {
        let Some(tokens) = &app.tokens else {
            return Ok(Caller {
                name: None,
                group: 0,
                scope: None,
                publishes_in: None,
            });
        };
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let index = tokens.find(authorization).ok_or(ApiError::Unauthorized)?;
        let name = tokens.name(index);
        Ok(Caller {
            name: Some(name),
            group: index,
            scope: (!app.config.shared_uploads).then_some(name),
            publishes_in: app.config.per_token_dirs.then_some(name),
        })
    }

    /// Refuses (409, see [`ApiError::TokenDir`]) a request that would receive or publish for a
    /// token whose directory is taken by something else, before anything is read or written.
    async fn check_dir(&self, app: &App) -> Result<(), ApiError> {
        let Some(name) = self.publishes_in else {
            return Ok(());
        };
        token_dir_usable(app, name).await
    }

    /// Counts a body against the cap, or refuses it (429) before it is read.
    fn start_body(&self, app: &App) -> Result<Receipt, ApiError> {
        app.receiving
            .start(self.group)
            .ok_or(ApiError::TooManyUploads {
                max: app.receiving.max(),
            })
    }
}

/// Whether `DIR/<name>` is a directory or absent (see [`ApiError::TokenDir`]).
pub(crate) async fn token_dir_usable(app: &App, name: &str) -> Result<(), ApiError> {
    let store = app.uploads.store().clone();
    let dir_name = name.to_string();
    match blocking(move || store.token_dir(&dir_name)).await? {
        TokenDir::Absent | TokenDir::Directory => Ok(()),
        TokenDir::Unusable(what) => {
            tracing::error!(
                token = name,
                what,
                "the token's directory is not a directory: its uploads are refused"
            );
            Err(ApiError::TokenDir {
                name: name.to_string(),
                what,
            })
        }
    }
}

async fn handle(app: Arc<App>, target: Target, req: Request) -> Result<Response, ApiError> {
    let method = effective_method(&req)?;
    if method == Method::OPTIONS {
        return Ok(options(&app));
    }
    check_version(req.headers())?;
    let caller = Caller::of(&app, req.headers())?;
    let upload = |raw: &str| Id::parse(raw).ok_or(ApiError::NotFound);
    if matches!(method, Method::POST | Method::HEAD | Method::PATCH) {
        caller.check_dir(&app).await?;
    }
    match (target, method) {
        (Target::Creation, Method::POST) => create(&app, caller, req).await,
        (Target::Creation, _) => Err(ApiError::MethodNotAllowed {
            allow: CREATION_ALLOW,
        }),
        (Target::Upload(id), Method::HEAD) => head(&app, caller, &upload(&id)?).await,
        (Target::Upload(id), Method::PATCH) => patch(&app, caller, &upload(&id)?, req).await,
        (Target::Index(name), Method::GET) => {
            caller.check_dir(&app).await?;
            super::delta::serve_index(&app, caller.publishes_in, &name).await
        }
        (Target::Index(_), _) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (Target::Upload(id), Method::DELETE) if app.capabilities.termination => {
            delete(&app, caller, &upload(&id)?).await
        }
        (Target::Upload(_), _) => Err(ApiError::MethodNotAllowed {
            allow: if app.capabilities.termination {
                UPLOAD_ALLOW
            } else {
                UPLOAD_ALLOW_KEPT
            },
        }),
    }
}

/// `X-HTTP-Method-Override` on a POST, for clients behind proxies that only pass GET and POST.
fn effective_method(req: &Request) -> Result<Method, ApiError> {
    match req.headers().get(protocol::METHOD_OVERRIDE) {
        Some(value) if req.method() == Method::POST => Method::from_bytes(value.as_bytes())
            .map_err(|_| ApiError::BadRequest("X-HTTP-Method-Override is not a method".into())),
        _ => Ok(req.method().clone()),
    }
}

fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(protocol::TUS_RESUMABLE) {
        Some(v) if v == protocol::TUS_VERSION => Ok(()),
        _ => Err(ApiError::Version),
    }
}

/// A header as text; `None` when absent. Non-ASCII is a 400: no tus header has any.
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("{name} is not ASCII text")))
        })
        .transpose()
}

fn body_headers(headers: &HeaderMap) -> Result<BodyHeaders, ApiError> {
    Ok(BodyHeaders {
        checksum: text(headers, protocol::UPLOAD_CHECKSUM)?
            .map(Checksum::parse)
            .transpose()?,
        repr_digest: text(headers, protocol::REPR_DIGEST)?
            .map(protocol::parse_repr_digest)
            .transpose()?,
        content_length: text(headers, header::CONTENT_LENGTH.as_str())?
            .map(|v| protocol::parse_u64("Content-Length", v))
            .transpose()?,
    })
}

fn has_upload_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == protocol::OFFSET_OCTET_STREAM)
}

fn options(app: &App) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        protocol::TUS_VERSION_HEADER,
        HeaderValue::from_static(protocol::TUS_VERSION),
    );
    set(
        h,
        protocol::TUS_EXTENSION,
        &extensions(app.capabilities, app.uploads.store().delta().is_some()),
    );
    set(
        h,
        protocol::TUS_CHECKSUM_ALGORITHM,
        &Algorithm::header_value(),
    );
    h.insert(protocol::TUS_MAX_SIZE, HeaderValue::from(app.max_size));
    response
}

/// creation, creation-defer-length, creation-with-upload.
async fn create(app: &App, caller: Caller<'_>, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers();
    let length = match (
        text(headers, protocol::UPLOAD_LENGTH)?,
        text(headers, protocol::UPLOAD_DEFER_LENGTH)?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "send Upload-Length or Upload-Defer-Length, not both".into(),
            ));
        }
        (Some(length), None) => Some(protocol::parse_length(length)?),
        (None, Some(defer)) => {
            protocol::parse_defer_length(defer)?;
            if !app.capabilities.defer_length {
                return Err(ApiError::BadRequest(
                    "this server needs Upload-Length at creation (no creation-defer-length)".into(),
                ));
            }
            None
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "Upload-Length or Upload-Defer-Length: 1 is required".into(),
            ));
        }
    };
    if let Some(length) = length
        && length > app.max_size
    {
        return Err(too_large_for(app, length));
    }
    let metadata = text(headers, protocol::UPLOAD_METADATA)?.unwrap_or_default();
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(ApiError::MetadataTooLarge {
            max: MAX_METADATA_BYTES,
        });
    }
    let parsed = Metadata::parse(metadata)?;
    let expected_sha256 = match parsed.0.get(protocol::meta::SHA256) {
        None => None,
        Some(value) => {
            let value = std::str::from_utf8(value).ok();
            let sha = value.and_then(protocol::parse_hex_sha256).ok_or_else(|| {
                ApiError::BadRequest("metadata sha256 is not 64 hex digits".into())
            })?;
            Some(hex::encode(sha))
        }
    };
    // A delta recipe's base is checked now: a client sends the whole file instead, before
    // sending a byte of a recipe that cannot be used.
    super::delta::base_of_creation(app, caller.publishes_in, &parsed).await?;
    let with_body = has_upload_body(headers);
    let body_headers = body_headers(headers)?;
    if let (Some(declared), Some(digest)) = (&expected_sha256, &body_headers.repr_digest)
        && *declared != hex::encode(digest)
    {
        return Err(ApiError::BadRequest(format!(
            "Repr-Digest declares SHA-256 {}, metadata sha256 {declared}; a file cannot match \
             both",
            hex::encode(digest)
        )));
    }
    // Refused before the upload exists: the client retries the whole POST later.
    let _receipt = with_body.then(|| caller.start_body(app)).transpose()?;

    let id = Id::random();
    let now = now_ms();
    let info = Info {
        id: id.to_string(),
        length,
        offset: 0,
        metadata: metadata.to_string(),
        expected_sha256,
        owner: caller.name.map(str::to_string),
        running_sha256: None,
        created_ms: now,
        last_activity_ms: now,
        state: State::Partial,
    };
    let store = app.uploads.store().clone();
    let (create_id, create_info) = (id.clone(), info.clone());
    let mut held = app
        .uploads
        .insert(Upload {
            id: id.clone(),
            info,
            sha: Some(super::running_sha::RunningSha::new()),
        })
        .await?;
    if let Err(e) = blocking(move || store.create(&create_info, &create_id)).await {
        app.uploads.remove(&mut held, &id).await?;
        return Err(e);
    }
    tracing::info!(%id, ?length, metadata = %metadata, "created");

    let published = if with_body {
        match append(app, &mut held, req.into_body(), body_headers).await {
            Ok(published) => published,
            // The upload exists either way; the client learns the offset and resumes.
            Err(e) if e.rejects_body_only() => {
                tracing::info!(%id, error = %e, "creation body not kept whole");
                None
            }
            Err(e) => return Err(e),
        }
    } else if length == Some(0) {
        if let Some(digest) = &body_headers.repr_digest {
            append::declare_digest(app, held.upload(), digest).await?;
        }
        Some(complete(app, &mut held).await?)
    } else {
        None
    };

    let upload = held.upload();
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    let location = match &app.config.public_url {
        Some(base) => format!("{base}{id}"),
        None => format!("/files/{id}"),
    };
    set(h, header::LOCATION.as_str(), &location);
    h.insert(
        protocol::UPLOAD_OFFSET,
        HeaderValue::from(upload.info.offset),
    );
    expires(app, h, &upload.info);
    if let Some(published) = published {
        set_published(h, &published);
    }
    Ok(response)
}

/// core: HEAD.
async fn head(app: &App, caller: Caller<'_>, id: &Id) -> Result<Response, ApiError> {
    let mut held = app.uploads.acquire(id, caller.scope).await?;
    settle(app, &mut held).await?;
    let upload = held.upload();
    if let Some((declared, received)) = upload.is_failed() {
        return Err(gone(declared, received));
    }
    if let Some(why) = upload.refusal() {
        return Err(ApiError::DeltaRefused(why));
    }
    let info = &upload.info;
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(protocol::UPLOAD_OFFSET, HeaderValue::from(info.offset));
    match info.length {
        Some(length) => h.insert(protocol::UPLOAD_LENGTH, HeaderValue::from(length)),
        None => h.insert(protocol::UPLOAD_DEFER_LENGTH, HeaderValue::from_static("1")),
    };
    if !info.metadata.is_empty() {
        set(h, protocol::UPLOAD_METADATA, &info.metadata);
    }
    match Published::of(info) {
        Some(published) => set_published(h, &published),
        None => expires(app, h, info),
    }
    Ok(response)
}

/// core: PATCH, with checksum and the deferred length.
async fn patch(app: &App, caller: Caller<'_>, id: &Id, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers();
    if !has_upload_body(headers) {
        return Err(ApiError::ContentType);
    }
    let offset = text(headers, protocol::UPLOAD_OFFSET)?
        .ok_or_else(|| ApiError::BadRequest("Upload-Offset is required".into()))
        .and_then(|v| Ok(protocol::parse_offset(v)?))?;
    let new_length = text(headers, protocol::UPLOAD_LENGTH)?
        .map(protocol::parse_length)
        .transpose()?;
    let body_headers = body_headers(headers)?;

    let mut held = app.uploads.acquire(id, caller.scope).await?;
    settle(app, &mut held).await?;
    let upload = held.upload();
    if let Some((declared, received)) = upload.is_failed() {
        return Err(gone(declared, received));
    }
    if let Some(why) = upload.refusal() {
        return Err(ApiError::DeltaRefused(why));
    }
    if offset != upload.info.offset {
        return Err(ApiError::OffsetMismatch {
            sent: offset,
            offset: upload.info.offset,
        });
    }
    if let Some(published) = Published::of(&upload.info) {
        // A repeat of the last PATCH (its response was lost): nothing to add.
        if body_headers.content_length.unwrap_or(0) > 0 {
            return Err(ApiError::TooLarge("the upload is complete".into()));
        }
        return Ok(patched(app, &upload.info, Some(published)));
    }
    if let Some(length) = new_length {
        declare_length(app, upload, length).await?;
    }

    // Counted only now that this request has the upload: a stalled earlier PATCH of the same
    // upload, taken over above, has given its place back (declared after `held`, the receipt
    // is dropped before the upload is let go).
    let _receipt = caller.start_body(app)?;
    let published = append(app, &mut held, req.into_body(), body_headers).await?;
    Ok(patched(app, &held.upload().info, published))
}

/// creation-defer-length: the length arrives on a PATCH, once.
async fn declare_length(app: &App, upload: &mut Upload, length: u64) -> Result<(), ApiError> {
    match upload.info.length {
        Some(known) if known == length => return Ok(()),
        Some(known) => {
            return Err(ApiError::BadRequest(format!(
                "Upload-Length is already {known} and cannot change"
            )));
        }
        None => {}
    }
    if length < upload.info.offset {
        return Err(ApiError::BadRequest(format!(
            "Upload-Length {length} is less than the {} bytes already received",
            upload.info.offset
        )));
    }
    if length > app.max_size {
        return Err(too_large_for(app, length));
    }
    upload.info.length = Some(length);
    append::save(app, &upload.id, &upload.info).await
}

fn too_large_for(app: &App, length: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "Upload-Length {length} is over this server's maximum of {} bytes ({})",
        app.max_size,
        if app.config.max_size.is_some() {
            "its --max-size"
        } else {
            "what its disk had free at start-up, less 5 %"
        }
    ))
}

fn patched(app: &App, info: &Info, published: Option<Published>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(protocol::UPLOAD_OFFSET, HeaderValue::from(info.offset));
    expires(app, h, info);
    if let Some(published) = published {
        set_published(h, &published);
    }
    response
}

/// termination. A published file stays: it belongs to `DIR` now; only the record goes.
async fn delete(app: &App, caller: Caller<'_>, id: &Id) -> Result<Response, ApiError> {
    let mut held = app.uploads.acquire(id, caller.scope).await?;
    app.uploads.remove(&mut held, id).await?;
    tracing::info!(%id, "terminated");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn gone(declared: &str, received: &str) -> ApiError {
    ApiError::Gone(format!(
        "whole-file SHA-256 mismatch: declared {declared}, received {received}; nothing was published"
    ))
}

/// `Upload-Expires`, when uploads expire (see [`Capabilities::expiration`]).
fn expires(app: &App, h: &mut HeaderMap, info: &Info) {
    if !app.capabilities.expiration {
        return;
    }
    let at = info.expires_at(app.config.expire_after);
    set(h, protocol::UPLOAD_EXPIRES, &httpdate::fmt_http_date(at));
}

fn set_published(h: &mut HeaderMap, published: &Published) {
    set(
        h,
        protocol::UPLOAD_PUBLISHED_AS,
        &protocol::encode_header_text(&published.name),
    );
    set(
        h,
        protocol::REPR_DIGEST,
        &protocol::format_repr_digest(&published.sha256),
    );
}

/// Inserts a header value made of printable ASCII (everything above builds only those).
fn set(h: &mut HeaderMap, name: &str, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
                value,
            );
        }
        Err(_) => tracing::error!(name, value, "not a valid header value; left out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tus_extension_names_only_what_the_store_supports() {
        let all = Capabilities {
            defer_length: true,
            termination: true,
            expiration: true,
        };
        assert_eq!(
            extensions(all, false),
            "creation,creation-with-upload,creation-defer-length,checksum,termination,expiration"
        );
        assert_eq!(
            extensions(all, true),
            "creation,creation-with-upload,creation-defer-length,checksum,termination,expiration,\
             delta"
        );
        let kept = Capabilities {
            termination: false,
            expiration: false,
            ..all
        };
        assert_eq!(
            extensions(kept, false),
            "creation,creation-with-upload,creation-defer-length,checksum"
        );
        let fixed_length = Capabilities {
            defer_length: false,
            ..all
        };
        assert_eq!(
            extensions(fixed_length, false),
            "creation,creation-with-upload,checksum,termination,expiration"
        );
    }
}
