//! Reading a kind's params from JSON with precise errors: every problem becomes a
//! `BadRequest` field violation naming `params.<key>`, and unknown keys are refused so a
//! typo does not silently fall back to a default.

use std::collections::BTreeMap;

use crate::error::{Error, FieldViolation, Result, shorten};
use crate::task::{Json, JsonMap};

/// A param's value as an error message shows it: its JSON, cut short.
fn shown(value: &Json) -> String {
    shorten(&value.to_string()).into_owned()
}

pub struct Params<'a> {
    map: &'a JsonMap,
    known: Vec<&'static str>,
    violations: Vec<FieldViolation>,
}

impl<'a> Params<'a> {
    pub fn new(map: &'a JsonMap) -> Params<'a> {
        Params {
            map,
            known: Vec::new(),
            violations: Vec::new(),
        }
    }

    fn field(&mut self, key: &'static str) -> Option<&'a Json> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        self.map.get(key).filter(|value| !value.is_null())
    }

    fn violation(&mut self, key: &str, description: impl Into<String>) {
        self.violations.push(FieldViolation::new(
            format!("params.{}", shorten(key)),
            description,
        ));
    }

    /// A non-negative integer. JSON numbers arrive as floats from protobuf, so `5.0` is 5.
    pub fn count(&mut self, key: &'static str) -> Option<u64> {
        let value = self.field(key)?;
        match value.as_f64() {
            Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => Some(n as u64),
            _ => {
                self.violation(
                    key,
                    format!("must be a non-negative integer, got {}", shown(value)),
                );
                None
            }
        }
    }

    pub fn required_count(&mut self, key: &'static str) -> Option<u64> {
        if self.field(key).is_none() {
            self.violation(key, "required: a non-negative integer");
            return None;
        }
        self.count(key)
    }

    pub fn bool(&mut self, key: &'static str) -> Option<bool> {
        let value = self.field(key)?;
        let parsed = value.as_bool();
        if parsed.is_none() {
            self.violation(key, format!("must be a boolean, got {}", shown(value)));
        }
        parsed
    }

    pub fn string(&mut self, key: &'static str) -> Option<String> {
        let value = self.field(key)?;
        let parsed = value.as_str().map(str::to_owned);
        if parsed.is_none() {
            self.violation(key, format!("must be a string, got {}", shown(value)));
        }
        parsed
    }

    /// A non-empty list of strings.
    pub fn required_strings(&mut self, key: &'static str) -> Option<Vec<String>> {
        let Some(value) = self.field(key) else {
            self.violation(key, "required: a non-empty list of strings");
            return None;
        };
        let list: Option<Vec<String>> = value.as_array().and_then(|items| {
            items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect()
        });
        match list {
            Some(list) if !list.is_empty() => Some(list),
            _ => {
                self.violation(
                    key,
                    format!("must be a non-empty list of strings, got {}", shown(value)),
                );
                None
            }
        }
    }

    /// An object whose values are all strings.
    pub fn string_map(&mut self, key: &'static str) -> Option<BTreeMap<String, String>> {
        let value = self.field(key)?;
        let parsed: Option<BTreeMap<String, String>> = value.as_object().and_then(|object| {
            object
                .iter()
                .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        });
        if parsed.is_none() {
            self.violation(key, "must be an object of string values");
        }
        parsed
    }

    /// Adds a violation found by the kind's own checks.
    pub fn reject(&mut self, key: &str, description: impl Into<String>) {
        self.violation(key, description);
    }

    /// Fails with every violation found, unknown keys included.
    pub fn finish(mut self) -> Result<()> {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|key| !self.known.contains(&key.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            let known = self.known.join(", ");
            self.violation(&key, format!("unknown parameter (known: {known})"));
        }
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.violations))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Json) -> JsonMap {
        value.as_object().unwrap().clone()
    }

    fn violations(result: Result<()>) -> Vec<String> {
        match result {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn integral_floats_are_counts_and_everything_else_is_named() {
        let params = map(json!({"a": 5.0, "b": -1, "c": 1.5, "d": "3", "e": true, "f": 1}));
        let mut p = Params::new(&params);
        assert_eq!(p.count("a"), Some(5));
        assert_eq!(p.count("b"), None);
        assert_eq!(p.count("c"), None);
        assert_eq!(p.count("d"), None);
        assert_eq!(p.bool("e"), Some(true));
        assert_eq!(p.string("f"), None);
        assert_eq!(
            violations(p.finish()),
            ["params.b", "params.c", "params.d", "params.f"]
        );
    }

    #[test]
    fn missing_required_and_unknown_keys_are_violations() {
        let params = map(json!({"stesp": 3}));
        let mut p = Params::new(&params);
        assert_eq!(p.required_count("steps"), None);
        assert_eq!(violations(p.finish()), ["params.steps", "params.stesp"]);
    }

    #[test]
    fn lists_and_maps_of_strings() {
        let params =
            map(json!({"argv": ["echo", "hi"], "env": {"A": "1"}, "bad": [1], "empty": []}));
        let mut p = Params::new(&params);
        assert_eq!(
            p.required_strings("argv"),
            Some(vec!["echo".to_owned(), "hi".to_owned()])
        );
        assert_eq!(p.string_map("env").unwrap()["A"], "1");
        assert_eq!(p.required_strings("bad"), None);
        assert_eq!(p.required_strings("empty"), None);
        assert_eq!(violations(p.finish()), ["params.bad", "params.empty"]);
    }
}
