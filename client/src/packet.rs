//! Engine.IO v4 and Socket.IO v5 packet encoding and decoding.
//!
//! These functions are what the [`Client`](crate::Client) uses internally; they are public so
//! tests can build or check raw packets by hand (e.g. together with [`crate::raw`]).
//!
//! # Binary values
//!
//! Socket.IO binary attachments are represented inside JSON as an object with exactly one key,
//! `"$binary"`, whose value is the **standard, padded base64** encoding of the bytes:
//! `{"$binary": "AQID"}` is the three bytes `01 02 03`. Use [`binary`] to build one and
//! [`as_binary`] to read one back.
//!
//! * Received binary events/acks (`5`/`6` packets) are reassembled with their attachments and
//!   every `{"_placeholder": true, "num": N}` is replaced by `{"$binary": "<base64 of attachment N>"}`.
//! * When sending, every `{"$binary": "..."}` found anywhere in the arguments (nested too) is
//!   replaced by a placeholder and sent as a binary attachment, turning the packet into a
//!   BINARY_EVENT / BINARY_ACK.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The Engine.IO v4 record separator used between packets of a polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

/// The key of the JSON object that stands for a binary value, see the [module docs](self).
pub const BINARY_KEY: &str = "$binary";

/// Builds the JSON stand-in for a binary value: `{"$binary": "<base64>"}`.
pub fn binary(data: impl AsRef<[u8]>) -> Value {
    let mut map = Map::with_capacity(1);
    map.insert(BINARY_KEY.to_owned(), Value::String(B64.encode(data)));
    Value::Object(map)
}

/// Reads back a binary stand-in built by [`binary`] (or received from the server).
/// Returns `None` if `v` is not a `{"$binary": "<valid base64>"}` object.
pub fn as_binary(v: &Value) -> Option<Vec<u8>> {
    let s = binary_str(v)?;
    B64.decode(s).ok()
}

fn binary_str(v: &Value) -> Option<&str> {
    match v {
        Value::Object(map) if map.len() == 1 => map.get(BINARY_KEY)?.as_str(),
        _ => None,
    }
}

/// Base64-encodes bytes (standard alphabet, padded), as used for `b` polling packets.
pub fn base64_encode(data: impl AsRef<[u8]>) -> String {
    B64.encode(data)
}

/// Decodes standard padded base64.
pub fn base64_decode(s: &str) -> Result<Vec<u8>> {
    B64.decode(s)
        .map_err(|e| Error::Protocol(format!("invalid base64: {e}")))
}

