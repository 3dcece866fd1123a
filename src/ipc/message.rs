//! Control messages between the primary and a worker (carried by [`channel`](super::channel)).
//!
//! These are small and latency-sensitive: connection hand-offs, session registration and
//! look-ups, readiness, load and heartbeats. Anything bulky (adapter traffic) goes over the bus.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::sid::SessionId;

/// Identity of one worker process for the primary's whole life: a slot index is reused when a
/// worker is replaced, a member id never is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberId(pub u32);

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// Where a handed-off connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnOrigin {
    /// A client connection accepted by the primary (the fd is a TCP socket).
    Accepted,
    /// A request forwarded by another worker over a Unix socket pair: a keep-alive connection
    /// owned by `from` carried a request for a session living here. Never forwarded again.
    Forwarded {
        /// The worker that forwards.
        from: MemberId,
    },
}

/// Why a new session is turned away (answered `503` with `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[expect(
    clippy::enum_variant_names,
    reason = "each refusal is that something is full; the names read as such in logs and code"
)]
pub enum Refusal {
    /// Every worker holds `--max-connections-per-worker` connections, or as many as its
    /// descriptor limit allows.
    WorkerFull,
    /// The cluster holds `--max-connections` connections.
    ClusterFull,
    /// The client's address holds `--max-connections-per-ip` connections.
    IpFull,
}

impl Refusal {
    /// The text of the 503 response (and of the log line).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::WorkerFull => "every worker is at its connection limit",
            Refusal::ClusterFull => "the server is at its connection limit",
            Refusal::IpFull => "too many connections from your address",
        }
    }
}

/// What the primary knows of a connection's first request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FirstRequest {
    /// The primary read its head and routed it (plain HTTP).
    Routed,
    /// The primary could not read it (TLS) and picked the worker by the balancer. When a cap is
    /// reached, the worker answers the first request `503` unless it belongs to an existing
    /// session (those are never refused).
    Blind {
        /// The cap the connection is over, if any.
        refuse: Option<Refusal>,
    },
}

/// What the primary attaches to a descriptor it passes (the manifest of the hand-off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnManifest {
    /// Connection number assigned by the primary (for logs).
    pub id: u64,
    /// The client's address: the TCP peer, or the source of its PROXY protocol header.
    pub peer: Option<SocketAddr>,
    /// Accepted or forwarded.
    pub origin: ConnOrigin,
    /// Whether the primary read the first request.
    pub first: FirstRequest,
    /// The address this connection counts against for `--max-connections-per-ip`; the worker
    /// reports it back when the connection closes ([`ToPrimary::Load`]).
    pub counted_ip: Option<IpAddr>,
}

/// Primary → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// A connection to serve; its descriptor travels with this message.
    Conn(ConnManifest),
    /// Several connections handed off at once (the i-th descriptor goes with the i-th
    /// manifest): one system call per batch instead of one per connection under load.
    Conns(Vec<ConnManifest>),
    /// The session registered by request `req` is now routed here.
    SidRegistered {
        /// Request number chosen by the worker.
        req: u64,
    },
    /// Answer to [`ToPrimary::LookupSid`].
    SidLocation {
        /// Request number chosen by the worker.
        req: u64,
        /// The live worker owning the session, if any.
        owner: Option<MemberId>,
    },
    /// Answer to [`ToPrimary::Pick`].
    Picked {
        /// Request number chosen by the worker.
        req: u64,
        /// The worker the new session goes to, or why it is refused.
        outcome: Result<MemberId, Refusal>,
    },
    /// Answer to [`ToPrimary::Health`]: the status and JSON body of the health check.
    Health {
        /// Request number chosen by the worker.
        req: u64,
        /// 200 (ready) or 503.
        status: u16,
        /// The JSON body.
        body: String,
    },
    /// Stop taking new work; finish what is in flight within `timeout_ms`, then exit.
    Drain {
        /// Time left before the primary kills the worker.
        timeout_ms: u64,
        /// Other workers go on (a reload): let handshakes in flight complete before closing
        /// sessions, so their clients reconnect to a worker that stays. False on shutdown.
        handover: bool,
    },
}

