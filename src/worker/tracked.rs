//! A connection's IO that accounts for the connection when it is dropped.
//!
//! hyper's connection future ends as soon as a websocket upgrade is taken: the IO moves into
//! the upgraded stream that engineioxide keeps until the websocket closes. So "the connection
//! closed" is when the IO is dropped, wherever it went: [`Tracked`] does the accounting then
//! (open count, the per-IP count reported to the primary, and the session of a websocket that
//! no longer needs routing). It also counts the bytes of client connections for `/metrics`
//! (one relaxed atomic add per read or write).

use crate::sync::LockExt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sid::SessionId;

use super::WorkerShared;

/// What a connection's end must account for; shared with the request layer.
#[derive(Debug, Default)]
pub(crate) struct ConnEnd {
    /// The session this connection upgraded to websocket, if any: unregistered at the end.
    pub upgraded: Mutex<Option<SessionId>>,
}

/// An IO that reports its connection closed when dropped.
pub(crate) struct Tracked<IO> {
    io: IO,
    shared: Arc<WorkerShared>,
    counted_ip: Option<IpAddr>,
    end: Arc<ConnEnd>,
    /// Count its bytes (a client connection; a forwarded one was counted by its forwarder).
    count_bytes: bool,
}

impl<IO> Tracked<IO> {
    /// Wraps the IO of a connection already counted open; `count_bytes` for a client
    /// connection.
    pub fn new(
        io: IO,
        shared: Arc<WorkerShared>,
        counted_ip: Option<IpAddr>,
        end: Arc<ConnEnd>,
        count_bytes: bool,
    ) -> Self {
        Self {
            io,
            shared,
            counted_ip,
            end,
            count_bytes,
        }
    }

    fn wrote(&self, res: &Poll<io::Result<usize>>) {
        if self.count_bytes
            && let Poll::Ready(Ok(n)) = res
        {
            self.shared
                .stats
                .bytes_out
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        self.shared.conn_closed(self.counted_ip);
        let upgraded = self.end.upgraded.lock_unpoisoned().take();
        if let Some(sid) = upgraded
            && self.shared.leases.remove(&sid)
        {
            self.shared.unregister(vec![sid]);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.count_bytes && matches!(res, Poll::Ready(Ok(()))) {
            let n = buf.filled().len().saturating_sub(before);
            self.shared
                .stats
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
