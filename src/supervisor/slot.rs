//! The primary's view of its worker processes: one [`WorkerHandle`] per process, grouped in a
//! [`Roster`].
//!
//! A *slot* is a position (0..N) that survives restarts; a *member* is one process in a slot.
//! During a rolling reload a slot briefly has two members: the draining one and its successor.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};

use crate::ipc::message::{MemberId, ToWorker};

use super::balance::Candidate;

/// Lifecycle of a worker process, as observable in logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Spawned; initialising the app.
    Starting = 0,
    /// Taking new sessions.
    Ready = 1,
    /// Finishing its sessions; takes no new ones.
    Draining = 2,
    /// Exited.
    Gone = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Gone,
        }
    }
}

/// A control message queued for a worker, with the descriptor it carries.
#[derive(Debug)]
pub struct Outgoing {
    /// The message.
    pub msg: ToWorker,
    /// Descriptor passed with it; the primary's copy is closed once sent.
    pub fd: Option<OwnedFd>,
}

/// Capacity of a worker's control queue (bounds descriptors in flight towards it).
pub const CONTROL_QUEUE: usize = 4096;

/// One worker process.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Never reused.
    pub member: MemberId,
    /// Position 0..N.
    pub slot: usize,
    /// OS process id.
    pub pid: u32,
    /// When it was spawned.
    pub started: Instant,
    phase: AtomicU8,
    ctl: mpsc::Sender<Outgoing>,
    /// Connections handed to it.
    pub handed: AtomicU64,
    /// Connections it reported closed.
    pub closed: AtomicU64,
    /// Its socketioxide server id, once ready.
    pub uid: OnceLock<String>,
    /// Last heartbeat received.
    pub last_heartbeat: Mutex<Instant>,
    /// Resident memory reported by its last heartbeat.
    pub rss: AtomicU64,
    /// Most connections its descriptor limit leaves room for, as it last reported.
    pub capacity: AtomicU64,
    /// Its connections counted per client address (`--max-connections-per-ip`).
    pub per_ip: super::caps::PerIp,
    /// How many reloads the primary had done when it started this worker.
    pub generation: u64,
    /// Its last report for `/status` and `/metrics`.
    pub report: Mutex<Option<crate::ipc::message::WorkerReport>>,
    /// Why the primary killed it, if it did ([`RestartCause::code`](super::metrics::RestartCause::code)).
    kill_cause: AtomicU8,
    kill: Notify,
}

impl WorkerHandle {
    /// A handle for a freshly spawned process.
    pub fn new(
        member: MemberId,
        slot: usize,
        pid: u32,
        generation: u64,
        ctl: mpsc::Sender<Outgoing>,
    ) -> Self {
        let now = Instant::now();
        Self {
            member,
            slot,
            pid,
            started: now,
            phase: AtomicU8::new(Phase::Starting as u8),
            ctl,
            handed: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            uid: OnceLock::new(),
            last_heartbeat: Mutex::new(now),
            rss: AtomicU64::new(0),
            capacity: AtomicU64::new(u64::MAX),
            per_ip: Default::default(),
            generation,
            report: Mutex::new(None),
            kill_cause: AtomicU8::new(0),
            kill: Notify::new(),
        }
    }

    /// Asks the task that owns the child process to kill it (SIGKILL).
    pub fn kill(&self) {
        self.kill.notify_one();
    }

    /// [`WorkerHandle::kill`], remembering why (reported when its slot is restarted).
    pub(crate) fn kill_for(&self, cause: super::metrics::RestartCause) {
        self.kill_cause.store(cause.code(), Ordering::Relaxed);
        self.kill();
    }

    /// Why the primary killed it, if it did.
    pub(crate) fn kill_cause(&self) -> Option<super::metrics::RestartCause> {
        super::metrics::RestartCause::from_code(self.kill_cause.load(Ordering::Relaxed))
    }

