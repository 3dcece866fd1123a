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
pub use worker::{ClientAddr, ClusterHandle, Worker, WorkerError, WorkerInfo};

/// Boxed error returned by user setup code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can stop the cluster.
#[derive(Debug, thiserror::Error)]
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

/// Builder for a cluster, when the socketioxide builder needs customising.
///
/// ```no_run
/// # fn demo(config: sio_cluster::Config) -> Result<(), sio_cluster::Error> {
/// sio_cluster::Cluster::new(config)
///     .socketio(|b| b.max_buffer_size(1024))
///     .run(|w| async move {
///         w.io.ns("/", async || {}).await?;
///         Ok(axum::Router::new())
///     })
/// # }
/// ```
pub struct Cluster {
    config: Config,
    configure: Option<worker::Configure>,
}

impl Cluster {
    /// A cluster with this configuration.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            configure: None,
        }
    }

    /// Customises the socketioxide builder in every worker (state, parser, buffer sizes...).
    pub fn socketio(
        mut self,
        f: impl FnOnce(
            socketioxide::SocketIoBuilder<ClusterAdapter>,
        ) -> socketioxide::SocketIoBuilder<ClusterAdapter>
        + 'static,
    ) -> Self {
        self.configure = Some(Box::new(f));
        self
    }

    /// Runs the cluster: as the primary when started by a user, as a worker when started by the
    /// primary. `app` runs once in each worker to register namespaces (await `io.ns(..)`) and
    /// returns the axum routes served next to Socket.IO.
    ///
    /// Call it from `main` before starting any thread. Blocks until the cluster stops; the
    /// primary returns `Ok(())` after a clean shutdown (SIGTERM/SIGINT).
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
                worker::run(env, self.config, self.configure, app).map_err(Error::from)
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

/// Runs the cluster with `config`; see [`Cluster::run`].
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
