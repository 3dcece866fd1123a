//! The test app: one small Socket.IO app, run as a whole cluster by `sio-cluster`, that the
//! tests, benchmarks and acceptance checks all drive.
//!
//! It serves exactly the events of `docs/test-app-protocol.md` (echoes, acks, rooms, broadcasts,
//! cluster-wide queries and remote-socket operations) on namespaces `/` and `/custom`, and behaves
//! the same on any number of workers, over the IPC bus or Redis.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/testapp --listen 127.0.0.1:3000 --workers 4
//! target/release/examples/testapp --adapter redis --redis-url redis://127.0.0.1:6379
//! target/release/examples/testapp --standalone --listen 127.0.0.1:3000
//! ```
//!
//! Flags are the cluster's common ones (`--help`); the primary prints `listening on ADDR` once
//! every worker is ready. Cross-worker operations all go through the cluster adapter.
//!
//! Besides the protocol, in the cluster: every HTTP response carries `x-testapp-layer: 1` (a
//! tower layer over the worker's whole service); a draining worker emits `draining {pid}` to
//! its clients before it closes their sessions, and logs `testapp worker: run returned after
//! the drain` once `run` returns; `TESTAPP_SOCKETIO_PATH=/x` sets socketioxide's `req_path`
//! behind the cluster's back (the worker must refuse to start).
//!
//! `--standalone` (or `TESTAPP_STANDALONE=1`) serves the very same handlers from ONE process
//! instead: socketioxide's default `LocalAdapter`, a multi-thread tokio runtime on every core,
//! hyper HTTP/1.1 on `--listen` (the stack a worker runs), the same engine flags. It is the
//! "one socketioxide process" the benchmarks compare the cluster with; cluster-only flags
//! (`--workers`, `--balance`, `--adapter`...) are ignored there. `whoami` answers worker `"0"`
//! and `server_count` answers 1.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use sio_cluster::{ClusterAdapter, ClusterHandle, Config, Worker};
use socketioxide::SocketIo;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::extract::{AckSender, Data, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::RemoteSocket;
use tower_layer::Layer;

/// Namespaces served (same behaviour on each).
const NAMESPACES: [&str; 2] = ["/", "/custom"];

/// Dynamic namespaces (`/dyn/anything`), created on a worker when a client first connects to
/// one there; same behaviour as the static ones.
const DYNAMIC_NAMESPACES: &str = "/dyn/{name}";

/// `ack_all` timeout when the client gives none.
const DEFAULT_ACK_ALL_MS: u64 = 5000;

/// The test app's command line: the cluster's common flags, plus `--standalone`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "testapp",
    about = "The sio-cluster test app: every event of docs/test-app-protocol.md, served by the cluster \
             (default) or by one socketioxide process (--standalone).",
    version
)]
struct Cli {
    /// Serve from ONE process with socketioxide's default LocalAdapter (no workers, no
    /// primary): the baseline the benchmarks compare the cluster with. Cluster-only flags are
    /// ignored.
    #[arg(
        long,
        env = "TESTAPP_STANDALONE",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue,
    )]
    standalone: bool,

    #[command(flatten)]
    config: Config,
}

