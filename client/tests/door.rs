//! The door in front of a server, from the client's side: TLS on every transport, a preamble
//! (a PROXY protocol header) before anything else on every TCP connection, and extra headers on
//! every request.
//!
//! A socketioxide server runs in-process on 127.0.0.1 behind a hand-written accept loop:
//! [read and check a PROXY v1/v2 header] → [rustls `LazyConfigAcceptor`, noting the SNI and
//! ALPN offered] → hyper `serve_connection(..).with_upgrades()`, with a service that records
//! every request (method, transport, headers, which connection) before socketioxide answers it.
//! Certificates are made with rcgen.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use sio_client::raw::{self, ConnectOptions, HttpConn};
use sio_client::{Client, ClientConfig, Error, PollingConn, TlsConfig, Transport};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

/// A PROXY v1 line, as a load balancer sends it.
const PROXY_V1: &[u8] = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n";

/// A PROXY v2 header: PROXY command, TCP over IPv4, 203.0.113.7:51000 → 127.0.0.1:443.
fn proxy_v2() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&[203, 0, 113, 7, 127, 0, 0, 1]);
    h.extend_from_slice(&51000u16.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// A self-signed certificate for `localhost` and `127.0.0.1`.
struct Cert {
    pem: String,
    der: Vec<u8>,
    key_der: Vec<u8>,
}

fn self_signed() -> Cert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    Cert {
        pem: ck.cert.pem(),
        der: ck.cert.der().to_vec(),
        key_der: ck.signing_key.serialize_der(),
    }
}

/// A self-signed certificate for `localhost` with its own subject name: to a client that trusts
/// only this one, a server's certificate has an unknown issuer.
fn other_ca() -> Cert {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "some other test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Cert {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

/// A test CA and a certificate for `localhost`/`127.0.0.1` it issued: (CA, leaf).
fn ca_and_leaf() -> (Cert, Cert) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "door test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    (
        Cert {
            pem: ca.pem(),
            der: ca.der().to_vec(),
            key_der: Vec::new(),
        },
        Cert {
            pem: leaf.pem(),
            der: leaf.der().to_vec(),
            key_der: leaf_key.serialize_der(),
        },
    )
}

fn server_tls(cert: &Cert) -> Arc<rustls::ServerConfig> {
    server_tls_chain(std::slice::from_ref(&cert.der), &cert.key_der)
}

/// A server configuration presenting `chain` (leaf first).
fn server_tls_chain(chain: &[Vec<u8>], key_der: &[u8]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            chain.iter().cloned().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn client_tls(cert: &Cert) -> TlsConfig {
    TlsConfig::trusting_pem(cert.pem.as_bytes()).unwrap()
}

/// Which preamble the server requires before anything else.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Nothing,
    /// A PROXY v1 line or a v2 header; a connection without one is closed at once.
    Proxy,
}

/// One accepted TCP connection.
#[derive(Debug, Clone, Default)]
struct ConnSeen {
    preamble: Vec<u8>,
    sni: Option<String>,
    alpn_offered: Vec<String>,
    alpn: Option<String>,
}

/// One HTTP request, as it reached the service.
#[derive(Debug, Clone)]
struct ReqSeen {
    conn: usize,
    tls: bool,
    method: String,
    transport: String,
    has_sid: bool,
    xff: Vec<String>,
    cookie: Vec<String>,
    host: Vec<String>,
}

#[derive(Default)]
struct Log {
    conns: Mutex<Vec<ConnSeen>>,
    requests: Mutex<Vec<ReqSeen>>,
    refused: AtomicUsize,
}

impl Log {
    fn conns(&self) -> Vec<ConnSeen> {
        self.conns.lock().unwrap().clone()
    }
    fn requests(&self) -> Vec<ReqSeen> {
        self.requests.lock().unwrap().clone()
    }
}

struct Server {
    addr: SocketAddr,
    log: Arc<Log>,
}

async fn on_connect(s: SocketRef) {
    s.on(
        "echo",
        async |s: SocketRef, Data::<Value>(v), ack: AckSender| {
            s.emit("echo", &v).ok();
            ack.send(&v).ok();
        },
    );
    let xff = s
        .req_parts()
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.emit("welcome", &json!({ "xff": xff })).ok();
}

