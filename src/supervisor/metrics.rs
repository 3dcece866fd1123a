//! The primary's counters, and what `/status`, `/metrics` and the health check make of them and
//! of the workers' reports.
//!
//! Counting costs one relaxed atomic add where it happens (a routed connection, a refused one,
//! a restart), and one histogram observation per hand-off. Everything else is computed when
//! asked: a scrape builds a fresh [`prometheus_client`] registry from these counters, the
//! roster and the last [`WorkerReport`] of every worker (sent once per heartbeat interval over
//! the control channel), so a scrape reflects the workers within one interval plus its own
//! latency. Every family is present in every scrape, with a zero sample for each known label
//! value, before its first event.

use crate::sync::{LockExt, RwLockExt};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::ipc::message::WorkerReport;

use super::Shared;
use super::slot::{Phase, WorkerHandle};

/// Why a connection (or a new session on a kept-alive one) went to the worker it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteReason {
    /// The request named a live session (`sid`): its owner.
    Sid,
    /// The sticky cookie named a ready worker.
    Cookie,
    /// A new session: the balancer's choice.
    Balance,
    /// The request named a session nobody owns (expired, or never existed): balanced, and
    /// answered as a single server would (400 Session ID unknown).
    UnknownSid,
    /// TLS: the first request cannot be read, the balancer picked the worker that terminates it.
    Tls,
    /// A kept-alive connection carried another worker's session: forwarded to its owner.
    Forwarded,
    /// A handshake on a kept-alive connection: balanced like a new connection.
    KeepAlive,
}

impl RouteReason {
    const ALL: [RouteReason; 7] = [
        RouteReason::Sid,
        RouteReason::Cookie,
        RouteReason::Balance,
        RouteReason::UnknownSid,
        RouteReason::Tls,
        RouteReason::Forwarded,
        RouteReason::KeepAlive,
    ];

    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RouteReason::Sid => "sid",
            RouteReason::Cookie => "cookie",
            RouteReason::Balance => "balance",
            RouteReason::UnknownSid => "unknown_sid",
            RouteReason::Tls => "tls_balance",
            RouteReason::Forwarded => "forwarded",
            RouteReason::KeepAlive => "keepalive_balance",
        }
    }
}

/// Why the primary turned a connection (or a new session) away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectReason {
    /// No complete request head within `--head-timeout-ms` (408).
    HeadTimeout,
    /// A head over `--max-head-bytes` (431).
    HeadTooBig,
    /// Not HTTP/1.x (400).
    BadHead,
    /// The client closed (or failed) before sending a whole head.
    ClientClosed,
    /// `--proxy-protocol` and no valid PROXY header.
    ProxyProtocol,
    /// Plain HTTP on the TLS port (400).
    PlainOnTls,
    /// `--max-pending-heads` connections were already waiting for their head (503).
    Pending,
    /// Every worker at `--max-connections-per-worker` or its descriptor limit (503).
    CapWorker,
    /// `--max-connections` reached (503).
    CapCluster,
    /// `--max-connections-per-ip` reached (503).
    CapIp,
    /// No worker ready, or the chosen one not taking connections (503).
    NoWorker,
}

