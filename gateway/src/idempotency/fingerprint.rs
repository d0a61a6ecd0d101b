//! What makes two requests "the same request", without keeping anything a
//! card could be recovered from.
//!
//! The fingerprint covers method, path and body (as canonical JSON, so that
//! whitespace and key order do not count), and the body holds the card
//! number and CVV. A plain digest of that would be a card oracle: with the
//! brand, the last four digits, the expiry and the amount stored beside it,
//! the missing digits and the CVV fall to a brute force in seconds. So the
//! fingerprint is an HMAC-SHA256 under a secret that lives in the gateway's
//! settings, never in its database: a dump alone recomputes nothing.
//!
//! A secret can be rotated: with the old one as the previous secret, keys
//! stored under it still match until they are purged.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde_json::Value;
use service_kit::json::canonical;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The shortest secret accepted: as long as the HMAC's output.
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret from the settings (the fingerprint's, the webhook key);
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A fresh random secret, for tests and for `simulator up`.
    pub fn random() -> Self {
        use rand::RngExt;
        let bytes: [u8; 32] = rand::rng().random();
        Self(hex::encode(bytes))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "a secret must be at least {MIN_SECRET_BYTES} bytes (it is {})",
                raw.len()
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// The command line's parser for a [`Secret`]: clap's own error for a
/// refused value quotes the value, and a secret one byte short is still
/// most of a secret; this one names the setting and the rule only.
#[derive(Debug, Clone, Copy)]
pub struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        let name = arg
            .and_then(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .or_else(|| arg.map(|a| a.get_id().to_string()))
            .unwrap_or_else(|| "a secret".to_owned());
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("{name}: {why}\n"),
            )
        };
        let raw = value
            .to_str()
            .ok_or_else(|| refuse("a secret must be UTF-8".to_owned()))?;
        raw.parse().map_err(refuse)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Computes fingerprints under the current secret and recognises those
/// made under the previous one.
#[derive(Clone, Debug)]
pub struct Fingerprinter {
    current: Secret,
    previous: Option<Secret>,
    /// The mutant that stores a plain SHA-256 (the bug this module fixes).
    plain: bool,
    /// The mutant that leaves the path out.
    without_path: bool,
}

/// One request's fingerprint, under each secret the gateway knows.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl Fingerprinter {
    pub fn new(current: Secret, previous: Option<Secret>) -> Self {
        Self {
            current,
            previous,
            plain: false,
            without_path: false,
        }
    }

    /// The pre-fix form, for the simulator's mutation table only.
    pub fn plain_sha256(self) -> Self {
        Self {
            plain: true,
            ..self
        }
    }

    /// The mutant that leaves the path out, for the mutation table only.
    pub fn without_path(self) -> Self {
        Self {
            without_path: true,
            ..self
        }
    }

    pub fn fingerprint(&self, method: &str, path: &str, body: &Value) -> Fingerprint {
        let canonical = canonical(body).to_string();
        let path = if self.without_path { "" } else { path };
        if self.plain {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(
                format!("{method}\n{path}\n{canonical}").as_bytes(),
            );
            return Fingerprint {
                current: digest.to_vec(),
                previous: None,
            };
        }
        let under = |secret: &Secret| mac(secret, method, path, &canonical);
        Fingerprint {
            current: under(&self.current),
            previous: self.previous.as_ref().map(under),
        }
    }
}

fn mac(secret: &Secret, method: &str, path: &str, canonical_body: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.0.as_bytes())
        .expect("HMAC takes a key of any length");
    for part in [method, "\n", path, "\n", canonical_body] {
        mac.update(part.as_bytes());
    }
    mac.finalize().into_bytes().to_vec()
}

impl Fingerprint {
    /// What is stored with a new key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.current
    }

    /// Whether a stored fingerprint is this request's, under either secret.
    pub fn matches(&self, stored: &[u8]) -> bool {
        let equal = |mine: &[u8]| bool::from(mine.ct_eq(stored));
        equal(&self.current) || self.previous.as_deref().is_some_and(equal)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sha2::Digest;

    use super::*;

    fn secret(fill: char) -> Secret {
        fill.to_string().repeat(MIN_SECRET_BYTES).parse().unwrap()
    }

    #[test]
    fn key_order_and_whitespace_do_not_count_but_everything_else_does() {
        let printer = Fingerprinter::new(secret('a'), None);
        let a = printer.fingerprint(
            "POST",
            "/v1/payments",
            &json!({"a": 1, "b": {"c": 2, "d": 3}}),
        );
        let b: Value = serde_json::from_str(r#"{ "b": {"d": 3, "c": 2}, "a": 1 }"#).unwrap();
        assert!(a.matches(printer.fingerprint("POST", "/v1/payments", &b).as_bytes()));
        for (method, path, body) in [
            (
                "POST",
                "/v1/payments",
                json!({"a": 2, "b": {"c": 2, "d": 3}}),
            ),
            (
                "POST",
                "/v1/payments/x",
                json!({"a": 1, "b": {"c": 2, "d": 3}}),
            ),
            (
                "PUT",
                "/v1/payments",
                json!({"a": 1, "b": {"c": 2, "d": 3}}),
            ),
        ] {
            assert!(!a.matches(printer.fingerprint(method, path, &body).as_bytes()));
        }
    }

    #[test]
    fn without_the_secret_the_fingerprint_cannot_be_recomputed() {
        let body = json!({"card": {"number": "4111111111111111", "cvv": "123"}});
        let stored =
            Fingerprinter::new(secret('a'), None).fingerprint("POST", "/v1/payments", &body);
        let plain =
            sha2::Sha256::digest(format!("POST\n/v1/payments\n{}", canonical(&body)).as_bytes());
        assert_ne!(stored.as_bytes(), plain.as_slice());
        let other =
            Fingerprinter::new(secret('b'), None).fingerprint("POST", "/v1/payments", &body);
        assert!(!other.matches(stored.as_bytes()));
    }

    #[test]
    fn a_rotated_secret_still_recognises_what_the_previous_one_stored() {
        let body = json!({"amount": 5});
        let old = Fingerprinter::new(secret('a'), None).fingerprint("POST", "/p", &body);
        let rotated = Fingerprinter::new(secret('b'), Some(secret('a')));
        assert!(
            rotated
                .fingerprint("POST", "/p", &body)
                .matches(old.as_bytes())
        );
        let forgotten = Fingerprinter::new(secret('b'), None);
        assert!(
            !forgotten
                .fingerprint("POST", "/p", &body)
                .matches(old.as_bytes())
        );
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!("too short".parse::<Secret>().is_err());
        let secret = Secret::random();
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }
}
