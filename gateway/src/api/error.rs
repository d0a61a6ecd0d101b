//! Every way a request fails before it becomes a payment outcome, mapped
//! to the contract's error object. Causes go to the log, never the client.

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError};

use crate::domain::DomainError;
use crate::faults::Injected;
use crate::idempotency::ClaimError;
use crate::payments::{self, view::ErrorBody};

/// How long a client should wait before retrying a key that is in use.
const IN_USE_RETRY_AFTER_SECONDS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Invalid {
        param: String,
        code: &'static str,
        message: String,
    },
    #[error("the Idempotency-Key header is required on every POST")]
    MissingIdempotencyKey,
    #[error("a valid API key is required: Authorization: Bearer <key>")]
    Unauthenticated,
    #[error("no such payment")]
    NotFound,
    #[error("no such route")]
    NoRoute,
    /// No such thing for this merchant (a webhook endpoint, an event).
    #[error("no such {0}")]
    Missing(&'static str),
    /// The gateway has no webhook key, so no endpoint secret can be made.
    #[error("webhooks are not configured on this gateway (its WEBHOOK_SECRET_KEY is unset)")]
    WebhooksNotConfigured,
    #[error("the request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    /// A body that is not declared `application/json`, or is encoded.
    #[error("{message}")]
    UnsupportedMediaType {
        param: &'static str,
        message: &'static str,
    },
    /// The body did not arrive in time (a slow or stalled client).
    #[error("the request body did not arrive within {timeout_ms} ms")]
    BodyTimeout { timeout_ms: u128 },
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInUse,
    #[error("this Idempotency-Key was already used with a different request")]
    KeyReused,
    #[error("the service is temporarily unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The bank's circuit is open: nothing was done or stored, and the
    /// client may retry with the same Idempotency-Key after `retry_after`.
    #[error(
        "the bank is unavailable; nothing was sent to it and nothing was recorded, retry after {} s with the same Idempotency-Key",
        retry_after_seconds(*retry_after)
    )]
    BankUnavailable { retry_after: Duration },
    /// This API key sent more than its rate allows (see `rate_limit`).
    #[error(
        "too many requests with this API key; retry after {} s",
        retry_after_seconds(*retry_after)
    )]
    RateLimited { retry_after: Duration },
    /// This client address failed to authenticate too often (see
    /// `request::Merchant`): refused before any key is looked up.
    #[error(
        "too many failed authentications from this address; retry after {} s",
        retry_after_seconds(*retry_after)
    )]
    AuthFailuresLimited { retry_after: Duration },
    /// The request's headers, together, are larger than the limit.
    #[error("the request headers are larger than {limit_bytes} bytes")]
    HeadersTooLarge { limit_bytes: usize },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// 400 `parameter_invalid` for `param`; the message is the field's
    /// name followed by `predicate` ("amount is required"), so that it
    /// reads on its own, without `param` beside it.
    pub fn invalid(param: impl Into<String>, predicate: impl AsRef<str>) -> Self {
        let param = param.into();
        let message = format!("{param} {}", predicate.as_ref());
        Self::Invalid {
            param,
            code: "parameter_invalid",
            message,
        }
    }

    /// A parameter the endpoint does not take, `name` within `within` (the
    /// object it was found in, or `body` or `query`). Its name is echoed
    /// only if it reads as one (see [`echoable`]).
    pub fn unknown_parameter(name: &str, within: &str) -> Self {
        if echoable(name) {
            Self::invalid(name, "is not a known parameter")
        } else {
            Self::invalid(within, "holds a parameter this endpoint does not take")
        }
    }

    /// A parameter or header sent more than once: parsers on the way could
    /// each take a different one.
    pub fn duplicate(param: impl Into<String>) -> Self {
        let param = param.into();
        let message = format!("{param} is sent more than once; send it once");
        Self::Invalid {
            param,
            code: "duplicate_parameter",
            message,
        }
    }

    fn body(&self) -> ErrorBody {
        let message = self.to_string();
        match self {
            Self::Invalid { param, code, .. } => {
                ErrorBody::new("invalid_request_error", *code, message).with_param(param.clone())
            }
            Self::MissingIdempotencyKey => {
                ErrorBody::new("invalid_request_error", "missing_idempotency_key", message)
                    .with_param("Idempotency-Key")
            }
            Self::Unauthenticated => {
                ErrorBody::new("authentication_error", "invalid_api_key", message)
            }
            Self::NotFound | Self::NoRoute | Self::Missing(_) => {
                ErrorBody::new("invalid_request_error", "resource_missing", message)
            }
            Self::WebhooksNotConfigured => {
                ErrorBody::new("api_error", "webhooks_not_configured", message)
            }
            Self::PayloadTooLarge { .. } => {
                ErrorBody::new("invalid_request_error", "payload_too_large", message)
            }
            Self::BodyTimeout { .. } => {
                ErrorBody::new("invalid_request_error", "request_timeout", message)
            }
            Self::UnsupportedMediaType { param, .. } => {
                ErrorBody::new("invalid_request_error", "unsupported_media_type", message)
                    .with_param(*param)
            }
            Self::KeyInUse => {
                ErrorBody::new("idempotency_error", "idempotency_key_in_use", message)
            }
            Self::KeyReused => {
                ErrorBody::new("idempotency_error", "idempotency_key_reused", message)
            }
            Self::Unavailable(_) => ErrorBody::new("api_error", "service_unavailable", message),
            Self::BankUnavailable { .. } => {
                ErrorBody::new("api_error", "bank_unavailable", message)
            }
            Self::RateLimited { .. } | Self::AuthFailuresLimited { .. } => {
                ErrorBody::new("rate_limit_error", "rate_limited", message)
            }
            Self::HeadersTooLarge { .. } => {
                ErrorBody::new("invalid_request_error", "headers_too_large", message)
            }
            Self::Internal(_) => ErrorBody::new("api_error", "internal_error", message),
        }
    }
}

