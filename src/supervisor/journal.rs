//! The cluster's lifecycle as typed events: what tests, dashboards and the status view follow
//! instead of log lines.
//!
//! The primary records each event here as it happens (workers started, ready, refused, exited,
//! restarted; reloads; listening; draining; stopped). The admin listener streams them as JSON
//! lines on `GET /events`: the last [`HISTORY`] events first, then each new one as it comes, so
//! a client that connects late still sees how the cluster got where it is. Every line has a
//! `seq` (increasing from 1) and an `event` name; the other fields depend on the event.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::sync::LockExt;

/// Events kept for clients that connect later.
pub(crate) const HISTORY: usize = 1024;

/// One lifecycle event (the JSON of a `/events` line, with `seq` added).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum ClusterEvent {
    /// A worker process was started in `slot`.
    WorkerStarted {
        slot: usize,
        pid: u32,
        worker: String,
        generation: u64,
    },
    /// A worker reported ready: it gets new sessions from now on.
    WorkerReady {
        slot: usize,
        pid: u32,
        worker: String,
        startup_ms: u64,
    },
    /// A worker was refused at its hello (another build's wire protocol, or no hello).
    WorkerRefused {
        slot: usize,
        pid: u32,
        worker: String,
        reason: String,
    },
    /// A worker process ended; `expected` when it was draining or the cluster stopping.
    WorkerExited {
        slot: usize,
        pid: u32,
        worker: String,
        status: String,
        expected: bool,
    },
    /// A slot's worker died (`cause`: `exit`, `hung`, `start_timeout`) and a new one starts
    /// after `restart_in_ms`.
    WorkerRestarting {
        slot: usize,
        cause: &'static str,
        crashes: u32,
        restart_in_ms: u64,
    },
    /// A slot's worker is replaced by a ready successor and drains (`why`: `reload`,
    /// `memory limit`).
    WorkerReplaced {
        slot: usize,
        pid: u32,
        worker: String,
        why: String,
    },
    /// A reload's successor did not become ready: the slot keeps its worker.
    ReloadKeptWorker { slot: usize },
    /// The primary accepts connections on `addr` (`activated`: a socket systemd passed).
    Listening { addr: String, activated: bool },
    /// A rolling reload began (SIGHUP).
    ReloadStarted,
    /// A rolling reload ended; `status` is the status line then.
    ReloadFinished { status: String },
    /// A reload was refused before any worker was touched (the config file).
    ReloadRefused { reason: String },
    /// The cluster stopped accepting and drains its workers.
    Draining,
    /// The accept loop died or stalled: the primary ends with an error.
    AcceptLoopEnded { why: String },
    /// Another long-lived task of the primary panicked: the primary ends with an error.
    TaskPanicked { task: String, why: String },
    /// The primary is about to exit.
    Stopped,
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    #[serde(flatten)]
    event: &'a ClusterEvent,
}

/// The primary's event record: a bounded history and a live feed.
#[derive(Debug)]
pub(crate) struct Journal {
    inner: Mutex<Inner>,
    live: broadcast::Sender<String>,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    history: VecDeque<String>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            inner: Mutex::default(),
            live: broadcast::channel(HISTORY).0,
        }
    }
}

impl Journal {
    /// Records `event` and sends it to every follower.
    pub(crate) fn record(&self, event: ClusterEvent) {
        let mut inner = self.inner.lock_unpoisoned();
        inner.seq += 1;
        let line = match serde_json::to_string(&Line {
            seq: inner.seq,
            event: &event,
        }) {
            Ok(mut line) => {
                line.push('\n');
                line
            }
            Err(e) => return tracing::warn!("cannot encode a lifecycle event: {e}"),
        };
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(line.clone());
        // Sent under the lock, so a follower never sees an event twice or misses one between
        // its history and its live feed.
        let _ = self.live.send(line);
    }

    /// The history so far and the feed of what comes next, without gap or overlap.
    pub(crate) fn follow(&self) -> (Vec<String>, broadcast::Receiver<String>) {
        let inner = self.inner.lock_unpoisoned();
        (
            inner.history.iter().cloned().collect(),
            self.live.subscribe(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_get_history_then_live_events_in_order() {
        let j = Journal::default();
        j.record(ClusterEvent::ReloadStarted);
        let (history, mut live) = j.follow();
        j.record(ClusterEvent::Listening {
            addr: "127.0.0.1:1".into(),
            activated: false,
        });
        assert_eq!(history, vec!["{\"seq\":1,\"event\":\"reload_started\"}\n"]);
        assert_eq!(
            live.try_recv().unwrap(),
            "{\"seq\":2,\"event\":\"listening\",\"addr\":\"127.0.0.1:1\",\"activated\":false}\n"
        );
        for _ in 0..HISTORY + 5 {
            j.record(ClusterEvent::Draining);
        }
        let (history, _) = j.follow();
        assert_eq!(history.len(), HISTORY);
        assert!(history[0].starts_with("{\"seq\":8,"), "{}", history[0]);
    }
}
