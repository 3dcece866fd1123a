//! A lean Engine.IO-over-websocket client for the load generator's hot paths.
//!
//! `sio-client` gives every connection a driver task, an unbounded event channel and a
//! `serde_json::Value` per event; at a million deliveries per second on 2 shared cores that is
//! the bottleneck. Here one task owns one TCP stream: frames are parsed in place from one read
//! buffer, the Socket.IO `msg` events are recognised by prefix and only their `"t"` field is read,
//! and the caller takes one timestamp per `read()` (not per frame). Only what the benchmarks need
//! is implemented: HTTP/1.1 upgrade (no extensions), over plain TCP or TLS ([`Dest`]),
//! text/binary/control frames, fragmented messages, masking of client frames.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sio_client::TlsConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide monotonic clock the payload timestamps `t` are taken from (µs).
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// An instant on the [`now_us`] clock.
pub fn instant_us(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_micros() as u64
}

/// Why a connection attempt or a connection failed. [`ConnError::kind`] is the short,
/// aggregatable description used in the reports.
#[derive(Debug, Clone)]
pub enum ConnError {
    /// A socket error (connect refused, reset...), with the phase it happened in.
    Io {
        phase: &'static str,
        kind: std::io::ErrorKind,
        text: String,
    },
    /// An HTTP status other than the expected one; `message` is the JSON `message` of the body
    /// (Engine.IO errors: `Session ID unknown`, `Transport unknown`...) or the body itself.
    Http {
        phase: &'static str,
        status: u16,
        message: String,
    },
    /// A deadline passed.
    Timeout { phase: &'static str },
    /// The server closed the connection.
    Closed { phase: &'static str },
    /// The namespace refused the connection (`44`).
    ConnectError { message: String },
    /// Anything unexpected on the wire.
    Protocol { phase: &'static str, text: String },
}

impl ConnError {
    pub fn io(phase: &'static str, e: &std::io::Error) -> Self {
        ConnError::Io {
            phase,
            kind: e.kind(),
            text: e.to_string(),
        }
    }

    /// A short description for counting failures by kind, e.g.
    /// `poll GET: HTTP 400 Session ID unknown` or `ws open: io ConnectionRefused`.
    pub fn kind(&self) -> String {
        match self {
            ConnError::Io { phase, kind, .. } => format!("{phase}: io {kind:?}"),
            ConnError::Http {
                phase,
                status,
                message,
            } => {
                format!("{phase}: HTTP {status} {}", truncate(message, 60))
            }
            ConnError::Timeout { phase } => format!("{phase}: timeout"),
            ConnError::Closed { phase } => format!("{phase}: closed by server"),
            ConnError::ConnectError { message } => {
                format!("namespace connect error {}", truncate(message, 60))
            }
            ConnError::Protocol { phase, text } => {
                format!("{phase}: protocol {}", truncate(text, 60))
            }
        }
    }
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io { phase, text, .. } => write!(f, "{phase}: {text}"),
            other => f.write_str(&other.kind()),
        }
    }
}

impl std::error::Error for ConnError {}

impl ConnError {
    /// A `sio-client` error (its TLS handshake, its HTTP connections) in the given phase.
    pub fn from_client(phase: &'static str, e: sio_client::Error) -> Self {
        match e {
            sio_client::Error::Io(e) => ConnError::io(phase, &e),
            sio_client::Error::Http { status, body } => ConnError::Http {
                phase,
                status,
                message: http_error_message(body.as_bytes()),
            },
            sio_client::Error::Timeout(_) => ConnError::Timeout { phase },
            sio_client::Error::Closed(_) => ConnError::Closed { phase },
            other => ConnError::Protocol {
                phase,
                text: other.to_string(),
            },
        }
    }
}

/// Where the load goes: the server's address and, for an `https://` URL, the TLS settings
/// every connection is opened with.
#[derive(Debug, Clone)]
pub struct Dest {
    pub addr: SocketAddr,
    pub tls: Option<TlsConfig>,
}

impl Dest {
    /// Connects (from `source`, see [`tcp_connect`]) and, with TLS, runs the handshake.
    pub async fn open(
        &self,
        source: Option<IpAddr>,
        phase: &'static str,
    ) -> Result<Stream, ConnError> {
        let tcp = tcp_connect(self.addr, source)
            .await
            .map_err(|e| ConnError::io(phase, &e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let s = tls
                    .handshake(self.addr, tcp)
                    .await
                    .map_err(|e| ConnError::from_client(phase, e))?;
                Ok(Stream::Tls(Box::new(s)))
            }
        }
    }
}

/// A client connection: plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// The `message` field of a JSON error body, or the (trimmed) body itself.
pub fn http_error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(m) = v.get("message").and_then(|m| m.as_str())
    {
        return m.to_owned();
    }
    String::from_utf8_lossy(body).trim().to_owned()
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A parsed frame header: opcode, FIN, where the payload is in the buffer, total frame length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses a frame header at the start of `b`; `None` if more bytes are needed.
pub fn parse_frame_head(b: &[u8]) -> Option<FrameHead> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0F;
    let masked = b[1] & 0x80 != 0;
    let len7 = (b[1] & 0x7F) as usize;
    let (payload_len, mut header_len) = match len7 {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(x) as usize, 10)
        }
        n => (n, 2),
    };
    let mask = if masked {
        if b.len() < header_len + 4 {
            return None;
        }
        let m = [
            b[header_len],
            b[header_len + 1],
            b[header_len + 2],
            b[header_len + 3],
        ];
        header_len += 4;
        Some(m)
    } else {
        None
    };
    Some(FrameHead {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    })
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The `"t"` timestamp of a `msg` event (`42["msg",{"t":123,...}]`, any key order), or `None`
/// if `payload` is not a `msg` event with a numeric `t`.
#[inline]
pub fn msg_timestamp(payload: &[u8]) -> Option<u64> {
    const PREFIX: &[u8] = b"42[\"msg\",";
    let rest = payload.strip_prefix(PREFIX)?;
    // Fast path: the key we wrote first usually comes back first.
    let after = if let Some(r) = rest.strip_prefix(b"{\"t\":") {
        r
    } else {
        let i = memchr::memmem::find(rest, b"\"t\":")?;
        &rest[i + 4..]
    };
    let mut v: u64 = 0;
    let mut digits = 0;
    for &c in after.iter().skip_while(|c| **c == b' ') {
        if c.is_ascii_digit() {
            v = v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            digits += 1;
        } else {
            break;
        }
    }
    (digits > 0).then_some(v)
}

