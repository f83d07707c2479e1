//! Image references and content digests, parsed the way Docker parses them.
//!
//! A reference is `[REGISTRY[:PORT]/]PATH[:TAG][@DIGEST]`. Docker's normalisation applies: a first path
//! component is a registry only if it holds a `.` or a `:`, is `localhost`, or has an upper-case letter;
//! otherwise the registry is `docker.io`, and a one-component path on `docker.io` gains `library/`
//! (`busybox` → `docker.io/library/busybox:latest`). `index.docker.io` is spelled `docker.io`. A reference
//! with neither tag nor digest gets the tag `latest`; one with a digest keeps its tag only for display, since
//! the digest alone decides what is pulled.
//!
//! Only `sha256` digests are accepted: it is what every registry serves, and accepting an algorithm we could
//! not verify would let content in unchecked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// Docker Hub's canonical registry name.
const DOCKER_HUB: &str = "docker.io";
/// The most a full name (registry + path) may hold, as in Docker's reference grammar.
const MAX_NAME_LEN: usize = 255;
/// The most a tag may hold.
const MAX_TAG_LEN: usize = 128;
/// What the reference error messages show as a valid example.
const EXAMPLE: &str =
    "expected [REGISTRY[:PORT]/]NAME[:TAG][@sha256:HEX], e.g. docker.io/library/busybox:1.36";

/// A reference or digest that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The image reference is malformed.
    #[error("invalid image reference {input:?}: {reason} ({EXAMPLE})")]
    Reference {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The digest is malformed or uses an algorithm Cod cannot verify.
    #[error(
        "invalid digest {input:?}: {reason} (expected sha256: followed by 64 lower-case hex digits)"
    )]
    Digest {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A content digest (`sha256:<64 hex>`), validated on construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// The 64 lower-case hex digits; the algorithm is always sha256.
    hex: String,
}

// === impl Digest ===

