//! The Redis transport of the cluster adapter: `socketioxide-redis`'s maintained [`RedisDriver`],
//! kept alive across Redis outages.
//!
//! The stock driver holds one connection for its whole life: when Redis goes away, publishes fail
//! (and with them local broadcasts, which the adapter only runs after publishing) and
//! subscriptions are lost. [`RedisBus`] wraps it:
//! - while Redis is down, publishes are dropped (counted) and succeed, so every worker keeps
//!   serving its own clients, local broadcasts included; server counts answer 1 (this worker), so
//!   acks, `rooms()` and `fetch_sockets()` complete with local answers instead of waiting;
//! - a background task reconnects with exponential backoff (100 ms to 1 s), subscribes again to
//!   every channel the adapter holds, and resumes cross-host delivery; a health check detects a
//!   dead connection even when nothing is published;
//! - the outage is logged once when it starts and once when it ends, with the number of messages
//!   that could not cross hosts. Redis pub/sub is at-most-once: those messages are lost.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{IntoConnectionInfo, ProtocolVersion};
use socketioxide_redis::drivers::redis::RedisDriver;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

/// Buffer of the stock driver's per-channel queue. It is drained at once into the adapter's own
/// queue, which applies backpressure; this one only absorbs bursts.
const DRIVER_BUFFER: usize = 16 * 1024;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const HEALTH_EVERY: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the Redis transport.
#[derive(Debug, thiserror::Error)]
pub enum RedisBusError {
    /// The URL is not a Redis URL.
    #[error("invalid --redis-url `{url}`: {reason}")]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// Why.
        reason: redis::RedisError,
    },
    /// Redis could not be reached at start.
    #[error(
        "cannot reach Redis at {url} within {timeout_ms} ms: {reason} (is redis-server 7+ running and reachable? check --redis-url)"
    )]
    Unreachable {
        /// The URL, password hidden.
        url: String,
        /// The configured timeout.
        timeout_ms: u128,
        /// What failed.
        reason: String,
    },
}

/// The `--redis-url` with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://***@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

/// Opens a client for `url`, forcing RESP3 (the driver needs push messages).
fn client(url: &str) -> Result<redis::Client, RedisBusError> {
    let bad = |reason| RedisBusError::BadUrl {
        url: redact(url),
        reason,
    };
    let info = url.into_connection_info().map_err(bad)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings)).map_err(bad)
}

/// Installs the TLS crypto provider used by `rediss://` URLs (once per process).
fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Checks that Redis answers at `url` within `timeout` (used by the primary before it starts
/// workers, so a wrong URL fails fast with a clear message).
pub async fn probe(url: &str, timeout: Duration) -> Result<(), RedisBusError> {
    tls_provider();
    let client = client(url)?;
    let unreachable = |reason: String| RedisBusError::Unreachable {
        url: redact(url),
        timeout_ms: timeout.as_millis(),
        reason,
    };
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("timed out".into())),
    }
}

struct Sub {
    tx: mpsc::Sender<ChanItem>,
    pump: Option<AbortHandle>,
}

struct Inner {
    url: String,
    client: redis::Client,
    driver: RwLock<Option<RedisDriver>>,
    subs: Mutex<HashMap<String, Sub>>,
    down_since: Mutex<Option<Instant>>,
    lost: AtomicU64,
    wake: Notify,
    health_chan: String,
}

/// A resilient Redis driver; cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl RedisBus {
    /// Connects to `url` (failing if Redis does not answer within `timeout`) and starts the
    /// reconnect and health tasks.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, RedisBusError> {
        tls_provider();
        let client = client(url)?;
        let driver = match tokio::time::timeout(timeout, RedisDriver::new(&client)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                return Err(RedisBusError::Unreachable {
                    url: redact(url),
                    timeout_ms: timeout.as_millis(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(RedisBusError::Unreachable {
                    url: redact(url),
                    timeout_ms: timeout.as_millis(),
                    reason: "timed out".into(),
                });
            }
        };
        let inner = Arc::new(Inner {
            url: redact(url),
            client,
            driver: RwLock::new(Some(driver)),
            subs: Mutex::default(),
            down_since: Mutex::new(None),
            lost: AtomicU64::new(0),
            wake: Notify::new(),
            health_chan: format!("{prefix}-health#"),
        });
        tokio::spawn(reconnect_loop(inner.clone()));
        tokio::spawn(health_loop(inner.clone()));
        Ok(Self { inner })
    }

    fn driver(&self) -> Option<RedisDriver> {
        self.inner.driver.read().unwrap().clone()
    }
}

impl Inner {
    /// The connection failed: forget it, log once, let the reconnect task work.
    fn mark_down(&self, why: &dyn fmt::Display) {
        let was_up = self.driver.write().unwrap().take().is_some();
        if !was_up {
            return;
        }
        for sub in self.subs.lock().unwrap().values_mut() {
            if let Some(p) = sub.pump.take() {
                p.abort();
            }
        }
        let mut since = self.down_since.lock().unwrap();
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::warn!(
                url = %self.url,
                "lost the Redis connection ({why}); this worker keeps serving its own clients, \
                 cross-host delivery is paused (messages published meanwhile are lost: Redis pub/sub \
                 is at-most-once); reconnecting"
            );
        }
        self.wake.notify_one();
    }
}

