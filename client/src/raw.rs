//! Low-level HTTP access for tests that need byte-level control over the polling transport.
//!
//! [`HttpConn`] is one HTTP/1.1 keep-alive connection: every [`HttpConn::request`] goes over the
//! **same** TCP connection (it never reconnects silently; once the server closes it, requests fail
//! with [`Error::Closed`]). This lets a test drive several Engine.IO sessions through one
//! connection, the way a browser or a proxy multiplexes requests:
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) -> Result<(), sio_client::Error> {
//! use sio_client::raw::{self, HttpConn};
//! let mut conn = HttpConn::connect(addr).await?;
//! let res = conn.get(&raw::handshake_url("/socket.io/")).await?;
//! let hs = raw::parse_open_packet(res.text())?;
//! let res = conn.post(&raw::polling_url("/socket.io/", &hs.sid), "40").await?;
//! assert_eq!(res.text(), "ok");
//! let res = conn.get(&raw::polling_url("/socket.io/", &hs.sid)).await?;
//! let packets = raw::decode_payload(res.text()); // e.g. ["40{\"sid\":\"...\"}"]
//! # Ok(()) }
//! ```
//!
//! The same over TLS, behind a load balancer that sends a PROXY protocol header first
//! ([`ConnectOptions`]: the preamble goes out on the raw TCP stream, before TLS and HTTP):
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr, ca_pem: &[u8]) -> Result<(), sio_client::Error> {
//! use sio_client::TlsConfig;
//! use sio_client::raw::{self, ConnectOptions, HttpConn};
//! let opts = ConnectOptions::new()
//!     .tls(TlsConfig::trusting_pem(ca_pem)?)
//!     .preamble("PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n");
//! let mut conn = HttpConn::connect_with(addr, opts).await?;
//! let res = conn.get(&raw::handshake_url("/socket.io/")).await?;
//! let presented = conn.peer_certificate_der(); // the server's certificate (DER)
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::net::{self, Stream};
pub use crate::packet::{
    Handshake, RECORD_SEPARATOR, decode_payload, encode_payload, parse_open_packet, split_payload,
};
pub use crate::tls::TlsConfig;

/// A response read by [`HttpConn::request`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The full response body.
    pub body: Bytes,
}

impl RawResponse {
    /// The body as UTF-8 text (an empty string if it is not valid UTF-8).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("")
    }

    /// The value of a header, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The body split into Engine.IO packets (see [`decode_payload`]).
    pub fn packets(&self) -> Vec<String> {
        decode_payload(self.text())
    }

    /// Turns a non-2xx response into [`Error::Http`] (with the body as text).
    pub fn error_for_status(self) -> Result<Self> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(Error::Http {
                status: self.status,
                body: String::from_utf8_lossy(&self.body).into_owned(),
            })
        }
    }
}

/// How to open a connection: TLS or not, and bytes to send first. Used by
/// [`HttpConn::connect_with`] and [`send_bytes_with`]; the [`Client`](crate::Client) takes the
/// same settings from [`ClientConfig::tls`](crate::ClientConfig::tls) and
/// [`ClientConfig::preamble`](crate::ClientConfig::preamble).
///
/// The default is plain TCP with no preamble. Build with the setters or with the public fields:
///
/// ```no_run
/// # fn demo(tls: sio_client::TlsConfig) {
/// use sio_client::raw::ConnectOptions;
/// let opts = ConnectOptions::new().tls(tls).preamble(&b"PROXY UNKNOWN\r\n"[..]);
/// let same = ConnectOptions { tls: opts.tls.clone(), preamble: opts.preamble.clone() };
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Run a TLS handshake (after the preamble) and speak HTTP over it.
    pub tls: Option<TlsConfig>,
    /// Bytes written on the raw TCP stream right after connecting, before TLS or HTTP: e.g. a
    /// PROXY protocol v1 line (`PROXY TCP4 198.51.100.1 127.0.0.1 5000 80\r\n`) or v2 header,
    /// as a load balancer sends it. Sent as is; `None` or empty sends nothing.
    pub preamble: Option<Bytes>,
}

impl ConnectOptions {
    /// Plain TCP, no preamble.
    pub fn new() -> Self {
        ConnectOptions::default()
    }

    /// Uses TLS.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends `bytes` first on the new TCP connection (see the `preamble` field).
    pub fn preamble(mut self, bytes: impl Into<Bytes>) -> Self {
        self.preamble = Some(bytes.into());
        self
    }
}

/// One persistent HTTP/1.1 connection (keep-alive), plain or TLS. Dropping it closes the TCP
/// connection.
#[derive(Debug)]
pub struct HttpConn {
    sender: http1::SendRequest<Full<Bytes>>,
    conn_task: JoinHandle<()>,
    host: HeaderValue,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    peer_cert: Option<Vec<u8>>,
    tls: bool,
    io: Arc<IoCounters>,
}

/// What the connection's socket saw, so a failed request can tell whether the server had
/// started answering it.
#[derive(Debug, Default)]
struct IoCounters {
    /// Bytes read from the server so far.
    read: AtomicU64,
    /// A write to the server failed since the flag was last cleared.
    write_failed: AtomicBool,
}

