//! The original bank's API: authorizations, captures, voids, refunds.

use actix_web::web::{Data, Path, Payload};
use actix_web::{HttpRequest, HttpResponse, get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{BankError, ErrorBody};
use super::idempotency;
use super::request::IdempotentRequest;
use crate::domain::{
    Amount, AuthorizationId, CaptureId, CardNumber, Cvv, Expiry, RefundId, VoidId,
};
use crate::operations::{self, AuthorizationState};
use crate::startup::AppState;

const CURRENCY: &str = "USD";

/// Missing fields decode as zero or empty, as in the original (Go) bank,
/// so that they fail the contract's own checks (`invalid_card`, …).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct AuthorizeBody {
    #[schema(example = "4111111111111111")]
    pub card_number: String,
    #[schema(example = "123")]
    pub cvv: String,
    pub expiry_month: Option<i64>,
    pub expiry_year: Option<i64>,
    #[schema(example = 4999)]
    pub amount: i64,
}

impl AuthorizeBody {
    /// The original's order: Luhn, CVV format, amount.
    fn parse(self) -> Result<operations::AuthorizeRequest, BankError> {
        let card_number = CardNumber::parse(&self.card_number)?;
        let cvv = Cvv::parse(&self.cvv)?;
        let amount = Amount::parse(self.amount)?;
        let expiry = match (self.expiry_month, self.expiry_year) {
            (None, None) => None,
            (month, year) => Some(Expiry::parse(month.unwrap_or(0), year.unwrap_or(0))?),
        };
        Ok(operations::AuthorizeRequest {
            card_number,
            cvv,
            expiry,
            amount,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthorizationResponse {
    #[schema(example = "auth_0b0f7a9e-4c1e-4b7a-9a51-0d5a8e7c2f10")]
    pub authorization_id: String,
    #[schema(example = "approved")]
    pub status: &'static str,
    pub amount: i64,
    pub currency: &'static str,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// Extension: what became of the authorization.
    pub state: AuthorizationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub void_id: Option<String>,
}

impl From<operations::Authorization> for AuthorizationResponse {
    fn from(a: operations::Authorization) -> Self {
        Self {
            authorization_id: AuthorizationId(a.id).to_string(),
            status: "approved",
            amount: a.amount,
            currency: CURRENCY,
            expires_at: a.expires_at,
            created_at: a.created_at,
            state: a.state,
            capture_id: a.capture_id.map(|id| CaptureId(id).to_string()),
            void_id: a.void_id.map(|id| VoidId(id).to_string()),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/authorizations", tag = "bank",
    params(("Idempotency-Key" = String, Header, description = "1–255 characters")),
    request_body = AuthorizeBody,
    responses(
        (status = 200, body = AuthorizationResponse),
        (status = 400, body = ErrorBody, description = "invalid_card, invalid_cvv, invalid_amount, card_expired, missing_idempotency_key"),
        (status = 402, body = ErrorBody, description = "insufficient_funds"),
        (status = 422, body = ErrorBody, description = "idempotency_key_reused"),
        (status = 500, body = ErrorBody, description = "injected failure"),
    ))]
#[post("/authorizations")]
pub async fn create_authorization(
    req: HttpRequest,
    payload: Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let request = IdempotentRequest::<AuthorizeBody>::read(&req, payload).await?;
    let authorize = request.body.parse()?;
    let hold = operations::NewHold::now(state.authorization_lifetime);
    let response = AuthorizationResponse::from(hold.authorization(&authorize));
    let response = serde_json::to_vec(&response).map_err(|e| BankError::Internal(e.into()))?;
    let claim = idempotency::Claim {
        scope: &request.scope,
        response: &response,
    };
    let claimed = operations::authorize(&state.pool, &claim, &authorize, &hold).await?;
    idempotency::answer(&state.pool, &claim, claimed).await
}

/// Extension: settles an authorization whose answer was lost, without
/// sending the card again. The `Idempotency-Key` is the key the
/// authorization was (or may have been) sent with. With `{"retire": false}`
/// it only looks: a key that created nothing is left usable.
#[utoipa::path(post, path = "/api/v1/authorizations/resolve", tag = "bank",
    params(("Idempotency-Key" = String, Header, description = "the key of the authorization to resolve")),
    request_body(content = Option<ResolveBody>, description = "`retire` (default true): retire a key that created nothing"),
    responses(
        (status = 200, body = AuthorizationResponse, description = "the authorization that key created, as it is now"),
        (status = 404, body = ErrorBody, description = "that key created nothing (and, unless `retire` was false, from now on it never will)"),
    ))]
#[post("/authorizations/resolve")]
pub async fn resolve_authorization(
    req: HttpRequest,
    payload: Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let request = IdempotentRequest::<serde_json::Value>::read(&req, payload).await?;
    // Retiring cannot be undone: only `true` or `false` says which, and
    // anything else is refused rather than read as the default.
    if !(request.body.is_object() || request.body.is_null()) {
        return Err(BankError::InvalidRequest(
            "the body must be a JSON object".into(),
        ));
    }
    let retire = match request.body.get("retire") {
        None => true,
        Some(serde_json::Value::Bool(retire)) => *retire,
        Some(_) => {
            return Err(BankError::InvalidRequest(
                "retire must be true or false".into(),
            ));
        }
    };
    let path = req.path().trim_end_matches("/resolve");
    let key = &request.scope.key;
    let found = if retire {
        idempotency::retire_or_read(&state.pool, path, key).await?
    } else {
        idempotency::look(&state.pool, path, key).await?
    };
    match found {
        idempotency::Retired::Absent => Err(BankError::NothingCreated),
        idempotency::Retired::Done(stored) => {
            let created: AuthorizationCreated =
                serde_json::from_slice(&stored).map_err(|e| BankError::Internal(e.into()))?;
            let id = AuthorizationId::parse(&created.authorization_id).ok_or_else(|| {
                BankError::Internal(anyhow::anyhow!("a stored authorization id does not parse"))
            })?;
            let mut conn = state.pool.acquire().await?;
            let authorization = operations::get_authorization(&mut conn, id)
                .await?
                .ok_or(BankError::NotFound("authorization"))?;
            Ok(HttpResponse::Ok().json(AuthorizationResponse::from(authorization)))
        }
    }
}

/// The optional body of `POST /api/v1/authorizations/resolve`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ResolveBody {
    /// Retire a key that created nothing (default true).
    retire: Option<bool>,
}

#[derive(Deserialize)]
struct AuthorizationCreated {
    authorization_id: String,
}

#[utoipa::path(get, path = "/api/v1/authorizations/{authorization_id}", tag = "bank",
    responses((status = 200, body = AuthorizationResponse), (status = 404, body = ErrorBody)))]
