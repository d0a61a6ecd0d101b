//! Tx A: a request's key and what it is for, committed before the bank is
//! called. A new key starts its operation (or is answered at once, when the
//! state machine refuses); a key seen before is refused if the request
//! differs, replayed if answered, and otherwise resumes its own operation,
//! never another's. The usual start of either kind is one batched
//! statement ([`crate::store::starts`]); what it leaves undone takes the
//! locking transaction here.

use std::time::Instant;

use crate::domain::{Amount, IdempotencyKey, MerchantId, PaymentId, transition};
use crate::faults::Mutant;
use crate::idempotency::{self, ClaimError, Fingerprint, KeyRecord, StoredResponse};
use crate::reconcile::expiry::{Expiry, expire_by_the_receipt, expire_or_catch_up};
use crate::store::clock;
use crate::store::operations::{self, OperationRecord};
use crate::store::payments::TransitionError;
use crate::store::payments::{self, BankFacts, Found, History, PaymentRecord};
use crate::store::starts::{StartAuthorization, StartOperation};

use super::command::{Action, AuthorizeCommand};
use super::reply::{self, Reply, render};
use super::{Error, Gateway};

/// How many times a new key is tried when another request with the same
/// key inserts it first (or the payment is past its expiry and is judged
/// again once the bank was asked about it); then the key is simply in use.
const KEY_RACES: usize = 4;
/// The `Retry-After` of an operation on an authorization past its expiry
/// that the bank would not settle (silent, or odd about it).
const EXPIRY_UNSETTLED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What tx A decided.
pub(super) enum Start {
    /// Answered without calling the bank: a replay, or a refusal.
    Answered(Reply),
    /// Call the bank for this operation, leased to this process.
    Call(Box<Call>),
}

pub(super) struct Call {
    pub operation: OperationRecord,
    /// The payment, in flight.
    pub payment: PaymentRecord,
    /// The payment and its history as tx A wrote them, when it wrote them
    /// all, so that settling need not read them back.
    pub known: Option<(PaymentRecord, History)>,
    /// When this process took the operation's lease.
    pub leased_at: Instant,
}

impl Gateway {
    /// The usual case, a new key, is one batched statement (key, payment,
    /// history, operation); a key that exists takes the general path.
    pub(super) async fn start_authorization(
        &self,
        merchant: MerchantId,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        command: &AuthorizeCommand,
    ) -> Result<Start, Error> {
        let leased_at = Instant::now();
        let payment = command.new_payment(merchant);
        let payment_id = payment.id.as_uuid();
        let submitted = self
            .starts
            .submit(StartAuthorization {
                payment,
                key: key.as_str().to_owned(),
                request_hash: fingerprint.as_bytes().to_vec(),
                lease: self.lease(),
            })
            .await;
        let ours =
            |record: &KeyRecord| (record.payment_id == Some(payment_id)).then_some(leased_at);
        let started = match submitted {
            Ok(Some(started)) => started,
            Ok(None) => {
                return self
                    .unanswered(merchant, key, fingerprint, ours, None)
                    .await;
            }
            Err(e) => {
                return self
                    .unanswered(merchant, key, fingerprint, ours, Some(e.into()))
                    .await;
            }
        };
        Ok(Start::Call(Box::new(Call {
            operation: started.operation,
            known: Some((started.payment.clone(), started.history)),
            payment: started.payment,
            leased_at,
        })))
    }

