//! A worker process: serves the connections the primary passes it, with the user's app.
//!
//! Started by the primary re-executing the binary with [`WorkerEnv`] in the environment. It
//! builds socketioxide with the [`ClusterAdapter`], runs the user's setup,
//! reports ready, then serves each received descriptor (`serve`) behind the session router
//! (`session`). It exits when the primary tells it to drain, or as soon as the primary is gone
//! (control channel end of file, or `PR_SET_PDEATHSIG`).

use crate::sync::LockExt;
pub(crate) mod body;
pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod forward;
pub(crate) mod lease;
pub(crate) mod lifecycle;
pub(crate) mod report;
pub(crate) mod serve;
pub(crate) mod session;
pub(crate) mod tracked;

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use socketioxide::layer::SocketIoLayer;
use socketioxide::service::SocketIoService;
use socketioxide::{SocketIo, SocketIoBuilder, SocketIoConfig};
use socketioxide_core::{Sid, Uid};
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use tokio::sync::watch;
use tower_layer::Layer;

use crate::adapter::{ClusterAdapter, ClusterDriver, IpcDriver, RedisBus};
use crate::config::{AdapterKind, Config};
use crate::ipc::channel;
use crate::ipc::message::{ConnManifest, MAX_SIDS_PER_MESSAGE, MemberId, ToPrimary, ToWorker};
use crate::sid::SessionId;
use crate::supervisor::peek::slot_token;

pub use lifecycle::{Shutdown, ShutdownGuard};
pub use session::ClientAddr;

use control::Control;
use lease::{ExpiryRules, Leases};

/// Longest wait, when draining, for in-flight handshakes to finish before sessions are closed.
const DRAIN_SETTLE: Duration = Duration::from_millis(1500);

/// How often registered sessions are checked for expiry (a closed session leaves the primary's
/// table within this, and well within a second).
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Descriptors kept free below the worker's capacity report, for forwards and short-lived files.
const FD_MARGIN: u64 = 32;

/// Channel prefix of the IPC bus (one host, one app: no need to configure it).
const IPC_PREFIX: &str = "socket.io";

/// The service a worker runs for each connection: socketioxide in front of the user's routes,
/// wrapped in the app's layers ([`crate::Cluster::layer`]).
pub(crate) type AppService = tower::util::BoxCloneService<
    http::Request<body::TimedBody>,
    http::Response<axum::body::Body>,
    Infallible,
>;

/// The worker's whole HTTP service as an app's tower layers see it
/// ([`Cluster::layer`](crate::Cluster::layer)): Socket.IO (its path, every transport) in front of
/// the app's axum routes.
pub type HttpService = tower::util::BoxCloneService<
    http::Request<axum::body::Body>,
    http::Response<axum::body::Body>,
    Infallible,
>;

/// Wraps the worker's HTTP service in the app's layers.
pub(crate) type Wrap = Box<dyn FnOnce(HttpService) -> HttpService>;

/// What `Cluster` hands a worker besides the config.
#[derive(Default)]
pub(crate) struct Setup {
    /// socketioxide builder customisations, in order.
    pub configure: Vec<Configure>,
    /// The app's layers over the whole service.
    pub wrap: Option<Wrap>,
}

/// Errors of a worker process.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker environment variable is malformed (not started by a primary?).
    #[error("malformed {var}: {0} (workers are started by the primary; do not set it by hand)", var = WorkerEnv::VAR)]
    Env(String),
    /// The primary that started this worker is gone.
    #[error("the primary (pid {0}) is gone; exiting")]
    PrimaryGone(u32),
    /// The primary did not answer in time.
    #[error("the primary did not answer in time")]
    PrimaryUnresponsive,
    /// The user's setup failed.
    #[error("app setup failed: {0}")]
    App(crate::BoxError),
    /// `Cluster::socketio` changed settings the cluster owns (the primary routes by `--path`,
    /// and all workers must agree).
    #[error(
        "Cluster::socketio changed settings the cluster sets from its flags: {0}. \
         The primary and every worker must agree on them"
    )]
    Settings(String),
    /// The adapter could not start (e.g. Redis unreachable).
    #[error("adapter: {0}")]
    Adapter(String),
    /// The runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// IPC failure.
    #[error(transparent)]
    Ipc(#[from] crate::ipc::IpcError),
}

