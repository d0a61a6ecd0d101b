//! The gateway's vocabulary, free of I/O: request values parsed into types
//! that cannot hold an invalid value, and the payment state machine.
//!
//! - [`amount`]: [`Amount`] in integer cents under a ceiling, [`Currency`].
//! - [`card`]: [`CardNumber`] (Luhn-checked, never printed), [`Cvv`],
//!   [`CardExpiry`], [`CardBrand`].
//! - [`ids`]: [`PaymentId`], [`MerchantId`], [`IdempotencyKey`], [`OrderId`],
//!   [`CustomerId`].
//! - [`status`]: [`PaymentStatus`], [`PaymentEvent`] and the one
//!   [`transition`] table.
//! - [`event_type`]: [`EventType`], the webhook name of each change.
//! - [`operation`]: [`OperationKind`], [`OperationStatus`] and the [`Lease`]
//!   under which one process at a time works on a key or an operation.
//! - [`error`]: [`DomainError`], naming the offending request field.
//! - [`timestamp`]: how the API writes a moment (six fractional digits).

pub mod amount;
pub mod card;
pub mod error;
pub mod event_type;
pub mod ids;
pub mod operation;
pub mod status;
pub mod timestamp;

#[cfg(test)]
mod schema_sync;

pub use amount::{Amount, Currency, MAX_AMOUNT_CENTS};
pub use card::{CardBrand, CardExpiry, CardNumber, Cvv};
pub use error::DomainError;
pub use event_type::EventType;
pub use ids::{
    CustomerId, EndpointId, EventId, IdempotencyKey, MAX_CUSTOMER_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN,
    MAX_ORDER_ID_LEN, MerchantId, OrderId, PaymentId,
};
pub use operation::{Lease, OperationKind, OperationStatus};
pub use status::{
    InvalidTransition, PaymentEvent, PaymentStatus, allowed_transitions, mermaid_state_diagram,
    transition,
};