#[get("/authorizations/{authorization_id}")]
pub async fn get_authorization(
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let id = AuthorizationId::parse(&id).ok_or(BankError::NotFound("authorization"))?;
    let mut conn = state.pool.acquire().await?;
    let authorization = operations::get_authorization(&mut conn, id)
        .await?
        .ok_or(BankError::NotFound("authorization"))?;
    Ok(HttpResponse::Ok().json(AuthorizationResponse::from(authorization)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct CaptureBody {
    pub authorization_id: String,
    pub amount: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CaptureResponse {
    pub capture_id: String,
    pub authorization_id: String,
    #[schema(example = "captured")]
    pub status: &'static str,
    pub amount: i64,
    pub currency: &'static str,
    pub captured_at: DateTime<Utc>,
    /// Extension: the refund of this capture, once there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
}

impl From<operations::Capture> for CaptureResponse {
    fn from(c: operations::Capture) -> Self {
        Self {
            capture_id: CaptureId(c.id).to_string(),
            authorization_id: AuthorizationId(c.authorization_id).to_string(),
            status: "captured",
            amount: c.amount,
            currency: CURRENCY,
            captured_at: c.captured_at,
            refund_id: c.refund_id.map(|id| RefundId(id).to_string()),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/captures", tag = "bank",
    params(("Idempotency-Key" = String, Header)),
    request_body = CaptureBody,
    responses(
        (status = 200, body = CaptureResponse),
        (status = 400, body = ErrorBody, description = "authorization_not_found, authorization_already_used, authorization_expired, amount_mismatch, invalid_amount"),
        (status = 422, body = ErrorBody, description = "idempotency_key_reused"),
    ))]
#[post("/captures")]
pub async fn create_capture(
    req: HttpRequest,
    payload: Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let request = IdempotentRequest::<CaptureBody>::read(&req, payload).await?;
    let authorization_id = AuthorizationId::parse(&request.body.authorization_id);
    let amount = Amount::parse(request.body.amount)?;
    idempotency::execute(&state.pool, &request.scope, move |conn| {
        Box::pin(async move {
            let capture = operations::capture(conn, authorization_id, amount).await?;
            Ok(CaptureResponse::from(capture))
        })
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/captures/{capture_id}", tag = "bank",
    responses((status = 200, body = CaptureResponse), (status = 404, body = ErrorBody)))]
#[get("/captures/{capture_id}")]
pub async fn get_capture(
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let id = CaptureId::parse(&id).ok_or(BankError::NotFound("capture"))?;
    let mut conn = state.pool.acquire().await?;
    let capture = operations::get_capture(&mut conn, id)
        .await?
        .ok_or(BankError::NotFound("capture"))?;
    Ok(HttpResponse::Ok().json(CaptureResponse::from(capture)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct VoidBody {
    pub authorization_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VoidResponse {
    pub void_id: String,
    pub authorization_id: String,
    #[schema(example = "voided")]
    pub status: &'static str,
    pub voided_at: DateTime<Utc>,
}

impl From<operations::Void> for VoidResponse {
    fn from(v: operations::Void) -> Self {
        Self {
            void_id: VoidId(v.id).to_string(),
            authorization_id: AuthorizationId(v.authorization_id).to_string(),
            status: "voided",
            voided_at: v.voided_at,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/voids", tag = "bank",
    params(("Idempotency-Key" = String, Header)),
    request_body = VoidBody,
    responses(
        (status = 200, body = VoidResponse),
        (status = 400, body = ErrorBody, description = "authorization_not_found, authorization_already_used, authorization_expired"),
        (status = 422, body = ErrorBody, description = "idempotency_key_reused"),
    ))]
#[post("/voids")]
pub async fn create_void(
    req: HttpRequest,
    payload: Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let request = IdempotentRequest::<VoidBody>::read(&req, payload).await?;
    let authorization_id = AuthorizationId::parse(&request.body.authorization_id);
    idempotency::execute(&state.pool, &request.scope, move |conn| {
        Box::pin(async move {
            Ok(VoidResponse::from(
                operations::void(conn, authorization_id).await?,
            ))
        })
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/voids/{void_id}", tag = "bank",
    responses((status = 200, body = VoidResponse), (status = 404, body = ErrorBody)))]
#[get("/voids/{void_id}")]
pub async fn get_void(id: Path<String>, state: Data<AppState>) -> Result<HttpResponse, BankError> {
    let id = VoidId::parse(&id).ok_or(BankError::NotFound("void"))?;
    let mut conn = state.pool.acquire().await?;
    let void = operations::get_void(&mut conn, id)
        .await?
        .ok_or(BankError::NotFound("void"))?;
    Ok(HttpResponse::Ok().json(VoidResponse::from(void)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct RefundBody {
    pub capture_id: String,
    pub amount: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RefundResponse {
    pub refund_id: String,
    pub capture_id: String,
    #[schema(example = "refunded")]
    pub status: &'static str,
    pub amount: i64,
    pub currency: &'static str,
    pub refunded_at: DateTime<Utc>,
}

impl From<operations::Refund> for RefundResponse {
    fn from(r: operations::Refund) -> Self {
        Self {
            refund_id: RefundId(r.id).to_string(),
            capture_id: CaptureId(r.capture_id).to_string(),
            status: "refunded",
            amount: r.amount,
            currency: CURRENCY,
            refunded_at: r.refunded_at,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/refunds", tag = "bank",
    params(("Idempotency-Key" = String, Header)),
    request_body = RefundBody,
    responses(
        (status = 200, body = RefundResponse),
        (status = 400, body = ErrorBody, description = "capture_not_found, already_refunded, amount_mismatch, invalid_amount"),
        (status = 422, body = ErrorBody, description = "idempotency_key_reused"),
    ))]
#[post("/refunds")]
pub async fn create_refund(
    req: HttpRequest,
    payload: Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let request = IdempotentRequest::<RefundBody>::read(&req, payload).await?;
    let capture_id = CaptureId::parse(&request.body.capture_id);
    let amount = Amount::parse(request.body.amount)?;
    idempotency::execute(&state.pool, &request.scope, move |conn| {
        Box::pin(async move {
            Ok(RefundResponse::from(
                operations::refund(conn, capture_id, amount).await?,
            ))
        })
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/refunds/{refund_id}", tag = "bank",
    responses((status = 200, body = RefundResponse), (status = 404, body = ErrorBody)))]
#[get("/refunds/{refund_id}")]
pub async fn get_refund(
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, BankError> {
    let id = RefundId::parse(&id).ok_or(BankError::NotFound("refund"))?;
    let mut conn = state.pool.acquire().await?;
    let refund = operations::get_refund(&mut conn, id)
        .await?
        .ok_or(BankError::NotFound("refund"))?;
    Ok(HttpResponse::Ok().json(RefundResponse::from(refund)))
}
