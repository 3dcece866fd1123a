//! The per-connection task: owns the transport, answers pings, matches acks, delivers events
//! in arrival order, performs the polling → websocket upgrade and the clean shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, Method, Request, header};
use http_body_util::Full;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::{Error, Result};
use crate::net::{self, Stream};
use crate::packet::{
    self, EnginePacket, OutPacket, SioPacket, SioPacketType, encode_ack, parse_engine_packet,
    parse_sio_packet, split_payload,
};
use crate::raw::{ConnectOptions, HttpConn, RawResponse};
use crate::{Event, Incoming, PollingConn, Transport};

pub(crate) type WsStream = WebSocketStream<Stream>;

/// Reason recorded when the client itself closed the connection.
pub(crate) const CLIENT_CLOSE: &str = "client disconnect";
/// How long a clean disconnect waits for the server to close the transport.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Static facts about where and how to connect.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub addr: SocketAddr,
    pub path: String,
    /// Extra query parameters, already encoded, each prefixed by `&`.
    pub query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub host: HeaderValue,
    pub polling_conn: PollingConn,
    pub upgrade_timeout: Duration,
    /// TLS and preamble, for every connection opened.
    pub conn: ConnectOptions,
    /// The certificate presented on the first TLS connection (see
    /// [`Client::peer_certificate_der`](crate::Client::peer_certificate_der)).
    pub first_peer_cert: OnceLock<Vec<u8>>,
}

impl ConnCtx {
    pub fn handshake_uri(&self) -> String {
        format!("{}?EIO=4&transport=polling{}", self.path, self.query)
    }

    pub fn poll_uri(&self, sid: &str) -> String {
        format!(
            "{}?EIO=4&transport=polling&sid={}{}",
            self.path, sid, self.query
        )
    }

    fn ws_url(&self, sid: Option<&str>) -> String {
        // The scheme only tells tungstenite what the stream is; TLS is done by `net::open`.
        let scheme = if self.conn.tls.is_some() { "wss" } else { "ws" };
        match sid {
            Some(sid) => format!(
                "{scheme}://{}{}?EIO=4&transport=websocket&sid={}{}",
                self.addr, self.path, sid, self.query
            ),
            None => format!(
                "{scheme}://{}{}?EIO=4&transport=websocket{}",
                self.addr, self.path, self.query
            ),
        }
    }

    /// Records the certificate of the first TLS connection.
    fn note_peer_cert(&self, cert: Option<Vec<u8>>) {
        if let Some(cert) = cert {
            let _ = self.first_peer_cert.set(cert);
        }
    }

    /// Opens an HTTP connection (TCP, preamble, TLS as configured).
    async fn http_conn(&self) -> Result<HttpConn> {
        let conn = HttpConn::connect_opts(self.addr, &self.conn).await?;
        self.note_peer_cert(conn.peer_certificate_der());
        Ok(conn)
    }

    pub fn request(&self, method: Method, uri: &str, body: Bytes) -> Result<Request<Full<Bytes>>> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, self.host.clone());
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "text/plain;charset=UTF-8");
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        Ok(req.body(Full::new(body))?)
    }
}

/// Opens a websocket (TCP with `TCP_NODELAY`, preamble and TLS as configured) to the
/// Engine.IO endpoint; the upgrade request carries the configured headers.
pub(crate) async fn open_ws(ctx: &ConnCtx, sid: Option<&str>) -> Result<WsStream> {
    let stream = net::open(ctx.addr, &ctx.conn).await?;
    ctx.note_peer_cert(stream.peer_certificate_der());
    let mut req = ctx.ws_url(sid).into_client_request()?;
    req.headers_mut().insert(header::HOST, ctx.host.clone());
    for (k, v) in &ctx.headers {
        req.headers_mut().append(k.clone(), v.clone());
    }
    // Small initial read buffer (it grows on demand): thousands of idle clients stay cheap.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024);
    let (ws, _resp) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}

/// Reads websocket frames until the first text frame (the open packet of a websocket-only session).
pub(crate) async fn read_first_text(ws: &mut WsStream) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => {
                return Err(Error::Protocol(format!(
                    "expected the open packet, got websocket message {other:?}"
                )));
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(Error::Closed(
                    "websocket closed before the open packet".into(),
                ));
            }
        }
    }
}

