//! A browser may reuse one keep-alive connection (handed by the primary to worker A) for a
//! request of a session that lives on worker B. Both sessions must keep working through that one
//! connection: the worker forwards the foreign request to its owner.

mod support;

use serde_json::Value;
use sio_client::raw::{HttpConn, RawResponse, handshake_url, polling_url};
use support::Start;

const PATH: &str = "/socket.io/";

fn sid_of(res: &RawResponse) -> String {
    let open = res
        .packets()
        .into_iter()
        .find(|p| p.starts_with('0'))
        .expect("open packet");
    let v: Value = serde_json::from_str(&open[1..]).unwrap();
    v["sid"].as_str().unwrap().to_string()
}

/// POSTs `packets` for `sid` on `conn`, then GETs until the ack `43<id>[...]` arrives.
async fn ack_on(conn: &mut HttpConn, sid: &str, id: u32, event: &str) -> Value {
    let post = conn
        .post(&polling_url(PATH, sid), format!("42{id}[\"{event}\"]"))
        .await
        .unwrap();
    assert_eq!((post.status, post.text()), (200, "ok"), "POST for {sid}");
    for _ in 0..10 {
        let get = conn.get(&polling_url(PATH, sid)).await.unwrap();
        assert_eq!(get.status, 200, "GET for {sid}: {}", get.text());
        let packets = get.packets();
        if packets.iter().any(|p| p == "2") {
            // A ping came with it: answer, or the session dies after the ping timeout.
            let pong = conn.post(&polling_url(PATH, sid), "3").await.unwrap();
            assert_eq!((pong.status, pong.text()), (200, "ok"), "pong for {sid}");
        }
        for p in packets {
            if let Some(rest) = p.strip_prefix(&format!("43{id}")) {
                let args: Value = serde_json::from_str(rest).unwrap();
                return args[0].clone();
            }
        }
    }
    panic!("no ack {id} for {sid}");
}

async fn open_session(conn: &mut HttpConn) -> String {
    let hs = conn.get(&handshake_url(PATH)).await.unwrap();
    assert_eq!(hs.status, 200, "{}", hs.text());
    let sid = sid_of(&hs);
    let post = conn.post(&polling_url(PATH, &sid), "40").await.unwrap();
    assert_eq!(post.text(), "ok");
    sid
}

/// Session A on a connection the primary handed to one worker (returned, to be shared), and
/// session B opened on its own connection until one lands on the other worker; with the
/// `whoami` answer of each.
async fn two_sessions(addr: std::net::SocketAddr) -> (HttpConn, [(String, Value); 2]) {
    let mut shared = HttpConn::connect(addr).await.unwrap();
    let sid_a = open_session(&mut shared).await;
    let who_a = ack_on(&mut shared, &sid_a, 1, "whoami").await;
    for _ in 0..6 {
        let mut own = HttpConn::connect(addr).await.unwrap();
        let sid = open_session(&mut own).await;
        let who = ack_on(&mut own, &sid, 1, "whoami").await;
        if who["worker"] != who_a["worker"] {
            return (shared, [(sid_a, who_a), (sid, who)]);
        }
    }
    panic!("could not open a session on the other worker");
}

#[test]
fn two_sessions_on_two_workers_share_one_keepalive_connection() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--balance",
        "round-robin",
        "--ping-interval-ms",
        "2000",
    ])
    .spawn();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut shared, [(sid_a, who_a), (sid_b, who_b)]) = two_sessions(c.addr).await;

        // Now drive both sessions, alternately, through the shared connection.
        for round in 0..5u32 {
            let a = ack_on(&mut shared, &sid_a, 10 + round, "whoami").await;
            assert_eq!(a["worker"], who_a["worker"], "session A moved: {a}");
            assert_eq!(a["sid"], sid_a.as_str());
            let b = ack_on(&mut shared, &sid_b, 20 + round, "whoami").await;
            assert_eq!(b["worker"], who_b["worker"], "session B moved: {b}");
            assert_eq!(b["sid"], sid_b.as_str());
        }
        assert!(
            !shared.is_closed(),
            "the shared connection stayed open throughout"
        );
    });
}

