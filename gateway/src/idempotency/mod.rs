//! Stripe-style idempotency keys, scoped to the merchant.
//!
//! A key is claimed inside the transaction that records the intent, with a
//! lease rather than a held transaction: the row says who works on it until
//! when. A replay returns the stored bytes; a key whose first request ended
//! with the bank's answer unknown is taken over and its operation resumed.

mod fingerprint;

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

pub use fingerprint::fingerprint;

use crate::domain::{IdempotencyKey, MerchantId};
use crate::store::operations::Lease;

/// A response stored for replay, byte for byte.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResponse {
    pub response_status: i16,
    pub response_body: Vec<u8>,
}

#[derive(Debug)]
pub enum Claim {
    /// Never seen: the caller does the work.
    New,
    /// Done before: answer with this.
    Replay(StoredResponse),
    /// Started before and given up (a 202, a timeout, a crash): resume the
    /// payment's operation rather than start another.
    Resume { payment_id: Option<Uuid> },
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("a request with this key is still being processed")]
    InUse,
    #[error("this key was used with a different request")]
    Reused,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    request_hash: Vec<u8>,
    state: String,
    live: bool,
    payment_id: Option<Uuid>,
    response_status: Option<i16>,
    response_body: Option<Vec<u8>>,
}

/// Claims `key` for a request with `request_hash`, leased to the caller.
pub async fn claim(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
    request_hash: &[u8],
    lease: Lease,
) -> Result<Claim, ClaimError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (merchant_id, key, request_hash, state, lease_until, leased_by) \
         VALUES ($1, $2, $3, 'in_progress', now() + $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .bind(request_hash)
    .bind(lease.duration)
    .bind(lease.holder)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    let row: KeyRow = sqlx::query_as(
        "SELECT request_hash, state, coalesce(lease_until > now(), false) AS live, payment_id, \
           response_status, response_body \
         FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 FOR UPDATE",
    )
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .fetch_one(&mut *conn)
    .await?;
    if row.request_hash != request_hash {
        return Err(ClaimError::Reused);
    }
    match (row.state.as_str(), row.response_status, row.response_body) {
        ("done", Some(response_status), Some(response_body)) => Ok(Claim::Replay(StoredResponse {
            response_status,
            response_body,
        })),
        _ if row.live => Err(ClaimError::InUse),
        _ => {
            sqlx::query(
                "UPDATE idempotency_keys SET lease_until = now() + $3, leased_by = $4 WHERE merchant_id = $1 AND key = $2",
            )
            .bind(merchant.as_uuid())
            .bind(key.as_str())
            .bind(lease.duration)
            .bind(lease.holder)
            .execute(&mut *conn)
            .await?;
            Ok(Claim::Resume {
                payment_id: row.payment_id,
            })
        }
    }
}

/// Remembers which payment the key's request is about, for a resume.
pub async fn attach_payment(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
    payment_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET payment_id = $3 WHERE merchant_id = $1 AND key = $2")
        .bind(merchant.as_uuid())
        .bind(key.as_str())
        .bind(payment_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the final response; from now on the key replays it.
pub async fn complete(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
    status: u16,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', lease_until = NULL, response_status = $3, response_body = $4 \
         WHERE merchant_id = $1 AND key = $2",
    )
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .bind(i16::try_from(status).unwrap_or(500))
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives the key's lease up without an answer, so that a retry resumes at once.
pub async fn release(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET lease_until = now() WHERE merchant_id = $1 AND key = $2 AND state = 'in_progress'")
        .bind(merchant.as_uuid())
        .bind(key.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Hands back the keys `holder` is still working on (a stopping process),
/// so that their retries resume at once.
pub async fn release_held_by(conn: &mut PgConnection, holder: Uuid) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE idempotency_keys SET lease_until = now() WHERE leased_by = $1 AND state = 'in_progress'",
    )
    .bind(holder)
    .execute(conn)
    .await?;
    Ok(released.rows_affected())
}

/// Deletes answered keys older than `retention`. Unanswered keys stay: their
/// operation may still be resumed through them.
pub async fn purge(conn: &mut PgConnection, retention: Duration) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM idempotency_keys WHERE state = 'done' AND created_at < now() - $1",
    )
    .bind(retention)
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}
