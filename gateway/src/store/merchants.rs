//! Merchants and their API keys, kept as SHA-256 hashes.

use chrono::{DateTime, Utc};
use rand::RngExt;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::domain::MerchantId;

/// What a key starts with, so that a leaked one is recognisable in a scan.
pub const KEY_PREFIX: &str = "sk_test_";
/// Random bytes in a key: 192 bits, hex-encoded.
const KEY_RANDOM_BYTES: usize = 24;
/// Characters of the key kept in clear, to tell keys apart in a list.
const SHOWN_PREFIX_CHARS: usize = 12;

/// The start of a key that may be shown (listed, printed, logged): the
/// rest of it is the secret.
pub fn shown_prefix(key: &str) -> String {
    key.chars().take(SHOWN_PREFIX_CHARS).collect()
}

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// When no merchant is named `name` exactly: the name of another that
/// `name` could be a mistyped form of, the same but for letter case or
/// surrounding spaces. A key made for the mistyped name would belong to a
/// new merchant, with none of the first one's payments or idempotency keys.
pub async fn similar_merchant(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT name FROM merchants WHERE lower(btrim(name)) = lower(btrim($1)) AND name <> $1 \
           AND NOT EXISTS (SELECT 1 FROM merchants WHERE name = $1) \
         LIMIT 1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
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
        .bind(shown_prefix(&key))
        .execute(&mut *conn)
        .await?;
    Ok((MerchantId::from_uuid(merchant), key))
}

/// Who a request's key authenticates: the merchant, and the key itself
/// (by its id, never its secret), which rate limiting counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub merchant: MerchantId,
    pub key_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct KeyLookup {
    id: Uuid,
    merchant_id: Uuid,
    key_hash: Vec<u8>,
}

/// The merchant owning an unrevoked key, by the key's [`hash_key`]. The API
/// runs it for a key it has not seen authenticate within `API_KEY_CACHE_MS`.
///
/// The row is found by the key's SHA-256 through the unique index, so the
/// database never compares the secret itself, and how long an index
/// search takes tells an attacker about hashes, not about the key's
/// characters. The stored hash is then compared with the computed one in
/// constant time all the same: equality is decided here, in code whose
/// timing does not depend on where two byte strings first differ, rather
/// than trusted to how a database or an index happens to compare.
pub async fn merchant_for_key(
    conn: &mut PgConnection,
    key_hash: &[u8],
) -> Result<Option<Authenticated>, sqlx::Error> {
    let row: Option<KeyLookup> = sqlx::query_as(
        "SELECT id, merchant_id, key_hash FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(key_hash)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|row| {
        let equal: bool = row.key_hash.as_slice().ct_eq(key_hash).into();
        equal.then_some(Authenticated {
            merchant: MerchantId::from_uuid(row.merchant_id),
            key_id: row.id,
        })
    }))
}

/// One API key as an operator sees it: never the key, only its prefix.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRecord {
    pub id: Uuid,
    pub merchant: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// `id  merchant  prefix  created_at  active|revoked <at>`, tab-separated.
    pub fn line(&self) -> String {
        let status = match self.revoked_at {
            None => "active".to_owned(),
            Some(at) => format!("revoked {}", rfc3339(at)),
        };
        format!(
            "{}\t{}\t{}\t{}\t{status}",
            self.id,
            self.merchant,
            self.prefix,
            rfc3339(self.created_at)
        )
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

const KEY_COLUMNS: &str = "k.id, m.name AS merchant, k.prefix, k.created_at, k.revoked_at \
     FROM api_keys k JOIN merchants m ON m.id = k.merchant_id";

/// Every key, or one merchant's, oldest first.
pub async fn list_keys(
    conn: &mut PgConnection,
    merchant: Option<&str>,
) -> Result<Vec<KeyRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} WHERE $1::text IS NULL OR m.name = $1 ORDER BY k.created_at, k.id"
    ))
    .bind(merchant)
    .fetch_all(conn)
    .await
}

/// What `revoke_key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The key is revoked from now on; `revoked_at` is set.
    Revoked(KeyRecord),
    /// It already was; nothing changed.
    AlreadyRevoked(KeyRecord),
    /// No key matches.
    NotFound,
    /// Several keys match the prefix: nothing was revoked.
    Ambiguous(Vec<KeyRecord>),
}

/// Revokes the one key that `selector` names: its id (a UUID), the whole
/// key, or the start of its shown prefix. A prefix that matches several
/// keys revokes none.
pub async fn revoke_key(
    conn: &mut PgConnection,
    selector: &str,
) -> Result<Revocation, sqlx::Error> {
    let selector = selector.trim();
    if selector.is_empty() {
        return Ok(Revocation::NotFound);
    }
    let matches: Vec<KeyRecord> = if let Ok(id) = Uuid::parse_str(selector) {
        sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} WHERE k.id = $1 FOR UPDATE OF k"
        ))
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
    } else if selector.starts_with(KEY_PREFIX) && selector.len() > SHOWN_PREFIX_CHARS {
        // Longer than any shown prefix: the whole key, found by its hash.
        sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} WHERE k.key_hash = $1 FOR UPDATE OF k"
        ))
        .bind(hash_key(selector))
        .fetch_all(&mut *conn)
        .await?
    } else {
        sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} WHERE left(k.prefix, length($1)) = $1 \
             ORDER BY k.created_at, k.id FOR UPDATE OF k"
        ))
        .bind(selector)
        .fetch_all(&mut *conn)
        .await?
    };
    let key = match <[KeyRecord; 1]>::try_from(matches) {
        Ok([key]) => key,
        Err(matches) if matches.is_empty() => return Ok(Revocation::NotFound),
        Err(matches) => return Ok(Revocation::Ambiguous(matches)),
    };
    if key.revoked_at.is_some() {
        return Ok(Revocation::AlreadyRevoked(key));
    }
    let revoked_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 RETURNING revoked_at",
    )
    .bind(key.id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Revocation::Revoked(KeyRecord {
        revoked_at: Some(revoked_at),
        ..key
    }))
}
