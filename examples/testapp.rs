//! The test app: one small Socket.IO app, run as a whole cluster by `sio-cluster`, that the
//! tests, benchmarks and acceptance checks all drive.
//!
//! It serves exactly the events of `test-app-protocol.md` (echoes, acks, rooms, broadcasts,
//! cluster-wide queries and remote-socket operations) on namespaces `/` and `/custom`, and behaves
//! the same on any number of workers, over the IPC bus or Redis.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/testapp --listen 127.0.0.1:3000 --workers 4
//! target/release/examples/testapp --adapter redis --redis-url redis://127.0.0.1:6379
//! ```
//!
//! Flags are the cluster's common ones (`--help`); the primary prints `listening on ADDR` once
//! every worker is ready. Cross-worker operations all go through the cluster adapter.

use std::convert::Infallible;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use sio_cluster::{ClusterAdapter, ClusterHandle, Config, Worker, WorkerInfo};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::RemoteSocket;

type A = ClusterAdapter;

/// Namespaces served (same behaviour on both).
const NAMESPACES: [&str; 2] = ["/", "/custom"];

/// `ack_all` timeout when the client gives none.
const DEFAULT_ACK_ALL_MS: u64 = 5000;

/// What the handlers need from the worker (set once per worker process).
struct Ctx {
    io: SocketIo<A>,
    info: WorkerInfo,
    cluster: ClusterHandle,
}

static CTX: OnceLock<Ctx> = OnceLock::new();

fn ctx() -> &'static Ctx {
    CTX.get()
        .expect("worker context is set before namespaces are registered")
}

fn main() -> anyhow::Result<()> {
    let config = <Config as clap::Parser>::parse();
    sio_cluster::run(config, |w: Worker| async move {
        let Worker { io, info, cluster } = w;
        let _ = CTX.set(Ctx {
            io: io.clone(),
            info,
            cluster,
        });
        for ns in NAMESPACES {
            io.ns(ns, on_connect.with(register_handlers)).await?;
        }
        Ok(axum::Router::new())
    })?;
    Ok(())
}

/// Connect middleware: registers every event handler before the CONNECT reply is sent, so a
/// client's first event (sent right after `40`) always finds its handler.
async fn register_handlers(s: SocketRef<A>) -> Result<(), Infallible> {
    s.on("message", on_message);
    s.on("message-with-ack", on_message_with_ack);
    s.on("emit-with-ack", on_emit_with_ack);
    s.on("whoami", on_whoami);
    s.on("join", on_join);
    s.on("leave", on_leave);
    s.on("echo", on_echo);
    s.on("ping_ack", on_ping_ack);
    s.on("to_all", on_to_all);
    s.on("to_others", on_to_others);
    s.on("to_room", on_to_room);
    s.on("to_room_except", on_to_room_except);
    s.on("count_sockets", on_count_sockets);
    s.on("rooms", on_rooms);
    s.on("server_count", on_server_count);
    s.on("ack_all", on_ack_all);
    s.on("remote_join", on_remote_join);
    s.on("remote_leave", on_remote_leave);
    s.on("remote_emit", on_remote_emit);
    s.on("kick", on_kick);
    s.on("kick_room", on_kick_room);
    s.on("room_to_room", on_room_to_room);
    Ok(())
}

/// Connect handler (runs once the socket is connected): emits `auth` with the handshake's auth
/// object (`{}` when the client sent none).
async fn on_connect(s: SocketRef<A>, TryData(auth): TryData<Value>) {
    let auth = auth.unwrap_or_else(|e| {
        tracing::warn!(sid = %s.id, "unreadable auth payload: {e}");
        Value::Map(Vec::new())
    });
    if let Err(e) = s.emit("auth", &auth) {
        tracing::warn!(sid = %s.id, "emit auth: {e}");
    }
}

// ==== events ====

async fn on_message(s: SocketRef<A>, Data(args): Data<Args>) {
    if let Err(e) = s.emit("message-back", &args) {
        tracing::warn!(sid = %s.id, "emit message-back: {e}");
    }
}

