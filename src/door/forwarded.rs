//! `--trusted-proxies` and the client address of `X-Forwarded-For`.
//!
//! Behind a reverse proxy every connection comes from the proxy, and the real client is named
//! in `X-Forwarded-For`. That header is only as trustworthy as whoever wrote it, so it is read
//! only from a peer in [`TrustedProxies`], and only as far as the chain of trusted proxies goes:
//! [`TrustedProxies::client_ip`] walks the entries from the right (each proxy appends the
//! address it saw) and stops at the first one that is not a trusted proxy. Anything to its left
//! was written by that untrusted party and is ignored.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// The request header carrying the chain of client and proxy addresses (lowercase, as `http`
/// header names are).
pub const HEADER: &str = "x-forwarded-for";

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardedError {
    /// An entry of `--trusted-proxies` is neither an IP address nor a CIDR network; the text is
    /// the whole message, naming the entry.
    #[error("{0}")]
    BadCidr(String),
}

/// The networks whose connections may say who the client is (`--trusted-proxies`).
///
/// ```
/// let trusted: sio_cluster::TrustedProxies = "10.0.0.0/8,192.168.1.7".parse().unwrap();
/// assert!("not an address".parse::<sio_cluster::TrustedProxies>().is_err());
/// # let _ = trusted;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// The trusted networks, in the order given (host bits cleared).
    nets: Vec<IpNet>,
}

impl FromStr for TrustedProxies {
    type Err = ForwardedError;

    /// Parses `"10.0.0.0/8,127.0.0.1, ::1"`: comma-separated CIDR networks or bare addresses
    /// (a bare address is a `/32` or `/128`), spaces around entries trimmed, empty entries
    /// (an empty string, a trailing comma) ignored. Host bits of a network are cleared
    /// (`10.1.2.3/8` is `10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nets = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = if entry.contains('/') {
                entry.parse::<IpNet>().ok().map(|n| n.trunc())
            } else {
                entry.parse::<IpAddr>().ok().map(IpNet::from)
            };
            match net {
                Some(net) => nets.push(net),
                None => {
                    return Err(ForwardedError::BadCidr(format!(
                        "bad --trusted-proxies entry {entry:?}: expected an IP or CIDR such as \
                         10.0.0.0/8 or ::1"
                    )));
                }
            }
        }
        Ok(Self { nets })
    }
}

impl fmt::Display for TrustedProxies {
    /// Comma-joined, a single address without its `/32` or `/128`; parses back to the same set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if net.prefix_len() == net.max_prefix_len() {
                write!(f, "{}", net.addr())?;
            } else {
                write!(f, "{net}")?;
            }
        }
        Ok(())
    }
}

