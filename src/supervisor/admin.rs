//! The admin listener (`--admin-listen`): the cluster's health, status and metrics, served by
//! the primary on its own address.
//!
//! | path | answer |
//! |---|---|
//! | `/livez` | `200` while the primary runs |
//! | `/readyz` | `200` when a worker is ready and the cluster is not draining, else `503`; JSON body |
//! | `/status` | JSON: every worker (index, pid, generation, state, uptime, connections, sessions, RSS, restarts), adapter, draining, version |
//! | `/metrics` | Prometheus / OpenMetrics text for the whole cluster ([`metrics`](super::metrics)) |
//! | `/events` | the lifecycle events ([`journal`](super::journal)) as JSON lines: the last ones, then each new one, for as long as the client stays (`?follow=0`: the last ones only) |
//!
//! It runs on the primary's runtime, apart from the accept loop, and keeps answering during a
//! drain (so a load balancer sees `/readyz` turn 503 from the first moment of SIGTERM). Each
//! answer is computed from memory; nothing here waits on a worker.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::{Shared, SupervisorError, metrics};

/// Content type of `/metrics` (what `prometheus-client`'s text encoder writes).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves the admin endpoints on a task; returns it and the bound address.
pub(crate) fn start(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), SupervisorError> {
    let listen_err = |what, e| SupervisorError::Listen(format!("{addr} (--admin-listen)"), what, e);
    let std = std::net::TcpListener::bind(addr).map_err(|e| listen_err("bind", e))?;
    std.set_nonblocking(true)
        .map_err(|e| listen_err("set_nonblocking", e))?;
    let bound = std.local_addr().map_err(|e| listen_err("getsockname", e))?;
    let listener = tokio::net::TcpListener::from_std(std).map_err(|e| listen_err("register", e))?;
    let task = shared.tasks.clone().spawn("admin listener", async move {
        // Followers of `/events` stay connected: their connections end with the primary.
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, mostly: wait a little instead of spinning.
                    tracing::warn!("admin listener: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move {
                        if req.uri().path() == "/events" && req.method() == http::Method::GET {
                            let follow = req.uri().query() != Some("follow=0");
                            return Ok::<_, Infallible>(events(&shared, follow));
                        }
                        Ok::<_, Infallible>(answer(&shared, &req).map(|b| b.boxed()))
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "admin connection: {e}");
                }
            });
        }
    });
    Ok((task, bound))
}

/// `/events`: the journal's history, then (unless `?follow=0`) its live feed, as one JSON
/// object per line.
fn events(shared: &Shared, follow: bool) -> Response<BoxBody<Bytes, Infallible>> {
    let (history, live) = shared.journal.follow();
    if !follow {
        let mut res = text(StatusCode::OK, "application/x-ndjson", history.concat());
        let body = std::mem::take(res.body_mut());
        return res.map(|_| body.boxed());
    }
    let live = futures_util::stream::unfold(live, |mut rx| async move {
        match rx.recv().await {
            Ok(line) => Some((line, rx)),
            // A follower too slow for the feed: say so, and go on from the newest.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                Some((format!("{{\"event\":\"lagged\",\"missed\":{n}}}\n"), rx))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    let lines = futures_util::stream::iter(history)
        .chain(live)
        .map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(line))));
    let mut res = Response::new(BodyExt::boxed(StreamBody::new(lines)));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

/// The response to one admin request.
fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/livez" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => {
            let (status, body) = metrics::health(shared);
            text(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "application/json",
                body,
            )
        }
        "/status" => {
            let body = serde_json::to_string(&metrics::status(shared))
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            text(StatusCode::OK, "application/json", body)
        }
        "/metrics" => text(StatusCode::OK, OPENMETRICS, metrics::render(shared)),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /livez, /readyz, /status, /metrics or /events\n".into(),
        ),
    }
}
