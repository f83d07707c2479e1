//! The glob patterns of the compute policy (`Compute.Policy.ImageAllowList`, `Compute.Env.AllowList`).
//!
//! `*` matches any run of characters except `/`, `**` any run including `/`, `?` one character other than
//! `/`; everything else matches itself, case-sensitively. No character classes or braces: an allow-list
//! entry should read as what it admits, and a pattern that parses differently than it looks admits too much.
//! Matching is whole-string (a pattern is anchored at both ends).

/// True when `pattern` matches all of `text`.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    matches_from(pattern.as_bytes(), text.as_bytes())
}

/// Backtracking matcher; patterns are short operator-written entries, so the worst case (nested stars over a
/// long text) stays small in practice: each star tries each remaining position once per outer attempt.
fn matches_from(p: &[u8], t: &[u8]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some(b'*') => {
            let (crosses_slash, rest) = match p.get(1) {
                Some(b'*') => (true, &p[2..]),
                _ => (false, &p[1..]),
            };
            for i in 0..=t.len() {
                if matches_from(rest, &t[i..]) {
                    return true;
                }
                if i < t.len() && t[i] == b'/' && !crosses_slash {
                    return false;
                }
            }
            false
        }
        Some(b'?') => t.first().is_some_and(|c| *c != b'/') && matches_from(&p[1..], &t[1..]),
        Some(c) => t.first() == Some(c) && matches_from(&p[1..], &t[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(matches("EDGE_TOKEN", "EDGE_TOKEN"));
        assert!(!matches("EDGE_TOKEN", "EDGE_TOKEN2"));
        assert!(!matches("EDGE_TOKEN", "edge_token"));
        assert!(matches("", ""));
        assert!(!matches("", "A"));
    }

    #[test]
    fn star_stays_within_one_path_component() {
        assert!(matches("EDGE_*", "EDGE_TOKEN"));
        assert!(matches("EDGE_*", "EDGE_"));
        assert!(matches("docker.io/library/*", "docker.io/library/alpine"));
        assert!(!matches("docker.io/library/*", "docker.io/library/a/b"));
        assert!(!matches("docker.io/*", "docker.io/library/alpine"));
        assert!(matches("*/x", "host/x"));
        assert!(!matches("*/x", "a/b/x"));
    }

    #[test]
    fn double_star_crosses_slashes() {
        assert!(matches("registry:5000/**", "registry:5000/team/app/worker"));
        assert!(matches("**", "anything/at/all"));
        assert!(matches("a/**/z", "a/b/c/z"));
        assert!(!matches("registry:5000/**", "registry:50001/x"));
    }

    #[test]
    fn question_mark_is_one_character_but_not_a_slash() {
        assert!(matches("alpine:3.2?", "alpine:3.20"));
        assert!(!matches("alpine:3.2?", "alpine:3.2"));
        assert!(!matches("a?b", "a/b"));
    }
}
