//! TLS in the cluster (`--tls-cert`/`--tls-key`): the official client over wss and https
//! polling through 2 workers, sticky, with a broadcast; certificates re-read on SIGHUP while
//! clients keep connecting; one clear line for a bad certificate or key; plain HTTP on the TLS
//! port answered and harmless.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use sio_client::{Client, ClientConfig, TlsConfig, Transport};
use support::{Start, TestCert};

fn tls_cluster(cert: &TestCert, extra: &[&str]) -> support::Cluster {
    let mut args: Vec<String> = vec!["--workers".into(), "2".into()];
    args.extend(cert.args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Start::testapp(&args).spawn()
}

#[test]
fn official_client_over_wss_and_https_polling() {
    let cert = TestCert::new();
    let c = tls_cluster(&cert, &[]);
    let ca = cert.cert.display().to_string();
    support::official_client_check(
        &format!("https://{}", c.addr),
        4,
        &[("NODE_EXTRA_CA_CERTS", ca.as_str())],
    );
}

#[test]
fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let cert = TestCert::new();
    let c = tls_cluster(&cert, &[]);
    let other = TestCert::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ClientConfig::new(c.addr, Transport::WebSocket).tls(other.client_tls());
        let err = support::refused_connect(cfg, "untrusted certificate refused").await;
        assert!(err.is_tls(), "{err}");
        // And the cluster still serves a client that trusts it.
        let cfg = ClientConfig::new(c.addr, Transport::WebSocket).tls(cert.client_tls());
        let client = Client::connect(cfg).await.unwrap();
        assert_eq!(client.peer_certificate_der(), Some(cert.der.clone()));
    });
}

/// Renewing the certificate files and sending SIGHUP: connections opened after the reload get
/// the new certificate, and not one connect fails while the workers are replaced.
#[test]
fn certificates_are_reread_on_sighup_without_failing_a_connect() {
    let mut cert = TestCert::new();
    let c = tls_cluster(&cert, &[]);
    let old = cert.der.clone();
    let old_pem = cert.pem.clone();
    cert.regenerate();
    let new = cert.der.clone();
    assert_ne!(old, new);
    // The client trusts both, so only the server's choice decides which one it sees.
    let both = TlsConfig::trusting_pem(format!("{old_pem}{}", cert.pem).as_bytes())
        .unwrap()
        .server_name("localhost");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = |transport| {
            let tls = both.clone();
            let addr = c.addr;
            async move {
                let cfg = ClientConfig::new(addr, transport).tls(tls);
                let client = Client::connect(cfg).await?;
                let who = client
                    .emit_with_ack("/", "whoami", vec![], Duration::from_secs(5))
                    .await?;
                assert_eq!(who[0]["sid"], client.socket_id("/").unwrap());
                Ok::<_, sio_client::Error>(client.peer_certificate_der().unwrap())
            }
        };
        assert_eq!(connect(Transport::WebSocket).await.unwrap(), old);
        c.signal(libc::SIGHUP);
        let mut seen_new = 0;
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut reloaded_at = None;
        while tokio::time::Instant::now() < deadline {
            // Four at a time, alternating transports, for as long as the reload runs and a
            // little after.
            let mut batch = tokio::task::JoinSet::new();
            for i in 0..4 {
                let t = if i % 2 == 0 {
                    Transport::WebSocket
                } else {
                    Transport::PollingThenUpgrade
                };
                batch.spawn(connect(t));
            }
            while let Some(r) = batch.join_next().await {
                let der = r.unwrap().unwrap_or_else(|e| {
                    panic!("a connect failed during the reload: {e}\n{}", c.logs())
                });
                seen += 1;
                if der == new {
                    seen_new += 1;
                } else {
                    assert_eq!(der, old, "an unknown certificate");
                }
            }
            if reloaded_at.is_none() && c.logs().contains("reload finished") {
                reloaded_at = Some(seen);
            }
            if let Some(at) = reloaded_at
                && seen >= at + 8
            {
                break;
            }
        }
        assert!(reloaded_at.is_some(), "no reload finished:\n{}", c.logs());
        assert!(
            seen_new >= 8,
            "{seen_new} of {seen} connects saw the new certificate"
        );
        // Every connection opened once the reload finished has the new certificate.
        for _ in 0..4 {
            assert_eq!(connect(Transport::WebSocket).await.unwrap(), new);
        }
    });
}

