//! TLS for every connection the client opens (rustls with the `ring` provider, no OpenSSL).
//!
//! A [`TlsConfig`] is a rustls client configuration plus the server name to send (SNI) and to
//! verify the server's certificate against. Give it to [`ClientConfig::tls`](crate::ClientConfig::tls)
//! (websocket becomes `wss`, polling `https`) or to [`HttpConn::connect_tls`](crate::raw::HttpConn::connect_tls).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, Result};

/// How long a TLS handshake may take before the connection attempt fails with
/// [`Error::Timeout`]: a server that accepts TCP but never answers the ClientHello (e.g. one
/// waiting for a PROXY protocol header it was not sent) must not hang a test.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The name sent by default (SNI, and the name the certificate must be valid for).
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// TLS settings: a rustls client configuration and the server name.
///
/// Cheap to clone (the rustls configuration is shared).
///
/// ```no_run
/// # async fn demo(addr: std::net::SocketAddr) -> Result<(), sio_client::Error> {
/// use sio_client::{Client, ClientConfig, TlsConfig, Transport};
/// // The test CA (or the server's self-signed certificate), PEM-encoded.
/// let ca_pem = std::fs::read("ca.pem")?;
/// let tls = TlsConfig::trusting_pem(&ca_pem)?.server_name("localhost");
/// let client = Client::connect(ClientConfig::new(addr, Transport::WebSocket).tls(tls)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<rustls::ClientConfig>,
    server_name: String,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alpn: Vec<String> = self
            .config
            .alpn_protocols
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .field("alpn", &alpn)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Trusts exactly the certificates of `ca_pem` (every `CERTIFICATE` block in it; other
    /// blocks, e.g. a private key, are skipped): a test CA, or a server's self-signed
    /// certificate. Uses rustls' `ring` provider with its safe default protocol versions
    /// (TLS 1.2 and 1.3), no client certificate, ALPN `http/1.1` only; server name
    /// [`DEFAULT_SERVER_NAME`] until [`TlsConfig::server_name`] changes it.
    ///
    /// Fails with [`Error::InvalidArgument`] if the PEM is malformed, holds no certificate, or
    /// holds one that cannot be a trust anchor.
    pub fn trusting_pem(ca_pem: &[u8]) -> Result<TlsConfig> {
        let mut roots = RootCertStore::empty();
        let mut count = 0usize;
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| {
                Error::InvalidArgument(format!(
                    "the CA PEM could not be read ({e}): pass PEM text with \
                     -----BEGIN CERTIFICATE----- blocks"
                ))
            })?;
            roots.add(cert).map_err(|e| {
                Error::InvalidArgument(format!(
                    "certificate #{} of the CA PEM cannot be a trust anchor: {e}",
                    count + 1
                ))
            })?;
            count += 1;
        }
        if count == 0 {
            return Err(Error::InvalidArgument(
                "the CA PEM holds no CERTIFICATE block: pass the PEM of the CA (or of the \
                 self-signed certificate) the server presents"
                    .into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(format!("building the rustls client configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig {
            config: Arc::new(config),
            server_name: DEFAULT_SERVER_NAME.to_owned(),
        })
    }

    /// Uses a rustls client configuration built by the caller, as is (its roots, client
    /// certificate, ALPN list: offer only `http/1.1`, this client speaks nothing else).
    /// Server name [`DEFAULT_SERVER_NAME`] until [`TlsConfig::server_name`] changes it.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> TlsConfig {
        TlsConfig {
            config,
            server_name: DEFAULT_SERVER_NAME.to_owned(),
        }
    }

    /// Sets the server name: sent as SNI (unless it is an IP address) and checked against the
    /// server's certificate. A DNS name (`"localhost"`) or an IP address (`"127.0.0.1"`, for a
    /// certificate with that IP in its subject alternative names). An invalid name makes
    /// connecting fail with [`Error::InvalidArgument`].
    pub fn server_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.server_name);
        self
    }

    /// The server name in use (see [`TlsConfig::server_name`]).
    pub fn name(&self) -> &str {
        &self.server_name
    }

    /// The rustls client configuration.
    pub fn rustls_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    /// Runs the TLS handshake on `tcp` (connected to `addr`), bounded by
    /// [`TLS_HANDSHAKE_TIMEOUT`]: for callers that open their own sockets (a load generator
    /// binding source addresses, a raw websocket) and still want this configuration's checks
    /// and error messages.
    ///
    /// Fails with [`Error::Tls`] (saying what to check) if the handshake fails,
    /// [`Error::Timeout`] if the server does not answer, [`Error::InvalidArgument`] for an
    /// invalid server name.
    ///
    /// ```no_run
    /// # async fn demo(addr: std::net::SocketAddr, tls: sio_client::TlsConfig) -> Result<(), sio_client::Error> {
    /// let tcp = tokio::net::TcpStream::connect(addr).await?;
    /// let stream = tls.handshake(addr, tcp).await?;
    /// # drop(stream); Ok(()) }
    /// ```
    pub async fn handshake(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(self.server_name.clone()).map_err(|e| {
            Error::InvalidArgument(format!(
                "TLS server name {:?}: {e}; use a DNS name or an IP address",
                self.server_name
            ))
        })?;
        let connector = TlsConnector::from(self.config.clone());
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(handshake_error(addr, &self.server_name, &e)),
            Err(_) => Err(Error::Timeout(format!(
                "TLS handshake with {addr}: no answer within {TLS_HANDSHAKE_TIMEOUT:?} (is the \
                 server serving TLS on this port, and does it wait for a PROXY header first?)"
            ))),
        }
    }
}

/// Turns a failed handshake into an [`Error::Tls`] that says what to check.
fn handshake_error(addr: SocketAddr, name: &str, e: &std::io::Error) -> Error {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let msg = match rustls_err {
        Some(rustls::Error::InvalidCertificate(cert_err)) => format!(
            "the certificate of {addr} was rejected for server name {name:?}: {cert_err}; \
             trust the CA that issued it (TlsConfig::trusting_pem) and use a name it was issued \
             for (TlsConfig::server_name)"
        ),
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "the server {addr} aborted the TLS handshake with alert {alert:?} (server name \
             {name:?}); check that the protocol versions, ALPN and server name suit it"
        ),
        Some(
            err @ (rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }),
        ) => format!(
            "TLS handshake with {addr} failed: {err}; the server does not seem to speak TLS on \
             this port"
        ),
        Some(err) => format!("TLS handshake with {addr} (server name {name:?}) failed: {err}"),
        None => format!(
            "the connection to {addr} failed during the TLS handshake ({e}); is the server \
             serving TLS on this port?"
        ),
    };
    Error::Tls(msg)
}
