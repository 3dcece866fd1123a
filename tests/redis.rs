//! Redis mode: one flag turns several hosts into one cluster. Each "host" here is a separate
//! cluster (primary + 2 workers) on its own port, all sharing a real redis-server started by the
//! test on a free port.

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sio_client::{Client, ClientConfig, Transport};
use support::{Cluster, RedisServer, Start};

const T: Duration = Duration::from_secs(10);

fn host(url: &str, extra: &[&str]) -> Cluster {
    let mut args = vec![
        "--workers",
        "2",
        "--adapter",
        "redis",
        "--redis-url",
        url,
        "--balance",
        "round-robin",
    ];
    args.extend_from_slice(extra);
    Start::testapp(&args).spawn()
}

async fn client(addr: SocketAddr) -> (Client, String) {
    let cfg = ClientConfig::new(addr, Transport::WebSocket).auto_ack(json!("yes"));
    let c = Client::connect(cfg).await.expect("connect");
    let who = c.emit_with_ack("/", "whoami", vec![], T).await.unwrap();
    let w = who[0]["worker"].as_str().unwrap().to_string();
    (c, w)
}

async fn ack(c: &Client, event: &str, args: Vec<Value>) -> Value {
    c.emit_with_ack("/", event, args, T)
        .await
        .unwrap_or_else(|e| panic!("{event}: {e}"))
        .swap_remove(0)
}

