//! The `-p/--publisher` grammar, as Bacalhau's CLI defines it (`cmd/util/opts/publisher_specconfig.go`).
//!
//! A value is one CSV record: the publisher first, then `opt=K=V` (or `option=K=V`) fields. The publisher is
//! a type name, `local`, `noop` or `ipfs` (case-insensitive, no options), or `s3://BUCKET/KEY` with the
//! options `region`, `endpoint` and `encoding` (`gzip`, the default, or `plain`). The result is the task's
//! `Publisher` spec with Bacalhau's param names (`Bucket`, `Key`, `Region`, `Endpoint`, `Encoding`); whether
//! a node can publish there is the scheduler's question, not the CLI's.

use serde_json::{Map, Value};

use super::UsageError;
use super::input::split_csv;
use crate::model::{PublisherKind, SpecConfig};

/// What `-p` accepts, for messages.
const USAGE: &str = "use local, noop, ipfs or s3://BUCKET/KEY[,opt=region=R][,opt=endpoint=URL][,opt=encoding=gzip|plain]";

/// Parses one `-p` value into a publisher spec.
pub fn parse_publisher(value: &str) -> Result<SpecConfig, UsageError> {
    let bad = |why: String| UsageError::new(format!("-p {value:?}: {why}"));
    let fields = split_csv(value).map_err(bad)?;
    let (first, rest) = fields
        .split_first()
        .ok_or_else(|| bad(format!("no publisher given ({USAGE})")))?;
    let first = first.trim();
    let mut options: Vec<(String, String)> = Vec::new();
    for field in rest {
        let option = field.split_once('=').and_then(|(k, v)| {
            matches!(k.trim().to_ascii_lowercase().as_str(), "opt" | "option").then_some(v)
        });
        let Some(option) = option else {
            return Err(bad(format!("{field:?} must be opt=KEY=VALUE")));
        };
        match option.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                options.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
            _ => return Err(bad(format!("option {option:?} must be KEY=VALUE"))),
        }
    }
    if first.is_empty() {
        return Err(bad(format!("no publisher given ({USAGE})")));
    }
    let mut params = Map::new();
    let kind = match first.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("s3") => {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() {
                return Err(bad(
                    "an s3 publisher needs a bucket and a key: s3://BUCKET/KEY (the key may use {jobID}, {executionID}, {nodeID}, {date}, {time})"
                        .to_owned(),
                ));
            }
            params.insert("Bucket".into(), Value::String(bucket.to_owned()));
            params.insert("Key".into(), Value::String(key.to_owned()));
            for (k, v) in &options {
                let name = match k.as_str() {
                    "region" => "Region",
                    "endpoint" => "Endpoint",
                    "encoding" => {
                        let encoding = v.to_ascii_lowercase();
                        if encoding != "gzip" && encoding != "plain" {
                            return Err(bad(format!(
                                "encoding {v:?} is not gzip (one .tar.gz object) or plain (one object per file)"
                            )));
                        }
                        params.insert("Encoding".into(), Value::String(encoding));
                        continue;
                    }
                    other => {
                        return Err(bad(format!(
                            "unknown option {other:?} for s3 publishers (use region, endpoint or encoding)"
                        )));
                    }
                };
                if v.is_empty() {
                    return Err(bad(format!("option {k:?} needs a value")));
                }
                params.insert(name.into(), Value::String(v.clone()));
            }
            PublisherKind::S3
        }
        Some((scheme, _)) => {
            return Err(bad(format!(
                "{scheme}:// is not a publisher scheme ({USAGE})"
            )));
        }
        None => {
            let kind = match PublisherKind::parse(first) {
                Some(PublisherKind::S3) => {
                    return Err(bad(
                        "an s3 publisher needs its destination: s3://BUCKET/KEY".to_owned(),
                    ));
                }
                Some(kind) => kind,
                None => return Err(bad(format!("unknown publisher ({USAGE})"))),
            };
            if let Some((k, _)) = options.first() {
                return Err(bad(format!(
                    "the {} publisher takes no options (got {k:?})",
                    kind.as_str()
                )));
            }
            kind
        }
    };
    Ok(SpecConfig {
        kind: kind.as_str().to_owned(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param<'a>(spec: &'a SpecConfig, key: &str) -> Option<&'a str> {
        spec.params.get(key).and_then(Value::as_str)
    }

    #[test]
    fn type_names_are_case_insensitive_and_take_no_params() {
        for (text, kind) in [
            ("local", "local"),
            ("LOCAL", "local"),
            (" Noop ", "noop"),
            ("IPFS", "ipfs"),
        ] {
            let spec = parse_publisher(text).expect(text);
            assert_eq!(spec.kind, kind, "{text}");
            assert!(spec.params.is_empty(), "{text}");
        }
    }

    #[test]
    fn s3_takes_bucket_key_and_options() {
        let spec = parse_publisher(
            "s3://results/jobs/{jobID}/out,opt=region=eu-west-1,option=endpoint=http://127.0.0.1:9000,opt=Encoding=PLAIN",
        )
        .expect("parses");
        assert_eq!(spec.kind, "s3");
        assert_eq!(param(&spec, "Bucket"), Some("results"));
        assert_eq!(param(&spec, "Key"), Some("jobs/{jobID}/out"));
        assert_eq!(param(&spec, "Region"), Some("eu-west-1"));
        assert_eq!(param(&spec, "Endpoint"), Some("http://127.0.0.1:9000"));
        assert_eq!(param(&spec, "Encoding"), Some("plain"));

        let spec = parse_publisher("S3://b/k").expect("scheme in any case");
        assert_eq!(spec.kind, "s3");
        assert_eq!(param(&spec, "Region"), None, "unset options are left out");
        assert_eq!(param(&spec, "Encoding"), None, "the node's default applies");
    }

    #[test]
    fn rejects_bad_values_saying_what_to_use() {
        for (bad, hint) in [
            ("", "no publisher"),
            ("ftp", "unknown publisher"),
            ("s3", "s3://BUCKET/KEY"),
            ("s3://bucket", "bucket and a key"),
            ("s3:///key", "bucket and a key"),
            ("s3://b/k,opt=encoding=zip", "gzip"),
            ("s3://b/k,opt=colour=red", "unknown option"),
            ("s3://b/k,opt=region=", "needs a value"),
            ("s3://b/k,region=x", "opt=KEY=VALUE"),
            ("s3://b/k,opt=region", "KEY=VALUE"),
            ("local,opt=x=y", "takes no options"),
            ("ipfs://Qm", "not a publisher scheme"),
            ("\"s3://b/k", "unterminated quote"),
        ] {
            let e = parse_publisher(bad).expect_err(bad);
            assert!(e.0.starts_with("-p "), "{e}");
            assert!(e.0.contains(hint), "{bad}: {e}");
        }
    }
}
