//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): the
//! receiver checks `webhook-signature` against HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}` under the endpoint's secret,
//! so any of the spec's libraries verifies what the gateway sends.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The prefix of a secret as the merchant sees it.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a signature's timestamp may be from the receiver's clock, by
/// default, before [`verify`] refuses it (the spec's five minutes).
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

/// An endpoint's signing key; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// `whsec_` and the key in base64: shown to the merchant once.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// Reads a secret as [`Self::to_whsec`] writes it (the prefix optional,
    /// as the spec's libraries accept).
    pub fn parse(raw: &str) -> Option<Self> {
        let encoded = raw.strip_prefix(SECRET_PREFIX).unwrap_or(raw);
        let bytes = STANDARD.decode(encoded).ok()?;
        (!bytes.is_empty()).then_some(Self(bytes))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// One `v1,<base64>` signature.
pub fn sign(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(secret.mac(id, timestamp, body)))
}

/// The `webhook-signature` header: one signature per secret, space
/// separated (during a rotation, the new secret's and the old one's).
pub fn header(secrets: &[SigningSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the timestamp is more than the tolerance away from now")]
    Stale,
    #[error("no signature in the header matches")]
    NoMatch,
}

/// What a receiver does: the timestamp within `tolerance_seconds` of
/// `now`, and at least one `v1` signature of the header made with `secret`.
pub fn verify(
    secret: &SigningSecret,
    header: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), VerifyError> {
    if (now - timestamp).abs() > tolerance_seconds {
        return Err(VerifyError::Stale);
    }
    let expected = secret.mac(id, timestamp, body);
    let matches = header
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|candidate| bool::from(candidate.ct_eq(&expected)));
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector the Standard Webhooks reference libraries test against:
    /// reproducing it means their verifiers accept our signatures.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> SigningSecret {
        SigningSecret::parse(SECRET).unwrap()
    }

    #[test]
    fn the_published_vector_signs_and_verifies() {
        assert_eq!(sign(&secret(), ID, TIMESTAMP, BODY), SIGNATURE);
        assert_eq!(
            verify(&secret(), SIGNATURE, ID, TIMESTAMP, BODY, TIMESTAMP, 300),
            Ok(())
        );
        assert_eq!(secret().to_whsec(), SECRET);
    }

    #[test]
    fn any_signature_of_several_verifies_and_a_changed_byte_does_not() {
        let other = SigningSecret::from_bytes(vec![7; 32]);
        let both = header(&[other.clone(), secret()], ID, TIMESTAMP, BODY);
        assert_eq!(both.split(' ').count(), 2);
        assert_eq!(
            verify(&secret(), &both, ID, TIMESTAMP, BODY, TIMESTAMP, 300),
            Ok(())
        );
        assert_eq!(
            verify(&other, &both, ID, TIMESTAMP, BODY, TIMESTAMP, 300),
            Ok(())
        );
        let tampered = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(
                &secret(),
                SIGNATURE,
                ID,
                TIMESTAMP,
                tampered,
                TIMESTAMP,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &secret(),
                SIGNATURE,
                "msg_other",
                TIMESTAMP,
                BODY,
                TIMESTAMP,
                300
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_stale_timestamp_is_refused_before_the_signature_is_looked_at() {
        let late = TIMESTAMP + 301;
        assert_eq!(
            verify(&secret(), SIGNATURE, ID, TIMESTAMP, BODY, late, 300),
            Err(VerifyError::Stale)
        );
    }

    #[test]
    fn secrets_parse_with_or_without_the_prefix_and_never_print() {
        let bare = SECRET.strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(SigningSecret::parse(bare), Some(secret()));
        assert_eq!(SigningSecret::parse("whsec_***"), None);
        assert_eq!(SigningSecret::parse("whsec_"), None);
        assert!(!format!("{:?}", secret()).contains("MfKQ"));
    }
}
