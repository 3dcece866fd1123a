//! The primary's lifecycle: start the workers, supervise them, roll them, drain them.
//!
//! One task owns this state machine and reacts to worker events, signals and a periodic tick:
//! - **crash recovery**: a worker that exits is restarted in its slot after a backoff (×1.5 from
//!   200 ms up to 15 s, reset once a worker stayed up 30 s); other workers are not touched;
//! - **hung workers**: a worker whose heartbeats stop for `--heartbeat-timeout-ms` (or that does
//!   not become ready within `--ready-timeout-ms`) is killed and replaced;
//! - **rolling reload** (SIGHUP, or a worker over `--worker-memory-limit-mb`): one slot at a
//!   time, start a new worker from the binary on disk, wait until it is ready (it takes new
//!   sessions from then on), then drain the old one;
//! - **systemd**: READY/RELOADING/STOPPING/STATUS notifications, and WATCHDOG only while every
//!   worker answers heartbeats.

use crate::sync::{LockExt, RwLockExt};
use std::ffi::OsString;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::Config;
use crate::config_file::{EnvFile, ReloadPlan, effective_config};
use crate::ipc::message::{MemberId, ToWorker};

use super::balance::Balancer;
use super::hub::Hub;
use super::journal::ClusterEvent;
use super::metrics::RestartCause;
use super::notify::Notifier;
use super::peek::HeadRules;
use super::slot::{CONTROL_QUEUE, Phase, WorkerHandle};
use super::spawn::Spawner;
use super::tasks::{Tasks, panic_text};
use super::{Event, Shared, Stats, SupervisorError, accept, caps, link, nofile_limit};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Restart bookkeeping of one slot.
#[derive(Debug)]
struct SlotState {
    backoff: Duration,
    crashes: u32,
}

/// How a wait inside a reload ended.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    Done,
    TimedOut,
    /// SIGTERM/SIGINT: stop everything.
    Stop,
}

/// The signals the primary handles. Installed first thing, so that a signal during start-up
/// (while Redis is probed, while workers start) is handled instead of killing the process.
pub(crate) struct Signals {
    pub term: Signal,
    pub int: Signal,
    pub hup: Signal,
}

impl Signals {
    pub fn install() -> Result<Self, SupervisorError> {
        let sig = |k| signal(k).map_err(SupervisorError::Runtime);
        Ok(Self {
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
            hup: sig(SignalKind::hangup())?,
        })
    }
}

/// The delay before restarting a slot whose worker died, and the one after it.
///
/// Starts at 200 ms and grows ×1.5 per crash up to 15 s; a worker that stayed up 30 s or more
/// resets it (its death is not part of a crash loop).
fn crash_backoff(state: &mut SlotState, uptime: Duration) -> Duration {
    if uptime >= HEALTHY_AFTER {
        state.backoff = FIRST_BACKOFF;
        state.crashes = 0;
    }
    state.crashes += 1;
    let delay = state.backoff;
    state.backoff = state.backoff.mul_f64(1.5).min(MAX_BACKOFF);
    delay
}

