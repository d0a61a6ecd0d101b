//! Request bodies parsed so that they mean one thing: an object that has a
//! key twice, at any depth, is refused. serde_json keeps the last of them;
//! a proxy, a WAF or the merchant's own validation may keep the first, and
//! then the amount they checked is not the amount the gateway charged.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a body is not one JSON value.
#[derive(Debug)]
pub enum Error {
    /// `path` (dotted, `[i]` for array items) names a key sent twice.
    Duplicate { path: String },
    /// Not JSON: its position is in the error.
    Syntax(serde_json::Error),
}

/// Parses `bytes` as one JSON value, refusing a repeated key.
pub fn parse(bytes: &[u8]) -> Result<Value, Error> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = At {
        path: String::new(),
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    // A duplicate stops the parse with an error of serde's; the path is
    // kept aside, since serde's errors carry only text.
    match (parsed, duplicate.into_inner()) {
        (_, Some(path)) => Err(Error::Duplicate { path }),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(Error::Syntax(e)),
    }
}

/// Deserializes the value at `path`; records the first duplicate key.
struct At<'a> {
    path: String,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'a> At<'a> {
    fn child(&self, path: String) -> Self {
        Self {
            path,
            duplicate: self.duplicate,
        }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for At<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // The parser yields finite numbers only; null as serde_json's own.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) =
            seq.next_element_seed(self.child(format!("{}[{}]", self.path, items.len())))?
        {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = self.key(&key);
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(path);
                return Err(de::Error::custom("a key appears twice"));
            }
            let value = map.next_value_seed(self.child(path))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate(text: &str) -> Option<String> {
        match parse(text.as_bytes()) {
            Err(Error::Duplicate { path }) => Some(path),
            Ok(_) | Err(Error::Syntax(_)) => None,
        }
    }

    #[test]
    fn what_serde_json_accepts_without_a_repeated_key_parses_the_same() {
        for text in [
            "null",
            "true",
            "-1",
            "18446744073709551615",
            "1.5e3",
            r#""a\u00e9\n""#,
            "[]",
            "{}",
            r#"{"a":{"b":[1,{"c":null}],"d":"x"},"e":[[],{}]}"#,
            " {\"a\" : 1 } ",
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text.as_bytes()).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn a_repeated_key_is_named_by_its_path_at_any_depth() {
        assert_eq!(duplicate(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate(r#"{"card":{"number":"1","cvv":"2","number":"3"}}"#).as_deref(),
            Some("card.number")
        );
        assert_eq!(
            duplicate(r#"{"a":[{"b":1},{"c":1,"c":2}]}"#).as_deref(),
            Some("a[1].c")
        );
        assert_eq!(
            duplicate(r#"[[{"x":1,"x":1}]]"#).as_deref(),
            Some("[0][0].x")
        );
        // The same key however it is spelt.
        assert_eq!(
            duplicate(r#"{"amount":1,"\u0061mount":2}"#).as_deref(),
            Some("amount")
        );
        // The same value under two keys, and one key in two objects, are fine.
        assert_eq!(duplicate(r#"{"a":1,"b":1,"c":{"a":1}}"#), None);
    }

    #[test]
    fn what_is_not_json_is_a_syntax_error() {
        for text in ["", "{", r#"{"a":1} x"#, "[1,]", "{'a':1}", "NaN"] {
            assert!(
                matches!(parse(text.as_bytes()), Err(Error::Syntax(_))),
                "{text}"
            );
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            matches!(parse(deep.as_bytes()), Err(Error::Syntax(_))),
            "past serde_json's depth limit"
        );
    }
}
