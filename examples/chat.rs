//! A chat served by a whole `sio-cluster`: the example to run first.
//!
//! ```text
//! cargo run --release --example chat
//! # then open http://127.0.0.1:3000 in a few browser tabs (or ?transport=polling)
//! cargo run --release --example chat -- --listen 0.0.0.0:8080 --workers 4 --path /rt
//! ```
//!
//! The primary listens (default `127.0.0.1:3000`, one worker per core) and hands each browser to
//! a worker. The page at `/` (`examples/chat/index.html`) uses the official Socket.IO browser
//! client (socket.io-client 4.8.1, vendored in `examples/chat/` and served from the binary at
//! `/assets/socket.io.min.js`: nothing comes from the internet), with its default transports
//! (polling, then the upgrade to websocket; `?transport=polling` keeps polling), on the
//! server's `--path`. Pick a name and a room (`lobby` by default): messages reach everyone in the
//! room whichever worker holds them (broadcasts go through the cluster adapter), the side panel
//! lists who is in the room across the cluster, the header says which worker serves you (index
//! and pid) and whether you are connected; the client reconnects by itself (to another worker if
//! its worker died) and joins its room again. Flags are the cluster's common ones (`--help`).
//!
//! Events: server → client `welcome {worker, workers, pid, sid}`, `presence {room, users}`,
//! `chat {name, text, worker, ts}`, `system text`; client → server `join {name, room}` (ack
//! `{ok, name, room}` or `{error}`), `chat text`.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header;
use axum::response::Html;
use axum::routing::get;
use serde_json::json;
use sio_cluster::{ClusterAdapter, Config, Worker, WorkerInfo};
use socketioxide::extract::{AckSender, Data, SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;
use socketioxide::{BroadcastError, SocketIo};

type A = ClusterAdapter;

const INDEX_HTML: &str = include_str!("chat/index.html");
const SOCKET_IO_JS: &str = include_str!("chat/socket.io.min.js");
const FAVICON_SVG: &str = include_str!("chat/favicon.svg");
const MAX_NAME_CHARS: usize = 24;
const MAX_ROOM_CHARS: usize = 32;
const MAX_TEXT_CHARS: usize = 2000;
/// Messages of room R go to the Socket.IO room `room:R`.
const ROOM_PREFIX: &str = "room:";
/// Each member of room R also sits in `user:R:<sid>:<name>`: the rooms of the whole cluster are
/// the list of who is in R. (Room names hold no `:`.)
const USER_ROOM_PREFIX: &str = "user:";

/// The name and room a socket joined with (socket extensions).
#[derive(Clone)]
struct Member {
    name: String,
    room: String,
}

fn main() -> anyhow::Result<()> {
    let config = <Config as clap::Parser>::parse();
    // The page connects on the server's Engine.IO path (`--path`).
    let page = Html(INDEX_HTML.replace("__SIO_PATH__", config.path.trim_end_matches('/')));
    // Handlers take what they need as extractors: `SocketIo` for broadcasts, and the
    // `State<WorkerInfo>` every worker provides.
    sio_cluster::run(config, move |w: Worker| async move {
        w.io.ns("/", on_connect.with(register_handlers)).await?;
        Ok(axum::Router::new()
            .route("/", get(move || async move { page }))
            .route(
                "/assets/socket.io.min.js",
                get(async || {
                    (
                        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                        SOCKET_IO_JS,
                    )
                }),
            )
            .route(
                "/favicon.svg",
                get(async || ([(header::CONTENT_TYPE, "image/svg+xml")], FAVICON_SVG)),
            ))
    })?;
    Ok(())
}

/// Connect middleware: handlers are registered before the client learns it is connected, so
/// its first `hello` is never missed.
async fn register_handlers(s: SocketRef<A>) -> Result<(), Infallible> {
    s.on("join", on_join);
    s.on("chat", on_chat);
    s.on_disconnect(on_disconnect);
    Ok(())
}

async fn on_connect(s: SocketRef<A>, State(info): State<WorkerInfo>) {
    // Presence is per room: sent once the client joins one.
    let welcome = json!({
        "worker": info.index,
        "workers": info.workers,
        "pid": info.pid,
        "sid": s.id.to_string(),
    });
    if let Err(e) = s.emit("welcome", &welcome) {
        tracing::debug!(sid = %s.id, "welcome not sent: {e}");
    }
}

/// What the client asks to join.
#[derive(serde::Deserialize)]
struct Join {
    name: String,
    #[serde(default)]
    room: String,
}

async fn on_join(s: SocketRef<A>, io: SocketIo<A>, Data(join): Data<Join>, ack: AckSender<A>) {
    let name: String = join
        .name
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_NAME_CHARS)
        .collect();
    let room: String = join
        .room
        .trim()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
        .take(MAX_ROOM_CHARS)
        .collect();
    let room = if room.is_empty() {
        "lobby".to_owned()
    } else {
        room
    };
    if name.is_empty() {
        let _ = ack.send(&json!({ "error": "pick a name" }));
        return;
    }
    let member = Member {
        name: name.clone(),
        room: room.clone(),
    };
    let previous = s.extensions.insert(member);
    if let Some(old) = &previous {
        s.leave(vec![
            format!("{ROOM_PREFIX}{}", old.room),
            user_room(&old.room, s.id, &old.name),
        ]);
    }
    s.join(vec![
        format!("{ROOM_PREFIX}{room}"),
        user_room(&room, s.id, &name),
    ]);
    let _ = ack.send(&json!({ "ok": true, "name": name, "room": room }));
    if let Some(old) = &previous
        && old.room != room
    {
        system(&io, &old.room, &format!("{} left", old.name), None).await;
        broadcast_presence(&io, &old.room, None).await;
    }
    let same = previous
        .as_ref()
        .is_some_and(|old| old.room == room && old.name == name);
    if !same {
        system(&io, &room, &format!("{name} joined"), None).await;
    }
    broadcast_presence(&io, &room, None).await;
}

