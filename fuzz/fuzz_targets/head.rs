//! Fuzzes the primary's request head parser and the routing decision made from its result:
//! never panic, lengths within the input and the limit, the same head from exactly its bytes,
//! and a balancer pick always inside the candidate list.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sio_cluster::config::Balance;
use sio_cluster::fuzz_api::{Balancer, Candidate, HeadRules, MemberId, Parsed, SidTable, parse_head};

fuzz_target!(|data: &[u8]| {
    let rules = HeadRules {
        engine_prefix: "/socket.io/".into(),
        cookie: Some("sio".into()),
        max_head: 8192,
        // Trusted proxies on, so X-Forwarded-For parsing runs on every head.
        trusted: "10.0.0.0/8,::1".parse().expect("valid CIDR list"),
        health_path: Some("/health".into()),
    };
    let head = match parse_head(data, &rules) {
        Ok(Parsed::Complete(head)) => head,
        Ok(Parsed::Partial) => {
            assert!(data.len() < rules.max_head, "partial at or over the limit");
            return;
        }
        Err(e) => {
            // Every refusal the primary answers has a response to write, or none by design.
            let _ = e.response();
            return;
        }
    };
    assert!(head.len > 0 && head.len <= data.len(), "head len {} of {}", head.len, data.len());
    assert!(head.len <= rules.max_head);
    assert!(!(head.sid.is_some() && head.bad_sid), "a sid is either good or bad");
    if head.forwarded_for.is_some() {
        // A forwarded client comes only from an X-Forwarded-For header of this head.
        let lower = data[..head.len].to_ascii_lowercase();
        assert!(
            lower.windows(16).any(|w| w == b"x-forwarded-for:"),
            "forwarded client without the header"
        );
    }
    if head.sid.is_some() || head.bad_sid {
        assert!(head.engine, "sids are read from Engine.IO requests only");
    }
    // The head is self-delimiting: its own bytes parse to the same head.
    assert_eq!(
        parse_head(&data[..head.len], &rules),
        Ok(Parsed::Complete(head.clone()))
    );

    // The routing decision: a known session goes to its owner, anything else to the balancer.
    let mut table = SidTable::default();
    let owner = MemberId(u32::from(data[0]));
    if let Some(sid) = head.sid {
        table.insert(sid, owner);
        assert_eq!(table.owner(&sid), Some(owner));
    }
    let n = usize::from(data[data.len() - 1] % 9);
    let candidates: Vec<Candidate> = (0..n)
        .map(|i| Candidate {
            slot: i * 2,
            load: u64::from(data.get(i).copied().unwrap_or(0)),
        })
        .collect();
    let peer = (data.len() >= 4).then(|| IpAddr::from([data[0], data[1], data[2], data[3]]));
    for strategy in [
        Balance::LeastConn,
        Balance::RoundRobin,
        Balance::Random,
        Balance::IpHash,
    ] {
        let balancer = Balancer::new(strategy);
        for _ in 0..3 {
            match balancer.pick(&candidates, peer) {
                Some(i) => assert!(i < candidates.len(), "{strategy:?} picked {i} of {n}"),
                None => assert!(candidates.is_empty()),
            }
        }
    }
    if let Some(slot) = head.cookie_slot {
        // A sticky cookie names a slot; it is honoured only if that slot is a candidate.
        let _ = candidates.iter().position(|c| c.slot == slot);
    }
    if let Some(sid) = head.sid {
        assert!(table.remove(&sid, owner));
        assert_eq!(table.owner(&sid), None);
        assert_eq!(table.purge(owner), 0);
    }
});
