//! The `-i/--input` grammar, as Bacalhau's CLI defines it (`cmd/util/opts/storage_specconfig.go`).
//!
//! A value is one CSV record. Short form: `SOURCE[:TARGET]`, e.g. `ipfs://Qm…:/data` or
//! `file:///srv/data:/inputs`; the default target is `/inputs`. Keyed form: `src=…,dst=…,opt=k=v,…` (also
//! `source=`, `target=`/`destination=`, `option=`). Schemes: `ipfs://CID` → `ipfs`, `http(s)://…` →
//! `urlDownload` (opt `checksum=sha256:<hex>`, a Cod extension: the download is verified and can be cached),
//! `s3://bucket/key` → `s3` (opts `region`, `endpoint`, `version-id`, `checksum-256`, `filter`),
//! `file:///abs/path` → `local` (opt `rw=true`).
//!
//! One deliberate difference: Bacalhau takes the text after the *last* `:` as the target, which breaks URLs
//! with a port (`http://host:8080/f` becomes source `http://host`, target `8080/f`). Here a target must be
//! absolute, so only a last `:` followed by `/` separates it. A URL whose path itself contains `:/` needs the
//! keyed form.

use serde_json::{Map, Value};

use super::UsageError;
use crate::model::{InputSource, SourceKind, SpecConfig};

/// Where inputs land when `-i` gives no target.
pub const DEFAULT_INPUT_TARGET: &str = "/inputs";

/// Parses one `-i` value into an input source.
pub fn parse_input(value: &str) -> Result<InputSource, UsageError> {
    let bad = |why: String| UsageError::new(format!("-i {value:?}: {why}"));
    let fields = split_csv(value).map_err(bad)?;
    let mut source: Option<String> = None;
    let mut target: Option<String> = None;
    let mut options: Vec<(String, String)> = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let keyed = field.split_once('=').and_then(|(k, v)| {
            let k = k.trim().to_ascii_lowercase();
            let known = [
                "src",
                "source",
                "dst",
                "target",
                "destination",
                "opt",
                "option",
            ]
            .contains(&k.as_str());
            known.then(|| (k, v.trim().to_owned()))
        });
        match keyed {
            Some((k, v)) => match k.as_str() {
                "src" | "source" => source = Some(v),
                "dst" | "target" | "destination" => target = Some(v),
                _ => {
                    let (ok, ov) = v.split_once('=').unwrap_or((v.as_str(), ""));
                    if ok.trim().is_empty() {
                        return Err(bad(format!("option {v:?} must be key=value")));
                    }
                    options.push((ok.trim().to_owned(), ov.trim().to_owned()));
                }
            },
            None if i == 0 => {
                let (s, t) = split_target(field.trim());
                source = Some(s.to_owned());
                target = t.map(str::to_owned);
            }
            None => {
                return Err(bad(format!(
                    "{field:?} must be key=value (src=, dst= or opt=)"
                )));
            }
        }
    }
    let source = source
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no source given".to_owned()))?;
    let target = target.unwrap_or_else(|| DEFAULT_INPUT_TARGET.to_owned());
    if target.trim().is_empty() {
        return Err(bad("the target must not be empty".to_owned()));
    }
    let spec = source_spec(&source, &options).map_err(bad)?;
    Ok(InputSource {
        source: spec,
        alias: source,
        target,
    })
}

/// Splits `SOURCE:TARGET` at the last `:` that starts an absolute path, skipping the scheme's `://`.
pub fn split_target(text: &str) -> (&str, Option<&str>) {
    let body_start = text.find("://").map(|i| i + 3).unwrap_or(0);
    // The first `/` after the scheme is the start of a path (`file:///x`), never a target separator.
    let body = &text[body_start..];
    match body.rfind(":/") {
        Some(i) if i > 0 => (&text[..body_start + i], Some(&text[body_start + i + 1..])),
        _ => (text, None),
    }
}