async fn next_msg(c: &mut Client, timeout: Duration) -> Option<Value> {
    c.next_event_named("msg", timeout)
        .await
        .ok()
        .map(|e| e.args[0].clone())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn two_hosts_share_one_redis() {
    let redis = RedisServer::start(&[]);
    let a = host(&redis.url(), &[]);
    let b = host(&redis.url(), &[]);
    rt().block_on(async {
        let mut clients = Vec::new();
        for i in 0..16 {
            let addr = if i % 2 == 0 { a.addr } else { b.addr };
            clients.push(client(addr).await);
        }
        let workers: HashMap<(bool, String), usize> =
            clients
                .iter()
                .enumerate()
                .fold(HashMap::new(), |mut m, (i, (_, w))| {
                    *m.entry((i % 2 == 0, w.clone())).or_default() += 1;
                    m
                });
        assert_eq!(workers.len(), 4, "clients on all 4 workers: {workers:?}");

        // Server count: 2 hosts × 2 workers.
        assert_eq!(ack(&clients[0].0, "server_count", vec![]).await, json!(4));
        assert_eq!(ack(&clients[1].0, "server_count", vec![]).await, json!(4));

        // to_all from host A reaches every client of both hosts.
        let p = json!({"p": "to_all"});
        clients[0]
            .0
            .emit("/", "to_all", vec![p.clone()])
            .await
            .unwrap();
        for (i, (c, _)) in clients.iter_mut().enumerate() {
            assert_eq!(next_msg(c, T).await, Some(p.clone()), "client {i}");
        }

        // Rooms across hosts.
        for i in [1, 2, 5, 6] {
            assert_eq!(
                ack(&clients[i].0, "join", vec![json!("x")]).await,
                json!("ok")
            );
        }
        assert_eq!(
            ack(&clients[3].0, "count_sockets", vec![json!("x")]).await,
            json!(4)
        );
        assert_eq!(
            ack(&clients[3].0, "count_sockets", vec![Value::Null]).await,
            json!(16)
        );
        assert_eq!(ack(&clients[4].0, "rooms", vec![]).await, json!(["x"]));
        let p = json!({"p": "room"});
        clients[3]
            .0
            .emit("/", "to_room", vec![json!("x"), p.clone()])
            .await
            .unwrap();
        for i in [1, 2, 5, 6] {
            assert_eq!(
                next_msg(&mut clients[i].0, T).await,
                Some(p.clone()),
                "member {i}"
            );
        }

        // Acks from all 4 workers, asked from host B.
        let r = ack(&clients[1].0, "ack_all", vec![json!(3000)]).await;
        assert_eq!(r, json!({"acks": 15, "timeouts": 0}));

        // fetch_sockets + remote emit to a socket on the other host.
        let target = clients[2].0.socket_id("/").unwrap().to_string();
        let p = json!({"p": "remote"});
        assert_eq!(
            ack(&clients[1].0, "remote_emit", vec![json!(target), p.clone()]).await,
            json!("ok")
        );
        assert_eq!(next_msg(&mut clients[2].0, T).await, Some(p));
    });
}

#[test]
fn redis_outage_keeps_local_delivery_and_resumes_cross_host() {
    let mut redis = RedisServer::start(&[]);
    let a = host(&redis.url(), &[]);
    let b = host(&redis.url(), &[]);
    rt().block_on(async {
        // A sender and a receiver on the same worker of host A, and a receiver on host B.
        let (sender, sw) = client(a.addr).await;
        let mut local = loop {
            let (c, w) = client(a.addr).await;
            if w == sw {
                break c;
            }
        };
        let (mut remote, _) = client(b.addr).await;
        assert_eq!(ack(&sender, "server_count", vec![]).await, json!(4));

        let started = Instant::now();
        let mut seq = 0u64;
        let mut local_got = Vec::new();
        let mut remote_got = Vec::new();
        let mut stopped_at = None;
        let mut restarted_at = None;
        // ~9 s of traffic at 20 msg/s; Redis is down from 2 s to 5 s.
        while started.elapsed() < Duration::from_secs(9) {
            let t = started.elapsed();
            if stopped_at.is_none() && t > Duration::from_secs(2) {
                redis.stop();
                stopped_at = Some(seq);
            }
            if stopped_at.is_some() && restarted_at.is_none() && t > Duration::from_secs(5) {
                redis.restart();
                restarted_at = Some(seq);
            }
            sender
                .emit("/", "to_all", vec![json!({"s": seq})])
                .await
                .unwrap();
            seq += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            while let Some(ev) = local.try_next_event() {
                if ev.name == "msg" {
                    local_got.push(ev.args[0]["s"].as_u64().unwrap());
                }
            }
            while let Some(ev) = remote.try_next_event() {
                if ev.name == "msg" {
                    remote_got.push(ev.args[0]["s"].as_u64().unwrap());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Some(ev) = local.try_next_event() {
            if ev.name == "msg" {
                local_got.push(ev.args[0]["s"].as_u64().unwrap());
            }
        }
        while let Some(ev) = remote.try_next_event() {
            if ev.name == "msg" {
                remote_got.push(ev.args[0]["s"].as_u64().unwrap());
            }
        }
        let (stopped_at, restarted_at) = (stopped_at.unwrap(), restarted_at.unwrap());

        // Local delivery never stopped: every message reached the client on the same worker.
        assert_eq!(
            local_got,
            (0..seq).collect::<Vec<_>>(),
            "local delivery had gaps"
        );
        // Cross-host delivery worked before, paused during the outage, and resumed after it.
        assert!(
            remote_got.iter().any(|s| *s < stopped_at),
            "nothing crossed hosts before the outage"
        );
        let after: Vec<_> = remote_got
            .iter()
            .filter(|s| **s > restarted_at + 20)
            .collect();
        assert!(
            after.len() as u64 >= (seq - restarted_at - 20) / 2,
            "cross-host delivery did not resume: {} of {} after the restart; got {remote_got:?}",
            after.len(),
            seq - restarted_at
        );
        assert_eq!(ack(&sender, "server_count", vec![]).await, json!(4));
    });
    // The outage and its end are each logged once per worker.
    for c in [&a, &b] {
        assert_eq!(c.count_log("lost the Redis connection"), 2, "{}", c.logs());
        assert!(c.wait_log("Redis connection restored", Duration::from_secs(5)));
        assert_eq!(c.count_log("Redis connection restored"), 2, "{}", c.logs());
    }
}

/// A server that accepts connections and never answers (a wrong service, or a firewall that
/// lets the handshake through and drops the rest), until the returned flag is set.
fn silent_server() -> (u16, Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !done.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        held.len()
    });
    (port, stop, thread)
}

#[test]
fn redis_that_never_answers_fails_at_start_after_the_connect_timeout() {
    let (port, stop, acceptor) = silent_server();
    let url = format!("redis://127.0.0.1:{port}");
    let timeout = Duration::from_millis(1500);
    let margin = Duration::from_secs(4);
    let mut opts = Start::testapp(&[
        "--workers",
        "2",
        "--adapter",
        "redis",
        "--redis-url",
        &url,
        "--redis-connect-timeout-ms",
        "1500",
    ]);
    opts.timeout = Duration::from_secs(30);
    let started = Instant::now();
    let result = opts.try_spawn();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let accepted = acceptor.join().unwrap();
    let err = match result {
        Ok(_) => panic!("the cluster started with a Redis that never answers"),
        Err(e) => e,
    };
    assert!(accepted >= 1, "the cluster never connected to {url}: {err}");
    assert!(err.contains("exit code: Some(Some(1))"), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach Redis at {url} within 1500 ms: timed out"
        )),
        "{err}"
    );
    // It says what to do.
    assert!(err.contains("check --redis-url"), "{err}");
    assert!(err.contains("raise --redis-connect-timeout-ms"), "{err}");
    // It waited for the timeout, not much longer.
    assert!(
        elapsed >= timeout,
        "gave up before the timeout: {elapsed:?}: {err}"
    );
    assert!(
        elapsed < timeout + margin,
        "exited {elapsed:?} after start, timeout {timeout:?}: {err}"
    );
}

