//! `/v1/payments`: the routes FicMart's checkout calls.

use actix_web::web::{self, Data, Path};
use actix_web::{HttpRequest, HttpResponse, get, post};
use chrono::Datelike;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ApiError;
use super::request::{Fields, Merchant, idempotency_key, query_params, read_json};
use super::request::{record_payment_id, record_payment_in_reply};
use crate::domain::{
    Amount, CardExpiry, CardNumber, Currency, CustomerId, Cvv, IdempotencyKey, MerchantId, OrderId,
    PaymentId,
};
use crate::faults::{Mutant, Point};
use crate::idempotency;
use crate::payments::view::{ErrorBody, PaymentView};
use crate::payments::{Action, AuthorizeCommand, Reply};
use crate::startup::AppState;
use crate::store::payments::{self as store, ListFilter};

/// Listing pages: 20 unless asked, never more than 100.
pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

/// The documented shape of `POST /v1/payments` (parsed field by field).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct CreatePayment {
    #[schema(example = "ord_1001", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    order_id: String,
    #[schema(example = "cus_77", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    customer_id: String,
    /// Integer cents, 1 to 100,000,000.
    #[schema(example = 4999, minimum = 1, maximum = 100_000_000)]
    amount: i64,
    /// Only `USD`.
    #[schema(example = "USD", pattern = "^USD$")]
    currency: String,
    card: CardInput,
}

#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct CardInput {
    /// 13 to 19 digits that pass the Luhn check.
    #[schema(example = "4111111111111111", pattern = "^[0-9]{13,19}$")]
    number: String,
    #[schema(example = "123", pattern = "^[0-9]{3,4}$")]
    cvv: String,
    #[schema(example = 12, minimum = 1, maximum = 12)]
    expiry_month: i64,
    #[schema(example = 2030, minimum = 2000, maximum = 2099)]
    expiry_year: i64,
}

/// The optional body of capture, void and refund.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct OperationInput {
    /// If given, must equal the payment's amount (full amounts only).
    #[schema(example = 4999, minimum = 1, maximum = 100_000_000)]
    amount: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentList {
    pub data: Vec<PaymentView>,
    pub has_more: bool,
}

/// A listing's `limit` query parameter.
pub fn page_size(raw: Option<&String>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE_SIZE).contains(l))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                )
            }),
    }
}

fn parse_create(body: &Value) -> Result<AuthorizeCommand, ApiError> {
    let fields = Fields::of(
        body,
        "",
        &["order_id", "customer_id", "amount", "currency", "card"],
    )?;
    let card = fields.object("card", &["number", "cvv", "expiry_month", "expiry_year"])?;
    Ok(AuthorizeCommand {
        order_id: OrderId::parse(fields.string("order_id")?)?,
        customer_id: CustomerId::parse(fields.string("customer_id")?)?,
        amount: fields.amount("amount")?,
        currency: Currency::parse(fields.string("currency")?)?,
        card_number: CardNumber::parse(card.string("number")?)?,
        cvv: Cvv::parse(card.string("cvv")?)?,
        expiry: CardExpiry::new(card.integer("expiry_month")?, card.integer("expiry_year")?)?,
    })
}

/// Refuses a card past its expiry month (in UTC) with 400 `card_expired`,
/// `param` naming the month or the year: the bank is not called and
/// nothing is stored, so the key stays usable with another card. A key
/// used before is let through to its usual answer (a replay, its resumed
/// operation, or 422): a retry of a payment authorized on the card's last
/// valid day is still that payment. This reads the key only for an expired
/// card, so the usual path costs nothing.
async fn ensure_card_not_expired(
    state: &AppState,
    merchant: MerchantId,
    key: &IdempotencyKey,
    expiry: CardExpiry,
) -> Result<(), ApiError> {
    let today = state.gateway.faults().now();
    let Err(expired) = expiry.ensure_valid_in(today.year(), today.month()) else {
        return Ok(());
    };
    let mut conn = state.gateway.pool().acquire().await?;
    if idempotency::read(&mut conn, merchant, key).await?.is_some() {
        return Ok(());
    }
    tracing::info!("card past its expiry refused; the bank is not called");
    Err(expired.into())
}

