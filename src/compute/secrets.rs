//! `Task.Env` secrets: values written `env:NAME` are references to the compute node's own environment
//! (Bacalhau v1.6.4+). They are resolved here, at run time, and only for names the node's
//! `Compute.Env.AllowList` admits; the orchestrator and the job spec only ever hold the reference.
//!
//! Must never: log a resolved value, put one into anything stored or sent (execution records, history,
//! errors), or leave one in captured stdout/stderr. [`Scrubber`] replaces resolved values (of at least
//! [`MIN_SCRUB_LEN`] bytes) in the output with `***`, as CI systems do. That is a guard against accidents, not
//! against the job: a job can still encode the secret (base64, reversed, one character per line) or write it
//! into its result folders. Literal `Task.Env` values are not secrets and pass through as they are.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use super::glob;

/// The prefix that makes a `Task.Env` value a reference.
const REF_PREFIX: &str = "env:";
/// What a resolved value is replaced with in stored and published output.
const MASK: &[u8] = b"***";
/// Shorter values are not scrubbed: masking every `1` or `on` in the output would destroy it and hide nothing.
pub(crate) const MIN_SCRUB_LEN: usize = 4;

/// The host variable a `Task.Env` value refers to, if it is an `env:NAME` reference.
pub(crate) fn reference(value: &str) -> Option<&str> {
    value.strip_prefix(REF_PREFIX).map(str::trim)
}

/// Whether any value of `env` is a reference (such a task is never served from the result cache: the values
/// behind the names may change between runs).
pub(crate) fn has_references(env: &BTreeMap<String, String>) -> bool {
    env.values().any(|v| reference(v).is_some())
}

/// Why the variable `name` cannot be given to the job; `Err` is the reason the user sees.
pub(crate) fn check_reference(
    name: &str,
    allow_list: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if name.is_empty() || !allow_list.iter().any(|p| glob::matches(p, name)) {
        return Err(format!(
            "env var {name} is not in this node's Compute.Env.AllowList; ask the operator to allow it, or \
             pass a literal value"
        ));
    }
    lookup(name).ok_or_else(|| {
        format!(
            "env var {name} is allowed by this node's Compute.Env.AllowList but is not set in the node's \
             environment; ask the operator to set it"
        )
    })
}

/// Checks every reference of `env` (bidding: the values are looked up and dropped).
pub(crate) fn check_env(
    env: &BTreeMap<String, String>,
    allow_list: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    for name in env.values().filter_map(|v| reference(v)) {
        check_reference(name, allow_list, lookup)?;
    }
    Ok(())
}

