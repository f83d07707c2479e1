//! Typed forms of the `SpecConfig` plug-in configurations: engines, input sources, publishers. Parsing happens
//! here, once; everything downstream matches on these enums, never on type strings.

use serde::Deserialize;
use serde_json::Value;

use super::ci;
use super::job::{InputSource, Job, SpecConfig};
use super::validate::FieldError;

/// Engines this code base knows. A node advertises the subset it was built and configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EngineKind {
    /// WebAssembly (WASI preview 1) in wasmi.
    Wasm,
    /// OCI images (`docker` is Bacalhau's name).
    Docker,
}

impl EngineKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Wasm => "wasm",
            EngineKind::Docker => "docker",
        }
    }
    /// Parses a wire name case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "wasm" => Some(EngineKind::Wasm),
            "docker" => Some(EngineKind::Docker),
            _ => None,
        }
    }
}

/// Storage source types this code base knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// RFC 2397 `data:` URLs.
    Inline,
    /// A host path under the node's allow-list.
    Local,
    /// An HTTP(S) download.
    UrlDownload,
    /// An IPFS CID.
    Ipfs,
    /// An S3 object or prefix.
    S3,
}

impl SourceKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Inline => "inline",
            SourceKind::Local => "local",
            SourceKind::UrlDownload => "urlDownload",
            SourceKind::Ipfs => "ipfs",
            SourceKind::S3 => "s3",
        }
    }
    /// Parses a wire name case-insensitively (`localDirectory` is the legacy name of `local`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inline" => Some(SourceKind::Inline),
            "local" | "localdirectory" => Some(SourceKind::Local),
            "urldownload" | "url" => Some(SourceKind::UrlDownload),
            "ipfs" => Some(SourceKind::Ipfs),
            "s3" => Some(SourceKind::S3),
            _ => None,
        }
    }
}

/// Publisher types this code base knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PublisherKind {
    /// The compute node serves `<execution>.tar.gz` over HTTP.
    Local,
    /// Nothing is published.
    Noop,
    /// IPFS.
    Ipfs,
    /// S3.
    S3,
}

impl PublisherKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherKind::Local => "local",
            PublisherKind::Noop => "noop",
            PublisherKind::Ipfs => "ipfs",
            PublisherKind::S3 => "s3",
        }
    }
    /// Parses a wire name case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "local" => Some(PublisherKind::Local),
            "noop" => Some(PublisherKind::Noop),
            "ipfs" => Some(PublisherKind::Ipfs),
            "s3" => Some(PublisherKind::S3),
            _ => None,
        }
    }
}

/// Parameters of the `wasm` engine in the current (v1.7+) form.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WasmParams {
    /// Target path of the input holding the entry module (or a directory with exactly one `.wasm`).
    #[serde(rename = "EntryModule", default)]
    pub entry_module: String,
    /// The exported function to call; `_start` when empty.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: String,
    /// argv[1..].
    #[serde(rename = "Parameters", default)]
    pub parameters: Vec<String>,
    /// Target paths of modules instantiated before the entry module.
    #[serde(rename = "ImportModules", default)]
    pub import_modules: Vec<String>,
}

impl WasmParams {
    /// The function to call.
    pub fn entrypoint(&self) -> &str {
        if self.entrypoint.trim().is_empty() {
            "_start"
        } else {
            self.entrypoint.trim()
        }
    }
}

/// Parameters of the `docker` engine.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DockerParams {
    /// Image reference.
    #[serde(rename = "Image", default)]
    pub image: String,
    /// Entrypoint override.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Vec<String>,
    /// Arguments (the container's Cmd).
    #[serde(rename = "Parameters", default)]
    pub parameters: Vec<String>,
    /// `K=V` pairs.
    #[serde(rename = "EnvironmentVariables", default)]
    pub environment_variables: Vec<String>,
    /// Absolute working directory.
    #[serde(rename = "WorkingDirectory", default)]
    pub working_directory: String,
}

/// An engine spec after parsing.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineSpec {
    /// `wasm`.
    Wasm(WasmParams),
    /// `docker`.
    Docker(DockerParams),
    /// An engine type no Cod node implements; scheduling fails with a reason naming it.
    Unknown(String),
}

