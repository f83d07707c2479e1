//! Who may call the API, and what they may do: Bacalhau v1.7's `API.Auth.Users` (API keys and Basic-auth
//! users, each with capabilities), checked per request.
//!
//! It owns the parsed users and the decision; the HTTP side (headers, status codes, open paths) is
//! `api::auth`. Invariants: secrets are compared in constant time and never logged or returned; a bcrypt
//! check (deliberately slow) never runs on a runtime worker; an empty user list never means "allow all"
//! ([`Access`] says explicitly when the API is open).
//!
//! Layout: this file holds actions, capabilities and the [`Authenticator`]; [`password`] the password forms
//! (plain or bcrypt); [`token_file`] the generated admin key of a node that has no users.

pub mod password;
pub mod token_file;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ApiAuthConfig, ApiUserConfig, Secret};
use password::Password;

/// Shortest API key Bacalhau accepts.
const MIN_API_KEY: usize = 20;
/// Longest API key or password Bacalhau accepts.
const MAX_SECRET: usize = 255;

/// Read or change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET (and HEAD).
    Read,
    /// Everything else.
    Write,
}

/// What a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/api/v1/orchestrator/jobs…`
    Job,
    /// `/api/v1/orchestrator/nodes…`
    Node,
    /// `/api/v1/agent/…` and anything else.
    Agent,
}

/// One action, such as `write:job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// Read or write.
    pub verb: Verb,
    /// On what.
    pub resource: Resource,
}

impl Action {
    /// The bit of this action in a [`Capabilities`] set.
    fn bit(self) -> u8 {
        let verb = match self.verb {
            Verb::Read => 0,
            Verb::Write => 1,
        };
        let resource = match self.resource {
            Resource::Job => 0,
            Resource::Node => 2,
            Resource::Agent => 4,
        };
        1 << (verb + resource)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.verb {
            Verb::Read => "read",
            Verb::Write => "write",
        };
        let resource = match self.resource {
            Resource::Job => "job",
            Resource::Node => "node",
            Resource::Agent => "agent",
        };
        write!(f, "{verb}:{resource}")
    }
}

const VERBS: [Verb; 2] = [Verb::Read, Verb::Write];
const RESOURCES: [Resource; 3] = [Resource::Job, Resource::Node, Resource::Agent];

/// A set of allowed actions (six bits: one per verb and resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities(u8);

impl Capabilities {
    /// Every action (`admin`, `*`).
    pub const ALL: Self = Self(0b11_1111);

    /// Whether `action` is allowed.
    pub fn allows(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    /// Parses one action pattern: `verb:resource` with `*` for either half, `*`, or a shorthand: `read`
    /// (every read action), `submit` (read + `write:job`), `admin` (everything). Case-insensitive.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let p = pattern.trim().to_ascii_lowercase();
        let matching = |verb: Option<Verb>, resource: Option<Resource>| {
            let mut set = 0;
            for v in VERBS {
                for r in RESOURCES {
                    if verb.is_none_or(|x| x == v) && resource.is_none_or(|x| x == r) {
                        set |= Action {
                            verb: v,
                            resource: r,
                        }
                        .bit();
                    }
                }
            }
            Self(set)
        };
        match p.as_str() {
            "*" | "admin" => return Ok(Self::ALL),
            "read" => return Ok(matching(Some(Verb::Read), None)),
            "submit" => {
                return Ok(Self(
                    matching(Some(Verb::Read), None).0
                        | matching(Some(Verb::Write), Some(Resource::Job)).0,
                ));
            }
            _ => {}
        }
        let bad = || {
            format!(
                "unknown action {pattern:?} (use read:job, write:job, read:node, write:node, read:agent, \
                 write:agent, `*` for either half, or read, submit, admin)"
            )
        };
        let (verb, resource) = p.split_once(':').ok_or_else(bad)?;
        let verb = match verb {
            "*" => None,
            "read" => Some(Verb::Read),
            "write" => Some(Verb::Write),
            _ => return Err(bad()),
        };
        let resource = match resource {
            "*" => None,
            "job" => Some(Resource::Job),
            "node" => Some(Resource::Node),
            "agent" => Some(Resource::Agent),
            _ => return Err(bad()),
        };
        Ok(matching(verb, resource))
    }

    fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// A credential as a request carries it.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <key>`.
    Bearer(String),
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

/// Who a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's alias, for logs.
    pub alias: String,
    /// What the user may do.
    pub capabilities: Capabilities,
}

/// A problem in `API.Auth`, naming the user and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("API.Auth.Users[{index}] ({alias}): {reason}")]
pub struct AuthConfigError {
    /// Position in the list.
    pub index: usize,
    /// The user's alias (or "no alias").
    pub alias: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// One configured user, parsed.
struct User {
    alias: String,
    login: Login,
    capabilities: Capabilities,
}

/// How a user proves who they are: exactly one of the two (Bacalhau allows one per user).
enum Login {
    /// SHA-256 of the key: compared in constant time, and the same length whatever the key's.
    ApiKey([u8; 32]),
    Basic {
        username: String,
        password: Password,
    },
}

/// Checks credentials against the configured users.
pub struct Authenticator {
    /// The users, in configuration order.
    users: Vec<User>,
    /// SHA-256 of the last password that passed its bcrypt check, per user name: a CLI polling a job sends
    /// the same password many times a second, and bcrypt is meant to cost ~0.1 s each time. A changed
    /// password misses and goes through bcrypt again.
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let aliases: Vec<&str> = self.users.iter().map(|u| u.alias.as_str()).collect();
        f.debug_struct("Authenticator")
            .field("users", &aliases)
            .finish_non_exhaustive()
    }
}

// === impl Authenticator ===

impl Authenticator {
    /// Parses and validates `API.Auth.Users`, reporting every problem of the first bad user.
    pub fn from_config(config: &ApiAuthConfig) -> Result<Self, AuthConfigError> {
        let users = config
            .users
            .iter()
            .enumerate()
            .map(|(index, u)| parse_user(index, u))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(users))
    }

    /// One admin user holding `key`: the generated key of [`token_file`].
    pub fn single_admin_key(alias: &str, key: &Secret) -> Self {
        Self::new(vec![User {
            alias: alias.to_owned(),
            login: Login::ApiKey(sha256(key.expose())),
            capabilities: Capabilities::ALL,
        }])
    }

    fn new(users: Vec<User>) -> Self {
        Self {
            users,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any user logs in with a user name and password.
    pub fn has_basic_users(&self) -> bool {
        self.users
            .iter()
            .any(|u| matches!(u.login, Login::Basic { .. }))
    }

    /// Whether any user logs in with an API key.
    pub fn has_api_keys(&self) -> bool {
        self.users
            .iter()
            .any(|u| matches!(u.login, Login::ApiKey(_)))
    }

    /// The user `credential` belongs to, or `None` when it matches nobody. Blocking: a bcrypt check takes
    /// tens to hundreds of milliseconds, so async callers run this on the blocking pool.
    pub fn authenticate(&self, credential: &Credential) -> Option<Principal> {
        let user = match credential {
            Credential::Bearer(key) => {
                let given = sha256(key);
                // Every key is compared, so the time taken does not say which user (if any) matched.
                let mut found = None;
                for user in &self.users {
                    if let Login::ApiKey(hash) = &user.login
                        && bool::from(hash.ct_eq(&given))
                    {
                        found = Some(user);
                    }
                }
                found
            }
            Credential::Basic { username, password } => {
                let named = self.users.iter().find(
                    |u| matches!(&u.login, Login::Basic { username: name, .. } if name == username),
                );
                match named {
                    Some(u) => match &u.login {
                        Login::Basic {
                            username: name,
                            password: stored,
                        } => self.password_matches(name, stored, password).then_some(u),
                        Login::ApiKey(_) => None,
                    },
                    None => {
                        // An unknown name costs what a wrong password costs, so timing does not tell which
                        // user names exist: check against some bcrypt hash and drop the answer.
                        if let Some(Login::Basic {
                            password: stored, ..
                        }) = self.users.iter().map(|u| &u.login).find(|l| {
                            matches!(
                                l,
                                Login::Basic {
                                    password: Password::Bcrypt(_),
                                    ..
                                }
                            )
                        }) {
                            let _ = stored.matches(password);
                        }
                        None
                    }
                }
            }
        }?;
        Some(Principal {
            alias: user.alias.clone(),
            capabilities: user.capabilities,
        })
    }

    fn password_matches(&self, username: &str, stored: &Password, given: &str) -> bool {
        let Password::Bcrypt(_) = stored else {
            return stored.matches(given);
        };
        let digest = sha256(given);
        let cached = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(username).copied());
        if cached.is_some_and(|c| bool::from(c.ct_eq(&digest))) {
            return true;
        }
        let ok = stored.matches(given);
        if ok && let Ok(mut m) = self.verified.lock() {
            m.insert(username.to_owned(), digest);
        }
        ok
    }
}

