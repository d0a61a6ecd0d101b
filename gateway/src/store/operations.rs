//! Operations: one row per call the gateway makes to the bank, written
//! before the call with the bank idempotency key every retry will reuse.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{Lease, OperationKind, OperationStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperationRecord {
    pub id: Uuid,
    pub payment_id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: OperationKind,
    pub bank_idempotency_key: String,
    #[sqlx(try_from = "String")]
    pub status: OperationStatus,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    /// Whether someone's lease on it still runs, by the database's clock
    /// (the one to judge by: `lease_until` was written by that clock).
    pub live: bool,
}

impl OperationRecord {
    pub fn is_pending(&self) -> bool {
        self.status == OperationStatus::Pending
    }
}

pub(crate) const COLUMNS: &str = "id, payment_id, kind, bank_idempotency_key, status, attempts, \
    created_at, lease_until, coalesce(lease_until > now(), false) AS live";

/// A new operation's id and the bank idempotency key it will use on every
/// call, retry and resume: fixed here, before anything is sent. The key is
/// made of the kind and the id, and the database holds it to exactly that
/// (`operations_bank_key_from_id`): unique because the id is.
pub fn new_identity(kind: OperationKind) -> (Uuid, String) {
    let id = Uuid::now_v7();
    (id, format!("gw_{}_{id}", kind.as_str()))
}

/// Records the intent under its identity ([`new_identity`]), leased to the
/// caller. The caller holds the payment's lock; at most one operation per
/// payment is pending (a unique index).
pub async fn insert(
    conn: &mut PgConnection,
    payment_id: Uuid,
    kind: OperationKind,
    (id, bank_key): &(Uuid, String),
    lease: Lease,
) -> Result<OperationRecord, sqlx::Error> {
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
/// lease ran out, leasing them to the caller, with the database's time of
/// the claim. Rows another transaction holds are skipped, so any number of
/// replicas can run this at once, each operation goes to one of them, and
/// the claim never waits for a lock.
/// `ignore_leases` is the mutant that takes operations others still hold.
pub async fn claim_due(
    conn: &mut PgConnection,
    batch: i64,
    lease: Lease,
    ignore_leases: bool,
) -> Result<(Vec<OperationRecord>, DateTime<Utc>), sqlx::Error> {
    let claimed: Vec<OperationRecord> = sqlx::query_as(&format!(
        "UPDATE operations SET lease_until = now() + $2, leased_by = $3 \
         WHERE id IN ( \
           SELECT id FROM operations \
           WHERE status = 'pending' AND (lease_until < now() OR $4) AND next_attempt_at <= now() \
           ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING {COLUMNS}"
    ))
    .bind(batch)
    .bind(lease.duration)
    .bind(lease.holder)
    .bind(ignore_leases)
    .fetch_all(&mut *conn)
    .await?;
    let now = super::clock::now(conn).await?;
    Ok((claimed, now))
}

/// The operation, locked. Lock order: the payment first, then this.
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

/// The payment's pending operation, whoever's it is, locked: only for the
/// mutant that resumes it from any key.
pub async fn lock_pending_of(
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

/// Extends a lease to `lease` from now, by the database's clock, only if
/// it is still the one taken when `lease_until` was written: not run out,
/// and not taken since by anyone, another task of this process included
/// (every take writes a later `lease_until`, so it fences like a token).
/// The new `lease_until`, or `None` if the lease is lost.
pub async fn renew_lease(
    conn: &mut PgConnection,
    id: Uuid,
    lease_until: DateTime<Utc>,
    lease: Duration,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE operations SET lease_until = now() + $3 \
         WHERE id = $1 AND status = 'pending' AND lease_until = $2 AND lease_until > now() \
         RETURNING lease_until",
    )
    .bind(id)
    .bind(lease_until)
    .bind(lease)
    .fetch_optional(conn)
    .await
}

/// Takes the (expired) lease: whoever holds it may call the bank.
/// Returns the new `lease_until`, the lease's fencing token (see
/// [`renew_lease`]).
pub async fn take_lease(
    conn: &mut PgConnection,
    id: Uuid,
    lease: Lease,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE operations SET lease_until = now() + $2, leased_by = $3 WHERE id = $1 \
         RETURNING lease_until",
    )
    .bind(id)
    .bind(lease.duration)
    .bind(lease.holder)
    .fetch_one(conn)
    .await
}

/// The bank answered for good: the operation is over.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    succeeded: bool,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    let status = if succeeded {
        OperationStatus::Succeeded
    } else {
        OperationStatus::Failed
    };
    sqlx::query(
        "UPDATE operations SET status = $2, last_error = $3, attempts = attempts + 1, finished_at = now() \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status.as_str())
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

/// The outcome is unknown: the caller gives its lease up so that a retry of
/// the request or the recovery worker can resume, after a backoff that
/// grows with the attempts already made. Only the lease the caller holds:
/// `lease_until` as it took or last renewed it, its fencing token (see
/// [`renew_lease`]). A caller that ran past its lease, and whose operation
/// someone took over meanwhile (another task of this very process
/// included), changes nothing: it must not cut the new holder's lease
/// short, or a third caller could reach the bank beside that one. Whether
/// it gave the lease up.
pub async fn release(
    conn: &mut PgConnection,
    id: Uuid,
    lease_until: DateTime<Utc>,
    error: &str,
    backoff: Backoff,
) -> Result<bool, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE operations SET lease_until = now(), \
           next_attempt_at = now() + least($5, $4 * power(2, least(attempts, 30))), \
           attempts = attempts + 1, last_error = $3 \
         WHERE id = $1 AND status = 'pending' AND lease_until = $2",
    )
    .bind(id)
    .bind(lease_until)
    .bind(error)
    .bind(backoff.base)
    .bind(backoff.max)
    .execute(conn)
    .await?;
    Ok(released.rows_affected() == 1)
}

/// Hands back every lease `holder` has on unfinished operations, but those
/// whose bank key is in `open` (a call that may still be at the bank): for
/// a process that is stopping, so recovery need not wait for them to expire.
pub async fn release_held_by(
    conn: &mut PgConnection,
    holder: Uuid,
    open: &[String],
) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE operations SET lease_until = now() \
         WHERE leased_by = $1 AND status = 'pending' AND bank_idempotency_key <> ALL($2)",
    )
    .bind(holder)
    .bind(open)
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
