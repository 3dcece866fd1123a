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
