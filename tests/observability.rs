//! Observability: the admin listener (`/livez`, `/readyz`, `/status`, `/metrics`), the health
//! check on the main port, the `status` command and JSON logs, on the real binary.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sio_client::{Client, ClientConfig, Transport};
use support::{Cluster, Start, eventually, example_bin, http_once};

const T: Duration = Duration::from_secs(10);

fn admin_addr(c: &Cluster) -> SocketAddr {
    c.admin_addr()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_once(addr, "GET", path, "").unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = get(addr, path);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition (OpenMetrics text as prometheus-client writes it): every
/// non-comment line must be `name{labels} value`, every family needs a `# TYPE`.
fn parse_metrics(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF:\n{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("# TYPE name type");
            types.insert(name.to_owned(), ty.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    (samples, types)
}

fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let (status, body) = get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body).0
}

/// Sum of the samples of `name` whose labels include `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn has(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

/// Every family the issue names, by its sample name.
const FAMILIES: &[&str] = &[
    "socket_io_connected",
    "socket_io_connect_total",
    "socket_io_disconnect_total",
    "socket_io_events_received_total",
    "socket_io_events_sent_total",
    "socket_io_receive_bytes_total",
    "socket_io_transmit_bytes_total",
    "sio_cluster_routed_total",
    "sio_cluster_handoff_seconds_bucket",
    "sio_cluster_handoff_seconds_count",
    "sio_cluster_rejected_total",
    "sio_cluster_worker_restarts_total",
    "sio_cluster_workers_ready",
    "sio_cluster_adapter_request_timeouts_total",
    "sio_cluster_bus_messages_total",
    "sio_cluster_bus_bytes_total",
    "process_resident_memory_bytes",
    "process_open_fds",
];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn admin_endpoints_health_metrics_and_the_status_command() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--admin-listen",
        "127.0.0.1:0",
        "--heartbeat-interval-ms",
        "200",
        "--status-interval-ms",
        "300",
    ])
    .spawn();
    let admin = admin_addr(&c);

    let (status, body) = get(admin, "/livez");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, ready) = get_json(admin, "/readyz");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["workers_ready"], 2);
    // The same answer on the main port, from the primary, before any app route.
    let (status, health) = get_json(c.addr, "/health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(get(admin, "/nope").0, 404);

    let pids = c.worker_pids();
    assert_eq!(pids.len(), 2);
    let (status, st) = get_json(admin, "/status");
    assert_eq!(status, 200);
    assert_eq!(st["adapter"], "ipc");
    assert_eq!(st["draining"], false);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    let workers = st["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{st}");
    let mut listed: Vec<u32> = workers
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, pids);
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w["index"], i, "{w}");
        assert_eq!(w["state"], "ready", "{w}");
        assert_eq!(w["restarts"], 0, "{w}");
        assert!(w["uptime_s"].as_f64().is_some(), "{w}");
        assert!(
            w["rss_bytes"].as_u64().unwrap() > 0
                || eventually(T, || {
                    get_json(admin, "/status").1["workers"][i]["rss_bytes"]
                        .as_u64()
                        .unwrap_or(0)
                        > 0
                }),
            "{w}"
        );
    }

    // Every family is there before its first event, counters at 0.
    let m = scrape(admin);
    for f in FAMILIES {
        assert!(has(&m, f), "{f} missing from /metrics");
    }
    assert_eq!(
        sum(
            &m,
            "sio_cluster_worker_restarts_total",
            &[("cause", "exit")]
        ),
        0.0
    );
    assert_eq!(
        sum(
            &m,
            "sio_cluster_rejected_total",
            &[("reason", "head_timeout")]
        ),
        0.0
    );
    assert_eq!(sum(&m, "sio_cluster_workers_ready", &[]), 2.0);
    for w in ["0", "1", "primary"] {
        assert!(
            sum(&m, "process_resident_memory_bytes", &[("worker", w)]) > 0.0
                || eventually(T, || {
                    sum(
                        &scrape(admin),
                        "process_resident_memory_bytes",
                        &[("worker", w)],
                    ) > 0.0
                }),
            "no RSS for worker {w}"
        );
    }

    // 10 clients: socket_io_connected sums to 10 over both workers.
    let rt = rt();
    let mut clients = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..10 {
            let cfg = ClientConfig::new(c.addr, Transport::WebSocket);
            v.push(Client::connect(cfg).await.expect("connect"));
        }
        v
    });
    let counted = eventually(T, || {
        let m = scrape(admin);
        sum(&m, "socket_io_connected", &[("namespace", "/")]) == 10.0
            && sum(&m, "socket_io_connected", &[("worker", "0")]) > 0.0
            && sum(&m, "socket_io_connected", &[("worker", "1")]) > 0.0
    });
    let m = scrape(admin);
    assert!(
        counted,
        "socket_io_connected: {:?}",
        m.iter()
            .filter(|s| s.name == "socket_io_connected")
            .collect::<Vec<_>>()
    );
    assert!(sum(&m, "socket_io_connect_total", &[]) >= 10.0);
    assert!(sum(&m, "socket_io_receive_bytes_total", &[]) > 0.0);
    assert!(sum(&m, "socket_io_transmit_bytes_total", &[]) > 0.0);
    assert!(sum(&m, "sio_cluster_routed_total", &[("reason", "balance")]) >= 10.0);
    assert!(sum(&m, "sio_cluster_handoff_seconds_count", &[]) >= 10.0);
    let (_, st) = get_json(admin, "/status");
    let sessions: u64 = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["sessions"].as_u64().unwrap())
        .sum();
    assert_eq!(sessions, 10, "{st}");
    // The periodic status line counts websocket sockets too, not only polling sessions.
    assert!(
        c.wait_log("Socket.IO sockets: 10;", T),
        "no status line with 10 sockets:\n{}",
        c.logs()
    );

    // 4 leave.
    rt.block_on(async {
        for cl in clients.drain(..4) {
            cl.disconnect().await.ok();
        }
    });
    assert!(
        eventually(T, || {
            let m = scrape(admin);
            sum(&m, "socket_io_connected", &[]) == 6.0
                && sum(&m, "socket_io_disconnect_total", &[]) >= 4.0
        }),
        "after 4 disconnects: {:?}",
        scrape(admin)
            .iter()
            .filter(|s| s.name.starts_with("socket_io_"))
            .collect::<Vec<_>>()
    );

    // Events both ways, over websocket and over polling, counted exactly: each `echo` is one
    // event in and one `msg` event out, and the test app greets each connect with an `auth`
    // event (the polling client's: one more out).
    let before = scrape(admin);
    let (in0, out0) = (
        sum(&before, "socket_io_events_received_total", &[]),
        sum(&before, "socket_io_events_sent_total", &[]),
    );
    rt.block_on(async {
        let mut polling = Client::connect(ClientConfig::new(c.addr, Transport::Polling))
            .await
            .expect("polling connect");
        for cl in clients.iter_mut().chain(std::iter::once(&mut polling)) {
            cl.emit("/", "echo", vec![serde_json::json!("hi")])
                .await
                .unwrap();
            cl.next_event_named("msg", T).await.expect("msg back");
        }
        polling.disconnect().await.ok();
    });
    assert!(
        eventually(T, || {
            let m = scrape(admin);
            sum(&m, "socket_io_events_received_total", &[]) - in0 == 7.0
                && sum(&m, "socket_io_events_sent_total", &[]) - out0 == 8.0
        }),
        "events not counted: {:?}",
        scrape(admin)
            .iter()
            .filter(|s| s.name.starts_with("socket_io_events"))
            .collect::<Vec<_>>()
    );

    // The status command lists both pids and exits 0.
    let out = Command::new(example_bin("testapp"))
        .args(["status", "--admin-listen", &admin.to_string()])
        .output()
        .expect("run testapp status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status failed: {table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in &pids {
        assert!(
            table.contains(&format!(" {p} ")),
            "pid {p} not in:\n{table}"
        );
    }
    assert_eq!(table.matches(" ready ").count(), 2, "{table}");
    // Under the table, the last lifecycle events: here the two workers' start.
    assert!(table.contains("recent events:"), "{table}");
    assert_eq!(table.matches(" worker_ready ").count(), 2, "{table}");
    assert!(
        table.contains(" listening activated=false addr="),
        "{table}"
    );

    // kill -9 of a worker shows in the restart counter and in /status.
    let victim = pids[0];
    // SAFETY: kill(2) on a worker of the cluster this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(20), || {
            sum(
                &scrape(admin),
                "sio_cluster_worker_restarts_total",
                &[("cause", "exit")],
            ) == 1.0
        }),
        "restart not counted"
    );
    assert!(
        eventually(Duration::from_secs(20), || {
            let (_, st) = get_json(admin, "/status");
            let ws = st["workers"].as_array().cloned().unwrap_or_default();
            ws.len() == 2
                && ws
                    .iter()
                    .all(|w| w["state"] == "ready" && w["pid"].as_u64() != Some(u64::from(victim)))
                && ws
                    .iter()
                    .map(|w| w["restarts"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    == 1
        }),
        "status after the restart: {}",
        get(admin, "/status").1
    );
    drop(clients);
}

#[test]
fn the_status_command_says_when_nothing_answers() {
    let port = support::free_port();
    let out = Command::new(example_bin("testapp"))
        .args(["status", "--admin-listen", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run testapp status");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no sio-cluster admin listener answers"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn readyz_turns_503_from_the_first_moment_of_a_drain() {
    let mut c = Start::testapp(&[
        "--workers",
        "2",
        "--admin-listen",
        "127.0.0.1:0",
        "--drain-timeout-ms",
        "4000",
        "--body-timeout-ms",
        "30000",
    ])
    .spawn();
    let admin = admin_addr(&c);
    assert_eq!(get(admin, "/readyz").0, 200);
    // A polling POST whose body never completes keeps its worker draining until the drain
    // timeout.
    use std::io::Write;
    let sid = support::polling_handshake(c.addr).unwrap();
    let mut stalled = std::net::TcpStream::connect(c.addr).unwrap();
    write!(
        stalled,
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 1000\r\n\r\n40"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.signal(libc::SIGTERM);
    // As soon as the primary has handled the signal (it cannot answer before it sees it).
    assert!(
        eventually(Duration::from_secs(2), || get(admin, "/readyz").0 == 503),
        "/readyz still 200 after SIGTERM"
    );
    let (status, body) = get_json(admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "draining");
    assert_eq!(get(admin, "/livez").0, 200);
    let (_, st) = get_json(admin, "/status");
    assert_eq!(st["draining"], true);
    // (The main port itself stops accepting at SIGTERM: its /health is refused, not 503.)
    assert!(c.is_running(), "the primary should still be draining");
    assert!(
        c.wait_exit(Duration::from_secs(15)).is_some(),
        "did not exit"
    );
    drop(stalled);
}

#[test]
fn json_logs_parse_and_worker_lines_carry_their_index() {
    let mut c = Start::testapp(&["--workers", "2", "--log-format", "json"]).spawn();
    c.signal(libc::SIGTERM);
    assert!(
        c.wait_exit(Duration::from_secs(15)).is_some(),
        "did not exit"
    );
    let logs = c.logs();
    let mut workers_seen = std::collections::BTreeSet::new();
    let mut primary_lines = 0;
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nall:\n{logs}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
        match v["process"].as_str() {
            Some("primary") => primary_lines += 1,
            Some("worker") => {
                let i = v["worker"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("worker line without index: {line}"));
                workers_seen.insert(i);
            }
            other => panic!("process {other:?} in {line}"),
        }
    }
    assert!(primary_lines > 0, "{logs}");
    // Both workers' lines reached the primary's stderr (they log their drain at info).
    assert_eq!(
        workers_seen.into_iter().collect::<Vec<_>>(),
        vec![0, 1],
        "{logs}"
    );
}

#[test]
fn a_public_admin_address_needs_the_explicit_flag() {
    let err = Start::testapp(&["--workers", "1", "--admin-listen", "0.0.0.0:0"])
        .try_spawn()
        .err()
        .expect("should refuse to start");
    assert!(err.contains("--admin-listen-public"), "{err}");
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_the_cluster_exports() {
    let c = Start::testapp(&["--workers", "1", "--admin-listen", "127.0.0.1:0"]).spawn();
    let admin = admin_addr(&c);
    let (_, body) = get(admin, "/metrics");
    let (samples, types) = parse_metrics(&body);
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/grafana-dashboard.json"
        ))
        .expect("docs/grafana-dashboard.json"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 6, "too few panels: {exprs:?}");
    let known: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for e in &exprs {
        for word in e.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')) {
            if word.starts_with("socket_io_")
                || word.starts_with("sio_cluster_")
                || word.starts_with("process_")
            {
                assert!(
                    known.contains(word),
                    "the dashboard uses {word}, which /metrics does not export (types: {types:?})"
                );
            }
        }
    }
}

#[test]
fn health_is_the_primary_s_answer_on_kept_alive_and_tls_connections_and_can_be_disabled() {
    use sio_client::raw::HttpConn;
    let rt = rt();
    // Plain: the second request of a kept-alive connection reaches a worker, which asks the
    // primary.
    let c = Start::testapp(&["--workers", "2"]).spawn();
    rt.block_on(async {
        let mut conn = HttpConn::connect(c.addr).await.unwrap();
        let res = conn
            .request("GET", "/socket.io/?EIO=4&transport=polling", &[], "")
            .await
            .unwrap();
        assert_eq!(res.status, 200);
        let res = conn.request("GET", "/health", &[], "").await.unwrap();
        assert_eq!(res.status, 200, "{:?}", res.body);
        let v: Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["workers_ready"], 2);
    });
    drop(c);

    // TLS: the worker that terminates TLS answers with the primary's state.
    let cert = support::TestCert::new();
    let mut args = vec!["--workers", "2", "--health-path", "/healthz"];
    let cert_args = cert.args();
    args.extend(cert_args.iter().map(String::as_str));
    let c = Start::testapp(&args).spawn();
    rt.block_on(async {
        let mut conn = HttpConn::connect_tls(c.addr, &cert.client_tls())
            .await
            .unwrap();
        let res = conn.request("GET", "/healthz", &[], "").await.unwrap();
        assert_eq!(res.status, 200, "{:?}", res.body);
        let v: Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["workers"], 2);
    });
    drop(c);

    // Disabled: the app's own routes answer the path (the test app has none: 404).
    let c = Start::testapp(&["--workers", "1", "--health-path", ""]).spawn();
    assert_eq!(get(c.addr, "/health").0, 404);
}

