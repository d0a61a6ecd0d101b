//! What the API answers: the payment object (the receipt) and the error
//! object, built only from what the database holds. Stored responses are
//! these bytes, so a replay is identical.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{PaymentId, PaymentStatus};
use crate::store::payments::PaymentRecord;

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    #[schema(value_type = String, example = "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b")]
    pub id: PaymentId,
    pub order_id: String,
    pub customer_id: String,
    /// Integer cents.
    pub amount: i64,
    #[schema(example = "USD")]
    pub currency: String,
    #[schema(value_type = String, example = "authorized")]
    pub status: PaymentStatus,
    pub card: CardView,
    pub bank: BankIdsView,
    pub authorization_expires_at: Option<DateTime<Utc>>,
    pub failure: Option<FailureView>,
    pub history: Vec<HistoryEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CardView {
    pub brand: String,
    pub last4: String,
    pub expiry_month: i16,
    pub expiry_year: i16,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BankIdsView {
    pub authorization_id: Option<String>,
    pub capture_id: Option<String>,
    pub void_id: Option<String>,
    pub refund_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailureView {
    /// The bank's code, e.g. `insufficient_funds`.
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    #[schema(value_type = String)]
    pub status: PaymentStatus,
    pub at: DateTime<Utc>,
}

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
    pub kind: &'static str,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
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
