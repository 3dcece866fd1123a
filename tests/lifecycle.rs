//! The app's view of a worker's life: state, a tower layer over the whole service, the drain
//! signal with guards, `run` returning in a drained worker, and settings the app may not change
//! behind the cluster's back. All through the real binary (the test app) and real clients.

mod support;

use std::time::Duration;

use sio_client::{Client, ClientConfig, Transport};
use support::{Start, eventually, http_once};

const T: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Raw response head of one request, to read a header.
fn head_of(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[test]
fn the_apps_layer_wraps_socketio_and_its_routes() {
    let c = Start::testapp(&["--workers", "2"]).spawn();
    // Socket.IO's polling handshake, an app route, and a 404 all pass through the layer.
    for path in [
        "/socket.io/?EIO=4&transport=polling",
        "/whoami",
        "/nothing-here",
    ] {
        let head = head_of(c.addr, path);
        assert!(head.contains("x-testapp-layer: 1"), "{path}: {head}");
    }
    // State reaches the app's axum routes and socketioxide handlers alike.
    let (status, body) = http_once(c.addr, "GET", "/whoami", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        c.worker_pids()
            .contains(&(me["pid"].as_u64().unwrap() as u32)),
        "{me}"
    );
    rt().block_on(async {
        // The websocket upgrade goes through the layer too, and still upgrades.
        let cl = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
            .await
            .unwrap();
        let who = cl.emit_with_ack("/", "whoami", vec![], T).await.unwrap();
        assert!(
            c.worker_pids()
                .contains(&(who[0]["pid"].as_u64().unwrap() as u32))
        );
    });
}

/// Connects `n` websocket clients, sends the primary `signal`, and checks that each client gets
/// the app's `draining` event from one of `pids` (its own worker) before its session closes.
fn goodbyes_on(c: &support::Cluster, n: usize, signal: i32, pids: &[u32]) {
    rt().block_on(async {
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(
                Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
                    .await
                    .unwrap(),
            );
        }
        c.signal(signal);
        for cl in &mut clients {
            let ev = cl
                .next_event_named("draining", T)
                .await
                .expect("draining event");
            let pid = ev.args[0]["pid"].as_u64().unwrap() as u32;
            assert!(pids.contains(&pid), "{pid} {pids:?}");
        }
    });
}

#[test]
fn a_draining_worker_tells_the_app_waits_for_it_and_run_returns() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--drain-timeout-ms",
        "5000",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .spawn();
    let events = c.events();
    let pids = c.worker_pids();
    // Every client hears from the app of its own, old, worker before its session closes.
    goodbyes_on(&c, 6, libc::SIGHUP, &pids);
    events.wait_for("reload_finished", 1, Duration::from_secs(60));
    // Each drained worker waited for the app's guard, then `run` returned in it (no
    // `process::exit`), and it exited with status 0.
    assert!(
        eventually(T, || c
            .count_log("testapp worker: run returned after the drain")
            == 2),
        "{}",
        c.logs()
    );
    assert_eq!(c.count_log("app_guards=1"), 2, "{}", c.logs());
    assert_eq!(
        c.count_log("still holds shutdown guards"),
        0,
        "{}",
        c.logs()
    );
    let exited_ok = events
        .named("worker_exited")
        .iter()
        .filter(|e| e["status"] == "exit status: 0" && e["expected"] == true)
        .count();
    assert_eq!(exited_ok, 2, "{:#?}", events.all());

    // On shutdown there is no handover grace: the clients hear the app's goodbye only because
    // the worker waits for the app's guard before it closes their sessions.
    let pids = c.worker_pids();
    let mut c = c;
    goodbyes_on(&c, 4, libc::SIGTERM, &pids);
    let status = c.wait_exit(T).expect("the primary stops");
    assert_eq!(status.code(), Some(0), "{}", c.logs());
    assert_eq!(
        c.count_log("testapp worker: run returned after the drain"),
        4,
        "{}",
        c.logs()
    );
}

#[test]
fn a_socketio_customisation_that_contradicts_the_flags_stops_the_worker_with_what_to_do() {
    let logs = Start::testapp(&["--workers", "1", "--ready-timeout-ms", "5000"])
        .env("TESTAPP_SOCKETIO_PATH", "/elsewhere")
        .try_spawn()
        .err()
        .expect("the cluster must not start");
    assert!(
        logs.contains(
            "Cluster::socketio changed settings the cluster sets from its flags: \
             req_path (to \"/elsewhere\"; set it with --path instead)"
        ),
        "{logs}"
    );
    assert!(logs.contains("worker 0 failed during startup"), "{logs}");
    assert!(logs.contains("exit code: Some(Some(1))"), "{logs}");
}