#[test]
fn readyz_follows_the_redis_connection_in_redis_mode() {
    let mut redis = support::RedisServer::start(&[]);
    let url = redis.url();
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--adapter",
        "redis",
        "--redis-url",
        &url,
        "--admin-listen",
        "127.0.0.1:0",
        "--heartbeat-interval-ms",
        "200",
    ])
    .spawn();
    let admin = admin_addr(&c);
    assert_eq!(get(admin, "/readyz").0, 200);
    assert_eq!(get_json(admin, "/status").1["adapter"], "redis");
    redis.stop();
    assert!(
        eventually(Duration::from_secs(15), || get(admin, "/readyz").0 == 503),
        "/readyz stayed 200 with Redis down: {}",
        get(admin, "/readyz").1
    );
    assert_eq!(
        get_json(admin, "/readyz").1["reason"],
        "the Redis connection is down"
    );
    assert_eq!(get(admin, "/livez").0, 200);
    redis.restart();
    assert!(
        eventually(Duration::from_secs(20), || get(admin, "/readyz").0 == 200),
        "/readyz did not come back with Redis: {}",
        get(admin, "/readyz").1
    );
}

#[test]
fn adapter_requests_that_time_out_are_counted() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--admin-listen",
        "127.0.0.1:0",
        "--request-timeout-ms",
        "300",
        "--heartbeat-interval-ms",
        "200",
        "--heartbeat-timeout-ms",
        "20000",
    ])
    .spawn();
    let admin = admin_addr(&c);
    let name = "sio_cluster_adapter_request_timeouts_total";
    assert!(has(&scrape(admin), name));
    assert_eq!(sum(&scrape(admin), name, &[]), 0.0);
    let rt = rt();
    rt.block_on(async {
        let a = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
            .await
            .unwrap();
        let b = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
            .await
            .unwrap();
        let wa = a.emit_with_ack("/", "whoami", vec![], T).await.unwrap()[0].clone();
        let wb = b.emit_with_ack("/", "whoami", vec![], T).await.unwrap()[0].clone();
        assert_ne!(
            wa["worker"], wb["worker"],
            "least-conn puts them on both workers"
        );
        // A cluster-wide count answered by both workers: no timeout.
        let n = a
            .emit_with_ack("/", "count_sockets", vec![Value::Null], T)
            .await
            .unwrap();
        assert_eq!(n[0], 2);
        // Freeze b's worker: a's count waits for it until the request timeout.
        let frozen = wb["pid"].as_u64().unwrap() as i32;
        // SAFETY: kill(2) on a worker of the cluster this test started.
        unsafe { libc::kill(frozen, libc::SIGSTOP) };
        let _ = a
            .emit_with_ack("/", "count_sockets", vec![Value::Null], T)
            .await;
        let worker_a = wa["worker"].to_string();
        let counted = eventually(T, || {
            sum(
                &scrape(admin),
                name,
                &[("worker", worker_a.trim_matches('"'))],
            ) == 1.0
        });
        // SAFETY: as above.
        unsafe { libc::kill(frozen, libc::SIGCONT) };
        assert!(
            counted,
            "{:?}",
            scrape(admin)
                .iter()
                .filter(|s| s.name == name)
                .collect::<Vec<_>>()
        );
    });
}

