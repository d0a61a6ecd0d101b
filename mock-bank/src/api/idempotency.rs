//! Runs an operation so that its key, its money and its stored response
//! commit together.
//!
//! A transaction-scoped advisory lock on (path, key) serialises requests
//! that share a key: the first runs, the rest wait and then replay what it
//! stored. Failures roll everything back and store nothing, so a failed
//! request may be retried with its key, as in the original.
//!
//! [`execute`] runs any operation that way, in a transaction of several
//! statements. The authorization, the bank's hottest path, does the same in
//! one statement of its own: it takes the same lock, and claims the key by
//! storing its response with its work ([`Claim`], [`answer`]).

use std::future::Future;
use std::pin::Pin;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::error::BankError;
use super::request::Scope;

pub type OperationFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, BankError>> + Send + 'c>>;

pub const REPLAYED_HEADER: &str = "X-Idempotent-Replayed";

#[derive(sqlx::FromRow)]
struct StoredResponse {
    request_hash: Vec<u8>,
    response_status: i16,
    response_body: Vec<u8>,
}

/// Replays the stored response for this key, or runs `operation` and stores
/// its response in the same transaction.
pub async fn execute<T, F>(
    pool: &PgPool,
    scope: &Scope,
    operation: F,
) -> Result<HttpResponse, BankError>
where
    T: Serialize,
    F: for<'c> FnOnce(&'c mut PgConnection) -> OperationFuture<'c, T>,
{
    let mut tx = begin_locked(pool, &scope.path, &scope.key).await?;
    let stored = read(&mut tx, &scope.path, &scope.key).await?;
    if let Some(stored) = stored {
        return replay(stored, scope);
    }
    let result = operation(&mut tx).await;
    let value = result.inspect_err(|e| count(scope, e.code()))?;
    let body = serde_json::to_vec(&value).map_err(|e| BankError::Internal(e.into()))?;
    sqlx::query(
        "INSERT INTO idempotency_records (path, key, request_hash, response_status, response_body) \
         VALUES ($1, $2, $3, 200, $4)",
    )
    .bind(&scope.path)
    .bind(&scope.key)
    .bind(&scope.request_hash)
    .bind(&body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    count(scope, "ok");
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body))
}

/// A request's key and the response to store under it, for an operation
/// that claims the key in its own statement (the authorization) instead of
/// running inside [`execute`].
pub struct Claim<'a> {
    pub scope: &'a Scope,
    pub response: &'a [u8],
}

impl Claim<'_> {
    /// The advisory lock [`execute`] takes for the same key.
    pub fn lock_id(&self) -> i64 {
        lock_id(&self.scope.path, &self.scope.key)
    }
}

/// What such an operation did with its [`Claim`].
pub enum Claimed {
    /// It did its work and stored the response.
    Stored,
    /// It did nothing: the key was already used.
    Taken,
    /// It refused, storing nothing; the key may hold an earlier answer.
    Refused(BankError),
}

/// The HTTP answer for a [`Claim`]: the stored response, or what the key's
/// first request stored (replayed, or 422 for a different request), or the
/// refusal. Because the operation took the key's lock, a first request
/// with this key had finished, so what it stored is visible here.
pub async fn answer(
    pool: &PgPool,
    claim: &Claim<'_>,
    claimed: Claimed,
) -> Result<HttpResponse, BankError> {
    let refusal = match claimed {
        Claimed::Stored => {
            count(claim.scope, "ok");
            return Ok(HttpResponse::Ok()
                .content_type(ContentType::json())
                .body(claim.response.to_vec()));
        }
        Claimed::Taken => None,
        Claimed::Refused(e) => Some(e),
    };
    let mut conn = pool.acquire().await?;
    let stored = read(&mut conn, &claim.scope.path, &claim.scope.key).await?;
    match (stored, refusal) {
        (Some(stored), _) => replay(stored, claim.scope),
        (None, Some(refusal)) => {
            count(claim.scope, refusal.code());
            Err(refusal)
        }
        (None, None) => Err(BankError::Internal(anyhow::anyhow!(
            "a key was taken but nothing is stored under it"
        ))),
    }
}

