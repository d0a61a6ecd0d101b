//! Tx A of the two hot paths, batched (see [`crate::store::batch`]): the
//! start of an authorization (a new key, a new payment) and of a capture,
//! void or refund (a new key, a payment put in flight). Each is one
//! statement for many requests at once, with no explicit transaction and
//! no row lock held across round trips; whatever it cannot decide alone
//! (a key that exists, a payment that moved meanwhile) it leaves undone,
//! and the caller takes the general, locking path.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Lease, OperationKind, PaymentStatus};
use crate::idempotency;
use crate::store::batch::BoxFuture;
use crate::store::operations::{self, OperationRecord};
use crate::store::payments::{self, History, NewPayment, PaymentRecord, StoredStatus};

/// The usual start of an authorization: a new key, a new payment.
#[derive(Debug, Clone)]
pub struct StartAuthorization {
    pub payment: NewPayment,
    pub key: String,
    pub request_hash: Vec<u8>,
    pub lease: Lease,
}

/// Starts a batch of authorizations in one statement (one round trip, no
/// explicit transaction): for each, claim the idempotency key, insert the
/// pending payment and its first history row, and the operation with its
/// bank key, leased to the caller. `None` for a key that exists already
/// (the caller then takes the general path), including the second of two
/// rows in one batch with the same key. For [`crate::store::batch::Batcher`].
pub fn start_authorizations(
    pool: PgPool,
    starts: Vec<StartAuthorization>,
) -> BoxFuture<Result<Vec<Option<Started>>, sqlx::Error>> {
    Box::pin(async move {
        let mut conn = pool.acquire().await?;
        let rows = insert_starts(&mut conn, &starts).await?;
        Ok(match_rows(
            starts,
            rows,
            |row| row.operation.payment_id,
            |start| start.payment.id.as_uuid(),
            |row, start| row.started(start.payment),
        ))
    })
}

/// Each start with what the statement wrote for it, matched by an id the
/// row and the start share; a start with no row was not written.
fn match_rows<S, R, O>(
    starts: Vec<S>,
    rows: Vec<R>,
    row_id: fn(&R) -> Uuid,
    start_id: fn(&S) -> Uuid,
    started: fn(R, S) -> O,
) -> Vec<Option<O>> {
    let mut by_id: HashMap<Uuid, R> = rows.into_iter().map(|row| (row_id(&row), row)).collect();
    starts
        .into_iter()
        .map(|start| {
            by_id
                .remove(&start_id(&start))
                .map(|row| started(row, start))
        })
        .collect()
}