/// A (plain or TLS) stream that counts what it reads and notes failed writes (see
/// [`IoCounters`]). Over TLS it counts decrypted bytes: TLS records that carry no HTTP data
/// (e.g. session tickets) are not "a response".
#[derive(Debug)]
struct Counted {
    tcp: Stream,
    io: Arc<IoCounters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.io.read.fetch_add(n as u64, Ordering::Release);
        res
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = &res {
            self.io.write_failed.store(true, Ordering::Release);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Err(_)) = &res {
            self.io.write_failed.store(true, Ordering::Release);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A request that failed on a kept-alive connection, with what is known about how far it got.
#[derive(Debug)]
pub(crate) struct SendFailure {
    /// The error.
    pub error: Error,
    /// The request never reached the server: the connection refused it before writing it, or
    /// writing it failed.
    pub not_sent: bool,
    /// Not one byte of a response arrived before the failure.
    pub no_response: bool,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

impl HttpConn {
    /// Opens a TCP connection to `addr` (with `TCP_NODELAY`) and sets up HTTP/1.1 on it.
    pub async fn connect(addr: SocketAddr) -> Result<HttpConn> {
        Self::connect_opts(addr, &ConnectOptions::default()).await
    }

    /// Like [`HttpConn::connect`], over TLS: every request of this connection goes through the
    /// same TLS session. Fails with [`Error::Tls`] if the handshake fails (e.g. the server's
    /// certificate is not trusted by `tls`), [`Error::Timeout`] after
    /// [`TLS_HANDSHAKE_TIMEOUT`](crate::tls::TLS_HANDSHAKE_TIMEOUT) without an answer.
    ///
    /// ```no_run
    /// # async fn demo(addr: std::net::SocketAddr, ca_pem: &[u8]) -> Result<(), sio_client::Error> {
    /// use sio_client::{TlsConfig, raw::{self, HttpConn}};
    /// let tls = TlsConfig::trusting_pem(ca_pem)?;
    /// let mut conn = HttpConn::connect_tls(addr, &tls).await?;
    /// let res = conn.get(&raw::handshake_url("/socket.io/")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_tls(addr: SocketAddr, tls: &TlsConfig) -> Result<HttpConn> {
        Self::connect_opts(addr, &ConnectOptions::new().tls(tls.clone())).await
    }

    /// Opens a connection as `opts` says: TCP, then the preamble, then TLS (each optional),
    /// then HTTP/1.1. The connection is never reopened, whatever the options.
    pub async fn connect_with(addr: SocketAddr, opts: ConnectOptions) -> Result<HttpConn> {
        Self::connect_opts(addr, &opts).await
    }

    pub(crate) async fn connect_opts(addr: SocketAddr, opts: &ConnectOptions) -> Result<HttpConn> {
        let stream = net::open(addr, opts).await?;
        let local_addr = stream.local_addr()?;
        let peer_cert = stream.peer_certificate_der();
        let tls = matches!(stream, Stream::Tls(_));
        let io = Arc::new(IoCounters::default());
        let counted = Counted {
            tcp: stream,
            io: io.clone(),
        };
        let (sender, conn) = http1::handshake(TokioIo::new(counted)).await?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!("http connection ended: {e}");
            }
        });
        let host = HeaderValue::from_str(&addr.to_string())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(HttpConn {
            sender,
            conn_task,
            host,
            peer_addr: addr,
            local_addr,
            peer_cert,
            tls,
            io,
        })
    }

    /// Over TLS, the DER encoding of the certificate the server presented (the first of its
    /// chain, i.e. its own); `None` on a plain connection. Compare it with the certificate the
    /// server was given to check which one it serves.
    pub fn peer_certificate_der(&self) -> Option<Vec<u8>> {
        self.peer_cert.clone()
    }

    /// True if this connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The local address of the TCP connection (identifies the connection).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// True once the connection was closed (by either side); later requests fail.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request on this connection and reads the whole response.
    ///
    /// * `method`: `"GET"`, `"POST"`, ...
    /// * `path_and_query`: origin-form target, e.g. `/socket.io/?EIO=4&transport=polling`.
    /// * `headers`: extra headers; `Host` is added unless given. For a non-empty body,
    ///   `Content-Type: text/plain;charset=UTF-8` is added unless given. `Content-Length` is set by hyper.
    ///
    /// Non-2xx statuses are **not** errors here: check [`RawResponse::status`]
    /// (or call [`RawResponse::error_for_status`]).
    pub async fn request(
        &mut self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<RawResponse> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| Error::InvalidArgument(format!("method {method:?}: {e}")))?;
        let body: Bytes = body.into();
        let mut req = Request::builder().method(method).uri(path_and_query);
        let mut has_host = false;
        let mut has_ct = false;
        for (k, v) in headers {
            has_host |= k.eq_ignore_ascii_case("host");
            has_ct |= k.eq_ignore_ascii_case("content-type");
            req = req.header(*k, *v);
        }
        if !has_host {
            req = req.header(header::HOST, self.host.clone());
        }
        if !has_ct && !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "text/plain;charset=UTF-8");
        }
        let req = req.body(Full::new(body))?;
        self.send(req).await
    }

    /// `GET path_and_query` with no extra headers.
    pub async fn get(&mut self, path_and_query: &str) -> Result<RawResponse> {
        self.request("GET", path_and_query, &[], Bytes::new()).await
    }

    /// `POST path_and_query` with a text body and no extra headers.
    pub async fn post(
        &mut self,
        path_and_query: &str,
        body: impl Into<Bytes>,
    ) -> Result<RawResponse> {
        self.request("POST", path_and_query, &[], body).await
    }

    /// Sends a prepared request (must carry a `Host` header).
    pub(crate) async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<RawResponse> {
        self.send_tracked(req).await.map_err(|f| f.error)
    }

    /// Like [`send`](Self::send), but a failure says whether the request left this client and
    /// whether any byte of a response arrived, so the caller can tell "the server closed this
    /// idle connection under our feet" from "the server failed while answering".
    pub(crate) async fn send_tracked(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> std::result::Result<RawResponse, SendFailure> {
        if self.sender.ready().await.is_err() {
            return Err(SendFailure {
                error: Error::Closed("the HTTP connection is closed".into()),
                not_sent: true,
                no_response: true,
            });
        }
        let read_before = self.io.read.load(Ordering::Acquire);
        self.io.write_failed.store(false, Ordering::Release);
        let res = match self.sender.try_send_request(req).await {
            Ok(res) => res,
            Err(mut e) => {
                let returned = e.take_message().is_some();
                return Err(SendFailure {
                    not_sent: returned || self.io.write_failed.load(Ordering::Acquire),
                    no_response: self.io.read.load(Ordering::Acquire) == read_before,
                    error: e.into_error().into(),
                });
            }
        };
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| SendFailure {
            error: e.into(),
            not_sent: false,
            no_response: false,
        })?;
        Ok(RawResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }
}

