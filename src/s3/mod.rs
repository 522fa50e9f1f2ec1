//! S3-compatible object storage, as far as `upload` needs it: `s3://BUCKET/KEY` URLs, where
//! the endpoint, region and credentials come from, SigV4 signing ([`sigv4`]), and
//! [`S3Client`], the requests (multipart upload, ListParts, HeadObject, ...) over the same owned
//! HTTP/1.1 connection as tus ([`crate::client::TusClient`]), so an S3 part keeps what a tus
//! chunk has: a short unsent queue (`TCP_NOTSENT_LOWAT`) and the TCP_INFO stall probe.
//!
//! Why no S3 crate: measured for issue 16, object_store 0.14 has multipart upload but no
//! ListParts (resuming would rest on our own records only, never on what the bucket holds);
//! aws-sdk-s3 has everything at three times the dependencies and build time, and its own HTTP
//! stack (no socket of ours to tune or probe); rusty-s3 0.11 signs requests for our own
//! client, but only as presigned query strings (moto's authentication, the S3 the tests run,
//! reads only the `Authorization` header), and its ListParts answer drops the parts'
//! `ChecksumSHA256`, the very field resuming checks. What is left is small and ours: SigV4
//! in the header (`sigv4`, checked against botocore's signature), and a flat scan of the few
//! XML answers (`xml`).
//!
//! Where things come from, as the AWS tools do it: credentials from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, else the profile (`AWS_PROFILE`, else
//! `default`) in `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`); the region from
//! `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile in `~/.aws/config` (`AWS_CONFIG_FILE`),
//! else `us-east-1`; the endpoint from `--endpoint` (kept in the URL as `?endpoint=`, so a
//! queued transfer remembers it), `AWS_ENDPOINT_URL`, else AWS's own. A given endpoint (MinIO,
//! Ceph, Garage, moto) is addressed path-style (`http://host:9000/BUCKET/KEY`), which they all
//! serve; AWS itself gets virtual-host style (`https://BUCKET.s3.REGION.amazonaws.com/KEY`).

pub mod sigv4;
pub mod xml;

use crate::client::{ClientError, LinkProbe, ReqBody, TusClient, host_header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sigv4::Credentials;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// How long a request other than a part's body may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// S3's own limits for multipart uploads.
pub const MIN_PART: u64 = 5 * 1024 * 1024;
pub const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
pub const MAX_PARTS: u64 = 10_000;
/// The largest object S3 takes (5 TiB).
pub const MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;

/// Why an S3 destination cannot even be tried: retrying cannot help, the user must fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid S3 URL \"{url}\": {why}; expected e.g. s3://my-bucket/images/debian.iso or \
         s3://my-bucket/images/ (the file's name is added), with --endpoint \
         http://127.0.0.1:9000 for an S3-compatible store"
    )]
    BadUrl { url: String, why: String },
    #[error(
        "no AWS credentials for s3:// (profile {profile}): set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or write them to \
         ~/.aws/credentials, e.g.\n  [{profile}]\n  aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n  \
         aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    )]
    NoCredentials { profile: String },
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS set-up for the S3 endpoint: {0}")]
    Tls(crate::tls::TlsError),
}

/// `s3://BUCKET/KEY[?endpoint=URL]`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Url {
    pub bucket: String,
    /// The object key, or a prefix ending in `/` (or empty) to which a name is added.
    pub key: String,
    pub endpoint: Option<Url>,
    /// Other query pairs (an upload URL's `uploadId`, `partSize`).
    pub query: HashMap<String, String>,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url, ConfigError> {
        let bad = |why: &str| ConfigError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if parsed.scheme() != "s3" {
            return Err(bad("not an s3:// URL"));
        }
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("no bucket"))?
            .to_string();
        // Bucket names: 3-63 of lowercase letters, digits, dots and hyphens.
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(bad(
                "a bucket name has 3 to 63 lowercase letters, digits, dots and hyphens",
            ));
        }
        let raw_path = parsed.path().trim_start_matches('/');
        let key = percent_encoding::percent_decode_str(raw_path)
            .decode_utf8()
            .map_err(|_| bad("the key is not UTF-8"))?
            .into_owned();
        let mut endpoint = None;
        let mut query = HashMap::new();
        for (k, v) in parsed.query_pairs() {
            if k == "endpoint" {
                endpoint = Some(parse_endpoint(&v).map_err(|why| bad(&why))?);
            } else {
                query.insert(k.into_owned(), v.into_owned());
            }
        }
        Ok(S3Url {
            bucket,
            key,
            endpoint,
            query,
        })
    }

    /// The key an upload named `name` gets: the key itself, or the prefix plus the name.
    pub fn key_for(&self, name: &str) -> String {
        if self.key.is_empty() || self.key.ends_with('/') {
            format!("{}{name}", self.key)
        } else {
            self.key.clone()
        }
    }
}

