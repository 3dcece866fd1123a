//! The app's own axum routes are served by the workers next to Socket.IO, with the client's
//! address; and the chat demo that README starts first works through the cluster.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use sio_client::{Client, ClientConfig, Transport};
use support::{Start, example_bin, http_once};

#[test]
fn axum_routes_are_served_by_the_workers_with_the_client_address() {
    let c = Start::testapp(&["--workers", "2", "--balance", "round-robin"]).spawn();
    let mut workers = HashSet::new();
    for _ in 0..6 {
        let (status, body) = http_once(c.addr, "GET", "/whoami", "").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{v}"
        );
        workers.insert(v["worker"].as_str().unwrap().to_string());
    }
    assert_eq!(workers.len(), 2, "{workers:?}");
    let (status, _) = http_once(c.addr, "GET", "/no-such-route", "").unwrap();
    assert_eq!(status, 404);
}

#[test]
fn the_chat_demo_works_across_workers() {
    let mut opts = Start::testapp(&["--workers", "2", "--balance", "round-robin"]);
    opts.bin = example_bin("chat");
    let c = opts.spawn();
    let (status, page) = http_once(c.addr, "GET", "/", "").unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") && page.contains("socket.io"),
        "{}",
        &page[..page.len().min(200)]
    );
    assert!(
        !page.contains("https://"),
        "the page loads nothing from the internet"
    );
    // Its client script and its favicon come from the binary itself.
    let (status, js) = http_once(c.addr, "GET", "/assets/socket.io.min.js", "").unwrap();
    assert_eq!(status, 200);
    assert!(
        js.contains("Socket.IO v4.8.1"),
        "{}",
        &js[..js.len().min(200)]
    );
    assert!(page.contains(r#"src="/assets/socket.io.min.js""#));
    let (status, icon) = http_once(c.addr, "GET", "/favicon.svg", "").unwrap();
    assert_eq!(status, 200);
    assert!(icon.contains("<svg"), "{icon}");
    assert!(page.contains(r#"rel="icon" href="/favicon.svg""#));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = Duration::from_secs(10);
        let mut users = Vec::new();
        let mut workers = HashSet::new();
        // Three users in `lobby` (the default room: none given), one in `other`.
        for (name, room) in [
            ("ada", ""),
            ("bob", "lobby"),
            ("cy", "lobby"),
            ("dee", "other"),
        ] {
            let mut cl = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
                .await
                .unwrap();
            let welcome = cl.next_event_named("welcome", t).await.unwrap();
            workers.insert(welcome.args[0]["worker"].clone());
            assert!(welcome.args[0]["pid"].as_u64().is_some(), "{welcome:?}");
            let ack = cl
                .emit_with_ack("/", "join", vec![json!({"name": name, "room": room})], t)
                .await
                .unwrap();
            assert_eq!(ack[0]["ok"], true, "{ack:?}");
            let expected_room = if room.is_empty() { "lobby" } else { room };
            assert_eq!(ack[0]["room"], expected_room, "{ack:?}");
            users.push(cl);
        }
        assert_eq!(workers.len(), 2, "users on both workers: {workers:?}");
        // Presence is the room's, over the whole cluster: the last list cy got names all three.
        let everyone = json!(["ada", "bob", "cy"]);
        let mut last = None;
        while last.as_ref() != Some(&everyone) {
            let p = users[2].next_event_named("presence", t).await.unwrap();
            assert_eq!(p.args[0]["room"], "lobby");
            last = Some(p.args[0]["users"].clone());
        }
        users[0]
            .emit("/", "chat", vec![json!("hi all")])
            .await
            .unwrap();
        for u in users.iter_mut().take(3) {
            let msg = u.next_event_named("chat", t).await.unwrap();
            assert_eq!(msg.args[0]["text"], "hi all");
            assert_eq!(msg.args[0]["name"], "ada");
        }
        // dee, in another room, gets nothing of it; her own message reaches her room only.
        users[3]
            .emit("/", "chat", vec![json!("anyone?")])
            .await
            .unwrap();
        let msg = users[3].next_event_named("chat", t).await.unwrap();
        assert_eq!(
            msg.args[0]["text"], "anyone?",
            "dee must not see lobby's chat"
        );
    });
}