fn parse_user(index: usize, u: &ApiUserConfig) -> Result<User, AuthConfigError> {
    let alias = if u.alias.trim().is_empty() {
        if u.username.is_empty() {
            format!("user-{index}")
        } else {
            u.username.clone()
        }
    } else {
        u.alias.trim().to_owned()
    };
    let err = |reason: String| AuthConfigError {
        index,
        alias: alias.clone(),
        reason,
    };
    let has_basic = !u.username.is_empty() || !u.password.is_empty();
    let login = match (has_basic, u.api_key.is_empty()) {
        (true, false) => {
            return Err(err(
                "set either Username and Password, or APIKey, not both (make two users)".into(),
            ));
        }
        (false, true) => return Err(err("set Username and Password, or APIKey".into())),
        (false, false) => {
            let len = u.api_key.expose().chars().count();
            if !(MIN_API_KEY..=MAX_SECRET).contains(&len) {
                return Err(err(format!(
                    "APIKey must be {MIN_API_KEY} to {MAX_SECRET} characters long"
                )));
            }
            Login::ApiKey(sha256(u.api_key.expose()))
        }
        (true, true) => {
            if u.username.is_empty() || !u.username.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(err(
                    "Username must be letters and digits only (and not empty)".into(),
                ));
            }
            Login::Basic {
                username: u.username.clone(),
                password: Password::parse(&u.password).map_err(err)?,
            }
        }
    };
    let mut capabilities = Capabilities::default();
    for action in u.capabilities.iter().flat_map(|c| &c.actions) {
        capabilities = capabilities.union(Capabilities::parse(action).map_err(err)?);
    }
    if capabilities == Capabilities::default() {
        return Err(err(
            "no Capabilities: give at least one action, e.g. Capabilities: [{Actions: [read]}]"
                .into(),
        ));
    }
    Ok(User {
        alias,
        login,
        capabilities,
    })
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// How the API decides who may call it, chosen once at start.
#[derive(Debug)]
pub enum Access {
    /// Anyone who can connect may do anything.
    Open(OpenReason),
    /// Only the configured (or generated) users, within their capabilities.
    Users(Authenticator),
}

/// Why an API is open, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenReason {
    /// It listens on loopback only and has no users: only this machine can reach it.
    Loopback,
    /// `API.Auth.Disabled`.
    Disabled,
}

/// What the API must do given its configuration and listen host; the node acts on it (a [`Mode::TokenFile`]
/// becomes an [`Access::Users`] once the key is on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No credentials needed.
    Open(OpenReason),
    /// The configured users.
    Users,
    /// Reachable from other machines with no users: a generated admin key.
    TokenFile,
}