/// Reads a PROXY v1 line or v2 header, byte by byte (nothing past it is consumed).
async fn read_proxy_header(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 6];
    tcp.read_exact(&mut buf).await.ok()?;
    if buf == b"PROXY " {
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= 107 {
                return None;
            }
            buf.push(tcp.read_u8().await.ok()?);
        }
        return Some(buf);
    }
    if buf != b"\r\n\r\n\0\r" {
        return None;
    }
    buf.resize(16, 0);
    tcp.read_exact(&mut buf[6..]).await.ok()?;
    if &buf[6..12] != b"\nQUIT\n" {
        return None;
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let start = buf.len();
    buf.resize(start + len, 0);
    tcp.read_exact(&mut buf[start..]).await.ok()?;
    Some(buf)
}

async fn start(tls: Option<Arc<rustls::ServerConfig>>, expect: Expect) -> Server {
    let (svc, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(300))
        .ping_timeout(Duration::from_millis(2000))
        .build_svc();
    io.ns("/", on_connect);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Log::default());
    let server_log = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (svc, log, tls) = (svc.clone(), server_log.clone(), tls.clone());
            tokio::spawn(async move {
                let mut tcp = tcp;
                let mut seen = ConnSeen::default();
                if expect == Expect::Proxy {
                    match read_proxy_header(&mut tcp).await {
                        Some(p) => seen.preamble = p,
                        None => {
                            log.refused.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                let (io, is_tls): (Box<dyn Rw>, bool) = match tls {
                    None => (Box::new(tcp), false),
                    Some(tls) => {
                        let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                            rustls::server::Acceptor::default(),
                            tcp,
                        );
                        let Ok(start) = acceptor.await else { return };
                        let hello = start.client_hello();
                        seen.sni = hello.server_name().map(str::to_owned);
                        seen.alpn_offered = hello
                            .alpn()
                            .map(|it| {
                                it.map(|p| String::from_utf8_lossy(p).into_owned())
                                    .collect()
                            })
                            .unwrap_or_default();
                        let stream = match start.into_stream(tls).await {
                            Ok(s) => s,
                            Err(e) => {
                                println!("server: TLS handshake failed: {e}");
                                return;
                            }
                        };
                        seen.alpn = stream
                            .get_ref()
                            .1
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned());
                        (Box::new(stream), true)
                    }
                };
                let conn = push_conn(&log, seen);
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        record(&log, &req, conn, is_tls);
                        svc.call(req)
                    },
                );
                let res = http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades()
                    .await;
                if let Err(e) = res {
                    println!("server: connection {conn} ended: {e}");
                }
            });
        }
    });
    Server { addr, log }
}

/// A plain or TLS server-side stream.
trait Rw: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Rw for T {}

fn push_conn(log: &Log, seen: ConnSeen) -> usize {
    let mut conns = log.conns.lock().unwrap();
    conns.push(seen);
    conns.len() - 1
}

fn values(req: &hyper::Request<hyper::body::Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("<not utf-8>").to_owned())
        .collect()
}

fn record(log: &Log, req: &hyper::Request<hyper::body::Incoming>, conn: usize, tls: bool) {
    let query = req.uri().query().unwrap_or("");
    let transport = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("transport="))
        .unwrap_or("")
        .to_owned();
    log.requests.lock().unwrap().push(ReqSeen {
        conn,
        tls,
        method: req.method().to_string(),
        transport,
        has_sid: query.split('&').any(|kv| kv.starts_with("sid=")),
        xff: values(req, "x-forwarded-for"),
        cookie: values(req, "cookie"),
        host: values(req, "host"),
    });
}

/// Connects, waits for the welcome, emits with ack, receives the echoed event.
async fn round_trip(cfg: ClientConfig) -> Client {
    let mut c = Client::connect(cfg).await.unwrap();
    let welcome = c.next_event_named("welcome", T).await.unwrap();
    assert_eq!(welcome.ns, "/");
    let ack = c
        .emit_with_ack("/", "echo", vec![json!({"over": "tls"})], T)
        .await
        .unwrap();
    assert_eq!(ack, vec![json!({"over": "tls"})]);
    let ev = c.next_event(T).await.unwrap();
    assert_eq!(ev.name, "echo");
    assert_eq!(ev.args, vec![json!({"over": "tls"})]);
    c
}

