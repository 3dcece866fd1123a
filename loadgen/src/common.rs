//! Shared plumbing: target address, server processes, output, bounded-concurrency connects.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::procs::{Servers, Target};
use crate::ws::{ConnError, Dest};

/// Options every load scenario has.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server URL, e.g. http://127.0.0.1:3000 (loopback only); https://127.0.0.1:3443 for TLS
    /// (then --tls-ca is needed).
    #[arg(long)]
    pub url: String,
    /// PEM file of the CA (or the self-signed certificate) the server's TLS certificate is
    /// checked against, for an https:// URL.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// The TLS server name: sent as SNI and checked against the certificate.
    #[arg(long, default_value = sio_client::tls::DEFAULT_SERVER_NAME)]
    pub tls_server_name: String,
    /// Engine.IO path.
    #[arg(long, default_value = "/socket.io/")]
    pub path: String,
    /// Server pids to account (CPU, RSS): the first is reported as the primary.
    #[arg(long, value_delimiter = ',', conflicts_with = "pid_tree")]
    pub pids: Vec<u32>,
    /// A server pid to account together with all its descendants (the primary and its workers).
    #[arg(long)]
    pub pid_tree: Option<u32>,
    /// The Redis server's pid: its CPU is reported apart (`redis_s`), not as server CPU nor as
    /// other programs' (`other_s`).
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Also write the JSON result (pretty) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Deadline of one connection attempt, ms.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
}

impl Common {
    /// The server address from `--url`; refuses anything but a loopback address.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        parse_url(&self.url)
    }

    /// Where connections go: the address and, for an `https://` or `wss://` URL, TLS trusting
    /// `--tls-ca`.
    pub fn dest(&self) -> anyhow::Result<Dest> {
        let addr = self.addr()?;
        let tls = match (url_is_tls(&self.url), &self.tls_ca) {
            (false, None) => None,
            (false, Some(ca)) => bail!(
                "--tls-ca {} with --url {:?}: use an https:// URL to connect over TLS, or drop \
                 --tls-ca",
                ca.display(),
                self.url
            ),
            (true, None) => bail!(
                "--url {:?} is TLS: give --tls-ca PEM (the CA or the server's self-signed \
                 certificate) to check the server's certificate against",
                self.url
            ),
            (true, Some(ca)) => {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("--tls-ca {}: cannot read it", ca.display()))?;
                let cfg = sio_client::TlsConfig::trusting_pem(&pem)
                    .with_context(|| format!("--tls-ca {}", ca.display()))?
                    .server_name(&self.tls_server_name);
                Some(cfg)
            }
        };
        Ok(Dest { addr, tls })
    }

    pub fn target(&self) -> Target {
        let servers = if let Some(root) = self.pid_tree {
            Servers::Tree(root)
        } else if !self.pids.is_empty() {
            Servers::Pids(self.pids.clone())
        } else {
            Servers::None
        };
        Target {
            servers,
            redis: self.redis_pid,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Whether `url` asks for TLS (`https://` or `wss://`).
pub fn url_is_tls(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("wss://")
}

/// `http://127.0.0.1:3000[/...]` (or `https://`, `ws://`, `wss://`, or a bare
/// `127.0.0.1:3000`) → address.
pub fn parse_url(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("--url {url:?}: expected http://127.0.0.1:PORT"))?;
    let loopback = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if !loopback {
        bail!("--url {url:?}: this load generator only targets loopback addresses");
    }
    Ok(addr)
}

/// Failures counted by kind.
pub type Failures = BTreeMap<String, u64>;

pub fn add_failure(f: &mut Failures, e: &ConnError) {
    *f.entry(e.kind()).or_default() += 1;
}

/// Runs `f(i)` for i in 0..n with at most `concurrency` attempts in flight (each bounded by
/// `timeout`), spread over the runtime's threads. Returns the successes by index and the
/// failures by kind.
pub async fn connect_many<T, F, Fut>(
    n: usize,
    concurrency: usize,
    timeout: Duration,
    f: F,
) -> (Vec<(usize, T)>, Failures)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, ConnError>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let f = f.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut failed = Failures::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match tokio::time::timeout(timeout, f(i)).await {
                    Ok(Ok(t)) => ok.push((i, t)),
                    Ok(Err(e)) => add_failure(&mut failed, &e),
                    Err(_) => add_failure(&mut failed, &ConnError::Timeout { phase: "connect" }),
                }
            }
            (ok, failed)
        }));
    }
    let mut ok = Vec::with_capacity(n);
    let mut failed = Failures::new();
    for t in tasks {
        match t.await {
            Ok((o, f)) => {
                ok.extend(o);
                for (k, v) in f {
                    *failed.entry(k).or_default() += v;
                }
            }
            Err(e) => *failed.entry(format!("task panicked: {e}")).or_default() += 1,
        }
    }
    ok.sort_unstable_by_key(|(i, _)| *i);
    (ok, failed)
}