    /// Starts a capture, void or refund, or answers its key.
    pub(super) async fn start_operation(
        &self,
        merchant: MerchantId,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        payment_id: PaymentId,
        action: Action,
        amount: Option<Amount>,
    ) -> Result<Start, Error> {
        // One identity for every try: a key naming it was written by this
        // request, whatever the database's reply said.
        let identity = operations::new_identity(action.kind());
        let operation_id = identity.0;
        let ours = |leased_at: Instant| {
            move |record: &KeyRecord| {
                (record.operation_id == Some(operation_id)).then_some(leased_at)
            }
        };
        let mut leased_at = Instant::now();
        let mut asked_the_bank = false;
        for race in 0..KEY_RACES {
            let mut conn = self.pool.acquire().await?;
            // A new key is the usual case, and the start claims a key only
            // if it is new: the key is read first only once the start
            // found it taken, or before an error, whose answer a stored
            // one takes precedence over.
            if race > 0
                && let Some(record) = idempotency::read(&mut conn, merchant, key).await?
            {
                drop(conn);
                let own = ours(leased_at)(&record);
                return self.resume(merchant, key, fingerprint, record, own).await;
            }
            let found = payments::read_for_operation(&mut conn, merchant, payment_id).await?;
            let found = match operable(found, amount) {
                Ok(found) => found,
                Err(refusal) if self.faults.mutant(Mutant::RefusalBeforeStoredAnswer) => {
                    return Err(refusal);
                }
                Err(refusal) => {
                    if let Some(record) = idempotency::read(&mut conn, merchant, key).await? {
                        drop(conn);
                        return self.resume(merchant, key, fingerprint, record, None).await;
                    }
                    return Err(refusal);
                }
            };
            if found.expiry_due && !asked_the_bank {
                asked_the_bank = true;
                // No connection is held while the bank answers.
                drop(conn);
                if let Err(e) = self.expire_with_the_bank(&found.payment).await {
                    // A key already used answers as itself, not with this.
                    let mut conn = self.pool.acquire().await?;
                    if let Some(record) = idempotency::read(&mut conn, merchant, key).await? {
                        drop(conn);
                        return self.resume(merchant, key, fingerprint, record, None).await;
                    }
                    return Err(e);
                }
                // The payment is judged again as the bank left it; the
                // lease this request may write starts after the lookup.
                leased_at = Instant::now();
                continue;
            }
            // With the circuit open, only an operation that would call the
            // bank is refused (503, nothing stored): one the state machine
            // refuses, or that expiry answers, is answered as always, and a
            // key already used answers as itself.
            if let Err(open) = self.bank.circuit().check()
                && would_call_the_bank(&found, action)
            {
                if let Some(record) = idempotency::read(&mut conn, merchant, key).await? {
                    drop(conn);
                    return self.resume(merchant, key, fingerprint, record, None).await;
                }
                return Err(Error::BankUnavailable {
                    retry_after: open.retry_after,
                });
            }
            drop(conn);
            let found = if self.faults.mutant(Mutant::StaleStatusJudged) {
                Found {
                    payment: one_change_behind(found.payment, &found.history),
                    ..found
                }
            } else {
                found
            };
            let new = New {
                merchant,
                key,
                fingerprint,
            };
            let started = match self
                .start_in_one_statement(&new, found, action, &identity)
                .await
            {
                Ok(None) => self.begin(new, payment_id, action, &identity).await,
                batched => batched,
            };
            match started {
                Ok(Some(start)) => return Ok(start),
                Ok(None) => {}
                Err(e) => {
                    return self
                        .unanswered(merchant, key, fingerprint, ours(leased_at), Some(e))
                        .await;
                }
            }
        }
        Err(ClaimError::InUse.into())
    }

    /// The usual case, in one batched statement: the payment as read can
    /// take the operation, so the statement puts it in flight (if it is
    /// still as read), records the operation and claims the key. `None`
    /// when it did not (the payment moved or reached its expiry meanwhile,
    /// the key appeared), and for what only the locked path does: store a
    /// refusal on the key.
    async fn start_in_one_statement(
        &self,
        new: &New<'_>,
        found: Found,
        action: Action,
        (operation_id, bank_key): &(uuid::Uuid, String),
    ) -> Result<Option<Start>, Error> {
        if found.expiry_due {
            return Ok(None);
        }
        let Ok(to) = transition(found.payment.status(), action.requested()) else {
            return Ok(None);
        };
        // Taken before the statement, whose now() starts the lease: the
        // lease this process counts on never outlasts the database's.
        let leased_at = Instant::now();
        let started = self
            .operation_starts
            .submit(StartOperation {
                payment: found.payment,
                to,
                kind: action.kind(),
                key: new.key.as_str().to_owned(),
                request_hash: new.fingerprint.as_bytes().to_vec(),
                lease: self.lease(),
                operation_id: *operation_id,
                bank_key: bank_key.clone(),
                compare: !self.faults.mutant(Mutant::NoRowLockOnStart),
            })
            .await?;
        let Some(started) = started else {
            return Ok(None);
        };
        let mut history = found.history;
        history.push((started.payment.status(), started.payment.updated_at));
        Ok(Some(Start::Call(Box::new(Call {
            operation: started.operation,
            payment: started.payment.clone(),
            known: Some((started.payment, history)),
            leased_at,
        }))))
    }

