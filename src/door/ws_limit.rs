//! `--max-payload` on websocket frames and messages, enforced on the connection's bytes, and a
//! close frame that says why: status 1009 (Message Too Big).
//!
//! Why this exists: tungstenite's own `max_message_size`/`max_frame_size` do bound what it
//! buffers, but on a capacity error it only returns an error; engineioxide then drops the read
//! side, closes the session, and its writer task ends with `tx.close()`, which sends a Close frame
//! with **no status code** (`0x88 0x00`). A client cannot tell "too big" from any other close.
//!
//! [`WsLimited`] wraps the whole IO that hyper serves. hyper's upgrade hands that same (wrapped)
//! IO to engineioxide, so after the HTTP 101 every websocket byte passes through it. It is inert
//! until the request layer calls [`WsSwitch::activate`] (when the app answered a websocket
//! upgrade with a 101, *before* hyper writes that 101). Once active:
//!
//! - **read side**: client→server frames are parsed as the bytes pass (RFC 6455 §5.2), payloads
//!   are counted down, never copied. A data frame longer than `max_frame`, or one that takes its
//!   message past `max_message`, is refused from its *header*: the read that carries it delivers
//!   only the bytes before that header, and every later read fails with `InvalidData`. The
//!   payload is never read, so it is never buffered.
//! - **write side**: the 101 response head passes through, then server→client frames are parsed
//!   only to know where frames begin, whatever the write splits. After a violation, a Close frame
//!   starting at a frame boundary is replaced by a Close frame with code 1009 and the reason
//!   `message too big`; everything else passes through unchanged.
//!
//! Inactive, the wrapper costs one relaxed atomic load per call.
//!
//! What it relies on, and what happens otherwise (tungstenite's own limits still bound memory
//! in every case):
//!
//! - the client sends nothing after its upgrade request until the 101 (RFC 6455 §4.1 says it
//!   MUST wait). Bytes hyper read along with the request head, before activation, were not
//!   parsed, so the read side would start mid-stream: at worst it refuses or misses a frame of
//!   that misbehaving client only;
//! - `activate` comes before hyper writes the 101, and the 101 head is the first `HTTP/1.x 101 `
//!   written after it (true unless the tail of an earlier pipelined response is still unflushed
//!   and itself contains that text). If the head is never seen, the write side just passes
//!   everything through: no rewrite, the code-less close goes out as before.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The limits `--max-payload` puts on what a client sends over a websocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WsLimits {
    /// Largest message, in payload bytes summed over its data frames (control frames excluded).
    pub max_message: usize,
    /// Largest payload of a single data frame.
    pub max_frame: usize,
}

/// Shared by a connection's IO wrapper and its request handling.
///
/// Orderings are relaxed: `activate` is called by the request layer in the connection's own
/// task, before hyper writes the 101 that the wrapper then sees; if the task moves to another
/// thread in between, the scheduler's hand-off synchronises. `oversized` is set and read by the
/// wrapper itself (its read and write halves are the same object); others only report it.
#[derive(Debug, Default)]
pub(crate) struct WsSwitch {
    /// Set once the connection is about to become a websocket; never cleared.
    active: AtomicBool,
    /// Set once the client sent a frame or message over the limits; never cleared.
    oversized: AtomicBool,
}

impl WsSwitch {
    /// Switches the wrapper on: from the next read and write, bytes are websocket frames (after
    /// the 101 head on the write side). Call it before hyper writes the 101 response.
    pub(crate) fn activate(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    /// Whether [`activate`](Self::activate) was called.
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the client sent a frame or message over the limits (the websocket is refused).
    pub(crate) fn oversized(&self) -> bool {
        self.oversized.load(Ordering::Relaxed)
    }

    /// Records a violation.
    fn mark_oversized(&self) {
        self.oversized.store(true, Ordering::Relaxed);
    }
}

/// The error every read returns once the client went over the limits.
fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "websocket message larger than --max-payload",
    )
}

/// Opcode of a continuation frame.
const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a close frame.
const OP_CLOSE: u8 = 0x8;
/// Longest frame header: 2 bytes, 8 of extended length, 4 of masking key.
const MAX_HEADER: usize = 14;

/// The close frame written instead of the server's own after a violation: FIN + close, unmasked,
/// payload 17 bytes = status 1009 (`0x03F1`) + `message too big`.
const CLOSE_1009: [u8; 19] = *b"\x88\x11\x03\xf1message too big";

/// What a frame header says, as far as the limits care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    /// FIN bit: last frame of its message.
    fin: bool,
    /// The 4-bit opcode (0 continuation, 1 text, 2 binary, ≥ 8 control).
    opcode: u8,
    /// Payload length as declared (7, 16 or 64-bit encoding).
    payload_len: u64,
}

/// Where a [`FrameCursor`] is within the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CursorState {
    /// Collecting the header; `have` of its bytes are in `bytes`. `have == 0` is a frame boundary.
    Header {
        /// The header bytes seen so far.
        bytes: [u8; MAX_HEADER],
        /// How many of `bytes` are filled.
        have: u8,
    },
    /// Inside a payload with this many bytes still to come (never 0).
    Payload {
        /// Payload bytes not yet seen.
        remaining: u64,
    },
}

/// A pure state machine that follows RFC 6455 frames through a byte stream fed in arbitrary
/// pieces: it collects each header (at most 14 bytes) and counts payloads down without looking
/// at them. It never fails: any byte sequence is some sequence of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameCursor {
    /// Position within the current frame.
    state: CursorState,
    /// Masking key of the last header completed (zeros for an unmasked frame).
    mask: [u8; 4],
}

impl FrameCursor {
    /// A cursor at a frame boundary.
    fn new() -> Self {
        Self {
            state: CursorState::Header {
                bytes: [0; MAX_HEADER],
                have: 0,
            },
            mask: [0; 4],
        }
    }

    /// Whether the next byte fed is payload.
    fn in_payload(&self) -> bool {
        matches!(self.state, CursorState::Payload { .. })
    }

