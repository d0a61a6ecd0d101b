//! Tx B: what the bank said becomes the operation's outcome, the payment's
//! state and the answer stored on the key that created the operation, in
//! one commit. An operation is settled once (the write requires it still
//! pending); whoever comes second (a request that ran past its lease, the
//! recovery worker, a retry) finds the answer stored and gives that.

use chrono::{DateTime, TimeDelta};

use crate::bank::{Authorization, UnknownReason};
use crate::domain::PaymentEvent;
use crate::faults::{Mutant, Point};
use crate::idempotency;
use crate::store::operations::{self, OperationRecord};
use crate::store::payments::TransitionError;
use crate::store::payments::{self, BankFacts, History, PaymentRecord, Settlement, Settling};

use super::reply::{Reply, render};
use super::{Error, Gateway};

/// The bank's answer, classified.
#[derive(Debug)]
pub enum Resolution {
    /// A definitive answer: this event, with what the bank said.
    Settled {
        event: PaymentEvent,
        facts: BankFacts,
        succeeded: bool,
    },
    /// Nobody knows yet; resume later with the same bank key.
    Unknown { reason: String },
}

impl Resolution {
    pub fn succeeded(event: PaymentEvent, facts: BankFacts) -> Self {
        Self::Settled {
            event,
            facts,
            succeeded: true,
        }
    }

    /// An authorization the bank holds: the payment is authorized with its id
    /// and expiry. The expiry as Postgres keeps it (microseconds, which is
    /// what sqlx sends): a bank may write nanoseconds, and the answer
    /// rendered from these facts must show what every later read shows.
    pub fn approved(authorization: Authorization) -> Self {
        let expires_at = authorization.expires_at;
        let expires_at =
            DateTime::from_timestamp_micros(expires_at.timestamp_micros()).unwrap_or(expires_at);
        Self::succeeded(
            PaymentEvent::AuthorizeApproved,
            BankFacts {
                authorization_id: Some(authorization.authorization_id),
                authorization_expires_at: Some(expires_at),
                ..BankFacts::default()
            },
        )
    }

    /// A definitive "no", recorded with its failure code.
    pub fn failed(event: PaymentEvent, failure_code: &str) -> Self {
        Self::Settled {
            event,
            facts: BankFacts {
                failure_code: Some(failure_code.to_owned()),
                ..BankFacts::default()
            },
            succeeded: false,
        }
    }

    /// Whether the bank refused because it had moved the payment without
    /// the gateway ([`super::MOVED_AT_BANK`]).
    pub fn moved_at_bank(&self) -> bool {
        match self {
            Self::Settled { facts, .. } => {
                facts.failure_code.as_deref() == Some(super::MOVED_AT_BANK)
            }
            Self::Unknown { .. } => false,
        }
    }

    pub fn unknown(reason: &UnknownReason) -> Self {
        Self::Unknown {
            reason: reason.to_string(),
        }
    }
}

impl Gateway {
    /// Records `resolution` for `operation` and returns the answer to its
    /// key: the one this settlement stored, or, if someone settled the
    /// operation first, the one they stored. `known` is the payment and its
    /// history as the caller wrote them, to save reading them back. A
    /// refusal because the bank moved the payment without the gateway is
    /// followed by catching the payment up with the bank.
    pub(super) async fn settle(
        &self,
        operation: &OperationRecord,
        resolution: Resolution,
        known: Option<(PaymentRecord, History)>,
    ) -> Result<Reply, Error> {
        let moved = resolution.moved_at_bank();
        let reply = self.record_settlement(operation, resolution, known).await?;
        if moved {
            self.catch_up_with_bank(operation.payment_id).await;
        }
        Ok(reply)
    }

    /// Brings a payment the bank moved without the gateway up to what the
    /// bank holds, now, rather than at the next reconciliation sweep: a
    /// client that reads it after its refused request sees what the bank
    /// did. The answer to that request is stored already; if this fails,
    /// the sweep does it.
    async fn catch_up_with_bank(&self, payment_id: uuid::Uuid) {
        match crate::reconcile::catch_up(&self.pool, &self.bank, payment_id).await {
            // Unverified or a mismatch: nothing was brought up to the bank.
            Ok(entry) if entry.outcome.is_left_over() => tracing::warn!(
                payment_id = %entry.payment_id,
                outcome = entry.outcome.as_str(),
                gateway = %entry.gateway,
                bank = %entry.bank,
                "could not catch a payment up with the bank; the next sweep asks again"
            ),
            Ok(entry) => tracing::info!(
                payment_id = %entry.payment_id,
                outcome = entry.outcome.as_str(),
                gateway = %entry.gateway,
                bank = %entry.bank,
                "caught a payment up with the bank"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "could not catch a payment up with the bank; the next sweep will"
            ),
        }
    }

