//! TLS for the listener (rustls with the ring provider), from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    key: &'static str,
    message: String,
}

/// Builds an acceptor from a certificate chain and private key in PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError {
            key: "http.tls_cert",
            message: format!("{}: {e}", cert.display()),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            key: "http.tls_cert",
            message: format!("{}: no certificate found", cert.display()),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError {
        key: "http.tls_key",
        message: format!("{}: {e}", key.display()),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "http.tls_cert",
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| TlsError {
            key: "http.tls_key",
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