/// Each bad certificate/key case stops the start with exit code 1 and one line naming the file
/// and the fix.
#[test]
fn a_bad_certificate_or_key_is_one_clear_line_at_start() {
    let cert = TestCert::new();
    let other = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            missing.clone(),
            cert.key.clone(),
            "cannot read the TLS certificate",
        ),
        (
            cert.cert.clone(),
            missing.clone(),
            "cannot read the TLS key",
        ),
        (garbage.clone(), cert.key.clone(), "no certificate in"),
        (cert.cert.clone(), garbage.clone(), "no private key in"),
        (cert.cert.clone(), other.key.clone(), "do not go together"),
    ];
    for (c, k, want) in cases {
        let out = std::process::Command::new(support::example_bin("testapp"))
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--tls-cert"])
            .arg(&c)
            .arg("--tls-key")
            .arg(&k)
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line for {want}: {stderr}");
        assert!(lines[0].contains(want), "{want}: {stderr}");
        let named = if want.contains("key") || want.contains("together") {
            &k
        } else {
            &c
        };
        assert!(
            lines[0].contains(&named.display().to_string()),
            "names the file: {stderr}"
        );
    }
    // --tls-cert without --tls-key is a usage error.
    let out = std::process::Command::new(support::example_bin("testapp"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert.cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain-HTTP request on the TLS port gets a 400 saying to use https, and the cluster goes
/// on serving TLS clients; so do garbage bytes and a client that sends nothing.
#[test]
fn plain_http_on_the_tls_port_harms_nothing() {
    let cert = TestCert::new();
    let c = tls_cluster(&cert, &["--head-timeout-ms", "1000"]);
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(c.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains("https://"), "{text}");
    }
    // A client that opens a connection and sends nothing is closed at the head timeout.
    let mut idle = std::net::TcpStream::connect(c.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        idle.read(&mut buf).unwrap_or(0),
        0,
        "idle connection closed"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for transport in [Transport::WebSocket, Transport::Polling] {
            let cfg = ClientConfig::new(c.addr, transport).tls(cert.client_tls());
            let client = Client::connect(cfg).await.unwrap();
            let who = client
                .emit_with_ack("/", "whoami", vec![], Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(who[0]["sid"], client.socket_id("/").unwrap());
        }
    });
    assert_eq!(c.worker_pids().len(), 2, "no worker died");
}

/// A renewal that left an unusable file behind: the reload is refused with one line naming
/// it, and the running workers keep serving with the certificate they have.
#[test]
fn a_reload_with_a_broken_certificate_is_refused_and_serving_goes_on() {
    let cert = TestCert::new();
    let c = tls_cluster(&cert, &["--admin-listen", "127.0.0.1:0"]);
    let events = c.events();
    let pids = c.worker_pids();
    std::fs::write(&cert.cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    c.signal(libc::SIGHUP);
    let refused = events.wait_for("reload_refused", 1, Duration::from_secs(10));
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&cert.cert.display().to_string()),
        "{reason}"
    );
    let line = c
        .logs()
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap()
        .to_string();
    assert!(line.contains(&cert.cert.display().to_string()), "{line}");
    assert_eq!(c.worker_pids(), pids, "workers unchanged");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ClientConfig::new(c.addr, Transport::WebSocket).tls(cert.client_tls());
        let client = Client::connect(cfg).await.unwrap();
        assert_eq!(client.peer_certificate_der(), Some(cert.der.clone()));
    });
}

/// The door's settings are config-file keys like every flag: TLS and a per-IP cap from the file.
#[test]
fn door_settings_from_a_config_file() {
    let cert = TestCert::new();
    let file = cert.dir().join("cluster.env");
    std::fs::write(
        &file,
        format!(
            "SIO_TLS_CERT={}\nSIO_TLS_KEY={}\nSIO_MAX_CONNECTIONS_PER_IP=1\nSIO_MAX_PAYLOAD=1000\n",
            cert.cert.display(),
            cert.key.display()
        ),
    )
    .unwrap();
    let c = Start::testapp(&["--workers", "2", "--config-file", file.to_str().unwrap()]).spawn();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ClientConfig::new(c.addr, Transport::WebSocket).tls(cert.client_tls());
        let client = Client::connect(cfg.clone()).await.unwrap();
        assert_eq!(client.handshake().max_payload, 1000);
        let err = support::refused_connect(cfg, "second connection of 127.0.0.1").await;
        assert_eq!(err.http_status(), Some(503), "{err}");
    });
}
