//! The versioned hello: the first message of every worker, so a primary never talks to a worker
//! of an incompatible build.
//!
//! Workers re-execute the binary on disk. After a deploy (a new binary, then `SIGHUP`), the
//! running primary — the old build — starts workers of the new build. They work together only
//! if both speak the same **wire protocol**: the control [`message`](super::message)s, the
//! [`bus`](super::bus) frames, the worker's environment
//! ([`WorkerEnv`](crate::worker::WorkerEnv)) and the adapter's messages over the bus.
//! [`WIRE_VERSION`] numbers that protocol; a build that changes any of it bumps the number (the
//! unit test `wire_layout_is_pinned` fails until it does).
//!
//! The worker sends [`Hello`] as its first message on the control channel, before it reads any
//! other. The primary checks it before it reads anything else from that worker: a worker that
//! sends no hello or another version is refused — one log line, the worker is killed — and the
//! slot keeps its current worker, exactly as for a new build that fails to start.
//!
//! What never changes, in any build, so that two builds can always tell each other apart: the
//! control channel's framing (`[fd count: u8][postcard]`), [`Hello`] being variant 0 of
//! [`ToPrimary`](super::message::ToPrimary) with the fields it has here, and the `wire` and
//! `ctl` keys of the worker's environment.

use serde::{Deserialize, Serialize};

/// The wire protocol this build speaks: the messages between the primary and its workers. A
/// reload can deploy a build only if its `WIRE_VERSION` is the running primary's (CHANGELOG.md
/// says each release's); otherwise restart the service.
///
/// ```
/// println!("this build speaks wire protocol {}", sio_cluster::WIRE_VERSION);
/// ```
///
/// Builds for the two-build upgrade test set `SIO_CLUSTER_TEST_WIRE_VERSION` at compile time
/// to make a build that is otherwise this one but speaks another version.
pub const WIRE_VERSION: u32 = match option_env!("SIO_CLUSTER_TEST_WIRE_VERSION") {
    Some(v) => parse_u32(v),
    None => 1,
};

/// The first bytes of every hello: a worker that sends anything else is not of a build that
/// knows about hellos.
pub const MAGIC: [u8; 4] = *b"sioc";

/// What a worker says first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The worker's [`WIRE_VERSION`].
    pub wire: u32,
    /// The worker's crate version (`CARGO_PKG_VERSION`), for the log line.
    pub build: String,
}

impl Hello {
    /// This build's hello.
    pub fn ours() -> Self {
        Hello {
            magic: MAGIC,
            wire: WIRE_VERSION,
            build: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Whether a primary of this build can work with the worker that sent `self`.
    pub fn check(&self) -> Result<(), Mismatch> {
        if self.magic != MAGIC {
            return Err(Mismatch::NoHello);
        }
        if self.wire != WIRE_VERSION {
            return Err(Mismatch::Wire {
                theirs: self.wire,
                build: self.build.clone(),
            });
        }
        Ok(())
    }
}

/// Why a worker is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// Its first message is not a hello: a build from before hellos, or not a worker at all.
    #[error(
        "refused a worker that did not say hello (a build older than this one's protocol, or \
         not a sio-cluster worker); the slot keeps its current worker. To run another build, \
         restart the service (e.g. systemctl restart): a reload cannot change the wire protocol"
    )]
    NoHello,
    /// It speaks another wire protocol.
    #[error(
        "refused a worker of an incompatible build: it speaks wire protocol {theirs} \
         (sio-cluster {build}), this primary speaks {ours} (sio-cluster {ours_build}); the slot \
         keeps its current worker. To run the new build, restart the service (e.g. systemctl \
         restart): a reload cannot change the wire protocol",
        ours = WIRE_VERSION,
        ours_build = env!("CARGO_PKG_VERSION")
    )]
    Wire {
        /// The worker's version.
        theirs: u32,
        /// The worker's crate version.
        build: String,
    },
}