/// What the primary tells a worker it starts (in the `SIO_CLUSTER_WORKER` variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerEnv {
    /// Slot index (0..N).
    pub slot: usize,
    /// Member id of this process.
    pub member: MemberId,
    /// Inherited control channel descriptor.
    pub ctl_fd: RawFd,
    /// Inherited bus descriptor.
    pub bus_fd: RawFd,
    /// Pid of the primary.
    pub primary_pid: u32,
}

impl WorkerEnv {
    /// Name of the environment variable.
    pub const VAR: &'static str = "SIO_CLUSTER_WORKER";

    /// Encodes for the environment.
    pub fn encode(&self) -> String {
        format!(
            "wire={};slot={};member={};ctl={};bus={};primary={}",
            crate::ipc::hello::WIRE_VERSION,
            self.slot,
            self.member.0,
            self.ctl_fd,
            self.bus_fd,
            self.primary_pid
        )
    }

    /// Reads the variable: `None` in the primary, an error if malformed.
    pub fn from_env() -> Result<Option<Self>, WorkerError> {
        match std::env::var(Self::VAR) {
            Ok(v) => Self::from_str(&v).map(Some),
            Err(_) => Ok(None),
        }
    }
}

impl FromStr for WorkerEnv {
    type Err = WorkerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut env = WorkerEnv {
            slot: usize::MAX,
            member: MemberId(u32::MAX),
            ctl_fd: -1,
            bus_fd: -1,
            primary_pid: 0,
        };
        for kv in s.split(';') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| WorkerError::Env(format!("`{kv}` is not key=value")))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| WorkerError::Env(format!("`{k}={v}` is not a number")))
            };
            match k {
                "slot" => env.slot = num(v)? as usize,
                "member" => env.member = MemberId(num(v)? as u32),
                "ctl" => env.ctl_fd = num(v)? as RawFd,
                "bus" => env.bus_fd = num(v)? as RawFd,
                "primary" => env.primary_pid = num(v)? as u32,
                // The primary's wire version: checked by the primary on this worker's hello
                // (a primary of another build may send keys this one does not know; the hello
                // is what tells them apart).
                _ => {}
            }
        }
        if env.slot == usize::MAX || env.ctl_fd < 0 || env.bus_fd < 0 || env.primary_pid == 0 {
            return Err(WorkerError::Env(format!("`{s}` is incomplete")));
        }
        Ok(env)
    }
}

/// What the user's setup receives in each worker.
///
/// ```no_run
/// # fn demo(worker: sio_cluster::Worker) {
/// let sio_cluster::Worker { io, info, .. } = worker;
/// println!("worker {} of {} (pid {})", info.index, info.workers, info.pid);
/// # let _ = io;
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Worker {
    /// The socketioxide handle: register namespaces with `io.ns(..)` (await it).
    pub io: SocketIo<ClusterAdapter>,
    /// Who this worker is.
    pub info: WorkerInfo,
    /// Cluster-wide facts the adapter knows (server count).
    pub cluster: ClusterHandle,
    /// The worker's drain: wait for it, or hold the worker open while you finish
    /// ([`Shutdown`]).
    pub shutdown: Shutdown,
}

/// Asks the adapter's bus about the cluster; cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    driver: ClusterDriver,
    prefix: String,
}

impl ClusterHandle {
    /// Number of servers (workers; across hosts in Redis mode) serving namespace `ns`, this one
    /// included, as the adapter counts them for requests.
    ///
    /// ```no_run
    /// # async fn demo(cluster: sio_cluster::ClusterHandle) {
    /// let n = cluster.server_count("/").await.unwrap_or(1);
    /// # let _ = n;
    /// # }
    /// ```
    pub async fn server_count(&self, ns: &str) -> Result<u16, crate::adapter::DriverError> {
        self.driver
            .server_count(&format!("{}-request#{ns}#", self.prefix))
            .await
    }
}

/// Identity of the current worker process; also a socketioxide state (`State<WorkerInfo>`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Slot index, 0..workers.
    pub index: usize,
    /// Number of worker slots.
    pub workers: usize,
    /// OS process id.
    pub pid: u32,
    /// Adapter in use.
    pub adapter: AdapterKind,
}

/// Counters of a worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerStats {
    /// Requests forwarded to another worker.
    pub forwarded: AtomicU64,
    /// Bytes read from client connections (not forwarded ones: the forwarding worker counted
    /// them), since start.
    pub bytes_in: AtomicU64,
    /// Bytes written to client connections, since start.
    pub bytes_out: AtomicU64,
}