/// What the handlers need from the process: socketioxide state (`State<Ctx>`), and axum state
/// for the HTTP routes.
#[derive(Clone)]
struct Ctx {
    /// `whoami`'s `worker`: the worker's slot index (`"0"` standalone).
    worker: String,
    pid: u32,
    servers: Servers,
    /// The adapter's request timeout (zero standalone): how long past its own timeout a
    /// broadcast with ack may still deliver answers from other workers.
    request_timeout: Duration,
    /// Memory deliberately held by `hog`.
    hogged: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Ctx {
    fn of(
        info: &sio_cluster::WorkerInfo,
        cluster: &ClusterHandle,
        request_timeout: Duration,
    ) -> Self {
        Ctx {
            worker: info.index.to_string(),
            pid: info.pid,
            servers: Servers::Cluster(cluster.clone()),
            request_timeout,
            hogged: Default::default(),
        }
    }
}

/// Where `server_count` comes from.
#[derive(Clone)]
enum Servers {
    /// Servers the cluster adapter's bus counts.
    Cluster(ClusterHandle),
    /// One process, nothing to count.
    Standalone,
}

fn main() -> anyhow::Result<()> {
    let Cli { standalone, config } = <Cli as clap::Parser>::parse();
    if standalone {
        return standalone::run(config);
    }
    let request_timeout = Duration::from_millis(config.request_timeout_ms);
    // Set by the app's setup, which runs in workers only.
    let served = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let in_worker = served.clone();
    let mut cluster = sio_cluster::Cluster::new(config)
        .with_state_from(move |info, cluster| Ctx::of(info, cluster, request_timeout))
        // Marks every response of the worker's whole service (tests of `Cluster::layer`).
        .layer(tower::util::MapResponseLayer::new(
            |mut r: http::Response<axum::body::Body>| {
                r.headers_mut()
                    .insert("x-testapp-layer", http::HeaderValue::from_static("1"));
                r
            },
        ));
    if let Ok(path) = std::env::var("TESTAPP_SOCKETIO_PATH") {
        // A customisation that contradicts --path (tests of the settings check).
        cluster = cluster.socketio(move |b| b.req_path(path));
    }
    cluster.run(move |w: Worker| async move {
        in_worker.store(true, std::sync::atomic::Ordering::Relaxed);
        let Worker {
            io,
            info,
            cluster,
            shutdown,
            ..
        } = w;
        let ctx = Ctx::of(&info, &cluster, request_timeout);
        say_goodbye_on_drain(io.clone(), shutdown);
        for ns in NAMESPACES {
            io.ns(
                ns,
                on_connect::<ClusterAdapter>.with(register_handlers::<ClusterAdapter>),
            )
            .await?;
        }
        io.dyn_ns(
            DYNAMIC_NAMESPACES,
            on_connect::<ClusterAdapter>.with(register_handlers::<ClusterAdapter>),
        )?;
        Ok(routes(ctx))
    })?;
    // In a worker, `run` returns once its drain is over (the primary returns at shutdown).
    if served.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("testapp worker: run returned after the drain");
    }
    Ok(())
}