pub(super) struct Primary {
    shared: Arc<Shared>,
    /// The configuration in effect: supervision settings are read from here (a reload with a
    /// config file replaces it); routing settings stay those of `shared.config`.
    config: Config,
    /// Our arguments, to read the config file again the way it was read at start.
    args: Vec<OsString>,
    /// The config file's variables, set in every new worker's environment.
    env: Arc<[(String, String)]>,
    spawner: Spawner,
    events: mpsc::UnboundedReceiver<Event>,
    slots: Vec<SlotState>,
    next_member: u32,
    stopping: bool,
    notifier: Notifier,
    signals: Signals,
    tick: tokio::time::Interval,
    /// A reload was asked for while one was running.
    reload_again: bool,
    /// Slots to roll because their worker is over the memory limit.
    rolls: Vec<usize>,
    last_status: String,
    /// Rolling reloads started so far (the generation of the workers started now).
    generation: u64,
    /// The admin listener, if `--admin-listen` (kept so it serves until the primary exits).
    admin: Option<tokio::task::JoinHandle<()>>,
    /// The accept loop's last beat count seen and when it changed (once it runs).
    accept_beat: Option<(u64, std::time::Instant)>,
    /// A watched task that panicked: its name and message (the primary then ends).
    task_failed: Option<(&'static str, String)>,
}

impl Primary {
    pub(super) fn new(
        config: Config,
        spawner: Spawner,
        signals: Signals,
        args: Vec<OsString>,
        file: EnvFile,
    ) -> Result<Self, SupervisorError> {
        let (tx, events) = mpsc::unbounded_channel();
        let n = config.workers.resolve();
        let notifier = Notifier::from_env();
        let every = Duration::from_millis(config.heartbeat_interval_ms.max(50));
        let every = match notifier.watchdog() {
            Some(w) => every.min(w / 3),
            None => every,
        };
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = Arc::new(Shared {
            rules: HeadRules {
                engine_prefix: config.engine_path_prefix(),
                cookie: config.sticky_cookie.clone(),
                max_head: config.max_head_bytes,
                trusted: config.trusted_proxies.clone(),
                health_path: Some(config.health_path.clone()).filter(|p| !p.is_empty()),
            },
            metrics: super::metrics::Metrics::new(n),
            caps: caps::Caps::new(&config, nofile_limit(), n),
            tls: config.tls().is_some(),
            roster: Default::default(),
            sids: Default::default(),
            hub: Hub::new(config.bus_queue_bytes),
            balancer: Balancer::new(config.balance),
            pending: Arc::new(Semaphore::new(config.max_pending_heads)),
            lingering: Arc::new(Semaphore::new(accept::MAX_LINGERING)),
            tasks: Tasks::new(tx.clone()),
            events: tx,
            stats: Stats::default(),
            journal: Default::default(),
            config: config.clone(),
        });
        shared.hub.watch_with(shared.tasks.clone());
        Ok(Self {
            shared,
            config,
            args,
            env: file.vars().to_vec().into(),
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
            notifier,
            signals,
            tick,
            reload_again: false,
            rolls: Vec::new(),
            last_status: String::new(),
            generation: 0,
            admin: None,
            accept_beat: None,
            task_failed: None,
        })
    }

    pub(super) async fn run(
        mut self,
        listener: std::net::TcpListener,
        activated: bool,
    ) -> Result<(), SupervisorError> {
        let addr = listener
            .local_addr()
            .map_err(|e| SupervisorError::Listen("socket".into(), "getsockname", e))?;
        let n = self.slots.len();
        tracing::info!(workers = n, %addr, activated, "starting");
        if let Some(admin_addr) = self.config.admin_listen {
            // Before the workers: /livez answers, /readyz says 503 until one is ready.
            let (task, bound) = super::admin::start(self.shared.clone(), admin_addr)?;
            tracing::info!(addr = %bound, "admin listener on {bound} (/livez /readyz /status /metrics /events)");
            self.admin = Some(task);
        }
        for slot in 0..n {
            self.start_worker(slot).await?;
        }
        if !self.wait_all_ready(n).await? {
            self.shared.metrics.draining.store(true, Ordering::Relaxed);
            self.stopping = true;
            self.kill_all();
            self.reap(Duration::from_secs(2)).await;
            tracing::info!("stopped before serving");
            return Ok(());
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut accept = tokio::spawn(accept::accept_loop(self.shared.clone(), listener, stop_rx));
        self.accept_beat = Some((0, std::time::Instant::now()));
        // Set when the accept loop ends on its own (a panic or an error): the cluster cannot take
        // connections any more, so it drains and exits non-zero instead of feeding the watchdog.
        let mut accept_ended: Option<String> = None;

        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
        }
        tracing::info!(%addr, workers = n, "listening on {addr}");
        self.shared.journal.record(ClusterEvent::Listening {
            addr: addr.to_string(),
            activated,
        });
        self.last_status = self.shared.status();
        self.notifier.ready(&self.last_status);

        let status_every = Duration::from_millis(self.config.status_interval_ms.max(100));
        let mut status_tick = tokio::time::interval(status_every);
        status_tick.tick().await;
        let mut last_logged = String::new();
        loop {
            // A watched task panicked (`tasks`), seen here or inside a reload's waits.
            if self.task_failed.is_some() {
                break;
            }
            if let Some(slot) = self.rolls.pop() {
                if self.roll(vec![slot], "memory limit").await == Wait::Stop {
                    break;
                }
                continue;
            }
            tokio::select! {
                res = &mut accept => {
                    let why = match res {
                        Ok(()) => "stopped (its listening socket failed)".to_owned(),
                        Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
                        Err(e) => format!("was cancelled: {e}"),
                    };
                    tracing::error!(
                        "the accept loop {why}; draining the workers and exiting with an error"
                    );
                    self.shared.journal.record(ClusterEvent::AcceptLoopEnded { why: why.clone() });
                    accept_ended = Some(why);
                    break;
                }
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => break,
                },
                _ = self.signals.term.recv() => { tracing::info!("SIGTERM received"); break; }
                _ = self.signals.int.recv() => { tracing::info!("SIGINT received"); break; }
                _ = self.signals.hup.recv() => {
                    if self.reload().await == Wait::Stop {
                        break;
                    }
                }
                _ = self.tick.tick() => {
                    self.on_tick();
                    // Alive but no longer polled: as bad as a panic, and the watchdog has
                    // stopped already.
                    let silent = self.accept_silence();
                    if silent > Duration::from_millis(self.config.heartbeat_timeout_ms) {
                        let why = format!("stopped answering ({} ms without a beat)", silent.as_millis());
                        tracing::error!(
                            "the accept loop {why}; draining the workers and exiting with an error"
                        );
                        accept.abort();
                        self.shared.journal.record(ClusterEvent::AcceptLoopEnded { why: why.clone() });
                        accept_ended = Some(why);
                        break;
                    }
                }
                _ = status_tick.tick() => {
                    let now = self.shared.status();
                    if now != last_logged {
                        tracing::info!("status: {now}");
                        last_logged = now;
                    }
                }
            }
        }

