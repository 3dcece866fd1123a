//! End-to-end self-check: a real socketioxide server on 127.0.0.1:0, driven by `sio_client`
//! over every transport.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sio_client::raw::{self, HttpConn};
use sio_client::{
    Client, ClientConfig, Error, Incoming, PollingConn, Transport, as_binary, binary,
};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;

const T: Duration = Duration::from_secs(5);

/// Numbers received by the "num" handler, per engine.io sid.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<std::collections::HashMap<String, Vec<i64>>>>);

async fn on_connect(s: SocketRef, TryData(auth): TryData<Value>) {
    s.on(
        "echo",
        async |s: SocketRef, Data::<Value>(v), ack: AckSender| {
            s.emit("echo", &v).ok();
            ack.send(&v).ok();
        },
    );
    s.on("ask-me", async |s: SocketRef| {
        let res = s
            .emit_with_ack::<_, Value>("ask", &"question")
            .unwrap()
            .await;
        let answer = match res {
            Ok(v) => v,
            Err(e) => json!(format!("error: {e}")),
        };
        s.emit("answer", &answer).ok();
    });
    s.on(
        "bin",
        async |s: SocketRef, Data::<(String, Bytes)>((label, data)), ack: AckSender| {
            s.emit("bin-echo", &(label, data.clone())).ok();
            ack.send(&(data,)).ok();
        },
    );
    s.on("burst", async |s: SocketRef, Data::<i64>(n)| {
        for i in 0..n {
            s.emit("seq", &i).ok();
        }
    });
    s.on(
        "num",
        async |s: SocketRef, Data::<i64>(n), State(st): State<Received>| {
            let sid = s.id.to_string();
            st.0.lock().unwrap().entry(sid).or_default().push(n);
        },
    );
    s.on(
        "report",
        async |s: SocketRef, ack: AckSender, State(st): State<Received>| {
            let sid = s.id.to_string();
            let v = st.0.lock().unwrap().get(&sid).cloned().unwrap_or_default();
            ack.send(&v).ok();
        },
    );
    s.on("kick", async |s: SocketRef| {
        s.disconnect().ok();
    });
    s.on("close-server", async |io: SocketIo| {
        io.close().await;
    });
    // Last: the handlers above are in place once the client sees "welcome" (socketioxide
    // sends the CONNECT reply before it runs this async handler).
    let auth = auth.unwrap_or(Value::Null);
    let parts = s.req_parts();
    let cookie = parts
        .headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = parts.uri.query().map(str::to_owned);
    s.emit(
        "welcome",
        &json!({"ns": s.ns(), "auth": auth, "cookie": cookie, "query": query}),
    )
    .ok();
}

#[derive(Debug)]
struct AuthError;
impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bad token")
    }
}

async fn check_token(Data(auth): Data<Value>) -> Result<(), AuthError> {
    if auth.get("token") == Some(&json!("secret")) {
        Ok(())
    } else {
        Err(AuthError)
    }
}

async fn start_server() -> SocketAddr {
    start_server_with(|b| b).await
}