impl EngineSpec {
    /// The engine kind, if known.
    pub fn kind(&self) -> Option<EngineKind> {
        match self {
            EngineSpec::Wasm(_) => Some(EngineKind::Wasm),
            EngineSpec::Docker(_) => Some(EngineKind::Docker),
            EngineSpec::Unknown(_) => None,
        }
    }

    /// Parses an engine `SpecConfig`. `field` names it in errors (`Tasks[0].Engine`).
    pub fn parse(spec: &SpecConfig, field: &str) -> Result<Self, FieldError> {
        let params = Value::Object(spec.params.clone());
        let bad = |e: serde_json::Error| FieldError::new(format!("{field}.Params"), e.to_string());
        match EngineKind::parse(&spec.kind) {
            Some(EngineKind::Wasm) => Ok(EngineSpec::Wasm(ci::from_value(params).map_err(bad)?)),
            Some(EngineKind::Docker) => {
                Ok(EngineSpec::Docker(ci::from_value(params).map_err(bad)?))
            }
            None => Ok(EngineSpec::Unknown(spec.kind.trim().to_owned())),
        }
    }
}

/// An input source after parsing.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSpec {
    /// A `data:` URL.
    Inline {
        /// The whole `data:` URL.
        url: String,
    },
    /// A host path.
    Local {
        /// The host path.
        source_path: String,
        /// Whether the task may write to it.
        read_write: bool,
    },
    /// An HTTP(S) URL.
    UrlDownload {
        /// The URL.
        url: String,
        /// The SHA-256 the download must have (lowercase hex), from `Params.Checksum`. Checked while
        /// streaming; it also makes the input cacheable by content.
        checksum: Option<String>,
    },
    /// An S3 object or prefix.
    S3(S3SourceParams),
    /// An IPFS CID (Bacalhau's `ipfs` source), optionally a path inside its DAG (a Cod extension).
    Ipfs {
        /// The CID as written (parsed by the source).
        cid: String,
        /// `a/b.txt` inside the DAG, or empty for the whole DAG.
        path: String,
    },
    /// A source type this build has no backend for (named in the bid rejection).
    Unsupported(String),
}

/// Parameters of an `s3` input (Bacalhau's `s3.SourceSpec`; keys matched case-insensitively).
///
/// Only `Bucket` is required. A `Key` ending in `/` or `*` (or an empty one) names a prefix whose objects are
/// all fetched; any other key names one object. `Filter` is a regular expression matched against each listed
/// key with the prefix removed. The regex, checksum and endpoint are checked by the s3 source when bidding,
/// since only a node that has the source can say what it accepts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct S3SourceParams {
    /// The bucket.
    #[serde(rename = "Bucket", default)]
    pub bucket: String,
    /// An object key, or a prefix (`dir/`, `dir/file-*`); empty = the whole bucket.
    #[serde(rename = "Key", default)]
    pub key: String,
    /// The bucket's region; the node's default (`S3.Region`) when empty.
    #[serde(rename = "Region", default)]
    pub region: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS when empty.
    #[serde(rename = "Endpoint", default)]
    pub endpoint: String,
    /// The object version to fetch (single objects only).
    #[serde(rename = "VersionID", default)]
    pub version_id: String,
    /// The SHA-256 the object's bytes must have: base64, as S3 reports it, or hex (single objects only).
    #[serde(rename = "ChecksumSHA256", default)]
    pub checksum_sha256: String,
    /// A regular expression on the key below the prefix; listed objects that do not match are skipped.
    #[serde(rename = "Filter", default)]
    pub filter: String,
    /// Bacalhau's object partitioning across executions (v1.6.1+); only its `none` form is accepted.
    #[serde(rename = "Partition", default)]
    pub partition: Option<Value>,
}

#[derive(Deserialize)]
struct UrlParams {
    #[serde(rename = "URL", default)]
    url: String,
    /// Only `urlDownload` reads it; for `inline` the data travels in the URL itself.
    #[serde(rename = "Checksum", default)]
    checksum: String,
}

