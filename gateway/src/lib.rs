//! FicMart's payment gateway: authorize, capture, void and refund against the
//! bank, surviving its own crashes. See `docs/api.md` for the API
//! and `migrations/` for the schema.
//!
//! Module map:
//! - [`domain`]: pure types and the payment state machine; no I/O.
//! - [`api`]: routes, parsing at the edge, errors, the OpenAPI document.
//! - [`payments`]: the flows (tx A, bank call, tx B) and the answers they give.
//! - [`idempotency`]: the client's keys: claim, replay, resume, purge.
//! - [`bank`]: the HTTP client for the bank: one idempotency key per
//!   operation, retries with backoff under a deadline, an in-flight limit.
//! - [`recovery`]: background work: the recovery worker and the expiry sweeper.
//! - [`reconcile`]: receipts compared with the bank; those behind it moved
//!   forward, mismatches reported.
//! - [`store`]: Postgres: payments and their history, operations, merchants,
//!   events and webhook deliveries.
//! - [`webhooks`]: every change of a payment, signed and delivered to the
//!   merchant's endpoints, at least once, through crashes.
//! - [`config`], [`startup`], [`telemetry`]: settings, wiring, logs and metrics.
//! - [`faults`]: named fault points on the payment path, compiled only for
//!   tests and the simulator.
//! - [`cli`]: the `gateway` command line.

pub mod api;
pub mod bank;
pub mod cli;
pub mod config;
pub mod domain;
pub mod faults;
pub mod idempotency;
pub mod payments;
pub mod reconcile;
pub mod recovery;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod webhooks;

pub use config::Settings;
pub use startup::Application;
