//! Payments (the receipts) and their append-only history.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{
    InvalidTransition, MerchantId, PaymentEvent, PaymentId, PaymentStatus, transition,
};
use crate::idempotency;
use crate::store::batch::BoxFuture;

/// A payment row as stored. `status` is decoded through the domain enum.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRecord {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub order_id: String,
    pub customer_id: String,
    pub amount: i64,
    pub currency: String,
    #[sqlx(try_from = "String")]
    pub status: StoredStatus,
    pub card_brand: String,
    pub card_last4: String,
    pub card_exp_month: i16,
    pub card_exp_year: i16,
    pub bank_authorization_id: Option<String>,
    pub bank_capture_id: Option<String>,
    pub bank_void_id: Option<String>,
    pub bank_refund_id: Option<String>,
    pub authorization_expires_at: Option<DateTime<Utc>>,
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A status read from the database; the enum type there admits no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredStatus(pub PaymentStatus);

impl TryFrom<String> for StoredStatus {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        PaymentStatus::parse(&raw)
            .map(Self)
            .ok_or_else(|| format!("unknown payment status {raw:?}"))
    }
}

impl PaymentRecord {
    pub fn status(&self) -> PaymentStatus {
        self.status.0
    }

    pub fn payment_id(&self) -> PaymentId {
        PaymentId::from_uuid(self.id).expect("payment ids are written by PaymentId::new")
    }
}

/// A payment about to be recorded, before the bank is asked.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub id: PaymentId,
    pub merchant_id: MerchantId,
    pub order_id: String,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: &'static str,
    pub card_brand: &'static str,
    pub card_last4: String,
    pub card_exp_month: i16,
    pub card_exp_year: i16,
}

/// A [`PaymentRecord`]'s columns, unqualified: a query joining another
/// table must not give it columns of these names.
pub(crate) const COLUMNS: &str = "id, merchant_id, order_id, customer_id, amount, currency, status::text AS status, \
    card_brand, card_last4, card_exp_month, card_exp_year, bank_authorization_id, bank_capture_id, \
    bank_void_id, bank_refund_id, authorization_expires_at, failure_code, created_at, updated_at";

/// Whether a payment is an authorization past its expiry, by the
/// database's clock: the one rule for when a capture or void must expire
/// it first, used by every read and write that decides it. Not one the
/// bank was found to have captured or voided behind the gateway
/// (`payment_moved_at_bank`) while its receipt waits to catch up: its hold
/// did not lapse, it was used, and reconciliation's sweep (which reads
/// every payment still authorized from the hold's week) brings the receipt
/// there.
pub(crate) const EXPIRY_DUE: &str = "(status = 'authorized' AND authorization_expires_at <= now() \
     AND failure_code IS DISTINCT FROM 'payment_moved_at_bank')";

/// A merchant's payment as an operation's start decides on it: with its
/// history from the same snapshot, and whether its authorization is past
/// its expiry ([`EXPIRY_DUE`]).
pub struct Found {
    pub payment: PaymentRecord,
    pub history: History,
    pub expiry_due: bool,
}

#[derive(sqlx::FromRow)]
struct FoundRow {
    #[sqlx(flatten)]
    payment: WithHistoryRow,
    expiry_due: bool,
}

/// Unlocked: for the batched start, whose statement re-checks the payment
/// before it writes.
pub async fn read_for_operation(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: PaymentId,
) -> Result<Option<Found>, sqlx::Error> {
    for_operation(conn, merchant, id, "").await
}

/// Locked for the rest of the transaction (unless `lock` is false: the
/// mutant that forgets): for the general path of an operation's start.
/// If it waited for the lock, its `history` may lack the previous holder's
/// move (see [`lock_with_history`]); that path decides on the payment only.
pub async fn lock_for_operation(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: PaymentId,
    lock: bool,
) -> Result<Option<Found>, sqlx::Error> {
    for_operation(conn, merchant, id, if lock { "FOR UPDATE" } else { "" }).await
}

