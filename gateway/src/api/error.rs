//! Every way a request fails before it becomes a payment outcome, mapped
//! to the contract's error object. Causes go to the log, never the client.

use std::time::Duration;

use actix_web::http::StatusCode;
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
    /// The request's headers, together, are larger than the limit.
    #[error("the request headers are larger than {limit_bytes} bytes")]
    HeadersTooLarge { limit_bytes: usize },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            param: param.into(),
            code: "parameter_invalid",
            message: message.into(),
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
            Self::RateLimited { .. } => ErrorBody::new("rate_limit_error", "rate_limited", message),
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
                format!("amount must equal the payment's amount ({expected} cents)"),
            ),
            payments::Error::Claim(ClaimError::InUse) => Self::KeyInUse,
            payments::Error::Claim(ClaimError::Reused) => Self::KeyReused,
            payments::Error::Claim(ClaimError::Database(e)) | payments::Error::Database(e) => {
                e.into()
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
            Self::KeyInUse => StatusCode::CONFLICT,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::BankUnavailable { .. } | Self::WebhooksNotConfigured => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            | Self::RateLimited { .. }
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
            Self::BankUnavailable { retry_after } | Self::RateLimited { retry_after } => {
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
            | Self::KeyReused
            | Self::HeadersTooLarge { .. }
            | Self::Internal(_) => {}
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
