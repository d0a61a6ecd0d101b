use chrono::{DateTime, Datelike, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::api::error::BankError;
use crate::domain::{Amount, AuthorizationId, CardNumber, Cvv, Expiry, VoidId};
use crate::ledger::{self, Movement, Posting};
use crate::operations::Void;

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize, utoipa::ToSchema)]
#[sqlx(type_name = "authorization_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum AuthorizationState {
    Active,
    Captured,
    Voided,
    Expired,
}

/// An authorization with what became of it.
#[derive(Debug, sqlx::FromRow)]
pub struct Authorization {
    pub id: Uuid,
    pub card_number: String,
    pub amount: i64,
    pub state: AuthorizationState,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub capture_id: Option<Uuid>,
    pub void_id: Option<Uuid>,
}

#[derive(Debug)]
pub struct AuthorizeRequest {
    pub card_number: CardNumber,
    pub cvv: Cvv,
    /// The original never reads the expiry; when given it must match the card.
    pub expiry: Option<Expiry>,
    pub amount: Amount,
}

const SELECT_AUTHORIZATION: &str = "SELECT a.id, a.card_number, a.amount, a.state, a.expires_at, a.created_at, \
       c.id AS capture_id, v.id AS void_id \
     FROM authorizations a \
     LEFT JOIN captures c ON c.authorization_id = a.id \
     LEFT JOIN voids v ON v.authorization_id = a.id \
     WHERE a.id = $1";

pub async fn get_authorization(
    conn: &mut PgConnection,
    id: AuthorizationId,
) -> Result<Option<Authorization>, BankError> {
    Ok(sqlx::query_as(SELECT_AUTHORIZATION)
        .bind(id.0)
        .fetch_optional(conn)
        .await?)
}

#[derive(sqlx::FromRow)]
struct CardOnFile {
    cvv: String,
    expiry_month: i16,
    expiry_year: i16,
    available_balance: i64,
}

/// Places a hold; the checks after the row lock follow the original's order.
pub async fn authorize(
    conn: &mut PgConnection,
    request: &AuthorizeRequest,
    lifetime: chrono::Duration,
) -> Result<Authorization, BankError> {
    let card: CardOnFile = sqlx::query_as(
        "SELECT cvv, expiry_month, expiry_year, available_balance FROM accounts WHERE card_number = $1 FOR UPDATE",
    )
    .bind(request.card_number.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(BankError::InvalidCard)?;
    if card.cvv != request.cvv.as_str() {
        return Err(BankError::InvalidCvv);
    }
    let on_file = Expiry {
        month: card.expiry_month,
        year: card.expiry_year,
    };
    if request.expiry.is_some_and(|given| given != on_file) {
        return Err(BankError::InvalidCard);
    }
    let today = Utc::now();
    if on_file.has_expired(today.year(), today.month()) {
        return Err(BankError::CardExpired);
    }
    if card.available_balance < request.amount.cents() {
        return Err(BankError::InsufficientFunds);
    }
    let id = AuthorizationId::random();
    let posting = Posting {
        movement: Movement::Authorize,
        card_number: request.card_number.as_str(),
        amount: request.amount.cents(),
        reference: Some(id.0),
    };
    // A new authorization has no capture or void yet: the row as inserted
    // is the whole answer.
    let authorization = posting
        .with_record(
            conn,
            "INSERT INTO authorizations (id, card_number, amount, expires_at) \
             VALUES ($10, $7, $11, now() + $12) \
             RETURNING id, card_number, amount, state, expires_at, created_at, \
               NULL::uuid AS capture_id, NULL::uuid AS void_id",
            |query| query.bind(id.0).bind(request.amount.cents()).bind(lifetime),
        )
        .await?;
    Ok(authorization)
}

/// Locks an authorization that may still be captured or voided.
pub(super) async fn lock_active(
    conn: &mut PgConnection,
    id: Option<AuthorizationId>,
) -> Result<Authorization, BankError> {
    let id = id.ok_or(BankError::AuthorizationNotFound)?;
    let authorization: Authorization =
        sqlx::query_as(&format!("{SELECT_AUTHORIZATION} FOR UPDATE OF a"))
            .bind(id.0)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(BankError::AuthorizationNotFound)?;
    match authorization.state {
        AuthorizationState::Captured | AuthorizationState::Voided => {
            Err(BankError::AuthorizationAlreadyUsed)
        }
        AuthorizationState::Expired => Err(BankError::AuthorizationExpired),
        AuthorizationState::Active if authorization.expires_at <= Utc::now() => {
            Err(BankError::AuthorizationExpired)
        }
        AuthorizationState::Active => Ok(authorization),
    }
}

pub(super) async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: AuthorizationState,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE authorizations SET state = $2 WHERE id = $1")
        .bind(id)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}

