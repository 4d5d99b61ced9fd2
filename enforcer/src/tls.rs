//! TLS on tally's own listeners (rustls): the `tls:` config section (a PEM certificate
//! chain and private key), loading it into an acceptor that offers HTTP/2 and HTTP/1.1
//! by ALPN, and the handshake with a time bound. Must not decide what is served over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS for a listener: without it the listener speaks plain HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Why a listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "tls.cert: cannot read certificates from {path}: {detail}. Give a PEM file with the certificate chain, leaf first"
    )]
    Cert { path: PathBuf, detail: String },
    #[error(
        "tls.key: cannot read a private key from {path}: {detail}. Give a PEM file with a PKCS#8, PKCS#1 or SEC1 key"
    )]
    Key { path: PathBuf, detail: String },
    #[error(
        "tls.config: the certificate and key do not make a TLS configuration: {0}. Check that the key belongs to the certificate"
    )]
    Config(String),
}

impl TlsConfig {
    /// An acceptor for this certificate and key, offering HTTP/2 and HTTP/1.1.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let certs = load_certs(&self.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| TlsError::Key {
            path: self.key_file.clone(),
            detail: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |detail: String| TlsError::Cert {
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

/// Complete the server side of a handshake within [`HANDSHAKE_TIMEOUT`]; `None` (and a
/// debug log line) when the client fails or stalls.
pub async fn handshake(acceptor: &TlsAcceptor, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let cfg = TlsConfig {
            cert_file: empty.clone(),
            key_file: dir.path().join("missing.pem"),
        };
        let e = cfg.acceptor().err().unwrap().to_string();
        assert!(e.starts_with("tls.cert") && e.contains("empty.pem"), "{e}");
        let cfg = TlsConfig {
            cert_file: dir.path().join("missing.pem"),
            key_file: empty,
        };
        assert!(
            cfg.acceptor()
                .err()
                .unwrap()
                .to_string()
                .starts_with("tls.cert")
        );
    }
}
