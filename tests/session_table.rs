//! The primary's session table holds only sessions that may still send a request on a new
//! connection: live polling sessions. Closed sessions leave it at once (within the sweep
//! interval), upgraded ones after ping interval + ping timeout, and a dead worker's are purged.

mod support;

use std::time::Duration;

use sio_client::{Client, ClientConfig, PollingConn, Transport};
use support::{Start, eventually};

/// Every `sessions routed: N` in the primary's status lines, oldest first.
fn routed_history(c: &support::Cluster) -> Vec<usize> {
    c.logs()
        .lines()
        .filter_map(|l| l.split("sessions routed: ").nth(1))
        .filter_map(|rest| rest.split(';').next()?.trim().parse().ok())
        .collect()
}

/// Latest `sessions routed: N` in the primary's status lines.
fn routed(c: &support::Cluster) -> Option<usize> {
    routed_history(c).last().copied()
}

#[test]
fn table_follows_live_polling_sessions() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--status-interval-ms",
        "200",
        "--ping-interval-ms",
        "1000",
        "--ping-timeout-ms",
        "1000",
    ])
    .spawn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut polling = Vec::new();
        for _ in 0..40 {
            let cfg =
                ClientConfig::new(c.addr, Transport::Polling).polling_conn(PollingConn::Fresh);
            polling.push(Client::connect(cfg).await.unwrap());
        }
        // Status lines printed from here on count every session connected so far.
        let seen_before = routed_history(&c).len();
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let cfg = ClientConfig::new(c.addr, Transport::PollingThenUpgrade);
            connecting.spawn(Client::connect(cfg));
        }
        let mut upgraded = Vec::new();
        while let Some(client) = connecting.join_next().await {
            upgraded.push(client.unwrap().unwrap());
        }
        // All 60 were registered at their handshake. An upgraded session is unregistered only
        // once it has sent no polling request for ping interval + ping timeout + 5 s (7 s
        // here), and the 20 connected together, so some status line (every 200 ms) shows all
        // 60 at once: the highest count since they started connecting is exactly 60.
        let peak = || routed_history(&c)[seen_before..].iter().copied().max();
        assert!(
            eventually(Duration::from_secs(5), || peak() == Some(60)),
            "peak: {:?}, status: {:?}",
            peak(),
            routed_history(&c)
        );
        // Upgraded sessions stop needing routing after ping interval + ping timeout (+5 s);
        // the polling ones stay, still working.
        assert!(
            eventually(Duration::from_secs(15), || routed(&c) == Some(40)),
            "status: {:?}",
            routed(&c)
        );
        for p in &polling {
            let who = p
                .emit_with_ack("/", "whoami", vec![], Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(who[0]["sid"], p.socket_id("/").unwrap());
        }
        for u in &upgraded {
            assert!(u.is_connected());
        }
        // Closing the polling sessions empties the table within a few sweeps.
        for p in polling {
            p.disconnect().await.unwrap();
        }
        assert!(
            eventually(Duration::from_secs(8), || routed(&c) == Some(0)),
            "status: {:?}",
            routed(&c)
        );
    });
}

/// A closed session leaves the table within a second of its close: polling (close packet),
/// upgraded (websocket closed) and a client that just goes away (its GET connection closed,
/// then the ping timeout).
#[test]
fn a_closed_session_is_forgotten_within_a_second() {
    let c = Start::testapp(&["--workers", "2", "--status-interval-ms", "100"]).spawn();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for transport in [Transport::Polling, Transport::PollingThenUpgrade] {
            let client = Client::connect(ClientConfig::new(c.addr, transport))
                .await
                .unwrap();
            wait_routed(&c, 1, Duration::from_secs(5)).await;
            client.disconnect().await.unwrap();
            // 1 s, plus one status interval for the line that shows it, plus scheduling slack.
            wait_routed(&c, 0, Duration::from_millis(1300)).await;
        }
    });
}

/// Waits (without blocking the runtime) until the latest status line says `n` sessions routed.
async fn wait_routed(c: &support::Cluster, n: usize, timeout: Duration) {
    let end = tokio::time::Instant::now() + timeout;
    while routed(c) != Some(n) {
        assert!(
            tokio::time::Instant::now() < end,
            "sessions routed: {:?}, want {n} within {timeout:?}",
            routed(c)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 50,000 sessions opened and closed (over kept-alive connections, as a proxy would send them):
/// the table returns to 0, and the cluster still routes.
#[test]
fn the_table_returns_to_zero_after_50000_sessions() {
    use sio_client::raw::{HttpConn, handshake_url, polling_url};
    let c = Start::testapp(&["--workers", "2", "--status-interval-ms", "200"]).spawn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let addr = c.addr;
            tasks.spawn(async move {
                let mut conn = HttpConn::connect(addr).await.unwrap();
                for _ in 0..50_000 / 16 {
                    let hs = conn.get(&handshake_url("/socket.io/")).await.unwrap();
                    assert_eq!(hs.status, 200, "{}", hs.text());
                    let body = hs.text();
                    let at = body.find("\"sid\":\"").unwrap() + 7;
                    let sid = body[at..at + 16].to_string();
                    let close = conn
                        .post(&polling_url("/socket.io/", &sid), "1")
                        .await
                        .unwrap();
                    assert_eq!(close.status, 200, "{}", close.text());
                }
                50_000 / 16
            });
        }
        let mut done = 0;
        while let Some(n) = tasks.join_next().await {
            done += n.unwrap();
        }
        assert_eq!(done, 50_000);
        eprintln!("{done} sessions in {:?}", started.elapsed());
        wait_routed(&c, 0, Duration::from_secs(5)).await;
        let peak = routed_history(&c).into_iter().max().unwrap_or(0);
        assert!(
            peak > 0,
            "the status lines saw the sessions: {:?}",
            routed_history(&c)
        );
        // Still routing.
        let client = Client::connect(ClientConfig::new(c.addr, Transport::Polling))
            .await
            .unwrap();
        wait_routed(&c, 1, Duration::from_secs(5)).await;
        drop(client);
    });
}
