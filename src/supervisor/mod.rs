//! The primary process: owns the listening socket, starts and supervises the workers, routes
//! every connection to one of them, and relays the adapter bus.
//!
//! Lifecycle (each phase is logged, so tests and operators can follow it):
//! 1. **start**: raise `RLIMIT_NOFILE`, take the listening socket (bound here or from systemd),
//!    spawn N workers by re-executing this binary ([`spawn`]), each linked by a control channel
//!    ([`link`]) and a bus ([`hub`]);
//! 2. **ready**: once every worker reported ready, print `listening on ADDR` and accept
//!    ([`accept`]): peek the head ([`peek`]), pick the worker ([`Shared::route`] with the
//!    [`sid_table`] and [`balance`]), pass the descriptor;
//! 3. **supervise**: restart crashed workers in their slot with backoff;
//! 4. **drain**: on SIGTERM/SIGINT stop accepting, let workers finish within the drain timeout,
//!    exit 0; a second signal forces the exit.

pub mod accept;
pub mod balance;
pub mod hub;
pub mod link;
pub mod listener;
pub mod peek;
pub mod sid_table;
pub mod slot;
pub mod spawn;

use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::Config;
use crate::ipc::message::{MemberId, ToWorker};

use balance::Balancer;
use hub::Hub;
use peek::{HeadRules, RequestHead};
use sid_table::SidTable;
use slot::{CONTROL_QUEUE, Phase, Roster, WorkerHandle};
use spawn::Spawner;

