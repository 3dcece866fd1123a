//! Which workers still owe an answer to this worker's adapter requests.
//!
//! `socketioxide-redis` waits for a fixed number of answers (the server count it read before
//! publishing). Redis cannot tell it that a server died, so it waits for its timeout. The IPC
//! bus can: the primary sends `MemberDown` after the last frame of a dead worker, or
//! `Undeliverable` when a request could not be queued for a target. The tracker then produces the
//! answers that worker will never send (no rooms, no sockets, no acks / lost acks) and the request
//! completes at once with the survivors' answers.
//!
//! The primary also reports `Undeliverable` when it had to drop one of a worker's *answers* (this
//! worker's own bus queue was full). That worker is then given up on for the request like a dead
//! one, and whatever it still sends for the request is filtered out, so the adapter never counts
//! an answer twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ipc::message::MemberId;

use super::wire::{self, Stand, kind, response};

/// Progress of one target on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// Nothing received yet.
    Everything,
    /// `BroadcastAckCount(expected)` received, `got` acks since.
    Acks { expected: u32, got: u32 },
    /// Complete.
    Nothing,
    /// Given up on (dead, unreachable, or one of its answers was lost): stand-ins were produced
    /// for what it owed, and anything it still sends for this request is dropped.
    Abandoned,
}

impl Owed {
    fn done(self) -> bool {
        matches!(self, Owed::Nothing | Owed::Abandoned)
    }
}

#[derive(Debug)]
struct Pending {
    kind: u8,
    resp_chan: String,
    /// Target → (its uid, what it still owes).
    targets: HashMap<MemberId, (String, Owed)>,
    deadline: Instant,
    /// When the requester stops waiting (the adapter's request timeout), if known.
    timeout_at: Option<Instant>,
    /// Counted as timed out already.
    timed_out: bool,
}

/// A stand-in response to inject on a response channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Injection {
    /// The requester's response channel.
    pub chan: String,
    /// Encoded response.
    pub payload: Vec<u8>,
}

/// Outstanding requests of this worker.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    reqs: HashMap<String, Pending>,
    last_gc: Option<Instant>,
    /// Requests counted by [`Tracker::timed_out`].
    timed_out_total: u64,
}

impl Tracker {
    /// Starts tracking a request published on the bus.
    pub fn track(
        &mut self,
        req_id: &str,
        kind: u8,
        resp_chan: String,
        targets: impl IntoIterator<Item = (MemberId, String)>,
        lifetime: Duration,
    ) {
        let now = Instant::now();
        self.gc(now);
        let targets: HashMap<_, _> = targets
            .into_iter()
            .map(|(m, uid)| (m, (uid, Owed::Everything)))
            .collect();
        if targets.is_empty() {
            return;
        }
        self.reqs.insert(
            req_id.to_owned(),
            Pending {
                kind,
                resp_chan,
                targets,
                deadline: now + lifetime,
                timeout_at: None,
                timed_out: false,
            },
        );
    }

    /// The requester of `req_id` waits `timeout` from now for its answers: if some are still
    /// missing then, [`Tracker::timed_out`] counts it.
    pub fn expect_within(&mut self, req_id: &str, timeout: Duration) {
        if let Some(p) = self.reqs.get_mut(req_id) {
            p.timeout_at = Some(Instant::now() + timeout);
        }
    }

    /// Requests whose requester stopped waiting with answers still missing, since start
    /// (counts those past their timeout now; `sio_cluster_adapter_request_timeouts_total`).
    pub fn timed_out(&mut self, now: Instant) -> u64 {
        for p in self.reqs.values_mut() {
            if !p.timed_out && p.timeout_at.is_some_and(|t| t <= now) {
                p.timed_out = true;
                self.timed_out_total += 1;
            }
        }
        self.timed_out_total
    }