    /// An authorization found past its expiry is expired only once the
    /// bank was asked about it, as the sweeper does: its console may have
    /// captured or voided it in the hold's last hours, and an operation's
    /// answer must not announce a lapse for money the bank took. Caught up
    /// (or expired) here, the payment is then judged as the bank left it.
    /// A bank that is silent or odd about it leaves nothing to judge by:
    /// 503, nothing stored, retry.
    ///
    /// With the circuit open the bank is not asked: the receipt's own
    /// expiry decides, and the operation is answered as it always was.
    async fn expire_with_the_bank(&self, payment: &PaymentRecord) -> Result<(), Error> {
        let settled = if self.bank.circuit().check().is_err() {
            expire_by_the_receipt(&self.pool, payment).await?
        } else {
            let as_of = clock::now(&self.pool).await?;
            expire_or_catch_up(&self.pool, &self.bank, payment, as_of).await?
        };
        match settled {
            Expiry::Expired | Expiry::CaughtUp(_) | Expiry::Moved => Ok(()),
            Expiry::Left(reason) => {
                tracing::info!(payment_id = %payment.payment_id(), %reason, "an operation on an authorization past its expiry waits for the bank");
                Err(Error::BankUnavailable {
                    retry_after: EXPIRY_UNSETTLED_RETRY_AFTER,
                })
            }
        }
    }

    /// Tx A for a new key, the general path: locks the payment, checks the
    /// state machine, and records the operation with the key, or the
    /// refusal on the key. `None` if the key appeared meanwhile, or the
    /// payment reached its expiry (nothing is committed then).
    async fn begin(
        &self,
        new: New<'_>,
        payment_id: PaymentId,
        action: Action,
        identity: &(uuid::Uuid, String),
    ) -> Result<Option<Start>, Error> {
        // The lease runs from the transaction's now(), never earlier.
        let leased_at = Instant::now();
        let mut tx = self.pool.begin().await?;
        let lock = !self.faults.mutant(Mutant::NoRowLockOnStart);
        let Found {
            payment,
            expiry_due,
            history,
        } = payments::lock_for_operation(&mut tx, new.merchant, payment_id, lock)
            .await?
            .ok_or(Error::NotFound)?;
        let payment = if self.faults.mutant(Mutant::StaleStatusJudged) {
            one_change_behind(payment, &history)
        } else {
            payment
        };
        // An authorization that reached its expiry since it was read is
        // not expired here, without the bank: the next race asks the bank
        // first (`expire_with_the_bank`). Nothing was written.
        if expiry_due {
            tx.rollback().await?;
            return Ok(None);
        }
        let requested = action.requested();
        let start = match payments::apply(&mut tx, &payment, requested, &BankFacts::default()).await
        {
            // Judged on the locked payment this time: one read unlocked as
            // refusing the move may take it now, and then the open circuit
            // refuses it before anything is stored.
            // A key already used answers as itself, never "nothing was
            // done": the next race reads it.
            Ok(_) if let Err(open) = self.bank.circuit().check() => {
                if idempotency::read(&mut tx, new.merchant, new.key)
                    .await?
                    .is_some()
                {
                    return Ok(None);
                }
                return Err(Error::BankUnavailable {
                    retry_after: open.retry_after,
                });
            }
            Ok(in_flight) => {
                self.record_intent(&mut tx, &new, in_flight, (action, identity), leased_at)
                    .await?
            }
            Err(TransitionError::Refused(refused)) => {
                tracing::info!(%refused, "state machine refused the operation; the bank is not called");
                let reply = reply::refused(&payment, refused)?;
                let answered = idempotency::Answered {
                    payment_id: Some(payment.id),
                    status: reply.status,
                    body: &reply.body,
                    secret_salt: None,
                };
                let stored = idempotency::insert_answered(
                    &mut tx,
                    new.merchant,
                    new.key,
                    new.fingerprint,
                    answered,
                )
                .await?;
                stored.then_some(Start::Answered(reply))
            }
            Err(TransitionError::Database(e)) => return Err(e.into()),
        };
        if start.is_some() {
            tx.commit().await?;
        }
        Ok(start)
    }

