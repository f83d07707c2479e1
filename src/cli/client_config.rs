//! The CLI's own config file: where the API is and how to reach it, for users who would rather not export
//! variables in every shell.
//!
//! `$COD_CLIENT_CONFIG`, else `~/.cod/client.yaml` (YAML or JSON, keys matched case-insensitively as
//! everywhere in Cod):
//!
//! ```yaml
//! API:
//!   Host: orchestrator.example
//!   Port: 1234
//!   Auth: {APIKey: "…"}              # or Username + Password
//!   TLS: {UseTLS: true, CAFile: /etc/cod/ca.pem, Insecure: false}
//! ```
//!
//! Each key stands in for one environment variable (`API.Auth.APIKey` for `COD_API_KEY` …), consulted only
//! when that variable is unset, so flags beat the environment, which beats the file, which beats the node's
//! generated token file. Layering through the same names keeps one precedence rule for all of them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::UsageError;

/// Which variable each file key stands for.
const KEYS: &[(&[&str], &str)] = &[
    (&["API", "Host"], "COD_API_HOST"),
    (&["API", "Port"], "COD_API_PORT"),
    (&["API", "Auth", "APIKey"], "COD_API_KEY"),
    (&["API", "Auth", "Username"], "COD_API_USERNAME"),
    (&["API", "Auth", "Password"], "COD_API_PASSWORD"),
    (&["API", "TLS", "UseTLS"], "COD_API_TLS"),
    (&["API", "TLS", "CAFile"], "COD_API_CACERT"),
    (&["API", "TLS", "Insecure"], "COD_API_TLS_INSECURE"),
];

/// Where the file is: `$COD_CLIENT_CONFIG` (which must then exist), else `<home>/.cod/client.yaml`.
pub fn path(env: impl Fn(&str) -> Option<String>) -> (PathBuf, bool) {
    match env("COD_CLIENT_CONFIG").filter(|p| !p.trim().is_empty()) {
        Some(p) => (PathBuf::from(p), true),
        None => (crate::config::default_data_dir().join("client.yaml"), false),
    }
}

/// The file's values under the variable names they stand for; empty when the default file does not exist.
pub fn load(path: &Path, required: bool) -> Result<HashMap<&'static str, String>, UsageError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(HashMap::new());
        }
        Err(e) => {
            return Err(UsageError::new(format!(
                "cannot read the client config {}: {e}",
                path.display()
            )));
        }
    };
    let values = parse(&text)
        .map_err(|e| UsageError::new(format!("client config {}: {e}", path.display())))?;
    let secret = values.contains_key("COD_API_KEY") || values.contains_key("COD_API_PASSWORD");
    if secret
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        // Like ssh with a private key: say so, since others on the machine can read the credential.
        eprintln!(
            "warning: {} holds a credential and other users can read it; run chmod 600 on it",
            path.display()
        );
    }
    Ok(values)
}

fn parse(text: &str) -> Result<HashMap<&'static str, String>, String> {
    let root: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (key_path, var) in KEYS {
        let Some(value) = lookup(&root, key_path) else {
            continue;
        };
        let text = match value {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(format!(
                    "{} must be a string, number or boolean",
                    key_path.join(".")
                ));
            }
        };
        out.insert(*var, text);
    }
    Ok(out)
}

/// Follows `path` through nested maps, matching keys case-insensitively.
fn lookup<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(root, |node, key| {
        node.as_mapping()?
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(key)))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keys_case_insensitively_to_their_variables() {
        let values = parse(
            "api:\n  host: orch.example\n  PORT: 4321\n  auth: {apikey: k-123}\n  tls: {usetls: true, cafile: /ca.pem}\n",
        )
        .expect("parses");
        assert_eq!(values["COD_API_HOST"], "orch.example");
        assert_eq!(values["COD_API_PORT"], "4321");
        assert_eq!(values["COD_API_KEY"], "k-123");
        assert_eq!(values["COD_API_TLS"], "true");
        assert_eq!(values["COD_API_CACERT"], "/ca.pem");
        assert!(!values.contains_key("COD_API_USERNAME"));
    }

    #[test]
    fn refuses_nested_values_and_missing_named_files() {
        let err = parse("API: {Port: [1]}").expect_err("a list is no port");
        assert!(err.contains("API.Port"), "{err}");
        let missing = Path::new("/nonexistent/client.yaml");
        assert!(load(missing, false).expect("optional").is_empty());
        let err = load(missing, true).expect_err("named files must exist");
        assert!(
            err.to_string().contains("/nonexistent/client.yaml"),
            "{err}"
        );
    }
}
