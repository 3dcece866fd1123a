//! The IPC bus driver: `socketioxide-redis`'s [`Driver`] over the worker's bus socket.
//!
//! Publish, subscribe and server counts go to the primary, which relays to the other workers
//! (see [`supervisor::hub`](crate::supervisor)). On top of what Redis offers, requests that wait
//! for answers name their responders and are tracked ([`Tracker`]), so a worker that dies or
//! cannot be reached is answered for at once instead of holding the request until its timeout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::ipc::bus::{BusDown, BusUp, Member, RequestMeta};
use crate::ipc::frame::{self, FrameReader};
use crate::ipc::message::MemberId;

use super::tracker::{Injection, Tracker};
use super::wire;

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

/// Server-count answers kept until the same task publishes its request.
type Views = HashMap<(Option<tokio::task::Id>, String), (Instant, View)>;

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
    ask_timeout: Duration,
}

impl IpcDriver {
    /// Starts the driver on the worker's bus socket. `prefix` is the adapter's channel prefix;
    /// `request_lifetime` bounds how long a request is tracked (request timeout + ack timeout).
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
    fn request_meta<'a>(&self, chan: &str, payload: &'a [u8]) -> Option<RequestMeta<'a>> {
        let rest = chan.strip_prefix(&self.inner.req_prefix)?;
        let header = wire::peek_request(payload)?;
        if !header.expects_responses() {
            return None;
        }
        // `{ns}#` (every server) or `{ns}#{uid}#` (one server).
        let mut parts = rest.split('#');
        let ns = parts.next()?;
        let target_uid = parts.next().filter(|s| !s.is_empty());
        let view = self.take_view(chan, target_uid)?;
        let targets: View = match target_uid {
            Some(uid) => view.into_iter().filter(|(_, u)| u == uid).collect(),
            None => view
                .into_iter()
                .filter(|(m, _)| *m != self.inner.me)
                .collect(),
        };
        let resp_chan = format!("{}{ns}#{}#", self.inner.resp_prefix, header.node_id);
        let members: Vec<MemberId> = targets.iter().map(|(m, _)| *m).collect();
        self.inner.tracker.lock().unwrap().track(
            header.id,
            header.kind,
            resp_chan,
            targets,
            self.inner.request_lifetime,
        );
        Some(RequestMeta {
            req_id: Cow::Borrowed(header.id),
            targets: Cow::Owned(members),
        })
    }

    fn take_view(&self, chan: &str, target_uid: Option<&str>) -> Option<View> {
        let task = tokio::task::try_id();
        if target_uid.is_none()
            && let Some((_, v)) = self
                .inner
                .views
                .lock()
                .unwrap()
                .remove(&(task, chan.to_owned()))
        {
            return Some(v);
        }
        let latest = self.inner.latest.lock().unwrap();
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
}

impl Driver for IpcDriver {
    type Error = IpcDriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let request = self.request_meta(&chan, &val);
        if request.as_ref().is_some_and(|r| r.targets.is_empty()) {
            // Nobody else is asked: nothing to send.
            return Ok(());
        }
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
        self.inner.subs.lock().unwrap().insert(chan.clone(), tx);
        self.send(&BusUp::Subscribe {
            chan: Cow::Borrowed(&chan),
        })
        .await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.inner.subs.lock().unwrap().remove(&chan);
        self.send(&BusUp::Unsubscribe {
            chan: Cow::Borrowed(&chan),
        })
        .await
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let id = self.inner.next_ask.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.asks.lock().unwrap().insert(id, tx);
        if let Err(e) = self
            .send(&BusUp::NumServ {
                id,
                chan: Cow::Borrowed(chan),
            })
            .await
        {
            self.inner.asks.lock().unwrap().remove(&id);
            return Err(e);
        }
        let view = match tokio::time::timeout(self.inner.ask_timeout, rx).await {
            Ok(Ok(view)) => view,
            Ok(Err(_)) => return Err(IpcDriverError::Closed),
            Err(_) => {
                self.inner.asks.lock().unwrap().remove(&id);
                return Err(IpcDriverError::Timeout(self.inner.ask_timeout));
            }
        };
        let count = u16::try_from(view.len()).unwrap_or(u16::MAX);
        let now = Instant::now();
        {
            let mut views = self.inner.views.lock().unwrap();
            if views.len() > 256 {
                views.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(30));
            }
            views.insert(
                (tokio::task::try_id(), chan.to_owned()),
                (now, view.clone()),
            );
        }
        self.inner
            .latest
            .lock()
            .unwrap()
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
                if chan.starts_with(&inner.resp_prefix) {
                    inner.tracker.lock().unwrap().on_response(payload);
                }
                deliver(&inner, &chan, payload.to_vec()).await;
            }
            BusDown::NumServReply { id, members } => {
                let view: View = members
                    .into_iter()
                    .map(|Member { id, uid }| (id, uid.into_owned()))
                    .collect();
                if let Some(tx) = inner.asks.lock().unwrap().remove(&id) {
                    let _ = tx.send(view);
                }
            }
            BusDown::MemberDown { member } => {
                let injections = inner.tracker.lock().unwrap().member_down(member);
                inner
                    .latest
                    .lock()
                    .unwrap()
                    .values_mut()
                    .for_each(|v| v.retain(|(m, _)| *m != member));
                inject(&inner, injections).await;
            }
            BusDown::Undeliverable { req_id, member } => {
                let injections = inner.tracker.lock().unwrap().undeliverable(&req_id, member);
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
    let tx = inner.subs.lock().unwrap().get(chan).cloned();
    if let Some(tx) = tx
        && tx.send((chan.to_owned(), payload)).await.is_err()
    {
        inner.subs.lock().unwrap().remove(chan);
    }
}
