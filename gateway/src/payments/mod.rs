//! The payment flows, by phase: every bank call is bracketed by two short
//! transactions and no connection is held while the bank thinks.
//!
//! ```text
//! start      tx A: the key, the state machine, the payment in flight, the
//!            operation with its bank key; commit        (start.rs)
//! bank call  the bank, retried with the same key under a deadline; its
//!            answer classified                          (bank_call.rs)
//! settle     tx B: the operation settled, the payment moved, history
//!            appended, the answer stored on the key    (settle.rs)
//! reply      the answer, rendered from the payment as its own
//!            operation left it                         (reply.rs)
//! ```
//!
//! A crash between A and B leaves a pending operation whose lease runs
//! out; a retry of the key that created it, or the recovery worker
//! (recover.rs), resumes that operation with its bank key. Authorizations
//! past their expiry are expired by a sweep that asks the bank first
//! (expiry.rs). An operation is
//! settled once, and its answer is stored on its key in the same
//! transaction, whoever settles it: every later answer to the key is that
//! one, byte for byte.

mod bank_call;
mod command;
pub mod expiry;
mod recover;
mod reply;
mod settle;
mod start;
pub mod view;

use std::time::Duration;

use sqlx::{Connection, PgPool};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use bank_call::MOVED_AT_BANK;
pub use command::{Action, AuthorizeCommand};
pub use recover::{ABANDONED, Pass};
pub use reply::Reply;

use crate::bank::BankClient;
use crate::domain::{Amount, IdempotencyKey, InvalidTransition, Lease, MerchantId, PaymentId};
use crate::faults::{Faults, Injected, Mutant, Point};
use crate::idempotency::{self, ClaimError, Fingerprint};
use crate::store::batch::{BatchLimits, Batcher, Pressure};
use crate::store::clock::DbClock;
use crate::store::operations::{self, Backoff};
use crate::store::payments::{self, Settlement, TransitionError};
use crate::store::starts::{self, StartAuthorization, StartOperation, Started, StartedOperation};

use start::Start;

/// What a lease must still have, beyond the bank deadline, when a bank
/// call starts: the round trips around the call.
pub const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// How long a request may work on a key or an operation before another
/// may take over, how soon an unknown outcome is tried again, and how long
/// an unfinished authorization waits for its client before it is given up.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    /// Must exceed the bank call's deadline, or a slow request would be
    /// overtaken by its own retry.
    pub lease: Duration,
    /// After an unknown outcome: the first wait, doubling per attempt.
    pub retry: Backoff,
    /// An authorization whose outcome is unknown can only be sent again by
    /// its client (the card is never stored). For this long the worker
    /// only looks for it at the bank; after it, the worker settles it for
    /// good: adopted if the bank has it, given up if not.
    pub authorization_grace: Duration,
}

/// The gateway's core: a pool, the bank, the lease timings, and the hot
/// writes (the two kinds of start, and the settlement), batched (see
/// [`crate::store::batch`]).
#[derive(Clone)]
pub struct Gateway {
    pool: PgPool,
    bank: BankClient,
    leases: Leases,
    /// This process, as the holder of the leases it takes.
    instance: Uuid,
    starts: Batcher<StartAuthorization, Option<Started>>,
    operation_starts: Batcher<StartOperation, Option<StartedOperation>>,
    settlements: Batcher<Settlement, bool>,
    /// Whether payments' writes are queueing: the webhook workers yield.
    pressure: Pressure,
    clock: DbClock,
    faults: Faults,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such payment")]
    NotFound,
    #[error("amount must equal the payment's amount ({expected} cents)")]
    AmountMismatch { expected: i64 },
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("state machine refused a transition it had allowed: {0}")]
    Transition(InvalidTransition),
    #[error("a response could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// The bank's circuit is open and this operation would call it:
    /// nothing was done or stored.
    #[error("the bank is unavailable")]
    BankUnavailable { retry_after: Duration },
    /// A broken invariant of the gateway's own data: a bug, never a
    /// client's doing.
    #[error("invariant broken: {0}")]
    Invariant(&'static str),
}

