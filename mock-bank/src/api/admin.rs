//! Extensions for tests and simulations: accounts, expiry, the ledger, chaos.
//! Never subject to chaos.

use actix_web::web::{Data, Json, Path, Payload};
use actix_web::{HttpResponse, get, post, put};
use serde::Deserialize;

use super::error::{BankError, ErrorBody};
use super::payments::AuthorizationResponse;
use super::request::{parse_value, read_json};
use crate::chaos::{Chaos, ChaosConfig, ChaosUpdate};
use crate::domain::{AuthorizationId, CardNumber, Cvv, Expiry};
use crate::ledger::{self, Verification};
use crate::operations::{self, Account, NewAccount};
use crate::startup::AppState;
use crate::telemetry::{Counters, Tally};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccountBody {
    pub card_number: String,
    pub cvv: String,
    pub expiry_month: i64,
    pub expiry_year: i64,
    /// Opening balance in cents.
    pub balance: i64,
}

#[utoipa::path(post, path = "/admin/accounts", tag = "admin", request_body = NewAccountBody,
    responses((status = 201, body = Account), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[post("/accounts")]
pub async fn create_account(
    payload: Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let body: NewAccountBody = parse_value(read_json(payload).await?)?;
    if body.balance < 0 {
        return Err(BankError::InvalidAmount);
    }
    let new = NewAccount {
        card_number: CardNumber::parse(&body.card_number)?,
        cvv: Cvv::parse(&body.cvv)?,
        expiry: Expiry::parse(body.expiry_month, body.expiry_year)?,
        balance: body.balance,
    };
    let mut tx = state.pool.begin().await?;
    let account = operations::open_account(&mut tx, &new).await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(account))
}

#[utoipa::path(get, path = "/admin/accounts/{card_number}", tag = "admin",
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
#[get("/accounts/{card_number}")]
pub async fn get_account(
    card_number: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let mut conn = state.pool.acquire().await?;
    let account = operations::get_account(&mut conn, &card_number)
        .await?
        .ok_or(BankError::NotFound("account"))?;
    Ok(HttpResponse::Ok().json(account))
}

#[utoipa::path(post, path = "/admin/authorizations/{authorization_id}/expire", tag = "admin",
    responses((status = 200, body = AuthorizationResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/authorizations/{authorization_id}/expire")]
pub async fn expire_authorization(
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let id = AuthorizationId::parse(&id).ok_or(BankError::NotFound("authorization"))?;
    let mut tx = state.pool.begin().await?;
    let authorization = operations::expire_now(&mut tx, id).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(AuthorizationResponse::from(authorization)))
}

#[utoipa::path(get, path = "/admin/ledger/verify", tag = "admin", responses((status = 200, body = Verification)))]
#[get("/ledger/verify")]
pub async fn verify_ledger(state: Data<AppState>) -> Result<HttpResponse, BankError> {
    // One snapshot, so that movements committing meanwhile cannot show up
    // as mismatches.
    let mut tx = state.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let verification = ledger::verify(&mut tx).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(verification))
}

#[utoipa::path(get, path = "/admin/chaos", tag = "admin", responses((status = 200, body = ChaosConfig)))]
#[get("/chaos")]
pub async fn get_chaos(chaos: Data<Chaos>) -> Json<ChaosConfig> {
    Json(chaos.config())
}

/// What this bank counted since it started (its own, not the process's, as
/// `/metrics` is): faults injected by kind, and its own errors.
#[utoipa::path(get, path = "/admin/counters", tag = "admin", responses((status = 200, body = Counters)))]
#[get("/counters")]
pub async fn get_counters(tally: Data<Tally>) -> Json<Counters> {
    Json(tally.counters())
}

#[utoipa::path(put, path = "/admin/chaos", tag = "admin", request_body = ChaosUpdate,
    responses((status = 200, body = ChaosConfig), (status = 400, body = ErrorBody)))]
#[put("/chaos")]
pub async fn put_chaos(
    payload: Payload,
    chaos: Data<Chaos>,
) -> Result<Json<ChaosConfig>, BankError> {
    let update: ChaosUpdate = parse_value(read_json(payload).await?)?;
    let config = chaos.update(update)?;
    tracing::info!(?config, "chaos configuration changed");
    Ok(Json(config))
}
