//! `fanout` and `rooms`: senders emit `to_all` (or `to_room`) at a fixed total rate for a few
//! seconds per step, at rising rates; every connection counts the `msg` events it receives and
//! their latency (receive time − payload `t`, one monotonic clock in this process).
//!
//! Each connection is one task owning its socket ([`WsConn`]); the only per-message work is
//! finding `"t"` and recording into the connection's own histogram (one uncontended lock per
//! `read()`, not per message). A delivery is attributed to the step its `t` falls in, so late
//! deliveries never inflate the next step. A step's numbers are taken when all expected
//! deliveries arrived or the drain deadline passed; deliveries of that step arriving later are
//! reported as `late` (they count as lost in the step's loss).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::common::{Common, Failures, argv, connect_many};
use crate::procs::{CpuUse, Target};
use crate::stats::{LatHist, Summary, round3};
use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsConn, now_us};

/// Options of both broadcast scenarios.
#[derive(Debug, Clone, Args)]
pub struct StepArgs {
    /// Total send rates (messages/s over all senders), one step each, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,200,500,1000,2000,3000,4000"
    )]
    pub rates: Vec<u32>,
    /// Seconds of sending per step.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Longest wait after a step for its deliveries, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub drain_secs: f64,
    /// Padding characters in each payload's "p".
    #[arg(long, default_value_t = 32)]
    pub padding: usize,
    /// Connection attempts in flight while setting up.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// A step passes with zero loss and p99 below this (ms).
    #[arg(long, default_value_t = 100.0)]
    pub pass_p99_ms: f64,
    /// Stop ramping after a step losing more than this (%) ...
    #[arg(long, default_value_t = 5.0)]
    pub stop_loss_pct: f64,
    /// ... or with a p99 above this (ms).
    #[arg(long, default_value_t = 1000.0)]
    pub stop_p99_ms: f64,
    /// Keep ramping through failing steps.
    #[arg(long)]
    pub no_stop: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Receiving-only connections.
    #[arg(long, default_value_t = 1000)]
    pub receivers: usize,
    /// Connections that emit `to_all` (they receive too).
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Receive with `sio-client` (a driver task, a channel and a JSON value per event) instead
    /// of the lean client, to compare their costs.
    #[arg(long)]
    pub sio_client_receivers: bool,
    /// Ask every connection `whoami` after connecting and report latency per worker too
    /// (`by_worker` in each step; the sender's worker is `sender_workers`): tells the sender's
    /// own worker's deliveries from those relayed to the others.
    #[arg(long)]
    pub by_worker: bool,
    #[command(flatten)]
    pub steps: StepArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RoomsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections, all in rooms.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub group: usize,
    /// Members that emit `to_room` to their own room, spread over the rooms
    /// (default: one per room).
    #[arg(long)]
    pub senders: Option<usize>,
    #[command(flatten)]
    pub steps: StepArgs,
}

/// A connection of the run: the lean client, or (receivers only, for comparison) `sio-client`.
pub enum Conn {
    Lean(WsConn),
    SioClient(Box<sio_client::Client>),
}

/// What a sender emits.
#[derive(Debug, Clone)]
enum Emit {
    ToAll,
    ToRoom(String),
}

struct Sender {
    index: usize,
    of: usize,
    emit: Emit,
    /// Deliveries expected per message sent.
    weight: u64,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    step: usize,
    /// Messages per second for each sender.
    rate: f64,
    start: Instant,
    end: Instant,
}

struct Shared {
    /// Start of each step, µs on the [`now_us`] clock; `u64::MAX` until it starts.
    starts: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    expected: Vec<AtomicU64>,
    ended: Mutex<Failures>,
}

impl Shared {
    fn new(n: usize) -> Self {
        let v = |x: u64| (0..n).map(|_| AtomicU64::new(x)).collect();
        Shared {
            starts: v(u64::MAX),
            sent: v(0),
            expected: v(0),
            ended: Mutex::new(Failures::new()),
        }
    }

