//! Bad input to the primary: garbage, slow or endless heads, oversized heads, clients that
//! vanish mid-head, and a crowd of idle connections. Each must be closed (or answered 4xx)
//! within the configured limits while normal clients keep connecting, and the primary stays up.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Start, http_once, polling_handshake};

const HEAD_TIMEOUT_MS: u64 = 1500;

fn cluster() -> support::Cluster {
    Start::testapp(&[
        "--workers",
        "2",
        "--head-timeout-ms",
        &HEAD_TIMEOUT_MS.to_string(),
        "--max-head-bytes",
        "4096",
    ])
    .spawn()
}

/// Reads until EOF or error; returns what arrived and how long it took.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    s.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!(
                    "connection still open after {limit:?}; got {:?}",
                    String::from_utf8_lossy(&buf)
                )
            }
            Err(_) => break, // reset: closed
        }
    }
    (
        String::from_utf8_lossy(&buf).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn garbage_gets_400_and_is_closed() {
    let c = cluster();
    let mut s = TcpStream::connect(c.addr).unwrap();
    let garbage: Vec<u8> = (0..600u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    s.write_all(&garbage).unwrap();
    s.write_all(b"\r\n\r\n").unwrap();
    let (resp, took) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
        "{resp:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Text that is not HTTP either.
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.write_all(b"HELLO THERE\r\n\r\n").unwrap();
    let (resp, _) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    assert!(polling_handshake(c.addr).is_ok());
}

/// Time allowed past the head timeout for the primary to notice and close (a loaded 2-core
/// machine runs four test suites at once).
const CLOSE_MARGIN: Duration = Duration::from_millis(2500);

/// A polling handshake on a new connection that must finish within `limit`.
fn prompt_handshake(addr: std::net::SocketAddr, limit: Duration, what: &str) {
    let started = Instant::now();
    let res = polling_handshake(addr);
    let took = started.elapsed();
    assert!(res.is_ok(), "{what}: handshake failed: {res:?}");
    assert!(
        took < limit,
        "{what}: handshake took {took:?} (limit {limit:?})"
    );
}

#[test]
fn endless_and_dripping_heads_time_out_with_408() {
    let mut c = cluster();
    let mut silent = TcpStream::connect(c.addr).unwrap();
    let silent_started = Instant::now();
    silent
        .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut drip = TcpStream::connect(c.addr).unwrap();
    let drip_started = Instant::now();
    drip.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n")
        .unwrap();
    let mut drip_writer = drip.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        // One byte every 100 ms, never a whole head, for far longer than the head timeout:
        // the primary must not restart its clock on each byte. Stops once the primary closed.
        let until = Instant::now() + Duration::from_millis(HEAD_TIMEOUT_MS) * 6;
        while Instant::now() < until {
            if drip_writer.write_all(b"X").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // While both wait for their head, a normal client is served at once.
    prompt_handshake(
        c.addr,
        Duration::from_secs(2),
        "while two heads are pending",
    );

    let limit = Duration::from_millis(HEAD_TIMEOUT_MS) + CLOSE_MARGIN;
    let (resp, _) = read_until_closed(&mut silent, Duration::from_secs(8));
    let took = silent_started.elapsed();
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(
        took <= limit,
        "silent head closed after {took:?}, limit {limit:?}"
    );
    let (resp, _) = read_until_closed(&mut drip, Duration::from_secs(8));
    let took = drip_started.elapsed();
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
        "{resp:?}"
    );
    assert!(
        took <= limit,
        "dripping head closed after {took:?}, limit {limit:?}: drip-feeding extended the timeout"
    );
    dripper.join().unwrap();
    assert!(c.is_running(), "primary must stay up");
    prompt_handshake(c.addr, Duration::from_secs(2), "after the timeouts");
}

#[test]
fn oversized_head_gets_431() {
    let mut c = cluster();
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n")
        .unwrap();
    // Most of a big head, still under the limit: it waits for the rest.
    let big = format!("X-Big: {}", "a".repeat(3000));
    s.write_all(big.as_bytes()).unwrap();
    prompt_handshake(
        c.addr,
        Duration::from_secs(2),
        "while a big head is pending",
    );
    // Then past the limit: answered at once, without waiting for the timeout.
    let started = Instant::now();
    let _ = s.write_all("a".repeat(5000).as_bytes());
    let (resp, _) = read_until_closed(&mut s, Duration::from_secs(5));
    let took = started.elapsed();
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert!(
        took < Duration::from_millis(HEAD_TIMEOUT_MS),
        "{took:?}: must not wait for the timeout"
    );
    assert!(c.is_running(), "primary must stay up");
    prompt_handshake(c.addr, Duration::from_secs(2), "after the 431");
}

#[test]
fn client_closing_mid_head_is_dropped_at_once() {
    let c = cluster();
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.write_all(b"GET /socket.io/?EIO=4&trans").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (resp, took) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(resp.is_empty(), "{resp:?}");
    assert!(
        took < Duration::from_millis(HEAD_TIMEOUT_MS),
        "{took:?}: half-close must be noticed before the timeout"
    );
    // And a client that vanishes entirely (close with unread data: reset).
    for _ in 0..20 {
        let mut s = TcpStream::connect(c.addr).unwrap();
        s.write_all(b"GET /socket.io/?EIO").unwrap();
        drop(s);
    }
    assert!(polling_handshake(c.addr).is_ok());
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn idle_crowd_does_not_block_normal_clients() {
    const IDLE: usize = 500;
    let mut c = cluster();
    let base = open_fds(c.pid);
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(c.addr).unwrap())
        .collect();
    // The listener's TCP_DEFER_ACCEPT keeps connections that sent nothing in the kernel for a
    // second or more; only then does the primary accept them and wait for their heads. Time
    // the normal client once they all are the primary's (one descriptor each), not before.
    let all_pending =
        support::eventually(Duration::from_secs(15), || open_fds(c.pid) >= base + IDLE);
    let pending_at = Instant::now();
    assert!(
        all_pending,
        "the primary holds {} descriptors, expected {base} + {IDLE} idle connections",
        open_fds(c.pid)
    );
    // A normal client meanwhile: handshake and a message round trip on new connections.
    let started = Instant::now();
    let sid = polling_handshake(c.addr).expect("handshake while 500 connections idle");
    let (status, body) = http_once(
        c.addr,
        "POST",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        "40",
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "normal client took {:?}",
        started.elapsed()
    );

    // Every idle connection is closed by the head timeout (408 or plain close), counted from
    // the moment all were accepted.
    let deadline = pending_at + Duration::from_millis(HEAD_TIMEOUT_MS) + CLOSE_MARGIN;
    let mut answered_408 = 0;
    for (i, mut s) in idle.into_iter().enumerate() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let (resp, _) = read_until_closed(&mut s, left);
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
            "idle connection {i}: {resp:?}"
        );
        if resp.starts_with("HTTP/1.1 408") {
            answered_408 += 1;
        }
    }
    assert!(
        answered_408 > 0,
        "idle connections should be told why they are closed"
    );
    assert!(c.is_running(), "primary must stay up");
    assert!(polling_handshake(c.addr).is_ok());
}

