//! Typed reads of JSON input fields. Every error names the field, the expected type or range,
//! and the value received.

use serde_json::{Map, Value};

use crate::InferenceError;

pub type Fields = Map<String, Value>;

/// Describes a JSON value's type for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Returns the input as a JSON object, or an error saying that one was expected.
pub fn object(input: Value) -> Result<Fields, InferenceError> {
    match input {
        Value::Object(fields) => Ok(fields),
        other => Err(InferenceError::invalid_input(format!(
            "the input must be a JSON object, got {}",
            type_name(&other)
        ))),
    }
}

fn present<'a>(fields: &'a Fields, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|value| !value.is_null())
}

pub fn optional_bool(fields: &Fields, name: &str) -> Result<Option<bool>, InferenceError> {
    match present(fields, name) {
        None => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => Err(InferenceError::invalid_input(format!(
            "`{name}` must be a boolean, got {}",
            type_name(other)
        ))),
    }
}

pub fn optional_string<'a>(
    fields: &'a Fields,
    name: &str,
) -> Result<Option<&'a str>, InferenceError> {
    match present(fields, name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(other) => Err(InferenceError::invalid_input(format!(
            "`{name}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// Reads a number and checks it against an inclusive range.
pub fn optional_number(
    fields: &Fields,
    name: &str,
    min: f64,
    max: f64,
) -> Result<Option<f64>, InferenceError> {
    let Some(value) = present(fields, name) else {
        return Ok(None);
    };
    let Some(number) = value.as_f64() else {
        return Err(InferenceError::invalid_input(format!(
            "`{name}` must be a number from {min} to {max}, got {}",
            type_name(value)
        )));
    };
    if !(min..=max).contains(&number) {
        return Err(InferenceError::invalid_input(format!(
            "`{name}` must be from {min} to {max}, got {number}"
        )));
    }
    Ok(Some(number))
}

/// Reads a whole number and checks it against an inclusive range.
pub fn optional_integer(
    fields: &Fields,
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, InferenceError> {
    let Some(value) = present(fields, name) else {
        return Ok(None);
    };
    let integer = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as u64)
    });
    let Some(integer) = integer.filter(|_| value.is_number()) else {
        return Err(InferenceError::invalid_input(format!(
            "`{name}` must be an integer from {min} to {max}, got {}",
            describe(value)
        )));
    };
    if !(min..=max).contains(&integer) {
        return Err(InferenceError::invalid_input(format!(
            "`{name}` must be from {min} to {max}, got {integer}"
        )));
    }
    Ok(Some(integer))
}

fn describe(value: &Value) -> String {
    match value {
        Value::Number(number) => number.to_string(),
        other => type_name(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Fields {
        object(value).expect("test input is an object")
    }

    #[test]
    fn number_out_of_range_names_field() {
        let error = optional_number(&fields(json!({"temperature": 7})), "temperature", 0.0, 5.0)
            .unwrap_err();
        assert!(error.message.contains("`temperature`"), "{}", error.message);
        assert!(error.message.contains("from 0 to 5"), "{}", error.message);
    }

    #[test]
    fn integer_rejects_fraction_and_string() {
        let input = fields(json!({"max_tokens": 1.5, "top_k": "3"}));
        assert!(optional_integer(&input, "max_tokens", 1, 10).is_err());
        assert!(optional_integer(&input, "top_k", 1, 50).is_err());
    }

    #[test]
    fn integer_accepts_whole_float() {
        let input = fields(json!({"max_tokens": 12.0}));
        assert_eq!(
            optional_integer(&input, "max_tokens", 1, 100).unwrap(),
            Some(12)
        );
    }

    #[test]
    fn null_counts_as_absent() {
        let input = fields(json!({"stream": null}));
        assert_eq!(optional_bool(&input, "stream").unwrap(), None);
    }

    #[test]
    fn non_object_input_is_rejected() {
        let error = object(json!([1, 2])).unwrap_err();
        assert!(error.message.contains("an array"), "{}", error.message);
    }
}