    /// The operation, and the key that created it.
    async fn record_intent(
        &self,
        tx: &mut sqlx::PgConnection,
        new: &New<'_>,
        in_flight: PaymentRecord,
        (action, identity): (Action, &(uuid::Uuid, String)),
        leased_at: Instant,
    ) -> Result<Option<Start>, Error> {
        let operation =
            operations::insert(tx, in_flight.id, action.kind(), identity, self.lease()).await?;
        let keyed = idempotency::insert_for_operation(
            tx,
            new.merchant,
            new.key,
            new.fingerprint,
            in_flight.id,
            operation.id,
            self.lease(),
        )
        .await?;
        Ok(keyed.then_some(Start::Call(Box::new(Call {
            operation,
            payment: in_flight,
            known: None,
            leased_at,
        }))))
    }

    /// Whether a lease this request wrote, taken no earlier than
    /// `leased_at`, still runs (by this process's clock, with a margin:
    /// the database's lease began later). While it does, nobody else can
    /// have taken the key or its operation, which are taken only once their
    /// lease has run out; after it, they may be anyone's.
    fn still_ours(&self, leased_at: Instant) -> bool {
        leased_at.elapsed() + super::LEASE_MARGIN < self.lease().duration
    }

    /// A start that did not say it started: its batch failed (`failed`),
    /// or was written again and found the key taken. If the key names what
    /// this request wrote (`ours`, with when it leased it), the write
    /// landed and only the database's reply was lost: while that lease
    /// still runs, the operation is this request's, lease and all, and
    /// goes on (else the client met a 409 "in use" for its own
    /// request until the lease ran out). Otherwise the error stands, or the
    /// key is resumed as anyone's.
    async fn unanswered(
        &self,
        merchant: MerchantId,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        ours: impl Fn(&KeyRecord) -> Option<Instant>,
        failed: Option<Error>,
    ) -> Result<Start, Error> {
        let mut conn = self.pool.acquire().await?;
        let record = idempotency::read(&mut conn, merchant, key).await?;
        drop(conn);
        match (record, failed) {
            (Some(record), _) if let Some(leased_at) = ours(&record) => {
                metrics::counter!("gateway_lost_commit_replies_total").increment(1);
                self.resume(merchant, key, fingerprint, record, Some(leased_at))
                    .await
            }
            (_, Some(failed)) => Err(failed),
            (Some(record), None) => self.resume(merchant, key, fingerprint, record, None).await,
            // Gone already (purged): rare enough that the client's retry,
            // after the 409, may simply start again.
            (None, None) => Err(ClaimError::InUse.into()),
        }
    }

    /// A key seen before: a different request is refused, an answered key
    /// replays its answer, and a key in progress resumes its own operation
    /// if nobody holds the key or the operation. Reads the key unlocked
    /// first (what it is for and its answer never change), then locks the
    /// payment, the operation and the key, in that order.
    /// `ours`: this request wrote the key and its operation, leasing them
    /// no earlier than this; while that lease still runs once they are
    /// locked here (see [`Self::still_ours`]), the lease on them is its own.
    async fn resume(
        &self,
        merchant: MerchantId,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        record: KeyRecord,
        ours: Option<Instant>,
    ) -> Result<Start, Error> {
        if !fingerprint.matches(&record.request_hash)
            && !self.faults.mutant(Mutant::RequestHashIgnored)
        {
            return Err(ClaimError::Reused.into());
        }
        if let Some(stored) = record.answer() {
            return self.replay(&record, stored).await;
        }
        let (Some(payment_id), Some(operation_id)) = (record.payment_id, record.operation_id)
        else {
            return Err(Error::Invariant("a key in progress has no operation"));
        };
        let leased_at = Instant::now();
        let mut tx = self.pool.begin().await?;
        let payment = payments::lock_by_id(&mut tx, payment_id)
            .await?
            .ok_or(Error::Invariant("a key's payment is gone"))?;
        let operation = self
            .operation_to_resume(&mut tx, payment.id, operation_id)
            .await?;
        let record = idempotency::lock(&mut tx, merchant, key)
            .await?
            .ok_or(ClaimError::InUse)?;
        if let Some(stored) = record.answer() {
            return self.replay(&record, stored).await;
        }
        // Judged with the key and its operation locked: nobody can take
        // them over from here on.
        let ours = ours.is_some_and(|leased_at| self.still_ours(leased_at));
        if self.lease_runs(&record, &operation) && !ours {
            return Err(ClaimError::InUse.into());
        }
        if !operation.is_pending() {
            return Err(Error::Invariant(
                "an operation was settled without answering its key",
            ));
        }
        idempotency::take_lease(&mut tx, merchant, key, self.lease()).await?;
        let mut operation = operation;
        operation.lease_until = operations::take_lease(&mut tx, operation.id, self.lease()).await?;
        tx.commit().await?;
        metrics::counter!("gateway_operations_resumed_total", "kind" => operation.kind.as_str())
            .increment(1);
        Ok(Start::Call(Box::new(Call {
            operation,
            payment,
            known: None,
            leased_at,
        })))
    }