/// The command line, for the record.
pub fn argv() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints the result: one compact JSON line on stdout, pretty JSON in `--json FILE`.
pub fn emit(common_json: Option<&PathBuf>, v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    if let Some(p) = common_json {
        std::fs::write(p, serde_json::to_string_pretty(v)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("http://127.0.0.1:3000").unwrap().port(), 3000);
        assert_eq!(parse_url("http://127.0.0.1:3000/").unwrap().port(), 3000);
        assert_eq!(parse_url("127.0.0.1:9").unwrap().port(), 9);
        assert_eq!(parse_url("http://localhost:80").unwrap().port(), 80);
        assert!(parse_url("http://10.0.0.1:3000").is_err());
        assert!(parse_url("http://example.com").is_err());
        assert_eq!(parse_url("https://127.0.0.1:3443/").unwrap().port(), 3443);
        assert_eq!(parse_url("wss://localhost:3443").unwrap().port(), 3443);
        assert!(url_is_tls("https://127.0.0.1:1") && url_is_tls("wss://127.0.0.1:1"));
        assert!(!url_is_tls("http://127.0.0.1:1") && !url_is_tls("127.0.0.1:1"));
    }

    fn common(url: &str, tls_ca: Option<&str>) -> Common {
        Common {
            url: url.into(),
            tls_ca: tls_ca.map(PathBuf::from),
            tls_server_name: "localhost".into(),
            path: "/socket.io/".into(),
            pids: vec![],
            pid_tree: None,
            redis_pid: None,
            json: None,
            connect_timeout_ms: 1000,
        }
    }

    #[test]
    fn tls_needs_a_ca_and_an_https_url() {
        assert!(
            common("http://127.0.0.1:3000", None)
                .dest()
                .unwrap()
                .tls
                .is_none()
        );
        let e = common("https://127.0.0.1:3000", None).dest().unwrap_err();
        assert!(e.to_string().contains("--tls-ca"), "{e}");
        let e = common("http://127.0.0.1:3000", Some("/nonexistent.pem"))
            .dest()
            .unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let e = common("https://127.0.0.1:3000", Some("/nonexistent.pem"))
            .dest()
            .unwrap_err();
        assert!(format!("{e:#}").contains("cannot read"), "{e:#}");
    }

    #[tokio::test]
    async fn bounded_connects() {
        let inflight = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let (i2, m2) = (inflight.clone(), max.clone());
        let (ok, failed) = connect_many(50, 4, Duration::from_secs(1), move |i| {
            let (inflight, max) = (i2.clone(), m2.clone());
            async move {
                let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inflight.fetch_sub(1, Ordering::SeqCst);
                if i % 10 == 3 {
                    Err(ConnError::Http {
                        phase: "poll GET",
                        status: 400,
                        message: "Session ID unknown".into(),
                    })
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        assert_eq!(ok.len(), 45);
        assert!(ok.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(
            failed.get("poll GET: HTTP 400 Session ID unknown"),
            Some(&5)
        );
        assert!(max.load(Ordering::SeqCst) <= 4);
    }
}
