//! `/v1/webhook_endpoints`: where a merchant's events are sent.
//!
//! Its POSTs take an `Idempotency-Key` like every POST ([`super::keyed`]):
//! a create retried after a lost answer gets the same endpoint and secret,
//! not a second endpoint, and a rotation retried does not rotate again
//! (which would end the first secret's grace at once).

use std::time::Duration;

use actix_web::web::{self, Data, Path};
use actix_web::{HttpRequest, HttpResponse, delete, get, post};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::keyed::{SECRET_HOLE, begin_or_answer};
use super::request::{Fields, Merchant, idempotency_key, read_json};
use crate::domain::{EndpointId, EventType};
use crate::payments::view::ErrorBody;
use crate::startup::AppState;
use crate::store::webhooks::{self as store, CreateError, EndpointChange, EndpointRecord};
use crate::webhooks::secret::{WebhookKey, new_salt};
use crate::webhooks::url::EndpointUrl;
use crate::webhooks::view::{EndpointList, EndpointView};

/// How long the old secret signs beside the new one after a rotation, by
/// default and at most.
pub const DEFAULT_ROTATION_GRACE_SECONDS: i64 = 86_400;
pub const MAX_ROTATION_GRACE_SECONDS: i64 = 7 * 86_400;

/// The documented shape of `POST /v1/webhook_endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct CreateEndpoint {
    /// https, at most 2048 characters, a public address.
    #[schema(example = "https://checkout.ficmart.example/webhooks")]
    url: String,
    /// The event types to send; all of them if absent.
    #[schema(example = json!(["payment.authorized", "payment.captured"]))]
    event_types: Option<Vec<String>>,
}

/// The optional body of `rotate_secret`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct RotateSecret {
    /// How long the old secret keeps signing beside the new one: 0 to
    /// 604800, default 86400 (a day).
    #[schema(minimum = 0, maximum = 604_800)]
    grace_seconds: Option<i64>,
}

fn key(state: &AppState) -> Result<&WebhookKey, ApiError> {
    state
        .webhooks
        .key
        .as_ref()
        .ok_or(ApiError::WebhooksNotConfigured)
}

fn endpoint_id(raw: &str) -> Result<EndpointId, ApiError> {
    EndpointId::parse(raw).map_err(|_| ApiError::Missing("webhook endpoint"))
}

/// The answer of the two requests that show the endpoint's secret: the
/// view with [`SECRET_HOLE`] in its place, filled as it is sent.
fn shows_secret(record: &EndpointRecord) -> EndpointView {
    EndpointView::new(record, Some(SECRET_HOLE.to_owned()))
}

fn parse_event_types(fields: &Fields<'_>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(names) = fields.optional_strings("event_types", EventType::ALL.len())? else {
        return Ok(None);
    };
    let mut types: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let kind = EventType::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "event_types",
                "contains an unknown event type (see the API documentation for the list)",
            )
        })?;
        if !types.iter().any(|t| t == kind.as_str()) {
            types.push(kind.as_str().to_owned());
        }
    }
    Ok(Some(types))
}

#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "webhooks",
    summary = "Register a webhook endpoint",
    description = "Every change of a payment is sent to the endpoint as a signed event (Standard Webhooks), at least once, retried for about three days. The answer holds the signing `secret`, shown to this request and to its replays under the same Idempotency-Key.",
    security(("api_key" = [])),
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters (space to tilde); unique per change", min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$")),
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "Registered; `secret` is shown to the request and its replays", body = EndpointView),
        (status = 400, description = "Invalid url or event_types, the limit of 16 endpoints reached, or a missing or invalid Idempotency-Key", body = ErrorBody),
        (status = 422, description = "idempotency_key_reused", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 503, description = "webhooks_not_configured or service_unavailable", body = ErrorBody),
        (status = 408, description = "request_timeout: the body did not arrive in time (5 s by default)", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (16 KiB by default), or says it is", body = ErrorBody),
        (status = 415, description = "unsupported_media_type: a body not sent as application/json, or with a Content-Encoding", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
    ))]
