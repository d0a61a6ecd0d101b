//! `/v1/events`: every change of the merchant's payments, for polling and
//! catch-up, each with the attempts to deliver it; and a re-send on demand.

use actix_web::web::{self, Data, Path};
use actix_web::{HttpRequest, HttpResponse, get, post};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::keyed::begin_or_answer;
use super::payments::page_size;
use super::request::{Fields, Merchant, idempotency_key, query_params, read_json};
use crate::domain::{EndpointId, EventId, EventType, PaymentId};
use crate::payments::view::ErrorBody;
use crate::startup::AppState;
use crate::store::events::{self, EventFilter};
use crate::store::webhooks as store;
use crate::webhooks::view::{DeliveryList, DeliveryView, EventList, EventView};

/// The optional body of a re-send.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct Resend {
    /// Only to this endpoint; without it, to every enabled endpoint that
    /// wants the event's type.
    #[schema(example = "we_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b")]
    endpoint_id: Option<String>,
}

fn event_id(raw: &str) -> Result<EventId, ApiError> {
    EventId::parse(raw).map_err(|_| ApiError::Missing("event"))
}

#[utoipa::path(get, path = "/v1/events", tag = "webhooks", security(("api_key" = [])),
    summary = "List events",
    description = "Every change of this merchant's payments, newest first, as webhooks carry them: for a receiver that missed some, or for polling instead of webhooks.",
    params(
        ("payment_id" = Option<String>, Query, description = "Only this payment's events"),
        ("type" = Option<String>, Query, description = "Only events of this type, e.g. payment.captured"),
        ("limit" = Option<i64>, Query, description = "1 to 100, default 20", minimum = 1, maximum = 100),
        ("starting_after" = Option<String>, Query, description = "The last event id of the previous page"),
    ),
    responses(
        (status = 200, description = "A page, newest first", body = EventList),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[get("/events")]
pub async fn list_events(
    req: HttpRequest,
    merchant: Merchant,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query_params(&req, &["payment_id", "type", "limit", "starting_after"])?;
    let filter = EventFilter {
        payment: query
            .get("payment_id")
            .map(|raw| PaymentId::parse(raw))
            .transpose()
            .map_err(|_| ApiError::invalid("payment_id", "must be a payment id"))?,
        kind: query
            .get("type")
            .map(|raw| EventType::parse(raw).ok_or(()))
            .transpose()
            .map_err(|_| ApiError::invalid("type", "is not an event type"))?,
    };
    let limit = page_size(query.get("limit"))?;
    let mut conn = state.gateway.pool().acquire().await?;
    let starting_after = match query.get("starting_after") {
        None => None,
        Some(raw) => {
            let cursor = EventId::parse(raw)
                .map_err(|_| ApiError::invalid("starting_after", "must be an event id"))?;
            if !events::exists(&mut conn, merchant.0, cursor).await? {
                return Err(ApiError::invalid(
                    "starting_after",
                    "names no event of this merchant",
                ));
            }
            Some(cursor)
        }
    };
    let (records, has_more) =
        events::list(&mut conn, merchant.0, &filter, starting_after, limit).await?;
    let data = records.iter().map(EventView::new).collect();
    Ok(HttpResponse::Ok().json(EventList { data, has_more }))
}

#[utoipa::path(get, path = "/v1/events/{id}", tag = "webhooks", security(("api_key" = [])),
    summary = "Retrieve an event",
    description = "The event, byte for byte the body its deliveries carry.",
    params(("id" = String, Path, description = "The event id (evt_…)")),
    responses(
        (status = 200, description = "The event, exactly as its deliveries carry it", body = EventView),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such event (for this merchant)", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[get("/events/{id}")]
pub async fn get_event(
    merchant: Merchant,
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = event_id(&id)?;
    let mut conn = state.gateway.pool().acquire().await?;
    let event = events::get(&mut conn, merchant.0, id)
        .await?
        .ok_or(ApiError::Missing("event"))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(EventView::new(&event).to_body()))
}

#[utoipa::path(get, path = "/v1/events/{id}/deliveries", tag = "webhooks", security(("api_key" = [])),
    summary = "List an event's deliveries",
    description = "One delivery per endpoint the event was sent to, each with every attempt: when, the receiver's status or the error, and how long it took.",
    params(("id" = String, Path, description = "The event id (evt_…)")),
    responses(
        (status = 200, description = "The event's deliveries, one per endpoint, each with every attempt", body = DeliveryList),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such event (for this merchant)", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[get("/events/{id}/deliveries")]
pub async fn list_deliveries(
    merchant: Merchant,
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = event_id(&id)?;
    let mut conn = state.gateway.pool().acquire().await?;
    if !events::exists(&mut conn, merchant.0, id).await? {
        return Err(ApiError::Missing("event"));
    }
    let deliveries = store::deliveries_of(&mut conn, id).await?;
    let data = deliveries.iter().map(DeliveryView::new).collect();
    Ok(HttpResponse::Ok().json(DeliveryList { data }))
}

#[utoipa::path(post, path = "/v1/events/{id}/resend", tag = "webhooks", security(("api_key" = [])),
    summary = "Resend an event",
    description = "Queues the event again, due now, with the same webhook-id (a receiver that deduplicates sees it once): to one endpoint, or to every enabled endpoint that wants its type.",
    params(("id" = String, Path, description = "The event id (evt_…)"), ("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters (space to tilde); unique per resend", min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$")),
    request_body(content = Option<Resend>),
    responses(
        (status = 202, description = "Queued: the deliveries, due now (same webhook-id as before)", body = DeliveryList),
        (status = 400, description = "Invalid endpoint_id, or a missing or invalid Idempotency-Key", body = ErrorBody),
        (status = 422, description = "idempotency_key_reused", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such event, or no such enabled endpoint (for this merchant)", body = ErrorBody),
        (status = 408, description = "request_timeout: the body did not arrive in time (5 s by default)", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (16 KiB by default), or says it is", body = ErrorBody),
        (status = 415, description = "unsupported_media_type: a body not sent as application/json, or with a Content-Encoding", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[post("/events/{id}/resend")]
pub async fn resend_event(
    req: HttpRequest,
    merchant: Merchant,
    id: Path<String>,
    payload: web::Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The key first, as on every POST: a request without one is told so,
    // whatever else is wrong with it.
    idempotency_key(&req)?;
    let id = event_id(&id)?;
    let body = read_json(&req, payload, state.body).await?;
    let endpoint = if body.is_null() {
        None
    } else {
        let fields = Fields::of(&body, "", &["endpoint_id"])?;
        match fields.optional_string("endpoint_id")? {
            None => None,
            Some(raw) => Some(
                EndpointId::parse(raw)
                    .map_err(|_| ApiError::invalid("endpoint_id", "must be an endpoint id"))?,
            ),
        }
    };
    let mut keyed = begin_or_answer!(&req, merchant.0, &state, &body);
    if !events::exists(keyed.conn(), merchant.0, id).await? {
        return Err(ApiError::Missing("event"));
    }
    let touched = store::resend(keyed.conn(), merchant.0, id, endpoint).await?;
    if touched.is_empty() && endpoint.is_some() {
        return Err(ApiError::Missing("enabled webhook endpoint"));
    }
    let data = store::deliveries_of(keyed.conn(), id)
        .await?
        .iter()
        .filter(|d| touched.contains(&d.id))
        .map(DeliveryView::new)
        .collect();
    tracing::info!(event = %id, deliveries = touched.len(), "event re-sent");
    keyed
        .finish(&state, 202, &DeliveryList { data }, None)
        .await
}