/// A decoded Engine.IO packet, borrowing from the input text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `0` open, with its JSON handshake data.
    Open(&'a str),
    /// `1` close.
    Close,
    /// `2` ping, with optional data (`"probe"` during an upgrade).
    Ping(&'a str),
    /// `3` pong, with optional data.
    Pong(&'a str),
    /// `4` message; the payload is a Socket.IO packet.
    Message(&'a str),
    /// `5` upgrade.
    Upgrade,
    /// `6` noop.
    Noop,
    /// `b<base64>`: a binary packet inside a polling payload (already decoded).
    Binary(Vec<u8>),
}

/// Parses one Engine.IO text packet (one websocket text frame, or one record of a polling payload).
pub fn parse_engine_packet(s: &str) -> Result<EnginePacket<'_>> {
    let Some(&first) = s.as_bytes().first() else {
        return Err(Error::Protocol("empty engine.io packet".into()));
    };
    let rest = &s[1..];
    Ok(match first {
        b'0' => EnginePacket::Open(rest),
        b'1' => EnginePacket::Close,
        b'2' => EnginePacket::Ping(rest),
        b'3' => EnginePacket::Pong(rest),
        b'4' => EnginePacket::Message(rest),
        b'5' => EnginePacket::Upgrade,
        b'6' => EnginePacket::Noop,
        b'b' => EnginePacket::Binary(base64_decode(rest)?),
        _ => {
            return Err(Error::Protocol(format!(
                "unknown engine.io packet type in {:?}",
                truncate(s)
            )));
        }
    })
}

/// The Engine.IO handshake data carried by the open packet (`0{...}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// The Engine.IO session id.
    pub sid: String,
    /// The transports the session can be upgraded to (e.g. `["websocket"]`).
    #[serde(default)]
    pub upgrades: Vec<String>,
    /// Milliseconds between two server pings.
    pub ping_interval: u64,
    /// Milliseconds the server waits for a pong.
    pub ping_timeout: u64,
    /// Maximum number of bytes per polling payload / websocket message.
    #[serde(default)]
    pub max_payload: u64,
}

/// Parses an open packet (`0{"sid":...}`) into a [`Handshake`].
pub fn parse_open_packet(s: &str) -> Result<Handshake> {
    match parse_engine_packet(s)? {
        EnginePacket::Open(json) => serde_json::from_str(json)
            .map_err(|e| Error::Protocol(format!("bad open packet {:?}: {e}", truncate(s)))),
        _ => Err(Error::Protocol(format!(
            "expected an open packet, got {:?}",
            truncate(s)
        ))),
    }
}

/// Splits a polling payload into its packets (separated by `\x1e`). An empty payload gives no packets.
pub fn decode_payload(payload: &str) -> Vec<String> {
    split_payload(payload).map(str::to_owned).collect()
}

/// Like [`decode_payload`] but borrowing.
pub fn split_payload(payload: &str) -> impl Iterator<Item = &str> {
    payload.split(RECORD_SEPARATOR).filter(|p| !p.is_empty())
}

/// Joins packets into a polling payload (separated by `\x1e`).
pub fn encode_payload<S: AsRef<str>>(packets: &[S]) -> String {
    let len = packets.iter().map(|p| p.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(len);
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(RECORD_SEPARATOR);
        }
        out.push_str(p.as_ref());
    }
    out
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioPacketType {
    /// `0` CONNECT
    Connect,
    /// `1` DISCONNECT
    Disconnect,
    /// `2` EVENT
    Event,
    /// `3` ACK
    Ack,
    /// `4` CONNECT_ERROR
    ConnectError,
    /// `5` BINARY_EVENT
    BinaryEvent,
    /// `6` BINARY_ACK
    BinaryAck,
}

impl SioPacketType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    fn as_char(self) -> char {
        match self {
            Self::Connect => '0',
            Self::Disconnect => '1',
            Self::Event => '2',
            Self::Ack => '3',
            Self::ConnectError => '4',
            Self::BinaryEvent => '5',
            Self::BinaryAck => '6',
        }
    }

    /// True for BINARY_EVENT and BINARY_ACK.
    pub fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

/// A decoded Socket.IO packet (the part after the engine `4` prefix).
#[derive(Debug, Clone, PartialEq)]
pub struct SioPacket {
    /// The packet type.
    pub kind: SioPacketType,
    /// The namespace, always with a leading `/` (`"/"` for the main namespace).
    pub ns: String,
    /// The ack id, if any.
    pub id: Option<u64>,
    /// The number of binary attachments that follow (binary packets only).
    pub attachments: usize,
    /// The JSON payload, if any (still containing placeholders for binary packets).
    pub data: Option<Value>,
}

/// Parses a Socket.IO packet, i.e. the content of an engine `4` message packet
/// (`2["ev",1]`, `0/admin,{"sid":"x"}`, `51-/admin,7["ev",{"_placeholder":true,"num":0}]`, ...).
pub fn parse_sio_packet(s: &str) -> Result<SioPacket> {
    let bytes = s.as_bytes();
    let bad = |what: &str| Error::Protocol(format!("{what} in socket.io packet {:?}", truncate(s)));
    let kind = bytes
        .first()
        .copied()
        .and_then(SioPacketType::from_byte)
        .ok_or_else(|| bad("unknown packet type"))?;
    let mut i = 1;

    let mut attachments = 0;
    if kind.is_binary() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || bytes.get(i) != Some(&b'-') {
            return Err(bad("missing attachment count"));
        }
        attachments = s[start..i]
            .parse()
            .map_err(|_| bad("bad attachment count"))?;
        i += 1;
    }

    let ns = if bytes.get(i) == Some(&b'/') {
        let start = i;
        while i < bytes.len() && bytes[i] != b',' {
            i += 1;
        }
        let ns = s[start..i].to_owned();
        if i < bytes.len() {
            i += 1; // skip ','
        }
        ns
    } else {
        "/".to_owned()
    };

    let start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let id = if i > start {
        Some(s[start..i].parse().map_err(|_| bad("bad ack id"))?)
    } else {
        None
    };

    let rest = &s[i..];
    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str(rest).map_err(|e| bad(&format!("invalid json ({e})")))?)
    };
    Ok(SioPacket {
        kind,
        ns,
        id,
        attachments,
        data,
    })
}

