//! The payment flows: authorize, capture, void, refund, and resuming any
//! of them after an unknown outcome.
//!
//! Every bank call is bracketed by two short transactions and no
//! connection is held while the bank thinks:
//!
//! ```text
//! tx A: claim the idempotency key, check the state machine, move the payment
//!       to its in-flight status, write the operation with its bank key; commit
//! call the bank (retries, backoff, deadline); no connection held
//! tx B: settle the operation, move the payment, append history, store the
//!       response on the idempotency key; commit
//! ```
//!
//! A crash between A and B leaves a pending operation whose lease runs
//! out; a retry with the same key resumes it with the same bank key.

mod authorize;
mod operate;
mod recover;
mod reply;
mod settle;

pub use recover::{ABANDONED, Pass};
pub mod view;

use std::time::Duration;

use sqlx::{Connection, PgPool};
use uuid::Uuid;

pub use authorize::AuthorizeCommand;
pub use operate::Action;
pub use reply::Reply;

use tokio::task::JoinHandle;

use crate::bank::BankClient;
use crate::idempotency::{self, ClaimError};
use crate::store::batch::{BatchLimits, Batcher};
use crate::store::operations::{self, Backoff, Lease};
use crate::store::payments::{self, Settlement, StartAuthorization, Started, TransitionError};

/// How long a request may work on a key or an operation before another
/// may take over, and how soon an unknown outcome is tried again.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    /// Must exceed the bank call's deadline, or a slow request would be
    /// overtaken by its own retry.
    pub lease: Duration,
    /// After an unknown outcome: the first wait, doubling per attempt.
    pub retry: Backoff,
}

/// The gateway's core: a pool, the bank, the lease timings, and the two
/// hot writes, batched (see [`crate::store::batch`]).
#[derive(Clone)]
pub struct Gateway {
    pool: PgPool,
    bank: BankClient,
    leases: Leases,
    /// This process, as the holder of the leases it takes.
    instance: Uuid,
    starts: Batcher<StartAuthorization, Option<Started>>,
    settlements: Batcher<Settlement, bool>,
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
    Transition(#[from] TransitionError),
    #[error("a response could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Gateway {
    /// The gateway, and the tasks that flush its batched writes (to be
    /// stopped with the server).
    pub fn spawn(
        pool: PgPool,
        bank: BankClient,
        leases: Leases,
        batches: BatchLimits,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let (starts, mut tasks) = Batcher::spawn(
            "start_authorization",
            pool.clone(),
            batches,
            payments::start_authorizations,
        );
        let (settlements, settlement_tasks) = Batcher::spawn(
            "settlement",
            pool.clone(),
            batches,
            payments::write_settlements,
        );
        tasks.extend(settlement_tasks);
        let gateway = Self {
            pool,
            bank,
            leases,
            instance: Uuid::new_v4(),
            starts,
            settlements,
        };
        (gateway, tasks)
    }

    /// A lease held by this process.
    pub fn lease(&self) -> Lease {
        Lease {
            holder: self.instance,
            duration: self.leases.lease,
        }
    }

    /// Hands back this process's leases (keys and operations) so that
    /// another process, or this one restarted, resumes them at once.
    ///
    /// Runs on a connection of its own: at shutdown the pool's connections
    /// may belong to the HTTP workers' runtimes, which are gone by then.
    pub async fn release_leases(&self) -> Result<(u64, u64), sqlx::Error> {
        let mut conn = sqlx::PgConnection::connect_with(&self.pool.connect_options()).await?;
        let mut tx = conn.begin().await?;
        let operations = operations::release_held_by(&mut tx, self.instance).await?;
        let keys = idempotency::release_held_by(&mut tx, self.instance).await?;
        tx.commit().await?;
        Ok((operations, keys))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn bank(&self) -> &BankClient {
        &self.bank
    }
}
