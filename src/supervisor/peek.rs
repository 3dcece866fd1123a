//! Reading a connection's first request head without consuming it (`MSG_PEEK`).
//!
//! The bytes stay in the kernel's receive buffer, so the worker that gets the descriptor reads
//! the request itself. Waiting for the rest of a partial head must not spin: a peek does not
//! clear the socket's readiness, so each incomplete peek is reported to tokio as `WouldBlock`,
//! which clears readiness until the kernel signals new bytes (epoll reports every arrival).
//! The whole wait is bounded by a deadline, and a peer that half-closes mid-head is dropped at
//! once.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Instant;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::sid::SessionId;

/// What routing needs from a request head.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The `sid` query parameter of an Engine.IO request, when it is a well-formed id.
    pub sid: Option<SessionId>,
    /// A `sid` parameter was present but is not a valid Engine.IO id.
    pub bad_sid: bool,
    /// The request path is under the Engine.IO path.
    pub engine: bool,
    /// Slot named by the sticky cookie, if configured and present.
    pub cookie_slot: Option<usize>,
    /// Length of the head in bytes.
    pub len: usize,
    /// The client by `X-Forwarded-For`, if the connection's peer is a trusted proxy (computed
    /// only with `--trusted-proxies`; the caller checks the peer).
    pub forwarded_for: Option<std::net::IpAddr>,
    /// The path is the health check's (`--health-path`).
    pub health: bool,
}

/// Why no head could be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeekError {
    /// The peer closed (or half-closed) before sending a whole head.
    #[error("client closed before sending a request head")]
    Closed,
    /// No complete head before the deadline.
    #[error("no complete request head in time")]
    Timeout,
    /// The head is larger than the limit.
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    /// Not HTTP/1.x.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// A socket error.
    #[error("socket error: {0}")]
    Io(String),
}

impl PeekError {
    /// The HTTP response the primary writes before closing, if any.
    pub fn response(&self) -> Option<&'static [u8]> {
        match self {
            PeekError::Closed | PeekError::Io(_) => None,
            PeekError::Timeout => Some(
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            ),
            PeekError::TooLarge(_) => Some(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            ),
            PeekError::Malformed(_) => {
                Some(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
            }
        }
    }
}

/// How to interpret heads.
#[derive(Debug, Clone, Default)]
pub struct HeadRules {
    /// Engine.IO path prefix, with trailing slash (e.g. `/socket.io/`).
    pub engine_prefix: String,
    /// Sticky cookie name, if any.
    pub cookie: Option<String>,
    /// Largest head accepted.
    pub max_head: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted: crate::TrustedProxies,
    /// The health check's path (`--health-path`), if enabled.
    pub health_path: Option<String>,
}

/// Outcome of parsing the bytes peeked so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head.
    Complete(RequestHead),
    /// More bytes are needed.
    Partial,
}

/// Parses a (possibly partial) request head.
pub fn parse_head(buf: &[u8], rules: &HeadRules) -> Result<Parsed, PeekError> {
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= rules.max_head {
                Err(PeekError::TooLarge(rules.max_head))
            } else {
                Ok(Parsed::Partial)
            }
        }
        Ok(httparse::Status::Complete(len)) => {
            if len > rules.max_head {
                return Err(PeekError::TooLarge(rules.max_head));
            }
            let path = req.path.unwrap_or("/");
            let mut head = RequestHead {
                len,
                ..Default::default()
            };
            let (p, query) = path.split_once('?').unwrap_or((path, ""));
            head.health = rules.health_path.as_deref() == Some(p);
            head.engine = p.starts_with(&rules.engine_prefix)
                || p == rules.engine_prefix.trim_end_matches('/');
            if head.engine
                && let Some(v) = query_param(query, "sid")
            {
                head.sid = SessionId::parse(v);
                head.bad_sid = head.sid.is_none();
            }
            if let Some(name) = &rules.cookie {
                head.cookie_slot = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                    .filter_map(|h| std::str::from_utf8(h.value).ok())
                    .find_map(|v| cookie_value(v, name))
                    .and_then(parse_slot_token);
            }
            if !rules.trusted.is_empty() {
                head.forwarded_for = rules.trusted.forwarded_client(
                    req.headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case(crate::door::forwarded::HEADER))
                        .map(|h| h.value),
                );
            }
            Ok(Parsed::Complete(head))
        }
        Err(httparse::Error::TooManyHeaders) => Err(PeekError::TooLarge(rules.max_head)),
        Err(_) => Err(PeekError::Malformed("not an HTTP/1.x request")),
    }
}

