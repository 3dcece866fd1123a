//! Request bodies as the worker's request layer hands them on: bounded in time
//! (`--body-timeout-ms`), and watched for the Engine.IO close packet.
//!
//! - **Time**: a body not complete within the timeout of its head fails with an error (so the
//!   app, or socketioxide, stops waiting for it) and marks the request expired; the request
//!   layer then answers `408` with `connection: close`, whatever the app made of the error.
//!   The deadline is a timer polled only while the body is waited for: no cost otherwise.
//! - **Close packet**: a polling POST whose payload holds a close packet (`1`, alone in its
//!   record; records are separated by `\x1e`) ends its session: the request layer then
//!   unregisters it from the primary's sticky table at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Why a body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Not received within the body timeout.
    #[error("request body not received within {0:?} (--body-timeout-ms)")]
    Timeout(Duration),
    /// The client's connection failed.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// Outcome flags of one body, read by the request layer after the response.
#[derive(Debug, Default)]
pub(crate) struct BodyWatch {
    expired: AtomicBool,
    close_packet: AtomicBool,
    /// Socket.IO events in the body so far (polling POST).
    events: std::sync::atomic::AtomicU64,
}

impl BodyWatch {
    /// The body timed out.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }

    /// The complete body held an Engine.IO close packet.
    pub fn close_packet(&self) -> bool {
        self.close_packet.load(Ordering::Relaxed)
    }

    /// Socket.IO events the body carried (as far as it was read).
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

/// Scans a polling payload for a record that is exactly `1`, across frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Scan {
    /// At the start of a record.
    #[default]
    Start,
    /// The record so far is `1`.
    One,
    /// Inside another record.
    Other,
    /// A close packet was seen.
    Found,
}

impl Scan {
    fn feed(mut self, data: &[u8]) -> Self {
        for &b in data {
            self = match (self, b) {
                (Scan::Found, _) => return Scan::Found,
                (Scan::One, 0x1e) => Scan::Found,
                (_, 0x1e) => Scan::Start,
                (Scan::Start, b'1') => Scan::One,
                _ => Scan::Other,
            };
        }
        self
    }

    fn finish(self) -> bool {
        matches!(self, Scan::One | Scan::Found)
    }
}

/// The body a request carries into the app.
pub(crate) struct TimedBody {
    inner: Incoming,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    watch: Arc<BodyWatch>,
    scan: Option<Scan>,
    /// Counts the events of the payload (with `scan`).
    events: Option<super::events::RecordScan>,
}

impl std::fmt::Debug for TimedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TimedBody {
    /// Bounds `inner` by `timeout` from now; `scan` watches it for a close packet.
    pub fn new(inner: Incoming, timeout: Duration, scan: bool) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        let deadline = (!inner.is_end_stream()).then(|| Box::pin(tokio::time::sleep(timeout)));
        (
            Self {
                inner,
                deadline,
                timeout,
                watch: watch.clone(),
                scan: scan.then_some(Scan::Start),
                events: scan.then_some(super::events::RecordScan::default()),
            },
            watch,
        )
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(scan), Some(data)) = (this.scan.as_mut(), frame.data_ref()) {
                    *scan = scan.feed(data);
                }
                if let (Some(events), Some(data)) = (this.events.as_mut(), frame.data_ref()) {
                    let n = events.feed(data);
                    if n > 0 {
                        this.watch.events.fetch_add(n, Ordering::Relaxed);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.deadline = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.deadline = None;
                if this.scan.take().is_some_and(Scan::finish) {
                    this.watch.close_packet.store(true, Ordering::Relaxed);
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    this.deadline = None;
                    this.watch.expired.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BodyError::Timeout(this.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        chunks.iter().fold(Scan::Start, |s, c| s.feed(c)).finish()
    }

    #[test]
    fn finds_a_close_packet_in_any_record_across_chunks() {
        assert!(scan(&[b"1"]));
        assert!(scan(&[b"42[\"a\"]\x1e1"]));
        assert!(scan(&[b"42[\"a\"]\x1e", b"1", b"\x1e2"]));
        assert!(scan(&[b"1\x1e42[1]"]));
        assert!(!scan(&[b"12"]));
        assert!(!scan(&[b"41"]));
        assert!(!scan(&[b"42[\"1\"]"]));
        assert!(!scan(&[b"4", b"1"]));
        assert!(!scan(&[b""]));
    }
}