/// One websocket connection, owned by one task.
pub struct WsConn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
    /// A fragmented message being assembled: opcode and data so far.
    frag: Option<(u8, Vec<u8>)>,
    /// Where the last returned message's payload lives.
    last: Last,
}

#[derive(Clone, Copy)]
enum Last {
    None,
    Buf(usize, usize),
    Frag,
}

/// A complete message (text/binary/control) returned by [`WsConn::next_buffered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgRef {
    pub opcode: u8,
}

const READ_CHUNK: usize = 8 * 1024;

impl WsConn {
    /// Opens a websocket to `dest` (over TLS if it says so) with request target `target`
    /// (path and query). Fails with [`ConnError::Http`] if the server answers anything but 101.
    /// `source`: the local address (`None`: the kernel's choice; see [`tcp_connect`]).
    pub async fn open_from(
        dest: &Dest,
        source: Option<IpAddr>,
        target: &str,
        phase: &'static str,
    ) -> Result<WsConn, ConnError> {
        let stream = dest.open(source, phase).await?;
        let addr = dest.addr;
        let key = {
            let mut k = [0u8; 16];
            for b in &mut k {
                *b = fastrand::u8(..);
            }
            sio_client::packet::base64_encode(k)
        };
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut conn = WsConn {
            stream,
            buf: vec![0u8; READ_CHUNK],
            start: 0,
            end: 0,
            wbuf: Vec::with_capacity(256),
            frag: None,
            last: Last::None,
        };
        conn.stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| ConnError::io(phase, &e))?;
        // Read the response head.
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&conn.buf[..conn.end], b"\r\n\r\n") {
                break i + 4;
            }
            if conn.fill().await.map_err(|e| ConnError::io(phase, &e))? == 0 {
                return Err(ConnError::Closed { phase });
            }
            if conn.end > 64 * 1024 {
                return Err(ConnError::Protocol {
                    phase,
                    text: "response head too long".into(),
                });
            }
        };
        let head = String::from_utf8_lossy(&conn.buf[..head_end]).into_owned();
        let status = parse_status(&head).ok_or_else(|| ConnError::Protocol {
            phase,
            text: format!("bad status line {:?}", truncate(&head, 40)),
        })?;
        conn.start = head_end;
        if status != 101 {
            // Read the body (bounded) to tell Engine.IO errors apart.
            let len = content_length(&head).unwrap_or(0).min(64 * 1024);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while conn.end - conn.start < len {
                match tokio::time::timeout_at(deadline, conn.fill()).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => break,
                }
            }
            let body_end = (conn.start + len).min(conn.end);
            let message = http_error_message(&conn.buf[conn.start..body_end]);
            return Err(ConnError::Http {
                phase,
                status,
                message,
            });
        }
        Ok(conn)
    }

    /// Reads more bytes into the buffer; returns how many (0 = EOF).
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < READ_CHUNK / 2 && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK / 2 {
            let new_len = (self.buf.len() * 2).max(self.end + READ_CHUNK);
            self.buf.resize(new_len, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete message already in the buffer (control frames included), or `None`
    /// if more bytes must be read with [`WsConn::fill`]. Read its payload with
    /// [`WsConn::payload`] before calling this again.
    pub fn next_buffered(&mut self) -> Result<Option<MsgRef>, ConnError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            let Some(h) = parse_frame_head(avail) else {
                return Ok(None);
            };
            if h.payload_len > 64 * 1024 * 1024 {
                return Err(ConnError::Protocol {
                    phase: "ws read",
                    text: "frame too large".into(),
                });
            }
            let total = h.header_len + h.payload_len;
            if avail.len() < total {
                // Make room for the whole frame on the next fill.
                if self.buf.len() - self.start < total + READ_CHUNK / 2 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    if self.buf.len() < total + READ_CHUNK {
                        self.buf.resize(total + READ_CHUNK, 0);
                    }
                }
                return Ok(None);
            }
            let p0 = self.start + h.header_len;
            let p1 = p0 + h.payload_len;
            self.start += total;
            if let Some(m) = h.mask {
                for (i, b) in self.buf[p0..p1].iter_mut().enumerate() {
                    *b ^= m[i & 3];
                }
            }
            let control = h.opcode & 0x8 != 0;
            if control {
                self.last = Last::Buf(p0, p1);
                return Ok(Some(MsgRef { opcode: h.opcode }));
            }
            match (h.opcode, h.fin) {
                (OP_CONT, fin) => {
                    let Some((_, data)) = &mut self.frag else {
                        return Err(ConnError::Protocol {
                            phase: "ws read",
                            text: "continuation without a first fragment".into(),
                        });
                    };
                    data.extend_from_slice(&self.buf[p0..p1]);
                    if fin {
                        let op = self.frag.as_ref().map(|f| f.0).unwrap_or(OP_TEXT);
                        self.last = Last::Frag;
                        return Ok(Some(MsgRef { opcode: op }));
                    }
                }
                (op, true) => {
                    self.frag = None;
                    self.last = Last::Buf(p0, p1);
                    return Ok(Some(MsgRef { opcode: op }));
                }
                (op, false) => {
                    self.frag = Some((op, self.buf[p0..p1].to_vec()));
                }
            }
        }
    }

    /// The payload of the message last returned by [`WsConn::next_buffered`].
    pub fn payload(&self) -> &[u8] {
        match self.last {
            Last::None => &[],
            Last::Buf(a, b) => &self.buf[a..b],
            Last::Frag => self.frag.as_ref().map(|f| f.1.as_slice()).unwrap_or(&[]),
        }
    }

    /// Queues a frame (sent by the next [`WsConn::flush`]).
    pub fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let mask = fastrand::u32(..).to_ne_bytes();
        encode_frame(&mut self.wbuf, opcode, payload, mask);
    }

    /// Writes the queued frames.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Queues and writes one text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.queue(OP_TEXT, payload);
        self.flush().await
    }

    /// Reads messages until one satisfies `pick` (which sees text payloads; it returns
    /// `Some` to stop). Engine.IO pings (`2`) and websocket pings are answered on the way.
    pub async fn read_text_until<T>(
        &mut self,
        phase: &'static str,
        mut pick: impl FnMut(&[u8]) -> Option<Result<T, ConnError>>,
    ) -> Result<T, ConnError> {
        loop {
            while let Some(m) = self.next_buffered()? {
                match m.opcode {
                    OP_TEXT => {
                        if self.payload() == b"2" {
                            self.queue(OP_TEXT, b"3");
                            continue;
                        }
                        if let Some(r) = pick(self.payload()) {
                            self.flush().await.map_err(|e| ConnError::io(phase, &e))?;
                            return r;
                        }
                    }
                    OP_PING => {
                        let p = self.payload().to_vec();
                        self.queue(OP_PONG, &p);
                    }
                    OP_CLOSE => return Err(ConnError::Closed { phase }),
                    _ => {}
                }
            }
            self.flush().await.map_err(|e| ConnError::io(phase, &e))?;
            match self.fill().await {
                Ok(0) => return Err(ConnError::Closed { phase }),
                Ok(_) => {}
                Err(e) => return Err(ConnError::io(phase, &e)),
            }
        }
    }

    /// Sends a close frame and shuts the write side down (best effort).
    pub async fn close(mut self) {
        self.queue(OP_CLOSE, &1000u16.to_be_bytes());
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// Connects to `addr`, from the local address `source` if given (`None`: the kernel picks it,
/// 127.0.0.1 towards 127.0.0.1).
///
/// With a source address the socket is bound to `source:0` with `IP_BIND_ADDRESS_NO_PORT`
/// (Linux), so that the port is chosen at `connect()` for the whole 4-tuple, as for an unbound
/// socket: a plain `bind(ip:0)` would reserve a port for every destination and skip the ports
/// still held by TIME_WAIT sockets.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    let sock = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(target_os = "linux")]
    if ip.is_ipv4() {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a c_int option value of the right size.
        // Best effort: without it the bind still works, only with a port reserved per source.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    sock.bind(SocketAddr::new(ip, 0))?;
    sock.connect(addr).await
}

/// Loopback source addresses for client sockets: `127.0.0.1` .. `127.0.0.N`, cycled over the
/// connection index (`N = 0`: no binding, the kernel's choice). Every address has its own
/// ephemeral port range towards the server's `ip:port`, so N addresses hold N times the
/// connections (TIME_WAIT included) that one can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddrs(u8);

impl SourceAddrs {
    /// The most addresses: 127.0.0.1 .. 127.0.0.254.
    pub const MAX: usize = 254;

    /// N source addresses for connections to `dest` (an IPv4 loopback address when N > 0).
    pub fn new(n: usize, dest: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            n <= Self::MAX,
            "--source-addrs {n}: at most {} (127.0.0.1 .. 127.0.0.254)",
            Self::MAX
        );
        anyhow::ensure!(
            n == 0 || matches!(dest.ip(), IpAddr::V4(ip) if ip.is_loopback()),
            "--source-addrs needs an IPv4 loopback --url (127.0.0.x), not {dest}"
        );
        Ok(SourceAddrs(n as u8))
    }

    /// How many addresses (0: none bound).
    pub fn count(self) -> usize {
        usize::from(self.0)
    }

    /// The source address of connection `i`.
    pub fn for_conn(self, i: usize) -> Option<IpAddr> {
        (self.0 > 0).then(|| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % usize::from(self.0)) as u8,
            ))
        })
    }
}