impl RejectReason {
    const ALL: [RejectReason; 11] = [
        RejectReason::HeadTimeout,
        RejectReason::HeadTooBig,
        RejectReason::BadHead,
        RejectReason::ClientClosed,
        RejectReason::ProxyProtocol,
        RejectReason::PlainOnTls,
        RejectReason::Pending,
        RejectReason::CapWorker,
        RejectReason::CapCluster,
        RejectReason::CapIp,
        RejectReason::NoWorker,
    ];

    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RejectReason::HeadTimeout => "head_timeout",
            RejectReason::HeadTooBig => "head_too_big",
            RejectReason::BadHead => "bad_head",
            RejectReason::ClientClosed => "client_closed",
            RejectReason::ProxyProtocol => "proxy_protocol",
            RejectReason::PlainOnTls => "plain_on_tls",
            RejectReason::Pending => "pending",
            RejectReason::CapWorker => "cap_worker",
            RejectReason::CapCluster => "cap_cluster",
            RejectReason::CapIp => "cap_ip",
            RejectReason::NoWorker => "no_worker",
        }
    }

    /// The reason for a refusal by a cap.
    pub(crate) fn of_refusal(r: crate::ipc::message::Refusal) -> Self {
        use crate::ipc::message::Refusal;
        match r {
            Refusal::WorkerFull => RejectReason::CapWorker,
            Refusal::ClusterFull => RejectReason::CapCluster,
            Refusal::IpFull => RejectReason::CapIp,
        }
    }

    /// The reason for a head the primary could not use.
    pub(crate) fn of_peek(e: &super::peek::PeekError) -> Self {
        use super::peek::PeekError;
        match e {
            PeekError::Timeout => RejectReason::HeadTimeout,
            PeekError::TooLarge(_) => RejectReason::HeadTooBig,
            PeekError::Malformed(_) => RejectReason::BadHead,
            PeekError::Closed | PeekError::Io(_) => RejectReason::ClientClosed,
        }
    }
}

/// Why a worker process was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartCause {
    /// It exited (crashed, was killed from outside) while serving.
    Exit,
    /// It stopped sending heartbeats and was killed.
    Hung,
    /// It did not become ready within `--ready-timeout-ms` and was killed.
    StartTimeout,
    /// Over `--worker-memory-limit-mb`: rolled.
    Memory,
    /// A rolling reload (SIGHUP).
    Reload,
}

impl RestartCause {
    const ALL: [RestartCause; 5] = [
        RestartCause::Exit,
        RestartCause::Hung,
        RestartCause::StartTimeout,
        RestartCause::Memory,
        RestartCause::Reload,
    ];

    /// The `cause` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RestartCause::Exit => "exit",
            RestartCause::Hung => "hung",
            RestartCause::StartTimeout => "start_timeout",
            RestartCause::Memory => "memory",
            RestartCause::Reload => "reload",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The cause a kill was made for, stored in a worker's handle (0: none).
    pub(crate) fn code(self) -> u8 {
        self.index() as u8 + 1
    }

    /// The cause stored by [`RestartCause::code`], if any.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// The primary's own counters.
#[derive(Debug)]
pub(crate) struct Metrics {
    routed: [AtomicU64; RouteReason::ALL.len()],
    rejected: [AtomicU64; RejectReason::ALL.len()],
    restarts: [AtomicU64; RestartCause::ALL.len()],
    /// Replacements per slot (any cause), for `/status`.
    slot_restarts: Mutex<Vec<u64>>,
    /// Accept → descriptor queued for its worker.
    handoff: Histogram,
    /// From the first moment of SIGTERM/SIGINT until exit.
    pub draining: AtomicBool,
}

impl Metrics {
    /// Counters for `slots` worker slots, all at zero.
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            routed: Default::default(),
            rejected: Default::default(),
            restarts: Default::default(),
            slot_restarts: Mutex::new(vec![0; slots]),
            // 20 µs .. ~0.33 s.
            handoff: Histogram::new(exponential_buckets(20e-6, 2.0, 15)),
            draining: AtomicBool::new(false),
        }
    }

    /// Counts a routing decision.
    pub(crate) fn routed(&self, reason: RouteReason) {
        let i = RouteReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.routed[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rejection.
    pub(crate) fn rejected(&self, reason: RejectReason) {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a worker replaced in `slot`.
    pub(crate) fn restarted(&self, slot: usize, cause: RestartCause) {
        self.restarts[cause.index()].fetch_add(1, Ordering::Relaxed);
        let mut per_slot = self.slot_restarts.lock_unpoisoned();
        if let Some(n) = per_slot.get_mut(slot) {
            *n += 1;
        }
    }

    /// Records how long a connection took from accept to hand-off.
    pub(crate) fn handed_off(&self, took: Duration) {
        self.handoff.observe(took.as_secs_f64());
    }

    fn slot_restarts(&self, slot: usize) -> u64 {
        self.slot_restarts
            .lock_unpoisoned()
            .get(slot)
            .copied()
            .unwrap_or(0)
    }
}

/// A worker's phase as `/status` names it.
fn state_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Ready => "ready",
        Phase::Draining => "draining",
        Phase::Gone => "gone",
    }
}