/// When the worker starts draining, tells every client it serves (`draining {worker}`) before
/// the worker closes the sessions, holding the drain ~100 ms so the event goes out first.
fn say_goodbye_on_drain(io: SocketIo<ClusterAdapter>, shutdown: sio_cluster::Shutdown) {
    let waiter = shutdown.clone();
    shutdown.spawn(async move {
        waiter.draining().await;
        let worker = std::process::id();
        for ns in NAMESPACES {
            if let Some(op) = io.of(ns) {
                let _ = op
                    .emit("draining", &serde_json::json!({ "pid": worker }))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
}

/// Plain HTTP routes next to Socket.IO (served by the workers like any request).
fn routes(ctx: Ctx) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        // Answers the request body (tests of body limits and timeouts on app routes).
        .route("/echo", post(async |body: axum::body::Bytes| body))
        .route(
            "/whoami",
            get(
                async |axum::extract::State(ctx): axum::extract::State<Ctx>,
                       client: Option<axum::Extension<sio_cluster::ClientAddr>>| {
                    let client = client.and_then(|c| c.0.0).map(|a| a.to_string());
                    axum::Json(serde_json::json!({
                        "worker": ctx.worker,
                        "pid": ctx.pid,
                        "client": client,
                    }))
                },
            ),
        )
        .with_state(ctx)
}

/// `--standalone`: the same app in one process, `LocalAdapter`, every core.
mod standalone {
    use super::*;

    pub(super) fn run(config: Config) -> anyhow::Result<()> {
        config.validate()?;
        init_logging();
        raise_nofile_limit();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(serve(config))
    }

    async fn serve(config: Config) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};

        let ctx = Ctx {
            worker: "0".into(),
            pid: std::process::id(),
            servers: Servers::Standalone,
            request_timeout: Duration::ZERO,
            hogged: Default::default(),
        };
        let (layer, io) = config
            .engine_settings(SocketIo::builder())
            .with_state(ctx.clone())
            .build_layer();
        for ns in NAMESPACES {
            // The local adapter initialises synchronously: nothing to await.
            io.ns(
                ns,
                on_connect::<LocalAdapter>.with(register_handlers::<LocalAdapter>),
            );
        }
        io.dyn_ns(
            DYNAMIC_NAMESPACES,
            on_connect::<LocalAdapter>.with(register_handlers::<LocalAdapter>),
        )?;
        let svc = layer.layer(routes(ctx));

        let listener = bind(config.listen, config.backlog)?;
        let addr = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        tracing::info!(%addr, "standalone: listening on {addr}");

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            let (stream, _peer) = tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                res = listener.accept() => match res {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!("connection ended with an error: {e}");
                }
            });
        }
        tracing::info!("standalone: signal received; exiting");
        Ok(())
    }

    /// Binds `addr` with `backlog` (like the primary does), `SO_REUSEADDR` on.
    fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<tokio::net::TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog.max(1) as u32)
    }

    /// Same as the cluster's primary: many connections need many descriptors.
    fn raise_nofile_limit() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    eprintln!("cannot raise the open-file limit to {hard}: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("cannot read the open-file limit: {e}"),
        }
    }

    /// Logs to stderr, `RUST_LOG` filtered (default `info`), like the cluster's processes.
    fn init_logging() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    }
}

/// Connect middleware: registers every event handler before the CONNECT reply is sent, so a
/// client's first event (sent right after `40`) always finds its handler.
async fn register_handlers<A: Adapter>(s: SocketRef<A>) -> Result<(), Infallible> {
    s.on("message", on_message::<A>);
    s.on("message-with-ack", on_message_with_ack::<A>);
    s.on("emit-with-ack", on_emit_with_ack::<A>);
    s.on("whoami", on_whoami::<A>);
    s.on("join", on_join::<A>);
    s.on("leave", on_leave::<A>);
    s.on("echo", on_echo::<A>);
    s.on("ping_ack", on_ping_ack::<A>);
    s.on("to_all", on_to_all::<A>);
    s.on("to_others", on_to_others::<A>);
    s.on("to_room", on_to_room::<A>);
    s.on("to_room_except", on_to_room_except::<A>);
    s.on("count_sockets", on_count_sockets::<A>);
    s.on("rooms", on_rooms::<A>);
    s.on("server_count", on_server_count::<A>);
    s.on("ack_all", on_ack_all::<A>);
    s.on("remote_join", on_remote_join::<A>);
    s.on("remote_leave", on_remote_leave::<A>);
    s.on("remote_emit", on_remote_emit::<A>);
    s.on("kick", on_kick::<A>);
    s.on("kick_room", on_kick_room::<A>);
    s.on("room_to_room", on_room_to_room::<A>);
    // Beyond the shared protocol, for the adapter tests:
    s.on("volatile_to_all", on_volatile_to_all::<A>);
    s.on("sockets", on_sockets::<A>);
    s.on("server_id", on_server_id::<A>);
    s.on("room_leave", on_room_leave::<A>);
    s.on("hog", on_hog::<A>);
    Ok(())
}

/// Connect handler (runs once the socket is connected): emits `auth` with the handshake's auth
/// object (`{}` when the client sent none).
async fn on_connect<A: Adapter>(s: SocketRef<A>, TryData(auth): TryData<Value>) {
    let auth = auth.unwrap_or_else(|e| {
        tracing::warn!(sid = %s.id, "unreadable auth payload: {e}");
        Value::Map(Vec::new())
    });
    if let Err(e) = s.emit("auth", &auth) {
        tracing::warn!(sid = %s.id, "emit auth: {e}");
    }
}

