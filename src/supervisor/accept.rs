//! Accept → peek → route → hand off.
//!
//! The accept loop accepts with `accept4` (non-blocking, close-on-exec, peer address in the same
//! call) and tries the whole decision at once: the client's first bytes are usually there by the
//! time its connection is accepted, so one `MSG_PEEK`, a parse, a table look-up and a queued
//! `sendmsg` finish the job without a task or a reactor registration. Any step that would wait
//! (head not complete yet, worker queue full) moves the connection to its own task, which peeks
//! until the head is complete (`peek_head`), so the loop itself never waits on a client. How
//! many connections may wait for their head at once is bounded; beyond that a connection is
//! answered 503 at once (then half-closed and drained on a short task, itself bounded, so the
//! unread request does not turn the close into a reset that loses the 503), so a flood of idle
//! connections never stalls the loop or exhausts descriptors.
//!
//! Before the head, the door: with `--proxy-protocol` the PROXY header is parsed from the
//! peeked bytes and consumed (exactly its length), and its source becomes the client's address;
//! with TLS the primary cannot read the head, so it checks only that the first byte starts a
//! TLS handshake and lets the balancer pick (the worker terminates TLS and forwards a request of
//! another worker's session). With `--trusted-proxies`, a trusted peer's `X-Forwarded-For`
//! names the client. Caps apply to connections that may start a new session
//! ([`caps`](super::caps)): over one, the primary answers 503 itself on plain HTTP; on TLS the
//! worker answers it, unless the first request belongs to a live session.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::door::proxy_protocol::{self, ProxyError, ProxyParse};
use crate::door::tls;
use crate::ipc::message::{ConnManifest, ConnOrigin, FirstRequest, ToWorker};

use super::caps::refusal_response;
use super::metrics::RejectReason;
use super::peek::{Parsed, PeekError, RequestHead, consume_fd, parse_head, peek_fd, peek_until};
use super::slot::{Reserved, WorkerHandle};
use super::{Decision, Shared};

/// A connection as the door knows it so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// The TCP peer.
    pub tcp_peer: SocketAddr,
    /// The client: the TCP peer, or the source of its PROXY header.
    pub client: SocketAddr,
    /// No PROXY header is (still) expected: consumed already, or not configured.
    pub proxied: bool,
    /// When the primary accepted it (for `sio_cluster_handoff_seconds`).
    pub accepted: Instant,
}

impl Arrival {
    fn new(shared: &Shared, peer: SocketAddr) -> Self {
        Self {
            tcp_peer: peer,
            client: peer,
            proxied: !shared.config.proxy_protocol,
            accepted: Instant::now(),
        }
    }

    /// The client address for routing and caps: `X-Forwarded-For` if the peer is trusted.
    fn client_ip(&self, shared: &Shared, head: Option<&RequestHead>) -> IpAddr {
        let ip = self.client.ip();
        match head.and_then(|h| h.forwarded_for) {
            Some(f) if shared.rules.trusted.contains(ip) => f,
            _ => ip,
        }
    }

    /// The client address a worker is told (the port is unknown when it comes from
    /// `X-Forwarded-For`).
    fn client_addr(&self, ip: IpAddr) -> SocketAddr {
        if ip == self.client.ip() {
            self.client
        } else {
            SocketAddr::new(ip, 0)
        }
    }
}

/// What the bytes after the PROXY header (if any) say.
enum Look {
    /// More bytes are needed.
    Partial,
    /// A TLS handshake: route blind.
    Tls,
    /// A plain HTTP head.
    Plain(RequestHead),
    /// Not TLS on the TLS port.
    PlainOnTls,
}

fn look(shared: &Shared, bytes: &[u8]) -> Result<Look, PeekError> {
    if shared.tls {
        return Ok(match bytes.first() {
            None => Look::Partial,
            Some(&tls::HANDSHAKE_RECORD) => Look::Tls,
            Some(_) => Look::PlainOnTls,
        });
    }
    Ok(match parse_head(bytes, &shared.rules)? {
        Parsed::Complete(head) => Look::Plain(head),
        Parsed::Partial => Look::Partial,
    })
}

fn proxy_peek_error(e: ProxyError) -> PeekError {
    match e {
        ProxyError::Missing => PeekError::Malformed("no PROXY protocol header (--proxy-protocol)"),
        ProxyError::Malformed(m) => PeekError::Malformed(m),
        ProxyError::TooLarge(n) => PeekError::TooLarge(n),
    }
}

const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Environment variable that makes the accept loop panic at its first connection (a test hook).
pub(crate) const FAULT_ACCEPT_PANIC: &str = "SIO_FAULT_ACCEPT_PANIC";

/// Environment variable that makes the accept loop stop being polled at its first connection,
/// without ending (a test hook: a wedged loop).
pub(crate) const FAULT_ACCEPT_STALL: &str = "SIO_FAULT_ACCEPT_STALL";

