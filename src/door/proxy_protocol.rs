//! The PROXY protocol header (HAProxy spec, v1 text and v2 binary) that a load balancer sends
//! at the very start of a connection to say who the real client is.
//!
//! The primary peeks (`MSG_PEEK`) a fresh connection's first bytes and calls [`parse`] on them
//! before it looks for the HTTP request head. [`parse`] never consumes or copies anything: it
//! says how many bytes the header takes ([`ProxyHeader::len`], exact, so whatever follows is
//! left for the request head) and what addresses it carries, or that more bytes are needed
//! ([`ProxyParse::Partial`]), or why these bytes can never become a header ([`ProxyError`]).
//!
//! Bounds: a v1 line is at most [`MAX_V1`] (107) bytes, CRLF included, as the spec says; a v2
//! header is at most [`MAX_HEADER`] bytes (16-byte fixed part and up to [`MAX_V2_PAYLOAD`]
//! bytes of addresses and TLVs). The spec allows v2 payloads up to 65535 bytes, but what the
//! addresses need is at most 216 bytes (AF_UNIX) and real TLVs (ALPN, authority, SSL, AWS/Azure
//! ids) fit well below 1 KiB, so a bigger header is refused with [`ProxyError::TooLarge`] rather
//! than making every connection peek 64 KiB.
//!
//! Strictness: v1 fields are separated by exactly one space, addresses are parsed by
//! [`Ipv4Addr`]/[`Ipv6Addr`] (no leading zeros, no zone ids) and must match the announced
//! family (`TCP4`/`TCP6`), ports are decimal `0..=65535` without a sign or leading zero. `UNKNOWN`
//! ignores the rest of its line, as the spec requires. v2 `LOCAL` (a health check from the
//! proxy itself) and the `UNSPEC`/`AF_UNIX` families carry no usable client address: the header
//! is still consumed and [`ProxyHeader::source`] is `None`. TLVs are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest v1 header line, `\r\n` included (spec, section 2.1).
pub const MAX_V1: usize = 107;

/// Largest v2 payload (address block and TLVs, after the 16-byte fixed part) accepted.
pub const MAX_V2_PAYLOAD: usize = 1024;

/// Largest header [`parse`] can accept (a v2 header with [`MAX_V2_PAYLOAD`] bytes of payload),
/// so peeking this many bytes (plus the request head limit) is always enough.
pub const MAX_HEADER: usize = V2_FIXED + MAX_V2_PAYLOAD;

/// The v1 signature, with the space that follows it.
const V1_SIG: &[u8] = b"PROXY ";

/// The 12-byte v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Length of the v2 fixed part: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;

/// Address block sizes of the v2 families (spec, section 2.2).
const V2_INET_LEN: usize = 12;
/// See [`V2_INET_LEN`].
const V2_INET6_LEN: usize = 36;
/// See [`V2_INET_LEN`].
const V2_UNIX_LEN: usize = 216;

/// A complete PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes the header takes at the start of the stream: consume exactly these.
    pub len: usize,
    /// The real client, when the header carries a TCP address (`None` for v1 `UNKNOWN`, v2
    /// `LOCAL`, `UNSPEC` and `AF_UNIX`).
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the proxy, under the same conditions.
    pub destination: Option<SocketAddr>,
}

/// Outcome of parsing the bytes peeked so far.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyParse {
    /// A whole header.
    Complete(ProxyHeader),
    /// What is there is a valid start of a header; more bytes are needed.
    Partial,
}

