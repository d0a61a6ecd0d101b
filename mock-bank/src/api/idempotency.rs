//! Runs an operation so that its key, its money and its stored response
//! commit together.
//!
//! A transaction-scoped advisory lock on (path, key) serialises requests
//! that share a key: the first runs, the rest wait and then replay what it
//! stored. Failures roll everything back and store nothing, so a failed
//! request may be retried with its key, as in the original.

use std::future::Future;
use std::pin::Pin;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

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
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || E'\\n' || $2, 0))")
        .bind(&scope.path)
        .bind(&scope.key)
        .execute(&mut *tx)
        .await?;
    let stored: Option<StoredResponse> = sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_records WHERE path = $1 AND key = $2",
    )
    .bind(&scope.path)
    .bind(&scope.key)
    .fetch_optional(&mut *tx)
    .await?;
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
