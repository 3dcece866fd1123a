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
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
pub use crate::packet::{
    Handshake, RECORD_SEPARATOR, decode_payload, encode_payload, parse_open_packet, split_payload,
};

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

/// One persistent HTTP/1.1 connection (keep-alive). Dropping it closes the TCP connection.
#[derive(Debug)]
pub struct HttpConn {
    sender: http1::SendRequest<Full<Bytes>>,
    conn_task: JoinHandle<()>,
    host: HeaderValue,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
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

/// A TCP stream that counts what it reads and notes failed writes (see [`IoCounters`]).
#[derive(Debug)]
struct Counted {
    tcp: TcpStream,
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
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let local_addr = tcp.local_addr()?;
        let io = Arc::new(IoCounters::default());
        let counted = Counted {
            tcp,
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
            io,
        })
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
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(request).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(timeout, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
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