/// Refuses the request up front while the bank's circuit is open: 503
/// `bank_unavailable` with `Retry-After`, before the idempotency key is
/// claimed or anything is written, so the client may retry with the same
/// key. A key already stored is let through: its replay (or its 422) needs
/// no bank, and a key still in flight has a payment already, which a 503
/// ("nothing was created") would deny; it is answered as itself (409 while
/// its lease is held, else 202 with the payment still pending). This reads
/// the key only when the circuit is open, so the usual path costs one
/// mutex, not a query.
///
/// A request that passes may still find the circuit open by the time it
/// calls the bank (another took the half-open probe, or it opened
/// meanwhile); it then ends like any call without an answer: 202, and the
/// operation is resumed later with the same bank key.
async fn ensure_bank_available(
    state: &AppState,
    merchant: MerchantId,
    key: &IdempotencyKey,
) -> Result<(), ApiError> {
    let Err(open) = state.gateway.bank().circuit().check() else {
        return Ok(());
    };
    let mut conn = state.gateway.pool().acquire().await?;
    if idempotency::is_stored(&mut conn, merchant, key).await? {
        return Ok(());
    }
    Err(ApiError::BankUnavailable {
        retry_after: open.retry_after,
    })
}

pub(super) fn respond(reply: Reply) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(reply.status)
        .unwrap_or(actix_web::http::StatusCode::OK);
    let mut response = HttpResponse::build(status);
    response.content_type("application/json");
    if reply.replayed {
        metrics::counter!("gateway_idempotency_replays_total").increment(1);
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    response.body(reply.body)
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments",
    summary = "Authorize a payment",
    description = "Reserves `amount` on the card at the bank; capture it later (or void it). Use one new Idempotency-Key per checkout attempt, and the same key with the same body on every retry of it. 201: authorized. 202: the bank's answer is not known yet; retry with the same key and body, or wait for the webhook. 402: declined by the bank, and the payment exists as `declined`. 400: invalid input, `param` names the field (a card past its expiry month is `card_expired`, refused without calling the bank); nothing is stored and the key may be used again.",
    security(("api_key" = [])),
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters (space to tilde); unique per operation", min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$")),
    request_body = CreatePayment,
    responses(
        (status = 201, description = "Authorized", body = PaymentView),
        (status = 202, description = "The bank's answer is not known yet; the payment is pending", body = PaymentView),
        (status = 400, description = "Invalid request or Idempotency-Key, a card past its expiry month (card_expired; the bank is not called), or a JSON key or header (Authorization, Idempotency-Key, Content-Type) sent twice (duplicate_parameter); nothing was created", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 402, description = "Declined by the bank (card_error); the payment exists with status declined", body = ErrorBody),
        (status = 408, description = "request_timeout: the body did not arrive in time (5 s by default)", body = ErrorBody),
        (status = 409, description = "idempotency_key_in_use (retry after Retry-After with the same key), or authorization_abandoned: the bank's answer never came and the gateway gave up after its grace period; no money is held, the payment is failed: authorize again with a new key and the card", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (16 KiB by default), or says it is", body = ErrorBody),
        (status = 415, description = "unsupported_media_type: a body not sent as application/json, or with a Content-Encoding", body = ErrorBody),
        (status = 422, description = "idempotency_key_reused", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 502, description = "bank_error: the bank refused the gateway's request (not the card); the payment is failed and no money is held", body = ErrorBody),
        (status = 503, description = "bank_unavailable (the bank's circuit is open; nothing was created, retry after Retry-After with the same key) or service_unavailable", body = ErrorBody),
    ))]
#[post("/payments")]
pub async fn create_payment(
    req: HttpRequest,
    merchant: Merchant,
    payload: web::Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let body = read_json(&req, payload, state.body).await?;
    let mut command = parse_create(&body)?;
    if state
        .gateway
        .faults()
        .mutant(Mutant::AuthorizedAmountOffByOne)
    {
        command.amount = Amount::from_cents(command.amount.cents() + 1)?;
    }
    ensure_card_not_expired(&state, merchant.0, &key, command.expiry).await?;
    ensure_bank_available(&state, merchant.0, &key).await?;
    let fingerprint = state.fingerprinter.fingerprint("POST", req.path(), &body);
    let reply = state
        .gateway
        .authorize(merchant.0, &key, &fingerprint, &command)
        .await?;
    record_payment_in_reply(&reply.body);
    Ok(respond(reply))
}

