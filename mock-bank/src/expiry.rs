//! The sweeper: releases the holds of authorizations past their expiry.

use std::time::Duration;

use sqlx::PgPool;

use crate::operations;

/// Runs until aborted, expiring at most `batch` authorizations per
/// transaction and sweeping again at once while there are more.
pub async fn sweep_forever(pool: PgPool, interval: Duration, batch: i64) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        loop {
            match sweep_once(&pool, batch).await {
                Ok(expired) if expired == u64::try_from(batch).unwrap_or(0) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "expiry sweep failed; retrying next tick");
                    break;
                }
            }
        }
    }
}

async fn sweep_once(pool: &PgPool, batch: i64) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let expired = operations::expire_due(&mut tx, batch).await?;
    tx.commit().await?;
    if expired > 0 {
        tracing::info!(expired, "released the holds of expired authorizations");
    }
    Ok(expired)
}
