//! Which payments a pass reads, and what it remembers of those that matched.
//!
//! A receipt found matching the bank is remembered by the `updated_at` it
//! had then (`reconciled_payments`, a table apart from the payment path's,
//! which writes it only when it moves a payment older than a day). It is due again when it has
//! moved since, and never stops being due while it does not match (a
//! mismatch, an unverified one, one in flight). Terminal receipts that
//! matched are not asked about again; receipts the bank can still move on
//! its own are, by the periodic sweep. A receipt in disagreement with the
//! bank, or moved after its first day (marked by a trigger), is asked
//! about by every pass, however old, until it matches.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::PaymentStatus;
use crate::store::payments::{COLUMNS, PaymentRecord};

/// Which payments of the window a pass asks the bank about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    // Plain comments: clap would print doc comments as a second list in
    // `gateway reconcile --help`, beside the flag's own description.
    // Every one: an audit (the CLI, the simulator).
    All,
    // Those not known to match: new, moved since they matched, left over.
    Due,
    // Those due, and every one the bank can still move without the gateway
    // (one still authorized however old, within its hold's week).
    Sweep,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Due => "due",
            Scope::Sweep => "sweep",
        }
    }

    /// The statuses this scope reads even when they matched before.
    fn always(self) -> Vec<&'static str> {
        let reread = |status: &PaymentStatus| match self {
            Scope::All => true,
            Scope::Due => false,
            Scope::Sweep => status.is_open_at_bank(),
        };
        PaymentStatus::ALL
            .iter()
            .filter(|status| reread(status))
            .map(|status| status.as_str())
            .collect()
    }
}

/// How far back a sweep looks for payments still authorized, whatever the
/// window: the week an authorization's hold lasts at the bank (its
/// contract), and a day more. Within it the bank's console can capture or
/// void a payment the gateway holds as authorized; left unseen, the
/// receipt would be expired by the sweeper while the bank took the money.
pub const AUTHORIZED_REACH: chrono::TimeDelta = chrono::TimeDelta::days(8);

/// The earliest creation time the scope reads: `since`, or for a sweep
/// [`AUTHORIZED_REACH`] ago if that is earlier (for payments still
/// authorized only).
pub fn reach(scope: Scope, since: DateTime<Utc>) -> DateTime<Utc> {
    match scope {
        Scope::Sweep => since.min(Utc::now() - AUTHORIZED_REACH),
        Scope::All | Scope::Due => since,
    }
}