/// Releases the hold of an active authorization.
pub async fn void(conn: &mut PgConnection, id: Option<AuthorizationId>) -> Result<Void, BankError> {
    let authorization = lock_active(conn, id).await?;
    let void_id = VoidId::random();
    set_state(conn, authorization.id, AuthorizationState::Voided).await?;
    sqlx::query("INSERT INTO voids (id, authorization_id) VALUES ($1, $2)")
        .bind(void_id.0)
        .bind(authorization.id)
        .execute(&mut *conn)
        .await?;
    ledger::post(
        conn,
        Movement::Void,
        &authorization.card_number,
        authorization.amount,
        Some(void_id.0),
    )
    .await?;
    crate::operations::get_void(conn, void_id)
        .await?
        .ok_or_else(|| BankError::Internal(anyhow::anyhow!("void vanished after insert")))
}

/// Moves an authorization's expiry to now and releases its hold at once.
/// Already expired: answered as it is. Captured or voided: refused.
pub async fn expire_now(
    conn: &mut PgConnection,
    id: AuthorizationId,
) -> Result<Authorization, BankError> {
    let authorization: Authorization =
        sqlx::query_as(&format!("{SELECT_AUTHORIZATION} FOR UPDATE OF a"))
            .bind(id.0)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(BankError::NotFound("authorization"))?;
    match authorization.state {
        AuthorizationState::Expired => return Ok(authorization),
        AuthorizationState::Captured | AuthorizationState::Voided => {
            return Err(BankError::AuthorizationAlreadyUsed);
        }
        AuthorizationState::Active => {}
    }
    sqlx::query("UPDATE authorizations SET expires_at = least(expires_at, now()) WHERE id = $1")
        .bind(id.0)
        .execute(&mut *conn)
        .await?;
    release_expired(conn, &authorization).await?;
    fetch(conn, id).await
}

/// Expires up to `limit` active authorizations past their expiry; the
/// sweeper's step. Rows another transaction holds are left for next time.
pub async fn expire_due(conn: &mut PgConnection, limit: i64) -> Result<u64, BankError> {
    let due: Vec<Authorization> = sqlx::query_as(
        "SELECT id, card_number, amount, state, expires_at, created_at, NULL::uuid AS capture_id, NULL::uuid AS void_id \
         FROM authorizations WHERE state = 'active' AND expires_at <= now() \
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    for authorization in &due {
        release_expired(conn, authorization).await?;
    }
    Ok(u64::try_from(due.len()).unwrap_or(u64::MAX))
}

async fn release_expired(
    conn: &mut PgConnection,
    authorization: &Authorization,
) -> Result<(), BankError> {
    set_state(conn, authorization.id, AuthorizationState::Expired).await?;
    ledger::post(
        conn,
        Movement::Expire,
        &authorization.card_number,
        authorization.amount,
        Some(authorization.id),
    )
    .await?;
    metrics::counter!("bank_authorizations_expired_total").increment(1);
    Ok(())
}

async fn fetch(conn: &mut PgConnection, id: AuthorizationId) -> Result<Authorization, BankError> {
    get_authorization(conn, id).await?.ok_or_else(|| {
        BankError::Internal(anyhow::anyhow!(
            "authorization vanished inside its transaction"
        ))
    })
}
