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
//! - every connection has a generation number and every operation remembers the one it used, so
//!   a late failure on a connection that already died cannot drop its healthy replacement
//!   (`Link` holds that rule, apart from the I/O, and its tests check it);
//! - the outage is logged once when it starts and once when it ends (by each worker: every worker
//!   has its own connection), with the number of messages that could not cross. It ends once
//!   every channel is subscribed again. Redis pub/sub is at-most-once: those messages are lost.
//!
//! - a reply that comes late is not a dead connection: the stock driver keeps redis-rs's 500 ms
//!   response timeout (it gives no way to change it), and under heavy load a `PUBLISH` can be
//!   answered later than that. Such a message is counted as lost and logged (at most every
//!   10 s), and the connection is kept; a connection error, or three health checks in a row
//!   unanswered, is what ends a connection (see BENCHMARKS.md, "Redis mode under load").

use crate::sync::LockExt;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
/// Health checks in a row that may go unanswered before a connection counts as dead: a reply
/// late under load is not a lost connection, a silent peer for this long is.
const HEALTH_MISSES: u32 = 3;
const SLOW_LOG_EVERY: Duration = Duration::from_secs(10);

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
        "cannot reach Redis at {url} within {timeout_ms} ms: {reason} (is redis-server 7+ running and reachable from this host? check --redis-url, or raise --redis-connect-timeout-ms if Redis is slow to answer)"
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
    // redis-rs gives up connecting after 1 s and on answers after 500 ms by default: without
    // this, `--redis-connect-timeout-ms` above 1 s would not be honoured. The timeout below
    // bounds the whole exchange instead.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(None);
    let ping = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("timed out".into())),
    }
}

/// Stops a task forwarding one channel: a tokio [`AbortHandle`] in the bus, a flag in the tests
/// of [`Link`].
trait Abort {
    fn abort(&self);
}

impl Abort for AbortHandle {
    fn abort(&self) {
        AbortHandle::abort(self);
    }
}

/// Whether a channel is subscribed on the current connection.
enum Pump<P> {
    /// Not subscribed on the current connection (none yet, or it failed).
    Idle,
    /// A `SUBSCRIBE` on the connection of this generation is under way.
    Pending(u64),
    /// Forwarded by this task from the current connection.
    Running(P),
}

/// One channel the adapter subscribed to.
struct Sub<P> {
    /// The adapter's queue for it; the same across connections.
    tx: mpsc::Sender<ChanItem>,
    pump: Pump<P>,
}

/// What a failed operation did to the [`Link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// It ran on an older connection than the current one, or the current one is already down:
    /// nothing changes.
    Ignored,
    /// It took the current connection down and starts an outage: log it, wake the reconnect task.
    OutageStarted,
    /// It took down a connection the reconnect task made during an outage that is not over yet
    /// (it failed while subscribing again): wake the reconnect task, log nothing new.
    Dropped,
}

/// The state of the bus without its I/O: the current connection and its generation, the
/// channels the adapter holds and since when Redis is unreachable.
///
/// Every connection gets a new generation number. An operation carries the generation of the
/// connection it used, and its failure takes the link down only if that connection is still the
/// current one: a publish that started on a connection which died, and fails after the reconnect
/// task installed a new one, must neither drop the healthy new connection nor log a second
/// outage.
struct Link<D, P> {
    generation: u64,
    driver: Option<D>,
    down_since: Option<Instant>,
    subs: HashMap<String, Sub<P>>,
}

impl<D: Clone, P: Abort> Link<D, P> {
    fn new(driver: D) -> Self {
        Self {
            generation: 1,
            driver: Some(driver),
            down_since: None,
            subs: HashMap::new(),
        }
    }

    /// The current connection and its generation; `None` while Redis is down.
    fn current(&self) -> Option<(u64, D)> {
        self.driver.as_ref().map(|d| (self.generation, d.clone()))
    }

    fn is_current(&self, generation: u64) -> bool {
        self.driver.is_some() && generation == self.generation
    }

