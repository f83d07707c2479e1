//! Which execution holds which GPU on this node.
//!
//! An accepted execution is given specific GPU indexes, lowest free first, and keeps them until it ends; the
//! indexes are stored with its local record so a restart gives it the same devices back ([`GpuAllocator::restore`]).
//! The allocator itself holds no lock: its owner (the compute node's capacity) keeps it behind the same mutex as
//! the other resource counts, so a bid reserves GPUs and CPU/memory in one step.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::ExecutionId;

/// Not enough free GPUs for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("needs {need} GPU{s}; this node has {free} free (of {total})", s = if *need == 1 { "" } else { "s" })]
pub struct NotEnoughGpus {
    /// GPUs asked for.
    pub need: u64,
    /// GPUs free now.
    pub free: u64,
    /// GPUs this node has.
    pub total: u64,
}

/// A held index that cannot be given back after a restart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The GPU is gone (removed, or discovery found fewer).
    #[error("GPU {0} is no longer on this node")]
    Gone(u32),
    /// Another execution holds it already.
    #[error("GPU {index} is already held by execution {holder}")]
    Held {
        /// The index.
        index: u32,
        /// Who holds it.
        holder: ExecutionId,
    },
}

/// The GPUs of this node and their holders.
#[derive(Debug, Clone, Default)]
pub struct GpuAllocator {
    /// Every index this node has.
    all: BTreeSet<u32>,
    /// Index → the execution holding it.
    held: BTreeMap<u32, ExecutionId>,
}

impl GpuAllocator {
    /// An allocator for these indexes, all free.
    pub fn new(indexes: impl IntoIterator<Item = u32>) -> Self {
        Self {
            all: indexes.into_iter().collect(),
            held: BTreeMap::new(),
        }
    }

    /// How many GPUs are free.
    pub fn free_count(&self) -> u64 {
        (self.all.len() - self.held.len()) as u64
    }

    /// The free indexes, lowest first.
    pub fn free(&self) -> Vec<u32> {
        self.all
            .iter()
            .copied()
            .filter(|i| !self.held.contains_key(i))
            .collect()
    }

    /// The indexes `holder` holds, lowest first.
    pub fn held_by(&self, holder: &ExecutionId) -> Vec<u32> {
        self.held
            .iter()
            .filter(|(_, h)| *h == holder)
            .map(|(i, _)| *i)
            .collect()
    }

    /// Whether `need` GPUs are free now.
    pub fn check(&self, need: u64) -> Result<(), NotEnoughGpus> {
        let free = self.free_count();
        if free < need {
            return Err(NotEnoughGpus {
                need,
                free,
                total: self.all.len() as u64,
            });
        }
        Ok(())
    }

    /// Gives `holder` `need` GPUs, the lowest free ones, and returns them. Asking again for a holder that holds
    /// GPUs already returns what it holds (a replayed bid must not take more).
    pub fn reserve(&mut self, holder: &ExecutionId, need: u64) -> Result<Vec<u32>, NotEnoughGpus> {
        let already = self.held_by(holder);
        if need == 0 || !already.is_empty() {
            return Ok(already);
        }
        self.check(need)?;
        let take: Vec<u32> = self
            .free()
            .into_iter()
            .take(usize::try_from(need).unwrap_or(usize::MAX))
            .collect();
        for i in &take {
            self.held.insert(*i, holder.clone());
        }
        Ok(take)
    }

    /// Gives `holder` exactly `indexes` again (recovery after a restart). All or nothing.
    pub fn restore(&mut self, holder: &ExecutionId, indexes: &[u32]) -> Result<(), RestoreError> {
        for i in indexes {
            if !self.all.contains(i) {
                return Err(RestoreError::Gone(*i));
            }
            if let Some(h) = self.held.get(i).filter(|h| *h != holder) {
                return Err(RestoreError::Held {
                    index: *i,
                    holder: h.clone(),
                });
            }
        }
        for i in indexes {
            self.held.insert(*i, holder.clone());
        }
        Ok(())
    }

    /// Frees what `holder` holds (nothing if it holds nothing).
    pub fn release(&mut self, holder: &ExecutionId) {
        self.held.retain(|_, h| h != holder);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn id(s: &str) -> ExecutionId {
        ExecutionId::from(s.to_owned())
    }

    #[test]
    fn hands_out_the_lowest_free_first_and_frees_on_release() {
        let mut a = GpuAllocator::new([0, 1, 2, 3]);
        assert_eq!(a.reserve(&id("e1"), 1), Ok(vec![0]));
        assert_eq!(a.reserve(&id("e2"), 2), Ok(vec![1, 2]));
        a.release(&id("e1"));
        assert_eq!(a.free(), vec![0, 3]);
        assert_eq!(a.reserve(&id("e3"), 2), Ok(vec![0, 3]));
        assert_eq!(a.free_count(), 0);
        a.release(&id("e2"));
        a.release(&id("e2"));
        assert_eq!(a.free(), vec![1, 2]);
        assert_eq!(a.reserve(&id("cpu-only"), 0), Ok(vec![]));
    }

    #[test]
    fn exhaustion_says_how_many_are_free() {
        let mut a = GpuAllocator::new([0, 1]);
        a.reserve(&id("e1"), 1).expect("one");
        let e = a.reserve(&id("e2"), 2).expect_err("only one left");
        assert_eq!(e.to_string(), "needs 2 GPUs; this node has 1 free (of 2)");
        assert_eq!(a.free(), vec![1], "a refused request takes nothing");
        let none = GpuAllocator::new([])
            .reserve(&id("e"), 1)
            .expect_err("no GPU");
        assert_eq!(none.to_string(), "needs 1 GPU; this node has 0 free (of 0)");
    }

    #[test]
    fn a_replayed_reservation_returns_what_is_held() {
        let mut a = GpuAllocator::new([0, 1, 2]);
        assert_eq!(a.reserve(&id("e1"), 1), Ok(vec![0]));
        assert_eq!(a.reserve(&id("e1"), 1), Ok(vec![0]));
        assert_eq!(a.free(), vec![1, 2]);
    }

    #[test]
    fn restart_recovery_restores_the_same_devices() {
        // Before the restart e1 held 2 and e2 held 0; after it, a fresh allocator gets them back as stored.
        let mut a = GpuAllocator::new([0, 1, 2]);
        a.restore(&id("e1"), &[2]).expect("restore e1");
        a.restore(&id("e2"), &[0]).expect("restore e2");
        assert_eq!(a.held_by(&id("e1")), vec![2]);
        assert_eq!(a.reserve(&id("e3"), 1), Ok(vec![1]));
        assert_eq!(
            a.restore(&id("e4"), &[1]),
            Err(RestoreError::Held {
                index: 1,
                holder: id("e3")
            })
        );
        assert_eq!(a.restore(&id("e4"), &[7]), Err(RestoreError::Gone(7)));
        assert!(a.held_by(&id("e4")).is_empty(), "all or nothing");
    }

    #[test]
    fn concurrent_reservations_never_share_a_gpu() {
        let a = Arc::new(Mutex::new(GpuAllocator::new(0..4)));
        let threads: Vec<_> = (0..16)
            .map(|n| {
                let a = a.clone();
                std::thread::spawn(move || {
                    a.lock()
                        .expect("lock")
                        .reserve(&id(&format!("e{n}")), 1)
                        .ok()
                })
            })
            .collect();
        let mut got: Vec<u32> = threads
            .into_iter()
            .filter_map(|t| t.join().expect("thread"))
            .flatten()
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3], "four winners, each with its own GPU");
    }
}
