//! `sio-client`: a small async Socket.IO v5 / Engine.IO v4 client.
//!
//! It talks to real servers over real TCP, optionally through TLS (rustls) and after a preamble
//! such as a PROXY protocol header, and is used by the integration tests to drive a server, and
//! by the load generator to open thousands of connections and measure latency.
//!
//! * Transports: websocket only, HTTP long-polling only, or polling then upgrade to websocket
//!   (see [`Transport`]); polling over a fresh TCP connection per request or over kept-alive
//!   connections (see [`PollingConn`]).
//! * Namespaces with auth payloads, events, acks in both directions (with per-request timeouts),
//!   automatic acks ([`ClientConfig::auto_ack`]), binary attachments (see below).
//! * One tokio task per connection owns the transport: pings are answered, packets are written
//!   in the order they were queued and events are delivered in arrival order through an
//!   unbounded channel, so a slow reader never makes the server think the client is dead.
//!   In polling mode a GET long-poll is always outstanding, emits go out as (batched) POSTs.
//! * Dropping a [`Client`] aborts its task and closes its sockets at once;
//!   [`Client::disconnect`] closes cleanly. An [`Emitter`] emits from other tasks.
//! * [`raw`] gives byte-level HTTP access (one keep-alive connection for many requests).
//! * The door in front of the server: TLS on every connection ([`ClientConfig::tls`],
//!   [`TlsConfig`]), bytes written first on every TCP connection, e.g. a PROXY protocol header
//!   ([`ClientConfig::preamble`]), extra headers on every request of every transport, e.g.
//!   `X-Forwarded-For` or `Cookie` ([`ClientConfig::header`]).
//!
//! # Limits
//!
//! No automatic reconnection (a closed client stays closed), JSON parser only (no msgpack),
//! HTTP/1.1 only (TLS offers ALPN `http/1.1`), no client certificates unless given through
//! [`TlsConfig::from_rustls`]. Ack ids are per client, counting from 0.
//!
//! # A server-side race to know about
//!
//! socketioxide sends the namespace CONNECT reply *before* it runs the (spawned, async) connect
//! handler. An event emitted right after [`Client::connect`] returns can therefore reach the
//! server before the handler has registered its `socket.on(..)` listeners, and be dropped.
//! Tests should wait for something the connect handler emits last (e.g. a "welcome" event)
//! before emitting. Likewise socketioxide runs each incoming event in its own task: on a
//! multi-threaded runtime server handlers may observe events out of order even though this
//! client sends them in order.
//!
//! # Binary values
//!
//! Binary attachments are represented in JSON as `{"$binary": "<standard padded base64>"}`
//! (build one with [`binary`], read one with [`as_binary`]). Received binary events/acks come with
//! every placeholder replaced by such an object; any such object found in the arguments of
//! [`Client::emit`], [`Client::emit_with_ack`] or [`Client::ack`] is sent as a real binary
//! attachment (websocket binary frame, or `b<base64>` polling packet). See [`packet`].
//!
//! # Example
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) -> Result<(), sio_client::Error> {
//! use std::time::Duration;
//! use serde_json::json;
//! use sio_client::{Client, ClientConfig, Transport};
//!
//! let cfg = ClientConfig::new(addr, Transport::PollingThenUpgrade)
//!     .namespace("/admin", Some(json!({"token": "secret"})))
//!     .auto_ack(json!("yes"));
//! let mut client = Client::connect(cfg).await?;
//! client.emit("/", "hello", vec![json!("world")]).await?;
//! let reply = client
//!     .emit_with_ack("/admin", "ping", vec![], Duration::from_secs(5))
//!     .await?;
//! let ev = client.next_event(Duration::from_secs(5)).await?;
//! println!("{} {:?} {:?}", ev.name, ev.args, reply);
//! client.disconnect().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod driver;
mod error;
mod net;
pub mod packet;
pub mod raw;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, header};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use driver::{Cmd, ConnCtx, Driver, DriverInit, Io, PollHttp, Polling, Shared};
pub use error::{Error, Result};
pub use packet::{Handshake, as_binary, binary};
pub use tls::TlsConfig;