async fn start_server_with(
    f: impl FnOnce(socketioxide::SocketIoBuilder) -> socketioxide::SocketIoBuilder,
) -> SocketAddr {
    let builder = SocketIo::builder()
        .ping_interval(Duration::from_millis(300))
        .ping_timeout(Duration::from_millis(2000))
        .max_buffer_size(10_000)
        .with_state(Received::default());
    let (layer, io) = f(builder).build_layer();
    io.ns("/", on_connect);
    io.ns("/custom", on_connect.with(check_token));
    let app = axum::Router::<()>::new().layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn exercise(transport: Transport, polling_conn: PollingConn) {
    let current_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread;
    let addr = start_server().await;
    let cfg = ClientConfig::new(addr, transport)
        .polling_conn(polling_conn)
        .namespace("/custom", Some(json!({"token": "secret"})))
        .auto_ack(json!("yes"))
        .header("Cookie", "session=abc")
        .query("room", "a b&c");
    let mut c = Client::connect(cfg).await.unwrap();
    let expected = match transport {
        Transport::Polling => Transport::Polling,
        _ => Transport::WebSocket,
    };
    assert_eq!(c.transport(), expected);
    assert_eq!(c.sid().len(), 16);
    assert!(c.socket_id("/").is_some());
    assert!(c.socket_id("custom").is_some());
    assert!(c.is_connected());

    // One welcome per namespace, carrying the auth payload.
    let mut welcomes = Vec::new();
    for _ in 0..2 {
        let ev = c.next_event(T).await.unwrap();
        assert_eq!(ev.name, "welcome");
        assert_eq!(ev.args[0]["ns"], json!(ev.ns));
        assert_eq!(ev.args[0]["cookie"], json!("session=abc"));
        let query = ev.args[0]["query"].as_str().unwrap();
        assert!(query.contains("&room=a%20b%26c"), "{query}");
        welcomes.push((ev.ns.clone(), ev.args[0]["auth"].clone()));
    }
    welcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        welcomes,
        vec![
            ("/".to_string(), json!({})),
            ("/custom".to_string(), json!({"token": "secret"}))
        ]
    );

    // Emit + server event, on both namespaces.
    for ns in ["/", "/custom"] {
        c.emit(ns, "echo", vec![json!({"hello": ns})])
            .await
            .unwrap();
        let ev = c.next_event(T).await.unwrap();
        assert_eq!((ev.ns.as_str(), ev.name.as_str()), (ns, "echo"));
        assert_eq!(ev.args, vec![json!({"hello": ns})]);
        assert_eq!(ev.ack_id, None);

        // Client → server ack.
        let ack = c
            .emit_with_ack(ns, "echo", vec![json!([1, "two"])], T)
            .await
            .unwrap();
        assert_eq!(ack, vec![json!([1, "two"])]);
        let ev = c.next_event(T).await.unwrap();
        assert_eq!(ev.name, "echo");
    }

    // Server → client ack, answered by auto_ack.
    c.emit("/", "ask-me", vec![]).await.unwrap();
    let ask = c.next_event(T).await.unwrap();
    assert_eq!(ask.name, "ask");
    assert_eq!(ask.args, vec![json!("question")]);
    assert!(ask.ack_id.is_some());
    let answer = c.next_event(T).await.unwrap();
    assert_eq!(answer.name, "answer");
    assert_eq!(answer.args, vec![json!("yes")]);

    // Binary round trip (event + binary ack), on a custom namespace.
    let payload: Vec<u8> = (0..=255u8).chain([0, 1, 2]).collect();
    let ack = c
        .emit_with_ack("/custom", "bin", vec![json!("label"), binary(&payload)], T)
        .await
        .unwrap();
    assert_eq!(ack.len(), 1);
    assert_eq!(as_binary(&ack[0]).unwrap(), payload);
    let ev = c.next_event(T).await.unwrap();
    assert_eq!((ev.ns.as_str(), ev.name.as_str()), ("/custom", "bin-echo"));
    assert_eq!(ev.args[0], json!("label"));
    assert_eq!(as_binary(&ev.args[1]).unwrap(), payload);

    // Server → client ordering.
    c.emit("/", "burst", vec![json!(300)]).await.unwrap();
    for i in 0..300 {
        let ev = c.next_event(T).await.unwrap();
        assert_eq!((ev.name.as_str(), &ev.args[0]), ("seq", &json!(i)));
    }

    // Client → server ordering. socketioxide spawns one task per incoming event, so the
    // handlers only run in arrival order on a current-thread runtime.
    if current_thread {
        for i in 0..300 {
            c.emit("/", "num", vec![json!(i)]).await.unwrap();
        }
        let got = c.emit_with_ack("/", "report", vec![], T).await.unwrap();
        assert_eq!(got, vec![json!((0..300).collect::<Vec<i64>>())]);
    }

    // Survive several ping intervals (300 ms) while idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(c.is_connected());
    assert!(c.try_next_event().is_none());
    let ack = c
        .emit_with_ack("/", "echo", vec![json!("still here")], T)
        .await
        .unwrap();
    assert_eq!(ack, vec![json!("still here")]);

    // An emitter used from another task while this one reads.
    let emitter = c.emitter();
    let sender = tokio::spawn(async move {
        for i in 0..20 {
            emitter.emit("/", "echo", vec![json!(i)]).await.unwrap();
        }
        emitter
    });
    assert_eq!(
        c.next_event(T).await.unwrap().args,
        vec![json!("still here")]
    );
    let mut got = Vec::new();
    for _ in 0..20 {
        let ev = c.next_event_named("echo", T).await.unwrap();
        got.push(ev.args[0].as_i64().unwrap());
    }
    if !current_thread {
        got.sort();
    }
    assert_eq!(got, (0..20).collect::<Vec<i64>>());
    let emitter = sender.await.unwrap();

    let started = std::time::Instant::now();
    c.disconnect().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "disconnect took {:?}",
        started.elapsed()
    );
    assert!(!emitter.is_connected());
    assert!(
        emitter
            .emit("/", "echo", vec![])
            .await
            .unwrap_err()
            .is_closed()
    );
}

