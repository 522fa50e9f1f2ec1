//! The tus 1.0.0 wire protocol, shared by `client` and `server`: header names, status codes,
//! extension names, and the parsers and formatters for every header value.
//!
//! Parsers are strict (tus says what a valid value is; anything else is a 400 on the server and
//! a protocol error on the client) and never panic: they take text straight off the network.
//! Whole-file integrity uses RFC 9530 `Repr-Digest` (`sha-256=:<base64>:`), the digest field of
//! tus' IETF successor, on the final PATCH and on HEAD responses of finished uploads.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::Digest as _;
use std::collections::BTreeMap;
use std::fmt;

/// The protocol version we speak, and the only one.
pub const TUS_VERSION: &str = "1.0.0";

pub const TUS_RESUMABLE: &str = "tus-resumable";
pub const TUS_VERSION_HEADER: &str = "tus-version";
pub const TUS_EXTENSION: &str = "tus-extension";
pub const TUS_MAX_SIZE: &str = "tus-max-size";
pub const TUS_CHECKSUM_ALGORITHM: &str = "tus-checksum-algorithm";
pub const UPLOAD_OFFSET: &str = "upload-offset";
pub const UPLOAD_LENGTH: &str = "upload-length";
pub const UPLOAD_DEFER_LENGTH: &str = "upload-defer-length";
pub const UPLOAD_METADATA: &str = "upload-metadata";
pub const UPLOAD_CHECKSUM: &str = "upload-checksum";
pub const UPLOAD_EXPIRES: &str = "upload-expires";
pub const REPR_DIGEST: &str = "repr-digest";
pub const METHOD_OVERRIDE: &str = "x-http-method-override";
/// Ours: the name a finished upload was published under (it may differ from the requested one
/// when that name was taken; see the server's clash policy).
pub const UPLOAD_PUBLISHED_AS: &str = "upload-published-as";
/// The content type of a PATCH body.
/// Ours: why a delta upload (issue 13) was refused, on a 412: `base-missing`, `base-changed`,
/// `bad-recipe`, `target-mismatch`, `unsupported`. A client then sends the whole file.
pub const UPLOAD_DELTA_REFUSED: &str = "upload-delta-refused";
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// Status 460: the body did not match its `Upload-Checksum`; the offset did not move.
pub const STATUS_CHECKSUM_MISMATCH: u16 = 460;

/// Extension names as they appear in `Tus-Extension`.
pub mod ext {
    pub const CREATION: &str = "creation";
    pub const CREATION_WITH_UPLOAD: &str = "creation-with-upload";
    pub const CREATION_DEFER_LENGTH: &str = "creation-defer-length";
    pub const CHECKSUM: &str = "checksum";
    pub const TERMINATION: &str = "termination";
    pub const EXPIRATION: &str = "expiration";
    /// Ours: the server serves indexes of published files (`GET /files/index/NAME`) and
    /// assembles uploads that are delta recipes against them (issue 13).
    pub const DELTA: &str = "delta";
}

/// Metadata keys our client sets.
pub mod meta {
    /// The file's name; tus clients (tus-js-client, Uppy) use `filename` too.
    pub const FILENAME: &str = "filename";
    /// Hex SHA-256 of the whole file, when known at creation.
    pub const SHA256: &str = "sha256";
    /// Ours: the upload is a delta recipe against this published file (issue 13)...
    pub const DELTA_BASE: &str = "delta-base";
    /// ...whose index had this SHA-256 (hex) when the client matched against it.
    pub const DELTA_BASE_SHA256: &str = "delta-base-sha256";
}

/// A header value that is not what tus allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{header}: \"{value}\" is not a non-negative integer")]
    Integer { header: &'static str, value: String },
    #[error("Upload-Metadata: {0}")]
    Metadata(String),
    #[error("Upload-Checksum: \"{0}\" is not \"<algorithm> <base64 digest>\"")]
    Checksum(String),
    #[error(
        "Upload-Checksum: unsupported algorithm \"{0}\" (supported: sha256-upto, crc32, sha1, sha256)"
    )]
    UnknownAlgorithm(String),
    #[error("Upload-Checksum: a {algorithm} digest has {expected} bytes, this one {got}")]
    DigestLength {
        algorithm: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("Repr-Digest: \"{0}\" has no valid sha-256=:<base64>: entry")]
    ReprDigest(String),
    #[error("Upload-Defer-Length: \"{0}\" must be 1")]
    DeferLength(String),
}