/// Which Engine.IO transport(s) to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Connect with a websocket directly (`transport=websocket`, no polling at all).
    WebSocket,
    /// Handshake and start over HTTP long-polling, then upgrade to websocket
    /// (`2probe`/`3probe`/`5`), like the browser client does. [`Client::connect`] returns once
    /// the upgrade has completed.
    PollingThenUpgrade,
    /// HTTP long-polling only (it can still be upgraded later with [`Client::upgrade`]).
    Polling,
}

/// How polling HTTP requests map to TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PollingConn {
    /// A new TCP connection for every HTTP request, closed after the response.
    Fresh,
    /// One persistent (keep-alive) connection for the GETs and another one for the POSTs,
    /// like a browser. A connection closed by the server is reopened for the next request.
    #[default]
    KeepAlive,
}

/// Connection settings for [`Client::connect`]. Build with [`ClientConfig::new`] and the
/// builder-style setters; all fields are public too.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server address. Only ever point this at a local test server.
    pub addr: SocketAddr,
    /// Engine.IO path, default `"/socket.io/"`.
    pub path: String,
    /// Transport(s) to use.
    pub transport: Transport,
    /// TCP connection usage of the polling transport (default [`PollingConn::KeepAlive`]).
    pub polling_conn: PollingConn,
    /// Namespaces to connect during [`Client::connect`], each with an optional auth payload.
    /// Default: `[("/", None)]`. An empty list connects no namespace.
    pub namespaces: Vec<(String, Option<Value>)>,
    /// If set, every server event that requests an ack is answered at once with `[auto_ack]`
    /// (the event is still delivered, with its `ack_id`).
    pub auto_ack: Option<Value>,
    /// Deadline for the whole of [`Client::connect`] (handshake, namespace connects, upgrade);
    /// also bounds later [`Client::upgrade`] probes. Default 10 s.
    pub connect_timeout: Duration,
    /// Extra query parameters added to every request (percent-encoded by the client).
    pub extra_query: Vec<(String, String)>,
    /// Extra HTTP headers sent with every request: the polling handshake, every polling GET
    /// and POST, every websocket request (websocket-only and upgrade). E.g. `Cookie`, or
    /// `X-Forwarded-For` to test a trusted proxy. A `Host` given here replaces the default
    /// one (the server address).
    pub headers: Vec<(String, String)>,
    /// TLS for every connection (websocket = `wss`, polling = `https`); `None` = plain TCP.
    pub tls: Option<TlsConfig>,
    /// Bytes written first on every new TCP connection, before TLS or HTTP (see
    /// [`ClientConfig::preamble`]); `None` sends nothing.
    pub preamble: Option<Bytes>,
}

impl ClientConfig {
    /// Defaults for `addr` with `transport`: path `/socket.io/`, keep-alive polling,
    /// namespace `/` without auth, no auto-ack, 10 s connect timeout.
    pub fn new(addr: SocketAddr, transport: Transport) -> Self {
        ClientConfig {
            addr,
            path: "/socket.io/".to_owned(),
            transport,
            polling_conn: PollingConn::KeepAlive,
            namespaces: vec![("/".to_owned(), None)],
            auto_ack: None,
            connect_timeout: Duration::from_secs(10),
            extra_query: Vec::new(),
            headers: Vec::new(),
            tls: None,
            preamble: None,
        }
    }

    /// Sets the Engine.IO path (e.g. `"/socket.io/"`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets the transport.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Sets how polling requests use TCP connections.
    pub fn polling_conn(mut self, polling_conn: PollingConn) -> Self {
        self.polling_conn = polling_conn;
        self
    }

