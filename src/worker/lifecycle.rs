//! The worker's lifecycle as the app sees it: a signal when the worker starts draining, and
//! guards that keep it from closing sessions and exiting while the app finishes its work.
//!
//! A worker drains on a rolling reload, on shutdown, or when it grows past
//! `--worker-memory-limit-mb`. It then (1) stops keeping HTTP connections alive and tells the
//! app ([`Shutdown::draining`]); (2) waits until every [`ShutdownGuard`] is dropped — tasks
//! started with [`Shutdown::spawn`] hold one until they end — or the drain timeout passes;
//! (3) closes every Socket.IO session, so clients reconnect to the workers that stay; (4) ends
//! once its connections are gone (or at the timeout): [`run`](crate::run) returns `Ok(())`
//! in the worker.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// The worker's drain, for the app: clone it into the tasks that need it.
///
/// ```no_run
/// # fn demo(worker: sio_cluster::Worker) {
/// let shutdown = worker.shutdown.clone();
/// let io = worker.io.clone();
/// worker.shutdown.spawn(async move {
///     shutdown.draining().await;
///     // Sessions are still open: say goodbye before the worker closes them.
///     let _ = io.emit("server-leaving", &"reconnecting you to another worker").await;
/// });
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Shutdown {
    draining: watch::Receiver<bool>,
    guards: Arc<Guards>,
}

#[derive(Debug, Default)]
pub(crate) struct Guards {
    held: AtomicUsize,
    released: Notify,
}

/// Keeps the draining worker from closing its sessions and exiting while it lives (bounded by
/// the drain timeout, which the wait counts against: what is left of it after the guards goes
/// to closing sessions). Obtained from [`Shutdown::guard`]. A worker whose primary is gone does
/// not drain and does not wait for guards: it ends at once (there is nobody to hand over to).
///
/// ```no_run
/// # async fn flush_to_db() {}
/// # fn demo(worker: sio_cluster::Worker) {
/// let guard = worker.shutdown.guard();
/// let shutdown = worker.shutdown.clone();
/// tokio::spawn(async move {
///     shutdown.draining().await;
///     flush_to_db().await;
///     drop(guard); // now the worker may close its sessions and end
/// });
/// # }
/// ```
#[derive(Debug)]
#[must_use = "the worker waits only while the guard is alive"]
pub struct ShutdownGuard {
    guards: Arc<Guards>,
}

impl Shutdown {
    pub(crate) fn new(draining: watch::Receiver<bool>) -> Self {
        Shutdown {
            draining,
            guards: Arc::default(),
        }
    }

    /// Resolves once the worker starts draining (at once if it already has).
    pub async fn draining(&self) {
        let mut rx = self.draining.clone();
        // An error means the worker's state is gone: it is ending all the same.
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Whether the worker is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// A guard: the draining worker waits for it to drop before it closes sessions and exits.
    pub fn guard(&self) -> ShutdownGuard {
        self.guards.held.fetch_add(1, Ordering::AcqRel);
        ShutdownGuard {
            guards: self.guards.clone(),
        }
    }

    /// Runs `task` on the worker's runtime holding a [`guard`](Self::guard) until it ends: the
    /// draining worker waits for it (bounded by the drain timeout).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let guard = self.guard();
        tokio::spawn(async move {
            let out = task.await;
            drop(guard);
            out
        })
    }

    /// Resolves when no guard is held.
    pub(crate) async fn released(&self) {
        loop {
            let notified = self.guards.released.notified();
            if self.guards.held.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Guards held now.
    pub(crate) fn held(&self) -> usize {
        self.guards.held.load(Ordering::Acquire)
    }
}

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        if self.guards.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.guards.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_drain_waits_for_guards_and_tasks() {
        let (tx, rx) = watch::channel(false);
        let s = Shutdown::new(rx);
        assert!(!s.is_draining());
        let g = s.guard();
        let s2 = s.clone();
        let task = s.spawn(async move {
            s2.draining().await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            7
        });
        assert_eq!(s.held(), 2);
        tx.send_replace(true);
        assert!(s.is_draining());
        drop(g);
        // The task still holds its guard.
        assert!(
            tokio::time::timeout(Duration::from_millis(5), s.released())
                .await
                .is_err()
        );
        tokio::time::timeout(Duration::from_secs(5), s.released())
            .await
            .expect("released once the task ends");
        assert_eq!(task.await.unwrap(), 7);
        assert_eq!(s.held(), 0);
        // Draining already: resolves at once.
        s.draining().await;
    }
}