impl Digest {
    /// The digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(sha2::Sha256::digest(bytes).into())
    }

    /// The digest whose raw sha256 value is `raw` (what a hasher's `finalize` returns).
    pub fn from_sha256(raw: [u8; 32]) -> Digest {
        let mut hex = String::with_capacity(64);
        for b in raw {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Digest { hex }
    }

    /// The algorithm (always `sha256`).
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The hex digits, suitable as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Parses bare hex digits (a file or key name) as a sha256 digest.
    pub fn from_hex(hex: &str) -> Result<Digest, ReferenceError> {
        validate_hex(hex).map_err(|reason| ReferenceError::Digest {
            input: hex.to_owned(),
            reason,
        })?;
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn validate_hex(hex: &str) -> Result<(), String> {
    if hex.len() != 64 {
        return Err(format!(
            "a sha256 digest has 64 hex digits, not {}",
            hex.len()
        ));
    }
    if let Some(c) = hex.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(format!("{c:?} is not a lower-case hex digit"));
    }
    Ok(())
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ReferenceError::Digest {
            input: s.to_owned(),
            reason,
        };
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| err("missing the algorithm prefix".into()))?;
        if algorithm != "sha256" {
            return Err(err(format!(
                "algorithm {algorithm:?} is not supported (only sha256 is)"
            )));
        }
        validate_hex(hex).map_err(err)?;
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A normalised image reference: registry, repository path, and a tag and/or a digest (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]`, lower-case; `docker.io` for Docker Hub.
    registry: String,
    /// The repository path, e.g. `library/busybox`.
    repository: String,
    /// The tag; `latest` when neither tag nor digest was given.
    tag: Option<String>,
    /// The manifest (or index) digest, when pinned.
    digest: Option<Digest>,
}

// === impl ImageRef ===

impl ImageRef {
    /// The registry, `host[:port]` (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The registry's host name or address without the port (an IPv6 address keeps its brackets).
    pub fn registry_host(&self) -> &str {
        split_port(&self.registry).0
    }

    /// The repository path within the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference is pinned.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository pinned to `digest` (the tag is dropped: the digest decides).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

/// Splits `host[:port]` (or `[v6]:port`) into host and optional port text.
fn split_port(domain: &str) -> (&str, Option<&str>) {
    if domain.starts_with('[') {
        return match domain.find(']') {
            Some(end) => match domain[end + 1..].strip_prefix(':') {
                Some(port) => (&domain[..=end], Some(port)),
                None => (domain, None),
            },
            None => (domain, None),
        };
    }
    match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    }
}

/// Checks a registry name: DNS-like labels or a bracketed IPv6 address, then an optional numeric port.
fn validate_domain(domain: &str) -> Result<(), String> {
    let (host, port) = split_port(domain);
    if let Some(port) = port
        && (port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) || port.len() > 5)
    {
        return Err(format!("registry port {port:?} is not a number"));
    }
    if let Some(v6) = host.strip_prefix('[') {
        let inner = v6
            .strip_suffix(']')
            .ok_or_else(|| format!("registry {domain:?} has an unclosed '['"))?;
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry {domain:?} is not a valid IPv6 address"));
        }
        return Ok(());
    }
    if host.is_empty() {
        return Err("the registry name is empty".into());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("registry name {host:?} is not a valid host name"));
        }
    }
    Ok(())
}

/// Checks one repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn validate_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("the repository path has an empty component".into());
    }
    if let Some(bad) = c
        .chars()
        .find(|ch| !matches!(ch, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return Err(if bad.is_ascii_uppercase() {
            format!("repository names must be lower-case ({c:?})")
        } else {
            format!("{bad:?} is not allowed in a repository name ({c:?})")
        });
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!(
            "repository component {c:?} must start and end with a letter or digit"
        ));
    }
    // Separators between alphanumeric runs: one '.', one or two '_', or any number of '-'.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!(
                "separator {sep:?} is not allowed in repository component {c:?}"
            ));
        }
    }
    Ok(())
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    match chars.next() {
        None => return Err("the tag is empty".into()),
        Some(first) if !word(first) => {
            return Err(format!(
                "tag {tag:?} must start with a letter, digit or '_'"
            ));
        }
        Some(_) => {}
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("the tag is longer than {MAX_TAG_LEN} characters"));
    }
    if let Some(bad) = chars.find(|&c| !(word(c) || c == '.' || c == '-')) {
        return Err(format!("{bad:?} is not allowed in tag {tag:?}"));
    }
    Ok(())
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ReferenceError::Reference {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(err("the reference is empty".into()));
        }
        if input.trim() != input || input.chars().any(char::is_whitespace) {
            return Err(err("the reference contains white space".into()));
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(digest.parse::<Digest>().map_err(|e| match e {
                    ReferenceError::Digest { reason, .. } => err(format!("bad digest: {reason}")),
                    other => other,
                })?),
            ),
            None => (input, None),
        };
        // Docker's rule for telling a registry from a first path component.
        let (domain, remainder) = match name_and_tag.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_ascii_lowercase(), rest)
            }
            _ => (DOCKER_HUB.to_owned(), name_and_tag),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            domain
        };
        validate_domain(&domain).map_err(err)?;
        // Path components cannot hold ':', so a ':' after the last '/' starts the tag.
        let (path, tag) = match remainder.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
            _ => (remainder, None),
        };
        if path.is_empty() {
            return Err(err("the repository name is empty".into()));
        }
        for component in path.split('/') {
            validate_component(component).map_err(err)?;
        }
        if let Some(tag) = tag {
            validate_tag(tag).map_err(err)?;
        }
        let repository = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if domain.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(err(format!(
                "the name is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry: domain,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> ImageRef {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/img", "docker.io/user/img:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("ghcr.io/a/b/c:v1", "ghcr.io/a/b/c:v1"),
            ("host:5000/a/b:tag", "host:5000/a/b:tag"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("127.0.0.1:5000/x:y", "127.0.0.1:5000/x:y"),
            ("[::1]:5000/x", "[::1]:5000/x:latest"),
            ("Registry/x", "registry/x:latest"),
            ("a__b/c-d--e/f.g_h", "docker.io/a__b/c-d--e/f.g_h:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).to_string(), want, "{input}");
        }
    }

    #[test]
    fn digests_pin_and_keep_a_given_tag_only_for_display() {
        let r = parse(&format!("busybox@sha256:{HEX64}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(Digest::hex), Some(HEX64));
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox@sha256:{HEX64}")
        );
        let both = parse(&format!("host:5000/a:1.0@sha256:{HEX64}"));
        assert_eq!(both.tag(), Some("1.0"));
        assert_eq!(both.registry(), "host:5000");
        assert_eq!(both.registry_host(), "host");
        assert_eq!(both.to_string(), format!("host:5000/a:1.0@sha256:{HEX64}"));
        let pinned = both.with_digest(Digest::sha256_of(b""));
        assert_eq!(pinned.tag(), None);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "busybox",
            "host:5000/a/b:tag",
            &format!("a/b:c@sha256:{HEX64}"),
            "[::1]:5000/x",
        ] {
            let once = parse(s);
            assert_eq!(parse(&once.to_string()), once, "{s}");
        }
    }

    #[test]
    fn rejects_invalid_references_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("Busybox", "lower-case"),
            ("docker.io/Busybox", "lower-case"),
            ("busybox:", "tag is empty"),
            ("busybox:-x", "must start"),
            ("busybox:a/b", "not a number"),
            ("busybox:a@b", "algorithm prefix"),
            ("x/busybox:a:b", "not allowed"),
            ("a//b", "empty component"),
            ("a/b/", "empty component"),
            ("-a", "start and end"),
            ("a...b", "separator"),
            ("a___b", "separator"),
            ("busybox@sha256:abc", "64 hex digits"),
            ("busybox@sha512:abc", "not supported"),
            ("busybox@md5", "algorithm prefix"),
            (
                &format!("busybox@sha256:{}", HEX64.to_uppercase()),
                "hex digit",
            ),
            ("host:port/x", "not a number"),
            ("bad_host.com/x", "host name"),
            ("[zz]:5000/x", "IPv6"),
            ("a b", "white space"),
            (&format!("busybox:{}", "a".repeat(129)), "longer than 128"),
            (&format!("x.io/{}", "a".repeat(260)), "longer than 255"),
        ];
        for (input, fragment) in cases {
            let e = input
                .parse::<ImageRef>()
                .expect_err(&format!("{input:?} must not parse"));
            let msg = e.to_string();
            assert!(msg.contains(fragment), "{input:?}: {msg}");
            assert!(msg.contains("e.g. docker.io/library/busybox"), "{msg}");
        }
    }

    #[test]
    fn digest_parses_validates_and_serialises_as_a_string() {
        let d: Digest = format!("sha256:{HEX64}").parse().expect("digest");
        assert_eq!(d.hex(), HEX64);
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(Digest::from_hex(HEX64).expect("hex"), d);
        let json = serde_json::to_string(&d).expect("json");
        assert_eq!(json, format!("\"sha256:{HEX64}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("back"), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
        assert!(Digest::from_hex("xyz").is_err());
        // The well-known digest of the empty string.
        assert_eq!(
            Digest::sha256_of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// `regex` is regex-lite behind regex's API (cross/regex-on-lite): the patterns of the dependencies that
    /// cod reaches still compile and match. oci-spec unwraps its reference grammar when first used, so a
    /// pattern regex-lite rejected would panic the node, not fail a job.
    #[test]
    fn dependencies_regexes_work_on_regex_lite() {
        use oci_spec::distribution::Reference;
        let r = Reference::try_from(
            format!("localhost:5000/team/app_1:v1.2-rc@sha256:{HEX64}").as_str(),
        )
        .expect("reference");
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "team/app_1");
        assert_eq!(r.tag(), Some("v1.2-rc"));
        assert_eq!(r.digest(), Some(format!("sha256:{HEX64}").as_str()));
        assert!(Reference::try_from("busybox").is_ok());
        // Upper case is not a repository; a tag is ASCII `\w`, as in the distribution grammar (Go's regexp).
        assert!(Reference::try_from("docker.io/Library/busybox").is_err());
        assert!(Reference::try_from("busybox:vé").is_err());

        let affinity = |s: &str| {
            serde_json::from_str::<oci_spec::runtime::ExecCPUAffinity>(&format!(
                r#"{{"initial":"{s}"}}"#
            ))
        };
        assert!(affinity("0-3,7").is_ok());
        assert!(affinity("0-3,x").is_err());
    }
}
