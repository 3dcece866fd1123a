//! Polling sessions this worker registered with the primary, and whether they still need routing.
//!
//! A session stops needing the primary's routing when it **closes** or when it **upgrades to
//! websocket** (later requests never arrive on new connections). The sweeper detects both:
//! - closed: the session had a socket in some namespace and now has none (Socket.IO socket ids
//!   are the Engine.IO session id), or it never connected a namespace within the connect
//!   timeout (socketioxide closes such sessions);
//! - upgraded (or gone silent): a polling session always has a request in flight, answered at
//!   least every ping interval, so one unseen for longer than ping interval + ping timeout no
//!   longer polls.
//!
//! Each expired session is unregistered, which keeps the primary's table to the live polling
//! sessions.

use crate::sync::LockExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sid::SessionId;

#[derive(Debug, Clone, Copy)]
struct Lease {
    registered: Instant,
    last_seen: Instant,
    had_socket: bool,
}

/// When a registered session no longer needs routing.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryRules {
    /// No request for this long: upgraded or gone.
    pub idle: Duration,
    /// A session without any namespace socket this long after its handshake is gone.
    pub connect_window: Duration,
}

/// Registered sessions and their activity.
#[derive(Debug, Default)]
pub struct Leases {
    map: Mutex<HashMap<SessionId, Lease>>,
}

impl Leases {
    /// Records a new session.
    pub fn insert(&self, sid: SessionId) {
        let now = Instant::now();
        self.map.lock_unpoisoned().insert(
            sid,
            Lease {
                registered: now,
                last_seen: now,
                had_socket: false,
            },
        );
    }

    /// Marks `sid` active; false if it is not registered here.
    pub fn touch(&self, sid: &SessionId) -> bool {
        match self.map.lock_unpoisoned().get_mut(sid) {
            Some(l) => {
                l.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Forgets `sid`; true if it was registered.
    pub fn remove(&self, sid: &SessionId) -> bool {
        self.map.lock_unpoisoned().remove(sid).is_some()
    }

    /// Removes and returns the sessions that no longer need routing. `has_socket` tells whether
    /// a session currently has a socket in any namespace.
    pub fn expire(
        &self,
        rules: ExpiryRules,
        has_socket: impl Fn(&SessionId) -> bool,
    ) -> Vec<SessionId> {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.map.lock_unpoisoned().retain(|sid, l| {
            let connected = has_socket(sid);
            l.had_socket |= connected;
            let closed = !connected
                && (l.had_socket || now.duration_since(l.registered) > rules.connect_window);
            let idle = now.duration_since(l.last_seen) > rules.idle;
            if closed || idle {
                expired.push(*sid);
                false
            } else {
                true
            }
        });
        expired
    }

    /// Number of sessions registered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock_unpoisoned().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(c: char) -> SessionId {
        SessionId::parse(&c.to_string().repeat(16)).unwrap()
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn idle_sessions_expire() {
        let l = Leases::default();
        l.insert(sid('a'));
        assert!(l.touch(&sid('a')));
        assert!(!l.touch(&sid('b')));
        std::thread::sleep(Duration::from_millis(20));
        l.insert(sid('b'));
        let rules = ExpiryRules {
            idle: Duration::from_millis(10),
            connect_window: LONG,
        };
        assert_eq!(l.expire(rules, |_| true), vec![sid('a')]);
        assert_eq!(l.len(), 1);
        assert!(l.remove(&sid('b')));
    }

    #[test]
    fn closed_sessions_expire_at_once() {
        let l = Leases::default();
        l.insert(sid('a'));
        l.insert(sid('b'));
        let rules = ExpiryRules {
            idle: LONG,
            connect_window: LONG,
        };
        // Both connected a namespace...
        assert!(l.expire(rules, |_| true).is_empty());
        // ...then `a` closed.
        assert_eq!(l.expire(rules, |s| *s == sid('b')), vec![sid('a')]);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn sessions_that_never_connect_expire_after_the_connect_window() {
        let l = Leases::default();
        l.insert(sid('a'));
        let mut rules = ExpiryRules {
            idle: LONG,
            connect_window: LONG,
        };
        assert!(
            l.expire(rules, |_| false).is_empty(),
            "still within its connect window"
        );
        rules.connect_window = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(l.expire(rules, |_| false), vec![sid('a')]);
    }
}