/// Why the bytes can never become a valid PROXY header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes do not start with either signature (the client did not send a PROXY header).
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// A header was started but is invalid; the text says which part.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// The header is longer than the limit given (bytes): [`MAX_V1`] for v1, [`MAX_HEADER`]
    /// for v2.
    #[error("PROXY protocol header longer than {0} bytes")]
    TooLarge(usize),
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`; bytes after it are not looked at.
///
/// An empty `buf`, or one that is a strict prefix of a valid header, is
/// [`Partial`](ProxyParse::Partial); bytes that cannot start a header are
/// [`Missing`](ProxyError::Missing).
pub fn parse(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    if is_prefix_of_either(buf, V1_SIG) {
        if buf.len() < V1_SIG.len() {
            return Ok(ProxyParse::Partial);
        }
        parse_v1(buf)
    } else if is_prefix_of_either(buf, V2_SIG) {
        if buf.len() < V2_SIG.len() {
            return Ok(ProxyParse::Partial);
        }
        parse_v2(buf)
    } else {
        Err(ProxyError::Missing)
    }
}

/// Whether `buf` starts with `sig`, or is itself a (possibly empty) prefix of it.
fn is_prefix_of_either(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

/// Parses a v1 header; `buf` starts with `"PROXY "`.
fn parse_v1(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1 {
            Err(ProxyError::TooLarge(MAX_V1))
        } else {
            Ok(ProxyParse::Partial)
        };
    };
    let len = end + 2;
    let line = &buf[V1_SIG.len()..end];
    // UNKNOWN: "the receiver must ignore anything presented before the CRLF".
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(ProxyParse::Complete(ProxyHeader {
            len,
            source: None,
            destination: None,
        }));
    }
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("non-ASCII v1 line"))?;
    let mut fields = line.split(' ');
    let mut field = |what: &'static str| fields.next().ok_or(ProxyError::Malformed(what));
    let proto = field("missing protocol")?;
    let (src, dst) = (
        field("missing source address")?,
        field("missing destination address")?,
    );
    let (sport, dport) = (
        field("missing source port")?,
        field("missing destination port")?,
    );
    if fields.next().is_some() {
        return Err(ProxyError::Malformed("extra fields in v1 line"));
    }
    let (src, dst) = match proto {
        "TCP4" => (IpAddr::V4(v4(src)?), IpAddr::V4(v4(dst)?)),
        "TCP6" => (IpAddr::V6(v6(src)?), IpAddr::V6(v6(dst)?)),
        _ => return Err(ProxyError::Malformed("unknown v1 protocol")),
    };
    Ok(ProxyParse::Complete(ProxyHeader {
        len,
        source: Some(SocketAddr::new(src, port(sport)?)),
        destination: Some(SocketAddr::new(dst, port(dport)?)),
    }))
}

/// A v1 `TCP4` address.
fn v4(s: &str) -> Result<Ipv4Addr, ProxyError> {
    s.parse().map_err(|_| {
        if s.parse::<Ipv6Addr>().is_ok() {
            ProxyError::Malformed("IPv6 address in a TCP4 line")
        } else {
            ProxyError::Malformed("bad IPv4 address")
        }
    })
}

/// A v1 `TCP6` address.
fn v6(s: &str) -> Result<Ipv6Addr, ProxyError> {
    s.parse().map_err(|_| {
        if s.parse::<Ipv4Addr>().is_ok() {
            ProxyError::Malformed("IPv4 address in a TCP6 line")
        } else {
            ProxyError::Malformed("bad IPv6 address")
        }
    })
}

/// A v1 port: decimal digits only, no leading zero, at most 65535.
fn port(s: &str) -> Result<u16, ProxyError> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyError::Malformed("bad port"));
    }
    s.parse()
        .map_err(|_| ProxyError::Malformed("port out of range"))
}

/// Parses a v2 header; `buf` starts with the 12-byte signature. Each fixed byte is checked as
/// soon as it has arrived, so a bad header is refused without waiting for the rest.
fn parse_v2(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(ProxyParse::Partial);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("unsupported v2 version"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Malformed("unknown v2 command")),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(ProxyParse::Partial);
    };
    let (family, proto) = (fam >> 4, fam & 0x0f);
    // LOCAL: "the receiver must ... discard the protocol block including the family".
    if !local && (family > 3 || proto > 2) {
        return Err(ProxyError::Malformed(
            "unknown v2 address family or protocol",
        ));
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(ProxyParse::Partial);
    };
    let payload = usize::from(u16::from_be_bytes([hi, lo]));
    if payload > MAX_V2_PAYLOAD {
        return Err(ProxyError::TooLarge(MAX_HEADER));
    }
    let need = match (local, family) {
        (true, _) | (false, 0) => 0,
        (false, 1) => V2_INET_LEN,
        (false, 2) => V2_INET6_LEN,
        _ => V2_UNIX_LEN,
    };
    if payload < need {
        return Err(ProxyError::Malformed(
            "v2 address block shorter than its family needs",
        ));
    }
    let len = V2_FIXED + payload;
    let Some(block) = buf.get(V2_FIXED..len) else {
        return Ok(ProxyParse::Partial);
    };
    let none = ProxyHeader {
        len,
        source: None,
        destination: None,
    };
    if local || family == 0 || family == 3 || proto == 0 {
        // No TCP client address: LOCAL, UNSPEC, AF_UNIX, or an unspecified protocol.
        return Ok(ProxyParse::Complete(none));
    }
    if proto != 1 {
        return Err(ProxyError::Malformed(
            "v2 datagram addresses on a stream connection",
        ));
    }
    let (src, dst, ports) = if family == 1 {
        let ip = |i: usize| {
            IpAddr::V4(Ipv4Addr::new(
                block[i],
                block[i + 1],
                block[i + 2],
                block[i + 3],
            ))
        };
        (ip(0), ip(4), &block[8..12])
    } else {
        let ip = |i: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&block[i..i + 16]);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        (ip(0), ip(16), &block[32..36])
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    Ok(ProxyParse::Complete(ProxyHeader {
        len,
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that every strict prefix of `header` (a complete header) is `Partial`.
    fn all_prefixes_partial(header: &[u8]) {
        for n in 0..header.len() {
            assert_eq!(
                parse(&header[..n]),
                Ok(ProxyParse::Partial),
                "prefix of {n} bytes of {header:?}"
            );
        }
    }

    /// Parses a header that must be complete.
    fn complete(buf: &[u8]) -> ProxyHeader {
        match parse(buf) {
            Ok(ProxyParse::Complete(h)) => h,
            other => panic!("{buf:?}: {other:?}"),
        }
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    /// A v2 header: version 2, `cmd`, `fam`, `payload` (length taken from it).
    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn inet_block() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 7];
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    fn inet6_block() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&1234u16.to_be_bytes());
        b.extend_from_slice(&80u16.to_be_bytes());
        b
    }

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
        assert_eq!(
            complete(h),
            ProxyHeader {
                len: h.len(),
                source: sa("192.0.2.1:56324"),
                destination: sa("198.51.100.7:443"),
            }
        );
        all_prefixes_partial(h);
    }

    #[test]
    fn v1_tcp6() {
        let h = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n";
        assert_eq!(
            complete(h),
            ProxyHeader {
                len: h.len(),
                source: sa("[2001:db8::1]:0"),
                destination: sa("[::ffff:10.0.0.1]:65535"),
            }
        );
        all_prefixes_partial(h);
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_its_line() {
        for h in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
            b"PROXY UNKNOWN \xff anything\r\n",
        ] {
            assert_eq!(
                complete(h),
                ProxyHeader {
                    len: h.len(),
                    source: None,
                    destination: None,
                }
            );
            all_prefixes_partial(h);
        }
    }

    #[test]
    fn v1_longest_line_is_accepted_and_one_more_byte_is_not() {
        // "PROXY UNKNOWN " + filler + "\r\n" = exactly 107 bytes.
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(MAX_V1 - 2, b'x');
        h.extend_from_slice(b"\r\n");
        assert_eq!(complete(&h).len, MAX_V1);
        all_prefixes_partial(&h);
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_V1 - 1, b'x');
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Err(ProxyError::TooLarge(MAX_V1)));
        assert_eq!(parse(&long[..MAX_V1]), Err(ProxyError::TooLarge(MAX_V1)));
        assert_eq!(parse(&long[..MAX_V1 - 1]), Ok(ProxyParse::Partial));
    }

    #[test]
    fn bytes_after_the_header_are_not_consumed() {
        let head = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(complete(&buf).len, head.len());
        let h2 = v2(1, 0x11, &inet_block());
        let mut buf = h2.clone();
        buf.extend_from_slice(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET /");
        let got = complete(&buf);
        assert_eq!(got.len, h2.len());
        assert_eq!(got.source, sa("192.0.2.1:56324"));
    }

    #[test]
    fn not_a_proxy_header_is_missing() {
        for buf in [
            &b"GET "[..],
            b"G",
            b"PROXYX",
            b"proxy TCP4",
            b"\r\n\r\n\0\r\nQUIT!",
            b"\r\nGET",
            b"\x16\x03\x01",
        ] {
            assert_eq!(parse(buf), Err(ProxyError::Missing), "{buf:?}");
        }
        assert_eq!(parse(b""), Ok(ProxyParse::Partial));
        assert_eq!(parse(b"PRO"), Ok(ProxyParse::Partial));
        assert_eq!(parse(b"\r\n\r"), Ok(ProxyParse::Partial));
    }

    #[test]
    fn v1_malformed_lines() {
        for line in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP6 [::1] ::1 1 2\r\n",
            b"PROXY TCP6 ::g ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWNX\r\n",
        ] {
            assert!(
                matches!(parse(line), Err(ProxyError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(line),
                parse(line)
            );
        }
    }

    #[test]
    fn v1_family_must_match_the_protocol() {
        assert_eq!(
            parse(b"PROXY TCP4 ::1 ::1 1 2\r\n"),
            Err(ProxyError::Malformed("IPv6 address in a TCP4 line"))
        );
        assert_eq!(
            parse(b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(ProxyError::Malformed("IPv4 address in a TCP6 line"))
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n"),
            Err(ProxyError::Malformed("IPv6 address in a TCP4 line"))
        );
    }

    #[test]
    fn v2_inet() {
        let h = v2(1, 0x11, &inet_block());
        assert_eq!(
            complete(&h),
            ProxyHeader {
                len: 28,
                source: sa("192.0.2.1:56324"),
                destination: sa("198.51.100.7:443"),
            }
        );
        all_prefixes_partial(&h);
    }

    #[test]
    fn v2_inet6() {
        let h = v2(1, 0x21, &inet6_block());
        assert_eq!(
            complete(&h),
            ProxyHeader {
                len: 52,
                source: sa("[2001:db8::1]:1234"),
                destination: sa("[2001:db8::2]:80"),
            }
        );
        all_prefixes_partial(&h);
    }

    #[test]
    fn v2_local_is_consumed_without_an_address() {
        for h in [
            v2(0, 0x00, b""),
            v2(0, 0x11, &inet_block()),
            v2(0, 0xff, b"xyz"),
        ] {
            assert_eq!(
                complete(&h),
                ProxyHeader {
                    len: h.len(),
                    source: None,
                    destination: None,
                }
            );
            all_prefixes_partial(&h);
        }
    }

    #[test]
    fn v2_unix_and_unspec_have_no_address() {
        for h in [
            v2(1, 0x31, &[0u8; V2_UNIX_LEN]),
            v2(1, 0x32, &[7u8; V2_UNIX_LEN + 3]),
            v2(1, 0x00, b""),
            v2(1, 0x01, b"junk"),
            v2(1, 0x10, &inet_block()),
        ] {
            let got = complete(&h);
            assert_eq!(
                (got.len, got.source, got.destination),
                (h.len(), None, None)
            );
            all_prefixes_partial(&h);
        }
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut payload = inet_block();
        // PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY "example.com", PP2_TYPE_NOOP.
        payload.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        payload.extend_from_slice(&[0x02, 0x00, 0x0b]);
        payload.extend_from_slice(b"example.com");
        payload.extend_from_slice(&[0x04, 0x00, 0x00]);
        let h = v2(1, 0x11, &payload);
        let mut buf = h.clone();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let got = complete(&buf);
        assert_eq!(got.len, h.len());
        assert_eq!(got.source, sa("192.0.2.1:56324"));
        all_prefixes_partial(&h);
    }

    #[test]
    fn v2_bad_fixed_part() {
        let good = v2(1, 0x11, &inet_block());
        let with = |i: usize, b: u8| {
            let mut h = good.clone();
            h[i] = b;
            h
        };
        // Refused as soon as the bad byte arrives, not after the whole header.
        assert_eq!(
            parse(&with(12, 0x11)[..13]),
            Err(ProxyError::Malformed("unsupported v2 version"))
        );
        assert_eq!(
            parse(&with(12, 0x31)),
            Err(ProxyError::Malformed("unsupported v2 version"))
        );
        assert_eq!(
            parse(&with(12, 0x22)[..13]),
            Err(ProxyError::Malformed("unknown v2 command"))
        );
        for fam in [0x41, 0x13, 0xf1] {
            assert_eq!(
                parse(&with(13, fam)[..14]),
                Err(ProxyError::Malformed(
                    "unknown v2 address family or protocol"
                )),
                "{fam:#x}"
            );
        }
        assert_eq!(
            parse(&with(13, 0x12)),
            Err(ProxyError::Malformed(
                "v2 datagram addresses on a stream connection"
            ))
        );
    }

    #[test]
    fn v2_address_block_shorter_than_the_family() {
        for (fam, need) in [
            (0x11, V2_INET_LEN),
            (0x21, V2_INET6_LEN),
            (0x31, V2_UNIX_LEN),
        ] {
            let h = v2(1, fam, &vec![0u8; need - 1]);
            // Known from the length field alone, before the block arrives.
            assert_eq!(
                parse(&h[..16]),
                Err(ProxyError::Malformed(
                    "v2 address block shorter than its family needs"
                ))
            );
        }
        // An IPv6 family with an IPv4-sized block.
        assert!(matches!(
            parse(&v2(1, 0x21, &inet_block())),
            Err(ProxyError::Malformed(_))
        ));
    }

    #[test]
    fn v2_oversize_is_refused_from_the_length_field() {
        let h = v2(1, 0x11, &vec![0u8; MAX_V2_PAYLOAD]);
        assert_eq!(complete(&h).len, MAX_HEADER);
        let mut big = v2(1, 0x11, &inet_block());
        big[14..16].copy_from_slice(&((MAX_V2_PAYLOAD + 1) as u16).to_be_bytes());
        assert_eq!(parse(&big[..16]), Err(ProxyError::TooLarge(MAX_HEADER)));
        big[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&big), Err(ProxyError::TooLarge(MAX_HEADER)));
    }

    #[test]
    fn v2_truncated_is_partial_until_the_length_is_reached() {
        let h = v2(1, 0x21, &inet6_block());
        assert_eq!(parse(&h[..h.len() - 1]), Ok(ProxyParse::Partial));
        assert_eq!(parse(&h[..16]), Ok(ProxyParse::Partial));
        assert_eq!(complete(&h).len, h.len());
    }
}
