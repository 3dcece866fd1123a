//! The `status` command of every binary built on the crate: `app status --admin-listen ADDR`
//! asks a running primary for `/status` and prints its workers as a table, like `pm2 ls`.
//!
//! ```text
//! $ myapp status --admin-listen 127.0.0.1:9090
//! cluster: pid 4242, adapter ipc, version 0.1.0, serving
//! index  pid    gen  state  uptime  connections  sessions  restarts  rss
//! 0      4250   0    ready  3m12s   118          117       0         21.4 MiB
//! 1      4251   0    ready  3m12s   121          121       1         22.0 MiB
//! recent events:
//!   #7 worker_restarting cause="exit" crashes=1 restart_in_ms=200 slot=1
//!   #8 worker_started generation=0 pid=4251 slot=1 worker="m2"
//!   #9 worker_ready pid=4251 slot=1 startup_ms=4 worker="m2"
//! ```
//!
//! The recent events are the last [`RECENT_EVENTS`] of the primary's `/events`.
//!
//! Run through [`Cluster::run`](crate::Cluster::run), it exits 0 when the primary answered,
//! whatever the workers' state, and prints one line on stderr and exits 1 when nothing answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Deserialize;

use crate::config::StatusArgs;

/// Why `status` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing answered at the address.
    #[error(
        "no sio-cluster admin listener answers at {addr}: {error} (is the cluster running, with --admin-listen {addr}?)"
    )]
    Unreachable {
        /// The address asked.
        addr: SocketAddr,
        /// Why (in the message, not a `source`: the message is the whole story, on one line).
        error: std::io::Error,
    },
    /// Something answered, but not a cluster's `/status`.
    #[error("{addr} answered, but not with a sio-cluster /status: {reason}")]
    NotAStatus {
        /// The address asked.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// Lifecycle events printed under the table.
pub const RECENT_EVENTS: usize = 8;

#[derive(Debug, Deserialize)]
struct Status {
    workers: Vec<Worker>,
    adapter: String,
    draining: bool,
    version: String,
    #[serde(default)]
    pid: u32,
}

#[derive(Debug, Deserialize)]
struct Worker {
    index: usize,
    pid: u32,
    generation: u64,
    state: String,
    uptime_s: f64,
    connections: u64,
    sessions: u64,
    rss_bytes: u64,
    restarts: u64,
}

/// Runs the command: prints the table (or the JSON with `--json`) on stdout.
pub fn run(args: &StatusArgs) -> Result<(), StatusError> {
    let addr = args.admin_listen;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let body = fetch(addr, "/status", timeout)?;
    let status: Status = serde_json::from_str(&body).map_err(|e| StatusError::NotAStatus {
        addr,
        reason: format!("{e}"),
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{body}");
    } else {
        let _ = write!(out, "{}", table(&status));
        // A primary without `/events` (an older build) just has no such section.
        if let Ok(events) = fetch(addr, "/events?follow=0", timeout) {
            let _ = write!(out, "{}", recent(&events));
        }
    }
    let _ = out.flush();
    Ok(())
}

/// The last [`RECENT_EVENTS`] lines of `/events`, one per line: `#seq event key=value...`.
fn recent(ndjson: &str) -> String {
    let lines: Vec<&str> = ndjson.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = String::from("recent events:\n");
    for line in &lines[lines.len().saturating_sub(RECENT_EVENTS)..] {
        let Ok(serde_json::Value::Object(ev)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            continue;
        };
        let mut text = format!(
            "  #{} {}",
            ev.get("seq").and_then(|v| v.as_u64()).unwrap_or(0),
            ev.get("event").and_then(|v| v.as_str()).unwrap_or("?")
        );
        for (k, v) in ev.iter().filter(|(k, _)| *k != "seq" && *k != "event") {
            text.push_str(&format!(" {k}={v}"));
        }
        out.push_str(&text);
        out.push('\n');
    }
    out
}

/// GET `path` over one connection; the body of a 200.
fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, StatusError> {
    let unreachable = |error| StatusError::Unreachable { addr, error };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(StatusError::NotAStatus {
            addr,
            reason: "no complete HTTP response".into(),
        });
    };
    let status_line = head.lines().next().unwrap_or("");
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(StatusError::NotAStatus {
            addr,
            reason: format!("answered {status_line:?}"),
        });
    }
    Ok(body.to_owned())
}

fn uptime(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The table `status` prints.
fn table(st: &Status) -> String {
    let mut rows = vec![[
        "index".to_owned(),
        "pid".into(),
        "gen".into(),
        "state".into(),
        "uptime".into(),
        "connections".into(),
        "sessions".into(),
        "restarts".into(),
        "rss".into(),
    ]];
    for w in &st.workers {
        rows.push([
            w.index.to_string(),
            w.pid.to_string(),
            w.generation.to_string(),
            w.state.clone(),
            uptime(w.uptime_s),
            w.connections.to_string(),
            w.sessions.to_string(),
            w.restarts.to_string(),
            mib(w.rss_bytes),
        ]);
    }
    let mut widths = [0usize; 9];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = format!(
        "cluster: pid {}, adapter {}, version {}, {}\n",
        st.pid,
        st.adapter,
        st.version,
        if st.draining { "draining" } else { "serving" }
    );
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if st.workers.is_empty() {
        out.push_str("(no worker process)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_worker() {
        let st: Status = serde_json::from_str(
            r#"{"workers":[{"index":0,"pid":11,"generation":0,"state":"ready","uptime_s":75.2,
                "connections":3,"sessions":2,"rss_bytes":10485760,"restarts":1},
               {"index":1,"pid":12,"generation":1,"state":"draining","uptime_s":4000,
                "connections":0,"sessions":0,"rss_bytes":0,"restarts":0}],
               "adapter":"ipc","draining":false,"version":"0.1.0","pid":10}"#,
        )
        .unwrap();
        let t = table(&st);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].contains("pid 10") && lines[0].contains("serving"),
            "{t}"
        );
        assert!(lines[1].starts_with("index"), "{t}");
        assert!(
            lines[2].contains(" 11 ") && lines[2].contains("1m15s"),
            "{t}"
        );
        assert!(lines[2].contains("10.0 MiB"), "{t}");
        assert!(
            lines[3].contains("draining") && lines[3].contains("1h06m"),
            "{t}"
        );
    }

    #[test]
    fn nothing_listening_is_one_clear_error() {
        // A port nobody listens on: bind one, note it, close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = fetch(addr, "/status", Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no sio-cluster admin listener answers"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
