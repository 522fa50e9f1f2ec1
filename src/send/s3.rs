//! The S3 destination (`s3://BUCKET/KEY`): a [`Destination`] over S3 multipart upload, on
//! [`S3Client`] (signing, endpoint and credentials are `crate::s3`'s).
//!
//! How the session's calls map:
//! - `create`: CreateMultipartUpload with SHA-256 part checksums. Its upload id, the key and
//!   the part size chosen for this upload ([`chunking::part_size`]) make the "upload URL" the
//!   database keeps: `s3://BUCKET/KEY?uploadId=ID&partSize=N`. An object already at the key
//!   is not overwritten (as the tus server never clobbers): the upload is refused and says so.
//!   An empty file is one PutObject, as multipart needs a part.
//! - `append`: one chunk is one part (UploadPart), its number following from its offset, its
//!   body the engine's paced, probed stream; the SHA-256 the engine computed in its first read
//!   goes in `x-amz-checksum-sha256`, so S3 refuses a part damaged on the way or changed
//!   between the two reads (`BadDigest`, sent again). The last part is followed by
//!   CompleteMultipartUpload and the whole-object check below.
//! - `offset`: ListParts. Each listed part is checked against the local file before it is
//!   kept: its `ChecksumSHA256` when listed (S3), else its ETag when that is a plain MD5 (moto,
//!   and S3 for parts not encrypted with KMS); a part that cannot be proved is not trusted.
//!   Only the contiguous proved prefix counts, the rest is sent again (UploadPart of the same
//!   number replaces it). Several entries listed under one number (SeaweedFS keeps a replaced
//!   part beside its replacement) are each tried: completion names the chosen one by ETag. Parts proved once by this process are not read again while their
//!   ETags stay. A complete set of parts without CompleteMultipartUpload (a crash in between)
//!   counts one part short, so the last part is sent again and completes the upload. An upload
//!   S3 no longer knows (`NoSuchUpload`) was either completed (the object at the key is checked
//!   as below and, if it is this file, the transfer is done) or aborted: start over.
//! - `delete`: AbortMultipartUpload (`--restart`, `upload queue rm`).
//!
//! The whole-object check: S3 computes, for an upload created with SHA-256 checksums, the
//! SHA-256 of its parts' SHA-256s (HeadObject with `x-amz-checksum-mode: ENABLED`). We compute
//! the same from the parts we sent or proved, whose SHA-256s come from the same reads that fed
//! the whole file's SHA-256, and compare, with the size. Only then does `append` report the
//! file's digest as the object's. Storing the SHA-256 as object metadata instead would need it
//! at CreateMultipartUpload, before the file is read, and would prove only what we claimed, not
//! what S3 holds. A store that reports no checksum cannot be verified, and the transfer stops
//! saying so rather than calling an unverified object done.

use super::chunking::{self, Chunking};
use super::destination::{Capabilities, Destination};
use super::{SendError, SendOptions, blocking};
use crate::client::{
    ChannelBody, ClientError, LinkProbe, PatchOutcome, UploadInfo, notsent_lowat_for,
};
use crate::protocol::{Algorithm, Checksum};
use crate::s3::{self, ObjectHead, S3Client, S3Url, Settings};
use crate::units::Rate;
use http::StatusCode;
use http_body_util::BodyExt;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use url::Url;

/// A part S3 holds that is proved to be the file's bytes at its place.
#[derive(Debug, Clone)]
struct Part {
    number: u32,
    etag: String,
    size: u64,
    sha256: [u8; 32],
}

/// An upload URL taken apart.
struct Upload {
    key: String,
    /// `None` for an empty file, put whole.
    id: Option<String>,
    part_size: u64,
}

/// A bucket, the key (or prefix) to upload to, and the one connection.
pub(super) struct S3 {
    client: S3Client,
    target: S3Url,
    /// The chunk the transfer is planned with (its `--chunk`, or the one its `--limit`
    /// asks for), from which a new upload's part size follows.
    planned: u64,
    source: PathBuf,
    /// The proved parts of `parts_of`, numbers 1, 2, ... without gaps.
    parts: Vec<Part>,
    parts_of: Option<String>,
}

