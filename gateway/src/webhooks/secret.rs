//! Endpoint signing secrets, derived rather than stored.
//!
//! An endpoint's secret is HMAC-SHA256 under the gateway's webhook key of
//! the endpoint's id and a random salt kept in its row. The database holds
//! only the salt, so a copy of it cannot sign a webhook a merchant would
//! accept; rotating a secret is drawing a new salt. The key lives in the
//! settings (`WEBHOOK_SECRET_KEY`), the same in every replica, and must
//! never change: every endpoint's secret would change with it.

use hmac::{Hmac, Mac};
use rand::RngExt;
use sha2::Sha256;
use uuid::Uuid;

use super::signature::SigningSecret;
use crate::idempotency::Secret;

/// A salt's length, as the schema checks it.
pub const SALT_BYTES: usize = 16;

/// Separates this use of the key from any other.
const LABEL: &[u8] = b"ficmart-gateway webhook endpoint secret v1\0";

#[derive(Clone, Debug)]
pub struct WebhookKey(Secret);

impl WebhookKey {
    pub fn new(secret: Secret) -> Self {
        Self(secret)
    }

    pub fn endpoint_secret(&self, endpoint: Uuid, salt: &[u8]) -> SigningSecret {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(LABEL);
        mac.update(endpoint.as_bytes());
        mac.update(salt);
        SigningSecret::from_bytes(mac.finalize().into_bytes().to_vec())
    }
}

pub fn new_salt() -> [u8; SALT_BYTES] {
    rand::rng().random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_depends_on_key_endpoint_and_salt() {
        let key = WebhookKey::new(Secret::random());
        let endpoint = Uuid::now_v7();
        let salt = new_salt();
        let secret = key.endpoint_secret(endpoint, &salt);
        assert_eq!(secret, key.endpoint_secret(endpoint, &salt));
        assert_ne!(secret, key.endpoint_secret(Uuid::now_v7(), &salt));
        assert_ne!(secret, key.endpoint_secret(endpoint, &new_salt()));
        let other_key = WebhookKey::new(Secret::random());
        assert_ne!(secret, other_key.endpoint_secret(endpoint, &salt));
        assert!(secret.to_whsec().starts_with("whsec_"));
    }
}