/// The door settings a worker applies to its connections.
pub(crate) struct Door {
    /// TLS, when `--tls-cert`/`--tls-key` are set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Bound on the TLS handshake (the head timeout).
    pub tls_handshake_timeout: Duration,
    /// Websocket limits (`--max-payload`).
    pub ws: crate::door::ws_limit::WsLimits,
    /// `--trusted-proxies`.
    pub trusted: crate::TrustedProxies,
    /// `--body-timeout-ms`.
    pub body_timeout: Duration,
}

/// State shared by a worker's tasks.
pub(crate) struct WorkerShared {
    pub member: MemberId,
    pub control: Control,
    pub leases: Leases,
    pub engine_prefix: String,
    pub cookie: Option<HeaderValue>,
    pub open: AtomicU64,
    pub closed_total: AtomicU64,
    pub drain: watch::Sender<bool>,
    pub stats: WorkerStats,
    pub door: Door,
    /// Addresses of closed connections counted per IP, not yet reported.
    pub closed_ips: std::sync::Mutex<Vec<std::net::IpAddr>>,
    /// Woken by every close, so the primary's counts (caps, least-conn) follow within
    /// milliseconds rather than a report interval.
    pub load_changed: tokio::sync::Notify,
    /// `--health-path`, unless disabled: answered with the primary's health.
    pub health_path: Option<String>,
    /// Socket.IO events received and sent (websocket and polling).
    pub events: Arc<events::EventCounts>,
}

impl WorkerShared {
    /// Accounts for a connection that finished (`counted_ip`: from its manifest).
    pub fn conn_closed(&self, counted_ip: Option<std::net::IpAddr>) {
        if let Some(ip) = counted_ip {
            self.closed_ips.lock_unpoisoned().push(ip);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.closed_total.fetch_add(1, Ordering::Relaxed);
        self.load_changed.notify_one();
    }

    /// Accounts for connections handed here whose descriptors never arrived (this process's
    /// descriptor table was full): closed as far as the primary is concerned.
    fn lost(&self, manifests: &[ConnManifest]) {
        if manifests.is_empty() {
            return;
        }
        tracing::warn!(
            lost = manifests.len(),
            "descriptor limit reached: connections handed here were closed by the kernel \
             (raise LimitNOFILE=, or lower --max-connections-per-worker)"
        );
        for m in manifests {
            self.open.fetch_add(1, Ordering::Relaxed);
            self.conn_closed(m.counted_ip);
        }
    }

    /// Tells the primary these sessions no longer route here.
    pub fn unregister(&self, sids: Vec<SessionId>) {
        for chunk in sids.chunks(MAX_SIDS_PER_MESSAGE) {
            self.control.send(
                ToPrimary::UnregisterSids {
                    sids: chunk.to_vec(),
                },
                None,
            );
        }
    }
}

/// Type of the optional socketioxide builder customisation.
pub(crate) type Configure = Box<
    dyn FnOnce(
        SocketIoBuilder<ClusterAdapter>,
        &WorkerInfo,
        &ClusterHandle,
    ) -> SocketIoBuilder<ClusterAdapter>,
>;

/// Runs this process as a worker until the primary stops it.
pub(crate) fn run<F, Fut>(
    env: WorkerEnv,
    config: Config,
    setup: Setup,
    app: F,
) -> Result<(), WorkerError>
where
    F: FnOnce(Worker) -> Fut,
    Fut: Future<Output = Result<axum::Router, crate::BoxError>>,
{
    // SAFETY: `run` is documented to be called from `main` before the program starts threads;
    // no other thread can read the environment concurrently.
    unsafe { std::env::remove_var(WorkerEnv::VAR) };
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() } as u32;
    if ppid != env.primary_pid {
        return Err(WorkerError::PrimaryGone(env.primary_pid));
    }
    let ctl = take_fd(env.ctl_fd)?;
    let bus = take_fd(env.bus_fd)?;

    let rt = if config.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    }
    .map_err(WorkerError::Runtime)?;
    rt.block_on(main(env, config, setup, app, ctl, bus))
}

/// Takes ownership of an inherited descriptor and makes it close-on-exec again.
fn take_fd(fd: RawFd) -> Result<OwnedFd, WorkerError> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: the primary passed this descriptor to us at exec for our exclusive use (its number
    // is in our environment) and nothing else in this process has taken it yet.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| WorkerError::Env(format!("descriptor {fd} is not usable: {e}")))?;
    Ok(owned)
}

