//! systemd integration: sd_notify messages seen on a datagram socket bound by the test, socket
//! activation through `systemd-socket-activate`, and `systemd-analyze verify` of the units.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Start, eventually, free_port, polling_handshake};

/// Notifications received, with their arrival time.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(Instant, String)>>>);

impl Inbox {
    fn listen(path: &Path) -> Inbox {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path).unwrap();
        let inbox = Inbox::default();
        let sink = inbox.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.0.lock().unwrap().push((Instant::now(), msg));
            }
        });
        inbox
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap().clone()
    }

    fn wait_for(
        &self,
        pred: impl Fn(&str) -> bool,
        after: Instant,
        timeout: Duration,
    ) -> Option<String> {
        let mut found = None;
        eventually(timeout, || {
            found = self
                .all()
                .into_iter()
                .find(|(t, m)| *t >= after && pred(m))
                .map(|(_, m)| m);
            found.is_some()
        });
        found
    }

    fn count(&self, pred: impl Fn(&str) -> bool, from: Instant, to: Instant) -> usize {
        self.all()
            .iter()
            .filter(|(t, m)| *t >= from && *t <= to && pred(m))
            .count()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sio-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sd_notify_lifecycle_and_watchdog() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let inbox = Inbox::listen(&path);
    let t0 = Instant::now();
    let mut c = Start::testapp(&[
        "--workers",
        "2",
        "--heartbeat-interval-ms",
        "100",
        "--heartbeat-timeout-ms",
        "2500",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .env("NOTIFY_SOCKET", path.display().to_string())
    .env("WATCHDOG_USEC", "1000000")
    .spawn();

    let ready = inbox
        .wait_for(|m| m.contains("READY=1"), t0, Duration::from_secs(5))
        .expect("READY=1");
    assert!(ready.contains("STATUS=workers: 2/2 ready"), "{ready}");
    // The workers do not inherit the notification socket: only the primary talks to systemd.
    for pid in c.worker_pids() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !String::from_utf8_lossy(&env).contains("NOTIFY_SOCKET"),
            "worker {pid} got NOTIFY_SOCKET"
        );
    }

    // WATCHDOG=1 keeps coming while workers answer heartbeats.
    std::thread::sleep(Duration::from_millis(1500));
    let now = Instant::now();
    let pings = inbox.count(
        |m| m == "WATCHDOG=1",
        now - Duration::from_millis(1000),
        now,
    );
    assert!(pings >= 3, "{pings} watchdog pings in 1 s");

    // A silent worker stops the watchdog until it is replaced.
    let frozen = c.worker_pids()[0];
    // SAFETY: kill(2) on a worker of the cluster this test started.
    unsafe { libc::kill(frozen as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let during = inbox.count(
        |m| m == "WATCHDOG=1",
        stopped + Duration::from_millis(800),
        stopped + Duration::from_millis(2000),
    );
    assert_eq!(during, 0, "watchdog fed while a worker was hung");
    let restarting = c
        .events()
        .wait_for("worker_restarting", 1, Duration::from_secs(5));
    assert_eq!(restarting[0]["cause"], "hung", "{restarting:?}");
    let resumed = inbox.wait_for(
        |m| m == "WATCHDOG=1",
        stopped + Duration::from_millis(2500),
        Duration::from_secs(5),
    );
    assert!(
        resumed.is_some(),
        "watchdog did not resume after the hung worker was replaced"
    );

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    let hup = Instant::now();
    c.signal(libc::SIGHUP);
    let reloading = inbox
        .wait_for(|m| m.contains("RELOADING=1"), hup, Duration::from_secs(5))
        .expect("RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    // CLOCK_MONOTONIC, the clock systemd compares it with: taken between our SIGHUP and now.
    let mono_now = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
    };
    let since_hup = hup.elapsed().as_micros() as u64;
    assert!(
        usec <= mono_now && mono_now - usec <= since_hup + 100_000,
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC at the reload (now {mono_now}, SIGHUP {since_hup} µs ago)"
    );
    assert!(
        inbox
            .wait_for(|m| m.contains("READY=1"), hup, Duration::from_secs(30))
            .is_some(),
        "READY=1 after reload"
    );
    assert!(
        inbox
            .wait_for(
                |m| m.contains("STATUS=workers: 2/2 ready"),
                hup,
                Duration::from_secs(5)
            )
            .is_some()
    );

    // SIGTERM: STOPPING=1.
    let term = Instant::now();
    c.signal(libc::SIGTERM);
    assert!(
        inbox
            .wait_for(|m| m.contains("STOPPING=1"), term, Duration::from_secs(5))
            .is_some(),
        "STOPPING=1"
    );
    assert_eq!(
        c.wait_exit(Duration::from_secs(15)).and_then(|s| s.code()),
        Some(0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_activation_with_systemd_socket_activate() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut opts = Start::testapp(&["--workers", "2"]);
    // The cluster's own --listen is ignored: systemd-socket-activate owns the port.
    let mut args = vec![
        "-l".to_string(),
        addr.clone(),
        opts.bin.display().to_string(),
    ];
    args.extend([
        "--workers".to_string(),
        "2".to_string(),
        "--listen".to_string(),
        "127.0.0.1:1".to_string(),
        "--admin-listen".to_string(),
        "127.0.0.1:0".to_string(),
    ]);
    opts.args = args;
    opts.bin = PathBuf::from("systemd-socket-activate");
    opts.no_wait = Some(addr.parse().unwrap());
    let c = opts.spawn();
    // systemd-socket-activate binds the port first; the first connection then waits in the
    // backlog while the cluster starts on the passed socket.
    let mut sid = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            match polling_handshake(c.addr) {
                Ok(s) => {
                    sid = s;
                    true
                }
                Err(_) => false,
            }
        }),
        "no handshake through the activated socket; logs:\n{}",
        c.logs()
    );
    assert_eq!(sid.len(), 16);
    let listening = c.events().wait_for("listening", 1, Duration::from_secs(5));
    assert_eq!(listening[0]["activated"], true, "{listening:?}");
    assert_eq!(listening[0]["addr"], addr, "{listening:?}");
    assert!(eventually(Duration::from_secs(5), || c
        .stdout()
        .contains(&format!("listening on {addr}"))));
    for _ in 0..20 {
        polling_handshake(c.addr).unwrap();
    }
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = temp_dir("units");
    // verify checks that ExecStart= exists: point it at a binary built by this workspace.
    let bin = support::example_bin("chat");
    let service = std::fs::read_to_string(root.join("systemd/sio-cluster.service"))
        .unwrap()
        .replace("/usr/local/bin/sio-cluster-app", &bin.display().to_string());
    std::fs::write(dir.join("sio-cluster.service"), service).unwrap();
    std::fs::copy(
        root.join("systemd/sio-cluster.socket"),
        dir.join("sio-cluster.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("sio-cluster.service"))
        .arg(dir.join("sio-cluster.socket"))
        .output()
        .expect("systemd-analyze is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let about_units: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sio-cluster"))
        .collect();
    assert!(
        about_units.is_empty(),
        "warnings about the units:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An accept loop that is alive but no longer polled (injected at its first connection) is
/// as bad as a dead one: systemd's watchdog stops being fed within a couple of seconds, and
/// after the heartbeat timeout the primary drains its workers and exits non-zero on its own.
#[test]
fn a_stalled_accept_loop_stops_the_watchdog_and_ends_the_primary() {
    let dir = temp_dir("stall");
    let path = dir.join("notify.sock");
    let inbox = Inbox::listen(&path);
    let t0 = Instant::now();
    let mut c = Start::testapp(&[
        "--workers",
        "2",
        "--heartbeat-interval-ms",
        "100",
        "--heartbeat-timeout-ms",
        "4000",
    ])
    .env("NOTIFY_SOCKET", path.display().to_string())
    .env("WATCHDOG_USEC", "1000000")
    .env("SIO_FAULT_ACCEPT_STALL", "1")
    .spawn();
    inbox
        .wait_for(|m| m == "WATCHDOG=1", t0, Duration::from_secs(5))
        .expect("the watchdog is fed while the accept loop beats");
    let workers = c.worker_pids();
    // The first connection wedges the loop.
    let _conn = std::net::TcpStream::connect(c.addr).unwrap();
    assert!(c.wait_log(
        "accept loop stalled by SIO_FAULT_ACCEPT_STALL",
        Duration::from_secs(5)
    ));
    let stalled = Instant::now();
    std::thread::sleep(Duration::from_millis(3500));
    let fed = inbox.count(
        |m| m == "WATCHDOG=1",
        stalled + Duration::from_millis(2500),
        stalled + Duration::from_millis(3500),
    );
    assert_eq!(fed, 0, "watchdog fed while nothing accepts");
    let status = c
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the primary kept running:\n{}", c.logs()));
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        c.logs().contains("the accept loop stopped answering"),
        "{}",
        c.logs()
    );
    assert!(
        eventually(Duration::from_secs(10), || workers
            .iter()
            .all(|p| !support::process_alive(*p))),
        "workers outlived the primary"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