// ==== events ====

async fn on_message<A: Adapter>(s: SocketRef<A>, Data(args): Data<Args>) {
    if let Err(e) = s.emit("message-back", &args) {
        tracing::warn!(sid = %s.id, "emit message-back: {e}");
    }
}

async fn on_message_with_ack<A: Adapter>(Data(args): Data<Args>, ack: AckSender<A>) {
    send_ack(ack, &args);
}

async fn on_emit_with_ack<A: Adapter>(s: SocketRef<A>, Data(args): Data<Args>) {
    let stream = match s.emit_with_ack::<_, Args>("emit-with-ack", &args) {
        Ok(stream) => stream,
        Err(e) => return tracing::warn!(sid = %s.id, "emit-with-ack: {e}"),
    };
    let asked = std::time::Instant::now();
    match stream.await {
        Ok(reply) => {
            if let Err(e) = s.emit("emit-with-ack", &reply) {
                tracing::warn!(sid = %s.id, "emit emit-with-ack reply: {e}");
            }
        }
        Err(e) => {
            tracing::warn!(sid = %s.id, "emit-with-ack: no reply from the client: {e}");
            // Tells the client when the ack timeout (`--ack-timeout-ms`) fired.
            let after_ms = asked.elapsed().as_millis() as u64;
            let timeout = matches!(e, socketioxide::AckError::Timeout);
            let _ = s.emit(
                "emit-with-ack-timeout",
                &serde_json::json!({ "after_ms": after_ms, "timeout": timeout }),
            );
        }
    }
}

async fn on_whoami<A: Adapter>(s: SocketRef<A>, State(ctx): State<Ctx>, ack: AckSender<A>) {
    // The client's address as the cluster sees it (PROXY header or trusted X-Forwarded-For
    // applied); standalone has none.
    let client = s
        .req_parts()
        .extensions
        .get::<sio_cluster::ClientAddr>()
        .and_then(|c| c.0)
        .map(|a| a.to_string());
    send_ack(
        ack,
        &serde_json::json!({
            "worker": ctx.worker,
            "pid": ctx.pid,
            "sid": s.id.to_string(),
            "client": client,
        }),
    );
}