/// One worker in `/status`.
#[derive(Debug, Serialize)]
pub(crate) struct WorkerStatus {
    /// Slot 0..N.
    pub index: usize,
    /// OS process id.
    pub pid: u32,
    /// How many reloads the primary had done when it started this worker.
    pub generation: u64,
    /// `starting`, `ready`, `draining`.
    pub state: &'static str,
    /// Seconds since it was started.
    pub uptime_s: f64,
    /// Open connections, as the primary counts them.
    pub connections: u64,
    /// Socket.IO sockets connected, all namespaces (from its last report).
    pub sessions: u64,
    /// Resident memory, bytes (from its last report).
    pub rss_bytes: u64,
    /// Workers replaced in this slot so far (any cause).
    pub restarts: u64,
}

/// The body of `/status`.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterStatus {
    /// Every worker process, by slot.
    pub workers: Vec<WorkerStatus>,
    /// `ipc` or `redis`.
    pub adapter: &'static str,
    /// Shutting down (SIGTERM/SIGINT received).
    pub draining: bool,
    /// The crate's version.
    pub version: &'static str,
    /// The primary's process id.
    pub pid: u32,
}

fn adapter_name(shared: &Shared) -> &'static str {
    match shared.config.adapter {
        crate::config::AdapterKind::Ipc => "ipc",
        crate::config::AdapterKind::Redis => "redis",
    }
}

fn handles(shared: &Shared) -> Vec<std::sync::Arc<WorkerHandle>> {
    let roster = shared.roster.read_unpoisoned();
    let mut hs: Vec<_> = roster.iter().cloned().collect();
    hs.sort_by_key(|h| (h.slot, h.member));
    hs
}

fn report_of(h: &WorkerHandle) -> WorkerReport {
    h.report.lock_unpoisoned().clone().unwrap_or_default()
}