/// State shared between the [`Client`](crate::Client) handle and its driver task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub connected: AtomicBool,
    transport: AtomicU8,
    close_reason: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(transport: Transport) -> Self {
        let s = Shared {
            connected: AtomicBool::new(true),
            transport: AtomicU8::new(0),
            close_reason: Mutex::new(None),
        };
        s.set_transport(transport);
        s
    }

    pub fn transport(&self) -> Transport {
        match self.transport.load(Ordering::Acquire) {
            0 => Transport::WebSocket,
            _ => Transport::Polling,
        }
    }

    fn set_transport(&self, t: Transport) {
        let v = match t {
            Transport::WebSocket => 0,
            Transport::Polling | Transport::PollingThenUpgrade => 1,
        };
        self.transport.store(v, Ordering::Release);
    }

    pub fn close_reason(&self) -> Option<String> {
        self.close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The error to report once the driver has gone away.
    pub fn closed_error(&self) -> Error {
        Error::Closed(
            self.close_reason()
                .unwrap_or_else(|| "connection closed".to_owned()),
        )
    }
}

/// Requests from the [`Client`](crate::Client) handle to its driver.
pub(crate) enum Cmd {
    /// Send an engine text packet (and binary attachments), optionally waiting for an ack.
    Send {
        text: String,
        attachments: Vec<Bytes>,
        ack: Option<(u64, oneshot::Sender<Vec<Value>>)>,
    },
    /// Forget a pending ack (its caller timed out).
    CancelAck(u64),
    /// Send a namespace CONNECT and report the socket id (or the connect error).
    Connect {
        ns: String,
        text: String,
        reply: oneshot::Sender<Result<String>>,
    },
    /// Leave a namespace.
    DisconnectNs(String),
    /// Upgrade polling → websocket.
    Upgrade(oneshot::Sender<Result<()>>),
    /// Clean shutdown.
    Close(oneshot::Sender<()>),
}

/// What the polling GET/POST tasks report to the driver, in order.
enum Inbound {
    Payload(Bytes),
    GetError(Error),
    GetStopped,
    PostError(Error),
    PostStopped,
}

#[derive(Default)]
struct PollFlags {
    /// Stop issuing GETs after the current one.
    stop: AtomicBool,
    /// An upgrade is in progress: a payload with a noop ends the GET loop.
    upgrading: AtomicBool,
}

/// The HTTP side of the polling transport (one connection per request, or a kept-alive one).
pub(crate) struct PollHttp {
    ctx: Arc<ConnCtx>,
    conn: Option<HttpConn>,
    /// The kept-alive connection already carried a request (so a failure may only mean the
    /// server closed it while idle).
    reused: bool,
}

impl PollHttp {
    pub fn new(ctx: Arc<ConnCtx>) -> Self {
        PollHttp {
            ctx,
            conn: None,
            reused: false,
        }
    }

    /// Sends one request; a non-2xx status is an [`Error::Http`].
    pub async fn send(&mut self, method: Method, uri: &str, body: Bytes) -> Result<RawResponse> {
        let req = self.ctx.request(method.clone(), uri, body.clone())?;
        let res = match self.ctx.polling_conn {
            PollingConn::Fresh => {
                let mut conn = self.ctx.http_conn().await?;
                conn.send(req).await?
            }
            PollingConn::KeepAlive => {
                if self.conn.as_ref().is_none_or(HttpConn::is_closed) {
                    self.conn = Some(self.ctx.http_conn().await?);
                    self.reused = false;
                }
                let conn = self.conn.as_mut().expect("connection just set");
                match conn.send_tracked(req).await {
                    Ok(res) => {
                        self.reused = true;
                        res
                    }
                    // A server may close an idle kept-alive connection just as a request is
                    // sent on it (e.g. while it drains): HTTP/1.1 cannot tell that race from a
                    // server that read the request and dropped it. Browsers resend the request,
                    // once, on a new connection when a *reused* connection closes before any
                    // byte of a response, whatever the method (Chromium:
                    // HttpNetworkTransaction::ShouldResendRequest), and Socket.IO's browser
                    // client relies on it for its POSTs; so does this client, to behave like the
                    // clients the cluster serves. A response cut short, or a failure on a fresh
                    // connection, is reported, not hidden.
                    Err(f) if self.reused && f.no_response => {
                        tracing::info!(
                            %method,
                            not_sent = f.not_sent,
                            "kept-alive connection closed before any response ({}); sending the request again on a new connection",
                            f.error
                        );
                        let req = self.ctx.request(method, uri, body)?;
                        let mut fresh = self.ctx.http_conn().await?;
                        self.reused = false;
                        let res = fresh.send(req).await?;
                        self.conn = Some(fresh);
                        self.reused = true;
                        res
                    }
                    Err(f) => return Err(f.error),
                }
            }
        };
        res.error_for_status()
    }
}

