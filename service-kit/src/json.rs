//! Canonical JSON.

use std::collections::BTreeMap;

use serde_json::Value;

/// The same JSON whatever the order of object keys, at every depth, so that
/// a request re-sent with its fields reordered hashes the same.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::canonical;

    #[test]
    fn key_order_does_not_matter_at_any_depth_but_array_order_does() {
        let a = json!({"b": 1, "a": {"d": [1, 2], "c": null}});
        let b = json!({"a": {"c": null, "d": [1, 2]}, "b": 1});
        assert_eq!(canonical(&a).to_string(), canonical(&b).to_string());
        assert_eq!(
            canonical(&a).to_string(),
            r#"{"a":{"c":null,"d":[1,2]},"b":1}"#
        );
        let swapped = json!({"b": 1, "a": {"d": [2, 1], "c": null}});
        assert_ne!(canonical(&a).to_string(), canonical(&swapped).to_string());
    }
}
