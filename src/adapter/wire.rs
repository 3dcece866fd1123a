//! Reading just enough of `socketioxide-redis` messages to track requests.
//!
//! The adapter encodes requests and responses with msgpack (`rmp_serde::to_vec`, structs as
//! arrays). The IPC driver needs a few leading fields (who asks, request id, request type, who
//! answers, how many acks are coming) to know which workers still owe an answer. It reads them
//! without decoding packets or payloads, so broadcasts pay nothing for it. The unit tests encode
//! real `socketioxide-core` values, so a format change upstream fails here first.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use socketioxide_core::adapter::remote_packet::{Response, ResponseType};
use socketioxide_core::{Sid, Uid};

/// Request type numbers of `socketioxide-core` (`RequestTypeOut::to_u8`).
pub(crate) mod kind {
    /// Broadcast and collect acks.
    pub const BROADCAST_WITH_ACK: u8 = 1;
    /// Collect room names.
    pub const ALL_ROOMS: u8 = 3;
    /// Collect socket data.
    pub const FETCH_SOCKETS: u8 = 6;
}

/// Response type numbers (`ResponseTypeId`).
pub(crate) mod response {
    /// One ack.
    pub const BROADCAST_ACK: u8 = 0;
    /// How many acks a server will send.
    pub const BROADCAST_ACK_COUNT: u8 = 1;
}

/// Leading fields of an encoded request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RequestHeader<'a> {
    /// Uid of the requesting server.
    pub node_id: &'a str,
    /// Request id.
    pub id: &'a str,
    /// Request type (see [`kind`]).
    pub kind: u8,
}

impl RequestHeader<'_> {
    /// Whether the requester waits for answers from the other servers.
    pub fn expects_responses(&self) -> bool {
        matches!(
            self.kind,
            kind::BROADCAST_WITH_ACK | kind::ALL_ROOMS | kind::FETCH_SOCKETS
        )
    }
}

/// Reads the leading fields of a request, or `None` if it is not one.
pub(crate) fn peek_request(data: &[u8]) -> Option<RequestHeader<'_>> {
    let mut rd = data;
    let len = rmp::decode::read_array_len(&mut rd).ok()?;
    if len < 3 {
        return None;
    }
    let (node_id, rest) = rmp::decode::read_str_from_slice(rd).ok()?;
    let (id, mut rest) = rmp::decode::read_str_from_slice(rest).ok()?;
    let kind: u8 = rmp::decode::read_int(&mut rest).ok()?;
    Some(RequestHeader { node_id, id, kind })
}

/// The ack timeout a request carries (the caller's `.timeout(..)` on a broadcast with ack), if
/// any. Only called for requests that wait for acks: it walks the whole request (without
/// copying), not just its head.
pub(crate) fn peek_ack_timeout(data: &[u8]) -> Option<Duration> {
    use serde::de::IgnoredAny;
    /// `socketioxide-core`'s request layout; the timeout is the last field, omitted when unset.
    /// Field names do not matter: structs are encoded as arrays.
    #[derive(serde::Deserialize)]
    struct Raw {
        _node_id: IgnoredAny,
        _id: IgnoredAny,
        _kind: IgnoredAny,
        _packet: IgnoredAny,
        _rooms: IgnoredAny,
        _opts: IgnoredAny,
        #[serde(default)]
        ack_timeout_ms: Option<u64>,
    }
    let raw: Raw = rmp_serde::from_slice(data).ok()?;
    raw.ack_timeout_ms.map(Duration::from_millis)
}

/// Leading fields of an encoded response (`[req_id, {node_id, [type, data]}]`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResponseHeader<'a> {
    /// The request answered.
    pub req_id: &'a str,
    /// Uid of the answering server.
    pub node_id: &'a str,
    /// Response type (see [`response`]).
    pub kind: u8,
    /// For `BroadcastAckCount`, the number of acks announced.
    pub count: Option<u32>,
}

