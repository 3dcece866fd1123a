//! The IPC bus driver: `socketioxide-redis`'s [`Driver`] over the worker's bus socket.
//!
//! Publish, subscribe and server counts go to the primary, which relays to the other workers
//! (see [`supervisor::hub`](crate::supervisor)). On top of what Redis offers, requests that wait
//! for answers name their responders and are tracked ([`Tracker`]), so a worker that dies or
//! cannot be reached is answered for at once instead of holding the request until its timeout.
//! A request aimed at one worker that is already gone (a remote socket's worker died) is answered
//! for before it is even sent.

use crate::sync::LockExt;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::ipc::bus::{BusDown, BusUp, Member, RequestMeta};
use crate::ipc::frame::{self, FrameReader};
use crate::ipc::message::MemberId;

use super::tracker::{Injection, Tracker};
use super::wire::{self, Stand, kind};

/// Errors of the IPC driver.
#[derive(Debug, thiserror::Error)]
pub enum IpcDriverError {
    /// The primary closed the bus (it is exiting).
    #[error("the cluster bus is closed (the primary is gone)")]
    Closed,
    /// The primary did not answer a server count in time.
    #[error("the primary did not answer a server count within {0:?}")]
    Timeout(Duration),
    /// A message could not be framed.
    #[error(transparent)]
    Frame(#[from] crate::ipc::IpcError),
}

type View = Vec<(MemberId, String)>;

/// Most server-count answers kept for requests not yet published (see [`Views`]).
const VIEWS_CAP: usize = 1024;

/// Added to (request timeout + ack timeout) for how long a broadcast with ack is tracked.
const LIFETIME_MARGIN: Duration = Duration::from_secs(5);

type ViewKey = (Option<tokio::task::Id>, String);

/// Server-count answers kept until the same task publishes its request, oldest first.
///
/// The adapter asks for the count and publishes right after, so an entry is normally taken
/// within microseconds. Counts nobody publishes after (an app's own `server_count`) are evicted
/// oldest first beyond [`VIEWS_CAP`], so the map stays bounded whatever the rate; a request whose
/// entry was evicted falls back to the latest view of its channel.
#[derive(Debug, Default)]
struct Views {
    map: HashMap<ViewKey, (u64, View)>,
    order: VecDeque<(u64, ViewKey)>,
    next: u64,
}

impl Views {
    fn put(&mut self, key: ViewKey, view: View) {
        let seq = self.next;
        self.next += 1;
        self.map.insert(key.clone(), (seq, view));
        self.order.push_back((seq, key));
        while self.order.len() > VIEWS_CAP {
            if let Some((seq, key)) = self.order.pop_front()
                && self.map.get(&key).is_some_and(|(s, _)| *s == seq)
            {
                self.map.remove(&key);
            }
        }
    }

    fn take(&mut self, key: &ViewKey) -> Option<View> {
        self.map.remove(key).map(|(_, v)| v)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// What to do with a message about to be published.
enum Plan<'a> {
    /// Not a request that waits for answers: publish as is.
    Plain,
    /// A request with its responders, now tracked.
    Tracked(RequestMeta<'a>),
    /// A request nobody else is asked (the adapter counted no other server): not sent.
    Nobody,
    /// A request to one server that is not on the bus: not sent, answered for at once.
    Absent(Vec<Injection>),
}

/// Driver for the IPC bus; cheap to clone (all clones share one connection).
#[derive(Clone)]
pub struct IpcDriver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IpcDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcDriver")
            .field("me", &self.inner.me)
            .finish()
    }
}

struct Inner {
    me: MemberId,
    out: mpsc::Sender<Bytes>,
    subs: Mutex<HashMap<String, mpsc::Sender<ChanItem>>>,
    asks: Mutex<HashMap<u64, oneshot::Sender<View>>>,
    next_ask: AtomicU64,
    /// Server count answers by (task, channel): the adapter asks for the count and publishes
    /// its request from the same task, so the request goes to exactly the workers it counted.
    views: Mutex<Views>,
    /// Latest view per channel, for requests published without a count in the same task.
    latest: Mutex<HashMap<String, View>>,
    tracker: Mutex<Tracker>,
    req_prefix: String,
    resp_prefix: String,
    request_lifetime: Duration,
    /// The adapter's request timeout; also bounds the wait for a server count.
    ask_timeout: Duration,
}

impl IpcDriver {
    /// Adapter requests of this worker that ended at their timeout with answers missing, since
    /// start.
    pub fn request_timeouts(&self) -> u64 {
        self.inner
            .tracker
            .lock_unpoisoned()
            .timed_out(std::time::Instant::now())
    }