    /// An operation on the connection of generation `generation` failed at `now`.
    fn fail(&mut self, generation: u64, now: Instant) -> Failure {
        if !self.is_current(generation) {
            return Failure::Ignored;
        }
        self.driver = None;
        for sub in self.subs.values_mut() {
            if let Pump::Running(p) = std::mem::replace(&mut sub.pump, Pump::Idle) {
                p.abort();
            }
        }
        if self.down_since.is_none() {
            self.down_since = Some(now);
            Failure::OutageStarted
        } else {
            Failure::Dropped
        }
    }

    /// Makes `driver`, just connected by the reconnect task, the current connection and returns
    /// its generation. The outage lasts until [`Link::restored`].
    fn install(&mut self, driver: D) -> u64 {
        self.generation += 1;
        self.driver = Some(driver);
        self.generation
    }

    /// The adapter subscribes to `chan`, its messages going to `tx`. Returns the connection to
    /// subscribe on, if Redis is up (the channel is then claimed for it); otherwise the
    /// reconnect task subscribes it.
    fn add_sub(&mut self, chan: String, tx: mpsc::Sender<ChanItem>) -> Option<(u64, D)> {
        let current = self.current();
        let pump = match &current {
            Some((generation, _)) => Pump::Pending(*generation),
            None => Pump::Idle,
        };
        if let Some(old) = self.subs.insert(chan, Sub { tx, pump })
            && let Pump::Running(p) = old.pump
        {
            p.abort();
        }
        current
    }

    /// The adapter unsubscribes from `chan`.
    fn remove_sub(&mut self, chan: &str) {
        if let Some(sub) = self.subs.remove(chan)
            && let Pump::Running(p) = sub.pump
        {
            p.abort();
        }
    }

    /// Claims, for the connection of generation `generation`, every channel not subscribed on it and
    /// not being subscribed (empty if that connection is no longer current).
    fn claim_idle(&mut self, generation: u64) -> Vec<(String, mpsc::Sender<ChanItem>)> {
        if !self.is_current(generation) {
            return Vec::new();
        }
        self.subs
            .iter_mut()
            .filter(|(_, s)| matches!(s.pump, Pump::Idle))
            .map(|(chan, s)| {
                s.pump = Pump::Pending(generation);
                (chan.clone(), s.tx.clone())
            })
            .collect()
    }

    /// `chan` was subscribed on the connection of generation `generation` and `pump` forwards it. Keeps
    /// the pump if that connection is current and the claim still holds; otherwise aborts it
    /// (the channel was unsubscribed, or that connection failed meanwhile) and returns false.
    fn set_pump(&mut self, chan: &str, generation: u64, pump: P) -> bool {
        let current = self.is_current(generation);
        match self.subs.get_mut(chan) {
            Some(sub) if current && matches!(sub.pump, Pump::Pending(g) if g == generation) => {
                sub.pump = Pump::Running(pump);
                true
            }
            _ => {
                pump.abort();
                false
            }
        }
    }

    /// Every channel is subscribed again on the connection of generation `generation`: the outage ends.
    /// Returns when it began, or `None` if that connection is no longer current.
    fn restored(&mut self, generation: u64, now: Instant) -> Option<Instant> {
        if !self.is_current(generation) {
            return None;
        }
        Some(self.down_since.take().unwrap_or(now))
    }
}

struct Inner {
    url: String,
    client: redis::Client,
    link: Mutex<Link<RedisDriver, AbortHandle>>,
    lost: AtomicU64,
    /// Publishes dropped because Redis answered too late (the connection was kept).
    slow: AtomicU64,
    /// When a slow reply was last logged (logged at most every [`SLOW_LOG_EVERY`]).
    slow_logged: Mutex<Option<Instant>>,
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
    ///
    /// The stock driver keeps redis-rs's own connection timeout (1 s), which cannot be
    /// configured through it: the primary's start-up probe is what honours a longer `timeout`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, RedisBusError> {
        tls_provider();
        let client = client(url)?;
        let unreachable = |reason: String| RedisBusError::Unreachable {
            url: redact(url),
            timeout_ms: timeout.as_millis(),
            reason,
        };
        let driver = match tokio::time::timeout(timeout, RedisDriver::new(&client)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("timed out".into())),
        };
        let inner = Arc::new(Inner {
            url: redact(url),
            client,
            link: Mutex::new(Link::new(driver)),
            lost: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            slow_logged: Mutex::new(None),
            wake: Notify::new(),
            health_chan: format!("{prefix}-health#"),
        });
        tokio::spawn(reconnect_loop(inner.clone()));
        tokio::spawn(health_loop(inner.clone()));
        Ok(Self { inner })
    }

    /// Whether the connection to Redis is up now (false during an outage, until the reconnect
    /// task has connected and subscribed again).
    pub fn is_up(&self) -> bool {
        self.inner.link.lock_unpoisoned().current().is_some()
    }
}