/// Normalizes a namespace name: `""` and `"/"` give `"/"`, `"admin"` gives `"/admin"`.
pub fn normalize_ns(ns: &str) -> String {
    if ns.is_empty() || ns == "/" {
        "/".to_owned()
    } else if ns.starts_with('/') {
        ns.to_owned()
    } else {
        format!("/{ns}")
    }
}

fn push_ns(out: &mut String, ns: &str) {
    if ns.is_empty() || ns == "/" {
        return;
    }
    if !ns.starts_with('/') {
        out.push('/');
    }
    out.push_str(ns);
    out.push(',');
}

/// A packet ready to be written to the transport: an engine text packet, or a binary attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutPacket {
    /// A complete Engine.IO text packet such as `42["ev"]` or `3`.
    Text(String),
    /// A binary attachment (a websocket binary frame, or a `b<base64>` polling packet).
    Binary(Bytes),
}

/// Encodes a CONNECT as a complete engine packet: `40`, `40/admin,`, `40{"token":1}`, `40/admin,{"token":1}`.
pub fn encode_connect(ns: &str, auth: Option<&Value>) -> String {
    let mut out = String::with_capacity(16 + ns.len());
    out.push_str("40");
    push_ns(&mut out, ns);
    if let Some(auth) = auth {
        out.push_str(&auth.to_string());
    }
    out
}

/// Encodes a DISCONNECT as a complete engine packet: `41`, `41/admin,`.
pub fn encode_disconnect(ns: &str) -> String {
    let mut out = String::with_capacity(4 + ns.len());
    out.push_str("41");
    push_ns(&mut out, ns);
    out
}

/// Encodes an EVENT (or a BINARY_EVENT when `args` contain `{"$binary": ...}` values) as a
/// complete engine packet plus its binary attachments, in sending order.
pub fn encode_event(
    ns: &str,
    event: &str,
    mut args: Vec<Value>,
    ack_id: Option<u64>,
) -> Result<(String, Vec<Bytes>)> {
    let attachments = extract_binary(&mut args)?;
    let kind = if attachments.is_empty() {
        SioPacketType::Event
    } else {
        SioPacketType::BinaryEvent
    };
    let mut out = header(kind, ns, ack_id, attachments.len(), 32 + event.len());
    let mut buf = std::mem::take(&mut out).into_bytes();
    buf.push(b'[');
    serde_json::to_writer(&mut buf, event)?;
    for a in &args {
        buf.push(b',');
        serde_json::to_writer(&mut buf, a)?;
    }
    buf.push(b']');
    // serde_json only writes valid UTF-8.
    let out = String::from_utf8(buf).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok((out, attachments))
}

/// Encodes an ACK (or BINARY_ACK) answering ack id `id` as a complete engine packet plus its attachments.
pub fn encode_ack(ns: &str, id: u64, mut args: Vec<Value>) -> Result<(String, Vec<Bytes>)> {
    let attachments = extract_binary(&mut args)?;
    let kind = if attachments.is_empty() {
        SioPacketType::Ack
    } else {
        SioPacketType::BinaryAck
    };
    let out = header(kind, ns, Some(id), attachments.len(), 32);
    let mut buf = out.into_bytes();
    serde_json::to_writer(&mut buf, &args)?;
    let out = String::from_utf8(buf).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok((out, attachments))
}

fn header(
    kind: SioPacketType,
    ns: &str,
    id: Option<u64>,
    attachments: usize,
    extra: usize,
) -> String {
    let mut out = String::with_capacity(8 + ns.len() + extra);
    out.push('4');
    out.push(kind.as_char());
    if kind.is_binary() {
        out.push_str(&attachments.to_string());
        out.push('-');
    }
    push_ns(&mut out, ns);
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
    out
}

