//! The tus 1.0 destination: a [`Destination`] over [`TusClient`]. It maps the session's calls
//! to OPTIONS, POST, HEAD, PATCH and DELETE, and owns what only tus needs: the checksum
//! extension's offer, the creation metadata, the socket's send queue.

use super::SendError;
use super::destination::{Capabilities, DeltaBase, Destination};
use crate::client::{
    ChannelBody, ClientError, LinkProbe, PatchOutcome, TusClient, UploadInfo, parse_endpoint,
};
use crate::protocol::{Checksum, Metadata, ext, meta};
use crate::units::Rate;
use sha2::{Digest, Sha256};
use std::path::Path;
use url::Url;

/// A tus endpoint (`http://host:8080/files/`) and the one connection to it.
pub(super) struct Tus {
    client: TusClient,
}

impl Tus {
    /// The endpoint at `url`. A given `ca` is checked even for http, so a typo shows before
    /// the URL changes to https.
    pub(super) fn open(
        url: &str,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<Tus, SendError> {
        let endpoint = parse_endpoint(url).map_err(SendError::Url)?;
        let tls = if endpoint.scheme() == "https" || ca.is_some() {
            Some(crate::tls::client_config(ca).map_err(SendError::Tls)?)
        } else {
            None
        };
        let client = match tls {
            Some(config) => TusClient::new(endpoint, token).with_tls(config),
            None => TusClient::new(endpoint, token),
        };
        Ok(Tus { client })
    }

    /// tus over a client whose connection someone else opens (see [`crate::client::Dialer`]).
    pub(super) fn over(client: TusClient) -> Tus {
        Tus { client }
    }
}

impl Destination for Tus {
    async fn discover(&mut self) -> Result<Capabilities, ClientError> {
        let caps = self.client.options().await?;
        Ok(Capabilities {
            // An algorithm offered without the extension declared is not one to rely on.
            checksum: caps.checksum.filter(|_| caps.has(ext::CHECKSUM)),
            max_size: caps.max_size,
            piece_floor: 0,
        })
    }

    async fn create(&mut self, size: u64, name: &str) -> Result<Url, ClientError> {
        let mut md = Metadata::default();
        md.insert(meta::FILENAME, name.as_bytes().to_vec());
        if size == 0 {
            // No PATCH will carry a Repr-Digest; declare the (empty) digest up front.
            md.insert(meta::SHA256, hex::encode(Sha256::digest(b"")).into_bytes());
        }
        self.client.create(size, &md).await
    }

    async fn offset(&mut self, upload: &Url) -> Result<UploadInfo, ClientError> {
        self.client.head(upload).await
    }

    async fn connect(&mut self, rate: Option<Rate>) -> Result<LinkProbe, ClientError> {
        self.client
            .connect_paced(rate.map(Rate::bytes_per_second))
            .await
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
        (self.client)
            .patch(upload, offset, len, body, checksum, digest)
            .await
    }

    async fn delete(&mut self, upload: &Url) -> Result<(), ClientError> {
        self.client.delete(upload).await
    }

    fn disconnect(&mut self) {
        self.client.disconnect();
    }

    fn host(&self) -> &str {
        self.client.endpoint().host_str().unwrap_or_default()
    }

    /// Only from a server that advertises the `delta` extension: another tus server's 404
    /// would say nothing about the file.
    async fn index(&mut self, name: &str) -> Result<Option<Vec<u8>>, ClientError> {
        if !self.client.options().await?.has(ext::DELTA) {
            return Ok(None);
        }
        self.client.index(name).await
    }

    /// The metadata names the base and its index's digest, so the server refuses a recipe it
    /// cannot use before a byte of it is sent.
    async fn create_delta(
        &mut self,
        size: u64,
        name: &str,
        base: &DeltaBase,
    ) -> Result<Url, ClientError> {
        let mut md = Metadata::default();
        md.insert(meta::FILENAME, name.as_bytes().to_vec());
        md.insert(meta::DELTA_BASE, base.name.as_bytes().to_vec());
        md.insert(
            meta::DELTA_BASE_SHA256,
            hex::encode(base.sha256).into_bytes(),
        );
        self.client.create(size, &md).await
    }
}