    /// Replaces the list of namespaces to connect (e.g. `vec![]` to connect none).
    pub fn namespaces(mut self, namespaces: Vec<(String, Option<Value>)>) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// Adds a namespace to connect, or sets the auth of one already listed
    /// (`"/"` is listed by default).
    pub fn namespace(mut self, ns: &str, auth: Option<Value>) -> Self {
        let ns = packet::normalize_ns(ns);
        match self
            .namespaces
            .iter_mut()
            .find(|(n, _)| packet::normalize_ns(n) == ns)
        {
            Some(entry) => entry.1 = auth,
            None => self.namespaces.push((ns, auth)),
        }
        self
    }

    /// Sets the auth payload of the main namespace `/`.
    pub fn auth(self, auth: Value) -> Self {
        self.namespace("/", Some(auth))
    }

    /// Answers every server event that requests an ack with `[value]`.
    pub fn auto_ack(mut self, value: Value) -> Self {
        self.auto_ack = Some(value);
        self
    }

    /// Sets the connect (and upgrade) timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Adds a query parameter to every request.
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_query.push((key.into(), value.into()));
        self
    }

    /// Adds an HTTP header to every request of every transport: polling handshake, GETs and
    /// POSTs, websocket requests. Adding the same name twice sends both values (as two header
    /// lines); a `Host` header replaces the default one.
    ///
    /// ```no_run
    /// # fn demo(addr: std::net::SocketAddr) {
    /// use sio_client::{ClientConfig, Transport};
    /// let cfg = ClientConfig::new(addr, Transport::PollingThenUpgrade)
    ///     .header("X-Forwarded-For", "203.0.113.7")
    ///     .header("Cookie", "session=abc");
    /// # }
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Runs every connection through TLS: websocket becomes `wss`, polling `https`, and a
    /// polling-then-upgrade client upgrades to `wss`. A failed handshake makes
    /// [`Client::connect`] fail with [`Error::Tls`] (saying, e.g., that the certificate is not
    /// trusted).
    ///
    /// ```no_run
    /// # async fn demo(addr: std::net::SocketAddr, ca_pem: &[u8]) -> Result<(), sio_client::Error> {
    /// use sio_client::{Client, ClientConfig, TlsConfig, Transport};
    /// let tls = TlsConfig::trusting_pem(ca_pem)?.server_name("localhost");
    /// let client = Client::connect(ClientConfig::new(addr, Transport::Polling).tls(tls)).await?;
    /// assert!(client.peer_certificate_der().is_some());
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Writes `bytes` on the raw TCP stream right after connecting, before TLS or HTTP, on
    /// every new TCP connection the client opens (a polling client opens several: handshake
    /// and GETs, POSTs, the websocket of an upgrade, reconnections of kept-alive
    /// connections). This is how a load balancer sends a PROXY protocol header; the bytes
    /// are sent as given.
    ///
    /// ```no_run
    /// # fn demo(addr: std::net::SocketAddr) {
    /// use sio_client::{ClientConfig, Transport};
    /// let cfg = ClientConfig::new(addr, Transport::WebSocket)
    ///     .preamble("PROXY TCP4 203.0.113.7 127.0.0.1 51000 3000\r\n");
    /// # }
    /// ```
    pub fn preamble(mut self, bytes: impl Into<Bytes>) -> Self {
        self.preamble = Some(bytes.into());
        self
    }
}

/// An event received from the server.
#[derive(Debug, Clone)]
pub struct Event {
    /// Namespace, with a leading `/`.
    pub ns: String,
    /// Event name.
    pub name: String,
    /// Arguments (binary attachments as `{"$binary": "<base64>"}`).
    pub args: Vec<Value>,
    /// Set when the server asked for an ack: answer with [`Client::ack`] (unless
    /// [`ClientConfig::auto_ack`] already did).
    pub ack_id: Option<u64>,
    /// When the client task decoded the packet (for latency measurements).
    pub received_at: Instant,
}

/// Everything the server can push to the client, in arrival order.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// An event.
    Event(Event),
    /// The server disconnected the client from a namespace (`41`).
    Disconnected {
        /// The namespace.
        ns: String,
    },
    /// A CONNECT_ERROR that did not answer a pending namespace connect.
    ConnectError {
        /// The namespace.
        ns: String,
        /// The server's payload, usually `{"message": "..."}`.
        data: Value,
    },
    /// The connection is closed; always the last message.
    Closed {
        /// Why (server close packet, transport error, ping timeout, client disconnect, ...).
        reason: String,
    },
}

