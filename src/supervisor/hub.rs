//! The bus hub: relays adapter traffic between workers and knows who is alive.
//!
//! Every worker's bus socket ends here. A publish is encoded once and queued, shared, for each
//! subscriber of its channel (or only the targets a request names). Frames from one worker are
//! handled in the order they arrive and appended to each destination queue in that order, so a
//! worker's publications reach every other worker in publish order.
//!
//! Each destination queue is bounded in bytes: a slow or stuck worker cannot make the primary's
//! memory grow without limit or slow the others. What does not fit is dropped, counted and logged;
//! a dropped request is reported to its sender as `Undeliverable`, so it does not wait for an
//! answer that will not come. A dropped *answer* (the requester's own queue is full) is reported
//! the same way to the requester, naming the worker that answered: the requester gives that
//! worker up for the request (its missing answers become "lost") instead of waiting for its
//! timeout. These reports are a few bytes and bypass the limit. When a worker's bus closes (it
//! exited), the others get `MemberDown` after everything it sent before.

use crate::sync::{LockExt, RwLockExt};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::adapter::wire;
use crate::ipc::bus::{BusDown, BusUp, Member, RequestMeta};
use crate::ipc::frame::{self, FrameReader};
use crate::ipc::message::MemberId;

/// Outgoing queue towards one worker.
#[derive(Debug, Clone)]
struct Outbox {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    last_warn: Arc<Mutex<Option<Instant>>>,
    /// Last (request, responder) whose dropped answer was reported: answers to one request come
    /// in runs, one report is enough.
    last_lost: Arc<Mutex<Option<(String, MemberId)>>>,
}

#[derive(Debug)]
struct HubMember {
    uid: Option<String>,
    ready: bool,
    outbox: Outbox,
    subs: HashSet<String>,
}

#[derive(Debug, Default)]
struct HubState {
    members: HashMap<MemberId, HubMember>,
    chans: HashMap<String, Vec<MemberId>>,
}

/// Bus counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    /// Frames relayed (queued towards a worker).
    pub relayed: u64,
    /// Bytes of the frames relayed.
    pub relayed_bytes: u64,
    /// Frames dropped because a destination queue was full.
    pub dropped: u64,
    /// Bytes of the frames dropped.
    pub dropped_bytes: u64,
    /// Frames received from workers.
    pub received: u64,
    /// Bytes of the frames received (length prefix included).
    pub received_bytes: u64,
}

/// The relay between workers' bus sockets.
#[derive(Debug)]
pub struct Hub {
    state: RwLock<HubState>,
    limit: usize,
    relayed: AtomicU64,
    relayed_bytes: AtomicU64,
    dropped: AtomicU64,
    dropped_bytes: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
    /// Where the relay tasks are spawned, watched (set by the primary; plain tasks in tests).
    tasks: std::sync::OnceLock<super::tasks::Tasks>,
}

enum Push {
    Queued,
    Dropped,
}

