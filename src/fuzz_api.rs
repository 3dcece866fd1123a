//! Entry points for the `cargo fuzz` targets in `fuzz/`, and nothing else.
//!
//! Compiled only with `--cfg fuzzing` (which cargo-fuzz sets for every crate it builds), so it
//! is never part of the normal library. It re-exports the parsers, decoders and tables the targets
//! drive (the door, the IPC frames and messages, the head parser, balancer and session table), which
//! are crate-private,
//! and wraps the crate-private adapter wire peeks in functions returning plain tuples. It has no
//! logic of its own: the targets must exercise the code the cluster runs.

use std::time::Duration;

pub use crate::door::forwarded::{ForwardedError, HEADER as FORWARDED_HEADER, TrustedProxies};
pub use crate::door::proxy_protocol::{
    MAX_HEADER as MAX_PROXY_HEADER, MAX_V1 as MAX_PROXY_V1, ProxyError, ProxyHeader, ProxyParse,
    parse as parse_proxy_header,
};
pub use crate::ipc::bus::{BusDown, BusUp};
pub use crate::ipc::frame::{FrameReader, MAX_FRAME, encode};
pub use crate::ipc::message::{MemberId, ToPrimary, ToWorker};
pub use crate::supervisor::balance::{Balancer, Candidate};
pub use crate::supervisor::peek::{HeadRules, Parsed, parse_head};
pub use crate::supervisor::sid_table::SidTable;

/// `adapter::wire::peek_request`: `(node_id, id, kind, expects_responses)` of an encoded
/// adapter request.
pub fn peek_adapter_request(data: &[u8]) -> Option<(&str, &str, u8, bool)> {
    crate::adapter::wire::peek_request(data)
        .map(|h| (h.node_id, h.id, h.kind, h.expects_responses()))
}

/// `adapter::wire::peek_ack_timeout`: the ack timeout an encoded adapter request carries.
pub fn peek_adapter_ack_timeout(data: &[u8]) -> Option<Duration> {
    crate::adapter::wire::peek_ack_timeout(data)
}

/// `adapter::wire::peek_response`: `(req_id, node_id, kind, count)` of an encoded adapter
/// response.
pub fn peek_adapter_response(data: &[u8]) -> Option<(&str, &str, u8, Option<u32>)> {
    crate::adapter::wire::peek_response(data).map(|h| (h.req_id, h.node_id, h.kind, h.count))
}
