//! The `Idempotency-Key` of one logical operation.

use std::fmt;
use std::str::FromStr;

/// The longest key the gateway accepts.
pub const MAX_KEY_LEN: usize = 255;

/// The key that names one logical operation (one authorization, one
/// capture, ...). The client sends it on every attempt of the call, and the
/// caller passes the same key again to resume an operation that ended
/// without a final answer ([`crate::Error::StillPending`], a transport
/// error, unavailability).
///
/// 1–255 printable ASCII characters (space to tilde), as the gateway
/// requires, with one rule of the client's own: no space at either end. An
/// HTTP server strips the whitespace around a header's value, so `" k"`
/// and `"k"` would reach the gateway as the same key; refusing them here
/// keeps two keys the caller thinks distinct from meeting there.
///
/// ```
/// use client::{IdempotencyKey, InvalidKey};
///
/// let key: IdempotencyKey = "order-1001-authorize".parse()?;
/// assert_eq!(key.as_str(), "order-1001-authorize");
///
/// assert_eq!(IdempotencyKey::new(""), Err(InvalidKey::Length));
/// assert_eq!(IdempotencyKey::new("x".repeat(256)), Err(InvalidKey::Length));
/// assert_eq!(IdempotencyKey::new("café"), Err(InvalidKey::Charset));
/// assert_eq!(IdempotencyKey::new("tab\there"), Err(InvalidKey::Charset));
/// assert_eq!(IdempotencyKey::new(" padded"), Err(InvalidKey::EdgeSpace));
///
/// // Two random keys never collide in practice (122 random bits each).
/// assert_ne!(IdempotencyKey::random(), IdempotencyKey::random());
/// # Ok::<(), client::InvalidKey>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why a string is not an [`IdempotencyKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    #[error("an Idempotency-Key must be 1 to {MAX_KEY_LEN} characters long")]
    Length,
    #[error("an Idempotency-Key must contain only printable ASCII characters (space to tilde)")]
    Charset,
    #[error(
        "an Idempotency-Key must not start or end with a space (HTTP would strip it on the way)"
    )]
    EdgeSpace,
}

impl IdempotencyKey {
    pub fn new(raw: impl Into<String>) -> Result<Self, InvalidKey> {
        let raw = raw.into();
        // The charset first: a non-ASCII string's byte length is not its
        // character count, so the length refusal would be misleading.
        if !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(InvalidKey::Charset);
        }
        if !(1..=MAX_KEY_LEN).contains(&raw.len()) {
            return Err(InvalidKey::Length);
        }
        if raw.starts_with(' ') || raw.ends_with(' ') {
            return Err(InvalidKey::EdgeSpace);
        }
        Ok(Self(raw))
    }

    /// A fresh key for a new operation: a random (v4) UUID.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = InvalidKey;

    fn from_str(raw: &str) -> Result<Self, InvalidKey> {
        Self::new(raw)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_are_inclusive() {
        assert!(IdempotencyKey::new("a").is_ok());
        assert!(IdempotencyKey::new("a".repeat(MAX_KEY_LEN)).is_ok());
        assert_eq!(
            IdempotencyKey::new("a".repeat(MAX_KEY_LEN + 1)),
            Err(InvalidKey::Length)
        );
    }

    #[test]
    fn every_printable_ascii_character_is_accepted_inside_a_key() {
        let all: String = (0x21_u8..=0x7e).map(char::from).collect();
        assert!(IdempotencyKey::new(format!("a{all} b")).is_ok());
        for control in [0x00_u8, 0x0a, 0x0d, 0x1f, 0x7f] {
            let raw = format!("a{}b", char::from(control));
            assert_eq!(IdempotencyKey::new(raw), Err(InvalidKey::Charset));
        }
    }

    #[test]
    fn a_space_only_key_is_refused() {
        assert_eq!(IdempotencyKey::new(" "), Err(InvalidKey::EdgeSpace));
        assert_eq!(IdempotencyKey::new("k "), Err(InvalidKey::EdgeSpace));
    }

    #[test]
    fn random_keys_are_valid_keys() {
        let key = IdempotencyKey::random();
        assert_eq!(IdempotencyKey::new(key.as_str()), Ok(key));
    }
}
