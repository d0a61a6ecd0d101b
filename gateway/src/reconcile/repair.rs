//! Moving a receipt that is behind the bank forward, in one transaction.

use sqlx::PgPool;

use crate::domain::{PaymentEvent, transition};
use crate::store::payments::{self, PaymentRecord, TransitionError};

use super::ReconcileError;
use super::bank_view::BankView;
use super::classify::facts_entering;

/// What became of a repair.
pub enum Repair {
    /// The path was applied and committed.
    Applied,
    /// The payment is no longer the version the bank's view was compared
    /// with (a client's request, the recovery worker, another pass moved
    /// it meanwhile): nothing was written, and the view, which may be
    /// older than the receipt now is, must not judge it. The payment as it
    /// is now.
    Moved(Box<PaymentRecord>),
}

/// Locks the payment and, if it is still the version `read` (the one
/// the bank's `view` was compared with, and found behind by `events`),
/// applies each event with the bank's ids.
pub async fn apply(
    pool: &PgPool,
    read: &PaymentRecord,
    events: &[PaymentEvent],
    view: &BankView,
) -> Result<Repair, ReconcileError> {
    let mut tx = pool.begin().await?;
    let mut record = payments::lock_by_id(&mut tx, read.id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    // `updated_at` is the receipt's version: the schema gives every change
    // of its status, amount or bank ids a new one.
    if record.updated_at != read.updated_at {
        tx.rollback().await?;
        return Ok(Repair::Moved(Box::new(record)));
    }
    for &event in events {
        let to = transition(record.status(), event).map_err(TransitionError::from)?;
        record = payments::apply(&mut tx, &record, event, &facts_entering(to, view)).await?;
    }
    tx.commit().await?;
    Ok(Repair::Applied)
}
