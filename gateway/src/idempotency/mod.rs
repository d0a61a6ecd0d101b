//! Stripe-style idempotency keys, scoped to the merchant. Every statement
//! on `idempotency_keys` is here, including the fragments that the two
//! batched writes of `store::payments` embed in their own statements.
//!
//! The rules, which the schema enforces as well (`migrations/0004`):
//!
//! - A key is written in the same transaction as what it is for: the
//!   operation it creates, or, for a request refused without calling the
//!   bank, its final answer. A key in progress therefore always has an
//!   operation of its own, and resuming the key resumes only that.
//! - A key's answer is stored once, in the transaction that settles its
//!   operation, whoever settles it (the request, its retry, the recovery
//!   worker): settling is guarded by the operation still being pending, so
//!   it happens once, and the database refuses any later change to an
//!   answered key. A request that comes back late finds the answer stored
//!   and gives that one.
//! - Leases (who works on the key until when) are judged by the
//!   database's clock, never a process's.
//! - Retention counts from when a key was answered.

mod fingerprint;

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

pub use fingerprint::{Fingerprint, Fingerprinter, MIN_SECRET_BYTES, Secret, SecretParser};

use crate::domain::{IdempotencyKey, Lease, MerchantId};

/// A response stored for replay, byte for byte.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResponse {
    pub response_status: i16,
    pub response_body: Vec<u8>,
}

/// A key as stored; `live` says whether its lease still runs, by the
/// database's clock.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRecord {
    pub request_hash: Vec<u8>,
    pub payment_id: Option<Uuid>,
    pub operation_id: Option<Uuid>,
    pub live: bool,
    /// The lease itself, for the mutant that judges it by the process's
    /// clock (`faults::Mutant::ProcessClockLeases`); `live` is the truth.
    pub lease_until: Option<chrono::DateTime<chrono::Utc>>,
    pub response_status: Option<i16>,
    pub response_body: Option<Vec<u8>>,
    /// For an answer that shows a webhook endpoint's secret: the salt it is
    /// made from, the secret itself being left out of the stored body.
    pub secret_salt: Option<Vec<u8>>,
}

impl KeyRecord {
    /// The stored answer, once there is one.
    pub fn answer(&self) -> Option<StoredResponse> {
        Some(StoredResponse {
            response_status: self.response_status?,
            response_body: self.response_body.clone()?,
        })
    }
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

const KEY_COLUMNS: &str = "request_hash, payment_id, operation_id, \
    coalesce(lease_until > now(), false) AS live, lease_until, response_status, response_body, \
    secret_salt";

/// The key, unlocked: enough to refuse a different request or replay an
/// answer (neither ever changes once written), or to learn which payment
/// and operation to lock before locking the key itself.
pub async fn read(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
) -> Result<Option<KeyRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM idempotency_keys WHERE merchant_id = $1 AND key = $2"
    ))
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .fetch_optional(conn)
    .await
}

/// Holds, until the transaction ends, the turn of every request presenting
/// `key` for a change that is stored only with its answer (the webhook
/// endpoints' and events' POSTs): a second request with the key waits for
/// the first's change to commit and then finds its answer, instead of
/// making the change again beside it. An advisory lock, because until the
/// answer there is no row to lock; two keys whose hashes collide only wait
/// for each other.
pub async fn take_turn(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
        .bind(merchant.as_uuid().to_string())
        .bind(key.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// The key, locked. Lock order: the payment, then the operation, then the key.
pub async fn lock(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
) -> Result<Option<KeyRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 FOR UPDATE"
    ))
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .fetch_optional(conn)
    .await
}