/// An `--endpoint` value: an http(s) URL with a host.
pub fn parse_endpoint(s: &str) -> Result<Url, String> {
    let u = Url::parse(s).map_err(|e| format!("the endpoint \"{s}\": {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!(
            "the endpoint \"{s}\" is not an http(s) URL, e.g. http://127.0.0.1:9000"
        ));
    }
    Ok(u)
}

/// `url` with `--endpoint` folded in, so the transfer's URL says where it goes.
pub fn with_endpoint(url: &str, endpoint: &str) -> Result<String, ConfigError> {
    let mut u = Url::parse(url).map_err(|e| ConfigError::BadUrl {
        url: url.to_string(),
        why: e.to_string(),
    })?;
    let ep = parse_endpoint(endpoint).map_err(|why| ConfigError::BadUrl {
        url: url.to_string(),
        why,
    })?;
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "endpoint")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        q.append_pair("endpoint", ep.as_str().trim_end_matches('/'));
    }
    Ok(u.to_string())
}

/// Where requests go and who signs them, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The service's base URL (AWS's regional one, or the given endpoint).
    pub endpoint: Url,
    pub path_style: bool,
    pub region: String,
    pub credentials: Credentials,
}

impl Settings {
    /// From the process' environment and the AWS files under `$HOME`.
    pub fn from_env(endpoint: Option<&Url>) -> Result<Settings, ConfigError> {
        Settings::resolve(endpoint, &|k| {
            std::env::var(k).ok().filter(|v| !v.is_empty())
        })
    }

    /// From `env` (a variable's value) and the files it points to.
    pub fn resolve(
        endpoint: Option<&Url>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let home = env("HOME").map(PathBuf::from);
        let file = |var: &str, rel: &str| {
            env(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(rel)))
        };
        let read = |path: Option<PathBuf>| -> Result<Ini, ConfigError> {
            match path {
                None => Ok(Ini::default()),
                Some(p) => match std::fs::read_to_string(&p) {
                    Ok(text) => Ok(Ini::parse(&text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ini::default()),
                    Err(source) => Err(ConfigError::Unreadable { path: p, source }),
                },
            }
        };
        let credentials_file = read(file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"))?;
        let config_file = read(file("AWS_CONFIG_FILE", ".aws/config"))?;
        let config_section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        let from_files = |key: &str| {
            credentials_file
                .get(&profile, key)
                .or_else(|| config_file.get(&config_section, key))
        };
        let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN"),
            },
            _ => match (
                from_files("aws_access_key_id"),
                from_files("aws_secret_access_key"),
            ) {
                (Some(id), Some(secret)) => Credentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: from_files("aws_session_token"),
                },
                _ => return Err(ConfigError::NoCredentials { profile }),
            },
        };
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| config_file.get(&config_section, "region"))
            .unwrap_or_else(|| "us-east-1".into());
        let given = match endpoint {
            Some(e) => Some(e.clone()),
            None => match env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")) {
                Some(e) => Some(parse_endpoint(&e).map_err(|why| ConfigError::BadUrl {
                    url: e.clone(),
                    why,
                })?),
                None => None,
            },
        };
        let (endpoint, path_style) = match given {
            Some(e) => (e, true),
            None => (
                Url::parse(&format!("https://s3.{region}.amazonaws.com/")).map_err(|e| {
                    ConfigError::BadUrl {
                        url: region.clone(),
                        why: format!("the region makes no endpoint: {e}"),
                    }
                })?,
                false,
            ),
        };
        Ok(Settings {
            endpoint,
            path_style,
            region,
            credentials,
        })
    }
}

/// The AWS files' INI: `[section]`, `key = value`, `#` and `;` comments.
#[derive(Debug, Default)]
struct Ini(HashMap<(String, String), String>);

