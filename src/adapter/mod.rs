//! The cluster adapter: one adapter type for the IPC bus and for Redis.
//!
//! `socketioxide-redis` implements every adapter operation (broadcasts, acks, rooms, remote
//! sockets) over a small publish/subscribe [`Driver`]. [`ClusterDriver`] is that driver, backed
//! either by the primary's IPC bus ([`IpcDriver`]) or by Redis, so user code is written once
//! against [`ClusterAdapter`] and the `--adapter` flag picks the transport.

mod ipc;
pub(crate) mod redis;
mod tracker;
pub(crate) mod wire;

use socketioxide::adapter::Emitter;
use socketioxide_redis::CustomRedisAdapter;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};

pub use ipc::{IpcDriver, IpcDriverError};
pub use redis::{RedisBus, RedisBusError};

/// The adapter every worker runs: use it as the adapter type of your handlers.
///
/// ```no_run
/// use sio_cluster::ClusterAdapter;
/// use socketioxide::extract::SocketRef;
///
/// async fn on_connect(socket: SocketRef<ClusterAdapter>) {
///     socket.join("lobby");
/// }
/// ```
pub type ClusterAdapter = CustomRedisAdapter<Emitter, ClusterDriver>;

/// The transport under [`ClusterAdapter`].
#[derive(Clone, Debug)]
pub enum ClusterDriver {
    /// The primary's IPC bus (default, one host).
    Ipc(IpcDriver),
    /// A Redis server shared by several hosts.
    Redis(RedisBus),
}

/// Errors of [`ClusterDriver`].
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// From the IPC bus.
    #[error(transparent)]
    Ipc(#[from] IpcDriverError),
}

impl ClusterDriver {
    /// Adapter requests (fetch_sockets, rooms, acks across workers...) that ended at their
    /// timeout with answers missing, since start; `None` in Redis mode (not observable).
    pub fn request_timeouts(&self) -> Option<u64> {
        match self {
            ClusterDriver::Ipc(d) => Some(d.request_timeouts()),
            // socketioxide-redis keeps its requests to itself: not counted.
            ClusterDriver::Redis(_) => None,
        }
    }

    /// Whether the bus can carry messages now: always for the IPC bus (it lives as long as the
    /// primary), the Redis connection's state in Redis mode.
    pub fn is_up(&self) -> bool {
        match self {
            ClusterDriver::Ipc(_) => true,
            ClusterDriver::Redis(d) => d.is_up(),
        }
    }

    /// Number of servers subscribed to `chan` (the adapter's request channel of a namespace),
    /// this one included. Unlike [`Driver::num_serv`], which the adapter calls right before
    /// publishing a request, it keeps nothing for a request to come: use it for an application's
    /// own counts.
    pub async fn server_count(&self, chan: &str) -> Result<u16, DriverError> {
        match self {
            ClusterDriver::Ipc(d) => Ok(d.server_count(chan).await?),
            ClusterDriver::Redis(d) => Ok(infallible(d.num_serv(chan).await)),
        }
    }
}

impl Driver for ClusterDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        match self {
            ClusterDriver::Ipc(d) => Ok(d.publish(chan, val).await?),
            ClusterDriver::Redis(d) => {
                infallible(d.publish(chan, val).await);
                Ok(())
            }
        }
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        match self {
            ClusterDriver::Ipc(d) => Ok(d.subscribe(chan, size).await?),
            ClusterDriver::Redis(d) => Ok(infallible(d.subscribe(chan, size).await)),
        }
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        match self {
            ClusterDriver::Ipc(d) => Ok(d.unsubscribe(chan).await?),
            ClusterDriver::Redis(d) => {
                infallible(d.unsubscribe(chan).await);
                Ok(())
            }
        }
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        match self {
            ClusterDriver::Ipc(d) => Ok(d.num_serv(chan).await?),
            ClusterDriver::Redis(d) => Ok(infallible(d.num_serv(chan).await)),
        }
    }
}

/// The Redis transport absorbs outages instead of failing: its results cannot be errors.
fn infallible<T>(r: Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
    }
}
