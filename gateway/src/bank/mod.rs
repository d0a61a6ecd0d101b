//! The gateway's HTTP client for the acquiring bank (`docs/bank.md`).
//!
//! Every call answers a [`BankOutcome`]: [`Done`](BankOutcome::Done) (a 2xx
//! that parsed), [`Refused`](BankOutcome::Refused) (a 4xx: the bank looked
//! at the request and said no) or [`Unknown`](BankOutcome::Unknown) (we ran
//! out of time or attempts with only transient failures). There is no error
//! variant on purpose: a call to the bank cannot "fail" from the gateway's
//! point of view, it can only end without an answer yet.
//!
//! # Why the retry rules are what they are
//!
//! - **One idempotency key per operation, the same on every retry.** A 500,
//!   a timeout or a reset tells us nothing about whether the bank did the
//!   work: its chaos modes include "commit, then answer 500", "commit, then
//!   hold the response" and "close the connection after the commit". Only a
//!   retry with the *same* key is safe: the bank replays the stored response
//!   if it did the work and does it afresh if it did not. A fresh key per
//!   retry would turn a lost response into a double charge. The request body
//!   is serialised once and the same bytes are sent every time, because the
//!   bank answers 422 `idempotency_key_reused` to the same key with a
//!   different body.
//! - **Transient (retried):** any 5xx, a per-attempt timeout, a connection
//!   refused, reset or closed before a complete response, and a 2xx whose
//!   body does not parse (the bank did the work and stored the response; the
//!   retry replays it). None of these says "no".
//! - **Permanent (never retried):** any 4xx. The bank validated the request
//!   and refused it (402 `insufficient_funds` included); asking again with
//!   the same key gets the same answer, or worse, the work done afresh after
//!   the situation changed. A 404 on a GET means the id is unknown.
//! - **Backoff with full jitter** (`random(0..=min(max, base·2^n))`): when the
//!   bank is down every gateway request fails at once; jitter spreads the
//!   retries out instead of hammering the bank in synchronised waves. A 429
//!   or 503 with a `Retry-After` in seconds is not asked again sooner, and
//!   not at all by this call if the wait is longer than it has left.
//! - **A deadline per call, and a cap on attempts.** The HTTP request that
//!   triggered the call has its own deadline; past it the gateway answers
//!   202 and leaves the operation to the recovery worker, which calls again
//!   with the same key. So the client never sleeps past the deadline, makes
//!   an attempt only if its whole timeout ends before it, and answers
//!   [`Unknown`](BankOutcome::Unknown), never an error, when it stops.
//! - **A bound on concurrent attempts** (a semaphore): a slow bank must not
//!   make the gateway open thousands of sockets. A permit is held only for
//!   the duration of one attempt, never during a backoff sleep, so a call
//!   that is waiting to retry does not block the others. Time spent waiting
//!   for a permit counts against the call's deadline.
//!
//! - **A circuit breaker** ([`CircuitBreaker`], see [`circuit`]): after
//!   `failure_threshold` consecutive transient attempt failures, across all
//!   calls and all clones of the client, it opens for `open_for`; then one
//!   probe attempt is let through, and its answer closes the circuit (2xx
//!   or 4xx) or opens it again. Every attempt asks it first; while it is
//!   open a call returns [`Unknown`](BankOutcome::Unknown) with
//!   [`UnknownReason::CircuitOpen`] at once, nothing sent and no sleep. The
//!   API checks it before claiming an idempotency key, so a request that
//!   would only wait on a dead bank gets 503 with `Retry-After` and leaves
//!   nothing behind. Retries cope with a flaky bank; the breaker copes with
//!   a dead one, where retrying only adds load and latency.
//!
//! Card numbers and CVVs are never logged: [`AuthorizeRequest`]'s `Debug`
//! shows only the last four digits, and the client logs the operation, the
//! idempotency key, the attempt, the status and the elapsed time.
//!
//! Metrics (`metrics` crate): `gateway_bank_calls_total{operation, outcome}`,
//! `gateway_bank_attempts_total{operation, result}`,
//! `gateway_bank_call_duration_seconds{operation}`,
//! `gateway_bank_in_flight`, `gateway_bank_circuit_state` (0 closed,
//! 1 half-open, 2 open) and `gateway_bank_circuit_opened_total`.

pub mod circuit;
mod client;
mod open_calls;
mod retry;
mod wire;

pub use circuit::{CircuitBreaker, CircuitSettings, CircuitState};
pub use client::{BankClient, BankClientError, BankOutcome, Refusal, UnknownReason};
pub use retry::{RetryPolicy, backoff, backoff_cap};
pub use wire::{Authorization, AuthorizeRequest, BankErrorCode, Capture, Refund, Void};