/// Parses a checksum as users write it: `sha256:<64 hex digits>` or the bare hex digits (what `sha256sum`
/// prints). Returns the lowercase hex. Only SHA-256 is accepted: it is what Bacalhau's S3 source checks
/// (`ChecksumSHA256`) and what every OS ships a tool for.
pub fn parse_sha256(text: &str) -> Result<String, String> {
    let t = text.trim();
    let hex = match t.split_once(':') {
        Some((algo, hex)) if algo.eq_ignore_ascii_case("sha256") => hex,
        Some((algo, _)) => {
            return Err(format!(
                "checksum algorithm {algo:?} is not supported (use sha256:<64 hex digits>)"
            ));
        }
        None => t,
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a SHA-256 checksum (use sha256:<64 hex digits>, as sha256sum prints)"
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

#[derive(Deserialize)]
struct IpfsParams {
    #[serde(rename = "CID", default)]
    cid: String,
    #[serde(rename = "Path", default)]
    path: String,
}

#[derive(Deserialize)]
struct LocalParams {
    #[serde(rename = "SourcePath", default)]
    source_path: String,
    #[serde(rename = "ReadWrite", default)]
    read_write: Value,
}

impl InputSpec {
    /// The source kind.
    pub fn kind(&self) -> Option<SourceKind> {
        match self {
            InputSpec::Inline { .. } => Some(SourceKind::Inline),
            InputSpec::Local { .. } => Some(SourceKind::Local),
            InputSpec::UrlDownload { .. } => Some(SourceKind::UrlDownload),
            InputSpec::S3(_) => Some(SourceKind::S3),
            InputSpec::Ipfs { .. } => Some(SourceKind::Ipfs),
            InputSpec::Unsupported(s) => SourceKind::parse(s),
        }
    }

    /// The type name as the user wrote it, for messages.
    pub fn type_name(&self) -> &str {
        match self {
            InputSpec::Unsupported(s) => s,
            other => other.kind().map(SourceKind::as_str).unwrap_or("unknown"),
        }
    }

    /// Parses a source `SpecConfig`; `field` names it in errors.
    pub fn parse(spec: &SpecConfig, field: &str) -> Result<Self, FieldError> {
        let params = Value::Object(spec.params.clone());
        let bad = |e: serde_json::Error| FieldError::new(format!("{field}.Params"), e.to_string());
        let required =
            |name: &str| FieldError::new(format!("{field}.Params.{name}"), "is required");
        match SourceKind::parse(&spec.kind) {
            Some(SourceKind::Inline) => {
                let p: UrlParams = ci::from_value(params).map_err(bad)?;
                if p.url.is_empty() {
                    return Err(required("URL"));
                }
                if !p.url.starts_with("data:") {
                    return Err(FieldError::new(
                        format!("{field}.Params.URL"),
                        "must be a data: URL",
                    ));
                }
                Ok(InputSpec::Inline { url: p.url })
            }
            Some(SourceKind::UrlDownload) => {
                let p: UrlParams = ci::from_value(params).map_err(bad)?;
                if p.url.is_empty() {
                    return Err(required("URL"));
                }
                let lower = p.url.to_ascii_lowercase();
                if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                    return Err(FieldError::new(
                        format!("{field}.Params.URL"),
                        format!("{:?} is not an http(s) URL", p.url),
                    ));
                }
                let checksum = match p.checksum.trim() {
                    "" => None,
                    c => Some(
                        parse_sha256(c)
                            .map_err(|e| FieldError::new(format!("{field}.Params.Checksum"), e))?,
                    ),
                };
                Ok(InputSpec::UrlDownload {
                    url: p.url,
                    checksum,
                })
            }
            Some(SourceKind::Ipfs) => {
                let p: IpfsParams = ci::from_value(params).map_err(bad)?;
                let cid = p
                    .cid
                    .trim()
                    .trim_start_matches("ipfs://")
                    .trim_start_matches("/ipfs/");
                if cid.is_empty() {
                    return Err(required("CID"));
                }
                Ok(InputSpec::Ipfs {
                    cid: cid.to_owned(),
                    path: p.path.trim_matches('/').to_owned(),
                })
            }
            Some(SourceKind::Local) => {
                let p: LocalParams = ci::from_value(params).map_err(bad)?;
                if p.source_path.is_empty() {
                    return Err(required("SourcePath"));
                }
                if !p.source_path.starts_with('/') {
                    return Err(FieldError::new(
                        format!("{field}.Params.SourcePath"),
                        "must be an absolute path",
                    ));
                }
                let read_write = match &p.read_write {
                    Value::Bool(b) => *b,
                    Value::String(s) => s.eq_ignore_ascii_case("true"),
                    Value::Null => false,
                    other => {
                        return Err(FieldError::new(
                            format!("{field}.Params.ReadWrite"),
                            format!("{other} is not a boolean"),
                        ));
                    }
                };
                Ok(InputSpec::Local {
                    source_path: p.source_path,
                    read_write,
                })
            }
            Some(SourceKind::S3) => {
                let p: S3SourceParams = ci::from_value(params).map_err(bad)?;
                if p.bucket.trim().is_empty() {
                    return Err(required("Bucket"));
                }
                Ok(InputSpec::S3(p))
            }
            None if spec.is_empty() => Err(FieldError::new(format!("{field}.Type"), "is required")),
            _ => Ok(InputSpec::Unsupported(spec.kind.trim().to_owned())),
        }
    }
}

/// A publisher after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherSpec {
    /// `local`.
    Local,
    /// `noop`.
    Noop,
    /// `s3`.
    S3(S3PublisherParams),
    /// `ipfs`: the result folder as a UnixFS DAG, served by this node.
    Ipfs,
    /// A publisher type this build has no backend for.
    Unsupported(String),
}