/// Reads the leading fields of a response.
pub(crate) fn peek_response(data: &[u8]) -> Option<ResponseHeader<'_>> {
    let mut rd = data;
    if rmp::decode::read_array_len(&mut rd).ok()? != 2 {
        return None;
    }
    let (req_id, mut rest) = rmp::decode::read_str_from_slice(rd).ok()?;
    if rmp::decode::read_array_len(&mut rest).ok()? != 2 {
        return None;
    }
    let (node_id, mut rest) = rmp::decode::read_str_from_slice(rest).ok()?;
    if rmp::decode::read_array_len(&mut rest).ok()? != 2 {
        return None;
    }
    let kind: u8 = rmp::decode::read_int(&mut rest).ok()?;
    let count = if kind == response::BROADCAST_ACK_COUNT {
        Some(rmp::decode::read_int(&mut rest).ok()?)
    } else {
        None
    };
    Some(ResponseHeader {
        req_id,
        node_id,
        kind,
        count,
    })
}

/// What a worker that died (or never got the request) "answers", so the requester completes
/// with the survivors' answers instead of waiting for its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stand {
    /// No rooms.
    NoRooms,
    /// No sockets.
    NoSockets,
    /// Zero acks to come.
    NoAcks,
    /// One of the acks announced earlier: the socket is gone (`AckError::Socket(Closed)`).
    LostAck,
}

impl Stand {
    /// What a target that never got a request of type `kind` (see [`kind`]) answers.
    pub fn for_absent(kind: u8) -> Stand {
        match kind {
            kind::ALL_ROOMS => Stand::NoRooms,
            kind::FETCH_SOCKETS => Stand::NoSockets,
            _ => Stand::NoAcks,
        }
    }
}

