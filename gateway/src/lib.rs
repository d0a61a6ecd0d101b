//! FicMart's payment gateway: authorize, capture, void and refund against the
//! bank, surviving its own crashes. See `shared/gateway-api.md` for the API
//! and `migrations/` for the schema.
//!
//! Module map:
//! - [`domain`]: pure types and the payment state machine; no I/O.
//! - [`bank`]: the HTTP client for the bank: one idempotency key per
//!   operation, retries with backoff under a deadline, an in-flight limit.
//! - [`cli`]: the `gateway` command line (`state-diagram`; `serve`, `migrate`
//!   and `api-key create` are not implemented yet).

pub mod bank;
pub mod cli;
pub mod domain;
