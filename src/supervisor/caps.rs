//! Connection caps: per worker, for the whole cluster, per client address.
//!
//! Caps apply to connections that may start a new session (no known `sid` in their first
//! request); a request of an existing session is never refused. The counts are the primary's:
//! a worker's open connections are those handed to it minus those it reported closed, and a
//! client address's are those handed with that address minus those closed (workers report the
//! addresses of closed connections in their load reports).
//!
//! Defaults come from the descriptor limit workers inherit from the primary: a worker may hold
//! that limit minus a reserve (the larger of 256 and a tenth of it) for its own files, sockets
//! and forwarded requests; the cluster, that times the number of workers. Independently, each
//! worker reports how many connections its descriptor limit really leaves room for (it measures
//! the descriptors it uses), so a worker whose app opened many files is not sent connections it
//! cannot receive.

use crate::sync::LockExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::Config;
use crate::ipc::message::Refusal;

/// Descriptors a worker keeps for itself below its limit: the larger of this and a tenth.
pub const MIN_RESERVE: u64 = 256;

/// The caps in force and the per-address counts.
#[derive(Debug)]
pub struct Caps {
    /// Most connections per worker.
    pub per_worker: u64,
    /// Most connections in total.
    pub total: u64,
    /// Most connections per client address, if capped.
    pub per_ip: Option<u64>,
    ips: Mutex<HashMap<IpAddr, u64>>,
}

/// The per-worker default for a descriptor limit of `nofile`.
pub fn default_per_worker(nofile: u64) -> u64 {
    let reserve = MIN_RESERVE.max(nofile / 10);
    // A tiny limit still leaves room for a few connections (the worker reports its real room).
    nofile.saturating_sub(reserve).max(nofile / 2).max(1)
}

