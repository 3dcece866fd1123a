//! The official `socket.io-client` (npm, version pinned by tests/js/package-lock.json) connects
//! through the cluster over websocket, polling, and polling upgraded to websocket, and a
//! broadcast reaches its clients on both workers.

mod support;

use support::Start;

#[test]
fn official_client_over_every_transport() {
    let c = Start::testapp(&["--workers", "2"]).spawn();
    support::official_client_check(&format!("http://{}", c.addr), 6, &[]);
}

/// `--parser msgpack`: the official client with `socket.io-msgpack-parser` (npm, pinned by the
/// same lockfile) gets everything the default parser gets — every transport, binary payloads,
/// acks both ways, a broadcast across both workers — while a client with the default parser
/// cannot connect; and `--ack-timeout-ms` bounds the server's wait for a client's ack.
#[test]
fn official_client_with_the_msgpack_parser_and_an_ack_timeout() {
    let c = Start::testapp(&[
        "--workers",
        "2",
        "--parser",
        "msgpack",
        "--ack-timeout-ms",
        "600",
    ])
    .spawn();
    let report = support::official_client_check(
        &format!("http://{}", c.addr),
        3,
        &[
            ("SIO_TEST_PARSER", "msgpack"),
            ("SIO_TEST_ACK_TIMEOUT", "1"),
        ],
    );
    assert_eq!(report["defaultParserConnected"], false, "{report:#}");
    let timed_out = &report["ackTimeout"];
    assert_eq!(timed_out["timeout"], true, "{report:#}");
    let after = timed_out["after_ms"].as_u64().unwrap();
    // Measured by the server's own clock: at least the configured 600 ms, and well short of
    // socketioxide's default of 5000 ms (which would mean the flag was not applied).
    assert!((600..4000).contains(&after), "{report:#}");
}

/// Without `--ack-timeout-ms` the server waits socketioxide's default (5 s) for an ack.
#[test]
fn the_default_ack_timeout_is_socketioxides() {
    let c = Start::testapp(&["--workers", "2"]).spawn();
    let report = support::official_client_check(
        &format!("http://{}", c.addr),
        1,
        &[("SIO_TEST_ACK_TIMEOUT", "1")],
    );
    let after = report["ackTimeout"]["after_ms"].as_u64().unwrap();
    assert!(after >= 5000, "{report:#}");
    assert!(report.get("defaultParserConnected").is_none(), "{report:#}");
}
