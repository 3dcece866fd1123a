//! The worker's periodic upkeep: heartbeats to the primary, its load and descriptor capacity,
//! the reports behind `/status` and `/metrics`, and the sweep of expired polling sessions.

use super::*;

/// How often registered sessions are checked for expiry (a closed session leaves the primary's
/// table within this, and well within a second).
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Descriptors kept free below the worker's capacity report, for forwards and short-lived files.
const FD_MARGIN: u64 = 32;

pub(super) fn spawn_reporters(
    shared: &Arc<WorkerShared>,
    config: &Config,
    io: SocketIo<ClusterAdapter>,
    bus: ClusterDriver,
) {
    let every = Duration::from_millis(config.heartbeat_interval_ms.max(10));
    tokio::spawn(report_load(shared.clone()));
    tokio::spawn(heartbeat(shared.clone(), every));
    tokio::spawn(report_metrics(shared.clone(), every, io.clone(), bus));
    let rules = ExpiryRules {
        idle: Duration::from_millis(
            config.ping_interval_ms.unwrap_or(25_000)
                + config.ping_timeout_ms.unwrap_or(20_000)
                + 5_000,
        ),
        // socketioxide closes a session that connects no namespace within the connect timeout.
        connect_window: Duration::from_millis(config.connect_timeout_ms.unwrap_or(45_000) + 500),
    };
    tokio::spawn(sweep_leases(shared.clone(), io, rules));
}

/// Load: connections closed and descriptor room, soon after a close (closes within 2 ms go in
/// one report) and otherwise every 100 ms, only when it changed. Descriptors in use are counted
/// once a second, off the runtime thread.
async fn report_load(s: Arc<WorkerShared>) {
    let nofile = crate::supervisor::nofile_limit();
    let mut last = (0, u64::MAX);
    let mut extra = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    let mut counted_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = s.load_changed.notified() => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if (counted_at.elapsed() >= Duration::from_secs(1) || ticks == 0)
            && let Ok(Some(used)) = tokio::task::spawn_blocking(open_descriptors).await
        {
            // Descriptors that are not client connections: the app's files, sockets, the
            // runtime's own, forwards in flight.
            extra = used.saturating_sub(s.open.load(Ordering::Relaxed));
            counted_at = tokio::time::Instant::now();
        }
        ticks += 1;
        let capacity = nofile.saturating_sub(extra + FD_MARGIN);
        let closed = s.closed_total.load(Ordering::Relaxed);
        let closed_ips = std::mem::take(&mut *s.closed_ips.lock_unpoisoned());
        if (closed, capacity) != last || !closed_ips.is_empty() {
            last = (closed, capacity);
            // Split so each message stays under the channel's size limit.
            let mut chunks: Vec<Vec<std::net::IpAddr>> = closed_ips
                .chunks(MAX_SIDS_PER_MESSAGE)
                .map(<[_]>::to_vec)
                .collect();
            if chunks.is_empty() {
                chunks.push(Vec::new());
            }
            for closed_ips in chunks {
                s.control.send(
                    ToPrimary::Load {
                        closed_total: closed,
                        capacity,
                        closed_ips,
                    },
                    None,
                );
            }
        }
    }
}

/// Heartbeat: proves this runtime still runs tasks.
async fn heartbeat(s: Arc<WorkerShared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    let mut seq = 0;
    loop {
        tick.tick().await;
        seq += 1;
        s.control.send(
            ToPrimary::Heartbeat {
                seq,
                rss_bytes: resident_bytes(),
            },
            None,
        );
    }
}

/// Metrics report: sockets per namespace, traffic, descriptors, memory.
async fn report_metrics(
    s: Arc<WorkerShared>,
    every: Duration,
    io: SocketIo<ClusterAdapter>,
    bus: ClusterDriver,
) {
    let mut tick = tokio::time::interval(every);
    let mut sampler = report::Sampler::default();
    loop {
        tick.tick().await;
        let namespaces = sampler.sample(&io);
        let open_fds = tokio::task::spawn_blocking(open_descriptors)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        s.control.send(
            ToPrimary::Report(crate::ipc::message::WorkerReport {
                namespaces,
                bytes_in: s.stats.bytes_in.load(Ordering::Relaxed),
                bytes_out: s.stats.bytes_out.load(Ordering::Relaxed),
                events_in: s.events.received.load(Ordering::Relaxed),
                events_out: s.events.sent.load(Ordering::Relaxed),
                open_fds,
                rss_bytes: resident_bytes(),
                bus_up: bus.is_up(),
                adapter_timeouts: bus.request_timeouts().unwrap_or(0),
            }),
            None,
        );
    }
}

/// Lease sweeper: unregisters sessions that no longer need routing.
async fn sweep_leases(s: Arc<WorkerShared>, io: SocketIo<ClusterAdapter>, rules: ExpiryRules) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let nsps = io.nsps();
        let expired = s.leases.expire(rules, |sid| {
            let Ok(sid) = Sid::from_str(sid.as_str()) else {
                return false;
            };
            nsps.iter().any(|ns| ns.get_socket(sid).is_some())
        });
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "sessions no longer routed here");
            s.unregister(expired);
        }
    }
}

/// Descriptors open in this process (entries of `/proc/self/fd`, minus the one reading it).
fn open_descriptors() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}