/// Builds the `Source` spec for a URI and its `opt=` options.
pub fn source_spec(uri: &str, options: &[(String, String)]) -> Result<SpecConfig, String> {
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
        format!("{uri:?} has no scheme (use ipfs://, http(s)://, s3:// or file:///)")
    })?;
    let scheme = scheme.to_ascii_lowercase();
    let mut params = Map::new();
    let no_options = |kind: &str| match options.first() {
        Some((k, _)) => Err(format!("unknown option {k:?} for {kind} inputs")),
        None => Ok(()),
    };
    let kind = match scheme.as_str() {
        "ipfs" => {
            no_options("ipfs")?;
            let cid = rest.trim_end_matches('/');
            if cid.is_empty() || cid.contains('/') {
                return Err(format!("{uri:?} must be ipfs://CID"));
            }
            params.insert("CID".into(), Value::String(cid.to_owned()));
            SourceKind::Ipfs.as_str()
        }
        "http" | "https" => {
            if rest.is_empty() {
                return Err(format!("{uri:?} has no host"));
            }
            params.insert("URL".into(), Value::String(uri.to_owned()));
            for (k, v) in options {
                match k.to_ascii_lowercase().as_str() {
                    "checksum" | "checksum-256" | "checksum256" | "checksum_256" | "sha256" => {
                        let hex = crate::model::spec::parse_sha256(v)?;
                        params.insert("Checksum".into(), Value::String(format!("sha256:{hex}")));
                    }
                    other => {
                        return Err(format!(
                            "unknown option {other:?} for URL inputs (the only one is checksum=sha256:<hex>)"
                        ));
                    }
                }
            }
            SourceKind::UrlDownload.as_str()
        }
        "s3" => {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{uri:?} must be s3://bucket/key"));
            }
            params.insert("Bucket".into(), Value::String(bucket.to_owned()));
            params.insert("Key".into(), Value::String(key.to_owned()));
            for (k, v) in options {
                let name = match k.as_str() {
                    "region" => "Region",
                    "endpoint" => "Endpoint",
                    "versionID" | "versionid" | "version-id" | "version_id" => "VersionID",
                    "checksum-256" | "checksum256" | "checksum_256" => "ChecksumSHA256",
                    "filter" => "Filter",
                    other => return Err(format!("unknown option {other:?} for s3 inputs")),
                };
                params.insert(name.into(), Value::String(v.clone()));
            }
            SourceKind::S3.as_str()
        }
        "file" => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{uri:?} must name an absolute path (file:///data/x)"
                ));
            }
            let mut read_write = false;
            for (k, v) in options {
                match k.to_ascii_lowercase().as_str() {
                    "rw" | "read-write" | "read_write" | "readwrite" => {
                        read_write = parse_bool(v)
                            .ok_or_else(|| format!("rw={v:?} is not true or false"))?;
                    }
                    other => return Err(format!("unknown option {other:?} for file inputs")),
                }
            }
            params.insert("SourcePath".into(), Value::String(rest.to_owned()));
            params.insert("ReadWrite".into(), Value::Bool(read_write));
            SourceKind::Local.as_str()
        }
        "git" | "gitlfs" => return Err(format!("{scheme}:// inputs are not supported")),
        other => {
            return Err(format!(
                "unknown storage scheme {other:?} (use ipfs://, http(s)://, s3:// or file:///)"
            ));
        }
    };
    Ok(SpecConfig {
        kind: kind.to_owned(),
        params,
    })
}

