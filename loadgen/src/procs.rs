//! Server process accounting from /proc: CPU time (utime + stime) and resident memory of a
//! set of processes, either fixed pids or a root pid and all its descendants (a cluster's
//! primary and its workers, a Node cluster's primary and its forks), plus optionally one
//! auxiliary process accounted on its own (the Redis server of the redis variants).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which server processes to account.
#[derive(Debug, Clone)]
pub enum Servers {
    /// Nothing to measure.
    None,
    /// These pids; the first one is reported as "primary", the others as "workers".
    Pids(Vec<u32>),
    /// This pid ("primary") and all its descendants ("workers").
    Tree(u32),
}

/// What to account: the server processes, and optionally the Redis server they use (its CPU
/// is reported on its own, `redis_s`, and counted neither as server CPU nor as `other_s`).
#[derive(Debug, Clone)]
pub struct Target {
    pub servers: Servers,
    pub redis: Option<u32>,
}

/// One process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    pub pid: u32,
    pub primary: bool,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, bytes (statm).
    pub rss: u64,
    /// Time its threads spent runnable but waiting for a CPU (run queue delay), summed over
    /// its threads, ns (`/proc/PID/task/*/schedstat`, second field; 0 without schedstats).
    pub wait_ns: u64,
}

/// Every process of a [`Target`] at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub procs: Vec<ProcSample>,
    /// The load generator itself, utime + stime ticks.
    pub self_ticks: u64,
    /// The load generator's run queue delay, ns (see [`ProcSample::wait_ns`]).
    pub self_wait_ns: u64,
    /// Busy ticks of the whole machine, all CPUs (/proc/stat).
    pub machine_ticks: u64,
    /// The Redis server's utime + stime ticks (None: not asked for, or gone).
    pub redis_ticks: Option<u64>,
}

/// Busy ticks of the whole machine (all CPUs): the first line of /proc/stat minus idle and
/// iowait.
pub fn machine_busy_ticks() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = s.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// Parses `/proc/<pid>/stat`: (ppid, utime + stime ticks).
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn read_stat(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Run queue delay of every thread of `pid`, summed, ns: how long they were ready to run while
/// another task held the CPU. A tail latency that comes from sharing cores shows here.
pub fn run_delay_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// Clock ticks per second for /proc CPU times.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Resident bytes of `pid` (second field of statm).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Proportional set size of `pid` in bytes (smaps_rollup), shared pages divided among sharers.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines().find_map(|l| {
        let v = l.strip_prefix("Pss:")?;
        let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// All descendants of `root` (not `root` itself), from a scan of /proc.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = read_stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(kids) = children.get(&p) {
            for &k in kids {
                out.push(k);
                stack.push(k);
            }
        }
    }
    out.sort_unstable();
    out
}

impl Target {
    /// The server processes only, no Redis.
    #[cfg(test)]
    pub fn servers(servers: Servers) -> Self {
        Target {
            servers,
            redis: None,
        }
    }

    /// The server pids now, with `true` for the primary.
    pub fn pids(&self) -> Vec<(u32, bool)> {
        match &self.servers {
            Servers::None => Vec::new(),
            Servers::Pids(p) => p.iter().enumerate().map(|(i, &p)| (p, i == 0)).collect(),
            Servers::Tree(root) => std::iter::once((*root, true))
                .chain(descendants(*root).into_iter().map(|p| (p, false)))
                .collect(),
        }
    }

    /// No server process to account (a Redis pid alone does not count).
    pub fn is_none(&self) -> bool {
        matches!(self.servers, Servers::None)
    }

    /// Samples every process of the target.
    pub fn snapshot(&self) -> Snapshot {
        let procs = self
            .pids()
            .into_iter()
            .filter_map(|(pid, primary)| {
                let (_, cpu_ticks) = read_stat(pid)?;
                Some(ProcSample {
                    pid,
                    primary,
                    cpu_ticks,
                    rss: rss_bytes(pid).unwrap_or(0),
                    wait_ns: run_delay_ns(pid),
                })
            })
            .collect();
        let self_ticks = read_stat(std::process::id()).map(|s| s.1).unwrap_or(0);
        Snapshot {
            procs,
            self_ticks,
            self_wait_ns: run_delay_ns(std::process::id()),
            machine_ticks: machine_busy_ticks(),
            redis_ticks: self.redis.and_then(|p| read_stat(p).map(|s| s.1)),
        }
    }

    /// Summed PSS of every server process (slower: reads smaps_rollup).
    pub fn pss(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|(p, _)| pss_bytes(p))
            .sum()
    }
}

