//! Errors a newcomer meets first, on the real binary: each says what to do.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{Start, example_bin, http_once};

/// Runs the test app with `args` until it exits (it must fail fast).
fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(example_bin("testapp"));
    cmd.args(args).env_remove("RUST_LOG");
    run_cmd(cmd)
}

fn run_cmd(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn testapp");
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "testapp {:?} did not exit",
        cmd.get_args().collect::<Vec<_>>()
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn binding_a_privileged_port_without_privileges_says_how_to() {
    // As root the bind would succeed: run as nobody (setpriv, util-linux) to see the error.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(example_bin("testapp"));
        c
    } else {
        Command::new(example_bin("testapp"))
    };
    cmd.args(["--listen", "127.0.0.1:80", "--workers", "1"]);
    let out = run_cmd(cmd);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("127.0.0.1:80"), "{err}");
    assert!(err.contains("ports below 1024 need privileges"), "{err}");
    assert!(
        err.contains("CAP_NET_BIND_SERVICE") && err.contains("systemd/"),
        "{err}"
    );
    assert!(!err.contains("another process"), "{err}");
}

#[test]
fn a_port_in_use_says_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["--listen", &addr, "--workers", "1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("another process is using the port"), "{err}");
}

#[test]
fn a_typo_in_the_config_file_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.env");
    std::fs::write(
        &path,
        "# my settings\nSIO_PING_INTERVAL_MS=20000\nSIO_WORKRES=1\n",
    )
    .unwrap();
    let out = run(&[
        "--listen",
        "127.0.0.1:0",
        "--config-file",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:3: `SIO_WORKRES` is not a setting",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("did you mean `SIO_WORKERS`?"), "{err}");

    std::fs::write(&path, "SIO_WORKERS=lots\n").unwrap();
    let out = run(&[
        "--listen",
        "127.0.0.1:0",
        "--config-file",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:1: SIO_WORKERS: ", path.display())),
        "{err}"
    );
}

#[test]
fn a_redis_url_without_the_redis_adapter_is_an_error() {
    let out = run(&[
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        "redis://127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("add --adapter redis"), "{err}");
}

#[test]
fn listen_explains_ip_port_and_resolves_host_names() {
    let out = run(&["--listen", "3001"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("use IP:PORT, e.g. 127.0.0.1:3000"), "{err}");
    // A host name is resolved (IPv4 first): localhost serves on 127.0.0.1.
    let c = Start {
        args: vec![
            "--listen".into(),
            "localhost:0".into(),
            "--workers".into(),
            "1".into(),
        ],
        ..Start::testapp(&[])
    }
    .spawn();
    assert_eq!(c.addr.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_eq!(http_once(c.addr, "GET", "/health", "").unwrap().0, 200);
}
