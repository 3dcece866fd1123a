//! The primary's end of one worker's control channel.
//!
//! A writer task drains the worker's queue into the socket, batching consecutive hand-offs into
//! one message (one `sendmsg` for up to 64 connections under load), and closes the primary's
//! copy of each descriptor once it is sent. A reader task serves the worker's requests: readiness, load,
//! heartbeats, session registration and look-up, and forwarded connections.

use crate::sync::{LockExt, RwLockExt};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::ipc::IpcError;
use crate::ipc::channel::{self, MAX_FDS, Receiver, Sender};
use crate::ipc::message::{ConnManifest, ConnOrigin, ToPrimary, ToWorker};

use super::metrics::{RejectReason, RouteReason};
use super::slot::{Outgoing, Phase, WorkerHandle};
use super::{Decision, Event, Shared};

/// Starts both tasks of the link.
pub(crate) fn start(
    shared: Arc<Shared>,
    handle: Arc<WorkerHandle>,
    ctl: OwnedFd,
    queue: mpsc::Receiver<Outgoing>,
) -> Result<(), IpcError> {
    let (tx, rx) = channel::channel::<ToWorker, ToPrimary>(ctl)?;
    shared.tasks.spawn(
        "control link writer",
        write_loop(shared.clone(), handle.clone(), tx, queue),
    );
    shared
        .tasks
        .clone()
        .spawn("control link reader", read_loop(shared, handle, rx));
    Ok(())
}

async fn write_loop(
    shared: Arc<Shared>,
    handle: Arc<WorkerHandle>,
    tx: Sender<ToWorker>,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    let mut batch = Vec::with_capacity(MAX_FDS);
    let mut conns: Vec<(ConnManifest, OwnedFd)> = Vec::with_capacity(MAX_FDS);
    'run: while let Some(first) = queue.recv().await {
        // Take what else is queued: consecutive hand-offs travel in one message.
        batch.push(first);
        while batch.len() < MAX_FDS {
            match queue.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut items = batch.drain(..);
        loop {
            let next = items.next();
            match next {
                Some(Outgoing {
                    msg: ToWorker::Conn(m),
                    fd: Some(fd),
                }) => {
                    conns.push((m, fd));
                    continue;
                }
                _ => {
                    if let Err(e) = send_conns(&tx, &mut conns).await {
                        tracing::debug!(worker = %handle.member, "control channel closed: {e}");
                        for (m, fd) in conns.drain(..) {
                            rehome(&shared, &handle, ToWorker::Conn(m), Some(fd));
                        }
                        next.into_iter()
                            .chain(items)
                            .for_each(|o| rehome(&shared, &handle, o.msg, o.fd));
                        break 'run;
                    }
                }
            }
            let Some(item) = next else { break };
            let fds: Vec<_> = item.fd.iter().map(|f| f.as_fd()).collect();
            if let Err(e) = tx.send(&item.msg, &fds).await {
                tracing::debug!(worker = %handle.member, "control channel closed: {e}");
                rehome(&shared, &handle, item.msg, item.fd);
                items.for_each(|o| rehome(&shared, &handle, o.msg, o.fd));
                break 'run;
            }
        }
    }
    // The worker is gone: connections still queued for it were never received, so their first
    // bytes are unread and they can be routed again.
    queue.close();
    while let Some(Outgoing { msg, fd }) = queue.recv().await {
        rehome(&shared, &handle, msg, fd);
    }
}

/// Sends the pending hand-offs as one message; on success the primary's copies are closed.
async fn send_conns(
    tx: &Sender<ToWorker>,
    conns: &mut Vec<(ConnManifest, OwnedFd)>,
) -> Result<(), IpcError> {
    if conns.is_empty() {
        return Ok(());
    }
    let fds: Vec<_> = conns.iter().map(|(_, f)| f.as_fd()).collect();
    let msg = if conns.len() == 1 {
        ToWorker::Conn(conns[0].0)
    } else {
        ToWorker::Conns(conns.iter().map(|(m, _)| *m).collect())
    };
    tx.send(&msg, &fds).await?;
    drop(fds);
    conns.clear();
    Ok(())
}

fn rehome(shared: &Arc<Shared>, handle: &WorkerHandle, msg: ToWorker, fd: Option<OwnedFd>) {
    if let ToWorker::Conn(ConnManifest {
        counted_ip: Some(ip),
        ..
    }) = &msg
    {
        // Counted again when it is handed anew.
        shared.caps.closed(&[*ip], &handle.per_ip);
    }
    if let (
        ToWorker::Conn(ConnManifest {
            origin: ConnOrigin::Accepted,
            peer: Some(peer),
            ..
        }),
        Some(fd),
    ) = (msg, fd)
    {
        shared.rehome(fd, peer);
    }
}

