//! Request and response bodies of the bank's contract
//! (`docs/bank.md`), field for field.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /api/v1/authorizations`. Borrowed: the card data lives only as
/// long as the request that carried it. `Debug` shows the last four digits
/// of the card and never the CVV.
#[derive(Clone, Copy, Serialize)]
pub struct AuthorizeRequest<'a> {
    pub card_number: &'a str,
    pub cvv: &'a str,
    pub expiry_month: u8,
    pub expiry_year: u16,
    #[serde(rename = "amount")]
    pub amount_cents: i64,
}

impl fmt::Debug for AuthorizeRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The last four digits, and only for something long enough to be a
        // card number (PCI DSS allows showing those); nothing otherwise.
        let digits: Vec<char> = self
            .card_number
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let last4: String = match digits.len() {
            12.. => digits[digits.len() - 4..].iter().collect(),
            0..12 => String::new(),
        };
        f.debug_struct("AuthorizeRequest")
            .field("card_last4", &last4)
            .field("cvv", &"<redacted>")
            .field("expiry_month", &self.expiry_month)
            .field("expiry_year", &self.expiry_year)
            .field("amount_cents", &self.amount_cents)
            .finish()
    }
}

/// `POST /api/v1/captures`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaptureRequest<'a> {
    pub authorization_id: &'a str,
    pub amount: i64,
}

/// `POST /api/v1/voids`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VoidRequest<'a> {
    pub authorization_id: &'a str,
}

/// `POST /api/v1/refunds`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RefundRequest<'a> {
    pub capture_id: &'a str,
    pub amount: i64,
}

/// An authorization, as answered by `POST /api/v1/authorizations` and
/// `GET /api/v1/authorizations/{id}`. `state`, `capture_id` and `void_id`
/// are extensions that only the GET of our bank returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub authorization_id: String,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub void_id: Option<String>,
}

/// A capture (`POST /api/v1/captures`, `GET /api/v1/captures/{id}`);
/// `refund_id` is an extension of the GET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    pub capture_id: String,
    pub authorization_id: String,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    pub captured_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
}

/// A void (`POST /api/v1/voids`, extension `GET /api/v1/voids/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Void {
    pub void_id: String,
    pub authorization_id: String,
    pub status: String,
    pub voided_at: DateTime<Utc>,
}

/// A refund (`POST /api/v1/refunds`, `GET /api/v1/refunds/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub refund_id: String,
    pub capture_id: String,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    pub refunded_at: DateTime<Utc>,
}

/// Every error body of the bank: `{"error": CODE, "message": TEXT}`, and
/// on resolve's "that key created nothing" (an extension)
/// `"authorization_created": false`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub authorization_created: Option<bool>,
}

/// The bank's `error` code, parsed. Codes this gateway does not know (and,
/// for an unparseable 4xx body, the HTTP status text) land in `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BankErrorCode {
    InvalidCard,
    InvalidCvv,
    InvalidAmount,
    CardExpired,
    InsufficientFunds,
    AuthorizationNotFound,
    AuthorizationAlreadyUsed,
    AuthorizationExpired,
    AmountMismatch,
    CaptureNotFound,
    AlreadyRefunded,
    IdempotencyKeyReused,
    MissingIdempotencyKey,
    InvalidIdempotencyKey,
    /// The bank could not read the request (malformed JSON, a missing field).
    InvalidRequest,
    NotFound,
    Other(String),
}

impl BankErrorCode {
    /// Parses the bank's `error` string; never fails.
    pub fn parse(code: &str) -> Self {
        match code {
            "invalid_card" => BankErrorCode::InvalidCard,
            "invalid_cvv" => BankErrorCode::InvalidCvv,
            "invalid_amount" => BankErrorCode::InvalidAmount,
            "card_expired" => BankErrorCode::CardExpired,
            "insufficient_funds" => BankErrorCode::InsufficientFunds,
            "authorization_not_found" => BankErrorCode::AuthorizationNotFound,
            "authorization_already_used" => BankErrorCode::AuthorizationAlreadyUsed,
            "authorization_expired" => BankErrorCode::AuthorizationExpired,
            "amount_mismatch" => BankErrorCode::AmountMismatch,
            "capture_not_found" => BankErrorCode::CaptureNotFound,
            "already_refunded" => BankErrorCode::AlreadyRefunded,
            "idempotency_key_reused" => BankErrorCode::IdempotencyKeyReused,
            "missing_idempotency_key" => BankErrorCode::MissingIdempotencyKey,
            "invalid_idempotency_key" => BankErrorCode::InvalidIdempotencyKey,
            "invalid_request" => BankErrorCode::InvalidRequest,
            "not_found" => BankErrorCode::NotFound,
            other => BankErrorCode::Other(other.to_owned()),
        }
    }