/// A new key for the operation it created, leased to the caller; `false`
/// if the key exists already (the caller rolls back and looks again).
pub async fn insert_for_operation(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
    payment_id: Uuid,
    operation_id: Uuid,
    lease: Lease,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys \
           (merchant_id, key, request_hash, state, lease_until, leased_by, payment_id, operation_id) \
         VALUES ($1, $2, $3, 'in_progress', now() + $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .bind(fingerprint.as_bytes())
    .bind(lease.duration)
    .bind(lease.holder)
    .bind(payment_id)
    .bind(operation_id)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// An answer given at once, in the transaction of what it answers.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// The payment it is about (a refusal of an operation); `None` for the
    /// webhook-endpoint and event POSTs.
    pub payment_id: Option<Uuid>,
    pub status: u16,
    pub body: &'a [u8],
    /// See [`KeyRecord::secret_salt`].
    pub secret_salt: Option<&'a [u8]>,
}

/// A new key answered at once (a refusal that called no bank, a change of
/// a webhook endpoint); `false` if the key exists already.
pub async fn insert_answered(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
    answered: Answered<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (merchant_id, key, request_hash, state, payment_id, \
           response_status, response_body, secret_salt, answered_at) \
         VALUES ($1, $2, $3, 'done', $4, $5, $6, $7, now()) ON CONFLICT DO NOTHING",
    )
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .bind(fingerprint.as_bytes())
    .bind(answered.payment_id)
    .bind(http_status(answered.status))
    .bind(answered.body)
    .bind(answered.secret_salt)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Takes the (expired) lease of a key in progress.
pub async fn take_lease(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
    lease: Lease,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET lease_until = now() + $3, leased_by = $4 \
         WHERE merchant_id = $1 AND key = $2 AND state = 'in_progress'",
    )
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .bind(lease.duration)
    .bind(lease.holder)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the answer on the key that created `operation`, in the
/// transaction that settles it; a key already answered is left alone (and
/// the database would refuse the change).
pub async fn answer_operation(
    conn: &mut PgConnection,
    operation_id: Uuid,
    status: u16,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', lease_until = NULL, answered_at = now(), \
           response_status = $2, response_body = $3 \
         WHERE operation_id = $1 AND state = 'in_progress'",
    )
    .bind(operation_id)
    .bind(http_status(status))
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

/// The answer stored on the key that created `operation`, if it has one.
pub async fn answer_of(
    conn: &mut PgConnection,
    operation_id: Uuid,
) -> Result<Option<StoredResponse>, sqlx::Error> {
    sqlx::query_as(
        "SELECT response_status, response_body FROM idempotency_keys \
         WHERE operation_id = $1 AND state = 'done'",
    )
    .bind(operation_id)
    .fetch_optional(conn)
    .await
}

/// Gives up the lease `holder` has on the key of `operation`, without an
/// answer, so that a retry resumes at once. A lease someone else took since
/// is left alone.
pub async fn release_for_operation(
    conn: &mut PgConnection,
    operation_id: Uuid,
    holder: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET lease_until = now() \
         WHERE operation_id = $1 AND state = 'in_progress' AND leased_by = $2",
    )
    .bind(operation_id)
    .bind(holder)
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

/// Whether the merchant has used the key, answered or not: such a request
/// is answered by what the key holds, so the circuit breaker need not
/// refuse it.
pub async fn is_stored(
    conn: &mut PgConnection,
    merchant: MerchantId,
    key: &IdempotencyKey,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE merchant_id = $1 AND key = $2)",
    )
    .bind(merchant.as_uuid())
    .bind(key.as_str())
    .fetch_one(conn)
    .await
}

/// Deletes up to `batch` keys answered longer than `retention` ago, and
/// says how many. Unanswered keys stay: their operation may still be
/// resumed through them. Rows another transaction holds are skipped, so a
/// purge never waits on traffic.
/// (`from_creation` is the mutant that counts retention from a key's
/// creation.)
pub async fn purge_batch(
    conn: &mut PgConnection,
    retention: Duration,
    batch: i64,
    from_creation: bool,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(&purge_statement(from_creation))
        .bind(retention)
        .bind(batch)
        .execute(conn)
        .await?;
    Ok(deleted.rows_affected())
}

