//! The primary process: owns the listening socket, starts and supervises the workers, routes
//! every connection to one of them, and relays the adapter bus.
//!
//! Lifecycle (each phase is logged, so tests and operators can follow it):
//! 1. **start**: raise `RLIMIT_NOFILE`, take the listening socket (bound here or from systemd),
//!    spawn N workers by re-executing this binary ([`spawn`]), each linked by a control channel
//!    ([`link`]) and a bus ([`hub`]);
//! 2. **ready**: once every worker reported ready, print `listening on ADDR` and accept
//!    ([`accept`]): peek the head ([`peek`]), pick the worker (`Shared::route` with the
//!    [`sid_table`] and [`balance`]), pass the descriptor;
//! 3. **supervise** (`primary`): restart crashed or hung workers in their slot with backoff,
//!    roll workers one slot at a time on SIGHUP (or over the memory limit), keep systemd informed
//!    ([`notify`]);
//! 4. **drain**: on SIGTERM/SIGINT stop accepting, let workers finish within the drain timeout,
//!    exit 0; a second signal forces the exit.

use crate::sync::{LockExt, RwLockExt};
pub mod accept;
mod admin;
pub mod balance;
pub mod caps;
pub mod hub;
pub(crate) mod journal;
pub mod link;
pub mod listener;
pub(crate) mod metrics;
pub mod notify;
pub mod peek;
mod primary;
pub mod sid_table;
pub mod slot;
pub mod spawn;
pub(crate) mod tasks;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::config::Config;
use crate::config_file::{EnvFile, effective_config};
use crate::ipc::message::MemberId;

use balance::Balancer;
use hub::Hub;
use peek::{HeadRules, RequestHead};
use primary::{Primary, Signals};
use sid_table::SidTable;
use slot::{Phase, Roster, WorkerHandle};
use spawn::Spawner;

/// Errors of the primary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {0}: {1} failed: {2} ({hint})", hint = listen_hint(.2))]
    Listen(String, &'static str, std::io::Error),
    /// Socket activation was malformed.
    #[error("systemd socket activation: {0}")]
    Activation(String),
    /// A worker could not be started.
    #[error("cannot {0}: {1}")]
    Spawn(String, std::io::Error),
    /// A worker failed during startup.
    #[error("worker {slot} failed during startup: {reason}")]
    Startup {
        /// Slot of the worker.
        slot: usize,
        /// What happened.
        reason: String,
    },
    /// The runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// IPC setup failed.
    #[error(transparent)]
    Ipc(#[from] crate::ipc::IpcError),
    /// Redis mode was asked for but Redis cannot be used.
    #[error(transparent)]
    Redis(#[from] crate::adapter::RedisBusError),
    /// The config file cannot be used.
    #[error(transparent)]
    ConfigFile(#[from] crate::config_file::ConfigFileError),
    /// `--tls-cert` / `--tls-key` cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::door::tls::TlsError),
    /// The accept loop ended while the cluster was serving: nothing could accept connections
    /// any more, so the primary drained its workers and exits non-zero (systemd restarts it).
    #[error(
        "the accept loop {0}; no new connection could be accepted, so the cluster drained and \
         exited (a bug: please report it with the log above)"
    )]
    AcceptLoop(String),
    /// Another long-lived task of the primary panicked (a control link, a bus relay, a worker's
    /// waiter, the admin listener): the cluster drained and exits non-zero.
    #[error(
        "the primary's {0} task panicked: {1}; the cluster drained and exited (a bug: please \
         report it with the log above)"
    )]
    TaskPanicked(&'static str, String),
}

/// What to do about a listening socket that cannot be set up.
fn listen_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges: use a port of 1024 or more, the socket unit in \
             systemd/ (systemd binds the port and passes it), or give the binary \
             CAP_NET_BIND_SERVICE (setcap 'cap_net_bind_service=+ep' BINARY)"
        }
        std::io::ErrorKind::AddrInUse => {
            "another process is using the port: stop it, or choose another --listen"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "this machine has no such address: use one of its addresses, or 0.0.0.0 for all"
        }
        _ => "check --listen",
    }
}

/// Lifecycle events, handled by the supervision loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// The worker reported ready.
    Ready(MemberId),
    /// The worker's control channel closed.
    LinkClosed(MemberId),
    /// The worker process exited.
    Exited(MemberId, std::process::ExitStatus),
    /// Time to start a worker in this slot again.
    Respawn(usize),
    /// A long-lived task of the primary panicked ([`tasks`]): its name and message.
    TaskPanicked(&'static str, String),
}