#[post("/webhook_endpoints")]
pub async fn create_endpoint(
    req: HttpRequest,
    merchant: Merchant,
    payload: web::Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The key first, as on every POST: a request without one is told so,
    // whatever else is wrong with it.
    idempotency_key(&req)?;
    key(&state)?;
    let body = read_json(&req, payload, state.body).await?;
    let fields = Fields::of(&body, "", &["url", "event_types"])?;
    let url = EndpointUrl::parse(fields.string("url")?, state.webhooks.allow_private_urls)
        .map_err(|e| ApiError::Invalid {
            param: "url".into(),
            code: "parameter_invalid",
            // Each says "url must …" already.
            message: e.to_string(),
        })?;
    let event_types = parse_event_types(&fields)?;
    let mut keyed = begin_or_answer!(&req, merchant.0, &state, &body);
    let record = store::create_endpoint(
        keyed.conn(),
        merchant.0,
        url.as_str(),
        event_types.as_deref(),
        &new_salt(),
    )
    .await
    .map_err(|e| match e {
        CreateError::TooMany => ApiError::Invalid {
            param: "url".into(),
            code: "endpoint_limit_reached",
            message: e.to_string(),
        },
        CreateError::Database(e) => e.into(),
    })?;
    tracing::info!(endpoint = %record.endpoint_id(), "webhook endpoint registered");
    keyed
        .finish(
            &state,
            201,
            &shows_secret(&record),
            Some(&record.secret_salt),
        )
        .await
}

#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "webhooks",
    summary = "List webhook endpoints",
    description = "Every endpoint of this merchant, oldest first, without their secrets.",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Every endpoint (16 at most), oldest first", body = EndpointList),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[get("/webhook_endpoints")]
pub async fn list_endpoints(
    merchant: Merchant,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.gateway.pool().acquire().await?;
    let records = store::list_endpoints(&mut conn, merchant.0).await?;
    let data = records.iter().map(|r| EndpointView::new(r, None)).collect();
    Ok(HttpResponse::Ok().json(EndpointList { data }))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    summary = "Retrieve a webhook endpoint",
    description = "The endpoint, its status and why it is disabled if it is; never its secret.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint id (we_…)")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such endpoint (for this merchant)", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[get("/webhook_endpoints/{id}")]
pub async fn get_endpoint(
    merchant: Merchant,
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&id)?;
    let mut conn = state.gateway.pool().acquire().await?;
    let record = store::get_endpoint(&mut conn, merchant.0, id)
        .await?
        .ok_or(ApiError::Missing("webhook endpoint"))?;
    Ok(HttpResponse::Ok().json(EndpointView::new(&record, None)))
}

async fn change(
    req: HttpRequest,
    merchant: Merchant,
    id: Path<String>,
    payload: web::Payload,
    state: Data<AppState>,
    change: EndpointChange,
) -> Result<HttpResponse, ApiError> {
    // The key first, as on every POST: a request without one is told so,
    // whatever else is wrong with it.
    idempotency_key(&req)?;
    let id = endpoint_id(&id)?;
    let body = read_json(&req, payload, state.body).await?;
    if !body.is_null() {
        Fields::of(&body, "", &[])?;
    }
    let mut keyed = begin_or_answer!(&req, merchant.0, &state, &body);
    let record = store::change_endpoint(keyed.conn(), merchant.0, id, change)
        .await?
        .ok_or(ApiError::Missing("webhook endpoint"))?;
    tracing::info!(endpoint = %id, status = %record.status, "webhook endpoint changed");
    let answer = EndpointView::new(&record, None);
    keyed.finish(&state, 200, &answer, None).await
}