/// A connected Socket.IO client. See the [crate docs](crate).
///
/// Dropping it aborts its task and closes its TCP connections immediately (queued emits may be
/// lost); use [`Client::disconnect`] for a clean close.
#[derive(Debug)]
pub struct Client {
    emitter: Emitter,
    ev_rx: mpsc::UnboundedReceiver<Incoming>,
    peeked: Option<Incoming>,
    shared: Arc<Shared>,
    handshake: Handshake,
    socket_ids: HashMap<String, String>,
    upgrade_timeout: Duration,
    peer_cert: Option<Vec<u8>>,
    task: JoinHandle<()>,
}

/// A cloneable, `Send` handle to emit and ack on a [`Client`]'s connection from other tasks
/// (e.g. one task emitting at a fixed rate while another reads events). Get one with
/// [`Client::emitter`]. It does not keep the connection alive: once the [`Client`] is dropped
/// or disconnected, its methods fail with [`Error::Closed`].
#[derive(Debug, Clone)]
pub struct Emitter {
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    next_ack: Arc<AtomicU64>,
}

impl Emitter {
    fn send_cmd(&self, cmd: Cmd) -> Result<()> {
        if !self.is_connected() {
            return Err(self.shared.closed_error());
        }
        self.cmd_tx
            .send(cmd)
            .map_err(|_| self.shared.closed_error())
    }

    /// Emits `event` with `args` on namespace `ns`. Returns once the packet is queued for the
    /// connection task (packets are written in queue order); fails with [`Error::Closed`] if
    /// the connection has ended.
    pub async fn emit(&self, ns: &str, event: &str, args: Vec<Value>) -> Result<()> {
        let (text, attachments) = packet::encode_event(ns, event, args, None)?;
        self.send_cmd(Cmd::Send {
            text,
            attachments,
            ack: None,
        })
    }

    /// Emits `event` requesting an ack and waits up to `timeout` for it; returns the ack
    /// arguments. Fails with [`Error::Timeout`] or [`Error::Closed`].
    pub async fn emit_with_ack(
        &self,
        ns: &str,
        event: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (text, attachments) = packet::encode_event(ns, event, args, Some(id))?;
        let (tx, rx) = oneshot::channel();
        self.send_cmd(Cmd::Send {
            text,
            attachments,
            ack: Some((id, tx)),
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(args)) => Ok(args),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Err(_) => {
                let _ = self.cmd_tx.send(Cmd::CancelAck(id));
                Err(Error::Timeout(format!(
                    "no ack for {event:?} on {} within {timeout:?}",
                    packet::normalize_ns(ns)
                )))
            }
        }
    }

    /// Answers a server event's ack request (`Event::ack_id`) with `args`.
    pub async fn ack(&self, ns: &str, ack_id: u64, args: Vec<Value>) -> Result<()> {
        let (text, attachments) = packet::encode_ack(ns, ack_id, args)?;
        self.send_cmd(Cmd::Send {
            text,
            attachments,
            ack: None,
        })
    }

    /// Sends a raw Engine.IO text packet as is (e.g. `"42[\"x\"]"`, or something malformed).
    pub async fn send_raw(&self, packet: impl Into<String>) -> Result<()> {
        self.send_cmd(Cmd::Send {
            text: packet.into(),
            attachments: Vec::new(),
            ack: None,
        })
    }