    async fn record_settlement(
        &self,
        operation: &OperationRecord,
        resolution: Resolution,
        known: Option<(PaymentRecord, History)>,
    ) -> Result<Reply, Error> {
        if self.faults.mutant(Mutant::StatusNotMovedWithOutcome)
            && let Resolution::Settled { event, facts, .. } = &resolution
        {
            return self.settle_apart(operation, *event, facts.clone()).await;
        }
        if let Resolution::Settled {
            event,
            facts,
            succeeded,
        } = &resolution
            && let Some(reply) = self
                .settle_in_one_statement(operation, *event, facts, *succeeded, known)
                .await?
        {
            return Ok(reply);
        }
        self.settle_in_transaction(operation, resolution).await
    }

    /// The common case, in two round trips and no explicit transaction:
    /// read the payment, compute where it goes and the answer, then write
    /// everything in one statement (batched with others settling at the
    /// same moment) that re-checks what was read. `None` if it was not
    /// written (someone else settled the operation, or the payment moved):
    /// the transactional path decides.
    async fn settle_in_one_statement(
        &self,
        operation: &OperationRecord,
        event: PaymentEvent,
        facts: &BankFacts,
        succeeded: bool,
        known: Option<(PaymentRecord, History)>,
    ) -> Result<Option<Reply>, Error> {
        let (payment, mut history) = match known {
            Some(known) => known,
            None => {
                let mut conn = self.pool.acquire().await?;
                match payments::read_for_settling(&mut conn, operation.id).await? {
                    Some(Settling {
                        operation_pending: true,
                        payment,
                        history,
                    }) => (payment, history),
                    Some(Settling {
                        operation_pending: false,
                        ..
                    })
                    | None => return Ok(None),
                }
            }
        };
        let at = self.settled_at(&payment);
        let moved = payments::moved(&payment, event, facts, at).map_err(TransitionError::from)?;
        history.push((moved.status(), moved.updated_at));
        let reply = render(operation.kind, &moved, history)?;
        let answer = reply.is_final().then(|| (reply.status, reply.body.clone()));
        let written = self
            .settlements
            .submit(Settlement {
                from: payment.status(),
                read_at: payment.updated_at,
                to: moved,
                operation_id: operation.id,
                succeeded,
                answer,
            })
            .await?;
        if written {
            count_settled(operation, &reply);
        } else if self.faults.mutant(Mutant::LateAnswerWins) {
            // Someone settled it first; the bug answers its own reply anyway.
            return Ok(Some(reply));
        }
        Ok(written.then_some(reply))
    }

    /// When a settlement written in one statement happened: the database's
    /// time, as this process reads it, and in any case after the payment's
    /// last change, so that its history stays in order. Postgres keeps
    /// microseconds; the answer must show what it stores.
    fn settled_at(&self, payment: &PaymentRecord) -> DateTime<chrono::Utc> {
        let now = self.clock.now();
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        now.max(payment.updated_at + TimeDelta::microseconds(1))
    }