async fn on_message_with_ack(Data(args): Data<Args>, ack: AckSender<A>) {
    send_ack(ack, &args);
}

async fn on_emit_with_ack(s: SocketRef<A>, Data(args): Data<Args>) {
    let stream = match s.emit_with_ack::<_, Args>("emit-with-ack", &args) {
        Ok(stream) => stream,
        Err(e) => return tracing::warn!(sid = %s.id, "emit-with-ack: {e}"),
    };
    match stream.await {
        Ok(reply) => {
            if let Err(e) = s.emit("emit-with-ack", &reply) {
                tracing::warn!(sid = %s.id, "emit emit-with-ack reply: {e}");
            }
        }
        Err(e) => tracing::warn!(sid = %s.id, "emit-with-ack: no reply from the client: {e}"),
    }
}

async fn on_whoami(s: SocketRef<A>, ack: AckSender<A>) {
    let info = &ctx().info;
    send_ack(
        ack,
        &serde_json::json!({
            "worker": info.index.to_string(),
            "pid": info.pid,
            "sid": s.id.to_string(),
        }),
    );
}

async fn on_join(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    match args.room(0) {
        Ok(room) => {
            s.join(room);
            send_ack(ack, "ok");
        }
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_leave(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    match args.room(0) {
        Ok(room) => {
            s.leave(room);
            send_ack(ack, "ok");
        }
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_echo(s: SocketRef<A>, Data(args): Data<Args>) {
    if let Err(e) = s.emit("msg", &args.get(0)) {
        tracing::warn!(sid = %s.id, "emit msg: {e}");
    }
}

async fn on_ping_ack(Data(args): Data<Args>, ack: AckSender<A>) {
    send_ack(ack, &args.get(0));
}

async fn on_to_all(s: SocketRef<A>, Data(args): Data<Args>) {
    if let Err(e) = ns_op(&s).emit("msg", &args.get(0)).await {
        tracing::warn!(sid = %s.id, "to_all: {e}");
    }
}

async fn on_to_others(s: SocketRef<A>, Data(args): Data<Args>) {
    if let Err(e) = s.broadcast().emit("msg", &args.get(0)).await {
        tracing::warn!(sid = %s.id, "to_others: {e}");
    }
}

async fn on_to_room(s: SocketRef<A>, Data(args): Data<Args>) {
    let room = match args.room(0) {
        Ok(room) => room,
        Err(e) => return tracing::warn!(sid = %s.id, "to_room: {e}"),
    };
    // Through the namespace, not the socket: the sender gets it too when it is in the room.
    if let Err(e) = ns_op(&s).to(room).emit("msg", &args.get(1)).await {
        tracing::warn!(sid = %s.id, "to_room: {e}");
    }
}

async fn on_to_room_except(s: SocketRef<A>, Data(args): Data<Args>) {
    let (room, except) = match (args.room(0), args.room(1)) {
        (Ok(room), Ok(except)) => (room, except),
        (Err(e), _) | (_, Err(e)) => return tracing::warn!(sid = %s.id, "to_room_except: {e}"),
    };
    let op = ns_op(&s).to(room).except(except);
    if let Err(e) = op.emit("msg", &args.get(2)).await {
        tracing::warn!(sid = %s.id, "to_room_except: {e}");
    }
}

async fn on_count_sockets(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    let op = match args.get(0) {
        Value::Null => ns_op(&s),
        _ => match args.room(0) {
            Ok(room) => ns_op(&s).to(room),
            Err(e) => return send_ack(ack, &e),
        },
    };
    match op.fetch_sockets().await {
        Ok(sockets) => send_ack(ack, &sockets.len()),
        Err(e) => send_error(ack, "count_sockets", e),
    }
}

async fn on_rooms(s: SocketRef<A>, ack: AckSender<A>) {
    match ns_op(&s).rooms().await {
        Ok(rooms) => {
            let mut rooms: Vec<String> = rooms.into_iter().map(|r| r.into_owned()).collect();
            rooms.sort();
            rooms.dedup();
            send_ack(ack, &rooms);
        }
        Err(e) => send_error(ack, "rooms", e),
    }
}

async fn on_server_count(s: SocketRef<A>, ack: AckSender<A>) {
    match ctx().cluster.server_count(s.ns()).await {
        Ok(n) => send_ack(ack, &n),
        Err(e) => send_error(ack, "server_count", e),
    }
}

/// Emits `ask` to every other socket of the namespace, on every worker, and acks how many
/// answered and how many did not within the timeout.
async fn on_ack_all(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    let timeout = Duration::from_millis(args.get(0).as_u64().unwrap_or(DEFAULT_ACK_ALL_MS));
    // Who should answer: every other socket, as the adapter sees them now. The stream may not
    // report a remote socket that timed out (its worker's report can arrive after the stream's
    // own deadline), so missing answers are counted against this number.
    let expected = match ns_op(&s).fetch_sockets().await {
        Ok(all) => all.iter().filter(|r| r.data().id != s.id).count(),
        Err(e) => return send_error(ack, "ack_all", e),
    };
    let stream = s
        .broadcast()
        .timeout(timeout)
        .emit_with_ack::<_, Args>("ask", &Args::default())
        .await;
    let mut stream = match stream {
        Ok(stream) => std::pin::pin!(stream),
        Err(e) => return send_error(ack, "ack_all", e),
    };
    let (mut acks, mut failed) = (0usize, 0usize);
    // The stream ends once everyone answered or the timeout passed; the margin only guards
    // against a stream that never ends.
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some((_, Ok(_)))) => acks += 1,
            // A reply that did not decode is still a reply.
            Ok(Some((_, Err(socketioxide::AckError::Decode(_))))) => acks += 1,
            Ok(Some((_, Err(_)))) => failed += 1,
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(sid = %s.id, "ack_all: ack stream still open after the timeout");
                break;
            }
        }
    }
    let timeouts = failed.max(expected.saturating_sub(acks));
    tracing::debug!(sid = %s.id, expected, acks, failed, timeouts, "ack_all");
    send_ack(
        ack,
        &serde_json::json!({ "acks": acks, "timeouts": timeouts }),
    );
}