    /// False once the connection has ended.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

fn encode_query(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl Client {
    /// Connects: Engine.IO handshake, CONNECT of every configured namespace (waiting for each
    /// reply) and, for [`Transport::PollingThenUpgrade`], the websocket upgrade. All of it must
    /// finish within [`ClientConfig::connect_timeout`].
    ///
    /// Fails with [`Error::Http`] (status + body) if a polling request or the websocket
    /// request is refused, [`Error::ConnectError`] if a namespace refuses the connection,
    /// [`Error::Timeout`] past the deadline, [`Error::Io`] if the TCP connect fails,
    /// [`Error::Tls`] if a TLS handshake fails (e.g. an untrusted server certificate).
    pub async fn connect(cfg: ClientConfig) -> Result<Client> {
        let timeout = cfg.connect_timeout;
        let addr = cfg.addr;
        tokio::time::timeout(timeout, Self::connect_inner(cfg))
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {addr} ({timeout:?})")))?
    }

    async fn connect_inner(cfg: ClientConfig) -> Result<Client> {
        let mut query = String::new();
        for (k, v) in &cfg.extra_query {
            query.push('&');
            encode_query(k, &mut query);
            query.push('=');
            encode_query(v, &mut query);
        }
        let mut headers = Vec::with_capacity(cfg.headers.len());
        let mut host = None;
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| Error::InvalidArgument(format!("header name {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| Error::InvalidArgument(format!("header value {v:?}: {e}")))?;
            if name == header::HOST {
                host = Some(value);
            } else {
                headers.push((name, value));
            }
        }
        let host = match host {
            Some(h) => h,
            None => HeaderValue::from_str(&cfg.addr.to_string())
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
        };
        let ctx = Arc::new(ConnCtx {
            addr: cfg.addr,
            path: cfg.path.clone(),
            query,
            headers,
            host,
            polling_conn: cfg.polling_conn,
            upgrade_timeout: cfg.connect_timeout,
            conn: raw::ConnectOptions {
                tls: cfg.tls.clone(),
                preamble: cfg.preamble.clone(),
            },
            first_peer_cert: OnceLock::new(),
        });

        let (io, handshake, initial) = match cfg.transport {
            Transport::WebSocket => {
                let mut ws = driver::open_ws(&ctx, None).await?;
                let open = driver::read_first_text(&mut ws).await?;
                let hs = packet::parse_open_packet(&open)?;
                (Io::Ws(Box::new(ws)), hs, Vec::new())
            }
            Transport::Polling | Transport::PollingThenUpgrade => {
                let mut http = PollHttp::new(ctx.clone());
                let res = http
                    .send(Method::GET, &ctx.handshake_uri(), Bytes::new())
                    .await?;
                let text = std::str::from_utf8(&res.body)
                    .map_err(|_| Error::Protocol("handshake response is not valid UTF-8".into()))?;
                let mut packets = packet::split_payload(text);
                let first = packets
                    .next()
                    .ok_or_else(|| Error::Protocol("empty handshake response".into()))?;
                let hs = packet::parse_open_packet(first)?;
                let rest: Vec<String> = packets.map(str::to_owned).collect();
                let max_payload = usize::try_from(hs.max_payload).unwrap_or(usize::MAX);
                let polling = Polling::start(ctx.clone(), &hs.sid, http, max_payload);
                (Io::Polling(polling), hs, rest)
            }
        };

        let peer_cert = ctx.first_peer_cert.get().cloned();
        let shared = Arc::new(Shared::new(cfg.transport));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let idle_limit = Duration::from_millis(handshake.ping_interval + handshake.ping_timeout);
        let driver = Driver::new(DriverInit {
            ctx,
            sid: handshake.sid.clone(),
            shared: shared.clone(),
            cmd_rx,
            ev_tx,
            io,
            auto_ack: cfg.auto_ack.clone(),
            idle_limit,
        });
        let task = tokio::spawn(driver.run(initial));
        let mut client = Client {
            emitter: Emitter {
                cmd_tx,
                shared: shared.clone(),
                next_ack: Arc::new(AtomicU64::new(0)),
            },
            ev_rx,
            peeked: None,
            shared,
            handshake,
            socket_ids: HashMap::new(),
            upgrade_timeout: cfg.connect_timeout,
            peer_cert,
            task,
        };

        let mut pending = Vec::with_capacity(cfg.namespaces.len());
        for (ns, auth) in &cfg.namespaces {
            let ns = packet::normalize_ns(ns);
            let rx = client.request_connect(&ns, auth.as_ref())?;
            pending.push((ns, rx));
        }
        let upgrade = if cfg.transport == Transport::PollingThenUpgrade {
            Some(client.request_upgrade()?)
        } else {
            None
        };
        for (ns, rx) in pending {
            let sid = rx.await.map_err(|_| client.shared.closed_error())??;
            client.socket_ids.insert(ns, sid);
        }
        if let Some(rx) = upgrade {
            rx.await.map_err(|_| client.shared.closed_error())??;
        }
        Ok(client)
    }

    fn send_cmd(&self, cmd: Cmd) -> Result<()> {
        self.emitter.send_cmd(cmd)
    }

    fn request_connect(
        &self,
        ns: &str,
        auth: Option<&Value>,
    ) -> Result<oneshot::Receiver<Result<String>>> {
        let (tx, rx) = oneshot::channel();
        self.send_cmd(Cmd::Connect {
            ns: ns.to_owned(),
            text: packet::encode_connect(ns, auth),
            reply: tx,
        })?;
        Ok(rx)
    }

    fn request_upgrade(&self) -> Result<oneshot::Receiver<Result<()>>> {
        let (tx, rx) = oneshot::channel();
        self.send_cmd(Cmd::Upgrade(tx))?;
        Ok(rx)
    }

    /// A cloneable handle to emit/ack on this connection from other tasks.
    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    /// The Engine.IO session id.
    pub fn sid(&self) -> &str {
        &self.handshake.sid
    }

    /// Over TLS, the DER encoding of the certificate the server presented on the client's
    /// first connection (the one that carried the Engine.IO handshake): the first of its
    /// chain, i.e. the server's own. `None` without TLS. Later connections (polling requests,
    /// the upgrade's websocket) are verified the same way but not recorded.
    pub fn peer_certificate_der(&self) -> Option<Vec<u8>> {
        self.peer_cert.clone()
    }

    /// The full Engine.IO handshake (ping interval/timeout, max payload, upgrades).
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// The Socket.IO socket id the server gave for namespace `ns` (`"/admin"` or `"admin"`).
    pub fn socket_id(&self, ns: &str) -> Option<&str> {
        self.socket_ids
            .get(&packet::normalize_ns(ns))
            .map(String::as_str)
    }

    /// The transport in use now: [`Transport::WebSocket`] or [`Transport::Polling`]
    /// (a `PollingThenUpgrade` client reports `WebSocket` once upgraded).
    pub fn transport(&self) -> Transport {
        self.shared.transport()
    }

    /// False once the connection has ended (server close, error, ping timeout, disconnect).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.shared.close_reason()
    }

    /// Emits `event` with `args` on namespace `ns`. Returns once the packet is queued for the
    /// connection task (packets are written in queue order); fails with [`Error::Closed`] if
    /// the connection has ended.
    pub async fn emit(&self, ns: &str, event: &str, args: Vec<Value>) -> Result<()> {
        self.emitter.emit(ns, event, args).await
    }

    /// Emits `event` requesting an ack and waits up to `timeout` for it; returns the ack
    /// arguments. Fails with [`Error::Timeout`] or [`Error::Closed`].
    pub async fn emit_with_ack(
        &self,
        ns: &str,
        event: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        self.emitter.emit_with_ack(ns, event, args, timeout).await
    }

    /// Answers a server event's ack request (`Event::ack_id`) with `args`.
    pub async fn ack(&self, ns: &str, ack_id: u64, args: Vec<Value>) -> Result<()> {
        self.emitter.ack(ns, ack_id, args).await
    }

    /// Sends a raw Engine.IO text packet as is (e.g. `"42[\"x\"]"`, or something malformed).
    pub async fn send_raw(&self, packet: impl Into<String>) -> Result<()> {
        self.emitter.send_raw(packet).await
    }

    /// Connects one more namespace (optionally with auth) and returns its socket id.
    pub async fn connect_namespace(
        &mut self,
        ns: &str,
        auth: Option<Value>,
        timeout: Duration,
    ) -> Result<String> {
        let ns = packet::normalize_ns(ns);
        let rx = self.request_connect(&ns, auth.as_ref())?;
        let sid = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(res)) => res?,
            Ok(Err(_)) => return Err(self.shared.closed_error()),
            Err(_) => return Err(Error::Timeout(format!("connecting namespace {ns}"))),
        };
        self.socket_ids.insert(ns, sid.clone());
        Ok(sid)
    }