async fn exercise_tls(transport: Transport, polling_conn: PollingConn) {
    let cert = self_signed();
    let server = start(Some(server_tls(&cert)), Expect::Nothing).await;
    let cfg = ClientConfig::new(server.addr, transport)
        .polling_conn(polling_conn)
        .tls(client_tls(&cert));
    let c = round_trip(cfg).await;
    let expected = match transport {
        Transport::Polling => Transport::Polling,
        _ => Transport::WebSocket,
    };
    assert_eq!(c.transport(), expected);
    assert_eq!(c.peer_certificate_der(), Some(cert.der.clone()));
    c.disconnect().await.unwrap();

    let conns = server.log.conns();
    assert!(!conns.is_empty());
    for conn in &conns {
        assert_eq!(conn.sni.as_deref(), Some("localhost"), "{conn:?}");
        assert_eq!(conn.alpn_offered, vec!["http/1.1"], "{conn:?}");
        assert_eq!(conn.alpn.as_deref(), Some("http/1.1"), "{conn:?}");
    }
    let requests = server.log.requests();
    assert!(requests.iter().all(|r| r.tls), "{requests:?}");
    let ws = requests
        .iter()
        .filter(|r| r.transport == "websocket")
        .count();
    let polling = requests.iter().filter(|r| r.transport == "polling").count();
    match transport {
        Transport::WebSocket => assert_eq!((ws, polling), (1, 0), "{requests:?}"),
        Transport::Polling => assert!(ws == 0 && polling >= 3, "{requests:?}"),
        Transport::PollingThenUpgrade => assert!(ws == 1 && polling >= 2, "{requests:?}"),
    }
    if polling_conn == PollingConn::Fresh && transport != Transport::WebSocket {
        assert!(conns.len() >= 3, "{conns:?}");
    }
}

#[tokio::test]
async fn tls_websocket() {
    exercise_tls(Transport::WebSocket, PollingConn::KeepAlive).await;
}

#[tokio::test]
async fn tls_polling() {
    exercise_tls(Transport::Polling, PollingConn::KeepAlive).await;
}

#[tokio::test]
async fn tls_polling_fresh_connections() {
    exercise_tls(Transport::Polling, PollingConn::Fresh).await;
}

#[tokio::test]
async fn tls_polling_then_upgrade() {
    exercise_tls(Transport::PollingThenUpgrade, PollingConn::KeepAlive).await;
}

#[tokio::test]
async fn tls_raw_two_requests_on_one_connection() {
    let cert = self_signed();
    let server = start(Some(server_tls(&cert)), Expect::Nothing).await;
    // The certificate also names 127.0.0.1: verify against the IP (no SNI is sent for one).
    let tls = client_tls(&cert).server_name("127.0.0.1");
    let mut conn = HttpConn::connect_tls(server.addr, &tls).await.unwrap();
    assert!(conn.is_tls());
    assert_eq!(conn.peer_certificate_der(), Some(cert.der.clone()));
    let local = conn.local_addr();
    let mut sids = Vec::new();
    for _ in 0..2 {
        let res = conn.get(&raw::handshake_url("/socket.io/")).await.unwrap();
        assert_eq!(res.status, 200, "{}", res.text());
        sids.push(raw::parse_open_packet(res.text()).unwrap().sid);
    }
    assert_ne!(sids[0], sids[1]);
    let res = conn
        .post(&raw::polling_url("/socket.io/", &sids[0]), "40")
        .await
        .unwrap();
    assert_eq!(res.text(), "ok");
    assert!(!conn.is_closed());
    assert_eq!(conn.local_addr(), local);
    let conns = server.log.conns();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].sni, None);
    let requests = server.log.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests.iter().all(|r| r.conn == 0 && r.tls),
        "{requests:?}"
    );

    // A plain connection reports no certificate.
    let plain = start(None, Expect::Nothing).await;
    let conn = HttpConn::connect(plain.addr).await.unwrap();
    assert!(!conn.is_tls());
    assert_eq!(conn.peer_certificate_der(), None);
}