/// `Upload-Offset` and `Upload-Length`: plain decimal digits, no sign, no spaces, fits u64.
pub fn parse_u64(header: &'static str, value: &str) -> Result<u64, ProtocolError> {
    let bad = || ProtocolError::Integer {
        header,
        value: value.chars().take(64).collect(),
    };
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

pub fn parse_offset(value: &str) -> Result<u64, ProtocolError> {
    parse_u64("Upload-Offset", value)
}

pub fn parse_length(value: &str) -> Result<u64, ProtocolError> {
    parse_u64("Upload-Length", value)
}

/// `Upload-Defer-Length`: the only valid value is `1`.
pub fn parse_defer_length(value: &str) -> Result<(), ProtocolError> {
    if value == "1" {
        Ok(())
    } else {
        Err(ProtocolError::DeferLength(value.chars().take(64).collect()))
    }
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs; a key alone has an empty value.
/// Keys are ASCII without spaces or commas and unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub BTreeMap<String, Vec<u8>>);

impl Metadata {
    pub fn parse(value: &str) -> Result<Self, ProtocolError> {
        let mut map = BTreeMap::new();
        if value.trim().is_empty() {
            return Ok(Metadata(map));
        }
        for pair in value.split(',') {
            let pair = pair.trim();
            let mut parts = pair.split(' ').filter(|p| !p.is_empty());
            let key = parts
                .next()
                .ok_or_else(|| ProtocolError::Metadata("an empty key".into()))?;
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ProtocolError::Metadata(format!(
                    "key \"{}\" must be printable ASCII",
                    key.escape_debug()
                )));
            }
            let value = match parts.next() {
                None => Vec::new(),
                Some(v) => B64.decode(v).map_err(|_| {
                    ProtocolError::Metadata(format!("the value of \"{key}\" is not base64"))
                })?,
            };
            if parts.next().is_some() {
                return Err(ProtocolError::Metadata(format!(
                    "\"{key}\" has more than one value"
                )));
            }
            if map.insert(key.to_string(), value).is_some() {
                return Err(ProtocolError::Metadata(format!("\"{key}\" appears twice")));
            }
        }
        Ok(Metadata(map))
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn insert(&mut self, key: &str, value: impl Into<Vec<u8>>) {
        self.0.insert(key.to_string(), value.into());
    }
}

impl fmt::Display for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if v.is_empty() {
                f.write_str(k)?;
            } else {
                write!(f, "{k} {}", B64.encode(v))?;
            }
        }
        Ok(())
    }
}

/// A checksum algorithm of the tus checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ours, not tus's: the SHA-256 of the upload from its first byte to the end of this body,
    /// not of the body alone. Both ends keep that running SHA-256 anyway (it becomes the whole
    /// file's digest), so checking a chunk with it costs a digest of a copied state instead of
    /// a second pass over every byte on each side: a crc32 was 3-5 % of an unthrottled
    /// upload's time over loopback. Only our server offers it, and a server that offers it
    /// offers the others too, so a client can fall back to crc32 (`send::session`).
    Sha256Upto,
    /// The one tus requires every server to support.
    Sha1,
    /// Cheap (crc32fast runs at memory speed); enough to catch corruption on the wire.
    Crc32,
    Sha256,
}

impl Algorithm {
    /// All we support, in the order we prefer them as a client.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Sha256Upto,
        Algorithm::Crc32,
        Algorithm::Sha1,
        Algorithm::Sha256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256Upto => "sha256-upto",
            Algorithm::Sha1 => "sha1",
            Algorithm::Crc32 => "crc32",
            Algorithm::Sha256 => "sha256",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Crc32 => 4,
            Algorithm::Sha256 | Algorithm::Sha256Upto => 32,
        }
    }

    /// Whether the digest covers the upload from its first byte ([`Algorithm::Sha256Upto`]),
    /// not only the body: both ends then take it from the running SHA-256 they keep rather
    /// than hash the body again.
    pub fn covers_upload(self) -> bool {
        self == Algorithm::Sha256Upto
    }

    /// The `Tus-Checksum-Algorithm` value listing all of them.
    pub fn header_value() -> String {
        Self::ALL.map(Algorithm::name).join(",")
    }

    /// A hasher of what the digest covers: the body, or for [`Algorithm::Sha256Upto`] the
    /// upload from its first byte (fed all of it, as a test does).
    pub fn hasher(self) -> ChecksumHasher {
        match self {
            Algorithm::Sha1 => ChecksumHasher::Sha1(sha1::Sha1::new()),
            Algorithm::Crc32 => ChecksumHasher::Crc32(crc32fast::Hasher::new()),
            Algorithm::Sha256 => ChecksumHasher::Sha256(sha2::Sha256::new(), self),
            Algorithm::Sha256Upto => ChecksumHasher::Sha256(sha2::Sha256::new(), self),
        }
    }

    /// Picks the client's algorithm from a server's `Tus-Checksum-Algorithm` list: ours
    /// (sha256-upto) when offered, else crc32, else sha1 (which tus requires), else anything
    /// we know.
    pub fn choose(offered: &str) -> Option<Algorithm> {
        let offered: Vec<Algorithm> = offered
            .split(',')
            .filter_map(|a| Algorithm::from_name(a.trim()))
            .collect();
        Self::ALL.into_iter().find(|a| offered.contains(a))
    }
}

