//! Merchants and their API keys, kept as SHA-256 hashes.

use rand::RngExt;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::MerchantId;

/// What a key starts with, so that a leaked one is recognisable in a scan.
pub const KEY_PREFIX: &str = "sk_test_";
/// Random bytes in a key: 192 bits, hex-encoded.
const KEY_RANDOM_BYTES: usize = 24;
/// Characters of the key kept in clear, to tell keys apart in a list.
const SHOWN_PREFIX_CHARS: usize = 12;

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates the merchant if needed and a new key for it; returns the key,
/// which is not stored anywhere and cannot be shown again.
pub async fn create_api_key(
    conn: &mut PgConnection,
    merchant_name: &str,
) -> Result<(MerchantId, String), sqlx::Error> {
    let merchant: Uuid = sqlx::query_scalar(
        "INSERT INTO merchants (id, name) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(merchant_name)
    .fetch_one(&mut *conn)
    .await?;
    let random: [u8; KEY_RANDOM_BYTES] = rand::rng().random();
    let key = format!("{KEY_PREFIX}{}", hex::encode(random));
    sqlx::query("INSERT INTO api_keys (id, merchant_id, key_hash, prefix) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::new_v4())
        .bind(merchant)
        .bind(hash_key(&key))
        .bind(&key[..SHOWN_PREFIX_CHARS])
        .execute(&mut *conn)
        .await?;
    Ok((MerchantId::from_uuid(merchant), key))
}

/// The merchant owning an unrevoked key. The lookup is by hash, so the
/// comparison never touches the key itself.
pub async fn merchant_for_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<MerchantId>, sqlx::Error> {
    let merchant: Option<Uuid> = sqlx::query_scalar(
        "SELECT merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash_key(key))
    .fetch_optional(conn)
    .await?;
    Ok(merchant.map(MerchantId::from_uuid))
}
