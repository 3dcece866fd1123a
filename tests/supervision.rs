//! Supervision: crash recovery, rolling reload, graceful shutdown, hung and oversized workers.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sio_client::{Client, ClientConfig, Incoming, PollingConn, Transport};
use support::{Start, eventually, process_alive};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn whoami(c: &Client) -> Result<Value, sio_client::Error> {
    Ok(c.emit_with_ack("/", "whoami", vec![], T)
        .await?
        .swap_remove(0))
}

fn config(addr: SocketAddr, i: usize) -> ClientConfig {
    let transport = if i % 4 == 3 {
        Transport::Polling
    } else {
        Transport::WebSocket
    };
    ClientConfig::new(addr, transport)
        .polling_conn(PollingConn::KeepAlive)
        .connect_timeout(Duration::from_secs(15))
}

/// Waits until the client's connection ends; false if it is still up after `within`.
async fn closed_within(c: &mut Client, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        match c.next_message(Duration::from_millis(100)).await {
            Ok(Incoming::Closed { .. }) | Ok(Incoming::Disconnected { .. }) => return true,
            Err(e) if e.is_closed() => return true,
            _ => {}
        }
    }
    !c.is_connected()
}

#[test]
fn a_killed_worker_is_replaced_and_only_its_clients_reconnect() {
    let c = Start::testapp(&["--workers", "2", "--admin-listen", "127.0.0.1:0"]).spawn();
    let events = c.events();
    rt().block_on(async {
        let mut clients = Vec::new();
        for i in 0..200 {
            let cl = Client::connect(config(c.addr, i)).await.unwrap();
            let who = whoami(&cl).await.unwrap();
            clients.push((cl, who));
        }
        let victim_pid = clients.iter().find(|(_, w)| w["worker"] == "1").unwrap().1["pid"]
            .as_u64()
            .unwrap();
        let on_victim = clients.iter().filter(|(_, w)| w["worker"] == "1").count();
        assert!(on_victim > 50, "{on_victim}");

        // SAFETY: kill(2) on a worker of the cluster this test started.
        unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };
        let killed = Instant::now();

        // A new worker serves slot 1 within 2 s.
        let mut replaced = None;
        while killed.elapsed() < Duration::from_secs(5) && replaced.is_none() {
            if let Ok(probe) =
                Client::connect(ClientConfig::new(c.addr, Transport::WebSocket)).await
                && let Ok(who) = whoami(&probe).await
                && who["worker"] == "1"
                && who["pid"].as_u64() != Some(victim_pid)
            {
                replaced = Some(killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let replaced = replaced.expect("slot 1 was not served again");
        assert!(
            replaced < Duration::from_secs(2),
            "new worker serving after {replaced:?}"
        );

        for (i, (cl, who)) in clients.iter_mut().enumerate() {
            if who["worker"] == "1" {
                // The killed worker's clients lost their connection, and reconnect.
                assert!(
                    closed_within(cl, Duration::from_secs(10)).await,
                    "client {i} kept a dead session"
                );
                let again = Client::connect(config(c.addr, i)).await.expect("reconnect");
                whoami(&again).await.expect("reconnected client works");
            } else {
                // The other worker's clients noticed nothing: same session, same worker.
                assert!(
                    cl.is_connected(),
                    "client {i} of the surviving worker was disconnected"
                );
                while let Some(m) = cl.try_next_message() {
                    assert!(
                        !matches!(m, Incoming::Closed { .. } | Incoming::Disconnected { .. }),
                        "client {i}: {m:?}"
                    );
                }
                let now = whoami(cl).await.expect("surviving session works");
                assert_eq!(&now, who, "client {i}");
            }
        }
    });
    let restarting = events.wait_for("worker_restarting", 1, T);
    assert_eq!(restarting[0]["cause"], "exit", "{restarting:?}");
    assert!(
        c.wait_log("sessions of the exited worker purged", T),
        "polling sessions of the dead worker are purged"
    );
}

/// A client that reconnects whenever its connection ends, like socket.io-client.
async fn resilient(
    addr: SocketAddr,
    i: usize,
    failures: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<Value, String> {
    loop {
        let mut cl = match Client::connect(config(addr, i)).await {
            Ok(cl) => cl,
            Err(e) => {
                failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("client {i}: reconnect failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            if *stop.borrow() {
                return whoami(&cl).await.map_err(|e| format!("client {i}: {e}"));
            }
            tokio::select! {
                _ = stop.changed() => {}
                closed = closed_within(&mut cl, Duration::from_millis(300)) => if closed { break },
            }
        }
    }
}

#[test]
fn rolling_reload_replaces_every_worker_without_a_failed_connect() {
    let mut c = Start::testapp(&[
        "--workers",
        "2",
        "--drain-timeout-ms",
        "5000",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .spawn();
    let events = c.events();
    let before: HashSet<u32> = c.worker_pids().into_iter().collect();
    assert_eq!(before.len(), 2);
    rt().block_on(async {
        let failures = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut held = Vec::new();
        for i in 0..200 {
            held.push(tokio::spawn(resilient(
                c.addr,
                i,
                failures.clone(),
                stop_rx.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        // A client loop connecting continuously, websocket and polling in turn.
        let attempts = Arc::new(AtomicU64::new(0));
        let loop_failures = Arc::new(AtomicU64::new(0));
        let looper = {
            let (attempts, loop_failures, mut stop) =
                (attempts.clone(), loop_failures.clone(), stop_rx.clone());
            let addr = c.addr;
            tokio::spawn(async move {
                let mut i = 0;
                while !*stop.borrow_and_update() {
                    i += 1;
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let ok = match Client::connect(config(addr, i)).await {
                        Ok(cl) => {
                            let r = whoami(&cl).await;
                            let _ = cl.disconnect().await;
                            r.map(|_| ())
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = ok {
                        loop_failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("connect loop: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.signal(libc::SIGHUP);
        events.wait_for("reload_finished", 1, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop_tx.send(true).unwrap();
        looper.await.unwrap();

        let after: HashSet<u32> = c.worker_pids().into_iter().collect();
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(
            after.is_disjoint(&before),
            "every worker pid replaced: before {before:?}, after {after:?}"
        );
        assert!(
            attempts.load(Ordering::Relaxed) > 50,
            "the loop kept connecting"
        );
        assert_eq!(
            loop_failures.load(Ordering::Relaxed),
            0,
            "failed connects during the reload"
        );
        assert_eq!(
            failures.load(Ordering::Relaxed),
            0,
            "failed reconnects during the reload"
        );
        // Every held client ends connected, to a new worker.
        for (i, h) in held.into_iter().enumerate() {
            let who = h.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
            let pid = who["pid"].as_u64().unwrap() as u32;
            assert!(
                after.contains(&pid),
                "client {i} on {pid}, not a new worker"
            );
        }
    });
    assert!(c.is_running());
}

#[test]
fn sigterm_drains_and_exits_zero_leaving_no_worker() {
    let mut c = Start::testapp(&["--workers", "2", "--drain-timeout-ms", "3000"]).spawn();
    let workers = c.worker_pids();
    rt().block_on(async {
        let mut clients = Vec::new();
        for i in 0..40 {
            clients.push(Client::connect(config(c.addr, i)).await.unwrap());
        }
        c.signal(libc::SIGTERM);
        let started = Instant::now();
        let status = c.wait_exit(Duration::from_secs(8)).expect("primary exited");
        assert_eq!(status.code(), Some(0), "{}", c.logs());
        assert!(
            started.elapsed() < Duration::from_millis(3000 + 1500),
            "{:?}",
            started.elapsed()
        );
        for cl in clients.iter_mut() {
            assert!(closed_within(cl, Duration::from_secs(5)).await);
        }
    });
    assert!(
        eventually(Duration::from_secs(2), || workers
            .iter()
            .all(|p| !process_alive(*p))),
        "workers left behind"
    );
    assert!(c.logs().contains("draining workers"), "{}", c.logs());
}

#[test]
fn a_second_signal_forces_the_exit() {
    let mut c = Start::testapp(&[
        "--workers",
        "2",
        "--drain-timeout-ms",
        "60000",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .spawn();
    let events = c.events();
    let workers = c.worker_pids();
    // A frozen worker never finishes draining.
    // SAFETY: kill(2) on a worker of the cluster this test started.
    unsafe { libc::kill(workers[0] as i32, libc::SIGSTOP) };
    c.signal(libc::SIGTERM);
    events.wait_for("draining", 1, T);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    c.signal(libc::SIGTERM);
    assert!(
        c.wait_exit(Duration::from_secs(5)).is_some(),
        "second signal did not force the exit"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(c.logs().contains("second signal: forcing exit"));
    assert!(
        eventually(Duration::from_secs(3), || workers
            .iter()
            .all(|p| !process_alive(*p))),
        "workers left behind"
    );
}

#[test]
fn killing_the_primary_leaves_no_worker() {
    let mut c = Start::testapp(&["--workers", "3"]).spawn();
    let workers = c.worker_pids();
    assert_eq!(workers.len(), 3);
    c.signal(libc::SIGKILL);
    c.wait_exit(T).expect("primary died");
    assert!(
        eventually(Duration::from_secs(3), || workers
            .iter()
            .all(|p| !process_alive(*p))),
        "workers outlived the primary: {:?}",
        workers
            .iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_hung_worker_is_killed_and_replaced() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--heartbeat-interval-ms",
        "100",
        "--heartbeat-timeout-ms",
        "1500",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .spawn();
    let events = c.events();
    let workers = c.worker_pids();
    // SAFETY: kill(2) on a worker of the cluster this test started.
    unsafe { libc::kill(workers[1] as i32, libc::SIGSTOP) };
    let restarting = events.wait_for("worker_restarting", 1, Duration::from_secs(6));
    assert_eq!(restarting[0]["cause"], "hung", "{restarting:?}");
    assert!(eventually(Duration::from_secs(5), || {
        let now = c.worker_pids();
        now.len() == 2 && now.contains(&workers[0]) && !now.contains(&workers[1])
    }));
    assert!(support::polling_handshake(c.addr).is_ok());
}

#[test]
fn a_worker_over_the_memory_limit_is_rolled_not_killed() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--worker-memory-limit-mb",
        "150",
        "--heartbeat-interval-ms",
        "200",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .spawn();
    let events = c.events();
    rt().block_on(async {
        let cl = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
            .await
            .unwrap();
        let who = whoami(&cl).await.unwrap();
        let slot = who["worker"].as_str().unwrap().to_string();
        let pid = who["pid"].as_u64().unwrap();
        assert_eq!(
            cl.emit_with_ack("/", "hog", vec![json!(200)], T)
                .await
                .unwrap()[0],
            json!("ok")
        );
        let replaced = events.wait_for("worker_replaced", 1, T);
        assert_eq!(replaced[0]["why"], "memory limit", "{replaced:?}");
        assert_eq!(replaced[0]["pid"].as_u64(), Some(pid), "{replaced:?}");
        // The old worker drained and exited cleanly (status 0), it was not killed.
        assert!(
            eventually(T, || events.named("worker_exited").iter().any(|e| e["pid"]
                .as_u64()
                == Some(pid)
                && e["status"] == "exit status: 0"
                && e["expected"] == true)),
            "{}",
            c.logs()
        );
        // Its slot is served by a new process.
        let again = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
            .await
            .unwrap();
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let probe = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
                .await
                .unwrap();
            let w = whoami(&probe).await.unwrap();
            seen.insert((
                w["worker"].as_str().unwrap().to_string(),
                w["pid"].as_u64().unwrap(),
            ));
        }
        assert!(
            seen.iter().any(|(s, p)| *s == slot && *p != pid),
            "{seen:?}"
        );
        assert!(!seen.iter().any(|(_, p)| *p == pid), "{seen:?}");
        drop(again);
    });
}

/// Signals are handled from the very start: a SIGHUP while the primary still waits for Redis
/// does not kill it, and SIGTERM then stops it at once with status 0.
#[test]
fn signals_during_start_up_are_handled() {
    // Accepts connections and never answers: the Redis check waits its whole timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut start = Start::testapp(&[
        "--workers",
        "1",
        "--adapter",
        "redis",
        "--redis-url",
        &url,
        "--redis-connect-timeout-ms",
        "30000",
    ]);
    start.args[1] = listen.clone();
    start.no_wait = Some(listen.parse().unwrap());
    let mut c = start.spawn();
    std::thread::sleep(Duration::from_millis(700));
    c.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.is_running(), "SIGHUP during start-up killed the primary");
    let started = Instant::now();
    c.signal(libc::SIGTERM);
    let status = c
        .wait_exit(Duration::from_secs(5))
        .expect("exited on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", c.logs());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        c.logs().contains("SIGTERM received during start-up"),
        "{}",
        c.logs()
    );
    drop(silent);
}

/// The accept loop is watched: when it dies (here a panic injected at its first connection),
/// the primary does not keep running and feeding systemd's watchdog with nothing accepting; it
/// drains its workers and exits non-zero with one line that says what happened.
#[test]
fn a_dead_accept_loop_ends_the_primary_with_an_error() {
    let mut c = Start::testapp(&["--workers", "2"])
        .env("SIO_FAULT_ACCEPT_PANIC", "1")
        .spawn();
    let workers = c.worker_pids();
    assert_eq!(workers.len(), 2);
    // The first connection trips the injected panic.
    let _ = std::net::TcpStream::connect(c.addr);
    let status = c.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "the primary kept running without its accept loop:\n{}",
            c.logs()
        )
    });
    assert!(!status.success(), "exit status {status:?}");
    let logs = c.logs();
    assert!(
        logs.contains("the accept loop panicked: fault injected by SIO_FAULT_ACCEPT_PANIC"),
        "{logs}"
    );
    assert!(
        eventually(T, || workers.iter().all(|p| !process_alive(*p))),
        "workers outlived the primary"
    );
}

/// Every long-lived task of the primary is watched, not only the accept loop: a panic in a
/// worker's bus relay (injected at the first broadcast) would leave broadcasts silently
/// unrelayed, so the primary drains and exits non-zero with one line naming the task.
#[test]
fn a_panicking_bus_relay_ends_the_primary_with_an_error() {
    let mut c = Start::testapp(&["--workers", "2"])
        .env("SIO_FAULT_BUS_PANIC", "1")
        .spawn();
    let workers = c.worker_pids();
    rt().block_on(async {
        let cl = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
            .await
            .unwrap();
        // The broadcast's publish trips the injected panic in the primary's relay. The client
        // stays until the primary goes (a client gone at once may never get its event handled).
        let _ = cl.emit("/", "to_all", vec![json!("x")]).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while process_alive(c.pid) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        drop(cl);
    });
    let status = c.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "the primary kept running without its bus relay:\n{}",
            c.logs()
        )
    });
    assert!(!status.success(), "exit status {status:?}");
    let logs = c.logs();
    assert!(
        logs.contains(
            "the primary's bus relay reader task panicked: fault injected by SIO_FAULT_BUS_PANIC"
        ),
        "{logs}"
    );
    assert!(
        eventually(T, || workers.iter().all(|p| !process_alive(*p))),
        "workers outlived the primary"
    );
}