macro_rules! change_route {
    ($name:ident, $path:literal, $change:expr, $summary:literal, $what:literal) => {
        #[utoipa::path(post, path = concat!("/v1", $path), tag = "webhooks",
            security(("api_key" = [])),
            summary = $summary,
            description = $what,
            params(("id" = String, Path, description = "The endpoint id (we_…)"),
                ("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters (space to tilde); unique per change", min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$")),
            responses(
                (status = 200, description = "The endpoint as it is now", body = EndpointView),
                (status = 400, description = "Missing or invalid Idempotency-Key, or a body with fields", body = ErrorBody),
                (status = 401, description = "Missing or unknown API key", body = ErrorBody),
                (status = 404, description = "No such endpoint (for this merchant)", body = ErrorBody),
                (status = 422, description = "idempotency_key_reused", body = ErrorBody),
                (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
                (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
                (status = 503, description = "service_unavailable", body = ErrorBody),
            ))]
        #[post($path)]
        pub async fn $name(
            req: HttpRequest,
            merchant: Merchant,
            id: Path<String>,
            payload: web::Payload,
            state: Data<AppState>,
        ) -> Result<HttpResponse, ApiError> {
            change(req, merchant, id, payload, state, $change).await
        }
    };
}

change_route!(
    enable_endpoint,
    "/webhook_endpoints/{id}/enable",
    EndpointChange::Enable,
    "Enable a webhook endpoint",
    "Sends to the endpoint again, starting with the deliveries that waited while it was disabled."
);
change_route!(
    disable_endpoint,
    "/webhook_endpoints/{id}/disable",
    EndpointChange::Disable,
    "Disable a webhook endpoint",
    "Stops sending to the endpoint; its pending deliveries wait, and events made meanwhile are not queued for it (GET /v1/events has them)."
);

#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    security(("api_key" = [])),
    summary = "Delete a webhook endpoint",
    description = "Removes the endpoint for good; its pending deliveries end as failed. Its past attempts stay readable per event.",
    params(("id" = String, Path, description = "The endpoint id (we_…)")),
    responses(
        (status = 200, description = "The endpoint as it is now", body = EndpointView),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such endpoint (for this merchant)", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[delete("/webhook_endpoints/{id}")]
pub async fn delete_endpoint(
    merchant: Merchant,
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&id)?;
    let mut conn = state.gateway.pool().acquire().await?;
    let record = store::change_endpoint(&mut conn, merchant.0, id, EndpointChange::Delete)
        .await?
        .ok_or(ApiError::Missing("webhook endpoint"))?;
    tracing::info!(endpoint = %id, "webhook endpoint deleted");
    Ok(HttpResponse::Ok().json(EndpointView::new(&record, None)))
}

#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "webhooks",
    summary = "Rotate an endpoint's signing secret",
    description = "Makes a new secret, shown to this request and its replays. For `grace_seconds` (a day by default) deliveries carry a signature under the old secret too, so receivers can switch without missing one.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint id (we_…)"), ("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters (space to tilde); unique per change", min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$")),
    request_body(content = Option<RotateSecret>),
    responses(
        (status = 200, description = "The new `secret`, shown to the request and its replays; deliveries carry a signature under each secret until `previous_secret_expires_at`", body = EndpointView),
        (status = 400, description = "Invalid grace_seconds, or a missing or invalid Idempotency-Key", body = ErrorBody),
        (status = 422, description = "idempotency_key_reused", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such endpoint (for this merchant)", body = ErrorBody),
        (status = 503, description = "webhooks_not_configured or service_unavailable", body = ErrorBody),
        (status = 408, description = "request_timeout: the body did not arrive in time (5 s by default)", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (16 KiB by default), or says it is", body = ErrorBody),
        (status = 415, description = "unsupported_media_type: a body not sent as application/json, or with a Content-Encoding", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
    ))]
#[post("/webhook_endpoints/{id}/rotate_secret")]
pub async fn rotate_secret(
    req: HttpRequest,
    merchant: Merchant,
    id: Path<String>,
    payload: web::Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The key first, as on every POST: a request without one is told so,
    // whatever else is wrong with it.
    idempotency_key(&req)?;
    key(&state)?;
    let id = endpoint_id(&id)?;
    let body = read_json(&req, payload, state.body).await?;
    let grace_seconds = if body.is_null() {
        DEFAULT_ROTATION_GRACE_SECONDS
    } else {
        Fields::of(&body, "", &["grace_seconds"])?
            .optional_integer("grace_seconds")?
            .unwrap_or(DEFAULT_ROTATION_GRACE_SECONDS)
    };
    let grace = u64::try_from(grace_seconds)
        .ok()
        .filter(|s| *s <= MAX_ROTATION_GRACE_SECONDS.unsigned_abs())
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::invalid(
                "grace_seconds",
                format!("must be an integer from 0 to {MAX_ROTATION_GRACE_SECONDS}"),
            )
        })?;
    let mut keyed = begin_or_answer!(&req, merchant.0, &state, &body);
    let record = store::rotate_secret(keyed.conn(), merchant.0, id, &new_salt(), grace)
        .await?
        .ok_or(ApiError::Missing("webhook endpoint"))?;
    tracing::info!(endpoint = %id, grace_s = grace.as_secs(), "webhook secret rotated");
    keyed
        .finish(
            &state,
            200,
            &shows_secret(&record),
            Some(&record.secret_salt),
        )
        .await
}