/// `str::parse::<u32>` for a constant (a bad value fails the build).
const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    assert!(!b.is_empty(), "SIO_CLUSTER_TEST_WIRE_VERSION is empty");
    let mut n: u32 = 0;
    let mut i = 0;
    while i < b.len() {
        assert!(
            b[i].is_ascii_digit(),
            "SIO_CLUSTER_TEST_WIRE_VERSION is not a number"
        );
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::ipc::bus::{BusDown, BusUp, Member, RequestMeta};
    use crate::ipc::message::{
        ConnManifest, ConnOrigin, FirstRequest, MemberId, NamespaceReport, Refusal, ToPrimary,
        ToWorker, WorkerReport,
    };
    use crate::sid::SessionId;
    use crate::worker::WorkerEnv;

    /// The fingerprint of [`samples`] for [`WIRE_VERSION`] 1.
    const WIRE_FINGERPRINT: u64 = 0x178e_b4f6_7f8d_df1f;

    /// One value of every variant of every message of the wire protocol. The matches are
    /// exhaustive, so a new variant does not compile until it has a sample here.
    fn samples() -> Vec<Vec<u8>> {
        let sid = SessionId::parse("AAAAAAAAAAAAAAAA").unwrap();
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let manifest = ConnManifest {
            id: 7,
            peer: Some(SocketAddr::new(ip, 4242)),
            origin: ConnOrigin::Forwarded { from: MemberId(3) },
            first: FirstRequest::Blind {
                refuse: Some(Refusal::IpFull),
            },
            counted_ip: Some(ip),
        };
        let to_worker = [
            ToWorker::Conn(manifest),
            ToWorker::Conns(vec![
                manifest,
                ConnManifest {
                    origin: ConnOrigin::Accepted,
                    first: FirstRequest::Routed,
                    ..manifest
                },
            ]),
            ToWorker::SidRegistered { req: 1 },
            ToWorker::SidLocation {
                req: 2,
                owner: Some(MemberId(4)),
            },
            ToWorker::Picked {
                req: 3,
                outcome: Err(Refusal::WorkerFull),
            },
            ToWorker::Health {
                req: 4,
                status: 503,
                body: "{}".into(),
            },
            ToWorker::Drain {
                timeout_ms: 5,
                handover: true,
            },
        ];
        for m in &to_worker {
            match m {
                ToWorker::Conn(_)
                | ToWorker::Conns(_)
                | ToWorker::SidRegistered { .. }
                | ToWorker::SidLocation { .. }
                | ToWorker::Picked { .. }
                | ToWorker::Health { .. }
                | ToWorker::Drain { .. } => {}
            }
        }
        let to_primary = [
            ToPrimary::Hello(Hello::ours()),
            ToPrimary::Ready {
                server_uid: "uid".into(),
            },
            ToPrimary::Load {
                closed_total: 1,
                capacity: 2,
                closed_ips: vec![ip],
            },
            ToPrimary::Heartbeat {
                seq: 3,
                rss_bytes: 4,
            },
            ToPrimary::RegisterSid { req: 5, sid },
            ToPrimary::UnregisterSids { sids: vec![sid] },
            ToPrimary::LookupSid { req: 6, sid },
            ToPrimary::Forward {
                target: MemberId(7),
                peer: None,
            },
            ToPrimary::Pick {
                req: 8,
                client_ip: Some(ip),
            },
            ToPrimary::Report(WorkerReport {
                namespaces: vec![NamespaceReport {
                    path: "/".into(),
                    connected: 1,
                    connects: 2,
                    disconnects: 3,
                }],
                bytes_in: 4,
                bytes_out: 5,
                events_in: 6,
                events_out: 7,
                open_fds: 8,
                rss_bytes: 9,
                bus_up: true,
                adapter_timeouts: 10,
            }),
            ToPrimary::Health { req: 9 },
        ];
        for m in &to_primary {
            match m {
                ToPrimary::Hello(_)
                | ToPrimary::Ready { .. }
                | ToPrimary::Load { .. }
                | ToPrimary::Heartbeat { .. }
                | ToPrimary::RegisterSid { .. }
                | ToPrimary::UnregisterSids { .. }
                | ToPrimary::LookupSid { .. }
                | ToPrimary::Forward { .. }
                | ToPrimary::Pick { .. }
                | ToPrimary::Report(_)
                | ToPrimary::Health { .. } => {}
            }
        }
        let targets = [MemberId(1)];
        let bus_up = [
            BusUp::Subscribe { chan: "c".into() },
            BusUp::Unsubscribe { chan: "c".into() },
            BusUp::Publish {
                chan: "c".into(),
                payload: b"p",
                request: Some(RequestMeta {
                    req_id: "r".into(),
                    targets: Cow::Borrowed(&targets),
                }),
            },
            BusUp::NumServ {
                id: 1,
                chan: "c".into(),
            },
        ];
        for m in &bus_up {
            match m {
                BusUp::Subscribe { .. }
                | BusUp::Unsubscribe { .. }
                | BusUp::Publish { .. }
                | BusUp::NumServ { .. } => {}
            }
        }
        let bus_down = [
            BusDown::Deliver {
                chan: "c".into(),
                payload: b"p",
            },
            BusDown::NumServReply {
                id: 1,
                members: vec![Member {
                    id: MemberId(2),
                    uid: "u".into(),
                }],
            },
            BusDown::MemberDown {
                member: MemberId(3),
            },
            BusDown::Undeliverable {
                req_id: "r".into(),
                member: MemberId(4),
            },
        ];
        for m in &bus_down {
            match m {
                BusDown::Deliver { .. }
                | BusDown::NumServReply { .. }
                | BusDown::MemberDown { .. }
                | BusDown::Undeliverable { .. } => {}
            }
        }
        let env = WorkerEnv {
            slot: 1,
            member: MemberId(2),
            ctl_fd: 3,
            bus_fd: 4,
            primary_pid: 5,
        };
        let mut out: Vec<Vec<u8>> = Vec::new();
        out.extend(to_worker.iter().map(|m| postcard::to_allocvec(m).unwrap()));
        out.extend(to_primary.iter().map(|m| postcard::to_allocvec(m).unwrap()));
        out.extend(
            bus_up
                .iter()
                .map(|m| crate::ipc::frame::encode(m).unwrap().to_vec()),
        );
        out.extend(
            bus_down
                .iter()
                .map(|m| crate::ipc::frame::encode(m).unwrap().to_vec()),
        );
        out.push(
            env.encode()
                .replace(&format!("wire={WIRE_VERSION}"), "wire=")
                .into_bytes(),
        );
        out
    }

    /// FNV-1a, 64 bits: stable across Rust releases (unlike `DefaultHasher`).
    fn fnv1a(parts: &[Vec<u8>]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in parts {
            for &b in (part.len() as u32).to_le_bytes().iter().chain(part) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    #[test]
    fn wire_layout_is_pinned() {
        if option_env!("SIO_CLUSTER_TEST_WIRE_VERSION").is_some() {
            return; // the upgrade test's second build: another version, same layout
        }
        let got = fnv1a(&samples());
        assert_eq!(
            got, WIRE_FINGERPRINT,
            "the wire protocol changed (a control message, bus frame or the worker's \
             environment): bump WIRE_VERSION and set WIRE_FINGERPRINT to {got:#x}"
        );
    }

    #[test]
    fn hello_is_variant_zero_with_a_fixed_layout() {
        // The layout every build must keep: variant 0, magic, varint version, string.
        let bytes = postcard::to_allocvec(&ToPrimary::Hello(Hello {
            magic: MAGIC,
            wire: 300,
            build: "9.9.9".into(),
        }))
        .unwrap();
        assert_eq!(bytes, b"\x00sioc\xac\x02\x059.9.9");
    }

    #[test]
    fn another_version_or_no_hello_is_refused() {
        assert_eq!(Hello::ours().check(), Ok(()));
        let other = Hello {
            wire: WIRE_VERSION + 1,
            build: "0.0.0-next".into(),
            ..Hello::ours()
        };
        let err = other.check().unwrap_err();
        let line = err.to_string();
        assert!(
            line.contains(&format!("wire protocol {}", WIRE_VERSION + 1)),
            "{line}"
        );
        assert!(line.contains("sio-cluster 0.0.0-next"), "{line}");
        assert!(line.contains("restart the service"), "{line}");
        let garbage = Hello {
            magic: *b"xxxx",
            ..Hello::ours()
        };
        assert_eq!(garbage.check(), Err(Mismatch::NoHello));
        // A pre-hello worker's first message was `Ready { server_uid }` (variant 0 too).
        let old_ready = b"\x00\x10AAAAAAAAAAAAAAAA";
        match postcard::from_bytes::<ToPrimary>(old_ready) {
            Ok(ToPrimary::Hello(h)) => assert_eq!(h.check(), Err(Mismatch::NoHello)),
            Ok(other) => panic!("{other:?}"),
            Err(_) => {} // refused as undecodable
        }
    }

    #[test]
    fn the_version_override_parses() {
        assert_eq!(parse_u32("0"), 0);
        assert_eq!(parse_u32("4294967295"), u32::MAX);
    }
}
