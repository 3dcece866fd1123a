//! Polling-then-upgrade connect, in the order a browser client does it: handshake GET, then at
//! once the namespace CONNECT (POST `40`), a long-poll GET and the websocket probe
//! (`2probe`/`3probe`); once the probe is answered and the pending GET has returned (the server
//! ends it with a noop), `5` completes the upgrade. Timed separately: until `40{...}` arrives and
//! until the upgrade is complete. The HTTP side uses `sio_client::raw::HttpConn` (keep-alive,
//! reopened when the server closes it, e.g. `@socket.io/sticky`'s `Connection: close`), over TLS
//! when the [`Dest`] says so.

use std::net::IpAddr;
use std::time::Instant;

use sio_client::raw::{self, HttpConn, RawResponse};

use crate::ws::{
    ConnError, Dest, WsConn, connect_reply, http_error_message, parse_open, ws_target,
};

/// Timings of one polling-then-upgrade connect, µs from the start.
#[derive(Debug, Clone, Copy)]
pub struct PollTimes {
    pub connected_us: u64,
    pub upgraded_us: u64,
}

fn client_err(phase: &'static str, e: sio_client::Error) -> ConnError {
    ConnError::from_client(phase, e)
}

fn check(phase: &'static str, res: RawResponse) -> Result<RawResponse, ConnError> {
    if res.status == 200 {
        Ok(res)
    } else {
        Err(ConnError::Http {
            phase,
            status: res.status,
            message: http_error_message(&res.body),
        })
    }
}

fn closes(res: &RawResponse) -> bool {
    res.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// One HTTP request over `conn` (opened, or reopened if the server closed it).
async fn request(
    conn: &mut Option<HttpConn>,
    dest: &Dest,
    phase: &'static str,
    method: &str,
    url: &str,
    body: &'static str,
) -> Result<RawResponse, ConnError> {
    if conn.as_ref().is_none_or(HttpConn::is_closed) {
        let opened = match &dest.tls {
            None => HttpConn::connect(dest.addr).await,
            Some(tls) => HttpConn::connect_tls(dest.addr, tls).await,
        };
        *conn = Some(opened.map_err(|e| client_err(phase, e))?);
    }
    let c = conn.as_mut().expect("just opened");
    let res = c
        .request(method, url, &[], body)
        .await
        .map_err(|e| client_err(phase, e))?;
    if closes(&res) {
        *conn = None;
    }
    check(phase, res)
}

/// Connects namespace `/` over polling and upgrades to websocket; returns the websocket.
/// `source` is the local address of the websocket (`None`: the kernel's choice); the HTTP
/// requests always go out from the kernel's choice (127.0.0.1), `sio_client::raw::HttpConn`
/// does not bind.
pub async fn connect_polling_upgrade(
    dest: &Dest,
    source: Option<IpAddr>,
    path: &str,
) -> Result<(WsConn, PollTimes), ConnError> {
    let t0 = Instant::now();
    let mut get_conn: Option<HttpConn> = None;
    let res = request(
        &mut get_conn,
        dest,
        "handshake",
        "GET",
        &raw::handshake_url(path),
        "",
    )
    .await?;
    let text = res.text();
    let open = raw::split_payload(text)
        .next()
        .ok_or_else(|| ConnError::Protocol {
            phase: "handshake",
            text: "empty handshake response".into(),
        })?;
    let sid = parse_open(open.as_bytes())?;
    let url = raw::polling_url(path, &sid);

    let post = async {
        let mut conn = None;
        let res = request(&mut conn, dest, "poll POST", "POST", &url, "40").await?;
        if res.text() != "ok" {
            return Err(ConnError::Protocol {
                phase: "poll POST",
                text: format!("answered {:?}", res.text()),
            });
        }
        Ok(())
    };
    let get = async {
        let mut connected = None;
        loop {
            let res = request(&mut get_conn, dest, "poll GET", "GET", &url, "").await?;
            let mut noop = false;
            for p in raw::split_payload(res.text()) {
                match p.as_bytes().first() {
                    Some(b'4') => {
                        if let Some(r) = connect_reply(p.as_bytes()) {
                            r?;
                            connected.get_or_insert(t0.elapsed().as_micros() as u64);
                        }
                    }
                    Some(b'6') => noop = true,
                    Some(b'1') => return Err(ConnError::Closed { phase: "poll GET" }),
                    _ => {}
                }
            }
            // The upgrade is under way from the start: the noop that ends a GET means the
            // server saw the probe, so polling is paused here.
            if noop {
                return Ok(connected);
            }
        }
    };
    let probe = async {
        let mut ws =
            WsConn::open_from(dest, source, &ws_target(path, Some(&sid)), "ws probe").await?;
        ws.send_text(b"2probe")
            .await
            .map_err(|e| ConnError::io("ws probe", &e))?;
        ws.read_text_until("ws probe", |p| (p == b"3probe").then_some(Ok(())))
            .await?;
        Ok(ws)
    };
    let ((), connected, mut ws) = tokio::try_join!(post, get, probe)?;
    ws.send_text(b"5")
        .await
        .map_err(|e| ConnError::io("ws upgrade", &e))?;
    let upgraded_us = t0.elapsed().as_micros() as u64;
    let connected_us = match connected {
        Some(c) => c,
        None => {
            // The CONNECT reply had not been polled yet: it comes over the websocket.
            ws.read_text_until("ws namespace connect", connect_reply)
                .await?;
            t0.elapsed().as_micros() as u64
        }
    };
    Ok((
        ws,
        PollTimes {
            connected_us,
            upgraded_us,
        },
    ))
}
