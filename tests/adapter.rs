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

/// Namespaces every semantic is checked on: the root, a static one and a dynamic one
/// (`/dyn/{name}` in the test app).
const NAMESPACES: [&str; 3] = ["/", "/custom", "/dyn/x"];

struct Fleet {
    ns: String,
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
        Fleet {
            ns: ns.to_string(),
            clients,
            worker,
        }
    }

    fn on(&self, w: usize) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|i| self.worker[*i] == w)
            .collect()
    }

    /// Worker indices of `who`, deduplicated.
    fn workers_of(&self, who: &[usize]) -> BTreeSet<usize> {
        who.iter().map(|i| self.worker[*i]).collect()
    }

    fn id(&self, i: usize) -> String {
        self.clients[i].socket_id(&self.ns).unwrap().to_string()
    }

    /// Sorted socket ids of `who`.
    fn ids(&self, who: &[usize]) -> Vec<String> {
        let mut ids: Vec<String> = who.iter().map(|i| self.id(*i)).collect();
        ids.sort();
        ids
    }

    async fn ack(&self, i: usize, event: &str, args: Vec<Value>) -> Value {
        let mut r = self.clients[i]
            .emit_with_ack(&self.ns, event, args, T)
            .await
            .unwrap_or_else(|e| panic!("{event} from client {i} on {}: {e}", self.ns));
        r.swap_remove(0)
    }

    async fn emit(&self, i: usize, event: &str, args: Vec<Value>) {
        self.clients[i]
            .emit(&self.ns, event, args)
            .await
            .unwrap_or_else(|e| panic!("{event} from client {i} on {}: {e}", self.ns));
    }

    /// Waits for a `msg` with `payload` on each client of `who`; then checks nobody else got it.
    async fn expect_only(&mut self, who: &[usize], payload: &Value) {
        for &i in who {
            let ev = self.clients[i]
                .next_event_named("msg", T)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "client {i} (worker {}, {}) missed {payload}: {e}",
                        self.worker[i], self.ns
                    )
                });
            assert_eq!(&ev.args[0], payload, "client {i}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, c) in self.clients.iter_mut().enumerate() {
            while let Some(ev) = c.try_next_event() {
                assert!(
                    !(ev.name == "msg" && &ev.args[0] == payload),
                    "client {i} (worker {}, {}) should not have received {payload}",
                    self.worker[i],
                    self.ns
                );
            }
        }
    }

    /// Waits until client `i` is disconnected from the namespace (or its connection closes).
    async fn expect_disconnected(&mut self, i: usize) {
        let ns = self.ns.clone();
        let c = &mut self.clients[i];
        let gone = tokio::time::timeout(T, async {
            loop {
                match c.next_message(T).await {
                    Ok(sio_client::Incoming::Disconnected { ns: n }) if n == ns => break,
                    Ok(sio_client::Incoming::Closed { .. }) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            gone.is_ok(),
            "client {i} (worker {}, {ns}) was not disconnected",
            self.worker[i]
        );
    }

    /// The server id of each worker, asked from one of its clients.
    async fn servers(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for w in 0..WORKERS {
            out.push(self.ack(self.on(w)[0], "server_id", vec![]).await);
        }
        let distinct: BTreeSet<String> = out.iter().map(|v| v.to_string()).collect();
        assert_eq!(distinct.len(), WORKERS, "one server id per worker: {out:?}");
        out
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

/// `SIGSTOP`/`SIGCONT`/`SIGKILL` to a worker of a cluster this test started.
fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a worker of the cluster
    // this test started (read from its own whoami just before).
    unsafe { libc::kill(pid, sig) };
}

#[test]
fn broadcasts_reach_every_worker() {
    let c = cluster(&[]);
    rt().block_on(async {
        for ns in NAMESPACES {
            let mut f = Fleet::connect(c.addr, CLIENTS, ns).await;
            broadcast_semantics(&mut f).await;
        }
    });
}

async fn broadcast_semantics(f: &mut Fleet) {
    let all: Vec<usize> = (0..CLIENTS).collect();
    let from = f.on(2)[0];

    // io.emit: everyone in the namespace, sender included.
    let p = json!({"t": 1, "s": 1, "p": "to_all", "ns": f.ns});
    f.emit(from, "to_all", vec![p.clone()]).await;
    f.expect_only(&all, &p).await;

    // socket.broadcast(): everyone but the sender, its own worker's sockets included.
    let p = json!({"t": 2, "s": 2, "p": "to_others", "ns": f.ns});
    f.emit(from, "to_others", vec![p.clone()]).await;
    let others: Vec<usize> = all.iter().copied().filter(|i| *i != from).collect();
    f.expect_only(&others, &p).await;

    // Volatile broadcast: delivered too when nothing is congested (the flag itself crossing
    // the bus is checked by the adapter's unit tests).
    let p = json!({"t": 3, "s": 3, "p": "volatile", "ns": f.ns});
    f.emit(from, "volatile_to_all", vec![p.clone()]).await;
    f.expect_only(&all, &p).await;

    // io.to(room) and except: members on every worker; a client on worker 0 receives a room
    // message sent from worker 2.
    let members: Vec<usize> = all.iter().copied().filter(|i| i % 4 == 0).collect();
    let vips: Vec<usize> = members.iter().copied().filter(|i| i % 8 == 0).collect();
    assert_eq!(f.workers_of(&members).len(), WORKERS, "members everywhere");
    assert_eq!(f.workers_of(&vips).len(), WORKERS, "vips everywhere");
    for &i in &members {
        assert_eq!(f.ack(i, "join", vec![json!("r")]).await, json!("ok"));
    }
    for &i in &vips {
        assert_eq!(f.ack(i, "join", vec![json!("vip")]).await, json!("ok"));
    }
    let sender = f.on(2).into_iter().find(|i| !members.contains(i)).unwrap();
    let p = json!({"t": 4, "s": 4, "p": "room", "ns": f.ns});
    f.emit(sender, "to_room", vec![json!("r"), p.clone()]).await;
    f.expect_only(&members, &p).await;

    let p = json!({"t": 5, "s": 5, "p": "except", "ns": f.ns});
    f.emit(
        sender,
        "to_room_except",
        vec![json!("r"), json!("vip"), p.clone()],
    )
    .await;
    let non_vip: Vec<usize> = members
        .iter()
        .copied()
        .filter(|i| !vips.contains(i))
        .collect();
    assert_eq!(f.workers_of(&non_vip).len(), WORKERS);
    f.expect_only(&non_vip, &p).await;

    // echo: only the sender.
    let p = json!({"t": 6, "s": 6, "p": "echo", "ns": f.ns});
    f.emit(sender, "echo", vec![p.clone()]).await;
    f.expect_only(&[sender], &p).await;
}

#[test]
fn acks_from_all_workers_are_collected_and_the_timeout_is_honoured() {
    let c = cluster(&[]);
    rt().block_on(async {
        let f = Fleet::connect(c.addr, CLIENTS, "/").await;
        let asker = f.on(1)[0];
        let r = f.ack(asker, "ack_all", vec![json!(5000)]).await;
        assert_eq!(
            r,
            json!({"acks": CLIENTS - 1, "timeouts": 0}),
            "every other socket answers"
        );

        // Clients that never answer, one on each worker: counted as timeouts once the timeout
        // passes, not before.
        let mut silent = Vec::new();
        let mut silent_workers = BTreeSet::new();
        for _ in 0..WORKERS {
            let cfg = ClientConfig::new(c.addr, Transport::WebSocket);
            let s = Client::connect(cfg).await.unwrap();
            let who = s.emit_with_ack("/", "whoami", vec![], T).await.unwrap();
            silent_workers.insert(who[0]["worker"].as_str().unwrap().to_string());
            silent.push(s);
        }
        assert_eq!(silent_workers.len(), WORKERS, "{silent_workers:?}");
        let started = Instant::now();
        let r = f.ack(asker, "ack_all", vec![json!(1500)]).await;
        let took = started.elapsed();
        assert_eq!(r, json!({"acks": CLIENTS - 1, "timeouts": WORKERS}));
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
fn ack_all_counts_every_socket_once_even_from_a_late_worker() {
    // Worker 2 is frozen past the 1 s ack timeout, then answers well within the 8 s request
    // timeout: its sockets' acks still arrive on the adapter's stream, and must be counted.
    let c = cluster(&["--request-timeout-ms", "8000"]);
    rt().block_on(async {
        let f = Fleet::connect(c.addr, CLIENTS, "/").await;
        let asker = f.on(0)[0];
        let late = f.ack(f.on(2)[0], "whoami", vec![]).await["pid"]
            .as_u64()
            .unwrap() as i32;
        signal(late, libc::SIGSTOP);
        let asked = f.clients[asker].emit_with_ack(
            "/",
            "ack_all",
            vec![json!(1000)],
            Duration::from_secs(30),
        );
        let resume = async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            signal(late, libc::SIGCONT);
            Instant::now()
        };
        let (asked, resumed) = tokio::join!(asked, resume);
        let r = asked.expect("ack_all completed")[0].clone();
        assert_eq!(
            r,
            json!({"acks": CLIENTS - 1, "timeouts": 0}),
            "every other socket is counted once, as an ack or a timeout"
        );
        let after = resumed.elapsed();
        assert!(
            after < Duration::from_secs(3),
            "completed {after:?} after the late worker resumed (request timeout 8 s)"
        );
    });
}

#[test]
fn remote_sockets_are_reachable_from_any_worker() {
    let c = cluster(&[]);
    rt().block_on(async {
        for ns in NAMESPACES {
            let mut f = Fleet::connect(c.addr, CLIENTS, ns).await;
            remote_semantics(&mut f).await;
        }
    });
}

async fn remote_semantics(f: &mut Fleet) {
    let asker = f.on(0)[0];
    let target = f.on(2)[0];
    let tid = f.id(target);
    let servers = f.servers().await;
    let ns = json!(f.ns);

    // fetch_sockets: every socket, with its data (id, server, namespace, rooms), from every
    // worker.
    assert_eq!(
        f.ack(asker, "count_sockets", vec![Value::Null]).await,
        json!(CLIENTS)
    );
    assert_eq!(f.ack(asker, "server_count", vec![]).await, json!(WORKERS));
    let all = f.ack(asker, "sockets", vec![Value::Null]).await;
    let mut expected: Vec<Value> = (0..CLIENTS)
        .map(|i| json!({"id": f.id(i), "rooms": [], "server": servers[f.worker[i]], "ns": ns}))
        .collect();
    expected.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    assert_eq!(all, json!(expected), "fetch_sockets data on {ns}");

    // Remote join / leave of a socket on another worker.
    assert_eq!(
        f.ack(asker, "remote_join", vec![json!(tid), json!("solo")])
            .await,
        json!("ok")
    );
    assert_eq!(
        f.ack(asker, "count_sockets", vec![json!("solo")]).await,
        json!(1)
    );
    let info = f.ack(asker, "sockets", vec![json!("solo")]).await;
    assert_eq!(
        info,
        json!([{"id": tid, "rooms": ["solo"], "server": servers[2], "ns": ns}])
    );
    let p = json!({"t": 1, "p": "solo", "ns": ns});
    f.emit(asker, "to_room", vec![json!("solo"), p.clone()])
        .await;
    f.expect_only(&[target], &p).await;
    assert_eq!(
        f.ack(asker, "remote_leave", vec![json!(tid), json!("solo")])
            .await,
        json!("ok")
    );
    assert_eq!(
        f.ack(asker, "count_sockets", vec![json!("solo")]).await,
        json!(0)
    );

    // Remote emit.
    let p = json!({"t": 2, "p": "direct", "ns": ns});
    assert_eq!(
        f.ack(asker, "remote_emit", vec![json!(tid), p.clone()])
            .await,
        json!("ok")
    );
    f.expect_only(&[target], &p).await;
    assert_eq!(
        f.ack(
            asker,
            "remote_emit",
            vec![json!("AAAAAAAAAAAAAAAA"), p.clone()]
        )
        .await,
        json!("not found")
    );

    // Remote disconnect.
    assert_eq!(f.ack(asker, "kick", vec![json!(tid)]).await, json!("ok"));
    f.expect_disconnected(target).await;
    assert_eq!(
        f.ack(asker, "count_sockets", vec![Value::Null]).await,
        json!(CLIENTS - 1)
    );
    assert_eq!(
        f.ack(asker, "kick", vec![json!(tid)]).await,
        json!("not found")
    );
}

#[test]
fn room_operations_apply_on_every_worker() {
    let c = cluster(&[]);
    rt().block_on(async {
        for ns in NAMESPACES {
            let mut f = Fleet::connect(c.addr, CLIENTS, ns).await;
            room_semantics(&mut f).await;
        }
    });
}

async fn room_semantics(f: &mut Fleet) {
    let asker = f.on(1)[0];
    // Members on every worker, the asker's own included.
    let src: Vec<usize> = (0..WORKERS)
        .flat_map(|w| f.on(w).into_iter().filter(|i| *i != asker).take(4))
        .collect();
    assert_eq!(
        f.workers_of(&src),
        (0..WORKERS).collect::<BTreeSet<_>>(),
        "source room members on every worker"
    );
    for &i in &src {
        assert_eq!(f.ack(i, "join", vec![json!("src")]).await, json!("ok"));
    }
    let outsider = f.on(2).into_iter().find(|i| !src.contains(i)).unwrap();
    assert_eq!(
        f.ack(outsider, "join", vec![json!("other")]).await,
        json!("ok")
    );
    assert_eq!(f.ack(asker, "rooms", vec![]).await, json!(["other", "src"]));
    let rooms_of = |f: &Fleet, who: &[usize], rooms: Value| -> Vec<(String, Value)> {
        f.ids(who)
            .into_iter()
            .map(|id| (id, rooms.clone()))
            .collect()
    };
    let sockets_in = async |f: &Fleet, room: &str| -> Vec<(String, Value)> {
        let list = f.ack(asker, "sockets", vec![json!(room)]).await;
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap().to_string(), s["rooms"].clone()))
            .collect()
    };

    // io.to(src).join(dst): every socket in src, on every worker, also joins dst (asked from
    // each socket's own worker).
    assert_eq!(
        f.ack(asker, "room_to_room", vec![json!("src"), json!("dst")])
            .await,
        json!("ok")
    );
    assert_eq!(
        sockets_in(f, "dst").await,
        rooms_of(f, &src, json!(["dst", "src"]))
    );
    let p = json!({"p": "dst", "ns": f.ns});
    f.emit(asker, "to_room", vec![json!("dst"), p.clone()])
        .await;
    f.expect_only(&src, &p).await;

    // io.to(src).leave(dst): every member, on every worker.
    assert_eq!(
        f.ack(asker, "room_leave", vec![json!("src"), json!("dst")])
            .await,
        json!("ok")
    );
    assert_eq!(
        f.ack(asker, "count_sockets", vec![json!("dst")]).await,
        json!(0)
    );
    assert_eq!(
        sockets_in(f, "src").await,
        rooms_of(f, &src, json!(["src"]))
    );
    assert_eq!(f.ack(asker, "rooms", vec![]).await, json!(["other", "src"]));

    // io.to(src).disconnect(): every member, on every worker; nobody else.
    assert_eq!(
        f.ack(asker, "kick_room", vec![json!("src")]).await,
        json!("ok")
    );
    for &i in &src {
        f.expect_disconnected(i).await;
    }
    let rest: Vec<usize> = (0..CLIENTS).filter(|i| !src.contains(i)).collect();
    let left = f.ack(asker, "sockets", vec![Value::Null]).await;
    let left: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, f.ids(&rest));
    assert_eq!(f.ack(asker, "rooms", vec![]).await, json!(["other"]));
}

#[test]
fn namespaces_are_separate_and_dynamic_ones_work() {
    let c = cluster(&[]);
    rt().block_on(async {
        let mut custom = Fleet::connect(c.addr, 12, "/custom").await;
        let mut root = Fleet::connect(c.addr, 6, "/").await;
        let p = json!({"p": "custom only"});
        custom.emit(0, "to_all", vec![p.clone()]).await;
        custom.expect_only(&(0..12).collect::<Vec<_>>(), &p).await;
        root.expect_only(&[], &p).await;
        assert_eq!(
            custom.ack(0, "count_sockets", vec![Value::Null]).await,
            json!(12)
        );
        assert_eq!(
            root.ack(0, "count_sockets", vec![Value::Null]).await,
            json!(6)
        );

        // Rooms are per namespace: a room joined in /custom (on every worker) is not one of /.
        for i in [0, 1, 2] {
            assert_eq!(
                custom.ack(i, "join", vec![json!("c-room")]).await,
                json!("ok")
            );
        }
        assert_eq!(
            root.ack(0, "join", vec![json!("r-room")]).await,
            json!("ok")
        );
        for i in 0..3 {
            assert_eq!(
                custom.ack(custom.on(i)[0], "rooms", vec![]).await,
                json!(["c-room"])
            );
            assert_eq!(
                root.ack(root.on(i)[0], "rooms", vec![]).await,
                json!(["r-room"])
            );
        }
        assert_eq!(
            root.ack(1, "count_sockets", vec![json!("c-room")]).await,
            json!(0)
        );
        let p = json!({"p": "room of /custom"});
        root.emit(1, "to_room", vec![json!("c-room"), p.clone()])
            .await;
        root.expect_only(&[], &p).await;
        custom.expect_only(&[], &p).await;

        // A dynamic namespace exists on a worker only once a client connected to it there.
        let mut dynamic = Fleet::connect(c.addr, 9, "/dyn/alpha").await;
        assert_eq!(dynamic.ack(0, "server_count", vec![]).await, json!(WORKERS));
        assert_eq!(dynamic.ack(0, "rooms", vec![]).await, json!([]));
        let p = json!({"p": "dynamic"});
        dynamic.emit(4, "to_all", vec![p.clone()]).await;
        dynamic.expect_only(&(0..9).collect::<Vec<_>>(), &p).await;
        root.expect_only(&[], &p).await;
        assert_eq!(
            dynamic.ack(2, "count_sockets", vec![Value::Null]).await,
            json!(9)
        );
        let r = dynamic.ack(1, "ack_all", vec![json!(3000)]).await;
        assert_eq!(r, json!({"acks": 8, "timeouts": 0}));

        // A dynamic namespace that only one worker has: requests do not wait for the others.
        let mut lone = Fleet::connect_one(c.addr, "/dyn/beta").await;
        let started = Instant::now();
        assert_eq!(
            lone.ack(0, "count_sockets", vec![Value::Null]).await,
            json!(1)
        );
        assert_eq!(lone.ack(0, "server_count", vec![]).await, json!(1));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        lone.emit(0, "to_all", vec![json!("x")]).await;
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
            ns: ns.to_string(),
            worker: vec![who[0]["worker"].as_str().unwrap().parse().unwrap()],
            clients: vec![c],
        }
    }
}

#[test]
fn requests_complete_at_once_when_a_worker_dies_mid_request() {
    // A long request timeout, so "completed well before the timeout" is unmistakable.
    let c = cluster(&[
        "--request-timeout-ms",
        "30000",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let events = c.events();
    rt().block_on(async {
        let f = Fleet::connect(c.addr, CLIENTS, "/").await;
        let asker = f.on(0)[0];
        let pid_of = |w: usize| {
            let f = &f;
            async move {
                f.ack(f.on(w)[0], "whoami", vec![]).await["pid"]
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
            signal(doomed, libc::SIGKILL);
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
        events.wait_for("worker_restarting", 1, Duration::from_secs(5));

        // 2. A fetch_sockets is in flight when worker 1 dies: freeze it first so it cannot
        //    answer, then kill it. Meanwhile, the asker watches the server count: the dead
        //    worker leaves it at once, its replacement joins it once ready, and requests made
        //    while the replacement starts complete at once too.
        // Worker 2's replacement counts once it is ready.
        let started = Instant::now();
        while f.ack(asker, "server_count", vec![]).await != json!(3) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "worker 2's replacement was not counted within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let frozen = pid_of(1).await;
        signal(frozen, libc::SIGSTOP);
        // Frozen is not dead: still counted.
        assert_eq!(f.ack(asker, "server_count", vec![]).await, json!(3));
        let killed_at = std::sync::OnceLock::new();
        let fetch = async {
            let r = f.clients[asker]
                .emit_with_ack(
                    "/",
                    "count_sockets",
                    vec![Value::Null],
                    Duration::from_secs(40),
                )
                .await;
            (r, Instant::now())
        };
        let watcher = async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            signal(frozen, libc::SIGKILL);
            let killed = *killed_at.get_or_init(Instant::now);
            let mut dropped_after = None;
            let mut while_starting = Vec::new();
            loop {
                let n = f.ack(asker, "server_count", vec![]).await;
                let n = n.as_u64().unwrap_or_else(|| panic!("server_count: {n}"));
                assert!((2..=3).contains(&n), "server_count {n}");
                match (n, dropped_after) {
                    (2, None) => dropped_after = Some(killed.elapsed()),
                    (3, Some(_)) => break,
                    (3, None) => assert!(
                        killed.elapsed() < Duration::from_secs(2),
                        "the dead worker is still counted {:?} after the kill",
                        killed.elapsed()
                    ),
                    _ => {}
                }
                if dropped_after.is_some() {
                    let asked = Instant::now();
                    let n = f.ack(asker, "count_sockets", vec![Value::Null]).await;
                    while_starting.push((asked.elapsed(), n));
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "the replacement was not counted within 30 s"
                );
            }
            (dropped_after, while_starting)
        };
        let ((fetch, fetched_at), (dropped_after, while_starting)) = tokio::join!(fetch, watcher);
        let took = fetched_at.duration_since(*killed_at.get().unwrap());
        assert!(
            took < Duration::from_secs(5),
            "count_sockets took {took:?} after the kill (timeout 30 s)"
        );
        // Only worker 0's clients are left (the replacement workers start empty).
        let survivors = json!(f.on(0).len());
        assert_eq!(fetch.expect("count_sockets completed")[0], survivors);
        assert!(
            dropped_after.is_some_and(|d| d < Duration::from_secs(2)),
            "server count dropped to 2 after {dropped_after:?}"
        );
        assert!(!while_starting.is_empty());
        for (took, n) in while_starting {
            assert_eq!(n, survivors);
            assert!(
                took < Duration::from_secs(3),
                "a request made while the replacement started took {took:?} (timeout 30 s)"
            );
        }
        assert_eq!(f.ack(asker, "server_count", vec![]).await, json!(3));
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
        f.emit(from, "to_all", vec![p.clone()]).await;
        f.expect_only(&all, &p).await;

        let big_text = "é".repeat(500_000); // 1 MB of UTF-8
        let p = json!({"t": 2, "p": big_text});
        f.emit(from, "to_all", vec![p.clone()]).await;
        f.expect_only(&all, &p).await;

        // Many args with binary, echoed back by the worker holding the socket.
        let args = vec![
            json!("a"),
            sio_client::binary(&bytes[..1000]),
            json!({"k": [1, 2, 3]}),
        ];
        f.emit(from, "message", args.clone()).await;
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
            f.emit(from, "to_all", vec![json!({"s": s})]).await;
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