impl S3 {
    pub(super) fn open(opts: &SendOptions) -> Result<S3, SendError> {
        let target = S3Url::parse(&opts.url)?;
        let settings = Settings::from_env(target.endpoint.as_ref())?;
        let client = S3Client::new(settings, &target.bucket, opts.ca.as_deref())?;
        Ok(S3 {
            client,
            target,
            planned: Chunking::from_flag(opts.chunk).planned(opts.limit),
            source: opts.file.clone(),
            parts: Vec::new(),
            parts_of: None,
        })
    }

    fn upload_url(&self, key: &str, id: Option<&str>, part_size: u64) -> Url {
        let mut u = Url::parse(&format!("s3://{}/", self.target.bucket)).expect("valid bucket");
        u.set_path(&format!("/{}", s3::sigv4::encode_path(key)));
        {
            let mut q = u.query_pairs_mut();
            if let Some(id) = id {
                q.append_pair("uploadId", id);
            }
            q.append_pair("partSize", &part_size.to_string());
        }
        u
    }

    fn parse_upload(&self, url: &Url) -> Result<Upload, ClientError> {
        let bad = |why: &str| ClientError::Protocol(format!("stored S3 upload URL {url}: {why}"));
        let u = S3Url::parse(url.as_str()).map_err(|e| bad(&e.to_string()))?;
        if u.bucket != self.target.bucket {
            return Err(bad("another bucket than the destination's"));
        }
        let part_size = u
            .query
            .get("partSize")
            .and_then(|p| p.parse().ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| bad("no partSize"))?;
        Ok(Upload {
            key: u.key,
            id: u.query.get("uploadId").cloned(),
            part_size,
        })
    }

    fn published_as(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.target.bucket)
    }

    async fn source_size(&self) -> Result<u64, ClientError> {
        let path = self.source.clone();
        blocking(move || std::fs::metadata(&path).map(|m| m.len()))
            .await
            .map_err(|e| ClientError::Body(format!("cannot stat the source: {e}")))
    }

    /// Compares what HeadObject says with the parts we sent or proved.
    fn check_object(
        &self,
        key: &str,
        head: &ObjectHead,
        size: u64,
        parts: &[Part],
    ) -> Result<(), ClientError> {
        let at = self.published_as(key);
        if head.size != size {
            return Err(ClientError::Verification(format!(
                "{at} has {} bytes, the file {size}",
                head.size
            )));
        }
        let Some(theirs) = &head.sha256 else {
            return Err(ClientError::Verification(format!(
                "the store reports no SHA-256 checksum for {at} (HeadObject with \
                 x-amz-checksum-mode: ENABLED), so what it holds cannot be verified"
            )));
        };
        let ours = composite(parts);
        // Multipart objects' checksums carry `-N`, the part count, on S3; not on moto.
        let theirs = theirs.split('-').next().unwrap_or_default();
        if theirs != ours {
            return Err(ClientError::Verification(format!(
                "{at}: the store's SHA-256 of its parts' SHA-256s is {theirs}, the file's is \
                 {ours}; that object is not this file: delete it and send again"
            )));
        }
        Ok(())
    }

    /// The upload S3 no longer knows: if the object at `key` is this file (a completion whose
    /// answer was lost), the transfer is done; otherwise it is gone.
    async fn completed_or_gone(&mut self, up: &Upload) -> Result<UploadInfo, ClientError> {
        let gone = ClientError::Gone(StatusCode::NOT_FOUND);
        let Some(head) = self.client.head(&up.key).await? else {
            return Err(gone);
        };
        let size = self.source_size().await?;
        if head.size != size {
            return Err(gone);
        }
        let (path, part_size) = (self.source.clone(), up.part_size);
        let (parts, whole) = blocking(move || hash_parts(&path, size, part_size))
            .await
            .map_err(|e| ClientError::Body(format!("cannot read the source: {e}")))?;
        if self.check_object(&up.key, &head, size, &parts).is_err() {
            return Err(gone);
        }
        Ok(UploadInfo {
            offset: size,
            length: Some(size),
            sha256: Some(whole),
            published_as: Some(self.published_as(&up.key)),
        })
    }
}