    /// Starts the driver on the worker's bus socket. `prefix` is the adapter's channel prefix;
    /// `ask_timeout` is the adapter's request timeout; `request_lifetime` bounds how long a
    /// request is tracked. A broadcast with ack that carries its own ack timeout is tracked for at
    /// least request timeout + that ack timeout (+ 5 s), so a longer ack timeout keeps the fast
    /// completion when a worker dies; `request_lifetime` must cover the default ack timeout.
    pub fn start(
        bus: UnixStream,
        me: MemberId,
        prefix: &str,
        ask_timeout: Duration,
        request_lifetime: Duration,
    ) -> Self {
        let (rd, wr) = bus.into_split();
        let (out, out_rx) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            me,
            out,
            subs: Mutex::default(),
            asks: Mutex::default(),
            next_ask: AtomicU64::new(1),
            views: Mutex::default(),
            latest: Mutex::default(),
            tracker: Mutex::default(),
            req_prefix: format!("{prefix}-request#"),
            resp_prefix: format!("{prefix}-response#"),
            request_lifetime,
            ask_timeout,
        });
        tokio::spawn(write_loop(BufWriter::with_capacity(64 * 1024, wr), out_rx));
        tokio::spawn(read_loop(
            inner.clone(),
            FrameReader::new(BufReader::with_capacity(64 * 1024, rd)),
        ));
        Self { inner }
    }

    async fn send(&self, up: &BusUp<'_>) -> Result<(), IpcDriverError> {
        let frame = frame::encode(up)?;
        self.inner
            .out
            .send(frame)
            .await
            .map_err(|_| IpcDriverError::Closed)
    }

    /// Works out who must answer a request this worker is publishing, and starts tracking it.
    async fn plan<'a>(&self, chan: &str, payload: &'a [u8]) -> Result<Plan<'a>, IpcDriverError> {
        let Some(rest) = chan.strip_prefix(&self.inner.req_prefix) else {
            return Ok(Plan::Plain);
        };
        let Some(header) = wire::peek_request(payload) else {
            return Ok(Plan::Plain);
        };
        if !header.expects_responses() {
            return Ok(Plan::Plain);
        }
        // `{ns}#` (every server) or `{ns}#{uid}#` (one server).
        let mut parts = rest.split('#');
        let Some(ns) = parts.next() else {
            return Ok(Plan::Plain);
        };
        let target_uid = parts.next().filter(|s| !s.is_empty());
        let view = match self.take_view(chan, target_uid) {
            Some(view) => view,
            // Not in any view this worker holds (a one-server request whose server left the
            // views, or a count evicted): ask the primary who serves the channel now.
            None => self.ask(chan).await?,
        };
        let targets: View = match target_uid {
            Some(uid) => view.into_iter().filter(|(_, u)| u == uid).collect(),
            None => view
                .into_iter()
                .filter(|(m, _)| *m != self.inner.me)
                .collect(),
        };
        let resp_chan = format!("{}{ns}#{}#", self.inner.resp_prefix, header.node_id);
        if targets.is_empty() {
            return Ok(match target_uid {
                // The one server asked is gone: answer for it, so the request completes now.
                Some(uid) => Plan::Absent(
                    wire::encode_stand_in(header.id, uid, Stand::for_absent(header.kind))
                        .map(|payload| Injection {
                            chan: resp_chan,
                            payload,
                        })
                        .into_iter()
                        .collect(),
                ),
                None => Plan::Nobody,
            });
        }
        let lifetime = match header.kind {
            kind::BROADCAST_WITH_ACK => wire::peek_ack_timeout(payload)
                .map(|ack| self.inner.ask_timeout + ack + LIFETIME_MARGIN)
                .map_or(self.inner.request_lifetime, |l| {
                    l.max(self.inner.request_lifetime)
                }),
            _ => self.inner.request_lifetime,
        };
        let members: Vec<MemberId> = targets.iter().map(|(m, _)| *m).collect();
        // How long the adapter waits for the answers: its request timeout, plus the ack
        // timeout for a broadcast with acks.
        let wait = match header.kind {
            kind::BROADCAST_WITH_ACK => wire::peek_ack_timeout(payload)
                .map_or(self.inner.ask_timeout, |ack| self.inner.ask_timeout + ack),
            _ => self.inner.ask_timeout,
        };
        let mut tracker = self.inner.tracker.lock_unpoisoned();
        tracker.track(header.id, header.kind, resp_chan, targets, lifetime);
        tracker.expect_within(header.id, wait);
        drop(tracker);
        Ok(Plan::Tracked(RequestMeta {
            req_id: Cow::Borrowed(header.id),
            targets: Cow::Owned(members),
        }))
    }

    fn take_view(&self, chan: &str, target_uid: Option<&str>) -> Option<View> {
        let task = tokio::task::try_id();
        if target_uid.is_none()
            && let Some(v) = self
                .inner
                .views
                .lock_unpoisoned()
                .take(&(task, chan.to_owned()))
        {
            return Some(v);
        }
        let latest = self.inner.latest.lock_unpoisoned();
        match target_uid {
            // A request to one server: find it in any known view of the namespace.
            Some(uid) => latest
                .values()
                .flat_map(|v| v.iter())
                .find(|(_, u)| u == uid)
                .map(|m| vec![m.clone()]),
            None => latest.get(chan).cloned(),
        }
    }

    /// Asks the primary which ready workers (this one included) subscribe to `chan`.
    async fn ask(&self, chan: &str) -> Result<View, IpcDriverError> {
        let id = self.inner.next_ask.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.asks.lock_unpoisoned().insert(id, tx);
        if let Err(e) = self
            .send(&BusUp::NumServ {
                id,
                chan: Cow::Borrowed(chan),
            })
            .await
        {
            self.inner.asks.lock_unpoisoned().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.inner.ask_timeout, rx).await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(_)) => Err(IpcDriverError::Closed),
            Err(_) => {
                self.inner.asks.lock_unpoisoned().remove(&id);
                Err(IpcDriverError::Timeout(self.inner.ask_timeout))
            }
        }
    }

    /// Number of ready workers serving `chan`, without keeping the answer for a request (what
    /// an application's own server count should use; [`Driver::num_serv`] is the adapter's).
    pub async fn server_count(&self, chan: &str) -> Result<u16, IpcDriverError> {
        let view = self.ask(chan).await?;
        Ok(u16::try_from(view.len()).unwrap_or(u16::MAX))
    }
}

