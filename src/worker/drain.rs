//! The worker's drain: the steps from the primary's `Drain` to the end of `run`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socketioxide::SocketIo;

use super::{Shutdown, WorkerShared};
use crate::adapter::ClusterAdapter;

/// Longest wait, when draining, for in-flight handshakes to finish before sessions are closed.
const DRAIN_SETTLE: Duration = Duration::from_millis(1500);

/// Drains this worker within `timeout`, then tells the main loop to return:
/// 1. HTTP connections finish the request in flight and are not kept alive (new sessions already
///    go to other workers: the primary marked this one draining before telling it), and the
///    app's [`Shutdown::draining`] resolves;
/// 2. the app's [`ShutdownGuard`]s are awaited, and on a handover (reload) a short grace lets
///    clients whose handshake was handed here just before finish connecting their namespaces;
/// 3. every Engine.IO session is closed at the transport (`io.close()`), which Socket.IO clients
///    treat as a lost connection: they reconnect at once, to the workers that stay;
/// 4. the worker ends once its connections are gone (or the time is up).
pub(super) async fn drain_worker(
    shared: Arc<WorkerShared>,
    io: SocketIo<ClusterAdapter>,
    shutdown: Shutdown,
    timeout: Duration,
    handover: bool,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(
        open = shared.open.load(Ordering::Relaxed),
        handover,
        app_guards = shutdown.held(),
        "draining"
    );
    shared.drain.send_replace(true);
    let settle = async {
        if handover {
            let settle = tokio::time::Instant::now() + DRAIN_SETTLE.min(timeout / 2);
            tokio::time::sleep_until(settle).await;
        }
    };
    let app = async {
        if tokio::time::timeout_at(deadline, shutdown.released())
            .await
            .is_err()
        {
            tracing::warn!(
                app_guards = shutdown.held(),
                "the app still holds shutdown guards at the drain timeout; closing anyway"
            );
        }
    };
    tokio::join!(settle, app);
    if handover {
        tracing::info!("closing every session so its client reconnects to another worker");
    }
    let _ = tokio::time::timeout_at(deadline, io.close()).await;
    while shared.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = done.send(());
}