/// An expiry settled with the bank (`reconcile::expiry`) fails as its
/// database or its repair does.
impl From<crate::reconcile::ReconcileError> for Error {
    fn from(e: crate::reconcile::ReconcileError) -> Self {
        use crate::reconcile::ReconcileError as R;
        match e {
            R::Database(e) => Self::Database(e),
            R::Repair(e) => e.into(),
            R::TurnLost(_) => Self::Invariant("an expiry lost a reconciliation turn it never held"),
        }
    }
}

/// A refused move here is the gateway's bug; a database error moving a
/// payment is the database's, and stays one (a 503, retryable), not a 500.
impl From<TransitionError> for Error {
    fn from(e: TransitionError) -> Self {
        match e {
            TransitionError::Refused(refused) => Self::Transition(refused),
            TransitionError::Database(e) => Self::Database(e),
        }
    }
}

impl From<Injected> for Error {
    fn from(injected: Injected) -> Self {
        Self::Database(injected.into())
    }
}

/// What a stopping process handed back.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    pub operations: u64,
    pub keys: u64,
    /// Whether it held the reconciliation turn (a pass under way).
    pub reconcile_turn: bool,
}

impl Gateway {
    /// The gateway, and the tasks that flush its batched writes (to be
    /// stopped with the server).
    pub fn spawn(
        pool: PgPool,
        bank: BankClient,
        leases: Leases,
        batches: BatchLimits,
        faults: Faults,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let pressure = Pressure::default();
        let (starts, mut tasks) = Batcher::spawn(
            "start_authorization",
            pool.clone(),
            batches,
            starts::start_authorizations,
            faults.clone(),
            Some(pressure.clone()),
        );
        let (operation_starts, operation_start_tasks) = Batcher::spawn(
            "start_operation",
            pool.clone(),
            batches,
            starts::start_operations,
            faults.clone(),
            Some(pressure.clone()),
        );
        tasks.extend(operation_start_tasks);
        let (settlements, settlement_tasks) = Batcher::spawn(
            "settlement",
            pool.clone(),
            batches,
            payments::write_settlements,
            faults.clone(),
            Some(pressure.clone()),
        );
        tasks.extend(settlement_tasks);
        let instance = Uuid::new_v4();
        let gateway = Self {
            pool,
            bank: bank.identified_as(instance),
            leases,
            instance,
            starts,
            operation_starts,
            settlements,
            pressure,
            clock: DbClock::new(faults.clone()),
            faults,
        };
        (gateway, tasks)
    }

    /// When this gateway's payment writes last queued for the database.
    pub fn pressure(&self) -> Pressure {
        self.pressure.clone()
    }

    /// Authorizes: records the intent, asks the bank with the card, records
    /// the answer. A key seen before is answered, refused or resumed.
    pub async fn authorize(
        &self,
        merchant: MerchantId,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        command: &AuthorizeCommand,
    ) -> Result<Reply, Error> {
        let start = self
            .start_authorization(merchant, key, fingerprint, command)
            .await?;
        self.carry_out(start, Some(command)).await
    }

    /// Captures, voids or refunds a payment, in full. `amount`, when the
    /// client sends one, must equal the payment's.
    pub async fn operate(
        &self,
        merchant: MerchantId,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        payment_id: PaymentId,
        action: Action,
        amount: Option<Amount>,
    ) -> Result<Reply, Error> {
        let merchant = if self.faults.mutant(Mutant::ForeignPaymentOperable) {
            self.owner_of(payment_id).await?.unwrap_or(merchant)
        } else {
            merchant
        };
        let start = self
            .start_operation(merchant, key, fingerprint, payment_id, action, amount)
            .await?;
        self.carry_out(start, None).await
    }

