//! The one error a call returns, built from the API's error object
//! (`{"error": {"type", "code", "message", "param"?, "payment_id"?}}`), the
//! status it came with, or the lack of any answer.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::key::IdempotencyKey;
use crate::payment::{Payment, PaymentId};

/// Declares a string enum with an `Other(String)` fallback: the variants,
/// their wire names, `as_str`, `parse` and `Display`, from one list, so the
/// three cannot disagree.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $wire:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this client does not know (a newer gateway), as sent.
            Other(String),
        }

        impl $name {
            /// Every value this client knows.
            pub const KNOWN: &'static [$name] = &[ $( $name::$variant, )+ ];

            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $wire, )+
                    $name::Other(raw) => raw,
                }
            }

            pub fn parse(raw: &str) -> Self {
                match raw {
                    $( $wire => $name::$variant, )+
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok(Self::parse(&String::deserialize(d)?))
            }
        }
    };
}

wire_enum! {
    /// The error object's `type`: the family of the error.
    pub enum ErrorType {
        InvalidRequestError => "invalid_request_error",
        CardError => "card_error",
        IdempotencyError => "idempotency_error",
        AuthenticationError => "authentication_error",
        RateLimitError => "rate_limit_error",
        ApiError => "api_error",
    }
}

wire_enum! {
    /// The error object's `code`: what exactly went wrong. A decline
    /// (`card_error`) carries the bank's reason.
    pub enum ErrorCode {
        // 400: the request, with `param` naming the field.
        ParameterInvalid => "parameter_invalid",
        ParameterInvalidInteger => "parameter_invalid_integer",
        AmountTooSmall => "amount_too_small",
        AmountTooLarge => "amount_too_large",
        CurrencyNotSupported => "currency_not_supported",
        InvalidNumber => "invalid_number",
        InvalidCvc => "invalid_cvc",
        InvalidExpiryMonth => "invalid_expiry_month",
        InvalidExpiryYear => "invalid_expiry_year",
        InvalidJson => "invalid_json",
        IdempotencyKeyInvalid => "idempotency_key_invalid",
        MissingIdempotencyKey => "missing_idempotency_key",
        DuplicateParameter => "duplicate_parameter",
        // The HTTP layer's refusals (400, 405, 408, 413, 415, 431).
        BadRequest => "bad_request",
        MethodNotAllowed => "method_not_allowed",
        RequestTimeout => "request_timeout",
        PayloadTooLarge => "payload_too_large",
        UnsupportedMediaType => "unsupported_media_type",
        HeadersTooLarge => "headers_too_large",
        // 404 and 401.
        ResourceMissing => "resource_missing",
        InvalidApiKey => "invalid_api_key",
        // 402: the bank's reasons for a decline.
        InsufficientFunds => "insufficient_funds",
        InvalidCard => "invalid_card",
        InvalidCvv => "invalid_cvv",
        CardExpired => "card_expired",
        // 409 and 422.
        InvalidState => "invalid_state",
        AuthorizationExpired => "authorization_expired",
        AuthorizationAbandoned => "authorization_abandoned",
        IdempotencyKeyInUse => "idempotency_key_in_use",
        IdempotencyKeyReused => "idempotency_key_reused",
        // 429, 5xx.
        RateLimited => "rate_limited",
        BankError => "bank_error",
        BankUnavailable => "bank_unavailable",
        ServiceUnavailable => "service_unavailable",
        InternalError => "internal_error",
    }
}

/// The API's error object, with the HTTP status it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: ErrorType,
    pub code: ErrorCode,
    /// The gateway's explanation; it never holds card data.
    pub message: String,
    /// The field that was wrong, as a JSON path (`card.number`) or a
    /// header name (`Idempotency-Key`).
    pub param: Option<String>,
    /// The payment the error is about, when there is one (a decline, a
    /// refused operation).
    pub payment_id: Option<PaymentId>,
}

#[derive(Deserialize)]
struct Envelope {
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: ErrorType,
    code: ErrorCode,
    message: String,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    payment_id: Option<PaymentId>,
}

