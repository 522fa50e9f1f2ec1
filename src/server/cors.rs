//! Cross-origin access for browser tus clients (tus-js-client in a web page): which origins may
//! call the server, and the `Access-Control-*` headers that tell the browser so.
//!
//! Off by default: a page from another origin gets no CORS headers and the browser keeps the
//! response from it. With origins configured, every response to an allowed `Origin` carries
//! `Access-Control-Allow-Origin` and exposes the tus headers (a browser hides every response
//! header not listed, and tus-js-client cannot resume without `Upload-Offset` and `Location`);
//! a preflight (OPTIONS with `Access-Control-Request-Method`) also lists the methods and request
//! headers tus uses. Tokens travel in `Authorization`, not cookies, so credentials are never
//! allowed and `*` is safe to answer.

use super::app::App;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// Which origins may call the server from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers at all (the default).
    #[default]
    Off,
    /// Any origin (`*`).
    Any,
    /// Exactly these origins (`scheme://host[:port]`, lowercase scheme and host).
    Origins(Vec<String>),
}

/// Why a `--cors-origin` value was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "CORS origin \"{0}\" is not * or scheme://host[:port] without a path, \
     e.g. https://uploads.example.org or http://localhost:5173"
)]
pub struct BadOrigin(String);

impl Cors {
    /// From the `--cors-origin` values: none is off, `*` anywhere is any origin.
    pub fn from_origins<S: AsRef<str>>(values: &[S]) -> Result<Cors, BadOrigin> {
        if values.is_empty() {
            return Ok(Cors::Off);
        }
        if values.iter().any(|v| v.as_ref() == "*") {
            return Ok(Cors::Any);
        }
        let mut origins = Vec::with_capacity(values.len());
        for v in values {
            origins.push(normalize(v.as_ref()).ok_or_else(|| BadOrigin(v.as_ref().into()))?);
        }
        Ok(Cors::Origins(origins))
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match self {
            Cors::Off => None,
            Cors::Any => Some(HeaderValue::from_static("*")),
            Cors::Origins(list) => {
                let asked = normalize(origin.to_str().ok()?)?;
                list.contains(&asked).then(|| origin.clone())
            }
        }
    }
}

/// `scheme://host[:port]` with scheme and host lowercased (browsers send them so; a config
/// may not); `None` for anything else, paths and trailing slashes included.
fn normalize(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let valid_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let valid_authority = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    (valid_scheme && valid_authority).then(|| origin.to_ascii_lowercase())
}

/// What a page may send: every request header of tus 1.0 and its extensions, ours included.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Origin, X-Requested-With, \
    X-Request-ID, X-HTTP-Method-Override, Tus-Resumable, Upload-Length, Upload-Offset, \
    Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Checksum, Repr-Digest";

/// Every method the routes answer, and POST for the method override.
const ALLOW_METHODS: &str = "POST, HEAD, PATCH, DELETE, OPTIONS";

/// What a page may read: every response header the server sends that a client acts on.
const EXPOSE_HEADERS: &str = "Location, Upload-Offset, Upload-Length, Upload-Metadata, \
    Upload-Defer-Length, Upload-Expires, Upload-Published-As, Repr-Digest, Tus-Resumable, \
    Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, Retry-After";

/// Preflights are cached by the browser for this long (seconds), so a chunked upload does
/// not pay one OPTIONS round trip per PATCH.
const MAX_AGE: &str = "86400";

/// The middleware: decorates responses to allowed origins. Disallowed origins get the same
/// response without CORS headers, which the browser then withholds from the page.
pub(crate) async fn layer(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = next.run(req).await;
    let cors = &app.config.cors;
    if *cors != Cors::Off {
        // The answer differs by Origin, so caches must keep one per origin.
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if let Some(allow) = cors.allow(origin.as_ref()) {
        decorate(response.headers_mut(), allow, preflight);
    }
    response
}

fn decorate(h: &mut HeaderMap, allow: HeaderValue, preflight: bool) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn origins_are_parsed_and_matched_exactly() {
        assert_eq!(Cors::from_origins::<&str>(&[]).unwrap(), Cors::Off);
        assert_eq!(
            Cors::from_origins(&["https://a.example", "*"]).unwrap(),
            Cors::Any
        );
        let cors =
            Cors::from_origins(&["HTTPS://Uploads.Example.org", "http://localhost:5173"]).unwrap();
        assert_eq!(
            cors.allow(Some(&hv("https://uploads.example.org"))),
            Some(hv("https://uploads.example.org"))
        );
        assert_eq!(
            cors.allow(Some(&hv("http://localhost:5173"))),
            Some(hv("http://localhost:5173"))
        );
        // Another port, scheme or host is another origin.
        for other in [
            "http://localhost:5174",
            "http://uploads.example.org",
            "https://evil.example.org",
            "https://uploads.example.org.evil.example",
            "null",
        ] {
            assert_eq!(cors.allow(Some(&hv(other))), None, "{other}");
        }
        assert_eq!(cors.allow(None), None);
        assert_eq!(Cors::Any.allow(Some(&hv("null"))), Some(hv("*")));
        assert_eq!(Cors::Off.allow(Some(&hv("https://a.example"))), None);
    }

    #[test]
    fn bad_origins_say_what_is_expected() {
        for bad in [
            "uploads.example.org",
            "https://uploads.example.org/",
            "https://a.example/path",
            "https://",
            "://host",
        ] {
            let e = Cors::from_origins(&[bad]).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("e.g. https://"), "{e}");
        }
    }

    #[test]
    fn every_tus_header_is_allowed_and_exposed() {
        for name in [
            protocol::TUS_RESUMABLE,
            protocol::UPLOAD_LENGTH,
            protocol::UPLOAD_OFFSET,
            protocol::UPLOAD_METADATA,
            protocol::UPLOAD_DEFER_LENGTH,
            protocol::UPLOAD_CHECKSUM,
            protocol::REPR_DIGEST,
            protocol::METHOD_OVERRIDE,
        ] {
            assert!(ALLOW_HEADERS.to_ascii_lowercase().contains(name), "{name}");
        }
        for name in [
            protocol::UPLOAD_OFFSET,
            protocol::UPLOAD_LENGTH,
            protocol::UPLOAD_EXPIRES,
            protocol::UPLOAD_PUBLISHED_AS,
            protocol::REPR_DIGEST,
            protocol::TUS_VERSION_HEADER,
            protocol::TUS_EXTENSION,
            protocol::TUS_MAX_SIZE,
            protocol::TUS_CHECKSUM_ALGORITHM,
            "location",
            "retry-after",
        ] {
            assert!(EXPOSE_HEADERS.to_ascii_lowercase().contains(name), "{name}");
        }
    }
}
