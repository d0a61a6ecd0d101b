//! The database's clock, read from this process.
//!
//! Leases, expiries and retention are judged inside SQL with `now()`, the
//! one clock every replica shares. The batched settlement must choose its
//! timestamp before it writes (the stored answer shows it), so it asks
//! this: the process's clock corrected by the offset to the database's,
//! measured at start and every [`MEASURE_EVERY`]. A replica whose clock is
//! off by an hour still writes history in the database's time.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use crate::faults::Faults;

/// How often the offset is measured again.
pub const MEASURE_EVERY: Duration = Duration::from_secs(10);

/// The database's `now()`: its transaction's time, when asked inside one.
pub async fn now<'c>(conn: impl sqlx::PgExecutor<'c>) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(conn).await
}

#[derive(Clone, Debug)]
pub struct DbClock {
    /// The process's own clock (skewed by a fault, in tests).
    local: Faults,
    /// Database minus process, in microseconds.
    offset_us: Arc<AtomicI64>,
}

impl DbClock {
    /// A clock with no correction yet; [`DbClock::measure`] gives it one.
    pub fn new(local: Faults) -> Self {
        Self {
            local,
            offset_us: Arc::new(AtomicI64::new(0)),
        }
    }

    /// The database's time now, to within the measurement's round trip.
    pub fn now(&self) -> DateTime<Utc> {
        self.local.now() + TimeDelta::microseconds(self.offset_us.load(Ordering::Relaxed))
    }

    /// Reads the database's clock once and keeps the offset, taking the
    /// middle of the round trip as the moment it was read.
    pub async fn measure(&self, pool: &PgPool) -> Result<TimeDelta, sqlx::Error> {
        let before = self.local.now();
        let database: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(pool)
            .await?;
        let after = self.local.now();
        let local = before + (after - before) / 2;
        let offset = database - local;
        let offset_us = offset.num_microseconds().unwrap_or(0);
        self.offset_us.store(offset_us, Ordering::Relaxed);
        Ok(offset)
    }

    /// Measures again every [`MEASURE_EVERY`], until aborted.
    pub async fn measure_forever(self, pool: PgPool) {
        let mut ticker = tokio::time::interval(MEASURE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.measure(&pool).await {
                Ok(offset) if offset.num_seconds().abs() >= 1 => tracing::warn!(
                    offset_ms = offset.num_milliseconds(),
                    "this process's clock and the database's disagree"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not read the database's clock"),
            }
        }
    }
}