/// A running checksum of one PATCH body.
#[derive(Clone)]
pub enum ChecksumHasher {
    Sha1(sha1::Sha1),
    Crc32(crc32fast::Hasher),
    /// sha256 or sha256-upto: the same hash, over different bytes.
    Sha256(sha2::Sha256, Algorithm),
}

impl ChecksumHasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            ChecksumHasher::Sha1(h) => h.update(data),
            ChecksumHasher::Crc32(h) => h.update(data),
            ChecksumHasher::Sha256(h, _) => h.update(data),
        }
    }

    pub fn finish(self) -> Checksum {
        match self {
            ChecksumHasher::Sha1(h) => Checksum {
                algorithm: Algorithm::Sha1,
                digest: h.finalize().to_vec(),
            },
            ChecksumHasher::Crc32(h) => Checksum {
                algorithm: Algorithm::Crc32,
                digest: h.finalize().to_be_bytes().to_vec(),
            },
            ChecksumHasher::Sha256(h, algorithm) => Checksum {
                algorithm,
                digest: h.finalize().to_vec(),
            },
        }
    }
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    pub digest: Vec<u8>,
}

impl Checksum {
    /// A chunk's sha256-upto checksum from the running SHA-256 after it: both ends take it
    /// from there, never from a hasher of their own.
    pub fn sha256_upto(running_digest: [u8; 32]) -> Self {
        Checksum {
            algorithm: Algorithm::Sha256Upto,
            digest: running_digest.to_vec(),
        }
    }

    pub fn parse(value: &str) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::Checksum(value.chars().take(128).collect());
        let (name, digest) = value.trim().split_once(' ').ok_or_else(bad)?;
        let algorithm = Algorithm::from_name(name)
            .ok_or_else(|| ProtocolError::UnknownAlgorithm(name.chars().take(32).collect()))?;
        let digest = B64.decode(digest.trim()).map_err(|_| bad())?;
        if digest.len() != algorithm.digest_len() {
            return Err(ProtocolError::DigestLength {
                algorithm: algorithm.name(),
                expected: algorithm.digest_len(),
                got: digest.len(),
            });
        }
        Ok(Checksum { algorithm, digest })
    }

    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm.name(), B64.encode(&self.digest))
    }
}

/// Formats an RFC 9530 `Repr-Digest` value for a SHA-256 digest.
pub fn format_repr_digest(sha256: &[u8; 32]) -> String {
    format!("sha-256=:{}:", B64.encode(sha256))
}

/// Finds the `sha-256` member of an RFC 9530 `Repr-Digest` dictionary (other algorithms are
/// ignored, as the RFC allows).
pub fn parse_repr_digest(value: &str) -> Result<[u8; 32], ProtocolError> {
    let bad = || ProtocolError::ReprDigest(value.chars().take(128).collect());
    for member in value.split(',') {
        let Some((key, val)) = member.trim().split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("sha-256") {
            continue;
        }
        let inner = val
            .trim()
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .ok_or_else(bad)?;
        let bytes = B64.decode(inner).map_err(|_| bad())?;
        return bytes.try_into().map_err(|_| bad());
    }
    Err(bad())
}

