//! The runs waiting for a `cod-wasm-N` worker.
//!
//! Many workers take from one queue. A tokio channel has one receiver, so the workers used to share it
//! behind a mutex: the worker holding the lock waited for a run, the others waited for the lock. Every run
//! then woke two threads: the worker that got it and, as that one let go of the lock, the next idle worker,
//! only to wait on the channel again (a context switch per run, a tenth of a compute node's wake-ups in the
//! fleet benchmark). Here idle workers wait on one condition variable and a queued run wakes exactly one.
//!
//! The async side is bounded as the channel was: a sender holds one of `capacity` permits until a worker
//! takes its run, so callers past that wait in `run()` instead of piling contexts up in memory.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bounded many-worker queue of `T`.
#[derive(Debug)]
pub(super) struct Queue<T> {
    /// The waiting items, and whether the queue is closed.
    state: Mutex<State<T>>,
    /// Signalled for each item pushed, and to all when closed.
    ready: Condvar,
    /// Room in the queue: a permit per item it may hold.
    room: Arc<Semaphore>,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<(T, OwnedSemaphorePermit)>,
    closed: bool,
}

/// The queue is closed: no worker will take the item.
#[derive(Debug)]
pub(super) struct Closed;

// === impl Queue ===

impl<T> Queue<T> {
    /// A queue holding at most `capacity` items (0 counts as 1).
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            room: Arc::new(Semaphore::new(capacity.max(1))),
        }
    }

    /// Queues `item` once there is room. Cancel-safe: dropped while waiting, nothing was queued.
    pub(super) async fn push(&self, item: T) -> Result<(), Closed> {
        let permit = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_| Closed)?;
        let mut state = self.lock();
        if state.closed {
            return Err(Closed);
        }
        state.items.push_back((item, permit));
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next item, waiting for one; `None` once the queue is closed and empty. Blocking.
    pub(super) fn pop(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some((item, _room)) = state.items.pop_front() {
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No more items: waiting senders fail, and workers end once the queue is empty.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.room.close();
        self.ready.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A list and a flag: whatever a panicking holder did, both are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_and_room_comes_back_when_taken() {
        let queue = Arc::new(Queue::new(2));
        queue.push(1).await.expect("room");
        queue.push(2).await.expect("room");
        // Full: a third waits until a worker takes one.
        let third = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.push(3).await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "the queue holds at most its capacity");
        let taken = tokio::task::spawn_blocking({
            let queue = Arc::clone(&queue);
            move || queue.pop()
        })
        .await
        .expect("pop");
        assert_eq!(taken, Some(1));
        tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("room after a take")
            .expect("task")
            .expect("queued");
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
    }

    #[tokio::test]
    async fn closing_ends_idle_workers_after_the_queue_is_drained() {
        let queue = Arc::new(Queue::new(4));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(item) = queue.pop() {
                        got.push(item);
                    }
                    got
                })
            })
            .collect();
        for i in 0..4 {
            queue.push(i).await.expect("room");
        }
        queue.close();
        assert!(queue.push(9).await.is_err(), "a closed queue takes nothing");
        let mut all: Vec<i32> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3], "every queued item was taken once");
    }
}