/// Reads the worker's first message, which must be a [`Hello`](crate::ipc::hello::Hello) of
/// this build's wire protocol; otherwise logs why, kills the worker and returns `false`.
async fn hello(shared: &Shared, handle: &WorkerHandle, rx: &mut Receiver<ToPrimary>) -> bool {
    use crate::ipc::hello::Mismatch;
    let refused = match rx.recv().await {
        Ok(Some((ToPrimary::Hello(hello), _))) => match hello.check() {
            Ok(()) => return true,
            Err(m) => m,
        },
        Ok(Some(_)) | Err(IpcError::Decode(_)) => Mismatch::NoHello,
        // Gone before it said anything: its exit is reported as usual.
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(worker = %handle.member, "control channel error: {e}");
            return false;
        }
    };
    tracing::error!(slot = handle.slot, pid = handle.pid, worker = %handle.member, "{refused}");
    shared
        .journal
        .record(super::journal::ClusterEvent::WorkerRefused {
            slot: handle.slot,
            pid: handle.pid,
            worker: handle.member.to_string(),
            reason: refused.to_string(),
        });
    handle.kill();
    false
}

async fn read_loop(shared: Arc<Shared>, handle: Arc<WorkerHandle>, mut rx: Receiver<ToPrimary>) {
    let member = handle.member;
    if !hello(&shared, &handle, &mut rx).await {
        let _ = shared.events.send(Event::LinkClosed(member));
        return;
    }
    loop {
        let (msg, fds) = match rx.recv().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) if e.is_recoverable() => {
                // One bad message (its descriptors are closed already): drop it, keep the link.
                tracing::warn!(worker = %member, "dropped a bad message from the worker: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!(worker = %member, "control channel error: {e}");
                break;
            }
        };
        match msg {
            ToPrimary::Hello(_) => {
                tracing::warn!(worker = %member, "dropped a second hello from the worker");
            }
            ToPrimary::Ready { server_uid } => {
                let _ = handle.uid.set(server_uid.clone());
                if handle.phase() == Phase::Starting {
                    handle.set_phase(Phase::Ready);
                }
                shared.hub.set_ready(member, server_uid);
                let _ = shared.events.send(Event::Ready(member));
            }
            ToPrimary::Load {
                closed_total,
                capacity,
                closed_ips,
            } => {
                handle.closed.store(closed_total, Ordering::Relaxed);
                handle.capacity.store(capacity, Ordering::Relaxed);
                shared.caps.closed(&closed_ips, &handle.per_ip);
            }
            ToPrimary::Pick { req, client_ip } => {
                let outcome = {
                    let roster = shared.roster.read_unpoisoned();
                    match shared.new_session(&roster, None, client_ip) {
                        Decision::Serve(h, _) => Ok(h.member),
                        Decision::Refuse(r) => Err(r),
                        Decision::NoWorker => Ok(member),
                    }
                };
                match outcome {
                    Ok(_) => shared.metrics.routed(RouteReason::KeepAlive),
                    Err(r) => {
                        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        shared.metrics.rejected(RejectReason::of_refusal(r));
                    }
                }
                if handle
                    .send(ToWorker::Picked { req, outcome }, None)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            ToPrimary::Heartbeat { seq: _, rss_bytes } => {
                *handle.last_heartbeat.lock_unpoisoned() = Instant::now();
                handle.rss.store(rss_bytes, Ordering::Relaxed);
            }
            ToPrimary::Report(report) => {
                *handle.report.lock_unpoisoned() = Some(report);
            }
            ToPrimary::Health { req } => {
                let (status, body) = super::metrics::health(&shared);
                if handle
                    .send(ToWorker::Health { req, status, body }, None)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            ToPrimary::RegisterSid { req, sid } => {
                shared.sids.lock_unpoisoned().insert(sid, member);
                if handle
                    .send(ToWorker::SidRegistered { req }, None)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            ToPrimary::UnregisterSids { sids } => {
                let mut table = shared.sids.lock_unpoisoned();
                for sid in &sids {
                    table.remove(sid, member);
                }
            }
            ToPrimary::LookupSid { req, sid } => {
                let owner = shared.sids.lock_unpoisoned().owner(&sid);
                let owner = owner.filter(|m| {
                    shared
                        .roster
                        .read_unpoisoned()
                        .get(*m)
                        .is_some_and(|h| h.is_alive())
                });
                if handle
                    .send(ToWorker::SidLocation { req, owner }, None)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            ToPrimary::Forward { target, peer } => {
                let Some(fd) = fds.into_iter().next() else {
                    tracing::warn!(worker = %member, "forward request without a socket; ignored");
                    continue;
                };
                let dest = shared.roster.read_unpoisoned().get(target).cloned();
                match dest {
                    Some(dest) if dest.is_alive() => {
                        shared.metrics.routed(RouteReason::Forwarded);
                        let id = shared.stats.handed.fetch_add(1, Ordering::Relaxed);
                        dest.handed.fetch_add(1, Ordering::Relaxed);
                        let manifest = ConnManifest {
                            id,
                            peer,
                            origin: ConnOrigin::Forwarded { from: member },
                            first: crate::ipc::message::FirstRequest::Routed,
                            counted_ip: None,
                        };
                        // Dropping the socket on failure closes it; the forwarding worker then
                        // answers its client with an error.
                        let _ = dest.send(ToWorker::Conn(manifest), Some(fd)).await;
                    }
                    _ => {
                        tracing::debug!(worker = %member, %target, "forward target is gone");
                    }
                }
            }
        }
    }
    let _ = shared.events.send(Event::LinkClosed(member));
}
