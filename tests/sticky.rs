//! Every Socket.IO session lands on one worker and stays there, whatever the transport: 120
//! clients (a third websocket-only, a third polling upgraded to websocket, a third polling-only on
//! a fresh TCP connection per request, so the primary routes every single request by its sid).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use sio_client::{Client, ClientConfig, PollingConn, Transport};
use support::Start;

const CLIENTS: usize = 120;
const WHOAMI_PER_CLIENT: usize = 6;

async fn run_client(
    addr: std::net::SocketAddr,
    i: usize,
) -> Result<(usize, Vec<Value>, String, Transport), String> {
    let (transport, conn) = match i % 3 {
        0 => (Transport::WebSocket, PollingConn::KeepAlive),
        1 => (Transport::PollingThenUpgrade, PollingConn::KeepAlive),
        _ => (Transport::Polling, PollingConn::Fresh),
    };
    let cfg = ClientConfig::new(addr, transport)
        .polling_conn(conn)
        .connect_timeout(Duration::from_secs(20));
    let client = Client::connect(cfg)
        .await
        .map_err(|e| format!("client {i}: connect: {e}"))?;
    let mut answers = Vec::new();
    for _ in 0..WHOAMI_PER_CLIENT {
        let ack = client
            .emit_with_ack("/", "whoami", vec![], Duration::from_secs(10))
            .await
            .map_err(|e| format!("client {i} ({transport:?}): whoami: {e}"))?;
        answers.push(ack.into_iter().next().unwrap_or(Value::Null));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sid = client.socket_id("/").unwrap_or_default().to_string();
    let final_transport = client.transport();
    client.disconnect().await.ok();
    Ok((i, answers, sid, final_transport))
}

fn check(workers: usize) {
    let c = Start::testapp(&[
        "--workers",
        &workers.to_string(),
        "--ping-interval-ms",
        "3000",
    ])
    .spawn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(run_client(c.addr, i)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );

    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for (i, answers, sid, transport) in results.into_iter().map(Result::unwrap) {
        let expected_transport = match i % 3 {
            0 | 1 => Transport::WebSocket,
            _ => Transport::Polling,
        };
        assert_eq!(transport, expected_transport, "client {i}");
        let who: HashSet<String> = answers
            .iter()
            .map(|a| a["worker"].as_str().unwrap_or("?").to_string())
            .collect();
        assert_eq!(
            who.len(),
            1,
            "client {i} ({transport:?}) was answered by several workers: {answers:?}"
        );
        assert!(
            answers.iter().all(|a| a["sid"] == sid.as_str()),
            "client {i}: {answers:?} vs {sid}"
        );
        let pids: HashSet<_> = answers.iter().map(|a| a["pid"].as_u64()).collect();
        assert_eq!(pids.len(), 1, "client {i}: {answers:?}");
        *per_worker
            .entry(who.into_iter().next().unwrap())
            .or_default() += 1;
    }
    let expected: HashSet<String> = (0..workers).map(|w| w.to_string()).collect();
    let got: HashSet<String> = per_worker.keys().cloned().collect();
    assert_eq!(
        got, expected,
        "every worker receives sessions: {per_worker:?}"
    );
    // least-conn spreads evenly enough that no worker starves.
    let min = *per_worker.values().min().unwrap();
    assert!(min >= CLIENTS / workers / 4, "{per_worker:?}");
}

#[test]
fn sessions_stick_with_two_workers() {
    check(2);
}

#[test]
fn sessions_stick_with_four_workers() {
    check(4);
}

#[test]
fn sticky_cookie_routes_new_sessions_to_the_named_worker() {
    let c = Start::testapp(&[
        "--workers",
        "3",
        "--balance",
        "round-robin",
        "--sticky-cookie",
        "sio_w",
    ])
    .spawn();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Workers set the cookie on Engine.IO handshakes.
        let mut conn = sio_client::raw::HttpConn::connect(c.addr).await.unwrap();
        let hs = conn
            .get(&sio_client::raw::handshake_url("/socket.io/"))
            .await
            .unwrap();
        let cookie = hs
            .header("set-cookie")
            .expect("Set-Cookie on the handshake")
            .to_string();
        assert!(
            cookie.starts_with("sio_w=w") && cookie.contains("Path=/"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_string();
        let slot = pair.trim_start_matches("sio_w=w").to_string();

        // New sessions carrying it land on that worker, whatever round-robin would pick.
        for _ in 0..6 {
            let cfg = ClientConfig::new(c.addr, Transport::WebSocket).header("Cookie", &pair);
            let cl = Client::connect(cfg).await.unwrap();
            let who = cl
                .emit_with_ack("/", "whoami", vec![], Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(who[0]["worker"], slot.as_str());
        }
        // A cookie naming no live worker is ignored: balanced as usual.
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let cfg = ClientConfig::new(c.addr, Transport::WebSocket).header("Cookie", "sio_w=w42");
            let cl = Client::connect(cfg).await.unwrap();
            let who = cl
                .emit_with_ack("/", "whoami", vec![], Duration::from_secs(5))
                .await
                .unwrap();
            seen.insert(who[0]["worker"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    });
}

#[test]
fn ip_hash_keeps_one_address_on_one_worker() {
    let c = Start::testapp(&["--workers", "3", "--balance", "ip-hash"]).spawn();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut seen = HashSet::new();
        for i in 0..12 {
            let transport = if i % 2 == 0 {
                Transport::WebSocket
            } else {
                Transport::Polling
            };
            let cl = Client::connect(ClientConfig::new(c.addr, transport))
                .await
                .unwrap();
            let who = cl
                .emit_with_ack("/", "whoami", vec![], Duration::from_secs(5))
                .await
                .unwrap();
            seen.insert(who[0]["worker"].as_str().unwrap().to_string());
        }
        assert_eq!(
            seen.len(),
            1,
            "every connection from 127.0.0.1 goes to one worker: {seen:?}"
        );
    });
}
