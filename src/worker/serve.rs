//! Serving a handed-off connection: hyper HTTP/1.1 with upgrades, in front of the app.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ipc::message::{ConnManifest, ConnOrigin};
use crate::supervisor::accept::until_true;

use super::session::{ConnCtx, SessionService};
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
    match manifest.origin {
        ConnOrigin::Accepted => {
            // No system call here: the primary accepted it non-blocking (`accept4`, and the
            // flag belongs to the open file, which we share) from a TCP_NODELAY listener, whose
            // accepted sockets inherit it.
            let std = std::net::TcpStream::from(fd);
            match tokio::net::TcpStream::from_std(std) {
                Ok(stream) => {
                    let ctx = ConnCtx {
                        forwarded: false,
                        peer: manifest.peer,
                        requests: Default::default(),
                    };
                    tokio::spawn(serve(shared, svc, stream, ctx));
                }
                Err(e) => {
                    tracing::warn!(conn = manifest.id, "cannot use a received connection: {e}");
                    shared.conn_closed();
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
                    let ctx = ConnCtx {
                        forwarded: true,
                        peer: manifest.peer,
                        requests: Default::default(),
                    };
                    tokio::spawn(serve(shared, svc, stream, ctx));
                }
                Err(e) => {
                    tracing::warn!(conn = manifest.id, "cannot use a forwarded connection: {e}");
                    shared.conn_closed();
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
                _ = conn.as_mut() => { shared.conn_closed(); return; }
                _ = tokio::time::timeout(FIRST_REQUEST_GRACE, first) => {}
            }
            // Finish the request in flight, then close instead of keeping the connection alive.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    shared.conn_closed();
}