/// CPU seconds used between two snapshots.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct CpuUse {
    pub wall_s: f64,
    /// The primary (or the only server process).
    pub primary_s: f64,
    /// All other server processes together.
    pub workers_s: f64,
    pub server_total_s: f64,
    /// Server CPU per wall second (1.0 = one core busy).
    pub server_cores: f64,
    /// The load generator itself.
    pub loadgen_s: f64,
    /// Everything else busy on the machine meanwhile (other programs, kernel threads such as
    /// softirq work not charged to a process): a non-trivial value means the run was disturbed.
    pub other_s: f64,
    pub server_procs: usize,
    /// Run queue delay (ready to run, waiting for a CPU), seconds summed over threads: the
    /// primary (or the only server process), the other server processes, the load generator.
    pub primary_wait_s: f64,
    pub workers_wait_s: f64,
    pub loadgen_wait_s: f64,
    /// The Redis server (`--redis-pid`), not included in the server figures nor in `other_s`;
    /// absent when not asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_s: Option<f64>,
}

impl Snapshot {
    /// CPU used from `before` to `self`, over `wall_s` seconds. Processes that are in
    /// `self` but not in `before` count from zero.
    pub fn cpu_since(&self, before: &Snapshot, wall_s: f64) -> CpuUse {
        let tps = ticks_per_sec();
        let mut primary = 0u64;
        let mut workers = 0u64;
        let (mut primary_wait, mut workers_wait) = (0u64, 0u64);
        for p in &self.procs {
            let b = before.procs.iter().find(|q| q.pid == p.pid);
            let d = p
                .cpu_ticks
                .saturating_sub(b.map(|q| q.cpu_ticks).unwrap_or(0));
            let w = p.wait_ns.saturating_sub(b.map(|q| q.wait_ns).unwrap_or(0));
            if p.primary {
                primary += d;
                primary_wait += w;
            } else {
                workers += d;
                workers_wait += w;
            }
        }
        let ns = |n: u64| crate::stats::round3(n as f64 / 1e9);
        let r = |t: u64| crate::stats::round3(t as f64 / tps);
        let total = primary + workers;
        let redis = match (self.redis_ticks, before.redis_ticks) {
            (Some(a), Some(b)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        CpuUse {
            wall_s: crate::stats::round3(wall_s),
            primary_s: r(primary),
            workers_s: r(workers),
            server_total_s: r(total),
            server_cores: if wall_s > 0.0 {
                crate::stats::round3(total as f64 / tps / wall_s)
            } else {
                0.0
            },
            loadgen_s: r(self.self_ticks.saturating_sub(before.self_ticks)),
            other_s: r(self
                .machine_ticks
                .saturating_sub(before.machine_ticks)
                .saturating_sub(
                    total + self.self_ticks.saturating_sub(before.self_ticks) + redis.unwrap_or(0),
                )),
            server_procs: self.procs.len(),
            primary_wait_s: ns(primary_wait),
            workers_wait_s: ns(workers_wait),
            loadgen_wait_s: ns(self.self_wait_ns.saturating_sub(before.self_wait_ns)),
            redis_s: redis.map(r),
        }
    }

    /// Summed RSS.
    pub fn rss(&self) -> u64 {
        self.procs.iter().map(|p| p.rss).sum()
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        l.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let s = "4711 (my (odd) name) S 42 4711 4711 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 4 0 \
                 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(s), Some((42, 287)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn self_snapshot() {
        let me = std::process::id();
        let snap = Target::servers(Servers::Pids(vec![me])).snapshot();
        assert_eq!(snap.procs.len(), 1);
        assert!(snap.procs[0].primary);
        assert!(snap.rss() > 0);
        assert!(snap.redis_ticks.is_none());
        assert!(Target::servers(Servers::Pids(vec![me])).pss() > 0);
        let later = Target::servers(Servers::Pids(vec![me])).snapshot();
        let cpu = later.cpu_since(&snap, 1.0);
        assert!(cpu.primary_s >= 0.0 && cpu.workers_s == 0.0);
        assert_eq!(cpu.server_procs, 1);
        assert_eq!(cpu.redis_s, None);
        assert!(cpu.primary_wait_s >= 0.0 && cpu.workers_wait_s == 0.0);
        assert!(!serde_json::to_string(&cpu).unwrap().contains("redis"));
    }

    #[test]
    fn redis_accounted_apart() {
        let me = std::process::id();
        let t = Target {
            servers: Servers::None,
            redis: Some(me),
        };
        assert!(t.is_none());
        let before = t.snapshot();
        assert!(before.redis_ticks.is_some());
        // Burn some CPU in this process (the "Redis" here).
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let cpu = t.snapshot().cpu_since(&before, 0.15);
        assert!(cpu.redis_s.is_some());
        assert_eq!(cpu.server_total_s, 0.0);
        assert!(serde_json::to_string(&cpu).unwrap().contains("\"redis_s\""));
    }

    #[test]
    fn tree_finds_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let pids = Target::servers(Servers::Tree(me)).pids();
        assert_eq!(pids[0], (me, true));
        assert!(pids.contains(&(child.id(), false)), "{pids:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn nofile() {
        assert!(raise_nofile() > 0);
    }
}
