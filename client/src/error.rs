//! The crate's error type.

use serde_json::Value;

/// Everything that can go wrong while talking to a Socket.IO server.
///
/// The `Display` output always says what happened; for HTTP failures it includes the
/// status code and the response body (e.g. `HTTP 400: {"code":"1","message":"Session ID unknown"}`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket-level I/O error (connect refused, reset, ...).
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),

    /// The server answered an HTTP request (polling request or websocket upgrade request)
    /// with a non-success status. `body` is the response body, lossily decoded as UTF-8.
    #[error("HTTP {status}: {body}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The response body.
        body: String,
    },

    /// An HTTP or websocket transport failure that is not a plain I/O error
    /// (e.g. a malformed response, a connection closed in the middle of a request).
    #[error("transport error: {0}")]
    Transport(String),

    /// A TLS handshake failed (the server's certificate is not trusted or not valid for the
    /// server name, the server does not speak TLS on that port, it aborted the handshake, ...),
    /// or the TLS configuration could not be built. The message says which, and what to check.
    #[error("TLS error: {0}")]
    Tls(String),

    /// An operation did not complete in time; the string says which one.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The server sent something that does not follow the Engine.IO / Socket.IO protocol.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The server refused a namespace connection (`44` CONNECT_ERROR packet); `data` is its
    /// payload, usually `{"message": "..."}`.
    #[error("connect error on namespace {ns}: {data}")]
    ConnectError {
        /// The namespace that refused the connection.
        ns: String,
        /// The CONNECT_ERROR payload sent by the server.
        data: Value,
    },

    /// The server disconnected the client from a namespace (`41` DISCONNECT packet).
    #[error("disconnected from namespace {ns} by the server")]
    Disconnected {
        /// The namespace the client was removed from.
        ns: String,
    },

    /// The connection is closed; the string is the reason (server close packet, transport
    /// error, ping timeout, client disconnect, ...).
    #[error("connection closed: {0}")]
    Closed(String),

    /// A value could not be serialized or deserialized as JSON.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),

    /// Bad input given to this client (e.g. a malformed `{"$binary": ...}` value).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The HTTP status code, if this is an [`Error::Http`].
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// True for [`Error::Tls`].
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls(_))
    }

    /// True for [`Error::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed(_))
    }
}

impl From<hyper::Error> for Error {
    fn from(e: hyper::Error) -> Self {
        Error::Transport(format!("http: {e}"))
    }
}

impl From<http::Error> for Error {
    fn from(e: http::Error) -> Self {
        Error::InvalidArgument(format!("http request: {e}"))
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as WsError;
        match e {
            WsError::Io(e) => Error::Io(e),
            WsError::Http(resp) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Error::Http { status, body }
            }
            e => Error::Transport(format!("websocket: {e}")),
        }
    }
}

/// Shorthand for `Result<T, sio_client::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