/// One page of the scope's payments in `(created_at, id)` order, from the
/// scope's reach (`since`, or for a sweep [`AUTHORIZED_REACH`] ago if that
/// is earlier) or after `after`. Payments older than `since` are read only
/// if still authorized. Two statements, so that each is one range of
/// `payments_created_idx`, whatever plan Postgres caches; the scope is a
/// filter on that range.
pub async fn page(
    pool: &PgPool,
    scope: Scope,
    since: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<PaymentRecord>, sqlx::Error> {
    // `reconciled_payments` names none of the record's columns.
    let select = format!(
        "SELECT {COLUMNS} FROM payments p LEFT JOIN reconciled_payments r ON r.payment_id = p.id"
    );
    const IN_SCOPE: &str = "((p.created_at >= $3 AND (r.matched_updated_at IS DISTINCT FROM p.updated_at \
         OR r.left_over IS NOT NULL OR p.status::text = ANY($2))) OR (p.status = 'authorized' AND $4))";
    let sql = match after {
        None => format!(
            "{select} WHERE p.created_at >= $5 AND {IN_SCOPE} \
             ORDER BY p.created_at, p.id LIMIT $1"
        ),
        Some(_) => format!(
            "{select} WHERE (p.created_at, p.id) > ($5, $6) AND {IN_SCOPE} \
             ORDER BY p.created_at, p.id LIMIT $1"
        ),
    };
    let reaches_back = scope == Scope::Sweep;
    let query = sqlx::query_as(&sql)
        .bind(limit)
        .bind(scope.always())
        .bind(since)
        .bind(reaches_back);
    match after {
        None => query.bind(reach(scope, since)).fetch_all(pool).await,
        Some((at, id)) => query.bind(at).bind(id).fetch_all(pool).await,
    }
}

/// One page of the receipts marked left over (in disagreement with the
/// bank, or moved after their first day) that the scope's window does not
/// read (created before `since`, and for a sweep not an authorized one
/// within its reach), in `(created_at, id)` order after `after`: every
/// pass asks about them, however old, until they match.
pub async fn left_over_outside(
    pool: &PgPool,
    scope: Scope,
    since: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<PaymentRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM reconciled_payments r JOIN payments p ON p.id = r.payment_id \
         WHERE r.left_over IS NOT NULL AND p.created_at < $1 \
           AND NOT (p.status = 'authorized' AND p.created_at >= $2) \
           AND ($3::timestamptz IS NULL OR (p.created_at, p.id) > ($3, $4)) \
         ORDER BY p.created_at, p.id LIMIT $5"
    ))
    .bind(since)
    .bind(reach(scope, since))
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Remembers these receipts as in disagreement with the bank, so that
/// every pass asks about them until they match, however old. (An
/// unverified one is not remembered: the bank could not be asked, which
/// says nothing against the receipt, and against a bank without the
/// lookups' extensions every receipt is unverified.)
pub async fn remember_mismatched(pool: &PgPool, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let written = sqlx::query(
        "INSERT INTO reconciled_payments (payment_id, left_over) \
         SELECT id, 'mismatch' FROM unnest($1::uuid[]) AS m(id) \
         ON CONFLICT (payment_id) DO UPDATE SET left_over = 'mismatch' \
         WHERE reconciled_payments.left_over IS DISTINCT FROM 'mismatch'",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(written.rows_affected())
}

/// Drops the late-move marks of these receipts (not a mismatch's).
pub async fn forget_late_moves(pool: &PgPool, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let forgotten = sqlx::query(
        "UPDATE reconciled_payments SET left_over = NULL \
         WHERE payment_id = ANY($1) AND left_over = 'moved_late'",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(forgotten.rows_affected())
}

/// Remembers these receipts as matching the bank, each by the `updated_at`
/// it was read with: one that moved meanwhile stays due. Rows already
/// remembered as they are are not written again; no payment row is
/// locked or written for them.
///
/// The few that carry a mark (a mismatch, a late move) have it cleared
/// apart, under the payment's lock: read so, the payment's committed
/// version is the one compared, so a move after its first day cannot have
/// its mark cleared by a match of the version before it. A payment a move
/// holds is skipped (its mark stays); no lock is waited for.
pub async fn remember_matched(
    pool: &PgPool,
    matched: &[(Uuid, DateTime<Utc>)],
) -> Result<u64, sqlx::Error> {
    if matched.is_empty() {
        return Ok(0);
    }
    let (ids, seen): (Vec<Uuid>, Vec<DateTime<Utc>>) = matched.iter().copied().unzip();
    let written = sqlx::query(
        "INSERT INTO reconciled_payments (payment_id, matched_updated_at) \
         SELECT m.id, m.updated_at \
         FROM unnest($1::uuid[], $2::timestamptz[]) AS m(id, updated_at) \
         JOIN payments p ON p.id = m.id AND p.updated_at = m.updated_at \
         ON CONFLICT (payment_id) DO UPDATE SET matched_updated_at = excluded.matched_updated_at \
         WHERE reconciled_payments.matched_updated_at IS DISTINCT FROM excluded.matched_updated_at",
    )
    .bind(&ids)
    .bind(&seen)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE reconciled_payments r SET left_over = NULL \
         FROM (SELECT p.id FROM unnest($1::uuid[], $2::timestamptz[]) AS m(id, updated_at) \
               JOIN payments p ON p.id = m.id AND p.updated_at = m.updated_at \
               WHERE p.id IN (SELECT payment_id FROM reconciled_payments \
                              WHERE payment_id = ANY($1) AND left_over IS NOT NULL) \
               ORDER BY p.id FOR SHARE OF p SKIP LOCKED) AS still \
         WHERE r.payment_id = still.id AND r.left_over IS NOT NULL",
    )
    .bind(&ids)
    .bind(&seen)
    .execute(pool)
    .await?;
    Ok(written.rows_affected())
}
