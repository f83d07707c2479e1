//! Label selectors (`Constraints`): parsing Kubernetes' selection operators and matching node labels.

use std::collections::BTreeMap;

use super::job::LabelSelectorRequirement;

/// A selection operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `=` or `==`.
    Equals,
    /// `!=`.
    NotEquals,
    /// `in`.
    In,
    /// `notin`.
    NotIn,
    /// `exists`.
    Exists,
    /// `!` (does not exist).
    DoesNotExist,
    /// `gt` (integers).
    GreaterThan,
    /// `lt` (integers).
    LessThan,
}

impl Operator {
    /// Parses an operator, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "=" | "==" => Self::Equals,
            "!=" => Self::NotEquals,
            "in" => Self::In,
            "notin" => Self::NotIn,
            "exists" => Self::Exists,
            "!" => Self::DoesNotExist,
            "gt" => Self::GreaterThan,
            "lt" => Self::LessThan,
            _ => return None,
        })
    }
}

/// Checks a requirement's shape; the message says what is wrong.
pub fn check(req: &LabelSelectorRequirement) -> Result<Operator, String> {
    if req.key.trim().is_empty() {
        return Err("Key is required".to_owned());
    }
    let op = Operator::parse(&req.operator).ok_or_else(|| {
        format!(
            "operator {:?} is not one of =, ==, !=, in, notin, exists, !, gt, lt",
            req.operator
        )
    })?;
    let n = req.values.len();
    match op {
        Operator::In | Operator::NotIn if n == 0 => Err(format!(
            "operator {} needs at least one value",
            req.operator
        )),
        Operator::Exists | Operator::DoesNotExist if n != 0 => {
            Err(format!("operator {} takes no values", req.operator))
        }
        Operator::Equals | Operator::NotEquals | Operator::GreaterThan | Operator::LessThan
            if n != 1 =>
        {
            Err(format!("operator {} needs exactly one value", req.operator))
        }
        Operator::GreaterThan | Operator::LessThan
            if req.values[0].trim().parse::<i64>().is_err() =>
        {
            Err(format!("operator {} needs an integer value", req.operator))
        }
        _ => Ok(op),
    }
}

/// True when `labels` satisfy `req`. A malformed requirement never matches.
pub fn matches(req: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let Ok(op) = check(req) else { return false };
    let value = labels.get(&req.key);
    match op {
        Operator::Equals => value == req.values.first(),
        Operator::NotEquals => value != req.values.first(),
        Operator::In => value.is_some_and(|v| req.values.contains(v)),
        Operator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
        Operator::Exists => value.is_some(),
        Operator::DoesNotExist => value.is_none(),
        Operator::GreaterThan | Operator::LessThan => {
            let (Some(v), Some(bound)) = (value, req.values.first()) else {
                return false;
            };
            match (v.trim().parse::<i64>(), bound.trim().parse::<i64>()) {
                (Ok(v), Ok(b)) if op == Operator::GreaterThan => v > b,
                (Ok(v), Ok(b)) => v < b,
                _ => false,
            }
        }
    }
}

/// True for soft preferences (`favour_` keys), which rank nodes but never exclude them.
pub fn is_soft(req: &LabelSelectorRequirement) -> bool {
    req.key.starts_with("favour_")
}

/// Parses the CLI's selector syntax: `os_arch=arm64,zone in (a,b),!gpu,tier gt 2`.
pub fn parse_selector(text: &str) -> Result<Vec<LabelSelectorRequirement>, String> {
    let mut out = Vec::new();
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let req = |key: &str, op: &str, values: Vec<String>| LabelSelectorRequirement {
            key: key.trim().to_owned(),
            operator: op.to_owned(),
            values,
        };
        let r = if let Some(k) = part.strip_prefix('!') {
            req(k, "!", vec![])
        } else if let Some((k, v)) = part.split_once("!=") {
            req(k, "!=", vec![v.trim().to_owned()])
        } else if let Some((k, v)) = part.split_once("==") {
            req(k, "==", vec![v.trim().to_owned()])
        } else if let Some((k, v)) = part.split_once('=') {
            req(k, "=", vec![v.trim().to_owned()])
        } else {
            let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
            match words.as_slice() {
                [k] => req(k, "exists", vec![]),
                [k, rest] => {
                    let rest = rest.trim();
                    let (op, vals) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    let vals = vals.trim().trim_start_matches('(').trim_end_matches(')');
                    let values = vals
                        .split(',')
                        .map(|v| v.trim().to_owned())
                        .filter(|v| !v.is_empty())
                        .collect();
                    req(k, &op.to_ascii_lowercase(), values)
                }
                _ => return Err(format!("cannot parse constraint {part:?}")),
            }
        };
        check(&r).map_err(|e| format!("constraint {part:?}: {e}"))?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        [("os_arch", "arm64"), ("zone", "north"), ("slots", "4")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn every_operator_matches_as_kubernetes_does() {
        let l = labels();
        let sel = |s: &str| parse_selector(s).expect("parses");
        let all = |s: &str| sel(s).iter().all(|r| matches(r, &l));
        assert!(all("os_arch=arm64"));
        assert!(all("os_arch==arm64"));
        assert!(!all("os_arch!=arm64"));
        assert!(all("zone in (north,south)"));
        assert!(!all("zone notin (north)"));
        assert!(all("zone"));
        assert!(all("!gpu"));
        assert!(all("slots gt 2"));
        assert!(!all("slots lt 2"));
        assert!(all("os_arch=arm64,zone in (a,north)"));
    }

    #[test]
    fn rejects_malformed_requirements() {
        assert!(parse_selector("zone in ()").is_err());
        assert!(parse_selector("slots gt x").is_err());
        let bad = LabelSelectorRequirement {
            key: "k".into(),
            operator: "~".into(),
            values: vec![],
        };
        assert!(check(&bad).is_err());
    }
}