/// First value of `key` in a query string (no percent-decoding: sids never need it).
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Sticky cookie values are `w<slot>`.
pub fn slot_token(slot: usize) -> String {
    format!("w{slot}")
}

fn parse_slot_token(v: &str) -> Option<usize> {
    v.strip_prefix('w')?.parse().ok()
}

/// Waits until the first request head is complete (or fails), without consuming any byte
/// (the accept loop does it in steps; the tests in one call).
#[cfg(test)]
pub async fn peek_head(
    stream: &TcpStream,
    rules: &HeadRules,
    deadline: Instant,
) -> Result<RequestHead, PeekError> {
    peek_until(stream, rules.max_head, deadline, |bytes| {
        Ok(match parse_head(bytes, rules)? {
            Parsed::Complete(head) => Some(head),
            Parsed::Partial => None,
        })
    })
    .await
}

/// Peeks until `parse` makes sense of the bytes received so far (`Ok(Some)`) or refuses them,
/// looking at no more than `max` bytes, until `deadline`. `parse` returns `Ok(None)` while it
/// needs more bytes. Nothing is consumed.
pub(crate) async fn peek_until<T>(
    stream: &TcpStream,
    max: usize,
    deadline: Instant,
    mut parse: impl FnMut(&[u8]) -> Result<Option<T>, PeekError>,
) -> Result<T, PeekError> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut buf = vec![0u8; max.clamp(1, 2048)];
    enum Step<T> {
        Done(T),
        Fail(PeekError),
        Grow,
    }
    let fut = async {
        loop {
            let ready = stream
                .ready(Interest::READABLE)
                .await
                .map_err(|e| PeekError::Io(e.to_string()))?;
            let attempt = stream.try_io(Interest::READABLE, || {
                let n = peek(stream, &mut buf)?;
                if n == 0 {
                    return Ok(Step::Fail(PeekError::Closed));
                }
                match parse(&buf[..n]) {
                    Ok(Some(v)) => Ok(Step::Done(v)),
                    Err(e) => Ok(Step::Fail(e)),
                    // Buffer full: grow and peek again right away, up to the limit.
                    Ok(None) if n == buf.len() && n >= max => {
                        Ok(Step::Fail(PeekError::TooLarge(max)))
                    }
                    Ok(None) if n == buf.len() => Ok(Step::Grow),
                    Ok(None) if ready.is_read_closed() => Ok(Step::Fail(PeekError::Closed)),
                    // Incomplete: clear readiness and wait for more bytes.
                    Ok(None) => Err(std::io::ErrorKind::WouldBlock.into()),
                }
            });
            match attempt {
                Ok(Step::Done(v)) => return Ok(v),
                Ok(Step::Fail(e)) => return Err(e),
                Ok(Step::Grow) => {
                    let new_len = (buf.len() * 4).min(max);
                    buf.resize(new_len, 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(PeekError::Io(e.to_string())),
            }
        }
    };
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or(Err(PeekError::Timeout))
}

/// Consumes exactly `len` bytes that a peek showed are already received (a PROXY header),
/// without waiting.
pub(crate) fn consume_fd(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<()> {
    let mut scratch = [0u8; 256];
    let mut left = len;
    while left > 0 {
        let want = left.min(scratch.len());
        // SAFETY: `scratch` is valid for writes of `want` bytes for the whole call, and the
        // descriptor is kept open by the borrow.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                want,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return Err(if n == 0 {
                std::io::ErrorKind::UnexpectedEof.into()
            } else {
                std::io::Error::last_os_error()
            });
        }
        left -= n as usize;
    }
    Ok(())
}

