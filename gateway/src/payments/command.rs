//! What a client asks for, parsed: an authorization with its card, or an
//! action on an existing payment.

use crate::domain::{
    Amount, CardExpiry, CardNumber, Currency, CustomerId, Cvv, MerchantId, OperationKind, OrderId,
    PaymentEvent, PaymentId,
};
use crate::store::payments::NewPayment;

/// A parsed, valid authorization request. The card number and CVV live
/// only here, in memory, for as long as the request does.
#[derive(Debug)]
pub struct AuthorizeCommand {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub amount: Amount,
    pub currency: Currency,
    pub card_number: CardNumber,
    pub cvv: Cvv,
    pub expiry: CardExpiry,
}

impl AuthorizeCommand {
    /// The payment this request creates: what is kept of the card is its
    /// brand, last four digits and expiry.
    pub(super) fn new_payment(&self, merchant: MerchantId) -> NewPayment {
        NewPayment {
            id: PaymentId::new(),
            merchant_id: merchant,
            order_id: self.order_id.as_str().to_owned(),
            customer_id: self.customer_id.as_str().to_owned(),
            amount_cents: self.amount.cents(),
            currency: self.currency.as_str(),
            card_brand: self.card_number.brand().as_str(),
            card_last4: self.card_number.last4().to_owned(),
            card_exp_month: i16::from(self.expiry.month()),
            card_exp_year: i16::try_from(self.expiry.year()).unwrap_or(i16::MAX),
        }
    }
}

/// What a client may do to an existing payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Capture,
    Void,
    Refund,
}

impl Action {
    pub fn kind(self) -> OperationKind {
        match self {
            Self::Capture => OperationKind::Capture,
            Self::Void => OperationKind::Void,
            Self::Refund => OperationKind::Refund,
        }
    }

    /// The event that puts the payment in flight.
    pub fn requested(self) -> PaymentEvent {
        match self {
            Self::Capture => PaymentEvent::CaptureRequested,
            Self::Void => PaymentEvent::VoidRequested,
            Self::Refund => PaymentEvent::RefundRequested,
        }
    }
}