impl Hub {
    /// A hub that queues at most `limit` bytes for any one worker.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::default(),
            limit,
            relayed: AtomicU64::new(0),
            relayed_bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            tasks: std::sync::OnceLock::new(),
        })
    }

    /// Runs the relay tasks of the workers attached from now on under `tasks` (a panic in one
    /// ends the primary).
    pub(crate) fn watch_with(&self, tasks: super::tasks::Tasks) {
        let _ = self.tasks.set(tasks);
    }

    fn spawn(
        &self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        match self.tasks.get() {
            Some(tasks) => {
                tasks.spawn(name, task);
            }
            None => {
                tokio::spawn(task);
            }
        }
    }

    /// Starts relaying for `member` on its bus socket.
    pub fn attach(self: &Arc<Self>, member: MemberId, stream: UnixStream) {
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Outbox {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
            last_warn: Arc::new(Mutex::new(None)),
            last_lost: Arc::new(Mutex::new(None)),
        };
        self.state.write_unpoisoned().members.insert(
            member,
            HubMember {
                uid: None,
                ready: false,
                outbox: outbox.clone(),
                subs: HashSet::new(),
            },
        );
        self.spawn(
            "bus relay writer",
            write_loop(BufWriter::with_capacity(64 * 1024, wr), rx, outbox.queued),
        );
        let hub = self.clone();
        let fault = std::env::var_os(super::tasks::FAULT_BUS_PANIC).is_some();
        self.spawn("bus relay reader", async move {
            let mut reader = FrameReader::new(BufReader::with_capacity(64 * 1024, rd));
            loop {
                match reader.next_raw().await {
                    Ok(Some(raw)) => {
                        hub.received.fetch_add(1, Ordering::Relaxed);
                        hub.received_bytes
                            .fetch_add(raw.len() as u64 + 4, Ordering::Relaxed);
                        match postcard::from_bytes::<BusUp<'_>>(raw) {
                            Ok(BusUp::Publish { .. }) if fault => {
                                panic!("fault injected by {}", super::tasks::FAULT_BUS_PANIC)
                            }
                            Ok(up) => hub.on_frame(member, up),
                            Err(e) => {
                                tracing::warn!(worker = %member, "bus read failed: cannot decode a frame: {e}");
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(worker = %member, "bus read failed: {e}");
                        break;
                    }
                }
            }
            hub.detach(member);
        });
    }

    /// Counts `member` as a responder from now on.
    pub fn set_ready(&self, member: MemberId, uid: String) {
        if let Some(m) = self.state.write_unpoisoned().members.get_mut(&member) {
            m.uid = Some(uid);
            m.ready = true;
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> HubStats {
        HubStats {
            relayed: self.relayed.load(Ordering::Relaxed),
            relayed_bytes: self.relayed_bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
        }
    }

    fn on_frame(&self, from: MemberId, up: BusUp<'_>) {
        match up {
            BusUp::Subscribe { chan } => self.subscribe(from, chan),
            BusUp::Unsubscribe { chan } => self.unsubscribe(from, &chan),
            BusUp::Publish {
                chan,
                payload,
                request: None,
            } => self.publish(from, &chan, payload),
            BusUp::Publish {
                chan,
                payload,
                request: Some(req),
            } => self.request(from, &chan, payload, &req),
            BusUp::NumServ { id, chan } => self.num_serv(from, id, &chan),
        }
    }

    fn subscribe(&self, from: MemberId, chan: Cow<'_, str>) {
        let mut st = self.state.write_unpoisoned();
        let Some(m) = st.members.get_mut(&from) else {
            return;
        };
        if m.subs.insert(chan.to_string()) {
            st.chans.entry(chan.into_owned()).or_default().push(from);
        }
    }

    fn unsubscribe(&self, from: MemberId, chan: &str) {
        let mut st = self.state.write_unpoisoned();
        if let Some(m) = st.members.get_mut(&from) {
            m.subs.remove(chan);
        }
        if let Some(list) = st.chans.get_mut(chan) {
            list.retain(|m| *m != from);
            if list.is_empty() {
                st.chans.remove(chan);
            }
        }
    }

    /// The frame that delivers `payload` published on `chan`.
    fn deliver_frame(from: MemberId, chan: &str, payload: &[u8]) -> Option<bytes::Bytes> {
        match frame::encode(&BusDown::Deliver {
            chan: Cow::Borrowed(chan),
            payload,
        }) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(worker = %from, "cannot relay a bus message: {e}");
                None
            }
        }
    }

    /// A broadcast (or an answer to a request): to every other subscriber of `chan`. When an
    /// answer is dropped for a full queue, its requester is told no answer will come.
    fn publish(&self, from: MemberId, chan: &str, payload: &[u8]) {
        let st = self.state.read_unpoisoned();
        let Some(subs) = st.chans.get(chan) else {
            return;
        };
        let Some(frame) = Self::deliver_frame(from, chan, payload) else {
            return;
        };
        // Read only if something is dropped: the request this is an answer to.
        let mut answers: Option<Option<&str>> = None;
        for to in subs.iter().filter(|m| **m != from) {
            if let Some(m) = st.members.get(to)
                && let Push::Dropped = self.push(*to, &m.outbox, frame.clone(), false)
                && let Some(req_id) = *answers.get_or_insert_with(|| {
                    chan.contains("-response#")
                        .then(|| wire::peek_response(payload))
                        .flatten()
                        .map(|h| h.req_id)
                })
            {
                self.answer_lost(*to, &m.outbox, req_id, from);
            }
        }
    }

    /// A request that expects answers: to its named targets only; the requester is told at
    /// once of every target that cannot get it.
    fn request(&self, from: MemberId, chan: &str, payload: &[u8], req: &RequestMeta<'_>) {
        let st = self.state.read_unpoisoned();
        let subs = st.chans.get(chan);
        let frame = subs.and_then(|_| Self::deliver_frame(from, chan, payload));
        let delivered = |to: &MemberId| -> bool {
            let (Some(subs), Some(frame)) = (subs, &frame) else {
                return false;
            };
            subs.contains(to)
                && st.members.get(to).is_some_and(|m| {
                    matches!(
                        self.push(*to, &m.outbox, frame.clone(), false),
                        Push::Queued
                    )
                })
        };
        let missed: Vec<MemberId> = req
            .targets
            .iter()
            .filter(|to| !delivered(to))
            .copied()
            .collect();
        drop(st);
        for to in missed {
            self.undeliverable(from, &req.req_id, to);
        }
    }

    /// How many ready workers subscribe to `chan` (the asker included), and which.
    fn num_serv(&self, from: MemberId, id: u64, chan: &str) {
        let st = self.state.read_unpoisoned();
        let members: Vec<Member<'_>> = st
            .chans
            .get(chan)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let m = st.members.get(id)?;
                (m.ready || *id == from).then(|| Member {
                    id: *id,
                    uid: Cow::Owned(m.uid.clone().unwrap_or_default()),
                })
            })
            .collect();
        let reply = frame::encode(&BusDown::NumServReply { id, members });
        if let (Ok(reply), Some(m)) = (reply, st.members.get(&from)) {
            let _ = self.push(from, &m.outbox, reply, true);
        }
    }

    fn undeliverable(&self, requester: MemberId, req_id: &str, target: MemberId) {
        let st = self.state.read_unpoisoned();
        let Some(m) = st.members.get(&requester) else {
            return;
        };
        if let Ok(f) = frame::encode(&BusDown::Undeliverable {
            req_id: Cow::Borrowed(req_id),
            member: target,
        }) {
            let _ = self.push(requester, &m.outbox, f, true);
        }
    }

    /// An answer of `responder` to request `req_id` was dropped on its way to `requester`: tell
    /// the requester, which gives `responder` up for that request.
    fn answer_lost(&self, requester: MemberId, outbox: &Outbox, req_id: &str, responder: MemberId) {
        {
            let mut last = outbox.last_lost.lock_unpoisoned();
            if last
                .as_ref()
                .is_some_and(|(r, m)| r == req_id && *m == responder)
            {
                return;
            }
            *last = Some((req_id.to_owned(), responder));
        }
        tracing::debug!(
            worker = %requester,
            from = %responder,
            req_id,
            "an answer to this worker's request was dropped; it gives the responder up"
        );
        if let Ok(f) = frame::encode(&BusDown::Undeliverable {
            req_id: Cow::Borrowed(req_id),
            member: responder,
        }) {
            let _ = self.push(requester, outbox, f, true);
        }
    }

    /// Queues `frame` for `to`; `force` bypasses the byte limit (tiny control frames).
    fn push(&self, to: MemberId, outbox: &Outbox, frame: Bytes, force: bool) -> Push {
        let len = frame.len();
        let queued = outbox.queued.load(Ordering::Relaxed);
        if !force && queued > 0 && queued + len > self.limit {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_bytes.fetch_add(len as u64, Ordering::Relaxed);
            let total = outbox.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = outbox.last_warn.lock_unpoisoned();
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    worker = %to,
                    queued_bytes = queued,
                    dropped_total = total,
                    "bus queue towards this worker is full (--bus-queue-bytes); dropping messages to it"
                );
            }
            return Push::Dropped;
        }
        outbox.queued.fetch_add(len, Ordering::Relaxed);
        if outbox.tx.send(frame).is_err() {
            outbox.queued.fetch_sub(len, Ordering::Relaxed);
            return Push::Dropped;
        }
        self.relayed.fetch_add(1, Ordering::Relaxed);
        self.relayed_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Push::Queued
    }

    /// `member`'s bus closed: forget it and tell the others, after its last frame.
    fn detach(&self, member: MemberId) {
        let mut st = self.state.write_unpoisoned();
        let Some(gone) = st.members.remove(&member) else {
            return;
        };
        for chan in &gone.subs {
            if let Some(list) = st.chans.get_mut(chan) {
                list.retain(|m| *m != member);
                if list.is_empty() {
                    st.chans.remove(chan);
                }
            }
        }
        let dropped = gone.outbox.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(worker = %member, dropped, "bus messages were dropped towards this worker");
        }
        let Ok(f) = frame::encode(&BusDown::MemberDown { member }) else {
            return;
        };
        for (id, m) in st.members.iter() {
            let _ = self.push(*id, &m.outbox, f.clone(), true);
        }
        tracing::debug!(worker = %member, "left the bus");
    }
}