/// `/status`.
pub(crate) fn status(shared: &Shared) -> ClusterStatus {
    let workers = handles(shared)
        .iter()
        .map(|h| {
            let report = report_of(h);
            WorkerStatus {
                index: h.slot,
                pid: h.pid,
                generation: h.generation,
                state: state_name(h.phase()),
                uptime_s: (h.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                connections: h.load(),
                sessions: report.namespaces.iter().map(|n| n.connected).sum(),
                rss_bytes: h.rss.load(Ordering::Relaxed).max(report.rss_bytes),
                restarts: shared.metrics.slot_restarts(h.slot),
            }
        })
        .collect();
    ClusterStatus {
        workers,
        adapter: adapter_name(shared),
        draining: shared.metrics.draining.load(Ordering::Relaxed),
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
    }
}

/// Whether the cluster takes traffic, and why not: at least one worker ready, not draining,
/// and in Redis mode a worker whose Redis connection is up.
pub(crate) fn readiness(shared: &Shared) -> (bool, &'static str) {
    if shared.metrics.draining.load(Ordering::Relaxed) {
        return (false, "draining");
    }
    let ready: Vec<_> = handles(shared)
        .into_iter()
        .filter(|h| h.phase() == Phase::Ready)
        .collect();
    if ready.is_empty() {
        return (false, "no worker is ready");
    }
    if shared.config.adapter == crate::config::AdapterKind::Redis
        && !ready.iter().any(|h| {
            // Before its first report a worker just connected to Redis (it does so to start).
            h.report.lock_unpoisoned().as_ref().is_none_or(|r| r.bus_up)
        })
    {
        return (false, "the Redis connection is down");
    }
    (true, "ready")
}

/// The health check's status and JSON body (`/readyz`, and `--health-path` on the main port).
pub(crate) fn health(shared: &Shared) -> (u16, String) {
    let (ok, why) = readiness(shared);
    let roster = shared.roster.read_unpoisoned();
    let ready = roster.count(Phase::Ready);
    let total = roster.iter().count();
    drop(roster);
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "reason": why,
        "workers_ready": ready,
        "workers": total,
        "draining": shared.metrics.draining.load(Ordering::Relaxed),
    });
    (if ok { 200 } else { 503 }, body.to_string())
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn worker_label(h: &WorkerHandle) -> String {
    h.slot.to_string()
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `/metrics`: the Prometheus (OpenMetrics) text of the whole cluster.
pub(crate) fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let mut reg = Registry::default();
    let hs: Vec<_> = handles(shared)
        .into_iter()
        .filter(|h| h.phase() != Phase::Gone)
        .collect();

    // Socket.IO, per worker (and namespace).
    let connected = gauge_family(
        &mut reg,
        "socket_io_connected",
        "Socket.IO sockets connected, per worker and namespace",
    );
    let connects = counter_family(
        &mut reg,
        "socket_io_connect",
        "Socket.IO namespace connects (sampled each heartbeat interval: a socket that connects and disconnects between two samples is not counted)",
    );
    let disconnects = counter_family(
        &mut reg,
        "socket_io_disconnect",
        "Socket.IO namespace disconnects (sampled like socket_io_connect_total)",
    );
    let events_in = counter_family(
        &mut reg,
        "socket_io_events_received",
        "Socket.IO events (EVENT and BINARY_EVENT packets) received from clients, websocket and polling",
    );
    let events_out = counter_family(
        &mut reg,
        "socket_io_events_sent",
        "Socket.IO events sent to clients, websocket and polling (a broadcast counts once per client)",
    );
    let bytes_in = counter_family(
        &mut reg,
        "socket_io_receive_bytes",
        "Bytes read from client connections (HTTP and websocket, TLS records included)",
    );
    let bytes_out = counter_family(
        &mut reg,
        "socket_io_transmit_bytes",
        "Bytes written to client connections",
    );
    let rss = gauge_family(
        &mut reg,
        "process_resident_memory_bytes",
        "Resident memory of each process of the cluster",
    );
    let fds = gauge_family(
        &mut reg,
        "process_open_fds",
        "Open file descriptors of each process of the cluster",
    );
    let adapter_timeouts = counter_family(
        &mut reg,
        "sio_cluster_adapter_request_timeouts",
        "Adapter requests across workers (fetch_sockets, rooms, broadcasts with acks...) that ended at their timeout with answers missing (IPC bus; 0 with --adapter redis)",
    );
    let conns = gauge_family(
        &mut reg,
        "sio_cluster_worker_connections",
        "Open connections per worker, as the primary counts them",
    );
    for h in &hs {
        let w = worker_label(h);
        let r = report_of(h);
        if r.namespaces.is_empty() {
            // Before its first report: the main namespace at zero, so every family has a sample.
            let labels = vec![("worker", w.clone()), ("namespace", "/".into())];
            connected.get_or_create(&labels).set(0);
            connects.get_or_create(&labels).inc_by(0);
            disconnects.get_or_create(&labels).inc_by(0);
        }
        for ns in &r.namespaces {
            let labels = vec![("worker", w.clone()), ("namespace", ns.path.clone())];
            connected
                .get_or_create(&labels)
                .set(gauge_value(ns.connected));
            connects.get_or_create(&labels).inc_by(ns.connects);
            disconnects.get_or_create(&labels).inc_by(ns.disconnects);
        }
        let wl = vec![("worker", w.clone())];
        events_in.get_or_create(&wl).inc_by(r.events_in);
        adapter_timeouts
            .get_or_create(&wl)
            .inc_by(r.adapter_timeouts);
        events_out.get_or_create(&wl).inc_by(r.events_out);
        bytes_in.get_or_create(&wl).inc_by(r.bytes_in);
        bytes_out.get_or_create(&wl).inc_by(r.bytes_out);
        rss.get_or_create(&wl)
            .set(gauge_value(h.rss.load(Ordering::Relaxed).max(r.rss_bytes)));
        fds.get_or_create(&wl).set(gauge_value(r.open_fds));
        conns.get_or_create(&wl).set(gauge_value(h.load()));
    }
    let primary = vec![("worker", "primary".to_owned())];
    rss.get_or_create(&primary)
        .set(gauge_value(crate::worker::resident_bytes()));
    fds.get_or_create(&primary)
        .set(gauge_value(open_fds().unwrap_or(0)));

    // The primary's own.
    let routed = counter_family(
        &mut reg,
        "sio_cluster_routed",
        "Connections (and new sessions on kept-alive connections) routed to a worker, by reason",
    );
    for (i, r) in RouteReason::ALL.iter().enumerate() {
        routed
            .get_or_create(&vec![("reason", r.label().into())])
            .inc_by(m.routed[i].load(Ordering::Relaxed));
    }
    let rejected = counter_family(
        &mut reg,
        "sio_cluster_rejected",
        "Connections or new sessions turned away by the primary, by reason",
    );
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        rejected
            .get_or_create(&vec![("reason", r.label().into())])
            .inc_by(m.rejected[i].load(Ordering::Relaxed));
    }
    let restarts = counter_family(
        &mut reg,
        "sio_cluster_worker_restarts",
        "Worker processes replaced, by cause",
    );
    for (i, c) in RestartCause::ALL.iter().enumerate() {
        restarts
            .get_or_create(&vec![("cause", c.label().into())])
            .inc_by(m.restarts[i].load(Ordering::Relaxed));
    }
    let ready = Gauge::<i64>::default();
    ready.set(gauge_value(
        hs.iter().filter(|h| h.phase() == Phase::Ready).count() as u64,
    ));
    reg.register(
        "sio_cluster_workers_ready",
        "Workers taking new sessions",
        ready,
    );
    let draining = Gauge::<i64>::default();
    draining.set(i64::from(m.draining.load(Ordering::Relaxed)));
    reg.register(
        "sio_cluster_draining",
        "1 from SIGTERM/SIGINT until exit",
        draining,
    );
    reg.register(
        "sio_cluster_handoff_seconds",
        "Time from accept to the descriptor queued for its worker",
        m.handoff.clone(),
    );
    let bus = shared.hub.stats();
    let bus_msgs = counter_family(
        &mut reg,
        "sio_cluster_bus_messages",
        "Adapter messages through the primary's IPC bus (in: from workers, out: to workers, dropped: a full queue); 0 with --adapter redis",
    );
    let bus_bytes = counter_family(
        &mut reg,
        "sio_cluster_bus_bytes",
        "Bytes of adapter messages through the primary's IPC bus",
    );
    for (dir, msgs, bytes) in [
        ("in", bus.received, bus.received_bytes),
        ("out", bus.relayed, bus.relayed_bytes),
        ("dropped", bus.dropped, bus.dropped_bytes),
    ] {
        let l = vec![("direction", dir.to_owned())];
        bus_msgs.get_or_create(&l).inc_by(msgs);
        bus_bytes.get_or_create(&l).inc_by(bytes);
    }

    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

/// Descriptors open in the primary.
fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_cause_codes_round_trip() {
        for c in RestartCause::ALL {
            assert_eq!(RestartCause::from_code(c.code()), Some(c));
        }
        assert_eq!(RestartCause::from_code(0), None);
        assert_eq!(RestartCause::from_code(200), None);
    }

    #[test]
    fn labels_are_distinct() {
        let mut l: Vec<_> = RouteReason::ALL.iter().map(|r| r.label()).collect();
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), RouteReason::ALL.len());
        let mut l: Vec<_> = RejectReason::ALL.iter().map(|r| r.label()).collect();
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), RejectReason::ALL.len());
    }
}
