//! Fuzzes the PROXY protocol (v1/v2) header parser: never panic, a complete header lies within
//! the input and the limits, parses the same from exactly its own bytes, and every strict prefix
//! of it is `Partial` (a peek that arrived in pieces is never refused).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sio_cluster::fuzz_api::{MAX_PROXY_HEADER, MAX_PROXY_V1, ProxyParse, parse_proxy_header};

fuzz_target!(|data: &[u8]| {
    let Ok(ProxyParse::Complete(header)) = parse_proxy_header(data) else {
        return;
    };
    assert!(header.len > 0 && header.len <= data.len(), "len {} of {}", header.len, data.len());
    assert!(header.len <= MAX_PROXY_HEADER);
    if data[0] == b'P' {
        assert!(header.len <= MAX_PROXY_V1);
    }
    assert_eq!(header.source.is_some(), header.destination.is_some());
    if let (Some(s), Some(d)) = (header.source, header.destination) {
        assert_eq!(s.is_ipv4(), d.is_ipv4(), "one family per header");
    }
    let own = &data[..header.len];
    assert_eq!(
        parse_proxy_header(own),
        Ok(ProxyParse::Complete(header.clone()))
    );
    for n in 0..header.len {
        assert_eq!(
            parse_proxy_header(&own[..n]),
            Ok(ProxyParse::Partial),
            "prefix of {n} bytes of a {}-byte header",
            header.len
        );
    }
});