async fn main<F, Fut>(
    env: WorkerEnv,
    config: Config,
    setup: Setup,
    app: F,
    ctl: OwnedFd,
    bus: OwnedFd,
) -> Result<(), WorkerError>
where
    F: FnOnce(Worker) -> Fut,
    Fut: Future<Output = Result<axum::Router, crate::BoxError>>,
{
    let (ctl_tx, mut ctl_rx) = channel::channel::<ToPrimary, ToWorker>(ctl)?;
    // Before anything else: the primary reads nothing more from a worker of another build.
    ctl_tx
        .send(&ToPrimary::Hello(crate::ipc::hello::Hello::ours()), &[])
        .await?;
    let control = Control::start(ctl_tx);

    let request_timeout = Duration::from_millis(config.request_timeout_ms);
    let uid = Uid::new();
    let driver = match config.adapter {
        AdapterKind::Ipc => {
            let bus = std::os::unix::net::UnixStream::from(bus);
            bus.set_nonblocking(true)
                .map_err(|e| WorkerError::Adapter(format!("bus socket: {e}")))?;
            let bus = tokio::net::UnixStream::from_std(bus)
                .map_err(|e| WorkerError::Adapter(format!("bus socket: {e}")))?;
            ClusterDriver::Ipc(IpcDriver::start(
                bus,
                env.member,
                IPC_PREFIX,
                request_timeout,
                // A broadcast with acks lives for the client's ack timeout plus this.
                request_timeout
                    + Duration::from_millis(config.ack_timeout_ms.unwrap_or(5_000))
                    + Duration::from_secs(60),
            ))
        }
        AdapterKind::Redis => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            let timeout = Duration::from_millis(config.redis_connect_timeout_ms);
            let bus = RedisBus::connect(url, &config.redis_prefix, timeout)
                .await
                .map_err(|e| WorkerError::Adapter(e.to_string()))?;
            ClusterDriver::Redis(bus)
        }
    };
    let adapter_config = RedisAdapterConfig::new()
        .with_request_timeout(request_timeout)
        .with_ack_response_buffer(65_536);
    let adapter_config = match config.adapter {
        AdapterKind::Ipc => adapter_config.with_prefix(IPC_PREFIX),
        AdapterKind::Redis => adapter_config.with_prefix(config.redis_prefix.clone()),
    };

    let mut sio_config = SocketIoConfig::default();
    sio_config.server_id = uid;
    let builder = config.engine_settings(SocketIo::builder().with_config(sio_config));
    let cluster = ClusterHandle {
        driver: driver.clone(),
        prefix: adapter_config.prefix.to_string(),
    };
    let info = WorkerInfo {
        index: env.slot,
        workers: config.workers.resolve(),
        pid: std::process::id(),
        adapter: config.adapter,
    };
    // Handlers can take `State<WorkerInfo>` and `State<ClusterHandle>`.
    let mut builder = builder
        .with_adapter::<ClusterAdapter>(RedisAdapterCtr::new_with_driver(driver, adapter_config))
        .with_state(info.clone())
        .with_state(cluster.clone());
    let Setup { configure, wrap } = setup;
    for configure in configure {
        builder = configure(builder, &info, &cluster);
    }
    let (layer, io): (SocketIoLayer<ClusterAdapter>, _) = builder.build_layer();
    check_engine_settings(&config, io.config())?;

    let (drain, draining) = watch::channel(false);
    let shutdown = Shutdown::new(draining);
    let bus = cluster.driver.clone();
    let router = app(Worker {
        io: io.clone(),
        info,
        cluster,
        shutdown: shutdown.clone(),
    })
    .await
    .map_err(WorkerError::App)?;
    let svc: AppService = http_service(layer.layer(router), wrap);

    let cookie = config.sticky_cookie.as_ref().and_then(|name| {
        HeaderValue::from_str(&format!(
            "{name}={}; Path=/; HttpOnly; SameSite=Lax",
            slot_token(env.slot)
        ))
        .ok()
    });
    let tls = match config.tls() {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(
            crate::door::tls::load(cert, key).map_err(|e| WorkerError::App(Box::new(e)))?,
        )),
        None => None,
    };
    let max_payload = usize::try_from(config.max_payload_bytes()).unwrap_or(usize::MAX);
    let door = Door {
        tls,
        tls_handshake_timeout: config.head_timeout(),
        ws: crate::door::ws_limit::WsLimits {
            max_message: max_payload,
            max_frame: max_payload,
        },
        trusted: config.trusted_proxies.clone(),
        body_timeout: Duration::from_millis(config.body_timeout_ms),
    };
    let shared = Arc::new(WorkerShared {
        door,
        closed_ips: Default::default(),
        load_changed: tokio::sync::Notify::new(),
        member: env.member,
        control: control.clone(),
        leases: Leases::default(),
        engine_prefix: config.engine_path_prefix(),
        cookie,
        open: AtomicU64::new(0),
        closed_total: AtomicU64::new(0),
        drain,
        stats: WorkerStats::default(),
        health_path: Some(config.health_path.clone()).filter(|p| !p.is_empty()),
        events: Default::default(),
    });

    control.send(
        ToPrimary::Ready {
            server_uid: uid.to_string(),
        },
        None,
    );
    spawn_reporters(&shared, &config, io.clone(), bus);

    // Sent by the drain when it is over: the worker's `run` returns.
    let (drained_tx, mut drained) = tokio::sync::oneshot::channel::<()>();
    let mut drained_tx = Some(drained_tx);
    loop {
        let received = tokio::select! {
            r = ctl_rx.recv_partial() => r,
            _ = &mut drained => {
                tracing::info!("drained; exiting");
                return Ok(());
            }
        };
        let (msg, fds, lost) = match received {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!("the primary is gone; exiting");
                return Ok(());
            }
            Err(e) if e.is_recoverable() => {
                tracing::warn!("dropped a bad message from the primary: {e}");
                continue;
            }
            Err(e) => {
                tracing::error!("control channel failed: {e}; exiting");
                return Err(e.into());
            }
        };
        match msg {
            ToWorker::Conn(manifest) => match fds.into_iter().next() {
                Some(fd) => serve::spawn(shared.clone(), svc.clone(), manifest, fd),
                None if lost > 0 => shared.lost(&[manifest]),
                None => tracing::warn!(
                    conn = manifest.id,
                    "connection message without a descriptor"
                ),
            },
            ToWorker::Conns(manifests) => {
                if manifests.len() != fds.len() + lost {
                    tracing::warn!(
                        manifests = manifests.len(),
                        descriptors = fds.len(),
                        "hand-off batch does not match its descriptors; closing them"
                    );
                    continue;
                }
                // The kernel installs descriptors in order: the first ones arrived.
                let arrived = fds.len();
                shared.lost(&manifests[arrived..]);
                for (manifest, fd) in manifests.into_iter().zip(fds) {
                    serve::spawn(shared.clone(), svc.clone(), manifest, fd);
                }
            }
            reply @ (ToWorker::SidRegistered { req }
            | ToWorker::SidLocation { req, .. }
            | ToWorker::Picked { req, .. }
            | ToWorker::Health { req, .. }) => {
                control.resolve(req, reply);
            }
            ToWorker::Drain {
                timeout_ms,
                handover,
            } => {
                let Some(done) = drained_tx.take() else {
                    tracing::debug!("already draining");
                    continue;
                };
                tokio::spawn(drain_worker(
                    shared.clone(),
                    io.clone(),
                    shutdown.clone(),
                    Duration::from_millis(timeout_ms),
                    handover,
                    done,
                ));
            }
        }
    }
}