    /// The key's own operation, locked (or, under the mutant that resumes
    /// anything, whatever operation the payment has in flight).
    async fn operation_to_resume(
        &self,
        tx: &mut sqlx::PgConnection,
        payment_id: uuid::Uuid,
        operation_id: uuid::Uuid,
    ) -> Result<OperationRecord, Error> {
        if self.faults.mutant(Mutant::ResumeAnyOperation)
            && let Some(pending) = operations::lock_pending_of(tx, payment_id).await?
        {
            return Ok(pending);
        }
        operations::lock(tx, operation_id)
            .await?
            .ok_or(Error::Invariant("a key's operation is gone"))
    }

    /// Whether someone's lease on the key or its operation still runs: by
    /// the database's clock (or, under a mutant, by this process's).
    fn lease_runs(&self, key: &KeyRecord, operation: &OperationRecord) -> bool {
        if self.faults.mutant(Mutant::ProcessClockLeases) {
            let now = self.faults.now();
            return key.lease_until.is_some_and(|until| until > now) || operation.lease_until > now;
        }
        key.live || operation.live
    }

    /// The stored answer, byte for byte (or, under the mutant that does so,
    /// an answer recomputed from the payment as it is now).
    async fn replay(&self, record: &KeyRecord, stored: StoredResponse) -> Result<Start, Error> {
        if self.faults.mutant(Mutant::ReplayRecomputed)
            && let (Some(payment_id), Some(operation_id)) = (record.payment_id, record.operation_id)
        {
            let mut tx = self.pool.begin().await?;
            let (payment, history) = payments::lock_with_history(&mut tx, payment_id)
                .await?
                .ok_or(Error::NotFound)?;
            let operation = operations::lock(&mut tx, operation_id)
                .await?
                .ok_or(Error::NotFound)?;
            tx.commit().await?;
            return Ok(Start::Answered(render(operation.kind, &payment, history)?));
        }
        Ok(Start::Answered(Reply::replay(stored)))
    }
}

/// The payment an operation may start on, or why not: there is none, or
/// the request's amount is not the payment's (which never changes, so the
/// payment as read decides).
/// Whether starting `action` on the payment as read would call the bank:
/// not when expiry answers first, nor when the state machine refuses it.
fn would_call_the_bank(found: &Found, action: Action) -> bool {
    !found.expiry_due && transition(found.payment.status(), action.requested()).is_ok()
}

fn operable(found: Option<Found>, amount: Option<Amount>) -> Result<Found, Error> {
    let found = found.ok_or(Error::NotFound)?;
    match amount.filter(|a| a.cents() != found.payment.amount) {
        Some(amount) => {
            tracing::debug!(requested = amount.cents(), "amount mismatch");
            Err(Error::AmountMismatch {
                expected: found.payment.amount,
            })
        }
        None => Ok(found),
    }
}

/// The mutant's lagging read: the payment as it stood one change before.
fn one_change_behind(mut payment: PaymentRecord, history: &History) -> PaymentRecord {
    if let [.., (before, _), _] = history.as_slice() {
        payment.status = payments::StoredStatus(*before);
    }
    payment
}

/// A key not seen before, and the request it is for.
struct New<'a> {
    merchant: MerchantId,
    key: &'a IdempotencyKey,
    fingerprint: &'a Fingerprint,
}