    /// Accounts for a response received on one of this worker's response channels; `false` when
    /// it must not reach the adapter (its sender was already given up on for this request, and
    /// stand-ins took the place of its answers).
    pub fn on_response(&mut self, payload: &[u8]) -> bool {
        let Some(h) = wire::peek_response(payload) else {
            return true;
        };
        let Some(p) = self.reqs.get_mut(h.req_id) else {
            return true;
        };
        let Some((_, owed)) = p.targets.values_mut().find(|(uid, _)| uid == h.node_id) else {
            return true;
        };
        if *owed == Owed::Abandoned {
            return false;
        }
        *owed = match (*owed, h.kind, h.count) {
            (Owed::Everything, response::BROADCAST_ACK_COUNT, Some(0)) => Owed::Nothing,
            (Owed::Everything, response::BROADCAST_ACK_COUNT, Some(n)) => Owed::Acks {
                expected: n,
                got: 0,
            },
            (Owed::Acks { expected, got }, response::BROADCAST_ACK, _) if got + 1 >= expected => {
                Owed::Nothing
            }
            (Owed::Acks { expected, got }, response::BROADCAST_ACK, _) => Owed::Acks {
                expected,
                got: got + 1,
            },
            (Owed::Everything, _, _) if p.kind != kind::BROADCAST_WITH_ACK => Owed::Nothing,
            (other, _, _) => other,
        };
        if p.targets.values().all(|(_, o)| o.done()) {
            self.reqs.remove(h.req_id);
        }
        true
    }

    /// `member` is gone: produce everything it still owed, for every request.
    pub fn member_down(&mut self, member: MemberId) -> Vec<Injection> {
        let ids: Vec<String> = self
            .reqs
            .iter()
            .filter(|(_, p)| p.targets.contains_key(&member))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().flat_map(|id| self.give_up(id, member)).collect()
    }

    /// Request `req_id` never reached `member`, or one of `member`'s answers to it was dropped.
    pub fn undeliverable(&mut self, req_id: &str, member: MemberId) -> Vec<Injection> {
        self.give_up(req_id, member)
    }

    fn give_up(&mut self, req_id: &str, member: MemberId) -> Vec<Injection> {
        let Some(p) = self.reqs.get_mut(req_id) else {
            return Vec::new();
        };
        let Some((uid, owed)) = p.targets.get_mut(&member) else {
            return Vec::new();
        };
        let stands: Vec<Stand> = match *owed {
            Owed::Nothing | Owed::Abandoned => return Vec::new(),
            Owed::Everything => vec![Stand::for_absent(p.kind)],
            Owed::Acks { expected, got } => {
                vec![Stand::LostAck; expected.saturating_sub(got) as usize]
            }
        };
        *owed = Owed::Abandoned;
        let out = stands
            .into_iter()
            .filter_map(|s| wire::encode_stand_in(req_id, uid, s))
            .map(|payload| Injection {
                chan: p.resp_chan.clone(),
                payload,
            })
            .collect();
        if p.targets.values().all(|(_, o)| o.done()) {
            self.reqs.remove(req_id);
        }
        out
    }

    /// Forgets requests past their lifetime (the adapter gave up on them by then).
    fn gc(&mut self, now: Instant) {
        if self
            .last_gc
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_gc = Some(now);
        let mut late = 0;
        self.reqs.retain(|_, p| {
            let keep = p.deadline > now;
            if !keep && !p.timed_out && p.timeout_at.is_some() {
                late += 1;
            }
            keep
        });
        self.timed_out_total += late;
    }

