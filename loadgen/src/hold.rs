//! `hold`: N idle websocket connections; resident memory of the server processes per connection.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::common::{Common, argv, connect_many};
use crate::stats::round3;
use crate::ws::{self, OP_PING, OP_PONG, OP_TEXT, WsConn};

#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: Common,
    /// Idle connections to hold.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Seconds to wait once all are connected, before sampling memory.
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
    /// Memory samples taken (one second apart) after settling; the last one is used.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
}

/// An idle client: answers pings, nothing else.
async fn idle(mut ws: WsConn) {
    loop {
        match ws.fill().await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(Some(m)) = ws.next_buffered() {
            match m.opcode {
                OP_TEXT if ws.payload() == b"2" => ws.queue(OP_TEXT, b"3"),
                OP_PING => {
                    let p = ws.payload().to_vec();
                    ws.queue(OP_PONG, &p);
                }
                _ => {}
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

pub async fn run(a: HoldArgs) -> anyhow::Result<serde_json::Value> {
    let target = a.common.target();
    anyhow::ensure!(
        !target.is_none(),
        "hold needs --pid-tree PID or --pids PID[,PID...]"
    );
    let dest = a.common.dest()?;
    let path = a.common.path.clone();
    let before = target.snapshot();
    let pss_before = target.pss();
    anyhow::ensure!(!before.procs.is_empty(), "no such server process");
    let t0 = Instant::now();
    let (ok, failures) = connect_many(
        a.clients,
        a.concurrency,
        a.common.connect_timeout(),
        move |_| {
            let path = path.clone();
            let dest = dest.clone();
            async move { ws::connect_ws(&dest, &path).await.map(|(c, _)| c) }
        },
    )
    .await;
    let connect_s = t0.elapsed().as_secs_f64();
    let n = ok.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (_, c) in ok {
        tasks.spawn(idle(c));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.settle_secs)).await;
    let mut samples = Vec::new();
    let mut after = target.snapshot();
    for i in 0..a.samples.max(1) {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        after = target.snapshot();
        samples.push(after.rss());
    }
    let pss_after = target.pss();
    // Tasks that ended are connections the server closed.
    while tasks.try_join_next().is_some() {}
    let still_open = tasks.len();
    let cpu = after.cpu_since(&before, t0.elapsed().as_secs_f64());
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let rss_before = before.rss();
    let rss_after = after.rss();
    let per = |b: u64, a: u64| {
        if n == 0 {
            0.0
        } else {
            (a as f64 - b as f64) / n as f64
        }
    };
    let rss_per = per(rss_before, rss_after);
    let pss_per = per(pss_before, pss_after);
    let procs: Vec<_> = after
        .procs
        .iter()
        .map(|p| {
            let b = before
                .procs
                .iter()
                .find(|q| q.pid == p.pid)
                .map(|q| q.rss)
                .unwrap_or(0);
            json!({"pid": p.pid, "primary": p.primary, "rss_before": b, "rss_after": p.rss})
        })
        .collect();
    let n_failed: u64 = failures.values().sum();
    eprintln!(
        "hold: {n} idle connections ({n_failed} failed, {still_open} still open at sampling), \
         server RSS {:.1} MiB -> {:.1} MiB over {} processes = {:.2} KiB per connection (PSS {:.2} KiB)",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        after.procs.len(),
        rss_per / 1024.0,
        pss_per / 1024.0
    );
    for (k, v) in &failures {
        eprintln!("  failure x{v}: {k}");
    }
    Ok(json!({
        "scenario": "hold",
        "argv": argv(),
        "clients": a.clients,
        "ok": n,
        "failed": n_failed,
        "failures": failures,
        "open_at_sampling": still_open,
        "connect_s": round3(connect_s),
        "settle_s": a.settle_secs,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "rss_samples": samples,
        "rss_per_conn_bytes": round3(rss_per),
        "rss_per_conn_kib": round3(rss_per / 1024.0),
        "pss_before": pss_before,
        "pss_after": pss_after,
        "pss_per_conn_kib": round3(pss_per / 1024.0),
        "procs": procs,
        "cpu": cpu,
    }))
}
