//! The official `socket.io-client` (npm, version pinned by tests/js/package-lock.json) connects
//! through the cluster over websocket, polling, and polling upgraded to websocket.

mod support;

use std::process::Command;

use support::Start;

#[test]
fn official_client_over_every_transport() {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/socket.io-client").exists(),
        "run `npm ci` in tests/js first (scripts/test does it)"
    );
    let c = Start::testapp(&["--workers", "2"]).spawn();
    let out = Command::new("node")
        .arg(js.join("connect.mjs"))
        .arg(format!("http://{}", c.addr))
        .arg("6")
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "bad output ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["ok"], true, "{report:#}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 18);
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
}