/// Parameters of the `s3` publisher (Bacalhau's `s3.PublisherSpec`; keys matched case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct S3PublisherParams {
    /// The bucket (required).
    #[serde(rename = "Bucket", default)]
    pub bucket: String,
    /// The key (required); may hold `{jobID}`, `{executionID}`, `{nodeID}`, `{date}` and `{time}`.
    #[serde(rename = "Key", default)]
    pub key: String,
    /// The bucket's region; the node's default when empty.
    #[serde(rename = "Region", default)]
    pub region: String,
    /// An S3-compatible endpoint; AWS when empty.
    #[serde(rename = "Endpoint", default)]
    pub endpoint: String,
    /// `gzip` (default: one `.tar.gz` object) or `plain` (one object per file under `Key/`).
    #[serde(rename = "Encoding", default)]
    pub encoding: String,
}

impl S3PublisherParams {
    /// Problems with the parameters, as (param, message) pairs; empty when they are usable.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.bucket.trim().is_empty() {
            problems.push(("Bucket", "is required".to_owned()));
        }
        if self.key.trim().is_empty() {
            problems.push((
                "Key",
                "is required (e.g. \"results/{jobID}/{executionID}\")".to_owned(),
            ));
        }
        if !matches!(
            self.encoding.trim().to_ascii_lowercase().as_str(),
            "" | "gzip" | "plain"
        ) {
            problems.push((
                "Encoding",
                format!("{:?} is not one of gzip, plain", self.encoding),
            ));
        }
        problems
    }
}

impl PublisherSpec {
    /// Parses a publisher `SpecConfig`; `None` when the task publishes nothing.
    pub fn parse(spec: &SpecConfig) -> Option<Self> {
        if spec.is_empty() {
            return None;
        }
        Some(match PublisherKind::parse(&spec.kind) {
            Some(PublisherKind::Local) => PublisherSpec::Local,
            Some(PublisherKind::Noop) => PublisherSpec::Noop,
            // Lenient here (parse has no error path): a malformed value decodes as empty and is reported by
            // `S3PublisherParams::problems`, which submission validation and the publisher both run.
            Some(PublisherKind::S3) => PublisherSpec::S3(
                ci::from_value(Value::Object(spec.params.clone())).unwrap_or_default(),
            ),
            Some(PublisherKind::Ipfs) => PublisherSpec::Ipfs,
            _ => PublisherSpec::Unsupported(spec.kind.trim().to_owned()),
        })
    }
    /// The kind, if known.
    pub fn kind(&self) -> Option<PublisherKind> {
        match self {
            PublisherSpec::Local => Some(PublisherKind::Local),
            PublisherSpec::Noop => Some(PublisherKind::Noop),
            PublisherSpec::S3(_) => Some(PublisherKind::S3),
            PublisherSpec::Ipfs => Some(PublisherKind::Ipfs),
            PublisherSpec::Unsupported(s) => PublisherKind::parse(s),
        }
    }
    /// The type name, for messages.
    pub fn type_name(&self) -> &str {
        match self {
            PublisherSpec::Unsupported(s) => s,
            other => other.kind().map(PublisherKind::as_str).unwrap_or("unknown"),
        }
    }
}