impl Caps {
    /// The caps of `config`, with defaults for a descriptor limit of `nofile` and `workers`
    /// workers.
    pub fn new(config: &Config, nofile: u64, workers: usize) -> Self {
        let per_worker = config
            .max_connections_per_worker
            .unwrap_or_else(|| default_per_worker(nofile));
        let total = config
            .max_connections
            .unwrap_or_else(|| per_worker.saturating_mul(workers as u64));
        Self {
            per_worker,
            total,
            per_ip: config.max_connections_per_ip,
            ips: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a connection from `ip` is over the per-address cap.
    pub fn ip_full(&self, ip: Option<IpAddr>) -> bool {
        match (self.per_ip, ip) {
            (Some(cap), Some(ip)) => {
                let ips = self.ips.lock_unpoisoned();
                ips.get(&ip).copied().unwrap_or(0) >= cap
            }
            _ => false,
        }
    }

    /// Counts a connection handed to `worker` with `ip`; returns the address to put in its
    /// manifest (so the worker reports it when it closes), `None` when addresses are not counted.
    pub fn count(&self, ip: Option<IpAddr>, worker: &PerIp) -> Option<IpAddr> {
        let ip = ip.filter(|_| self.per_ip.is_some())?;
        add(&mut self.ips.lock_unpoisoned(), ip, 1);
        add(&mut worker.0.lock_unpoisoned(), ip, 1);
        Some(ip)
    }

    /// Forgets closed connections of these addresses, reported by `worker`.
    pub fn closed(&self, ips: &[IpAddr], worker: &PerIp) {
        if ips.is_empty() {
            return;
        }
        let mut map = self.ips.lock_unpoisoned();
        let mut mine = worker.0.lock_unpoisoned();
        for ip in ips {
            sub(&mut map, *ip, 1);
            sub(&mut mine, *ip, 1);
        }
    }

    /// Forgets every connection still counted for a worker that exited (its connections closed
    /// with it).
    pub fn forget_worker(&self, worker: &PerIp) {
        let mine = std::mem::take(&mut *worker.0.lock_unpoisoned());
        let mut map = self.ips.lock_unpoisoned();
        for (ip, n) in mine {
            sub(&mut map, ip, n);
        }
    }

    /// Addresses with at least one counted connection.
    #[cfg(test)]
    pub fn counted_addresses(&self) -> usize {
        self.ips.lock_unpoisoned().len()
    }

    /// The refusal for a new session given the cluster's open connections, if any.
    pub fn check(&self, open_total: u64, ip: Option<IpAddr>) -> Option<Refusal> {
        if open_total >= self.total {
            Some(Refusal::ClusterFull)
        } else if self.ip_full(ip) {
            Some(Refusal::IpFull)
        } else {
            None
        }
    }
}

/// One worker's share of the per-address counts.
#[derive(Debug, Default)]
pub struct PerIp(Mutex<HashMap<IpAddr, u64>>);

fn add(map: &mut HashMap<IpAddr, u64>, ip: IpAddr, n: u64) {
    *map.entry(ip).or_default() += n;
}

fn sub(map: &mut HashMap<IpAddr, u64>, ip: IpAddr, n: u64) {
    if let Some(v) = map.get_mut(&ip) {
        *v = v.saturating_sub(n);
        if *v == 0 {
            map.remove(&ip);
        }
    }
}

/// The `503` a refused new session gets (the primary writes it on plain HTTP and closes; a
/// worker writes it on a kept-alive or TLS connection and keeps the connection).
pub fn refusal_response(r: Refusal) -> Vec<u8> {
    let body = format!("{}; retry later\r\n", r.reason());
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: {RETRY_AFTER_S}\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `Retry-After` of a refused new session, seconds.
pub const RETRY_AFTER_S: u64 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("app").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_follow_the_descriptor_limit() {
        assert_eq!(default_per_worker(1_048_576), 1_048_576 - 104_857);
        assert_eq!(default_per_worker(1024), 768);
        assert_eq!(default_per_worker(200), 100);
        let caps = Caps::new(&config(&[]), 1024, 2);
        assert_eq!(
            (caps.per_worker, caps.total, caps.per_ip),
            (768, 1536, None)
        );
        let caps = Caps::new(&config(&["--max-connections-per-worker", "10"]), 1024, 3);
        assert_eq!(caps.total, 30);
    }

    #[test]
    fn per_ip_counts_come_and_go() {
        let caps = Caps::new(
            &config(&["--max-connections-per-ip", "2", "--max-connections", "100"]),
            1024,
            2,
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (w1, w2) = (PerIp::default(), PerIp::default());
        assert_eq!(caps.check(0, Some(a)), None);
        assert_eq!(caps.count(Some(a), &w1), Some(a));
        caps.count(Some(a), &w2);
        assert_eq!(caps.check(2, Some(a)), Some(Refusal::IpFull));
        assert_eq!(caps.check(2, Some(b)), None);
        assert_eq!(caps.check(100, Some(b)), Some(Refusal::ClusterFull));
        caps.closed(&[a], &w1);
        assert_eq!(caps.check(1, Some(a)), None);
        caps.closed(&[b, b], &w1); // closes of what was never counted: no underflow
        assert_eq!(caps.counted_addresses(), 1);
        // The other worker died: its connections went with it.
        caps.count(Some(b), &w2);
        assert_eq!(caps.counted_addresses(), 2);
        caps.forget_worker(&w2);
        assert_eq!(caps.counted_addresses(), 0);
    }

    #[test]
    fn addresses_are_not_counted_without_a_per_ip_cap() {
        let caps = Caps::new(&config(&[]), 1024, 2);
        assert_eq!(
            caps.count(Some("10.0.0.1".parse().unwrap()), &PerIp::default()),
            None
        );
        assert_eq!(caps.counted_addresses(), 0);
    }

    #[test]
    fn refusal_is_a_complete_response() {
        let r = String::from_utf8(refusal_response(Refusal::IpFull)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503"));
        assert!(head.contains("retry-after: 5"));
        assert!(head.ends_with(&format!("content-length: {}", body.len())));
    }
}