/// Replaces every `{"$binary": "<base64>"}` inside `args` (recursively) by a Socket.IO
/// placeholder `{"_placeholder": true, "num": N}` and returns the decoded attachments in order.
pub fn extract_binary(args: &mut [Value]) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    for a in args.iter_mut() {
        extract_rec(a, &mut out)?;
    }
    Ok(out)
}

fn extract_rec(v: &mut Value, out: &mut Vec<Bytes>) -> Result<()> {
    match v {
        Value::Array(items) => {
            for i in items {
                extract_rec(i, out)?;
            }
        }
        Value::Object(map) => {
            if map.len() == 1 && map.contains_key(BINARY_KEY) {
                let Some(s) = map.get(BINARY_KEY).and_then(Value::as_str) else {
                    return Err(Error::InvalidArgument(
                        "the value of \"$binary\" must be a base64 string".into(),
                    ));
                };
                let data = B64.decode(s).map_err(|e| {
                    Error::InvalidArgument(format!("invalid base64 in \"$binary\": {e}"))
                })?;
                *v = placeholder(out.len());
                out.push(Bytes::from(data));
            } else {
                for (_, i) in map.iter_mut() {
                    extract_rec(i, out)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn placeholder(num: usize) -> Value {
    let mut map = Map::with_capacity(2);
    map.insert("_placeholder".to_owned(), Value::Bool(true));
    map.insert("num".to_owned(), Value::from(num));
    Value::Object(map)
}

/// Replaces every Socket.IO placeholder `{"_placeholder": true, "num": N}` inside `v`
/// (recursively) by `{"$binary": "<base64 of attachments[N]>"}`.
/// Fails if a placeholder refers to a missing attachment.
pub fn reconstruct_binary(v: &mut Value, attachments: &[Bytes]) -> Result<()> {
    match v {
        Value::Array(items) => {
            for i in items {
                reconstruct_binary(i, attachments)?;
            }
        }
        Value::Object(map) => {
            if map.get("_placeholder").and_then(Value::as_bool) == Some(true) {
                let num = map.get("num").and_then(Value::as_u64).ok_or_else(|| {
                    Error::Protocol("binary placeholder without a valid \"num\"".into())
                })?;
                let data = attachments.get(num as usize).ok_or_else(|| {
                    Error::Protocol(format!(
                        "binary placeholder {num} but only {} attachment(s)",
                        attachments.len()
                    ))
                })?;
                *v = binary(data);
            } else {
                for (_, i) in map.iter_mut() {
                    reconstruct_binary(i, attachments)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Splits an EVENT payload `["name", args...]` into its name and arguments.
pub fn split_event(data: Value) -> Result<(String, Vec<Value>)> {
    match data {
        Value::Array(mut items) if matches!(items.first(), Some(Value::String(_))) => {
            let Value::String(name) = items.remove(0) else {
                unreachable!()
            };
            Ok((name, items))
        }
        other => Err(Error::Protocol(format!(
            "event payload is not [\"name\", ...]: {}",
            truncate(&other.to_string())
        ))),
    }
}

pub(crate) fn truncate(s: &str) -> &str {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engine_packets() {
        assert_eq!(parse_engine_packet("2").unwrap(), EnginePacket::Ping(""));
        assert_eq!(
            parse_engine_packet("2probe").unwrap(),
            EnginePacket::Ping("probe")
        );
        assert_eq!(
            parse_engine_packet("3probe").unwrap(),
            EnginePacket::Pong("probe")
        );
        assert_eq!(parse_engine_packet("1").unwrap(), EnginePacket::Close);
        assert_eq!(parse_engine_packet("5").unwrap(), EnginePacket::Upgrade);
        assert_eq!(parse_engine_packet("6").unwrap(), EnginePacket::Noop);
        assert_eq!(
            parse_engine_packet("42[\"a\"]").unwrap(),
            EnginePacket::Message("2[\"a\"]")
        );
        assert_eq!(
            parse_engine_packet("bAQID").unwrap(),
            EnginePacket::Binary(vec![1, 2, 3])
        );
        assert!(parse_engine_packet("").is_err());
        assert!(parse_engine_packet("9").is_err());
        assert!(parse_engine_packet("b!!").is_err());
    }

    #[test]
    fn open_packet() {
        let h = parse_open_packet(
            r#"0{"sid":"abcdefghijklmnop","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        )
        .unwrap();
        assert_eq!(h.sid, "abcdefghijklmnop");
        assert_eq!(h.upgrades, vec!["websocket"]);
        assert_eq!(h.ping_interval, 25000);
        assert_eq!(h.ping_timeout, 20000);
        assert_eq!(h.max_payload, 1_000_000);
        assert!(parse_open_packet("40").is_err());
        assert!(parse_open_packet("0{}").is_err());
    }

    #[test]
    fn payloads() {
        assert_eq!(decode_payload(""), Vec::<String>::new());
        assert_eq!(decode_payload("2"), vec!["2"]);
        assert_eq!(
            decode_payload("42[\"a\"]\x1e2\x1e6"),
            vec!["42[\"a\"]", "2", "6"]
        );
        let pk = vec!["40".to_string(), "42[\"x\",1]".to_string()];
        assert_eq!(encode_payload(&pk), "40\x1e42[\"x\",1]");
        assert_eq!(decode_payload(&encode_payload(&pk)), pk);
        assert_eq!(encode_payload::<&str>(&[]), "");
        assert_eq!(encode_payload(&["3"]), "3");
    }

    #[test]
    fn sio_parse() {
        let p = parse_sio_packet(r#"0{"sid":"abc"}"#).unwrap();
        assert_eq!(p.kind, SioPacketType::Connect);
        assert_eq!(p.ns, "/");
        assert_eq!(p.data, Some(json!({"sid": "abc"})));

        let p = parse_sio_packet(r#"0/custom,{"sid":"abc"}"#).unwrap();
        assert_eq!(p.ns, "/custom");
        assert_eq!(p.id, None);

        let p = parse_sio_packet("1/custom,").unwrap();
        assert_eq!(p.kind, SioPacketType::Disconnect);
        assert_eq!(p.ns, "/custom");
        assert_eq!(p.data, None);

        let p = parse_sio_packet("1").unwrap();
        assert_eq!((p.kind, p.ns.as_str()), (SioPacketType::Disconnect, "/"));

        let p = parse_sio_packet(r#"212["ev",1,"a"]"#).unwrap();
        assert_eq!(p.kind, SioPacketType::Event);
        assert_eq!(p.id, Some(12));
        assert_eq!(p.data, Some(json!(["ev", 1, "a"])));

        let p = parse_sio_packet(r#"2/custom,7["ev"]"#).unwrap();
        assert_eq!((p.ns.as_str(), p.id), ("/custom", Some(7)));

        let p = parse_sio_packet(r#"312["yes"]"#).unwrap();
        assert_eq!(p.kind, SioPacketType::Ack);
        assert_eq!(p.id, Some(12));

        let p = parse_sio_packet(r#"4{"message":"nope"}"#).unwrap();
        assert_eq!(p.kind, SioPacketType::ConnectError);
        assert_eq!(p.data, Some(json!({"message": "nope"})));

        let p = parse_sio_packet(
            r#"52-/custom,9["ev",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
        )
        .unwrap();
        assert_eq!(p.kind, SioPacketType::BinaryEvent);
        assert_eq!(p.attachments, 2);
        assert_eq!((p.ns.as_str(), p.id), ("/custom", Some(9)));

        let p = parse_sio_packet(r#"61-3[{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(p.kind, SioPacketType::BinaryAck);
        assert_eq!((p.attachments, p.id), (1, Some(3)));

        assert!(parse_sio_packet("").is_err());
        assert!(parse_sio_packet("9").is_err());
        assert!(parse_sio_packet("5[\"x\"]").is_err());
        assert!(parse_sio_packet("2[\"x\"").is_err());
    }

    #[test]
    fn sio_encode() {
        assert_eq!(encode_connect("/", None), "40");
        assert_eq!(
            encode_connect("", Some(&json!({"token": 1}))),
            r#"40{"token":1}"#
        );
        assert_eq!(encode_connect("/custom", None), "40/custom,");
        assert_eq!(
            encode_connect("custom", Some(&json!({"token": 1}))),
            r#"40/custom,{"token":1}"#
        );
        assert_eq!(encode_disconnect("/"), "41");
        assert_eq!(encode_disconnect("/custom"), "41/custom,");

        let (s, b) = encode_event("/", "ev", vec![json!(1), json!("a")], None).unwrap();
        assert_eq!(s, r#"42["ev",1,"a"]"#);
        assert!(b.is_empty());
        let (s, _) = encode_event("/", "ev", vec![], Some(12)).unwrap();
        assert_eq!(s, r#"4212["ev"]"#);
        let (s, _) = encode_event("/custom", "e\"v", vec![json!({"a":[1]})], Some(3)).unwrap();
        assert_eq!(s, r#"42/custom,3["e\"v",{"a":[1]}]"#);

        let (s, _) = encode_ack("/", 12, vec![json!("yes")]).unwrap();
        assert_eq!(s, r#"4312["yes"]"#);
        let (s, _) = encode_ack("/custom", 1, vec![]).unwrap();
        assert_eq!(s, r#"43/custom,1[]"#);
    }

    #[test]
    fn binary_encode() {
        let args = vec![
            json!("x"),
            binary([1u8, 2, 3]),
            json!({"n": [binary([4u8])]}),
        ];
        let (s, b) = encode_event("/custom", "bin", args, Some(5)).unwrap();
        assert_eq!(
            s,
            r#"452-/custom,5["bin","x",{"_placeholder":true,"num":0},{"n":[{"_placeholder":true,"num":1}]}]"#
        );
        assert_eq!(
            b,
            vec![Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[4])]
        );

        let (s, b) = encode_ack("/", 2, vec![binary(b"hi")]).unwrap();
        assert_eq!(s, r#"461-2[{"_placeholder":true,"num":0}]"#);
        assert_eq!(b, vec![Bytes::from_static(b"hi")]);

        assert!(encode_event("/", "x", vec![json!({"$binary": 1})], None).is_err());
        assert!(encode_event("/", "x", vec![json!({"$binary": "!!"})], None).is_err());
        // an object with other keys is not a binary stand-in
        let (s, b) =
            encode_event("/", "x", vec![json!({"$binary": "AA==", "k": 1})], None).unwrap();
        assert!(s.starts_with("42["));
        assert!(b.is_empty());
    }

    #[test]
    fn binary_reconstruct() {
        let p = parse_sio_packet(
            r#"52-["ev","x",{"_placeholder":true,"num":1},[{"_placeholder":true,"num":0}]]"#,
        )
        .unwrap();
        let mut data = p.data.unwrap();
        let atts = [Bytes::from_static(&[9]), Bytes::from_static(&[1, 2, 3])];
        reconstruct_binary(&mut data, &atts).unwrap();
        assert_eq!(
            data,
            json!(["ev", "x", {"$binary": "AQID"}, [{"$binary": "CQ=="}]])
        );
        let (name, args) = split_event(data).unwrap();
        assert_eq!(name, "ev");
        assert_eq!(as_binary(&args[1]), Some(vec![1, 2, 3]));
        assert_eq!(as_binary(&args[2][0]), Some(vec![9]));
        assert_eq!(as_binary(&args[0]), None);

        let mut bad = json!([{"_placeholder": true, "num": 2}]);
        assert!(reconstruct_binary(&mut bad, &atts).is_err());
    }

    #[test]
    fn binary_round_trip() {
        let original = vec![binary(b"\x00\xffabc"), json!([binary(b"")])];
        let (text, atts) = encode_event("/", "e", original.clone(), None).unwrap();
        let p = parse_sio_packet(&text[1..]).unwrap();
        assert_eq!(p.attachments, atts.len());
        let mut data = p.data.unwrap();
        reconstruct_binary(&mut data, &atts).unwrap();
        let (_, args) = split_event(data).unwrap();
        assert_eq!(args, original);
    }

    #[test]
    fn event_split() {
        assert_eq!(
            split_event(json!(["a", 1, 2])).unwrap(),
            ("a".to_string(), vec![json!(1), json!(2)])
        );
        assert!(split_event(json!([1])).is_err());
        assert!(split_event(json!({})).is_err());
        assert!(split_event(json!([])).is_err());
    }

    #[test]
    fn ns_normalize() {
        assert_eq!(normalize_ns(""), "/");
        assert_eq!(normalize_ns("/"), "/");
        assert_eq!(normalize_ns("a"), "/a");
        assert_eq!(normalize_ns("/a"), "/a");
    }
}