    /// Leaves namespace `ns` (sends a DISCONNECT packet); the transport stays open.
    pub async fn disconnect_namespace(&mut self, ns: &str) -> Result<()> {
        let ns = packet::normalize_ns(ns);
        self.socket_ids.remove(&ns);
        self.send_cmd(Cmd::DisconnectNs(ns))
    }

    /// Upgrades a polling connection to websocket (no-op on a websocket); returns once done.
    /// Bounded by [`ClientConfig::connect_timeout`].
    pub async fn upgrade(&self) -> Result<()> {
        let rx = self.request_upgrade()?;
        match tokio::time::timeout(self.upgrade_timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Err(_) => Err(Error::Timeout("websocket upgrade".into())),
        }
    }

    /// The next message from the server (event, namespace disconnect, connect error or close),
    /// waiting up to `timeout`. After [`Incoming::Closed`] it fails with [`Error::Closed`].
    pub async fn next_message(&mut self, timeout: Duration) -> Result<Incoming> {
        if let Some(m) = self.peeked.take() {
            return Ok(m);
        }
        match tokio::time::timeout(timeout, self.ev_rx.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(self.shared.closed_error()),
            Err(_) => Err(Error::Timeout(format!("no message within {timeout:?}"))),
        }
    }

    /// The next message if one is already there.
    pub fn try_next_message(&mut self) -> Option<Incoming> {
        self.peeked.take().or_else(|| self.ev_rx.try_recv().ok())
    }

