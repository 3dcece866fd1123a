//! The production door, through the real binary: client addresses from PROXY v1/v2 and from a
//! trusted `X-Forwarded-For` (what `--balance ip-hash` and `ClientAddr` use), each connection
//! cap at its edge with a clean 503, websocket messages bounded by `--max-payload`, and a
//! stalled request body dropped with 408.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;
use sio_client::raw::{ConnectOptions, HttpConn, handshake_url};
use sio_client::{Client, ClientConfig, PollingConn, Transport};
use support::{Start, TestCert};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn whoami(client: &Client) -> Value {
    let who = client
        .emit_with_ack("/", "whoami", vec![], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(who[0]["sid"], client.socket_id("/").unwrap());
    who[0].clone()
}

/// A PROXY v2 header for TCP over IPv4 from `src` to 127.0.0.1:3000.
fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&3000u16.to_be_bytes());
    h
}

fn proxy_v1(src: [u8; 4], port: u16) -> Vec<u8> {
    let [a, b, c, d] = src;
    format!("PROXY TCP4 {a}.{b}.{c}.{d} 127.0.0.1 {port} 3000\r\n").into_bytes()
}

/// A connection that does not start with a PROXY header is closed without a byte of answer.
fn closed_silently(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "answered without a PROXY header: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn proxy_protocol_v1_and_v2_give_the_client_address_to_ip_hash() {
    let c = Start::testapp(&["--workers", "2", "--balance", "ip-hash", "--proxy-protocol"]).spawn();
    rt().block_on(async {
        let mut worker_of = HashMap::new();
        for k in 1..=12u8 {
            let ip = [203, 0, 113, k];
            for (n, (preamble, transport)) in [
                (proxy_v1(ip, 40000 + u16::from(k)), Transport::WebSocket),
                (
                    proxy_v2(ip, 41000 + u16::from(k)),
                    Transport::PollingThenUpgrade,
                ),
                (proxy_v2(ip, 42000 + u16::from(k)), Transport::Polling),
            ]
            .into_iter()
            .enumerate()
            {
                let port = 40000 + 1000 * n as u16 + u16::from(k);
                let cfg = ClientConfig::new(c.addr, transport).preamble(preamble);
                let client = Client::connect(cfg).await.unwrap();
                let who = whoami(&client).await;
                if transport == Transport::WebSocket {
                    // One connection: its PROXY header's source, port included.
                    assert_eq!(who["client"], format!("203.0.113.{k}:{port}"), "{who}");
                } else {
                    // Several connections, each with its own header: the handshake's source.
                    let addr = who["client"].as_str().unwrap();
                    assert!(addr.starts_with(&format!("203.0.113.{k}:")), "{who}");
                }
                let w = who["worker"].as_str().unwrap().to_string();
                let first = worker_of.entry(k).or_insert_with(|| w.clone());
                assert_eq!(*first, w, "ip-hash: 203.0.113.{k} moved between workers");
            }
        }
        let used: HashSet<_> = worker_of.values().collect();
        assert_eq!(
            used.len(),
            2,
            "12 client addresses hash over both workers: {worker_of:?}"
        );
    });
    // Required on every connection: plain HTTP, a truncated header, garbage are all closed.
    closed_silently(
        c.addr,
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    closed_silently(c.addr, b"PROXY TCP4 203.0.113.1 127.0.0.1 1 3000\r");
    closed_silently(c.addr, b"\x16\x03\x01\x00\x05hello");
    assert_eq!(c.worker_pids().len(), 2);
}

#[test]
fn proxy_protocol_in_front_of_tls() {
    let cert = TestCert::new();
    let mut args = vec!["--workers", "2", "--balance", "ip-hash", "--proxy-protocol"];
    let cert_args = cert.args();
    args.extend(cert_args.iter().map(String::as_str));
    let c = Start::testapp(&args).spawn();
    rt().block_on(async {
        for transport in [Transport::WebSocket, Transport::Polling] {
            let cfg = ClientConfig::new(c.addr, transport)
                .tls(cert.client_tls())
                .preamble(proxy_v2([198, 51, 100, 23], 50123));
            let client = Client::connect(cfg).await.unwrap();
            let who = whoami(&client).await;
            assert!(
                who["client"]
                    .as_str()
                    .unwrap()
                    .starts_with("198.51.100.23:"),
                "{who}"
            );
        }
    });
}

#[test]
fn trusted_x_forwarded_for_gives_the_client_address_to_ip_hash() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--balance",
        "ip-hash",
        "--trusted-proxies",
        "127.0.0.0/8,10.0.0.0/8",
    ])
    .spawn();
    rt().block_on(async {
        let mut worker_of = HashMap::new();
        for k in 1..=12u8 {
            for transport in [Transport::WebSocket, Transport::Polling] {
                // A client-written entry left of the real client is not believed; trusted
                // proxies right of it are skipped.
                let xff = format!("6.6.6.6, 198.51.100.{k}, 10.1.2.3");
                let cfg = ClientConfig::new(c.addr, transport).header("X-Forwarded-For", xff);
                let client = Client::connect(cfg).await.unwrap();
                let who = whoami(&client).await;
                assert_eq!(who["client"], format!("198.51.100.{k}:0"), "{who}");
                let w = who["worker"].as_str().unwrap().to_string();
                let first = worker_of.entry(k).or_insert_with(|| w.clone());
                assert_eq!(*first, w, "ip-hash: 198.51.100.{k} moved between workers");
            }
        }
        let used: HashSet<_> = worker_of.values().collect();
        assert_eq!(
            used.len(),
            2,
            "12 client addresses hash over both workers: {worker_of:?}"
        );
    });
}

