//! Choosing a worker for a new session.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

/// A worker that may take new sessions, as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Slot index (stable across restarts).
    pub slot: usize,
    /// Connections currently held.
    pub load: u64,
}

/// Applies a [`Balance`] strategy.
#[derive(Debug)]
pub struct Balancer {
    strategy: Balance,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer using `strategy`.
    pub fn new(strategy: Balance) -> Self {
        Self {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    /// Index into `candidates` (sorted by slot) of the chosen worker; `None` if there is none.
    pub fn pick(&self, candidates: &[Candidate], peer: Option<IpAddr>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let n = candidates.len();
        Some(match self.strategy {
            Balance::LeastConn => candidates
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| (c.load, c.slot))
                .map(|(i, _)| i)
                .unwrap_or(0),
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::Random => fastrand::usize(..n),
            Balance::IpHash => match peer {
                Some(ip) => {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    ip.hash(&mut h);
                    (h.finish() % n as u64) as usize
                }
                None => 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(loads: &[u64]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(slot, &load)| Candidate { slot, load })
            .collect()
    }

    #[test]
    fn least_conn_takes_the_lightest_lowest_slot() {
        let b = Balancer::new(Balance::LeastConn);
        assert_eq!(b.pick(&cands(&[3, 1, 1]), None), Some(1));
        assert_eq!(b.pick(&[], None), None);
    }

    #[test]
    fn round_robin_cycles() {
        let b = Balancer::new(Balance::RoundRobin);
        let c = cands(&[0, 0, 0]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&c, None).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn ip_hash_is_stable_and_spreads() {
        let b = Balancer::new(Balance::IpHash);
        let c = cands(&[0, 0, 0, 0]);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let first = b.pick(&c, Some(ip));
        assert!((0..10).all(|_| b.pick(&c, Some(ip)) == first));
        let used: std::collections::HashSet<_> = (0..64u8)
            .map(|i| b.pick(&c, Some(IpAddr::from([10, 0, 0, i]))).unwrap())
            .collect();
        assert!(used.len() > 1);
    }

    #[test]
    fn random_stays_in_range() {
        let b = Balancer::new(Balance::Random);
        let c = cands(&[0, 0]);
        assert!((0..100).all(|_| b.pick(&c, None).unwrap() < 2));
    }
}
