//! Accept → peek → route → hand off.
//!
//! The accept loop only accepts: each connection gets its own task that peeks its first request
//! head, asks the [`Shared::route`] decision, and queues the descriptor for the chosen worker.
//! How many connections may wait for their head at once is bounded; beyond that a connection is
//! answered 503 at once, so a flood of idle connections never stalls the loop or exhausts
//! descriptors.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::ipc::message::{ConnManifest, ConnOrigin, ToWorker};

use super::Shared;
use super::peek::peek_head;

const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Accepts until `stop` turns true.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_overload_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = until_true(&mut stop) => break,
            res = listener.accept() => res,
        };
        match accepted {
            Ok((stream, peer)) => match shared.pending.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(serve_connection(shared.clone(), stream, peer, permit));
                }
                Err(_) => {
                    shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                    if last_overload_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        last_overload_log = Some(Instant::now());
                        tracing::warn!(
                            limit = shared.config.max_pending_heads,
                            "too many connections waiting for a request head; answering 503 (raise --max-pending-heads?)"
                        );
                    }
                    let _ = stream.try_write(SERVICE_UNAVAILABLE);
                }
            },
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning; the connection
                // stays in the backlog and is accepted once descriptors free up.
                if last_overload_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    last_overload_log = Some(Instant::now());
                    tracing::warn!("accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

/// Resolves once the flag is (or becomes) true, or its sender is gone.
pub(crate) async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// Peeks, routes and hands off one connection (also used to re-home connections that were
/// queued for a worker that died before receiving them: their bytes are still unread).
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let deadline = Instant::now() + shared.config.head_timeout();
    let head = match peek_head(&stream, &shared.rules, deadline).await {
        Ok(head) => head,
        Err(e) => {
            shared.stats.bad_heads.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "closing connection: {e}");
            if let Some(resp) = e.response() {
                respond_and_close(stream, resp).await;
            }
            drop(permit);
            return;
        }
    };
    if head.bad_sid {
        tracing::debug!(%peer, "request with a malformed sid; routing it like an unknown session");
    }
    let Some(worker) = shared.route(&head, Some(peer.ip())) else {
        tracing::warn!(%peer, "no worker is ready; answering 503");
        respond_and_close(stream, SERVICE_UNAVAILABLE).await;
        return;
    };
    let reservation =
        tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), worker.reserve()).await;
    let Ok(Ok(slot)) = reservation else {
        tracing::warn!(%peer, worker = %worker.member, "worker is not taking connections; answering 503");
        respond_and_close(stream, SERVICE_UNAVAILABLE).await;
        return;
    };
    let fd: OwnedFd = match stream.into_std() {
        Ok(s) => s.into(),
        Err(e) => {
            tracing::debug!(%peer, "connection unusable: {e}");
            return;
        }
    };
    let id = shared.stats.handed.fetch_add(1, Ordering::Relaxed);
    worker.handed.fetch_add(1, Ordering::Relaxed);
    slot.send(
        ToWorker::Conn(ConnManifest {
            id,
            peer: Some(peer),
            origin: ConnOrigin::Accepted,
        }),
        Some(fd),
    );
    drop(permit);
}

/// Writes a short response without ever blocking on the client, then closes gently: our write
/// side first, then discard what the client still sends for a moment, so the response is not
/// lost to a reset caused by unread bytes.
pub(crate) async fn respond_and_close(mut stream: TcpStream, response: &[u8]) {
    let _ = stream.try_write(response);
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0usize;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}