/// Drains this worker within `timeout`, then tells the main loop to return:
/// 1. HTTP connections finish the request in flight and are not kept alive (new sessions already
///    go to other workers: the primary marked this one draining before telling it), and the
///    app's [`Shutdown::draining`] resolves;
/// 2. the app's [`ShutdownGuard`]s are awaited, and on a handover (reload) a short grace lets
///    clients whose handshake was handed here just before finish connecting their namespaces;
/// 3. every Engine.IO session is closed at the transport (`io.close()`), which Socket.IO clients
///    treat as a lost connection: they reconnect at once, to the workers that stay;
/// 4. the worker ends once its connections are gone (or the time is up).
async fn drain_worker(
    shared: Arc<WorkerShared>,
    io: SocketIo<ClusterAdapter>,
    shutdown: Shutdown,
    timeout: Duration,
    handover: bool,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(
        open = shared.open.load(Ordering::Relaxed),
        handover,
        app_guards = shutdown.held(),
        "draining"
    );
    shared.drain.send_replace(true);
    let settle = async {
        if handover {
            let settle = tokio::time::Instant::now() + DRAIN_SETTLE.min(timeout / 2);
            tokio::time::sleep_until(settle).await;
        }
    };
    let app = async {
        if tokio::time::timeout_at(deadline, shutdown.released())
            .await
            .is_err()
        {
            tracing::warn!(
                app_guards = shutdown.held(),
                "the app still holds shutdown guards at the drain timeout; closing anyway"
            );
        }
    };
    tokio::join!(settle, app);
    if handover {
        tracing::info!("closing every session so its client reconnects to another worker");
    }
    let _ = tokio::time::timeout_at(deadline, io.close()).await;
    while shared.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = done.send(());
}

