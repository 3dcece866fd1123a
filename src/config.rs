//! The cluster's command line and environment: every app built on `sio-cluster` gets these flags.
//!
//! Each flag has an environment variable (`SIO_*`) so the same binary is configured from a
//! systemd unit's `Environment=` lines or from the command line. Workers are re-executed with
//! the primary's arguments and environment, so they parse the very same configuration; with
//! `--config-file` the primary adds that file's variables, read again on every reload
//! (README, "Config file").

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How the primary picks a worker for a connection that carries no known session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Balance {
    /// The ready worker with the fewest open connections (ties: lowest slot).
    LeastConn,
    /// Each ready worker in turn.
    RoundRobin,
    /// A ready worker chosen at random.
    Random,
    /// A hash of the client's IP address over the ready workers.
    IpHash,
}

/// How Socket.IO packets are encoded on the wire (`--parser`); clients must use the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PacketParser {
    /// socket.io's default parser: JSON text, binary as attachments (every client's default).
    #[default]
    Json,
    /// MessagePack, one binary frame per packet; clients need `socket.io-msgpack-parser`
    /// (`io(url, { parser })`).
    Msgpack,
}

/// Which bus carries adapter operations between workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AdapterKind {
    /// Through the primary over Unix sockets (one host, no external service).
    Ipc,
    /// Through a Redis server (several hosts); needs `--redis-url`.
    Redis,
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, prefixed `primary` or `worker N`.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `process`, `worker` for a
    /// worker's lines, `message`, and the event's fields), for log shippers.
    Json,
}

/// Commands other than serving (`app status`).
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Print the cluster's workers (index, pid, state, uptime, connections, restarts, RSS), read
    /// from a running primary's `--admin-listen` address, and exit.
    Status(StatusArgs),
}

/// Options of the `status` command.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// The running primary's admin address (its `--admin-listen`).
    #[arg(long, env = "SIO_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: SocketAddr,

    /// Print the raw JSON of `/status` instead of a table.
    #[arg(long)]
    pub json: bool,

    /// How long to wait for the answer.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// `--listen`: `IP:PORT`, or `HOST:PORT` resolved once at start (an IPv4 address first, so
/// `localhost:3000` is `127.0.0.1:3000`).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let explain = "use IP:PORT, e.g. 127.0.0.1:3000 (this host only), 0.0.0.0:3000 (every \
                   interface) or [::]:3000";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("`{s}` has no port: {explain}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "`{port}` is not a port number (0-65535): {explain}"
        ));
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (host, port.parse::<u16>().unwrap_or(0))
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}` ({e}): {explain}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` resolves to no address: {explain}"))
}

/// Number of worker processes: a count, or `auto` for one per available core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One per core (`std::thread::available_parallelism`, which honours cgroup quotas).
    Auto,
    /// Exactly this many.
    Count(NonZeroUsize),
}

impl Workers {
    /// The number this resolves to on this machine.
    pub fn resolve(self) -> usize {
        match self {
            Workers::Auto => std::thread::available_parallelism()
                .map(NonZeroUsize::get)
                .unwrap_or(1),
            Workers::Count(n) => n.get(),
        }
    }
}

impl FromStr for Workers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Workers::Count(NonZeroUsize::new(n).unwrap())),
            _ => Err(format!(
                "`{s}` is not a worker count: use `auto` or a number from 1 to 1024"
            )),
        }
    }
}

/// Cluster configuration (flags and `SIO_*` environment variables).
///
/// ```no_run
/// use clap::Parser;
/// let config = sio_cluster::Config::parse(); // from std::env::args() and SIO_* variables
/// # let _ = config;
/// ```
#[derive(Clone, Debug, Parser)]
#[command(
    about = "A Socket.IO app served by a primary process and one worker process per core.",
    long_about = "A Socket.IO app served by a primary process and one worker process per core.\n\n\
The primary owns the listening socket, reads each connection's first request head, and passes the \
connection (the file descriptor itself, no proxying) to the worker that owns its Engine.IO session, \
or to the least-loaded worker for a new session. Room broadcasts and every adapter operation cross \
workers over an IPC bus, or over Redis with --adapter redis.\n\n\
Every flag can also be set by the environment variable shown. Logs go to stderr (one stream for the \
primary and its workers); --log-level or RUST_LOG filters them (default: info).\n\n\
`APP status --admin-listen ADDR` prints the workers of a running cluster.",
    version
)]
pub struct Config {
    /// Public address to listen on (`IP:PORT`; port 0 picks a free port). Ignored when the
    /// listening socket comes from systemd socket activation (LISTEN_FDS).
    #[arg(long, env = "SIO_LISTEN", default_value = "127.0.0.1:3000", value_parser = parse_listen, value_name = "IP:PORT")]
    pub listen: SocketAddr,