#[test]
fn unreachable_or_wrong_redis_fails_at_start_naming_the_url() {
    // Nothing listens on `port`: connections are refused at once.
    let port = support::free_port();
    for (url, expected) in [
        (
            format!("redis://127.0.0.1:{port}"),
            format!("cannot reach Redis at redis://127.0.0.1:{port} within 1500 ms"),
        ),
        (
            format!("redis://:topsecret@127.0.0.1:{port}/0"),
            format!("cannot reach Redis at redis://:***@127.0.0.1:{port}/0 within 1500 ms"),
        ),
        (
            "ftp://127.0.0.1:1".to_string(),
            "invalid --redis-url `ftp://127.0.0.1:1`".to_string(),
        ),
    ] {
        let started = Instant::now();
        let mut opts = Start::testapp(&[
            "--workers",
            "2",
            "--adapter",
            "redis",
            "--redis-url",
            &url,
            "--redis-connect-timeout-ms",
            "1500",
        ]);
        opts.timeout = Duration::from_secs(10);
        let err = match opts.try_spawn() {
            Ok(_) => panic!("the cluster started with {url}"),
            Err(e) => e,
        };
        assert!(
            err.contains(&expected),
            "error does not say {expected}: {err}"
        );
        if expected.starts_with("cannot reach") {
            assert!(err.contains("check --redis-url"), "no hint: {err}");
        }
        assert!(!err.contains("topsecret"), "password leaked: {err}");
        assert!(err.contains("exit code: Some(Some(1))"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    }
    // --adapter redis without a URL.
    let err = Start::testapp(&["--adapter", "redis"])
        .try_spawn()
        .err()
        .expect("refused");
    assert!(err.contains("--redis-url"), "{err}");
}

#[test]
fn password_prefix_and_tls() {
    // Password in the URL.
    let redis = RedisServer::start(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    // Two apps on one Redis, separated by their prefix.
    let app1 = host(&url, &["--redis-prefix", "app1"]);
    let app2 = host(&url, &["--redis-prefix", "app2"]);
    // TLS (`rediss://`; `#insecure` accepts the test's self-signed certificate).
    let dir = std::env::temp_dir().join(format!("sio-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let tls = RedisServer::start_tls(&dir.join("cert.pem"), &dir.join("key.pem"));
    let tls_host = host(&format!("rediss://127.0.0.1:{}/#insecure", tls.port), &[]);
    rt().block_on(async {
        let (mut a1, _) = client(app1.addr).await;
        let (mut a2, _) = client(app2.addr).await;
        assert_eq!(ack(&a1, "server_count", vec![]).await, json!(2));
        assert_eq!(ack(&a2, "server_count", vec![]).await, json!(2));
        a1.emit("/", "to_all", vec![json!("app1 only")])
            .await
            .unwrap();
        assert_eq!(next_msg(&mut a1, T).await, Some(json!("app1 only")));
        assert_eq!(
            next_msg(&mut a2, Duration::from_millis(500)).await,
            None,
            "app2 saw app1's broadcast"
        );

        let mut over_tls = Vec::new();
        for _ in 0..4 {
            over_tls.push(client(tls_host.addr).await);
        }
        assert_eq!(ack(&over_tls[0].0, "server_count", vec![]).await, json!(2));
        over_tls[0]
            .0
            .emit("/", "to_all", vec![json!("tls")])
            .await
            .unwrap();
        for (c, _) in over_tls.iter_mut() {
            assert_eq!(next_msg(c, T).await, Some(json!("tls")));
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
