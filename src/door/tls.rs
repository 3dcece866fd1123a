//! `--tls-cert` / `--tls-key`: the certificate a worker presents, loaded from PEM files.
//!
//! TLS is terminated by the worker that receives the connection (see ARCHITECTURE.md, "TLS"):
//! the primary only checks that a connection starts with a TLS record and passes it on. Both
//! processes load the files: the primary at start and before every reload, only to refuse a
//! broken pair with one clear line while the running workers keep serving; each worker when it
//! starts, so a rolling reload (SIGHUP) gives new connections the certificate on disk while
//! connections of the draining workers finish on the old one.
//!
//! PEM is read with `rustls-pki-types` (the maintained successor of `rustls-pemfile`); the
//! crypto is rustls' `ring` provider, chosen explicitly so the process-wide default never
//! matters. ALPN offers `http/1.1` only: workers speak HTTP/1.1 (websocket upgrades need it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The first byte of a TLS connection: a TLS record of type `handshake` (the ClientHello).
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;

/// What the primary answers a plain-HTTP request on the TLS port before closing it.
pub(crate) const PLAINTEXT_ON_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 46\r\n\r\nthis port speaks TLS: use https:// or wss://\r\n";

/// Why a certificate or key cannot be used. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read the TLS {what} {}: {error}", path.display())]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error(
        "no certificate in {} (expected PEM blocks `-----BEGIN CERTIFICATE-----`, the server's \
         certificate first, then its chain)",
        .0.display()
    )]
    NoCertificate(PathBuf),
    /// The key file holds no usable PEM private key.
    #[error(
        "no private key in {} (expected one PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE \
         KEY` block): {reason}",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refuses the pair.
    #[error(
        "TLS certificate {} and key {} do not go together: {reason} (check that --tls-key is the \
         key of the first certificate in --tls-cert)",
        cert.display(),
        key.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

/// Loads the certificate chain and key, checks that they match, and builds the server
/// configuration a worker serves with.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|error| TlsError::Read {
        what: "certificate",
        path: cert.to_owned(),
        error,
    })?;
    let key_pem = std::fs::read(key).map_err(|error| TlsError::Read {
        what: "key",
        path: key.to_owned(),
        error,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = |reason: String| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| mismatch(e.to_string()))?
        .with_no_client_auth()
        // `with_single_cert` checks that the key's public half is the certificate's.
        .with_single_cert(chain, private)
        .map_err(|e| mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_a_matching_pair_and_refuses_the_rest_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "a.pem", &a.cert.pem());
        let key = write(dir.path(), "a.key", &a.signing_key.serialize_pem());
        let other_key = write(dir.path(), "b.key", &b.signing_key.serialize_pem());
        let config = load(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let e = load(&cert, &other_key).unwrap_err().to_string();
        assert!(e.contains("do not go together"), "{e}");

        let e = load(&dir.path().join("missing.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the TLS certificate"), "{e}");

        let e = load(&key, &key).unwrap_err().to_string();
        assert!(e.contains("no certificate in"), "{e}");

        let e = load(&cert, &cert).unwrap_err().to_string();
        assert!(e.contains("no private key in"), "{e}");
    }

    #[test]
    fn plaintext_answer_has_the_right_length() {
        let text = std::str::from_utf8(PLAINTEXT_ON_TLS_PORT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with(&format!("content-length: {}", body.len())));
    }
}
