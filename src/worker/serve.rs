//! Serving a handed-off connection: TLS if configured, then hyper HTTP/1.1 with upgrades, in
//! front of the app.
//!
//! Every connection's IO is wrapped twice: [`WsLimited`] enforces `--max-payload` on a
//! websocket it becomes (switched on by the request layer when the app answers 101), and
//! [`Tracked`] accounts for the connection when its IO is finally dropped (after the websocket,
//! if it upgraded).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::door::ws_limit::{WsLimited, WsSwitch};
use crate::ipc::message::{ConnManifest, ConnOrigin, FirstRequest};
use crate::supervisor::accept::until_true;

use super::session::{ConnCtx, SessionService};
use super::tracked::{ConnEnd, Tracked};
use super::{AppService, WorkerShared};

/// How long a draining worker waits for the first request of a connection it was just handed.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes ownership of a received descriptor and serves it on a new task.
pub(crate) fn spawn(
    shared: Arc<WorkerShared>,
    svc: AppService,
    manifest: ConnManifest,
    fd: OwnedFd,
) {
    shared.open.fetch_add(1, Ordering::Relaxed);
    let end = Arc::new(ConnEnd::default());
    let ws = Arc::new(WsSwitch::default());
    let ctx = ConnCtx {
        forwarded: matches!(manifest.origin, ConnOrigin::Forwarded { .. }),
        peer: manifest.peer,
        requests: Default::default(),
        in_flight: Default::default(),
        refuse_first: match manifest.first {
            FirstRequest::Blind { refuse } => refuse,
            FirstRequest::Routed => None,
        },
        ws: ws.clone(),
        end: end.clone(),
    };
    match manifest.origin {
        ConnOrigin::Accepted => {
            // No system call here: the primary accepted it non-blocking (`accept4`, and the
            // flag belongs to the open file, which we share) from a TCP_NODELAY listener, whose
            // accepted sockets inherit it.
            let std = std::net::TcpStream::from(fd);
            let stream = match tokio::net::TcpStream::from_std(std) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(conn = manifest.id, "cannot use a received connection: {e}");
                    shared.conn_closed(manifest.counted_ip);
                    return;
                }
            };
            let io = Tracked::new(stream, shared.clone(), manifest.counted_ip, end, true);
            match shared.door.tls.clone() {
                None => {
                    let io = WsLimited::new(io, shared.door.ws, ws).counting(shared.events.clone());
                    tokio::spawn(serve(shared, svc, io, ctx));
                }
                Some(acceptor) => {
                    tokio::spawn(async move {
                        let handshake = tokio::time::timeout(
                            shared.door.tls_handshake_timeout,
                            acceptor.accept(io),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                let io = WsLimited::new(tls, shared.door.ws, ws)
                                    .counting(shared.events.clone());
                                serve(shared, svc, io, ctx).await;
                            }
                            // Dropping the IO accounts for the connection.
                            Ok(Err(e)) => {
                                tracing::debug!(conn = manifest.id, "TLS handshake failed: {e}")
                            }
                            Err(_) => tracing::debug!(
                                conn = manifest.id,
                                "TLS handshake not done within the head timeout"
                            ),
                        }
                    });
                }
            }
        }
        ConnOrigin::Forwarded { .. } => {
            let std = std::os::unix::net::UnixStream::from(fd);
            match std
                .set_nonblocking(true)
                .and_then(|_| tokio::net::UnixStream::from_std(std))
            {
                Ok(stream) => {
                    let io = Tracked::new(stream, shared.clone(), None, end, false);
                    let io = WsLimited::new(io, shared.door.ws, ws).counting(shared.events.clone());
                    tokio::spawn(serve(shared, svc, io, ctx));
                }
                Err(e) => {
                    tracing::warn!(conn = manifest.id, "cannot use a forwarded connection: {e}");
                    shared.conn_closed(None);
                }
            }
        }
    }
}

async fn serve<I>(shared: Arc<WorkerShared>, svc: AppService, io: I, ctx: ConnCtx)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = ctx.requests.clone();
    let in_flight = ctx.in_flight.clone();
    let service = TowerToHyperService::new(SessionService::new(svc, shared.clone(), ctx));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut drain = shared.drain.subscribe();
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!("connection ended with an error: {e}");
            }
        }
        _ = until_true(&mut drain) => {
            // A connection handed here just before the drain still has its first request unread
            // in the socket: hyper would see it idle and close it unanswered. Serve that request
            // first (bounded: a client that sends nothing is dropped).
            let first = async {
                while requests.load(Ordering::Relaxed) == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::timeout(FIRST_REQUEST_GRACE, first) => {}
            }
            // A response being produced gets `Connection: close` from the session service (or
            // is a 101 that hands the connection over): let it go out as it is, since hyper's
            // graceful shutdown would append `close` to a 101 too. Once the connection is idle
            // between requests, close it.
            loop {
                if in_flight.load(Ordering::Relaxed) == 0 {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                    return;
                }
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
                }
            }
        }
    }
}
