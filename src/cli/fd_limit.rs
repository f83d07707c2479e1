//! The open-file limit. An orchestrator holds one socket per connected compute node, so a fleet of 10,000
//! nodes needs more than 10,000 descriptors, while most systems start processes with a soft limit of 1,024.
//! The soft limit is raised to the hard one (which needs no privilege); what is left too low is logged.

/// Descriptors an orchestrator keeps for itself beyond one per node (store, API, logs, listeners).
const RESERVED: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force (`None` when this build
/// cannot change it or the system refused).
pub fn raise_to_hard() -> Option<u64> {
    #[cfg(any(feature = "executor-oci", feature = "ipfs"))]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            return Some(soft);
        }
        Some(hard.max(soft))
    }
    #[cfg(not(any(feature = "executor-oci", feature = "ipfs")))]
    {
        None
    }
}

/// How many compute nodes an orchestrator can hold connections to under `limit` open files.
pub fn nodes_supported(limit: u64) -> u64 {
    limit.saturating_sub(RESERVED)
}

/// Raises the limit for an orchestrator and says, once at start, how many nodes it allows; warns when that
/// is below a fleet of 10,000.
pub fn raise_for_orchestrator() {
    match raise_to_hard() {
        Some(limit) if nodes_supported(limit) < 10_000 => tracing::warn!(
            open_files = limit,
            nodes = nodes_supported(limit),
            "the open-file limit allows only this many compute node connections; raise the hard limit \
             (`ulimit -Hn`, systemd LimitNOFILE=) for a larger fleet"
        ),
        Some(limit) => tracing::info!(
            open_files = limit,
            nodes = nodes_supported(limit),
            "open-file limit"
        ),
        None => tracing::info!("open-file limit left as the system set it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let Some(limit) = raise_to_hard() else {
            return; // a build without nix cannot change it
        };
        let status = std::fs::read_to_string("/proc/self/limits").expect("limits");
        let line = status
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("open files line");
        let soft: u64 = line
            .split_whitespace()
            .nth(3)
            .and_then(|v| v.parse().ok())
            .expect("soft limit");
        assert_eq!(soft, limit, "{line}");
        assert_eq!(nodes_supported(limit), limit - RESERVED);
    }
}