    #[inline]
    fn step_of(&self, t: u64) -> Option<usize> {
        (0..self.starts.len())
            .rev()
            .find(|&k| self.starts[k].load(Ordering::Relaxed) <= t)
    }

    fn end(&self, reason: String) {
        *self
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// One connection's latencies and delivery counts, per step (histograms are allocated on
/// first use and taken by the controller; counts stay, for the drain check).
struct ConnStats {
    steps: Vec<Option<Box<LatHist>>>,
    delivered: Vec<u64>,
}

impl ConnStats {
    fn new(n: usize) -> Self {
        ConnStats {
            steps: (0..n).map(|_| None).collect(),
            delivered: vec![0; n],
        }
    }

    #[inline]
    fn record(&mut self, step: usize, v: u64) {
        self.steps[step]
            .get_or_insert_with(|| Box::new(LatHist::new()))
            .record(v);
        self.delivered[step] += 1;
    }
}

/// Parses every buffered message: records `msg` latencies, answers pings.
/// `Err` = the connection is over.
fn process(ws: &mut WsConn, shared: &Shared, stats: &Mutex<ConnStats>) -> Result<(), String> {
    let now = now_us();
    let mut guard = None;
    loop {
        let m = match ws.next_buffered() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => return Err(e.kind()),
        };
        match m.opcode {
            OP_TEXT => {
                let p = ws.payload();
                if let Some(t) = ws::msg_timestamp(p) {
                    let Some(k) = shared.step_of(t) else { continue };
                    guard
                        .get_or_insert_with(|| stats.lock().unwrap_or_else(|e| e.into_inner()))
                        .record(k, now.saturating_sub(t));
                } else if p == b"2" {
                    ws.queue(OP_TEXT, b"3");
                } else if p.first() == Some(&b'1') {
                    return Err("engine.io close packet".into());
                }
            }
            OP_PING => {
                let p = ws.payload().to_vec();
                ws.queue(OP_PONG, &p);
            }
            OP_CLOSE => return Err("websocket closed by the server".into()),
            _ => {}
        }
    }
    Ok(())
}

/// A receiving-only `sio-client` connection: every event goes through its driver task, its
/// channel and a `serde_json::Value`; `t` is read from the first argument and the latency is
/// taken at the client's own `received_at`.
async fn sio_client_loop(
    mut c: Box<sio_client::Client>,
    shared: &Shared,
    stats: &Mutex<ConnStats>,
) -> String {
    loop {
        match c.next_message(Duration::from_secs(3600)).await {
            Ok(sio_client::Incoming::Event(ev)) => {
                if ev.name != "msg" {
                    continue;
                }
                let Some(t) = ev
                    .args
                    .first()
                    .and_then(|a| a.get("t"))
                    .and_then(|t| t.as_u64())
                else {
                    continue;
                };
                let Some(k) = shared.step_of(t) else { continue };
                let at = ws::instant_us(ev.received_at);
                stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(k, at.saturating_sub(t));
            }
            Ok(sio_client::Incoming::Closed { reason }) => return reason,
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
    }
}

/// A receiving-only connection: read, process, answer pings.
async fn receiver_loop(ws: &mut WsConn, shared: &Shared, stats: &Mutex<ConnStats>) -> String {
    loop {
        match ws.fill().await {
            Ok(0) => return "connection closed by the server".to_owned(),
            Ok(_) => {}
            Err(e) => return format!("read: io {:?}", e.kind()),
        }
        if let Err(reason) = process(ws, shared, stats) {
            return reason;
        }
        if let Err(e) = ws.flush().await {
            return format!("write: io {:?}", e.kind());
        }
    }
}

fn write_payload(out: &mut String, emit: &Emit, t: u64, seq: u64, padding: &str) {
    use std::fmt::Write;
    out.clear();
    match emit {
        Emit::ToAll => out.push_str("42[\"to_all\","),
        Emit::ToRoom(r) => {
            out.push_str("42[\"to_room\",\"");
            out.push_str(r);
            out.push_str("\",");
        }
    }
    let _ = write!(out, "{{\"t\":{t},\"s\":{seq},\"p\":\"{padding}\"}}]");
}

/// How many messages a sender should have sent by `now` in a step: message j goes at
/// `s0 + j / rate` for every such instant before `end`.
fn due(now: Instant, s0: Instant, end: Instant, rate: f64) -> u64 {
    if now < s0 || rate <= 0.0 {
        return 0;
    }
    let total = ((end.saturating_duration_since(s0).as_secs_f64() * rate).ceil() as u64).max(1);
    let n = (now.duration_since(s0).as_secs_f64() * rate).floor() as u64 + 1;
    n.min(total)
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn conn_task(
    conn: Conn,
    shared: Arc<Shared>,
    stats: Arc<Mutex<ConnStats>>,
    sender: Option<(Sender, watch::Receiver<Option<Plan>>)>,
    padding: Arc<str>,
) {
    let mut ws = match conn {
        Conn::Lean(ws) => ws,
        Conn::SioClient(c) => {
            let reason = sio_client_loop(c, &shared, &stats).await;
            shared.end(reason);
            return;
        }
    };
    let (role, mut plan_rx) = match sender {
        Some((s, rx)) => (Some(s), Some(rx)),
        None => {
            let reason = receiver_loop(&mut ws, &shared, &stats).await;
            shared.end(reason);
            return;
        }
    };
    let mut plan: Option<Plan> = None;
    let mut s0 = Instant::now();
    let mut sent_in_step = 0u64;
    let mut seq = 0u64;
    let mut ticker: Option<tokio::time::Interval> = None;
    let mut text = String::with_capacity(128 + padding.len());
    let reason = loop {
        tokio::select! {
            r = ws.fill() => {
                match r {
                    Ok(0) => break "connection closed by the server".to_owned(),
                    Ok(_) => {}
                    Err(e) => break format!("read: io {:?}", e.kind()),
                }
                if let Err(reason) = process(&mut ws, &shared, &stats) {
                    break reason;
                }
                if let Err(e) = ws.flush().await {
                    break format!("write: io {:?}", e.kind());
                }
            }
            c = async { match &mut plan_rx { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                if c.is_err() {
                    plan_rx = None;
                    ticker = None;
                    continue;
                }
                let (Some(rx), Some(me)) = (&mut plan_rx, &role) else { continue };
                plan = *rx.borrow_and_update();
                ticker = None;
                if let Some(p) = plan {
                    // Spread the senders evenly over one period.
                    let period = 1.0 / p.rate;
                    s0 = p.start + Duration::from_secs_f64(period * me.index as f64 / me.of as f64);
                    sent_in_step = 0;
                    let mut iv = tokio::time::interval_at(
                        s0.into(),
                        Duration::from_secs_f64(period.max(0.001)),
                    );
                    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    ticker = Some(iv);
                }
            }
            () = tick(&mut ticker) => {
                let (Some(p), Some(me)) = (plan, &role) else { ticker = None; continue };
                let n = due(Instant::now(), s0, p.end, p.rate).saturating_sub(sent_in_step);
                for _ in 0..n {
                    write_payload(&mut text, &me.emit, now_us(), seq, &padding);
                    ws.queue(OP_TEXT, text.as_bytes());
                    seq += 1;
                }
                if n > 0 {
                    if let Err(e) = ws.flush().await {
                        break format!("write: io {:?}", e.kind());
                    }
                    sent_in_step += n;
                    shared.sent[p.step].fetch_add(n, Ordering::Relaxed);
                    shared.expected[p.step].fetch_add(n * me.weight, Ordering::Relaxed);
                }
                if Instant::now() >= p.end && due(p.end, s0, p.end, p.rate) <= sent_in_step {
                    ticker = None;
                }
            }
        }
    };
    shared.end(reason);
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub rate: u32,
    pub secs: f64,
    pub sent: u64,
    pub send_rate: f64,
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries of this step that arrived after its numbers were taken.
    pub late: u64,
    pub loss_pct: f64,
    pub deliveries_per_s: f64,
    pub latency: Summary,
    /// Latency per worker index (`--by-worker`), else empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_worker: BTreeMap<String, Summary>,
    pub drain_s: f64,
    /// Zero loss, p99 under the threshold, and the full rate was sent.
    pub pass: bool,
    pub cpu: CpuUse,
}

struct Setup {
    /// (setup index, worker index from `whoami` when asked, connection).
    conns: Vec<(usize, Conn)>,
    workers: BTreeMap<usize, String>,
    failures: Failures,
    secs: f64,
}

async fn setup(
    common: &Common,
    n: usize,
    concurrency: usize,
    room_of: Option<Arc<dyn Fn(usize) -> String + Send + Sync>>,
    sio_client_below: usize,
    whoami: bool,
) -> anyhow::Result<Setup> {
    let dest = common.dest()?;
    let path: Arc<str> = common.path.clone().into();
    let t0 = Instant::now();
    let (conns, failures) = connect_many(n, concurrency, common.connect_timeout(), move |i| {
        let path = path.clone();
        let dest = dest.clone();
        let room = room_of.as_ref().map(|f| f(i));
        async move {
            if i < sio_client_below {
                let mut cfg =
                    sio_client::ClientConfig::new(dest.addr, sio_client::Transport::WebSocket)
                        .path(&*path);
                if let Some(tls) = &dest.tls {
                    cfg = cfg.tls(tls.clone());
                }
                let c = sio_client::Client::connect(cfg).await.map_err(|e| {
                    ws::ConnError::Protocol {
                        phase: "sio-client connect",
                        text: e.to_string(),
                    }
                })?;
                return Ok((None, Conn::SioClient(Box::new(c))));
            }
            let (mut ws, _) = ws::connect_ws(&dest, &path).await?;
            let mut worker = None;
            if whoami {
                ws.send_text(b"429[\"whoami\"]")
                    .await
                    .map_err(|e| ws::ConnError::io("whoami", &e))?;
                worker = Some(
                    ws.read_text_until("whoami", |p| {
                        let rest = p.strip_prefix(b"439[")?;
                        let text = String::from_utf8_lossy(rest);
                        let w = text.split("\"worker\":\"").nth(1)?.split('"').next()?;
                        Some(Ok(w.to_owned()))
                    })
                    .await?,
                );
            }
            if let Some(room) = room {
                ws.send_text(format!("421[\"join\",\"{room}\"]").as_bytes())
                    .await
                    .map_err(|e| ws::ConnError::io("join", &e))?;
                ws.read_text_until("join", |p| p.starts_with(b"431").then_some(Ok(())))
                    .await?;
            }
            Ok((worker, Conn::Lean(ws)))
        }
    })
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let n_failed: u64 = failures.values().sum();
    eprintln!(
        "setup: {} connected in {secs:.2}s, {n_failed} failed",
        conns.len()
    );
    for (k, v) in &failures {
        eprintln!("  setup failure x{v}: {k}");
    }
    anyhow::ensure!(!conns.is_empty(), "no connection could be set up");
    let mut workers = BTreeMap::new();
    let conns = conns
        .into_iter()
        .map(|(i, (w, c))| {
            if let Some(w) = w {
                workers.insert(i, w);
            }
            (i, c)
        })
        .collect();
    Ok(Setup {
        conns,
        workers,
        failures,
        secs,
    })
}

/// Runs the steps with the connections of `setup`; `senders[i]` is the sender role of the
/// connection with setup index `i`, if any.
async fn run_steps(
    label: &str,
    a: &StepArgs,
    target: &Target,
    conns: Vec<(usize, Conn)>,
    workers: &BTreeMap<usize, String>,
    mut role_of: impl FnMut(usize) -> Option<Sender>,
) -> (Vec<StepResult>, Failures, bool) {
    let n_steps = a.rates.len();
    let shared = Arc::new(Shared::new(n_steps));
    let (plan_tx, plan_rx) = watch::channel::<Option<Plan>>(None);
    let padding: Arc<str> = "x".repeat(a.padding).into();
    let mut all_stats = Vec::with_capacity(conns.len());
    let mut worker_of = Vec::with_capacity(conns.len());
    let mut tasks = tokio::task::JoinSet::new();
    let mut n_senders = 0usize;
    for (i, ws) in conns {
        let stats = Arc::new(Mutex::new(ConnStats::new(n_steps)));
        all_stats.push(stats.clone());
        worker_of.push(workers.get(&i).cloned());
        let sender = role_of(i).map(|s| {
            n_senders += 1;
            (s, plan_rx.clone())
        });
        tasks.spawn(conn_task(
            ws,
            shared.clone(),
            stats,
            sender,
            padding.clone(),
        ));
    }
    drop(plan_rx);
    // Let the connect-time traffic settle.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The step's histogram over every connection, and per worker when known.
    let take_step_by_worker = |k: usize| {
        let mut h = LatHist::new();
        let mut by: BTreeMap<String, LatHist> = BTreeMap::new();
        for (s, w) in all_stats.iter().zip(&worker_of) {
            let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(x) = g.steps[k].take() {
                h.merge(&x);
                if let Some(w) = w {
                    by.entry(w.clone()).or_default().merge(&x);
                }
            }
        }
        (h, by)
    };
    let take_step = |k: usize| take_step_by_worker(k).0;

    let mut results: Vec<StepResult> = Vec::new();
    let mut stopped_early = false;
    for (k, &rate) in a.rates.iter().enumerate() {
        let start = Instant::now() + Duration::from_millis(50);
        let end = start + Duration::from_secs_f64(a.step_secs);
        let start_us = ws::instant_us(start);
        shared.starts[k].store(start_us, Ordering::Relaxed);
        let before = target.snapshot();
        let t_before = Instant::now();
        let _ = plan_tx.send(Some(Plan {
            step: k,
            rate: rate as f64 / n_senders.max(1) as f64,
            start,
            end,
        }));
        tokio::time::sleep_until(end.into()).await;
        // Drain: until every expected delivery arrived, or the deadline.
        let drain_deadline = end + Duration::from_secs_f64(a.drain_secs);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let exp = shared.expected[k].load(Ordering::Relaxed);
            let got: u64 = all_stats
                .iter()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).delivered[k])
                .sum();
            let sent = shared.sent[k].load(Ordering::Relaxed);
            let all_sent = sent as f64 >= rate as f64 * a.step_secs * 0.999;
            if (all_sent && got >= exp) || Instant::now() >= drain_deadline {
                break;
            }
        }
        let drain_s = Instant::now().saturating_duration_since(end).as_secs_f64();
        let _ = plan_tx.send(None);
        let cpu = target
            .snapshot()
            .cpu_since(&before, t_before.elapsed().as_secs_f64());
        let (h, by) = take_step_by_worker(k);
        let by_worker = by.into_iter().map(|(w, h)| (w, h.summary())).collect();
        let sent = shared.sent[k].load(Ordering::Relaxed);
        let expected = shared.expected[k].load(Ordering::Relaxed);
        let delivered = h.count();
        let loss = if expected == 0 {
            0.0
        } else {
            100.0 * expected.saturating_sub(delivered) as f64 / expected as f64
        };
        let lat = h.summary();
        let target_sent = rate as f64 * a.step_secs;
        let send_ok = sent as f64 >= target_sent * 0.99;
        let pass = send_ok && delivered >= expected && expected > 0 && lat.p99_ms < a.pass_p99_ms;
        let r = StepResult {
            rate,
            secs: a.step_secs,
            sent,
            send_rate: round3(sent as f64 / a.step_secs),
            expected,
            delivered,
            late: 0,
            loss_pct: round3(loss),
            deliveries_per_s: round3(delivered as f64 / a.step_secs),
            latency: lat,
            by_worker,
            drain_s: round3(drain_s),
            pass,
            cpu,
        };
        eprintln!(
            "{label} {rate:>6} msg/s: sent {sent} ({:.0}/s), delivered {delivered}/{expected} (loss {:.3}%), \
             {:.0} deliveries/s, p50 {:.1} ms p99 {:.1} ms max {:.1} ms, server CPU {:.2} cores \
             (primary {:.2}s, workers {:.2}s), loadgen {:.2}s, other {:.2}s{}",
            r.send_rate,
            r.loss_pct,
            r.deliveries_per_s,
            lat.p50_ms,
            lat.p99_ms,
            lat.max_ms,
            cpu.server_cores,
            cpu.primary_s,
            cpu.workers_s,
            cpu.loadgen_s,
            cpu.other_s,
            if pass { "  PASS" } else { "  fail" }
        );
        let bad = loss > a.stop_loss_pct
            || lat.p99_ms > a.stop_p99_ms
            || (sent as f64) < target_sent * 0.8;
        results.push(r);
        if bad && !a.no_stop && k + 1 < a.rates.len() {
            eprintln!("{label}: stopping the ramp after a failing step");
            stopped_early = true;
            break;
        }
    }
    // Deliveries that came after their step's numbers were taken.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (k, r) in results.iter_mut().enumerate() {
        r.late = take_step(k).count();
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let ended = std::mem::take(&mut *shared.ended.lock().unwrap_or_else(|e| e.into_inner()));
    (results, ended, stopped_early)
}

fn best(results: &[StepResult]) -> serde_json::Value {
    match results.iter().filter(|r| r.pass).max_by_key(|r| r.rate) {
        Some(r) => json!({
            "rate": r.rate,
            "deliveries_per_s": r.deliveries_per_s,
            "p50_ms": r.latency.p50_ms,
            "p99_ms": r.latency.p99_ms,
        }),
        None => serde_json::Value::Null,
    }
}

pub async fn run_fanout(a: FanoutArgs) -> anyhow::Result<serde_json::Value> {
    let target = a.common.target();
    let n = a.receivers + a.senders;
    let sio_below = if a.sio_client_receivers {
        a.receivers
    } else {
        0
    };
    let s = setup(
        &a.common,
        n,
        a.steps.connect_concurrency,
        None,
        sio_below,
        a.by_worker,
    )
    .await?;
    let sender_workers: Vec<&String> = s
        .workers
        .iter()
        .filter(|(i, _)| **i >= a.receivers)
        .map(|(_, w)| w)
        .collect();
    let sender_workers = json!(sender_workers);
    let sockets = s.conns.len() as u64;
    let (receivers, senders) = (a.receivers, a.senders);
    let mut sender_idx = 0usize;
    let n_senders = s.conns.iter().filter(|(i, _)| *i >= receivers).count();
    let workers = s.workers;
    let (results, ended, stopped_early) =
        run_steps("fanout", &a.steps, &target, s.conns, &workers, |i| {
            (i >= receivers).then(|| {
                sender_idx += 1;
                Sender {
                    index: sender_idx - 1,
                    of: n_senders,
                    emit: Emit::ToAll,
                    weight: sockets,
                }
            })
        })
        .await;
    let best = best(&results);
    eprintln!(
        "fanout: best sustained rate (no loss, p99 < {} ms): {best}",
        a.steps.pass_p99_ms
    );
    Ok(json!({
        "scenario": "fanout",
        "argv": argv(),
        "receivers": receivers,
        "receiver_client": if a.sio_client_receivers { "sio-client" } else { "lean" },
        "senders": senders,
        "sender_workers": sender_workers,
        "sockets": sockets,
        "padding": a.steps.padding,
        "step_secs": a.steps.step_secs,
        "setup": {"connected": sockets, "failures": s.failures, "secs": round3(s.secs)},
        "steps": results,
        "stopped_early": stopped_early,
        "connections_ended": ended,
        "best": best,
    }))
}

pub async fn run_rooms(a: RoomsArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(a.group >= 1, "--group must be at least 1");
    let target = a.common.target();
    let group = a.group;
    let rooms = a.clients.div_ceil(group);
    let room_name = move |i: usize| format!("r{}", i / group);
    let s = setup(
        &a.common,
        a.clients,
        a.steps.connect_concurrency,
        Some(Arc::new(room_name)),
        0,
        false,
    )
    .await?;
    // Actual membership (some connects may have failed).
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); rooms];
    for (i, _) in &s.conns {
        members[i / group].push(*i);
    }
    let want = a.senders.unwrap_or(rooms);
    let mut chosen: Vec<(usize, usize)> = Vec::new(); // (client index, room)
    'outer: for depth in 0..group {
        for (r, m) in members.iter().enumerate() {
            if chosen.len() >= want {
                break 'outer;
            }
            if let Some(&c) = m.get(depth) {
                chosen.push((c, r));
            }
        }
    }
    let n_senders = chosen.len();
    let sockets = s.conns.len();
    let mut pos = 0usize;
    let no_workers = BTreeMap::new();
    let (results, ended, stopped_early) =
        run_steps("rooms", &a.steps, &target, s.conns, &no_workers, |i| {
            let (_, r) = *chosen.iter().find(|(c, _)| *c == i)?;
            pos += 1;
            Some(Sender {
                index: pos - 1,
                of: n_senders,
                emit: Emit::ToRoom(format!("r{r}")),
                weight: members[r].len() as u64,
            })
        })
        .await;
    let best = best(&results);
    eprintln!(
        "rooms: best sustained rate (no loss, p99 < {} ms): {best}",
        a.steps.pass_p99_ms
    );
    Ok(json!({
        "scenario": "rooms",
        "argv": argv(),
        "clients": a.clients,
        "group": group,
        "rooms": rooms,
        "senders": n_senders,
        "padding": a.steps.padding,
        "step_secs": a.steps.step_secs,
        "setup": {"connected": sockets, "failures": s.failures, "secs": round3(s.secs)},
        "steps": results,
        "stopped_early": stopped_early,
        "connections_ended": ended,
        "best": best,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_counts() {
        let s0 = Instant::now();
        let end = s0 + Duration::from_secs(2);
        assert_eq!(due(s0 - Duration::from_millis(1), s0, end, 10.0), 0);
        assert_eq!(due(s0, s0, end, 10.0), 1);
        assert_eq!(due(s0 + Duration::from_millis(99), s0, end, 10.0), 1);
        assert_eq!(due(s0 + Duration::from_millis(100), s0, end, 10.0), 2);
        assert_eq!(due(end, s0, end, 10.0), 20);
        assert_eq!(due(end + Duration::from_secs(5), s0, end, 10.0), 20);
        assert_eq!(due(end, s0, end, 0.3), 1);
    }

    #[test]
    fn payloads() {
        let mut s = String::new();
        write_payload(&mut s, &Emit::ToAll, 1234, 5, "xx");
        assert_eq!(s, r#"42["to_all",{"t":1234,"s":5,"p":"xx"}]"#);
        write_payload(&mut s, &Emit::ToRoom("r7".into()), 1, 2, "");
        assert_eq!(s, r#"42["to_room","r7",{"t":1,"s":2,"p":""}]"#);
        // What the server sends back is read by the receivers.
        let back = r#"42["msg",{"t":1234,"s":5,"p":"xx"}]"#;
        assert_eq!(ws::msg_timestamp(back.as_bytes()), Some(1234));
    }

    #[test]
    fn steps_by_timestamp() {
        let sh = Shared::new(3);
        assert_eq!(sh.step_of(10), None);
        sh.starts[0].store(100, Ordering::Relaxed);
        sh.starts[1].store(200, Ordering::Relaxed);
        assert_eq!(sh.step_of(99), None);
        assert_eq!(sh.step_of(100), Some(0));
        assert_eq!(sh.step_of(199), Some(0));
        assert_eq!(sh.step_of(250), Some(1));
    }
}