        // Drain. /readyz answers 503 from now on.
        self.shared.metrics.draining.store(true, Ordering::Relaxed);
        self.stopping = true;
        self.notifier.stopping();
        self.shared.journal.record(ClusterEvent::Draining);
        let _ = stop_tx.send(true);
        if accept_ended.is_none() {
            let _ = accept.await;
        }
        self.drain_all().await;
        self.shared.journal.record(ClusterEvent::Stopped);
        if let Some(why) = accept_ended {
            return Err(SupervisorError::AcceptLoop(why));
        }
        if let Some((name, why)) = self.task_failed.take() {
            return Err(SupervisorError::TaskPanicked(name, why));
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Every worker handle, as the roster holds them now.
    fn workers(&self) -> Vec<Arc<WorkerHandle>> {
        self.shared
            .roster
            .read_unpoisoned()
            .iter()
            .cloned()
            .collect()
    }

    /// Drains every worker within the drain timeout; a second signal or the timeout kills them.
    async fn drain_all(&mut self) {
        let timeout = Duration::from_millis(self.config.drain_timeout_ms);
        let handles = self.workers();
        tracing::info!(workers = handles.len(), ?timeout, "draining workers");
        for h in &handles {
            drain(h, timeout, false);
        }
        let deadline = tokio::time::Instant::now() + timeout + Duration::from_millis(500);
        let forced = loop {
            if self.shared.roster.read_unpoisoned().iter().next().is_none() {
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
                _ = self.signals.term.recv() => { tracing::warn!("second signal: forcing exit"); break true; }
                _ = self.signals.int.recv() => { tracing::warn!("second signal: forcing exit"); break true; }
            }
        };
        if forced {
            self.kill_all();
            // Reap them so none outlives us (they would also die by PDEATHSIG when we exit).
            self.reap(Duration::from_secs(2)).await;
        }
    }

    /// Handles exit events until no worker is left or `within` passed.
    async fn reap(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.shared.roster.read_unpoisoned().iter().next().is_some() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => self.on_event(ev).await,
                _ => break,
            }
        }
    }

    /// Logs why a reload is refused and records it; returns `false` (the reload does not go on).
    fn refuse_reload(&self, reason: String) -> bool {
        tracing::error!("{reason}");
        self.shared
            .journal
            .record(ClusterEvent::ReloadRefused { reason });
        false
    }