#[tokio::test]
async fn websocket() {
    exercise(Transport::WebSocket, PollingConn::KeepAlive).await;
}

#[tokio::test]
async fn polling_keepalive() {
    exercise(Transport::Polling, PollingConn::KeepAlive).await;
}

#[tokio::test]
async fn polling_fresh_connections() {
    exercise(Transport::Polling, PollingConn::Fresh).await;
}

#[tokio::test]
async fn polling_then_upgrade() {
    exercise(Transport::PollingThenUpgrade, PollingConn::KeepAlive).await;
}

#[tokio::test]
async fn polling_then_upgrade_fresh() {
    exercise(Transport::PollingThenUpgrade, PollingConn::Fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_multi_thread() {
    exercise(Transport::WebSocket, PollingConn::KeepAlive).await;
}

#[tokio::test]
async fn connect_error_is_reported() {
    let addr = start_server().await;
    for transport in [Transport::WebSocket, Transport::Polling] {
        let cfg = ClientConfig::new(addr, transport)
            .namespaces(vec![("/custom".into(), Some(json!({"token": "wrong"})))]);
        match Client::connect(cfg).await {
            Err(Error::ConnectError { ns, data }) => {
                assert_eq!(ns, "/custom");
                assert_eq!(data, json!({"message": "bad token"}));
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn manual_ack_and_late_namespace() {
    let addr = start_server().await;
    let mut c = Client::connect(ClientConfig::new(addr, Transport::Polling))
        .await
        .unwrap();
    assert_eq!(c.next_event(T).await.unwrap().name, "welcome");
    c.emit("/", "ask-me", vec![]).await.unwrap();
    let ask = c.next_event(T).await.unwrap();
    let id = ask.ack_id.expect("ack requested");
    c.ack("/", id, vec![json!({"answer": 42})]).await.unwrap();
    let answer = c.next_event(T).await.unwrap();
    assert_eq!(answer.args, vec![json!({"answer": 42})]);

    // Namespace connected after the fact, and a refused one.
    let sid = c
        .connect_namespace("/custom", Some(json!({"token": "secret"})), T)
        .await
        .unwrap();
    assert_eq!(c.socket_id("/custom"), Some(sid.as_str()));
    let ev = c.next_event(T).await.unwrap();
    assert_eq!((ev.ns.as_str(), ev.name.as_str()), ("/custom", "welcome"));
    c.disconnect_namespace("/custom").await.unwrap();
    let err = c.connect_namespace("/custom", None, T).await.unwrap_err();
    assert!(matches!(err, Error::ConnectError { .. }), "{err}");

    // Upgrade on demand keeps the session and its namespaces.
    let sid_before = c.sid().to_string();
    c.upgrade().await.unwrap();
    assert_eq!(c.transport(), Transport::WebSocket);
    assert_eq!(c.sid(), sid_before);
    let ack = c
        .emit_with_ack("/", "echo", vec![json!("after upgrade")], T)
        .await
        .unwrap();
    assert_eq!(ack, vec![json!("after upgrade")]);
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn ordering_across_upgrade() {
    let addr = start_server().await;
    let mut c = Client::connect(ClientConfig::new(addr, Transport::Polling))
        .await
        .unwrap();
    assert_eq!(c.next_event(T).await.unwrap().name, "welcome");
    // Server bursts while the client upgrades, client emits while upgrading.
    c.emit("/", "burst", vec![json!(500)]).await.unwrap();
    let emits = async {
        for i in 0..400 {
            c.emit("/", "num", vec![json!(i)]).await.unwrap();
            if i % 20 == 0 {
                tokio::task::yield_now().await;
            }
        }
    };
    let (up, ()) = tokio::join!(c.upgrade(), emits);
    up.unwrap();
    assert_eq!(c.transport(), Transport::WebSocket);
    c.emit("/", "burst", vec![json!(100)]).await.unwrap();
    for i in (0..500).chain(0..100) {
        let ev = c.next_event(T).await.unwrap();
        assert_eq!((ev.name.as_str(), &ev.args[0]), ("seq", &json!(i)));
    }
    let got = c.emit_with_ack("/", "report", vec![], T).await.unwrap();
    assert_eq!(got, vec![json!((0..400).collect::<Vec<i64>>())]);
}

#[tokio::test]
async fn server_disconnect_and_drop_websocket() {
    server_disconnect_and_drop(Transport::WebSocket).await;
}

#[tokio::test]
async fn server_disconnect_and_drop_polling() {
    server_disconnect_and_drop(Transport::Polling).await;
}

async fn server_disconnect_and_drop(transport: Transport) {
    let addr = start_server().await;
    let mut c = Client::connect(ClientConfig::new(addr, transport))
        .await
        .unwrap();
    assert_eq!(c.next_event(T).await.unwrap().name, "welcome");
    c.emit("/", "kick", vec![]).await.unwrap();
    match c.next_event(T).await {
        Err(Error::Disconnected { ns }) => assert_eq!(ns, "/"),
        other => panic!("expected a namespace disconnect, got {other:?}"),
    }
    // The engine.io session stays open without namespaces.
    assert!(c.is_connected());
    let sid = c.connect_namespace("/", None, T).await.unwrap();
    assert_eq!(c.socket_id("/"), Some(sid.as_str()));
    assert_eq!(c.next_event(T).await.unwrap().name, "welcome");
    // Server shutdown: the namespace disconnect (if any) then the close.
    c.emit("/", "close-server", vec![]).await.unwrap();
    loop {
        match c.next_message(T).await {
            Ok(Incoming::Disconnected { ns }) => assert_eq!(ns, "/"),
            Ok(Incoming::Closed { reason }) => {
                println!("close reason: {reason}");
                break;
            }
            other => panic!("expected the close, got {other:?}"),
        }
    }
    assert!(!c.is_connected());
    assert!(c.emit("/", "echo", vec![]).await.unwrap_err().is_closed());
    assert!(c.next_event(T).await.unwrap_err().is_closed());
    drop(c);

    // Dropping a polling client mid-session is fine too.
    let addr = start_server().await;
    let c = Client::connect(ClientConfig::new(addr, Transport::Polling))
        .await
        .unwrap();
    drop(c);
}

/// GETs `url` until a packet starting with `prefix` shows up; returns every packet seen
/// except pings (which it answers).
async fn poll_until(conn: &mut HttpConn, url: &str, prefix: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..20 {
        let res = conn.get(url).await.unwrap();
        assert_eq!(res.status, 200, "{}", res.text());
        for p in res.packets() {
            if p == "2" {
                assert_eq!(conn.post(url, "3").await.unwrap().text(), "ok");
                continue;
            }
            let done = p.starts_with(prefix);
            seen.push(p);
            if done {
                return seen;
            }
        }
    }
    panic!("no {prefix} packet, got {seen:?}");
}

#[tokio::test]
async fn raw_keepalive_drives_two_sessions_on_one_connection() {
    let addr = start_server().await;
    let mut conn = HttpConn::connect(addr).await.unwrap();
    let local = conn.local_addr();

    let mut sids = Vec::new();
    for _ in 0..2 {
        let res = conn.get(&raw::handshake_url("/socket.io/")).await.unwrap();
        assert_eq!(res.status, 200);
        let hs = raw::parse_open_packet(res.text()).unwrap();
        assert_eq!(hs.upgrades, vec!["websocket"]);
        assert_eq!(hs.ping_interval, 300);
        sids.push(hs.sid);
    }
    assert_ne!(sids[0], sids[1]);
    for sid in &sids {
        let url = raw::polling_url("/socket.io/", sid);
        let res = conn.post(&url, "40").await.unwrap();
        assert_eq!((res.status, res.text()), (200, "ok"));
        let packets = poll_until(&mut conn, &url, "42[\"welcome\"").await;
        assert!(
            packets.iter().any(|p| p.starts_with("40{\"sid\":")),
            "{packets:?}"
        );
        let body = raw::encode_payload(&["42[\"echo\",\"raw\"]".to_string()]);
        let res = conn
            .request("POST", &url, &[("content-type", "text/plain")], body)
            .await
            .unwrap();
        assert_eq!(res.text(), "ok");
        let packets = poll_until(&mut conn, &url, "42[\"echo\"").await;
        assert_eq!(packets.last().unwrap(), "42[\"echo\",\"raw\"]");
    }
    assert!(!conn.is_closed());
    assert_eq!(conn.local_addr(), local);

    // Unknown sid: the status and the body are visible.
    let res = conn
        .get(&raw::polling_url("/socket.io/", "AAAAAAAAAAAAAAAA"))
        .await
        .unwrap();
    assert_eq!(res.status, 400);
    assert!(res.text().contains("Session ID unknown"), "{}", res.text());
    let err = res.error_for_status().unwrap_err();
    assert!(err.to_string().contains("Session ID unknown"), "{err}");

    let raw_bytes = raw::send_bytes(
        addr,
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw_bytes);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("0{\"sid\":"), "{text}");
}

#[tokio::test]
async fn http_errors_are_visible() {
    let addr = start_server().await;
    // A bad path is an HTTP error from the handshake.
    let cfg = ClientConfig::new(addr, Transport::Polling).path("/nope/");
    let err = Client::connect(cfg).await.unwrap_err();
    assert_eq!(err.http_status(), Some(404), "{err}");
    let cfg = ClientConfig::new(addr, Transport::WebSocket).path("/nope/");
    let err = Client::connect(cfg).await.unwrap_err();
    assert_eq!(err.http_status(), Some(404), "{err}");
}

#[tokio::test]
async fn many_websocket_clients() {
    let addr = start_server().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            let cfg = ClientConfig::new(addr, Transport::WebSocket);
            let mut c = Client::connect(cfg).await.unwrap();
            c.next_event_named("welcome", T).await.unwrap();
            let ack = c
                .emit_with_ack("/", "echo", vec![json!(i)], T)
                .await
                .unwrap();
            assert_eq!(ack, vec![json!(i)]);
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    assert!(clients.iter().all(Client::is_connected));
}

/// Load self-check: 2,000 websocket clients in one process, each doing acked round trips (the
/// load generator relies on one process holding that many).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_2000_websocket_clients() {
    let addr = start_server().await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..2000 {
        tasks.push(tokio::spawn(async move {
            let cfg = ClientConfig::new(addr, Transport::WebSocket)
                .connect_timeout(Duration::from_secs(30));
            let mut c = Client::connect(cfg).await.unwrap();
            c.next_event_named("welcome", Duration::from_secs(30))
                .await
                .unwrap();
            for round in 0..10 {
                let ack = match c
                    .emit_with_ack("/", "echo", vec![json!(i)], Duration::from_secs(30))
                    .await
                {
                    Ok(a) => a,
                    Err(e) => {
                        let mut events = Vec::new();
                        while let Some(ev) = c.try_next_event() {
                            events.push((ev.name, ev.args));
                        }
                        panic!(
                            "client {i} round {round} sid {}: {e}; connected {} reason {:?} events {events:?}",
                            c.sid(),
                            c.is_connected(),
                            c.close_reason()
                        )
                    }
                };
                assert_eq!(ack, vec![json!(i)]);
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    println!(
        "2000 clients x 10 acked round trips: {:?}",
        started.elapsed()
    );
    // Idle for a few ping intervals: nobody times out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(clients.iter().all(Client::is_connected));
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines().filter(|l| l.starts_with("VmRSS")) {
            println!("{line}");
        }
    }
}

#[tokio::test]
async fn failed_upgrade_keeps_polling() {
    let addr = start_server_with(|b| b.transports([socketioxide::TransportType::Polling])).await;
    let mut c = Client::connect(ClientConfig::new(addr, Transport::Polling))
        .await
        .unwrap();
    assert_eq!(c.next_event(T).await.unwrap().name, "welcome");
    let err = c.upgrade().await.unwrap_err();
    println!("upgrade error: {err}");
    assert_eq!(err.http_status(), Some(400), "{err}");
    assert_eq!(c.transport(), Transport::Polling);
    let ack = c
        .emit_with_ack("/", "echo", vec![json!("still polling")], T)
        .await
        .unwrap();
    assert_eq!(ack, vec![json!("still polling")]);
    // Pings keep being answered over polling.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(c.is_connected());

    // And a websocket-only client is refused with a visible HTTP error.
    let err = Client::connect(ClientConfig::new(addr, Transport::PollingThenUpgrade))
        .await
        .unwrap_err();
    println!("polling-then-upgrade error: {err}");
    let err = Client::connect(ClientConfig::new(addr, Transport::WebSocket))
        .await
        .unwrap_err();
    println!("websocket error: {err}");
    assert!(err.http_status().is_some(), "{err}");
    c.disconnect().await.unwrap();
}