/// Rewrites the pre-1.7 wasm engine form into the current one, as Bacalhau's orchestrator does: `EntryModule`
/// and `ImportModules` given as InputSource objects become inputs at `/wasm/entry.wasm` and
/// `/wasm/imports/module_<i>.wasm`, and the params refer to those targets. Legacy `EnvironmentVariables` (a map)
/// are merged into `Task.Env` where the task does not set the same name (Bacalhau drops them; keeping them is
/// what a user of the old form expects). Returns a warning for each rewrite.
pub fn normalize_legacy_wasm(job: &mut Job) -> Vec<String> {
    let mut warnings = Vec::new();
    for task in &mut job.tasks {
        if EngineKind::parse(&task.engine.kind) != Some(EngineKind::Wasm) {
            continue;
        }
        let params = &mut task.engine.params;
        let key = |params: &serde_json::Map<String, Value>, name: &str| {
            params
                .keys()
                .find(|k| k.eq_ignore_ascii_case(name))
                .cloned()
        };
        if let Some(k) = key(params, "EntryModule")
            && let Some(Value::Object(obj)) = params.get(&k).cloned()
            && let Ok(mut input) = ci::from_value::<InputSource>(Value::Object(obj))
        {
            {
                let target = "/wasm/entry.wasm".to_owned();
                input.target = target.clone();
                task.input_sources.push(input);
                params.insert(k, Value::String(target));
                warnings.push(
                    "converted legacy wasm EntryModule (an InputSource) to a target path"
                        .to_owned(),
                );
            }
        }
        if let Some(k) = key(params, "ImportModules")
            && let Some(Value::Array(items)) = params.get(&k).cloned()
            && items.iter().any(Value::is_object)
        {
            let mut targets = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(obj) => {
                        if let Ok(mut input) = ci::from_value::<InputSource>(Value::Object(obj)) {
                            let target = format!("/wasm/imports/module_{i}.wasm");
                            input.target = target.clone();
                            task.input_sources.push(input);
                            targets.push(Value::String(target));
                        }
                    }
                    other => targets.push(other),
                }
            }
            params.insert(k, Value::Array(targets));
            warnings.push(
                "converted legacy wasm ImportModules (InputSources) to target paths".to_owned(),
            );
        }
        if let Some(k) = key(params, "EnvironmentVariables")
            && let Some(Value::Object(env)) = params.remove(&k)
        {
            for (name, value) in env {
                let value = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                task.env.entry(name).or_insert(value);
            }
            warnings.push("moved legacy wasm EnvironmentVariables into Task.Env".to_owned());
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn url_spec(params: Value) -> SpecConfig {
        SpecConfig {
            kind: "urlDownload".into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn url_checksums_are_parsed_and_normalized() {
        let hex = "AB".repeat(32);
        for given in [
            format!("sha256:{hex}"),
            format!("SHA256:{hex}"),
            hex.clone(),
        ] {
            let spec = InputSpec::parse(
                &url_spec(json!({"URL": "http://h/x", "checksum": given})),
                "In",
            )
            .expect("valid");
            assert_eq!(
                spec,
                InputSpec::UrlDownload {
                    url: "http://h/x".into(),
                    checksum: Some(hex.to_ascii_lowercase()),
                }
            );
        }
        let none = InputSpec::parse(&url_spec(json!({"URL": "http://h/x"})), "In").expect("ok");
        assert_eq!(
            none,
            InputSpec::UrlDownload {
                url: "http://h/x".into(),
                checksum: None
            }
        );
        for bad in ["md5:abc", "sha256:xyz", "abc"] {
            let e = InputSpec::parse(
                &url_spec(json!({"URL": "http://h/x", "Checksum": bad})),
                "In",
            )
            .expect_err(bad);
            assert!(e.to_string().contains("In.Params.Checksum"), "{e}");
        }
    }
}