/// What a worker reports for the cluster's `/status` and `/metrics`, once per heartbeat
/// interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Per namespace: its path, Socket.IO sockets connected now, connects and disconnects
    /// seen since the worker started (sampled, see [`crate::worker`]'s metrics reporter).
    pub namespaces: Vec<NamespaceReport>,
    /// Bytes read from client connections (TLS records included), since start.
    pub bytes_in: u64,
    /// Bytes written to client connections, since start.
    pub bytes_out: u64,
    /// Socket.IO events received from clients, since start.
    pub events_in: u64,
    /// Socket.IO events sent to clients, since start.
    pub events_out: u64,
    /// Descriptors open in the worker.
    pub open_fds: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// The adapter's bus is up (always with IPC; the Redis connection in Redis mode).
    pub bus_up: bool,
    /// Adapter requests that timed out with answers missing, since start (IPC bus only).
    pub adapter_timeouts: u64,
}

/// One namespace of a [`WorkerReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceReport {
    /// The namespace path (`/`, `/chat`...).
    pub path: String,
    /// Sockets connected now.
    pub connected: u64,
    /// Connects since start.
    pub connects: u64,
    /// Disconnects since start.
    pub disconnects: u64,
}

/// Worker → primary.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToPrimary {
    /// The first message of every worker, checked before any other is read. Variant 0 with
    /// this layout in every build ([`hello`](super::hello)).
    Hello(super::hello::Hello),
    /// The app is initialised (namespaces subscribed on the bus); send connections.
    Ready {
        /// The socketioxide server id (`Uid`) of this worker, as it appears in adapter messages.
        server_uid: String,
    },
    /// Connections served to completion so far (monotonic), for least-connections balancing.
    Load {
        /// Total connections closed since start.
        closed_total: u64,
        /// Most connections this worker can hold within its descriptor limit, given the
        /// descriptors it uses for other things (measured).
        capacity: u64,
        /// Addresses of closed connections that counted against a per-IP cap, one entry per
        /// connection, since the previous report.
        closed_ips: Vec<IpAddr>,
    },
    /// Liveness signal, sent periodically by the worker's runtime.
    Heartbeat {
        /// Increasing counter.
        seq: u64,
        /// Resident memory of the worker, bytes.
        rss_bytes: u64,
    },
    /// A polling session was just created here: route its requests here. The worker holds the
    /// handshake response until [`ToWorker::SidRegistered`] comes back.
    RegisterSid {
        /// Request number echoed in the reply.
        req: u64,
        /// The new session.
        sid: SessionId,
    },
    /// Sessions that ended or no longer need routing (upgraded to websocket).
    UnregisterSids {
        /// The ids, at most a few thousand per message.
        sids: Vec<SessionId>,
    },
    /// Which worker owns this session? (A keep-alive connection carried a foreign sid.)
    LookupSid {
        /// Request number echoed in the reply.
        req: u64,
        /// The session asked about.
        sid: SessionId,
    },
    /// Pass the attached Unix socket to `target` as a forwarded connection.
    Forward {
        /// Destination worker.
        target: MemberId,
        /// Address of the client whose request is forwarded.
        peer: Option<SocketAddr>,
    },
    /// A handshake arrived on a kept-alive connection: which worker should take the new
    /// session? (Balanced like a new connection, caps included.)
    Pick {
        /// Request number echoed in the reply.
        req: u64,
        /// The client's address (after X-Forwarded-For), for ip-hash and per-IP caps.
        client_ip: Option<IpAddr>,
    },
    /// Counters and gauges for `/status` and `/metrics`.
    Report(WorkerReport),
    /// A health check arrived on a connection this worker serves (TLS): what does the
    /// primary say? Answered by [`ToWorker::Health`].
    Health {
        /// Request number echoed in the reply.
        req: u64,
    },
}

/// Most session ids sent in one [`ToPrimary::UnregisterSids`] (keeps it under the message cap).
pub const MAX_SIDS_PER_MESSAGE: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_unregister_batch_fits_a_message() {
        let sid = SessionId::parse("AAAAAAAAAAAAAAAA").unwrap();
        let msg = ToPrimary::UnregisterSids {
            sids: vec![sid; MAX_SIDS_PER_MESSAGE],
        };
        let len = postcard::to_allocvec(&msg).unwrap().len();
        assert!(len < super::super::channel::MAX_MESSAGE, "{len}");
    }
}