/// Begins a transaction holding the lock that serialises requests sharing
/// (path, key) until it ends, in one round trip: the lock's id is computed
/// here, so the statement needs no parameters and can go with the `BEGIN`.
async fn begin_locked(
    pool: &PgPool,
    path: &str,
    key: &str,
) -> Result<Transaction<'static, Postgres>, BankError> {
    let id = lock_id(path, key);
    Ok(pool
        .begin_with(format!("BEGIN; SELECT pg_advisory_xact_lock({id})"))
        .await?)
}

/// The advisory lock's id for (path, key): the first eight bytes of their
/// SHA-256. A collision only makes two unrelated requests wait in turn.
fn lock_id(path: &str, key: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(path)
        .chain_update(b"\n")
        .chain_update(key)
        .finalize();
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// What the first request with this (path, key) stored, if anything; read
/// under the lock, so a request still running with it has finished.
async fn read(
    conn: &mut PgConnection,
    path: &str,
    key: &str,
) -> Result<Option<StoredResponse>, BankError> {
    Ok(sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_records WHERE path = $1 AND key = $2",
    )
    .bind(path)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?)
}

/// What [`retire_or_read`] found for a key.
pub enum Retired {
    /// The key's request succeeded; here is what it stored.
    Done(Vec<u8>),
    /// The key never succeeded, and now never will.
    Absent,
}

/// Marks the key as used without doing anything, unless its request
/// already succeeded. Taking the same lock as [`execute`] means a request
/// running with this key finishes first; one arriving later meets a
/// different request hash and is refused (422), so the answer cannot
/// change afterwards.
pub async fn retire_or_read(pool: &PgPool, path: &str, key: &str) -> Result<Retired, BankError> {
    let mut tx = begin_locked(pool, path, key).await?;
    let stored = read(&mut tx, path, key).await?;
    let retired = match stored {
        Some(stored) if stored.response_status == 200 => Retired::Done(stored.response_body),
        Some(_) => Retired::Absent,
        None => {
            let tombstone = serde_json::to_vec(&super::error::ErrorBody::new(
                "not_found",
                "this idempotency key was retired without an authorization".into(),
            ))
            .map_err(|e| BankError::Internal(e.into()))?;
            sqlx::query(
                "INSERT INTO idempotency_records (path, key, request_hash, response_status, response_body) \
                 VALUES ($1, $2, $3, 404, $4)",
            )
            .bind(path)
            .bind(key)
            .bind(TOMBSTONE_HASH)
            .bind(tombstone)
            .execute(&mut *tx)
            .await?;
            Retired::Absent
        }
    };
    tx.commit().await?;
    Ok(retired)
}

/// What the key's request stored, if it succeeded, changing nothing: a key
/// that created nothing stays usable. Under the same lock as [`execute`],
/// so a request running with this key has finished.
pub async fn look(pool: &PgPool, path: &str, key: &str) -> Result<Retired, BankError> {
    let mut tx = begin_locked(pool, path, key).await?;
    let stored = read(&mut tx, path, key).await?;
    tx.commit().await?;
    Ok(match stored {
        Some(stored) if stored.response_status == 200 => Retired::Done(stored.response_body),
        Some(_) | None => Retired::Absent,
    })
}

/// Matches no request's SHA-256, so a retired key refuses every request.
const TOMBSTONE_HASH: &[u8] = b"retired";

fn replay(stored: StoredResponse, scope: &Scope) -> Result<HttpResponse, BankError> {
    if stored.request_hash != scope.request_hash {
        count(scope, "idempotency_key_reused");
        return Err(BankError::IdempotencyKeyReused);
    }
    count(scope, "replayed");
    let status = u16::try_from(stored.response_status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            BankError::Internal(anyhow::anyhow!(
                "stored status {} is not HTTP",
                stored.response_status
            ))
        })?;
    Ok(HttpResponse::build(status)
        .content_type(ContentType::json())
        .insert_header((REPLAYED_HEADER, "true"))
        .body(stored.response_body))
}

fn count(scope: &Scope, outcome: &'static str) {
    metrics::counter!("bank_operations_total", "path" => scope.path.clone(), "outcome" => outcome)
        .increment(1);
}