    /// The code as a metric label: from a closed set, `other` for any code
    /// this gateway does not know.
    pub fn label(&self) -> &'static str {
        match self {
            BankErrorCode::Other(_) => "other",
            BankErrorCode::InvalidCard
            | BankErrorCode::InvalidCvv
            | BankErrorCode::InvalidAmount
            | BankErrorCode::CardExpired
            | BankErrorCode::InsufficientFunds
            | BankErrorCode::AuthorizationNotFound
            | BankErrorCode::AuthorizationAlreadyUsed
            | BankErrorCode::AuthorizationExpired
            | BankErrorCode::AmountMismatch
            | BankErrorCode::CaptureNotFound
            | BankErrorCode::AlreadyRefunded
            | BankErrorCode::IdempotencyKeyReused
            | BankErrorCode::MissingIdempotencyKey
            | BankErrorCode::InvalidIdempotencyKey
            | BankErrorCode::InvalidRequest
            | BankErrorCode::NotFound => self.known_str(),
        }
    }

    /// The bank's spelling of the code (for `Other`, what it held).
    pub fn as_str(&self) -> &str {
        match self {
            BankErrorCode::Other(other) => other,
            BankErrorCode::InvalidCard
            | BankErrorCode::InvalidCvv
            | BankErrorCode::InvalidAmount
            | BankErrorCode::CardExpired
            | BankErrorCode::InsufficientFunds
            | BankErrorCode::AuthorizationNotFound
            | BankErrorCode::AuthorizationAlreadyUsed
            | BankErrorCode::AuthorizationExpired
            | BankErrorCode::AmountMismatch
            | BankErrorCode::CaptureNotFound
            | BankErrorCode::AlreadyRefunded
            | BankErrorCode::IdempotencyKeyReused
            | BankErrorCode::MissingIdempotencyKey
            | BankErrorCode::InvalidIdempotencyKey
            | BankErrorCode::InvalidRequest
            | BankErrorCode::NotFound => self.known_str(),
        }
    }

    fn known_str(&self) -> &'static str {
        match self {
            BankErrorCode::InvalidCard => "invalid_card",
            BankErrorCode::InvalidCvv => "invalid_cvv",
            BankErrorCode::InvalidAmount => "invalid_amount",
            BankErrorCode::CardExpired => "card_expired",
            BankErrorCode::InsufficientFunds => "insufficient_funds",
            BankErrorCode::AuthorizationNotFound => "authorization_not_found",
            BankErrorCode::AuthorizationAlreadyUsed => "authorization_already_used",
            BankErrorCode::AuthorizationExpired => "authorization_expired",
            BankErrorCode::AmountMismatch => "amount_mismatch",
            BankErrorCode::CaptureNotFound => "capture_not_found",
            BankErrorCode::AlreadyRefunded => "already_refunded",
            BankErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            BankErrorCode::MissingIdempotencyKey => "missing_idempotency_key",
            BankErrorCode::InvalidIdempotencyKey => "invalid_idempotency_key",
            BankErrorCode::InvalidRequest => "invalid_request",
            BankErrorCode::NotFound => "not_found",
            BankErrorCode::Other(_) => "other",
        }
    }
}

impl fmt::Display for BankErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        for code in [
            "invalid_card",
            "invalid_cvv",
            "invalid_amount",
            "card_expired",
            "insufficient_funds",
            "authorization_not_found",
            "authorization_already_used",
            "authorization_expired",
            "amount_mismatch",
            "capture_not_found",
            "already_refunded",
            "idempotency_key_reused",
            "not_found",
            "missing_idempotency_key",
            "invalid_idempotency_key",
            "invalid_request",
        ] {
            assert_eq!(BankErrorCode::parse(code).as_str(), code);
            assert_eq!(BankErrorCode::parse(code).label(), code);
        }
        let unknown = BankErrorCode::parse("something_new");
        assert_eq!(unknown, BankErrorCode::Other("something_new".to_owned()));
        assert_eq!(unknown.as_str(), "something_new");
        assert_eq!(unknown.label(), "other", "labels come from a closed set");
    }

    #[test]
    fn authorization_parses_with_and_without_extensions() {
        let plain: Authorization = serde_json::from_str(
            r#"{"authorization_id":"auth_1","status":"approved","amount":4999,"currency":"USD",
                "expires_at":"2030-01-08T10:00:00Z","created_at":"2030-01-01T10:00:00.123456Z"}"#,
        )
        .expect("plain authorization");
        assert_eq!(plain.amount, 4999);
        assert_eq!(plain.state, None);
        assert_eq!(plain.capture_id, None);

        let extended: Authorization = serde_json::from_str(
            r#"{"authorization_id":"auth_1","status":"approved","amount":4999,"currency":"USD",
                "expires_at":"2030-01-08T10:00:00+00:00","created_at":"2030-01-01T10:00:00Z",
                "state":"captured","capture_id":"cap_1","void_id":null,"unknown_field":1}"#,
        )
        .expect("extended authorization");
        assert_eq!(extended.state.as_deref(), Some("captured"));
        assert_eq!(extended.capture_id.as_deref(), Some("cap_1"));
        assert_eq!(extended.void_id, None);
    }

    #[test]
    fn authorize_request_serialises_amount_as_the_bank_names_it() {
        let request = AuthorizeRequest {
            card_number: "4111111111111111",
            cvv: "123",
            expiry_month: 12,
            expiry_year: 2030,
            amount_cents: 4999,
        };
        let json = serde_json::to_value(request).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!({"card_number":"4111111111111111","cvv":"123",
                "expiry_month":12,"expiry_year":2030,"amount":4999})
        );
    }

    #[test]
    fn authorize_request_debug_hides_card_and_cvv() {
        let request = AuthorizeRequest {
            card_number: "4111111111111111",
            cvv: "987",
            expiry_month: 12,
            expiry_year: 2030,
            amount_cents: 4999,
        };
        let shown = format!("{request:?} {request:#?}");
        assert!(!shown.contains("4111111111111111"));
        assert!(!shown.contains("411111"));
        assert!(!shown.contains("987"));
        assert!(shown.contains("1111"));
        // Garbage in the card field never leaks either.
        let odd = AuthorizeRequest {
            card_number: "12",
            ..request
        };
        assert!(!format!("{odd:?}").contains("\"12\""));
    }
}