/// The worker's service: socketioxide in front of `router`'s routes, inside the app's layers.
fn http_service(
    svc: SocketIoService<axum::Router, ClusterAdapter>,
    wrap: Option<Wrap>,
) -> AppService {
    use tower::ServiceExt;
    let base: HttpService = tower::util::BoxCloneService::new(ServiceExt::<
        http::Request<axum::body::Body>,
    >::map_response(
        svc,
        |r: http::Response<_>| r.map(axum::body::Body::new),
    ));
    let wrapped = match wrap {
        Some(wrap) => wrap(base),
        None => base,
    };
    tower::util::BoxCloneService::new(
        wrapped.map_request(|r: http::Request<body::TimedBody>| r.map(axum::body::Body::new)),
    )
}

/// Refuses to start when the app's socketioxide customisation changed a setting the cluster
/// owns: the primary routes by `--path`, and every worker must agree with the flags.
fn check_engine_settings(
    config: &Config,
    got: &socketioxide::SocketIoConfig,
) -> Result<(), WorkerError> {
    let (_, reference) = config.engine_settings(SocketIo::builder()).build_layer();
    let want = reference.config();
    let (w, g) = (&want.engine_config, &got.engine_config);
    let mut changed: Vec<String> = Vec::new();
    let mut check = |what: &str, flag: &str, differs: bool, value: String| {
        if differs {
            changed.push(format!("{what} (to {value}; set it with {flag} instead)"));
        }
    };
    check(
        "req_path",
        "--path",
        w.req_path != g.req_path,
        format!("{:?}", g.req_path),
    );
    check(
        "ping_interval",
        "--ping-interval-ms",
        w.ping_interval != g.ping_interval,
        format!("{:?}", g.ping_interval),
    );
    check(
        "ping_timeout",
        "--ping-timeout-ms",
        w.ping_timeout != g.ping_timeout,
        format!("{:?}", g.ping_timeout),
    );
    check(
        "max_payload / ws_max_message_size / ws_max_frame_size",
        "--max-payload",
        w.max_payload != g.max_payload
            || w.ws_max_message_size != g.ws_max_message_size
            || w.ws_max_frame_size != g.ws_max_frame_size,
        format!(
            "{} / {} / {}",
            g.max_payload, g.ws_max_message_size, g.ws_max_frame_size
        ),
    );
    check(
        "ack_timeout",
        "--ack-timeout-ms",
        want.ack_timeout != got.ack_timeout,
        format!("{:?}", got.ack_timeout),
    );
    check(
        "connect_timeout",
        "--connect-timeout-ms",
        want.connect_timeout != got.connect_timeout,
        format!("{:?}", got.connect_timeout),
    );
    if changed.is_empty() {
        return Ok(());
    }
    Err(WorkerError::Settings(changed.join(", ")))
}

