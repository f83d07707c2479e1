//! Per-key coordination for the node's content stores (the OCI image store, the input and result caches):
//! async locks by key, so that one task at a time fills or evicts an entry, and lease counts, so that an
//! entry in use is never evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Strictly increasing wall-clock stamps for LRU order: two uses in the same millisecond (or after the clock
/// stepped back) still get distinct, ordered stamps.
#[derive(Debug)]
pub(crate) struct UseClock {
    last: AtomicU64,
}

impl UseClock {
    /// A clock whose stamps come after `last` (the newest stamp already stored).
    pub(crate) fn after(last: u64) -> Self {
        Self {
            last: AtomicU64::new(last),
        }
    }

    /// The next stamp.
    pub(crate) fn stamp(&self) -> u64 {
        let now = now_ms();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }
}

/// Async locks by key, created on demand and dropped when nobody holds or waits for them.
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(lock) = map.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }

    /// Waits for the lock on `key`. Cancel-safe (tokio's mutex is).
    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.entry(key).lock_owned().await
    }

    /// The lock on `key` if nobody holds it.
    pub(crate) fn try_lock(&self, key: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.entry(key).try_lock_owned().ok()
    }
}

/// Reference counts of leased keys.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    counts: Mutex<HashMap<String, usize>>,
}

impl Leases {
    /// Leases `keys` until the returned [`Lease`] is dropped.
    pub(crate) fn acquire(self: &Arc<Self>, keys: Vec<String>) -> Lease {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        for k in &keys {
            *counts.entry(k.clone()).or_default() += 1;
        }
        drop(counts);
        Lease {
            leases: Arc::clone(self),
            keys,
        }
    }

    /// Whether any lease holds `key`.
    pub(crate) fn is_leased(&self, key: &str) -> bool {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }

    fn release(&self, keys: &[String]) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        for k in keys {
            if let Some(n) = counts.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }
}

/// Keeps its keys leased while it exists.
#[derive(Debug)]
pub(crate) struct Lease {
    leases: Arc<Leases>,
    keys: Vec<String>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.release(&self.keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_locks_serialise_one_key_and_free_unused_entries() {
        let locks = KeyedLocks::default();
        let held = locks.lock("a").await;
        assert!(locks.try_lock("a").is_none(), "held");
        assert!(locks.try_lock("b").is_some(), "another key is free");
        drop(held);
        assert!(locks.try_lock("a").is_some(), "released");
        let _ = locks.entry("c");
        assert!(
            locks
                .map
                .lock()
                .expect("map")
                .values()
                .all(|w| w.strong_count() == 0),
            "no entry outlives its users"
        );
    }

    #[test]
    fn use_stamps_strictly_increase_past_the_stored_newest() {
        let clock = UseClock::after(u64::MAX - 10);
        let a = clock.stamp();
        let b = clock.stamp();
        assert!(a > u64::MAX - 10 && b > a);
    }

    #[test]
    fn leases_count_and_release_on_drop() {
        let leases = Arc::new(Leases::default());
        let a = leases.acquire(vec!["layer:1".into(), "image:x".into()]);
        let b = leases.acquire(vec!["layer:1".into()]);
        assert!(leases.is_leased("layer:1") && leases.is_leased("image:x"));
        drop(a);
        assert!(leases.is_leased("layer:1") && !leases.is_leased("image:x"));
        drop(b);
        assert!(!leases.is_leased("layer:1"));
    }
}
