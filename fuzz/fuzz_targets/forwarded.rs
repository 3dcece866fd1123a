//! Fuzzes `--trusted-proxies` parsing and the `X-Forwarded-For` client address: never panic,
//! `Display` parses back to the same set, and an untrusted peer always keeps its own address.
//!
//! Input: `<trusted-proxies text>\0<4 or 16 peer address bytes><header lines separated by \n>`.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sio_cluster::fuzz_api::TrustedProxies;

fuzz_target!(|data: &[u8]| {
    let (spec, rest) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(spec) = std::str::from_utf8(spec) else {
        return;
    };
    let trusted: TrustedProxies = match spec.parse() {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            // Fall back to a set that trusts something, to exercise the walk.
            "10.0.0.0/8,::1,::ffff:192.168.0.0/112".parse().expect("fixed set")
        }
    };
    assert_eq!(trusted.to_string().parse::<TrustedProxies>().as_ref(), Ok(&trusted));

    let (peer, lines): (IpAddr, &[u8]) = match rest.first() {
        Some(b) if b & 1 == 1 && rest.len() >= 17 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&rest[1..17]);
            (IpAddr::from(o), &rest[17..])
        }
        _ if rest.len() >= 5 => (IpAddr::from([rest[1], rest[2], rest[3], rest[4]]), &rest[5..]),
        _ => (IpAddr::from([10, 0, 0, 1]), rest),
    };
    let client = trusted.client_ip(peer, lines.split(|b| *b == b'\n'));
    if !trusted.contains(peer) {
        assert_eq!(client, peer, "an untrusted peer's header is ignored");
    }
    // The walk never returns an address from before a trusted hop it could not skip.
    let again = trusted.client_ip(peer, lines.split(|b| *b == b'\n'));
    assert_eq!(client, again);
});
