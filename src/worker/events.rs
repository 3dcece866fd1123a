//! Counting Socket.IO events as their bytes pass, for `socket_io_events_received_total` and
//! `socket_io_events_sent_total`.
//!
//! An event is an Engine.IO message (`4`) whose Socket.IO packet is an EVENT (`2`) or a
//! BINARY_EVENT (`5`): the first two bytes of a record. On polling a record is one packet of a
//! payload (records are separated by `0x1e`); on a websocket, one text message (counted in
//! [`ws_limit`](crate::door::ws_limit), which already follows the frames). Acks, connects,
//! pings and binary attachments are not events. Only the first two bytes of each record are
//! looked at; nothing is copied or decoded.
//!
//! A request is counted by the worker that serves its session (a forwarding worker does not
//! count what it relays), so each event is counted once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Events counted in this worker since it started.
#[derive(Debug, Default)]
pub(crate) struct EventCounts {
    /// From clients.
    pub received: AtomicU64,
    /// To clients.
    pub sent: AtomicU64,
}

/// The record separator of an Engine.IO polling payload.
const SEPARATOR: u8 = 0x1e;

/// Where a [`RecordScan`] is within the current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum At {
    /// At the start of a record.
    #[default]
    Start,
    /// The record so far is `4`.
    Message,
    /// Decided: skip to the next separator.
    Rest,
}

/// Finds event records in a polling payload fed in arbitrary chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RecordScan {
    at: At,
}

impl RecordScan {
    /// Feeds the next bytes of the payload; returns how many events began in them.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut events = 0;
        while !data.is_empty() {
            match self.at {
                At::Rest => match memchr_separator(data) {
                    Some(i) => {
                        self.at = At::Start;
                        data = &data[i + 1..];
                    }
                    None => return events,
                },
                At::Start => {
                    self.at = match data[0] {
                        b'4' => At::Message,
                        SEPARATOR => At::Start,
                        _ => At::Rest,
                    };
                    data = &data[1..];
                }
                At::Message => {
                    match data[0] {
                        b'2' | b'5' => {
                            events += 1;
                            self.at = At::Rest;
                        }
                        SEPARATOR => self.at = At::Start,
                        _ => self.at = At::Rest,
                    }
                    data = &data[1..];
                }
            }
        }
        events
    }
}

fn memchr_separator(data: &[u8]) -> Option<usize> {
    data.iter().position(|b| *b == SEPARATOR)
}

/// Whether the first two bytes of a websocket text message make it an event.
pub(crate) fn is_event_prefix(prefix: [u8; 2]) -> bool {
    prefix[0] == b'4' && matches!(prefix[1], b'2' | b'5')
}

/// A polling response body that counts the events it carries to the client.
pub(crate) struct CountingBody<B> {
    inner: B,
    scan: RecordScan,
    counts: Arc<EventCounts>,
}

impl<B> CountingBody<B> {
    /// Counts the events of `inner` into `counts` as its frames go out.
    pub(crate) fn new(inner: B, counts: Arc<EventCounts>) -> Self {
        Self {
            inner,
            scan: RecordScan::default(),
            counts,
        }
    }
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = this.scan.feed(data);
            if n > 0 {
                this.counts.sent.fetch_add(n, Ordering::Relaxed);
            }
        }
        polled
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

    fn count(chunks: &[&[u8]]) -> u64 {
        let mut s = RecordScan::default();
        chunks.iter().map(|c| s.feed(c)).sum()
    }

    #[test]
    fn counts_event_records_across_chunks() {
        assert_eq!(count(&[b"42[\"a\"]"]), 1);
        assert_eq!(count(&[b"42[\"a\"]\x1e42[\"b\",1]\x1e45-[\"c\"]"]), 3);
        assert_eq!(count(&[b"4", b"2[\"a\"]\x1e4", b"2[]"]), 2);
        // Not events: connect, ack, disconnect, ping, noop, attachments, a `42` inside a record.
        assert_eq!(count(&[b"40\x1e43[1]\x1e41\x1e2\x1e6\x1ebAAAA\x1e3"]), 0);
        assert_eq!(count(&[b"43[\"42\"]\x1e40{\"x\":\"\x1e\"}"]), 0);
        assert_eq!(count(&[b"\x1e\x1e42\x1e"]), 1);
        assert_eq!(count(&[b""]), 0);
        assert!(is_event_prefix(*b"42") && is_event_prefix(*b"45"));
        assert!(!is_event_prefix(*b"43") && !is_event_prefix(*b"24"));
    }
}
