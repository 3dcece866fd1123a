//! Per-request session routing inside a worker (a tower service in front of socketioxide).
//!
//! - **Handshake over polling**: the new session's id is registered with the primary *before*
//!   the handshake response leaves the worker, so the client's next request (on any connection)
//!   is routed here. This closes the race that makes `@socket.io/sticky` lose sessions.
//! - **Request for a session of another worker**: a browser may reuse a keep-alive connection
//!   (handed to this worker) for a request of a session living on another worker. The request is
//!   forwarded to the owner ([`forward`](super::forward)) instead of failing with
//!   "Session ID unknown".
//! - **Session activity** keeps the session's registration alive ([`Leases`](super::lease::Leases)).
//!
//! - **Handshake on a kept-alive connection** (not its first request): the primary picks the
//!   worker for the new session, as for a new connection, so sessions behind a proxy that
//!   keeps its upstream connections alive are balanced per session; another worker's pick is
//!   forwarded, a cap answers 503 (the connection stays open).
//! - **Caps on TLS**: the primary could not read the first request of a TLS connection; when it
//!   was over a cap, that first request is answered 503 unless it belongs to a live session.
//! - **Limits**: request bodies are bounded in time ([`body`](super::body)); a websocket the
//!   app accepts is put under `--max-payload` ([`ws_limit`](crate::door::ws_limit)).
//!
//! Every request also gets the client's address as a [`ClientAddr`] extension (from a trusted
//! proxy's `X-Forwarded-For` with `--trusted-proxies`).

use crate::sync::LockExt;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower::{Service, ServiceExt};

use crate::door::ws_limit::WsSwitch;
use crate::ipc::message::Refusal;
use crate::sid::SessionId;
use crate::supervisor::peek::query_param;

use super::WorkerShared;
use super::body::TimedBody;
use super::events::CountingBody;
use super::forward;
use super::tracked::ConnEnd;

/// The client's address: the TCP peer, the source of its PROXY protocol header
/// (`--proxy-protocol`), or the right-most untrusted `X-Forwarded-For` entry of a request from a
/// trusted proxy (`--trusted-proxies`; the port is then 0). Forwarded requests keep it.
///
/// Read it in axum handlers with `Extension<ClientAddr>`, or in socketioxide handlers from
/// `socket.req_parts().extensions`.
///
/// ```no_run
/// use sio_cluster::{ClientAddr, ClusterAdapter};
/// use socketioxide::extract::SocketRef;
///
/// async fn on_connect(socket: SocketRef<ClusterAdapter>) {
///     let client = socket.req_parts().extensions.get::<ClientAddr>().and_then(|c| c.0);
///     tracing::info!(?client, "connected");
/// }
/// // And in an axum route:
/// async fn who(axum::Extension(ClientAddr(client)): axum::Extension<ClientAddr>) -> String {
///     format!("{client:?}")
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub Option<SocketAddr>);

/// Facts about the connection a request arrived on.
#[derive(Clone, Debug)]
pub(crate) struct ConnCtx {
    /// Forwarded by another worker: serve here, never forward again.
    pub forwarded: bool,
    /// Client address.
    pub peer: Option<SocketAddr>,
    /// Requests started on this connection so far.
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    /// Requests whose response head is not yet produced: while one is, a drain must not make
    /// hyper close the connection (it would append `Connection: close` to a 101 and break the
    /// websocket upgrade).
    pub in_flight: Arc<std::sync::atomic::AtomicU64>,
    /// The primary could not read the first request (TLS) and the connection is over this cap:
    /// refuse the first request unless it belongs to a live session.
    pub refuse_first: Option<Refusal>,
    /// Switches the websocket limits on.
    pub ws: Arc<WsSwitch>,
    /// What the connection's end accounts for.
    pub end: Arc<ConnEnd>,
}

/// Counts a request in [`ConnCtx::in_flight`] until its response head is produced (or the
/// request is dropped).
struct InFlight(Arc<std::sync::atomic::AtomicU64>);