impl TrustedProxies {
    /// No proxy is trusted: `X-Forwarded-For` is never read.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in a trusted network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack socket reports for an IPv4 peer) matches the IPv4 networks, and an IPv4
    /// address matches networks written in the mapped form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let alt = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        };
        self.nets
            .iter()
            .any(|n| n.contains(&ip) || alt.is_some_and(|a| n.contains(&a)))
    }

    /// The client's address for a request from `peer` carrying the `X-Forwarded-For` header
    /// lines `values` (in the order received).
    ///
    /// - `peer` not trusted: `peer`; the header is ignored (anyone can send one).
    /// - Otherwise the lines are joined in order and their comma-separated entries walked from
    ///   the right, skipping trusted proxies; the first untrusted entry is the client.
    /// - Every entry trusted: the left-most one (a request from inside the trusted networks).
    ///   No entry at all: `peer`.
    /// - An entry that is not an address (garbage, `unknown`, an obfuscated id, not UTF-8)
    ///   met before an untrusted one: the walk stops there and the last trusted address walked
    ///   is returned (`peer` if it was the right-most entry), as nothing a party we cannot
    ///   identify wrote can be trusted.
    ///
    /// Entries are `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]` or `[::1]:80`; spaces around them
    /// are trimmed and empty entries skipped. Addresses are returned as written (an
    /// IPv4-mapped address stays IPv6).
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        self.walk(values).unwrap_or(peer)
    }

    /// The client named by `X-Forwarded-For` lines `values`, for a peer already known to be
    /// trusted; `None` when the header names nobody (absent, empty, or garbage right-most).
    ///
    /// Same walk as [`client_ip`](Self::client_ip), for a caller that parses the header before
    /// it knows the peer (the primary's peek, where the peer may come from a PROXY header).
    pub fn forwarded_client<'a>(
        &self,
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<IpAddr> {
        self.walk(values)
    }

    /// Walks the entries from the right, skipping trusted ones; returns the first untrusted
    /// one, or the last trusted one walked when every entry is trusted or garbage stops the
    /// walk, or `None` when not one entry was walked.
    fn walk<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) -> Option<IpAddr> {
        let lines: Vec<&[u8]> = values.into_iter().collect();
        let mut last = None;
        for entry in lines
            .iter()
            .rev()
            .flat_map(|line| line.rsplit(|b| *b == b','))
        {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                return last;
            };
            if !self.contains(ip) {
                return Some(ip);
            }
            last = Some(ip);
        }
        last
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port, IPv6 possibly bracketed.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(s: &str) -> TrustedProxies {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `client_ip` of `peer` with header lines `lines`.
    fn client(t: &TrustedProxies, peer: &str, lines: &[&str]) -> IpAddr {
        t.client_ip(ip(peer), lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        let t = tp("10.0.0.0/8,127.0.0.1, ::1 ,2001:db8::/32");
        assert!(!t.is_empty());
        assert!(t.contains(ip("10.255.0.1")));
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")), "a bare address is a /32");
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("::2")), "a bare address is a /128");
        assert!(t.contains(ip("2001:db8:ffff::9")));
        assert!(!t.contains(ip("11.0.0.1")));
    }

    #[test]
    fn empty_string_and_empty_entries() {
        assert!(tp("").is_empty());
        assert!(tp("  ").is_empty());
        assert_eq!(tp("10.0.0.0/8,"), tp(" , 10.0.0.0/8"));
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_named_with_the_expected_form() {
        let err = "10.0.0.0/8, 10.0.0/8"
            .parse::<TrustedProxies>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad --trusted-proxies entry \"10.0.0/8\": expected an IP or CIDR such as 10.0.0.0/8 \
             or ::1"
        );
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "localhost",
            "1.2.3.4:80",
            "10.0.0.0/",
            "/8",
            "1.2.3.4 5.6.7.8",
        ] {
            assert!(
                matches!(bad.parse::<TrustedProxies>(), Err(ForwardedError::BadCidr(m)) if m.contains(bad)),
                "{bad}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "",
            "10.0.0.0/8",
            "10.0.0.0/8,127.0.0.1,::1,2001:db8::/32",
            "0.0.0.0/0,::/0",
        ] {
            let t = tp(s);
            assert_eq!(t.to_string(), s);
            assert_eq!(tp(&t.to_string()), t);
        }
        // Host bits are cleared and /32 is shown bare; the result still parses back.
        let t = tp(" 10.1.2.3/8 , 127.0.0.1/32 ");
        assert_eq!(t.to_string(), "10.0.0.0/8,127.0.0.1");
        assert_eq!(tp(&t.to_string()), t);
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_nets() {
        let t = tp("10.0.0.0/8");
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(!t.contains(ip("::ffff:11.1.2.3")));
        assert!(
            !t.contains(ip("::10.1.2.3")),
            "IPv4-compatible is not mapped"
        );
        let t = tp("::ffff:10.0.0.0/104");
        assert!(t.contains(ip("10.1.2.3")));
    }

    #[test]
    fn header_from_an_untrusted_peer_is_ignored() {
        let t = tp("10.0.0.0/8");
        assert_eq!(client(&t, "203.0.113.9", &["1.1.1.1"]), ip("203.0.113.9"));
        assert_eq!(
            client(&TrustedProxies::default(), "10.0.0.1", &["1.1.1.1"]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn first_untrusted_from_the_right_is_the_client() {
        let t = tp("10.0.0.0/8");
        // The client forged "6.6.6.6"; 10.0.0.2 appended the client's real address.
        assert_eq!(
            client(&t, "10.0.0.1", &["6.6.6.6, 198.51.100.4, 10.0.0.2"]),
            ip("198.51.100.4")
        );
        assert_eq!(
            client(&t, "10.0.0.1", &["198.51.100.4"]),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn no_header_means_the_peer() {
        let t = tp("10.0.0.0/8");
        assert_eq!(client(&t, "10.0.0.1", &[]), ip("10.0.0.1"));
        assert_eq!(client(&t, "10.0.0.1", &["", " , ,"]), ip("10.0.0.1"));
    }

    #[test]
    fn multiple_header_lines_are_joined_in_order() {
        let t = tp("10.0.0.0/8");
        assert_eq!(
            client(&t, "10.0.0.1", &["198.51.100.4", "10.0.0.3, 10.0.0.2"]),
            ip("198.51.100.4")
        );
        assert_eq!(
            client(&t, "10.0.0.1", &["10.0.0.3", "198.51.100.4,10.0.0.2"]),
            ip("198.51.100.4")
        );
        assert_eq!(
            client(&t, "10.0.0.1", &["6.6.6.6", "198.51.100.4"]),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn all_trusted_gives_the_left_most() {
        let t = tp("10.0.0.0/8");
        assert_eq!(
            client(&t, "10.0.0.1", &["10.9.9.9, 10.0.0.3", "10.0.0.2"]),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn ipv6_and_ports() {
        let t = tp("10.0.0.0/8,fd00::/8");
        assert_eq!(client(&t, "fd00::1", &["2001:db8::7"]), ip("2001:db8::7"));
        assert_eq!(
            client(&t, "fd00::1", &["[2001:db8::7]:443"]),
            ip("2001:db8::7")
        );
        assert_eq!(client(&t, "fd00::1", &["[2001:db8::7]"]), ip("2001:db8::7"));
        assert_eq!(
            client(&t, "10.0.0.1", &["198.51.100.4:5678 , [fd00::9]:80"]),
            ip("198.51.100.4")
        );
        // A dual-stack listener reports an IPv4 proxy as mapped IPv6.
        assert_eq!(
            client(&t, "::ffff:10.0.0.1", &["198.51.100.4"]),
            ip("198.51.100.4")
        );
        assert_eq!(
            client(&t, "10.0.0.1", &["::ffff:198.51.100.4"]),
            ip("::ffff:198.51.100.4")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_address() {
        let t = tp("10.0.0.0/8");
        assert_eq!(
            client(&t, "10.0.0.1", &["198.51.100.4, garbage, 10.0.0.2"]),
            ip("10.0.0.2")
        );
        assert_eq!(
            client(&t, "10.0.0.1", &["198.51.100.4, unknown"]),
            ip("10.0.0.1")
        );
        assert_eq!(client(&t, "10.0.0.1", &["1.2.3.4:99999"]), ip("10.0.0.1"));
        assert_eq!(client(&t, "10.0.0.1", &["fe80::1%eth0"]), ip("10.0.0.1"));
        assert_eq!(client(&t, "10.0.0.1", &["[1.2.3.4]"]), ip("10.0.0.1"));
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), [&b"198.51.100.4, \xff\xfe, 10.0.0.2"[..]]),
            ip("10.0.0.2")
        );
        // Garbage left of the client does not matter.
        assert_eq!(
            client(&t, "10.0.0.1", &["garbage, 198.51.100.4"]),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn header_name_is_lowercase() {
        assert_eq!(HEADER, HEADER.to_ascii_lowercase());
        assert!(http::HeaderName::from_static(HEADER) == "X-Forwarded-For");
    }

    #[test]
    fn forwarded_client_is_the_walk_without_a_peer() {
        let t = tp("10.0.0.0/8");
        let h = |v: &'static str| vec![v.as_bytes()];
        assert_eq!(
            t.forwarded_client(h("1.2.3.4, 10.0.0.2")),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            t.forwarded_client(h("10.0.0.3, 10.0.0.2")),
            Some(ip("10.0.0.3"))
        );
        assert_eq!(t.forwarded_client(h("")), None);
        assert_eq!(t.forwarded_client(h("garbage")), None);
        assert_eq!(t.forwarded_client(Vec::<&[u8]>::new()), None);
    }
}
