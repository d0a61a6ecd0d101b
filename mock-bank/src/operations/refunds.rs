use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::api::error::BankError;
use crate::domain::{Amount, CaptureId, RefundId};
use crate::ledger::{self, Movement};

#[derive(Debug, sqlx::FromRow)]
pub struct Refund {
    pub id: Uuid,
    pub capture_id: Uuid,
    pub amount: i64,
    pub refunded_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LockedCapture {
    amount: i64,
    card_number: String,
}

/// Returns a capture's full amount to the card, once.
pub async fn refund(
    conn: &mut PgConnection,
    capture_id: Option<CaptureId>,
    amount: Amount,
) -> Result<Refund, BankError> {
    let capture_id = capture_id.ok_or(BankError::CaptureNotFound)?;
    let capture: LockedCapture = sqlx::query_as(
        "SELECT c.amount, a.card_number FROM captures c JOIN authorizations a ON a.id = c.authorization_id \
         WHERE c.id = $1 FOR UPDATE OF c",
    )
    .bind(capture_id.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(BankError::CaptureNotFound)?;
    // A separate statement, so that it sees a refund committed by whoever
    // held the lock before us (the locking statement's snapshot would not).
    let refunded: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refunds WHERE capture_id = $1)")
            .bind(capture_id.0)
            .fetch_one(&mut *conn)
            .await?;
    if refunded {
        return Err(BankError::AlreadyRefunded);
    }
    if capture.amount != amount.cents() {
        return Err(BankError::AmountMismatch);
    }
    let refund_id = RefundId::random();
    sqlx::query("INSERT INTO refunds (id, capture_id, amount) VALUES ($1, $2, $3)")
        .bind(refund_id.0)
        .bind(capture_id.0)
        .bind(capture.amount)
        .execute(&mut *conn)
        .await?;
    ledger::post(
        conn,
        Movement::Refund,
        &capture.card_number,
        capture.amount,
        Some(refund_id.0),
    )
    .await?;
    get_refund(conn, refund_id)
        .await?
        .ok_or_else(|| BankError::Internal(anyhow::anyhow!("refund vanished after insert")))
}

pub async fn get_refund(
    conn: &mut PgConnection,
    id: RefundId,
) -> Result<Option<Refund>, BankError> {
    Ok(
        sqlx::query_as("SELECT id, capture_id, amount, refunded_at FROM refunds WHERE id = $1")
            .bind(id.0)
            .fetch_optional(conn)
            .await?,
    )
}
