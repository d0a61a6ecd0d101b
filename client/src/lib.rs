//! A typed client of the FicMart payment gateway, for FicMart's Rust
//! checkout (package `ficmart-client`, library `client`).
//!
//! ```no_run
//! use client::{AuthorizeRequest, Card, Client, Error, IdempotencyKey};
//!
//! # async fn checkout() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Client::new(["http://127.0.0.1:8080"], "sk_…")?;
//! let card = Card::new("4111111111111111", "123", 12, 2030);
//! let request = AuthorizeRequest::usd("ord_1001", "cus_77", 4999, card);
//! // One key per logical operation: kept (e.g. with the order) until the
//! // operation has its final answer, so that a resumed checkout reuses it.
//! let key = IdempotencyKey::random();
//! match gateway.authorize(&key, &request).await {
//!     Ok(payment) => println!("authorized {}", payment.id),
//!     Err(Error::Declined(declined)) => println!("declined: {}", declined.code),
//!     Err(error) if error.resumable() => println!("unknown yet, resume with {key}: {error}"),
//!     Err(error) => return Err(error.into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What the client does for the caller
//!
//! - **Idempotency.** Every POST method takes the [`IdempotencyKey`] of the
//!   logical operation and sends it on every attempt of the call, so a
//!   retry is never a second charge. Calling again with the same key later
//!   resumes the operation instead of repeating it.
//! - **Retries by the contract.** A 202 (the bank's answer not known yet)
//!   is retried with the same key, which resumes the operation, until it is
//!   final or the deadline comes; 409 `idempotency_key_in_use`, 429 and 503
//!   are retried after their `Retry-After`; no answer at all (refused,
//!   reset, timed out, and the gateway's 408 for a body that did not
//!   arrive in time) is retried with the same key, and so is a 500
//!   `internal_error` (the contract says so: it may have left the operation
//!   in flight, and only its key resumes it). Nothing else is: 400, 401,
//!   402, 404, the other 409s, 422 and 502 are final. Without a
//!   `Retry-After`, waits are exponential with full jitter; the
//!   [`RetryPolicy`]'s deadline bounds the whole call.
//! - **Replicas.** [`Client::new`] takes several base URLs; successive
//!   attempts go round-robin across them.
//! - **Errors by what to do next.** One [`Error`], classified from the
//!   status and the API's error code (see its table).
//! - **An observer of every attempt** ([`Client::with_observer`],
//!   [`AttemptRecord`]), for test harnesses: every attempt is reported, the
//!   retried ones and those cut off by a dropped call included.
//! - **Card data stays out of logs.** [`Card`]'s `Debug` shows only the last
//!   four digits; no error, record or `Display` holds a number or a CVV.
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | `client` | [`Client`]: the routes, the retry loop, one attempt, the classification of an answer |
//! | `request` | what is sent: [`AuthorizeRequest`], [`Card`] (redacted `Debug`), [`Page`] |
//! | `payment` | what comes back: [`Payment`], [`PaymentStatus`], [`PaymentId`], [`PaymentList`] |
//! | `error` | [`Error`], the API's error object [`ApiError`], [`ErrorCode`], [`ErrorType`] |
//! | `key` | [`IdempotencyKey`] |
//! | `retry` | [`RetryPolicy`]: attempts, deadline, backoff |
//! | `observe` | [`AttemptRecord`], [`AttemptOutcome`], [`Observer`] |
//!
//! # The example
//!
//! `examples/checkout.rs` runs a checkout (authorize, capture, receipt)
//! against a running stack; its module doc says how to start one.

mod client;
mod error;
mod key;
mod observe;
mod payment;
mod request;
mod retry;

pub use crate::client::{BuildError, Client};
pub use crate::error::{ApiError, Error, ErrorCode, ErrorType};
pub use crate::key::{IdempotencyKey, InvalidKey, MAX_KEY_LEN};
pub use crate::observe::{AttemptOutcome, AttemptRecord, Observer};
pub use crate::payment::{
    BankIds, CardSummary, Failure, HistoryEntry, InvalidPaymentId, Payment, PaymentId, PaymentList,
    PaymentStatus,
};
pub use crate::request::{AuthorizeRequest, Card, CardNumber, Cvv, Page};
pub use crate::retry::RetryPolicy;

/// Re-exported so a caller can name the types in [`AttemptRecord`] and
/// build base URLs without depending on reqwest itself.
pub use reqwest::{Method, Url};