/// Writes `request` verbatim on a new TCP connection, then reads until the server closes the
/// connection or `timeout` passes with no new data, and returns everything read.
/// For malformed-request tests; nothing is parsed.
pub async fn send_bytes(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<Bytes> {
    send_bytes_with(addr, ConnectOptions::default(), request, timeout).await
}

/// Like [`send_bytes`], on a connection opened as `opts` says (preamble, TLS): e.g. a
/// malformed request over TLS, or a PROXY header followed by a request. Over TLS, a server that
/// closes without a TLS close_notify ends the read like a plain close.
///
/// ```no_run
/// # async fn demo(addr: std::net::SocketAddr) -> Result<(), sio_client::Error> {
/// use std::time::Duration;
/// use sio_client::raw::{self, ConnectOptions};
/// let opts = ConnectOptions::new().preamble("PROXY garbage\r\n");
/// let reply = raw::send_bytes_with(addr, opts, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(2)).await?;
/// # Ok(()) }
/// ```
pub async fn send_bytes_with(
    addr: SocketAddr,
    opts: ConnectOptions,
    request: &[u8],
    timeout: Duration,
) -> Result<Bytes> {
    let mut stream = net::open(addr, &opts).await?;
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Ok(Err(e)) if out.is_empty() => return Err(e.into()),
            Ok(Err(_)) => break,
        }
    }
    Ok(out.into())
}

/// The URL of a polling handshake: `{path}?EIO=4&transport=polling`.
pub fn handshake_url(path: &str) -> String {
    format!("{path}?EIO=4&transport=polling")
}

/// The URL of a polling GET/POST for session `sid`: `{path}?EIO=4&transport=polling&sid={sid}`.
pub fn polling_url(path: &str, sid: &str) -> String {
    format!("{path}?EIO=4&transport=polling&sid={sid}")
}

/// The path and query of a websocket request, with a `sid` for an upgrade:
/// `{path}?EIO=4&transport=websocket[&sid={sid}]`.
pub fn websocket_url(path: &str, sid: Option<&str>) -> String {
    match sid {
        Some(sid) => format!("{path}?EIO=4&transport=websocket&sid={sid}"),
        None => format!("{path}?EIO=4&transport=websocket"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            handshake_url("/socket.io/"),
            "/socket.io/?EIO=4&transport=polling"
        );
        assert_eq!(
            polling_url("/socket.io/", "abc"),
            "/socket.io/?EIO=4&transport=polling&sid=abc"
        );
        assert_eq!(
            websocket_url("/socket.io/", Some("abc")),
            "/socket.io/?EIO=4&transport=websocket&sid=abc"
        );
        assert_eq!(
            websocket_url("/socket.io/", None),
            "/socket.io/?EIO=4&transport=websocket"
        );
    }

    #[test]
    fn status_errors() {
        let r = RawResponse {
            status: 400,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"code":"1","message":"Session ID unknown"}"#),
        };
        assert_eq!(r.text(), r#"{"code":"1","message":"Session ID unknown"}"#);
        let e = r.error_for_status().unwrap_err();
        assert_eq!(e.http_status(), Some(400));
        assert!(e.to_string().contains("Session ID unknown"), "{e}");
    }
}
