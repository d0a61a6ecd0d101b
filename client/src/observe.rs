//! The observer: one [`AttemptRecord`] for every HTTP attempt the client
//! makes, retries included, for a test harness to check invariants on.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::{Method, Url};

use crate::key::IdempotencyKey;

/// Called once for every attempt, synchronously, on the task that made it,
/// as soon as the attempt is over and before the client decides what to do
/// next. It should be quick (push to a list, send on a channel); a harness
/// that needs to do I/O can spawn a task from it.
pub type Observer = Arc<dyn Fn(&AttemptRecord) + Send + Sync>;

/// One HTTP attempt: what was sent where, and what came back.
///
/// It never holds the request's body: an authorization's body carries the
/// card number and CVV.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// Which call of this client the attempt belongs to (every attempt of
    /// one `authorize(..)`, say, has the same): numbered from 1 per client.
    pub call: u64,
    /// The attempt's number within its call, from 1.
    pub attempt: u32,
    pub method: Method,
    /// The path and query, e.g. `/v1/payments/pay_…/capture`.
    pub path: String,
    /// The `Idempotency-Key` sent (every POST has one).
    pub idempotency_key: Option<IdempotencyKey>,
    /// The replica the attempt went to.
    pub base_url: Url,
    /// When the attempt started, by the wall clock (for timelines).
    pub started_at: SystemTime,
    /// From the start of the attempt to its whole answer (or its failure).
    pub latency: Duration,
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The gateway answered, with its whole body.
    Response {
        status: u16,
        /// The `Idempotent-Replayed: true` header: a stored answer again.
        replayed: bool,
        /// `Retry-After`, as sent.
        retry_after: Option<String>,
        /// `X-Request-Id`, to find the request in the gateway's logs.
        request_id: Option<String>,
        /// The body as text (lossy UTF-8).
        body: String,
    },
    /// No answer, or not all of it: refused, reset, timed out, truncated.
    /// The request may have reached the gateway and been acted on.
    Transport { error: String },
    /// The caller dropped the call while this attempt was in flight; as
    /// with a transport error, the request may have been acted on.
    Cancelled,
}

impl AttemptRecord {
    /// The answer's status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match &self.outcome {
            AttemptOutcome::Response { status, .. } => Some(*status),
            AttemptOutcome::Transport { .. } | AttemptOutcome::Cancelled => None,
        }
    }

    pub fn replayed(&self) -> bool {
        match &self.outcome {
            AttemptOutcome::Response { replayed, .. } => *replayed,
            AttemptOutcome::Transport { .. } | AttemptOutcome::Cancelled => false,
        }
    }

    pub fn body(&self) -> Option<&str> {
        match &self.outcome {
            AttemptOutcome::Response { body, .. } => Some(body),
            AttemptOutcome::Transport { .. } | AttemptOutcome::Cancelled => None,
        }
    }
}

/// What is known of an attempt when it starts; reports it when told how it
/// ended, or, if it is dropped first (the call's future was dropped
/// mid-attempt), reports it as [`AttemptOutcome::Cancelled`]. So no attempt
/// that may have reached the gateway goes unrecorded.
pub(crate) struct AttemptWitness<'a> {
    observer: Option<&'a Observer>,
    pending: Option<AttemptRecord>,
    started: Instant,
}

impl<'a> AttemptWitness<'a> {
    pub(crate) fn start(
        observer: Option<&'a Observer>,
        call: u64,
        attempt: u32,
        method: Method,
        path: String,
        idempotency_key: Option<IdempotencyKey>,
        base_url: Url,
    ) -> Self {
        let pending = observer.map(|_| AttemptRecord {
            call,
            attempt,
            method,
            path,
            idempotency_key,
            base_url,
            started_at: SystemTime::now(),
            latency: Duration::ZERO,
            outcome: AttemptOutcome::Cancelled,
        });
        Self {
            observer,
            pending,
            started: Instant::now(),
        }
    }

    /// Reports the attempt with its outcome.
    pub(crate) fn finish(mut self, outcome: AttemptOutcome) {
        self.report(outcome);
    }

    fn report(&mut self, outcome: AttemptOutcome) {
        // Taken before the call, so an observer that panics is not called
        // a second time for the same attempt by `drop` during unwinding.
        let (Some(observer), Some(mut record)) = (self.observer, self.pending.take()) else {
            return;
        };
        record.latency = self.started.elapsed();
        record.outcome = outcome;
        observer(&record);
    }
}

impl Drop for AttemptWitness<'_> {
    fn drop(&mut self) {
        self.report(AttemptOutcome::Cancelled);
    }
}