async fn operate(
    req: HttpRequest,
    merchant: Merchant,
    id: Path<String>,
    payload: web::Payload,
    state: Data<AppState>,
    action: Action,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let body = read_json(&req, payload, state.body).await?;
    let amount = if body.is_null() {
        None
    } else {
        Fields::of(&body, "", &["amount"])?.optional_amount("amount")?
    };
    let payment_id = PaymentId::parse(&id).map_err(|_| ApiError::NotFound)?;
    record_payment_id(payment_id);
    // The circuit is checked once the payment is judged (a 404 or a 409
    // comes first): by the operation's start.
    let fingerprint = state.fingerprinter.fingerprint("POST", req.path(), &body);
    let reply = state
        .gateway
        .operate(merchant.0, &key, &fingerprint, payment_id, action, amount)
        .await?;
    Ok(respond(reply))
}

macro_rules! operation_route {
    ($name:ident, $path:literal, $action:expr, $summary:literal, $what:literal) => {
        #[utoipa::path(post, path = concat!("/v1", $path), tag = "payments",
            security(("api_key" = [])),
            summary = $summary,
            description = $what,
            params(("id" = String, Path, description = "The payment id; anything else answers 404", pattern = "^pay_[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"), ("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters (space to tilde); unique per operation", min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$")),
            request_body(content = Option<OperationInput>),
            responses(
                (status = 200, description = "Done", body = PaymentView),
                (status = 202, description = "The bank's answer is not known yet", body = PaymentView),
                (status = 400, description = "Invalid body or Idempotency-Key, or a JSON key or header sent twice (duplicate_parameter)", body = ErrorBody),
                (status = 401, description = "Missing or unknown API key", body = ErrorBody),
                (status = 404, description = "No such payment (for this merchant)", body = ErrorBody),
                (status = 408, description = "request_timeout: the body did not arrive in time (5 s by default)", body = ErrorBody),
                (status = 409, description = "invalid_state, authorization_expired, idempotency_key_in_use, or payment_moved_at_bank (the bank had already voided what this captures, or captured what this voids, without the gateway: the payment now shows what the bank holds)", body = ErrorBody),
                (status = 413, description = "The body is larger than the limit (16 KiB by default), or says it is", body = ErrorBody),
        (status = 415, description = "unsupported_media_type: a body not sent as application/json, or with a Content-Encoding", body = ErrorBody),
                (status = 422, description = "idempotency_key_reused", body = ErrorBody),
                (status = 502, description = "bank_error: the bank refused the gateway's request; the payment is as it was", body = ErrorBody),
                (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
                (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
                (status = 503, description = "bank_unavailable (the bank's circuit is open; nothing was done, retry after Retry-After with the same key) or service_unavailable", body = ErrorBody),
            ))]
        #[post($path)]
        pub async fn $name(
            req: HttpRequest,
            merchant: Merchant,
            id: Path<String>,
            payload: web::Payload,
            state: Data<AppState>,
        ) -> Result<HttpResponse, ApiError> {
            operate(req, merchant, id, payload, state, $action).await
        }
    };
}

operation_route!(
    capture_payment,
    "/payments/{id}/capture",
    Action::Capture,
    "Capture a payment",
    "Captures the full authorized amount: the money moves. Only an `authorized` payment can be captured; an optional `amount` must equal the payment's. 202: the bank's answer is not known yet; retry with the same key."
);
operation_route!(
    void_payment,
    "/payments/{id}/void",
    Action::Void,
    "Void a payment",
    "Releases the authorization's hold: nothing is charged. Only an `authorized` payment can be voided. 202: the bank's answer is not known yet; retry with the same key."
);
operation_route!(
    refund_payment,
    "/payments/{id}/refund",
    Action::Refund,
    "Refund a payment",
    "Refunds the full captured amount. Only a `captured` payment can be refunded. 202: the bank's answer is not known yet; retry with the same key."
);

#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", security(("api_key" = [])),
    summary = "Retrieve a payment",
    description = "The payment (the receipt): its status, the card's brand and last four digits, the bank's ids and every status it went through. Poll it while a payment is in flight (`pending`, `capturing`, `voiding`, `refunding`), or wait for the webhook.",
    params(("id" = String, Path, description = "The payment id; anything else answers 404", pattern = "^pay_[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 400, description = "duplicate_parameter: two Authorization headers", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such payment (for this merchant)", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[get("/payments/{id}")]
pub async fn get_payment(
    merchant: Merchant,
    id: Path<String>,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let payment_id = PaymentId::parse(&id).map_err(|_| ApiError::NotFound)?;
    record_payment_id(payment_id);
    let faults = state.gateway.faults();
    let mut conn = state.gateway.pool().acquire().await?;
    let read = if faults.mutant(Mutant::TwoSnapshotReads) {
        let between = async {
            let _ = faults.hit(Point::PaymentRead).await;
        };
        store::get_then_history(&mut conn, merchant.0, payment_id, between).await?
    } else {
        faults.hit(Point::PaymentRead).await?;
        store::get_with_history(&mut conn, merchant.0, payment_id).await?
    };
    let (payment, history) = read.ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(PaymentView::new(&payment, history)))
}

#[utoipa::path(get, path = "/v1/payments", tag = "payments", security(("api_key" = [])),
    summary = "List payments",
    description = "This merchant's payments, newest first, optionally only one order's or one customer's; `limit` per page, the next page `starting_after` the last id while `has_more`.",
    params(
        ("order_id" = Option<String>, Query, description = "Only this order's payments; not with customer_id", pattern = "^[A-Za-z0-9_-]{1,64}$"),
        ("customer_id" = Option<String>, Query, description = "Only this customer's payments; not with order_id", pattern = "^[A-Za-z0-9_-]{1,64}$"),
        ("limit" = Option<i64>, Query, description = "1 to 100, default 20", minimum = 1, maximum = 100),
        ("starting_after" = Option<String>, Query, description = "The last payment id of the previous page", pattern = "^pay_[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"),
    ),
    responses(
        (status = 200, description = "A page, newest first", body = PaymentList),
        (status = 400, description = "Invalid query: a malformed parameter, both filters, or an unknown starting_after; or two Authorization headers", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 429, description = "rate_limited: too many requests with this API key, or too many failed authentications from this client address; retry after Retry-After (whole seconds)", body = ErrorBody),
        (status = 431, description = "headers_too_large: the request headers are larger than the limit (16 KiB by default)", body = ErrorBody),
        (status = 503, description = "service_unavailable", body = ErrorBody),
    ))]
#[get("/payments")]
pub async fn list_payments(
    req: HttpRequest,
    merchant: Merchant,
    state: Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query_params(
        &req,
        &["order_id", "customer_id", "limit", "starting_after"],
    )?;
    let filter = match (query.get("order_id"), query.get("customer_id")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "customer_id",
                "cannot be given with order_id: filter by one or the other",
            ));
        }
        (Some(order), None) => ListFilter::Order(OrderId::parse(order)?.as_str().to_owned()),
        (None, Some(customer)) => {
            ListFilter::Customer(CustomerId::parse(customer)?.as_str().to_owned())
        }
        (None, None) => ListFilter::All,
    };
    let limit = page_size(query.get("limit"))?;
    let mut conn = state.gateway.pool().acquire().await?;
    let starting_after = match query.get("starting_after") {
        None => None,
        Some(raw) => {
            let cursor = PaymentId::parse(raw)
                .map_err(|_| ApiError::invalid("starting_after", "must be a payment id"))?;
            if !store::exists(&mut conn, merchant.0, cursor).await? {
                return Err(ApiError::invalid(
                    "starting_after",
                    "names no payment of this merchant",
                ));
            }
            Some(cursor)
        }
    };
    let (rows, has_more) =
        store::list(&mut conn, merchant.0, &filter, starting_after, limit).await?;
    let data = rows
        .into_iter()
        .map(|(payment, history)| PaymentView::new(&payment, history))
        .collect();
    Ok(HttpResponse::Ok().json(PaymentList { data, has_more }))
}
