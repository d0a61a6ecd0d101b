//! Postgres: the pool, the migrations, and one file per table family
//! (`idempotency_keys` has its own module, [`crate::idempotency`]).
//!
//! Every function takes a `&mut PgConnection` so the caller decides the
//! transaction, except the two hot writes, which take the pool because a
//! [`batch::Batcher`] runs them for many requests at once; none of them is
//! ever called while a bank call is pending.
//!
//! # One lock order
//!
//! A transaction that locks more than one of a payment's rows locks them in
//! this order: the payment, then its operation, then the idempotency key.
//! Starting an operation locks the payment and then writes the operation
//! and the key; resuming a key reads it unlocked to learn its payment and
//! operation, then locks the three in order; settling locks the payment,
//! then the operation, then answers the key; the batched settlement's one
//! statement updates them in the same order. Two paths can therefore never
//! wait for each other in a cycle (a deadlock would answer 503). The
//! recovery worker's claim and the expiry sweeper skip locked rows rather
//! than wait.
//!
//! Time is the database's: leases, expiries and retention are compared
//! with `now()` in SQL, never with a process's clock ([`clock`]).

pub mod batch;
pub mod clock;
pub mod events;
pub mod merchants;
pub mod operations;
pub mod payments;
pub mod webhooks;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects with an explicit pool size and acquire timeout: a request that
/// cannot get a connection in time fails fast instead of queueing forever.
///
/// A connection is not pinged when it is taken from the pool, only when it
/// is given back (sqlx always does that), so each use costs one round trip
/// fewer. What this gives up: after Postgres restarts, each connection that
/// sat idle through the restart fails one statement (a 503, like the outage
/// itself) before the pool drops it.
pub async fn connect(
    database_url: &str,
    pool_size: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .connect(database_url)
        .await
}