impl InFlight {
    fn new(counter: &Arc<std::sync::atomic::AtomicU64>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a request means for session routing.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// Request for an existing session.
    Session(SessionId),
    /// Engine.IO handshake (no sid).
    Handshake { polling: bool },
    /// Anything else (other routes, malformed sid: socketioxide answers those itself).
    Other,
}

fn classify(path: &str, query: Option<&str>, prefix: &str) -> Kind {
    if !(path.starts_with(prefix) || path == prefix.trim_end_matches('/')) {
        return Kind::Other;
    }
    let q = query.unwrap_or("");
    match query_param(q, "sid") {
        Some(v) => SessionId::parse(v).map_or(Kind::Other, Kind::Session),
        None => Kind::Handshake {
            polling: query_param(q, "transport") == Some("polling"),
        },
    }
}

/// Finds the session id in an Engine.IO open packet (`0{"sid":"...",...}`).
fn sid_in_open_packet(body: &[u8]) -> Option<SessionId> {
    const KEY: &[u8] = b"\"sid\":\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    SessionId::from_bytes(body.get(at..at + SessionId::LEN)?)
}

/// Wraps the app's service (socketioxide + axum routes) for one connection.
#[derive(Clone)]
pub(crate) struct SessionService<S> {
    inner: S,
    shared: Arc<WorkerShared>,
    conn: ConnCtx,
}

impl<S> SessionService<S> {
    pub fn new(inner: S, shared: Arc<WorkerShared>, conn: ConnCtx) -> Self {
        Self {
            inner,
            shared,
            conn,
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S, B> Service<Request<Incoming>> for SessionService<S>
where
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let index = self
            .conn
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = self.client_addr(&req);
        if self
            .shared
            .health_path
            .as_deref()
            .is_some_and(|p| p == req.uri().path())
        {
            // The health check: the primary's answer, whatever this worker's state.
            let shared = self.shared.clone();
            return Box::pin(async move { Ok(health(&shared).await) });
        }
        let kind = classify(
            req.uri().path(),
            req.uri().query(),
            &self.shared.engine_prefix,
        );
        let scan = matches!(kind, Kind::Session(_)) && req.method() == http::Method::POST;
        let (parts, body) = req.into_parts();
        let (body, watch) = TimedBody::new(body, self.shared.door.body_timeout, scan);
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(ClientAddr(client));
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        let conn = self.conn.clone();
        let in_flight = InFlight::new(&conn.in_flight);
        Box::pin(async move {
            let _in_flight = in_flight;
            let res = match kind {
                Kind::Session(sid) => {
                    // Touch first: a session whose requests all arrive forwarded (through
                    // another worker's keep-alive connection) must still count as active.
                    let ours = shared.leases.touch(&sid);
                    if ours || conn.forwarded {
                        let get = req.method() == http::Method::GET;
                        let mut res = serve_session(inner, &shared, sid, req, &conn).await;
                        let received = watch.events();
                        if received > 0 {
                            shared
                                .events
                                .received
                                .fetch_add(received, Ordering::Relaxed);
                        }
                        if get && res.status() == StatusCode::OK {
                            // A polling GET: count the events it carries as they go out.
                            let counts = shared.events.clone();
                            res = res.map(|b| Body::new(CountingBody::new(b, counts)));
                        }
                        if watch.close_packet() && shared.leases.remove(&sid) {
                            // The client closed its session: stop routing it at once.
                            shared.unregister(vec![sid]);
                        }
                        res
                    } else {
                        // Not one of ours: a keep-alive connection reused for another worker's
                        // session? Ask the primary who owns it.
                        match shared.control.lookup_sid(sid).await {
                            Ok(Some(owner)) if owner != shared.member => {
                                forward::forward(&shared, owner, client, req).await
                            }
                            _ => local(inner, req, &conn).await,
                        }
                    }
                }
                _ if index == 0 && conn.refuse_first.is_some() => {
                    let r = conn.refuse_first.unwrap_or(Refusal::WorkerFull);
                    tracing::debug!(?client, "new session refused: {}", r.reason());
                    refusal(r, true)
                }
                Kind::Handshake { polling } if index > 0 && !conn.forwarded => {
                    // A new session on a kept-alive connection: balanced like a new connection.
                    match shared.control.pick(client.map(|a| a.ip())).await {
                        Ok(Ok(owner)) if owner != shared.member => {
                            forward::forward(&shared, owner, client, req).await
                        }
                        Ok(Err(r)) => {
                            tracing::debug!(?client, "new session refused: {}", r.reason());
                            refusal(r, false)
                        }
                        _ => handshake(inner, &shared, polling, req, &conn).await,
                    }
                }
                Kind::Handshake { polling } => handshake(inner, &shared, polling, req, &conn).await,
                Kind::Other => local(inner, req, &conn).await,
            };
            if watch.expired() {
                tracing::debug!(?client, "request body too slow; answering 408 and closing");
                let mut res = error_response(StatusCode::REQUEST_TIMEOUT);
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Ok(res);
            }
            let mut res = res;
            if *shared.drain.borrow() && res.status() != StatusCode::SWITCHING_PROTOCOLS {
                // Draining: this connection's last response (the client reconnects elsewhere).
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(res)
        })
    }
}

impl<S> SessionService<S> {
    /// The client's address for this request: the connection's, or a trusted proxy's
    /// `X-Forwarded-For` client.
    fn client_addr(&self, req: &Request<Incoming>) -> Option<SocketAddr> {
        let peer = self.conn.peer?;
        let trusted = &self.shared.door.trusted;
        if trusted.is_empty() || !trusted.contains(peer.ip()) {
            return Some(peer);
        }
        let values = req
            .headers()
            .get_all(crate::door::forwarded::HEADER)
            .iter()
            .map(|v| v.as_bytes());
        match trusted.client_ip(peer.ip(), values) {
            ip if ip != peer.ip() => Some(SocketAddr::new(ip, 0)),
            _ => Some(peer),
        }
    }
}

/// A 503 for a refused new session. `close`: end the connection after it.
/// The health check's response, as the primary gives it (503 if it does not answer).
async fn health(shared: &WorkerShared) -> Response<Body> {
    let (status, body) = match shared.control.health().await {
        Ok(answer) => answer,
        Err(_) => (
            503,
            r#"{"status":"unavailable","reason":"the primary does not answer"}"#.to_owned(),
        ),
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn refusal(r: Refusal, close: bool) -> Response<Body> {
    let mut res = Response::new(Body::from(format!("{}; retry later\r\n", r.reason())));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::supervisor::caps::RETRY_AFTER_S),
    );
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// Serves a request here; a websocket the app accepts goes under the payload limits before
/// hyper writes the 101.
async fn local<S, B>(inner: S, req: Request<TimedBody>, conn: &ConnCtx) -> Response<Body>
where
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let res = call(inner, req).await;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        conn.ws.activate();
    }
    res
}

async fn call<S, B>(inner: S, req: Request<TimedBody>) -> Response<Body>
where
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    match inner.oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    }
}

