//! Engine.IO session ids as compact, copyable keys.
//!
//! engineioxide draws every session id from 12 random bytes encoded as URL-safe base64 without
//! padding: exactly 16 characters of `[A-Za-z0-9_-]`. The primary reads them from request heads,
//! the workers register them, and the [`SidTable`](crate::supervisor::sid_table::SidTable) keys
//! on them, so they travel as a fixed `[u8; 16]` instead of a heap string.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An Engine.IO session id (16 characters of `[A-Za-z0-9_-]`).
///
/// ```
/// use sio_cluster::SessionId;
/// let sid = SessionId::parse("EsPJiCvFMpyNdJz2").unwrap();
/// assert_eq!(sid.as_str(), "EsPJiCvFMpyNdJz2");
/// assert!(SessionId::parse("not a sid").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// Length of every Engine.IO session id, in bytes.
    pub const LEN: usize = 16;

    /// Parses a session id; `None` unless it is exactly 16 characters of `[A-Za-z0-9_-]`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_bytes(s.as_bytes())
    }

    /// Same as [`SessionId::parse`], from raw bytes (as found in a request head).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let arr: [u8; 16] = b.try_into().ok()?;
        arr.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
            .then_some(Self(arr))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever admitted by the constructors.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_engineio_ids_only() {
        assert!(SessionId::parse("abcdefghijklmn_-").is_some());
        assert!(SessionId::parse("ABCDEFGHIJKLMNOP").is_some());
        assert!(SessionId::parse("abc").is_none());
        assert!(SessionId::parse("abcdefghijklmnopq").is_none());
        assert!(SessionId::parse("abcdefghijklmn%2").is_none());
        assert!(SessionId::parse("abcdefghijklmné").is_none());
    }

    #[test]
    fn matches_socketioxide_sids() {
        for _ in 0..100 {
            let sid = socketioxide_core::Sid::new();
            let parsed = SessionId::parse(sid.as_str()).expect("engineioxide sid");
            assert_eq!(parsed.as_str(), sid.as_str());
        }
    }
}
