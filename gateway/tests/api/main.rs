//! The gateway's integration tests, one binary (one link step) for all:
//! a real gateway and a real mock bank over HTTP, on a real Postgres.

mod adversarial;
mod api_keys;
mod bank_client;
mod batching;
mod chaos;
mod circuit;
mod crash;
mod docs;
mod documentation;
mod helpers;
mod hostile;
mod idempotency;
mod lifecycle;
mod limits;
mod listing;
mod operability;
mod process;
mod rate_limit;
mod reconcile;
mod recovery;
mod schema;
mod security;
mod validation;
mod webhooks;
