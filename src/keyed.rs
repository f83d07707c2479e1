//! Per-key coordination for the node's content stores (the OCI image store, the input and result caches):
//! async locks by key, so that one task at a time fills or evicts an entry, and lease counts, so that an
//! entry in use is never evicted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

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
