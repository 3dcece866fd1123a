//! Forwarding one request to the worker that owns its session.
//!
//! Used only when a keep-alive connection handed to this worker carries a request for a session
//! living elsewhere (browsers share connections between tabs). This worker creates a Unix socket
//! pair, asks the primary to pass one end to the owner as a *forwarded* connection, and sends the
//! request over the other end with a hyper client. The owner serves it like any connection (and
//! never forwards it again). Websocket upgrades are relayed byte for byte. The client's
//! connection stays here, so its next request is routed afresh.

use std::net::SocketAddr;

use super::body::TimedBody;
use axum::body::Body;
use http::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;

use crate::ipc::message::{MemberId, ToPrimary};

use super::WorkerShared;
use super::session::error_response;

/// Sends `req` to `owner` and returns its response (or 502 if the owner cannot be reached).
pub(crate) async fn forward(
    shared: &WorkerShared,
    owner: MemberId,
    peer: Option<SocketAddr>,
    req: Request<TimedBody>,
) -> Response<Body> {
    match try_forward(shared, owner, peer, req).await {
        Ok(res) => res,
        Err(e) => {
            tracing::warn!(%owner, "cannot forward a request to the session's worker: {e}");
            error_response(StatusCode::BAD_GATEWAY)
        }
    }
}

async fn try_forward(
    shared: &WorkerShared,
    owner: MemberId,
    peer: Option<SocketAddr>,
    mut req: Request<TimedBody>,
) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
    mine.set_nonblocking(true)?;
    let mine = tokio::net::UnixStream::from_std(mine)?;
    shared.control.send(
        ToPrimary::Forward {
            target: owner,
            peer,
        },
        Some(theirs.into()),
    );
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(mine)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let upgrading = req.headers().contains_key(header::UPGRADE);
    let client_side = upgrading.then(|| hyper::upgrade::on(&mut req));
    shared
        .stats
        .forwarded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(%owner, uri = %req.uri(), "forwarding a request to the session's worker");
    let mut res = sender.send_request(req).await?;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_side
    {
        let owner_side = hyper::upgrade::on(&mut res);
        tokio::spawn(async move {
            let (Ok(client), Ok(owner)) = tokio::join!(client_side, owner_side) else {
                return;
            };
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(owner))
                    .await;
        });
    }
    Ok(res.map(Body::new))
}
