//! Moving a receipt that is behind the bank forward, in one transaction.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::transition;
use crate::store::payments::{self, TransitionError};

use super::ReconcileError;
use super::bank_view::BankView;
use super::classify::{Receipt, Verdict, classify, facts_entering};

/// Locks the payment, compares it with the bank's `view` again (it may have
/// moved since it was read: a client's request, the recovery worker), and,
/// if it is still behind, applies each event of the path with the bank's
/// ids. Answers the locked receipt (as it was before the repair) and the
/// verdict acted on: `Behind` means the path was applied and committed.
pub async fn apply(
    pool: &PgPool,
    id: Uuid,
    view: &BankView,
) -> Result<(Receipt, Verdict), ReconcileError> {
    let mut tx = pool.begin().await?;
    let mut record = payments::lock_by_id(&mut tx, id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let receipt = Receipt::of(&record);
    let verdict = classify(&receipt, view);
    let Verdict::Behind(events) = &verdict else {
        tx.rollback().await?;
        return Ok((receipt, verdict));
    };
    for &event in events {
        let to = transition(record.status(), event).map_err(TransitionError::from)?;
        record = payments::apply(&mut tx, &record, event, &facts_entering(to, view)).await?;
    }
    tx.commit().await?;
    Ok((receipt, verdict))
}