impl Ini {
    fn parse(text: &str) -> Ini {
        let mut map = HashMap::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.split_whitespace().collect::<Vec<_>>().join(" ");
            } else if let Some((k, v)) = line.split_once('=') {
                map.insert(
                    (section.clone(), k.trim().to_ascii_lowercase()),
                    v.trim().to_string(),
                );
            }
        }
        Ini(map)
    }

    fn get(&self, section: &str, key: &str) -> Option<String> {
        self.0
            .get(&(section.to_string(), key.to_string()))
            .filter(|v| !v.is_empty())
            .cloned()
    }
}

/// A part as ListParts lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedPart {
    pub number: u32,
    pub etag: String,
    pub size: u64,
    /// Base64 SHA-256 of the part, when the upload was created with that checksum.
    pub sha256: Option<String>,
}

/// An object as HeadObject describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectHead {
    pub size: u64,
    pub etag: String,
    /// `x-amz-checksum-sha256`: a part's plain SHA-256, or for a multipart object the
    /// SHA-256 of its parts' SHA-256s (base64, sometimes with `-N`, the part count).
    pub sha256: Option<String>,
    /// `x-amz-meta-sha256`: the whole object's SHA-256 (hex) as its writer recorded it (the
    /// tus server's store does, for its no-clobber check).
    pub meta_sha256: Option<String>,
}

/// What a write asks of the object already at its key, S3's conditional writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition<'a> {
    /// Write whatever is there.
    Any,
    /// Only if nothing is at the key (`If-None-Match: *`).
    Absent,
    /// Only if the object there has this ETag (`If-Match`).
    Matches(&'a str),
}

impl Condition<'_> {
    fn header(&self) -> Option<(&'static str, String)> {
        match self {
            Condition::Any => None,
            Condition::Absent => Some(("if-none-match", "*".to_string())),
            Condition::Matches(etag) => Some(("if-match", etag.to_string())),
        }
    }
}

/// A small object read whole (a record, a piece of an upload).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub body: Bytes,
    pub etag: String,
}

/// An object as ListObjectsV2 lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// ISO 8601, as S3 gives it.
    pub last_modified: String,
}

/// Did a conditional write lose? 412 (the condition), or 409 (AWS: a conditional write raced
/// another on the same key).
fn precondition_failed(e: &ClientError) -> bool {
    matches!(e, ClientError::ObjectStore { status, code, .. }
        if *status == StatusCode::PRECONDITION_FAILED
            || code == "PreconditionFailed"
            || code == "ConditionalRequestConflict")
}

/// A multipart upload not completed nor aborted.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: String,
}

/// The requests to one bucket, over one owned connection.
pub struct S3Client {
    settings: Settings,
    bucket: String,
    /// Scheme, host and port requests go to.
    base: Url,
    /// The path before the key: `/BUCKET` path-style (after the endpoint's own path), empty
    /// for virtual-host style.
    prefix: String,
    http: TusClient,
}

