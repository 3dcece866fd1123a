//! What an app hands its workers through [`Cluster`](crate::Cluster), and what a worker builds
//! from it: the socketioxide customisations and state, the app's tower layers around the whole
//! HTTP service, and the check that no customisation changed a setting the flags own.

use std::convert::Infallible;

use socketioxide::service::SocketIoService;
use socketioxide::{SocketIo, SocketIoBuilder};

use super::{ClusterHandle, WorkerError, WorkerInfo, body};
use crate::adapter::ClusterAdapter;
use crate::config::Config;

/// Type of the optional socketioxide builder customisation.
pub(crate) type Configure = Box<
    dyn FnOnce(
        SocketIoBuilder<ClusterAdapter>,
        &WorkerInfo,
        &ClusterHandle,
    ) -> SocketIoBuilder<ClusterAdapter>,
>;

/// The service a worker runs for each connection: socketioxide in front of the user's routes,
/// wrapped in the app's layers ([`crate::Cluster::layer`]).
pub(crate) type AppService = tower::util::BoxCloneService<
    http::Request<body::TimedBody>,
    http::Response<axum::body::Body>,
    Infallible,
>;

/// The worker's whole HTTP service as an app's tower layers see it
/// ([`Cluster::layer`](crate::Cluster::layer)): Socket.IO (its path, every transport) in front of
/// the app's axum routes. A layer written for it:
///
/// ```no_run
/// use sio_cluster::HttpService;
/// use tower::ServiceExt;
///
/// /// Adds `x-worker-pid` to every response, Socket.IO's included.
/// fn with_pid(svc: HttpService) -> HttpService {
///     let pid = std::process::id().to_string();
///     HttpService::new(svc.map_response(move |mut r| {
///         r.headers_mut().insert("x-worker-pid", pid.parse().unwrap());
///         r
///     }))
/// }
/// # fn demo(config: sio_cluster::Config) -> sio_cluster::Cluster {
/// sio_cluster::Cluster::new(config).layer(tower::layer::layer_fn(with_pid))
/// # }
/// ```
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

/// The worker's service: socketioxide in front of `router`'s routes, inside the app's layers.
pub(super) fn http_service(
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
pub(super) fn check_engine_settings(
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
