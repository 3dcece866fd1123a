//! A chat room served by a whole `sio-cluster`: the example to run first.
//!
//! ```text
//! cargo run --release --example chat
//! # then open http://127.0.0.1:3000 in a few browser tabs
//! cargo run --release --example chat -- --listen 0.0.0.0:8080 --workers 4
//! ```
//!
//! The primary listens (default `127.0.0.1:3000`, one worker per core) and hands each browser to
//! a worker. The page at `/` (`examples/chat/index.html`, inline CSS and JS, nothing loaded from
//! the internet) speaks Socket.IO over a WebSocket with a tiny built-in client. Pick a name, chat:
//! messages reach everyone whichever worker holds them (broadcasts go through the cluster
//! adapter), the side panel lists who is online across the cluster, and every message shows the
//! worker that relayed it. Flags are the cluster's common ones (`--help`).
//!
//! Events: server → client `welcome {worker, workers, pid, sid}`, `presence {online, users}`,
//! `chat {name, text, worker, ts}`, `system text`; client → server `hello name` (ack
//! `{ok, name}` or `{error}`), `chat text`.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::Html;
use axum::routing::get;
use serde_json::json;
use sio_cluster::{ClusterAdapter, Config, Worker, WorkerInfo};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;
use socketioxide::{BroadcastError, SocketIo};

type A = ClusterAdapter;

const INDEX_HTML: &str = include_str!("chat/index.html");
const MAX_NAME_CHARS: usize = 24;
const MAX_TEXT_CHARS: usize = 2000;
/// Each named socket sits in the room `user:<sid>:<name>`: the rooms of the whole cluster are the
/// list of who is online.
const USER_ROOM_PREFIX: &str = "user:";

struct Ctx {
    io: SocketIo<A>,
    info: WorkerInfo,
}

static CTX: OnceLock<Ctx> = OnceLock::new();

fn ctx() -> &'static Ctx {
    CTX.get()
        .expect("worker context is set before namespaces are registered")
}

/// The name a socket chose (socket extensions).
#[derive(Clone)]
struct Name(String);

fn main() -> anyhow::Result<()> {
    let config = <Config as clap::Parser>::parse();
    sio_cluster::run(config, |w: Worker| async move {
        let Worker { io, info, .. } = w;
        let _ = CTX.set(Ctx {
            io: io.clone(),
            info,
        });
        io.ns("/", on_connect.with(register_handlers)).await?;
        Ok(axum::Router::new().route("/", get(async || Html(INDEX_HTML))))
    })?;
    Ok(())
}

/// Connect middleware: handlers are registered before the client learns it is connected, so
/// its first `hello` is never missed.
async fn register_handlers(s: SocketRef<A>) -> Result<(), Infallible> {
    s.on("hello", on_hello);
    s.on("chat", on_chat);
    s.on_disconnect(on_disconnect);
    Ok(())
}

async fn on_connect(s: SocketRef<A>) {
    let info = &ctx().info;
    let welcome = json!({
        "worker": info.index,
        "workers": info.workers,
        "pid": info.pid,
        "sid": s.id.to_string(),
    });
    if let Err(e) = s.emit("welcome", &welcome) {
        tracing::debug!(sid = %s.id, "welcome not sent: {e}");
    }
    broadcast_presence(None).await;
}

async fn on_hello(s: SocketRef<A>, Data(name): Data<String>, ack: AckSender<A>) {
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_NAME_CHARS)
        .collect();
    if name.is_empty() {
        let _ = ack.send(&json!({ "error": "pick a name" }));
        return;
    }
    let previous = s.extensions.insert(Name(name.clone()));
    if let Some(Name(old)) = &previous {
        s.leave(user_room(s.id, old));
    }
    s.join(user_room(s.id, &name));
    let _ = ack.send(&json!({ "ok": true, "name": name }));
    let note = match previous {
        Some(Name(old)) if old == name => None,
        Some(Name(old)) => Some(format!("{old} is now {name}")),
        None => Some(format!("{name} joined")),
    };
    if let Some(note) = note {
        system(&note, None).await;
    }
    broadcast_presence(None).await;
}

async fn on_chat(s: SocketRef<A>, Data(text): Data<String>) {
    let Some(Name(name)) = s.extensions.get::<Name>() else {
        return;
    };
    let text: String = text.trim().chars().take(MAX_TEXT_CHARS).collect();
    if text.is_empty() {
        return;
    }
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let msg = json!({ "name": name, "text": text, "worker": ctx().info.index, "ts": ts });
    // To every socket of every worker, the sender included.
    if let Err(e) = ctx().io.emit("chat", &msg).await {
        log_broadcast_error("chat", e);
    }
}

async fn on_disconnect(s: SocketRef<A>) {
    // The socket is still in the namespace while this runs: leave it out of the count and of
    // the recipients.
    if let Some(Name(name)) = s.extensions.get::<Name>() {
        system(&format!("{name} left"), Some(&s)).await;
    }
    broadcast_presence(Some(&s)).await;
}

/// Every socket of the cluster, or every one but `leaving`.
fn recipients(leaving: Option<&SocketRef<A>>) -> BroadcastOperators<A> {
    match leaving {
        Some(s) => s.broadcast(),
        None => ctx().io.broadcast(),
    }
}

/// Recipients that disconnected meanwhile are routine; anything else is worth a warning.
fn log_broadcast_error(what: &str, e: BroadcastError) {
    match e {
        BroadcastError::Socket(_) => tracing::debug!("{what} broadcast: {e}"),
        e => tracing::warn!("{what} broadcast: {e}"),
    }
}

fn user_room(sid: Sid, name: &str) -> String {
    format!("{USER_ROOM_PREFIX}{sid}:{name}")
}

/// Everyone (but `leaving`) gets a `system` line.
async fn system(text: &str, leaving: Option<&SocketRef<A>>) {
    if let Err(e) = recipients(leaving).emit("system", text).await {
        log_broadcast_error("system", e);
    }
}

/// Tells everyone who is online across the cluster: the connection count (every socket of every
/// worker, `fetch_sockets`) and the names (every `user:` room), leaving out a disconnecting socket.
async fn broadcast_presence(leaving: Option<&SocketRef<A>>) {
    let io = &ctx().io;
    let recipients = recipients(leaving);
    let leaving = leaving.map(|s| s.id);
    let (sockets, rooms) = tokio::join!(io.fetch_sockets(), io.rooms());
    let (sockets, rooms) = match (sockets, rooms) {
        (Ok(sockets), Ok(rooms)) => (sockets, rooms),
        (Err(e), _) | (_, Err(e)) => return tracing::warn!("presence: {e}"),
    };
    let online = sockets
        .iter()
        .filter(|r| Some(r.data().id) != leaving)
        .count();
    let mut users: Vec<String> = rooms
        .iter()
        .filter_map(|room| room.strip_prefix(USER_ROOM_PREFIX)?.split_once(':'))
        .filter(|(sid, _)| leaving.is_none_or(|l| l.as_str() != *sid))
        .map(|(_, name)| name.to_string())
        .collect();
    users.sort_by_key(|n| n.to_lowercase());
    users.dedup();
    let presence = json!({ "online": online, "users": users });
    if let Err(e) = recipients.emit("presence", &presence).await {
        log_broadcast_error("presence", e);
    }
}
