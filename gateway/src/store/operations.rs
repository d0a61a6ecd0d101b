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

/// Who holds a lease, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// This process's instance id.
    pub holder: Uuid,
    pub duration: Duration,
}

/// A new operation's id and the bank idempotency key it will use on every
/// call, retry and resume: fixed here, before anything is sent.
pub fn new_identity(kind: OperationKind) -> (Uuid, String) {
    let id = Uuid::now_v7();
    (id, format!("gw_{}_{id}", kind.as_str()))
}

pub(crate) const RETURNED_COLUMNS: &str = COLUMNS;

/// Records the intent, leased to the caller.
pub async fn insert(
    conn: &mut PgConnection,
    payment_id: Uuid,
    kind: OperationKind,
    lease: Lease,
) -> Result<OperationRecord, sqlx::Error> {
    let (id, bank_key) = new_identity(kind);
    sqlx::query_as(&format!(
        "INSERT INTO operations (id, payment_id, kind, bank_idempotency_key, lease_until, leased_by) \
         VALUES ($1, $2, $3, $4, now() + $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(payment_id)
    .bind(kind.as_str())
    .bind(bank_key)
    .bind(lease.duration)
    .bind(lease.holder)
    .fetch_one(conn)
    .await
}

/// Claims up to `batch` operations whose outcome is unknown and whose
/// lease ran out, leasing them to the caller. Rows another transaction
/// holds are skipped, so any number of replicas can run this at once and
/// each operation goes to one of them.
pub async fn claim_due(
    conn: &mut PgConnection,
    batch: i64,
    lease: Lease,
) -> Result<Vec<OperationRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE operations SET lease_until = now() + $2, leased_by = $3 \
         WHERE id IN ( \
           SELECT id FROM operations \
           WHERE status = 'pending' AND lease_until < now() AND next_attempt_at <= now() \
           ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING {COLUMNS}"
    ))
    .bind(batch)
    .bind(lease.duration)
    .bind(lease.holder)
    .fetch_all(conn)
    .await
}

/// Hands back every lease `holder` has on unfinished operations: for a
/// process that is stopping, so recovery need not wait for them to expire.
pub async fn release_held_by(conn: &mut PgConnection, holder: Uuid) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE operations SET lease_until = now() WHERE leased_by = $1 AND status = 'pending'",
    )
    .bind(holder)
    .execute(conn)
    .await?;
    Ok(released.rows_affected())
}

/// (unfinished operations, those unfinished for longer than `flag_after`).
pub async fn unresolved(
    conn: &mut PgConnection,
    flag_after: Duration,
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE created_at < now() - $1) FROM operations WHERE status = 'pending'",
    )
    .bind(flag_after)
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
pub async fn lease(conn: &mut PgConnection, id: Uuid, lease: Lease) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE operations SET lease_until = now() + $2, leased_by = $3 WHERE id = $1")
        .bind(id)
        .bind(lease.duration)
        .bind(lease.holder)
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

/// How long to wait before trying an operation again: doubling per
/// attempt from `base`, never more than `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// The outcome is unknown: give the lease up so a retry of the request or
/// the recovery worker can resume, after a backoff that grows with the
/// attempts already made.
pub async fn release(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
    backoff: Backoff,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE operations SET lease_until = now(), \
           next_attempt_at = now() + least($4, $3 * power(2, least(attempts, 30))), \
           attempts = attempts + 1, last_error = $2 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(error)
    .bind(backoff.base)
    .bind(backoff.max)
    .execute(conn)
    .await?;
    Ok(())
}
