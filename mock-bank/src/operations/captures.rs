use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::api::error::BankError;
use crate::domain::{Amount, AuthorizationId, CaptureId, VoidId};
use crate::ledger::{self, Movement};
use crate::operations::AuthorizationState;
use crate::operations::authorizations::{lock_active, set_state};

#[derive(Debug, sqlx::FromRow)]
pub struct Capture {
    pub id: Uuid,
    pub authorization_id: Uuid,
    pub amount: i64,
    pub captured_at: DateTime<Utc>,
    pub refund_id: Option<Uuid>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct Void {
    pub id: Uuid,
    pub authorization_id: Uuid,
    pub voided_at: DateTime<Utc>,
}

/// Consumes the hold of an active authorization, for its full amount.
pub async fn capture(
    conn: &mut PgConnection,
    authorization_id: Option<AuthorizationId>,
    amount: Amount,
) -> Result<Capture, BankError> {
    let authorization = lock_active(conn, authorization_id).await?;
    if authorization.amount != amount.cents() {
        return Err(BankError::AmountMismatch);
    }
    let capture_id = CaptureId::random();
    set_state(conn, authorization.id, AuthorizationState::Captured).await?;
    sqlx::query("INSERT INTO captures (id, authorization_id, amount) VALUES ($1, $2, $3)")
        .bind(capture_id.0)
        .bind(authorization.id)
        .bind(authorization.amount)
        .execute(&mut *conn)
        .await?;
    ledger::post(
        conn,
        Movement::Capture,
        &authorization.card_number,
        authorization.amount,
        Some(capture_id.0),
    )
    .await?;
    get_capture(conn, capture_id)
        .await?
        .ok_or_else(|| BankError::Internal(anyhow::anyhow!("capture vanished after insert")))
}

pub async fn get_capture(
    conn: &mut PgConnection,
    id: CaptureId,
) -> Result<Option<Capture>, BankError> {
    Ok(sqlx::query_as(
        "SELECT c.id, c.authorization_id, c.amount, c.captured_at, r.id AS refund_id \
         FROM captures c LEFT JOIN refunds r ON r.capture_id = c.id WHERE c.id = $1",
    )
    .bind(id.0)
    .fetch_optional(conn)
    .await?)
}

pub async fn get_void(conn: &mut PgConnection, id: VoidId) -> Result<Option<Void>, BankError> {
    Ok(
        sqlx::query_as("SELECT id, authorization_id, voided_at FROM voids WHERE id = $1")
            .bind(id.0)
            .fetch_optional(conn)
            .await?,
    )
}
