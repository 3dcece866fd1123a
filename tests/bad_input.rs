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

#[test]
fn endless_and_dripping_heads_time_out_with_408() {
    let c = cluster();
    let mut silent = TcpStream::connect(c.addr).unwrap();
    silent
        .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut drip = TcpStream::connect(c.addr).unwrap();
    drip.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n")
        .unwrap();
    let dripper = std::thread::spawn(move || {
        // One byte every 100 ms: never a whole head.
        for _ in 0..40 {
            if drip.write_all(b"X").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drip
    });
    let (resp, took) = read_until_closed(&mut silent, Duration::from_secs(8));
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    let limit = Duration::from_millis(HEAD_TIMEOUT_MS + 2500);
    assert!(took <= limit, "closed after {took:?}, limit {limit:?}");
    let mut drip = dripper.join().unwrap();
    let (resp, _) = read_until_closed(&mut drip, Duration::from_secs(8));
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
        "{resp:?}"
    );
}

#[test]
fn oversized_head_gets_431() {
    let c = cluster();
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n")
        .unwrap();
    let big = format!("X-Big: {}\r\n", "a".repeat(8000));
    let _ = s.write_all(big.as_bytes());
    let (resp, took) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert!(
        took < Duration::from_millis(HEAD_TIMEOUT_MS),
        "{took:?}: must not wait for the timeout"
    );
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

#[test]
fn idle_crowd_does_not_block_normal_clients() {
    let mut c = cluster();
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(c.addr).unwrap())
        .collect();
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

    // Every idle connection is closed by the head timeout (408 or plain close).
    let deadline = Duration::from_millis(HEAD_TIMEOUT_MS + 4000);
    let mut answered_408 = 0;
    for mut s in idle {
        let (resp, _) = read_until_closed(&mut s, deadline);
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
            "{resp:?}"
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
    }
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.write_all(
        b"GET /socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 512];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"));
}