async fn on_chat(
    s: SocketRef<A>,
    io: SocketIo<A>,
    State(info): State<WorkerInfo>,
    Data(text): Data<String>,
) {
    let Some(Member { name, room }) = s.extensions.get::<Member>() else {
        return;
    };
    let text: String = text.trim().chars().take(MAX_TEXT_CHARS).collect();
    if text.is_empty() {
        return;
    }
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let msg = json!({ "name": name, "text": text, "worker": info.index, "ts": ts });
    // To every socket of the room on every worker, the sender included.
    if let Err(e) = io
        .to(format!("{ROOM_PREFIX}{room}"))
        .emit("chat", &msg)
        .await
    {
        log_broadcast_error("chat", e);
    }
}

async fn on_disconnect(s: SocketRef<A>, io: SocketIo<A>) {
    // The socket is still in its rooms while this runs: leave it out of the list and of the
    // recipients.
    if let Some(Member { name, room }) = s.extensions.get::<Member>() {
        system(&io, &room, &format!("{name} left"), Some(&s)).await;
        broadcast_presence(&io, &room, Some(&s)).await;
    }
}

/// Every socket of room `room` on every worker, or every one but `leaving`.
fn recipients(
    io: &SocketIo<A>,
    room: &str,
    leaving: Option<&SocketRef<A>>,
) -> BroadcastOperators<A> {
    let to = format!("{ROOM_PREFIX}{room}");
    match leaving {
        Some(s) => s.broadcast().to(to),
        None => io.to(to),
    }
}

/// Recipients that disconnected meanwhile are routine; anything else is worth a warning.
fn log_broadcast_error(what: &str, e: BroadcastError) {
    match e {
        BroadcastError::Socket(_) => tracing::debug!("{what} broadcast: {e}"),
        e => tracing::warn!("{what} broadcast: {e}"),
    }
}

fn user_room(room: &str, sid: Sid, name: &str) -> String {
    format!("{USER_ROOM_PREFIX}{room}:{sid}:{name}")
}

/// Everyone in `room` (but `leaving`) gets a `system` line.
async fn system(io: &SocketIo<A>, room: &str, text: &str, leaving: Option<&SocketRef<A>>) {
    if let Err(e) = recipients(io, room, leaving).emit("system", text).await {
        log_broadcast_error("system", e);
    }
}

/// Tells everyone in `room` who is in it across the cluster (every `user:ROOM:` room of every
/// worker), leaving out a disconnecting socket.
async fn broadcast_presence(io: &SocketIo<A>, room: &str, leaving: Option<&SocketRef<A>>) {
    let recipients = recipients(io, room, leaving);
    let leaving = leaving.map(|s| s.id.to_string());
    let rooms = match io.rooms().await {
        Ok(rooms) => rooms,
        Err(e) => return tracing::warn!("presence: {e}"),
    };
    let prefix = format!("{USER_ROOM_PREFIX}{room}:");
    let mut users: Vec<String> = rooms
        .iter()
        .filter_map(|r| r.strip_prefix(prefix.as_str())?.split_once(':'))
        .filter(|(sid, _)| leaving.as_deref() != Some(*sid))
        .map(|(_, name)| name.to_string())
        .collect();
    users.sort_by_key(|n| n.to_lowercase());
    users.dedup();
    let presence = json!({ "room": room, "users": users });
    if let Err(e) = recipients.emit("presence", &presence).await {
        log_broadcast_error("presence", e);
    }
}