    /// Requests still tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.reqs.len()
    }

    /// When request `req_id` stops being tracked.
    #[cfg(test)]
    pub fn deadline(&self, req_id: &str) -> Option<Instant> {
        self.reqs.get(req_id).map(|p| p.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::adapter::remote_packet::{Response, ResponseType};
    use socketioxide_core::{Sid, Uid, Value};

    fn count(req: Sid, node: Uid, n: u32) -> Vec<u8> {
        rmp_serde::to_vec(&(
            req,
            Response::<()> {
                node_id: node,
                r#type: ResponseType::BroadcastAckCount(n),
            },
        ))
        .unwrap()
    }

    fn ack(req: Sid, node: Uid) -> Vec<u8> {
        rmp_serde::to_vec(&(
            req,
            Response::<socketioxide::AckError> {
                node_id: node,
                r#type: ResponseType::BroadcastAck((
                    Sid::new(),
                    Ok(Value::Str("yes".into(), None)),
                )),
            },
        ))
        .unwrap()
    }

    #[test]
    fn requests_still_owed_at_their_timeout_are_counted_once() {
        let (r1, r2) = (Sid::new(), Sid::new());
        let b = Uid::new();
        let mut t = Tracker::default();
        for r in [r1, r2] {
            t.track(
                r.as_str(),
                kind::BROADCAST_WITH_ACK,
                "resp".into(),
                [(MemberId(2), b.to_string())],
                Duration::from_secs(10),
            );
            t.expect_within(r.as_str(), Duration::ZERO);
        }
        // r1 completes before anyone looks: not a timeout.
        assert!(t.on_response(&count(r1, b, 0)));
        let now = Instant::now();
        assert_eq!(t.timed_out(now), 1);
        assert_eq!(t.timed_out(now + Duration::from_secs(1)), 1);
    }

    #[test]
    fn dead_worker_owes_its_missing_acks() {
        let req = Sid::new();
        let (b, c) = (Uid::new(), Uid::new());
        let mut t = Tracker::default();
        t.track(
            req.as_str(),
            kind::BROADCAST_WITH_ACK,
            "resp".into(),
            [(MemberId(2), b.to_string()), (MemberId(3), c.to_string())],
            Duration::from_secs(10),
        );
        assert!(t.on_response(&count(req, b, 2)));
        assert!(t.on_response(&ack(req, b)));
        assert!(t.on_response(&count(req, c, 1)));
        assert!(t.on_response(&ack(req, c)));
        // c is complete; b owes one ack.
        let inj = t.member_down(MemberId(2));
        assert_eq!(inj.len(), 1);
        let h = wire::peek_response(&inj[0].payload).unwrap();
        assert_eq!(h.kind, response::BROADCAST_ACK);
        assert_eq!(h.node_id, b.to_string());
        assert_eq!(t.len(), 0);
        // Idempotent: nothing more is owed.
        assert!(t.member_down(MemberId(2)).is_empty());
    }

    #[test]
    fn silent_target_gets_a_zero_count_and_fetch_gets_empty_lists() {
        let mut t = Tracker::default();
        let req = Sid::new();
        let b = Uid::new();
        t.track(
            req.as_str(),
            kind::BROADCAST_WITH_ACK,
            "resp".into(),
            [(MemberId(2), b.to_string())],
            Duration::from_secs(10),
        );
        let inj = t.undeliverable(req.as_str(), MemberId(2));
        assert_eq!(wire::peek_response(&inj[0].payload).unwrap().count, Some(0));

        let req2 = Sid::new();
        t.track(
            req2.as_str(),
            kind::FETCH_SOCKETS,
            "resp".into(),
            [(MemberId(2), b.to_string())],
            Duration::from_secs(10),
        );
        let inj = t.member_down(MemberId(2));
        assert_eq!(inj.len(), 1);
        assert_eq!(wire::peek_response(&inj[0].payload).unwrap().kind, 3);
    }

    #[test]
    fn a_responder_whose_answer_was_lost_is_given_up_and_filtered() {
        let req = Sid::new();
        let (b, c) = (Uid::new(), Uid::new());
        let mut t = Tracker::default();
        t.track(
            req.as_str(),
            kind::BROADCAST_WITH_ACK,
            "resp".into(),
            [(MemberId(2), b.to_string()), (MemberId(3), c.to_string())],
            Duration::from_secs(10),
        );
        assert!(t.on_response(&count(req, b, 3)));
        assert!(t.on_response(&ack(req, b)));
        assert!(t.on_response(&count(req, c, 1)));
        // b's second ack was dropped by the primary: b owes two acks, produced as lost.
        let inj = t.undeliverable(req.as_str(), MemberId(2));
        assert_eq!(inj.len(), 2);
        for i in &inj {
            let h = wire::peek_response(&i.payload).unwrap();
            assert_eq!(
                (h.kind, h.node_id),
                (response::BROADCAST_ACK, b.to_string().as_str())
            );
        }
        // b's third ack still arrives: it must not reach the adapter (counted already).
        assert!(!t.on_response(&ack(req, b)));
        assert!(t.undeliverable(req.as_str(), MemberId(2)).is_empty());
        // c is unaffected; its ack completes the request.
        assert!(t.on_response(&ack(req, c)));
        assert_eq!(t.len(), 0);
        // Unknown requests pass through.
        assert!(t.on_response(&ack(Sid::new(), b)));
    }

    #[test]
    fn answered_requests_are_forgotten() {
        let mut t = Tracker::default();
        let req = Sid::new();
        let b = Uid::new();
        t.track(
            req.as_str(),
            kind::ALL_ROOMS,
            "resp".into(),
            [(MemberId(5), b.to_string())],
            Duration::from_secs(10),
        );
        let rooms = rmp_serde::to_vec(&(
            req,
            Response::<()> {
                node_id: b,
                r#type: ResponseType::AllRooms(Default::default()),
            },
        ))
        .unwrap();
        assert!(t.on_response(&rooms));
        assert_eq!(t.len(), 0);
        assert!(t.member_down(MemberId(5)).is_empty());
    }
}