/// Forwards one channel of the stock driver into the adapter's stream.
fn pump(mut from: MessageStream<ChanItem>, to: mpsc::Sender<ChanItem>) -> AbortHandle {
    tokio::spawn(async move {
        while let Some(item) = from.next().await {
            if to.send(item).await.is_err() {
                break;
            }
        }
    })
    .abort_handle()
}

async fn reconnect_loop(inner: Arc<Inner>) {
    loop {
        inner.wake.notified().await;
        if inner.driver.read().unwrap().is_some() {
            continue;
        }
        let mut backoff = BACKOFF_FIRST;
        loop {
            match try_reconnect(&inner).await {
                Ok(driver) => {
                    *inner.driver.write().unwrap() = Some(driver);
                    let since = inner.down_since.lock().unwrap().take();
                    let lost = inner.lost.swap(0, Ordering::Relaxed);
                    tracing::info!(
                        url = %inner.url,
                        outage_ms = since.map_or(0, |t| t.elapsed().as_millis() as u64),
                        lost_messages = lost,
                        "Redis connection restored; cross-host delivery resumed"
                    );
                    break;
                }
                Err(e) => {
                    tracing::debug!(url = %inner.url, "Redis reconnect failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Connects and subscribes again to every channel the adapter holds.
async fn try_reconnect(inner: &Inner) -> Result<RedisDriver, String> {
    let driver = tokio::time::timeout(COMMAND_TIMEOUT, RedisDriver::new(&inner.client))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let chans: Vec<(String, mpsc::Sender<ChanItem>)> = inner
        .subs
        .lock()
        .unwrap()
        .iter()
        .map(|(c, s)| (c.clone(), s.tx.clone()))
        .collect();
    let mut pumps = Vec::new();
    for (chan, tx) in chans {
        let stream = tokio::time::timeout(
            COMMAND_TIMEOUT,
            driver.subscribe(chan.clone(), DRIVER_BUFFER),
        )
        .await
        .map_err(|_| "subscribe timed out".to_string())?
        .map_err(|e| e.to_string())?;
        pumps.push((chan, pump(stream, tx)));
    }
    let mut subs = inner.subs.lock().unwrap();
    for (chan, handle) in pumps {
        match subs.get_mut(&chan) {
            Some(sub) => sub.pump = Some(handle),
            // Unsubscribed meanwhile.
            None => handle.abort(),
        }
    }
    Ok(driver)
}

async fn health_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    loop {
        tick.tick().await;
        let driver = inner.driver.read().unwrap().clone();
        if let Some(d) = driver {
            match tokio::time::timeout(COMMAND_TIMEOUT, d.num_serv(&inner.health_chan)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => inner.mark_down(&e),
                Err(_) => inner.mark_down(&"no answer to a health check"),
            }
        }
    }
}

impl Driver for RedisBus {
    type Error = std::convert::Infallible;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        match self.driver() {
            Some(d) => match tokio::time::timeout(COMMAND_TIMEOUT, d.publish(chan, val)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.inner.mark_down(&e);
                    self.inner.lost.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.inner.mark_down(&"publish timed out");
                    self.inner.lost.fetch_add(1, Ordering::Relaxed);
                }
            },
            None => {
                self.inner.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size.max(1));
        self.inner.subs.lock().unwrap().insert(
            chan.clone(),
            Sub {
                tx: tx.clone(),
                pump: None,
            },
        );
        if let Some(d) = self.driver() {
            match tokio::time::timeout(COMMAND_TIMEOUT, d.subscribe(chan.clone(), DRIVER_BUFFER))
                .await
            {
                Ok(Ok(stream)) => {
                    let handle = pump(stream, tx);
                    match self.inner.subs.lock().unwrap().get_mut(&chan) {
                        Some(sub) => sub.pump = Some(handle),
                        None => handle.abort(),
                    }
                }
                // The reconnect task subscribes again once Redis is back.
                Ok(Err(e)) => self.inner.mark_down(&e),
                Err(_) => self.inner.mark_down(&"subscribe timed out"),
            }
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        if let Some(sub) = self.inner.subs.lock().unwrap().remove(&chan)
            && let Some(p) = sub.pump
        {
            p.abort();
        }
        if let Some(d) = self.driver() {
            let _ = tokio::time::timeout(COMMAND_TIMEOUT, d.unsubscribe(chan)).await;
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let Some(d) = self.driver() else {
            // Only this worker is reachable: requests complete with local answers.
            return Ok(1);
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, d.num_serv(chan)).await {
            Ok(Ok(n)) => Ok(n.max(1)),
            Ok(Err(e)) => {
                self.inner.mark_down(&e);
                Ok(1)
            }
            Err(_) => {
                self.inner.mark_down(&"server count timed out");
                Ok(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://:secret@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(redact("rediss://user:pw@h:1"), "rediss://user:***@h:1");
        assert_eq!(redact("redis://token@h"), "redis://***@h");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn bad_urls_are_reported_without_the_password() {
        let e = client("http://:secret@x").err().unwrap().to_string();
        assert!(e.contains("invalid --redis-url"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }
}