impl Destination for S3 {
    async fn discover(&mut self) -> Result<Capabilities, ClientError> {
        // Nothing to ask: S3 checks SHA-256 part checksums and takes objects up to 5 TiB.
        // Credentials and the bucket are proved by the first real request.
        Ok(Capabilities {
            checksum: Some(Algorithm::Sha256),
            max_size: Some(s3::MAX_OBJECT),
            piece_floor: 0,
        })
    }

    async fn create(&mut self, size: u64, name: &str) -> Result<Url, ClientError> {
        let key = self.target.key_for(name);
        if let Some(head) = self.client.head(&key).await? {
            return Err(ClientError::ObjectStore {
                op: "CreateMultipartUpload",
                status: StatusCode::CONFLICT,
                code: "ObjectExists".into(),
                message: format!(
                    "{} already holds an object of {} bytes and is not overwritten: upload \
                     under another key (e.g. s3://{}/{key}.2, or a prefix ending in / with \
                     --name), or delete that object first",
                    self.published_as(&key),
                    head.size,
                    self.target.bucket
                ),
            });
        }
        let part_size = chunking::part_size(size, self.planned);
        self.parts.clear();
        if size == 0 {
            self.client.put(&key, bytes::Bytes::new()).await?;
            self.parts_of = None;
            return Ok(self.upload_url(&key, None, part_size));
        }
        let id = self.client.create_multipart(&key).await?;
        self.parts_of = Some(id.clone());
        Ok(self.upload_url(&key, Some(&id), part_size))
    }

