//! Background work every gateway process runs: the recovery worker, which
//! settles operations whose bank outcome is unknown, and the expiry sweeper.
//!
//! Any number of replicas can run both at once: an operation is claimed
//! with a lease under `FOR UPDATE SKIP LOCKED`, so one replica at a time
//! calls the bank for it, always with the operation's own key.

use std::time::Duration;

use crate::payments::Gateway;
use crate::payments::expiry::LeftAside;

#[derive(Debug, Clone, Copy)]
pub struct RecoverySettings {
    pub interval: Duration,
    pub batch: i64,
    /// Unresolved this long: flagged (metric and log), never dropped.
    pub flag_after: Duration,
}

/// Runs until aborted. A full batch means there may be more: go again at once.
pub async fn recover_forever(gateway: Gateway, settings: RecoverySettings) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        loop {
            match gateway.recover_due(settings.batch).await {
                Ok(pass) if pass.claimed > 0 => {
                    tracing::info!(
                        claimed = pass.claimed,
                        settled = pass.settled,
                        still_unknown = pass.still_unknown,
                        "recovery pass"
                    );
                    if i64::try_from(pass.claimed).unwrap_or(i64::MAX) < settings.batch {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "recovery pass failed; retrying next tick");
                    break;
                }
            }
        }
        report_unresolved(&gateway, settings.flag_after, settings.batch).await;
    }
}

async fn report_unresolved(gateway: &Gateway, flag_after: Duration, batch: i64) {
    match gateway.unresolved(flag_after, batch).await {
        Ok((pending, flagged)) => {
            metrics::gauge!("gateway_operations_unresolved").set(pending as f64);
            metrics::gauge!("gateway_operations_unresolved_flagged").set(flagged as f64);
            if flagged > 0 {
                tracing::error!(
                    flagged,
                    flag_after_s = flag_after.as_secs(),
                    "operations unresolved for too long"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count unresolved operations"),
    }
}

/// Runs until aborted, expiring authorizations past their expiry.
pub async fn expire_forever(gateway: Gateway, interval: Duration, batch: i64) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut left_aside = LeftAside::default();
    loop {
        ticker.tick().await;
        if let Err(e) = gateway.expire_due(batch, &mut left_aside).await {
            tracing::warn!(error = %e, "expiry sweep failed; retrying next tick");
        }
    }
}