/// Chooses the [`Mode`]: users win; with none, `Disabled` opens the API, a loopback-only host stays open,
/// and anything else (`0.0.0.0`, a LAN address, a host name) gets a generated admin key.
pub fn mode(config: &ApiAuthConfig, host: &str) -> Mode {
    if !config.users.is_empty() {
        Mode::Users
    } else if config.disabled {
        Mode::Open(OpenReason::Disabled)
    } else if is_loopback_host(host) {
        Mode::Open(OpenReason::Loopback)
    } else {
        Mode::TokenFile
    }
}

/// Whether a listen host accepts connections from this machine only. Host names other than `localhost`
/// may resolve anywhere, so they do not count.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiCapabilityConfig;

    fn action(verb: Verb, resource: Resource) -> Action {
        Action { verb, resource }
    }

    fn user(alias: &str, key: &str, actions: &[&str]) -> ApiUserConfig {
        ApiUserConfig {
            alias: alias.into(),
            api_key: Secret::new(key),
            capabilities: vec![ApiCapabilityConfig {
                actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn shorthands_and_wildcards_expand_to_actions() {
        let read = Capabilities::parse("read").expect("read");
        assert!(read.allows(action(Verb::Read, Resource::Node)));
        assert!(!read.allows(action(Verb::Write, Resource::Job)));
        let submit = Capabilities::parse("submit").expect("submit");
        assert!(submit.allows(action(Verb::Write, Resource::Job)));
        assert!(!submit.allows(action(Verb::Write, Resource::Node)));
        let nodes = Capabilities::parse("*:node").expect("*:node");
        assert!(nodes.allows(action(Verb::Write, Resource::Node)));
        assert!(!nodes.allows(action(Verb::Read, Resource::Job)));
        assert_eq!(Capabilities::parse("ADMIN"), Ok(Capabilities::ALL));
        assert_eq!(
            Capabilities::parse("write:*").map(|c| c.0.count_ones()),
            Ok(3)
        );
        let err = Capabilities::parse("write:jobs").expect_err("typo");
        assert!(err.contains("read:job"), "{err}");
    }

    #[test]
    fn api_keys_authenticate_their_user_only() {
        let config = ApiAuthConfig {
            users: vec![
                user("reader", "reader-key-0123456789", &["read"]),
                user("ops", "ops-key-0123456789abcd", &["read:*", "write:job"]),
            ],
            ..Default::default()
        };
        let auth = Authenticator::from_config(&config).expect("valid");
        let who = auth
            .authenticate(&Credential::Bearer("ops-key-0123456789abcd".into()))
            .expect("ops");
        assert_eq!(who.alias, "ops");
        assert!(who.capabilities.allows(action(Verb::Write, Resource::Job)));
        assert!(
            auth.authenticate(&Credential::Bearer("ops-key-0123456789abc".into()))
                .is_none()
        );
        assert!(auth.has_api_keys() && !auth.has_basic_users());
    }

    #[test]
    fn basic_users_with_plain_and_bcrypt_passwords() {
        let hash = bcrypt::hash("correct horse battery", 4).expect("hash");
        let config = ApiAuthConfig {
            users: vec![
                ApiUserConfig {
                    alias: "alice".into(),
                    username: "alice".into(),
                    password: Secret::new("plain-password-1"),
                    capabilities: vec![ApiCapabilityConfig {
                        actions: vec!["admin".into()],
                    }],
                    ..Default::default()
                },
                ApiUserConfig {
                    username: "bob".into(),
                    password: Secret::new(hash),
                    capabilities: vec![ApiCapabilityConfig {
                        actions: vec!["read:job".into()],
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let auth = Authenticator::from_config(&config).expect("valid");
        let basic = |u: &str, p: &str| Credential::Basic {
            username: u.into(),
            password: p.into(),
        };
        assert!(
            auth.authenticate(&basic("alice", "plain-password-1"))
                .is_some()
        );
        assert!(
            auth.authenticate(&basic("alice", "plain-password-2"))
                .is_none()
        );
        // Twice: the second answer comes from the verified cache and must agree.
        for _ in 0..2 {
            let bob = auth
                .authenticate(&basic("bob", "correct horse battery"))
                .expect("bob");
            assert_eq!(bob.alias, "bob");
        }
        assert!(
            auth.authenticate(&basic("bob", "wrong horse battery"))
                .is_none()
        );
        assert!(
            auth.authenticate(&basic("carol", "plain-password-1"))
                .is_none()
        );
    }

    #[test]
    fn invalid_users_are_rejected_naming_the_user() {
        let bad = |u: ApiUserConfig| {
            Authenticator::from_config(&ApiAuthConfig {
                users: vec![u],
                ..Default::default()
            })
            .expect_err("invalid")
            .to_string()
        };
        assert!(bad(user("short", "too-short", &["read"])).contains("20 to 255"));
        assert!(bad(user("none", "a-long-enough-api-key-000", &[])).contains("no Capabilities"));
        let mut both = user("both", "a-long-enough-api-key-000", &["read"]);
        both.username = "x".into();
        both.password = Secret::new("0123456789");
        assert!(bad(both).contains("not both"));
        let err = bad(ApiUserConfig {
            alias: "pw".into(),
            username: "pw".into(),
            password: Secret::new("short"),
            capabilities: vec![ApiCapabilityConfig {
                actions: vec!["read".into()],
            }],
            ..Default::default()
        });
        assert!(err.starts_with("API.Auth.Users[0] (pw)"), "{err}");
        assert!(err.contains("10 to 255"), "{err}");
    }

    #[test]
    fn modes_follow_users_disabled_and_the_listen_host() {
        let none = ApiAuthConfig::default();
        assert_eq!(mode(&none, "127.0.0.1"), Mode::Open(OpenReason::Loopback));
        assert_eq!(mode(&none, "::1"), Mode::Open(OpenReason::Loopback));
        assert_eq!(mode(&none, "localhost"), Mode::Open(OpenReason::Loopback));
        assert_eq!(mode(&none, "0.0.0.0"), Mode::TokenFile);
        assert_eq!(mode(&none, "192.168.1.7"), Mode::TokenFile);
        assert_eq!(mode(&none, "edge.local"), Mode::TokenFile);
        let disabled = ApiAuthConfig {
            disabled: true,
            ..Default::default()
        };
        assert_eq!(mode(&disabled, "0.0.0.0"), Mode::Open(OpenReason::Disabled));
        let users = ApiAuthConfig {
            users: vec![user("a", "a-long-enough-api-key-000", &["read"])],
            ..Default::default()
        };
        assert_eq!(mode(&users, "127.0.0.1"), Mode::Users);
    }

    #[test]
    fn users_load_from_yaml_in_bacalhaus_shape_with_any_key_case() {
        let yaml = r#"
api:
  auth:
    users:
      - alias: ci
        apikey: ci-key-0123456789abcdefgh
        capabilities: [{actions: [submit]}]
"#;
        let value = crate::model::ci::parse_document(yaml).expect("yaml");
        let config: crate::config::Config = crate::model::ci::from_value(value).expect("config");
        let auth = Authenticator::from_config(&config.api.auth).expect("valid");
        let who = auth
            .authenticate(&Credential::Bearer("ci-key-0123456789abcdefgh".into()))
            .expect("ci");
        assert_eq!(who.alias, "ci");
        // `cod agent config` and /api/v1/agent/config print the key redacted.
        let shown = serde_json::to_string(&config).expect("json");
        assert!(!shown.contains("ci-key-0123"), "{shown}");
    }

    #[test]
    fn credentials_never_print_their_secret() {
        let text = format!(
            "{:?} {:?}",
            Credential::Bearer("key-material".into()),
            Credential::Basic {
                username: "u".into(),
                password: "pw-material".into()
            }
        );
        assert!(!text.contains("material"), "{text}");
    }
}