async fn serve_session<S, B>(
    inner: S,
    shared: &WorkerShared,
    sid: SessionId,
    req: Request<TimedBody>,
    conn: &ConnCtx,
) -> Response<Body>
where
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let res = local(inner, req, conn).await;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The session now lives on this websocket: it stops needing routing when it closes.
        *conn.end.upgraded.lock_unpoisoned() = Some(sid);
    }
    // The engine no longer knows this session: stop routing it here.
    if res.status() == StatusCode::BAD_REQUEST && shared.leases.remove(&sid) {
        shared.unregister(vec![sid]);
    }
    res
}

async fn handshake<S, B>(
    inner: S,
    shared: &WorkerShared,
    polling: bool,
    req: Request<TimedBody>,
    conn: &ConnCtx,
) -> Response<Body>
where
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let res = local(inner, req, conn).await;
    let mut res = if polling && res.status() == StatusCode::OK {
        let (parts, body) = res.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                tracing::warn!("cannot read a handshake response: {e}");
                return error_response(StatusCode::INTERNAL_SERVER_ERROR);
            }
        };
        if let Some(sid) = sid_in_open_packet(&bytes) {
            // Hold the response until the primary routes this session here.
            if let Err(e) = shared.control.register_sid(sid).await {
                tracing::error!(%sid, "cannot register a new session with the primary: {e}");
                return error_response(StatusCode::SERVICE_UNAVAILABLE);
            }
            shared.leases.insert(sid);
        }
        Response::from_parts(parts, Body::from(bytes))
    } else {
        res
    };
    if let Some(cookie) = &shared.cookie {
        res.headers_mut().append(header::SET_COOKIE, cookie.clone());
    }
    res
}

pub(crate) fn error_response(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::from(status.canonical_reason().unwrap_or("error")));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_engine_requests() {
        let p = "/socket.io/";
        assert_eq!(
            classify("/socket.io/", Some("EIO=4&transport=polling"), p),
            Kind::Handshake { polling: true }
        );
        assert_eq!(
            classify("/socket.io/", Some("EIO=4&transport=websocket"), p),
            Kind::Handshake { polling: false }
        );
        assert_eq!(
            classify(
                "/socket.io/",
                Some("EIO=4&transport=polling&sid=EsPJiCvFMpyNdJz2"),
                p
            ),
            Kind::Session(SessionId::parse("EsPJiCvFMpyNdJz2").unwrap())
        );
        assert_eq!(classify("/socket.io/", Some("sid=bad"), p), Kind::Other);
        assert_eq!(
            classify("/api", Some("sid=EsPJiCvFMpyNdJz2"), p),
            Kind::Other
        );
    }

    #[test]
    fn finds_sid_in_open_packet() {
        let body = br#"0{"sid":"EsPJiCvFMpyNdJz2","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(
            sid_in_open_packet(body).unwrap().as_str(),
            "EsPJiCvFMpyNdJz2"
        );
        assert!(sid_in_open_packet(b"0{}").is_none());
        assert!(sid_in_open_packet(br#"0{"sid":"short"}"#).is_none());
    }
}