async fn for_operation(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: PaymentId,
    lock: &str,
) -> Result<Option<Found>, sqlx::Error> {
    // By the primary key alone, as `get_with_history` reads (why there).
    // Another merchant's payment is locked for as long as it takes to
    // roll back: a caller finds nothing.
    let row: Option<FoundRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, {HISTORY_JSON}, {EXPIRY_DUE} AS expiry_due \
         FROM payments WHERE id = $1 {lock}"
    ))
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?;
    let row = row.filter(|row| row.payment.payment.merchant_id == merchant.as_uuid());
    row.map(|row| {
        let (payment, history) = row.payment.decode()?;
        Ok(Found {
            payment,
            history,
            expiry_due: row.expiry_due,
        })
    })
    .transpose()
}

/// A payment locked by id alone: for settling an operation already proven
/// to belong to its merchant.
pub async fn lock_by_id(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<PaymentRecord>, sqlx::Error> {
    find(conn, id, None, true).await
}

/// Authorized payments past their expiry, the longest past first, but
/// those `left_aside`; unlocked: the bank is asked about each before it is
/// expired, and the expiry writes only over the version read.
pub async fn expired_authorizations(
    conn: &mut PgConnection,
    left_aside: &[Uuid],
    limit: i64,
) -> Result<Vec<PaymentRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE {EXPIRY_DUE} AND NOT (id = ANY($2)) \
         ORDER BY authorization_expires_at LIMIT $1"
    ))
    .bind(limit)
    .bind(left_aside)
    .fetch_all(conn)
    .await
}

/// A payment by id alone, unlocked: for the recovery worker, which knows
/// the id from an operation.
pub async fn get_by_id(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<PaymentRecord>, sqlx::Error> {
    find(conn, id, None, false).await
}

/// One payment by id, the merchant's only if one is given, locked if asked.
async fn find(
    conn: &mut PgConnection,
    id: Uuid,
    merchant: Option<MerchantId>,
    lock: bool,
) -> Result<Option<PaymentRecord>, sqlx::Error> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = $1 AND ($2::uuid IS NULL OR merchant_id = $2) {lock}"
    ))
    .bind(id)
    .bind(merchant.map(MerchantId::as_uuid))
    .fetch_optional(conn)
    .await
}