impl Driver for IpcDriver {
    type Error = IpcDriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let request = match self.plan(&chan, &val).await? {
            Plan::Plain => None,
            Plan::Tracked(meta) => Some(meta),
            // Nobody else is asked: nothing to send.
            Plan::Nobody => return Ok(()),
            // The adapter registered its response handler before publishing: the stand-in is
            // counted like the answer it replaces.
            Plan::Absent(injections) => {
                inject(&self.inner, injections).await;
                return Ok(());
            }
        };
        self.send(&BusUp::Publish {
            chan: Cow::Borrowed(&chan),
            payload: &val,
            request,
        })
        .await
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size.max(1));
        self.inner.subs.lock_unpoisoned().insert(chan.clone(), tx);
        self.send(&BusUp::Subscribe {
            chan: Cow::Borrowed(&chan),
        })
        .await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.inner.subs.lock_unpoisoned().remove(&chan);
        self.send(&BusUp::Unsubscribe {
            chan: Cow::Borrowed(&chan),
        })
        .await
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let view = self.ask(chan).await?;
        let count = u16::try_from(view.len()).unwrap_or(u16::MAX);
        self.inner
            .views
            .lock_unpoisoned()
            .put((tokio::task::try_id(), chan.to_owned()), view.clone());
        self.inner
            .latest
            .lock_unpoisoned()
            .insert(chan.to_owned(), view);
        Ok(count)
    }
}

