//! `report`: the side-by-side Markdown table of one `bench/run.sh` result directory.
//!
//! Layout read: `DIR/invocation.txt` (optional), `DIR/<variant>/server.cmd` (the server command
//! line), `DIR/<variant>/redis.cmd` (the Redis server of a redis variant, optional) and
//! `DIR/<variant>/<scenario>.json` for the scenarios `connect-websocket`,
//! `connect-polling-upgrade`, `fanout`, `rooms` and `hold` (missing ones show as `—`); the
//! connect ones are usually `connect-merge`s of interleaved rounds (`merged_from`).
//! Redis CPU rows (`cpu.redis_s` of the steps and rounds, from `--redis-pid`) are shown when any
//! variant has them.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// A result directory written by bench/run.sh.
    #[arg(long)]
    pub dir: PathBuf,
    /// Variants (sub-directories) in column order; default: every sub-directory, `cluster`,
    /// `cluster-tls`, `cluster-redis`, `single`, `node`, `node-redis` first.
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Ratio columns, `A/B` each (only those whose variants are present are shown).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cluster/single,cluster/node,cluster-tls/cluster,cluster-redis/cluster,cluster-redis/node-redis"
    )]
    pub ratios: Vec<String>,
}

#[derive(Debug, Clone)]
enum Cell {
    Num(f64, usize),
    Text(String),
    Missing,
}

impl Cell {
    fn show(&self) -> String {
        match self {
            Cell::Num(v, d) => fmt_num(*v, *d),
            Cell::Text(t) => t.clone(),
            Cell::Missing => "—".into(),
        }
    }
}

fn fmt_num(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    // Thousands separators for the integer part of big numbers.
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_owned(), format!(".{f}")),
        None => (s.clone(), String::new()),
    };
    let neg = int.starts_with('-');
    let digits = int.trim_start_matches('-');
    if digits.len() <= 4 {
        return s;
    }
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{}{out}{frac}", if neg { "-" } else { "" })
}

struct Variant {
    name: String,
    server_template: Option<String>,
    server_cmd: Option<String>,
    hold_server_cmd: Option<String>,
    redis_cmd: Option<String>,
    connect_ws: Option<Value>,
    connect_pu: Option<Value>,
    fanout: Option<Value>,
    rooms: Option<Value>,
    hold: Option<Value>,
}

fn load(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    // The loadgen prints one JSON line; tolerate a pretty file too.
    serde_json::from_str(&text).ok().or_else(|| {
        text.lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
    })
}

fn load_variant(dir: &Path, name: &str) -> Variant {
    let d = dir.join(name);
    let text = |f: &str| {
        std::fs::read_to_string(d.join(f))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    Variant {
        name: name.to_owned(),
        server_template: text("server.template").or_else(|| text("server.cmd")),
        server_cmd: text("server.cmd"),
        hold_server_cmd: text("server-hold.cmd"),
        redis_cmd: text("redis.cmd"),
        connect_ws: load(&d.join("connect-websocket.json")),
        connect_pu: load(&d.join("connect-polling-upgrade.json")),
        fanout: load(&d.join("fanout.json")),
        rooms: load(&d.join("rooms.json")),
        hold: load(&d.join("hold.json")),
    }
}

fn num(v: Option<&Value>, ptr: &str, decimals: usize) -> Cell {
    match v.and_then(|v| v.pointer(ptr)).and_then(Value::as_f64) {
        Some(x) => Cell::Num(x, decimals),
        None => Cell::Missing,
    }
}

fn step_at(v: Option<&Value>, rate: u64) -> Option<&Value> {
    v?.get("steps")?
        .as_array()?
        .iter()
        .find(|s| s.get("rate").and_then(Value::as_u64) == Some(rate))
}

fn rates(vs: &[Variant], pick: impl Fn(&Variant) -> Option<&Value>) -> Vec<u64> {
    let mut set = BTreeSet::new();
    for v in vs {
        if let Some(steps) = pick(v)
            .and_then(|x| x.get("steps"))
            .and_then(Value::as_array)
        {
            for s in steps {
                if let Some(r) = s.get("rate").and_then(Value::as_u64) {
                    set.insert(r);
                }
            }
        }
    }
    set.into_iter().collect()
}

fn step_cell(v: Option<&Value>, rate: u64) -> Cell {
    match step_at(v, rate) {
        None => Cell::Missing,
        Some(s) => {
            let p99 = s
                .pointer("/latency/p99_ms")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN);
            let loss = s
                .get("loss_pct")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN);
            let pass = s.get("pass").and_then(Value::as_bool).unwrap_or(false);
            Cell::Text(format!(
                "{p99:.1} ms / {loss:.2} %{}",
                if pass { "" } else { " ✗" }
            ))
        }
    }
}

