//! # sio-cluster
//!
//! Serve a [socketioxide](https://docs.rs/socketioxide) (Socket.IO) app on every core of a
//! machine, with no proxy and no Redis, and across machines with one flag.
//!
//! The binary you build with [`run`] is the whole cluster. Started normally it is the
//! **primary**: it owns the listening socket, starts one **worker** process per core by
//! re-executing itself, and passes every client connection (the descriptor, not the bytes) to the
//! worker that owns its Engine.IO session, or to the least-loaded worker for a new session.
//! Workers run your handlers. Broadcasts, rooms, acks and remote-socket operations cross
//! workers through the [`ClusterAdapter`], over an IPC bus relayed by the primary, or over
//! Redis (`--adapter redis`).
//!
//! ```no_run
//! use sio_cluster::{ClusterAdapter, Config, Worker};
//! use socketioxide::extract::{Data, SocketRef};
//!
//! fn main() -> anyhow::Result<()> {
//!     let config = <Config as clap::Parser>::parse(); // --listen, --workers, ... and SIO_* env
//!     sio_cluster::run(config, |Worker { io, .. }| async move {
//!         io.ns("/", async |socket: SocketRef<ClusterAdapter>| {
//!             socket.on("chat", async |s: SocketRef<ClusterAdapter>, Data::<String>(msg)| {
//!                 // Reaches every client, whichever worker holds it.
//!                 let _ = s.broadcast().emit("chat", &msg).await;
//!             });
//!         })
//!         .await?;
//!         Ok(axum::Router::new()) // your other HTTP routes
//!     })?;
//!     Ok(())
//! }
//! ```
//!
//! The public API is what an app needs: [`run`] or the [`Cluster`] builder, the [`Config`]
//! (flags and `SIO_*` variables, in [`config`]), what each worker's setup receives
//! ([`Worker`]: the `SocketIo`, [`WorkerInfo`], the [`ClusterHandle`]), the [`ClusterAdapter`]
//! (in [`adapter`]) and the errors. The rest is private and may change in any release;
//! ARCHITECTURE.md describes it, following the data: accept → peek → route → hand off → serve
//! → relay.

#![deny(missing_docs)]

pub mod adapter;
pub mod config;
pub(crate) mod config_file;
mod door;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz_api;
pub(crate) mod ipc;
mod logging;
mod sid;
mod status;
mod supervisor;
mod sync;
mod worker;

use std::future::Future;

pub use adapter::ClusterAdapter;
pub use config::{Config, ConfigError};
pub use door::forwarded::TrustedProxies;
pub use door::tls::TlsError;
pub use ipc::hello::WIRE_VERSION;
pub use sid::SessionId;
pub use status::StatusError;
pub use supervisor::SupervisorError;
pub use worker::{
    ClientAddr, ClusterHandle, HttpService, Shutdown, ShutdownGuard, Worker, WorkerError,
    WorkerInfo,
};

/// Boxed error returned by user setup code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can stop the cluster. Its messages say what to do; print them and exit
/// non-zero (systemd then restarts the service).
///
/// ```no_run
/// # fn app(w: sio_cluster::Worker) -> impl std::future::Future<Output = Result<axum::Router, sio_cluster::BoxError>> { async { Ok(axum::Router::new()) } }
/// let config: sio_cluster::Config = clap::Parser::parse();
/// if let Err(e) = sio_cluster::run(config, app) {
///     eprintln!("error: {e}");
///     if matches!(e, sio_cluster::Error::Config(_)) {
///         std::process::exit(2); // a usage error, as clap's own
///     }
///     std::process::exit(1);
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The primary failed.
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    /// A worker failed.
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
    /// The path of the running executable is unknown (needed to start workers).
    #[error("cannot find the running executable to start workers: {0}")]
    Exe(std::io::Error),
}