/// Text (a file name) as a header value: percent-encoded UTF-8 for anything outside printable
/// ASCII, and `%` itself, since header values are not UTF-8. Used by `Upload-Published-As`.
pub fn encode_header_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_header_text`]; invalid UTF-8 is replaced, never an error.
pub fn decode_header_text(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses the hex SHA-256 our client puts in metadata.
pub fn parse_hex_sha256(value: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(value.trim()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_offset("0"), Ok(0));
        assert_eq!(parse_offset("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "0x10",
            "18446744073709551616",
            "1e3",
        ] {
            assert!(parse_offset(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_round_trips() {
        let m = Metadata::parse("filename ZGViaWFuLmlzbw==,is_confidential,sha256 YWJj").unwrap();
        assert_eq!(m.get_str("filename"), Some("debian.iso"));
        assert_eq!(m.0["is_confidential"], b"");
        assert_eq!(Metadata::parse(&m.to_string()).unwrap(), m);
        assert!(Metadata::parse("a !!!").is_err());
        assert!(Metadata::parse("a YQ==,a YQ==").is_err());
        assert!(Metadata::parse("a YQ== YQ==").is_err());
        assert!(Metadata::parse(",").is_err());
        assert_eq!(Metadata::parse("").unwrap(), Metadata::default());
    }

    #[test]
    fn checksums_parse_and_verify() {
        let c = Checksum::of(Algorithm::Sha1, b"hello");
        assert_eq!(c.to_string(), "sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00=");
        assert_eq!(Checksum::parse(&c.to_string()).unwrap(), c);
        let crc = Checksum::of(Algorithm::Crc32, b"hello");
        assert_eq!(crc.digest, 0x3610_a686u32.to_be_bytes());
        assert!(matches!(
            Checksum::parse("md5 XUFAKrxLKna5cZ2REBfFkg=="),
            Err(ProtocolError::UnknownAlgorithm(_))
        ));
        assert!(matches!(
            Checksum::parse("sha1 YQ=="),
            Err(ProtocolError::DigestLength { .. })
        ));
        assert!(Checksum::parse("sha1").is_err());
    }

    #[test]
    fn client_prefers_crc32_then_sha1() {
        assert_eq!(Algorithm::choose("sha1,crc32"), Some(Algorithm::Crc32));
        assert_eq!(Algorithm::choose("md5, sha1"), Some(Algorithm::Sha1));
        assert_eq!(Algorithm::choose("sha256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::choose("md5"), None);
    }

    #[test]
    fn client_prefers_sha256_upto_which_covers_the_upload_so_far() {
        assert_eq!(
            Algorithm::choose(&Algorithm::header_value()),
            Some(Algorithm::Sha256Upto)
        );
        assert_eq!(
            Algorithm::choose("crc32, SHA256-UPTO"),
            Some(Algorithm::Sha256Upto)
        );
        assert!(Algorithm::Sha256Upto.covers_upload() && !Algorithm::Sha256.covers_upload());
        // The same digest as sha256 of the same bytes, told apart by its name.
        let upto = Checksum::of(Algorithm::Sha256Upto, b"hello");
        assert_eq!(
            upto.digest,
            Checksum::of(Algorithm::Sha256, b"hello").digest
        );
        assert!(upto.to_string().starts_with("sha256-upto "), "{upto}");
        assert_eq!(Checksum::parse(&upto.to_string()).unwrap(), upto);
        assert!(matches!(
            Checksum::parse("sha256-upto qvTGHdzF6KLavt4PO0gs2a6pQ00="),
            Err(ProtocolError::DigestLength { .. })
        ));
    }

    #[test]
    fn header_text_round_trips() {
        for name in ["debian.iso", "100% done.iso", "Ünïcödé €.iso", "tab\there"] {
            let enc = encode_header_text(name);
            assert!(enc.bytes().all(|b| (0x20..0x7f).contains(&b)), "{enc}");
            assert_eq!(decode_header_text(&enc), name);
        }
        assert_eq!(encode_header_text("café 100%.txt"), "caf%C3%A9 100%25.txt");
    }

    #[test]
    fn repr_digest_round_trips() {
        let d = [7u8; 32];
        let v = format_repr_digest(&d);
        assert_eq!(parse_repr_digest(&v), Ok(d));
        assert_eq!(parse_repr_digest(&format!("sha-512=:AAAA:, {v}")), Ok(d));
        assert!(parse_repr_digest("sha-256=:AAAA:").is_err());
        assert!(parse_repr_digest("sha-256=abc").is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,200}") {
            let _ = parse_offset(&s);
            let _ = Metadata::parse(&s);
            let _ = Checksum::parse(&s);
            let _ = parse_repr_digest(&s);
            let _ = parse_defer_length(&s);
        }

        #[test]
        fn metadata_round_trips_any_values(
            pairs in proptest::collection::btree_map("[a-z_]{1,12}", proptest::collection::vec(any::<u8>(), 0..40), 0..6)
        ) {
            let m = Metadata(pairs);
            prop_assert_eq!(Metadata::parse(&m.to_string()).unwrap(), m);
        }
    }
}