    /// Whether the next byte fed starts a frame.
    fn at_boundary(&self) -> bool {
        matches!(self.state, CursorState::Header { have: 0, .. })
    }

    /// Header length implied by its first two bytes: extended length and masking key.
    fn header_len(b1: u8) -> usize {
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Decodes a complete header (`bytes` holds at least `header_len(bytes[1])` bytes).
    fn decode(bytes: &[u8; MAX_HEADER]) -> FrameHeader {
        let [b0, b1, e0, e1, e2, e3, e4, e5, e6, e7, ..] = *bytes;
        let payload_len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([e0, e1])),
            127 => u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
            n => u64::from(n),
        };
        FrameHeader {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            payload_len,
        }
    }

    /// Feeds bytes from the front of `data`, stopping right after a header completes.
    ///
    /// Returns how many bytes were consumed (at least 1 if `data` is not empty) and the header
    /// if the last consumed byte completed one. Payload bytes are skipped in one step.
    fn feed(&mut self, data: &[u8]) -> (usize, Option<FrameHeader>) {
        match &mut self.state {
            CursorState::Payload { remaining } => {
                let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                let take = len.min(*remaining);
                *remaining -= take;
                if *remaining == 0 {
                    *self = Self::new();
                }
                // `take <= data.len()`, so it fits in usize.
                (usize::try_from(take).unwrap_or(data.len()), None)
            }
            CursorState::Header { bytes, have } => {
                for (i, &b) in data.iter().enumerate() {
                    let at = usize::from(*have);
                    if let Some(slot) = bytes.get_mut(at) {
                        *slot = b;
                    }
                    *have += 1;
                    let have_now = usize::from(*have);
                    if have_now >= 2 && have_now >= Self::header_len(bytes[1]) {
                        let header = Self::decode(bytes);
                        self.mask = if bytes[1] & 0x80 != 0 {
                            let at = have_now - 4;
                            [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]
                        } else {
                            [0; 4]
                        };
                        self.state = if header.payload_len == 0 {
                            CursorState::Header {
                                bytes: [0; MAX_HEADER],
                                have: 0,
                            }
                        } else {
                            CursorState::Payload {
                                remaining: header.payload_len,
                            }
                        };
                        return (i + 1, Some(header));
                    }
                }
                (data.len(), None)
            }
        }
    }
}

/// Opcode of a text frame.
const OP_TEXT: u8 = 0x1;

/// Collects the first two payload bytes of each text message as they pass (unmasked), to
/// count Socket.IO events ([`crate::worker::events`]).
#[derive(Debug, Clone, Copy, Default)]
struct EventPrefix {
    /// Prefix bytes still wanted from the current frame's payload (0: none).
    want: u8,
    /// The bytes so far.
    got: [u8; 2],
    /// Masking key of the frame.
    mask: [u8; 4],
    /// Events found and not yet reported.
    events: u64,
}

impl EventPrefix {
    /// A header completed: a text message's first frame with room for a prefix is looked at.
    fn header(&mut self, header: FrameHeader, mask: [u8; 4]) {
        self.want = if header.opcode == OP_TEXT && header.payload_len >= 2 {
            2
        } else {
            0
        };
        self.mask = mask;
    }

    /// Takes prefix bytes from the front of `data` (payload bytes of the current frame),
    /// without consuming them.
    fn take(&mut self, data: &[u8]) {
        for &b in data.iter().take(usize::from(self.want)) {
            let i = usize::from(2 - self.want);
            if let Some(slot) = self.got.get_mut(i) {
                *slot = b ^ self.mask[i & 3];
            }
            self.want -= 1;
            if self.want == 0 && crate::worker::events::is_event_prefix(self.got) {
                self.events += 1;
            }
        }
    }

    /// Events found since the last call.
    fn drain(&mut self) -> u64 {
        std::mem::take(&mut self.events)
    }
}

/// The read side: follows client→server frames and checks each data frame's header against
/// the limits.
#[derive(Debug, Clone, Copy)]
struct ReadLimiter {
    /// Frame position in the client's stream.
    cursor: FrameCursor,
    /// Payload bytes of the message in progress (0 between messages).
    message_len: u64,
    /// `max_message` as u64.
    max_message: u64,
    /// `max_frame` as u64.
    max_frame: u64,
    /// Event counting.
    events: EventPrefix,
}

impl ReadLimiter {
    /// A limiter at the start of the websocket stream.
    fn new(limits: WsLimits) -> Self {
        Self {
            cursor: FrameCursor::new(),
            message_len: 0,
            max_message: u64::try_from(limits.max_message).unwrap_or(u64::MAX),
            max_frame: u64::try_from(limits.max_frame).unwrap_or(u64::MAX),
            events: EventPrefix::default(),
        }
    }

    /// Accounts for one complete header; `false` if it breaks a limit.
    fn admit(&mut self, header: FrameHeader) -> bool {
        if header.opcode >= OP_CLOSE {
            // Control frames: not part of any message; tungstenite enforces ≤ 125 bytes.
            return true;
        }
        let total = if header.opcode == OP_CONTINUATION {
            self.message_len.saturating_add(header.payload_len)
        } else {
            header.payload_len
        };
        if header.payload_len > self.max_frame || total > self.max_message {
            tracing::debug!(
                frame_len = header.payload_len,
                message_len = total,
                "websocket frame over --max-payload, refusing the websocket"
            );
            return false;
        }
        self.message_len = if header.fin { 0 } else { total };
        true
    }

    /// Scans bytes just read. `Err(cut)` on a violation, where `cut` is how many leading bytes
    /// of `data` come before the violating header (0 if that header began in earlier bytes).
    fn scan(&mut self, data: &[u8]) -> Result<(), usize> {
        let mut pos = 0;
        let mut header_start = 0;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            if self.cursor.at_boundary() {
                header_start = pos;
            }
            if self.cursor.in_payload() {
                self.events.take(rest);
            }
            let (n, header) = self.cursor.feed(rest);
            pos += n;
            if let Some(header) = header {
                if !self.admit(header) {
                    return Err(header_start);
                }
                self.events.header(header, self.cursor.mask);
            }
        }
        Ok(())
    }
}