/// What the bank told us, recorded with a transition.
#[derive(Debug, Default, Clone)]
pub struct BankFacts {
    pub authorization_id: Option<String>,
    pub authorization_expires_at: Option<DateTime<Utc>>,
    pub capture_id: Option<String>,
    pub void_id: Option<String>,
    pub refund_id: Option<String>,
    pub failure_code: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error(transparent)]
    Refused(#[from] InvalidTransition),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Moves a locked payment by `event` through the one transition table,
/// records what the bank said, and appends the history row. The database
/// checks the same table again in its trigger.
pub async fn apply(
    conn: &mut PgConnection,
    payment: &PaymentRecord,
    event: PaymentEvent,
    facts: &BankFacts,
) -> Result<PaymentRecord, TransitionError> {
    let from = payment.status();
    let to = transition(from, event)?;
    // One statement: the move and its history row cannot be separated.
    let record: PaymentRecord = sqlx::query_as(&format!(
        "WITH moved AS ( \
           UPDATE payments SET status = $2::payment_status, \
             bank_authorization_id = coalesce($3, bank_authorization_id), \
             authorization_expires_at = coalesce($4, authorization_expires_at), \
             bank_capture_id = coalesce($5, bank_capture_id), \
             bank_void_id = coalesce($6, bank_void_id), \
             bank_refund_id = coalesce($7, bank_refund_id), \
             failure_code = $8, \
             updated_at = greatest(clock_timestamp(), updated_at + interval '1 microsecond') \
           WHERE id = $1 RETURNING {COLUMNS}), \
         logged AS ( \
           INSERT INTO payment_events (payment_id, from_status, to_status, at) \
           SELECT id, $9::payment_status, $2::payment_status, updated_at FROM moved) \
         SELECT * FROM moved"
    ))
    .bind(payment.id)
    .bind(to.as_str())
    .bind(&facts.authorization_id)
    .bind(facts.authorization_expires_at)
    .bind(&facts.capture_id)
    .bind(&facts.void_id)
    .bind(&facts.refund_id)
    .bind(&facts.failure_code)
    .bind(from.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(record)
}

pub type History = Vec<(PaymentStatus, DateTime<Utc>)>;

/// A payment's history as one JSON text column of the statement that reads
/// the payment, so that the two come from one snapshot and agree (but see
/// [`lock_with_history`] for a statement that waits for a lock).
const HISTORY_JSON: &str = "(SELECT coalesce(json_agg(json_build_array(e.to_status, e.at) ORDER BY e.id), '[]') \
     FROM payment_events e WHERE e.payment_id = payments.id)::text AS history";

#[derive(sqlx::FromRow)]
struct WithHistoryRow {
    #[sqlx(flatten)]
    payment: PaymentRecord,
    history: String,
}

impl WithHistoryRow {
    fn decode(self) -> Result<(PaymentRecord, History), sqlx::Error> {
        Ok((self.payment, parse_history(&self.history)?))
    }
}

/// A merchant's payment, and then, in a second statement, its history:
/// only for the mutant that reads them apart (the two can disagree).
pub async fn get_then_history(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: PaymentId,
    between: impl std::future::Future<Output = ()>,
) -> Result<Option<(PaymentRecord, History)>, sqlx::Error> {
    let Some(payment) = find(conn, id.as_uuid(), Some(merchant), false).await? else {
        return Ok(None);
    };
    between.await;
    let history = history_of(conn, payment.id).await?;
    Ok(Some((payment, history)))
}

/// A merchant's payment and its history, in one statement.
pub async fn get_with_history(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: PaymentId,
) -> Result<Option<(PaymentRecord, History)>, sqlx::Error> {
    // By the primary key alone, the merchant compared here: with the
    // merchant in the WHERE clause, the statement's cached generic plan,
    // if made while the table was young, could take the merchant's index
    // and walk every payment of the merchant to find one.
    let row: Option<WithHistoryRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, {HISTORY_JSON} FROM payments WHERE id = $1"
    ))
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?;
    let found = row.map(WithHistoryRow::decode).transpose()?;
    Ok(found.filter(|(payment, _)| payment.merchant_id == merchant.as_uuid()))
}

/// A payment, locked, and its history: the first lock a settlement takes
/// (the payment, then its operation, then the key).
///
/// One statement when it did not wait for the lock. When it did, the row it
/// locked is the latest, but the history it read in passing comes from the
/// snapshot the statement began with, before the lock's previous holder
/// committed its moves. Every move writes its history row at the payment's
/// new `updated_at`, so a history whose last row is not the payment's
/// (status, `updated_at`) missed some (the status alone would not tell: a
/// failed capture brings a payment back to `authorized`), and is read
/// again, by a statement that sees that commit.
pub async fn lock_with_history(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(PaymentRecord, History)>, sqlx::Error> {
    let row: Option<WithHistoryRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, {HISTORY_JSON} FROM payments WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((payment, history)) = row.map(WithHistoryRow::decode).transpose()? else {
        return Ok(None);
    };
    if history.last() == Some(&(payment.status(), payment.updated_at)) {
        return Ok(Some((payment, history)));
    }
    let history = history_of(conn, id).await?;
    Ok(Some((payment, history)))
}

/// A payment's history, in a statement of its own.
async fn history_of(conn: &mut PgConnection, id: Uuid) -> Result<History, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT to_status::text, at FROM payment_events WHERE payment_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    decode_history(rows)
}

/// What the batched settlement needs, unlocked, in one statement: whether
/// the operation is still pending, its payment, and the history. The
/// settlement's own statement re-checks all of it before writing.
pub struct Settling {
    pub operation_pending: bool,
    pub payment: PaymentRecord,
    pub history: History,
}