impl ApiError {
    /// The error object in an answer's body, or `None` when the body is
    /// not one (a proxy's page, a truncated body).
    pub fn parse(status: u16, body: &str) -> Option<Self> {
        let Envelope { error } = serde_json::from_str(body).ok()?;
        Some(Self {
            status,
            kind: error.kind,
            code: error.code,
            message: error.message,
            param: error.param,
            payment_id: error.payment_id,
        })
    }

    /// The gateway asks to be asked again, with the same key, later: the
    /// key is busy with its first request (409 `idempotency_key_in_use`),
    /// the API key is over its rate (429), or the bank's circuit is open or
    /// the database unreachable (503); or the request's body did not reach
    /// it in time (408), which, like a connection that dropped, a resend
    /// settles; or the gateway failed on its own (500 `internal_error`).
    /// A 500 may come after the bank acted, with the operation left in
    /// flight and its key unanswered: the same key resumes it, where a new
    /// key would start a second one (a second hold on the card).
    pub fn asks_for_retry(&self) -> bool {
        match self.status {
            409 => self.code == ErrorCode::IdempotencyKeyInUse,
            408 | 429 | 500 | 503 => true,
            _ => false,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {}", self.message, self.status, self.code)?;
        if let Some(param) = &self.param {
            write!(f, ", param {param}")?;
        }
        if let Some(payment) = &self.payment_id {
            write!(f, ", payment {payment}")?;
        }
        f.write_str(")")
    }
}

/// Everything a call can end with other than its answer.
///
/// Classified from the status and the error object's code, so a caller
/// matches on what to do next:
///
/// | variant | what to do |
/// |---|---|
/// | [`Declined`](Error::Declined) | ask for another card; the payment exists as `declined` |
/// | [`InvalidRequest`](Error::InvalidRequest) | fix `param`; nothing was created, the key is still usable |
/// | [`InvalidState`](Error::InvalidState), [`AuthorizationExpired`](Error::AuthorizationExpired) | nothing to retry: the payment's status does not allow it |
/// | [`AuthorizationAbandoned`](Error::AuthorizationAbandoned) | authorize again with a **new** key and the card |
/// | [`KeyReused`](Error::KeyReused) | a bug: one key, two different requests |
/// | [`NotFound`](Error::NotFound), [`Unauthenticated`](Error::Unauthenticated) | a wrong id or API key |
/// | [`BankError`](Error::BankError) | the bank refused the gateway's request; an operator is paged |
/// | [`StillPending`](Error::StillPending) | call again later with the **same** key to get the outcome |
/// | [`Unavailable`](Error::Unavailable), [`Transport`](Error::Transport) | call again later with the **same** key |
/// | [`Decode`](Error::Decode), [`Other`](Error::Other) | unexpected; look at the message |
///
/// ```
/// use client::{ApiError, Error, ErrorCode};
///
/// let body = r#"{"error": {"type": "card_error", "code": "insufficient_funds",
///     "message": "the bank declined the payment",
///     "payment_id": "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b"}}"#;
/// let error = Error::from(ApiError::parse(402, body).expect("an error object"));
/// assert!(matches!(error, Error::Declined(_)));
/// assert_eq!(error.code(), Some(&ErrorCode::InsufficientFunds));
/// assert_eq!(
///     error.payment_id().map(|id| id.as_str()),
///     Some("pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b")
/// );
/// assert!(!error.resumable());
///
/// let body = r#"{"error": {"type": "invalid_request_error", "code": "amount_too_small",
///     "message": "amount must be greater than zero", "param": "amount"}}"#;
/// let error = Error::from(ApiError::parse(400, body).expect("an error object"));
/// assert!(matches!(error, Error::InvalidRequest(_)));
/// assert_eq!(error.param(), Some("amount"));
/// assert_eq!(
///     error.to_string(),
///     "invalid request: amount must be greater than zero (400 amount_too_small, param amount)"
/// );
///
/// let body = r#"{"error": {"type": "api_error", "code": "authorization_abandoned",
///     "message": "the gateway gave up on it"}}"#;
/// let error = Error::from(ApiError::parse(409, body).expect("an error object"));
/// assert!(error.needs_new_key());
/// ```
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// 402 `card_error`: the bank declined the card (`code` says why);
    /// the payment exists with status `declined`.
    #[error("declined: {0}")]
    Declined(ApiError),
    /// 400 (or 405, 413, 415, 431): the request is malformed; `param`
    /// names the field. Nothing was created or stored.
    #[error("invalid request: {0}")]
    InvalidRequest(ApiError),
    /// 409 `invalid_state`: the payment's status does not allow the
    /// operation; the bank was not called.
    #[error("not allowed in the payment's status: {0}")]
    InvalidState(ApiError),
    /// 409 `authorization_expired`: too late to capture or void.
    #[error("the authorization has expired: {0}")]
    AuthorizationExpired(ApiError),
    /// 409 `authorization_abandoned`: the bank's answer never came and the
    /// gateway gave up after its grace period; the payment is `failed` and
    /// no money is held. Authorize again with a new key and the card.
    #[error(
        "the gateway gave up on this authorization and no money is held; authorize again with a NEW Idempotency-Key and the card: {0}"
    )]
    AuthorizationAbandoned(ApiError),
    /// 422 `idempotency_key_reused`: this key belongs to a different
    /// request. One key per logical operation.
    #[error("this Idempotency-Key belongs to a different request: {0}")]
    KeyReused(ApiError),
    /// 404: no such payment (for this merchant).
    #[error("not found: {0}")]
    NotFound(ApiError),
    /// 401: no API key, or one the gateway does not know.
    #[error("the API key was refused: {0}")]
    Unauthenticated(ApiError),
    /// 502 `bank_error`: the bank refused the gateway's own request (not
    /// the card). An authorization is `failed`; anything else is as it was.
    #[error("the bank refused the gateway's request: {0}")]
    BankError(ApiError),
    /// 202 until the deadline: the bank's answer is not known yet and the
    /// gateway finishes the operation in the background. Calling again with
    /// the same key (and request) resumes it and returns its outcome.
    #[error(
        "payment {} is still {} at the deadline; the gateway completes it in the background: call again with the same Idempotency-Key ({key}) for the outcome",
        payment.id,
        payment.status
    )]
    StillPending {
        payment: Box<Payment>,
        key: IdempotencyKey,
    },
    /// 409 `idempotency_key_in_use`, 429 or 503 (or 408), or a 500
    /// `internal_error`, on every attempt until the attempts or the
    /// deadline ran out (or `Retry-After` asked for longer than was left).
    /// Call again later with the same key: after a 500 the operation may be
    /// in flight (the bank may have acted), and only its key resumes it; a
    /// new key could do it twice. After the others nothing was done.
    #[error(
        "the gateway stayed unavailable through {attempts} attempt(s), last: {last}; call again later with the same Idempotency-Key"
    )]
    Unavailable {
        attempts: u32,
        last: ApiError,
        /// What the last answer's `Retry-After` asked for.
        retry_after: Option<Duration>,
    },
    /// No answer: the connection was refused or reset, or an attempt timed
    /// out, on every attempt. An operation may or may not have happened:
    /// calling again with the same key finds out without doing it twice.
    #[error(
        "no answer from the gateway in {attempts} attempt(s), last: {detail}; call again with the same Idempotency-Key (the operation may or may not have happened)"
    )]
    Transport { attempts: u32, detail: String },
    /// An answer that is not what the contract says (a body that does not
    /// parse, a status the contract does not have without an error object).
    #[error("the gateway's {status} answer could not be read: {detail}")]
    Decode { status: u16, detail: String },
    /// An error object this client does not classify (a status or code
    /// newer than this client).
    #[error("the gateway answered with an error: {0}")]
    Other(ApiError),
}

