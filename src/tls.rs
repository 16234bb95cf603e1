//! DICOM TLS (PS3.15 Annex B): a rustls server configuration from PEM files,
//! optionally requiring client certificates signed by a given CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

fn certificates(option: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{option}: cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{option}: {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{option}: no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Build the TLS configuration: `cert` (chain, PEM) and `key` (PEM), and with
/// `ca` every client must present a certificate that chains to it.
pub fn server_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let chain = certificates("tls_cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "tls_key: cannot read a PEM private key from {}: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates("tls_ca", ca)? {
                roots.add(c).map_err(|e| {
                    format!("tls_ca: unusable certificate in {}: {e}", ca.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_cert/tls_key: {e}"))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_bad_files_name_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"not pem").unwrap();
        let err = server_config(&dir.path().join("nope.pem"), &junk, None).unwrap_err();
        assert!(err.starts_with("tls_cert"), "{err}");
        let err = server_config(&junk, &junk, None).unwrap_err();
        assert!(err.starts_with("tls_cert"), "{err}");
    }
}