/// One round of a polling client for `sid` on `conn`: one GET (a long poll, at most one ping
/// interval) and, if it carried a ping, the pong.
async fn poll_and_pong(conn: &mut HttpConn, sid: &str) {
    let get = conn.get(&polling_url(PATH, sid)).await.unwrap();
    assert_eq!(get.status, 200, "GET for {sid}: {}", get.text());
    if get.packets().iter().any(|p| p == "2") {
        let post = conn.post(&polling_url(PATH, sid), "3").await.unwrap();
        assert_eq!((post.status, post.text()), (200, "ok"), "pong for {sid}");
    }
}

/// A session whose every request arrives through another worker's connection must stay
/// routable: the owner counts forwarded requests as activity, so its idle sweep (ping interval
/// + ping timeout + 5 s, here 9 s) never mistakes it for an upgraded or dead session.
#[test]
fn a_session_reached_only_through_another_workers_connection_stays_alive() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--balance",
        "round-robin",
        "--ping-interval-ms",
        "1000",
        "--ping-timeout-ms",
        "3000",
    ])
    .spawn();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut shared, [(sid_a, who_a), (sid_b, who_b)]) = two_sessions(c.addr).await;

        // From now on session B is reached only through A's connection, for longer than the
        // owner's idle sweep window.
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(12);
        while tokio::time::Instant::now() < until {
            poll_and_pong(&mut shared, &sid_b).await;
            poll_and_pong(&mut shared, &sid_a).await;
        }
        let b = ack_on(&mut shared, &sid_b, 2, "whoami").await;
        assert_eq!(b["worker"], who_b["worker"], "session B moved: {b}");
        assert_eq!(b["sid"], sid_b.as_str());
        let a = ack_on(&mut shared, &sid_a, 2, "whoami").await;
        assert_eq!(a["worker"], who_a["worker"], "session A moved: {a}");
    });
}

/// Opens 8 sessions, one after the other, over the one connection `conn`, with
/// `--balance round-robin` on 2 workers: they split 4/4, every later request of each (on the
/// same connection, and on a fresh one from `reconnect`) reaches its own session, and the
/// connection is never closed to dodge the balancing.
async fn eight_sessions_split_over_one_connection<F, Fut>(mut conn: HttpConn, reconnect: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = HttpConn>,
{
    let mut sessions = Vec::new();
    for i in 0..8u32 {
        let sid = open_session(&mut conn).await;
        let who = ack_on(&mut conn, &sid, 1, "whoami").await;
        assert_eq!(who["sid"], sid.as_str(), "session {i}");
        sessions.push((sid, who["worker"].as_str().unwrap().to_string()));
    }
    let on = |w: &str| sessions.iter().filter(|(_, x)| x == w).count();
    assert_eq!(
        (on("0"), on("1")),
        (4, 4),
        "8 new sessions over one connection split 4/4: {sessions:?}"
    );
    for (round, (sid, worker)) in sessions.iter().enumerate() {
        let who = ack_on(&mut conn, sid, 10 + round as u32, "whoami").await;
        assert_eq!(who["worker"], worker.as_str(), "{sid} moved: {who}");
        assert_eq!(who["sid"], sid.as_str());
    }
    let mut fresh = reconnect().await;
    for (round, (sid, worker)) in sessions.iter().enumerate() {
        let who = ack_on(&mut fresh, sid, 30 + round as u32, "whoami").await;
        assert_eq!(
            who["worker"],
            worker.as_str(),
            "{sid} moved on a new connection: {who}"
        );
    }
    assert!(!conn.is_closed(), "the kept-alive connection stayed open");
}

fn round_robin(extra: &[String]) -> support::Cluster {
    let mut args = vec!["--workers", "2", "--balance", "round-robin"];
    args.extend(extra.iter().map(String::as_str));
    Start::testapp(&args).spawn()
}

#[test]
fn new_sessions_on_one_keepalive_connection_are_balanced() {
    let c = round_robin(&[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = HttpConn::connect(c.addr).await.unwrap();
        eight_sessions_split_over_one_connection(conn, || async {
            HttpConn::connect(c.addr).await.unwrap()
        })
        .await;
    });
}

#[test]
fn new_sessions_on_one_tls_keepalive_connection_are_balanced() {
    let cert = support::TestCert::new();
    let c = round_robin(&cert.args());
    let tls = cert.client_tls();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = HttpConn::connect_tls(c.addr, &tls).await.unwrap();
        assert!(conn.is_tls());
        eight_sessions_split_over_one_connection(conn, || async {
            HttpConn::connect_tls(c.addr, &tls).await.unwrap()
        })
        .await;
    });
}
