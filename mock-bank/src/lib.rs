//! A chaotic acquiring bank, wire-compatible with the bank of the public
//! "payment-gateway" learning project, backed by Postgres.
//!
//! Module map:
//! - [`config`]: settings from flags and the original's environment variables.
//! - [`startup`]: pool, migrations, seeding, the HTTP server and the sweeper.
//! - [`api`]: routes, request parsing, idempotent execution, errors, OpenAPI.
//! - [`operations`]: capture, void, refund, expire: each inside a
//!   transaction the caller owns, under a row lock; authorize: one
//!   statement of its own, lock, checks, hold and stored answer together.
//! - [`ledger`]: the double-entry journal, the balances it projects, verification.
//! - [`domain`]: card numbers, CVVs, expiries, amounts and prefixed ids.
//! - [`chaos`]: seeded fault injection (500s, latency, lost and held responses,
//!   resets, outages, proxy error pages, bodies cut short or trickled).
//! - [`expiry`]: the sweeper that releases the holds of expired authorizations.
//! - [`telemetry`]: JSON logs, request ids and Prometheus metrics.

pub mod api;
pub mod chaos;
pub mod config;
pub mod domain;
pub mod expiry;
pub mod ledger;
pub mod operations;
pub mod startup;
pub mod telemetry;

pub use config::Settings;
pub use startup::Application;
