//! Operations: one row per call the gateway makes to the bank, written
//! before the call with the bank idempotency key every retry will reuse.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    Authorize,
    Capture,
    Void,
    Refund,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Capture => "capture",
            Self::Void => "void",
            Self::Refund => "refund",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [Self::Authorize, Self::Capture, Self::Void, Self::Refund]
            .into_iter()
            .find(|k| k.as_str() == raw)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperationRecord {
    pub id: Uuid,
    pub payment_id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: StoredKind,
    pub bank_idempotency_key: String,
    pub status: String,
    pub attempts: i32,
    pub lease_until: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredKind(pub OperationKind);

impl TryFrom<String> for StoredKind {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        OperationKind::parse(&raw)
            .map(Self)
            .ok_or_else(|| format!("unknown operation kind {raw:?}"))
    }
}

impl OperationRecord {
    pub fn kind(&self) -> OperationKind {
        self.kind.0
    }

    pub fn is_pending(&self) -> bool {
        self.status == "pending"
    }
}

const COLUMNS: &str = "id, payment_id, kind, bank_idempotency_key, status, attempts, lease_until";

/// Records the intent, leased to the caller for `lease`.
pub async fn insert(
    conn: &mut PgConnection,
    payment_id: Uuid,
    kind: OperationKind,
    lease: Duration,
) -> Result<OperationRecord, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query_as(&format!(
        "INSERT INTO operations (id, payment_id, kind, bank_idempotency_key, lease_until) \
         VALUES ($1, $2, $3, $4, now() + $5) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(payment_id)
    .bind(kind.as_str())
    .bind(format!("gw_{}_{id}", kind.as_str()))
    .bind(lease)
    .fetch_one(conn)
    .await
}

/// The payment's unfinished operation, locked.
pub async fn lock_pending(
    conn: &mut PgConnection,
    payment_id: Uuid,
) -> Result<Option<OperationRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM operations WHERE payment_id = $1 AND status = 'pending' FOR UPDATE"
    ))
    .bind(payment_id)
    .fetch_optional(conn)
    .await
}

pub async fn lock(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<OperationRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM operations WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Takes (or extends) the lease: whoever holds it may call the bank.
pub async fn lease(conn: &mut PgConnection, id: Uuid, lease: Duration) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE operations SET lease_until = now() + $2 WHERE id = $1")
        .bind(id)
        .bind(lease)
        .execute(conn)
        .await?;
    Ok(())
}

/// The bank answered for good: the operation is over.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    succeeded: bool,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE operations SET status = $2, last_error = $3, attempts = attempts + 1, finished_at = now() \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(if succeeded { "succeeded" } else { "failed" })
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// The outcome is unknown: give the lease up so a retry of the request or
/// the recovery worker can resume, no earlier than `retry_after`.
pub async fn release(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
    retry_after: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE operations SET lease_until = now(), next_attempt_at = now() + $3, \
           attempts = attempts + 1, last_error = $2 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(error)
    .bind(retry_after)
    .execute(conn)
    .await?;
    Ok(())
}
