//! `connect`: N connections with bounded concurrency; connects/s, failures by kind, latency.
//!
//! - `--warmup W` first runs W connects that are not counted (they fault in the pages and grow
//!   the allocators of the server and of this process), closes them and pauses.
//! - `--repeat R` runs the measured batch R times (all closed and a pause between rounds): the
//!   reported rate is the median round's, latencies and failures are over all rounds.
//! - `--source-addrs N` binds the client sockets to 127.0.0.1 .. 127.0.0.N in turn: N times the
//!   ephemeral ports towards the server, so that the TIME_WAIT sockets of earlier rounds never
//!   exhaust them (the destination stays `--url`).
//!
//! `connect-merge` combines the results of several `connect` runs (`bench/run.sh` runs one
//! measured round per server in turn, A B C A B C ...) into one, as if one run had made all
//! their rounds: the median round's rate, the exact latency percentiles over all rounds (the
//! histograms are in the JSON), summed failures and CPU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::common::{Common, Failures, argv, connect_many};
use crate::procs::{CpuUse, Target};
use crate::stats::{HistDump, LatHist, Summary, round3};
use crate::ws::SourceAddrs;
use crate::{polling, ws};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectTransport {
    /// Websocket only (`transport=websocket`).
    Websocket,
    /// Polling handshake, namespace CONNECT over polling, websocket upgrade.
    PollingUpgrade,
}

impl ConnectTransport {
    fn name(self) -> &'static str {
        match self {
            ConnectTransport::Websocket => "websocket",
            ConnectTransport::PollingUpgrade => "polling-upgrade",
        }
    }
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
    /// Measured rounds (the rate reported is the median round's).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Pause between rounds (and after the warm-up), seconds: the server drops the closed
    /// connections meanwhile.
    #[arg(long, default_value_t = 2.0)]
    pub pause_secs: f64,
    /// Connects made before the measured rounds and not counted (same concurrency, then closed
    /// and --pause-secs): the first connects after a start or an idle time are slower (page
    /// faults, allocator growth) in the server and in this process. Reported apart (`warmups`).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Bind the client sockets to the loopback addresses 127.0.0.1 .. 127.0.0.N in turn (0: no
    /// bind, the kernel's choice, 127.0.0.1). Each source address has its own ~28k ephemeral
    /// ports towards the server, so the TIME_WAIT sockets of earlier rounds do not exhaust
    /// them. The destination stays --url (an IPv4 loopback address). polling-upgrade: the
    /// websocket only, its HTTP requests are not bound.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: usize,
}

/// One batch of connects (a measured round or a warm-up).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundOut {
    pub clients: usize,
    pub ok: usize,
    pub failed: u64,
    #[serde(default)]
    pub failures: Failures,
    pub wall_s: f64,
    pub last_ok_s: f64,
    pub connects_per_s: f64,
}

/// A warm-up batch and the CPU it took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WarmupOut {
    #[serde(flatten)]
    pub round: RoundOut,
    pub cpu: CpuUse,
}

/// What one `connect` run measured; everything else in its JSON is derived from it (see
/// [`Summed`]), so that the rounds of several runs can be merged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parts {
    pub scenario: String,
    pub transport: String,
    /// The command line (of the first run, for a merge).
    pub argv: String,
    pub clients_per_round: usize,
    pub concurrency: usize,
    #[serde(default)]
    pub source_addrs: usize,
    /// Warm-up batches (one per run), not counted.
    #[serde(default)]
    pub warmups: Vec<WarmupOut>,
    pub round_results: Vec<RoundOut>,
    pub round_cpu: Vec<CpuUse>,
    /// Latency to the `40{...}` CONNECT reply, all measured rounds.
    pub connect_hist: HistDump,
    /// Latency until upgraded (polling-upgrade), all measured rounds.
    #[serde(default)]
    pub upgrade_hist: Option<HistDump>,
    /// For a merge: the files merged, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
}

