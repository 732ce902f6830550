//! JSON ⇄ `google.protobuf.Value` / `Struct`, for params, checkpoints and results.
//!
//! Protobuf numbers are doubles: an integral double converts back to a JSON integer so that
//! `{"steps": 5}` survives a round trip as `5`, not `5.0`. Non-finite doubles have no JSON
//! form and are refused.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

/// A protobuf number (NaN or ±infinity) that JSON cannot carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFiniteNumber(pub f64);

impl std::fmt::Display for NonFiniteNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "numbers must be finite, got {}", self.0)
    }
}

impl std::error::Error for NonFiniteNumber {}

/// A JSON value given where an object was required (params must be an object).
#[derive(Debug, Clone, PartialEq)]
pub struct NotAnObject {
    /// What was found instead, e.g. "an array".
    pub found: &'static str,
}

impl std::fmt::Display for NotAnObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "expected a JSON object, got {}", self.found)
    }
}

impl std::error::Error for NotAnObject {}

/// The largest double below which every integer is exact.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

pub fn value_to_json(value: &Value) -> Result<Json, NonFiniteNumber> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n)?,
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => Json::Array(
            list.values
                .iter()
                .map(value_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(object)) => Json::Object(struct_to_json(object)?),
    })
}

pub fn struct_to_json(object: &Struct) -> Result<Map<String, Json>, NonFiniteNumber> {
    object
        .fields
        .iter()
        .map(|(key, value)| Ok((key.clone(), value_to_json(value)?)))
        .collect()
}

fn number_to_json(n: f64) -> Result<Json, NonFiniteNumber> {
    if n.fract() == 0.0 && n.abs() < MAX_EXACT_INTEGER {
        return Ok(Json::Number(Number::from(n as i64)));
    }
    Number::from_f64(n)
        .map(Json::Number)
        .ok_or(NonFiniteNumber(n))
}

pub fn json_to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Json::Object(object) => Kind::StructValue(json_to_struct(object)),
    };
    Value { kind: Some(kind) }
}

pub fn json_to_struct(object: &Map<String, Json>) -> Struct {
    Struct {
        fields: object
            .iter()
            .map(|(key, value)| (key.clone(), json_to_value(value)))
            .collect(),
    }
}

/// A JSON value that must be an object, as a `Struct`.
pub fn object_to_struct(json: &Json) -> Result<Struct, NotAnObject> {
    match json {
        Json::Object(object) => Ok(json_to_struct(object)),
        Json::Null => Err(NotAnObject { found: "null" }),
        Json::Bool(_) => Err(NotAnObject { found: "a boolean" }),
        Json::Number(_) => Err(NotAnObject { found: "a number" }),
        Json::String(_) => Err(NotAnObject { found: "a string" }),
        Json::Array(_) => Err(NotAnObject { found: "an array" }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_survives_a_round_trip() {
        let original = json!({
            "int": 5, "negative": -3, "float": 1.5, "text": "hi", "yes": true, "nothing": null,
            "list": [1, "two", [3.25], {"deep": {"er": false}}],
        });
        let value = json_to_value(&original);
        assert_eq!(value_to_json(&value).unwrap(), original);
    }

    #[test]
    fn integral_doubles_become_integers() {
        let value = Value {
            kind: Some(Kind::NumberValue(5.0)),
        };
        assert_eq!(value_to_json(&value).unwrap(), json!(5));
        assert!(value_to_json(&value).unwrap().is_i64());
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let value = Value {
                kind: Some(Kind::NumberValue(n)),
            };
            assert!(value_to_json(&value).is_err());
        }
    }

    #[test]
    fn only_objects_become_structs() {
        assert!(object_to_struct(&json!({"a": 1})).is_ok());
        assert_eq!(
            object_to_struct(&json!([1])),
            Err(NotAnObject { found: "an array" })
        );
    }

    #[test]
    fn a_missing_kind_is_null() {
        assert_eq!(value_to_json(&Value { kind: None }).unwrap(), Json::Null);
    }
}