/// Errors of the primary.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The listening socket could not be set up.
    #[error(
        "cannot listen on {0}: {1} failed: {2} (is another process using the port? try another --listen)"
    )]
    Listen(String, &'static str, #[source] std::io::Error),
    /// Socket activation was malformed.
    #[error("systemd socket activation: {0}")]
    Activation(String),
    /// A worker could not be started.
    #[error("cannot {0}: {1}")]
    Spawn(String, #[source] std::io::Error),
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
    Runtime(#[source] std::io::Error),
    /// IPC setup failed.
    #[error(transparent)]
    Ipc(#[from] crate::ipc::IpcError),
    /// Redis mode was asked for but Redis cannot be used.
    #[error(transparent)]
    Redis(#[from] crate::adapter::RedisBusError),
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
}

/// Counters of the primary.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Connections handed to workers (also the next connection id).
    pub handed: AtomicU64,
    /// Connections refused because too many were waiting for their head.
    pub overloaded: AtomicU64,
    /// Connections closed for a bad, slow or missing head.
    pub bad_heads: AtomicU64,
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
    pub events: mpsc::UnboundedSender<Event>,
    pub stats: Stats,
}

impl Shared {
    /// The worker for a request head: the owner of its session, else the worker its sticky
    /// cookie names, else the balancer's choice among ready workers.
    pub fn route(&self, head: &RequestHead, peer: Option<IpAddr>) -> Option<Arc<WorkerHandle>> {
        let roster = self.roster.read().unwrap();
        if let Some(sid) = &head.sid {
            let owner = self.sids.lock().unwrap().owner(sid);
            if let Some(h) = owner.and_then(|m| roster.get(m)).filter(|h| h.is_alive()) {
                return Some(h.clone());
            }
            // Unknown session: any worker answers it as a single server would (400).
        }
        if let Some(h) = head.cookie_slot.and_then(|slot| roster.ready_in_slot(slot)) {
            return Some(h.clone());
        }
        let (cands, handles) = roster.candidates();
        self.balancer.pick(&cands, peer).map(|i| handles[i].clone())
    }

    /// One-line summary of the cluster (logged periodically, and systemd's STATUS=).
    pub fn status(&self) -> String {
        let roster = self.roster.read().unwrap();
        let ready = roster.count(Phase::Ready);
        let draining = roster.count(Phase::Draining);
        let starting = roster.count(Phase::Starting);
        drop(roster);
        let bus = self.hub.stats();
        format!(
            "workers: {ready}/{} ready, {starting} starting, {draining} draining; sessions routed: {}; connections: {}; bus: {} relayed, {} dropped",
            self.config.workers.resolve(),
            self.sids.lock().unwrap().len(),
            self.stats.handed.load(std::sync::atomic::Ordering::Relaxed),
            bus.relayed,
            bus.dropped,
        )
    }

    /// Routes again a connection whose worker died before receiving it.
    pub fn rehome(self: &Arc<Self>, fd: OwnedFd, peer: SocketAddr) {
        let std = std::net::TcpStream::from(fd);
        let Ok(stream) = tokio::net::TcpStream::from_std(std) else {
            return;
        };
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(accept::serve_connection(self.clone(), stream, peer, permit));
    }
}

/// Runs the primary until it is told to stop. Blocks the calling thread.
///
/// `exe` and `args` are what workers are started with (this binary and its arguments).
pub fn run(config: Config, exe: PathBuf, args: Vec<OsString>) -> Result<(), SupervisorError> {
    raise_nofile_limit();
    let (std_listener, activated) = match listener::from_systemd()? {
        Some(l) => (l, true),
        None => (listener::bind(config.listen, config.backlog)?, false),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SupervisorError::Runtime)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|e| SupervisorError::Listen(config.listen.to_string(), "register", e))?;
        if config.adapter == crate::config::AdapterKind::Redis {
            // Fail fast, before starting workers, on a wrong URL or an unreachable Redis.
            let url = config.redis_url.as_deref().unwrap_or_default();
            let timeout = Duration::from_millis(config.redis_connect_timeout_ms);
            crate::adapter::redis::probe(url, timeout).await?;
            tracing::info!(url = %crate::adapter::redis::redact(url), "Redis reachable");
        }
        let spawner = Spawner::start(tokio::runtime::Handle::current(), exe, args)?;
        Primary::new(config, spawner).run(listener, activated).await
    })
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

/// Restart bookkeeping of one slot.
#[derive(Debug)]
struct SlotState {
    backoff: Duration,
    crashes: u32,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

struct Primary {
    shared: Arc<Shared>,
    spawner: Spawner,
    events: mpsc::UnboundedReceiver<Event>,
    slots: Vec<SlotState>,
    next_member: u32,
    stopping: bool,
}

impl Primary {
    fn new(config: Config, spawner: Spawner) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let n = config.workers.resolve();
        let shared = Arc::new(Shared {
            rules: HeadRules {
                engine_prefix: config.engine_path_prefix(),
                cookie: config.sticky_cookie.clone(),
                max_head: config.max_head_bytes,
            },
            roster: RwLock::default(),
            sids: Mutex::default(),
            hub: Hub::new(config.bus_queue_bytes),
            balancer: Balancer::new(config.balance),
            pending: Arc::new(Semaphore::new(config.max_pending_heads)),
            events: tx,
            stats: Stats::default(),
            config,
        });
        Self {
            shared,
            spawner,
            events,
            slots: (0..n)
                .map(|_| SlotState {
                    backoff: FIRST_BACKOFF,
                    crashes: 0,
                })
                .collect(),
            next_member: 0,
            stopping: false,
        }
    }

    async fn run(
        mut self,
        listener: tokio::net::TcpListener,
        activated: bool,
    ) -> Result<(), SupervisorError> {
        let addr = listener
            .local_addr()
            .map_err(|e| SupervisorError::Listen("socket".into(), "getsockname", e))?;
        let n = self.slots.len();
        tracing::info!(workers = n, %addr, activated, "starting");
        for slot in 0..n {
            self.start_worker(slot).await?;
        }
        self.wait_all_ready(n).await?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept::accept_loop(self.shared.clone(), listener, stop_rx));
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
        }
        tracing::info!(%addr, workers = n, "listening on {addr}");

        let shared = self.shared.clone();
        let status_every = Duration::from_millis(self.shared.config.status_interval_ms.max(100));
        let status = tokio::spawn(async move {
            let mut tick = tokio::time::interval(status_every);
            tick.tick().await;
            let mut last = String::new();
            loop {
                tick.tick().await;
                let now = shared.status();
                if now != last {
                    tracing::info!("status: {now}");
                    last = now;
                }
            }
        });
        let mut sigterm = signal(SignalKind::terminate()).map_err(SupervisorError::Runtime)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(SupervisorError::Runtime)?;
        loop {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => break,
                },
                _ = sigterm.recv() => { tracing::info!("SIGTERM received"); break; }
                _ = sigint.recv() => { tracing::info!("SIGINT received"); break; }
            }
        }

        // Drain.
        status.abort();
        self.stopping = true;
        let _ = stop_tx.send(true);
        let _ = accept.await;
        let timeout = Duration::from_millis(self.shared.config.drain_timeout_ms);
        let handles: Vec<_> = self.shared.roster.read().unwrap().iter().cloned().collect();
        tracing::info!(workers = handles.len(), ?timeout, "draining workers");
        for h in &handles {
            h.set_phase(Phase::Draining);
            let _ = h.try_send(
                ToWorker::Drain {
                    timeout_ms: timeout.as_millis() as u64,
                },
                None,
            );
        }
        let deadline = tokio::time::Instant::now() + timeout + Duration::from_millis(500);
        let forced = loop {
            if self.shared.roster.read().unwrap().iter().next().is_none() {
                break false;
            }
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => break false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("drain timeout reached; killing the remaining workers");
                    break true;
                }
                _ = sigterm.recv() => { tracing::warn!("second signal: forcing exit"); break true; }
                _ = sigint.recv() => { tracing::warn!("second signal: forcing exit"); break true; }
            }
        };
        if forced {
            let left: Vec<_> = self.shared.roster.read().unwrap().iter().cloned().collect();
            for h in &left {
                h.kill();
            }
            // Reap them so none outlives us (they also die by PDEATHSIG when we exit).
            let reap_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.shared.roster.read().unwrap().iter().next().is_some() {
                match tokio::time::timeout_at(reap_deadline, self.events.recv()).await {
                    Ok(Some(ev)) => self.on_event(ev).await,
                    _ => break,
                }
            }
        }
        tracing::info!("stopped");
        Ok(())
    }

    async fn wait_all_ready(&mut self, n: usize) -> Result<(), SupervisorError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.shared.config.ready_timeout_ms);
        loop {
            let ready = self.shared.roster.read().unwrap().count(Phase::Ready);
            if ready >= n {
                tracing::info!(workers = n, "all workers ready");
                return Ok(());
            }
            let ev = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => unreachable!("the primary holds an event sender"),
                Err(_) => {
                    let slot = self
                        .shared
                        .roster
                        .read()
                        .unwrap()
                        .iter()
                        .find(|h| h.phase() != Phase::Ready)
                        .map(|h| h.slot)
                        .unwrap_or(0);
                    self.kill_all();
                    return Err(SupervisorError::Startup {
                        slot,
                        reason: format!(
                            "not ready within {} ms (--ready-timeout-ms)",
                            self.shared.config.ready_timeout_ms
                        ),
                    });
                }
            };
            match ev {
                Event::Exited(member, status) => {
                    let slot = self.forget(member).map(|h| h.slot).unwrap_or(0);
                    self.kill_all();
                    return Err(SupervisorError::Startup {
                        slot,
                        reason: format!(
                            "the worker process exited ({status}); its error is logged above"
                        ),
                    });
                }
                Event::Ready(member) => self.log_ready(member),
                Event::LinkClosed(_) | Event::Respawn(_) => {}
            }
        }
    }

    fn kill_all(&self) {
        for h in self.shared.roster.read().unwrap().iter() {
            h.kill();
        }
    }

    fn log_ready(&self, member: MemberId) {
        if let Some(h) = self.shared.roster.read().unwrap().get(member) {
            tracing::info!(
                slot = h.slot,
                pid = h.pid,
                worker = %member,
                startup_ms = h.started.elapsed().as_millis() as u64,
                "worker ready"
            );
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Ready(member) => self.log_ready(member),
            Event::LinkClosed(member) => {
                tracing::debug!(worker = %member, "control channel closed");
            }
            Event::Exited(member, status) => {
                let Some(h) = self.forget(member) else {
                    return;
                };
                let expected = self.stopping || h.phase() == Phase::Draining;
                if expected {
                    tracing::info!(slot = h.slot, pid = h.pid, %status, "worker exited");
                    return;
                }
                let state = &mut self.slots[h.slot];
                if h.started.elapsed() >= HEALTHY_AFTER {
                    state.backoff = FIRST_BACKOFF;
                    state.crashes = 0;
                }
                state.crashes += 1;
                let delay = state.backoff;
                state.backoff = (state.backoff.mul_f64(1.5)).min(MAX_BACKOFF);
                tracing::error!(
                    slot = h.slot,
                    pid = h.pid,
                    %status,
                    crashes = state.crashes,
                    restart_in_ms = delay.as_millis() as u64,
                    "worker died; restarting it in its slot"
                );
                let events = self.shared.events.clone();
                let slot = h.slot;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = events.send(Event::Respawn(slot));
                });
            }
            Event::Respawn(slot) => {
                if self.stopping {
                    return;
                }
                if let Err(e) = self.start_worker(slot).await {
                    tracing::error!(slot, "cannot restart worker: {e}");
                    let state = &mut self.slots[slot];
                    let delay = state.backoff;
                    state.backoff = (state.backoff.mul_f64(1.5)).min(MAX_BACKOFF);
                    let events = self.shared.events.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = events.send(Event::Respawn(slot));
                    });
                }
            }
        }
    }

    /// Removes an exited worker everywhere; returns its handle.
    fn forget(&self, member: MemberId) -> Option<Arc<WorkerHandle>> {
        let h = self.shared.roster.write().unwrap().remove(member)?;
        let previous = h.set_phase(Phase::Gone);
        let purged = self.shared.sids.lock().unwrap().purge(member);
        if purged > 0 {
            tracing::info!(
                slot = h.slot,
                purged,
                "sessions of the exited worker purged"
            );
        }
        // Keep the phase it had for the caller's decision.
        h.set_phase(previous);
        Some(h)
    }

    async fn start_worker(&mut self, slot: usize) -> Result<(), SupervisorError> {
        let member = MemberId(self.next_member);
        self.next_member += 1;
        let spawned = self.spawner.spawn(slot, member).await?;
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let handle = Arc::new(WorkerHandle::new(member, slot, spawned.pid, tx));
        self.shared.roster.write().unwrap().insert(handle.clone());
        link::start(self.shared.clone(), handle.clone(), spawned.ctl, rx)?;
        spawned
            .bus
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(spawned.bus))
            .map(|bus| self.shared.hub.attach(member, bus))
            .map_err(|e| SupervisorError::Spawn("set up the bus socket".into(), e))?;
        let events = self.shared.events.clone();
        let mut child = spawned.child;
        let waiter = handle.clone();
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    _ = waiter.kill_requested() => { let _ = child.start_kill(); }
                }
            };
            match status {
                Ok(status) => {
                    let _ = events.send(Event::Exited(member, status));
                }
                Err(e) => tracing::error!(worker = %member, "cannot wait for worker: {e}"),
            }
        });
        tracing::info!(slot, pid = spawned.pid, worker = %member, "worker started");
        Ok(())
    }
}