async fn insert_starts(
    conn: &mut PgConnection,
    starts: &[StartAuthorization],
) -> Result<Vec<StartedRow>, sqlx::Error> {
    let column = |f: fn(&StartAuthorization) -> &str| starts.iter().map(f).collect::<Vec<_>>();
    let identities: Vec<(Uuid, String)> = starts
        .iter()
        .map(|_| operations::new_identity(OperationKind::Authorize))
        .collect();
    sqlx::query_as(&format!(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::interval[], $5::uuid[], $6::uuid[], \
             $7::text[], $8::text[], $9::int8[], $10::text[], $11::text[], $12::text[], $13::int2[], $14::int2[], \
             $15::uuid[], $16::text[]) \
           AS i(merchant_id, key, request_hash, lease, leased_by, payment_id, order_id, customer_id, amount, \
             currency, card_brand, card_last4, exp_month, exp_year, operation_id, bank_key)), \
         {claim}, \
         created AS ( \
           INSERT INTO payments (id, merchant_id, order_id, customer_id, amount, currency, status, \
             card_brand, card_last4, card_exp_month, card_exp_year) \
           SELECT i.payment_id, i.merchant_id, i.order_id, i.customer_id, i.amount, i.currency, 'pending', \
             i.card_brand, i.card_last4, i.exp_month, i.exp_year \
           FROM input i JOIN claimed USING (payment_id) \
           RETURNING id, created_at), \
         logged AS ( \
           INSERT INTO payment_events (payment_id, from_status, to_status, at) \
           SELECT id, NULL, 'pending', created_at FROM created), \
         operation AS ( \
           INSERT INTO operations (id, payment_id, kind, bank_idempotency_key, lease_until, leased_by) \
           SELECT i.operation_id, i.payment_id, 'authorize', i.bank_key, now() + i.lease, i.leased_by \
           FROM input i JOIN created ON created.id = i.payment_id \
           RETURNING {columns}) \
         SELECT operation.*, created.created_at AS payment_created_at \
         FROM operation JOIN created ON created.id = operation.payment_id",
        claim = idempotency::CLAIM_NEW_KEYS_CTE,
        columns = operations::COLUMNS,
    ))
    .bind(starts.iter().map(|s| s.payment.merchant_id.as_uuid()).collect::<Vec<_>>())
    .bind(column(|s| &s.key))
    .bind(starts.iter().map(|s| s.request_hash.as_slice()).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.lease.duration).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.lease.holder).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.payment.id.as_uuid()).collect::<Vec<_>>())
    .bind(column(|s| &s.payment.order_id))
    .bind(column(|s| &s.payment.customer_id))
    .bind(starts.iter().map(|s| s.payment.amount_cents).collect::<Vec<_>>())
    .bind(column(|s| s.payment.currency))
    .bind(column(|s| s.payment.card_brand))
    .bind(column(|s| &s.payment.card_last4))
    .bind(starts.iter().map(|s| s.payment.card_exp_month).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.payment.card_exp_year).collect::<Vec<_>>())
    .bind(identities.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(identities.into_iter().map(|(_, key)| key).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

#[derive(sqlx::FromRow)]
struct StartedRow {
    #[sqlx(flatten)]
    operation: OperationRecord,
    payment_created_at: DateTime<Utc>,
}

impl StartedRow {
    /// The pending payment as just written, without reading it back.
    fn started(self, new: NewPayment) -> Started {
        let created_at = self.payment_created_at;
        Started {
            payment: PaymentRecord {
                id: new.id.as_uuid(),
                merchant_id: new.merchant_id.as_uuid(),
                order_id: new.order_id,
                customer_id: new.customer_id,
                amount: new.amount_cents,
                currency: new.currency.to_owned(),
                status: StoredStatus(PaymentStatus::Pending),
                card_brand: new.card_brand.to_owned(),
                card_last4: new.card_last4,
                card_exp_month: new.card_exp_month,
                card_exp_year: new.card_exp_year,
                bank_authorization_id: None,
                bank_capture_id: None,
                bank_void_id: None,
                bank_refund_id: None,
                authorization_expires_at: None,
                failure_code: None,
                created_at,
                updated_at: created_at,
            },
            history: vec![(PaymentStatus::Pending, created_at)],
            operation: self.operation,
        }
    }
}

/// A started authorization: its operation, and the pending payment as just
/// written, so that settling it need not read it back.
#[derive(Debug)]
pub struct Started {
    pub operation: OperationRecord,
    pub payment: PaymentRecord,
    pub history: History,
}

/// The usual start of a capture, void or refund: a new key, on a payment
/// read (unlocked) in `payment`'s state, which the operation moves to
/// `to`. The operation's id and bank key are fixed by the caller.
#[derive(Debug, Clone)]
pub struct StartOperation {
    pub payment: PaymentRecord,
    pub to: PaymentStatus,
    pub kind: OperationKind,
    pub key: String,
    pub request_hash: Vec<u8>,
    pub lease: Lease,
    pub operation_id: Uuid,
    pub bank_key: String,
    /// Whether the payment must still be as read: always, except under
    /// the mutant that starts operations without a row lock.
    pub compare: bool,
}

/// A started capture, void or refund: its operation, and the payment in
/// flight as just written, so that settling it need not read it back.
#[derive(Debug)]
pub struct StartedOperation {
    pub operation: OperationRecord,
    pub payment: PaymentRecord,
}

/// Starts a batch of captures, voids and refunds in one statement: for
/// each, a compare-and-set of the payment (still in the status, and at the
/// version, its caller read, and not an authorization past its expiry)
/// into flight, its history row, the operation leased to the caller, and
/// the key that created it, in the lock order of every other path (the
/// payment, the operation, the key). `None` for a row not started: its
/// payment moved meanwhile, or was already taken by an earlier row of the
/// batch, or its key exists (the caller then takes the locking path, which
/// decides). For [`crate::store::batch::Batcher`].
///
/// The key is inserted without `ON CONFLICT`, so that a key that exists
/// fails the statement rather than leave a payment in flight with no key
/// to answer: the batcher then writes each row alone, and alone that
/// failure is the row's `None`.
pub fn start_operations(
    pool: PgPool,
    starts: Vec<StartOperation>,
) -> BoxFuture<Result<Vec<Option<StartedOperation>>, sqlx::Error>> {
    Box::pin(async move {
        let mut conn = pool.acquire().await?;
        let rows = match insert_operation_starts(&mut conn, &starts).await {
            Ok(rows) => rows,
            Err(e) if starts.len() == 1 && is_key_taken(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(match_rows(
            starts,
            rows,
            |row| row.operation.id,
            |start| start.operation_id,
            OperationRow::started,
        ))
    })
}

/// Whether `e` is the idempotency key's primary key refusing a second row.
fn is_key_taken(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|e| e.constraint())
        .is_some_and(|constraint| constraint == "idempotency_keys_pkey")
}

async fn insert_operation_starts(
    conn: &mut PgConnection,
    starts: &[StartOperation],
) -> Result<Vec<OperationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "WITH given AS ( \
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], \
             $6::text[], $7::text[], $8::bytea[], $9::interval[], $10::uuid[], $11::uuid[], $12::text[], \
             $13::bool[]) WITH ORDINALITY \
           AS g(payment_id, merchant_id, from_status, seen_at, to_status, kind, key, request_hash, lease, \
             leased_by, operation_id, bank_key, compare, n)), \
         input AS (SELECT DISTINCT ON (payment_id) * FROM given ORDER BY payment_id, n), \
         moved AS ( \
           UPDATE payments p SET status = i.to_status::payment_status, failure_code = NULL, \
             updated_at = greatest(clock_timestamp(), p.updated_at + interval '1 microsecond') \
           FROM input i \
           WHERE p.id = i.payment_id AND p.merchant_id = i.merchant_id \
             AND (NOT i.compare OR (p.status = i.from_status::payment_status AND p.updated_at = i.seen_at)) \
             AND NOT coalesce({expiry_due}, false) \
           RETURNING i.n, p.updated_at AS moved_at), \
         started AS (SELECT i.*, m.moved_at FROM input i JOIN moved m USING (n)), \
         logged AS ( \
           INSERT INTO payment_events (payment_id, from_status, to_status, at) \
           SELECT payment_id, from_status::payment_status, to_status::payment_status, moved_at FROM started), \
         operation AS ( \
           INSERT INTO operations (id, payment_id, kind, bank_idempotency_key, lease_until, leased_by) \
           SELECT operation_id, payment_id, kind, bank_key, now() + lease, leased_by FROM started \
           RETURNING {columns}), \
         keyed AS ( \
           INSERT INTO idempotency_keys \
             (merchant_id, key, request_hash, state, lease_until, leased_by, payment_id, operation_id) \
           SELECT merchant_id, key, request_hash, 'in_progress', now() + lease, leased_by, payment_id, \
             operation_id \
           FROM started) \
         SELECT operation.*, started.moved_at FROM operation JOIN started ON started.operation_id = operation.id",
        columns = operations::COLUMNS,
        expiry_due = payments::EXPIRY_DUE,
    ))
    .bind(starts.iter().map(|s| s.payment.id).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.payment.merchant_id).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.payment.status().as_str()).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.payment.updated_at).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.to.as_str()).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.key.as_str()).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.request_hash.as_slice()).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.lease.duration).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.lease.holder).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.operation_id).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.bank_key.as_str()).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.compare).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

#[derive(sqlx::FromRow)]
struct OperationRow {
    #[sqlx(flatten)]
    operation: OperationRecord,
    moved_at: DateTime<Utc>,
}

impl OperationRow {
    /// The payment in flight as just written, without reading it back:
    /// what `payments::apply` writes for the same move.
    fn started(self, start: StartOperation) -> StartedOperation {
        StartedOperation {
            payment: PaymentRecord {
                status: StoredStatus(start.to),
                failure_code: None,
                updated_at: self.moved_at,
                ..start.payment
            },
            operation: self.operation,
        }
    }
}