/// What the write side is looking at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WritePhase {
    /// hyper's HTTP 101 response head, written after activation: passed through until its end.
    Head {
        /// The last bytes written, newest in the low byte.
        window: u128,
        /// Whether the `HTTP/1.x 101 ` status line start was seen.
        status_seen: bool,
    },
    /// Websocket frames.
    Frames,
}

/// `HTTP/1.x 101 ` (13 bytes) as the low bytes of a window; the version digit is a wildcard.
const STATUS_PATTERN: u128 = {
    let pat = *b"HTTP/1.x 101 ";
    let mut v: u128 = 0;
    let mut i = 0;
    while i < pat.len() {
        v = (v << 8) | pat[i] as u128;
        i += 1;
    }
    v
};
/// Which bits of the window [`STATUS_PATTERN`] checks: its 13 bytes but the wildcard `x`, which
/// ` 101 ` (5 bytes) follows, so it is byte 5 counting from 0 at the low end.
const STATUS_MASK: u128 = ((1u128 << (13 * 8)) - 1) & !(0xffu128 << (5 * 8));
/// `\r\n\r\n`, the end of the head, as the low bytes of the window.
const HEAD_END: u128 = 0x0d0a_0d0a;

/// The write side: finds frame boundaries in server→client bytes and, after a violation,
/// swaps the server's close frame for [`CLOSE_1009`].
#[derive(Debug, Clone, Copy)]
struct WriteRewriter {
    /// Head or frames.
    phase: WritePhase,
    /// Frame position in the server's stream.
    cursor: FrameCursor,
    /// Inside an original close frame being dropped (its replacement is queued).
    swallowing: bool,
    /// Replacement bytes reported as written but not yet written to the inner IO.
    pending: &'static [u8],
    /// Event counting.
    events: EventPrefix,
}

impl WriteRewriter {
    /// A rewriter at activation: the 101 head comes first.
    fn new() -> Self {
        Self {
            phase: WritePhase::Head {
                window: 0,
                status_seen: false,
            },
            cursor: FrameCursor::new(),
            swallowing: false,
            pending: &[],
            events: EventPrefix::default(),
        }
    }

    /// Follows bytes that pass through unchanged, stopping *before* a close frame that starts at
    /// a frame boundary if `stop_at_close`. Returns how many bytes it went over.
    fn advance(&mut self, data: &[u8], stop_at_close: bool) -> usize {
        let mut pos = 0;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            match &mut self.phase {
                WritePhase::Head {
                    window,
                    status_seen,
                } => {
                    for &b in rest {
                        pos += 1;
                        *window = (*window << 8) | u128::from(b);
                        if !*status_seen {
                            *status_seen = *window & STATUS_MASK == STATUS_PATTERN & STATUS_MASK;
                        } else if *window & 0xffff_ffff == HEAD_END {
                            self.phase = WritePhase::Frames;
                            break;
                        }
                    }
                }
                WritePhase::Frames => {
                    if stop_at_close
                        && self.cursor.at_boundary()
                        && rest.first().is_some_and(|b| b & 0x0f == OP_CLOSE)
                    {
                        return pos;
                    }
                    if self.cursor.in_payload() {
                        self.events.take(rest);
                    }
                    let (n, header) = self.cursor.feed(rest);
                    pos += n;
                    if let Some(header) = header {
                        self.events.header(header, self.cursor.mask);
                    }
                }
            }
        }
        pos
    }

    /// Drops bytes of the original close frame (the cursor is at its start or inside it),
    /// queueing the replacement at its start. Returns how many bytes were dropped (≥ 1 if `data`
    /// is not empty); `swallowing` ends with the frame.
    fn swallow(&mut self, data: &[u8]) -> usize {
        if !self.swallowing {
            self.swallowing = true;
            self.pending = &CLOSE_1009;
        }
        let mut pos = 0;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            pos += self.cursor.feed(rest).0;
            if self.cursor.at_boundary() {
                self.swallowing = false;
                break;
            }
        }
        pos
    }
}

/// A connection's IO with `--max-payload` enforced on its websocket, once switched on.
///
/// `Send` when `IO` is, `Unpin` when `IO` is (it is never pin-projected).
pub(crate) struct WsLimited<IO> {
    /// The connection (TCP or TLS).
    io: IO,
    /// Shared with the request layer.
    switch: Arc<WsSwitch>,
    /// Client→server frame checks.
    read: ReadLimiter,
    /// Server→client frame boundaries and the 1009 rewrite.
    write: WriteRewriter,
    /// Where the events found go, if counted.
    counts: Option<Arc<crate::worker::events::EventCounts>>,
}

impl<IO> WsLimited<IO> {
    /// Wraps `io`; inert until `switch` is activated.
    pub(crate) fn new(io: IO, limits: WsLimits, switch: Arc<WsSwitch>) -> Self {
        Self {
            io,
            switch,
            read: ReadLimiter::new(limits),
            write: WriteRewriter::new(),
            counts: None,
        }
    }

    /// Counts the Socket.IO events of the websocket (both ways) into `counts`.
    pub(crate) fn counting(mut self, counts: Arc<crate::worker::events::EventCounts>) -> Self {
        self.counts = Some(counts);
        self
    }
}