/// CPU summed over the measured rounds (the keys of [`CpuUse`] that add up).
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct CpuSum {
    pub primary_s: f64,
    pub workers_s: f64,
    pub server_total_s: f64,
    pub loadgen_s: f64,
    pub other_s: f64,
    pub wall_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_s: Option<f64>,
}

/// CPU per successful measured connect, µs.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct PerConnect {
    pub server_total: f64,
    pub primary: f64,
    pub workers: f64,
    pub loadgen: f64,
}

/// The JSON of `connect` and `connect-merge`: the parts, and what follows from them.
#[derive(Debug, Clone, Serialize)]
pub struct Summed {
    #[serde(flatten)]
    pub parts: Parts,
    /// Attempts over all measured rounds.
    pub clients: usize,
    pub rounds: usize,
    pub ok: usize,
    pub failed: u64,
    pub failed_pct: f64,
    pub failures: Failures,
    /// The median round's rate.
    pub connects_per_s: f64,
    pub connect_latency: Summary,
    pub upgrade_latency: Option<Summary>,
    pub cpu: CpuSum,
    pub cpu_per_connect_us: PerConnect,
}

impl Summed {
    pub fn new(parts: Parts) -> anyhow::Result<Summed> {
        let rs = &parts.round_results;
        let clients = rs.iter().map(|r| r.clients).sum();
        let ok: usize = rs.iter().map(|r| r.ok).sum();
        let failed = rs.iter().map(|r| r.failed).sum();
        let mut failures = Failures::new();
        for r in rs {
            for (k, v) in &r.failures {
                *failures.entry(k.clone()).or_default() += v;
            }
        }
        let rate = median(&mut rs.iter().map(|r| r.connects_per_s).collect::<Vec<_>>());
        let connect_latency = LatHist::from_dump(&parts.connect_hist)?.summary();
        let upgrade_latency = match &parts.upgrade_hist {
            Some(h) => Some(LatHist::from_dump(h)?.summary()),
            None => None,
        };
        let c = &parts.round_cpu;
        let sum = |f: fn(&CpuUse) -> f64| round3(c.iter().map(f).sum::<f64>());
        let redis: Vec<f64> = c.iter().filter_map(|c| c.redis_s).collect();
        let cpu = CpuSum {
            primary_s: sum(|c| c.primary_s),
            workers_s: sum(|c| c.workers_s),
            server_total_s: sum(|c| c.server_total_s),
            loadgen_s: sum(|c| c.loadgen_s),
            other_s: sum(|c| c.other_s),
            wall_s: sum(|c| c.wall_s),
            redis_s: (!redis.is_empty()).then(|| round3(redis.iter().sum())),
        };
        let per = |s: f64| {
            if ok > 0 {
                round3(s * 1e6 / ok as f64)
            } else {
                0.0
            }
        };
        Ok(Summed {
            clients,
            rounds: rs.len(),
            ok,
            failed,
            failed_pct: round3(100.0 * failed as f64 / clients.max(1) as f64),
            failures,
            connects_per_s: round3(rate),
            connect_latency,
            upgrade_latency,
            cpu_per_connect_us: PerConnect {
                server_total: per(cpu.server_total_s),
                primary: per(cpu.primary_s),
                workers: per(cpu.workers_s),
                loadgen: per(cpu.loadgen_s),
            },
            cpu,
            parts,
        })
    }