    async fn offset(&mut self, upload: &Url) -> Result<UploadInfo, ClientError> {
        let up = self.parse_upload(upload)?;
        let Some(id) = up.id.clone() else {
            // An empty file, put whole.
            let Some(head) = self.client.head(&up.key).await? else {
                return Err(ClientError::Gone(StatusCode::NOT_FOUND));
            };
            return Ok(UploadInfo {
                offset: head.size,
                length: Some(head.size),
                sha256: head
                    .sha256
                    .as_deref()
                    .and_then(s3_digest)
                    .or_else(|| (head.size == 0).then(|| Sha256::digest(b"").into())),
                published_as: Some(self.published_as(&up.key)),
            });
        };
        let listed = match self.client.list_parts(&up.key, &id).await {
            Err(ClientError::Gone(_)) => return self.completed_or_gone(&up).await,
            r => r?,
        };
        if self.parts_of.as_deref() != Some(&id) {
            self.parts.clear();
            self.parts_of = Some(id);
        }
        let size = self.source_size().await?;
        let mut kept: Vec<Part> = Vec::new();
        let mut offset = 0;
        let mut number = 1u32;
        // A store may list several entries under one number (SeaweedFS keeps a replaced
        // part beside its replacement): any that proves is fine, since completion names the
        // parts by ETag.
        'parts: loop {
            let expected = up.part_size.min(size - offset);
            let candidates: Vec<&s3::ListedPart> = listed
                .iter()
                .filter(|p| p.number == number && p.size == expected && expected > 0)
                .collect();
            if candidates.is_empty() {
                break;
            }
            for p in &candidates {
                if let Some(known) = self
                    .parts
                    .iter()
                    .find(|k| k.number == number && k.etag == p.etag && k.size == p.size)
                {
                    kept.push(known.clone());
                    offset += p.size;
                    number += 1;
                    continue 'parts;
                }
            }
            let path = self.source.clone();
            let (sha, md5) = blocking(move || hash_range(&path, offset, expected))
                .await
                .map_err(|e| ClientError::Body(format!("cannot read the source: {e}")))?;
            let proved = candidates
                .iter()
                .find(|p| match (&p.sha256, s3::etag_md5(&p.etag)) {
                    (Some(theirs), _) => *theirs == s3::b64(&sha),
                    (None, Some(theirs)) => theirs == md5,
                    (None, None) => false,
                });
            let Some(p) = proved else {
                tracing::info!(
                    part = number,
                    "part {number} in the bucket is not the file's bytes at {offset} (or cannot \
                     be proved to be): it is sent again, and every part after it"
                );
                break;
            };
            kept.push(Part {
                number,
                etag: p.etag.clone(),
                size: p.size,
                sha256: sha,
            });
            offset += p.size;
            number += 1;
        }
        if offset == size {
            // Every part is there but the upload was not completed: the last part goes again
            // and completes it.
            if let Some(last) = kept.pop() {
                offset -= last.size;
            }
        }
        self.parts = kept;
        Ok(UploadInfo {
            offset,
            length: None,
            sha256: None,
            published_as: None,
        })
    }

    async fn connect(&mut self, rate: Option<Rate>) -> Result<LinkProbe, ClientError> {
        self.client
            .set_notsent_lowat(notsent_lowat_for(rate.map(Rate::bytes_per_second)));
        self.client.connect().await?;
        Ok(self.client.probe())
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
        let up = self.parse_upload(upload)?;
        let id = up.id.clone().ok_or_else(|| {
            ClientError::Protocol(format!("{upload} is complete: nothing to append"))
        })?;
        if !offset.is_multiple_of(up.part_size) {
            return Err(ClientError::Protocol(format!(
                "a chunk at {offset} is not on a part boundary of {} bytes",
                up.part_size
            )));
        }
        let number = u32::try_from(offset / up.part_size + 1)
            .ok()
            .filter(|&n| u64::from(n) <= s3::MAX_PARTS)
            .ok_or_else(|| ClientError::Protocol(format!("part at {offset}: too many parts")))?;
        if self.parts.len() + 1 < number as usize {
            return Err(ClientError::OffsetMismatch {
                server: Some(self.parts.iter().map(|p| p.size).sum()),
                ours: offset,
            });
        }
        let sha: [u8; 32] = checksum
            .filter(|c| c.algorithm == Algorithm::Sha256)
            .and_then(|c| c.digest.as_slice().try_into().ok())
            .ok_or_else(|| ClientError::Protocol("a part needs its SHA-256".into()))?;
        let etag = self
            .client
            .upload_part(
                &up.key,
                &id,
                number,
                len,
                body.boxed(),
                Some(&s3::b64(&sha)),
            )
            .await?;
        self.parts.truncate(number as usize - 1);
        self.parts.push(Part {
            number,
            etag,
            size: len,
            sha256: sha,
        });
        let Some(digest) = digest else {
            return Ok(PatchOutcome {
                offset: offset + len,
                sha256: None,
                published_as: None,
            });
        };
        let list: Vec<(u32, String, String)> = self
            .parts
            .iter()
            .map(|p| (p.number, p.etag.clone(), s3::b64(&p.sha256)))
            .collect();
        self.client.complete(&up.key, &id, &list).await?;
        let head = self.client.head(&up.key).await?.ok_or_else(|| {
            ClientError::Verification(format!(
                "{} is not there after CompleteMultipartUpload",
                self.published_as(&up.key)
            ))
        })?;
        self.check_object(&up.key, &head, offset + len, &self.parts)?;
        Ok(PatchOutcome {
            offset: offset + len,
            sha256: Some(*digest),
            published_as: Some(self.published_as(&up.key)),
        })
    }

    async fn delete(&mut self, upload: &Url) -> Result<(), ClientError> {
        let up = self.parse_upload(upload)?;
        match up.id {
            Some(id) => self.client.abort(&up.key, &id).await,
            // An empty file's object is the finished upload, not a partial one.
            None => Ok(()),
        }
    }

    fn disconnect(&mut self) {
        self.client.disconnect();
    }

    fn host(&self) -> &str {
        self.client.host()
    }

    fn part_size(&self, upload: &Url) -> Option<u64> {
        self.parse_upload(upload).ok().map(|u| u.part_size)
    }
}

/// The SHA-256 of the parts' SHA-256s, base64: what S3 reports for the object.
fn composite(parts: &[Part]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.sha256);
    }
    s3::b64(&h.finalize())
}

/// A plain (single-part) `x-amz-checksum-sha256` as a digest.
fn s3_digest(b64: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()?
        .try_into()
        .ok()
}

/// SHA-256 and MD5 of `[offset, offset+len)` of the file.
fn hash_range(path: &Path, offset: u64, len: u64) -> std::io::Result<([u8; 32], [u8; 16])> {
    let (mut sha, mut md5) = (Sha256::new(), Md5::new());
    super::source::read_range(path, offset, len, |b| {
        sha.update(b);
        md5.update(b);
    })?;
    Ok((sha.finalize().into(), md5.finalize().into()))
}