fn spawn_reporters(
    shared: &Arc<WorkerShared>,
    config: &Config,
    io: SocketIo<ClusterAdapter>,
    bus: ClusterDriver,
) {
    // Load: connections closed and descriptor room, soon after a close (closes within 2 ms
    // go in one report) and otherwise every 100 ms, only when it changed. Descriptors in use
    // are counted once a second, off the runtime thread.
    let s = shared.clone();
    let nofile = crate::supervisor::nofile_limit();
    tokio::spawn(async move {
        let mut last = (0, u64::MAX);
        let mut extra = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        let mut counted_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = s.load_changed.notified() => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            if (counted_at.elapsed() >= Duration::from_secs(1) || ticks == 0)
                && let Ok(Some(used)) = tokio::task::spawn_blocking(open_descriptors).await
            {
                // Descriptors that are not client connections: the app's files, sockets, the
                // runtime's own, forwards in flight.
                extra = used.saturating_sub(s.open.load(Ordering::Relaxed));
                counted_at = tokio::time::Instant::now();
            }
            ticks += 1;
            let capacity = nofile.saturating_sub(extra + FD_MARGIN);
            let closed = s.closed_total.load(Ordering::Relaxed);
            let closed_ips = std::mem::take(&mut *s.closed_ips.lock_unpoisoned());
            if (closed, capacity) != last || !closed_ips.is_empty() {
                last = (closed, capacity);
                // Split so each message stays under the channel's size limit.
                let mut chunks: Vec<Vec<std::net::IpAddr>> = closed_ips
                    .chunks(MAX_SIDS_PER_MESSAGE)
                    .map(<[_]>::to_vec)
                    .collect();
                if chunks.is_empty() {
                    chunks.push(Vec::new());
                }
                for closed_ips in chunks {
                    s.control.send(
                        ToPrimary::Load {
                            closed_total: closed,
                            capacity,
                            closed_ips,
                        },
                        None,
                    );
                }
            }
        }
    });
    // Heartbeat: proves this runtime still runs tasks.
    let s = shared.clone();
    let every = Duration::from_millis(config.heartbeat_interval_ms.max(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut seq = 0;
        loop {
            tick.tick().await;
            seq += 1;
            s.control.send(
                ToPrimary::Heartbeat {
                    seq,
                    rss_bytes: resident_bytes(),
                },
                None,
            );
        }
    });
    // Metrics report: sockets per namespace, traffic, descriptors, memory.
    let s = shared.clone();
    let every = Duration::from_millis(config.heartbeat_interval_ms.max(10));
    let reporter_io = io.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut sampler = report::Sampler::default();
        loop {
            tick.tick().await;
            let namespaces = sampler.sample(&reporter_io);
            let open_fds = tokio::task::spawn_blocking(open_descriptors)
                .await
                .ok()
                .flatten()
                .unwrap_or(0);
            s.control.send(
                ToPrimary::Report(crate::ipc::message::WorkerReport {
                    namespaces,
                    bytes_in: s.stats.bytes_in.load(Ordering::Relaxed),
                    bytes_out: s.stats.bytes_out.load(Ordering::Relaxed),
                    events_in: s.events.received.load(Ordering::Relaxed),
                    events_out: s.events.sent.load(Ordering::Relaxed),
                    open_fds,
                    rss_bytes: resident_bytes(),
                    bus_up: bus.is_up(),
                    adapter_timeouts: bus.request_timeouts().unwrap_or(0),
                }),
                None,
            );
        }
    });
    // Lease sweeper: unregister sessions that no longer need routing.
    let s = shared.clone();
    let rules = ExpiryRules {
        idle: Duration::from_millis(
            config.ping_interval_ms.unwrap_or(25_000)
                + config.ping_timeout_ms.unwrap_or(20_000)
                + 5_000,
        ),
        // socketioxide closes a session that connects no namespace within the connect timeout.
        connect_window: Duration::from_millis(config.connect_timeout_ms.unwrap_or(45_000) + 500),
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            let nsps = io.nsps();
            let expired = s.leases.expire(rules, |sid| {
                let Ok(sid) = Sid::from_str(sid.as_str()) else {
                    return false;
                };
                nsps.iter().any(|ns| ns.get_socket(sid).is_some())
            });
            if !expired.is_empty() {
                tracing::debug!(count = expired.len(), "sessions no longer routed here");
                s.unregister(expired);
            }
        }
    });
}

/// Descriptors open in this process (entries of `/proc/self/fd`, minus the one reading it).
fn open_descriptors() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

/// Resident set size of this process, from `/proc/self/statm`.
pub(crate) fn resident_bytes() -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_round_trips_and_rejects_garbage() {
        let env = WorkerEnv {
            slot: 2,
            member: MemberId(7),
            ctl_fd: 5,
            bus_fd: 6,
            primary_pid: 42,
        };
        assert_eq!(WorkerEnv::from_str(&env.encode()).unwrap(), env);
        assert!(WorkerEnv::from_str("slot=1").is_err());
        assert!(WorkerEnv::from_str("slot=x;member=1;ctl=3;bus=4;primary=1").is_err());
    }
}
