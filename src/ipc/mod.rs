//! Inter-process plumbing between the primary and its workers.
//!
//! Each worker gets two socket pairs at spawn:
//! - a **control channel** (`SOCK_SEQPACKET`, [`channel`]) carrying typed [`message`]s and the
//!   client connections themselves (`SCM_RIGHTS`);
//! - a **bus** (`SOCK_STREAM`, [`frame`]) carrying the adapter's publish/subscribe traffic
//!   ([`bus`]), relayed by the primary to the other workers.
//!
//! A worker's first message is its [`hello`]: the primary refuses a worker of a build that
//! speaks another wire protocol.
//!
//! Both are inherited across `exec` at descriptor numbers given in the environment
//! ([`WorkerEnv`](crate::worker::WorkerEnv)).

pub mod bus;
pub mod channel;
pub mod frame;
pub mod hello;
pub mod message;

/// Errors of the IPC layer.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// A socket call failed.
    #[error("{0} failed: {1}")]
    Socket(&'static str, std::io::Error),
    /// The peer process closed its end.
    #[error("the other process closed the channel")]
    Closed,
    /// A message could not be encoded.
    #[error("cannot encode IPC message: {0}")]
    Encode(postcard::Error),
    /// A message could not be decoded (version skew or corruption).
    #[error("cannot decode IPC message: {0}")]
    Decode(postcard::Error),
    /// A message is larger than the channel accepts.
    #[error("IPC message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The kernel truncated a message or its descriptors.
    #[error("IPC {0} was truncated")]
    Truncated(&'static str),
    /// The descriptor count announced by a message does not match what arrived.
    #[error("message announced {expected} descriptor(s) but {got} arrived")]
    Manifest {
        /// Announced.
        expected: usize,
        /// Received.
        got: usize,
    },
}