    /// Resolves when [`WorkerHandle::kill`] was called.
    pub async fn kill_requested(&self) {
        self.kill.notified().await
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase`; returns the previous one.
    pub fn set_phase(&self, phase: Phase) -> Phase {
        Phase::from_u8(self.phase.swap(phase as u8, Ordering::AcqRel))
    }

    /// Whether it can be sent connections of sessions it owns.
    pub fn is_alive(&self) -> bool {
        matches!(
            self.phase(),
            Phase::Ready | Phase::Draining | Phase::Starting
        )
    }

    /// Open connections as far as the primary knows.
    pub fn load(&self) -> u64 {
        self.handed
            .load(Ordering::Relaxed)
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }

    /// Whether it can take one more connection under `cap` and its descriptor capacity.
    pub fn has_room(&self, cap: u64) -> bool {
        self.load() < cap.min(self.capacity.load(Ordering::Relaxed))
    }

    /// Queues a control message, waiting while the queue is full.
    pub async fn send(&self, msg: ToWorker, fd: Option<OwnedFd>) -> Result<(), Outgoing> {
        self.ctl.send(Outgoing { msg, fd }).await.map_err(|e| e.0)
    }

    /// Reserves room in the control queue (so a descriptor is only moved once it can be sent).
    pub async fn reserve(&self) -> Result<Reserved<'_>, ()> {
        self.ctl.reserve().await.map(Reserved).map_err(|_| ())
    }

    /// Reserves room in the control queue if there is some, without waiting.
    pub fn try_reserve(&self) -> Option<Reserved<'_>> {
        self.ctl.try_reserve().ok().map(Reserved)
    }

    /// Queues a control message if there is room.
    pub fn try_send(&self, msg: ToWorker, fd: Option<OwnedFd>) -> Result<(), Outgoing> {
        self.ctl
            .try_send(Outgoing { msg, fd })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o) => o,
            })
    }
}

/// Room reserved in a worker's control queue.
#[derive(Debug)]
pub struct Reserved<'a>(mpsc::Permit<'a, Outgoing>);

impl Reserved<'_> {
    /// Queues the message into the reserved room.
    pub fn send(self, msg: ToWorker, fd: Option<OwnedFd>) {
        self.0.send(Outgoing { msg, fd });
    }
}

/// Every worker process the primary currently knows.
#[derive(Debug, Default)]
pub struct Roster {
    members: BTreeMap<MemberId, Arc<WorkerHandle>>,
}

impl Roster {
    /// Adds a process.
    pub fn insert(&mut self, handle: Arc<WorkerHandle>) {
        self.members.insert(handle.member, handle);
    }

    /// Removes a process.
    pub fn remove(&mut self, member: MemberId) -> Option<Arc<WorkerHandle>> {
        self.members.remove(&member)
    }

    /// Looks a process up.
    pub fn get(&self, member: MemberId) -> Option<&Arc<WorkerHandle>> {
        self.members.get(&member)
    }

    /// All processes.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<WorkerHandle>> {
        self.members.values()
    }

    /// The ready process of `slot`, if any.
    pub fn ready_in_slot(&self, slot: usize) -> Option<&Arc<WorkerHandle>> {
        self.members
            .values()
            .filter(|h| h.slot == slot && h.phase() == Phase::Ready)
            .max_by_key(|h| h.member)
    }

    /// Workers taking new sessions with room under `cap` connections, sorted by slot, with the
    /// handles in the same order.
    pub fn candidates(&self, cap: u64) -> (Vec<Candidate>, Vec<Arc<WorkerHandle>>) {
        let mut ready: Vec<_> = self
            .members
            .values()
            .filter(|h| h.phase() == Phase::Ready && h.has_room(cap))
            .cloned()
            .collect();
        ready.sort_by_key(|h| (h.slot, h.member));
        let cands = ready
            .iter()
            .map(|h| Candidate {
                slot: h.slot,
                load: h.load(),
            })
            .collect();
        (cands, ready)
    }

    /// Number of processes in `phase`.
    pub fn count(&self, phase: Phase) -> usize {
        self.members.values().filter(|h| h.phase() == phase).count()
    }
}
