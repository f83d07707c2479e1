//! Stopping a run from outside its worker thread, and WASI sleeps that can be stopped.
//!
//! wasmi has no epoch interruption, so a worker runs the guest in fuel slices and looks at the
//! [`Interrupt`] and the deadline between slices. A guest blocked in a WASI sleep executes no
//! instructions; [`Sleeper`] makes those sleeps wake up on the same interrupt or at the deadline,
//! and then traps, so the worker sees why the run ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// A one-way "stop now" signal from the async side to a worker thread.
#[derive(Debug, Default)]
pub(super) struct Interrupt {
    /// Read between fuel slices without locking.
    set: AtomicBool,
    /// Guards the transition of `set` for sleepers, so a trigger between their check and their
    /// wait is not lost.
    lock: Mutex<()>,
    /// Wakes a guest sleeping in WASI.
    wake: Condvar,
}

// === impl Interrupt ===

impl Interrupt {
    /// Asks the run to stop; idempotent.
    pub(super) fn trigger(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.set.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    /// Whether [`Interrupt::trigger`] was called.
    pub(super) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Blocks until triggered or until `until` (forever if `None`); true if triggered.
    fn wait_until(&self, until: Option<Instant>) -> bool {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_set() {
                return true;
            }
            match until {
                None => guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    guard = self
                        .wake
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// Triggers an [`Interrupt`] when dropped: held by `run()` so that dropping its future (or
/// finishing it) stops the guest if it is still running.
#[derive(Debug)]
pub(super) struct TriggerOnDrop(pub(super) Arc<Interrupt>);

impl Drop for TriggerOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

/// The WASI sleeps of one run: they stop at the run's deadline or interrupt, with a trap.
pub(super) struct Sleeper {
    /// The run's stop signal.
    pub(super) interrupt: Arc<Interrupt>,
    /// When the run times out, if it has a timeout.
    pub(super) deadline: Option<Instant>,
}

// === impl Sleeper ===

impl Sleeper {
    /// Sleeps until `wake` (`None`: forever), or traps if the run must stop first.
    pub(super) fn sleep_until(&self, wake: Option<Instant>) -> Result<(), wasmi::Error> {
        let until = match (wake, self.deadline) {
            (Some(wake), Some(deadline)) => Some(wake.min(deadline)),
            (wake, deadline) => wake.or(deadline),
        };
        if self.interrupt.wait_until(until) {
            return Err(wasmi::Error::new("run interrupted while sleeping"));
        }
        if until != wake {
            return Err(wasmi::Error::new("run deadline passed while sleeping"));
        }
        Ok(())
    }
}