/// Builder for a cluster: app state, socketioxide customisation, tower layers.
///
/// ```no_run
/// use std::sync::Arc;
/// use sio_cluster::{ClusterAdapter, WorkerInfo};
/// use socketioxide::extract::{SocketRef, State};
///
/// #[derive(Clone)]
/// struct AppState {
///     greeting: Arc<str>,
/// }
///
/// # fn demo(config: sio_cluster::Config) -> Result<(), sio_cluster::Error> {
/// sio_cluster::Cluster::new(config)
///     .with_state(AppState { greeting: "hello".into() })
///     .socketio(|b| b.max_buffer_size(1024))
///     // Every HTTP response of the worker, Socket.IO's polling included.
///     .layer(tower::util::MapResponseLayer::new(|mut r: http::Response<axum::body::Body>| {
///         r.headers_mut().insert("x-served-by", http::HeaderValue::from_static("sio-cluster"));
///         r
///     }))
///     .run(|w| async move {
///         w.io.ns(
///             "/",
///             async |s: SocketRef<ClusterAdapter>, State(app): State<AppState>, State(me): State<WorkerInfo>| {
///                 let _ = s.emit("welcome", &format!("{} from worker {}", app.greeting, me.index));
///             },
///         )
///         .await?;
///         Ok(axum::Router::new())
///     })
/// # }
/// ```
pub struct Cluster {
    config: Config,
    setup: worker::Setup,
}

impl Cluster {
    /// A cluster with this configuration.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            setup: worker::Setup::default(),
        }
    }

    /// Customises the socketioxide builder in every worker (buffer sizes, transports...).
    /// Customisations apply in the order given, after the settings of the [`Config`]; one that
    /// changes a setting the config owns (path, ping interval and timeout, payload limits, ack
    /// and connect timeouts) stops the worker at start with an error naming the flag to use
    /// instead, since the primary and every worker must agree on them.
    pub fn socketio(
        mut self,
        f: impl FnOnce(
            socketioxide::SocketIoBuilder<ClusterAdapter>,
        ) -> socketioxide::SocketIoBuilder<ClusterAdapter>
        + 'static,
    ) -> Self {
        self.setup.configure.push(Box::new(move |b, _, _| f(b)));
        self
    }

    /// App state for the handlers, taken with socketioxide's `State<S>` extractor (as axum's
    /// `with_state`). Each worker process has its own copy: state shared across workers lives
    /// in the rooms, the adapter or an outside store. Every worker also provides
    /// `State<WorkerInfo>` and `State<ClusterHandle>`.
    pub fn with_state<S: Clone + Send + Sync + 'static>(self, state: S) -> Self {
        self.socketio(move |b| b.with_state(state))
    }

    /// Like [`with_state`](Self::with_state), for state made in each worker from who it is and
    /// the cluster handle (a pool sized by the worker count, a handle to count servers...).
    ///
    /// ```no_run
    /// # fn demo(config: sio_cluster::Config) -> sio_cluster::Cluster {
    /// #[derive(Clone)]
    /// struct Me {
    ///     label: String,
    /// }
    /// sio_cluster::Cluster::new(config)
    ///     .with_state_from(|info, _cluster| Me { label: format!("worker {}/{}", info.index, info.workers) })
    /// # }
    /// ```
    pub fn with_state_from<S, F>(mut self, make: F) -> Self
    where
        S: Clone + Send + Sync + 'static,
        F: FnOnce(&WorkerInfo, &ClusterHandle) -> S + 'static,
    {
        self.setup.configure.push(Box::new(move |b, info, cluster| {
            b.with_state(make(info, cluster))
        }));
        self
    }

    /// Wraps each worker's whole HTTP service — Socket.IO's path with every transport, and the
    /// app's axum routes — in a tower layer: CORS, tracing, compression, auth... (tower-http's
    /// layers fit). Layers added later wrap the earlier ones, as in axum. (`--health-path` is
    /// answered by the cluster before any layer, so a load balancer's probe never needs the
    /// app's auth.)
    pub fn layer<L, B>(mut self, layer: L) -> Self
    where
        L: tower_layer::Layer<HttpService> + 'static,
        L::Service: tower::Service<
                http::Request<axum::body::Body>,
                Response = http::Response<B>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        <L::Service as tower::Service<http::Request<axum::body::Body>>>::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = self.setup.wrap.take();
        self.setup.wrap = Some(Box::new(move |svc: HttpService| {
            use tower::ServiceExt;
            let svc = match inner {
                Some(inner) => inner(svc),
                None => svc,
            };
            HttpService::new(
                layer
                    .layer(svc)
                    .map_response(|r: http::Response<B>| r.map(axum::body::Body::new)),
            )
        }));
        self
    }

    /// Runs the cluster: as the primary when started by a user, as a worker when started by the
    /// primary. `app` runs once in each worker to register namespaces (await `io.ns(..)`) and
    /// returns the axum routes served next to Socket.IO.
    ///
    /// Call it from `main` before starting any thread. Blocks until the cluster stops; the
    /// primary returns `Ok(())` after a clean shutdown (SIGTERM/SIGINT), and a worker returns
    /// `Ok(())` once its drain is over or its primary is gone, so code after `run` runs in
    /// both (it can tell them apart by whether its setup closure ran).
    ///
    /// With the `status` command (`app status --admin-listen ADDR`) it prints the workers of
    /// the cluster running there instead and returns; if nothing answers it prints one line
    /// on stderr and exits the process with status 1.
    pub fn run<F, Fut>(self, app: F) -> Result<(), Error>
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = Result<axum::Router, BoxError>>,
    {
        if let Some(config::Command::Status(args)) = &self.config.command {
            if let Err(e) = status::run(args) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            return Ok(());
        }
        self.config.validate()?;
        match worker::WorkerEnv::from_env()? {
            Some(env) => {
                logging::init(
                    logging::Role::Worker(env.slot),
                    self.config.log_format,
                    self.config.log_level.as_deref(),
                );
                worker::run(env, self.config, self.setup, app).map_err(Error::from)
            }
            None => {
                let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                // The config file may set the log format and level too (its errors are
                // reported by the supervisor, once logging is up).
                let logs = self
                    .config
                    .config_file
                    .as_deref()
                    .and_then(|path| {
                        let file = config_file::EnvFile::read(path).ok()?;
                        config_file::effective_config(&args, &file, path).ok()
                    })
                    .unwrap_or_else(|| self.config.clone());
                logging::init(
                    logging::Role::Primary,
                    logs.log_format,
                    logs.log_level.as_deref(),
                );
                let exe = worker_exe().map_err(Error::Exe)?;
                supervisor::run(self.config, exe, args).map_err(Error::from)
            }
        }
    }
}