    /// With `--config-file`: reads it again for a reload. `false` when the reload must not go
    /// on (the file is unreadable or invalid, or changes a setting no reload can change); the
    /// error says which and what to do.
    fn reread_config_file(&mut self) -> bool {
        let Some(path) = self.config.config_file.clone() else {
            // The certificate files may have been replaced: new workers read them; refuse a
            // reload that would start workers unable to serve.
            if let Some((cert, key)) = self.config.tls()
                && let Err(e) = crate::door::tls::load(cert, key)
            {
                return self.refuse_reload(format!(
                    "reload refused, workers unchanged: {e}; fix it and reload again"
                ));
            }
            return true;
        };
        let read = EnvFile::read(&path)
            .and_then(|file| effective_config(&self.args, &file, &path).map(|c| (file, c)));
        let (file, new) = match read {
            Ok(v) => v,
            Err(e) => {
                return self.refuse_reload(format!(
                    "reload refused, workers unchanged: {e}; fix the file and reload again"
                ));
            }
        };
        if let Some((cert, key)) = new.tls()
            && let Err(e) = crate::door::tls::load(cert, key)
        {
            return self.refuse_reload(format!(
                "reload refused, workers unchanged: {e}; fix it and reload again"
            ));
        }
        let plan = ReloadPlan::new(&self.config, &new);
        if !plan.refused.is_empty() {
            return self.refuse_reload(format!(
                "reload refused, workers unchanged: {} cannot change while the cluster runs (old \
                 and new workers would not see each other); restart the service to apply it, or \
                 revert it and reload again (config file {})",
                plan.refused.join(", "),
                path.display()
            ));
        }
        if !plan.kept.is_empty() {
            tracing::warn!(
                path = %path.display(),
                "{} changed: read by the primary only at start, so kept until a restart",
                plan.kept.join(", ")
            );
        }
        tracing::info!(path = %path.display(), vars = file.vars().len(), "config file read again");
        self.env = file.vars().to_vec().into();
        self.config = new;
        true
    }

    /// SIGHUP: replaces every worker, one slot at a time, with one started from the binary on
    /// disk. New sessions go to each new worker as soon as it is ready; the old one drains.
    async fn reload(&mut self) -> Wait {
        loop {
            tracing::info!("SIGHUP received: rolling reload of every worker");
            self.shared.journal.record(ClusterEvent::ReloadStarted);
            self.notifier.reloading();
            if !self.reread_config_file() {
                self.notifier.ready(&self.last_status);
                if !std::mem::take(&mut self.reload_again) {
                    return Wait::Done;
                }
                continue;
            }
            let slots: Vec<usize> = (0..self.slots.len()).collect();
            self.generation += 1;
            let outcome = self.roll(slots, "reload").await;
            if outcome == Wait::Stop {
                return Wait::Stop;
            }
            self.last_status = self.shared.status();
            self.notifier.ready(&self.last_status);
            tracing::info!("reload finished: {}", self.last_status);
            self.shared.journal.record(ClusterEvent::ReloadFinished {
                status: self.last_status.clone(),
            });
            if !std::mem::take(&mut self.reload_again) {
                return Wait::Done;
            }
        }
    }

