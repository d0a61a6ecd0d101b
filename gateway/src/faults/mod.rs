//! Named fault points on the payment path, for tests and the simulator.
//!
//! A point marks a window where a crash, a pause or a failing database
//! would leave the system in an interesting state: after the intent
//! commits, after the bank answered, before an outcome commits, inside a
//! group-commit batch, in the recovery worker after it claimed work. A
//! test or the simulator arms a point with an action (pause until
//! released, sleep, fail the database step, abort the process) and how
//! often it fires; the seed decides which probabilistic firings happen.
//!
//! Compiled only with the `fault-points` feature, which the gateway's own
//! tests and the simulator turn on. Without it [`Faults`] is an empty type
//! whose [`Faults::hit`] is an inline no-op: a production build carries no
//! trace of this module. With it, an unarmed point costs one atomic load.
//!
//! The same registry carries a clock skew: [`Faults::now`] is the system
//! clock plus the skew, so that a test or the simulator can run replicas
//! whose clocks disagree (the database's clock is the only one leases and
//! expiries may be judged by).

#[cfg(feature = "fault-points")]
mod armed;
mod mutant;
mod spec;

use std::fmt;

pub use mutant::Mutant;
pub use spec::{Action, FaultSpec, SpecError};

/// How a gateway's faults are configured at start (hidden settings that
/// only tests and the simulator use).
#[derive(Debug, Clone, Default)]
pub struct FaultSettings {
    /// Points to arm (see [`spec`]).
    pub spec: String,
    /// Seeds the armed points' chances.
    pub seed: u64,
    /// Added to this process's wall clock.
    pub skew: chrono::TimeDelta,
    /// A known bug to reintroduce.
    pub mutant: Option<Mutant>,
}

/// Where on the payment path a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// Tx A committed: the operation is recorded, the bank not yet called.
    IntentCommitted,
    /// The bank answered (or the call gave up); nothing recorded yet.
    BankAnswered,
    /// The outcome's transaction is written but not yet committed: its
    /// locks are held.
    OutcomeBeforeCommit,
    /// A group-commit batch is about to be written (its rows are waiting).
    BatchBeforeWrite,
    /// A group-commit batch was written and committed, and its rows are
    /// not answered yet: an `error` here is the commit's reply lost.
    BatchAfterWrite,
    /// The recovery worker claimed operations and has not called the bank.
    RecoveryClaimed,
    /// A read of a payment has begun (between its halves, in the mutant
    /// that reads the payment and its history apart).
    PaymentRead,
}

impl Point {
    pub const ALL: [Point; 7] = [
        Point::IntentCommitted,
        Point::BankAnswered,
        Point::OutcomeBeforeCommit,
        Point::BatchBeforeWrite,
        Point::BatchAfterWrite,
        Point::RecoveryClaimed,
        Point::PaymentRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Point::IntentCommitted => "intent_committed",
            Point::BankAnswered => "bank_answered",
            Point::OutcomeBeforeCommit => "outcome_before_commit",
            Point::BatchBeforeWrite => "batch_before_write",
            Point::BatchAfterWrite => "batch_after_write",
            Point::RecoveryClaimed => "recovery_claimed",
            Point::PaymentRead => "payment_read",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|point| point.as_str() == raw)
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a fired point tells its caller to do: carry on, or fail the step as
/// if the database had gone away.
#[derive(Debug, thiserror::Error)]
#[error("fault injected at {0}")]
pub struct Injected(pub Point);

impl From<Injected> for sqlx::Error {
    /// An I/O error, as a dropped database connection gives: the API answers
    /// 503 and the step changed nothing it had not committed.
    fn from(injected: Injected) -> Self {
        sqlx::Error::Io(std::io::Error::other(injected.to_string()))
    }
}

#[cfg(feature = "fault-points")]
pub use armed::Faults;

/// Without the `fault-points` feature: nothing, at no cost.
#[cfg(not(feature = "fault-points"))]
#[derive(Debug, Clone, Default)]
pub struct Faults;

#[cfg(not(feature = "fault-points"))]
impl Faults {
    /// Refuses any fault: this build cannot inject them.
    pub fn from_settings(settings: &FaultSettings) -> Result<Self, SpecError> {
        let inert =
            settings.spec.trim().is_empty() && settings.skew.is_zero() && settings.mutant.is_none();
        if inert {
            Ok(Self)
        } else {
            Err(SpecError::NotCompiledIn)
        }
    }

    #[inline(always)]
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    #[inline(always)]
    pub fn mutant(&self, _mutant: Mutant) -> bool {
        false
    }

    #[inline(always)]
    pub async fn hit(&self, _point: Point) -> Result<(), Injected> {
        Ok(())
    }
}
