//! Locks that outlive a panic: how this crate takes its `std::sync` locks.
//!
//! A `Mutex`/`RwLock` is poisoned when a thread panics while holding it, and `lock().unwrap()`
//! then panics in every later user: one bug would cascade into every task of the primary,
//! including the accept loop. The crate's locks guard tables and counters (sessions, bus
//! subscriptions, pending requests, worker handles) whose critical sections are short, call no
//! user code and leave the data valid after each single step (an insert, a remove, an
//! assignment); so a panic cannot leave one half-updated, and the guard is taken anyway. The
//! panic itself is not hidden: the task that panicked ends and its panic is logged (and a
//! panic of the accept loop ends the primary, see `supervisor`).

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Taking a lock whether or not an earlier holder panicked; see the module documentation.
pub(crate) trait LockExt<T: ?Sized> {
    /// The guard of a `Mutex`, even if poisoned.
    type Guard<'a>
    where
        Self: 'a;
    /// Locks, recovering the guard of a poisoned lock.
    fn lock_unpoisoned(&self) -> Self::Guard<'_>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`LockExt`] for readers-writer locks.
pub(crate) trait RwLockExt<T: ?Sized> {
    /// A read guard, even if poisoned.
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    /// A write guard, even if poisoned.
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let r = std::sync::Arc::new(RwLock::new(2));
        let (m2, r2) = (m.clone(), r.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = r2.write().unwrap();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && r.is_poisoned());
        *m.lock_unpoisoned() += 1;
        assert_eq!(*m.lock_unpoisoned(), 2);
        *r.write_unpoisoned() += 1;
        assert_eq!(*r.read_unpoisoned(), 3);
    }
}
