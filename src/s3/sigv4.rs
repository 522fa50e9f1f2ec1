//! AWS Signature Version 4 in the `Authorization` header, for S3 (service `s3`), with the
//! payload unsigned (`x-amz-content-sha256: UNSIGNED-PAYLOAD`): a part is streamed from the
//! file as it is read, so its hash is not known when the headers go out; each part's bytes are
//! still checked by S3 against the `x-amz-checksum-sha256` header the engine computed before
//! sending (see `send::s3`).
//!
//! Header signing, not presigned query strings, because every S3 implementation accepts it
//! and some check nothing else: moto's authentication (the one the tests can run against)
//! reads only the `Authorization` header.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What the payload hash says: not signed (see the module doc).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// An access key, its secret and, for temporary credentials, the session token.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    // The secret and the token never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Characters left as they are in a URI component (RFC 3986 unreserved), as SigV4 wants.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A key or query value encoded the way SigV4 canonicalises it.
pub fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

/// An object key as a URL path: each segment encoded, the slashes kept.
pub fn encode_path(key: &str) -> String {
    key.split('/')
        .map(encode_component)
        .collect::<Vec<_>>()
        .join("/")
}

/// The headers signing adds to a request: `x-amz-date`, `x-amz-content-sha256`, the session
/// token if any, and `authorization`, signing `host` and every header in `headers` (lowercase
/// names). `path` is already encoded; `query` pairs are raw and encoded here.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    creds: &Credentials,
    region: &str,
    method: &str,
    host: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, String)> {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    signed.push(("host".into(), host.to_string()));
    signed.push(("x-amz-date".into(), amz_date.clone()));
    signed.push(("x-amz-content-sha256".into(), UNSIGNED_PAYLOAD.into()));
    if let Some(t) = &creds.session_token {
        signed.push(("x-amz-security-token".into(), t.clone()));
    }
    signed.sort();
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (encode_component(k), encode_component(v)))
        .collect();
    q.sort();
    let canonical_query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_names = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_names}\n{UNSIGNED_PAYLOAD}"
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    // Only what signing adds: the caller sends its own headers itself.
    let mut out: Vec<(String, String)> = signed
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "x-amz-date" | "x-amz-content-sha256" | "x-amz-security-token"
            )
        })
        .collect();
    out.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, \
             Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The GET Object example of AWS's "Signature Version 4 header-based auth" page for S3
    /// (bucket examplebucket, key test.txt, a Range header), with the payload unsigned: the
    /// canonical request differs from the page's only in the payload line, so the expected
    /// signature was computed with the page's keys and checked with botocore.
    #[test]
    fn signs_like_aws() {
        let creds = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let now = chrono::Utc.with_ymd_and_hms(2013, 5, 24, 0, 0, 0).unwrap();
        let h = sign(
            &creds,
            "us-east-1",
            "GET",
            "examplebucket.s3.amazonaws.com",
            "/test.txt",
            &[],
            &[("range".into(), "bytes=0-9".into())],
            now,
        );
        let auth = &h.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/\
                 aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
                 Signature="
            ),
            "{auth}"
        );
        assert!(auth.ends_with(BOTOCORE_SIGNATURE), "{auth}");
    }

    const BOTOCORE_SIGNATURE: &str =
        "edacce68e5445863e1f916719fac26d3be9c1581fccd7878ade0879597fc0dc1";

    #[test]
    fn keys_are_encoded_by_segment() {
        assert_eq!(encode_path("a b/c+d/é"), "a%20b/c%2Bd/%C3%A9");
        assert_eq!(encode_component("x/y"), "x%2Fy");
    }
}