/// The file cut in parts of `part_size`, each with its SHA-256, and the whole file's SHA-256.
fn hash_parts(path: &Path, size: u64, part_size: u64) -> std::io::Result<(Vec<Part>, [u8; 32])> {
    let mut whole = Sha256::new();
    let mut parts = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = part_size.min(size - offset);
        let mut sha = Sha256::new();
        super::source::read_range(path, offset, len, |b| {
            sha.update(b);
            whole.update(b);
        })?;
        parts.push(Part {
            number: parts.len() as u32 + 1,
            etag: String::new(),
            size: len,
            sha256: sha.finalize().into(),
        });
        offset += len;
    }
    Ok((parts, whole.finalize().into()))
}

/// A multipart upload in a bucket that no transfer in the database is sending: left by a
/// transfer removed while the bucket could not be reached, a failed abort, or a crash between
/// CreateMultipartUpload and the database. S3 keeps (and bills) its parts until it is aborted.
#[derive(Debug, Clone, PartialEq)]
pub struct Abandoned {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    /// When S3 says it began (RFC 3339, as S3 writes it).
    pub initiated: String,
}

/// The S3 client for a transfer's destination URL.
fn client_for(dest_url: &str) -> Result<(S3Client, S3Url), SendError> {
    let target = S3Url::parse(dest_url)?;
    let settings = Settings::from_env(target.endpoint.as_ref())?;
    Ok((S3Client::new(settings, &target.bucket, None)?, target))
}

/// Aborts the multipart upload of a transfer to S3 (`upload queue rm`); `false` when it had
/// none.
pub(super) async fn abort(dest_url: &str, upload_url: Option<&str>) -> Result<bool, SendError> {
    let Some(upload_url) = upload_url else {
        return Ok(false);
    };
    let (mut client, _) = client_for(dest_url)?;
    let u = S3Url::parse(upload_url)?;
    let Some(id) = u.query.get("uploadId") else {
        return Ok(false);
    };
    client.abort(&u.key, id).await.map_err(SendError::Server)?;
    Ok(true)
}

/// The multipart uploads under the keys of these transfers to S3 that none of the unfinished
/// ones is sending (ListMultipartUploads per key or prefix); the failures to list, as text.
pub(super) async fn abandoned(
    transfers: &[crate::store::Transfer],
) -> (Vec<Abandoned>, Vec<String>) {
    use crate::store::TransferState;
    let live: std::collections::HashSet<String> = transfers
        .iter()
        .filter(|t| t.state != TransferState::Done)
        .filter_map(|t| t.upload_url.as_deref())
        .filter_map(|u| S3Url::parse(u).ok())
        .filter_map(|u| u.query.get("uploadId").cloned())
        .collect();
    let mut asked = std::collections::HashSet::new();
    let (mut found, mut failed) = (Vec::new(), Vec::new());
    for t in transfers.iter().filter(|t| t.dest_url.starts_with("s3://")) {
        if !asked.insert(t.dest_url.clone()) {
            continue;
        }
        let (mut client, target) = match client_for(&t.dest_url) {
            Ok(c) => c,
            Err(e) => {
                failed.push(format!("{}: {e}", t.dest_url));
                continue;
            }
        };
        // A key names itself; a prefix (ending in /) holds the transfers' named keys.
        let prefix = target.key.clone();
        let listed = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            client.list_uploads(&prefix),
        )
        .await;
        match listed {
            Ok(Ok(uploads)) => {
                for u in uploads {
                    let exact =
                        target.key.ends_with('/') || target.key.is_empty() || u.key == target.key;
                    let seen = found.iter().any(|a: &Abandoned| a.upload_id == u.upload_id);
                    if exact && !seen && !live.contains(&u.upload_id) {
                        found.push(Abandoned {
                            bucket: target.bucket.clone(),
                            key: u.key,
                            upload_id: u.upload_id,
                            initiated: u.initiated,
                        });
                    }
                }
            }
            Ok(Err(e)) => failed.push(format!("s3://{}: {e}", target.bucket)),
            Err(_) => failed.push(format!("s3://{}: no answer within 20 s", target.bucket)),
        }
    }
    (found, failed)
}
