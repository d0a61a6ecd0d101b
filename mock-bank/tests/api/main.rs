//! HTTP tests against a real mock bank on a real Postgres: one binary,
//! one throwaway cluster, a fresh database per test.

mod admin;
mod chaos;
mod concurrency;
mod helpers;
mod idempotency;
mod input;
mod ledger_model;
mod network_faults;
mod operations;
mod payments;
