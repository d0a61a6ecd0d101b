//! Settling what a request left unknown (a 202, a timeout, a crash): the
//! recovery worker's flow, and the expiry of old authorizations.

use futures_util::StreamExt;
use futures_util::stream;

use crate::bank::{BankErrorCode, BankOutcome};
use crate::domain::{PaymentEvent, PaymentStatus};
use crate::store::operations::{self, OperationKind, OperationRecord};
use crate::store::payments::{self, BankFacts};

use super::settle::Resolution;
use super::{Error, Gateway};

/// Bank calls one recovery pass makes at once.
const RECOVERY_CONCURRENCY: usize = 16;

/// The failure code of an authorization the bank has no record of, found
/// after its answer was lost: the bank never held money for it.
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
        let claimed = {
            let mut tx = self.pool.begin().await?;
            let claimed = operations::claim_due(&mut tx, batch, self.lease()).await?;
            tx.commit().await?;
            claimed
        };
        let mut pass = Pass {
            claimed: claimed.len(),
            ..Pass::default()
        };
        // Owned futures: a borrowed stream is not `Send` enough for `tokio::spawn`.
        let results: Vec<Result<bool, Error>> = stream::iter(claimed)
            .map(|operation| {
                let gateway = self.clone();
                async move { gateway.recover(&operation).await }
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

    /// Returns whether the operation is settled now.
    async fn recover(&self, operation: &OperationRecord) -> Result<bool, Error> {
        let payment = {
            let mut conn = self.pool.acquire().await?;
            payments::get_by_id(&mut conn, operation.payment_id)
                .await?
                .ok_or(Error::NotFound)?
        };
        tracing::info!(
            operation_id = %operation.id, payment_id = %payment.payment_id(), kind = operation.kind().as_str(),
            attempts = operation.attempts, "recovering an operation whose outcome is unknown"
        );
        let resolution = match operation.kind() {
            OperationKind::Authorize => self.resolve_authorization(operation).await,
            OperationKind::Capture | OperationKind::Void | OperationKind::Refund => {
                self.call_bank(operation, &payment).await
            }
        };
        let settled = matches!(resolution, Resolution::Settled { .. });
        metrics::counter!("gateway_recovery_attempts_total", "kind" => operation.kind().as_str(), "settled" => settled.to_string())
            .increment(1);
        self.settle(None, operation, resolution).await?;
        Ok(settled)
    }

    /// The card is gone (it is never stored), so an authorization cannot be
    /// re-sent; the bank settles it by its key instead: the authorization
    /// that key created, or none, ever (the key is retired).
    async fn resolve_authorization(&self, operation: &OperationRecord) -> Resolution {
        match self
            .bank
            .resolve_authorization(&operation.bank_idempotency_key)
            .await
        {
            BankOutcome::Done(authorization) => Resolution::approved(authorization),
            BankOutcome::Refused(refusal) if refusal.code == BankErrorCode::NotFound => {
                Resolution::Settled {
                    event: PaymentEvent::AuthorizeDeclined,
                    facts: BankFacts {
                        failure_code: Some(ABANDONED.to_owned()),
                        ..BankFacts::default()
                    },
                    succeeded: false,
                }
            }
            // Anything else proves nothing: ask again later.
            BankOutcome::Refused(refusal) => Resolution::Unknown {
                reason: refusal.to_string(),
            },
            BankOutcome::Unknown(reason) => Resolution::unknown(&reason),
        }
    }

    /// Marks authorized payments past their expiry as expired. The bank
    /// releases the hold itself; nothing is sent to it.
    pub async fn expire_due(&self, batch: i64) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        let due = payments::lock_expired_authorizations(&mut tx, batch).await?;
        for payment in &due {
            debug_assert_eq!(payment.status(), PaymentStatus::Authorized);
            payments::apply(
                &mut tx,
                payment,
                PaymentEvent::AuthorizationExpired,
                &BankFacts::default(),
            )
            .await?;
        }
        tx.commit().await?;
        let expired = u64::try_from(due.len()).unwrap_or(u64::MAX);
        if expired > 0 {
            metrics::counter!("gateway_payments_expired_total").increment(expired);
            tracing::info!(expired, "authorizations past their expiry marked expired");
        }
        Ok(expired)
    }

    /// (unfinished operations, those unfinished for longer than `flag_after`).
    pub async fn unresolved(&self, flag_after: std::time::Duration) -> Result<(i64, i64), Error> {
        let mut conn = self.pool.acquire().await?;
        Ok(operations::unresolved(&mut conn, flag_after).await?)
    }
}