/// The statement of [`purge_batch`]: `$1` the retention, `$2` the batch.
/// Public so that tests and benchmarks can EXPLAIN it.
///
/// Oldest first, so that a batch walks the index on `answered_at` from
/// its start. Without the order, once most of the table is past its
/// retention Postgres finds a sequential scan cheaper for the first rows
/// it wants, and every batch then reads again, from the start of the
/// table, the rows the batches before it deleted (dead until vacuumed):
/// quadratic over millions of expired keys, unless synchronized scans
/// happen to start each batch where the last stopped (only for a table
/// over a quarter of `shared_buffers`).
pub fn purge_statement(from_creation: bool) -> String {
    let since = if from_creation {
        "created_at"
    } else {
        "answered_at"
    };
    format!(
        "DELETE FROM idempotency_keys WHERE (merchant_id, key) IN ( \
           SELECT merchant_id, key FROM idempotency_keys \
           WHERE state = 'done' AND {since} < now() - $1 \
           ORDER BY {since} LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )
}

/// Rows one purge statement deletes at most: short statements, so that
/// the purge never holds many locks or a long transaction.
pub const PURGE_BATCH: i64 = 1_000;

/// What a purge did: keys deleted, in how many statements, and the most
/// one statement deleted (never more than [`PURGE_BATCH`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub keys: u64,
    pub statements: u64,
    pub largest: u64,
}

/// Purges every key past its retention, [`PURGE_BATCH`] at a time.
pub async fn purge(conn: &mut PgConnection, retention: Duration) -> Result<u64, sqlx::Error> {
    purge_counting_from(conn, retention, false).await
}

/// [`purge`], or its mutant that counts from creation.
pub async fn purge_counting_from(
    conn: &mut PgConnection,
    retention: Duration,
    from_creation: bool,
) -> Result<u64, sqlx::Error> {
    Ok(purge_in_batches(conn, retention, from_creation).await?.keys)
}

/// [`purge_counting_from`], saying how it went.
pub async fn purge_in_batches(
    conn: &mut PgConnection,
    retention: Duration,
    from_creation: bool,
) -> Result<Purged, sqlx::Error> {
    let mut purged = Purged::default();
    loop {
        let deleted = purge_batch(conn, retention, PURGE_BATCH, from_creation).await?;
        purged.keys += deleted;
        purged.statements += 1;
        purged.largest = purged.largest.max(deleted);
        if deleted < PURGE_BATCH.unsigned_abs() {
            return Ok(purged);
        }
    }
}

/// The batched start of authorizations (`store::payments`) claims new keys
/// with this common table expression. It reads `input` (columns
/// `merchant_id, key, request_hash, lease, leased_by, payment_id,
/// operation_id`) and yields `claimed(payment_id)` for the keys that were
/// new; a key that exists is left to the caller's general path.
pub(crate) const CLAIM_NEW_KEYS_CTE: &str = "claimed AS ( \
       INSERT INTO idempotency_keys \
         (merchant_id, key, request_hash, state, lease_until, leased_by, payment_id, operation_id) \
       SELECT merchant_id, key, request_hash, 'in_progress', now() + lease, leased_by, payment_id, operation_id \
       FROM input ON CONFLICT DO NOTHING RETURNING payment_id)";

/// The batched settlement (`store::payments`) answers the keys of the
/// operations it settled with this common table expression. It reads
/// `settled` (columns `operation_id, response_status, response_body`); a
/// row without a response (a 202, which is never stored) answers nothing.
pub(crate) const ANSWER_SETTLED_CTE: &str = "answered AS ( \
       UPDATE idempotency_keys k SET state = 'done', lease_until = NULL, answered_at = now(), \
         response_status = s.response_status, response_body = s.response_body \
       FROM settled s \
       WHERE k.operation_id = s.operation_id AND k.state = 'in_progress' \
         AND s.response_status IS NOT NULL)";

fn http_status(status: u16) -> i16 {
    i16::try_from(status).unwrap_or(500)
}