/// The highest step rate with every expected delivery made and the full rate sent, whatever
/// the latency.
fn no_loss_rate(v: Option<&Value>) -> Cell {
    let Some(steps) = v.and_then(|v| v.get("steps")).and_then(Value::as_array) else {
        return Cell::Missing;
    };
    let best = steps
        .iter()
        .filter(|s| {
            let f = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            f("expected") > 0.0
                && f("delivered") >= f("expected")
                && f("sent") >= 0.99 * f("rate") * f("secs")
        })
        .filter_map(|s| s.get("rate").and_then(Value::as_f64))
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    match best {
        Some(r) => Cell::Num(r, 0),
        None => Cell::Text("none".into()),
    }
}

/// The per-round connect rates, e.g. `9233 / 8846 / 10260`.
fn rounds_text(v: Option<&Value>) -> Cell {
    let Some(r) = v
        .and_then(|v| v.get("round_results"))
        .and_then(Value::as_array)
    else {
        return Cell::Missing;
    };
    Cell::Text(
        r.iter()
            .filter_map(|x| x.get("connects_per_s").and_then(Value::as_f64))
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
    )
}

/// CPU per successful measured connect (µs): `cpu.<key>` over `ok`.
fn per_connect_us(v: Option<&Value>, key: &str) -> Option<f64> {
    let v = v?;
    let ok = v.get("ok").and_then(Value::as_f64)?;
    let s = v.pointer(&format!("/cpu/{key}")).and_then(Value::as_f64)?;
    (ok > 0.0).then(|| s * 1e6 / ok)
}

fn per_connect_split(v: Option<&Value>) -> Cell {
    match (
        per_connect_us(v, "primary_s"),
        per_connect_us(v, "workers_s"),
    ) {
        (Some(p), Some(w)) => Cell::Text(format!("{p:.0} / {w:.0}")),
        _ => Cell::Missing,
    }
}

/// How a connect result was measured, for the text under the table: rounds, warm-up, sources.
fn connect_method(v: &Value) -> Option<String> {
    let rounds = v.get("rounds").and_then(Value::as_u64)?;
    let per_round = v.get("clients_per_round").and_then(Value::as_u64)?;
    let conc = v.get("concurrency").and_then(Value::as_u64).unwrap_or(0);
    let merged = v
        .get("merged_from")
        .and_then(Value::as_array)
        .is_some_and(|m| m.len() > 1);
    let warm = v
        .get("warmups")
        .and_then(Value::as_array)
        .and_then(|w| w.first())
        .and_then(|w| w.get("clients"))
        .and_then(Value::as_u64);
    let src = v.get("source_addrs").and_then(Value::as_u64).unwrap_or(0);
    let mut t = if merged {
        format!(
            "{rounds} rounds per variant, run in turn across the variants (A B C A B C …) \
             against servers started once; each round a fresh load generator"
        )
    } else {
        format!("{rounds} round(s) in one load generator run")
    };
    if let Some(w) = warm {
        t += &format!(
            "{} {w} warm-up connects (not counted), then",
            if merged { " making" } else { ":" }
        );
    } else if merged {
        t += " making";
    } else {
        t += ":";
    }
    t += &format!(" {per_round} measured connects, {conc} in flight");
    if src > 1 {
        t += &format!(", client sockets bound to 127.0.0.1 … 127.0.0.{src} in turn");
    }
    t += "; connects/s = the median round's";
    if merged {
        t += " (ratios from the medians)";
    }
    Some(t)
}

fn steps_sum(v: Option<&Value>, ptr: &str) -> Option<f64> {
    let steps = v?.get("steps")?.as_array()?;
    Some(
        steps
            .iter()
            .filter_map(|s| s.pointer(ptr).and_then(Value::as_f64))
            .sum(),
    )
}

fn cpu_sum(v: Option<&Value>) -> Cell {
    match (
        steps_sum(v, "/cpu/primary_s"),
        steps_sum(v, "/cpu/workers_s"),
        steps_sum(v, "/cpu/loadgen_s"),
    ) {
        (Some(p), Some(w), Some(l)) => Cell::Text(format!("{p:.1} / {w:.1} / {l:.1}")),
        _ => Cell::Missing,
    }
}

/// Redis CPU seconds summed over the steps (fanout, rooms) or the rounds (connect); missing when
/// the scenario was run without `--redis-pid`.
fn redis_sum(v: Option<&Value>) -> Cell {
    let Some(v) = v else { return Cell::Missing };
    let items = v
        .get("steps")
        .or_else(|| v.get("round_cpu"))
        .and_then(Value::as_array);
    let vals: Vec<f64> = items
        .into_iter()
        .flatten()
        .filter_map(|s| {
            s.pointer("/cpu/redis_s")
                .or_else(|| s.get("redis_s"))
                .and_then(Value::as_f64)
        })
        .collect();
    if vals.is_empty() {
        Cell::Missing
    } else {
        Cell::Num(vals.iter().sum(), 2)
    }
}

