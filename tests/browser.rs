//! The chat example in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/chat.mjs`) against the real cluster binary with 2 workers.
//! Screenshots go to `target/browser-artifacts/`.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{Start, example_bin};

/// The page's client is the official browser build of the `socket.io-client` version pinned by
/// `tests/js/package-lock.json`, byte for byte (banner and license header included).
#[test]
fn the_vendored_client_is_the_pinned_npm_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let npm = root.join("tests/js/node_modules/socket.io-client/dist/socket.io.min.js");
    let npm = std::fs::read(&npm)
        .unwrap_or_else(|e| panic!("{}: {e} (run `npm ci` in tests/js)", npm.display()));
    let vendored = std::fs::read(root.join("examples/chat/socket.io.min.js")).unwrap();
    assert!(
        npm == vendored,
        "examples/chat/socket.io.min.js differs from the pinned npm build: copy it again (examples/chat/README.md)"
    );
    assert!(String::from_utf8_lossy(&vendored[..80]).contains("Socket.IO v4.8.1"));
}

#[test]
fn two_browsers_chat_across_workers_and_survive_a_killed_worker() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (scripts/test does: apt-get install chromium)"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "run `npm ci` in tests/browser first (scripts/test does it)"
    );
    let c = Start {
        bin: example_bin("chat"),
        // Not the default path: the page must take it from the server.
        ..Start::testapp(&[
            "--workers",
            "2",
            "--balance",
            "round-robin",
            "--path",
            "/rt",
        ])
    }
    .spawn();
    let out_dir = root.join("target/browser-artifacts");
    let out = Command::new("node")
        .arg(root.join("tests/browser/chat.mjs"))
        .arg(format!("http://{}/", c.addr))
        .arg(&out_dir)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node tests/browser/chat.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report; stdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(
        out.status.success() && report["ok"] == true,
        "browser check failed: {report:#}\nstderr:\n{stderr}\ncluster logs:\n{}",
        c.logs()
    );
    assert!(
        report["client_banner"]
            .as_str()
            .is_some_and(|b| b.starts_with("Socket.IO v4")),
        "{report}"
    );
    assert_ne!(
        report["workers"]["alice"]["index"],
        report["workers"]["bob"]["index"]
    );
    let paths = report["engine_paths"].as_array().expect("engine_paths");
    assert!(
        !paths.is_empty()
            && paths
                .iter()
                .all(|p| p.as_str().is_some_and(|p| p.starts_with("/rt"))),
        "the page must use the server's --path /rt: {report}"
    );
    assert!(
        report["reconnected_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= 10_000),
        "{report}"
    );
    for shot in [
        "alice.png",
        "bob.png",
        "alice-after-kill.png",
        "bob-after-kill.png",
    ] {
        assert!(out_dir.join(shot).exists(), "screenshot {shot} missing");
    }
}
