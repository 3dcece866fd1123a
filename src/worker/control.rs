//! The worker's end of the control channel: requests to the primary and their replies.

use crate::sync::LockExt;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::ipc::channel::Sender;
use crate::ipc::message::{MemberId, ToPrimary, ToWorker};
use crate::sid::SessionId;

use super::WorkerError;

/// How long the worker waits for the primary to answer a request. The primary answers from
/// memory, so only a dead or wedged primary takes this long.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests to the primary; cheap to clone.
#[derive(Clone, Debug)]
pub struct Control {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::UnboundedSender<(ToPrimary, Option<OwnedFd>)>,
    pending: Mutex<HashMap<u64, oneshot::Sender<ToWorker>>>,
    next: AtomicU64,
}

impl Control {
    /// Starts the writer task over the channel's sending half.
    pub fn start(sender: Sender<ToPrimary>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(ToPrimary, Option<OwnedFd>)>();
        tokio::spawn(async move {
            while let Some((msg, fd)) = rx.recv().await {
                let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
                match sender.send(&msg, &fds).await {
                    Ok(()) => {}
                    // One message the channel refuses (too large, unencodable): the primary
                    // never sees it, the request waiting for its reply times out.
                    Err(e) if e.is_recoverable() => {
                        tracing::warn!("dropped a message to the primary: {e}");
                    }
                    Err(e) => {
                        tracing::error!("cannot reach the primary: {e}; exiting");
                        std::process::exit(1);
                    }
                }
                // Our copy of a passed descriptor closes here.
            }
        });
        Self {
            inner: Arc::new(Inner {
                tx,
                pending: Mutex::default(),
                next: AtomicU64::new(1),
            }),
        }
    }

    /// Sends a message that needs no answer.
    pub fn send(&self, msg: ToPrimary, fd: Option<OwnedFd>) {
        let _ = self.inner.tx.send((msg, fd));
    }

    async fn request(&self, build: impl FnOnce(u64) -> ToPrimary) -> Result<ToWorker, WorkerError> {
        let req = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock_unpoisoned().insert(req, tx);
        self.send(build(req), None);
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                self.inner.pending.lock_unpoisoned().remove(&req);
                Err(WorkerError::PrimaryUnresponsive)
            }
        }
    }

    /// Routes `sid` here; returns once the primary has recorded it.
    pub async fn register_sid(&self, sid: SessionId) -> Result<(), WorkerError> {
        self.request(|req| ToPrimary::RegisterSid { req, sid })
            .await
            .map(|_| ())
    }

    /// The worker owning `sid`, if any.
    pub async fn lookup_sid(&self, sid: SessionId) -> Result<Option<MemberId>, WorkerError> {
        match self
            .request(|req| ToPrimary::LookupSid { req, sid })
            .await?
        {
            ToWorker::SidLocation { owner, .. } => Ok(owner),
            _ => Ok(None),
        }
    }

    /// Where a new session arriving on a kept-alive connection goes (the balancer's choice, or
    /// why it is refused). `None` if the primary did not answer.
    pub async fn pick(
        &self,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<Result<MemberId, crate::ipc::message::Refusal>, WorkerError> {
        match self
            .request(|req| ToPrimary::Pick { req, client_ip })
            .await?
        {
            ToWorker::Picked { outcome, .. } => Ok(outcome),
            _ => Err(WorkerError::PrimaryUnresponsive),
        }
    }

    /// The primary's answer to a health check on the main port: status (200 or 503) and JSON
    /// body.
    pub async fn health(&self) -> Result<(u16, String), WorkerError> {
        match self.request(|req| ToPrimary::Health { req }).await? {
            ToWorker::Health { status, body, .. } => Ok((status, body)),
            _ => Err(WorkerError::PrimaryUnresponsive),
        }
    }

    /// Delivers a reply to the request waiting for it.
    pub fn resolve(&self, req: u64, reply: ToWorker) {
        if let Some(tx) = self.inner.pending.lock_unpoisoned().remove(&req) {
            let _ = tx.send(reply);
        }
    }
}
