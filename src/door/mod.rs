//! The door: what stands between the network and the app, on both sides of the hand-off.
//!
//! - [`proxy_protocol`]: the PROXY protocol header (v1 text, v2 binary) a load balancer puts in
//!   front of each connection, read by the primary before the request head;
//! - [`forwarded`]: `--trusted-proxies` and the client address of `X-Forwarded-For`;
//! - [`tls`]: `--tls-cert`/`--tls-key`, loaded and checked;
//! - [`ws_limit`]: `--max-payload` on websocket frames and messages, closing with 1009.

pub(crate) mod forwarded;
pub(crate) mod proxy_protocol;
pub(crate) mod tls;
pub(crate) mod ws_limit;