/// `Retry-After` is whole seconds: rounded up, and at least 1 (a 0 would
/// invite an immediate retry that the circuit refuses again).
pub fn retry_after_seconds(retry_after: Duration) -> u64 {
    let whole = retry_after.as_secs();
    let rounded = if retry_after.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    };
    rounded.max(1)
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        Self::Invalid {
            param: e.param().to_owned(),
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // The database cannot be reached, is shutting down or is saturated:
        // a retry later may succeed, and the transaction changed nothing.
        // SQLSTATE classes 08 (connection exception), 53 (insufficient
        // resources), 57P (operator intervention, e.g. a shutdown), 57014
        // (a statement cancelled, e.g. by statement_timeout) and 40 (a
        // deadlock or serialization failure): the transaction rolled back.
        let transient_code = |code: &str| {
            ["08", "53", "57P", "57014", "40"]
                .iter()
                .any(|class| code.starts_with(class))
        };
        let unavailable = matches!(
            e,
            sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
        ) || matches!(&e, sqlx::Error::Database(db) if db.code().is_some_and(|code| transient_code(&code)));
        if unavailable {
            Self::Unavailable(e)
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<Injected> for ApiError {
    fn from(injected: Injected) -> Self {
        sqlx::Error::from(injected).into()
    }
}

impl From<payments::Error> for ApiError {
    fn from(e: payments::Error) -> Self {
        match e {
            payments::Error::NotFound => Self::NotFound,
            payments::Error::AmountMismatch { expected } => Self::invalid(
                "amount",
                format!("must equal the payment's amount ({expected} cents)"),
            ),
            payments::Error::Claim(ClaimError::InUse) => Self::KeyInUse,
            payments::Error::Claim(ClaimError::Reused) => Self::KeyReused,
            payments::Error::Claim(ClaimError::Database(e)) | payments::Error::Database(e) => {
                e.into()
            }
            payments::Error::BankUnavailable { retry_after } => {
                Self::BankUnavailable { retry_after }
            }
            payments::Error::Transition(e) => Self::Internal(e.into()),
            payments::Error::Invariant(broken) => Self::Internal(anyhow::anyhow!(broken)),
            payments::Error::Encode(e) => Self::Internal(e.into()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } | Self::MissingIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NotFound | Self::NoRoute | Self::Missing(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::KeyInUse => StatusCode::CONFLICT,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::BankUnavailable { .. } | Self::WebhooksNotConfigured => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } | Self::AuthFailuresLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(cause) => tracing::error!(error = ?cause, "internal error"),
            Self::Unavailable(cause) => tracing::warn!(error = %cause, "database unavailable"),
            Self::Invalid { .. }
            | Self::MissingIdempotencyKey
            | Self::Unauthenticated
            | Self::NotFound
            | Self::NoRoute
            | Self::Missing(_)
            | Self::PayloadTooLarge { .. }
            | Self::BodyTimeout { .. }
            | Self::UnsupportedMediaType { .. }
            | Self::RateLimited { .. }
            | Self::AuthFailuresLimited { .. }
            | Self::HeadersTooLarge { .. } => {}
            Self::WebhooksNotConfigured => {
                tracing::warn!("a webhook endpoint was refused: WEBHOOK_SECRET_KEY is unset")
            }
            Self::KeyInUse => {
                metrics::counter!("gateway_idempotency_conflicts_total", "kind" => "in_use")
                    .increment(1);
            }
            Self::KeyReused => {
                metrics::counter!("gateway_idempotency_conflicts_total", "kind" => "reused")
                    .increment(1);
            }
            Self::BankUnavailable { retry_after } => tracing::info!(
                retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
                "refused up front: the bank's circuit is open"
            ),
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::KeyInUse => {
                response.insert_header(("Retry-After", IN_USE_RETRY_AFTER_SECONDS.to_string()));
            }
            Self::Unavailable(_) => {
                response.insert_header(("Retry-After", "1"));
            }
            Self::BankUnavailable { retry_after }
            | Self::RateLimited { retry_after }
            | Self::AuthFailuresLimited { retry_after } => {
                response
                    .insert_header(("Retry-After", retry_after_seconds(*retry_after).to_string()));
            }
            Self::Invalid { .. }
            | Self::MissingIdempotencyKey
            | Self::Unauthenticated
            | Self::NotFound
            | Self::NoRoute
            | Self::Missing(_)
            | Self::WebhooksNotConfigured
            | Self::PayloadTooLarge { .. }
            | Self::BodyTimeout { .. }
            | Self::UnsupportedMediaType { .. }
            | Self::KeyReused
            | Self::HeadersTooLarge { .. }
            | Self::Internal(_) => {}
        }
        response.json(self.body())
    }
}

/// Gives an error answer without a JSON body the contract's error object,
/// keeping its status: answers made below the handlers (the docs' file
/// server's empty 404, an actix-web extractor's text) reach clients in the
/// same shape as every other error. Inside `telemetry::observe`.
pub async fn shape_bare_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Handlers' and extractors' errors arrive here as answers already.
    let response = next.call(req).await?.map_into_boxed_body();
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return Ok(response);
    }
    if status.is_server_error() {
        tracing::warn!(
            status = status.as_u16(),
            "a bare error answer from below the handlers"
        );
    }
    Ok(response.map_body(|head, _| {
        head.headers_mut().remove(CONTENT_LENGTH);
        head.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = serde_json::to_vec(&bare_error_body(head.status)).unwrap_or_default();
        BoxBody::new(body)
    }))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}