#[test]
fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // 127.0.0.1 is not in the trusted list, so the header is anyone's claim.
    let c = Start::testapp(&["--workers", "2", "--trusted-proxies", "10.0.0.0/8"]).spawn();
    let d = Start::testapp(&["--workers", "2"]).spawn();
    rt().block_on(async {
        for addr in [c.addr, d.addr] {
            for transport in [Transport::WebSocket, Transport::Polling] {
                let cfg =
                    ClientConfig::new(addr, transport).header("X-Forwarded-For", "198.51.100.9");
                let client = Client::connect(cfg).await.unwrap();
                let who = whoami(&client).await;
                assert!(
                    who["client"].as_str().unwrap().starts_with("127.0.0.1:"),
                    "{who}"
                );
            }
        }
    });
}

/// A new session over a cap: 503 with `Retry-After`, on a connection of its own.
async fn refused(addr: std::net::SocketAddr, opts: ConnectOptions, why: &str) {
    let mut conn = HttpConn::connect_with(addr, opts).await.unwrap();
    let res = conn.get(&handshake_url("/socket.io/")).await.unwrap();
    assert_eq!(res.status, 503, "{why}: {}", res.text());
    assert_eq!(res.header("retry-after"), Some("5"), "{why}");
    assert!(!res.text().contains("\"sid\""), "{why}: no session opened");
}

async fn accepted(cfg: ClientConfig) -> Client {
    let client = Client::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("refused under the cap: {e}"));
    whoami(&client).await;
    client
}

#[test]
fn per_ip_cap_refuses_new_sessions_never_existing_ones() {
    let c = Start::testapp(&["--workers", "2", "--max-connections-per-ip", "3"]).spawn();
    rt().block_on(async {
        let ws = |a| ClientConfig::new(a, Transport::WebSocket);
        // A polling session on fresh connections: while its long-poll GET is held it counts 1.
        let polling = accepted(
            ClientConfig::new(c.addr, Transport::Polling).polling_conn(PollingConn::Fresh),
        )
        .await;
        // The polling client's closed connections leave the count as soon as its worker
        // reports them (milliseconds): until then a new one may see 503.
        let a = eventually_connect(ws(c.addr)).await;
        let b = eventually_connect(ws(c.addr)).await;
        refused(c.addr, ConnectOptions::new(), "4th connection of 127.0.0.1").await;
        // The polling session's requests arrive on new connections over the cap: never refused.
        for _ in 0..5 {
            whoami(&polling).await;
        }
        let err = support::refused_connect(ws(c.addr), "websocket over the cap").await;
        assert_eq!(err.http_status(), Some(503), "{err}");
        // A closed connection frees its place: the counts stay true.
        a.disconnect().await.unwrap();
        let again = eventually_connect(ws(c.addr)).await;
        refused(c.addr, ConnectOptions::new(), "full again").await;
        drop((b, again, polling));
    });
}