impl Inner {
    fn current(&self) -> Option<(u64, RedisDriver)> {
        self.link.lock_unpoisoned().current()
    }

    /// An operation on the connection of generation `generation` failed. If that connection is still
    /// the current one, forget it, log the outage once and let the reconnect task work; a
    /// failure of an older connection changes nothing.
    fn fail(&self, generation: u64, why: &dyn fmt::Display) {
        let failure = self.link.lock_unpoisoned().fail(generation, Instant::now());
        match failure {
            Failure::Ignored => {
                tracing::debug!(url = %self.url, generation, "stale Redis connection failed ({why})");
            }
            Failure::OutageStarted => {
                tracing::warn!(
                    url = %self.url,
                    "lost the Redis connection ({why}); this worker keeps serving its own clients, \
                     cross-host delivery is paused (messages published meanwhile are lost: Redis \
                     pub/sub is at-most-once); reconnecting"
                );
                self.wake.notify_one();
            }
            Failure::Dropped => {
                tracing::debug!(url = %self.url, generation, "new Redis connection failed ({why})");
                self.wake.notify_one();
            }
        }
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
        if inner.current().is_some() {
            continue;
        }
        let mut backoff = BACKOFF_FIRST;
        loop {
            match try_reconnect(&inner).await {
                Ok(since) => {
                    let lost = inner.lost.swap(0, Ordering::Relaxed);
                    tracing::info!(
                        url = %inner.url,
                        outage_ms = since.elapsed().as_millis() as u64,
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

/// Connects, makes the connection current and subscribes again to every channel the adapter
/// holds; returns when the outage began.
async fn try_reconnect(inner: &Inner) -> Result<Instant, String> {
    let driver = tokio::time::timeout(COMMAND_TIMEOUT, RedisDriver::new(&inner.client))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let generation = inner.link.lock_unpoisoned().install(driver.clone());
    // Channels the adapter adds meanwhile are claimed by its own `subscribe` or by a later round.
    loop {
        let claimed = inner.link.lock_unpoisoned().claim_idle(generation);
        if claimed.is_empty() {
            break;
        }
        for (chan, tx) in claimed {
            match tokio::time::timeout(
                COMMAND_TIMEOUT,
                driver.subscribe(chan.clone(), DRIVER_BUFFER),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    inner
                        .link
                        .lock_unpoisoned()
                        .set_pump(&chan, generation, pump(stream, tx));
                }
                Ok(Err(e)) => {
                    inner.fail(generation, &e);
                    return Err(format!("subscribe {chan}: {e}"));
                }
                Err(_) => {
                    inner.fail(generation, &"subscribe timed out");
                    return Err(format!("subscribe {chan}: timed out"));
                }
            }
        }
    }
    inner
        .link
        .lock_unpoisoned()
        .restored(generation, Instant::now())
        .ok_or_else(|| "the new connection failed while subscribing again".to_string())
}

async fn health_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    let mut misses = 0;
    loop {
        tick.tick().await;
        let Some((generation, d)) = inner.current() else {
            misses = 0;
            continue;
        };
        let late = match tokio::time::timeout(COMMAND_TIMEOUT, d.num_serv(&inner.health_chan)).await
        {
            Ok(Ok(_)) => false,
            Ok(Err(e)) if is_late(&e) => true,
            Ok(Err(e)) => {
                inner.fail(generation, &e);
                false
            }
            Err(_) => true,
        };
        misses = if late { misses + 1 } else { 0 };
        if misses >= HEALTH_MISSES {
            misses = 0;
            inner.fail(
                generation,
                &format_args!("{HEALTH_MISSES} health checks in a row unanswered"),
            );
        }
    }
}

/// Whether a stock-driver error is redis-rs's response timeout. The driver's error type wraps
/// `redis::RedisError` privately (no `source()`, no accessor), so its text is all there is:
/// redis-rs renders an `io::ErrorKind::TimedOut` as "timed out".
fn is_late(e: &impl fmt::Display) -> bool {
    e.to_string().contains("timed out")
}

/// A reply that came too late: the message is lost (at-most-once), the connection is kept (the
/// health check decides whether it is dead).
fn slow_reply(inner: &Inner) {
    inner.lost.fetch_add(1, Ordering::Relaxed);
    let total = inner.slow.fetch_add(1, Ordering::Relaxed) + 1;
    let mut logged = inner.slow_logged.lock_unpoisoned();
    if logged.is_none_or(|t| t.elapsed() >= SLOW_LOG_EVERY) {
        *logged = Some(Instant::now());
        tracing::warn!(
            url = %inner.url,
            dropped_total = total,
            "Redis answered a PUBLISH too late (overloaded Redis or network?); that message may \
             not have crossed hosts. The connection is kept"
        );
    }
}

impl Driver for RedisBus {
    type Error = std::convert::Infallible;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let lost = match self.inner.current() {
            Some((generation, d)) => {
                match tokio::time::timeout(COMMAND_TIMEOUT, d.publish(chan, val)).await {
                    Ok(Ok(())) => false,
                    Ok(Err(e)) if is_late(&e) => {
                        slow_reply(&self.inner);
                        return Ok(());
                    }
                    Ok(Err(e)) => {
                        self.inner.fail(generation, &e);
                        true
                    }
                    Err(_) => {
                        slow_reply(&self.inner);
                        return Ok(());
                    }
                }
            }
            None => true,
        };
        if lost {
            self.inner.lost.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size.max(1));
        let current = self
            .inner
            .link
            .lock_unpoisoned()
            .add_sub(chan.clone(), tx.clone());
        // While Redis is down, the reconnect task subscribes once it is back.
        if let Some((generation, d)) = current {
            match tokio::time::timeout(COMMAND_TIMEOUT, d.subscribe(chan.clone(), DRIVER_BUFFER))
                .await
            {
                Ok(Ok(stream)) => {
                    self.inner
                        .link
                        .lock_unpoisoned()
                        .set_pump(&chan, generation, pump(stream, tx));
                }
                Ok(Err(e)) => self.inner.fail(generation, &e),
                Err(_) => self.inner.fail(generation, &"subscribe timed out"),
            }
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        let current = {
            let mut link = self.inner.link.lock_unpoisoned();
            link.remove_sub(&chan);
            link.current()
        };
        if let Some((_, d)) = current {
            let _ = tokio::time::timeout(COMMAND_TIMEOUT, d.unsubscribe(chan)).await;
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let Some((generation, d)) = self.inner.current() else {
            // Only this worker is reachable: requests complete with local answers.
            return Ok(1);
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, d.num_serv(chan)).await {
            Ok(Ok(n)) => Ok(n.max(1)),
            // Late: answer with this worker alone (the request completes with local answers);
            // the health check decides whether the connection is dead.
            Ok(Err(e)) if is_late(&e) => Ok(1),
            Ok(Err(e)) => {
                self.inner.fail(generation, &e);
                Ok(1)
            }
            Err(_) => Ok(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_reply_is_told_from_a_dead_connection() {
        use socketioxide_redis::drivers::redis::RedisError as DriverError;
        let wrap = |k: std::io::ErrorKind| {
            DriverError::from(redis::RedisError::from(std::io::Error::from(k)))
        };
        assert!(is_late(&wrap(std::io::ErrorKind::TimedOut)));
        assert!(!is_late(&wrap(std::io::ErrorKind::ConnectionReset)));
        assert!(!is_late(&wrap(std::io::ErrorKind::BrokenPipe)));
    }

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

    /// A pump in the tests: a flag set when it is aborted.
    #[derive(Clone, Default)]
    struct Flag(Arc<std::sync::atomic::AtomicBool>);

    impl Abort for Flag {
        fn abort(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn aborted(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    type TestLink = Link<&'static str, Flag>;

    fn queue() -> mpsc::Sender<ChanItem> {
        mpsc::channel(1).0
    }

    /// Subscribes `chan` on the current connection and returns its pump.
    fn subscribed(link: &mut TestLink, chan: &str) -> Flag {
        let (generation, _) = link.add_sub(chan.into(), queue()).expect("up");
        let pump = Flag::default();
        assert!(link.set_pump(chan, generation, pump.clone()));
        pump
    }

    #[test]
    fn a_late_failure_of_the_old_connection_keeps_the_new_one() {
        let t0 = Instant::now();
        let mut link = TestLink::new("old");
        let old_pump = subscribed(&mut link, "c");
        // A publish starts on the old connection...
        let (old_generation, _) = link.current().unwrap();
        // ... the health check sees it die first ...
        assert_eq!(link.fail(old_generation, t0), Failure::OutageStarted);
        assert!(old_pump.aborted());
        assert!(link.current().is_none());
        // ... the reconnect task installs a new connection and subscribes again ...
        let new_generation = link.install("new");
        assert_ne!(new_generation, old_generation);
        let claimed = link.claim_idle(new_generation);
        assert_eq!(claimed.len(), 1);
        let new_pump = Flag::default();
        assert!(link.set_pump("c", new_generation, new_pump.clone()));
        assert_eq!(link.restored(new_generation, Instant::now()), Some(t0));
        // ... and only then does the publish on the old connection fail.
        assert_eq!(link.fail(old_generation, Instant::now()), Failure::Ignored);
        assert_eq!(link.current(), Some((new_generation, "new")));
        assert!(
            !new_pump.aborted(),
            "the new connection's subscription was dropped"
        );
        // A failure of the new connection is a new outage.
        assert_eq!(
            link.fail(new_generation, Instant::now()),
            Failure::OutageStarted
        );
        assert!(new_pump.aborted());
    }

    #[test]
    fn an_outage_starts_once_however_many_operations_fail() {
        let t0 = Instant::now();
        let mut link = TestLink::new("a");
        let (generation, _) = link.current().unwrap();
        assert_eq!(link.fail(generation, t0), Failure::OutageStarted);
        // Every operation in flight on that connection fails too.
        for _ in 0..3 {
            assert_eq!(link.fail(generation, Instant::now()), Failure::Ignored);
        }
        // The reconnect task's connection fails while subscribing again: same outage.
        link.add_sub("c".into(), queue());
        let second = link.install("b");
        assert_eq!(link.claim_idle(second).len(), 1);
        assert_eq!(link.fail(second, Instant::now()), Failure::Dropped);
        assert!(link.current().is_none());
        assert_eq!(link.restored(second, Instant::now()), None);
        // Its late answer cannot claim the channel any more.
        let late = Flag::default();
        assert!(!link.set_pump("c", second, late.clone()));
        assert!(late.aborted());
        // The next one succeeds: the outage ends once, dated from its start.
        let third = link.install("c");
        assert_eq!(link.claim_idle(third).len(), 1);
        assert!(link.set_pump("c", third, Flag::default()));
        assert_eq!(link.restored(third, Instant::now()), Some(t0));
    }

    #[test]
    fn a_channel_is_subscribed_once_per_connection() {
        let mut link = TestLink::new("a");
        let (generation, _) = link.current().unwrap();
        link.fail(generation, Instant::now());
        // Added while Redis is down: left to the reconnect task.
        assert_eq!(link.add_sub("down".into(), queue()), None);
        let generation = link.install("b");
        let claimed: Vec<String> = link
            .claim_idle(generation)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(claimed, ["down"]);
        // Added after the new connection is installed: claimed by the adapter's own subscribe,
        // so the reconnect task's next round leaves it alone.
        assert_eq!(link.add_sub("new".into(), queue()), Some((generation, "b")));
        assert!(link.claim_idle(generation).is_empty());
        assert!(link.set_pump("down", generation, Flag::default()));
        assert!(link.set_pump("new", generation, Flag::default()));
        // A second answer for a channel already forwarded is refused.
        let twice = Flag::default();
        assert!(!link.set_pump("new", generation, twice.clone()));
        assert!(twice.aborted());
        // Unsubscribing stops the pump; a late answer for it is refused.
        let pump = subscribed(&mut link, "gone");
        link.remove_sub("gone");
        assert!(pump.aborted());
        let late = Flag::default();
        assert!(!link.set_pump("gone", generation, late.clone()));
        assert!(late.aborted());
        assert!(link.restored(generation, Instant::now()).is_some());
    }
}