async fn on_join<A: Adapter>(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    match args.room(0) {
        Ok(room) => {
            s.join(room);
            send_ack(ack, "ok");
        }
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_leave<A: Adapter>(s: SocketRef<A>, Data(args): Data<Args>, ack: AckSender<A>) {
    match args.room(0) {
        Ok(room) => {
            s.leave(room);
            send_ack(ack, "ok");
        }
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_echo<A: Adapter>(s: SocketRef<A>, Data(args): Data<Args>) {
    if let Err(e) = s.emit("msg", &args.get(0)) {
        tracing::warn!(sid = %s.id, "emit msg: {e}");
    }
}

async fn on_ping_ack<A: Adapter>(Data(args): Data<Args>, ack: AckSender<A>) {
    send_ack(ack, &args.get(0));
}

async fn on_to_all<A: Adapter>(s: SocketRef<A>, io: SocketIo<A>, Data(args): Data<Args>) {
    if let Err(e) = ns_op(&io, &s).emit("msg", &args.get(0)).await {
        tracing::warn!(sid = %s.id, "to_all: {e}");
    }
}

async fn on_to_others<A: Adapter>(s: SocketRef<A>, Data(args): Data<Args>) {
    if let Err(e) = s.broadcast().emit("msg", &args.get(0)).await {
        tracing::warn!(sid = %s.id, "to_others: {e}");
    }
}

async fn on_to_room<A: Adapter>(s: SocketRef<A>, io: SocketIo<A>, Data(args): Data<Args>) {
    let room = match args.room(0) {
        Ok(room) => room,
        Err(e) => return tracing::warn!(sid = %s.id, "to_room: {e}"),
    };
    // Through the namespace, not the socket: the sender gets it too when it is in the room.
    if let Err(e) = ns_op(&io, &s).to(room).emit("msg", &args.get(1)).await {
        tracing::warn!(sid = %s.id, "to_room: {e}");
    }
}

async fn on_to_room_except<A: Adapter>(s: SocketRef<A>, io: SocketIo<A>, Data(args): Data<Args>) {
    let (room, except) = match (args.room(0), args.room(1)) {
        (Ok(room), Ok(except)) => (room, except),
        (Err(e), _) | (_, Err(e)) => return tracing::warn!(sid = %s.id, "to_room_except: {e}"),
    };
    let op = ns_op(&io, &s).to(room).except(except);
    if let Err(e) = op.emit("msg", &args.get(2)).await {
        tracing::warn!(sid = %s.id, "to_room_except: {e}");
    }
}

async fn on_count_sockets<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    let op = match args.get(0) {
        Value::Null => ns_op(&io, &s),
        _ => match args.room(0) {
            Ok(room) => ns_op(&io, &s).to(room),
            Err(e) => return send_ack(ack, &e),
        },
    };
    match op.fetch_sockets().await {
        Ok(sockets) => send_ack(ack, &sockets.len()),
        Err(e) => send_error(ack, "count_sockets", e),
    }
}

async fn on_rooms<A: Adapter>(s: SocketRef<A>, io: SocketIo<A>, ack: AckSender<A>) {
    match ns_op(&io, &s).rooms().await {
        Ok(rooms) => {
            let mut rooms: Vec<String> = rooms.into_iter().map(|r| r.into_owned()).collect();
            rooms.sort();
            rooms.dedup();
            send_ack(ack, &rooms);
        }
        Err(e) => send_error(ack, "rooms", e),
    }
}

async fn on_server_count<A: Adapter>(s: SocketRef<A>, State(ctx): State<Ctx>, ack: AckSender<A>) {
    match &ctx.servers {
        Servers::Cluster(cluster) => match cluster.server_count(s.ns()).await {
            Ok(n) => send_ack(ack, &n),
            Err(e) => send_error(ack, "server_count", e),
        },
        Servers::Standalone => send_ack(ack, &1u16),
    }
}

/// Emits `ask` to every other socket of the namespace, on every worker, and acks how many
/// answered and how many did not within the timeout.
///
/// Every socket the cluster reports is counted once, as an ack or a timeout: the sockets
/// targeted are fetched alongside the broadcast (the same operator, so the same sockets), and
/// the answers are awaited until the ack stream ends, which it does once every worker's answers
/// are in or after the timeout plus the adapter's request timeout (a worker that answers late,
/// after our own timeout, is still counted). A socket targeted but not heard from is a timeout;
/// the sockets of a worker that answered neither within the request timeout are unknown here.
async fn on_ack_all<A: Adapter>(
    s: SocketRef<A>,
    State(ctx): State<Ctx>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    let timeout = Duration::from_millis(args.get(0).as_u64().unwrap_or(DEFAULT_ACK_ALL_MS));
    let targeted = async {
        match s.broadcast().fetch_sockets().await {
            Ok(sockets) => sockets.len(),
            Err(e) => {
                tracing::warn!(sid = %s.id, "ack_all: fetch_sockets: {e}");
                0
            }
        }
    };
    let asked = async {
        let stream = s
            .broadcast()
            .timeout(timeout)
            .emit_with_ack::<_, Args>("ask", &Args::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = std::pin::pin!(stream);
        let (mut acks, mut failed) = (0usize, 0usize);
        // The stream ends by itself; the margin only guards against one that never does.
        let deadline =
            tokio::time::Instant::now() + timeout + ctx.request_timeout + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some((_, Ok(_)))) => acks += 1,
                // A reply that did not decode is still a reply.
                Ok(Some((_, Err(socketioxide::AckError::Decode(_))))) => acks += 1,
                // No reply in time, or the socket's worker died before it answered.
                Ok(Some((_, Err(_)))) => failed += 1,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(sid = %s.id, "ack_all: ack stream still open after the timeout");
                    break;
                }
            }
        }
        Ok::<_, String>((acks, failed))
    };
    let (targeted, asked) = tokio::join!(targeted, asked);
    let (acks, failed) = match asked {
        Ok(counts) => counts,
        Err(e) => return send_error(ack, "ack_all", e),
    };
    // Sockets targeted that the stream never mentioned (their worker did not announce them in
    // time) did not answer either.
    let timeouts = failed.max(targeted.saturating_sub(acks));
    tracing::debug!(sid = %s.id, acks, failed, targeted, "ack_all");
    send_ack(
        ack,
        &serde_json::json!({ "acks": acks, "timeouts": timeouts }),
    );
}

