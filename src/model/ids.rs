//! Identifier newtypes. Bacalhau's forms: jobs `j-<uuid>`, executions `e-<uuid>`, evaluations a plain UUID.
//! A node's id is its libp2p peer id in text form, which is stable across restarts (the key lives in the data
//! dir), unlike Bacalhau's `n-<uuid>` that issue #4460 complains about.
//!
//! Generated UUIDs are not random throughout (Bacalhau's version 4) but lead with a clock: see [`fresh`].

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh id with this type's prefix (see [`fresh`]).
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, fresh()))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The short form shown in tables: the prefix and the first UUID block.
            pub fn short(&self) -> &str {
                let end = self.0[$prefix.len()..]
                    .find('-')
                    .map(|i| i + $prefix.len())
                    .unwrap_or(self.0.len());
                &self.0[..end]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self(s.to_owned()))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

id_type!(
    /// A job's id (`j-<uuid>`).
    JobId,
    "j-"
);
id_type!(
    /// An execution's id (`e-<uuid>`).
    ExecutionId,
    "e-"
);
id_type!(
    /// An evaluation's id (a plain UUID).
    EvaluationId,
    ""
);
id_type!(
    /// A node's id: its libp2p peer id in text form.
    NodeId,
    ""
);

/// The last tick [`fresh`] used: microseconds since the Unix epoch.
static LAST_TICK: AtomicU64 = AtomicU64::new(0);

/// A new UUID whose first block counts microseconds (modulo 2^32: it wraps every 72 minutes) and whose other 90
/// bits are random: RFC 9562 version 8, a layout of our own.
///
/// Why a clock first: the orchestrator keys its tables by job id (jobs, names, executions, history), so with
/// a random first block every job's records landed in B-tree leaves of their own and each commit wrote about
/// ten 4 KiB pages a job. Led by a clock, the jobs in flight sit side by side and share leaves: about three
/// pages a job in the fleet benchmark, which is CPU on the orchestrator and wear on a board's flash.
///
/// Why not version 7 (48-bit milliseconds first): the first block is the short id people read and type
/// (`j-1a2b3c4d`, as Bacalhau shows it), and version 7 gives every job of the same 65 seconds the same one.
/// Here it is a tick that never repeats within one process for 72 minutes (a tick is taken at most once,
/// even for two ids in the same microsecond), and across longer spans short ids collide no more often than
/// random ones do.
fn fresh() -> uuid::Uuid {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut last = LAST_TICK.load(Ordering::Relaxed);
    let tick = loop {
        let next = now.max(last.saturating_add(1));
        match LAST_TICK.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    let mut bytes = uuid::Uuid::new_v4().into_bytes();
    // The low 32 bits of the tick, big-endian, so that text order is tick order.
    bytes[..4].copy_from_slice(&(tick as u32).to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
    uuid::Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_sort_in_the_order_they_were_made_and_their_short_forms_differ() {
        let ids: Vec<JobId> = (0..2_000).map(|_| JobId::generate()).collect();
        // The tick wraps every 72 minutes: at most one step of the run may go down.
        let descents = ids.windows(2).filter(|w| w[0] >= w[1]).count();
        assert!(
            descents <= 1,
            "{descents} ids sort before the one made before them"
        );
        let shorts: std::collections::HashSet<&str> = ids.iter().map(JobId::short).collect();
        assert_eq!(
            shorts.len(),
            ids.len(),
            "two ids of one process share a short form"
        );
        let uuid = uuid::Uuid::parse_str(&ids[0].as_str()[2..]).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 8);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn generated_ids_have_prefix_and_short_form() {
        let j = JobId::generate();
        assert!(j.as_str().starts_with("j-"));
        assert_eq!(j.short().len(), 2 + 8);
        let e = ExecutionId::generate();
        assert!(e.as_str().starts_with("e-"));
    }
}
