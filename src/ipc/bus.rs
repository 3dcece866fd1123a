//! Frames of the adapter bus (carried by [`frame`](super::frame)).
//!
//! The bus is a publish/subscribe relay with exact channel names, modelled on what
//! `socketioxide-redis` expects from Redis, plus what Redis cannot say: which workers are alive.
//! Requests that expect answers (acks, `rooms()`, `fetch_sockets()`) name their responders, so
//! the primary can report at once when one of them is dead or cannot be reached, and the
//! requesting worker completes the request with what the survivors answered.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::message::MemberId;

/// A request that expects responses, as seen by the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta<'a> {
    /// The adapter's request id (a 16-character socketioxide `Sid`).
    pub req_id: Cow<'a, str>,
    /// The workers expected to answer; the request is delivered to these only.
    pub targets: Cow<'a, [MemberId]>,
}

/// A worker known to the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member<'a> {
    /// Bus identity.
    pub id: MemberId,
    /// socketioxide server id (`Uid`) of that worker.
    pub uid: Cow<'a, str>,
}

/// Worker → primary.
#[derive(Debug, Serialize, Deserialize)]
pub enum BusUp<'a> {
    /// Receive messages published on `chan`.
    Subscribe {
        /// Exact channel name.
        #[serde(borrow)]
        chan: Cow<'a, str>,
    },
    /// Stop receiving `chan`.
    Unsubscribe {
        /// Exact channel name.
        #[serde(borrow)]
        chan: Cow<'a, str>,
    },
    /// Publish to every other subscriber of `chan` (or only to `request.targets`).
    Publish {
        /// Exact channel name.
        #[serde(borrow)]
        chan: Cow<'a, str>,
        /// Opaque adapter message.
        #[serde(with = "serde_bytes")]
        payload: &'a [u8],
        /// Present when answers are expected.
        #[serde(borrow)]
        request: Option<RequestMeta<'a>>,
    },
    /// How many ready workers (this one included) subscribe to `chan`, and which?
    NumServ {
        /// Echoed in the reply.
        id: u64,
        /// Exact channel name.
        #[serde(borrow)]
        chan: Cow<'a, str>,
    },
}

/// Primary → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum BusDown<'a> {
    /// A message published by another worker.
    Deliver {
        /// Exact channel name.
        #[serde(borrow)]
        chan: Cow<'a, str>,
        /// Opaque adapter message.
        #[serde(with = "serde_bytes")]
        payload: &'a [u8],
    },
    /// Answer to [`BusUp::NumServ`].
    NumServReply {
        /// Echo of the request id.
        id: u64,
        /// Ready subscribers, the asking worker included.
        #[serde(borrow)]
        members: Vec<Member<'a>>,
    },
    /// A worker is gone; everything it published before dying has already been delivered.
    MemberDown {
        /// The dead worker.
        member: MemberId,
    },
    /// A request could not be delivered to `member` (dead, or its queue was full), or an answer
    /// from `member` to this worker's request was dropped (this worker's own queue was full):
    /// either way, no answer from `member` will arrive.
    Undeliverable {
        /// The adapter request id.
        #[serde(borrow)]
        req_id: Cow<'a, str>,
        /// The target that will never answer.
        member: MemberId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::frame;

    #[test]
    fn publish_round_trips_borrowing_the_payload() {
        let targets = [MemberId(1), MemberId(2)];
        let up = BusUp::Publish {
            chan: "socket.io-request#/#".into(),
            payload: b"\x93abc",
            request: Some(RequestMeta {
                req_id: "AAAAAAAAAAAAAAAA".into(),
                targets: Cow::Borrowed(&targets),
            }),
        };
        let bytes = frame::encode(&up).unwrap();
        let back: BusUp = postcard::from_bytes(&bytes[4..]).unwrap();
        match back {
            BusUp::Publish {
                chan,
                payload,
                request,
            } => {
                assert!(matches!(chan, Cow::Borrowed(_)));
                assert_eq!(chan, "socket.io-request#/#");
                assert_eq!(payload, b"\x93abc");
                assert_eq!(request.unwrap().targets.as_ref(), &targets);
            }
            other => panic!("{other:?}"),
        }
    }
}
