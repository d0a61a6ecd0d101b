//! What the API answers: the payment object (the receipt) and the error
//! object, built only from what the database holds. Stored responses are
//! these bytes, so a replay is identical.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::{EventType, PaymentId, PaymentStatus};
use crate::store::payments::PaymentRecord;

/// The payment: the receipt, and what every answer about it holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    #[schema(value_type = String, example = "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b")]
    pub id: PaymentId,
    #[schema(example = "ord_1001")]
    pub order_id: String,
    #[schema(example = "cus_77")]
    pub customer_id: String,
    /// Integer cents.
    #[schema(example = 4999)]
    pub amount: i64,
    #[schema(example = "USD")]
    pub currency: String,
    pub status: PaymentStatus,
    pub card: CardView,
    pub bank: BankIdsView,
    /// Until when an authorization may be captured or voided; past it the
    /// bank releases the hold and the payment becomes `expired`.
    #[schema(example = "2030-01-08T12:00:00.000000Z")]
    #[serde(serialize_with = "crate::domain::timestamp::serialize_option")]
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// Why it was declined or failed; `null` otherwise.
    pub failure: Option<FailureView>,
    /// Every status the payment went through, oldest first.
    pub history: Vec<HistoryEntry>,
    #[schema(example = "2030-01-01T12:00:00.000000Z")]
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[schema(example = "2030-01-01T12:00:01.000000Z")]
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

/// What is kept of the card: never its number nor its CVV.
#[derive(Debug, Serialize, ToSchema)]
pub struct CardView {
    /// `visa`, `mastercard`, `amex`, `discover` or `unknown`.
    #[schema(example = "visa")]
    pub brand: String,
    #[schema(example = "1111")]
    pub last4: String,
    #[schema(example = 12)]
    pub expiry_month: i16,
    #[schema(example = 2030)]
    pub expiry_year: i16,
}

/// The bank's ids for each operation, once it has answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct BankIdsView {
    #[schema(example = "auth_5f8a7c2e-1b3d-4e6f-9a0b-c1d2e3f4a5b6")]
    pub authorization_id: Option<String>,
    #[schema(example = json!(null))]
    pub capture_id: Option<String>,
    #[schema(example = json!(null))]
    pub void_id: Option<String>,
    #[schema(example = json!(null))]
    pub refund_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailureView {
    /// The bank's code, e.g. `insufficient_funds`, or the gateway's
    /// (`authorization_abandoned`).
    #[schema(example = "insufficient_funds")]
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub status: PaymentStatus,
    #[schema(example = "2030-01-01T12:00:01.000000Z")]
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub at: DateTime<Utc>,
}

/// The payment's status as the API spells it: one of
/// [`PaymentStatus::ALL`], so the document cannot drift from the code.
impl PartialSchema for PaymentStatus {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "`pending`, `capturing`, `voiding` and `refunding`: the bank's answer is not \
                 known yet. `authorized`: funds held. `captured`: charged. `voided`, \
                 `refunded`: given back. `declined`: the bank refused the card. `failed`: \
                 the authorization did not happen, nothing is held. `expired`: the \
                 authorization lapsed before it was captured.",
            ))
            .enum_values(Some(PaymentStatus::ALL.iter().map(|s| s.as_str())))
            .examples([PaymentStatus::Authorized.as_str()])
            .into()
    }
}

impl ToSchema for PaymentStatus {}

/// An event's type: one of [`EventType::ALL`].
impl PartialSchema for EventType {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "What changed: the payment's new status, or `payment.flagged`.",
            ))
            .enum_values(Some(EventType::ALL.iter().map(|t| t.as_str())))
            .examples([EventType::Captured.as_str()])
            .into()
    }
}

impl ToSchema for EventType {}

impl PaymentView {
    pub fn new(record: &PaymentRecord, history: Vec<(PaymentStatus, DateTime<Utc>)>) -> Self {
        Self {
            id: record.payment_id(),
            order_id: record.order_id.clone(),
            customer_id: record.customer_id.clone(),
            amount: record.amount,
            currency: record.currency.clone(),
            status: record.status(),
            card: CardView {
                brand: record.card_brand.clone(),
                last4: record.card_last4.clone(),
                expiry_month: record.card_exp_month,
                expiry_year: record.card_exp_year,
            },
            bank: BankIdsView {
                authorization_id: record.bank_authorization_id.clone(),
                capture_id: record.bank_capture_id.clone(),
                void_id: record.bank_void_id.clone(),
                refund_id: record.bank_refund_id.clone(),
            },
            authorization_expires_at: record.authorization_expires_at,
            failure: record.failure_code.clone().map(|code| FailureView { code }),
            history: history
                .into_iter()
                .map(|(status, at)| HistoryEntry { status, at })
                .collect(),
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// `{"error": {...}}`, the contract's error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// `invalid_request_error`, `card_error`, `idempotency_error`,
    /// `authentication_error`, `rate_limit_error` or `api_error`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: &'static str,
    #[schema(example = "parameter_invalid")]
    pub code: String,
    /// Names the field when there is one; never echoes card data.
    #[schema(example = "amount is required")]
    pub message: String,
    /// The field that was wrong, as a path into the body (`card.cvv`) or a
    /// header's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "amount")]
    pub param: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub payment_id: Option<PaymentId>,
}

impl ErrorBody {
    pub fn new(kind: &'static str, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorObject {
                kind,
                code: code.into(),
                message: message.into(),
                param: None,
                payment_id: None,
            },
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }

    pub fn with_payment(mut self, payment_id: PaymentId) -> Self {
        self.error.payment_id = Some(payment_id);
        self
    }
}