fn parse_status(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

/// Engine.IO websocket target for the test app's path.
pub fn ws_target(path: &str, sid: Option<&str>) -> String {
    sio_client::raw::websocket_url(path, sid)
}

/// Reads the Engine.IO open packet (`0{...}`) and returns the sid.
pub fn parse_open(payload: &[u8]) -> Result<String, ConnError> {
    let text = std::str::from_utf8(payload).map_err(|_| ConnError::Protocol {
        phase: "open packet",
        text: "not UTF-8".into(),
    })?;
    let hs = sio_client::packet::parse_open_packet(text).map_err(|e| ConnError::Protocol {
        phase: "open packet",
        text: e.to_string(),
    })?;
    Ok(hs.sid)
}

/// Classifies a namespace reply: `Some(Ok)` for `40{...}`, `Some(Err)` for `44{...}`.
pub fn connect_reply(p: &[u8]) -> Option<Result<(), ConnError>> {
    if p.starts_with(b"40") {
        Some(Ok(()))
    } else if p.starts_with(b"44") {
        Some(Err(ConnError::ConnectError {
            message: http_error_message(&p[2..]),
        }))
    } else {
        None
    }
}

/// Timings of one websocket connect, µs from the start.
#[derive(Debug, Clone, Copy)]
pub struct WsTimes {
    pub connected_us: u64,
}

/// Websocket-only Engine.IO session + namespace `/` CONNECT; returns once `40{...}` arrived.
/// The time includes the TCP connect and, for a TLS [`Dest`], the TLS handshake.
pub async fn connect_ws(dest: &Dest, path: &str) -> Result<(WsConn, WsTimes), ConnError> {
    connect_ws_from(dest, None, path).await
}

/// [`connect_ws`] from the local address `source` (`None`: the kernel's choice).
pub async fn connect_ws_from(
    dest: &Dest,
    source: Option<IpAddr>,
    path: &str,
) -> Result<(WsConn, WsTimes), ConnError> {
    let t0 = Instant::now();
    let mut ws = WsConn::open_from(dest, source, &ws_target(path, None), "ws open").await?;
    let _sid = ws
        .read_text_until("ws open packet", |p| {
            if p.first() == Some(&b'0') {
                Some(parse_open(p))
            } else {
                None
            }
        })
        .await?;
    ws.send_text(b"40")
        .await
        .map_err(|e| ConnError::io("ws connect", &e))?;
    ws.read_text_until("ws namespace connect", connect_reply)
        .await?;
    let connected_us = t0.elapsed().as_micros() as u64;
    Ok((ws, WsTimes { connected_us }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(
            msg_timestamp(br#"42["msg",{"t":1834567,"s":41,"p":"xx"}]"#),
            Some(1834567)
        );
        assert_eq!(
            msg_timestamp(br#"42["msg",{"s":41,"p":"xx","t":99}]"#),
            Some(99)
        );
        assert_eq!(
            msg_timestamp(br#"42["msg",{"s":41,"t": 7,"p":"xx"}]"#),
            Some(7)
        );
        assert_eq!(msg_timestamp(br#"42["auth",{}]"#), None);
        assert_eq!(msg_timestamp(br#"42["msg",{"s":1}]"#), None);
        assert_eq!(msg_timestamp(br#"42["msg",{"t":"x"}]"#), None);
        assert_eq!(msg_timestamp(b"2"), None);
    }

    #[test]
    fn frames_round_trip() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &payload, [1, 2, 3, 4]);
            for cut in [0, 1, 3, out.len() / 2] {
                if cut < out.len().min(14) {
                    let h = parse_frame_head(&out[..cut]);
                    assert!(h.is_none() || cut >= h.unwrap().header_len);
                }
            }
            let h = parse_frame_head(&out).unwrap();
            assert!(h.fin);
            assert_eq!(h.opcode, OP_TEXT);
            assert_eq!(h.payload_len, len);
            assert_eq!(h.header_len + len, out.len());
            let m = h.mask.unwrap();
            let un: Vec<u8> = out[h.header_len..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ m[i & 3])
                .collect();
            assert_eq!(un, payload);
        }
    }

    #[test]
    fn unmasked_server_frame() {
        let h = parse_frame_head(&[0x81, 0x03, b'a', b'b', b'c']).unwrap();
        assert_eq!(
            h,
            FrameHead {
                fin: true,
                opcode: 1,
                mask: None,
                header_len: 2,
                payload_len: 3
            }
        );
        let h = parse_frame_head(&[0x01, 0x7E, 0x01, 0x00]).unwrap();
        assert!(!h.fin);
        assert_eq!(h.payload_len, 256);
        assert!(parse_frame_head(&[0x81, 0x7F, 0, 0]).is_none());
    }

    #[test]
    fn http_helpers() {
        let head = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nContent-Length: 43\r\n\r\n";
        assert_eq!(parse_status(head), Some(400));
        assert_eq!(content_length(head), Some(43));
        assert_eq!(
            http_error_message(br#"{"code":1,"message":"Session ID unknown"}"#),
            "Session ID unknown"
        );
        assert_eq!(http_error_message(b" nope \n"), "nope");
        let e = ConnError::Http {
            phase: "poll GET",
            status: 400,
            message: "Session ID unknown".into(),
        };
        assert_eq!(e.kind(), "poll GET: HTTP 400 Session ID unknown");
        assert!(connect_reply(br#"40{"sid":"x"}"#).unwrap().is_ok());
        assert!(connect_reply(br#"44{"message":"no"}"#).unwrap().is_err());
        assert!(connect_reply(b"42[]").is_none());
    }

    #[test]
    fn source_addrs_cycle() {
        let dest: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let none = SourceAddrs::new(0, dest).unwrap();
        assert_eq!(none.count(), 0);
        assert_eq!(none.for_conn(5), None);
        let s = SourceAddrs::new(3, dest).unwrap();
        let ips: Vec<String> = (0..7).map(|i| s.for_conn(i).unwrap().to_string()).collect();
        assert_eq!(
            ips,
            [
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.1"
            ]
        );
        assert_eq!(
            SourceAddrs::new(254, dest)
                .unwrap()
                .for_conn(253)
                .unwrap()
                .to_string(),
            "127.0.0.254"
        );
        assert!(SourceAddrs::new(255, dest).is_err());
        assert!(SourceAddrs::new(2, "[::1]:3000".parse().unwrap()).is_err());
        assert!(SourceAddrs::new(0, "[::1]:3000".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn connects_from_the_source_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dest = l.local_addr().unwrap();
        let s = SourceAddrs::new(4, dest).unwrap();
        for i in [0usize, 2, 3] {
            let c = tcp_connect(dest, s.for_conn(i)).await.unwrap();
            let (_srv, peer) = l.accept().await.unwrap();
            assert_eq!(Some(peer.ip()), s.for_conn(i));
            assert_eq!(c.local_addr().unwrap(), peer);
            assert_eq!(c.peer_addr().unwrap(), dest);
        }
        let c = tcp_connect(dest, None).await.unwrap();
        let (_srv, peer) = l.accept().await.unwrap();
        assert_eq!(c.local_addr().unwrap(), peer);
    }
}
