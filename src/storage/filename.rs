//! File names taken from untrusted input (a URL's last segment, a `Content-Disposition` header, a `data:` URL's
//! `name=` parameter). The result is always a single path component, so joining it to a scratch directory can
//! never leave that directory.

/// The longest name most filesystems accept, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Turns `raw` into a safe single file name, or `None` when nothing usable is left.
///
/// Separators (`/`, `\`), NUL and other control characters become `_` (rather than being dropped) so that
/// `a/b` stays recognizable as `a_b`; `.` and `..` are refused because they name directories, and the result is
/// cut to 255 bytes on a character boundary.
pub(crate) fn sanitize(raw: &str) -> Option<String> {
    let mut name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some(name)
}

/// Decodes `%XX` escapes. Invalid escapes are kept as they are, as browsers do, because a slightly odd name is
/// better than refusing the input over it.
pub(crate) fn percent_decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex_value(*b)),
                bytes.get(i + 2).and_then(|b| hex_value(*b)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_plain_names() {
        assert_eq!(sanitize("data.csv").as_deref(), Some("data.csv"));
    }

    #[test]
    fn replaces_separators_and_refuses_dot_names() {
        assert_eq!(sanitize("../etc/passwd").as_deref(), Some(".._etc_passwd"));
        assert_eq!(sanitize("a\\b\0c").as_deref(), Some("a_b_c"));
        assert_eq!(sanitize(".."), None);
        assert_eq!(sanitize("."), None);
        assert_eq!(sanitize("  "), None);
    }

    #[test]
    fn cuts_long_names_on_a_char_boundary() {
        let long = "é".repeat(200);
        let name = sanitize(&long).expect("name");
        assert!(name.len() <= MAX_NAME_BYTES);
        assert!(name.chars().all(|c| c == 'é'));
    }

    #[test]
    fn percent_decodes_and_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc"), b"a b/c");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz"), b"%zz");
    }
}