/// Engine.IO's answer to a request for a session it does not know (engineioxide 0.17
/// `errors.rs`); the primary's own 400 for a malformed request has an empty body.
const SESSION_UNKNOWN: &str = r#"{"code":"1","message":"Session ID unknown"}"#;

#[test]
fn unknown_and_malformed_sids_get_the_engine_error() {
    let c = cluster();
    for sid in ["AAAAAAAAAAAAAAAA", "short", "%00%01"] {
        let (status, body) = http_once(
            c.addr,
            "GET",
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            "",
        )
        .unwrap();
        assert_eq!(status, 400, "sid {sid}: {body}");
        assert_eq!(body, SESSION_UNKNOWN, "sid {sid}: answered by a worker");
    }
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.write_all(
        b"GET /socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    // Keep-alive: read exactly one response (its content-length says where it ends).
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 512];
    let response = loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                break text;
            }
        }
    };
    let (status, body) = support::parse_response(response.as_bytes()).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (400, SESSION_UNKNOWN),
        "{response:?}"
    );
}

#[test]
fn overload_503_reaches_the_client() {
    // One connection may wait for its head; the next one waiting is refused with 503.
    let mut c = Start::testapp(&[
        "--workers",
        "1",
        "--head-timeout-ms",
        "5000",
        "--max-head-bytes",
        "8192",
        "--max-pending-heads",
        "1",
    ])
    .spawn();
    let mut holder = TcpStream::connect(c.addr).unwrap();
    holder
        .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    for round in 0..3 {
        // An incomplete head with more bytes than the primary's first peek: still unread
        // when the primary answers 503. Closing over unread bytes would send a reset that
        // can wipe the 503 out of the client's receive queue.
        let mut s = TcpStream::connect(c.addr).unwrap();
        let head = format!(
            "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
            "p".repeat(6000)
        );
        s.write_all(head.as_bytes()).unwrap();
        // Let the primary answer and close before the client reads, as a slow client would.
        std::thread::sleep(Duration::from_millis(300));
        let mut raw = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let res = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with("HTTP/1.1 503"),
            "round {round}: {res:?}, got {text:?}"
        );
        assert!(
            res.is_ok(),
            "round {round}: closed with {res:?} after {text:?}"
        );
    }
    assert!(c.is_running(), "primary must stay up");
    drop(holder);
}