    /// The general path, in one transaction that locks the payment, then
    /// the operation, then answers the key.
    async fn settle_in_transaction(
        &self,
        operation: &OperationRecord,
        resolution: Resolution,
    ) -> Result<Reply, Error> {
        let mut tx = self.pool.begin().await?;
        let (payment, mut history) = payments::lock_with_history(&mut tx, operation.payment_id)
            .await?
            .ok_or(Error::Invariant("an operation's payment is gone"))?;
        let current = operations::lock(&mut tx, operation.id)
            .await?
            .ok_or(Error::Invariant("an operation is gone"))?;
        if !current.is_pending() {
            if self.faults.mutant(Mutant::LateAnswerWins) {
                // Without a reply of its own (it read the payment only
                // now), the bug answers the payment as it finds it.
                return render(operation.kind, &payment, history);
            }
            // Settled by someone else meanwhile: theirs is the answer.
            let stored = idempotency::answer_of(&mut tx, operation.id).await?;
            tx.commit().await?;
            return stored.map(Reply::replay).ok_or(Error::Invariant(
                "an operation was settled without answering its key",
            ));
        }
        let reply = match resolution {
            Resolution::Settled {
                event,
                facts,
                succeeded,
            } => {
                let moved = payments::apply(&mut tx, &payment, event, &facts).await?;
                let failure = facts.failure_code.as_deref();
                operations::finish(&mut tx, operation.id, succeeded, failure).await?;
                history.push((moved.status(), moved.updated_at));
                let reply = render(operation.kind, &moved, history)?;
                idempotency::answer_operation(&mut tx, operation.id, reply.status, &reply.body)
                    .await?;
                reply
            }
            Resolution::Unknown { reason } => {
                tracing::warn!(operation_id = %operation.id, kind = operation.kind.as_str(), reason, "bank outcome unknown");
                metrics::counter!("gateway_operations_unknown_total", "kind" => operation.kind.as_str()).increment(1);
                let retry = self.leases.retry;
                let token = operation.lease_until;
                if operations::release(&mut tx, operation.id, token, &reason, retry).await? {
                    // Its key too, then: whoever takes a key over takes its
                    // operation's lease with it, so a key still ours is one
                    // whose operation was.
                    idempotency::release_for_operation(&mut tx, operation.id, self.instance)
                        .await?;
                }
                render(operation.kind, &payment, history)?
            }
        };
        self.faults.hit(Point::OutcomeBeforeCommit).await?;
        tx.commit().await?;
        count_settled(operation, &reply);
        Ok(reply)
    }
}

impl Gateway {
    /// The mutant that records the outcome and the answer in one
    /// transaction and moves the payment in another: a crash between the
    /// two leaves an answered, finished operation and a payment in flight
    /// that nothing will ever move.
    async fn settle_apart(
        &self,
        operation: &OperationRecord,
        event: PaymentEvent,
        facts: BankFacts,
    ) -> Result<Reply, Error> {
        let mut tx = self.pool.begin().await?;
        let (payment, mut history) = payments::lock_with_history(&mut tx, operation.payment_id)
            .await?
            .ok_or(Error::NotFound)?;
        let current = operations::lock(&mut tx, operation.id)
            .await?
            .ok_or(Error::NotFound)?;
        if !current.is_pending() {
            let stored = idempotency::answer_of(&mut tx, operation.id).await?;
            return stored.map(Reply::replay).ok_or(Error::NotFound);
        }
        let at = self.settled_at(&payment);
        let moved = payments::moved(&payment, event, &facts, at).map_err(TransitionError::from)?;
        history.push((moved.status(), moved.updated_at));
        let reply = render(operation.kind, &moved, history)?;
        let succeeded = facts.failure_code.is_none();
        operations::finish(
            &mut tx,
            operation.id,
            succeeded,
            facts.failure_code.as_deref(),
        )
        .await?;
        idempotency::answer_operation(&mut tx, operation.id, reply.status, &reply.body).await?;
        tx.commit().await?;
        self.faults.hit(Point::OutcomeBeforeCommit).await?;
        let mut tx = self.pool.begin().await?;
        payments::apply(&mut tx, &payment, event, &facts).await?;
        tx.commit().await?;
        Ok(reply)
    }
}

impl Gateway {
    /// The recovery worker's pre-fix settlement, for the mutant that
    /// resumes any operation: the payment moves and the operation ends,
    /// and the key that started it is left in progress, unanswered, for
    /// its client's retry to resume (whatever is pending by then).
    pub(super) async fn settle_leaving_key(
        &self,
        operation: &OperationRecord,
        resolution: Resolution,
    ) -> Result<(), Error> {
        let Resolution::Settled {
            event,
            facts,
            succeeded,
        } = resolution
        else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await?;
        let payment = payments::lock_by_id(&mut tx, operation.payment_id)
            .await?
            .ok_or(Error::NotFound)?;
        let current = operations::lock(&mut tx, operation.id)
            .await?
            .ok_or(Error::NotFound)?;
        if current.is_pending() {
            payments::apply(&mut tx, &payment, event, &facts).await?;
            let failure = facts.failure_code.as_deref();
            operations::finish(&mut tx, operation.id, succeeded, failure).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

fn count_settled(operation: &OperationRecord, reply: &Reply) {
    metrics::counter!("gateway_operations_settled_total", "kind" => operation.kind.as_str(), "status" => reply.status.to_string())
        .increment(1);
}
