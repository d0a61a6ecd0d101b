//! The answer to a payment request, rendered once from the payment as the
//! request's own operation left it, and stored on its key: every later
//! answer to that key is these bytes.

use chrono::{DateTime, Utc};

use super::Error;
use super::bank_call::MOVED_AT_BANK;
use super::recover::ABANDONED;
use super::view::{ErrorBody, PaymentView};
use crate::domain::{InvalidTransition, OperationKind, PaymentStatus};
use crate::idempotency::StoredResponse;
use crate::store::payments::PaymentRecord;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// A stored response answered again.
    pub replayed: bool,
}

impl Reply {
    pub fn json(status: u16, value: &impl serde::Serialize) -> Result<Self, Error> {
        Ok(Self {
            status,
            body: serde_json::to_vec(value)?,
            replayed: false,
        })
    }

    pub fn replay(stored: StoredResponse) -> Self {
        Self {
            status: u16::try_from(stored.response_status).unwrap_or(500),
            body: stored.response_body,
            replayed: true,
        }
    }

    /// 202: the bank's answer is not known yet; nothing is stored, so a
    /// retry with the key resumes the operation.
    pub fn is_final(&self) -> bool {
        self.status != 202
    }
}

/// The 409 for an operation the state machine refused; the bank is not called.
pub fn refused(payment: &PaymentRecord, refused: InvalidTransition) -> Result<Reply, Error> {
    let message = match refused.code() {
        "authorization_expired" => "the authorization has expired".to_owned(),
        _ => format!(
            "the payment is {}, which does not allow this operation",
            payment.status()
        ),
    };
    let body = ErrorBody::new("invalid_request_error", refused.code(), message)
        .with_payment(payment.payment_id());
    Reply::json(409, &body)
}

/// The answer to a `kind` request, for the payment as that request's
/// operation left it (or, while its outcome is unknown, in flight: 202).
pub(super) fn render(
    kind: OperationKind,
    payment: &PaymentRecord,
    history: Vec<(PaymentStatus, DateTime<Utc>)>,
) -> Result<Reply, Error> {
    use PaymentStatus as S;
    let view = || PaymentView::new(payment, history);
    let failure = payment
        .failure_code
        .clone()
        .unwrap_or_else(|| "unknown".to_owned());
    let payment_id = payment.payment_id();
    let declined = || {
        ErrorBody::new(
            "card_error",
            failure.clone(),
            "the bank declined the payment",
        )
        .with_payment(payment_id)
    };
    let bank_error = || {
        let held = match kind {
            OperationKind::Authorize => "no money is held",
            OperationKind::Capture | OperationKind::Void | OperationKind::Refund => {
                "the payment is as it was before this request"
            }
        };
        ErrorBody::new(
            "api_error",
            "bank_error",
            format!("the bank refused the gateway's request ({failure}); {held}"),
        )
        .with_payment(payment_id)
    };
    let abandoned = || {
        ErrorBody::new(
            "api_error",
            ABANDONED,
            "the bank's answer to this authorization never came and the gateway gave up on it; \
             no money is held. Authorize again with a new Idempotency-Key and the card",
        )
        .with_payment(payment_id)
    };
    let expired = || {
        ErrorBody::new(
            "invalid_request_error",
            "authorization_expired",
            "the authorization has expired",
        )
        .with_payment(payment_id)
    };
    let moved_at_bank = || {
        let message = format!(
            "the bank had already {} this payment's authorization outside the gateway; \
             the payment now shows what the bank holds",
            match kind {
                OperationKind::Capture => "voided",
                OperationKind::Authorize | OperationKind::Void | OperationKind::Refund => {
                    "captured"
                }
            }
        );
        ErrorBody::new("invalid_request_error", MOVED_AT_BANK, message).with_payment(payment_id)
    };
    let invalid_state = || {
        let message = format!(
            "the payment is {}, which does not allow this operation",
            payment.status()
        );
        ErrorBody::new("invalid_request_error", "invalid_state", message).with_payment(payment_id)
    };
    match kind {
        OperationKind::Authorize => match payment.status() {
            S::Pending => Reply::json(202, &view()),
            S::Declined => Reply::json(402, &declined()),
            S::Failed if failure == ABANDONED => Reply::json(409, &abandoned()),
            S::Failed => Reply::json(502, &bank_error()),
            S::Authorized
            | S::Expired
            | S::Capturing
            | S::Captured
            | S::Voiding
            | S::Voided
            | S::Refunding
            | S::Refunded => Reply::json(201, &view()),
        },
        OperationKind::Capture => match payment.status() {
            S::Capturing => Reply::json(202, &view()),
            S::Captured | S::Refunding | S::Refunded => Reply::json(200, &view()),
            S::Expired => Reply::json(409, &expired()),
            S::Authorized if failure == MOVED_AT_BANK => Reply::json(409, &moved_at_bank()),
            S::Authorized => Reply::json(502, &bank_error()),
            S::Pending | S::Declined | S::Failed | S::Voiding | S::Voided => {
                Reply::json(409, &invalid_state())
            }
        },
        OperationKind::Void => match payment.status() {
            S::Voiding => Reply::json(202, &view()),
            S::Voided => Reply::json(200, &view()),
            S::Expired => Reply::json(409, &expired()),
            S::Authorized if failure == MOVED_AT_BANK => Reply::json(409, &moved_at_bank()),
            S::Authorized => Reply::json(502, &bank_error()),
            S::Pending
            | S::Declined
            | S::Failed
            | S::Capturing
            | S::Captured
            | S::Refunding
            | S::Refunded => Reply::json(409, &invalid_state()),
        },
        OperationKind::Refund => match payment.status() {
            S::Refunding => Reply::json(202, &view()),
            S::Refunded => Reply::json(200, &view()),
            S::Captured => Reply::json(502, &bank_error()),
            S::Pending
            | S::Authorized
            | S::Declined
            | S::Failed
            | S::Expired
            | S::Capturing
            | S::Voiding
            | S::Voided => Reply::json(409, &invalid_state()),
        },
    }
}