/// The error object for a bare answer of `status`: its reason, in the
/// contract's words where it has them.
fn bare_error_body(status: StatusCode) -> ErrorBody {
    let reason = status.canonical_reason().unwrap_or("error");
    let (kind, code) = match status {
        StatusCode::NOT_FOUND => ("invalid_request_error", "resource_missing".to_owned()),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", "payload_too_large".to_owned()),
        other if other.is_server_error() => ("api_error", "internal_error".to_owned()),
        _ => (
            "invalid_request_error",
            reason.to_ascii_lowercase().replace([' ', '-'], "_"),
        ),
    };
    ErrorBody::new(kind, code, reason.to_ascii_lowercase())
}

/// Whether a name the client sent may go back in an error: it reads as a
/// parameter's name (lowercase ASCII letters, digits, `_`, `.` and `-`, at
/// most 64 bytes, at most four digits in all: a card number written in
/// groups, `4111-1111-1111-1111`, has no long run of digits). A client
/// that sent a value where a name goes (a card number as a JSON key) must
/// not get it back, nor see it logged on the way.
pub fn echoable(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().filter(u8::is_ascii_digit).count() <= 4
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_errors_get_a_code_from_their_status() {
        let body = |status| serde_json::to_value(bare_error_body(status)).unwrap();
        assert_eq!(
            body(StatusCode::NOT_FOUND)["error"]["code"],
            "resource_missing"
        );
        let bad = body(StatusCode::BAD_REQUEST);
        assert_eq!(bad["error"]["code"], "bad_request");
        assert_eq!(bad["error"]["type"], "invalid_request_error");
        assert_eq!(
            body(StatusCode::METHOD_NOT_ALLOWED)["error"]["code"],
            "method_not_allowed"
        );
        let internal = body(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(internal["error"]["type"], "api_error");
        assert_eq!(internal["error"]["code"], "internal_error");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(4500)), 5);
        assert_eq!(retry_after_seconds(Duration::MAX), u64::MAX);
    }

    #[test]
    fn bank_unavailable_is_a_503_api_error_with_retry_after() {
        let error = ApiError::BankUnavailable {
            retry_after: Duration::from_millis(2_300),
        };
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
        let body = serde_json::to_value(error.body()).expect("json");
        assert_eq!(body["error"]["type"], "api_error");
        assert_eq!(body["error"]["code"], "bank_unavailable");
    }

    #[test]
    fn rate_limited_is_a_429_rate_limit_error_with_whole_seconds() {
        let error = ApiError::RateLimited {
            retry_after: Duration::from_millis(10),
        };
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let body = serde_json::to_value(error.body()).expect("json");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limited");
    }
}