#[derive(sqlx::FromRow)]
struct SettlingRow {
    operation_pending: bool,
    #[sqlx(flatten)]
    payment: WithHistoryRow,
}

pub async fn read_for_settling(
    conn: &mut PgConnection,
    operation_id: Uuid,
) -> Result<Option<Settling>, sqlx::Error> {
    let row: Option<SettlingRow> = sqlx::query_as(&format!(
        "WITH operation AS (SELECT payment_id, status FROM operations WHERE id = $1) \
         SELECT (SELECT status = 'pending' FROM operation) AS operation_pending, {COLUMNS}, {HISTORY_JSON} \
         FROM payments WHERE id = (SELECT payment_id FROM operation)"
    ))
    .bind(operation_id)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        let (payment, history) = row.payment.decode()?;
        Ok(Settling {
            operation_pending: row.operation_pending,
            payment,
            history,
        })
    })
    .transpose()
}

/// The payment as `event` leaves it, computed before anything is written,
/// so that the answer can be stored in the same statement as the move.
/// Bank ids only ever get filled in, never cleared (as `apply` does).
pub fn moved(
    payment: &PaymentRecord,
    event: PaymentEvent,
    facts: &BankFacts,
    at: DateTime<Utc>,
) -> Result<PaymentRecord, InvalidTransition> {
    let to = transition(payment.status(), event)?;
    let keep = |new: &Option<String>, old: &Option<String>| new.clone().or_else(|| old.clone());
    Ok(PaymentRecord {
        status: StoredStatus(to),
        bank_authorization_id: keep(&facts.authorization_id, &payment.bank_authorization_id),
        authorization_expires_at: facts
            .authorization_expires_at
            .or(payment.authorization_expires_at),
        bank_capture_id: keep(&facts.capture_id, &payment.bank_capture_id),
        bank_void_id: keep(&facts.void_id, &payment.bank_void_id),
        bank_refund_id: keep(&facts.refund_id, &payment.bank_refund_id),
        failure_code: facts.failure_code.clone(),
        updated_at: at,
        ..payment.clone()
    })
}

/// A whole settlement, computed before anything is written: the payment
/// moves from `from` to `to` (only if it is still the version read, at
/// `read_at`, and the operation still pending), with its history row, the
/// operation finished, and the answer (status, body) stored on the key that
/// created the operation, if the answer is final.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub from: PaymentStatus,
    /// The payment's `updated_at` as the settler read it.
    pub read_at: DateTime<Utc>,
    pub to: PaymentRecord,
    pub operation_id: Uuid,
    pub succeeded: bool,
    pub answer: Option<(u16, Vec<u8>)>,
}

/// Writes a batch of settlements in one statement; for each, whether it
/// was written (false, writing nothing, if someone settled it first). Of
/// two settlements of one payment in a batch, only the first can be.
/// For [`crate::store::batch::Batcher`].
pub fn write_settlements(
    pool: PgPool,
    settlements: Vec<Settlement>,
) -> BoxFuture<Result<Vec<bool>, sqlx::Error>> {
    Box::pin(async move {
        let mut conn = pool.acquire().await?;
        let written: Vec<i64> = update_settled(&mut conn, &settlements).await?;
        Ok((1..=settlements.len())
            .map(|n| written.contains(&i64::try_from(n).unwrap_or(i64::MAX)))
            .collect())
    })
}