async fn on_remote_join<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    match args.room(1) {
        Ok(room) => {
            on_remote(&s, &io, &args, ack, "remote_join", async |r| {
                r.join(room).await
            })
            .await
        }
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_remote_leave<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    match args.room(1) {
        Ok(room) => {
            on_remote(&s, &io, &args, ack, "remote_leave", async |r| {
                r.leave(room).await
            })
            .await
        }
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_remote_emit<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    let payload = args.get(1);
    on_remote(&s, &io, &args, ack, "remote_emit", async |r| {
        r.emit("msg", &payload).await
    })
    .await
}

async fn on_kick<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    on_remote(&s, &io, &args, ack, "kick", async |r| r.disconnect().await).await
}

/// Finds the socket whose id is the first argument, anywhere in the cluster, applies `op` to it
/// and acks `"ok"`, `"not found"` or the error.
async fn on_remote<A: Adapter, E: fmt::Display>(
    s: &SocketRef<A>,
    io: &SocketIo<A>,
    args: &Args,
    ack: AckSender<A>,
    what: &str,
    op: impl AsyncFnOnce(RemoteSocket<A>) -> Result<(), E>,
) {
    match find_socket(io, s, args).await {
        Ok(Some(remote)) => match op(remote).await {
            Ok(()) => send_ack(ack, "ok"),
            Err(e) => send_error(ack, what, e),
        },
        Ok(None) => send_ack(ack, "not found"),
        Err(e) => send_ack(ack, &e),
    }
}

async fn on_kick_room<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    let room = match args.room(0) {
        Ok(room) => room,
        Err(e) => return send_ack(ack, &e),
    };
    match ns_op(&io, &s).to(room).disconnect().await {
        Ok(()) => send_ack(ack, "ok"),
        Err(e) => send_error(ack, "kick_room", e),
    }
}

async fn on_room_to_room<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    let (src, dst) = match (args.room(0), args.room(1)) {
        (Ok(src), Ok(dst)) => (src, dst),
        (Err(e), _) | (_, Err(e)) => return send_ack(ack, &e),
    };
    match ns_op(&io, &s).to(src).join(dst).await {
        Ok(()) => send_ack(ack, "ok"),
        Err(e) => send_error(ack, "room_to_room", e),
    }
}

/// `io.volatile().emit`: may be dropped for a congested socket, never queued.
async fn on_volatile_to_all<A: Adapter>(s: SocketRef<A>, io: SocketIo<A>, Data(args): Data<Args>) {
    if let Err(e) = ns_op(&io, &s).volatile().emit("msg", &args.get(0)).await {
        tracing::warn!(sid = %s.id, "volatile_to_all: {e}");
    }
}

