//! API passwords as `API.Auth.Users[].Password` holds them: plain text, or a bcrypt hash (`$2a$`, `$2b$`,
//! `$2y$`) as Bacalhau's and Cod's `auth hash-password` print, so a hash made by either works in both.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Shortest plain password Bacalhau accepts.
const MIN_PASSWORD: usize = 10;
/// Longest password Bacalhau accepts.
const MAX_PASSWORD: usize = 255;
/// bcrypt cost of new hashes: 10, Go's `bcrypt.DefaultCost` that Bacalhau's `hash-password` uses. Measured
/// on the 2-core build machine (release): a check at cost 12 (the Rust crate's default) takes ~0.6 s, at 10
/// ~0.1 s, and a few times that on a small board; checks of an unchanged password are cached by the
/// authenticator, so only the first login (or a wrong password) pays it.
pub const HASH_COST: u32 = 10;

/// A stored password.
#[derive(Clone)]
pub enum Password {
    /// Compared in constant time.
    Plain(Secret),
    /// A bcrypt hash; checking costs what its cost factor says.
    Bcrypt(Secret),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Plain(<redacted>)",
            Self::Bcrypt(_) => "Bcrypt(<redacted>)",
        })
    }
}

impl Password {
    /// Reads a configured password; the error says what to fix.
    pub fn parse(value: &Secret) -> Result<Self, String> {
        let text = value.expose();
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) {
            // Checked now, so a truncated hash fails at start and not at the first login.
            text.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("Password looks like a bcrypt hash but is not valid ({e})"))?;
            return Ok(Self::Bcrypt(value.clone()));
        }
        let len = text.chars().count();
        if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&len) {
            return Err(format!(
                "Password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long (or a bcrypt hash \
                 from `cod auth hash-password`)"
            ));
        }
        Ok(Self::Plain(value.clone()))
    }

    /// Whether `given` is this password. Blocking for bcrypt.
    pub fn matches(&self, given: &str) -> bool {
        match self {
            // Digests, so neither the content nor the length shows in the time taken.
            Self::Plain(p) => {
                let digest = |s: &str| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
                bool::from(digest(p.expose()).ct_eq(&digest(given)))
            }
            Self::Bcrypt(h) => bcrypt::verify(given, h.expose()).unwrap_or(false),
        }
    }
}

/// Hashes `password` for the config file (`cod auth hash-password`).
pub fn hash(password: &str) -> Result<String, String> {
    let len = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&len) {
        return Err(format!(
            "the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long"
        ));
    }
    bcrypt::hash(password, HASH_COST).map_err(|e| format!("hashing failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_parse_back() {
        let h = bcrypt::hash("a fine password", 4).expect("hash");
        let p = Password::parse(&Secret::new(h)).expect("parses");
        assert!(matches!(p, Password::Bcrypt(_)));
        assert!(p.matches("a fine password"));
        assert!(!p.matches("a fine passwore"));
        assert!(Password::parse(&Secret::new("$2b$10$truncated")).is_err());
        assert!(hash("short").is_err());
    }

    #[test]
    fn plain_passwords_compare_exactly() {
        let p = Password::parse(&Secret::new("0123456789")).expect("parses");
        assert!(p.matches("0123456789"));
        assert!(!p.matches("012345678"));
        assert!(!p.matches("0123456789 "));
    }
}
