//! Settling what a request left unknown (a 202, a timeout, a crash): the
//! recovery worker's flow, and the expiry of old authorizations.

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::StreamExt;
use futures_util::stream;

use crate::domain::OperationKind;
use std::time::Instant;

use crate::faults::{Mutant, Point};
use crate::store::operations::{self, OperationRecord};
use crate::store::payments;

use super::{Error, Gateway};

/// Bank calls one recovery pass makes at once.
const RECOVERY_CONCURRENCY: usize = 16;

/// The failure code of an authorization the gateway gave up on: its answer
/// was lost, its client did not come back with the card within the grace
/// period, and the bank holds nothing for it (and now never will).
pub const ABANDONED: &str = "authorization_abandoned";

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub claimed: usize,
    pub settled: usize,
    pub still_unknown: usize,
}

impl Gateway {
    /// Claims operations whose outcome is unknown and whose lease ran out,
    /// asks the bank again with each one's own key, and records the answer.
    pub async fn recover_due(&self, batch: i64) -> Result<Pass, Error> {
        // Before the claim is sent: the lease runs from the database's
        // now() inside it, never earlier than this.
        let leased_at = Instant::now();
        let (claimed, claimed_at) = {
            let mut tx = self.pool.begin().await?;
            let ignore_leases = self.faults.mutant(Mutant::WorkerIgnoresLeases);
            let claimed =
                operations::claim_due(&mut tx, batch, self.lease(), ignore_leases).await?;
            tx.commit().await?;
            claimed
        };
        if !claimed.is_empty() {
            self.faults.hit(Point::RecoveryClaimed).await?;
        }
        let mut pass = Pass {
            claimed: claimed.len(),
            ..Pass::default()
        };
        // Owned futures: a borrowed stream is not `Send` enough for `tokio::spawn`.
        let results: Vec<Result<bool, Error>> = stream::iter(claimed)
            .map(|operation| {
                let gateway = self.clone();
                async move { gateway.recover(operation, claimed_at, leased_at).await }
            })
            .buffer_unordered(RECOVERY_CONCURRENCY)
            .collect()
            .await;
        for result in results {
            match result? {
                true => pass.settled += 1,
                false => pass.still_unknown += 1,
            }
        }
        Ok(pass)
    }

    /// Returns whether the operation is settled now. `claimed_at` is the
    /// database's time of the claim.
    async fn recover(
        &self,
        mut operation: OperationRecord,
        claimed_at: DateTime<Utc>,
        leased_at: Instant,
    ) -> Result<bool, Error> {
        // The payment is read before the lease is judged, never between the
        // judgement and the call: a wait for a connection here could
        // outlast the lease's margin, and the bank call would then overlap
        // the next holder's, under one key.
        let payment = match operation.kind {
            OperationKind::Authorize => None,
            OperationKind::Capture | OperationKind::Void | OperationKind::Refund => {
                let mut conn = self.pool.acquire().await?;
                let payment = payments::get_by_id(&mut conn, operation.payment_id)
                    .await?
                    .ok_or(Error::Invariant("an operation's payment is gone"))?;
                Some(payment)
            }
        };
        if !self.lease_covers_call(&mut operation, leased_at).await? {
            return Ok(false);
        }
        let operation = &operation;
        tracing::info!(
            operation_id = %operation.id, payment_id = %operation.payment_id, kind = operation.kind.as_str(),
            attempts = operation.attempts, "recovering an operation whose outcome is unknown"
        );
        let resolution = match &payment {
            None => {
                let grace =
                    TimeDelta::from_std(self.leases.authorization_grace).unwrap_or(TimeDelta::MAX);
                let past_grace = claimed_at - operation.created_at >= grace
                    || self.faults.mutant(Mutant::AbandonedIsDeclined);
                self.resolve_authorization(operation, past_grace).await
            }
            Some(payment) => self.call_bank(operation, payment, None).await,
        };
        let settled = matches!(resolution, super::settle::Resolution::Settled { .. });
        metrics::counter!("gateway_recovery_attempts_total", "kind" => operation.kind.as_str(), "settled" => settled.to_string())
            .increment(1);
        if self.faults.mutant(Mutant::ResumeAnyOperation) {
            self.settle_leaving_key(operation, resolution).await?;
        } else {
            self.settle(operation, resolution, None).await?;
        }
        Ok(settled)
    }

    /// How many operations are unresolved, and how many of those for longer
    /// than `flag_after`, after publishing `payment.flagged` for those newly past it (at most
    /// `batch`), so that the merchant hears of them too.
    pub async fn unresolved(
        &self,
        flag_after: std::time::Duration,
        batch: i64,
    ) -> Result<(i64, i64), Error> {
        let mut conn = self.pool.acquire().await?;
        let published = crate::store::events::flag_unresolved(&mut conn, flag_after, batch).await?;
        if published > 0 {
            tracing::warn!(
                published,
                "payment.flagged published for unresolved operations"
            );
        }
        Ok(operations::unresolved(&mut conn, flag_after).await?)
    }
}