/// A sum over steps that ran further for some variants than for others: no ratio column.
fn no_ratio(c: Cell) -> Cell {
    match c {
        Cell::Num(x, d) => Cell::Text(fmt_num(x, d)),
        c => c,
    }
}

/// Redis CPU per message sent over all steps, µs (comparable whatever the steps run).
fn redis_per_msg_us(v: Option<&Value>) -> Cell {
    let Some(steps) = v.and_then(|v| v.get("steps")).and_then(Value::as_array) else {
        return Cell::Missing;
    };
    let (mut cpu, mut sent, mut any) = (0.0, 0.0, false);
    for s in steps {
        if let Some(r) = s.pointer("/cpu/redis_s").and_then(Value::as_f64) {
            any = true;
            cpu += r;
            sent += s.get("sent").and_then(Value::as_f64).unwrap_or(0.0);
        }
    }
    if any && sent > 0.0 {
        Cell::Num(cpu / sent * 1e6, 1)
    } else {
        Cell::Missing
    }
}

fn other_sum(v: Option<&Value>) -> Cell {
    match steps_sum(v, "/cpu/other_s") {
        Some(x) => Cell::Text(format!("{x:.1}")),
        None => Cell::Missing,
    }
}

fn best_or_none(v: Option<&Value>, field: &str, decimals: usize) -> Cell {
    match v {
        None => Cell::Missing,
        Some(v) => match v.get("best") {
            Some(Value::Null) | None => Cell::Text("none".into()),
            Some(b) => num(Some(b), &format!("/{field}"), decimals),
        },
    }
}

fn failures_text(v: Option<&Value>) -> Cell {
    let Some(v) = v else { return Cell::Missing };
    let failed = v.get("failed").and_then(Value::as_u64).unwrap_or(0);
    let clients = v.get("clients").and_then(Value::as_u64).unwrap_or(0);
    if failed == 0 {
        return Cell::Text(format!("0 of {clients}"));
    }
    let top = v
        .get("failures")
        .and_then(Value::as_object)
        .and_then(|m| m.iter().max_by_key(|(_, n)| n.as_u64().unwrap_or(0)))
        .map(|(k, n)| format!(" ({n}× {k})"))
        .unwrap_or_default();
    Cell::Text(format!("{failed} of {clients}{top}"))
}

fn machine_facts() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: f64 = l.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB RAM", kb / 1048576.0))
        })
        .unwrap_or_default();
    format!("{cores} cores (nproc), CPU: {cpu}, kernel {kernel}, {mem}")
}

