//! Postgres: the pool, the migrations, and one file per table family
//! (`idempotency_keys` has its own module, [`crate::idempotency`]).
//!
//! Every function takes a `&mut PgConnection` so the caller decides the
//! transaction, except the hot writes ([`starts`], and the settlement in
//! [`payments`]), which take the pool because a [`batch::Batcher`] runs
//! them for many requests at once; none of them is ever called while a
//! bank call is pending.
//!
//! # One lock order
//!
//! A transaction that locks more than one of a payment's rows locks them in
//! this order: the payment, then its operation, then the idempotency key.
//! Starting an operation locks the payment and then writes the operation
//! and the key (its batched statement updates the payment, then inserts
//! the operation and the key, in the same order); resuming a key reads it
//! unlocked to learn its payment and operation, then locks the three in
//! order; settling locks the payment, then the operation, then answers
//! the key; the batched settlement's one statement updates them in the
//! same order. Two paths can therefore never wait for each other in a
//! cycle (a deadlock would answer 503). The recovery worker's claim and
//! the expiry sweeper skip locked rows rather than wait.
//!
//! Time is the database's: leases, expiries and retention are compared
//! with `now()` in SQL, never with a process's clock ([`clock`]).

pub mod batch;
pub mod clock;
pub mod events;
pub mod merchants;
pub mod operations;
pub mod payments;
pub mod starts;
pub mod webhooks;

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The longest pause between two tries to reach the database at start-up.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// The least time one try to connect is given, even at the deadline.
const MIN_CONNECT_TRY: Duration = Duration::from_millis(250);

/// Why the database could not be reached. The message names where it was
/// looked for (host and port, database, user; never the password) and the
/// cause underneath (`Connection refused`, a failed password, …).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the database URL is not a valid Postgres URL: {0}")]
    Url(String),
    #[error("cannot connect to the database at {target}: {cause}; gave up after {tried_ms} ms")]
    Unreachable {
        target: String,
        cause: String,
        tried_ms: u128,
    },
}

/// [`connect_within`], trying to reach the database for as long as a
/// connection may be waited for.
pub async fn connect(
    database_url: &str,
    pool_size: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, ConnectError> {
    connect_within(database_url, pool_size, acquire_timeout, acquire_timeout).await
}

/// Reaches the database once, directly, then gives back a pool with an
/// explicit size and acquire timeout: a request that cannot get a
/// connection in time fails fast instead of queueing forever.
///
/// The first connection is made here rather than by the pool, whose
/// failure after `acquire_timeout` is only "pool timed out": a refused
/// connection, a database still starting up or a reset is tried again
/// until `connect_timeout`; a failure that will not change (a wrong
/// password, no such database) ends at once; either way the error says
/// where and why.
///
/// A connection is not pinged when it is taken from the pool, only when it
/// is given back (sqlx always does that), so each use costs one round trip
/// fewer. What this gives up: after Postgres restarts, each connection that
/// sat idle through the restart fails one statement (a 503, like the outage
/// itself) before the pool drops it.
pub async fn connect_within(
    database_url: &str,
    pool_size: u32,
    acquire_timeout: Duration,
    connect_timeout: Duration,
) -> Result<PgPool, ConnectError> {
    let options =
        PgConnectOptions::from_str(database_url).map_err(|e| ConnectError::Url(e.to_string()))?;
    reach(&options, connect_timeout).await?;
    Ok(PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// One connection, opened and closed, tried until `timeout` has passed
/// (each try gets at least [`MIN_CONNECT_TRY`]).
async fn reach(options: &PgConnectOptions, timeout: Duration) -> Result<(), ConnectError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let limit = timeout
            .saturating_sub(started.elapsed())
            .max(MIN_CONNECT_TRY);
        let (cause, again) =
            match tokio::time::timeout(limit, PgConnection::connect_with(options)).await {
                Ok(Ok(connection)) => {
                    let _ = connection.close().await;
                    return Ok(());
                }
                Ok(Err(e)) => (describe(&e), transient(&e)),
                Err(_) => (format!("no answer within {} ms", limit.as_millis()), true),
            };
        let left = timeout.saturating_sub(started.elapsed());
        if !again || left.is_zero() {
            return Err(ConnectError::Unreachable {
                target: target(options),
                cause,
                tried_ms: started.elapsed().as_millis(),
            });
        }
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
    }
}

/// Where `options` point, for a message: never the password.
fn target(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let database = options.get_database().unwrap_or(options.get_username());
    format!(
        "{place} (database {database:?}, user {:?})",
        options.get_username()
    )
}

/// The cause, in the words of whoever refused: the operating system's
/// ("Connection refused (os error 111)") or the server's, with its SQLSTATE.
fn describe(error: &sqlx::Error) -> String {
    if let sqlx::Error::Io(e) = error {
        return e.to_string();
    }
    match error.as_database_error() {
        Some(e) => match e.code() {
            Some(code) => format!("{} (SQLSTATE {code})", e.message()),
            None => e.message().to_owned(),
        },
        None => error.to_string(),
    }
}

/// Whether trying again may help: the server is not listening yet, is
/// starting up or shutting down, or is out of connections.
fn transient(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::Tls(_))
        || error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| ["57P03", "57P01", "53300"].contains(&code.as_ref()))
}

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Migrations in place now.
    pub total: usize,
    /// Of those, the ones this run applied.
    pub applied_now: usize,
    /// The newest, as its file is named (`0007_webhooks`).
    pub latest: String,
}

impl std::fmt::Display for Migrated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "migrations applied: {} (latest {}; {} new)",
            self.total, self.latest, self.applied_now
        )
    }
}

/// Applies the migrations not applied yet and says what is in place.
pub async fn migrate(pool: &PgPool) -> Result<Migrated, sqlx::migrate::MigrateError> {
    let before = applied_count(pool).await?;
    MIGRATOR.run(pool).await?;
    let after = applied_count(pool).await?;
    let latest = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .max_by_key(|m| m.version)
        .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
        .unwrap_or_default();
    Ok(Migrated {
        total: after,
        applied_now: after.saturating_sub(before),
        latest,
    })
}

/// Migrations recorded as applied (none before the first run).
async fn applied_count(pool: &PgPool) -> Result<usize, sqlx::Error> {
    // Two statements: a table named in a statement must exist for it to
    // be planned at all.
    let table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !table {
        return Ok(0);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    Ok(usize::try_from(count).unwrap_or(0))
}
