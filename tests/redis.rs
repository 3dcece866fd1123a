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

/// Lines of worker `w`'s log (every line starts with `worker N `) that contain `needle`.
fn worker_log_count(c: &Cluster, w: usize, needle: &str) -> usize {
    let prefix = format!("worker {w} ");
    c.logs()
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(needle))
        .count()
}

/// A client on the same worker as `sender` (the balancer alternates between the 2 workers).
async fn same_worker(addr: SocketAddr, sender_worker: &str) -> Client {
    loop {
        let (c, w) = client(addr).await;
        if w == sender_worker {
            return c;
        }
    }
}

/// Moves the `msg` events `c` received so far into `got`, as `(from, seq)`.
fn drain(c: &mut Client, got: &mut Vec<(String, u64)>) {
    while let Some(ev) = c.try_next_event() {
        if ev.name == "msg" {
            let m = &ev.args[0];
            got.push((
                m["from"].as_str().unwrap().to_string(),
                m["s"].as_u64().unwrap(),
            ));
        }
    }
}

/// The sequence numbers of the messages from `from` in `got`, sorted (duplicates kept).
fn from(got: &[(String, u64)], from: &str) -> Vec<u64> {
    let mut v: Vec<u64> = got
        .iter()
        .filter(|(f, _)| f == from)
        .map(|(_, s)| *s)
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn redis_outage_keeps_local_delivery_and_resumes_cross_host() {
    const LOST: &str = "lost the Redis connection";
    const RESTORED: &str = "Redis connection restored";
    let mut redis = RedisServer::start(&[]);
    let a = host(&redis.url(), &[]);
    let b = host(&redis.url(), &[]);
    let restored_everywhere = || {
        [&a, &b]
            .iter()
            .all(|c| (0..2).all(|w| worker_log_count(c, w, RESTORED) >= 1))
    };
    rt().block_on(async {
        // On each host, a sender and a receiver on the sender's worker. `to_all` reaches every
        // client: `la` gets host A's messages locally and host B's through Redis, `lb` the
        // reverse.
        let (sa, wa) = client(a.addr).await;
        let mut la = same_worker(a.addr, &wa).await;
        let (sb, wb) = client(b.addr).await;
        let mut lb = same_worker(b.addr, &wb).await;
        assert_eq!(ack(&sa, "server_count", vec![]).await, json!(4));

        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        let mut seq = 0u64;
        // One message from each host every 50 ms.
        macro_rules! tick {
            () => {
                for (s, f) in [(&sa, "A"), (&sb, "B")] {
                    s.emit("/", "to_all", vec![json!({"from": f, "s": seq})])
                        .await
                        .unwrap();
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drain(&mut la, &mut got_a);
                drain(&mut lb, &mut got_b);
            };
        }

        // Redis up: everything crosses.
        for _ in 0..20 {
            tick!();
        }
        let before = seq;
        let deadline = Instant::now() + T;
        while (from(&got_a, "B").len() as u64) < before || (from(&got_b, "A").len() as u64) < before
        {
            assert!(
                Instant::now() < deadline,
                "cross-host delivery incomplete before the outage"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            drain(&mut la, &mut got_a);
            drain(&mut lb, &mut got_b);
        }

        // Redis down for 3 s. Nothing published from now on can cross: no Redis is running.
        redis.stop();
        let outage_from = seq;
        for _ in 0..60 {
            tick!();
        }
        let outage_to = seq;
        for c in [&a, &b] {
            for w in 0..2 {
                assert_eq!(worker_log_count(c, w, LOST), 1, "{}", c.logs());
            }
        }

        // Redis back: traffic goes on until every worker of both hosts said it is restored.
        redis.restart();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !restored_everywhere() {
            assert!(Instant::now() < deadline, "not every worker reconnected");
            tick!();
        }
        // From here on, everything crosses again.
        let resumed = seq;
        for _ in 0..40 {
            tick!();
        }
        let end = seq;
        let deadline = Instant::now() + T;
        while from(&got_a, "B").iter().filter(|s| **s >= resumed).count() < (end - resumed) as usize
            || from(&got_b, "A").iter().filter(|s| **s >= resumed).count()
                < (end - resumed) as usize
        {
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            drain(&mut la, &mut got_a);
            drain(&mut lb, &mut got_b);
        }
        // Late local deliveries.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drain(&mut la, &mut got_a);
        drain(&mut lb, &mut got_b);

        let all: Vec<u64> = (0..end).collect();
        // Local delivery never stopped, on either host: every message reached the receiver on
        // its sender's worker, exactly once.
        assert_eq!(from(&got_a, "A"), all, "host A: local delivery had gaps");
        assert_eq!(from(&got_b, "B"), all, "host B: local delivery had gaps");
        for (got, remote, host) in [(&got_a, "B", "A"), (&got_b, "A", "B")] {
            let crossed = from(got, remote);
            // Cross-host delivery was complete before the outage...
            let pre: Vec<u64> = crossed.iter().copied().filter(|s| *s < before).collect();
            assert_eq!(pre, (0..before).collect::<Vec<_>>(), "host {host} before");
            // ... paused while Redis was down ...
            let during: Vec<u64> = crossed
                .iter()
                .copied()
                .filter(|s| (outage_from..outage_to).contains(s))
                .collect();
            assert!(
                during.is_empty(),
                "host {host}: crossed without Redis: {during:?}"
            );
            // ... and complete again once every worker said the connection was restored.
            let post: Vec<u64> = crossed.iter().copied().filter(|s| *s >= resumed).collect();
            assert_eq!(
                post,
                (resumed..end).collect::<Vec<_>>(),
                "host {host}: messages lost after the restore (sent {resumed}..{end})"
            );
        }
        assert_eq!(ack(&sa, "server_count", vec![]).await, json!(4));
        assert_eq!(ack(&sb, "server_count", vec![]).await, json!(4));
    });
    // Every worker has its own Redis connection: each logs the outage exactly once and its end
    // exactly once, so each host (2 workers) logs 2 of each.
    for c in [&a, &b] {
        for w in 0..2 {
            assert_eq!(worker_log_count(c, w, LOST), 1, "worker {w}: {}", c.logs());
            assert_eq!(
                worker_log_count(c, w, RESTORED),
                1,
                "worker {w}: {}",
                c.logs()
            );
        }
        assert_eq!(c.count_log(LOST), 2, "{}", c.logs());
        assert_eq!(c.count_log(RESTORED), 2, "{}", c.logs());
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

/// A 2-worker cluster in Redis mode at `url` with a 1.5 s connect timeout, expected to fail at
/// start: `within` bounds the wait for `listening on`.
fn failing_start(url: &str, within: Duration) -> Start<'static> {
    let mut opts = Start::testapp(&[
        "--workers",
        "2",
        "--adapter",
        "redis",
        "--redis-url",
        url,
        "--redis-connect-timeout-ms",
        "1500",
    ]);
    opts.timeout = within;
    opts
}

#[test]
fn redis_that_never_answers_fails_at_start_after_the_connect_timeout() {
    let (port, stop, acceptor) = silent_server();
    let url = format!("redis://127.0.0.1:{port}");
    let timeout = Duration::from_millis(1500);
    let margin = Duration::from_secs(4);
    let opts = failing_start(&url, Duration::from_secs(30));
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
        let opts = failing_start(&url, Duration::from_secs(10));
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