#[tokio::test]
async fn tls_certificate_issued_by_a_trusted_ca() {
    let (ca, leaf) = ca_and_leaf();
    let server = start(
        Some(server_tls_chain(
            &[leaf.der.clone(), ca.der.clone()],
            &leaf.key_der,
        )),
        Expect::Nothing,
    )
    .await;
    // The PEM may hold more than the CA (here also a private key block, skipped).
    let pem = format!(
        "{}{}",
        ca.pem,
        rcgen::KeyPair::generate().unwrap().serialize_pem()
    );
    let tls = TlsConfig::trusting_pem(pem.as_bytes()).unwrap();
    assert_eq!(tls.name(), "localhost");
    let c =
        round_trip(ClientConfig::new(server.addr, Transport::PollingThenUpgrade).tls(tls.clone()))
            .await;
    // The first certificate of the chain: the server's own, not the CA's.
    assert_eq!(c.peer_certificate_der(), Some(leaf.der.clone()));
    c.disconnect().await.unwrap();
    let conn = HttpConn::connect_tls(server.addr, &tls).await.unwrap();
    assert_eq!(conn.peer_certificate_der(), Some(leaf.der.clone()));

    // A client that trusts another CA is refused.
    let err = Client::connect(
        ClientConfig::new(server.addr, Transport::WebSocket).tls(client_tls(&other_ca())),
    )
    .await
    .unwrap_err();
    assert!(
        err.is_tls() && err.to_string().contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_untrusted_certificate_is_a_clear_error() {
    let cert = self_signed();
    let server = start(Some(server_tls(&cert)), Expect::Nothing).await;
    // Another CA, and another self-signed certificate with the same subject name as the
    // server's (a different key: the signature does not verify).
    for (other, why) in [
        (other_ca(), "UnknownIssuer"),
        (self_signed(), "BadSignature"),
    ] {
        for transport in [
            Transport::WebSocket,
            Transport::Polling,
            Transport::PollingThenUpgrade,
        ] {
            let cfg = ClientConfig::new(server.addr, transport).tls(client_tls(&other));
            let err = Client::connect(cfg).await.unwrap_err();
            println!("{transport:?}: {err}");
            assert!(err.is_tls(), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("TLS") && msg.contains("certificate"), "{msg}");
            assert!(msg.contains(why), "{msg}");
            assert!(msg.contains("TlsConfig::trusting_pem"), "{msg}");
        }
        let err = HttpConn::connect_tls(server.addr, &client_tls(&other))
            .await
            .unwrap_err();
        assert!(
            err.is_tls() && err.to_string().contains("certificate"),
            "{err}"
        );
    }
    assert!(server.log.requests().is_empty());

    // The right CA but a name the certificate was not issued for.
    let tls = client_tls(&cert).server_name("example.com");
    let err = HttpConn::connect_tls(server.addr, &tls).await.unwrap_err();
    println!("wrong name: {err}");
    assert!(
        err.is_tls() && err.to_string().contains("certificate"),
        "{err}"
    );
    assert!(err.to_string().contains("example.com"), "{err}");

    // TLS to a plain HTTP server.
    let plain = start(None, Expect::Nothing).await;
    let err = HttpConn::connect_tls(plain.addr, &client_tls(&cert))
        .await
        .unwrap_err();
    println!("plain server: {err}");
    assert!(err.is_tls(), "{err:?}");
    assert!(err.to_string().contains("TLS"), "{err}");

    // Bad CA input is refused up front.
    let err = TlsConfig::trusting_pem(b"not a pem").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("CERTIFICATE"), "{err}");
    let err = HttpConn::connect_tls(server.addr, &client_tls(&cert).server_name("not a name!"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[tokio::test]
async fn preamble_proxy_v1_first_on_every_connection() {
    let server = start(None, Expect::Proxy).await;
    for (transport, polling_conn) in [
        (Transport::WebSocket, PollingConn::KeepAlive),
        (Transport::Polling, PollingConn::Fresh),
        (Transport::PollingThenUpgrade, PollingConn::KeepAlive),
    ] {
        let cfg = ClientConfig::new(server.addr, transport)
            .polling_conn(polling_conn)
            .preamble(PROXY_V1);
        round_trip(cfg).await.disconnect().await.unwrap();
    }
    let conns = server.log.conns();
    // 1 websocket, >= 3 fresh polling connections, >= 3 for polling then upgrade.
    assert!(conns.len() >= 7, "{conns:?}");
    assert!(conns.iter().all(|c| c.preamble == PROXY_V1), "{conns:?}");
    assert_eq!(server.log.refused.load(Ordering::SeqCst), 0);

    // Raw connections send it too.
    let mut conn = HttpConn::connect_with(server.addr, ConnectOptions::new().preamble(PROXY_V1))
        .await
        .unwrap();
    let res = conn.get(&raw::handshake_url("/socket.io/")).await.unwrap();
    assert_eq!(res.status, 200);
    let reply = raw::send_bytes_with(
        server.addr,
        ConnectOptions {
            tls: None,
            preamble: Some(PROXY_V1.into()),
        },
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");

    // Without the preamble the server refuses the connection: the check is real.
    let err = Client::connect(ClientConfig::new(server.addr, Transport::Polling))
        .await
        .unwrap_err();
    println!("no preamble: {err}");
    assert!(server.log.refused.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn preamble_proxy_v2_before_tls() {
    let cert = self_signed();
    let server = start(Some(server_tls(&cert)), Expect::Proxy).await;
    let v2 = proxy_v2();
    for (transport, polling_conn) in [
        (Transport::WebSocket, PollingConn::KeepAlive),
        (Transport::Polling, PollingConn::Fresh),
        (Transport::PollingThenUpgrade, PollingConn::KeepAlive),
    ] {
        let cfg = ClientConfig::new(server.addr, transport)
            .polling_conn(polling_conn)
            .tls(client_tls(&cert))
            .preamble(v2.clone());
        let c = round_trip(cfg).await;
        assert_eq!(c.peer_certificate_der(), Some(cert.der.clone()));
        c.disconnect().await.unwrap();
    }
    let opts = ConnectOptions::new()
        .tls(client_tls(&cert))
        .preamble(v2.clone());
    let mut conn = HttpConn::connect_with(server.addr, opts).await.unwrap();
    assert_eq!(conn.peer_certificate_der(), Some(cert.der.clone()));
    for _ in 0..2 {
        let res = conn.get(&raw::handshake_url("/socket.io/")).await.unwrap();
        assert_eq!(res.status, 200);
    }
    let conns = server.log.conns();
    assert!(conns.len() >= 8, "{conns:?}");
    assert!(
        conns
            .iter()
            .all(|c| c.preamble == v2 && c.sni.as_deref() == Some("localhost")),
        "{conns:?}"
    );
    assert!(server.log.requests().iter().all(|r| r.tls));
    assert_eq!(server.log.refused.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn headers_on_every_request_of_every_transport() {
    let server = start(None, Expect::Nothing).await;
    for (transport, polling_conn) in [
        (Transport::WebSocket, PollingConn::KeepAlive),
        (Transport::Polling, PollingConn::Fresh),
        (Transport::Polling, PollingConn::KeepAlive),
        (Transport::PollingThenUpgrade, PollingConn::KeepAlive),
    ] {
        let cfg = ClientConfig::new(server.addr, transport)
            .polling_conn(polling_conn)
            .header("X-Forwarded-For", "203.0.113.7")
            .header("Cookie", "session=abc")
            .header("Cookie", "theme=dark");
        let mut c = Client::connect(cfg).await.unwrap();
        let welcome = c.next_event_named("welcome", T).await.unwrap();
        assert_eq!(
            welcome.args[0]["xff"],
            json!("203.0.113.7"),
            "{transport:?}"
        );
        // Enough traffic for several GETs and POSTs.
        for i in 0..3 {
            let ack = c
                .emit_with_ack("/", "echo", vec![json!(i)], T)
                .await
                .unwrap();
            assert_eq!(ack, vec![json!(i)]);
        }
        c.disconnect().await.unwrap();
    }
    let requests = server.log.requests();
    for r in &requests {
        assert_eq!(r.xff, vec!["203.0.113.7"], "{r:?}");
        assert_eq!(r.cookie, vec!["session=abc", "theme=dark"], "{r:?}");
        assert_eq!(r.host, vec![server.addr.to_string()], "{r:?}");
    }
    let count = |f: &dyn Fn(&ReqSeen) -> bool| requests.iter().filter(|r| f(r)).count();
    assert_eq!(count(&|r| r.transport == "websocket" && !r.has_sid), 1);
    assert_eq!(count(&|r| r.transport == "websocket" && r.has_sid), 1);
    assert!(count(&|r| r.transport == "polling" && !r.has_sid) >= 3);
    assert!(count(&|r| r.transport == "polling" && r.method == "GET" && r.has_sid) >= 3);
    assert!(count(&|r| r.transport == "polling" && r.method == "POST") >= 6);

    // A Host header replaces the default one instead of being added to it.
    let before = server.log.requests().len();
    for transport in [Transport::WebSocket, Transport::Polling] {
        let cfg = ClientConfig::new(server.addr, transport).header("Host", "example.test");
        Client::connect(cfg)
            .await
            .unwrap()
            .disconnect()
            .await
            .unwrap();
    }
    let later = &server.log.requests()[before..];
    assert!(!later.is_empty());
    for r in later {
        assert_eq!(r.host, vec!["example.test"], "{r:?}");
    }
}
