//! Case-insensitive decoding of Bacalhau documents.
//!
//! Go's `encoding/json` (and mapstructure, which Bacalhau uses for `Params`) match object keys to struct fields
//! ignoring case, so real specs mix `Type:` and `type:`. serde matches exactly. Rather than annotate every field
//! with aliases, documents are first parsed into a [`serde_json::Value`] and then deserialized through
//! [`CiValue`], which renames each object key to the struct field it matches case-insensitively before serde
//! sees it. Keys of plain maps (`Env`, `Labels`, `Meta`) are left untouched: they are data, not field names.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{DeserializeOwned, IntoDeserializer, Visitor};
use serde::{Deserializer, forward_to_deserialize_any};
use serde_json::Value;

/// Deserializes `T` from `value`, matching struct field names case-insensitively.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    T::deserialize(CiValue(value))
}

/// Parses a JSON or YAML document into a [`Value`]. JSON is tried first because every JSON document is also
/// YAML but the JSON parser gives better error positions for JSON input.
pub fn parse_document(text: &str) -> Result<Value, DocumentError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str(text).map_err(|e| DocumentError(format!("invalid JSON: {e}")));
    }
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| DocumentError(format!("invalid YAML: {e}")))?;
    Ok(value)
}

/// A document that is neither valid JSON nor valid YAML.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DocumentError(pub String);

/// A JSON value whose struct keys are matched case-insensitively.
#[derive(Debug)]
pub struct CiValue(pub Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for CiValue {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

fn visit_object<'de, V: Visitor<'de>>(
    map: serde_json::Map<String, Value>,
    fields: Option<&'static [&'static str]>,
    visitor: V,
) -> Result<V::Value, serde_json::Error> {
    let field_of =
        |key: &str| fields.and_then(|f| f.iter().find(|f| f.eq_ignore_ascii_case(key)).copied());
    // Several keys may name one field (`Nodes` and the `nodes` twin some servers add for old clients). As in
    // Go's decoder, an exact-case key wins; otherwise the last spelling does. serde would call it a duplicate.
    let mut chosen: std::collections::HashMap<&'static str, String> =
        std::collections::HashMap::new();
    for key in map.keys() {
        if let Some(field) = field_of(key) {
            let exact = chosen.get(field).is_some_and(|k| k == field);
            if !exact {
                chosen.insert(field, key.clone());
            }
        }
    }
    let entries = map
        .into_iter()
        .filter_map(move |(key, value)| match field_of(&key) {
            Some(field) if chosen.get(field) == Some(&key) => {
                Some((field.to_owned(), CiValue(value)))
            }
            Some(_) => None,
            None => Some((key, CiValue(value))),
        });
    let mut de = MapDeserializer::new(entries);
    let out = visitor.visit_map(&mut de)?;
    de.end()?;
    Ok(out)
}

impl<'de> Deserializer<'de> for CiValue {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visit_object(map, None, visitor),
            Value::Array(items) => {
                let mut de = SeqDeserializer::new(items.into_iter().map(CiValue));
                let out = visitor.visit_seq(&mut de)?;
                de.end()?;
                Ok(out)
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visit_object(map, Some(fields), visitor),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        #[serde(rename = "ID")]
        id: String,
        #[serde(rename = "Env", default)]
        env: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        #[serde(rename = "Name")]
        name: String,
        #[serde(rename = "Inner")]
        inner: Option<Inner>,
        #[serde(rename = "List", default)]
        list: Vec<Inner>,
    }

    #[test]
    fn matches_keys_ignoring_case_but_keeps_map_keys() {
        let v = serde_json::json!({"name": "a", "INNER": {"id": "x", "env": {"lower": "1"}},
                                   "list": [{"Id": "y"}]});
        let o: Outer = from_value(v).expect("decodes");
        assert_eq!(o.name, "a");
        let inner = o.inner.expect("inner");
        assert_eq!(inner.id, "x");
        assert_eq!(inner.env.get("lower").map(String::as_str), Some("1"));
        assert_eq!(o.list[0].id, "y");
    }

    #[test]
    fn an_exact_key_wins_over_its_case_twin() {
        let v = serde_json::json!({"name": "twin", "Name": "exact", "Inner": null});
        let o: Outer = from_value(v).expect("decodes despite the twin");
        assert_eq!(o.name, "exact");
        let v = serde_json::json!({"NAME": "first", "name": "last"});
        let o: Outer = from_value(v).expect("decodes");
        assert_eq!(o.name, "last");
    }

    #[test]
    fn yaml_and_json_parse_to_the_same_value() {
        let y = parse_document("Name: a\nInner:\n  ID: x\n").expect("yaml");
        let j = parse_document(r#"{"Name":"a","Inner":{"ID":"x"}}"#).expect("json");
        assert_eq!(y, j);
    }
}