/// `fetch_sockets` data: `[{"id", "rooms", "server", "ns"}]` of the sockets in a room (or all),
/// across the cluster, sorted by id: `server` is the server id of the socket's worker (what
/// `server_id` answers there), `ns` its namespace; each socket's rooms are asked from its own
/// worker.
async fn on_sockets<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    let op = match args.get(0) {
        Value::Null => ns_op(&io, &s),
        _ => match args.room(0) {
            Ok(room) => ns_op(&io, &s).to(room),
            Err(e) => return send_ack(ack, &e),
        },
    };
    let sockets = match op.fetch_sockets().await {
        Ok(sockets) => sockets,
        Err(e) => return send_error(ack, "sockets", e),
    };
    let mut out = Vec::with_capacity(sockets.len());
    for remote in sockets {
        let mut rooms: Vec<String> = match remote.rooms().await {
            Ok(rooms) => rooms.into_iter().map(|r| r.into_owned()).collect(),
            Err(e) => return send_error(ack, "sockets", e),
        };
        rooms.sort();
        let data = remote.data();
        out.push((
            data.id.to_string(),
            rooms,
            data.server_id.to_string(),
            data.ns.to_string(),
        ));
    }
    out.sort();
    let out: Vec<_> = out
        .into_iter()
        .map(|(id, rooms, server, ns)| {
            serde_json::json!({ "id": id, "rooms": rooms, "server": server, "ns": ns })
        })
        .collect();
    send_ack(ack, &out);
}

/// `server_id`: acks this worker's adapter server id (`server` in `sockets` data).
async fn on_server_id<A: Adapter>(io: SocketIo<A>, ack: AckSender<A>) {
    send_ack(ack, &io.config().server_id.to_string());
}

/// `io.to(src).leave(dst)`: every socket in src, on every worker, leaves dst.
async fn on_room_leave<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    Data(args): Data<Args>,
    ack: AckSender<A>,
) {
    let (src, dst) = match (args.room(0), args.room(1)) {
        (Ok(src), Ok(dst)) => (src, dst),
        (Err(e), _) | (_, Err(e)) => return send_ack(ack, &e),
    };
    match ns_op(&io, &s).to(src).leave(dst).await {
        Ok(()) => send_ack(ack, "ok"),
        Err(e) => send_error(ack, "room_leave", e),
    }
}

/// `hog` mb: grows this worker's resident memory by `mb` MiB (kept until the process exits:
/// a leak on purpose, for the memory-limit test).
async fn on_hog<A: Adapter>(State(ctx): State<Ctx>, Data(args): Data<Args>, ack: AckSender<A>) {
    let mb = args.get(0).as_u64().unwrap_or(0).min(1024) as usize;
    // Written, not just allocated, so the pages are resident.
    let block = vec![1u8; mb * 1024 * 1024];
    ctx.hogged
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(block);
    send_ack(ack, "ok");
}

// ==== helpers ====

/// Every socket of the sender's namespace, on every worker (the adapter's reach).
fn ns_op<A: Adapter>(io: &SocketIo<A>, s: &SocketRef<A>) -> BroadcastOperators<A> {
    io.of(s.ns()).expect("the socket's namespace is registered")
}

/// The socket whose id is the first argument, wherever it is in the cluster.
async fn find_socket<A: Adapter>(
    io: &SocketIo<A>,
    s: &SocketRef<A>,
    args: &Args,
) -> Result<Option<RemoteSocket<A>>, String> {
    let Value::Str(sid) = args.get(0) else {
        return Err("error: expected a socket id".into());
    };
    let sockets = ns_op(io, s).fetch_sockets().await.map_err(|e| {
        tracing::warn!("fetch_sockets: {e}");
        format!("error: {e}")
    })?;
    Ok(sockets.into_iter().find(|r| r.data().id.to_string() == sid))
}

fn send_ack<A: Adapter, T: Serialize + ?Sized>(ack: AckSender<A>, data: &T) {
    if let Err(e) = ack.send(data) {
        tracing::debug!("ack not sent: {e}");
    }
}

fn send_error<A: Adapter>(ack: AckSender<A>, what: &str, e: impl fmt::Display) {
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