fn peek(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    peek_fd(stream.as_fd(), buf)
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)`: copies what has arrived without consuming it.
pub(crate) fn peek_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    #[cfg(test)]
    tests::PEEKS.with(|n| n.set(n.get() + 1));
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call, and the
    // descriptor is kept open by the borrow.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// `MSG_PEEK` calls made on this thread (a `#[tokio::test]` runs on one thread).
        pub(super) static PEEKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn rules() -> HeadRules {
        HeadRules {
            engine_prefix: "/socket.io/".into(),
            cookie: Some("sio".into()),
            max_head: 1024,
            ..Default::default()
        }
    }

    fn complete(raw: &str) -> RequestHead {
        match parse_head(raw.as_bytes(), &rules()).unwrap() {
            Parsed::Complete(h) => h,
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn reads_sid_from_query_only() {
        let h = complete(
            "GET /socket.io/?EIO=4&transport=polling&sid=EsPJiCvFMpyNdJz2 HTTP/1.1\r\nHost: x\r\nX-Sid: AAAAAAAAAAAAAAAA\r\n\r\n",
        );
        assert_eq!(h.sid.unwrap().as_str(), "EsPJiCvFMpyNdJz2");
        assert!(h.engine);
        let h = complete(
            "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nsid: AAAAAAAAAAAAAAAA\r\n\r\n",
        );
        assert_eq!(h.sid, None);
        assert!(!h.bad_sid);
    }

    #[test]
    fn flags_malformed_sids() {
        let h = complete("GET /socket.io/?EIO=4&sid=short HTTP/1.1\r\n\r\n");
        assert_eq!(h.sid, None);
        assert!(h.bad_sid);
    }

    #[test]
    fn ignores_sid_outside_engine_path() {
        let h = complete("GET /api?sid=EsPJiCvFMpyNdJz2 HTTP/1.1\r\n\r\n");
        assert!(!h.engine);
        assert_eq!(h.sid, None);
    }

    #[test]
    fn reads_sticky_cookie() {
        let h = complete("GET / HTTP/1.1\r\nCookie: a=1; sio=w3; b=2\r\n\r\n");
        assert_eq!(h.cookie_slot, Some(3));
        let h = complete("GET / HTTP/1.1\r\nCookie: sio=garbage\r\n\r\n");
        assert_eq!(h.cookie_slot, None);
    }

    #[test]
    fn partial_then_too_large() {
        let r = rules();
        assert_eq!(
            parse_head(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHo", &r),
            Ok(Parsed::Partial)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000));
        assert_eq!(
            parse_head(big.as_bytes(), &r),
            Err(PeekError::TooLarge(1024))
        );
        let big_complete = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            parse_head(big_complete.as_bytes(), &r),
            Err(PeekError::TooLarge(1024))
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", &rules()),
            Err(PeekError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn waits_for_a_split_head_without_spinning() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /socket.io/?EIO=4&sid=EsPJiCvFMpyNdJz2 HT")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            c.write_all(b"TP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            c
        });
        let (s, _) = listener.accept().await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let before = PEEKS.with(|n| n.get());
        let h = peek_head(&s, &rules(), deadline).await.unwrap();
        let peeks = PEEKS.with(|n| n.get()) - before;
        assert_eq!(h.sid.unwrap().as_str(), "EsPJiCvFMpyNdJz2");
        // One peek per arrival of bytes (plus maybe one spurious wake-up), not one per loop
        // turn: a loop that re-peeks without waiting for new bytes makes thousands of calls in
        // the 200 ms gap.
        assert!(
            peeks <= 5,
            "{peeks} peeks for a head sent in two pieces: the wait spins"
        );
        // Nothing was consumed: the whole head is still readable.
        let mut buf = vec![0u8; 4096];
        s.readable().await.unwrap();
        let n = s.try_read(&mut buf).unwrap();
        assert_eq!(n, h.len);
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn half_close_mid_head_is_detected() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
            c.shutdown().await.unwrap();
            c
        });
        let (s, _) = listener.accept().await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let started = Instant::now();
        assert_eq!(
            peek_head(&s, &rules(), deadline).await,
            Err(PeekError::Closed)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(4));
        drop(client.await.unwrap());
    }
}