async fn get_loop(
    mut http: PollHttp,
    uri: Arc<str>,
    flags: Arc<PollFlags>,
    tx: mpsc::UnboundedSender<Inbound>,
) {
    while !flags.stop.load(Ordering::Acquire) {
        match http.send(Method::GET, &uri, Bytes::new()).await {
            Ok(res) => {
                let has_noop = std::str::from_utf8(&res.body)
                    .map(|t| split_payload(t).any(|p| p == "6"))
                    .unwrap_or(false);
                if tx.send(Inbound::Payload(res.body)).is_err() {
                    return;
                }
                if has_noop && flags.upgrading.load(Ordering::Acquire) {
                    break;
                }
            }
            Err(e) => {
                let _ = tx.send(Inbound::GetError(e));
                break;
            }
        }
    }
    let _ = tx.send(Inbound::GetStopped);
}

async fn post_loop(
    mut http: PollHttp,
    uri: Arc<str>,
    mut rx: mpsc::UnboundedReceiver<Vec<OutPacket>>,
    tx: mpsc::UnboundedSender<Inbound>,
    max_payload: usize,
) {
    let mut body = String::new();
    while let Some(mut packets) = rx.recv().await {
        // Batch everything queued meanwhile into as few POSTs as maxPayload allows.
        while let Ok(more) = rx.try_recv() {
            packets.extend(more);
        }
        for p in packets {
            let text = match p {
                OutPacket::Text(t) => t,
                OutPacket::Binary(b) => format!("b{}", packet::base64_encode(&b)),
            };
            if !body.is_empty()
                && max_payload > 0
                && body.len() + 1 + text.len() > max_payload
                && let Err(e) = post(&mut http, &uri, &mut body).await
            {
                let _ = tx.send(Inbound::PostError(e));
                return;
            }
            if !body.is_empty() {
                body.push(packet::RECORD_SEPARATOR);
            }
            body.push_str(&text);
        }
        if let Err(e) = post(&mut http, &uri, &mut body).await {
            let _ = tx.send(Inbound::PostError(e));
            return;
        }
    }
    let _ = tx.send(Inbound::PostStopped);
}

async fn post(http: &mut PollHttp, uri: &str, body: &mut String) -> Result<()> {
    let data = Bytes::from(std::mem::take(body).into_bytes());
    let res = http.send(Method::POST, uri, data).await?;
    if res.text() != "ok" {
        return Err(Error::Protocol(format!(
            "POST answered {:?} instead of \"ok\"",
            packet::truncate(&String::from_utf8_lossy(&res.body))
        )));
    }
    Ok(())
}

/// The polling transport: a GET task keeping a long-poll outstanding, and a POST task.
pub(crate) struct Polling {
    ctx: Arc<ConnCtx>,
    uri: Arc<str>,
    rx: mpsc::UnboundedReceiver<Inbound>,
    tx: mpsc::UnboundedSender<Inbound>,
    post_tx: Option<mpsc::UnboundedSender<Vec<OutPacket>>>,
    flags: Arc<PollFlags>,
    get_task: Option<JoinHandle<()>>,
    post_task: Option<JoinHandle<()>>,
    get_running: bool,
    post_running: bool,
}

impl Drop for Polling {
    fn drop(&mut self) {
        if let Some(t) = &self.get_task {
            t.abort();
        }
        if let Some(t) = &self.post_task {
            t.abort();
        }
    }
}

impl Polling {
    /// Starts the GET and POST tasks for session `sid`. `get_http` is the connection used
    /// for the handshake (reused for GETs in keep-alive mode).
    pub fn start(ctx: Arc<ConnCtx>, sid: &str, get_http: PollHttp, max_payload: usize) -> Self {
        let uri: Arc<str> = ctx.poll_uri(sid).into();
        let (tx, rx) = mpsc::unbounded_channel();
        let (post_tx, post_rx) = mpsc::unbounded_channel();
        let flags = Arc::new(PollFlags::default());
        let get_task = tokio::spawn(get_loop(get_http, uri.clone(), flags.clone(), tx.clone()));
        let post_task = tokio::spawn(post_loop(
            PollHttp::new(ctx.clone()),
            uri.clone(),
            post_rx,
            tx.clone(),
            max_payload,
        ));
        Polling {
            ctx,
            uri,
            rx,
            tx,
            post_tx: Some(post_tx),
            flags,
            get_task: Some(get_task),
            post_task: Some(post_task),
            get_running: true,
            post_running: true,
        }
    }