/// Go's `strconv.ParseBool` set.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Splits one CSV record: commas separate fields; a field in double quotes may contain commas, and `""` inside
/// it is a literal quote.
pub(crate) fn split_csv(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote".to_owned()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param<'a>(i: &'a InputSource, key: &str) -> &'a Value {
        i.source.params.get(key).unwrap_or(&Value::Null)
    }

    #[test]
    fn short_form_with_and_without_target() {
        let i = parse_input("ipfs://QmHash").expect("parses");
        assert_eq!(
            (i.source.kind.as_str(), i.target.as_str()),
            ("ipfs", "/inputs")
        );
        assert_eq!(param(&i, "CID"), "QmHash");
        assert_eq!(i.alias, "ipfs://QmHash");

        let i = parse_input("file:///srv/data:/data").expect("parses");
        assert_eq!(
            (i.source.kind.as_str(), i.target.as_str()),
            ("local", "/data")
        );
        assert_eq!(param(&i, "SourcePath"), "/srv/data");
        assert_eq!(param(&i, "ReadWrite"), false);
    }

    #[test]
    fn urls_with_ports_keep_their_port() {
        let i = parse_input("http://host:8080/file.csv").expect("parses");
        assert_eq!(i.source.kind, "urlDownload");
        assert_eq!(param(&i, "URL"), "http://host:8080/file.csv");
        assert_eq!(i.target, "/inputs");
        let i = parse_input("https://host:8443/a.csv:/in/a").expect("parses");
        assert_eq!(param(&i, "URL"), "https://host:8443/a.csv");
        assert_eq!(i.target, "/in/a");
        let i = parse_input("https://x.org/q?a=b").expect("a URL with = is not a key");
        assert_eq!(param(&i, "URL"), "https://x.org/q?a=b");
    }

    #[test]
    fn keyed_form_with_s3_options() {
        let i = parse_input(
            r#"src=s3://b/logs/*,dst=/logs,opt=region=eu-west-1,"opt=filter=.*\.(gz|bz2)""#,
        )
        .expect("parses");
        assert_eq!(i.source.kind, "s3");
        assert_eq!(i.target, "/logs");
        assert_eq!(param(&i, "Bucket"), "b");
        assert_eq!(param(&i, "Key"), "logs/*");
        assert_eq!(param(&i, "Region"), "eu-west-1");
        assert_eq!(param(&i, "Filter"), r".*\.(gz|bz2)");
    }

    #[test]
    fn url_inputs_take_a_checksum() {
        let hex = "ab".repeat(32);
        let i = parse_input(&format!("https://h:8443/d.csv,opt=checksum=sha256:{hex}"))
            .expect("parses");
        assert_eq!(param(&i, "URL"), "https://h:8443/d.csv");
        assert_eq!(param(&i, "Checksum"), format!("sha256:{hex}").as_str());
        assert_eq!(i.target, "/inputs");
        let upper = hex.to_ascii_uppercase();
        let i = parse_input(&format!("src=http://h/d,dst=/d,option=checksum={upper}"))
            .expect("bare hex, any case");
        assert_eq!(param(&i, "Checksum"), format!("sha256:{hex}").as_str());
        assert_eq!(i.target, "/d");
        for bad in [
            "http://h/d,opt=checksum=md5:abc".to_owned(),
            "http://h/d,opt=checksum=sha256:abc".to_owned(),
            format!("http://h/d,opt=colour={hex}"),
        ] {
            let e = parse_input(&bad).expect_err(&bad);
            assert!(e.0.starts_with("-i "), "{e}");
        }
        let e = parse_input("http://h/d,opt=checksum=sha256:abc").expect_err("short");
        assert!(e.0.contains("sha256:<64 hex digits>"), "{e}");
    }

    #[test]
    fn file_inputs_take_rw_and_need_absolute_paths() {
        let i = parse_input("src=file:///data,dst=/out,opt=rw=true").expect("parses");
        assert_eq!(param(&i, "ReadWrite"), true);
        assert!(parse_input("file://relative/x").is_err());
        assert!(parse_input("src=file:///data,opt=rw=maybe").is_err());
    }

    #[test]
    fn rejects_bad_values_naming_the_flag() {
        for bad in [
            "data.csv",
            "git://repo",
            "ipfs://",
            "src=s3://b/k,opt=colour=red",
            "s3://b/k,extra",
            "\"open",
        ] {
            let e = parse_input(bad).expect_err(bad);
            assert!(e.0.starts_with("-i "), "{e}");
        }
    }

    #[test]
    fn split_target_ignores_the_scheme_separator() {
        assert_eq!(split_target("s3://b/k:/in"), ("s3://b/k", Some("/in")));
        assert_eq!(split_target("s3://b/k"), ("s3://b/k", None));
        assert_eq!(split_target("file:///x"), ("file:///x", None));
        assert_eq!(
            split_target("lib.wasm:/lib.wasm"),
            ("lib.wasm", Some("/lib.wasm"))
        );
    }
}