    /// Replaces the worker of each slot in turn: start the successor, wait until it is ready,
    /// then drain the predecessor and wait (bounded) for it to exit.
    async fn roll(&mut self, slots: Vec<usize>, why: &str) -> Wait {
        let ready_timeout = Duration::from_millis(self.config.ready_timeout_ms);
        let drain_timeout = Duration::from_millis(self.config.drain_timeout_ms);
        for slot in slots {
            let old: Vec<Arc<WorkerHandle>> = self
                .shared
                .roster
                .read_unpoisoned()
                .iter()
                .filter(|h| h.slot == slot && h.phase() != Phase::Draining)
                .cloned()
                .collect();
            let new = match self.start_worker(slot).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(
                        slot,
                        "{why}: cannot start a new worker ({e}); keeping the old one"
                    );
                    continue;
                }
            };
            let deadline = tokio::time::Instant::now() + ready_timeout;
            let waited = self
                .wait_until(deadline, |p| p.member_phase(new) != Some(Phase::Starting))
                .await;
            match (waited, self.member_phase(new)) {
                (Wait::Stop, _) => return Wait::Stop,
                (_, Some(Phase::Ready)) => {}
                _ => {
                    tracing::error!(
                        slot,
                        "{why}: the new worker did not become ready; keeping the old one"
                    );
                    self.shared
                        .journal
                        .record(ClusterEvent::ReloadKeptWorker { slot });
                    if let Some(h) = self.shared.roster.read_unpoisoned().get(new) {
                        h.set_phase(Phase::Draining);
                        h.kill();
                    }
                    continue;
                }
            }
            let cause = if why == "memory limit" {
                RestartCause::Memory
            } else {
                RestartCause::Reload
            };
            for h in &old {
                tracing::info!(slot, pid = h.pid, worker = %h.member, "{why}: draining the previous worker");
                self.shared.journal.record(ClusterEvent::WorkerReplaced {
                    slot,
                    pid: h.pid,
                    worker: h.member.to_string(),
                    why: why.to_owned(),
                });
                drain(h, drain_timeout, true);
                self.shared.metrics.restarted(slot, cause);
            }
            let members: Vec<MemberId> = old.iter().map(|h| h.member).collect();
            let deadline = tokio::time::Instant::now() + drain_timeout + Duration::from_millis(500);
            let waited = self
                .wait_until(deadline, |p| {
                    members.iter().all(|m| p.member_phase(*m).is_none())
                })
                .await;
            match waited {
                Wait::Stop => return Wait::Stop,
                Wait::TimedOut => {
                    for h in &old {
                        tracing::warn!(
                            slot,
                            pid = h.pid,
                            "{why}: drain timeout; killing the previous worker"
                        );
                        h.kill();
                    }
                }
                Wait::Done => {}
            }
        }
        Wait::Done
    }

    /// Handles events, ticks and signals until `done` holds or the deadline passes.
    async fn wait_until(
        &mut self,
        deadline: tokio::time::Instant,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Wait {
        loop {
            if done(self) {
                return Wait::Done;
            }
            // A watched task panicked: stop the roll; the primary drains and exits non-zero.
            if self.task_failed.is_some() {
                return Wait::Stop;
            }
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => return Wait::Stop,
                },
                _ = tokio::time::sleep_until(deadline) => return Wait::TimedOut,
                _ = self.signals.term.recv() => { tracing::info!("SIGTERM received"); return Wait::Stop; }
                _ = self.signals.int.recv() => { tracing::info!("SIGINT received"); return Wait::Stop; }
                _ = self.signals.hup.recv() => {
                    tracing::info!("SIGHUP received during a reload: another reload follows");
                    self.reload_again = true;
                }
                _ = self.tick.tick() => self.on_tick(),
            }
        }
    }

    fn member_phase(&self, member: MemberId) -> Option<Phase> {
        self.shared
            .roster
            .read_unpoisoned()
            .get(member)
            .map(|h| h.phase())
    }

    /// Time since the accept loop last beat (zero before it starts).
    fn accept_silence(&mut self) -> Duration {
        let Some((seen, at)) = self.accept_beat else {
            return Duration::ZERO;
        };
        let beats = self.shared.stats.accept_beats.load(Ordering::Relaxed);
        if beats != seen {
            self.accept_beat = Some((beats, std::time::Instant::now()));
            return Duration::ZERO;
        }
        at.elapsed()
    }

    /// Periodic checks: hung workers, memory limit, systemd watchdog and status.
    fn on_tick(&mut self) {
        let cfg = &self.config;
        let heartbeat_timeout = Duration::from_millis(cfg.heartbeat_timeout_ms);
        let ready_timeout = Duration::from_millis(cfg.ready_timeout_ms);
        let limit = cfg.worker_memory_limit_mb.map(|mb| mb * 1024 * 1024);
        // The watchdog is fed only while every worker's heartbeat is fresh: a few intervals, far
        // stricter than the timeout after which a silent worker is killed.
        let fresh = Duration::from_millis(cfg.heartbeat_interval_ms.saturating_mul(3).max(500));
        let mut all_answer = true;
        let handles = self.workers();
        for h in &handles {
            match h.phase() {
                Phase::Starting if h.started.elapsed() > ready_timeout => {
                    tracing::error!(
                        slot = h.slot,
                        pid = h.pid,
                        "worker did not become ready in time; killing it"
                    );
                    h.kill_for(RestartCause::StartTimeout);
                }
                Phase::Ready | Phase::Draining => {
                    let silent = h.last_heartbeat.lock_unpoisoned().elapsed();
                    if silent > fresh {
                        all_answer = false;
                    }
                    if silent > heartbeat_timeout {
                        tracing::error!(
                            slot = h.slot,
                            pid = h.pid,
                            silent_ms = silent.as_millis() as u64,
                            "worker is hung (no heartbeat); killing it"
                        );
                        h.kill_for(RestartCause::Hung);
                    } else if let Some(limit) = limit
                        && h.phase() == Phase::Ready
                        && h.rss.load(Ordering::Relaxed) > limit
                        && !self.rolls.contains(&h.slot)
                    {
                        tracing::warn!(
                            slot = h.slot,
                            pid = h.pid,
                            rss_mb = h.rss.load(Ordering::Relaxed) / (1024 * 1024),
                            "worker is over --worker-memory-limit-mb; rolling it"
                        );
                        self.rolls.push(h.slot);
                    }
                }
                _ => {}
            }
        }
        let ready = handles.iter().filter(|h| h.phase() == Phase::Ready).count();
        // ... and while the accept loop beats.
        let accepting = self.accept_silence() < accept::ACCEPT_BEAT * 8;
        if self.notifier.watchdog().is_some() && all_answer && ready > 0 && accepting {
            self.notifier.watchdog_ping();
        }
        let status = self.shared.status();
        if status != self.last_status {
            self.notifier.status(&status);
            self.last_status = status;
        }
    }

    /// Waits until the first `n` workers are ready: `Ok(false)` if SIGTERM/SIGINT came first.
    async fn wait_all_ready(&mut self, n: usize) -> Result<bool, SupervisorError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.ready_timeout_ms);
        loop {
            let ready = self.shared.roster.read_unpoisoned().count(Phase::Ready);
            if ready >= n {
                tracing::info!(workers = n, "all workers ready");
                return Ok(true);
            }
            let ev = tokio::select! {
                ev = tokio::time::timeout_at(deadline, self.events.recv()) => ev,
                _ = self.signals.term.recv() => { tracing::info!("SIGTERM received during start-up"); return Ok(false); }
                _ = self.signals.int.recv() => { tracing::info!("SIGINT received during start-up"); return Ok(false); }
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => unreachable!("the primary holds an event sender"),
                Err(_) => {
                    let slot = self
                        .shared
                        .roster
                        .read_unpoisoned()
                        .iter()
                        .find(|h| h.phase() != Phase::Ready)
                        .map(|h| h.slot)
                        .unwrap_or(0);
                    self.kill_all();
                    return Err(SupervisorError::Startup {
                        slot,
                        reason: format!(
                            "not ready within {} ms (--ready-timeout-ms)",
                            self.config.ready_timeout_ms
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
                Event::TaskPanicked(name, why) => {
                    self.kill_all();
                    return Err(SupervisorError::TaskPanicked(name, why));
                }
                Event::LinkClosed(_) | Event::Respawn(_) => {}
            }
        }
    }

    fn kill_all(&self) {
        for h in self.shared.roster.read_unpoisoned().iter() {
            h.kill();
        }
    }

    fn log_ready(&self, member: MemberId) {
        if let Some(h) = self.shared.roster.read_unpoisoned().get(member) {
            let startup_ms = h.started.elapsed().as_millis() as u64;
            tracing::info!(
                slot = h.slot,
                pid = h.pid,
                worker = %member,
                startup_ms,
                "worker ready"
            );
            self.shared.journal.record(ClusterEvent::WorkerReady {
                slot: h.slot,
                pid: h.pid,
                worker: member.to_string(),
                startup_ms,
            });
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
                self.shared.journal.record(ClusterEvent::WorkerExited {
                    slot: h.slot,
                    pid: h.pid,
                    worker: member.to_string(),
                    status: status.to_string(),
                    expected,
                });
                if expected {
                    tracing::info!(slot = h.slot, pid = h.pid, %status, "worker exited");
                    return;
                }
                if h.phase() == Phase::Starting && self.slot_is_served(h.slot) {
                    // A reload's successor that died before it was ready: the roll keeps the
                    // slot's current worker, nothing to restart.
                    tracing::error!(
                        slot = h.slot,
                        pid = h.pid,
                        %status,
                        "a new worker exited before it was ready; the slot keeps its current worker"
                    );
                    return;
                }
                let cause = h.kill_cause().unwrap_or(RestartCause::Exit);
                self.shared.metrics.restarted(h.slot, cause);
                let state = &mut self.slots[h.slot];
                let delay = crash_backoff(state, h.started.elapsed());
                tracing::error!(
                    slot = h.slot,
                    pid = h.pid,
                    %status,
                    crashes = state.crashes,
                    restart_in_ms = delay.as_millis() as u64,
                    "worker died; restarting it in its slot"
                );
                self.shared.journal.record(ClusterEvent::WorkerRestarting {
                    slot: h.slot,
                    cause: cause.label(),
                    crashes: state.crashes,
                    restart_in_ms: delay.as_millis() as u64,
                });
                self.respawn_later(h.slot, delay);
            }
            Event::TaskPanicked(name, why) => {
                tracing::error!(
                    "the primary's {name} task panicked: {why}; draining the workers and exiting \
                     with an error"
                );
                self.shared.journal.record(ClusterEvent::TaskPanicked {
                    task: name.to_owned(),
                    why: why.clone(),
                });
                self.task_failed.get_or_insert((name, why));
            }
            Event::Respawn(slot) => {
                if self.stopping || self.slot_is_served(slot) {
                    return;
                }
                if let Err(e) = self.start_worker(slot).await {
                    tracing::error!(slot, "cannot restart worker: {e}");
                    let state = &mut self.slots[slot];
                    let delay = state.backoff;
                    state.backoff = state.backoff.mul_f64(1.5).min(MAX_BACKOFF);
                    self.respawn_later(slot, delay);
                }
            }
        }
    }

    /// Whether `slot` already has a worker that is starting or ready.
    fn slot_is_served(&self, slot: usize) -> bool {
        self.shared
            .roster
            .read_unpoisoned()
            .iter()
            .any(|h| h.slot == slot && matches!(h.phase(), Phase::Starting | Phase::Ready))
    }

    fn respawn_later(&self, slot: usize, delay: Duration) {
        let events = self.shared.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Respawn(slot));
        });
    }

    /// Removes an exited worker everywhere; returns its handle (with the phase it had).
    fn forget(&self, member: MemberId) -> Option<Arc<WorkerHandle>> {
        let h = self.shared.roster.write_unpoisoned().remove(member)?;
        self.shared.caps.forget_worker(&h.per_ip);
        let purged = self.shared.sids.lock_unpoisoned().purge(member);
        if purged > 0 {
            tracing::info!(
                slot = h.slot,
                purged,
                "sessions of the exited worker purged"
            );
        }
        Some(h)
    }

    async fn start_worker(&mut self, slot: usize) -> Result<MemberId, SupervisorError> {
        let member = MemberId(self.next_member);
        self.next_member += 1;
        let spawned = self.spawner.spawn(slot, member, self.env.clone()).await?;
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let handle = Arc::new(WorkerHandle::new(
            member,
            slot,
            spawned.pid,
            self.generation,
            tx,
        ));
        self.shared.roster.write_unpoisoned().insert(handle.clone());
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
        self.shared.tasks.spawn("worker waiter", async move {
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
        self.shared.journal.record(ClusterEvent::WorkerStarted {
            slot,
            pid: spawned.pid,
            worker: member.to_string(),
            generation: self.generation,
        });
        Ok(member)
    }
}

/// Stops routing new sessions to `h` and asks it to drain (`handover`: others take over).
///
/// A worker whose control queue is full cannot be asked: it is killed instead (its clients
/// reconnect), as a drain that never starts would only end in a kill at the drain timeout.
fn drain(h: &WorkerHandle, timeout: Duration, handover: bool) {
    h.set_phase(Phase::Draining);
    let asked = h
        .try_send(
            ToWorker::Drain {
                timeout_ms: timeout.as_millis() as u64,
                handover,
            },
            None,
        )
        .is_ok();
    if !asked {
        tracing::error!(
            slot = h.slot,
            pid = h.pid,
            "cannot ask the worker to drain (its control queue is full or closed); killing it"
        );
        h.kill();
    }
}

/// The message of a panic payload (`&str` or `String`), or a placeholder.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_grows_to_the_cap_and_resets_after_a_healthy_run() {
        let mut state = SlotState {
            backoff: FIRST_BACKOFF,
            crashes: 0,
        };
        let quick = Duration::from_millis(50);
        let delays: Vec<u64> = (0..14)
            .map(|_| crash_backoff(&mut state, quick).as_millis() as u64)
            .collect();
        assert_eq!(&delays[..5], &[200, 300, 450, 675, 1012]);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), 15_000, "capped: {delays:?}");
        assert_eq!(state.crashes, 14);
        // A worker that ran 30 s before dying starts a new series.
        assert_eq!(crash_backoff(&mut state, HEALTHY_AFTER), FIRST_BACKOFF);
        assert_eq!(state.crashes, 1);
    }
}
