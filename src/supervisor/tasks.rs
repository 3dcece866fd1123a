//! The primary's long-lived tasks, watched.
//!
//! Each worker's control link (reader and writer), its bus relay (reader and writer), the task
//! that waits for its process, and the admin listener run as tasks of the primary. A panic in
//! one of them would leave the cluster half-working behind a healthy-looking process (a worker
//! whose hand-offs or broadcasts are never relayed, an admin port that answers nothing), so each
//! runs under [`Tasks::spawn`]: a panic is reported to the lifecycle task, which drains the
//! workers and ends the primary non-zero, and systemd's `Restart=` starts a fresh one. (The
//! accept loop is watched by the lifecycle task itself; short tasks serving one client
//! connection are not: a panic there loses that connection only.)

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tokio::sync::mpsc;

use super::Event;

/// Environment variable that makes the bus relay panic at the first broadcast a worker
/// publishes (a test hook).
pub(crate) const FAULT_BUS_PANIC: &str = "SIO_FAULT_BUS_PANIC";

/// Spawns the primary's long-lived tasks and reports their panics.
#[derive(Clone, Debug)]
pub(crate) struct Tasks {
    events: mpsc::UnboundedSender<Event>,
}

impl Tasks {
    pub(crate) fn new(events: mpsc::UnboundedSender<Event>) -> Self {
        Tasks { events }
    }

    /// Runs `task` on the primary's runtime; if it panics, the lifecycle task hears of it
    /// ([`Event::TaskPanicked`]) and ends the primary.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
                let _ = events.send(Event::TaskPanicked(name, panic_text(panic)));
            }
        })
    }
}

/// The message of a panic payload.
pub(crate) fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_by_name() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tasks = Tasks::new(tx);
        tasks
            .spawn("test task", async { panic!("boom {}", 7) })
            .await
            .unwrap();
        tasks.spawn("quiet task", async {}).await.unwrap();
        match rx.try_recv() {
            Ok(Event::TaskPanicked(name, why)) => {
                assert_eq!(name, "test task");
                assert_eq!(why, "boom 7");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            rx.try_recv().is_err(),
            "a task that ends normally reports nothing"
        );
    }
}