async fn on_remote_join(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    let room = match args.room(1) {
        Ok(room) => room,
        Err(e) => return send_ack(ack, &e),
    };
    match find_socket(&s, &args).await {
        Ok(Some(remote)) => match remote.join(room).await {
            Ok(()) => send_ack(ack, "ok"),
            Err(e) => send_error(ack, "remote_join", e),
        },
        Ok(None) => send_ack(ack, "not found"),
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_remote_leave(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    let room = match args.room(1) {
        Ok(room) => room,
        Err(e) => return send_ack(ack, &e),
    };
    match find_socket(&s, &args).await {
        Ok(Some(remote)) => match remote.leave(room).await {
            Ok(()) => send_ack(ack, "ok"),
            Err(e) => send_error(ack, "remote_leave", e),
        },
        Ok(None) => send_ack(ack, "not found"),
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_remote_emit(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    match find_socket(&s, &args).await {
        Ok(Some(remote)) => match remote.emit("msg", &args.get(1)).await {
            Ok(()) => send_ack(ack, "ok"),
            Err(e) => send_error(ack, "remote_emit", e),
        },
        Ok(None) => send_ack(ack, "not found"),
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_kick(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    match find_socket(&s, &args).await {
        Ok(Some(remote)) => match remote.disconnect().await {
            Ok(()) => send_ack(ack, "ok"),
            Err(e) => send_error(ack, "kick", e),
        },
        Ok(None) => send_ack(ack, "not found"),
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_kick_room(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    let room = match args.room(0) {
        Ok(room) => room,
        Err(e) => return send_ack(ack, &e),
    };
    match ns_op(&s).to(room).disconnect().await {
        Ok(()) => send_ack(ack, "ok"),
        Err(e) => send_error(ack, "kick_room", e),
    }
}

async fn on_room_to_room(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    let (src, dst) = match (args.room(0), args.room(1)) {
        (Ok(src), Ok(dst)) => (src, dst),
        (Err(e), _) | (_, Err(e)) => return send_ack(ack, &e),
    };
    match ns_op(&s).to(src).join(dst).await {
        Ok(()) => send_ack(ack, "ok"),
        Err(e) => send_error(ack, "room_to_room", e),
    }
}

// ==== helpers ====

/// Every socket of the sender's namespace, on every worker.
fn ns_op(s: &SocketRef<A>) -> BroadcastOperators<A> {
    ctx()
        .io
        .of(s.ns())
        .expect("the socket's namespace is registered")
}

/// The socket whose id is the first argument, wherever it is in the cluster.
async fn find_socket(s: &SocketRef<A>, args: &Args) -> Result<Option<RemoteSocket<A>>, String> {
    let Value::Str(sid) = args.get(0) else {
        return Err("error: expected a socket id".into());
    };
    let sockets = ns_op(s).fetch_sockets().await.map_err(|e| {
        tracing::warn!("fetch_sockets: {e}");
        format!("error: {e}")
    })?;
    Ok(sockets.into_iter().find(|r| r.data().id.to_string() == sid))
}

fn send_ack<T: Serialize + ?Sized>(ack: AckSender<A>, data: &T) {
    if let Err(e) = ack.send(data) {
        tracing::debug!("ack not sent: {e}");
    }
}

fn send_error(ack: AckSender<A>, what: &str, e: impl fmt::Display) {
    tracing::warn!("{what}: {e}");
    send_ack(ack, &format!("error: {e}"));
}

// ==== payloads ====

/// All the arguments of an event or ack, any count, binary attachments kept.
///
/// It deserializes as a tuple, so the parser hands it every argument (not only the first), and
/// serializes as a tuple, so emitting it spreads the arguments again.
#[derive(Debug, Clone, Default, PartialEq)]
struct Args(Vec<Value>);

impl Args {
    /// Argument `i`, `null` when missing.
    fn get(&self, i: usize) -> Value {
        self.0.get(i).cloned().unwrap_or(Value::Null)
    }

    /// Argument `i` as a room name (a string; numbers are accepted as their text).
    fn room(&self, i: usize) -> Result<String, String> {
        match self.0.get(i) {
            Some(Value::Str(s)) => Ok(s.clone()),
            Some(Value::I64(n)) => Ok(n.to_string()),
            Some(Value::U64(n)) => Ok(n.to_string()),
            _ => Err(format!("error: argument {} must be a room name", i + 1)),
        }
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(self.0.len())?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgsVisitor;
        impl<'de> Visitor<'de> for ArgsVisitor {
            type Value = Args;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of arguments")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Args, S::Error> {
                let mut args = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    args.push(v);
                }
                Ok(Args(args))
            }
        }
        deserializer.deserialize_tuple(usize::MAX, ArgsVisitor)
    }
}

/// Any JSON value, plus binary (Socket.IO attachments), with map keys kept in order.
///
/// `serde_json::Value` would turn binary into arrays of numbers; this keeps it as bytes, which
/// the parser sends back as attachments.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(String, Value)>),
}

impl Value {
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(n) => Some(n),
            Value::I64(n) => Some(n.max(0) as u64),
            Value::F64(f) if f.is_finite() => Some(f.max(0.0) as u64),
            _ => None,
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::I64(n) => serializer.serialize_i64(*n),
            Value::U64(n) => serializer.serialize_u64(*n),
            Value::F64(f) => serializer.serialize_f64(*f),
            Value::Str(s) => serializer.serialize_str(s),
            Value::Bin(b) => serializer.serialize_bytes(b),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value or binary")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::F64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bin(v.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bin(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Value, S::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Value, M::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}
