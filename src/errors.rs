//! Error text for people: an error and its causes on one line.

/// `error: cause: cause…` (thiserror messages do not repeat their source, so each part appears once). Used
/// in logs, API error bodies and the reasons executions fail with.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot save")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_every_cause() {
        let e = Outer(std::io::Error::other("disk gone"));
        assert_eq!(super::chain(&e), "cannot save: disk gone");
    }
}