    /// The summary lines on stderr.
    fn print(&self) {
        let t = &self.parts.transport;
        let cs = &self.connect_latency;
        eprintln!(
            "connect {t}: {}/{} ok, {} failed in {} measured round(s); median {:.0} connects/s \
             (rounds: {}); to CONNECT p50 {:.2} ms p99 {:.2} ms",
            self.ok,
            self.clients,
            self.failed,
            self.rounds,
            self.connects_per_s,
            self.parts
                .round_results
                .iter()
                .map(|r| format!("{:.0}", r.connects_per_s))
                .collect::<Vec<_>>()
                .join(" / "),
            cs.p50_ms,
            cs.p99_ms
        );
        let p = &self.cpu_per_connect_us;
        eprintln!(
            "  server CPU per connect {:.1} µs (primary {:.1}, workers {:.1}), loadgen {:.1} µs",
            p.server_total, p.primary, p.workers, p.loadgen
        );
        if let Some(us) = &self.upgrade_latency {
            eprintln!(
                "  until upgraded: p50 {:.2} ms p99 {:.2} ms",
                us.p50_ms, us.p99_ms
            );
        }
        for (k, v) in &self.failures {
            eprintln!("  failure x{v}: {k}");
        }
    }
}

async fn round(
    a: &ConnectArgs,
    clients: usize,
    source: SourceAddrs,
    target: &Target,
    connected: &mut LatHist,
    upgraded: &mut LatHist,
) -> anyhow::Result<(RoundOut, CpuUse)> {
    let dest = a.common.dest()?;
    let path = a.common.path.clone();
    let transport = a.transport;
    let before = target.snapshot();
    let t0 = Instant::now();
    let (ok, fails) = connect_many(
        clients,
        a.concurrency,
        a.common.connect_timeout(),
        move |i| {
            let path = path.clone();
            let dest = dest.clone();
            let src = source.for_conn(i);
            async move {
                let (c, con, up) = match transport {
                    ConnectTransport::Websocket => {
                        let (c, t) = ws::connect_ws_from(&dest, src, &path).await?;
                        (c, t.connected_us, None)
                    }
                    ConnectTransport::PollingUpgrade => {
                        let (c, t) = polling::connect_polling_upgrade(&dest, src, &path).await?;
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
        RoundOut {
            clients,
            ok: n_ok,
            failed,
            failures: fails,
            wall_s: round3(wall),
            last_ok_s: round3(last_ok),
            connects_per_s: round3(rate),
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

fn round_line(what: &str, rd: &RoundOut, cpu: &CpuUse) -> String {
    format!(
        "{what}: {}/{} ok, {} failed in {:.2}s, {:.0} connects/s; server CPU {:.2}s (primary {:.2}, \
         workers {:.2}), loadgen {:.2}s, other {:.2}s",
        rd.ok,
        rd.clients,
        rd.failed,
        rd.wall_s,
        rd.connects_per_s,
        cpu.server_total_s,
        cpu.primary_s,
        cpu.workers_s,
        cpu.loadgen_s,
        cpu.other_s
    )
}

pub async fn run(a: ConnectArgs) -> anyhow::Result<serde_json::Value> {
    let target = a.common.target();
    let source = SourceAddrs::new(a.source_addrs, a.common.addr()?)?;
    let name = a.transport.name();
    let pause = Duration::from_secs_f64(a.pause_secs);
    let mut warmups = Vec::new();
    if a.warmup > 0 {
        // Its latencies go nowhere.
        let (mut c, mut u) = (LatHist::new(), LatHist::new());
        let (rd, cpu) = round(&a, a.warmup, source, &target, &mut c, &mut u).await?;
        eprintln!(
            "{} (not counted)",
            round_line(&format!("connect {name} warm-up"), &rd, &cpu)
        );
        warmups.push(WarmupOut { round: rd, cpu });
        tokio::time::sleep(pause).await;
    }
    let mut connected = LatHist::new();
    let mut upgraded = LatHist::new();
    let mut rounds = Vec::new();
    let mut cpus = Vec::new();
    for r in 0..a.repeat.max(1) {
        if r > 0 {
            tokio::time::sleep(pause).await;
        }
        let (rd, cpu) = round(
            &a,
            a.clients,
            source,
            &target,
            &mut connected,
            &mut upgraded,
        )
        .await?;
        eprintln!(
            "{}",
            round_line(&format!("connect {name} round {}", r + 1), &rd, &cpu)
        );
        rounds.push(rd);
        cpus.push(cpu);
    }
    let summed = Summed::new(Parts {
        scenario: "connect".into(),
        transport: name.into(),
        argv: argv(),
        clients_per_round: a.clients,
        concurrency: a.concurrency,
        source_addrs: source.count(),
        warmups,
        round_results: rounds,
        round_cpu: cpus,
        connect_hist: connected.dump(),
        upgrade_hist: (a.transport == ConnectTransport::PollingUpgrade).then(|| upgraded.dump()),
        merged_from: Vec::new(),
    })?;
    summed.print();
    Ok(serde_json::to_value(&summed)?)
}

#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// `connect` results (JSON, one object per file), in the order they ran.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Also write the JSON result (pretty) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One result file: the compact line `connect` prints, or a pretty file.
fn load_parts(path: &std::path::Path) -> anyhow::Result<Parts> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .or_else(|e| {
            text.lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .ok_or(e)
        })
        .with_context(|| format!("{}: not a connect result", path.display()))
}

/// Merges the parts of several runs (same scenario and transport) into one, rounds in order.
pub fn merge(mut all: Vec<(String, Parts)>) -> anyhow::Result<Summed> {
    anyhow::ensure!(!all.is_empty(), "nothing to merge");
    let (name0, first) = all.remove(0);
    anyhow::ensure!(
        first.scenario == "connect",
        "{name0}: scenario {:?}, not connect",
        first.scenario
    );
    let mut m = first;
    let mut conn = LatHist::from_dump(&m.connect_hist)?;
    let mut up = m
        .upgrade_hist
        .as_ref()
        .map(LatHist::from_dump)
        .transpose()?;
    m.merged_from = vec![name0];
    for (name, p) in all {
        anyhow::ensure!(
            p.scenario == m.scenario && p.transport == m.transport,
            "{name}: {} {}, not {} {}",
            p.scenario,
            p.transport,
            m.scenario,
            m.transport
        );
        m.clients_per_round = m.clients_per_round.max(p.clients_per_round);
        m.warmups.extend(p.warmups);
        m.round_results.extend(p.round_results);
        m.round_cpu.extend(p.round_cpu);
        conn.merge(&LatHist::from_dump(&p.connect_hist)?);
        if let (Some(u), Some(h)) = (up.as_mut(), &p.upgrade_hist) {
            u.merge(&LatHist::from_dump(h)?);
        }
        m.merged_from.push(name);
    }
    m.connect_hist = conn.dump();
    m.upgrade_hist = up.map(|u| u.dump());
    Summed::new(m)
}

pub fn run_merge(a: &MergeArgs) -> anyhow::Result<serde_json::Value> {
    let all = a
        .files
        .iter()
        .map(|f| Ok((f.display().to_string(), load_parts(f)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let summed = merge(all)?;
    eprintln!("merged {} connect results:", a.files.len());
    summed.print();
    Ok(serde_json::to_value(&summed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    fn one_run(rate: f64, lat_us: &[u64], fail: u64, primary_s: f64) -> Parts {
        let mut h = LatHist::new();
        for &v in lat_us {
            h.record(v);
        }
        let mut failures = Failures::new();
        if fail > 0 {
            failures.insert("ws open: io AddrNotAvailable".into(), fail);
        }
        Parts {
            scenario: "connect".into(),
            transport: "websocket".into(),
            argv: "sio-loadgen connect".into(),
            clients_per_round: lat_us.len() + fail as usize,
            concurrency: 100,
            source_addrs: 8,
            warmups: vec![WarmupOut {
                round: RoundOut {
                    clients: 5,
                    ok: 5,
                    failed: 0,
                    failures: Failures::new(),
                    wall_s: 0.1,
                    last_ok_s: 0.1,
                    connects_per_s: 50.0,
                },
                cpu: CpuUse::default(),
            }],
            round_results: vec![RoundOut {
                clients: lat_us.len() + fail as usize,
                ok: lat_us.len(),
                failed: fail,
                failures,
                wall_s: 1.0,
                last_ok_s: 1.0,
                connects_per_s: rate,
            }],
            round_cpu: vec![CpuUse {
                primary_s,
                workers_s: 0.5,
                server_total_s: primary_s + 0.5,
                wall_s: 1.0,
                ..CpuUse::default()
            }],
            connect_hist: h.dump(),
            upgrade_hist: None,
            merged_from: Vec::new(),
        }
    }

    #[test]
    fn merges_rounds_of_several_runs() {
        let runs = vec![
            ("a.json".to_owned(), one_run(1000.0, &[100, 200], 0, 0.1)),
            ("b.json".to_owned(), one_run(3000.0, &[300, 400], 1, 0.2)),
            ("c.json".to_owned(), one_run(2000.0, &[500, 600], 0, 0.3)),
        ];
        // Through JSON and back, as bench/run.sh does.
        let runs: Vec<(String, Parts)> = runs
            .into_iter()
            .map(|(n, p)| {
                let v = serde_json::to_value(Summed::new(p).unwrap()).unwrap();
                (n, serde_json::from_value(v).unwrap())
            })
            .collect();
        let m = merge(runs).unwrap();
        assert_eq!(m.rounds, 3);
        assert_eq!(m.connects_per_s, 2000.0);
        assert_eq!(m.ok, 6);
        assert_eq!(m.failed, 1);
        assert_eq!(m.clients, 7);
        assert_eq!(m.failures.get("ws open: io AddrNotAvailable"), Some(&1));
        assert_eq!(m.connect_latency.count, 6);
        assert_eq!(m.connect_latency.max_ms, 0.6);
        assert_eq!(m.connect_latency.min_ms, 0.1);
        assert_eq!(m.parts.warmups.len(), 3);
        assert_eq!(m.parts.merged_from, ["a.json", "b.json", "c.json"]);
        assert_eq!(m.cpu.primary_s, 0.6);
        assert_eq!(m.cpu.server_total_s, 2.1);
        assert_eq!(m.cpu.redis_s, None);
        // 2.1 s of server CPU over 6 connects.
        assert_eq!(m.cpu_per_connect_us.server_total, 350_000.0);
        assert_eq!(m.cpu_per_connect_us.primary, 100_000.0);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["connects_per_s"], 2000.0);
        assert_eq!(v["round_results"].as_array().unwrap().len(), 3);
        assert_eq!(v["cpu"]["server_total_s"], 2.1);
        assert!(v["cpu"].get("redis_s").is_none());
        // The 3rd of 6 values, 300 µs, as its bucket's upper bound (≤ 1.6 % above).
        let p50 = v["connect_latency"]["p50_ms"].as_f64().unwrap();
        assert!((0.3..0.305).contains(&p50), "{p50}");

        let mut p = one_run(1.0, &[1], 0, 0.0);
        p.transport = "polling-upgrade".into();
        assert!(
            merge(vec![
                ("x".into(), one_run(1.0, &[1], 0, 0.0)),
                ("y".into(), p)
            ])
            .is_err()
        );
        assert!(merge(vec![]).is_err());
    }

    #[test]
    fn loads_a_compact_line_or_a_pretty_file() {
        let dir = std::env::temp_dir().join(format!("sio-loadgen-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v = serde_json::to_value(Summed::new(one_run(5.0, &[10], 0, 0.0)).unwrap()).unwrap();
        let a = dir.join("a.json");
        std::fs::write(
            &a,
            format!("noise\n{}\n", serde_json::to_string(&v).unwrap()),
        )
        .unwrap();
        let b = dir.join("b.json");
        std::fs::write(&b, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        let out = run_merge(&MergeArgs {
            files: vec![a, b],
            json: None,
        })
        .unwrap();
        assert_eq!(out["rounds"], 2);
        assert_eq!(out["merged_from"].as_array().unwrap().len(), 2);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{}").unwrap();
        assert!(load_parts(&bad).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
