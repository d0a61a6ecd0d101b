//! The expiry sweep: authorizations past their expiry marked expired, each
//! once the bank was asked about it (`reconcile::expiry`), and those the
//! bank would not settle left aside for a while, so that they cannot hold
//! the head of the queue.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use uuid::Uuid;

use crate::domain::PaymentId;
use crate::reconcile::ReconcileError;
use crate::reconcile::expiry::{Expiry, expire_or_catch_up};
use crate::store::{clock, payments};

use super::{Error, Gateway};

/// Authorizations due to expire asked about at the bank at once.
const EXPIRY_CONCURRENCY: usize = 8;
/// How long this process's sweeps leave aside an authorization the bank
/// would not settle, the first time ...
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// ... doubling each time it is left again, up to this.
const LONGEST_WAIT: Duration = Duration::from_secs(3_600);
/// Authorizations left aside at once, at most; past it the one due back
/// soonest is forgotten (and asked about again).
const MOST_LEFT_ASIDE: usize = 10_000;

/// The authorizations this process's sweeps leave aside, each until its
/// wait is over: one the bank is silent or odd about for good must not be
/// asked about every second while those behind it in the queue never
/// expire.
#[derive(Debug, Default)]
pub struct LeftAside {
    /// Payment id: (asked about again from, the wait that set it).
    until: HashMap<Uuid, (Instant, Duration)>,
}

impl LeftAside {
    fn leave(&mut self, id: Uuid) {
        let now = Instant::now();
        let entry = self.until.entry(id).or_insert((now, FIRST_WAIT / 2));
        let wait = (entry.1 * 2).min(LONGEST_WAIT);
        *entry = (now + wait, wait);
        if self.until.len() > MOST_LEFT_ASIDE
            && let Some(soonest) = self
                .until
                .iter()
                .min_by_key(|(_, (until, _))| *until)
                .map(|(id, _)| *id)
        {
            self.until.remove(&soonest);
        }
    }

    fn settled(&mut self, id: Uuid) {
        self.until.remove(&id);
    }

    /// The ids whose wait is not over.
    fn waiting(&self) -> Vec<Uuid> {
        let now = Instant::now();
        self.until
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|(id, _)| *id)
            .collect()
    }
}

impl Gateway {
    /// Marks authorized payments past their expiry as expired, each once
    /// the bank was asked about it: one the bank captured or voided (at its
    /// console, in the hold's last hours) is caught up instead, and one the
    /// bank does not answer for, or answers oddly, is left aside for a while
    /// (`left_aside`). Nothing is sent to the bank but lookups: it releases
    /// the hold itself. Every replica sweeps; a payment two of them ask
    /// about at once is written by the first, the other finding it moved.
    pub async fn expire_due(&self, batch: i64, left_aside: &mut LeftAside) -> Result<u64, Error> {
        let due = {
            let mut conn = self.pool.acquire().await?;
            payments::expired_authorizations(&mut conn, &left_aside.waiting(), batch).await?
        };
        if due.is_empty() {
            return Ok(0);
        }
        let as_of = clock::now(&self.pool).await?;
        let results: Vec<(Uuid, PaymentId, Result<Expiry, ReconcileError>)> = stream::iter(due)
            .map(|payment| {
                let gateway = self.clone();
                async move {
                    let settled =
                        expire_or_catch_up(&gateway.pool, &gateway.bank, &payment, as_of).await;
                    (payment.id, payment.payment_id(), settled)
                }
            })
            .buffer_unordered(EXPIRY_CONCURRENCY)
            .collect()
            .await;
        let mut expired = 0u64;
        for (id, payment_id, result) in results {
            let outcome = match result {
                Ok(Expiry::Expired) => {
                    expired += 1;
                    left_aside.settled(id);
                    "expired"
                }
                Ok(Expiry::CaughtUp(status)) => {
                    left_aside.settled(id);
                    metrics::counter!("gateway_bank_moved_behind_total", "operation" => "expiry")
                        .increment(1);
                    tracing::warn!(
                        %payment_id, %status,
                        "an authorization due to expire was moved at the bank; its receipt caught up"
                    );
                    "caught_up"
                }
                // Another sweep or an operation got there first.
                Ok(Expiry::Moved) => "moved",
                Ok(Expiry::Left(reason)) => {
                    left_aside.leave(id);
                    tracing::info!(%payment_id, %reason, "an authorization due to expire is left aside for a while");
                    "left"
                }
                Err(e) => {
                    left_aside.leave(id);
                    tracing::warn!(%payment_id, error = %e, "an authorization due to expire was not settled");
                    "error"
                }
            };
            metrics::counter!("gateway_expiry_checks_total", "outcome" => outcome).increment(1);
        }
        if expired > 0 {
            metrics::counter!("gateway_payments_expired_total").increment(expired);
            tracing::info!(expired, "authorizations past their expiry marked expired");
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_left_again_waits_longer_and_a_settled_one_is_forgotten() {
        let mut left = LeftAside::default();
        let id = Uuid::now_v7();
        left.leave(id);
        assert_eq!(left.until[&id].1, FIRST_WAIT);
        left.leave(id);
        assert_eq!(left.until[&id].1, FIRST_WAIT * 2);
        for _ in 0..20 {
            left.leave(id);
        }
        assert_eq!(left.until[&id].1, LONGEST_WAIT);
        assert_eq!(left.waiting(), vec![id]);
        left.settled(id);
        assert!(left.waiting().is_empty());
    }

    #[test]
    fn at_most_so_many_are_left_aside() {
        let mut left = LeftAside::default();
        for _ in 0..=MOST_LEFT_ASIDE {
            left.leave(Uuid::now_v7());
        }
        assert_eq!(left.until.len(), MOST_LEFT_ASIDE);
    }
}
