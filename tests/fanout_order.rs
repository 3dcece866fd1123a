//! Broadcasts under load keep their order per sender and lose nothing (issue 13's correctness
//! guard): senders on every worker emit `to_all` at a sustained rate while every client, on
//! every worker, checks what it receives.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use sio_client::{Client, ClientConfig, Transport};
use support::Start;

const WORKERS: usize = 2;
const CLIENTS: usize = 40;
const SENDERS_PER_WORKER: usize = 2;
/// Messages per sender.
const M: u64 = 400;
/// Messages per sender per 10 ms tick: 4 senders × 300/s = 1,200 broadcasts/s, 48,000
/// deliveries/s, for a bit more than a second.
const BURST: u64 = 3;

#[test]
fn broadcasts_from_every_worker_arrive_everywhere_in_order_and_complete() {
    let c = Start::testapp(&[
        "--workers",
        &WORKERS.to_string(),
        "--balance",
        "round-robin",
    ])
    .spawn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut clients = Vec::new();
        let mut worker = Vec::new();
        for _ in 0..CLIENTS {
            let cl = Client::connect(ClientConfig::new(c.addr, Transport::WebSocket))
                .await
                .expect("connect");
            let who = cl
                .emit_with_ack("/", "whoami", vec![], Duration::from_secs(5))
                .await
                .expect("whoami");
            worker.push(who[0]["worker"].as_str().unwrap().parse::<usize>().unwrap());
            clients.push(cl);
        }
        // Senders: the first SENDERS_PER_WORKER clients of each worker.
        let mut senders = Vec::new();
        for w in 0..WORKERS {
            let on_w: Vec<usize> = (0..CLIENTS).filter(|&i| worker[i] == w).collect();
            assert!(on_w.len() >= SENDERS_PER_WORKER, "worker {w}: {on_w:?}");
            senders.extend(on_w.into_iter().take(SENDERS_PER_WORKER));
        }
        let n_senders = senders.len() as u64;

        // Every client collects its `msg` events until it has them all (or 30 s pass).
        let mut collectors = Vec::new();
        let mut emitters = BTreeMap::new();
        for (i, mut cl) in clients.into_iter().enumerate() {
            if senders.contains(&i) {
                emitters.insert(i, cl.emitter());
            }
            collectors.push(tokio::spawn(async move {
                let mut got: Vec<(u64, u64)> = Vec::with_capacity((n_senders * M) as usize);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while (got.len() as u64) < n_senders * M {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match cl.next_event_named("msg", left).await {
                        Ok(ev) => got.push((
                            ev.args[0]["from"].as_u64().unwrap(),
                            ev.args[0]["s"].as_u64().unwrap(),
                        )),
                        Err(e) => return (got, Some(e.to_string())),
                    }
                }
                (got, None)
            }));
        }

        // Senders emit in bursts every 10 ms, all at once.
        let mut sends = Vec::new();
        for (k, (_, em)) in emitters.into_iter().enumerate() {
            sends.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut s = 0;
                while s < M {
                    tick.tick().await;
                    for _ in 0..BURST.min(M - s) {
                        em.emit("/", "to_all", vec![json!({"from": k, "s": s})])
                            .await
                            .expect("emit");
                        s += 1;
                    }
                }
            }));
        }
        for s in sends {
            s.await.unwrap();
        }

        for (i, h) in collectors.into_iter().enumerate() {
            let (got, err) = h.await.unwrap();
            let mut per: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for (from, s) in got {
                per.entry(from).or_default().push(s);
            }
            for k in 0..n_senders {
                let seen = per.remove(&k).unwrap_or_default();
                assert!(
                    seen.iter().copied().eq(0..M),
                    "client {i} (worker {}) from sender {k}: {} of {M} messages, in order: {}, \
                     first gap at {:?} ({err:?})",
                    worker[i],
                    seen.len(),
                    seen.windows(2).all(|w| w[0] < w[1]),
                    seen.iter().enumerate().find(|(j, s)| *j as u64 != **s),
                );
            }
            assert!(
                per.is_empty(),
                "client {i}: messages from unknown senders: {per:?}"
            );
        }
    });
}