async fn write_loop(
    mut wr: BufWriter<tokio::net::unix::OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(frame) = rx.recv().await {
        let mut written = frame.len();
        if wr.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            written += frame.len();
            if wr.write_all(&frame).await.is_err() {
                return;
            }
            if written > 1024 * 1024 {
                break;
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
        queued.fetch_sub(written, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    struct Peer {
        wr: tokio::net::unix::OwnedWriteHalf,
        rd: FrameReader<tokio::net::unix::OwnedReadHalf>,
    }

    impl Peer {
        async fn send(&mut self, up: &BusUp<'_>) {
            self.wr
                .write_all(&frame::encode(up).unwrap())
                .await
                .unwrap();
        }
        async fn recv(&mut self) -> String {
            let d: BusDown = tokio::time::timeout(Duration::from_secs(5), self.rd.next())
                .await
                .expect("frame in time")
                .unwrap()
                .unwrap();
            match d {
                BusDown::Deliver { chan, payload } => {
                    format!("deliver {chan} {}", String::from_utf8_lossy(payload))
                }
                BusDown::NumServReply { members, .. } => {
                    let mut ids: Vec<_> = members.iter().map(|m| m.id.0).collect();
                    ids.sort_unstable();
                    format!("numserv {ids:?}")
                }
                BusDown::MemberDown { member } => format!("down {}", member.0),
                BusDown::Undeliverable { req_id, member } => {
                    format!("undeliverable {req_id} {}", member.0)
                }
            }
        }
    }

    fn join(hub: &Arc<Hub>, id: u32) -> Peer {
        let peer = attach(hub, id);
        hub.set_ready(MemberId(id), format!("uid{id}"));
        peer
    }

    /// On the bus but not ready yet (a worker still starting).
    fn attach(hub: &Arc<Hub>, id: u32) -> Peer {
        let (a, b) = UnixStream::pair().unwrap();
        hub.attach(MemberId(id), a);
        let (rd, wr) = b.into_split();
        Peer {
            wr,
            rd: FrameReader::new(rd),
        }
    }

    fn request<'a>(req_id: &'a str, targets: &'a [MemberId]) -> Option<RequestMeta<'a>> {
        Some(RequestMeta {
            req_id: req_id.into(),
            targets: Cow::Borrowed(targets),
        })
    }

    /// Fills `stuck`'s queue (it never reads) with publishes on `chan` from `from`: large
    /// frames, then 1-byte ones, until even those are dropped. `reader`, subscribed too, reads
    /// each one before the next is sent (a worker that keeps up). Returns how many were
    /// published.
    async fn fill(
        hub: &Arc<Hub>,
        from: &mut Peer,
        chan: &str,
        stuck: u32,
        mut reader: Option<&mut Peer>,
    ) -> usize {
        let dropped = || {
            hub.state.read_unpoisoned().members[&MemberId(stuck)]
                .outbox
                .dropped
                .load(Ordering::Relaxed)
        };
        let big = vec![b'z'; 32 * 1024];
        let mut sent = 0;
        for (payload, pause_every) in [(&big[..], 10), (&b"y"[..], 200)] {
            let before = dropped();
            while dropped() == before {
                assert!(sent < 100_000, "the queue never filled");
                from.send(&BusUp::Publish {
                    chan: chan.into(),
                    payload,
                    request: None,
                })
                .await;
                sent += 1;
                match reader.as_mut() {
                    Some(r) => {
                        let line = r.recv().await;
                        assert!(line.starts_with(&format!("deliver {chan} ")), "{sent}");
                    }
                    None if sent % pause_every == 0 => settle().await,
                    None => {}
                }
            }
        }
        sent
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn relays_in_order_to_subscribers_only() {
        let hub = Hub::new(1 << 20);
        let mut a = join(&hub, 1);
        let mut b = join(&hub, 2);
        let mut c = join(&hub, 3);
        for p in [&mut a, &mut b] {
            p.send(&BusUp::Subscribe { chan: "x".into() }).await;
        }
        settle().await;
        for i in 0..100 {
            let payload = format!("{i}");
            c.send(&BusUp::Publish {
                chan: "x".into(),
                payload: payload.as_bytes(),
                request: None,
            })
            .await;
        }
        for p in [&mut a, &mut b] {
            for i in 0..100 {
                assert_eq!(p.recv().await, format!("deliver x {i}"));
            }
        }
        // The publisher gets nothing back, even if subscribed.
        a.send(&BusUp::Publish {
            chan: "x".into(),
            payload: b"from-a",
            request: None,
        })
        .await;
        assert_eq!(b.recv().await, "deliver x from-a");
        c.send(&BusUp::NumServ {
            id: 1,
            chan: "x".into(),
        })
        .await;
        assert_eq!(c.recv().await, "numserv [1, 2]");
    }

    #[tokio::test]
    async fn dead_member_is_announced_after_its_frames_and_requests_to_it_are_undeliverable() {
        let hub = Hub::new(1 << 20);
        let mut a = join(&hub, 1);
        let mut b = join(&hub, 2);
        b.send(&BusUp::Subscribe { chan: "r".into() }).await;
        a.send(&BusUp::Subscribe {
            chan: "resp".into(),
        })
        .await;
        settle().await;
        b.send(&BusUp::Publish {
            chan: "resp".into(),
            payload: b"last words",
            request: None,
        })
        .await;
        drop(b);
        assert_eq!(a.recv().await, "deliver resp last words");
        assert_eq!(a.recv().await, "down 2");
        let targets = [MemberId(2)];
        a.send(&BusUp::Publish {
            chan: "r".into(),
            payload: b"req",
            request: Some(RequestMeta {
                req_id: "AAAAAAAAAAAAAAAA".into(),
                targets: Cow::Borrowed(&targets),
            }),
        })
        .await;
        assert_eq!(a.recv().await, "undeliverable AAAAAAAAAAAAAAAA 2");
    }

    #[tokio::test]
    async fn a_member_counts_as_a_responder_only_once_ready() {
        let hub = Hub::new(1 << 20);
        let mut a = join(&hub, 1);
        let mut b = join(&hub, 2);
        let mut late = attach(&hub, 3); // subscribed, still starting
        for p in [&mut a, &mut b, &mut late] {
            p.send(&BusUp::Subscribe { chan: "x".into() }).await;
        }
        settle().await;
        a.send(&BusUp::NumServ {
            id: 1,
            chan: "x".into(),
        })
        .await;
        assert_eq!(a.recv().await, "numserv [1, 2]");
        // It already receives broadcasts (it must not miss any once it counts).
        b.send(&BusUp::Publish {
            chan: "x".into(),
            payload: b"early",
            request: None,
        })
        .await;
        assert_eq!(late.recv().await, "deliver x early");
        assert_eq!(a.recv().await, "deliver x early");
        hub.set_ready(MemberId(3), "uid3".into());
        a.send(&BusUp::NumServ {
            id: 2,
            chan: "x".into(),
        })
        .await;
        assert_eq!(a.recv().await, "numserv [1, 2, 3]");
    }

    #[tokio::test]
    async fn a_stuck_worker_gets_a_bounded_queue_and_does_not_stall_the_others() {
        let hub = Hub::new(64 * 1024);
        let mut a = join(&hub, 1);
        let stuck = join(&hub, 2); // never reads
        let mut c = join(&hub, 3);
        let (_stuck_rd, mut stuck_wr) = (stuck.rd, stuck.wr);
        stuck_wr
            .write_all(&frame::encode(&BusUp::Subscribe { chan: "x".into() }).unwrap())
            .await
            .unwrap();
        c.send(&BusUp::Subscribe { chan: "x".into() }).await;
        settle().await;
        // The third worker gets every message while the stuck one's queue is full.
        let sent = fill(&hub, &mut a, "x", 2, Some(&mut c)).await;
        let big = vec![b'z'; 32 * 1024];
        for _ in 0..50 {
            a.send(&BusUp::Publish {
                chan: "x".into(),
                payload: &big,
                request: None,
            })
            .await;
            assert!(c.recv().await.starts_with("deliver x zzz"));
        }
        assert!(sent > 2);
        settle().await;
        let stats = hub.stats();
        assert!(stats.dropped > 0, "{stats:?}");
        // Socket buffers hold some; the hub's own queue never exceeds its limit by more than one
        // frame.
        let st = hub.state.read_unpoisoned();
        let queued = st.members[&MemberId(2)]
            .outbox
            .queued
            .load(Ordering::Relaxed);
        assert!(queued <= 64 * 1024 + big.len() + 64, "{queued}");
    }

    #[tokio::test]
    async fn a_request_to_a_full_queue_is_undeliverable_and_the_others_get_it() {
        let hub = Hub::new(64 * 1024);
        let mut a = join(&hub, 1);
        let stuck = join(&hub, 2);
        let mut c = join(&hub, 3);
        let mut filler = join(&hub, 4);
        let (_stuck_rd, mut stuck_wr) = (stuck.rd, stuck.wr);
        stuck_wr
            .write_all(&frame::encode(&BusUp::Subscribe { chan: "r".into() }).unwrap())
            .await
            .unwrap();
        c.send(&BusUp::Subscribe { chan: "r".into() }).await;
        settle().await;
        fill(&hub, &mut filler, "r", 2, Some(&mut c)).await;
        let targets = [MemberId(2), MemberId(3)];
        a.send(&BusUp::Publish {
            chan: "r".into(),
            payload: b"req",
            request: request("BBBBBBBBBBBBBBBB", &targets),
        })
        .await;
        assert_eq!(a.recv().await, "undeliverable BBBBBBBBBBBBBBBB 2");
        assert_eq!(c.recv().await, "deliver r req");
    }

    #[tokio::test]
    async fn a_dropped_answer_is_reported_to_the_requester() {
        use socketioxide_core::adapter::remote_packet::{Response, ResponseType};
        use socketioxide_core::{Sid, Uid};

        let hub = Hub::new(64 * 1024);
        let asker = join(&hub, 1); // its queue fills: it reads nothing for now
        let mut b = join(&hub, 2);
        let mut filler = join(&hub, 3);
        let resp = "p-response#/#asker#";
        let (mut asker_rd, mut asker_wr) = (asker.rd, asker.wr);
        asker_wr
            .write_all(&frame::encode(&BusUp::Subscribe { chan: resp.into() }).unwrap())
            .await
            .unwrap();
        settle().await;
        fill(&hub, &mut filler, resp, 1, None).await;
        let req = Sid::new();
        let answer = rmp_serde::to_vec(&(
            req,
            Response::<()> {
                node_id: Uid::new(),
                r#type: ResponseType::BroadcastAckCount(3),
            },
        ))
        .unwrap();
        // Two answers dropped, one report.
        for _ in 0..2 {
            b.send(&BusUp::Publish {
                chan: resp.into(),
                payload: &answer,
                request: None,
            })
            .await;
        }
        settle().await;
        // The asker catches up: after the filler's frames it learns b's answer was lost.
        let mut reports = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), asker_rd.next()).await;
            let Ok(Ok(Some(down))) = next else { break };
            match down {
                BusDown::Deliver { payload, .. } => assert_ne!(payload, answer.as_slice()),
                BusDown::Undeliverable { req_id, member } => {
                    reports.push((req_id.into_owned(), member))
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(reports, [(req.to_string(), MemberId(2))]);
    }
}