    /// After a failed upgrade: back to plain polling, with a GET outstanding again.
    fn resume_after_failed_upgrade(&mut self) {
        self.flags.upgrading.store(false, Ordering::Release);
        if self.get_running {
            return;
        }
        self.flags.stop.store(false, Ordering::Release);
        self.get_task = Some(tokio::spawn(get_loop(
            PollHttp::new(self.ctx.clone()),
            self.uri.clone(),
            self.flags.clone(),
            self.tx.clone(),
        )));
        self.get_running = true;
    }
}

pub(crate) enum Io {
    Ws(Box<WsStream>),
    Polling(Polling),
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<Box<WsStream>>> + Send>>;

enum Upgrade {
    Idle,
    /// Websocket opened, `2probe` sent, waiting for `3probe`.
    Probing(ProbeFuture),
    /// Probe done; waiting for the polling GET to return and the POSTs to drain.
    Pausing(Option<Box<WsStream>>),
}

async fn probe(ctx: Arc<ConnCtx>, sid: String) -> Result<Box<WsStream>> {
    let timeout = ctx.upgrade_timeout;
    let fut = async move {
        let mut ws = open_ws(&ctx, Some(&sid)).await?;
        ws.send(Message::text("2probe")).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "3probe" => return Ok(Box::new(ws)),
                Some(Ok(Message::Text(t))) => {
                    return Err(Error::Protocol(format!(
                        "upgrade: expected 3probe, got {:?}",
                        packet::truncate(t.as_str())
                    )));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => {
                    return Err(Error::Protocol(format!(
                        "upgrade: expected 3probe, got {m:?}"
                    )));
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(Error::Closed(
                        "websocket closed during the upgrade probe".into(),
                    ));
                }
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout("websocket upgrade probe".into()))?
}

/// Socket.IO level state: namespaces, pending acks/connects, binary reassembly.
struct Sio {
    auto_ack: Option<Value>,
    ev_tx: mpsc::UnboundedSender<Incoming>,
    acks: HashMap<u64, oneshot::Sender<Vec<Value>>>,
    pending_connects: HashMap<String, oneshot::Sender<Result<String>>>,
    connected: Vec<String>,
    partial: Option<(SioPacket, Vec<Bytes>)>,
}

impl Sio {
    fn on_message(&mut self, m: &str, out: &mut Vec<OutPacket>) -> Result<()> {
        if let Some((p, _)) = &self.partial {
            return Err(Error::Protocol(format!(
                "text packet received while {} binary attachment(s) were expected",
                p.attachments
            )));
        }
        let p = parse_sio_packet(m)?;
        if p.kind.is_binary() && p.attachments > 0 {
            let n = p.attachments;
            self.partial = Some((p, Vec::with_capacity(n)));
            return Ok(());
        }
        self.dispatch(p, &[], out)
    }

    fn on_binary(&mut self, data: Bytes, out: &mut Vec<OutPacket>) -> Result<()> {
        let Some((p, atts)) = &mut self.partial else {
            return Err(Error::Protocol(
                "unexpected binary attachment (no binary packet pending)".into(),
            ));
        };
        atts.push(data);
        if atts.len() < p.attachments {
            return Ok(());
        }
        let (p, atts) = self.partial.take().expect("checked above");
        self.dispatch(p, &atts, out)
    }

    fn dispatch(&mut self, p: SioPacket, atts: &[Bytes], out: &mut Vec<OutPacket>) -> Result<()> {
        let SioPacket {
            kind, ns, id, data, ..
        } = p;
        match kind {
            SioPacketType::Connect => {
                let sid = data
                    .as_ref()
                    .and_then(|d| d.get("sid"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Error::Protocol(format!("CONNECT reply for {ns} without a sid"))
                    })?;
                if !self.connected.contains(&ns) {
                    self.connected.push(ns.clone());
                }
                match self.pending_connects.remove(&ns) {
                    Some(tx) => {
                        let _ = tx.send(Ok(sid));
                    }
                    None => tracing::debug!(%ns, "unsolicited CONNECT reply"),
                }
            }
            SioPacketType::ConnectError => {
                let data = data.unwrap_or(Value::Null);
                match self.pending_connects.remove(&ns) {
                    Some(tx) => {
                        let _ = tx.send(Err(Error::ConnectError { ns, data }));
                    }
                    None => {
                        let _ = self.ev_tx.send(Incoming::ConnectError { ns, data });
                    }
                }
            }
            SioPacketType::Disconnect => {
                self.connected.retain(|n| *n != ns);
                let _ = self.ev_tx.send(Incoming::Disconnected { ns });
            }
            SioPacketType::Event | SioPacketType::BinaryEvent => {
                let mut data =
                    data.ok_or_else(|| Error::Protocol(format!("EVENT on {ns} without data")))?;
                if kind.is_binary() {
                    packet::reconstruct_binary(&mut data, atts)?;
                }
                let (name, args) = packet::split_event(data)?;
                if let (Some(id), Some(v)) = (id, &self.auto_ack) {
                    let (text, bins) = encode_ack(&ns, id, vec![v.clone()])?;
                    out.push(OutPacket::Text(text));
                    out.extend(bins.into_iter().map(OutPacket::Binary));
                }
                let _ = self.ev_tx.send(Incoming::Event(Event {
                    ns,
                    name,
                    args,
                    ack_id: id,
                    received_at: Instant::now(),
                }));
            }
            SioPacketType::Ack | SioPacketType::BinaryAck => {
                let id = id.ok_or_else(|| Error::Protocol(format!("ACK on {ns} without an id")))?;
                let mut data = data.unwrap_or_else(|| Value::Array(Vec::new()));
                if kind.is_binary() {
                    packet::reconstruct_binary(&mut data, atts)?;
                }
                let args = match data {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                match self.acks.remove(&id) {
                    Some(tx) => {
                        let _ = tx.send(args);
                    }
                    None => tracing::debug!(id, "ack for an unknown (or timed out) id"),
                }
            }
        }
        Ok(())
    }
}

enum Step {
    Ws(Option<std::result::Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Inbound(Option<Inbound>),
    Probe(Result<Box<WsStream>>),
    Cmd(Option<Cmd>),
    Timer,
}

/// Parameters to build a [`Driver`].
pub(crate) struct DriverInit {
    pub ctx: Arc<ConnCtx>,
    pub sid: String,
    pub shared: Arc<Shared>,
    pub cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    pub ev_tx: mpsc::UnboundedSender<Incoming>,
    pub io: Io,
    pub auto_ack: Option<Value>,
    pub idle_limit: Duration,
}

pub(crate) struct Driver {
    ctx: Arc<ConnCtx>,
    sid: String,
    shared: Arc<Shared>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    sio: Sio,
    out: Vec<OutPacket>,
    io: Io,
    upgrade: Upgrade,
    upgrade_waiters: Vec<oneshot::Sender<Result<()>>>,
    closing: Option<Vec<oneshot::Sender<()>>>,
    timer: Pin<Box<Sleep>>,
    last_rx: Instant,
    idle_limit: Duration,
}

async fn recv_io(io: &mut Io) -> Step {
    match io {
        Io::Ws(ws) => Step::Ws(ws.next().await),
        Io::Polling(p) => Step::Inbound(p.rx.recv().await),
    }
}

async fn wait_probe(up: &mut Upgrade) -> Result<Box<WsStream>> {
    match up {
        Upgrade::Probing(f) => f.as_mut().await,
        _ => std::future::pending().await,
    }
}

impl Driver {
    pub fn new(init: DriverInit) -> Self {
        let now = Instant::now();
        Driver {
            ctx: init.ctx,
            sid: init.sid,
            shared: init.shared,
            cmd_rx: init.cmd_rx,
            sio: Sio {
                auto_ack: init.auto_ack,
                ev_tx: init.ev_tx,
                acks: HashMap::new(),
                pending_connects: HashMap::new(),
                connected: Vec::new(),
                partial: None,
            },
            out: Vec::new(),
            io: init.io,
            upgrade: Upgrade::Idle,
            upgrade_waiters: Vec::new(),
            closing: None,
            timer: Box::pin(tokio::time::sleep_until((now + init.idle_limit).into())),
            last_rx: now,
            idle_limit: init.idle_limit,
        }
    }

    /// Runs until the connection ends; `initial` are packets that came with the handshake.
    pub async fn run(mut self, initial: Vec<String>) {
        let reason = match self.run_inner(initial).await {
            Ok(reason) => reason,
            Err(e) => e.to_string(),
        };
        self.finish(reason);
    }

    async fn run_inner(&mut self, initial: Vec<String>) -> Result<String> {
        for p in &initial {
            if let Some(reason) = self.on_text(p)? {
                return Ok(reason);
            }
        }
        self.flush().await?;
        loop {
            let step = tokio::select! {
                s = recv_io(&mut self.io) => s,
                r = wait_probe(&mut self.upgrade) => Step::Probe(r),
                c = self.cmd_rx.recv(), if self.closing.is_none() => Step::Cmd(c),
                () = self.timer.as_mut() => Step::Timer,
            };
            let res = match self.handle(step).await {
                Ok(None) => self.flush().await.map(|()| None),
                other => other,
            };
            match res {
                Ok(None) => {}
                Ok(Some(reason)) => return Ok(reason),
                Err(e) if self.closing.is_some() => {
                    tracing::trace!("error while closing: {e}");
                    return Ok(CLIENT_CLOSE.to_owned());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn end_reason(&self, what: impl FnOnce() -> String) -> Option<String> {
        Some(if self.closing.is_some() {
            CLIENT_CLOSE.to_owned()
        } else {
            what()
        })
    }

    async fn handle(&mut self, step: Step) -> Result<Option<String>> {
        match step {
            Step::Ws(Some(Ok(msg))) => {
                self.last_rx = Instant::now();
                match msg {
                    Message::Text(t) => return self.on_text(t.as_str()),
                    Message::Binary(b) => self.sio.on_binary(b, &mut self.out)?,
                    Message::Close(frame) => {
                        return Ok(self.end_reason(|| match frame {
                            Some(f) => format!(
                                "websocket closed by the server (code {}, {:?})",
                                f.code,
                                f.reason.as_str()
                            ),
                            None => "websocket closed by the server".to_owned(),
                        }));
                    }
                    _ => {}
                }
            }
            Step::Ws(None) => {
                return Ok(self.end_reason(|| "websocket connection closed by the server".into()));
            }
            Step::Ws(Some(Err(e))) => {
                return Ok(self.end_reason(|| Error::from(e).to_string()));
            }
            Step::Inbound(Some(inbound)) => return self.on_inbound(inbound).await,
            Step::Inbound(None) => {
                return Err(Error::Transport("polling tasks vanished".into()));
            }
            Step::Probe(Ok(ws)) => {
                self.upgrade = Upgrade::Pausing(Some(ws));
                if let Io::Polling(p) = &mut self.io {
                    // Pause polling: no new GET, let queued POSTs drain, then send `5`.
                    p.flags.stop.store(true, Ordering::Release);
                    if let Some(tx) = p.post_tx.take()
                        && !self.out.is_empty()
                    {
                        let _ = tx.send(std::mem::take(&mut self.out));
                    }
                }
                return self.progress().await;
            }
            Step::Probe(Err(e)) => {
                tracing::debug!(sid = %self.sid, "upgrade failed: {e}");
                self.upgrade = Upgrade::Idle;
                if let Io::Polling(p) = &mut self.io {
                    p.resume_after_failed_upgrade();
                }
                // The first waiter gets the error itself (e.g. `Error::Http` with the status),
                // any other one its description.
                let msg = format!("websocket upgrade failed: {e}");
                let mut first = Some(e);
                for w in self.upgrade_waiters.drain(..) {
                    let err = first
                        .take()
                        .unwrap_or_else(|| Error::Transport(msg.clone()));
                    let _ = w.send(Err(err));
                }
            }
            Step::Cmd(None) => return Ok(Some("client handle dropped".into())),
            Step::Cmd(Some(cmd)) => {
                if let Some(reason) = self.on_cmd(cmd)? {
                    return Ok(Some(reason));
                }
                // Batch whatever else is queued into the same flush.
                for _ in 0..256 {
                    if self.closing.is_some() {
                        break;
                    }
                    match self.cmd_rx.try_recv() {
                        Ok(cmd) => {
                            if let Some(reason) = self.on_cmd(cmd)? {
                                return Ok(Some(reason));
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            Step::Timer => {
                if self.closing.is_some() {
                    tracing::debug!(sid = %self.sid, "server did not close the transport in time");
                    return Ok(Some(CLIENT_CLOSE.into()));
                }
                let deadline = self.last_rx + self.idle_limit;
                if Instant::now() >= deadline {
                    return Ok(Some(format!(
                        "ping timeout: nothing received from the server for {:?}",
                        self.idle_limit
                    )));
                }
                self.timer.as_mut().reset(deadline.into());
            }
        }
        Ok(None)
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Result<Option<String>> {
        let Io::Polling(p) = &mut self.io else {
            return Ok(None);
        };
        match inbound {
            Inbound::Payload(body) => {
                self.last_rx = Instant::now();
                let text = std::str::from_utf8(&body)
                    .map_err(|_| Error::Protocol("polling payload is not valid UTF-8".into()))?;
                for pk in split_payload(text) {
                    if let Some(reason) = self.on_text(pk)? {
                        return Ok(Some(reason));
                    }
                }
                Ok(None)
            }
            Inbound::GetError(e) => {
                p.get_running = false;
                if self.closing.is_some() {
                    self.progress().await
                } else {
                    Err(e)
                }
            }
            Inbound::PostError(e) => {
                p.post_running = false;
                if self.closing.is_some() {
                    self.progress().await
                } else {
                    Err(e)
                }
            }
            Inbound::GetStopped => {
                p.get_running = false;
                self.progress().await
            }
            Inbound::PostStopped => {
                p.post_running = false;
                self.progress().await
            }
        }
    }

    /// Completes a pending close or upgrade once the polling tasks are idle.
    async fn progress(&mut self) -> Result<Option<String>> {
        let Io::Polling(p) = &self.io else {
            return Ok(None);
        };
        if p.get_running || p.post_running {
            return Ok(None);
        }
        if self.closing.is_some() {
            return Ok(Some(CLIENT_CLOSE.into()));
        }
        if let Upgrade::Pausing(ws) = &mut self.upgrade {
            let mut ws = ws.take().expect("pausing holds the websocket");
            self.upgrade = Upgrade::Idle;
            ws.send(Message::text("5")).await?;
            // Dropping the polling state ends its (idle) tasks and connections.
            self.io = Io::Ws(ws);
            self.shared.set_transport(Transport::WebSocket);
            tracing::debug!(sid = %self.sid, "upgraded to websocket");
            for w in self.upgrade_waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
        }
        Ok(None)
    }

    fn on_text(&mut self, text: &str) -> Result<Option<String>> {
        match parse_engine_packet(text)? {
            EnginePacket::Ping(data) => {
                let mut pong = String::with_capacity(1 + data.len());
                pong.push('3');
                pong.push_str(data);
                self.out.push(OutPacket::Text(pong));
            }
            EnginePacket::Message(m) => self.sio.on_message(m, &mut self.out)?,
            EnginePacket::Binary(b) => self.sio.on_binary(Bytes::from(b), &mut self.out)?,
            EnginePacket::Close => {
                return Ok(self.end_reason(|| {
                    "the server closed the session (engine.io close packet)".into()
                }));
            }
            EnginePacket::Pong(_) | EnginePacket::Noop | EnginePacket::Upgrade => {}
            EnginePacket::Open(_) => tracing::debug!("ignoring unexpected open packet"),
        }
        Ok(None)
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Result<Option<String>> {
        match cmd {
            Cmd::Send {
                text,
                attachments,
                ack,
            } => {
                if let Some((id, tx)) = ack {
                    self.sio.acks.insert(id, tx);
                }
                self.out.push(OutPacket::Text(text));
                self.out
                    .extend(attachments.into_iter().map(OutPacket::Binary));
            }
            Cmd::CancelAck(id) => {
                self.sio.acks.remove(&id);
            }
            Cmd::Connect { ns, text, reply } => {
                self.sio.pending_connects.insert(ns, reply);
                self.out.push(OutPacket::Text(text));
            }
            Cmd::DisconnectNs(ns) => {
                self.sio.connected.retain(|n| *n != ns);
                self.out
                    .push(OutPacket::Text(packet::encode_disconnect(&ns)));
            }
            Cmd::Upgrade(reply) => self.start_upgrade(reply),
            Cmd::Close(reply) => return Ok(self.start_close(reply)),
        }
        Ok(None)
    }

    fn start_upgrade(&mut self, reply: oneshot::Sender<Result<()>>) {
        let Io::Polling(p) = &mut self.io else {
            let _ = reply.send(Ok(()));
            return;
        };
        self.upgrade_waiters.push(reply);
        if matches!(self.upgrade, Upgrade::Idle) {
            p.flags.upgrading.store(true, Ordering::Release);
            self.upgrade = Upgrade::Probing(Box::pin(probe(self.ctx.clone(), self.sid.clone())));
        }
    }

    fn start_close(&mut self, reply: oneshot::Sender<()>) -> Option<String> {
        self.closing = Some(vec![reply]);
        let was_pausing = matches!(self.upgrade, Upgrade::Pausing(_));
        self.upgrade = Upgrade::Idle;
        for w in self.upgrade_waiters.drain(..) {
            let _ = w.send(Err(Error::Closed(CLIENT_CLOSE.into())));
        }
        if was_pausing {
            // Polling is already paused and the websocket not yet in use: nothing left to
            // send the close packets on, just drop everything.
            return Some(CLIENT_CLOSE.into());
        }
        for ns in &self.sio.connected {
            self.out
                .push(OutPacket::Text(packet::encode_disconnect(ns)));
        }
        self.out.push(OutPacket::Text("1".into()));
        if let Io::Polling(p) = &mut self.io {
            p.flags.stop.store(true, Ordering::Release);
            if let Some(tx) = p.post_tx.take() {
                let _ = tx.send(std::mem::take(&mut self.out));
            }
        }
        self.timer
            .as_mut()
            .reset((Instant::now() + CLOSE_TIMEOUT).into());
        None
    }

    async fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        match &mut self.io {
            Io::Ws(ws) => {
                for p in self.out.drain(..) {
                    let msg = match p {
                        OutPacket::Text(t) => Message::text(t),
                        OutPacket::Binary(b) => Message::binary(b),
                    };
                    ws.feed(msg).await?;
                }
                ws.flush().await?;
            }
            Io::Polling(p) => {
                // While an upgrade pauses polling there is no POST sender: keep the packets
                // for the websocket.
                if let Some(tx) = &p.post_tx {
                    let _ = tx.send(std::mem::take(&mut self.out));
                }
            }
        }
        Ok(())
    }

    fn finish(mut self, reason: String) {
        tracing::debug!(sid = %self.sid, %reason, "connection ended");
        *self
            .shared
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        self.shared.connected.store(false, Ordering::Release);
        self.cmd_rx.close();
        for (_, tx) in self.sio.pending_connects.drain() {
            let _ = tx.send(Err(Error::Closed(reason.clone())));
        }
        for w in self.upgrade_waiters.drain(..) {
            let _ = w.send(Err(Error::Closed(reason.clone())));
        }
        self.sio.acks.clear();
        let _ = self.sio.ev_tx.send(Incoming::Closed { reason });
        if let Some(replies) = self.closing.take() {
            for r in replies {
                let _ = r.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// What the test server does with the second request on the first connection.
    #[derive(Clone, Copy)]
    enum Second {
        /// Reads it, then closes without a byte of response.
        CloseUnanswered,
        /// Starts a response, then closes.
        CutResponse,
    }

    /// Reads one request (head and `content-length` body); false on EOF.
    async fn read_request(s: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    return true;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A server whose first connection answers one request, then fails the second as told;
    /// later connections answer everything. Returns its address and the count of requests
    /// answered on later connections (the client's retries).
    async fn server(second: Second) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let retried = Arc::new(AtomicUsize::new(0));
        let counter = retried.clone();
        tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut first).await);
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            assert!(read_request(&mut first).await);
            if let Second::CutResponse = second {
                first
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-le")
                    .await
                    .unwrap();
            }
            drop(first);
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    while read_request(&mut s).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok2")
                            .await;
                    }
                });
            }
        });
        (addr, retried)
    }

    fn poll_http(addr: SocketAddr) -> PollHttp {
        PollHttp::new(Arc::new(ConnCtx {
            addr,
            path: "/socket.io/".into(),
            query: String::new(),
            headers: Vec::new(),
            host: HeaderValue::from_str(&addr.to_string()).unwrap(),
            polling_conn: PollingConn::KeepAlive,
            upgrade_timeout: Duration::from_secs(5),
            conn: ConnectOptions::default(),
            first_peer_cert: OnceLock::new(),
        }))
    }

    async fn second_request(method: Method, second: Second) -> (Result<String>, usize) {
        let (addr, retried) = server(second).await;
        let mut http = poll_http(addr);
        let is_post = method == Method::POST;
        let body = || {
            if is_post {
                Bytes::from_static(b"40")
            } else {
                Bytes::new()
            }
        };
        let first = http
            .send(method.clone(), "/socket.io/", body())
            .await
            .unwrap();
        assert_eq!(first.text(), "ok");
        let res = http
            .send(method, "/socket.io/", body())
            .await
            .map(|r| r.text().to_owned());
        (res, retried.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn unanswered_get_on_a_reused_connection_is_sent_again() {
        let (res, retried) = second_request(Method::GET, Second::CloseUnanswered).await;
        assert_eq!(res.unwrap(), "ok2");
        assert_eq!(retried, 1);
    }

    #[tokio::test]
    async fn unanswered_post_on_a_reused_connection_is_sent_again_as_browsers_do() {
        let (res, retried) = second_request(Method::POST, Second::CloseUnanswered).await;
        assert_eq!(res.unwrap(), "ok2");
        assert_eq!(retried, 1);
    }

    #[tokio::test]
    async fn a_cut_response_is_not_hidden_by_a_retry() {
        let (res, retried) = second_request(Method::GET, Second::CutResponse).await;
        assert!(res.is_err(), "{res:?}");
        assert_eq!(retried, 0);
    }
}
