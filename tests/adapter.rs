//! Every adapter operation crosses workers: 3 workers, 60 websocket clients spread over them,
//! each semantic checked end to end through the test app.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sio_client::{Client, ClientConfig, Transport};
use support::{Cluster, Start};

const WORKERS: usize = 3;
const CLIENTS: usize = 60;
const T: Duration = Duration::from_secs(10);

struct Fleet {
    clients: Vec<Client>,
    /// Worker index of each client.
    worker: Vec<usize>,
}

impl Fleet {
    async fn connect(addr: SocketAddr, n: usize, ns: &str) -> Fleet {
        let mut clients = Vec::new();
        let mut worker = Vec::new();
        for _ in 0..n {
            let cfg = ClientConfig::new(addr, Transport::WebSocket)
                .namespaces(vec![(ns.to_string(), None)])
                .auto_ack(json!("yes"));
            let c = Client::connect(cfg).await.expect("connect");
            let who = c
                .emit_with_ack(ns, "whoami", vec![], T)
                .await
                .expect("whoami");
            worker.push(who[0]["worker"].as_str().unwrap().parse().unwrap());
            clients.push(c);
        }
        let per: HashMap<usize, usize> = worker.iter().fold(HashMap::new(), |mut m, w| {
            *m.entry(*w).or_default() += 1;
            m
        });
        assert_eq!(
            per.len(),
            WORKERS,
            "clients spread over every worker: {per:?}"
        );
        Fleet { clients, worker }
    }

    fn on(&self, w: usize) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|i| self.worker[*i] == w)
            .collect()
    }

    fn id(&self, i: usize, ns: &str) -> String {
        self.clients[i].socket_id(ns).unwrap().to_string()
    }

    async fn ack(&self, i: usize, ns: &str, event: &str, args: Vec<Value>) -> Value {
        let mut r = self.clients[i]
            .emit_with_ack(ns, event, args, T)
            .await
            .unwrap_or_else(|e| panic!("{event} from client {i}: {e}"));
        r.swap_remove(0)
    }

    /// Waits for a `msg` with `payload` on each client of `who`; then checks nobody else got it.
    async fn expect_only(&mut self, who: &[usize], payload: &Value) {
        for &i in who {
            let ev = self.clients[i]
                .next_event_named("msg", T)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "client {i} (worker {}) missed {payload}: {e}",
                        self.worker[i]
                    )
                });
            assert_eq!(&ev.args[0], payload, "client {i}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, c) in self.clients.iter_mut().enumerate() {
            while let Some(ev) = c.try_next_event() {
                assert!(
                    !(ev.name == "msg" && &ev.args[0] == payload),
                    "client {i} (worker {}) should not have received {payload}",
                    self.worker[i]
                );
            }
        }
    }
}