/// Connects, retrying while the cap's count catches up with a close (the worker reports closes
/// within its load interval).
async fn eventually_connect(cfg: ClientConfig) -> Client {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Client::connect(cfg.clone()).await {
            Ok(c) => return c,
            Err(e) if e.http_status() == Some(503) && tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("a freed place was not given back: {e}"),
        }
    }
}

#[test]
fn total_cap_on_plain_and_tls() {
    let cert = TestCert::new();
    let plain = Start::testapp(&["--workers", "2", "--max-connections", "3"]).spawn();
    let mut args = vec!["--workers", "2", "--max-connections", "3"];
    let cert_args = cert.args();
    args.extend(cert_args.iter().map(String::as_str));
    let tls = Start::testapp(&args).spawn();
    rt().block_on(async {
        for (c, tls_cfg) in [(&plain, None), (&tls, Some(cert.client_tls()))] {
            let cfg = || {
                let cfg = ClientConfig::new(c.addr, Transport::WebSocket);
                match &tls_cfg {
                    Some(t) => cfg.tls(t.clone()),
                    None => cfg,
                }
            };
            let opts = || match &tls_cfg {
                Some(t) => ConnectOptions::new().tls(t.clone()),
                None => ConnectOptions::new(),
            };
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(accepted(cfg()).await);
            }
            refused(c.addr, opts(), "4th connection in total").await;
            held.pop().unwrap().disconnect().await.unwrap();
            held.push(eventually_connect(cfg()).await);
            refused(c.addr, opts(), "full again").await;
            for h in &held {
                whoami(h).await;
            }
        }
    });
}

#[test]
fn per_worker_cap_fills_every_worker_then_refuses() {
    let c = Start::testapp(&["--workers", "2", "--max-connections-per-worker", "2"]).spawn();
    rt().block_on(async {
        let mut workers = Vec::new();
        let mut held = Vec::new();
        for _ in 0..4 {
            let client = accepted(ClientConfig::new(c.addr, Transport::WebSocket)).await;
            workers.push(
                whoami(&client).await["worker"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            held.push(client);
        }
        workers.sort();
        assert_eq!(workers, ["0", "0", "1", "1"], "2 per worker");
        refused(c.addr, ConnectOptions::new(), "every worker full").await;
    });
}

#[test]
fn websocket_messages_are_bounded_by_max_payload() {
    let c = Start::testapp(&["--workers", "2", "--max-payload", "100000"]).spawn();
    rt().block_on(async {
        let bystander = accepted(ClientConfig::new(c.addr, Transport::WebSocket)).await;
        let mut sender = accepted(ClientConfig::new(c.addr, Transport::WebSocket)).await;
        // 90 KB passes, both ways.
        let small = "x".repeat(90_000);
        sender
            .emit("/", "echo", vec![Value::from(small.clone())])
            .await
            .unwrap();
        let back = next_event(&mut sender, "msg").await;
        assert_eq!(back[0].as_str().map(str::len), Some(90_000));
        let worker = support::children_of(c.pid);
        let rss_before: u64 = worker.iter().map(|p| support::rss_bytes(*p)).sum();
        // 200 KB: that websocket is closed with 1009 (message too big).
        let _ = sender
            .emit("/", "echo", vec![Value::from("y".repeat(200_000))])
            .await;
        assert!(
            until(Duration::from_secs(5), || !sender.is_connected()).await,
            "the oversized sender is still connected: {}",
            c.logs()
        );
        let reason = sender.close_reason().unwrap_or_default();
        assert!(reason.contains("1009"), "closed with 1009: {reason}");
        // 32 MB on a new websocket: refused from its frame header, never buffered.
        let big = accepted(ClientConfig::new(c.addr, Transport::WebSocket)).await;
        let _ = big
            .emit("/", "echo", vec![Value::from("z".repeat(32 << 20))])
            .await;
        assert!(until(Duration::from_secs(10), || !big.is_connected()).await);
        let rss_after: u64 = worker.iter().map(|p| support::rss_bytes(*p)).sum();
        assert!(
            rss_after < rss_before + (8 << 20),
            "workers grew by {} KiB for refused messages",
            (rss_after.saturating_sub(rss_before)) >> 10
        );
        // The bystander is untouched.
        assert!(bystander.is_connected());
        whoami(&bystander).await;
    });
}

/// Polls `f` until it holds or `timeout` passes, letting the runtime's other tasks run.
async fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

async fn next_event(client: &mut Client, name: &str) -> Vec<Value> {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match client.next_message(left).await.unwrap() {
            sio_client::Incoming::Event(e) if e.name == name => return e.args,
            _ => {}
        }
    }
}

/// A request body trickling in (one byte every 100 ms of a declared 1000) gets 408 and its
/// connection closed at `--body-timeout-ms` after the head, on Engine.IO and app routes, plain
/// and TLS.
#[test]
fn a_stalled_request_body_gets_408_and_its_connection_closed() {
    let c = Start::testapp(&["--workers", "2", "--body-timeout-ms", "700"]).spawn();
    let sid = support::polling_handshake(c.addr).unwrap();
    for path in [
        format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        "/echo".to_string(),
    ] {
        let mut s = std::net::TcpStream::connect(c.addr).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
        )
        .unwrap();
        let mut reader = s.try_clone().unwrap();
        let read = std::thread::spawn(move || {
            reader
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut buf = Vec::new();
            let _ = reader.read_to_end(&mut buf);
            buf
        });
        let mut sent = 0;
        while !read.is_finished() && sent < 150 {
            if s.write_all(b"4").is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        let buf = read.join().unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text:?}");
        assert!(
            sent < 150,
            "{path}: the connection stayed open while the body trickled"
        );
    }
    // Other sessions go on.
    support::polling_handshake(c.addr).unwrap();
}