impl<IO: std::fmt::Debug> std::fmt::Debug for WsLimited<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsLimited")
            .field("io", &self.io)
            .field("switch", &self.switch)
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WsLimited<IO> {
    /// Writes the queued replacement close frame, if any, to the inner IO.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.write.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write.pending = self.write.pending.get(n..).unwrap_or(&[]);
        }
        Poll::Ready(Ok(()))
    }

    /// `poll_write` once active.
    fn poll_write_active(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Finish the replacement before accepting anything that comes after it.
        ready!(self.poll_pending(cx))?;
        if buf.is_empty() {
            return Pin::new(&mut self.io).poll_write(cx, buf);
        }
        if self.write.swallowing {
            return Poll::Ready(Ok(self.write.swallow(buf)));
        }
        let oversized = self.switch.oversized();
        // How much passes through unchanged: all of it, or up to a close frame to replace.
        let through = if oversized {
            self.write.clone().advance(buf, true)
        } else {
            buf.len()
        };
        if through == 0 {
            return Poll::Ready(Ok(self.write.swallow(buf)));
        }
        let through = buf.get(..through).unwrap_or(buf);
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, through))?.min(through.len());
        self.write
            .advance(through.get(..n).unwrap_or(through), oversized);
        let events = self.write.events.drain();
        if events > 0
            && let Some(c) = &self.counts
        {
            c.sent.fetch_add(events, Ordering::Relaxed);
        }
        Poll::Ready(Ok(n))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsLimited<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.switch.is_active() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        if this.switch.oversized() {
            return Poll::Ready(Err(too_big()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let new = buf.filled().get(before..).unwrap_or(&[]);
        let scanned = this.read.scan(new);
        let events = this.read.events.drain();
        if events > 0
            && let Some(c) = &this.counts
        {
            c.received.fetch_add(events, Ordering::Relaxed);
        }
        match scanned {
            Ok(()) => Poll::Ready(Ok(())),
            Err(cut) => {
                this.switch.mark_oversized();
                if cut == 0 {
                    // Nothing new to deliver; an empty Ok would read as end of stream.
                    Poll::Ready(Err(too_big()))
                } else {
                    buf.set_filled(before + cut);
                    Poll::Ready(Ok(()))
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsLimited<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.switch.is_active() {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        this.poll_write_active(cx, buf)
    }

    /// Inactive: the inner's. Active: the first non-empty slice through `poll_write` (what
    /// tokio's default does), so frame tracking and the rewrite stay in one place. After the
    /// upgrade only hyper's 101 head comes this way (tungstenite writes with plain `write`).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.switch.is_active() {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        this.poll_write_active(cx, first)
    }

    /// Always the inner's, active or not. The value is fixed for the object's life (hyper reads
    /// it once, to choose its write buffer strategy), and either answer is correct: callers of a
    /// vectored write must accept a partial write, and writing only the first slice is one. The
    /// inner's value keeps hyper's vectored writes for all plain HTTP traffic; the only cost is
    /// the 101 head being written slice by slice once active.
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.switch.is_active() {
            ready!(this.poll_pending(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.switch.is_active() {
            ready!(this.poll_pending(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// How a test frame encodes its payload length.
    #[derive(Clone, Copy)]
    enum Len {
        /// The shortest encoding.
        Auto,
        /// 16-bit extended length, whatever the payload.
        L16,
        /// 64-bit extended length, whatever the payload.
        L64,
    }

    /// The masking key of masked test frames.
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// hyper's 101 head, as the write side sees it after activation.
    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
        upgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    /// A frame header declaring `len` payload bytes.
    fn header(fin: bool, opcode: u8, len: u64, masked: bool, enc: Len) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if masked { 0x80 } else { 0 };
        match enc {
            Len::Auto if len < 126 => out.push(m | len as u8),
            Len::Auto if len <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Len::L16 => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Len::Auto | Len::L64 => {
                out.push(m | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&KEY);
        }
        out
    }

    /// A whole frame; masked payloads are masked with [`KEY`].
    fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool, enc: Len) -> Vec<u8> {
        let mut out = header(fin, opcode, payload.len() as u64, masked, enc);
        if masked {
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// A masked client frame with the shortest length encoding.
    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(fin, opcode, payload, true, Len::Auto)
    }

    /// An unmasked server frame with the shortest length encoding.
    fn server(opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(true, opcode, payload, false, Len::Auto)
    }

    /// A server close frame with a status code and a reason.
    fn close_with(code: u16, reason: &str) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        server(OP_CLOSE, &payload)
    }

    /// Small limits: frames up to 60 bytes, messages up to 100.
    const SMALL: WsLimits = WsLimits {
        max_message: 100,
        max_frame: 60,
    };

    /// A wrapped server end and the raw client end of a duplex pair.
    fn pair(
        limits: WsLimits,
        active: bool,
    ) -> (WsLimited<DuplexStream>, DuplexStream, Arc<WsSwitch>) {
        let (server_io, client_io) = duplex(1 << 20);
        let switch = Arc::new(WsSwitch::default());
        if active {
            switch.activate();
        }
        (
            WsLimited::new(server_io, limits, switch.clone()),
            client_io,
            switch,
        )
    }

    /// Reads exactly `n` bytes from `r`, failing the test after a second.
    async fn read_n(r: &mut (impl AsyncRead + Unpin), n: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0; n];
        tokio::time::timeout(Duration::from_secs(1), r.read_exact(&mut out))
            .await
            .expect("read timed out")?;
        Ok(out)
    }

    /// One read into a large buffer, failing the test after a second.
    async fn read_once(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
        let mut out = vec![0; 1 << 16];
        let n = tokio::time::timeout(Duration::from_secs(1), r.read(&mut out))
            .await
            .expect("read timed out")?;
        out.truncate(n);
        Ok(out)
    }

    /// Asserts `res` is the `--max-payload` error.
    fn assert_too_big<T: std::fmt::Debug>(res: io::Result<T>) {
        let err = res.expect_err("expected the --max-payload error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            err.to_string(),
            "websocket message larger than --max-payload"
        );
    }

    /// Makes the client go over [`SMALL`]'s frame limit, so the write side rewrites closes.
    async fn trip(w: &mut WsLimited<DuplexStream>, c: &mut DuplexStream) {
        c.write_all(&header(true, 2, 1000, true, Len::Auto))
            .await
            .unwrap();
        assert_too_big(read_once(w).await);
        assert!(w.switch.oversized());
    }

    /// Everything `c` receives until the wrapper is shut down.
    async fn drain(
        mut w: WsLimited<impl AsyncRead + AsyncWrite + Unpin>,
        c: &mut DuplexStream,
    ) -> Vec<u8> {
        w.shutdown().await.unwrap();
        drop(w);
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), c.read_to_end(&mut out))
            .await
            .expect("drain timed out")
            .unwrap();
        out
    }

    /// An IO that accepts at most one byte per write.
    struct OneByte<T>(T);

    impl<T: AsyncRead + Unpin> AsyncRead for OneByte<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for OneByte<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let one = buf.get(..1).unwrap_or(buf);
            Pin::new(&mut self.0).poll_write(cx, one)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    // ---- FrameCursor ----

    /// Feeds `data` whole and returns every header and where its last byte was.
    fn headers(cursor: &mut FrameCursor, data: &[u8]) -> Vec<(usize, FrameHeader)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let (n, h) = cursor.feed(&data[pos..]);
            assert!(n >= 1, "no progress");
            pos += n;
            if let Some(h) = h {
                out.push((pos, h));
            }
        }
        out
    }

    #[test]
    fn cursor_decodes_each_length_encoding() {
        for (enc, len, hdr_len) in [
            (Len::Auto, 5u64, 6),
            (Len::Auto, 125, 6),
            (Len::Auto, 126, 8),
            (Len::Auto, 65535, 8),
            (Len::Auto, 65536, 14),
            (Len::L16, 3, 8),
            (Len::L64, 3, 14),
        ] {
            let h = header(false, 1, len, true, enc);
            assert_eq!(h.len(), hdr_len);
            let mut c = FrameCursor::new();
            let (n, got) = c.feed(&h);
            assert_eq!(n, hdr_len);
            assert_eq!(
                got,
                Some(FrameHeader {
                    fin: false,
                    opcode: 1,
                    payload_len: len
                })
            );
            assert!(!c.at_boundary());
            // The payload is skipped in one step, and the next byte is a boundary.
            let payload = vec![0u8; len as usize];
            assert_eq!(c.feed(&payload), (len as usize, None));
            assert!(c.at_boundary());
        }
    }

    #[test]
    fn cursor_unmasked_and_empty_frames() {
        let mut c = FrameCursor::new();
        let mut data = server(OP_CLOSE, &[]);
        data.extend(server(1, b"hi"));
        let got = headers(&mut c, &data);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            (
                2,
                FrameHeader {
                    fin: true,
                    opcode: OP_CLOSE,
                    payload_len: 0
                }
            )
        );
        assert_eq!(got[1].0, 4);
        assert!(c.at_boundary());
    }

    #[test]
    fn cursor_byte_by_byte_matches_whole() {
        let mut data = client(false, 1, &[1; 10]);
        data.extend(frame(true, 9, b"ping", true, Len::L64));
        data.extend(frame(true, 0, &[2; 300], true, Len::Auto));
        let whole = headers(&mut FrameCursor::new(), &data);
        let mut c = FrameCursor::new();
        let mut split = Vec::new();
        for (i, b) in data.iter().enumerate() {
            let (n, h) = c.feed(std::slice::from_ref(b));
            assert_eq!(n, 1);
            if let Some(h) = h {
                split.push((i + 1, h));
            }
        }
        assert_eq!(whole, split);
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn cursor_never_panics_on_garbage() {
        let mut rng = fastrand::Rng::with_seed(6455);
        for _ in 0..2000 {
            let len = rng.usize(0..64);
            let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let mut c = FrameCursor::new();
            headers(&mut c, &data);
            let mut r = ReadLimiter::new(SMALL);
            let _ = r.scan(&data);
            let mut w = WriteRewriter::new();
            w.phase = WritePhase::Frames;
            w.clone().advance(&data, true);
            w.advance(&data, false);
        }
        // The largest 64-bit length, MSB set (invalid per RFC), still just counts.
        let h = header(true, 2, u64::MAX, false, Len::L64);
        assert_eq!(
            FrameCursor::new().feed(&h).1.map(|h| h.payload_len),
            Some(u64::MAX)
        );
    }

    // ---- ReadLimiter ----

    #[test]
    fn events_are_counted_from_text_message_prefixes_both_ways() {
        let big = WsLimits {
            max_message: 1 << 20,
            max_frame: 1 << 20,
        };
        // Client frames (masked), fed whole and one byte at a time.
        let mut stream = Vec::new();
        stream.extend(client(true, OP_TEXT, b"42[\"a\"]"));
        stream.extend(client(true, OP_TEXT, b"2")); // ping reply: not an event
        stream.extend(client(true, OP_TEXT, b"43[1]")); // ack
        stream.extend(client(false, OP_TEXT, b"4")); // an event split over two frames...
        stream.extend(client(true, OP_CONTINUATION, b"5-[\"b\",{}]")); // (not looked at)
        stream.extend(client(true, 2, b"42")); // binary attachment: not an event
        stream.extend(client(true, OP_TEXT, b"45-[\"c\"]"));
        let mut whole = ReadLimiter::new(big);
        whole.scan(&stream).unwrap();
        assert_eq!(whole.events.drain(), 2);
        let mut bytewise = ReadLimiter::new(big);
        for b in &stream {
            bytewise.scan(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(bytewise.events.drain(), 2);
        assert_eq!(bytewise.events.drain(), 0);

        // Server frames (unmasked), after the 101 head.
        let mut out = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec();
        out.extend(server(OP_TEXT, b"42[\"msg\",1]"));
        out.extend(server(OP_TEXT, b"3"));
        out.extend(server(OP_TEXT, b"40{\"sid\":\"x\"}"));
        out.extend(server(OP_TEXT, b"42[\"msg\",2]"));
        let mut w = WriteRewriter::new();
        for chunk in out.chunks(3) {
            w.advance(chunk, false);
        }
        assert_eq!(w.events.drain(), 2);
    }

    #[test]
    fn limiter_rules() {
        let mut r = ReadLimiter::new(SMALL);
        // A frame at exactly the frame limit passes; one byte more does not.
        assert!(r.admit(FrameHeader {
            fin: true,
            opcode: 2,
            payload_len: 60
        }));
        assert!(!r.clone().admit(FrameHeader {
            fin: true,
            opcode: 2,
            payload_len: 61
        }));
        // A message at exactly the message limit passes.
        assert!(r.admit(FrameHeader {
            fin: false,
            opcode: 1,
            payload_len: 50
        }));
        assert!(r.admit(FrameHeader {
            fin: true,
            opcode: 9,
            payload_len: 125
        }));
        assert!(r.admit(FrameHeader {
            fin: true,
            opcode: 0,
            payload_len: 50
        }));
        assert_eq!(r.message_len, 0);
        // Control frames are never refused here, whatever their length.
        assert!(r.admit(FrameHeader {
            fin: true,
            opcode: 8,
            payload_len: u64::MAX
        }));
        // A continuation can't overflow the sum.
        assert!(r.admit(FrameHeader {
            fin: false,
            opcode: 2,
            payload_len: 60
        }));
        r.message_len = u64::MAX - 1;
        assert!(!r.admit(FrameHeader {
            fin: true,
            opcode: 0,
            payload_len: 10
        }));
    }

    #[test]
    fn limiter_cut_is_relative_to_this_read() {
        let ok = client(true, 1, b"fine");
        let bad = header(true, 2, 61, true, Len::Auto);
        let mut r = ReadLimiter::new(SMALL);
        let mut data = ok.clone();
        data.extend_from_slice(&bad);
        assert_eq!(r.scan(&data), Err(ok.len()));
        // A violating header split over two reads: the cut in the second read is 0.
        let mut r = ReadLimiter::new(SMALL);
        assert_eq!(r.scan(&data[..ok.len() + 1]), Ok(()));
        assert_eq!(r.scan(&data[ok.len() + 1..]), Err(0));
    }

    // ---- Reading through WsLimited ----

    #[tokio::test]
    async fn inactive_passes_everything_through() {
        let (mut w, mut c, switch) = pair(SMALL, false);
        // Plain HTTP, then bytes that would be refused (and rewritten) if active.
        let mut data = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        data.extend(header(true, 2, 1 << 40, true, Len::Auto));
        c.write_all(&data).await.unwrap();
        assert_eq!(read_n(&mut w, data.len()).await.unwrap(), data);
        assert!(!switch.oversized());
        let mut out = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        out.extend(server(OP_CLOSE, &[]));
        w.write_all(&out).await.unwrap();
        let slices = [
            io::IoSlice::new(b""),
            io::IoSlice::new(b"ab"),
            io::IoSlice::new(b"cd"),
        ];
        let n = w.write_vectored(&slices).await.unwrap();
        assert_eq!(n, 4, "duplex writes vectored, all of it");
        out.extend_from_slice(b"abcd");
        assert_eq!(drain(w, &mut c).await, out);
    }

    #[tokio::test]
    async fn masked_frames_under_the_limit_pass_unchanged() {
        let limits = WsLimits {
            max_message: 100_000,
            max_frame: 100_000,
        };
        let (mut w, mut c, switch) = pair(limits, true);
        let mut data = Vec::new();
        data.extend(client(true, 1, b"short"));
        data.extend(frame(true, 2, &[9; 300], true, Len::Auto));
        data.extend(frame(true, 2, &[8; 70_000], true, Len::Auto));
        data.extend(frame(true, 1, b"16", true, Len::L16));
        data.extend(frame(true, 1, b"64", true, Len::L64));
        data.extend(client(true, 9, b"ping"));
        data.extend(client(true, 8, &1000u16.to_be_bytes()));
        c.write_all(&data).await.unwrap();
        assert_eq!(read_n(&mut w, data.len()).await.unwrap(), data);
        assert!(!switch.oversized());
    }

    #[tokio::test]
    async fn frame_over_the_limit_is_refused_at_its_header() {
        let (mut w, mut c, switch) = pair(SMALL, true);
        // Only the header: if the wrapper waited for the payload, this would time out.
        c.write_all(&header(true, 2, 61, true, Len::Auto))
            .await
            .unwrap();
        assert_too_big(read_once(&mut w).await);
        assert!(switch.oversized());
        // Every later read fails, even with the payload (and more) available.
        c.write_all(&[0; 61]).await.unwrap();
        c.write_all(&client(true, 1, b"late")).await.unwrap();
        assert_too_big(read_once(&mut w).await);
        assert_too_big(read_once(&mut w).await);
    }

    #[tokio::test]
    async fn header_split_over_reads_is_refused() {
        let (mut w, mut c, _) = pair(SMALL, true);
        let ok = client(true, 2, b"ok");
        let mut data = ok.clone();
        data.extend(header(true, 2, 70_000, true, Len::Auto));
        c.write_all(&data).await.unwrap();
        // One byte per read: the good frame and the bad header but its last byte (a partial
        // header, which tungstenite can do nothing with), then the error instead of that byte.
        let mut got = Vec::new();
        let err = loop {
            let mut b = [0u8; 1];
            match w.read(&mut b).await {
                Ok(1) => got.push(b[0]),
                Ok(n) => panic!("read {n}"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(got, data[..data.len() - 1]);
    }

    #[tokio::test]
    async fn fragmented_message_over_the_limit_with_pings() {
        let (mut w, mut c, switch) = pair(SMALL, true);
        let mut good = Vec::new();
        good.extend(client(false, 1, &[b'a'; 40]));
        good.extend(client(true, 9, &[0; 125]));
        good.extend(client(false, 0, &[b'b'; 40]));
        good.extend(client(true, 10, b"pong"));
        let mut data = good.clone();
        // 40 + 40 + 40 = 120 > 100, each frame under 60.
        data.extend(client(true, 0, &[b'c'; 40]));
        c.write_all(&data).await.unwrap();
        assert_eq!(read_once(&mut w).await.unwrap(), good);
        assert!(switch.oversized());
        assert_too_big(read_once(&mut w).await);
    }

    #[tokio::test]
    async fn message_at_the_limit_passes_and_the_count_restarts() {
        let (mut w, mut c, switch) = pair(SMALL, true);
        let mut data = Vec::new();
        for _ in 0..3 {
            data.extend(client(false, 2, &[1; 50]));
            data.extend(client(true, 9, b""));
            data.extend(client(true, 0, &[2; 50]));
        }
        c.write_all(&data).await.unwrap();
        assert_eq!(read_n(&mut w, data.len()).await.unwrap(), data);
        assert!(!switch.oversized());
    }

    #[tokio::test]
    async fn valid_frames_before_the_violation_come_first() {
        let (mut w, mut c, _) = pair(SMALL, true);
        let mut good = client(true, 1, b"one");
        good.extend(client(true, 2, &[3; 60]));
        let mut data = good.clone();
        data.extend(client(true, 2, &[4; 61]));
        data.extend(client(true, 1, b"after"));
        c.write_all(&data).await.unwrap();
        assert_eq!(read_once(&mut w).await.unwrap(), good);
        assert_too_big(read_once(&mut w).await);
    }

    // ---- Writing through WsLimited ----

    #[tokio::test]
    async fn closes_become_1009_only_after_a_violation() {
        for close in [
            server(OP_CLOSE, &[]),
            close_with(1000, "bye"),
            close_with(1011, ""),
        ] {
            // No violation: unchanged.
            let (mut w, mut c, _) = pair(SMALL, true);
            let mut data = HEAD.to_vec();
            data.extend(server(1, b"4hello"));
            data.extend_from_slice(&close);
            w.write_all(&data).await.unwrap();
            assert_eq!(drain(w, &mut c).await, data);

            // After a violation: the close, and only it, is replaced.
            let (mut w, mut c, _) = pair(SMALL, true);
            trip(&mut w, &mut c).await;
            w.write_all(&data).await.unwrap();
            let mut want = HEAD.to_vec();
            want.extend(server(1, b"4hello"));
            want.extend_from_slice(&CLOSE_1009);
            assert_eq!(drain(w, &mut c).await, want);
        }
    }

    #[test]
    fn replacement_is_a_valid_1009_close() {
        let mut c = FrameCursor::new();
        let (n, h) = c.feed(&CLOSE_1009);
        assert_eq!(
            h,
            Some(FrameHeader {
                fin: true,
                opcode: OP_CLOSE,
                payload_len: 17
            })
        );
        assert_eq!(u16::from_be_bytes([CLOSE_1009[n], CLOSE_1009[n + 1]]), 1009);
        assert_eq!(&CLOSE_1009[n + 2..], b"message too big");
        assert!(n + 17 == CLOSE_1009.len() && CLOSE_1009.len() <= 2 + 125);
    }

    #[tokio::test]
    async fn head_bytes_are_never_rewritten() {
        // A 0x88 inside the 101 head (or before it) is not a frame.
        let (mut w, mut c, _) = pair(SMALL, true);
        trip(&mut w, &mut c).await;
        let mut data =
            b"\x88\x00HTTP/1.1 101 Switching Protocols\r\nx-a: \x88\x00\r\n\r\n".to_vec();
        data.extend(server(OP_CLOSE, &[]));
        w.write_all(&data).await.unwrap();
        let mut want = data[..data.len() - 2].to_vec();
        want.extend_from_slice(&CLOSE_1009);
        assert_eq!(drain(w, &mut c).await, want);
    }

    /// A multi-frame write: head, data, ping, a close with a code, then more data (which
    /// tungstenite would not write, but the wrapper must not care).
    fn multi() -> (Vec<u8>, Vec<u8>) {
        let mut data = HEAD.to_vec();
        data.extend(server(1, b"42[\"hi\"]"));
        data.extend(frame(true, 2, &[5; 200], false, Len::Auto));
        data.extend(server(9, b"p"));
        let at = data.len();
        data.extend(close_with(1000, "normal"));
        let close_len = data.len() - at;
        data.extend(server(1, b"after"));
        let mut rewritten = data[..at].to_vec();
        rewritten.extend_from_slice(&CLOSE_1009);
        rewritten.extend_from_slice(&data[at + close_len..]);
        (data, rewritten)
    }

    #[tokio::test]
    async fn every_write_split_gives_the_same_stream() {
        let (data, rewritten) = multi();
        // Two split points over the tail (frames), one over the whole (head included).
        let frames_at = HEAD.len() - 8;
        let mut cases = Vec::new();
        for i in 0..=data.len() {
            cases.push(vec![i]);
        }
        for i in frames_at..=data.len() {
            for j in i..=data.len() {
                cases.push(vec![i, j]);
            }
        }
        for oversized in [false, true] {
            let want = if oversized { &rewritten } else { &data };
            for cuts in &cases {
                let (mut w, mut c, _) = pair(SMALL, true);
                if oversized {
                    trip(&mut w, &mut c).await;
                }
                let mut from = 0;
                for &cut in cuts.iter().chain([data.len()].iter()) {
                    w.write_all(&data[from..cut]).await.unwrap();
                    from = cut;
                }
                assert_eq!(
                    &drain(w, &mut c).await,
                    want,
                    "cuts {cuts:?} oversized {oversized}"
                );
            }
        }
    }

    #[tokio::test]
    async fn one_byte_writes_from_the_inner() {
        let (data, rewritten) = multi();
        for oversized in [false, true] {
            let (server_io, mut c) = duplex(1 << 20);
            let switch = Arc::new(WsSwitch::default());
            switch.activate();
            let mut w = WsLimited::new(OneByte(server_io), SMALL, switch.clone());
            if oversized {
                c.write_all(&header(true, 2, 1000, true, Len::Auto))
                    .await
                    .unwrap();
                assert_too_big(read_once(&mut w).await);
            }
            // Each write_all goes through one byte at a time, the replacement too.
            w.write_all(&data).await.unwrap();
            w.flush().await.unwrap();
            let want = if oversized { &rewritten } else { &data };
            assert_eq!(&drain(w, &mut c).await, want);
        }
    }

    #[tokio::test]
    async fn flush_writes_the_pending_replacement() {
        let (mut w, mut c, _) = pair(SMALL, true);
        trip(&mut w, &mut c).await;
        w.write_all(HEAD).await.unwrap();
        let close = close_with(1001, "going away");
        let n = w.write(&close).await.unwrap();
        assert_eq!(n, close.len(), "the original close is reported written");
        w.flush().await.unwrap();
        let mut want = HEAD.to_vec();
        want.extend_from_slice(&CLOSE_1009);
        assert_eq!(read_n(&mut c, want.len()).await.unwrap(), want);
        assert!(w.write.pending.is_empty());
    }

    #[tokio::test]
    async fn active_vectored_writes_go_through_the_frame_path() {
        let (mut w, mut c, _) = pair(SMALL, true);
        trip(&mut w, &mut c).await;
        let close = server(OP_CLOSE, &[]);
        let slices = [
            io::IoSlice::new(b""),
            io::IoSlice::new(HEAD),
            io::IoSlice::new(&close),
        ];
        let n = w.write_vectored(&slices).await.unwrap();
        assert_eq!(n, HEAD.len(), "only the first non-empty slice");
        let n = w.write_vectored(&slices[2..]).await.unwrap();
        assert_eq!(n, close.len());
        assert_eq!(w.write_vectored(&[]).await.unwrap(), 0);
        assert!(w.is_write_vectored(), "the inner's value, active or not");
        let mut want = HEAD.to_vec();
        want.extend_from_slice(&CLOSE_1009);
        assert_eq!(drain(w, &mut c).await, want);
    }

    #[test]
    fn wrapper_is_send_and_unpin() {
        fn check<T: Send + Unpin>() {}
        check::<WsLimited<tokio::net::TcpStream>>();
        check::<WsLimited<DuplexStream>>();
    }

    // ---- End to end with tungstenite on both sides ----

    #[tokio::test]
    #[allow(clippy::result_large_err)] // tungstenite's handshake callback type, not ours
    async fn tungstenite_client_gets_1009_for_a_message_over_the_limit() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::{Message, handshake::server as hs};

        let limits = WsLimits {
            max_message: 100_000,
            max_frame: 100_000,
        };
        let (server_io, client_io) = duplex(1 << 20);
        let switch = Arc::new(WsSwitch::default());
        let io = WsLimited::new(server_io, limits, switch.clone());

        // The server, as engineioxide runs it: tungstenite's own limits set too; a reader that
        // stops at the first error; the writer then ends with a code-less close.
        let on_101 = switch.clone();
        let server = tokio::spawn(async move {
            let config = WebSocketConfig::default()
                .max_message_size(Some(100_000))
                .max_frame_size(Some(100_000));
            let accept = move |_: &hs::Request, resp: hs::Response| {
                // The request layer's job: switch on before the 101 is written.
                on_101.activate();
                Ok(resp)
            };
            let ws = tokio_tungstenite::accept_hdr_async_with_config(io, accept, Some(config))
                .await
                .unwrap();
            let (mut tx, mut rx) = ws.split();
            let err = loop {
                match rx.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        tx.send(Message::text(format!("got {}", b.len())))
                            .await
                            .unwrap();
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            };
            tx.close().await.unwrap();
            err
        });

        let (mut ws, _) = tokio_tungstenite::client_async("ws://localhost/", client_io)
            .await
            .unwrap();
        let next = async |ws: &mut tokio_tungstenite::WebSocketStream<DuplexStream>| {
            tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("client read timed out")
                .expect("stream ended")
                .unwrap()
        };
        ws.send(Message::binary(vec![7u8; 90_000])).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("got 90000"));
        assert!(!switch.oversized());

        ws.send(Message::binary(vec![7u8; 200_000])).await.unwrap();
        match next(&mut ws).await {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Size);
                assert_eq!(u16::from(frame.code), 1009);
                assert_eq!(frame.reason.as_str(), "message too big");
            }
            other => panic!("expected a 1009 close, got {other:?}"),
        }
        assert!(switch.oversized());
        let err = server
            .await
            .unwrap()
            .expect("the server's reader saw an error");
        assert!(
            matches!(&err, tokio_tungstenite::tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData),
            "{err:?}"
        );
    }

    /// The production path: hyper serves the wrapped IO (vectored writes, since duplex streams
    /// are), the app activates the switch when it answers 101, and tungstenite runs on hyper's
    /// `Upgraded`, as engineioxide does.
    #[tokio::test]
    async fn through_hyper_upgrade_the_client_gets_1009() {
        use futures_util::{SinkExt, StreamExt};
        use http_body_util::Empty;
        use hyper::body::{Bytes, Incoming};
        use hyper_util::rt::TokioIo;
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
        use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key};

        let limits = WsLimits {
            max_message: 100_000,
            max_frame: 100_000,
        };
        let (server_io, client_io) = duplex(1 << 20);
        let switch = Arc::new(WsSwitch::default());
        let io = WsLimited::new(server_io, limits, switch.clone());
        assert!(io.is_write_vectored());

        let app_switch = switch.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let switch = app_switch.clone();
            async move {
                let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let upgraded = TokioIo::new(on_upgrade.await.unwrap());
                    let config = WebSocketConfig::default()
                        .max_message_size(Some(100_000))
                        .max_frame_size(Some(100_000));
                    let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config))
                        .await;
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(msg)) = rx.next().await {
                        if let Message::Binary(b) = msg {
                            let reply = Message::text(format!("got {}", b.len()));
                            if tx.send(reply).await.is_err() {
                                break;
                            }
                        }
                    }
                    tx.close().await.ok();
                });
                // The request layer's job: the app produced a 101 for a websocket upgrade.
                switch.activate();
                let resp = http::Response::builder()
                    .status(http::StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-accept", derive_accept_key(&key))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );

        let (mut ws, _) = tokio_tungstenite::client_async("ws://localhost/", client_io)
            .await
            .unwrap();
        ws.send(Message::binary(vec![1u8; 90_000])).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        assert_eq!(got.unwrap().unwrap(), Message::text("got 90000"));
        ws.send(Message::binary(vec![1u8; 200_000])).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        match got.unwrap().unwrap() {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Size);
                assert_eq!(frame.reason.as_str(), "message too big");
            }
            other => panic!("expected a 1009 close, got {other:?}"),
        }
        assert!(switch.oversized());
    }
}