impl S3Client {
    /// A client for `bucket`; `ca` replaces the system's trust roots for https.
    pub fn new(
        settings: Settings,
        bucket: &str,
        ca: Option<&Path>,
    ) -> Result<S3Client, ConfigError> {
        let mut base = settings.endpoint.clone();
        let prefix = if settings.path_style {
            format!("{}/{bucket}", base.path().trim_end_matches('/'))
        } else {
            let host = format!("{bucket}.{}", base.host_str().unwrap_or_default());
            base.set_host(Some(&host))
                .map_err(|e| ConfigError::BadUrl {
                    url: format!("s3://{bucket}"),
                    why: format!("the bucket makes no host name: {e}"),
                })?;
            String::new()
        };
        base.set_path("/");
        base.set_query(None);
        let http = if base.scheme() == "https" || ca.is_some() {
            let tls = crate::tls::client_config(ca).map_err(ConfigError::Tls)?;
            TusClient::new(base.clone(), None).with_tls(tls)
        } else {
            TusClient::new(base.clone(), None)
        };
        Ok(S3Client {
            settings,
            bucket: bucket.to_string(),
            base,
            prefix,
            http,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The host requests go to, for link samples.
    pub fn host(&self) -> &str {
        self.base.host_str().unwrap_or_default()
    }

    pub fn probe(&self) -> LinkProbe {
        self.http.probe()
    }

    pub fn set_notsent_lowat(&mut self, bytes: u32) {
        self.http.set_notsent_lowat(bytes);
    }

    pub async fn connect(&mut self) -> Result<(), ClientError> {
        self.http.connect().await
    }

    pub fn disconnect(&mut self) {
        self.http.disconnect();
    }

    /// A request without a body (all of S3's but uploads and puts), with the usual timeout.
    async fn send_empty(
        &mut self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
    ) -> Result<Response<Incoming>, ClientError> {
        let req = self
            .request(method, key, query, headers)
            .body(TusClient::empty())
            .expect("valid request");
        self.send(req, Some(REQUEST_TIMEOUT)).await
    }

    /// A signed request for `key` (or the bucket itself) with `query` and the extra headers
    /// (lowercase names), all of them signed.
    fn request(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
    ) -> http::request::Builder {
        let path = match key {
            Some(k) => format!("{}/{}", self.prefix, sigv4::encode_path(k)),
            None if self.prefix.is_empty() => "/".to_string(),
            None => format!("{}/", self.prefix),
        };
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let extra: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let host = host_header(&self.base);
        let host = host.to_str().unwrap_or_default();
        let signed = sigv4::sign(
            &self.settings.credentials,
            &self.settings.region,
            method.as_str(),
            host,
            &path,
            &query,
            &extra,
            chrono::Utc::now(),
        );
        let q: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                // `?uploads` is sent bare, as S3 documents it; signed as `uploads=`.
                if v.is_empty() && k == "uploads" {
                    k.clone()
                } else {
                    format!(
                        "{}={}",
                        sigv4::encode_component(k),
                        sigv4::encode_component(v)
                    )
                }
            })
            .collect();
        // Origin-form, built as text: the path is encoded already, a URL setter would encode
        // it again.
        let mut target = path.clone();
        if !q.is_empty() {
            target = format!("{target}?{}", q.join("&"));
        }
        let mut b = Request::builder()
            .method(method)
            .uri(target)
            .header(http::header::HOST, host)
            .header(
                http::header::USER_AGENT,
                concat!("upload/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        for (k, v) in signed {
            b = b.header(k, v);
        }
        b
    }

    async fn send(
        &mut self,
        req: Request<ReqBody>,
        timeout: Option<Duration>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.http.send_request(req, timeout).await
    }

    /// A body of bytes in memory.
    pub fn full(body: impl Into<Bytes>) -> ReqBody {
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed()
    }

    /// CreateMultipartUpload with SHA-256 part checksums; the upload id.
    pub async fn create_multipart(&mut self, key: &str) -> Result<String, ClientError> {
        self.create_multipart_with(key, &[("x-amz-checksum-algorithm", "SHA256".into())])
            .await
    }

    /// UploadPart: `len` bytes from `body` as part `number`, with its SHA-256 (base64) for
    /// S3 to check before it keeps the part. The part's ETag.
    pub async fn upload_part(
        &mut self,
        key: &str,
        upload_id: &str,
        number: u32,
        len: u64,
        body: ReqBody,
        sha256: Option<&str>,
    ) -> Result<String, ClientError> {
        let n = number.to_string();
        let mut headers = vec![("content-length", len.to_string())];
        if let Some(s) = sha256 {
            headers.push(("x-amz-checksum-sha256", s.to_string()));
        }
        let req = self
            .request(
                Method::PUT,
                Some(key),
                &[("partNumber", &n), ("uploadId", upload_id)],
                &headers,
            )
            .body(body)
            .expect("valid request");
        // No overall timeout: a part takes as long as the link needs (the engine watches for
        // stalls instead).
        let resp = self.send(req, None).await?;
        if !resp.status().is_success() {
            return Err(error_of("UploadPart", resp).await);
        }
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let (Some(ours), Some(theirs)) = (
            sha256,
            resp.headers()
                .get("x-amz-checksum-sha256")
                .and_then(|v| v.to_str().ok()),
        ) && ours != theirs
        {
            return Err(ClientError::ChecksumMismatch);
        }
        let _ = collect(resp).await;
        etag.ok_or_else(|| ClientError::Protocol("UploadPart answered without an ETag".into()))
    }

    /// ListParts, all pages.
    pub async fn list_parts(
        &mut self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<ListedPart>, ClientError> {
        let mut parts = Vec::new();
        let mut marker = String::new();
        loop {
            let mut query = vec![("uploadId", upload_id)];
            if !marker.is_empty() {
                query.push(("part-number-marker", &marker));
            }
            let resp = self.send_empty(Method::GET, Some(key), &query, &[]).await?;
            let text = ok_text("ListParts", resp).await?;
            for p in xml::all(&text, "Part") {
                let number = xml::first(&p, "PartNumber").and_then(|n| n.parse().ok());
                let size = xml::first(&p, "Size").and_then(|n| n.parse().ok());
                let (Some(number), Some(size)) = (number, size) else {
                    return Err(ClientError::Protocol(format!(
                        "ListParts listed a part without a number or size: {}",
                        clip(&p)
                    )));
                };
                parts.push(ListedPart {
                    number,
                    size,
                    etag: xml::first(&p, "ETag").unwrap_or_default(),
                    sha256: xml::first(&p, "ChecksumSHA256").filter(|s| !s.is_empty()),
                });
            }
            let truncated = xml::first(&text, "IsTruncated").is_some_and(|t| t == "true");
            match xml::first(&text, "NextPartNumberMarker") {
                Some(m) if truncated && !m.is_empty() && m != marker && m != "0" => marker = m,
                _ => break,
            }
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    /// CompleteMultipartUpload of `parts` (number, ETag, base64 SHA-256), only if no object
    /// is at the key.
    pub async fn complete(
        &mut self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String, String)],
    ) -> Result<(), ClientError> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (n, etag, sha) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag>\
                 <ChecksumSHA256>{}</ChecksumSHA256></Part>",
                xml::escape(etag),
                xml::escape(sha)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let req = self
            .request(
                Method::POST,
                Some(key),
                &[("uploadId", upload_id)],
                // Never over an object that appeared at the key meanwhile (AWS, moto; a store
                // that ignores the condition still had the check at creation).
                &[
                    ("content-length", body.len().to_string()),
                    ("if-none-match", "*".to_string()),
                ],
            )
            .body(Self::full(body))
            .expect("valid request");
        // Completing a big object can take S3 minutes; it sends spaces meanwhile.
        let resp = self.send(req, Some(10 * REQUEST_TIMEOUT)).await?;
        ok_text("CompleteMultipartUpload", resp).await.map(|_| ())
    }

    /// HeadObject with checksums asked for; `None` when there is no such object.
    pub async fn head(&mut self, key: &str) -> Result<Option<ObjectHead>, ClientError> {
        let resp = self
            .send_empty(
                Method::HEAD,
                Some(key),
                &[],
                &[("x-amz-checksum-mode", "ENABLED".into())],
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let _ = collect(resp).await;
            return Ok(None);
        }
        if !resp.status().is_success() {
            // A HEAD answer has no body, so no error code (SignatureDoesNotMatch or
            // AccessDenied?): a one-byte GET of the same key tells.
            let head_status = resp.status();
            let _ = collect(resp).await;
            let resp = self
                .send_empty(
                    Method::GET,
                    Some(key),
                    &[],
                    &[("range", "bytes=0-0".into())],
                )
                .await?;
            if resp.status().is_success() {
                let _ = collect(resp).await;
                return Err(classify("HeadObject", head_status, ""));
            }
            return Err(error_of("HeadObject", resp).await);
        }
        let h = resp.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let head = ObjectHead {
            size: get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            etag: get("etag").unwrap_or_default(),
            sha256: get("x-amz-checksum-sha256"),
            meta_sha256: get("x-amz-meta-sha256"),
        };
        let _ = collect(resp).await;
        Ok(Some(head))
    }

    /// PutObject of a small body, with its SHA-256 checked by S3.
    pub async fn put(&mut self, key: &str, body: Bytes) -> Result<(), ClientError> {
        let sha = B64.encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        let req = self
            .request(
                Method::PUT,
                Some(key),
                &[],
                &[
                    ("content-length", body.len().to_string()),
                    ("x-amz-checksum-sha256", sha),
                ],
            )
            .body(Self::full(body))
            .expect("valid request");
        let resp = self.send(req, Some(REQUEST_TIMEOUT)).await?;
        ok_text("PutObject", resp).await.map(|_| ())
    }

    /// PutObject of a small body under `condition`, with `meta` (`x-amz-meta-*` headers,
    /// lowercase). The new object's ETag, or `None` when the condition did not hold.
    pub async fn put_object(
        &mut self,
        key: &str,
        body: Bytes,
        condition: Condition<'_>,
        meta: &[(&str, String)],
    ) -> Result<Option<String>, ClientError> {
        let mut headers = vec![("content-length", body.len().to_string())];
        headers.extend(condition.header());
        headers.extend(meta.iter().cloned());
        let req = self
            .request(Method::PUT, Some(key), &[], &headers)
            .body(Self::full(body))
            .expect("valid request");
        let resp = self.send(req, Some(REQUEST_TIMEOUT)).await?;
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match ok_text("PutObject", resp).await {
            Ok(_) => etag
                .map(Some)
                .ok_or_else(|| ClientError::Protocol("PutObject answered without an ETag".into())),
            Err(e) if precondition_failed(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GetObject of a small object, read whole; `None` when there is none.
    pub async fn get_object(&mut self, key: &str) -> Result<Option<Object>, ClientError> {
        let resp = self.send_empty(Method::GET, Some(key), &[], &[]).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let text = collect(resp).await.unwrap_or_default();
            // A missing bucket is no missing object: that must stop the caller.
            if text.contains("NoSuchBucket") {
                return Err(classify("GetObject", StatusCode::NOT_FOUND, &text));
            }
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(error_of("GetObject", resp).await);
        }
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))??
            .to_bytes();
        Ok(Some(Object { body, etag }))
    }

    /// DeleteObject; an object already gone counts as deleted (S3 answers 204 either way).
    pub async fn delete_object(&mut self, key: &str) -> Result<(), ClientError> {
        let resp = self.send_empty(Method::DELETE, Some(key), &[], &[]).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let _ = collect(resp).await;
            return Ok(());
        }
        ok_text("DeleteObject", resp).await.map(|_| ())
    }

    /// ListObjectsV2 under `prefix`, all pages.
    pub async fn list_objects(&mut self, prefix: &str) -> Result<Vec<ListedObject>, ClientError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if !token.is_empty() {
                query.push(("continuation-token", &token));
            }
            let resp = self.send_empty(Method::GET, None, &query, &[]).await?;
            let text = ok_text("ListObjectsV2", resp).await?;
            for c in xml::all(&text, "Contents") {
                out.push(ListedObject {
                    key: xml::first(&c, "Key").unwrap_or_default(),
                    size: xml::first(&c, "Size")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_default(),
                    last_modified: xml::first(&c, "LastModified").unwrap_or_default(),
                });
            }
            let truncated = xml::first(&text, "IsTruncated").is_some_and(|t| t == "true");
            match xml::first(&text, "NextContinuationToken") {
                Some(t) if truncated && !t.is_empty() && t != token => token = t,
                _ => break,
            }
        }
        Ok(out)
    }

    /// CreateMultipartUpload with `meta` as its headers (lowercase): `x-amz-meta-*` for the
    /// object, `x-amz-checksum-algorithm` for part checksums. Without one the parts' MD5
    /// ETags are what completing checks.
    pub async fn create_multipart_with(
        &mut self,
        key: &str,
        meta: &[(&str, String)],
    ) -> Result<String, ClientError> {
        let resp = self
            .send_empty(Method::POST, Some(key), &[("uploads", "")], meta)
            .await?;
        let text = ok_text("CreateMultipartUpload", resp).await?;
        xml::first(&text, "UploadId")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "CreateMultipartUpload answered without an UploadId: {}",
                    clip(&text)
                ))
            })
    }

    /// UploadPartCopy: bytes `first..=last` of the object at `source` (same bucket) as part
    /// `number`. The part's ETag.
    pub async fn upload_part_copy(
        &mut self,
        key: &str,
        upload_id: &str,
        number: u32,
        source: &str,
        (first, last): (u64, u64),
    ) -> Result<String, ClientError> {
        let n = number.to_string();
        let copy_source = format!("/{}/{}", self.bucket, sigv4::encode_path(source));
        let req = self
            .request(
                Method::PUT,
                Some(key),
                &[("partNumber", &n), ("uploadId", upload_id)],
                &[
                    ("x-amz-copy-source", copy_source),
                    ("x-amz-copy-source-range", format!("bytes={first}-{last}")),
                ],
            )
            .body(TusClient::empty())
            .expect("valid request");
        // Copying inside the store takes time by the size; S3 sends spaces meanwhile.
        let resp = self.send(req, Some(10 * REQUEST_TIMEOUT)).await?;
        let text = ok_text("UploadPartCopy", resp).await?;
        xml::first(&text, "ETag")
            .ok_or_else(|| ClientError::Protocol("UploadPartCopy answered without an ETag".into()))
    }

    /// CompleteMultipartUpload of `parts` (number, ETag), with `condition` on the object at
    /// the key. `false` when the condition did not hold (nothing was completed).
    pub async fn complete_parts(
        &mut self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        condition: Condition<'_>,
    ) -> Result<bool, ClientError> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml::escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let mut headers = vec![("content-length", body.len().to_string())];
        headers.extend(condition.header());
        let req = self
            .request(
                Method::POST,
                Some(key),
                &[("uploadId", upload_id)],
                &headers,
            )
            .body(Self::full(body))
            .expect("valid request");
        let resp = self.send(req, Some(10 * REQUEST_TIMEOUT)).await?;
        match ok_text("CompleteMultipartUpload", resp).await {
            Ok(_) => Ok(true),
            Err(e) if precondition_failed(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// AbortMultipartUpload; an upload already gone counts as aborted.
    pub async fn abort(&mut self, key: &str, upload_id: &str) -> Result<(), ClientError> {
        let resp = self
            .send_empty(Method::DELETE, Some(key), &[("uploadId", upload_id)], &[])
            .await?;
        match ok_text("AbortMultipartUpload", resp).await {
            Ok(_) | Err(ClientError::Gone(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// ListMultipartUploads under `prefix`, all pages.
    pub async fn list_uploads(&mut self, prefix: &str) -> Result<Vec<PendingUpload>, ClientError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let mut query = vec![("prefix", prefix), ("uploads", "")];
            if !key_marker.is_empty() {
                query.push(("key-marker", &key_marker));
                query.push(("upload-id-marker", &id_marker));
            }
            let resp = self.send_empty(Method::GET, None, &query, &[]).await?;
            let text = ok_text("ListMultipartUploads", resp).await?;
            for u in xml::all(&text, "Upload") {
                out.push(PendingUpload {
                    key: xml::first(&u, "Key").unwrap_or_default(),
                    upload_id: xml::first(&u, "UploadId").unwrap_or_default(),
                    initiated: xml::first(&u, "Initiated").unwrap_or_default(),
                });
            }
            let truncated = xml::first(&text, "IsTruncated").is_some_and(|t| t == "true");
            let next_key = xml::first(&text, "NextKeyMarker").unwrap_or_default();
            if !truncated || next_key.is_empty() {
                break;
            }
            key_marker = next_key;
            id_marker = xml::first(&text, "NextUploadIdMarker").unwrap_or_default();
        }
        Ok(out)
    }
}

/// The body of a successful answer, or the error it carries. CompleteMultipartUpload may
/// answer 200 and put an `<Error>` in the body (S3 does when it fails after it began sending).
async fn ok_text(op: &'static str, resp: Response<Incoming>) -> Result<String, ClientError> {
    let status = resp.status();
    if !status.is_success() {
        return Err(error_of(op, resp).await);
    }
    let text = collect(resp).await?;
    if text.contains("<Error>") {
        return Err(classify(op, StatusCode::INTERNAL_SERVER_ERROR, &text));
    }
    Ok(text)
}

async fn collect(resp: Response<Incoming>) -> Result<String, ClientError> {
    let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))??
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

async fn error_of(op: &'static str, resp: Response<Incoming>) -> ClientError {
    let status = resp.status();
    let text = collect(resp).await.unwrap_or_default();
    classify(op, status, &text)
}

/// An S3 error answer, classified by what a retry can do: bad credentials and refusals are
/// permanent, 5xx and `SlowDown` temporary, `NoSuchUpload` means the upload is gone (the
/// engine starts over), a part whose checksum S3 computed otherwise was damaged on the way.
pub fn classify(op: &'static str, status: StatusCode, body: &str) -> ClientError {
    let code = xml::first(body, "Code").unwrap_or_default();
    let message = xml::first(body, "Message").unwrap_or_default();
    match (status, code.as_str()) {
        (_, "NoSuchUpload") => ClientError::Gone(StatusCode::NOT_FOUND),
        (_, "BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch") => {
            ClientError::ChecksumMismatch
        }
        (StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED, _)
        | (
            _,
            "AccessDenied"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "InvalidToken"
            | "ExpiredToken",
        ) => ClientError::Auth {
            status,
            hint: format!(
                " to {op}: {}{}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the \
                 profile in ~/.aws/credentials) and that the key may write to the bucket",
                if code.is_empty() {
                    "no reason given"
                } else {
                    &code
                },
                if message.is_empty() {
                    String::new()
                } else {
                    format!(" ({message})")
                }
            ),
        },
        _ => ClientError::ObjectStore {
            op,
            status,
            code: if code.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                code
            },
            message: if message.is_empty() {
                clip(body)
            } else {
                message
            },
        },
    }
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect::<String>().trim().to_string()
}

/// Base64 of a digest, as S3's checksum headers carry it.
pub fn b64(digest: &[u8]) -> String {
    B64.encode(digest)
}

/// Is this ETag (quotes and all) a plain MD5, as S3 gives parts and single-PUT objects not
/// encrypted with KMS? Then it proves the part's content.
pub fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let hex_part = etag.trim().trim_matches('"');
    let mut out = [0u8; 16];
    hex::decode_to_slice(hex_part, &mut out).ok().map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn urls_name_a_bucket_and_a_key_or_prefix() {
        let u = S3Url::parse("s3://my-bucket/images/a%20b.iso").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str()),
            ("my-bucket", "images/a b.iso")
        );
        assert_eq!(u.key_for("x"), "images/a b.iso");
        let p = S3Url::parse("s3://my-bucket/images/").unwrap();
        assert_eq!(p.key_for("debian.iso"), "images/debian.iso");
        assert!(S3Url::parse("s3://My_Bucket/x").is_err());
        assert!(S3Url::parse("http://b/x").is_err());
        let folded = with_endpoint("s3://bkt/k", "http://127.0.0.1:9000").unwrap();
        let f = S3Url::parse(&folded).unwrap();
        assert_eq!(f.endpoint.unwrap().as_str(), "http://127.0.0.1:9000/");
        assert!(with_endpoint("s3://bkt/k", "127.0.0.1:9000").is_err());
    }

    #[test]
    fn credentials_come_from_the_environment_then_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n\
             [work]\naws_access_key_id=WORK\naws_secret_access_key=worksecret\n",
        )
        .unwrap();
        std::fs::write(&config, "[profile work]\nregion = eu-west-1\n").unwrap();
        let (c, f) = (creds.to_str().unwrap(), config.to_str().unwrap());
        let s = Settings::resolve(
            None,
            &env_of(&[
                ("AWS_SHARED_CREDENTIALS_FILE", c),
                ("AWS_CONFIG_FILE", f),
                ("AWS_PROFILE", "work"),
            ]),
        )
        .unwrap();
        assert_eq!(s.credentials.access_key_id, "WORK");
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.endpoint.as_str(), "https://s3.eu-west-1.amazonaws.com/");
        assert!(!s.path_style);
        let s = Settings::resolve(
            None,
            &env_of(&[
                ("AWS_SHARED_CREDENTIALS_FILE", c),
                ("AWS_ACCESS_KEY_ID", "ENV"),
                ("AWS_SECRET_ACCESS_KEY", "envsecret"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ]),
        )
        .unwrap();
        assert_eq!(s.credentials.access_key_id, "ENV");
        assert_eq!(s.region, "us-east-1");
        assert!(s.path_style);
        let none = Settings::resolve(None, &env_of(&[("HOME", "/nonexistent")])).unwrap_err();
        let msg = none.to_string();
        assert!(
            msg.contains("AWS_ACCESS_KEY_ID") && msg.contains("[default]"),
            "{msg}"
        );
    }

    #[test]
    fn errors_are_classified_by_what_a_retry_can_do() {
        use crate::client::Retry;
        let body = |code: &str| format!("<Error><Code>{code}</Code><Message>m</Message></Error>");
        let c = |status: u16, code: &str| {
            classify(
                "UploadPart",
                StatusCode::from_u16(status).unwrap(),
                &body(code),
            )
        };
        assert_eq!(c(403, "SignatureDoesNotMatch").retry(), Retry::Permanent);
        assert!(matches!(c(403, "AccessDenied"), ClientError::Auth { .. }));
        assert_eq!(c(503, "SlowDown").retry(), Retry::Temporary);
        assert_eq!(c(500, "InternalError").retry(), Retry::Temporary);
        assert!(matches!(c(404, "NoSuchUpload"), ClientError::Gone(_)));
        assert_eq!(c(404, "NoSuchBucket").retry(), Retry::Permanent);
        assert_eq!(c(400, "BadDigest").retry(), Retry::Temporary);
        assert_eq!(c(400, "EntityTooSmall").retry(), Retry::Permanent);
        assert_eq!(
            etag_md5("\"79b281060d337b9b2b84ccf390adcf74\"").unwrap()[0],
            0x79
        );
        assert_eq!(etag_md5("\"16cafe8d6b8c1c55c3d339c8d69326c6-2\""), None);
    }
}
