//! TLS for both ends (rustls with the ring provider): the server's certificate and key from
//! PEM files (`upload serve --tls-cert --tls-key`), and the client's trust roots, the system's
//! or a private CA's (`upload send --ca`).
//!
//! The provider is passed to each config builder instead of being installed as the process
//! default, so nothing depends on which crate happened to install one first. aws-lc-rs is left
//! out on purpose: it needs cmake and a long C build.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The one protocol both ends speak inside TLS.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a TLS configuration cannot be built. Every variant names the file at fault. The cause is
/// part of the message (`error`, not `source`), so it is printed once.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} \"{}\": {error}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what} \"{}\" is not valid PEM: {why}", path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error(
        "{what} \"{}\" holds no certificate: expected PEM with -----BEGIN CERTIFICATE-----",
        path.display()
    )]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error(
        "the key file \"{}\" holds no private key: expected PEM with -----BEGIN PRIVATE KEY----- \
         (or RSA / EC PRIVATE KEY)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "the key \"{}\" does not fit the certificate \"{}\": {error}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error(
        "the system has no trusted root certificates{}: pass --ca FILE with the server's CA",
        if why.is_empty() { String::new() } else { format!(" ({why})") }
    )]
    NoSystemRoots { why: String },
    #[error("the CA file \"{}\" holds no usable certificate: {error}", path.display())]
    BadCa { path: PathBuf, error: rustls::Error },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's configuration from a certificate chain and its private key, both PEM.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certificates("the certificate file", cert)?;
    let key_der = load_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|error| TlsError::KeyMismatch {
            cert: cert.into(),
            key: key.into(),
            error,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The client's configuration: trusts the certificates in `ca` (PEM, one or more) when given,
/// else the system's roots.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certificates("the CA file", path)? {
                roots.add(cert).map_err(|error| TlsError::BadCa {
                    path: path.into(),
                    error,
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            // Unparsable entries in a system bundle are common and harmless; the rest is used.
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                return Err(TlsError::NoSystemRoots { why });
            }
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.into(),
        error,
    })
}

fn bad_pem(what: &'static str, path: &Path, e: pem::Error) -> TlsError {
    TlsError::BadPem {
        what,
        path: path.into(),
        why: e.to_string(),
    }
}

/// Every certificate in a PEM file, in order; other sections (a key) are skipped.
fn load_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.into(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "the key file";
    let bytes = read(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey { path: path.into() },
        e => bad_pem(WHAT, path, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.path(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    /// A self-signed certificate for localhost and its key, as PEM files, and a second key.
    fn files() -> Files {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
        };
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        files.write("cert.pem", &made.cert.pem());
        files.write("key.pem", &made.signing_key.serialize_pem());
        let other = rcgen::KeyPair::generate().unwrap();
        files.write("other-key.pem", &other.serialize_pem());
        files
    }

    #[test]
    fn a_matching_pair_loads() {
        let f = files();
        let config = server_config(&f.path("cert.pem"), &f.path("key.pem")).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // The certificate doubles as its own CA.
        client_config(Some(&f.path("cert.pem"))).unwrap();
    }

    #[test]
    fn each_bad_file_is_named() {
        let f = files();
        let (cert, key) = (f.path("cert.pem"), f.path("key.pem"));
        let missing = f.path("missing.pem");
        let garbage = f.write("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n");
        let empty = f.write("empty.pem", "just text\n");
        let cases: Vec<(TlsError, &str)> = vec![
            (
                server_config(&missing, &key).unwrap_err(),
                "cannot read the certificate file",
            ),
            (
                server_config(&cert, &missing).unwrap_err(),
                "cannot read the key file",
            ),
            (
                server_config(&garbage, &key).unwrap_err(),
                "is not valid PEM",
            ),
            (
                server_config(&empty, &key).unwrap_err(),
                "holds no certificate",
            ),
            // A key where the certificate belongs.
            (
                server_config(&key, &key).unwrap_err(),
                "holds no certificate",
            ),
            (
                server_config(&cert, &cert).unwrap_err(),
                "holds no private key",
            ),
            (
                server_config(&cert, &f.path("other-key.pem")).unwrap_err(),
                "does not fit the certificate",
            ),
            (client_config(Some(&empty)).unwrap_err(), "the CA file"),
            (client_config(Some(&missing)).unwrap_err(), "cannot read"),
        ];
        for (error, expected) in cases {
            let text = error.to_string();
            assert!(text.contains(expected), "{text} (expected {expected:?})");
            assert!(text.contains(".pem\""), "names the file: {text}");
        }
    }
}