    /// Worker processes: a number, or `auto` for one per available core.
    #[arg(long, env = "SIO_WORKERS", default_value = "auto", value_parser = clap::value_parser!(Workers))]
    pub workers: Workers,

    /// How new sessions are spread over workers.
    #[arg(long, env = "SIO_BALANCE", value_enum, default_value_t = Balance::LeastConn)]
    pub balance: Balance,

    /// Adapter bus between workers: `ipc` (one host) or `redis` (many hosts, needs --redis-url).
    #[arg(long, env = "SIO_ADAPTER", value_enum, default_value_t = AdapterKind::Ipc)]
    pub adapter: AdapterKind,

    /// Redis URL for `--adapter redis`, e.g. `redis://:password@10.0.0.5:6379/0` or `rediss://...`.
    /// Redis 7 or later (RESP3).
    #[arg(long, env = "SIO_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis channel, so several apps can share one Redis.
    #[arg(long, env = "SIO_REDIS_PREFIX", default_value = "socket.io")]
    pub redis_prefix: String,

    /// How long the primary's start-up check may take to reach Redis before the cluster gives
    /// up (exit status 1, no fallback to IPC).
    #[arg(long, env = "SIO_REDIS_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub redis_connect_timeout_ms: u64,

    /// Engine.IO ping interval (socketioxide's default when unset: 25000).
    #[arg(long, env = "SIO_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,

    /// Engine.IO ping timeout (socketioxide's default when unset: 20000).
    #[arg(long, env = "SIO_PING_TIMEOUT_MS")]
    pub ping_timeout_ms: Option<u64>,

    /// Time a client has to connect to a namespace after the handshake (default: 45000).
    #[arg(long, env = "SIO_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,

    /// Largest payload accepted from a client, bytes: a polling request body, a websocket message
    /// or frame (a bigger websocket message closes that websocket with status 1009).
    /// Default: 100000.
    #[arg(long, env = "SIO_MAX_PAYLOAD")]
    pub max_payload: Option<u64>,

    /// Packet encoding: `json` (socket.io's default) or `msgpack` (clients use
    /// `socket.io-msgpack-parser`). Every client of the cluster must use the same.
    #[arg(long, env = "SIO_PARSER", value_enum, default_value_t = PacketParser::Json)]
    pub parser: PacketParser,

    /// How long an emit with an ack waits for the client's answer before it fails with a
    /// timeout (socketioxide's default when unset: 5000). Broadcasts with acks across workers
    /// wait this plus `--request-timeout-ms`.
    #[arg(long, env = "SIO_ACK_TIMEOUT_MS")]
    pub ack_timeout_ms: Option<u64>,

    /// Timeout of adapter requests that wait for other workers (acks, rooms, fetch_sockets).
    #[arg(long, env = "SIO_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,

    /// Sticky cookie: when set, workers set `NAME=w<slot>` on Engine.IO handshakes and the
    /// primary routes requests without a `sid` (new sessions, your own HTTP routes) that carry
    /// it to that worker while it is up.
    #[arg(long, env = "SIO_STICKY_COOKIE", value_name = "NAME")]
    pub sticky_cookie: Option<String>,

    /// Longest time the primary waits for a connection's first request head.
    #[arg(long, env = "SIO_HEAD_TIMEOUT_MS", default_value_t = 10_000)]
    pub head_timeout_ms: u64,

    /// Largest first request head the primary reads (bytes); bigger heads get 431.
    #[arg(long, env = "SIO_MAX_HEAD_BYTES", default_value_t = 16 * 1024)]
    pub max_head_bytes: usize,

    /// Most connections waiting for their first request head at once; more get 503.
    #[arg(long, env = "SIO_MAX_PENDING_HEADS", default_value_t = 4096)]
    pub max_pending_heads: usize,

    /// Listen backlog.
    #[arg(long, env = "SIO_BACKLOG", default_value_t = 1024)]
    pub backlog: i32,

    /// Engine.IO request path.
    #[arg(long, env = "SIO_PATH", default_value = "/socket.io")]
    pub path: String,

