//! Accept → peek → route → hand off.
//!
//! The accept loop accepts with `accept4` (non-blocking, close-on-exec, peer address in the same
//! call) and tries the whole decision at once: the client's first bytes are usually there by the
//! time its connection is accepted, so one `MSG_PEEK`, a parse, a table look-up and a queued
//! `sendmsg` finish the job without a task or a reactor registration. Any step that would wait
//! (head not complete yet, worker queue full) moves the connection to its own task, which peeks
//! until the head is complete ([`peek_head`]), so the loop itself never waits on a client. How
//! many connections may wait for their head at once is bounded; beyond that a connection is
//! answered 503 at once (then half-closed and drained on a short task, itself bounded, so the
//! unread request does not turn the close into a reset that loses the 503), so a flood of idle
//! connections never stalls the loop or exhausts descriptors.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::ipc::message::{ConnManifest, ConnOrigin, ToWorker};

use super::Shared;
use super::peek::{Parsed, parse_head, peek_fd, peek_head};
use super::slot::{Reserved, WorkerHandle};

const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Accepts until `stop` turns true.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the AsyncFd owns the listener, so its descriptor stays open and refers to the same
    // socket for the AsyncFd's whole life.
    let listener = match unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) } {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                "cannot watch the listening socket: {}",
                std::io::Error::from(e)
            );
            return;
        }
    };
    let mut last_warning: Option<Instant> = None;
    loop {
        let mut ready = tokio::select! {
            biased;
            _ = until_true(&mut stop) => break,
            r = listener.readable() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("listening socket failed: {e}");
                    break;
                }
            },
        };
        match ready.try_io(|l| accept_raw(l.get_ref())) {
            Ok(Ok((fd, peer))) => {
                if let Some(fd) = fast_path(&shared, fd, peer) {
                    to_task(&shared, fd, peer, &mut last_warning);
                }
            }
            Ok(Err(e)) => {
                // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning; the connection
                // stays in the backlog and is accepted once descriptors free up.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!("accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_would_block) => {}
        }
    }
    tracing::info!("stopped accepting connections");
}

/// `accept4(2)`: a non-blocking, close-on-exec socket and the peer's address in one call.
fn accept_raw(listener: &std::net::TcpListener) -> std::io::Result<(OwnedFd, SocketAddr)> {
    // SAFETY: `try_init` hands `accept4` a zeroed, properly sized sockaddr_storage and its
    // length, which is exactly what accept4 fills in.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener.as_raw_fd(),
                storage.cast(),
                len,
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            );
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })?
    };
    // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let peer = addr
        .as_socket()
        .ok_or_else(|| std::io::Error::other("accepted a connection that is not TCP/IP"))?;
    Ok((fd, peer))
}

/// Tries to route and hand off a just-accepted connection without waiting; gives the
/// descriptor back when it has to wait (incomplete head, busy worker) or answer an error.
fn fast_path(shared: &Arc<Shared>, fd: OwnedFd, peer: SocketAddr) -> Option<OwnedFd> {
    let mut buf = [0u8; 2048];
    let n = match peek_fd(fd.as_fd(), &mut buf) {
        Ok(0) => return None, // closed before sending anything
        Ok(n) => n,
        Err(_) => return Some(fd),
    };
    let head = match parse_head(&buf[..n], &shared.rules) {
        Ok(Parsed::Complete(head)) => head,
        // Incomplete, or an error the task will answer: the slow path handles both.
        _ => return Some(fd),
    };
    // No worker ready: the task path answers 503.
    let Some(worker) = shared.route(&head, Some(peer.ip())) else {
        return Some(fd);
    };
    match worker.try_reserve() {
        Some(slot) => {
            shared.stats.on_accept.fetch_add(1, Ordering::Relaxed);
            hand_off(shared, &worker, slot, fd, peer);
            None
        }
        None => Some(fd),
    }
}

/// Moves a connection to its own task (peek until the head is complete, route, hand off).
fn to_task(
    shared: &Arc<Shared>,
    fd: OwnedFd,
    peer: SocketAddr,
    last_warning: &mut Option<Instant>,
) {
    let std = std::net::TcpStream::from(fd);
    match shared.pending.clone().try_acquire_owned() {
        Ok(permit) => match TcpStream::from_std(std) {
            Ok(stream) => {
                tokio::spawn(serve_connection(shared.clone(), stream, peer, permit));
            }
            Err(e) => tracing::warn!(%peer, "cannot register a connection: {e}"),
        },
        Err(_) => {
            shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                *last_warning = Some(Instant::now());
                tracing::warn!(
                    limit = shared.config.max_pending_heads,
                    "too many connections waiting for a request head; answering 503 (raise --max-pending-heads?)"
                );
            }
            refuse(shared, std);
        }
    }
}

/// Most refused connections lingering at once (each holds a descriptor for up to
/// [`DRAIN_TIME`] while its request is drained); beyond that they are closed after a
/// non-blocking drain of what already arrived.
pub(crate) const MAX_LINGERING: usize = 1024;

/// Answers 503 to a connection that cannot wait for its head, without making the accept loop
/// wait: the client's request is still unread, and closing over unread bytes makes the kernel
/// send a reset that can destroy the 503 before the client reads it. So the response goes
/// through [`respond_and_close`] on its own task (write, half-close, drain, close).
fn refuse(shared: &Shared, std: std::net::TcpStream) {
    if let Ok(lingering) = shared.lingering.clone().try_acquire_owned() {
        match TcpStream::from_std(std) {
            Ok(stream) => {
                tokio::spawn(async move {
                    respond_and_close(stream, SERVICE_UNAVAILABLE).await;
                    drop(lingering);
                });
            }
            Err(e) => tracing::debug!("cannot register a refused connection: {e}"),
        }
        return;
    }
    // Too many already lingering: answer, half-close and discard what has arrived so far,
    // all non-blocking, so the close is a FIN unless the client sends more meanwhile.
    use std::io::{Read, Write};
    let _ = (&std).write(SERVICE_UNAVAILABLE);
    let _ = std.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match (&std).read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// Queues the descriptor for `worker` (into room already reserved); the primary's copy is
/// closed once the control channel has sent it.
fn hand_off(
    shared: &Shared,
    worker: &WorkerHandle,
    slot: Reserved<'_>,
    fd: OwnedFd,
    peer: SocketAddr,
) {
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
    hand_off(&shared, &worker, slot, fd, peer);
    drop(permit);
}

/// How long [`respond_and_close`] discards what a client still sends after its response.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// Writes a short response without ever blocking on the client, then closes gently: our write
/// side first, then discard what the client still sends for a moment, so the response is not
/// lost to a reset caused by unread bytes.
pub(crate) async fn respond_and_close(mut stream: TcpStream, response: &[u8]) {
    // A stream registered just now has no readiness yet (`try_write` would see WouldBlock):
    // wait for it, bounded. The response is tiny and always fits the socket buffer.
    let _ = tokio::time::timeout(DRAIN_TIME, stream.write_all(response)).await;
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
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}