fn cluster(extra: &[&str]) -> Cluster {
    let mut args = vec!["--workers", "3", "--balance", "round-robin"];
    args.extend_from_slice(extra);
    Start::testapp(&args).spawn()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn broadcasts_reach_every_worker() {
    let c = cluster(&[]);
    rt().block_on(async {
        let mut f = Fleet::connect(c.addr, CLIENTS, "/").await;
        let all: Vec<usize> = (0..CLIENTS).collect();
        let from = f.on(2)[0];

        // io.emit: everyone, sender included.
        let p = json!({"t": 1, "s": 1, "p": "to_all"});
        f.clients[from]
            .emit("/", "to_all", vec![p.clone()])
            .await
            .unwrap();
        f.expect_only(&all, &p).await;

        // socket.broadcast(): everyone but the sender.
        let p = json!({"t": 2, "s": 2, "p": "to_others"});
        f.clients[from]
            .emit("/", "to_others", vec![p.clone()])
            .await
            .unwrap();
        let others: Vec<usize> = all.iter().copied().filter(|i| *i != from).collect();
        f.expect_only(&others, &p).await;

        // Volatile broadcast: delivered too when nothing is congested.
        let p = json!({"t": 3, "s": 3, "p": "volatile"});
        f.clients[from]
            .emit("/", "volatile_to_all", vec![p.clone()])
            .await
            .unwrap();
        f.expect_only(&all, &p).await;

        // io.to(room) and except: members on every worker; a client on worker 0 receives a
        // room message sent from worker 2.
        let members: Vec<usize> = all.iter().copied().filter(|i| i % 4 == 0).collect();
        let vips: Vec<usize> = members.iter().copied().filter(|i| i % 8 == 0).collect();
        for &i in &members {
            assert_eq!(f.ack(i, "/", "join", vec![json!("r")]).await, json!("ok"));
        }
        for &i in &vips {
            assert_eq!(f.ack(i, "/", "join", vec![json!("vip")]).await, json!("ok"));
        }
        assert!(members.iter().any(|i| f.worker[*i] == 0));
        let sender = f.on(2).into_iter().find(|i| !members.contains(i)).unwrap();
        let p = json!({"t": 4, "s": 4, "p": "room"});
        f.clients[sender]
            .emit("/", "to_room", vec![json!("r"), p.clone()])
            .await
            .unwrap();
        f.expect_only(&members, &p).await;

        let p = json!({"t": 5, "s": 5, "p": "except"});
        f.clients[sender]
            .emit(
                "/",
                "to_room_except",
                vec![json!("r"), json!("vip"), p.clone()],
            )
            .await
            .unwrap();
        let non_vip: Vec<usize> = members
            .iter()
            .copied()
            .filter(|i| !vips.contains(i))
            .collect();
        f.expect_only(&non_vip, &p).await;

        // echo: only the sender.
        let p = json!({"t": 6, "s": 6, "p": "echo"});
        f.clients[sender]
            .emit("/", "echo", vec![p.clone()])
            .await
            .unwrap();
        f.expect_only(&[sender], &p).await;
    });
}

#[test]
fn acks_from_all_workers_are_collected_and_the_timeout_is_honoured() {
    let c = cluster(&[]);
    rt().block_on(async {
        let f = Fleet::connect(c.addr, CLIENTS, "/").await;
        let asker = f.on(1)[0];
        let r = f.ack(asker, "/", "ack_all", vec![json!(5000)]).await;
        assert_eq!(
            r,
            json!({"acks": CLIENTS - 1, "timeouts": 0}),
            "every other socket answers"
        );

        // Clients that never answer: counted as timeouts once the timeout passes, not before.
        let mut silent = Vec::new();
        for _ in 0..3 {
            let cfg = ClientConfig::new(c.addr, Transport::WebSocket);
            silent.push(Client::connect(cfg).await.unwrap());
        }
        let started = Instant::now();
        let r = f.ack(asker, "/", "ack_all", vec![json!(1500)]).await;
        let took = started.elapsed();
        assert_eq!(r, json!({"acks": CLIENTS - 1, "timeouts": 3}));
        assert!(
            took >= Duration::from_millis(1400),
            "answered before the timeout: {took:?}"
        );
        assert!(
            took < Duration::from_millis(4500),
            "timeout not honoured: {took:?}"
        );
    });
}

#[test]
fn remote_sockets_are_reachable_from_any_worker() {
    let c = cluster(&[]);
    rt().block_on(async {
        let mut f = Fleet::connect(c.addr, CLIENTS, "/").await;
        let asker = f.on(0)[0];
        let target = f.on(2)[0];
        let tid = f.id(target, "/");

        // fetch_sockets: counts and data (ids, rooms) from every worker.
        assert_eq!(
            f.ack(asker, "/", "count_sockets", vec![Value::Null]).await,
            json!(CLIENTS)
        );
        assert_eq!(
            f.ack(asker, "/", "server_count", vec![]).await,
            json!(WORKERS)
        );

        // Remote join / leave of a socket on another worker.
        assert_eq!(
            f.ack(asker, "/", "remote_join", vec![json!(tid), json!("solo")])
                .await,
            json!("ok")
        );
        assert_eq!(
            f.ack(asker, "/", "count_sockets", vec![json!("solo")])
                .await,
            json!(1)
        );
        let info = f.ack(asker, "/", "sockets", vec![json!("solo")]).await;
        assert_eq!(info, json!([{"id": tid, "rooms": ["solo"]}]));
        let p = json!({"t": 1, "p": "solo"});
        f.clients[asker]
            .emit("/", "to_room", vec![json!("solo"), p.clone()])
            .await
            .unwrap();
        f.expect_only(&[target], &p).await;
        assert_eq!(
            f.ack(asker, "/", "remote_leave", vec![json!(tid), json!("solo")])
                .await,
            json!("ok")
        );
        assert_eq!(
            f.ack(asker, "/", "count_sockets", vec![json!("solo")])
                .await,
            json!(0)
        );

        // Remote emit.
        let p = json!({"t": 2, "p": "direct"});
        assert_eq!(
            f.ack(asker, "/", "remote_emit", vec![json!(tid), p.clone()])
                .await,
            json!("ok")
        );
        f.expect_only(&[target], &p).await;
        assert_eq!(
            f.ack(
                asker,
                "/",
                "remote_emit",
                vec![json!("AAAAAAAAAAAAAAAA"), p.clone()]
            )
            .await,
            json!("not found")
        );

        // Remote disconnect.
        assert_eq!(
            f.ack(asker, "/", "kick", vec![json!(tid)]).await,
            json!("ok")
        );
        let gone = tokio::time::timeout(T, async {
            loop {
                match f.clients[target].next_message(T).await {
                    Ok(sio_client::Incoming::Disconnected { .. })
                    | Ok(sio_client::Incoming::Closed { .. })
                    | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(gone.is_ok(), "kicked client was not disconnected");
        assert_eq!(
            f.ack(asker, "/", "count_sockets", vec![Value::Null]).await,
            json!(CLIENTS - 1)
        );
        assert_eq!(
            f.ack(asker, "/", "kick", vec![json!(tid)]).await,
            json!("not found")
        );
    });
}

#[test]
fn room_operations_apply_on_every_worker() {
    let c = cluster(&[]);
    rt().block_on(async {
        let mut f = Fleet::connect(c.addr, CLIENTS, "/").await;
        let src: Vec<usize> = (0..CLIENTS).filter(|i| i % 3 == 0).collect();
        let asker = f.on(1).into_iter().find(|i| !src.contains(i)).unwrap();
        for &i in &src {
            f.ack(i, "/", "join", vec![json!("src")]).await;
        }
        f.ack(f.on(2)[1], "/", "join", vec![json!("other")]).await;
        assert_eq!(
            f.ack(asker, "/", "rooms", vec![]).await,
            json!(["other", "src"])
        );

        // io.to(src).join(dst): every socket in src, on every worker, also joins dst.
        assert_eq!(
            f.ack(asker, "/", "room_to_room", vec![json!("src"), json!("dst")])
                .await,
            json!("ok")
        );
        assert_eq!(
            f.ack(asker, "/", "count_sockets", vec![json!("dst")]).await,
            json!(src.len())
        );
        let p = json!({"p": "dst"});
        f.clients[asker]
            .emit("/", "to_room", vec![json!("dst"), p.clone()])
            .await
            .unwrap();
        f.expect_only(&src, &p).await;

        // io.to(src).leave(dst).
        assert_eq!(
            f.ack(asker, "/", "room_leave", vec![json!("src"), json!("dst")])
                .await,
            json!("ok")
        );
        assert_eq!(
            f.ack(asker, "/", "count_sockets", vec![json!("dst")]).await,
            json!(0)
        );
        assert_eq!(
            f.ack(asker, "/", "rooms", vec![]).await,
            json!(["other", "src"])
        );

        // io.to(src).disconnect(): every member, on every worker.
        assert_eq!(
            f.ack(asker, "/", "kick_room", vec![json!("src")]).await,
            json!("ok")
        );
        let left = f.ack(asker, "/", "count_sockets", vec![Value::Null]).await;
        assert_eq!(left, json!(CLIENTS - src.len()));
        assert_eq!(f.ack(asker, "/", "rooms", vec![]).await, json!(["other"]));
    });
}

#[test]
fn namespaces_are_separate_and_dynamic_ones_work() {
    let c = cluster(&[]);
    rt().block_on(async {
        let mut custom = Fleet::connect(c.addr, 12, "/custom").await;
        let mut root = Fleet::connect(c.addr, 6, "/").await;
        let p = json!({"p": "custom only"});
        custom.clients[0]
            .emit("/custom", "to_all", vec![p.clone()])
            .await
            .unwrap();
        custom.expect_only(&(0..12).collect::<Vec<_>>(), &p).await;
        root.expect_only(&[], &p).await;
        assert_eq!(
            custom
                .ack(0, "/custom", "count_sockets", vec![Value::Null])
                .await,
            json!(12)
        );
        assert_eq!(
            root.ack(0, "/", "count_sockets", vec![Value::Null]).await,
            json!(6)
        );

        // A dynamic namespace exists on a worker only once a client connected to it there.
        let mut dynamic = Fleet::connect(c.addr, 9, "/dyn/alpha").await;
        assert_eq!(
            dynamic.ack(0, "/dyn/alpha", "server_count", vec![]).await,
            json!(WORKERS)
        );
        let p = json!({"p": "dynamic"});
        dynamic.clients[4]
            .emit("/dyn/alpha", "to_all", vec![p.clone()])
            .await
            .unwrap();
        dynamic.expect_only(&(0..9).collect::<Vec<_>>(), &p).await;
        assert_eq!(
            dynamic
                .ack(2, "/dyn/alpha", "count_sockets", vec![Value::Null])
                .await,
            json!(9)
        );
        let r = dynamic
            .ack(1, "/dyn/alpha", "ack_all", vec![json!(3000)])
            .await;
        assert_eq!(r, json!({"acks": 8, "timeouts": 0}));

        // A dynamic namespace that only one worker has: requests do not wait for the others.
        let mut lone = Fleet::connect_one(c.addr, "/dyn/beta").await;
        let started = Instant::now();
        assert_eq!(
            lone.ack(0, "/dyn/beta", "count_sockets", vec![Value::Null])
                .await,
            json!(1)
        );
        assert_eq!(
            lone.ack(0, "/dyn/beta", "server_count", vec![]).await,
            json!(1)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        lone.clients[0]
            .emit("/dyn/beta", "to_all", vec![json!("x")])
            .await
            .unwrap();
        lone.expect_only(&[0], &json!("x")).await;
    });
}

impl Fleet {
    async fn connect_one(addr: SocketAddr, ns: &str) -> Fleet {
        let cfg = ClientConfig::new(addr, Transport::WebSocket)
            .namespaces(vec![(ns.to_string(), None)])
            .auto_ack(json!("yes"));
        let c = Client::connect(cfg).await.expect("connect");
        let who = c
            .emit_with_ack(ns, "whoami", vec![], T)
            .await
            .expect("whoami");
        Fleet {
            worker: vec![who[0]["worker"].as_str().unwrap().parse().unwrap()],
            clients: vec![c],
        }
    }
}

#[test]
fn requests_complete_at_once_when_a_worker_dies_mid_request() {
    // A long request timeout, so "completed well before the timeout" is unmistakable.
    let c = cluster(&["--request-timeout-ms", "30000"]);
    rt().block_on(async {
        let f = Fleet::connect(c.addr, CLIENTS, "/").await;
        let asker = f.on(0)[0];
        let pid_of = |w: usize| {
            let f = &f;
            async move {
                f.ack(f.on(w)[0], "/", "whoami", vec![]).await["pid"]
                    .as_u64()
                    .unwrap() as i32
            }
        };

        // 1. A broadcast with ack is in flight when worker 2 dies: worker 2 announced its
        //    sockets, two of which never answer (no auto-ack).
        let mut silent = Vec::new();
        while silent.len() < 2 {
            let s = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
                .await
                .unwrap();
            let who = s.emit_with_ack("/", "whoami", vec![], T).await.unwrap();
            if who[0]["worker"] == json!("2") {
                silent.push(s);
            } else {
                s.disconnect().await.unwrap();
            }
        }
        let doomed = pid_of(2).await;
        let asked = f.clients[asker].emit_with_ack(
            "/",
            "ack_all",
            vec![json!(30_000)],
            Duration::from_secs(40),
        );
        let killer = async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            // SAFETY: kill(2) on a worker process of the cluster this test started.
            unsafe { libc::kill(doomed, libc::SIGKILL) };
            Instant::now()
        };
        let (asked, killed_at) = tokio::join!(asked, killer);
        let took = killed_at.elapsed();
        let asked = asked.expect("ack_all completed")[0].clone();
        assert!(
            took < Duration::from_secs(5),
            "ack_all took {took:?} after the kill (timeout 30 s)"
        );
        // Every fleet client answered (those of worker 2 before it died); the two silent ones
        // died with their worker without answering.
        assert_eq!(asked, json!({"acks": CLIENTS - 1, "timeouts": 2}));
        assert!(c.wait_log("worker died", Duration::from_secs(5)));

        // 2. A fetch_sockets is in flight when worker 1 dies: freeze it first so it cannot
        //    answer, then kill it.
        let frozen = pid_of(1).await;
        // SAFETY: as above.
        unsafe { libc::kill(frozen, libc::SIGSTOP) };
        let fetch = f.clients[asker].emit_with_ack(
            "/",
            "count_sockets",
            vec![Value::Null],
            Duration::from_secs(40),
        );
        let killer = async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            // SAFETY: as above.
            unsafe { libc::kill(frozen, libc::SIGKILL) };
            Instant::now()
        };
        let (fetch, killed_at) = tokio::join!(fetch, killer);
        let took = killed_at.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "count_sockets took {took:?} after the kill (timeout 30 s)"
        );
        // Only worker 0's clients are left (the replacement workers start empty).
        assert_eq!(
            fetch.expect("count_sockets completed")[0],
            json!(f.on(0).len())
        );
    });
}

#[test]
fn binary_and_large_payloads_cross_workers_intact() {
    let c = cluster(&["--max-payload", "8000000"]);
    rt().block_on(async {
        let mut f = Fleet::connect(c.addr, 6, "/").await;
        let from = f.on(0)[0];
        let all: Vec<usize> = (0..6).collect();
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let bin = sio_client::binary(&bytes);
        let p = json!({"t": 1, "blob": bin, "list": [sio_client::binary([0, 255, 1]), "text"]});
        f.clients[from]
            .emit("/", "to_all", vec![p.clone()])
            .await
            .unwrap();
        f.expect_only(&all, &p).await;

        let big_text = "é".repeat(500_000); // 1 MB of UTF-8
        let p = json!({"t": 2, "p": big_text});
        f.clients[from]
            .emit("/", "to_all", vec![p.clone()])
            .await
            .unwrap();
        f.expect_only(&all, &p).await;

        // Many args with binary, echoed back by the worker holding the socket.
        let args = vec![
            json!("a"),
            sio_client::binary(&bytes[..1000]),
            json!({"k": [1, 2, 3]}),
        ];
        f.clients[from]
            .emit("/", "message", args.clone())
            .await
            .unwrap();
        let ev = f.clients[from]
            .next_event_named("message-back", T)
            .await
            .unwrap();
        assert_eq!(ev.args, args);
    });
}

#[test]
fn publish_order_is_kept_across_workers() {
    let c = cluster(&[]);
    rt().block_on(async {
        let mut f = Fleet::connect(c.addr, 9, "/").await;
        let from = f.on(1)[0];
        // Bursts stay under socketioxide's per-socket buffer (128 packets): beyond it the
        // engine drops broadcasts to that socket by design.
        const N: u64 = 400;
        for s in 0..N {
            f.clients[from]
                .emit("/", "to_all", vec![json!({"s": s})])
                .await
                .unwrap();
            if s % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for i in 0..9 {
            let mut seen = Vec::new();
            while seen.len() < N as usize {
                let ev = f.clients[i].next_event_named("msg", T).await.unwrap();
                seen.push(ev.args[0]["s"].as_u64().unwrap());
            }
            let sorted: BTreeSet<u64> = seen.iter().copied().collect();
            assert_eq!(
                sorted.len(),
                N as usize,
                "client {i} lost or duplicated messages"
            );
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "client {i} (worker {}) saw them out of order",
                f.worker[i]
            );
        }
    });
}