/// Counters of the primary.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Connections handed to workers (also the next connection id).
    pub handed: AtomicU64,
    /// Of those, handed straight from the accept loop (head already complete).
    pub on_accept: AtomicU64,
    /// Connections refused because too many were waiting for their head.
    pub overloaded: AtomicU64,
    /// Connections closed for a bad, slow or missing head.
    pub bad_heads: AtomicU64,
    /// New sessions refused by a cap.
    pub refused: AtomicU64,
    /// Beats of the accept loop ([`accept::ACCEPT_BEAT`]): it is alive and being polled.
    pub accept_beats: AtomicU64,
}

/// State shared by the primary's tasks.
pub(crate) struct Shared {
    pub config: Config,
    pub rules: HeadRules,
    pub roster: RwLock<Roster>,
    pub sids: Mutex<SidTable>,
    pub hub: Arc<Hub>,
    pub balancer: Balancer,
    pub pending: Arc<Semaphore>,
    /// Refused connections being answered 503 and drained ([`accept::MAX_LINGERING`]).
    pub lingering: Arc<Semaphore>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Lifecycle events, for `/events`.
    pub journal: journal::Journal,
    /// Spawns the long-lived tasks, watched.
    pub tasks: tasks::Tasks,
    pub stats: Stats,
    /// Connection caps and per-address counts.
    pub caps: caps::Caps,
    /// The TLS configuration is on: connections start with a TLS record, heads are not read.
    pub tls: bool,
    /// Counters for `/metrics`, and the draining flag of `/readyz`.
    pub metrics: metrics::Metrics,
}

/// Socket.IO sockets connected over all workers (every transport), from their last reports.
fn roster_reports(shared: &Shared) -> u64 {
    let roster = shared.roster.read_unpoisoned();
    roster
        .iter()
        .filter_map(|h| {
            h.report
                .lock_unpoisoned()
                .as_ref()
                .map(|r| r.namespaces.iter().map(|n| n.connected).sum::<u64>())
        })
        .sum()
}

/// Where a connection (or a new session on a kept-alive connection) goes.
#[derive(Debug)]
pub(crate) enum Decision {
    /// To this worker, for this reason.
    Serve(Arc<WorkerHandle>, metrics::RouteReason),
    /// Nowhere: a cap is reached (answer 503 with Retry-After).
    Refuse(crate::ipc::message::Refusal),
    /// No worker is ready.
    NoWorker,
}

impl Shared {
    /// The worker for a connection: for a request of a live session, its owner (never
    /// refused); otherwise, within the caps, the worker the sticky cookie names, else the
    /// balancer's choice among ready workers with room. `head` is `None` when the first request
    /// cannot be read (TLS).
    pub fn route(&self, head: Option<&RequestHead>, client: Option<IpAddr>) -> Decision {
        let roster = self.roster.read_unpoisoned();
        let mut unknown_sid = false;
        if let Some(sid) = head.and_then(|h| h.sid.as_ref()) {
            let owner = self.sids.lock_unpoisoned().owner(sid);
            if let Some(h) = owner.and_then(|m| roster.get(m)).filter(|h| h.is_alive()) {
                return Decision::Serve(h.clone(), metrics::RouteReason::Sid);
            }
            // Unknown session: any worker answers it as a single server would (400).
            unknown_sid = true;
        }
        match self.new_session(&roster, head.and_then(|h| h.cookie_slot), client) {
            Decision::Serve(h, _) if unknown_sid => {
                Decision::Serve(h, metrics::RouteReason::UnknownSid)
            }
            Decision::Serve(h, metrics::RouteReason::Balance) if head.is_none() => {
                Decision::Serve(h, metrics::RouteReason::Tls)
            }
            other => other,
        }
    }

    /// The worker for a new session (caps first, then the cookie's slot, then the balancer).
    pub fn new_session(
        &self,
        roster: &Roster,
        cookie_slot: Option<usize>,
        client: Option<IpAddr>,
    ) -> Decision {
        let open_total = roster
            .iter()
            .filter(|h| h.is_alive())
            .map(|h| h.load())
            .sum();
        if let Some(r) = self.caps.check(open_total, client) {
            return Decision::Refuse(r);
        }
        let per_worker = self.caps.per_worker;
        if let Some(h) = cookie_slot
            .and_then(|slot| roster.ready_in_slot(slot))
            .filter(|h| h.has_room(per_worker))
        {
            return Decision::Serve(h.clone(), metrics::RouteReason::Cookie);
        }
        let (cands, handles) = roster.candidates(per_worker);
        match self.balancer.pick(&cands, client) {
            Some(i) => Decision::Serve(handles[i].clone(), metrics::RouteReason::Balance),
            None if roster.count(Phase::Ready) > 0 => {
                Decision::Refuse(crate::ipc::message::Refusal::WorkerFull)
            }
            None => Decision::NoWorker,
        }
    }