/// Builds the Markdown.
pub fn render(a: &ReportArgs) -> anyhow::Result<String> {
    let mut names: Vec<String> = if a.variants.is_empty() {
        let mut found: Vec<String> = std::fs::read_dir(&a.dir)?
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        let rank = |n: &str| match n {
            "cluster" => 0,
            "cluster-tls" => 1,
            "cluster-redis" => 2,
            "single" => 3,
            "node" => 4,
            "node-redis" => 5,
            _ => 6,
        };
        found.sort_by(|x, y| rank(x).cmp(&rank(y)).then(x.cmp(y)));
        found
    } else {
        a.variants.clone()
    };
    names.dedup();
    anyhow::ensure!(
        !names.is_empty(),
        "no variant directories in {}",
        a.dir.display()
    );
    let vs: Vec<Variant> = names.iter().map(|n| load_variant(&a.dir, n)).collect();
    let idx = |n: &str| vs.iter().position(|v| v.name == n);
    let ratios: Vec<(usize, usize, String)> = a
        .ratios
        .iter()
        .filter_map(|r| {
            let (x, y) = r.split_once('/')?;
            Some((
                idx(x.trim())?,
                idx(y.trim())?,
                format!("{} / {}", x.trim(), y.trim()),
            ))
        })
        .collect();

    type Row = (String, Vec<Cell>);
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&Variant) -> Cell| {
        rows.push((label.to_owned(), vs.iter().map(f).collect()));
    };
    fn cw(v: &Variant) -> Option<&Value> {
        v.connect_ws.as_ref()
    }
    fn cp(v: &Variant) -> Option<&Value> {
        v.connect_pu.as_ref()
    }
    row("connect websocket: connects/s (median round)", &|v| {
        num(cw(v), "/connects_per_s", 0)
    });
    row("connect websocket: connects/s of each round", &|v| {
        rounds_text(cw(v))
    });
    row("connect websocket: failed", &|v| failures_text(cw(v)));
    row("connect websocket: p50 to CONNECT (ms)", &|v| {
        num(cw(v), "/connect_latency/p50_ms", 2)
    });
    row("connect websocket: p99 to CONNECT (ms)", &|v| {
        num(cw(v), "/connect_latency/p99_ms", 2)
    });
    row(
        "connect websocket: server CPU per connect, all processes (µs)",
        &|v| match per_connect_us(cw(v), "server_total_s") {
            Some(x) => Cell::Num(x, 0),
            None => Cell::Missing,
        },
    );
    row(
        "connect websocket: server CPU per connect, primary / workers (µs)",
        &|v| per_connect_split(cw(v)),
    );
    row(
        "connect websocket: other CPU on the machine during the measured rounds (s, disturbance)",
        &|v| match num(cw(v), "/cpu/other_s", 2) {
            Cell::Num(x, _) => Cell::Text(format!("{x:.2}")),
            c => c,
        },
    );
    // Redis rows only when a variant ran with --redis-pid.
    let has_redis = vs.iter().any(|v| {
        [&v.connect_ws, &v.connect_pu, &v.fanout, &v.rooms]
            .iter()
            .any(|j| matches!(redis_sum(j.as_ref()), Cell::Num(..)))
    });
    if has_redis {
        row("connect websocket: Redis CPU (s)", &|v| redis_sum(cw(v)));
    }
    row("connect polling+upgrade: connects/s (median round)", &|v| {
        num(cp(v), "/connects_per_s", 0)
    });
    row("connect polling+upgrade: connects/s of each round", &|v| {
        rounds_text(cp(v))
    });
    row("connect polling+upgrade: failed", &|v| failures_text(cp(v)));
    row("connect polling+upgrade: p50 to CONNECT (ms)", &|v| {
        num(cp(v), "/connect_latency/p50_ms", 2)
    });
    row("connect polling+upgrade: p99 to CONNECT (ms)", &|v| {
        num(cp(v), "/connect_latency/p99_ms", 2)
    });
    row("connect polling+upgrade: p99 until upgraded (ms)", &|v| {
        num(cp(v), "/upgrade_latency/p99_ms", 2)
    });
    row(
        "connect polling+upgrade: server CPU per connect, all processes (µs)",
        &|v| match per_connect_us(cp(v), "server_total_s") {
            Some(x) => Cell::Num(x, 0),
            None => Cell::Missing,
        },
    );
    row(
        "connect polling+upgrade: server CPU per connect, primary / workers (µs)",
        &|v| per_connect_split(cp(v)),
    );
    if has_redis {
        row("connect polling+upgrade: Redis CPU (s)", &|v| {
            redis_sum(cp(v))
        });
    }
    fn fo(v: &Variant) -> Option<&Value> {
        v.fanout.as_ref()
    }
    let receivers = vs
        .iter()
        .find_map(|v| {
            fo(v)
                .and_then(|f| f.get("receivers"))
                .and_then(Value::as_u64)
        })
        .unwrap_or(0);
    let fl = format!("fanout to_all, {receivers} receivers");
    row(&format!("{fl}: highest rate held (msg/s)"), &|v| {
        best_or_none(fo(v), "rate", 0)
    });
    row(&format!("{fl}: deliveries/s at that rate"), &|v| {
        best_or_none(fo(v), "deliveries_per_s", 0)
    });
    row(&format!("{fl}: p99 at that rate (ms)"), &|v| {
        best_or_none(fo(v), "p99_ms", 1)
    });
    row(
        &format!("{fl}: highest rate without loss, any p99 (msg/s)"),
        &|v| no_loss_rate(fo(v)),
    );
    for r in rates(&vs, |v| v.fanout.as_ref()) {
        row(&format!("{fl}: {r} msg/s, p99 / loss"), &|v| {
            step_cell(fo(v), r)
        });
    }
    for r in rates(&vs, |v| v.fanout.as_ref()) {
        row(
            &format!("{fl}: {r} msg/s, server CPU cores (primary s / workers s)"),
            &|v| match step_at(fo(v), r) {
                None => Cell::Missing,
                Some(s) => {
                    let g = |p: &str| s.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
                    Cell::Text(format!(
                        "{:.2} ({:.1} / {:.1})",
                        g("/cpu/server_cores"),
                        g("/cpu/primary_s"),
                        g("/cpu/workers_s")
                    ))
                }
            },
        );
    }
    if has_redis {
        for r in rates(&vs, |v| v.fanout.as_ref()) {
            row(&format!("{fl}: {r} msg/s, Redis CPU (s)"), &|v| {
                num(step_at(fo(v), r), "/cpu/redis_s", 2)
            });
        }
    }
    row(
        &format!("{fl}: CPU over all steps, server primary / workers / load generator (s)"),
        &|v| cpu_sum(fo(v)),
    );
    if has_redis {
        row(&format!("{fl}: Redis CPU over all steps (s)"), &|v| {
            no_ratio(redis_sum(fo(v)))
        });
        row(
            &format!("{fl}: Redis CPU per message sent, all steps (µs)"),
            &|v| redis_per_msg_us(fo(v)),
        );
    }
    row(
        "fanout: other CPU on the machine meanwhile (s, disturbance)",
        &|v| other_sum(fo(v)),
    );
    fn ro(v: &Variant) -> Option<&Value> {
        v.rooms.as_ref()
    }
    let group = vs
        .iter()
        .find_map(|v| ro(v).and_then(|f| f.get("group")).and_then(Value::as_u64))
        .unwrap_or(0);
    let rl = format!("rooms of {group}");
    row(&format!("{rl}: highest rate held (msg/s)"), &|v| {
        best_or_none(ro(v), "rate", 0)
    });
    row(&format!("{rl}: p99 at that rate (ms)"), &|v| {
        best_or_none(ro(v), "p99_ms", 1)
    });
    for r in rates(&vs, |v| v.rooms.as_ref()) {
        row(&format!("{rl}: {r} msg/s, p99 / loss"), &|v| {
            step_cell(ro(v), r)
        });
    }
    row(
        &format!("{rl}: CPU over all steps, server primary / workers / load generator (s)"),
        &|v| cpu_sum(ro(v)),
    );
    if has_redis {
        row(&format!("{rl}: Redis CPU over all steps (s)"), &|v| {
            no_ratio(redis_sum(ro(v)))
        });
        row(
            &format!("{rl}: Redis CPU per message sent, all steps (µs)"),
            &|v| redis_per_msg_us(ro(v)),
        );
    }
    row(
        "rooms: other CPU on the machine meanwhile (s, disturbance)",
        &|v| other_sum(ro(v)),
    );
    fn ho(v: &Variant) -> Option<&Value> {
        v.hold.as_ref()
    }
    let held = vs
        .iter()
        .find_map(|v| ho(v).and_then(|f| f.get("ok")).and_then(Value::as_u64))
        .unwrap_or(0);
    row(
        &format!("hold {held} idle: RSS per connection, all processes (KiB)"),
        &|v| num(ho(v), "/rss_per_conn_kib", 1),
    );
    row(
        &format!("hold {held} idle: PSS per connection (KiB)"),
        &|v| num(ho(v), "/pss_per_conn_kib", 1),
    );
    row(
        "hold: server RSS before, all processes (MiB)",
        &|v| match num(ho(v), "/rss_before", 0) {
            Cell::Num(x, _) => Cell::Num(x / 1048576.0, 1),
            c => c,
        },
    );
    row(
        "server processes",
        &|v| match num(ho(v), "/cpu/server_procs", 0) {
            Cell::Num(x, _) => Cell::Text(format!("{x}")),
            c => c,
        },
    );

    let mut out = String::new();
    writeln!(
        out,
        "Machine: {}. The load generator shares these cores with the servers.",
        machine_facts()
    )?;
    if let Ok(m) = std::fs::read_to_string(a.dir.join("machine.txt")) {
        let keep: Vec<&str> = m
            .lines()
            .filter(|l| {
                [
                    "started:",
                    "git:",
                    "node:",
                    "rustc:",
                    "redis:",
                    "busy before start:",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .collect();
        if !keep.is_empty() {
            writeln!(out, "{}.", keep.join("; "))?;
        }
    }
    if let Ok(inv) = std::fs::read_to_string(a.dir.join("invocation.txt")) {
        writeln!(out, "\nRun: `{}`", inv.trim())?;
    }
    writeln!(out)?;
    for v in &vs {
        if let Some(c) = &v.server_template {
            writeln!(out, "- **{}**: `{}`", v.name, c)?;
        }
    }
    if let Some(r) = vs.iter().find_map(|v| v.redis_cmd.as_ref()) {
        writeln!(
            out,
            "- `REDIS_URL`: a fresh local Redis per variant, `{r}` (one host, pub/sub only; \
             its CPU is shown in the Redis rows, not in the server's nor in “other”)"
        )?;
    }
    writeln!(out)?;
    // The table.
    let mut header = vec!["metric".to_owned()];
    header.extend(vs.iter().map(|v| v.name.clone()));
    header.extend(ratios.iter().map(|r| r.2.clone()));
    writeln!(out, "| {} |", header.join(" | "))?;
    writeln!(
        out,
        "|{}",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    )?;
    for (label, cells) in &rows {
        let mut line = vec![label.clone()];
        line.extend(cells.iter().map(Cell::show));
        for (x, y, _) in &ratios {
            line.push(match (&cells[*x], &cells[*y]) {
                (Cell::Num(a, _), Cell::Num(b, _)) if *b != 0.0 => format!("{:.2}", a / b),
                _ => String::new(),
            });
        }
        writeln!(out, "| {} |", line.join(" | "))?;
    }
    writeln!(
        out,
        "\n“highest rate held”: the highest step with no loss, p99 < 100 ms and the full rate sent. \
         “p99 / loss”: ✗ marks a failed step; a missing step was not run (the ramp stops after a step \
         losing > 5 % or with p99 > 1 s). Latency = receive time − send time on one clock. CPU from \
         /proc (utime+stime) during the step (“server” = the started process and its descendants; \
         Redis apart). RSS/PSS per connection: increase over the idle server, summed over all its \
         processes (Redis not included), divided by the connections held."
    )?;
    // How connect was measured (from the first variant that has the result).
    for (label, pick) in [
        ("connect websocket", cw as fn(&Variant) -> Option<&Value>),
        ("connect polling+upgrade", cp),
    ] {
        if let Some(m) = vs.iter().find_map(|v| pick(v).and_then(connect_method)) {
            writeln!(out, "\n{label}: {m}.")?;
        }
    }
    if vs.iter().any(|v| cw(v).and_then(connect_method).is_some()) {
        writeln!(
            out,
            "\nConnects/s = successes over the time until the last success. Server CPU per \
             connect = the server processes' CPU during the measured rounds' connects (closing \
             excluded) over the successful connects; “primary” is the process started (for a \
             cluster: the accept loop and the hand-off to the workers), “workers” its \
             descendants. Why rounds are interleaved, warmed up and spread over source \
             addresses: bench/README.md (“How connect is measured”)."
        )?;
    }

    // Disturbance: CPU used by other programs during the load steps.
    let mut other = 0.0;
    let mut wall = 0.0;
    for v in &vs {
        for j in [fo(v), ro(v)] {
            other += steps_sum(j, "/cpu/other_s").unwrap_or(0.0);
            wall += steps_sum(j, "/cpu/wall_s").unwrap_or(0.0);
        }
    }
    if wall > 0.0 && other / wall > 0.05 {
        writeln!(
            out,
            "\n**Disturbed run**: other programs used {other:.1} s of CPU during {wall:.1} s of load \
             steps ({:.0} % of one core on average); fanout/rooms figures are lower than on a quiet \
             machine. Rerun when nothing else runs.",
            100.0 * other / wall
        )?;
    }

    // Targets (from the issue), when the variants are there.
    if let (Some(c), s, n) = (idx("cluster"), idx("single"), idx("node")) {
        let get = |i: usize, f: &dyn Fn(&Variant) -> Cell| match f(&vs[i]) {
            Cell::Num(x, _) => Some(x),
            _ => None,
        };
        let best = |v: &Variant| best_or_none(fo(v), "rate", 0);
        let mut t = Vec::new();
        let check = |ok: bool| if ok { "met" } else { "NOT met" };
        if let Some(n) = n {
            let nl = |v: &Variant| no_loss_rate(fo(v));
            match (get(c, &best), get(n, &best), get(n, &nl)) {
                (Some(a), Some(b), _) => t.push(format!(
                    "fanout rate ≥ 10× node: {:.1}× — {}",
                    a / b,
                    check(a >= 10.0 * b)
                )),
                // Node may hold no step under 100 ms p99 at all: compare with its loss-free rate.
                (Some(a), None, Some(b)) => t.push(format!(
                    "fanout rate ≥ 10× node: node holds no step with p99 < 100 ms; the cluster's \
                     rate held / node's highest loss-free rate = {:.1}× — {}",
                    a / b,
                    check(a >= 10.0 * b)
                )),
                _ => t.push("fanout rate ≥ 10× node: not comparable (no rate held)".into()),
            }
        }
        if let Some(s) = s {
            if let (Some(a), Some(b)) = (get(c, &best), get(s, &best)) {
                t.push(format!(
                    "fanout rate ≥ 0.8× single: {:.2}× — {}",
                    a / b,
                    check(a >= 0.8 * b)
                ));
            }
            let ws = |v: &Variant| num(cw(v), "/connects_per_s", 0);
            if let (Some(a), Some(b)) = (get(c, &ws), get(s, &ws)) {
                let rounds = cw(&vs[c])
                    .and_then(|j| j.get("rounds"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                t.push(format!(
                    "websocket connects/s ≥ 0.9× single: {:.2}× (medians of {rounds} rounds) — {}",
                    a / b,
                    check(a >= 0.9 * b)
                ));
            }
            let rss = |v: &Variant| num(ho(v), "/rss_per_conn_kib", 1);
            if let (Some(a), Some(b)) = (get(c, &rss), get(s, &rss)) {
                t.push(format!(
                    "RSS per idle connection ≤ single: {a:.1} vs {b:.1} KiB = {:.3}× — {}",
                    a / b,
                    check(a <= b)
                ));
            }
        }
        let pf = |v: &Variant| num(cp(v), "/failed", 0);
        if let Some(f) = get(c, &pf) {
            t.push(format!(
                "zero failed polling connects: {f} failed — {}",
                check(f == 0.0)
            ));
        }
        if !t.is_empty() {
            writeln!(out, "\nTargets for the cluster:")?;
            for l in t {
                writeln!(out, "- {l}")?;
            }
        }
    }

    // Exact commands.
    writeln!(
        out,
        "\nCommands (per variant: server, then each scenario):\n\n```sh"
    )?;
    for v in &vs {
        writeln!(out, "# {}", v.name)?;
        let argv = |j: &Option<Value>| {
            j.as_ref()
                .and_then(|j| j.get("argv"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        // A merged connect result: the command of one round, and how many ran.
        let connect_argv = |j: &Option<Value>| {
            let a = argv(j)?;
            let n = j
                .as_ref()?
                .get("merged_from")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            Some(if n > 1 {
                format!(
                    "{a}   # × {n}, in turn with the other variants; then sio-loadgen connect-merge"
                )
            } else {
                a
            })
        };
        let lines = [
            v.redis_cmd.clone().map(|c| format!("{c} &")),
            v.server_cmd.clone().map(|c| format!("{c} &")),
            connect_argv(&v.connect_ws),
            connect_argv(&v.connect_pu),
            argv(&v.fanout),
            argv(&v.rooms),
            v.hold_server_cmd.clone().map(|c| {
                let job = if v.redis_cmd.is_some() { 2 } else { 1 };
                format!("kill %{job}; {c} &   # a fresh server for hold")
            }),
            argv(&v.hold),
        ];
        for l in lines.into_iter().flatten() {
            writeln!(out, "{l}")?;
        }
    }
    writeln!(out, "```")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1234.0, 0), "1234");
        assert_eq!(fmt_num(12345.0, 0), "12,345");
        assert_eq!(fmt_num(2_000_000.0, 0), "2,000,000");
        assert_eq!(fmt_num(-12345.5, 1), "-12,345.5");
        assert_eq!(fmt_num(1.23456, 2), "1.23");
    }

    #[test]
    fn renders_a_directory() {
        let dir = std::env::temp_dir().join(format!("sio-loadgen-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, rate_ok, cps) in [
            ("cluster", 2000, 9000.0),
            ("single", 2000, 10000.0),
            ("node", 100, 3000.0),
        ] {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("server.cmd"), format!("serve {name}\n")).unwrap();
            std::fs::write(
                d.join("connect-websocket.json"),
                serde_json::json!({"argv": "lg connect", "clients": 10, "failed": 0, "connects_per_s": cps,
                    "connect_latency": {"p50_ms": 1.0, "p99_ms": 2.0}})
                .to_string(),
            )
            .unwrap();
            std::fs::write(
                d.join("fanout.json"),
                serde_json::json!({"receivers": 1000, "best": {"rate": rate_ok, "deliveries_per_s": 1.0, "p99_ms": 5.0},
                    "steps": [{"rate": 100, "loss_pct": 0.0, "pass": true, "latency": {"p99_ms": 3.0},
                               "cpu": {"server_cores": 1.0, "primary_s": 0.1, "workers_s": 2.0}}]})
                .to_string(),
            )
            .unwrap();
        }
        let md = render(&ReportArgs {
            dir: dir.clone(),
            variants: vec![],
            ratios: vec!["cluster/single".into(), "cluster/node".into()],
        })
        .unwrap();
        assert!(
            md.contains("| metric | cluster | single | node | cluster / single | cluster / node |"),
            "{md}"
        );
        assert!(
            md.contains("| connect websocket: connects/s (median round) | 9000 | 10,000 | 3000 | 0.90 | 3.00 |"),
            "{md}"
        );
        assert!(
            md.contains("highest rate held (msg/s) | 2000 | 2000 | 100 | 1.00 | 20.00 |"),
            "{md}"
        );
        assert!(md.contains("fanout rate ≥ 10× node: 20.0× — met"), "{md}");
        assert!(
            md.contains("| connect polling+upgrade: connects/s (median round) | — | — | — |  |  |"),
            "{md}"
        );
        assert!(md.contains("serve node"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn interleaved_connect_rounds() {
        let dir = std::env::temp_dir().join(format!("sio-loadgen-report-i-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, rates, primary) in [
            ("cluster", [9000.0, 11000.0, 10000.0], 0.4),
            ("single", [10000.0, 12000.0, 11000.0], 1.0),
        ] {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("server.cmd"), format!("serve {name}\n")).unwrap();
            let rounds: Vec<Value> = rates
                .iter()
                .map(|r| serde_json::json!({"clients": 1000, "ok": 1000, "failed": 0, "connects_per_s": r}))
                .collect();
            std::fs::write(
                d.join("connect-websocket.json"),
                serde_json::json!({"argv": "lg connect --warmup 200", "rounds": 3, "clients": 3000,
                    "clients_per_round": 1000, "concurrency": 100, "source_addrs": 8, "ok": 3000,
                    "failed": 0, "connects_per_s": rates[2],
                    "merged_from": ["r1.json", "r2.json", "r3.json"],
                    "warmups": [{"clients": 200}, {"clients": 200}, {"clients": 200}],
                    "round_results": rounds,
                    "cpu": {"primary_s": primary, "workers_s": 0.5, "server_total_s": primary + 0.5,
                            "other_s": 0.04}})
                .to_string(),
            )
            .unwrap();
        }
        let md = render(&ReportArgs {
            dir: dir.clone(),
            variants: vec![],
            ratios: vec!["cluster/single".into()],
        })
        .unwrap();
        assert!(
            md.contains(
                "| connect websocket: connects/s (median round) | 10,000 | 11,000 | 0.91 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| connect websocket: connects/s of each round | 9000 / 11000 / 10000 | 10000 / 12000 / 11000 |  |"),
            "{md}"
        );
        assert!(
            md.contains("| connect websocket: server CPU per connect, all processes (µs) | 300 | 500 | 0.60 |"),
            "{md}"
        );
        assert!(
            md.contains("| connect websocket: server CPU per connect, primary / workers (µs) | 133 / 167 | 333 / 167 |  |"),
            "{md}"
        );
        assert!(md.contains("(s, disturbance) | 0.04 | 0.04 |  |"), "{md}");
        assert!(
            md.contains(
                "connect websocket: 3 rounds per variant, run in turn across the variants (A B C A B C …) \
                 against servers started once; each round a fresh load generator making 200 warm-up \
                 connects (not counted), then 1000 measured connects, 100 in flight, client sockets \
                 bound to 127.0.0.1 … 127.0.0.8 in turn; connects/s = the median round's (ratios \
                 from the medians)."
            ),
            "{md}"
        );
        assert!(
            md.contains("websocket connects/s ≥ 0.9× single: 0.91× (medians of 3 rounds) — met"),
            "{md}"
        );
        assert!(
            md.contains("lg connect --warmup 200   # × 3, in turn with the other variants"),
            "{md}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redis_variants_and_ratios() {
        let dir = std::env::temp_dir().join(format!("sio-loadgen-report-r-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, cps, redis) in [
            ("node-redis", 2000.0, Some(4.0)),
            ("cluster", 10000.0, None),
            ("cluster-redis", 8000.0, Some(1.0)),
        ] {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("server.cmd"), format!("serve {name}\n")).unwrap();
            if redis.is_some() {
                std::fs::write(d.join("redis.cmd"), "redis-server --port 7777\n").unwrap();
            }
            let cpu = match redis {
                Some(r) => serde_json::json!({"redis_s": r}),
                None => serde_json::json!({}),
            };
            std::fs::write(
                d.join("connect-websocket.json"),
                serde_json::json!({"argv": "lg connect", "clients": 10, "failed": 0,
                    "connects_per_s": cps, "round_cpu": [cpu.clone(), cpu.clone()]})
                .to_string(),
            )
            .unwrap();
            std::fs::write(
                d.join("fanout.json"),
                serde_json::json!({"receivers": 1000, "best": null,
                    "steps": [{"rate": 100, "sent": 200, "loss_pct": 0.0, "pass": true, "cpu": cpu}]})
                .to_string(),
            )
            .unwrap();
        }
        let md = render(&ReportArgs {
            dir: dir.clone(),
            variants: vec![],
            ratios: "cluster/single,cluster/node,cluster-redis/cluster,cluster-redis/node-redis"
                .split(',')
                .map(str::to_owned)
                .collect(),
        })
        .unwrap();
        assert!(
            md.contains(
                "| metric | cluster | cluster-redis | node-redis | cluster-redis / cluster | cluster-redis / node-redis |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| connect websocket: connects/s (median round) | 10,000 | 8000 | 2000 | 0.80 | 4.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| connect websocket: Redis CPU (s) | — | 2.00 | 8.00 |  | 0.25 |"),
            "{md}"
        );
        assert!(
            md.contains("| fanout to_all, 1000 receivers: 100 msg/s, Redis CPU (s) | — | 1.00 | 4.00 |  | 0.25 |"),
            "{md}"
        );
        assert!(
            md.contains("Redis CPU over all steps (s) | — | 1.00 | 4.00 |  |  |"),
            "{md}"
        );
        assert!(
            md.contains(
                "Redis CPU per message sent, all steps (µs) | — | 5000.0 | 20,000.0 |  | 0.25 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("redis-server --port 7777 &\nserve cluster-redis &"),
            "{md}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