    /// Tokio threads per worker (1 = a single-threaded runtime, one worker per core).
    #[arg(long, env = "SIO_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Most bytes of bus traffic queued by the primary for one worker; beyond it messages to
    /// that worker are dropped, counted and logged (a stuck worker cannot exhaust memory).
    #[arg(long, env = "SIO_BUS_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub bus_queue_bytes: usize,

    /// Time given to workers to finish their connections on shutdown or reload.
    #[arg(long, env = "SIO_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// Time a starting worker has to report ready before it is killed and retried.
    #[arg(long, env = "SIO_READY_TIMEOUT_MS", default_value_t = 30_000)]
    pub ready_timeout_ms: u64,

    /// Interval of worker heartbeats.
    #[arg(long, env = "SIO_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,

    /// A worker silent for this long is considered hung, killed and replaced.
    #[arg(long, env = "SIO_HEARTBEAT_TIMEOUT_MS", default_value_t = 10_000)]
    pub heartbeat_timeout_ms: u64,

    /// How often the primary logs a status line (workers, sessions routed, bus counters).
    #[arg(long, env = "SIO_STATUS_INTERVAL_MS", default_value_t = 60_000)]
    pub status_interval_ms: u64,

    /// Roll (gracefully replace) a worker whose resident memory exceeds this many MiB.
    #[arg(long, env = "SIO_WORKER_MEMORY_LIMIT_MB")]
    pub worker_memory_limit_mb: Option<u64>,

    /// TLS certificate chain, PEM (the server's certificate first, then intermediates). With
    /// `--tls-key`, the port speaks only TLS (https, wss); the worker that receives a connection
    /// terminates it. Re-read on every reload (SIGHUP): new connections get the new certificate.
    #[arg(long, env = "SIO_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS private key, PEM (PKCS#8, RSA or EC), matching the first certificate of `--tls-cert`.
    #[arg(long, env = "SIO_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Every connection starts with a PROXY protocol header (v1 or v2, as sent by HAProxy, AWS
    /// NLB, ...): its source address is the client's. A connection without one is closed.
    #[arg(long, env = "SIO_PROXY_PROTOCOL", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub proxy_protocol: bool,