/// The ordinals (from 1) of the settlements written.
async fn update_settled(
    conn: &mut PgConnection,
    settlements: &[Settlement],
) -> Result<Vec<i64>, sqlx::Error> {
    let text = |f: fn(&Settlement) -> Option<&str>| settlements.iter().map(f).collect::<Vec<_>>();
    // The payment moves only from the version read (`updated_at`), not
    // merely from its status: when the UPDATE waits for the payment's lock,
    // Postgres checks its WHERE again on the latest row, but the subquery
    // on the operation keeps the statement's first snapshot. A settler past
    // its lease could then find the operation still "pending" after its
    // new holder settled it, and the payment back at the same status under
    // a newer operation (a failed capture, then the client's retry under a
    // new key), and move the payment for the wrong operation. A version
    // the move must match on the locked row itself closes that.
    //
    // The operation's status is read by a scalar subquery, one primary-key
    // probe per row. Written as EXISTS, the planner made it a semi-join and,
    // with fresh rows under-counted in its statistics, hashed every pending
    // operation (about one per request in flight) for each batch.
    sqlx::query_scalar(&format!(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::uuid[], $12::text[], \
             $13::int2[], $14::bytea[], $15::timestamptz[]) WITH ORDINALITY \
           AS i(payment_id, from_status, to_status, authorization_id, expires_at, capture_id, void_id, \
             refund_id, failure_code, at, operation_id, operation_status, response_status, response_body, \
             read_at, n)), \
         first AS (SELECT DISTINCT ON (payment_id) * FROM input ORDER BY payment_id, n), \
         moved AS ( \
           UPDATE payments p SET status = f.to_status::payment_status, bank_authorization_id = f.authorization_id, \
             authorization_expires_at = f.expires_at, bank_capture_id = f.capture_id, bank_void_id = f.void_id, \
             bank_refund_id = f.refund_id, failure_code = f.failure_code, updated_at = f.at \
           FROM first f \
           WHERE p.id = f.payment_id AND p.status = f.from_status::payment_status \
             AND p.updated_at = f.read_at \
             AND (SELECT o.status FROM operations o WHERE o.id = f.operation_id) = 'pending' \
           RETURNING f.n), \
         settled AS (SELECT f.* FROM first f JOIN moved USING (n)), \
         logged AS ( \
           INSERT INTO payment_events (payment_id, from_status, to_status, at) \
           SELECT payment_id, from_status::payment_status, to_status::payment_status, at FROM settled), \
         finished AS ( \
           UPDATE operations o SET status = s.operation_status, last_error = s.failure_code, \
             attempts = o.attempts + 1, finished_at = now() \
           FROM settled s WHERE o.id = s.operation_id AND o.status = 'pending' RETURNING s.n), \
         {answer} \
         SELECT n FROM finished",
        answer = idempotency::ANSWER_SETTLED_CTE,
    ))
    .bind(settlements.iter().map(|s| s.to.id).collect::<Vec<_>>())
    .bind(settlements.iter().map(|s| s.from.as_str()).collect::<Vec<_>>())
    .bind(settlements.iter().map(|s| s.to.status().as_str()).collect::<Vec<_>>())
    .bind(text(|s| s.to.bank_authorization_id.as_deref()))
    .bind(settlements.iter().map(|s| s.to.authorization_expires_at).collect::<Vec<_>>())
    .bind(text(|s| s.to.bank_capture_id.as_deref()))
    .bind(text(|s| s.to.bank_void_id.as_deref()))
    .bind(text(|s| s.to.bank_refund_id.as_deref()))
    .bind(text(|s| s.to.failure_code.as_deref()))
    .bind(settlements.iter().map(|s| s.to.updated_at).collect::<Vec<_>>())
    .bind(settlements.iter().map(|s| s.operation_id).collect::<Vec<_>>())
    .bind(text(|s| Some(if s.succeeded { "succeeded" } else { "failed" })))
    .bind(
        settlements
            .iter()
            .map(|s| s.answer.as_ref().map(|(status, _)| i16::try_from(*status).unwrap_or(500)))
            .collect::<Vec<_>>(),
    )
    .bind(settlements.iter().map(|s| s.answer.as_ref().map(|(_, body)| body.as_slice())).collect::<Vec<_>>())
    .bind(settlements.iter().map(|s| s.read_at).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

pub(crate) fn parse_history(json: &str) -> Result<History, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>)> =
        serde_json::from_str(json).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    decode_history(rows)
}

fn decode_history(rows: Vec<(String, DateTime<Utc>)>) -> Result<History, sqlx::Error> {
    rows.into_iter()
        .map(|(status, at)| Ok((decode_status(&status)?, at)))
        .collect()
}

