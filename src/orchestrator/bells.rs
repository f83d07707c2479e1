//! Wakes the long-polls that follow one job when a commit adds to that job's history, and no others.
//!
//! A single "something committed" signal woke every follower on every commit, and each then read the store
//! to learn that its own job had not moved: with N clients following N jobs, each commit cost N reads (16
//! clients made that most of the orchestrator's work per job). A bell per followed job rings only for the
//! commits that wrote to that job's history. Bells exist only while someone listens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::model::JobId;

/// The bells of the jobs being followed.
#[derive(Debug, Default)]
pub(crate) struct JobBells {
    bells: Mutex<HashMap<JobId, watch::Sender<u64>>>,
}

impl JobBells {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, watch::Sender<u64>>> {
        // The map stays consistent whatever a panicking holder did (every change is one insert or remove).
        self.bells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listens to `job`'s bell from now on. Listen before reading what you wait on, or a commit between the
    /// read and the listen goes unheard.
    pub(crate) fn listen(self: &Arc<Self>, job: &JobId) -> Listener {
        let changes = self
            .lock()
            .entry(job.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Listener {
            bells: Arc::clone(self),
            job: job.clone(),
            changes,
        }
    }

    /// Rings the bells of `jobs` (their history grew in a commit that is now durable).
    pub(crate) fn ring<'a>(&self, jobs: impl IntoIterator<Item = &'a JobId>) {
        let mut jobs = jobs.into_iter().peekable();
        if jobs.peek().is_none() {
            return;
        }
        let bells = self.lock();
        for job in jobs {
            if let Some(bell) = bells.get(job) {
                bell.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Jobs with someone listening.
    #[cfg(test)]
    fn listened(&self) -> usize {
        self.lock().len()
    }
}

/// One follower's ear on one job's bell; the bell goes when its last listener does.
#[derive(Debug)]
pub(crate) struct Listener {
    bells: Arc<JobBells>,
    job: JobId,
    changes: watch::Receiver<u64>,
}

impl Listener {
    /// Resolves when the bell rang since the listen or the last `rung`.
    pub(crate) async fn rung(&mut self) {
        // The sender lives in the map at least as long as this receiver, so this never ends in an error.
        let _ = self.changes.changed().await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut bells = self.bells.lock();
        // This listener's receiver is still alive here: a count of one means nobody else listens.
        if bells
            .get(&self.job)
            .is_some_and(|b| b.receiver_count() <= 1)
        {
            bells.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn job(n: u8) -> JobId {
        JobId::from(format!("j-{n:08}-0000-4000-8000-000000000000"))
    }

    #[tokio::test]
    async fn a_bell_wakes_only_its_own_listeners() {
        let bells = Arc::new(JobBells::default());
        let (mut one, mut two) = (bells.listen(&job(1)), bells.listen(&job(2)));
        bells.ring([&job(1)]);
        tokio::time::timeout(Duration::from_secs(5), one.rung())
            .await
            .expect("job 1's listener hears its bell");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), two.rung())
                .await
                .is_err(),
            "job 2's listener stays asleep"
        );
    }

    #[tokio::test]
    async fn a_ring_between_listen_and_wait_is_not_lost() {
        let bells = Arc::new(JobBells::default());
        let mut ear = bells.listen(&job(1));
        bells.ring([&job(1), &job(3)]);
        tokio::time::timeout(Duration::from_secs(5), ear.rung())
            .await
            .expect("the ring before the wait counts");
    }

    #[test]
    fn bells_go_with_their_last_listener() {
        let bells = Arc::new(JobBells::default());
        let a = bells.listen(&job(1));
        let b = bells.listen(&job(1));
        let c = bells.listen(&job(2));
        assert_eq!(bells.listened(), 2);
        drop(a);
        assert_eq!(bells.listened(), 2, "job 1 still has a listener");
        drop(b);
        drop(c);
        assert_eq!(bells.listened(), 0);
        // Ringing a bell nobody listens to is a no-op.
        bells.ring([&job(1)]);
        assert_eq!(bells.listened(), 0);
    }
}