    /// Peers whose `X-Forwarded-For` is believed (comma-separated IPs or CIDRs, e.g.
    /// `10.0.0.0/8,127.0.0.1`): for a request from one of them, the client is the right-most
    /// untrusted address in that header. From any other peer the header is ignored.
    #[arg(
        long,
        env = "SIO_TRUSTED_PROXIES",
        value_name = "CIDR,...",
        default_value = ""
    )]
    pub trusted_proxies: crate::TrustedProxies,

    /// Most connections one worker holds; beyond it new sessions go to other workers, or get
    /// 503 when all are full. Default: the descriptor limit minus a reserve (the larger of 256
    /// and a tenth of it) for the worker's own files and sockets.
    #[arg(long, env = "SIO_MAX_CONNECTIONS_PER_WORKER", value_name = "N")]
    pub max_connections_per_worker: Option<u64>,

    /// Most connections the whole cluster holds; a new session beyond it gets 503. Default:
    /// the per-worker limit times the number of workers.
    #[arg(long, env = "SIO_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u64>,

    /// Most connections one client address holds (after PROXY protocol / X-Forwarded-For); a new
    /// session beyond it gets 503. Off by default.
    #[arg(long, env = "SIO_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<u64>,

    /// Time a client has to send a whole request body after its head; a slower body gets 408
    /// and its connection is closed.
    #[arg(long, env = "SIO_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,

    /// Address of the admin HTTP listener, in the primary: `/livez`, `/readyz`, `/status`
    /// (JSON) and `/metrics` (Prometheus). Off unless given; a non-loopback address also needs
    /// `--admin-listen-public`.
    #[arg(long, env = "SIO_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Allow `--admin-listen` on a non-loopback address (the admin endpoints have no
    /// authentication: expose them only to your monitoring network).
    #[arg(long, env = "SIO_ADMIN_LISTEN_PUBLIC", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub admin_listen_public: bool,

    /// Path of the health check on the main port, answered from the primary's state (as
    /// `/readyz`: 200 or 503, small JSON body) before any app route. Empty disables it, so an
    /// app that serves this path itself keeps it.
    #[arg(
        long,
        env = "SIO_HEALTH_PATH",
        value_name = "PATH",
        default_value = "/health"
    )]
    pub health_path: String,

    /// Log line format: `text` or `json` (one object per line).
    #[arg(long, env = "SIO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in `RUST_LOG` syntax (`info`, `warn,sio_cluster=debug`...). Default:
    /// `RUST_LOG`, else `info`.
    #[arg(long, env = "SIO_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// File of `KEY=VALUE` lines (systemd `EnvironmentFile=` syntax) read at start and again on
    /// every reload (SIGHUP): `SIO_*` settings, `RUST_LOG` and the app's own variables, set in
    /// every worker's environment. Command-line flags win over it; it wins over the environment.
    #[arg(long, env = "SIO_CONFIG_FILE", value_name = "PATH")]
    pub config_file: Option<std::path::PathBuf>,

    /// A command instead of serving (`status`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Config {
    /// Checks combinations clap cannot express; the message says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.adapter == AdapterKind::Redis && self.redis_url.is_none() {
            return Err(ConfigError::Invalid(
                "--adapter redis needs --redis-url (or SIO_REDIS_URL), e.g. redis://127.0.0.1:6379"
                    .into(),
            ));
        }
        if self.adapter != AdapterKind::Redis && self.redis_url.is_some() {
            return Err(ConfigError::Invalid(
                "--redis-url (or SIO_REDIS_URL) is set but the adapter is ipc: add --adapter redis \
                 to use Redis, or drop --redis-url"
                    .into(),
            ));
        }
        if self.max_head_bytes < 256 {
            return Err(ConfigError::Invalid(
                "--max-head-bytes must be at least 256".into(),
            ));
        }
        if self.max_pending_heads == 0 {
            return Err(ConfigError::Invalid(
                "--max-pending-heads must be at least 1".into(),
            ));
        }
        if self.worker_threads == 0 {
            return Err(ConfigError::Invalid(
                "--worker-threads must be at least 1".into(),
            ));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "--path `{}` must start with /",
                self.path
            )));
        }
        for (flag, v) in [
            (
                "--max-connections-per-worker",
                self.max_connections_per_worker,
            ),
            ("--max-connections", self.max_connections),
            ("--max-connections-per-ip", self.max_connections_per_ip),
        ] {
            if v == Some(0) {
                return Err(ConfigError::Invalid(format!(
                    "{flag} must be at least 1 (leave it unset for the default)"
                )));
            }
        }
        if self.body_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "--body-timeout-ms must be at least 1".into(),
            ));
        }
        if let Some(addr) = self.admin_listen
            && !addr.ip().is_loopback()
            && !self.admin_listen_public
        {
            return Err(ConfigError::Invalid(format!(
                "--admin-listen {addr} is not a loopback address: the admin endpoints have no \
                 authentication; add --admin-listen-public to expose them anyway, or use \
                 127.0.0.1:PORT"
            )));
        }
        if !self.health_path.is_empty() && !self.health_path.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "--health-path `{}` must start with / (or be empty to disable it)",
                self.health_path
            )));
        }
        if let Some(filter) = &self.log_level
            && let Err(e) = tracing_subscriber::EnvFilter::try_new(filter)
        {
            return Err(ConfigError::Invalid(format!(
                "--log-level `{filter}`: {e} (use e.g. `info` or `warn,sio_cluster=debug`)"
            )));
        }
        if let Some(name) = &self.sticky_cookie
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'))
        {
            return Err(ConfigError::Invalid(format!(
                "--sticky-cookie `{name}` is not a valid cookie name (letters, digits, `_-.`)"
            )));
        }
        Ok(())
    }

    /// Applies the Engine.IO and Socket.IO settings of this configuration (path, ping interval
    /// and timeout, connect and ack timeouts, max payload, packet parser) to a socketioxide
    /// builder. The cluster does it for its
    /// workers; call it when serving the same app some other way (e.g. one process in tests).
    ///
    /// ```no_run
    /// # let config: sio_cluster::Config = clap::Parser::parse();
    /// let (layer, io) = config.engine_settings(socketioxide::SocketIo::builder()).build_layer();
    /// # let _ = (layer, io);
    /// ```
    pub fn engine_settings<A: socketioxide::adapter::Adapter>(
        &self,
        mut builder: socketioxide::SocketIoBuilder<A>,
    ) -> socketioxide::SocketIoBuilder<A> {
        builder = builder.req_path(self.path.clone());
        if let Some(ms) = self.ping_interval_ms {
            builder = builder.ping_interval(Duration::from_millis(ms));
        }
        if let Some(ms) = self.ping_timeout_ms {
            builder = builder.ping_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.connect_timeout_ms {
            builder = builder.connect_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.ack_timeout_ms {
            builder = builder.ack_timeout(Duration::from_millis(ms));
        }
        builder = match self.parser {
            PacketParser::Json => builder.with_parser(socketioxide::ParserConfig::common()),
            PacketParser::Msgpack => builder.with_parser(socketioxide::ParserConfig::msgpack()),
        };
        // The same bound on every transport: polling bodies, websocket messages and frames
        // (socketioxide's own websocket defaults are 64 MiB and 16 MiB).
        let bytes = self.max_payload_bytes();
        let ws = usize::try_from(bytes).unwrap_or(usize::MAX);
        builder = builder
            .max_payload(bytes)
            .ws_max_message_size(ws)
            .ws_max_frame_size(ws);
        builder
    }

    /// Whether the port speaks TLS (`--tls-cert` and `--tls-key`).
    pub fn tls(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    /// The largest payload a client may send on any transport (`--max-payload`, or
    /// socketioxide's default of 100000 bytes).
    pub fn max_payload_bytes(&self) -> u64 {
        self.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD)
    }

    /// Head timeout as a [`Duration`].
    pub fn head_timeout(&self) -> Duration {
        Duration::from_millis(self.head_timeout_ms)
    }

    /// The Engine.IO path prefix with a trailing slash, as matched against request paths.
    pub fn engine_path_prefix(&self) -> String {
        let mut p = self.path.trim_end_matches('/').to_string();
        p.push('/');
        p
    }
}

/// socketioxide's default `max_payload`, which the cluster also applies to websocket frames.
pub const DEFAULT_MAX_PAYLOAD: u64 = 100_000;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag combination or value is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("app").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(c.workers, Workers::Auto);
        assert_eq!(c.balance, Balance::LeastConn);
        assert_eq!(c.adapter, AdapterKind::Ipc);
        c.validate().unwrap();
    }

    #[test]
    fn flags_parse() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "4",
            "--balance",
            "ip-hash",
            "--sticky-cookie",
            "sio",
        ])
        .unwrap();
        assert_eq!(c.workers.resolve(), 4);
        assert_eq!(c.balance, Balance::IpHash);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_say_what_to_do() {
        let e = parse(&["--workers", "zero"]).unwrap_err().to_string();
        assert!(e.contains("use `auto` or a number"), "{e}");
        let c = parse(&["--adapter", "redis"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--redis-url"), "{e}");
        let c = parse(&["--sticky-cookie", "a b"]).unwrap();
        assert!(c.validate().is_err());
        let c = parse(&["--redis-url", "redis://127.0.0.1:6379"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("add --adapter redis"), "{e}");
    }

    #[test]
    fn listen_takes_a_host_name_or_explains_ip_port() {
        let c = parse(&["--listen", "localhost:3001"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3001".parse().unwrap());
        for bad in ["3001", "127.0.0.1", "localhost:http", "127.0.0.1:99999"] {
            let e = parse(&["--listen", bad]).unwrap_err().to_string();
            assert!(e.contains("use IP:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn admin_and_logging_flags() {
        let c = parse(&["--admin-listen", "127.0.0.1:9090", "--log-format", "json"]).unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.health_path, "/health");
        c.validate().unwrap();
        let c = parse(&["--admin-listen", "0.0.0.0:9090"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--admin-listen-public"), "{e}");
        let c = parse(&["--admin-listen", "0.0.0.0:9090", "--admin-listen-public"]).unwrap();
        c.validate().unwrap();
        let c = parse(&["--health-path", "health"]).unwrap();
        assert!(c.validate().is_err());
        let c = parse(&["--health-path", ""]).unwrap();
        c.validate().unwrap();
        let c = parse(&["--log-level", "info,=="]).unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn status_command_parses() {
        let c = parse(&["status", "--admin-listen", "127.0.0.1:9090"]).unwrap();
        match c.command {
            Some(Command::Status(a)) => {
                assert_eq!(a.admin_listen, "127.0.0.1:9090".parse().unwrap());
                assert!(!a.json);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn engine_prefix_has_one_trailing_slash() {
        let mut c = parse(&[]).unwrap();
        assert_eq!(c.engine_path_prefix(), "/socket.io/");
        c.path = "/rt/".into();
        assert_eq!(c.engine_path_prefix(), "/rt/");
    }
}