    /// The merchant a payment belongs to: only the mutant that trusts the
    /// path's payment over the caller's key asks.
    async fn owner_of(&self, payment_id: PaymentId) -> Result<Option<MerchantId>, Error> {
        let mut conn = self.pool.acquire().await?;
        let payment = payments::get_by_id(&mut conn, payment_id.as_uuid()).await?;
        Ok(payment.map(|p| MerchantId::from_uuid(p.merchant_id)))
    }

    /// The bank call and the settlement of what tx A started; `card` is the
    /// client's authorization request, the only place the card exists.
    async fn carry_out(
        &self,
        start: Start,
        card: Option<&AuthorizeCommand>,
    ) -> Result<Reply, Error> {
        let mut call = match start {
            Start::Answered(reply) => return Ok(reply),
            Start::Call(call) => call,
        };
        self.faults.hit(Point::IntentCommitted).await?;
        if !self
            .lease_covers_call(&mut call.operation, call.leased_at)
            .await?
        {
            // Paused past the lease: whoever took the operation over calls
            // the bank, not this request. Its key answers once they are done.
            return Err(ClaimError::InUse.into());
        }
        let resolution = self.call_bank(&call.operation, &call.payment, card).await;
        self.faults.hit(Point::BankAnswered).await?;
        self.settle(&call.operation, resolution, call.known).await
    }

    /// Whether this caller (this task, not merely this process) holds the
    /// operation's lease, taken at `leased_at` with `operation.lease_until`
    /// as its token, for as long as a whole bank call can take from now
    /// (the bank deadline and a margin), so that two callers with one bank
    /// key never overlap. While the lease surely covers it, no query; past
    /// that (a caller that was paused or starved), the lease is renewed in
    /// the database, only if this process still holds it, and
    /// `operation.lease_until` becomes the renewed lease's token.
    async fn lease_covers_call(
        &self,
        operation: &mut operations::OperationRecord,
        leased_at: std::time::Instant,
    ) -> Result<bool, Error> {
        let call = self.bank.policy().deadline + LEASE_MARGIN;
        if leased_at.elapsed() + call <= self.leases.lease {
            return Ok(true);
        }
        let mut conn = self.pool.acquire().await?;
        let renewed = operations::renew_lease(
            &mut conn,
            operation.id,
            operation.lease_until,
            self.leases.lease,
        )
        .await?;
        let Some(token) = renewed else {
            metrics::counter!("gateway_leases_lost_total", "kind" => operation.kind.as_str())
                .increment(1);
            tracing::warn!(operation_id = %operation.id, "the operation's lease ran out before the bank call; leaving it to its new holder");
            return Ok(false);
        };
        operation.lease_until = token;
        Ok(true)
    }

    /// A lease held by this process.
    pub fn lease(&self) -> Lease {
        Lease {
            holder: self.instance,
            duration: self.leases.lease,
        }
    }

    /// Hands back this process's leases (keys, operations and the
    /// reconciliation turn) so that another process, or this one
    /// restarted, resumes them at once.
    ///
    /// Runs on a connection of its own: at shutdown the pool's connections
    /// may belong to the HTTP workers' runtimes, which are gone by then.
    pub async fn release_leases(&self) -> Result<Released, sqlx::Error> {
        let mut conn = sqlx::PgConnection::connect_with(&self.pool.connect_options()).await?;
        let mut tx = conn.begin().await?;
        // Not the operations whose call may still be open at the bank (its
        // future dropped at the stop): they wait out their lease. Their keys
        // may go: a retry resumes only an operation whose lease ran out.
        let open = self.bank.keys_possibly_open();
        let operations = operations::release_held_by(&mut tx, self.instance, &open).await?;
        let keys = idempotency::release_held_by(&mut tx, self.instance).await?;
        let reconcile_turn =
            crate::reconcile::turn::release_held_by(&mut tx, self.instance).await?;
        tx.commit().await?;
        Ok(Released {
            operations,
            keys,
            reconcile_turn,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn bank(&self) -> &BankClient {
        &self.bank
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// This process, as it holds leases and names itself to the bank.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// The database's clock, as this process reads it.
    pub fn clock(&self) -> &DbClock {
        &self.clock
    }
}