/// `GET /events` streams the lifecycle as typed JSON lines: history for a late follower, then
/// live events, with increasing `seq`.
#[test]
fn the_events_stream_tells_the_lifecycle_in_order() {
    let c = Start::testapp(&["--workers", "2", "--admin-listen", "127.0.0.1:0"]).spawn();
    let head = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(c.admin_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        write!(s, "GET /events HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
    };
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/x-ndjson"),
        "{head}"
    );
    let events = c.events();
    // The history: both workers started and became ready before the primary listened.
    let listening = events.wait_for("listening", 1, T);
    assert_eq!(listening[0]["addr"], c.addr.to_string());
    let started = events.named("worker_started");
    let ready = events.named("worker_ready");
    assert_eq!((started.len(), ready.len()), (2, 2), "{:#?}", events.all());
    let pids: Vec<u32> = ready
        .iter()
        .map(|e| e["pid"].as_u64().unwrap() as u32)
        .collect();
    let mut workers = c.worker_pids();
    workers.sort_unstable();
    let mut pids_sorted = pids.clone();
    pids_sorted.sort_unstable();
    assert_eq!(pids_sorted, workers);
    // Live: a killed worker is seen exiting (not expected) and restarting, then ready again.
    // SAFETY: kill(2) of a worker this test's cluster started.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let restarting = events.wait_for("worker_restarting", 1, T);
    assert!(restarting[0]["restart_in_ms"].as_u64().is_some());
    events.wait_for("worker_ready", 3, T);
    let exited = events.named("worker_exited");
    assert_eq!(exited.len(), 1, "{:#?}", events.all());
    assert_eq!(exited[0]["pid"].as_u64(), Some(u64::from(pids[0])));
    assert_eq!(exited[0]["expected"], false);
    let seqs: Vec<u64> = events
        .all()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}