/// Resolves the references of `env`: the environment for the executor and the scrubber for its output.
pub(crate) fn resolve_env(
    env: &BTreeMap<String, String>,
    allow_list: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(BTreeMap<String, String>, Scrubber), String> {
    let mut resolved = BTreeMap::new();
    let mut secrets = Vec::new();
    for (key, value) in env {
        let value = match reference(value) {
            Some(name) => {
                let secret = check_reference(name, allow_list, lookup)?;
                secrets.push(secret.clone());
                secret
            }
            None => value.clone(),
        };
        resolved.insert(key.clone(), value);
    }
    Ok((resolved, Scrubber::new(secrets)))
}

/// Removes resolved secret values from output. `Debug` shows how many it holds, never what.
#[derive(Clone, Default)]
pub(crate) struct Scrubber {
    /// Values of at least [`MIN_SCRUB_LEN`] bytes, longest first (so that a secret containing another is
    /// masked whole), without duplicates.
    secrets: Vec<Vec<u8>>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

// === impl Scrubber ===

impl Scrubber {
    /// A scrubber for `values` (short ones are ignored, see [`MIN_SCRUB_LEN`]).
    pub(crate) fn new(values: Vec<String>) -> Self {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_SCRUB_LEN)
            .map(String::into_bytes)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Self { secrets }
    }

    /// Whether there is nothing to scrub.
    pub(crate) fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The longest secret's length: how far a match can reach across a chunk boundary.
    fn longest(&self) -> usize {
        self.secrets.first().map_or(0, Vec::len)
    }

    /// Byte ranges of `data` that are secrets, sorted and merged (overlapping matches become one range).
    fn ranges(&self, data: &[u8]) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for secret in &self.secrets {
            found.extend(occurrences(data, secret).map(|at| (at, at + secret.len())));
        }
        found.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(found.len());
        for (start, end) in found {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// `data` with every secret replaced by `***` (what [`Scrubber::scrub_file`] does to a file).
    #[cfg(test)]
    pub(crate) fn scrub(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0;
        for (start, end) in self.ranges(data) {
            out.extend_from_slice(&data[at..start]);
            out.extend_from_slice(MASK);
            at = end;
        }
        out.extend_from_slice(&data[at..]);
        out
    }

    /// Rewrites the file at `path` scrubbed (streamed through a temporary file, then renamed over it, so a
    /// crash leaves either the old or the new file). Does nothing when there is nothing to scrub.
    pub(crate) fn scrub_file(&self, path: &Path) -> std::io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut input = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let tmp = path.with_extension("scrubbing");
        let mut output = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        // `pending` holds read bytes not yet written: at most the longest secret minus one byte is carried
        // to the next round, since a match starting earlier would have been complete.
        let keep = self.longest().saturating_sub(1);
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = input.read(&mut buf)?;
            pending.extend_from_slice(&buf[..n]);
            let at_end = n == 0;
            let mut cut = if at_end {
                pending.len()
            } else {
                pending.len().saturating_sub(keep)
            };
            let ranges = self.ranges(&pending);
            // A match that starts before the cut is written whole; one that starts after waits.
            for &(start, end) in &ranges {
                if start < cut && end > cut {
                    cut = end;
                }
            }
            let mut at = 0;
            for &(start, end) in ranges.iter().filter(|(s, _)| *s < cut) {
                output.write_all(&pending[at..start])?;
                output.write_all(MASK)?;
                at = end;
            }
            output.write_all(&pending[at..cut])?;
            pending.drain(..cut);
            if at_end {
                break;
            }
        }
        output
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// A live read: masks, in place and keeping the length, every secret in `window` (bytes read from the
    /// output file, of which `window[..from]` is context before the reader's offset), and returns at most `max`
    /// bytes from `from`. When that reaches the end of what was read, a tail that could be the start of a
    /// secret still being written is held back for the next read. The length stays the raw length (`*` per
    /// byte) because the follower counts the bytes it got to know where to read next.
    pub(crate) fn mask_live(&self, mut window: Vec<u8>, from: usize, max: usize) -> Vec<u8> {
        for (start, end) in self.ranges(&window) {
            window[start..end].fill(b'*');
        }
        let from = from.min(window.len());
        let end = from.saturating_add(max).min(window.len());
        let at_end = end == window.len();
        let mut chunk = window.split_off(from);
        chunk.truncate(end - from);
        if at_end {
            let hold = (1..self.longest().min(chunk.len() + 1))
                .rev()
                .find(|&k| {
                    let tail = &chunk[chunk.len() - k..];
                    self.secrets.iter().any(|s| s.starts_with(tail))
                })
                .unwrap_or(0);
            chunk.truncate(chunk.len() - hold);
        }
        chunk
    }

    /// How many bytes before a live read to look at, so that a secret straddling the offset is recognised.
    pub(crate) fn lookbehind(&self) -> usize {
        self.longest().saturating_sub(1)
    }
}

/// Start offsets of `needle` in `data` (overlapping ones included; `ranges` merges them). A plain scan:
/// outputs are scrubbed once, and the few secrets of a task are rarely found, so most positions fail at the
/// first byte.
fn occurrences<'a>(data: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let first = needle.first().copied();
    data.windows(needle.len().max(1))
        .enumerate()
        .filter(move |(_, w)| Some(w[0]) == first && *w == needle)
        .map(|(at, _)| at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn host(name: &str) -> Option<String> {
        match name {
            "EDGE_TOKEN" => Some("s3cr3t-value".to_owned()),
            "EDGE_EMPTYISH" => Some("ab".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn resolves_allowed_references_and_keeps_literals() {
        let allow = vec!["EDGE_*".to_owned()];
        let (resolved, scrubber) = resolve_env(
            &env(&[("TOKEN", "env:EDGE_TOKEN"), ("MODE", "fast")]),
            &allow,
            &host,
        )
        .expect("allowed");
        assert_eq!(resolved["TOKEN"], "s3cr3t-value");
        assert_eq!(resolved["MODE"], "fast");
        assert!(!scrubber.is_empty());
        assert!(!format!("{scrubber:?}").contains("s3cr3t"));
    }

    #[test]
    fn refuses_names_outside_the_allow_list_and_unset_ones() {
        let allow = vec!["EDGE_*".to_owned()];
        let err = check_env(&env(&[("T", "env:HOME")]), &allow, &host).expect_err("refused");
        assert!(
            err.contains("env var HOME is not in this node's Compute.Env.AllowList"),
            "{err}"
        );
        let err = check_env(&env(&[("T", "env:EDGE_MISSING")]), &allow, &host).expect_err("unset");
        assert!(
            err.contains("EDGE_MISSING") && err.contains("not set"),
            "{err}"
        );
        let err = check_env(&env(&[("T", "env:EDGE_TOKEN")]), &[], &host).expect_err("no list");
        assert!(err.contains("EDGE_TOKEN"), "{err}");
        check_env(&env(&[("T", "literal")]), &[], &host).expect("literals need no list");
    }

    #[test]
    fn scrubs_every_occurrence_and_ignores_short_values() {
        let s = Scrubber::new(vec!["hunter2".into(), "ab".into()]);
        assert_eq!(
            s.scrub(b"pw=hunter2 again hunter2hunter2 ab"),
            b"pw=*** again *** ab".to_vec()
        );
        let nested = Scrubber::new(vec!["abcd".into(), "xxabcdxx".into()]);
        assert_eq!(nested.scrub(b"1 xxabcdxx 2 abcd"), b"1 *** 2 ***".to_vec());
    }

    #[test]
    fn scrubs_files_across_read_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        let secret = "0123456789-secret";
        // Place secrets right across the 64 KiB read boundary and at the very end.
        let mut text = vec![b'a'; 64 * 1024 - 5];
        text.extend_from_slice(secret.as_bytes());
        text.extend_from_slice(b"\nmiddle\n");
        text.extend_from_slice(secret.as_bytes());
        std::fs::write(&path, &text).expect("write");
        Scrubber::new(vec![secret.into()])
            .scrub_file(&path)
            .expect("scrubbed");
        let out = std::fs::read(&path).expect("read");
        let mut want = vec![b'a'; 64 * 1024 - 5];
        want.extend_from_slice(b"***\nmiddle\n***");
        assert_eq!(out, want);
        assert!(!dir.path().join("stdout.scrubbing").exists());
    }

    #[test]
    fn live_reads_mask_in_place_and_hold_back_a_partial_secret() {
        let s = Scrubber::new(vec!["hunter2".into()]);
        // The offset (5) falls inside a secret that began before it: the part after the offset is masked too.
        assert_eq!(
            s.mask_live(b"xxhunter2 yy".to_vec(), 5, 100),
            b"**** yy".to_vec()
        );
        // A tail that may be the start of a secret waits for more output...
        assert_eq!(s.mask_live(b"out hunt".to_vec(), 0, 100), b"out ".to_vec());
        // ...but not when the chunk is cut short of what was read (the rest shows it is no secret).
        assert_eq!(
            s.mask_live(b"out hunt!".to_vec(), 0, 8),
            b"out hunt".to_vec()
        );
        // A secret across the chunk's end is masked in both reads.
        assert_eq!(s.mask_live(b"a hunter2".to_vec(), 0, 5), b"a ***".to_vec());
        assert_eq!(s.mask_live(b"a hunter2".to_vec(), 5, 100), b"****".to_vec());
    }
}
