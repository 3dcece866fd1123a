//! Deploys: a reload (SIGHUP) starts workers from the binary now on disk with the config file
//! read again, and a bad deploy (broken binary, bad config, another build's wire protocol)
//! never takes the serving cluster down. What happened is read from the typed lifecycle events
//! (`GET /events` on the admin listener), not from log lines.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Start, eventually, example_bin, http_once};

const RELOAD: Duration = Duration::from_secs(60);

/// `pingInterval` of a fresh polling handshake: what the worker that answered was configured
/// with.
fn ping_interval(c: &support::Cluster) -> u64 {
    let (status, body) =
        http_once(c.addr, "GET", "/socket.io/?EIO=4&transport=polling", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let open: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
    open["pingInterval"].as_u64().unwrap()
}

/// A polling handshake succeeds (some worker serves).
fn served(c: &support::Cluster) -> bool {
    matches!(
        http_once(c.addr, "GET", "/socket.io/?EIO=4&transport=polling", ""),
        Ok((200, _))
    )
}

/// Copies the test app to `to` through a temporary name and a rename, as deploy tools do (the
/// running file keeps its inode; the path gets a new one).
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// The file a process runs, as the kernel sees it.
fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// Starts 2 workers from `bin`, a copy of `app` the test may overwrite (a deploy), with the
/// given ready timeout; and follows the cluster's events.
fn from_deployed_copy(
    app: &Path,
    bin: &Path,
    ready_ms: &str,
) -> (support::Cluster, support::Events) {
    install(app, bin);
    let mut start = Start::testapp(&[
        "--workers",
        "2",
        "--ready-timeout-ms",
        ready_ms,
        "--drain-timeout-ms",
        "2000",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    start.bin = bin.to_path_buf();
    let c = start.spawn();
    let events = c.events();
    (c, events)
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

#[test]
fn a_reload_reads_the_config_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.env");
    std::fs::write(
        &file,
        "# settings\nSIO_WORKERS=2\nSIO_PING_INTERVAL_MS=21000\n",
    )
    .unwrap();
    let mut c = Start::testapp(&[
        "--config-file",
        file.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .spawn();
    let events = c.events();
    // Read at start by the primary (worker count) and by the workers (engine settings).
    assert_eq!(c.worker_pids().len(), 2, "{}", c.logs());
    for _ in 0..4 {
        assert_eq!(ping_interval(&c), 21000);
    }

    // A changed worker setting applies through the new workers; a changed start-up setting of
    // the primary is kept, with a warning.
    std::fs::write(&file, "SIO_WORKERS=3\nSIO_PING_INTERVAL_MS=23000\n").unwrap();
    c.signal(libc::SIGHUP);
    events.wait_for("reload_finished", 1, RELOAD);
    assert!(
        c.logs()
            .lines()
            .any(|l| l.contains("--workers") && l.contains("kept until a restart")),
        "{}",
        c.logs()
    );
    assert_eq!(c.worker_pids().len(), 2);
    for _ in 0..4 {
        assert_eq!(ping_interval(&c), 23000);
    }

    // A setting that would split the running cluster refuses the reload: nothing changes.
    let pids = sorted(c.worker_pids());
    std::fs::write(
        &file,
        "SIO_WORKERS=2\nSIO_PING_INTERVAL_MS=24000\nSIO_REDIS_PREFIX=other\n",
    )
    .unwrap();
    c.signal(libc::SIGHUP);
    let refused = events.wait_for("reload_refused", 1, Duration::from_secs(10));
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(reason.contains("--redis-prefix"), "{reason}");
    // So does a file that does not parse; the error names the file and the line.
    std::fs::write(&file, "SIO_WORKERS=2\nthis is not a setting\n").unwrap();
    c.signal(libc::SIGHUP);
    let refused = events.wait_for("reload_refused", 2, Duration::from_secs(10));
    let reason = refused[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{}:2:", file.display())),
        "{reason}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        events.named("reload_finished").len(),
        1,
        "{:#?}",
        events.all()
    );
    assert_eq!(sorted(c.worker_pids()), pids, "workers were left alone");
    assert_eq!(ping_interval(&c), 23000);
    assert!(c.is_running());
}

#[test]
fn a_reload_runs_the_binary_now_at_the_started_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = example_bin("testapp");
    for v in ["v1", "v2"] {
        std::fs::create_dir_all(dir.path().join(v)).unwrap();
        install(&app, &dir.path().join(v).join("testapp"));
    }
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();

    let mut start = Start::testapp(&[
        "--workers",
        "2",
        "--drain-timeout-ms",
        "2000",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    start.bin = current.join("testapp");
    let mut c = start.spawn();
    let events = c.events();
    let v1 = std::fs::canonicalize(dir.path().join("v1").join("testapp")).unwrap();
    for pid in c.worker_pids() {
        assert_eq!(exe_of(pid), v1, "worker {pid}");
    }

    // A symlink deploy: `current` now points at v2.
    let next = dir.path().join("current.new");
    std::os::unix::fs::symlink("v2", &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    c.signal(libc::SIGHUP);
    events.wait_for("reload_finished", 1, RELOAD);
    let v2 = std::fs::canonicalize(dir.path().join("v2").join("testapp")).unwrap();
    let pids = c.worker_pids();
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        assert_eq!(exe_of(*pid), v2, "worker {pid} after the symlink deploy");
    }

    // An in-place deploy: a new file renamed over v2/testapp.
    install(&app, &v2);
    let inode = std::fs::metadata(&v2).unwrap().ino();
    c.signal(libc::SIGHUP);
    events.wait_for("reload_finished", 2, RELOAD);
    let after = c.worker_pids();
    assert_eq!(after.len(), 2);
    for pid in &after {
        assert!(!pids.contains(pid), "worker {pid} was replaced");
        assert_eq!(exe_of(*pid), v2, "worker {pid} runs a deleted file");
        let running = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino();
        assert_eq!(running, inode, "worker {pid} runs the new file");
    }
    assert!(served(&c));
    assert!(c.is_running());
}

#[test]
fn a_broken_binary_neither_replaces_workers_nor_takes_the_primary_down() {
    let dir = tempfile::tempdir().unwrap();
    let app = example_bin("testapp");
    let bin = dir.path().join("testapp");
    let (mut c, events) = from_deployed_copy(&app, &bin, "5000");
    let pids = sorted(c.worker_pids());

    // A bad deploy: the new binary dies at start.
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &bin).unwrap();

    // A reload keeps the old workers, slot by slot.
    c.signal(libc::SIGHUP);
    events.wait_for("reload_finished", 1, RELOAD);
    let kept = events.named("reload_kept_worker");
    assert_eq!(kept.len(), 2, "{:#?}", events.all());
    assert_eq!(sorted(c.worker_pids()), pids, "old workers kept");
    assert!(served(&c));

    // A worker that dies now cannot be restarted: its slot crash-loops with a growing
    // backoff while the other worker serves every new session.
    assert!(
        events.named("worker_restarting").is_empty(),
        "{:#?}",
        events.all()
    );
    let victim = pids[1];
    // SAFETY: plain kill(2) of a worker this test's cluster started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let restarts = events.wait_for("worker_restarting", 4, Duration::from_secs(15));
    let delays: Vec<u64> = restarts
        .iter()
        .filter_map(|e| e["restart_in_ms"].as_u64())
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "backoff grows: {delays:?}"
    );
    assert!(c.is_running());
    for _ in 0..10 {
        assert!(served(&c), "the surviving worker serves");
    }

    // The fixed binary comes back: the slot recovers on its own, no restart of the service.
    install(&app, &bin);
    events.wait_for("worker_ready", 3, Duration::from_secs(20));
    assert!(
        eventually(Duration::from_secs(20), || c.worker_pids().len() == 2),
        "{}",
        c.logs()
    );
    assert!(served(&c));
    assert!(c.is_running());
}

/// The second build of the upgrade test: the test app built with another wire protocol
/// version (`SIO_CLUSTER_TEST_WIRE_VERSION`), by `scripts/test`.
const NEXT_WIRE: &str = "999999";

fn next_wire_build() -> PathBuf {
    let app = example_bin("testapp");
    // target/<profile>/examples/testapp -> target/next-wire/debug/examples/testapp
    let target = app.ancestors().nth(3).unwrap();
    let bin = target.join("next-wire/debug/examples/testapp");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test builds it with\n  SIO_CLUSTER_TEST_WIRE_VERSION={NEXT_WIRE} cargo build --example testapp --target-dir target/next-wire",
        bin.display()
    );
    bin
}

#[test]
fn a_worker_of_an_incompatible_build_is_refused_and_the_old_ones_keep_serving() {
    let next = next_wire_build();
    let dir = tempfile::tempdir().unwrap();
    let app = example_bin("testapp");
    let bin = dir.path().join("testapp");
    let (mut c, events) = from_deployed_copy(&app, &bin, "10000");
    let pids = sorted(c.worker_pids());
    assert_eq!(pids.len(), 2);

    // Deploy a build that speaks another wire protocol, then reload: each slot's successor
    // says hello, is refused in one line naming both versions, and the old worker stays.
    install(&next, &bin);
    c.signal(libc::SIGHUP);
    events.wait_for("reload_finished", 1, RELOAD);
    let refused = events.named("worker_refused");
    assert_eq!(refused.len(), 2, "{:#?}", events.all());
    for r in &refused {
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("wire protocol {NEXT_WIRE}")),
            "{reason}"
        );
    }
    // One log line per refused worker says it all.
    let line = "refused a worker of an incompatible build: it speaks wire protocol";
    assert_eq!(c.count_log(line), 2, "{}", c.logs());
    assert!(
        c.logs().contains(&format!(
            "it speaks wire protocol {NEXT_WIRE} (sio-cluster {}), this primary speaks 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        c.logs()
    );
    assert!(
        c.logs().contains("restart the service"),
        "the line says what to do: {}",
        c.logs()
    );
    assert_eq!(
        events.named("reload_kept_worker").len(),
        2,
        "{:#?}",
        events.all()
    );
    assert_eq!(sorted(c.worker_pids()), pids, "old workers kept");
    for _ in 0..10 {
        assert!(served(&c), "the old workers serve");
    }

    // A compatible build deployed next replaces both workers as usual.
    install(&app, &bin);
    c.signal(libc::SIGHUP);
    events.wait_for("reload_finished", 2, RELOAD);
    assert_eq!(
        events.named("worker_refused").len(),
        2,
        "{:#?}",
        events.all()
    );
    let after = sorted(c.worker_pids());
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|p| !pids.contains(p)),
        "{after:?} {pids:?}"
    );
    assert!(served(&c));
    assert!(c.is_running());
}
