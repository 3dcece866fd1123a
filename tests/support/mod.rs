//! Test harness: runs the real cluster binary (the `testapp` example) as separate processes on
//! 127.0.0.1 and cleans up every process it started, even when a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a binary built next to the test executable (`target/<profile>/examples/<name>`).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the examples first (cargo build --examples, same profile as the tests)",
        bin.display()
    );
    bin
}

/// A running cluster: the primary process and, through it, its workers.
pub struct Cluster {
    child: Option<Child>,
    /// Public address.
    pub addr: SocketAddr,
    /// Primary pid.
    pub pid: u32,
    logs: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    known_workers: Mutex<Vec<u32>>,
}

/// Options for starting a cluster.
pub struct Start<'a> {
    pub bin: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'a str, String)>,
    pub timeout: Duration,
    /// Address to report without waiting for `listening on` (the process starts later, e.g.
    /// under systemd-socket-activate).
    pub no_wait: Option<SocketAddr>,
}

impl<'a> Start<'a> {
    /// The test app with `--listen 127.0.0.1:0` and the given extra arguments.
    pub fn testapp(args: &[&str]) -> Self {
        let mut all = vec!["--listen".to_string(), "127.0.0.1:0".to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        Self {
            bin: example_bin("testapp"),
            args: all,
            env: Vec::new(),
            timeout: Duration::from_secs(60),
            no_wait: None,
        }
    }

    pub fn env(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.env.push((k, v.into()));
        self
    }

    /// Spawns and waits for `listening on ADDR`.
    pub fn spawn(self) -> Cluster {
        Cluster::spawn(self).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns and waits for `listening on ADDR`; `Err` with the logs if it fails.
    pub fn try_spawn(self) -> Result<Cluster, String> {
        Cluster::spawn(self)
    }
}

impl Cluster {
    fn spawn(opts: Start<'_>) -> Result<Cluster, String> {
        let mut cmd = Command::new(&opts.bin);
        cmd.args(&opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", opts.bin.display()))?;
        let pid = child.id();
        let logs = Arc::new(Mutex::new(String::new()));
        let stdout_buf = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let stdout = child.stdout.take().unwrap();
        let out = stdout_buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Ok(addr) = rest.trim().parse::<SocketAddr>()
                {
                    let _ = tx.send(addr);
                }
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        let stderr = child.stderr.take().unwrap();
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SIO_TEST_ECHO").is_some() {
                    eprintln!("[{pid}] {line}");
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut cluster = Cluster {
            child: Some(child),
            addr: "127.0.0.1:1".parse().unwrap(),
            pid,
            logs,
            stdout: stdout_buf,
            known_workers: Mutex::new(Vec::new()),
        };
        if let Some(addr) = opts.no_wait {
            cluster.addr = addr;
            return Ok(cluster);
        }
        match rx.recv_timeout(opts.timeout) {
            Ok(addr) => {
                cluster.addr = addr;
                cluster.remember_workers();
                Ok(cluster)
            }
            Err(_) => {
                let code = cluster
                    .wait_exit(Duration::from_millis(200))
                    .map(|s| s.code());
                Err(format!(
                    "cluster did not print `listening on` within {:?} (exit code: {code:?}); logs:\n{}",
                    opts.timeout,
                    cluster.logs()
                ))
            }
        }
    }

    /// Everything the cluster wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until the logs contain `needle` (returns false on timeout).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Count of log lines containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.logs().lines().filter(|l| l.contains(needle)).count()
    }

    /// Pids of the primary's live child processes (the workers).
    pub fn worker_pids(&self) -> Vec<u32> {
        let pids = children_of(self.pid);
        self.remember(&pids);
        pids
    }

    fn remember_workers(&self) {
        let pids = children_of(self.pid);
        self.remember(&pids);
    }

    fn remember(&self, pids: &[u32]) {
        let mut known = self.known_workers.lock().unwrap();
        for p in pids {
            if !known.contains(p) {
                known.push(*p);
            }
        }
    }

    /// Sends a signal to the primary.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child, not yet
        // reaped (we hold its Child), so it cannot have been reused.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// Non-blocking exit check.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the primary to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the primary still runs.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Every worker pid this harness has seen.
    pub fn known_worker_pids(&self) -> Vec<u32> {
        self.known_workers.lock().unwrap().clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut pids = children_of(self.pid);
        pids.extend(self.known_worker_pids());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workers die with the primary (PDEATHSIG); make sure anyway, only for processes that
        // are still our cluster's (their parent was the primary or is now init after its death).
        for p in pids {
            if process_alive(p) {
                // SAFETY: plain kill(2) on a pid this test started through the primary.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
        }
        if std::thread::panicking() {
            eprintln!("---- cluster {} logs ----\n{}", self.pid, self.logs());
        }
    }
}

/// Pids whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(pp) = parent_of(pid)
            && pp == ppid
        {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Parent pid of `pid`, from /proc.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().next().map(str::to_string));
            !matches!(state.as_deref(), Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Resident memory of `pid` in bytes (from /proc/<pid>/statm).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * 4096)
}

/// Polls `f` until it returns true or the timeout passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns status and body.
pub fn http_once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Splits a raw HTTP/1.1 response (handles `content-length` and chunked bodies).
pub fn parse_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head in {text:?}")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n.min(after.len())]);
            rest = after.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Does an Engine.IO polling handshake; returns the session id.
pub fn polling_handshake(addr: SocketAddr) -> std::io::Result<String> {
    let (status, body) = http_once(addr, "GET", "/socket.io/?EIO=4&transport=polling", "")?;
    if status != 200 {
        return Err(std::io::Error::other(format!("handshake: {status} {body}")));
    }
    let at = body
        .find("\"sid\":\"")
        .ok_or_else(|| std::io::Error::other(format!("no sid in {body}")))?
        + 7;
    Ok(body[at..at + 16].to_string())
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `redis-server` on 127.0.0.1, started by the test (killed on drop).
pub struct RedisServer {
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free port with extra arguments (e.g. `--requirepass x`).
    pub fn start(extra: &[&str]) -> RedisServer {
        Self::start_on_free_port(|_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// Starts redis-server serving TLS only, with this certificate and key.
    pub fn start_tls(cert: &Path, key: &Path) -> RedisServer {
        Self::start_on_free_port(|port| {
            vec![
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]
        })
    }

    /// A port found free can be taken by another test's listener before redis-server binds it
    /// (and then a bare connect check would succeed against the wrong process): try new ports
    /// until redis-server itself owns the listening socket.
    fn start_on_free_port(extra: impl Fn(u16) -> Vec<String>) -> RedisServer {
        let mut errors = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let mut r = RedisServer {
                port,
                extra: extra(port),
                child: None,
            };
            match r.launch() {
                Ok(()) => return r,
                Err(e) => errors.push(e),
            }
        }
        panic!("redis-server did not start: {}", errors.join("; "));
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (retrying while something else briefly holds it).
    pub fn restart(&mut self) {
        let mut errors = Vec::new();
        for _ in 0..5 {
            match self.launch() {
                Ok(()) => return,
                Err(e) => errors.push(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-server did not restart: {}", errors.join("; "));
    }

    /// Spawns redis-server on `self.port` and waits until that very process listens there.
    fn launch(&mut self) -> Result<(), String> {
        self.stop();
        let tls = self.extra.iter().any(|a| a == "--tls-port");
        let port_args: Vec<String> = if tls {
            vec!["--port".into(), "0".into()]
        } else {
            vec!["--port".into(), self.port.to_string()]
        };
        let mut child = Command::new("redis-server")
            .args(&port_args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server on port {port} exited ({status})"));
            }
            if listens_on(child.id(), port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server did not listen on port {port} within 10 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (from /proc: the
/// listening socket's inode in /proc/net/tcp, found among the process's descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path())
            .map(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
            .unwrap_or(false)
    })
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files in a
/// temporary directory (removed on drop), for `--tls-cert` / `--tls-key`.
pub struct TestCert {
    dir: tempfile::TempDir,
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// The certificate's PEM text, to trust it in a client.
    pub pem: String,
    /// The certificate's DER bytes, to tell two certificates apart.
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn new() -> TestCert {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let mut t = TestCert {
            dir,
            cert,
            key,
            pem: String::new(),
            der: Vec::new(),
        };
        t.regenerate();
        t
    }

    /// Replaces both files with a new certificate and key (what a renewal does).
    pub fn regenerate(&mut self) {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        self.pem = ck.cert.pem();
        self.der = ck.cert.der().to_vec();
        // Written to a temporary name and renamed, so a reader never sees half a file.
        let tmp = self.dir.path().join("new.pem");
        std::fs::write(&tmp, ck.signing_key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, &self.key).unwrap();
        std::fs::write(&tmp, &self.pem).unwrap();
        std::fs::rename(&tmp, &self.cert).unwrap();
    }

    /// A client TLS config trusting this certificate only.
    pub fn client_tls(&self) -> sio_client::TlsConfig {
        sio_client::TlsConfig::trusting_pem(self.pem.as_bytes())
            .unwrap()
            .server_name("localhost")
    }

    /// `--tls-cert PATH --tls-key PATH`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs `tests/js/connect.mjs` (the official client) against `url` with `per_transport`
/// clients per transport and `env`, and returns its JSON report after checking every point of
/// it: each transport as asked, auth/echo/ack intact, each client on one worker, both workers
/// used, and the broadcast delivered exactly once to every client.
pub fn official_client_check(
    url: &str,
    per_transport: usize,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/socket.io-client").exists(),
        "run `npm ci` in tests/js first (scripts/test does it)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(js.join("connect.mjs"))
        .arg(url)
        .arg(per_transport.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "bad output ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["ok"], true, "{report:#}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 3 * per_transport);
    let mut workers_seen = std::collections::HashSet::new();
    for r in results {
        let mode = r["mode"].as_str().unwrap();
        let want = if mode == "polling" {
            "polling"
        } else {
            "websocket"
        };
        assert_eq!(r["transport"], want, "{r}");
        assert_eq!(r["authOk"], true, "{r}");
        assert_eq!(r["sidsMatch"], true, "{r}");
        assert_eq!(r["echoOk"], true, "{r}");
        assert_eq!(r["ackOk"], true, "{r}");
        let workers = r["workers"].as_array().unwrap();
        assert_eq!(
            workers.len(),
            1,
            "every whoami of one client answers from one worker: {r}"
        );
        workers_seen.insert(workers[0].as_str().unwrap().to_string());
    }
    assert_eq!(
        workers_seen.len(),
        2,
        "both workers served clients: {workers_seen:?}"
    );
    let b = &report["broadcast"];
    assert_eq!(b["clients"], 6, "{b}");
    assert_eq!(
        b["counts"],
        serde_json::json!([1, 1, 1, 1, 1, 1]),
        "each got the broadcast once: {b}"
    );
    assert_eq!(
        b["workers"].as_array().map(Vec::len),
        Some(2),
        "broadcast crossed workers: {b}"
    );
    report
}

/// Connects with `cfg` and returns the error the connection must end with.
pub async fn refused_connect(cfg: sio_client::ClientConfig, why: &str) -> sio_client::Error {
    match sio_client::Client::connect(cfg).await {
        Ok(_) => panic!("connected, but expected a refusal: {why}"),
        Err(e) => e,
    }
}

impl Cluster {
    /// The admin address the primary logged (`admin listener on ADDR`); the cluster must run
    /// with `--admin-listen`.
    pub fn admin_addr(&self) -> SocketAddr {
        assert!(
            self.wait_log("admin listener on ", Duration::from_secs(10)),
            "no admin listener line in the logs (start with --admin-listen 127.0.0.1:0):\n{}",
            self.logs()
        );
        let logs = self.logs();
        let rest = logs
            .split("admin listener on ")
            .nth(1)
            .expect("checked above");
        let addr: String = rest
            .chars()
            .take_while(|ch| ch.is_ascii_digit() || *ch == '.' || *ch == ':')
            .collect();
        addr.parse()
            .unwrap_or_else(|e| panic!("admin address {addr:?}: {e}"))
    }

    /// Follows the cluster's lifecycle events (`GET /events` on the admin listener).
    pub fn events(&self) -> Events {
        Events::follow(self.admin_addr())
    }
}

/// The cluster's typed lifecycle events, as `GET /events` streams them (one JSON object per
/// line: `seq`, `event` and the event's fields), collected by a thread.
#[derive(Clone)]
pub struct Events {
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Events {
    /// Connects to the admin listener at `admin` and starts collecting (history first).
    pub fn follow(admin: SocketAddr) -> Events {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).expect("admin listener");
        write!(s, "GET /events HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            // Chunked transfer: every JSON line is a chunk; read lines of the raw stream and
            // keep those that are JSON objects (chunk sizes and the head are not).
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim();
                    if line.starts_with('{')
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    {
                        sink.lock().unwrap().push(v);
                    }
                }
            }
        });
        Events { seen }
    }

    /// Every event collected so far.
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }

    /// The events named `name` collected so far.
    pub fn named(&self, name: &str) -> Vec<serde_json::Value> {
        self.all()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Waits until at least `n` events named `name` arrived; returns them.
    pub fn wait_for(&self, name: &str, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let ok = eventually(timeout, || self.named(name).len() >= n);
        let got = self.named(name);
        assert!(
            ok,
            "{} `{name}` event(s) after {timeout:?}, wanted {n}; all events:\n{:#?}",
            got.len(),
            self.all()
        );
        got
    }
}
