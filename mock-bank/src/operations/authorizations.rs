use std::sync::LazyLock;

use chrono::{DateTime, Datelike, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::api::error::BankError;
use crate::api::idempotency::{Claim, Claimed};
use crate::domain::{Amount, AuthorizationId, CardNumber, Cvv, Expiry, VoidId};
use crate::ledger::{self, Movement, Posting, Surroundings};
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

/// A hold about to be placed: its id and times are chosen before the
/// statement that places it, so that its response can be stored by that
/// same statement. The times come from this process's clock, not from
/// Postgres's `now()`, which the sweeper compares them with; a skew between
/// the two only moves an expiry by as much.
pub struct NewHold {
    pub id: AuthorizationId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl NewHold {
    pub fn now(lifetime: chrono::Duration) -> Self {
        // Postgres keeps microseconds; the response says what is stored.
        let now = Utc::now();
        let created_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        Self {
            id: AuthorizationId::random(),
            created_at,
            expires_at: created_at + lifetime,
        }
    }

    /// The authorization as it will be stored.
    pub fn authorization(&self, request: &AuthorizeRequest) -> Authorization {
        Authorization {
            id: self.id.0,
            card_number: request.card_number.as_str().to_owned(),
            amount: request.amount.cents(),
            state: AuthorizationState::Active,
            expires_at: self.expires_at,
            created_at: self.created_at,
            capture_id: None,
            void_id: None,
        }
    }
}

/// Decides on the card under its row lock, in the original's order of
/// checks: unknown card, CVV, a given expiry that differs, an expired card,
/// funds. Only an approval claims the key (storing the response) and,
/// only if the claim succeeds, places the hold.
const AUTHORIZE: Surroundings<'static> = Surroundings {
    before: "locked AS MATERIALIZED (SELECT 1 AS held FROM pg_advisory_xact_lock($10)), \
     card AS MATERIALIZED ( \
       SELECT c.* FROM locked, LATERAL ( \
         SELECT cvv, expiry_month, expiry_year, balance, available_balance FROM accounts \
         WHERE card_number = $7 AND locked.held = 1 FOR UPDATE) c), \
     verdict AS MATERIALIZED ( \
       SELECT CASE \
         WHEN card.cvv IS NULL THEN 'invalid_card' \
         WHEN card.cvv <> $11 THEN 'invalid_cvv' \
         WHEN $12::int2 IS NOT NULL \
           AND (card.expiry_month, card.expiry_year) <> ($12::int2, $13::int2) THEN 'invalid_card' \
         WHEN (card.expiry_year::int4, card.expiry_month::int4) < ($14::int4, $15::int4) THEN 'card_expired' \
         WHEN card.available_balance < $16 THEN 'insufficient_funds' \
         ELSE 'approved' END AS outcome \
       FROM locked LEFT JOIN card ON true), \
     claimed AS ( \
       INSERT INTO idempotency_records (path, key, request_hash, response_status, response_body) \
       SELECT $17, $18, $19, 200, $20 FROM verdict WHERE outcome = 'approved' \
       ON CONFLICT DO NOTHING RETURNING 1), \
     created AS ( \
       INSERT INTO authorizations (id, card_number, amount, expires_at, created_at) \
       SELECT $21, $7, $16, $22, $23 FROM claimed)",
    when: "EXISTS (SELECT 1 FROM claimed)",
    answer: "SELECT outcome, EXISTS (SELECT 1 FROM claimed) AS stored FROM verdict",
    balances_from: Some("card"),
};

/// Places `hold` and stores `claim`'s response, atomically and in one
/// statement (one round trip): the authorization is the bank's hottest
/// path. The key's advisory lock is taken first, as [`idempotency`] does
/// for every other operation, so requests sharing a key run one at a time.
pub async fn authorize(
    pool: &PgPool,
    claim: &Claim<'_>,
    request: &AuthorizeRequest,
    hold: &NewHold,
) -> Result<Claimed, BankError> {
    let posting = Posting {
        movement: Movement::Authorize,
        card_number: request.card_number.as_str(),
        amount: request.amount.cents(),
        reference: Some(hold.id.0),
    };
    let today = Utc::now();
    static STATEMENT: LazyLock<String> = LazyLock::new(|| Posting::statement(&AUTHORIZE));
    let (outcome, stored): (String, bool) = posting
        .bind(sqlx::query_as(&STATEMENT))
        .bind(claim.lock_id())
        .bind(request.cvv.as_str())
        .bind(request.expiry.map(|e| e.month))
        .bind(request.expiry.map(|e| e.year))
        .bind(today.year())
        .bind(i32::try_from(today.month()).unwrap_or(i32::MAX))
        .bind(request.amount.cents())
        .bind(&claim.scope.path)
        .bind(&claim.scope.key)
        .bind(&claim.scope.request_hash)
        .bind(claim.response)
        .bind(hold.id.0)
        .bind(hold.expires_at)
        .bind(hold.created_at)
        .fetch_one(pool)
        .await?;
    Ok(match outcome.as_str() {
        "approved" if stored => Claimed::Stored,
        "approved" => Claimed::Taken,
        "invalid_card" => Claimed::Refused(BankError::InvalidCard),
        "invalid_cvv" => Claimed::Refused(BankError::InvalidCvv),
        "card_expired" => Claimed::Refused(BankError::CardExpired),
        "insufficient_funds" => Claimed::Refused(BankError::InsufficientFunds),
        other => {
            return Err(BankError::Internal(anyhow::anyhow!(
                "the authorization statement answered {other:?}"
            )));
        }
    })
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
