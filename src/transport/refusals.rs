//! Paces the "event consumer is behind" warning. While a consumer lags, every inbound request is refused, and
//! a fleet reconnecting at once sends thousands a second: one line each would flood the log and cost the
//! loop more time than the refusal itself. The first refusal is logged at once; the rest are counted and
//! reported as one summary line at most every [`Refusals::EVERY`], and once more when the consumer catches up.

use std::time::{Duration, Instant};

/// Refusals of one event stream since the last log line.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// When the last line was logged; `None` while no refusal is unreported since the consumer caught up.
    last_logged: Option<Instant>,
    /// Refusals since that line.
    unlogged: u64,
}

/// What to log for a refusal.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Report {
    /// The first refusal since the consumer was last in step.
    First,
    /// A summary: this many refusals (this one included) since the last line.
    Summary(u64),
    /// Nothing now: counted for the next summary.
    Counted,
}

impl Refusals {
    /// The shortest time between two log lines.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Counts a refusal at `now` and says what to log.
    pub fn refused(&mut self, now: Instant) -> Report {
        match self.last_logged {
            None => {
                self.last_logged = Some(now);
                Report::First
            }
            Some(at) => {
                self.unlogged += 1;
                if now.saturating_duration_since(at) < Self::EVERY {
                    return Report::Counted;
                }
                self.last_logged = Some(now);
                Report::Summary(std::mem::take(&mut self.unlogged))
            }
        }
    }

    /// The consumer caught up: the refusals not yet reported, if any; the next refusal is a first one again.
    pub fn caught_up(&mut self) -> Option<u64> {
        self.last_logged.take()?;
        Some(std::mem::take(&mut self.unlogged)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_a_summary_per_interval_then_the_rest_on_catching_up() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.caught_up(), None, "nothing refused, nothing to report");
        assert_eq!(r.refused(t0), Report::First);
        for i in 1..=500 {
            assert_eq!(r.refused(t0 + Duration::from_millis(i)), Report::Counted);
        }
        // The next refusal after the interval reports everything since the first line, itself included.
        assert_eq!(r.refused(t0 + Refusals::EVERY), Report::Summary(501));
        assert_eq!(
            r.refused(t0 + Refusals::EVERY + Duration::from_secs(1)),
            Report::Counted
        );
        assert_eq!(r.caught_up(), Some(1));
        assert_eq!(r.caught_up(), None, "reported once");
        // Behind again later: the first refusal is logged at once again.
        assert_eq!(r.refused(t0 + Duration::from_secs(60)), Report::First);
        assert_eq!(r.caught_up(), None, "only the first, already logged");
    }
}