/// How often the accept loop beats (`Stats::accept_beats`), however busy: the primary feeds
/// systemd's watchdog only while the beats come.
pub(crate) const ACCEPT_BEAT: Duration = Duration::from_millis(250);

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
    // Fault injection for the supervision test (tests/supervision.rs): the loop panics at its
    // first connection, as a bug would, and the primary must not keep running without it.
    let fault_panic = std::env::var_os(FAULT_ACCEPT_PANIC).is_some();
    let fault_stall = std::env::var_os(FAULT_ACCEPT_STALL).is_some();
    let mut beat = tokio::time::interval(ACCEPT_BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut ready = tokio::select! {
            biased;
            _ = until_true(&mut stop) => break,
            // Before accepting, so a flood of connections cannot starve it.
            _ = beat.tick() => {
                shared.stats.accept_beats.fetch_add(1, Ordering::Relaxed);
                continue;
            }
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
                if fault_panic {
                    panic!("fault injected by {FAULT_ACCEPT_PANIC}");
                }
                if fault_stall {
                    tracing::warn!("accept loop stalled by {FAULT_ACCEPT_STALL}");
                    std::future::pending::<()>().await;
                }
                if let Some((fd, arrival)) = fast_path(&shared, fd, peer) {
                    to_task(&shared, fd, arrival, &mut last_warning);
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
fn fast_path(shared: &Arc<Shared>, fd: OwnedFd, peer: SocketAddr) -> Option<(OwnedFd, Arrival)> {
    let mut arrival = Arrival::new(shared, peer);
    let mut buf = [0u8; 2048];
    let n = match peek_fd(fd.as_fd(), &mut buf) {
        Ok(0) => return None, // closed before sending anything
        Ok(n) => n,
        Err(_) => return Some((fd, arrival)),
    };
    let mut bytes = &buf[..n];
    if !arrival.proxied {
        match proxy_protocol::parse(bytes) {
            Ok(ProxyParse::Complete(h)) => {
                if let Err(e) = consume_fd(fd.as_fd(), h.len) {
                    tracing::debug!(%peer, "cannot consume a PROXY header: {e}");
                    return None;
                }
                arrival.client = h.source.unwrap_or(peer);
                arrival.proxied = true;
                bytes = &bytes[h.len..];
            }
            // Incomplete, or an error the task logs: the slow path handles both.
            _ => return Some((fd, arrival)),
        }
    }
    let (head, first) = match look(shared, bytes) {
        Ok(Look::Plain(head)) => (Some(head), FirstRequest::Routed),
        Ok(Look::Tls) => (None, FirstRequest::Blind { refuse: None }),
        _ => return Some((fd, arrival)),
    };
    let ip = arrival.client_ip(shared, head.as_ref());
    // Refusals, and no worker ready: the task path answers.
    if head.as_ref().is_some_and(|h| h.health) {
        // Answered by the task path, which can wait for the socket.
        return Some((fd, arrival));
    }
    let Decision::Serve(worker, reason) = shared.route(head.as_ref(), Some(ip)) else {
        return Some((fd, arrival));
    };
    match worker.try_reserve() {
        Some(slot) => {
            shared.stats.on_accept.fetch_add(1, Ordering::Relaxed);
            shared.metrics.routed(reason);
            hand_off(shared, &worker, slot, fd, arrival.client_addr(ip), first);
            shared.metrics.handed_off(arrival.accepted.elapsed());
            None
        }
        None => Some((fd, arrival)),
    }
}

/// Moves a connection to its own task (peek until the head is complete, route, hand off).
fn to_task(
    shared: &Arc<Shared>,
    fd: OwnedFd,
    arrival: Arrival,
    last_warning: &mut Option<Instant>,
) {
    let std = std::net::TcpStream::from(fd);
    match shared.pending.clone().try_acquire_owned() {
        Ok(permit) => match TcpStream::from_std(std) {
            Ok(stream) => {
                tokio::spawn(serve_connection(shared.clone(), stream, arrival, permit));
            }
            Err(e) => tracing::warn!(peer = %arrival.tcp_peer, "cannot register a connection: {e}"),
        },
        Err(_) => {
            shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            shared.metrics.rejected(RejectReason::Pending);
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                *last_warning = Some(Instant::now());
                tracing::warn!(
                    limit = shared.config.max_pending_heads,
                    "too many connections waiting for a request head; answering 503 (raise --max-pending-heads?)"
                );
            }
            if shared.tls {
                // No plaintext 503 on a TLS port: the client would not understand it.
                drop(std);
            } else {
                refuse(shared, std);
            }
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
    client: SocketAddr,
    first: FirstRequest,
) {
    let id = shared.stats.handed.fetch_add(1, Ordering::Relaxed);
    worker.handed.fetch_add(1, Ordering::Relaxed);
    let counted_ip = shared.caps.count(Some(client.ip()), &worker.per_ip);
    slot.send(
        ToWorker::Conn(ConnManifest {
            id,
            peer: Some(client),
            origin: ConnOrigin::Accepted,
            first,
            counted_ip,
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
    mut stream: TcpStream,
    mut arrival: Arrival,
    permit: OwnedSemaphorePermit,
) {
    let peer = arrival.tcp_peer;
    let deadline = Instant::now() + shared.config.head_timeout();
    if !arrival.proxied {
        let header = peek_until(&stream, proxy_protocol::MAX_HEADER, deadline, |b| {
            match proxy_protocol::parse(b) {
                Ok(ProxyParse::Complete(h)) => Ok(Some(h)),
                Ok(ProxyParse::Partial) => Ok(None),
                Err(e) => Err(proxy_peek_error(e)),
            }
        })
        .await;
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                // The peer is a proxy that must speak PROXY protocol (or a client that bypassed
                // it): close without an answer.
                shared.stats.bad_heads.fetch_add(1, Ordering::Relaxed);
                shared.metrics.rejected(RejectReason::ProxyProtocol);
                tracing::debug!(%peer, "closing connection: PROXY protocol: {e}");
                return;
            }
        };
        let mut skip = vec![0u8; header.len];
        if let Err(e) = stream.read_exact(&mut skip).await {
            tracing::debug!(%peer, "cannot consume a PROXY header: {e}");
            return;
        }
        arrival.client = header.source.unwrap_or(peer);
        arrival.proxied = true;
    }
    let max = if shared.tls { 1 } else { shared.rules.max_head };
    let looked = peek_until(&stream, max, deadline, |b| match look(&shared, b)? {
        Look::Partial => Ok(None),
        other => Ok(Some(other)),
    })
    .await;
    let (head, mut first) = match looked {
        Ok(Look::Plain(head)) => (Some(head), FirstRequest::Routed),
        Ok(Look::Tls) => (None, FirstRequest::Blind { refuse: None }),
        Ok(Look::PlainOnTls) => {
            shared.stats.bad_heads.fetch_add(1, Ordering::Relaxed);
            shared.metrics.rejected(RejectReason::PlainOnTls);
            tracing::debug!(%peer, "plain HTTP on the TLS port; answering 400");
            respond_and_close(stream, tls::PLAINTEXT_ON_TLS_PORT).await;
            return;
        }
        Ok(Look::Partial) => unreachable!("peek_until returns only complete looks"),
        Err(e) => {
            shared.stats.bad_heads.fetch_add(1, Ordering::Relaxed);
            shared.metrics.rejected(RejectReason::of_peek(&e));
            tracing::debug!(%peer, "closing connection: {e}");
            if !shared.tls
                && let Some(resp) = e.response()
            {
                respond_and_close(stream, resp).await;
            }
            drop(permit);
            return;
        }
    };
    if head.as_ref().is_some_and(|h| h.bad_sid) {
        tracing::debug!(%peer, "request with a malformed sid; routing it like an unknown session");
    }
    if head.as_ref().is_some_and(|h| h.health) {
        // The primary answers its own health, and closes (the next request of a kept-alive
        // connection would have nowhere to go).
        let (status, body) = super::metrics::health(&shared);
        respond_and_close(stream, health_response(status, &body).as_bytes()).await;
        return;
    }
    let ip = arrival.client_ip(&shared, head.as_ref());
    let (worker, reason) = match shared.route(head.as_ref(), Some(ip)) {
        Decision::Serve(w, reason) => (w, Some(reason)),
        Decision::Refuse(r) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            shared.metrics.rejected(RejectReason::of_refusal(r));
            tracing::debug!(%peer, client = %ip, "new session refused: {}", r.reason());
            if head.is_some() {
                respond_and_close(stream, &refusal_response(r)).await;
                return;
            }
            // TLS: a worker answers it, unless it belongs to a live session.
            let Some(w) = shared.any_with_descriptors() else {
                tracing::warn!(%peer, "every worker is at its descriptor limit; closing a TLS connection");
                return;
            };
            first = FirstRequest::Blind { refuse: Some(r) };
            (w, None)
        }
        Decision::NoWorker => {
            shared.metrics.rejected(RejectReason::NoWorker);
            tracing::warn!(%peer, "no worker is ready; answering 503");
            if !shared.tls {
                respond_and_close(stream, SERVICE_UNAVAILABLE).await;
            }
            return;
        }
    };
    let reservation =
        tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), worker.reserve()).await;
    let Ok(Ok(slot)) = reservation else {
        shared.metrics.rejected(RejectReason::NoWorker);
        tracing::warn!(%peer, worker = %worker.member, "worker is not taking connections; answering 503");
        if !shared.tls {
            respond_and_close(stream, SERVICE_UNAVAILABLE).await;
        }
        return;
    };
    let fd: OwnedFd = match stream.into_std() {
        Ok(s) => s.into(),
        Err(e) => {
            tracing::debug!(%peer, "connection unusable: {e}");
            return;
        }
    };
    if let Some(reason) = reason {
        shared.metrics.routed(reason);
    }
    hand_off(&shared, &worker, slot, fd, arrival.client_addr(ip), first);
    shared.metrics.handed_off(arrival.accepted.elapsed());
    drop(permit);
}

/// The health check's HTTP response (the connection is closed after it).
fn health_response(status: u16, body: &str) -> String {
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
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
