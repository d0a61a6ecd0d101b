//! Every failure the bank answers, with its status and contract code.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// The contract's error body: `{"error": CODE, "message": TEXT}`, and on
/// resolve's 404 (an extension) `"authorization_created": false`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
    /// Only on resolve's "that key created nothing": the same status and
    /// code answer a path the bank does not serve, so without this a
    /// client could not tell the bank's "nothing" from a bank (or a
    /// version of it) without resolve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_created: Option<bool>,
}

impl ErrorBody {
    pub fn new(error: &'static str, message: String) -> Self {
        Self {
            error,
            message,
            authorization_created: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("the card number is invalid or unknown")]
    InvalidCard,
    #[error("the CVV is invalid")]
    InvalidCvv,
    #[error("the amount must be a positive integer number of cents")]
    InvalidAmount,
    #[error("the card has expired")]
    CardExpired,
    #[error("the available balance is lower than the amount")]
    InsufficientFunds,
    #[error("no such authorization")]
    AuthorizationNotFound,
    #[error("the authorization was already captured or voided")]
    AuthorizationAlreadyUsed,
    #[error("the authorization has expired")]
    AuthorizationExpired,
    #[error("the amount differs from the original amount")]
    AmountMismatch,
    #[error("no such capture")]
    CaptureNotFound,
    #[error("the capture was already refunded")]
    AlreadyRefunded,
    #[error("the Idempotency-Key header is required on POST")]
    MissingIdempotencyKey,
    #[error("the Idempotency-Key header must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this idempotency key created no authorization")]
    NothingCreated,
    #[error("an account with this card number already exists")]
    AccountExists,
    #[error("the bank is unavailable")]
    Unavailable,
    #[error("injected failure")]
    Injected,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl BankError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCard => "invalid_card",
            Self::InvalidCvv => "invalid_cvv",
            Self::InvalidAmount => "invalid_amount",
            Self::CardExpired => "card_expired",
            Self::InsufficientFunds => "insufficient_funds",
            Self::AuthorizationNotFound => "authorization_not_found",
            Self::AuthorizationAlreadyUsed => "authorization_already_used",
            Self::AuthorizationExpired => "authorization_expired",
            Self::AmountMismatch => "amount_mismatch",
            Self::CaptureNotFound => "capture_not_found",
            Self::AlreadyRefunded => "already_refunded",
            Self::MissingIdempotencyKey => "missing_idempotency_key",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::InvalidRequest(_) => "invalid_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::NotFound(_) | Self::NothingCreated => "not_found",
            Self::AccountExists => "account_exists",
            Self::Unavailable => "service_unavailable",
            Self::Injected | Self::Internal(_) => "internal_error",
        }
    }
}

impl From<sqlx::Error> for BankError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl ResponseError for BankError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InsufficientFunds => StatusCode::PAYMENT_REQUIRED,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) | Self::NothingCreated => StatusCode::NOT_FOUND,
            Self::AccountExists => StatusCode::CONFLICT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Injected | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InvalidCard
            | Self::InvalidCvv
            | Self::InvalidAmount
            | Self::CardExpired
            | Self::AuthorizationNotFound
            | Self::AuthorizationAlreadyUsed
            | Self::AuthorizationExpired
            | Self::AmountMismatch
            | Self::CaptureNotFound
            | Self::AlreadyRefunded
            | Self::MissingIdempotencyKey
            | Self::InvalidIdempotencyKey
            | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            // The cause goes to the log; the client learns only the code.
            // Counted by `telemetry::count_own_errors`, where the bank is at hand.
            tracing::error!(error = ?cause, "internal error");
        }
        HttpResponse::build(self.status_code()).json(ErrorBody {
            authorization_created: matches!(self, Self::NothingCreated).then_some(false),
            ..ErrorBody::new(self.code(), self.to_string())
        })
    }
}
