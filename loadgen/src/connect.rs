//! `connect`: N connections with bounded concurrency; connects/s, failures by kind, latency.
//! With `--repeat R` the batch is run R times (all closed and a pause between rounds): the
//! reported rate is the median round's, latencies and failures are over all rounds.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::common::{Common, Failures, argv, connect_many};
use crate::procs::Target;
use crate::stats::{LatHist, round3};
use crate::{polling, ws};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectTransport {
    /// Websocket only (`transport=websocket`).
    Websocket,
    /// Polling handshake, namespace CONNECT over polling, websocket upgrade.
    PollingUpgrade,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open (per round).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = ConnectTransport::Websocket)]
    pub transport: ConnectTransport,
    /// Rounds (the rate reported is the median round's).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Pause between rounds, seconds (the server drops the closed connections meanwhile).
    #[arg(long, default_value_t = 2.0)]
    pub pause_secs: f64,
}

struct Round {
    ok: usize,
    failed: u64,
    wall: f64,
    last_ok: f64,
    rate: f64,
}

async fn round(
    a: &ConnectArgs,
    target: &Target,
    connected: &mut LatHist,
    upgraded: &mut LatHist,
    failures: &mut Failures,
) -> anyhow::Result<(Round, crate::procs::CpuUse)> {
    let addr = a.common.addr()?;
    let path = a.common.path.clone();
    let transport = a.transport;
    let before = target.snapshot();
    let t0 = Instant::now();
    let (ok, fails) = connect_many(
        a.clients,
        a.concurrency,
        a.common.connect_timeout(),
        move |_| {
            let path = path.clone();
            async move {
                let (c, con, up) = match transport {
                    ConnectTransport::Websocket => {
                        let (c, t) = ws::connect_ws(addr, &path).await?;
                        (c, t.connected_us, None)
                    }
                    ConnectTransport::PollingUpgrade => {
                        let (c, t) = polling::connect_polling_upgrade(addr, &path).await?;
                        (c, t.connected_us, Some(t.upgraded_us))
                    }
                };
                Ok((c, con, up, t0.elapsed()))
            }
        },
    )
    .await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = target.snapshot().cpu_since(&before, wall);
    // The rate counts successes over the time until the last one completed: a straggler that
    // times out (counted as a failure) does not stretch it.
    let mut last_ok = 0f64;
    let mut held = Vec::with_capacity(ok.len());
    for (_, (c, con, up, done)) in ok {
        last_ok = last_ok.max(done.as_secs_f64());
        connected.record(con);
        if let Some(u) = up {
            upgraded.record(u);
        }
        held.push(c);
    }
    let n_ok = held.len();
    let failed: u64 = fails.values().sum();
    for (k, v) in fails {
        *failures.entry(k).or_default() += v;
    }
    // Everything is done: close them all (clean websocket close, best effort, in parallel).
    let mut closers = tokio::task::JoinSet::new();
    let mut held = held.into_iter().peekable();
    while held.peek().is_some() {
        let chunk: Vec<ws::WsConn> = held.by_ref().take(64).collect();
        closers.spawn(async move {
            for c in chunk {
                c.close().await;
            }
        });
    }
    while closers.join_next().await.is_some() {}
    let rate = if last_ok > 0.0 {
        n_ok as f64 / last_ok
    } else {
        0.0
    };
    Ok((
        Round {
            ok: n_ok,
            failed,
            wall,
            last_ok,
            rate,
        },
        cpu,
    ))
}

/// The median of a non-empty list (mean of the middle two for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub async fn run(a: ConnectArgs) -> anyhow::Result<serde_json::Value> {
    let target = a.common.target();
    let transport_name = match a.transport {
        ConnectTransport::Websocket => "websocket",
        ConnectTransport::PollingUpgrade => "polling-upgrade",
    };
    let mut connected = LatHist::new();
    let mut upgraded = LatHist::new();
    let mut failures = Failures::new();
    let mut rounds = Vec::new();
    let mut cpus = Vec::new();
    for r in 0..a.repeat.max(1) {
        if r > 0 {
            tokio::time::sleep(Duration::from_secs_f64(a.pause_secs)).await;
        }
        let (rd, cpu) = round(&a, &target, &mut connected, &mut upgraded, &mut failures).await?;
        eprintln!(
            "connect {transport_name} round {}: {}/{} ok, {} failed in {:.2}s, {:.0} connects/s; \
             server CPU {:.2}s (primary {:.2}, workers {:.2}), loadgen {:.2}s, other {:.2}s",
            r + 1,
            rd.ok,
            a.clients,
            rd.failed,
            rd.wall,
            rd.rate,
            cpu.server_total_s,
            cpu.primary_s,
            cpu.workers_s,
            cpu.loadgen_s,
            cpu.other_s
        );
        rounds.push(rd);
        cpus.push(cpu);
    }
    let rate = median(&mut rounds.iter().map(|r| r.rate).collect::<Vec<_>>());
    let n_ok: usize = rounds.iter().map(|r| r.ok).sum();
    let n_failed: u64 = rounds.iter().map(|r| r.failed).sum();
    let attempts = a.clients * rounds.len();
    let cs = connected.summary();
    eprintln!(
        "connect {transport_name}: {n_ok}/{attempts} ok, {n_failed} failed; median {rate:.0} connects/s; \
         to CONNECT p50 {:.2} ms p99 {:.2} ms",
        cs.p50_ms, cs.p99_ms
    );
    if a.transport == ConnectTransport::PollingUpgrade {
        let us = upgraded.summary();
        eprintln!(
            "  until upgraded: p50 {:.2} ms p99 {:.2} ms",
            us.p50_ms, us.p99_ms
        );
    }
    for (k, v) in &failures {
        eprintln!("  failure x{v}: {k}");
    }
    let sum = |f: fn(&crate::procs::CpuUse) -> f64| round3(cpus.iter().map(f).sum::<f64>());
    Ok(json!({
        "scenario": "connect",
        "transport": transport_name,
        "argv": argv(),
        "clients": attempts,
        "clients_per_round": a.clients,
        "rounds": rounds.len(),
        "concurrency": a.concurrency,
        "ok": n_ok,
        "failed": n_failed,
        "failed_pct": round3(100.0 * n_failed as f64 / attempts.max(1) as f64),
        "failures": failures,
        "connects_per_s": round3(rate),
        "round_results": rounds.iter().map(|r| json!({
            "ok": r.ok, "failed": r.failed, "wall_s": round3(r.wall),
            "last_ok_s": round3(r.last_ok), "connects_per_s": round3(r.rate),
        })).collect::<Vec<_>>(),
        "connect_latency": cs,
        "upgrade_latency": (a.transport == ConnectTransport::PollingUpgrade).then(|| upgraded.summary()),
        "cpu": {
            "primary_s": sum(|c| c.primary_s),
            "workers_s": sum(|c| c.workers_s),
            "server_total_s": sum(|c| c.server_total_s),
            "loadgen_s": sum(|c| c.loadgen_s),
            "other_s": sum(|c| c.other_s),
            "wall_s": sum(|c| c.wall_s),
        },
        "round_cpu": cpus,
    }))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
