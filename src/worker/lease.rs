//! Polling sessions this worker registered with the primary, and when each was last seen.
//!
//! A polling session keeps a request in flight at all times (the server answers a long-poll at
//! least every ping interval), so a session unseen for longer than ping interval + ping timeout
//! has either closed or upgraded to websocket; neither needs routing by the primary any more.
//! The sweeper unregisters such sessions, which keeps the primary's table bounded by the
//! sessions active in that window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sid::SessionId;

/// Registered sessions and their last activity.
#[derive(Debug, Default)]
pub struct Leases {
    map: Mutex<HashMap<SessionId, Instant>>,
}

impl Leases {
    /// Records a new session.
    pub fn insert(&self, sid: SessionId) {
        self.map.lock().unwrap().insert(sid, Instant::now());
    }

    /// Marks `sid` active; false if it is not registered here.
    pub fn touch(&self, sid: &SessionId) -> bool {
        match self.map.lock().unwrap().get_mut(sid) {
            Some(t) => {
                *t = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Forgets `sid`; true if it was registered.
    pub fn remove(&self, sid: &SessionId) -> bool {
        self.map.lock().unwrap().remove(sid).is_some()
    }

    /// Removes and returns sessions idle for longer than `ttl`.
    pub fn expire(&self, ttl: Duration) -> Vec<SessionId> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        let expired: Vec<SessionId> = map
            .iter()
            .filter(|(_, t)| now.duration_since(**t) > ttl)
            .map(|(s, _)| *s)
            .collect();
        for s in &expired {
            map.remove(s);
        }
        expired
    }

    /// Number of sessions registered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    /// No session registered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_and_expire() {
        let l = Leases::default();
        let a = SessionId::parse("aaaaaaaaaaaaaaaa").unwrap();
        let b = SessionId::parse("bbbbbbbbbbbbbbbb").unwrap();
        l.insert(a);
        assert!(l.touch(&a));
        assert!(!l.touch(&b));
        std::thread::sleep(Duration::from_millis(20));
        l.insert(b);
        let expired = l.expire(Duration::from_millis(10));
        assert_eq!(expired, vec![a]);
        assert_eq!(l.len(), 1);
        assert!(l.remove(&b));
        assert!(l.is_empty());
    }
}