async fn write_loop(
    mut wr: BufWriter<tokio::net::unix::OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Bytes>,
) {
    while let Some(frame) = rx.recv().await {
        if wr.write_all(&frame).await.is_err() {
            return;
        }
        // Batch whatever else is already queued into the same flush.
        while let Ok(frame) = rx.try_recv() {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop(
    inner: Arc<Inner>,
    mut reader: FrameReader<BufReader<tokio::net::unix::OwnedReadHalf>>,
) {
    loop {
        let down: BusDown<'_> = match reader.next().await {
            Ok(Some(d)) => d,
            Ok(None) => {
                tracing::debug!("bus closed by the primary");
                return;
            }
            Err(e) => {
                tracing::error!("bus read failed, cross-worker delivery stops: {e}");
                return;
            }
        };
        match down {
            BusDown::Deliver { chan, payload } => {
                if chan.starts_with(&inner.resp_prefix)
                    && !inner.tracker.lock_unpoisoned().on_response(payload)
                {
                    // From a worker already answered for (one of its answers was lost).
                    continue;
                }
                deliver(&inner, &chan, payload.to_vec()).await;
            }
            BusDown::NumServReply { id, members } => {
                let view: View = members
                    .into_iter()
                    .map(|Member { id, uid }| (id, uid.into_owned()))
                    .collect();
                if let Some(tx) = inner.asks.lock_unpoisoned().remove(&id) {
                    let _ = tx.send(view);
                }
            }
            BusDown::MemberDown { member } => {
                let injections = inner.tracker.lock_unpoisoned().member_down(member);
                inner
                    .latest
                    .lock_unpoisoned()
                    .values_mut()
                    .for_each(|v| v.retain(|(m, _)| *m != member));
                inject(&inner, injections).await;
            }
            BusDown::Undeliverable { req_id, member } => {
                let injections = inner
                    .tracker
                    .lock_unpoisoned()
                    .undeliverable(&req_id, member);
                inject(&inner, injections).await;
            }
        }
    }
}

async fn inject(inner: &Inner, injections: Vec<Injection>) {
    for Injection { chan, payload } in injections {
        deliver(inner, &chan, payload).await;
    }
}

/// Hands a message to the adapter's stream for `chan`, waiting if it is full (the primary
/// bounds what it queues for us, so waiting here is the backpressure, not a leak).
async fn deliver(inner: &Inner, chan: &str, payload: Vec<u8>) {
    let tx = inner.subs.lock_unpoisoned().get(chan).cloned();
    if let Some(tx) = tx
        && tx.send((chan.to_owned(), payload)).await.is_err()
    {
        inner.subs.lock_unpoisoned().remove(chan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::hub::Hub;
    use futures_util::StreamExt;
    use socketioxide_core::adapter::remote_packet::{RequestIn, RequestOut, RequestTypeOut};
    use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions};
    use socketioxide_core::packet::Packet;
    use socketioxide_core::{Sid, Uid, Value};

    const PREFIX: &str = "t";
    const SOON: Duration = Duration::from_secs(2);

    fn driver(hub: &Arc<Hub>, id: u32, uid: Uid) -> IpcDriver {
        let (a, b) = UnixStream::pair().unwrap();
        hub.attach(MemberId(id), a);
        hub.set_ready(MemberId(id), uid.to_string());
        IpcDriver::start(
            b,
            MemberId(id),
            PREFIX,
            Duration::from_secs(30),
            Duration::from_secs(90),
        )
    }

    /// A worker on the bus speaking raw frames (dropping it closes its bus, as an exit does).
    struct Peer {
        /// Kept open: dropping a write half shuts the bus down.
        _wr: tokio::net::unix::OwnedWriteHalf,
        rd: FrameReader<tokio::net::unix::OwnedReadHalf>,
    }

    impl Peer {
        async fn join(hub: &Arc<Hub>, id: u32, uid: Uid, chans: &[String]) -> Peer {
            let (a, b) = UnixStream::pair().unwrap();
            hub.attach(MemberId(id), a);
            let (rd, mut wr) = b.into_split();
            for chan in chans {
                let up = BusUp::Subscribe {
                    chan: Cow::Borrowed(chan),
                };
                wr.write_all(&frame::encode(&up).unwrap()).await.unwrap();
            }
            // Subscriptions are handled before the ready mark is looked at by anyone.
            tokio::time::sleep(Duration::from_millis(50)).await;
            hub.set_ready(MemberId(id), uid.to_string());
            Peer {
                _wr: wr,
                rd: FrameReader::new(rd),
            }
        }

        /// Next delivered payload.
        async fn delivered(&mut self) -> (String, Vec<u8>) {
            let down: BusDown<'_> = tokio::time::timeout(SOON, self.rd.next())
                .await
                .expect("a frame in time")
                .unwrap()
                .unwrap();
            match down {
                BusDown::Deliver { chan, payload } => (chan.into_owned(), payload.to_vec()),
                other => panic!("expected a delivery, got {other:?}"),
            }
        }
    }

    fn request(from: Uid, ty: RequestTypeOut<'_>, ack_timeout: Option<Duration>) -> (Sid, Vec<u8>) {
        let opts = BroadcastOptions::new(Sid::new());
        let req = RequestOut::new(from, ty, &opts).with_ack_timeout(ack_timeout);
        (req.id, rmp_serde::to_vec(&req).unwrap())
    }

    #[tokio::test]
    async fn a_request_to_a_worker_already_gone_is_answered_at_once() {
        let hub = Hub::new(1 << 20);
        let (ua, gone) = (Uid::new(), Uid::new());
        let a = driver(&hub, 1, ua);
        let resp = format!("{PREFIX}-response#/#{ua}#");
        let mut answers = a.subscribe(resp.clone(), 16).await.unwrap();
        let packet = Packet::event("/", Value::Str("[\"ask\"]".into(), None));
        for (ty, kind) in [
            (RequestTypeOut::AllRooms, 2),
            (RequestTypeOut::FetchSockets, 3),
            (RequestTypeOut::BroadcastWithAck(&packet), 1),
        ] {
            let (id, bytes) = request(ua, ty, None);
            a.publish(format!("{PREFIX}-request#/#{gone}#"), bytes)
                .await
                .unwrap();
            let (chan, payload) = tokio::time::timeout(SOON, answers.next())
                .await
                .expect("answered at once, not after the request timeout")
                .unwrap();
            assert_eq!(chan, resp);
            let h = wire::peek_response(&payload).unwrap();
            assert_eq!(h.req_id, id.as_str());
            assert_eq!(h.node_id, gone.to_string());
            assert_eq!(h.kind, kind);
        }
    }

    #[tokio::test]
    async fn a_request_to_a_live_worker_outside_the_views_is_sent_and_tracked() {
        let hub = Hub::new(1 << 20);
        let (ua, ub) = (Uid::new(), Uid::new());
        let a = driver(&hub, 1, ua);
        let resp = format!("{PREFIX}-response#/#{ua}#");
        let mut answers = a.subscribe(resp.clone(), 16).await.unwrap();
        let target = format!("{PREFIX}-request#/#{ub}#");
        let mut b = Peer::join(&hub, 2, ub, std::slice::from_ref(&target)).await;
        let (id, bytes) = request(ua, RequestTypeOut::FetchSockets, None);
        a.publish(target.clone(), bytes.clone()).await.unwrap();
        assert_eq!(b.delivered().await, (target, bytes));
        // b dies without answering: a answers for it at once.
        drop(b);
        let (_, payload) = tokio::time::timeout(SOON, answers.next())
            .await
            .expect("answered for the dead worker at once")
            .unwrap();
        let h = wire::peek_response(&payload).unwrap();
        assert_eq!(
            (h.req_id, h.node_id),
            (id.as_str(), ub.to_string().as_str())
        );
    }

    #[tokio::test]
    async fn a_long_ack_timeout_is_tracked_as_long_as_the_adapter_waits() {
        let hub = Hub::new(1 << 20);
        let (ua, ub) = (Uid::new(), Uid::new());
        let a = driver(&hub, 1, ua);
        let chan = format!("{PREFIX}-request#/#");
        let _b = Peer::join(&hub, 2, ub, std::slice::from_ref(&chan)).await;
        assert_eq!(a.num_serv(&chan).await.unwrap(), 1);
        let packet = Packet::event("/", Value::Str("[\"ask\"]".into(), None));
        let ack = Duration::from_secs(600);
        let (id, bytes) = request(ua, RequestTypeOut::BroadcastWithAck(&packet), Some(ack));
        let published = tokio::time::Instant::now().into_std();
        a.publish(chan, bytes).await.unwrap();
        let deadline = a.inner.tracker.lock_unpoisoned().deadline(id.as_str());
        // request timeout (30 s) + ack timeout, well past the 90 s default lifetime.
        assert!(
            deadline.is_some_and(|d| d >= published + ack + Duration::from_secs(30)),
            "{deadline:?}"
        );
    }

    #[tokio::test]
    async fn server_counts_nobody_publishes_after_stay_bounded() {
        let hub = Hub::new(1 << 20);
        let a = driver(&hub, 1, Uid::new());
        let chan = format!("{PREFIX}-request#/#");
        let _stream = a.subscribe(chan.clone(), 16).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..3 * VIEWS_CAP {
            let (a, chan) = (a.clone(), chan.clone());
            tasks.spawn(async move { a.num_serv(&chan).await.unwrap() });
        }
        while let Some(n) = tasks.join_next().await {
            assert_eq!(n.unwrap(), 1);
        }
        assert_eq!(a.inner.views.lock_unpoisoned().len(), VIEWS_CAP);
        // An application's own counts keep nothing.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (a, chan) = (a.clone(), chan.clone());
            tasks.spawn(async move { a.server_count(&chan).await.unwrap() });
        }
        while let Some(n) = tasks.join_next().await {
            assert_eq!(n.unwrap(), 1);
        }
        assert_eq!(a.inner.views.lock_unpoisoned().len(), VIEWS_CAP);
        // The newest answers are still there for the requests about to be published.
        let mut v = Views::default();
        for i in 0..VIEWS_CAP + 10 {
            v.put((None, format!("c{i}")), Vec::new());
        }
        assert!(v.take(&(None, "c5".into())).is_none());
        assert!(v.take(&(None, format!("c{}", VIEWS_CAP + 9))).is_some());
        assert!(v.order.len() <= VIEWS_CAP);
    }

    #[tokio::test]
    async fn the_volatile_flag_crosses_the_bus() {
        use socketioxide::SocketIo;
        use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};

        let hub = Hub::new(1 << 20);
        let a = driver(&hub, 1, Uid::new());
        let chan = format!("{PREFIX}-request#/#");
        let mut b = Peer::join(&hub, 2, Uid::new(), std::slice::from_ref(&chan)).await;
        let ctr = RedisAdapterCtr::new_with_driver(
            super::super::ClusterDriver::Ipc(a),
            RedisAdapterConfig::new().with_prefix(PREFIX),
        );
        let (_layer, io) = SocketIo::builder()
            .with_adapter::<super::super::ClusterAdapter>(ctr)
            .build_layer();
        io.ns("/", async || {}).await.unwrap();
        let ns = io.of("/").unwrap();
        ns.clone().volatile().emit("msg", &1).await.unwrap();
        ns.emit("msg", &2).await.unwrap();
        let mut flags = Vec::new();
        while flags.len() < 2 {
            let (got, payload) = b.delivered().await;
            if got != chan {
                continue;
            }
            let req: RequestIn = rmp_serde::from_slice(&payload).unwrap();
            flags.push(req.opts.unwrap().has_flag(BroadcastFlags::Volatile));
        }
        assert_eq!(flags, [true, false], "volatile, then not");
    }
}
