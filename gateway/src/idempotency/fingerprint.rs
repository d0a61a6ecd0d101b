use service_kit::json::canonical;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What makes two requests "the same request": method, path and body, the
/// body compared as JSON so that whitespace and key order do not count.
pub fn fingerprint(method: &str, path: &str, body: &Value) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical(body).to_string().as_bytes());
    hasher.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::fingerprint;

    #[test]
    fn key_order_and_whitespace_do_not_count_but_everything_else_does() {
        let a = fingerprint(
            "POST",
            "/v1/payments",
            &json!({"a": 1, "b": {"c": 2, "d": 3}}),
        );
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "b": {"d": 3, "c": 2}, "a": 1 }"#).unwrap();
        assert_eq!(a, fingerprint("POST", "/v1/payments", &b));
        assert_ne!(
            a,
            fingerprint(
                "POST",
                "/v1/payments",
                &json!({"a": 2, "b": {"c": 2, "d": 3}})
            )
        );
        assert_ne!(
            a,
            fingerprint(
                "POST",
                "/v1/payments/x",
                &json!({"a": 1, "b": {"c": 2, "d": 3}})
            )
        );
        assert_ne!(
            a,
            fingerprint(
                "PUT",
                "/v1/payments",
                &json!({"a": 1, "b": {"c": 2, "d": 3}})
            )
        );
    }
}
