//! What a worker tells the primary for `/status` and `/metrics`: its Socket.IO sockets per
//! namespace, with connect and disconnect counts.
//!
//! socketioxide has no hook that sees every namespace connect and disconnect whatever handlers
//! the app registered, so the counts come from sampling: each report compares the sockets each
//! namespace holds with those of the previous report. A socket that connects *and* disconnects
//! between two reports (one heartbeat interval, 1 s by default) is not counted; every other one
//! is counted exactly once each way. Nothing runs per message or per connect: the cost is one
//! pass over the sockets per interval.

use std::collections::{BTreeMap, HashSet};

use socketioxide::SocketIo;
use socketioxide::socket::Sid;

use crate::adapter::ClusterAdapter;
use crate::ipc::message::NamespaceReport;

/// One namespace as last sampled.
#[derive(Debug, Default)]
struct Seen {
    sockets: HashSet<Sid>,
    connects: u64,
    disconnects: u64,
}

/// Sockets per namespace as of the previous sample, and the totals so far.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    namespaces: BTreeMap<String, Seen>,
}

impl Sampler {
    /// Samples the namespaces of `io` now; returns every namespace ever seen, with its
    /// current count and its totals.
    pub(crate) fn sample(&mut self, io: &SocketIo<ClusterAdapter>) -> Vec<NamespaceReport> {
        let mut present: BTreeMap<String, HashSet<Sid>> = BTreeMap::new();
        for ns in io.nsps() {
            let path = ns.ns_path().to_string();
            let ids = ns.sockets().into_iter().map(|s| s.id).collect();
            present.insert(path, ids);
        }
        self.update(present)
    }

    /// The bookkeeping of [`Sampler::sample`], on plain sets.
    fn update(&mut self, present: BTreeMap<String, HashSet<Sid>>) -> Vec<NamespaceReport> {
        for (path, now) in present.iter() {
            let seen = self.namespaces.entry(path.clone()).or_default();
            seen.connects += now.difference(&seen.sockets).count() as u64;
            seen.disconnects += seen.sockets.difference(now).count() as u64;
        }
        for (path, seen) in self.namespaces.iter_mut() {
            match present.get(path) {
                Some(now) => seen.sockets.clone_from(now),
                None => {
                    // The namespace is gone (a dynamic one closed): its sockets with it.
                    seen.disconnects += seen.sockets.len() as u64;
                    seen.sockets.clear();
                }
            }
        }
        self.namespaces
            .iter()
            .map(|(path, seen)| NamespaceReport {
                path: path.clone(),
                connected: seen.sockets.len() as u64,
                connects: seen.connects,
                disconnects: seen.disconnects,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sids(n: usize) -> Vec<Sid> {
        (0..n).map(|_| Sid::new()).collect()
    }

    fn at(path: &str, ids: &[Sid]) -> BTreeMap<String, HashSet<Sid>> {
        BTreeMap::from([(path.to_owned(), ids.iter().copied().collect())])
    }

    #[test]
    fn counts_each_socket_once_each_way() {
        let ids = sids(5);
        let mut s = Sampler::default();
        let r = s.update(at("/", &ids[..3]));
        assert_eq!((r[0].connected, r[0].connects, r[0].disconnects), (3, 3, 0));
        let r = s.update(at("/", &ids[1..5]));
        assert_eq!((r[0].connected, r[0].connects, r[0].disconnects), (4, 5, 1));
        let r = s.update(at("/", &ids[1..5]));
        assert_eq!((r[0].connected, r[0].connects, r[0].disconnects), (4, 5, 1));
        // The namespace disappears: its sockets count as disconnected, the totals stay.
        let r = s.update(BTreeMap::new());
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].connected, r[0].connects, r[0].disconnects), (0, 5, 5));
    }
}