/// The path workers are started from: the path this binary was started by, as given.
///
/// Not `/proc/self/exe`, which names the file we run: after a deploy that replaced the binary
/// (or repointed a `current -> releases/N` symlink) that is the old release, and a reload must
/// start the new one. A path given with a `/` is kept (made absolute, as the primary never
/// changes directory); a bare name found through `PATH`, or an `argv[0]` that names no file,
/// falls back to the running file.
fn worker_exe() -> std::io::Result<std::path::PathBuf> {
    let argv0 = std::env::args_os().next().map(std::path::PathBuf::from);
    match argv0 {
        Some(p) if p.as_os_str().as_encoded_bytes().contains(&b'/') && p.is_file() => {
            if p.is_absolute() {
                Ok(p)
            } else {
                Ok(std::env::current_dir()?.join(p))
            }
        }
        _ => std::env::current_exe(),
    }
}

/// Runs the cluster with `config`; see [`Cluster::run`] (and [`Cluster`] for state, layers and
/// socketioxide settings).
///
/// ```no_run
/// fn main() -> Result<(), sio_cluster::Error> {
///     let config: sio_cluster::Config = clap::Parser::parse();
///     sio_cluster::run(config, |w| async move {
///         w.io.ns("/", async || {}).await?;
///         Ok(axum::Router::new())
///     })
/// }
/// ```
pub fn run<F, Fut>(config: Config, app: F) -> Result<(), Error>
where
    F: FnOnce(Worker) -> Fut,
    Fut: Future<Output = Result<axum::Router, BoxError>>,
{
    Cluster::new(config).run(app)
}

/// README.md's code blocks, compiled as doctests (`cargo test --doc`), so its example keeps
/// up with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
