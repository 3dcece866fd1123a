//! A worker process: serves the connections the primary passes it, with the user's app.
//!
//! Started by the primary re-executing the binary with [`WorkerEnv`] in the environment. It says
//! hello ([`crate::ipc::hello`]), builds socketioxide with the [`ClusterAdapter`] and the app's
//! customisations (`app`), runs the user's setup, reports ready, then serves each received
//! descriptor (`serve`) behind the session router (`session`), with its periodic upkeep
//! (`upkeep`). When the primary tells it to drain (`drain`, with the app's [`Shutdown`]), or as
//! soon as the primary is gone (control channel end of file, or `PR_SET_PDEATHSIG`), `run`
//! returns.

use crate::sync::LockExt;
pub(crate) mod app;
pub(crate) mod body;
pub(crate) mod control;
pub(crate) mod drain;
pub(crate) mod events;
pub(crate) mod forward;
pub(crate) mod lease;
pub(crate) mod lifecycle;
pub(crate) mod report;
pub(crate) mod serve;
pub(crate) mod session;
pub(crate) mod tracked;
mod upkeep;

use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{SocketIo, SocketIoConfig};
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

pub use app::HttpService;
pub(crate) use app::{AppService, Setup};
use app::{check_engine_settings, http_service};
use drain::drain_worker;
pub use lifecycle::{Shutdown, ShutdownGuard};
pub use session::ClientAddr;
use upkeep::spawn_reporters;

use control::Control;
use lease::{ExpiryRules, Leases};

/// Channel prefix of the IPC bus (one host, one app: no need to configure it).
const IPC_PREFIX: &str = "socket.io";

/// Errors of a worker process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
///
/// ```no_run
/// use sio_cluster::{ClusterAdapter, WorkerInfo};
/// use socketioxide::extract::{SocketRef, State};
///
/// async fn on_connect(s: SocketRef<ClusterAdapter>, State(me): State<WorkerInfo>) {
///     let _ = s.emit("served-by", &format!("worker {} of {} (pid {})", me.index, me.workers, me.pid));
/// }
/// ```
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
    let (ctl_tx, ctl_rx) = channel::channel::<ToPrimary, ToWorker>(ctl)?;
    // Before anything else: the primary reads nothing more from a worker of another build.
    ctl_tx
        .send(&ToPrimary::Hello(crate::ipc::hello::Hello::ours()), &[])
        .await?;
    let control = Control::start(ctl_tx);

    let request_timeout = Duration::from_millis(config.request_timeout_ms);
    let uid = Uid::new();
    let driver = cluster_driver(&config, &env, bus, request_timeout).await?;
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
    let door = Door::from_config(&config)?;
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

    serve_primary(shared, svc, io, shutdown, control, ctl_rx).await
}

/// The adapter's transport: the primary's bus on the inherited socket, or Redis.
async fn cluster_driver(
    config: &Config,
    env: &WorkerEnv,
    bus: OwnedFd,
    request_timeout: Duration,
) -> Result<ClusterDriver, WorkerError> {
    Ok(match config.adapter {
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
    })
}

impl Door {
    /// The door settings of `config`: TLS (its files are read here), limits and timeouts.
    fn from_config(config: &Config) -> Result<Self, WorkerError> {
        let tls = match config.tls() {
            Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::door::tls::load(cert, key).map_err(|e| WorkerError::App(Box::new(e)))?,
            )),
            None => None,
        };
        let max_payload = usize::try_from(config.max_payload_bytes()).unwrap_or(usize::MAX);
        Ok(Door {
            tls,
            tls_handshake_timeout: config.head_timeout(),
            ws: crate::door::ws_limit::WsLimits {
                max_message: max_payload,
                max_frame: max_payload,
            },
            trusted: config.trusted_proxies.clone(),
            body_timeout: Duration::from_millis(config.body_timeout_ms),
        })
    }
}

/// Serves what the primary sends until the drain is over or the primary is gone:
/// connections to serve, replies to requests, the drain.
async fn serve_primary(
    shared: Arc<WorkerShared>,
    svc: AppService,
    io: SocketIo<ClusterAdapter>,
    shutdown: Shutdown,
    control: Control,
    mut ctl_rx: channel::Receiver<ToWorker>,
) -> Result<(), WorkerError> {
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
