//! Which worker owns each live polling session.
//!
//! Workers register a session before its handshake response leaves them, and unregister it when
//! it ends or no longer needs routing (it upgraded to websocket, or it expired). A dead worker's
//! entries are purged at once. The table therefore holds only sessions that may still send a
//! request on a new connection.

use std::collections::HashMap;

use crate::ipc::message::MemberId;
use crate::sid::SessionId;

/// Session id → owning worker.
#[derive(Debug, Default)]
pub struct SidTable {
    map: HashMap<SessionId, MemberId>,
}

impl SidTable {
    /// Records that `sid` lives on `member`.
    pub fn insert(&mut self, sid: SessionId, member: MemberId) {
        self.map.insert(sid, member);
    }

    /// The worker owning `sid`.
    pub fn owner(&self, sid: &SessionId) -> Option<MemberId> {
        self.map.get(sid).copied()
    }

    /// Removes `sid` if `member` still owns it (a late unregister never removes a newer owner).
    pub fn remove(&mut self, sid: &SessionId, member: MemberId) -> bool {
        if self.map.get(sid) == Some(&member) {
            self.map.remove(sid);
            true
        } else {
            false
        }
    }

    /// Drops every session of a dead worker; returns how many.
    pub fn purge(&mut self, member: MemberId) -> usize {
        let before = self.map.len();
        self.map.retain(|_, m| *m != member);
        if self.map.capacity() > 1024 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to_fit();
        }
        before - self.map.len()
    }

    /// Number of sessions routed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No session routed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(c: char) -> SessionId {
        SessionId::parse(&c.to_string().repeat(16)).unwrap()
    }

    #[test]
    fn owner_remove_purge() {
        let mut t = SidTable::default();
        t.insert(sid('a'), MemberId(1));
        t.insert(sid('b'), MemberId(2));
        t.insert(sid('c'), MemberId(2));
        assert_eq!(t.owner(&sid('a')), Some(MemberId(1)));
        assert!(
            !t.remove(&sid('a'), MemberId(2)),
            "only the owner unregisters"
        );
        assert!(t.remove(&sid('a'), MemberId(1)));
        assert_eq!(t.owner(&sid('a')), None);
        assert_eq!(t.purge(MemberId(2)), 2);
        assert!(t.is_empty());
    }
}