impl From<ApiError> for Error {
    /// Classifies an error object on its own, as its first answer: one that
    /// asks for a retry becomes [`Error::Unavailable`] after one attempt.
    fn from(api: ApiError) -> Self {
        if api.asks_for_retry() {
            return Error::Unavailable {
                attempts: 1,
                last: api,
                retry_after: None,
            };
        }
        let code = &api.code;
        match api.status {
            400 | 405 | 413 | 415 | 431 => Error::InvalidRequest(api),
            401 => Error::Unauthenticated(api),
            402 => Error::Declined(api),
            404 => Error::NotFound(api),
            409 if *code == ErrorCode::AuthorizationAbandoned => Error::AuthorizationAbandoned(api),
            409 if *code == ErrorCode::AuthorizationExpired => Error::AuthorizationExpired(api),
            409 if *code == ErrorCode::InvalidState => Error::InvalidState(api),
            422 if *code == ErrorCode::IdempotencyKeyReused => Error::KeyReused(api),
            502 if *code == ErrorCode::BankError => Error::BankError(api),
            _ => Error::Other(api),
        }
    }
}

impl Error {
    /// The error object, when the gateway sent one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Error::Declined(api)
            | Error::InvalidRequest(api)
            | Error::InvalidState(api)
            | Error::AuthorizationExpired(api)
            | Error::AuthorizationAbandoned(api)
            | Error::KeyReused(api)
            | Error::NotFound(api)
            | Error::Unauthenticated(api)
            | Error::BankError(api)
            | Error::Other(api)
            | Error::Unavailable { last: api, .. } => Some(api),
            Error::StillPending { .. } | Error::Transport { .. } | Error::Decode { .. } => None,
        }
    }

    pub fn code(&self) -> Option<&ErrorCode> {
        self.api_error().map(|api| &api.code)
    }

    /// The field an invalid request got wrong.
    pub fn param(&self) -> Option<&str> {
        self.api_error()?.param.as_deref()
    }

    /// The payment the error is about: a declined one, one whose operation
    /// was refused, or the one still in flight.
    pub fn payment_id(&self) -> Option<&PaymentId> {
        match self {
            Error::StillPending { payment, .. } => Some(&payment.id),
            Error::Declined(_)
            | Error::InvalidRequest(_)
            | Error::InvalidState(_)
            | Error::AuthorizationExpired(_)
            | Error::AuthorizationAbandoned(_)
            | Error::KeyReused(_)
            | Error::NotFound(_)
            | Error::Unauthenticated(_)
            | Error::BankError(_)
            | Error::Other(_)
            | Error::Unavailable { .. }
            | Error::Transport { .. }
            | Error::Decode { .. } => self.api_error()?.payment_id.as_ref(),
        }
    }

    /// Calling again later with the same key (and the same request) may
    /// give the final answer: the operation is in flight, or the gateway
    /// could not be reached or asked to wait. Everything else is final for
    /// that key.
    pub fn resumable(&self) -> bool {
        match self {
            Error::StillPending { .. } | Error::Unavailable { .. } | Error::Transport { .. } => {
                true
            }
            Error::Declined(_)
            | Error::InvalidRequest(_)
            | Error::InvalidState(_)
            | Error::AuthorizationExpired(_)
            | Error::AuthorizationAbandoned(_)
            | Error::KeyReused(_)
            | Error::NotFound(_)
            | Error::Unauthenticated(_)
            | Error::BankError(_)
            | Error::Decode { .. }
            | Error::Other(_) => false,
        }
    }

    /// The operation's key is spent without a result: a new attempt at the
    /// payment needs a new key (and, for an authorization, the card again).
    pub fn needs_new_key(&self) -> bool {
        matches!(self, Error::AuthorizationAbandoned(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: &str, code: &str) -> String {
        serde_json::json!({"error": {"type": kind, "code": code, "message": "m"}}).to_string()
    }

    fn classify(status: u16, kind: &str, code: &str) -> Error {
        Error::from(ApiError::parse(status, &body(kind, code)).expect("an error object"))
    }

    #[test]
    fn every_answer_of_the_contract_has_its_variant() {
        /// The status, the error object's type and code, and the variant.
        type Case = (u16, &'static str, &'static str, fn(&Error) -> bool);
        let cases: [Case; 20] = [
            (
                415,
                "invalid_request_error",
                "unsupported_media_type",
                |e| matches!(e, Error::InvalidRequest(_)),
            ),
            (408, "invalid_request_error", "request_timeout", |e| {
                matches!(e, Error::Unavailable { .. })
            }),
            (400, "invalid_request_error", "parameter_invalid", |e| {
                matches!(e, Error::InvalidRequest(_))
            }),
            (
                400,
                "invalid_request_error",
                "missing_idempotency_key",
                |e| matches!(e, Error::InvalidRequest(_)),
            ),
            (413, "invalid_request_error", "payload_too_large", |e| {
                matches!(e, Error::InvalidRequest(_))
            }),
            (431, "invalid_request_error", "headers_too_large", |e| {
                matches!(e, Error::InvalidRequest(_))
            }),
            (401, "authentication_error", "invalid_api_key", |e| {
                matches!(e, Error::Unauthenticated(_))
            }),
            (402, "card_error", "insufficient_funds", |e| {
                matches!(e, Error::Declined(_))
            }),
            (402, "card_error", "a_new_decline_reason", |e| {
                matches!(e, Error::Declined(_))
            }),
            (404, "invalid_request_error", "resource_missing", |e| {
                matches!(e, Error::NotFound(_))
            }),
            (409, "invalid_request_error", "invalid_state", |e| {
                matches!(e, Error::InvalidState(_))
            }),
            (409, "invalid_request_error", "authorization_expired", |e| {
                matches!(e, Error::AuthorizationExpired(_))
            }),
            (409, "api_error", "authorization_abandoned", |e| {
                matches!(e, Error::AuthorizationAbandoned(_))
            }),
            (409, "idempotency_error", "idempotency_key_in_use", |e| {
                matches!(e, Error::Unavailable { .. })
            }),
            (422, "idempotency_error", "idempotency_key_reused", |e| {
                matches!(e, Error::KeyReused(_))
            }),
            (429, "rate_limit_error", "rate_limited", |e| {
                matches!(e, Error::Unavailable { .. })
            }),
            (502, "api_error", "bank_error", |e| {
                matches!(e, Error::BankError(_))
            }),
            (503, "api_error", "bank_unavailable", |e| {
                matches!(e, Error::Unavailable { .. })
            }),
            (503, "api_error", "service_unavailable", |e| {
                matches!(e, Error::Unavailable { .. })
            }),
            (500, "api_error", "internal_error", |e| {
                matches!(e, Error::Unavailable { .. }) && e.resumable()
            }),
        ];
        for (status, kind, code, expected) in cases {
            let error = classify(status, kind, code);
            assert!(expected(&error), "{status} {code}: {error:?}");
            assert_eq!(error.code().map(ErrorCode::as_str), Some(code));
        }
    }

    #[test]
    fn an_error_can_be_kept_and_sent_across_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Error>();
    }

    #[test]
    fn an_unknown_409_is_not_taken_for_a_known_one() {
        let error = classify(409, "invalid_request_error", "a_new_conflict");
        assert!(matches!(error, Error::Other(_)), "{error:?}");
        assert!(!error.resumable());
    }

    #[test]
    fn known_codes_and_types_round_trip() {
        for code in ErrorCode::KNOWN {
            assert_eq!(&ErrorCode::parse(code.as_str()), code);
        }
        for kind in ErrorType::KNOWN {
            assert_eq!(&ErrorType::parse(kind.as_str()), kind);
        }
        assert_eq!(
            ErrorCode::parse("brand_new"),
            ErrorCode::Other("brand_new".into())
        );
    }

    #[test]
    fn a_body_that_is_not_an_error_object_is_none() {
        for body in ["", "<html>bad gateway</html>", "{}", r#"{"error": "x"}"#] {
            assert_eq!(ApiError::parse(502, body), None, "{body}");
        }
    }

    #[test]
    fn the_message_names_the_code_the_field_and_the_payment() {
        let raw = r#"{"error": {"type": "card_error", "code": "insufficient_funds",
            "message": "the bank declined the payment", "payment_id": "pay_abc"}}"#;
        let error = Error::from(ApiError::parse(402, raw).expect("an error object"));
        assert_eq!(
            error.to_string(),
            "declined: the bank declined the payment (402 insufficient_funds, payment pay_abc)"
        );
    }
}