/// Encodes a stand-in response exactly as `socketioxide-redis` encodes real ones.
pub(crate) fn encode_stand_in(req_id: &str, node_uid: &str, what: Stand) -> Option<Vec<u8>> {
    let req = Sid::from_str(req_id).ok()?;
    let node_id = Uid::from_str(node_uid).ok()?;
    let bytes = match what {
        Stand::NoRooms => rmp_serde::to_vec(&(
            req,
            Response::<()> {
                node_id,
                r#type: ResponseType::AllRooms(HashSet::new()),
            },
        )),
        Stand::NoSockets => rmp_serde::to_vec(&(
            req,
            Response::<()> {
                node_id,
                r#type: ResponseType::FetchSockets(Vec::new()),
            },
        )),
        Stand::NoAcks => rmp_serde::to_vec(&(
            req,
            Response::<()> {
                node_id,
                r#type: ResponseType::BroadcastAckCount(0),
            },
        )),
        Stand::LostAck => rmp_serde::to_vec(&(
            req,
            Response::<socketioxide::AckError> {
                node_id,
                r#type: ResponseType::BroadcastAck((
                    // The socket ids of the lost acks are unknown here: a fresh placeholder id.
                    Sid::new(),
                    Err(socketioxide::AckError::Socket(
                        socketioxide_core::adapter::errors::SocketError::Closed,
                    )),
                )),
            },
        )),
    };
    bytes.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::adapter::remote_packet::{RequestOut, RequestTypeOut};
    use socketioxide_core::adapter::{BroadcastOptions, RemoteSocketData};
    use socketioxide_core::{Value, packet::Packet};

    #[test]
    fn reads_real_requests() {
        let uid = Uid::new();
        let opts = BroadcastOptions::new(Sid::new());
        let packet = Packet::event("/", Value::Str("[\"x\",1]".into(), None));
        for (ty, expect_kind, expects) in [
            (RequestTypeOut::Broadcast(&packet), 0, false),
            (RequestTypeOut::BroadcastWithAck(&packet), 1, true),
            (RequestTypeOut::DisconnectSockets, 2, false),
            (RequestTypeOut::AllRooms, 3, true),
            (RequestTypeOut::FetchSockets, 6, true),
        ] {
            let req = RequestOut::new(uid, ty, &opts);
            let id = req.id;
            let bytes = rmp_serde::to_vec(&req).unwrap();
            let h = peek_request(&bytes).expect("header");
            assert_eq!(h.node_id, uid.to_string());
            assert_eq!(h.id, id.as_str());
            assert_eq!(h.kind, expect_kind);
            assert_eq!(h.expects_responses(), expects);
        }
    }

    #[test]
    fn reads_the_ack_timeout_of_real_requests() {
        let uid = Uid::new();
        let opts = BroadcastOptions::new(Sid::new());
        let packet = Packet::event("/", Value::Str("[\"ask\"]".into(), None));
        let req = RequestOut::new(uid, RequestTypeOut::BroadcastWithAck(&packet), &opts)
            .with_ack_timeout(Some(Duration::from_millis(90_000)));
        let bytes = rmp_serde::to_vec(&req).unwrap();
        assert_eq!(
            peek_ack_timeout(&bytes),
            Some(Duration::from_millis(90_000))
        );
        // Without a caller timeout the field is omitted (the remote uses its default).
        let req = RequestOut::new(uid, RequestTypeOut::BroadcastWithAck(&packet), &opts);
        let bytes = rmp_serde::to_vec(&req).unwrap();
        assert_eq!(peek_ack_timeout(&bytes), None);
        assert_eq!(peek_ack_timeout(b"\x92\xa1a\xa1b"), None);
    }

    #[test]
    fn broadcast_flags_survive_the_request_encoding() {
        use socketioxide_core::adapter::BroadcastFlags;
        use socketioxide_core::adapter::remote_packet::RequestIn;
        let mut opts = BroadcastOptions::new(Sid::new());
        opts.add_flag(BroadcastFlags::Volatile);
        opts.add_flag(BroadcastFlags::Broadcast);
        let packet = Packet::event("/", Value::Str("[\"msg\"]".into(), None));
        let req = RequestOut::new(Uid::new(), RequestTypeOut::Broadcast(&packet), &opts);
        let bytes = rmp_serde::to_vec(&req).unwrap();
        let back: RequestIn = rmp_serde::from_slice(&bytes).unwrap();
        let back = back.opts.unwrap();
        assert!(back.has_flag(BroadcastFlags::Volatile));
        assert!(back.has_flag(BroadcastFlags::Broadcast));
        assert!(!back.has_flag(BroadcastFlags::Local));
    }

    #[test]
    fn reads_real_responses() {
        let node = Uid::new();
        let req = Sid::new();
        let count = rmp_serde::to_vec(&(
            req,
            Response::<()> {
                node_id: node,
                r#type: ResponseType::BroadcastAckCount(7),
            },
        ))
        .unwrap();
        let h = peek_response(&count).unwrap();
        assert_eq!(h.req_id, req.as_str());
        assert_eq!(h.node_id, node.to_string());
        assert_eq!(h.kind, response::BROADCAST_ACK_COUNT);
        assert_eq!(h.count, Some(7));

        let ack = rmp_serde::to_vec(&(
            req,
            Response::<socketioxide::AckError> {
                node_id: node,
                r#type: ResponseType::BroadcastAck((
                    Sid::new(),
                    Ok(Value::Str("yes".into(), None)),
                )),
            },
        ))
        .unwrap();
        let h = peek_response(&ack).unwrap();
        assert_eq!(h.kind, response::BROADCAST_ACK);
        assert_eq!(h.count, None);
    }

    #[test]
    fn stand_ins_decode_as_the_adapter_decodes() {
        let req = Sid::new();
        let node = Uid::new();
        let rooms = encode_stand_in(req.as_str(), &node.to_string(), Stand::NoRooms).unwrap();
        let (id, r): (Sid, Response<()>) = rmp_serde::from_slice(&rooms).unwrap();
        assert_eq!(id, req);
        assert_eq!(r.into_rooms().unwrap().len(), 0);

        let socks = encode_stand_in(req.as_str(), &node.to_string(), Stand::NoSockets).unwrap();
        let (_, r): (Sid, Response<RemoteSocketData>) = rmp_serde::from_slice(&socks).unwrap();
        assert_eq!(r.into_fetch_sockets().unwrap().len(), 0);

        let none = encode_stand_in(req.as_str(), &node.to_string(), Stand::NoAcks).unwrap();
        let (_, r): (Sid, Response<socketioxide::AckError>) = rmp_serde::from_slice(&none).unwrap();
        assert!(matches!(r.r#type, ResponseType::BroadcastAckCount(0)));

        let lost = encode_stand_in(req.as_str(), &node.to_string(), Stand::LostAck).unwrap();
        let (_, r): (Sid, Response<socketioxide::AckError>) = rmp_serde::from_slice(&lost).unwrap();
        assert!(matches!(r.r#type, ResponseType::BroadcastAck((_, Err(_)))));
        assert_eq!(peek_response(&lost).unwrap().node_id, node.to_string());
    }
}