/// Workers whose descriptor limit (128, soft and hard) is far below
/// `--max-connections-per-worker`: the primary stops handing them connections they have no
/// descriptor for and answers 503 instead; no connection is reset, no worker dies, and once
/// the clients leave the counts are true again (least-conn splits new clients evenly).
#[test]
fn a_worker_at_its_descriptor_limit_refuses_only_what_it_cannot_take() {
    let testapp = support::example_bin("testapp");
    let mut start = Start::testapp(&["--workers", "2", "--max-connections-per-worker", "1000"]);
    let mut args = vec![
        "-c".to_string(),
        "ulimit -n 128 && exec \"$0\" \"$@\"".to_string(),
        testapp.display().to_string(),
    ];
    args.append(&mut start.args);
    start.bin = "/bin/sh".into();
    start.args = args;
    let c = start.spawn();
    let pids = c.worker_pids();
    assert_eq!(pids.len(), 2);
    rt().block_on(async {
        let (mut held, mut refused, mut failed) = (Vec::new(), 0, Vec::new());
        for _ in 0..15 {
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..20 {
                batch.spawn(Client::connect(ClientConfig::new(
                    c.addr,
                    Transport::WebSocket,
                )));
            }
            while let Some(r) = batch.join_next().await {
                match r.unwrap() {
                    Ok(client) => held.push(client),
                    Err(e) if e.http_status() == Some(503) => refused += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
        }
        eprintln!("descriptor limit: {} served, {refused} refused", held.len());
        assert!(
            failed.is_empty(),
            "{} connects failed without a 503: {failed:?}",
            failed.len()
        );
        assert!(refused > 0, "300 connections fit in 2 × 128 descriptors?");
        assert!(
            held.len() >= 100,
            "only {} connections were served",
            held.len()
        );
        for client in &held {
            whoami(client).await;
        }
        // Every held client is served by its worker; free them all.
        for client in held.drain(..) {
            client.disconnect().await.unwrap();
        }
        let mut fresh = Vec::new();
        let mut on = HashMap::<String, usize>::new();
        for _ in 0..40 {
            let client = eventually_connect(ClientConfig::new(c.addr, Transport::WebSocket)).await;
            *on.entry(
                whoami(&client).await["worker"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default() += 1;
            fresh.push(client);
        }
        assert_eq!(on.len(), 2, "{on:?}");
        assert!(
            on.values().all(|n| *n >= 15),
            "least-conn counts are true again: {on:?}"
        );
    });
    assert_eq!(c.worker_pids(), pids, "no worker restarted");
}