    /// A worker that can still receive a descriptor (below its descriptor capacity), least
    /// loaded first: where a TLS connection over a cap goes to be answered 503.
    pub fn any_with_descriptors(&self) -> Option<Arc<WorkerHandle>> {
        let roster = self.roster.read_unpoisoned();
        let (_, handles) = roster.candidates(u64::MAX);
        handles.into_iter().min_by_key(|h| h.load())
    }

    /// One-line summary of the cluster (logged periodically, and systemd's STATUS=).
    pub fn status(&self) -> String {
        let roster = self.roster.read_unpoisoned();
        let ready = roster.count(Phase::Ready);
        let draining = roster.count(Phase::Draining);
        let starting = roster.count(Phase::Starting);
        drop(roster);
        let bus = self.hub.stats();
        let sockets: u64 = roster_reports(self);
        format!(
            "workers: {ready}/{} ready, {starting} starting, {draining} draining; Socket.IO sockets: {sockets}; polling sessions routed: {}; connections: {} ({} routed on accept); bus: {} relayed, {} dropped",
            self.config.workers.resolve(),
            self.sids.lock_unpoisoned().len(),
            self.stats.handed.load(std::sync::atomic::Ordering::Relaxed),
            self.stats
                .on_accept
                .load(std::sync::atomic::Ordering::Relaxed),
            bus.relayed,
            bus.dropped,
        )
    }

    /// Routes again a connection whose worker died before receiving it (its PROXY header, if
    /// any, was consumed already: `peer` is the client's address from it).
    pub fn rehome(self: &Arc<Self>, fd: OwnedFd, peer: SocketAddr) {
        let std = std::net::TcpStream::from(fd);
        let Ok(stream) = tokio::net::TcpStream::from_std(std) else {
            return;
        };
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            return;
        };
        let arrival = accept::Arrival {
            tcp_peer: peer,
            client: peer,
            proxied: true,
            accepted: std::time::Instant::now(),
        };
        tokio::spawn(accept::serve_connection(
            self.clone(),
            stream,
            arrival,
            permit,
        ));
    }
}

/// Runs the primary until it is told to stop. Blocks the calling thread.
///
/// `exe` and `args` are what workers are started with (this binary and its arguments).
pub fn run(config: Config, exe: PathBuf, args: Vec<OsString>) -> Result<(), SupervisorError> {
    raise_nofile_limit();
    let (config, file) = match config.config_file.clone() {
        Some(path) => {
            let file = EnvFile::read(&path)?;
            let config = effective_config(&args, &file, &path)?;
            tracing::info!(path = %path.display(), vars = file.vars().len(), "config file read");
            (config, file)
        }
        None => (config, EnvFile::default()),
    };
    if let Some((cert, key)) = config.tls() {
        // One clear line at start for a certificate or key that cannot serve.
        crate::door::tls::load(cert, key)?;
    }
    let (std_listener, activated) = match listener::from_systemd()? {
        Some(l) => (l, true),
        None => (listener::bind(config.listen, config.backlog)?, false),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SupervisorError::Runtime)?;
    rt.block_on(async move {
        // First, so that a signal during start-up is handled, not fatal.
        let mut signals = Signals::install()?;
        if config.adapter == crate::config::AdapterKind::Redis {
            // Fail fast, before starting workers, on a wrong URL or an unreachable Redis.
            let url = config.redis_url.as_deref().unwrap_or_default();
            let timeout = Duration::from_millis(config.redis_connect_timeout_ms);
            tokio::select! {
                probed = crate::adapter::redis::probe(url, timeout) => probed?,
                _ = signals.term.recv() => { tracing::info!("SIGTERM received during start-up"); return Ok(()); }
                _ = signals.int.recv() => { tracing::info!("SIGINT received during start-up"); return Ok(()); }
            }
            tracing::info!(url = %crate::adapter::redis::redact(url), "Redis reachable");
        }
        let spawner = Spawner::start(tokio::runtime::Handle::current(), exe, args.clone())?;
        Primary::new(config, spawner, signals, args, file)?
            .run(std_listener, activated)
            .await
    })
}

/// The soft open-file limit in force (workers inherit it).
pub(crate) fn nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Raises the soft open-file limit to the hard limit: every connection is a descriptor, and
/// descriptors in flight to a worker count against the primary.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}