    /// The next event, waiting up to `timeout`. Other messages surface as errors, in order:
    /// a namespace disconnect as [`Error::Disconnected`], an unsolicited connect error as
    /// [`Error::ConnectError`], the end of the connection as [`Error::Closed`] (with the reason).
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        match self.next_message(timeout).await? {
            Incoming::Event(e) => Ok(e),
            Incoming::Disconnected { ns } => Err(Error::Disconnected { ns }),
            Incoming::ConnectError { ns, data } => Err(Error::ConnectError { ns, data }),
            Incoming::Closed { reason } => Err(Error::Closed(reason)),
        }
    }

    /// The next event if one is already there. If the next message is not an event it is kept
    /// (for [`Client::next_message`] / [`Client::next_event`]) and `None` is returned.
    pub fn try_next_event(&mut self) -> Option<Event> {
        match self.try_next_message()? {
            Incoming::Event(e) => Some(e),
            other => {
                self.peeked = Some(other);
                None
            }
        }
    }

    /// Waits up to `timeout` (in total) for an event named `name` on any namespace,
    /// **discarding** the events with other names received meanwhile. Non-event messages end
    /// the wait with the same errors as [`Client::next_event`].
    pub async fn next_event_named(&mut self, name: &str, timeout: Duration) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(e) if e.name == name => return Ok(e),
                Ok(_) => continue,
                Err(Error::Timeout(_)) => {
                    return Err(Error::Timeout(format!(
                        "no event {name:?} within {timeout:?}"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes cleanly: a DISCONNECT for every connected namespace, then an Engine.IO close
    /// packet, then waits (up to 3 s) for the server to close the transport. Returns `Ok` if
    /// the connection had already ended.
    pub async fn disconnect(self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.emitter.cmd_tx.send(Cmd::Close(tx)).is_err() {
            return Ok(());
        }
        match tokio::time::timeout(driver::CLOSE_TIMEOUT + Duration::from_secs(2), rx).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Timeout("disconnect".into())),
        }
    }
}