/// A status as `payment_events` stores it; the enum type there admits no other.
fn decode_status(raw: &str) -> Result<PaymentStatus, sqlx::Error> {
    PaymentStatus::parse(raw).ok_or_else(|| sqlx::Error::Decode(format!("status {raw:?}").into()))
}

/// Which payments a listing covers.
#[derive(Debug, Clone)]
pub enum ListFilter {
    All,
    Order(String),
    Customer(String),
}

/// A page, newest first, after the `starting_after` payment (keyset on
/// `(created_at, id)`), each payment with its history from the same
/// statement; one more row than asked tells whether there is more.
pub async fn list(
    conn: &mut PgConnection,
    merchant: MerchantId,
    filter: &ListFilter,
    starting_after: Option<PaymentId>,
    limit: i64,
) -> Result<(Vec<(PaymentRecord, History)>, bool), sqlx::Error> {
    let statement = list_statement(filter, starting_after.is_some());
    // Planned on every run, never cached: a prepared statement's generic
    // plan, made on its sixth run, keeps the index that looked best for
    // the table as it was then. Made on a young table, it walked every
    // payment of the merchant in creation order to find one order's
    // (measured: 1.9 ms a list under the mix, and growing with the table);
    // planning this one statement each time costs less than that.
    let mut query = sqlx::query_as(&statement)
        .persistent(false)
        .bind(merchant.as_uuid())
        .bind(limit + 1);
    match filter {
        ListFilter::All => {}
        ListFilter::Order(value) | ListFilter::Customer(value) => query = query.bind(value),
    }
    if let Some(cursor) = starting_after {
        query = query.bind(cursor.as_uuid());
    }
    let mut rows: Vec<WithHistoryRow> = query.fetch_all(conn).await?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > page;
    rows.truncate(page);
    let rows = rows
        .into_iter()
        .map(WithHistoryRow::decode)
        .collect::<Result<_, _>>()?;
    Ok((rows, has_more))
}

/// The statement behind [`list`] for this filter, with or without a
/// cursor: `$1` the merchant, `$2` the rows wanted (one more than the
/// page), then the order or customer, then the cursor. One statement per
/// shape, not one with `($n IS NULL OR ...)` arms: Postgres may switch a
/// prepared statement to a generic plan after five runs, and a catch-all's
/// generic plan cannot know which index applies (forced on 5 million
/// payments, 700 ms a page). Public so that a benchmark can EXPLAIN it.
pub fn list_statement(filter: &ListFilter, after_cursor: bool) -> String {
    let mut next = 3;
    let mut clauses = String::new();
    let column = match filter {
        ListFilter::All => None,
        ListFilter::Order(_) => Some("order_id"),
        ListFilter::Customer(_) => Some("customer_id"),
    };
    if let Some(column) = column {
        clauses.push_str(&format!(" AND {column} = ${next}"));
        next += 1;
    }
    if after_cursor {
        clauses.push_str(&format!(
            " AND (created_at, id) < \
             (SELECT created_at, id FROM payments WHERE id = ${next} AND merchant_id = $1)"
        ));
    }
    format!(
        "SELECT {COLUMNS}, {HISTORY_JSON} FROM payments WHERE merchant_id = $1{clauses} \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    )
}

/// Whether a payment with this id exists for this merchant (for cursors).
pub async fn exists(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: PaymentId,
) -> Result<bool, sqlx::Error> {
    // By the primary key alone (see `get_with_history`).
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT merchant_id FROM payments WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?;
    Ok(owner == Some(merchant.as_uuid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expiry rule names the failure code in SQL; it must be the one
    /// the bank call writes.
    #[test]
    fn the_expiry_rule_leaves_out_the_code_the_gateway_writes_for_moves_at_the_bank() {
        assert!(EXPIRY_DUE.contains(&format!("'{}'", crate::payments::MOVED_AT_BANK)));
    }
}
