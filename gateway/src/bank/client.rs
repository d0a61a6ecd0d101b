//! [`BankClient`]: one method per bank endpoint, each a loop of attempts
//! under the [`RetryPolicy`]; see the module doc of [`crate::bank`] for the
//! rules and why.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::circuit::{CircuitBreaker, CircuitSettings};
use super::open_calls::OpenCalls;
use super::retry::{RetryPolicy, backoff};
use super::wire::{
    Authorization, AuthorizeRequest, BankErrorCode, Capture, CaptureRequest, ErrorBody, Refund,
    RefundRequest, Void, VoidRequest,
};
use crate::faults::{Faults, Mutant};

/// The name of the bank's idempotency header.
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Which gateway process sent a request: for the bank's logs, and for a
/// tap that checks that no two processes ever call with one key at once.
const INSTANCE_HEADER: &str = "X-Gateway-Instance";

/// What one bank call came to. Never an error: when the client gives up
/// without an answer the outcome is [`Unknown`](BankOutcome::Unknown), and
/// the caller resumes later with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankOutcome<T> {
    /// A 2xx whose body parsed.
    Done(T),
    /// A 4xx: the bank refused, definitively.
    Refused(Refusal),
    /// Only transient failures until the deadline or the last attempt.
    Unknown(UnknownReason),
}

impl<T> BankOutcome<T> {
    /// Maps the `Done` value, keeping the other variants.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> BankOutcome<U> {
        match self {
            BankOutcome::Done(value) => BankOutcome::Done(f(value)),
            BankOutcome::Refused(refusal) => BankOutcome::Refused(refusal),
            BankOutcome::Unknown(reason) => BankOutcome::Unknown(reason),
        }
    }

    /// The label used in metrics: `done`, `refused` or `unknown`.
    pub fn label(&self) -> &'static str {
        match self {
            BankOutcome::Done(_) => "done",
            BankOutcome::Refused(_) => "refused",
            BankOutcome::Unknown(_) => "unknown",
        }
    }
}

/// A 4xx answer of the bank: `{"error": code, "message": text}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: BankErrorCode,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.code, self.message)
    }
}

/// Why a call ended without an answer. `attempts` counts the HTTP attempts
/// made; 0 means nothing was sent (no in-flight slot came free in time, or
/// the circuit was open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownReason {
    DeadlinePassed {
        attempts: u32,
        last_error: String,
    },
    AttemptsExhausted {
        attempts: u32,
        last_error: String,
    },
    /// The circuit breaker refused the next attempt. With `attempts == 0`
    /// nothing was sent by this call, and it returned at once; otherwise
    /// the circuit opened between two of its attempts.
    CircuitOpen {
        attempts: u32,
        retry_after: Duration,
    },
}

/// [`UnknownReason::last_error`] of a call the circuit stopped.
const CIRCUIT_OPEN_ERROR: &str = "the bank's circuit breaker is open";

impl UnknownReason {
    pub fn attempts(&self) -> u32 {
        match self {
            UnknownReason::DeadlinePassed { attempts, .. }
            | UnknownReason::AttemptsExhausted { attempts, .. }
            | UnknownReason::CircuitOpen { attempts, .. } => *attempts,
        }
    }

    pub fn last_error(&self) -> &str {
        match self {
            UnknownReason::DeadlinePassed { last_error, .. }
            | UnknownReason::AttemptsExhausted { last_error, .. } => last_error,
            UnknownReason::CircuitOpen { .. } => CIRCUIT_OPEN_ERROR,
        }
    }
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownReason::DeadlinePassed {
                attempts,
                last_error,
            } => write!(
                f,
                "no whole attempt fit before the deadline after {attempts} attempt(s); last error: {last_error}"
            ),
            UnknownReason::AttemptsExhausted {
                attempts,
                last_error,
            } => write!(
                f,
                "gave up after {attempts} attempt(s); last error: {last_error}"
            ),
            UnknownReason::CircuitOpen {
                attempts,
                retry_after,
            } => write!(
                f,
                "{CIRCUIT_OPEN_ERROR} after {attempts} attempt(s); retry after {} ms",
                millis(*retry_after)
            ),
        }
    }
}

/// Building a [`BankClient`] failed (configuration errors only).
#[derive(Debug, thiserror::Error)]
pub enum BankClientError {
    #[error("invalid bank base URL {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    #[error("max_in_flight must be at least 1")]
    ZeroMaxInFlight,
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The bank's HTTP client. Cheap to clone: clones (and
/// [`with_policy`](BankClient::with_policy) copies) share the connection
/// pool, the in-flight limit and the circuit breaker.
#[derive(Clone)]
pub struct BankClient {
    shared: Arc<Shared>,
    policy: RetryPolicy,
    /// Only for the mutants of the simulator's mutation table.
    faults: Faults,
    /// This process, as [`INSTANCE_HEADER`] names it.
    instance: Option<HeaderValue>,
}

struct Shared {
    http: reqwest::Client,
    base: Url,
    permits: Semaphore,
    max_in_flight: usize,
    circuit: Arc<CircuitBreaker>,
    open: OpenCalls,
}

impl fmt::Debug for BankClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankClient")
            .field("base", &self.shared.base.as_str())
            .field("max_in_flight", &self.shared.max_in_flight)
            .field("policy", &self.policy)
            .field("circuit", &self.shared.circuit)
            .finish()
    }
}

/// The bank's operations, as named in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Authorize,
    Capture,
    Void,
    Refund,
    ResolveAuthorization,
    FindAuthorization,
    GetAuthorization,
    GetCapture,
    GetVoid,
    GetRefund,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Authorize => "authorize",
            Operation::Capture => "capture",
            Operation::Void => "void",
            Operation::Refund => "refund",
            Operation::ResolveAuthorization => "resolve_authorization",
            Operation::FindAuthorization => "find_authorization",
            Operation::GetAuthorization => "get_authorization",
            Operation::GetCapture => "get_capture",
            Operation::GetVoid => "get_void",
            Operation::GetRefund => "get_refund",
        }
    }

    /// Whether it only asks (a GET, or resolve's question about a key):
    /// nothing of a payment's money moves on it.
    fn is_lookup(self) -> bool {
        match self {
            Operation::Authorize | Operation::Capture | Operation::Void | Operation::Refund => {
                false
            }
            Operation::ResolveAuthorization
            | Operation::FindAuthorization
            | Operation::GetAuthorization
            | Operation::GetCapture
            | Operation::GetVoid
            | Operation::GetRefund => true,
        }
    }

    fn method(self) -> Method {
        match self {
            Operation::Authorize
            | Operation::Capture
            | Operation::Void
            | Operation::Refund
            | Operation::ResolveAuthorization
            | Operation::FindAuthorization => Method::POST,
            Operation::GetAuthorization
            | Operation::GetCapture
            | Operation::GetVoid
            | Operation::GetRefund => Method::GET,
        }
    }
}

/// How one attempt ended, as counted in `gateway_bank_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptResult {
    Ok,
    Http5xx,
    Http4xx,
    /// A 4xx the bank's contract does not list for the operation.
    Undocumented4xx,
    /// A lookup refused in the bank's own words (one of its error codes)
    /// in a way that proves nothing: an unmarked `not_found` to a resolve
    /// the bank does not serve. Retried like any transient failure; the
    /// circuit counts it neither as a failure (the bank answered) nor as
    /// a success.
    UnprovenRefusal,
    Timeout,
    Connect,
    Other,
}

impl AttemptResult {
    fn label(self) -> &'static str {
        match self {
            AttemptResult::Ok => "ok",
            AttemptResult::Http5xx => "http_5xx",
            AttemptResult::Http4xx => "http_4xx",
            AttemptResult::Undocumented4xx => "http_4xx_undocumented",
            AttemptResult::UnprovenRefusal => "http_4xx_unproven",
            AttemptResult::Timeout => "timeout",
            AttemptResult::Connect => "connect",
            AttemptResult::Other => "other",
        }
    }
}

/// One attempt's verdict.
enum Attempt<T> {
    Done(T),
    Refused(Refusal),
    Transient {
        result: AttemptResult,
        status: Option<StatusCode>,
        error: String,
    },
}

/// Counts one HTTP attempt in `gateway_bank_in_flight` while it lives, so a
/// cancelled call cannot leave the gauge too high.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("gateway_bank_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("gateway_bank_in_flight").decrement(1.0);
    }
}

impl BankClient {
    /// A client for the bank at `base_url` (e.g. `http://127.0.0.1:8787`),
    /// with at most `max_in_flight` HTTP attempts at the bank at once, and
    /// a circuit breaker configured by `circuit`.
    pub fn new(
        base_url: &str,
        policy: RetryPolicy,
        max_in_flight: usize,
        circuit: CircuitSettings,
    ) -> Result<Self, BankClientError> {
        if max_in_flight == 0 {
            return Err(BankClientError::ZeroMaxInFlight);
        }
        let invalid = |reason: &str| BankClientError::InvalidBaseUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.cannot_be_a_base() || base.path_segments_mut().is_err() {
            return Err(invalid("the URL cannot carry a path"));
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("ficmart-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(BankClient {
            shared: Arc::new(Shared {
                http,
                base,
                permits: Semaphore::new(max_in_flight),
                max_in_flight,
                circuit: Arc::new(CircuitBreaker::from_settings(circuit)),
                open: OpenCalls::default(),
            }),
            policy,
            faults: Faults::default(),
            instance: None,
        })
    }

    /// The same client (connection pool, in-flight limit) with another
    /// policy, e.g. a short deadline for a request path and a long one for
    /// the recovery worker.
    pub fn with_policy(&self, policy: RetryPolicy) -> Self {
        BankClient {
            shared: Arc::clone(&self.shared),
            policy,
            faults: self.faults.clone(),
            instance: self.instance.clone(),
        }
    }

    /// The same client, running the process's faults (its mutants).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The process's faults this client runs, for the callers that hold
    /// the client but not the gateway (reconciliation).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The same client, naming `instance` as the sender of every request.
    pub fn identified_as(mut self, instance: uuid::Uuid) -> Self {
        self.instance = HeaderValue::from_str(&instance.to_string()).ok();
        self
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The idempotency keys of calls (of every clone) that may still be
    /// open at the bank: returned, or past their deadline, they are not.
    /// Their operations' leases must not be handed back.
    pub fn keys_possibly_open(&self) -> Vec<String> {
        self.shared.open.keys()
    }

    /// The circuit breaker every attempt of every clone consults.
    pub fn circuit(&self) -> &CircuitBreaker {
        &self.shared.circuit
    }

    /// `POST /api/v1/authorizations` with `Idempotency-Key: key`.
    pub async fn authorize(
        &self,
        key: &str,
        request: &AuthorizeRequest<'_>,
    ) -> BankOutcome<Authorization> {
        self.post(Operation::Authorize, &["authorizations"], key, request)
            .await
    }

    /// `POST /api/v1/captures` with `Idempotency-Key: key`.
    pub async fn capture(
        &self,
        key: &str,
        authorization_id: &str,
        amount_cents: i64,
    ) -> BankOutcome<Capture> {
        let body = CaptureRequest {
            authorization_id,
            amount: amount_cents,
        };
        self.post(Operation::Capture, &["captures"], key, &body)
            .await
    }

    /// `POST /api/v1/voids` with `Idempotency-Key: key`.
    pub async fn void(&self, key: &str, authorization_id: &str) -> BankOutcome<Void> {
        let body = VoidRequest { authorization_id };
        self.post(Operation::Void, &["voids"], key, &body).await
    }

    /// `POST /api/v1/refunds` with `Idempotency-Key: key`.
    pub async fn refund(
        &self,
        key: &str,
        capture_id: &str,
        amount_cents: i64,
    ) -> BankOutcome<Refund> {
        let body = RefundRequest {
            capture_id,
            amount: amount_cents,
        };
        self.post(Operation::Refund, &["refunds"], key, &body).await
    }

    /// `GET /api/v1/authorizations/{id}` (with the extension fields).
    /// Extension of our bank: the authorization created by the
    /// `POST /api/v1/authorizations` sent with `key`, or `Refused(NotFound)`
    /// when there is none, in which case the bank retires the key so that
    /// no late request can create one. This is how an authorization whose
    /// answer was lost is settled without the card, which is never stored.
    pub async fn resolve_authorization(&self, key: &str) -> BankOutcome<Authorization> {
        self.post(
            Operation::ResolveAuthorization,
            &["authorizations", "resolve"],
            key,
            &serde_json::json!({}),
        )
        .await
    }

    /// The same question without the consequence: the authorization `key`
    /// created, or `Refused(NotFound)` with the key left as it was, so that
    /// the authorization's client may still send it (with the card).
    pub async fn find_authorization(&self, key: &str) -> BankOutcome<Authorization> {
        self.post(
            Operation::FindAuthorization,
            &["authorizations", "resolve"],
            key,
            &serde_json::json!({"retire": false}),
        )
        .await
    }

    pub async fn get_authorization(&self, id: &str) -> BankOutcome<Authorization> {
        self.get(Operation::GetAuthorization, "authorizations", id)
            .await
    }

    /// `GET /api/v1/captures/{id}` (with the extension field `refund_id`).
    pub async fn get_capture(&self, id: &str) -> BankOutcome<Capture> {
        self.get(Operation::GetCapture, "captures", id).await
    }

    /// `GET /api/v1/voids/{id}` (an extension of our bank).
    pub async fn get_void(&self, id: &str) -> BankOutcome<Void> {
        self.get(Operation::GetVoid, "voids", id).await
    }

    /// `GET /api/v1/refunds/{id}`.
    pub async fn get_refund(&self, id: &str) -> BankOutcome<Refund> {
        self.get(Operation::GetRefund, "refunds", id).await
    }

    /// `base/api/v1/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.shared.base.clone();
        // `new` checked that the base can carry a path.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        op: Operation,
        segments: &[&str],
        key: &str,
        body: &B,
    ) -> BankOutcome<T> {
        let Ok(key_header) = HeaderValue::from_str(key) else {
            // The gateway makes its own keys, so this is a bug; nothing was
            // sent, and retrying cannot help.
            tracing::error!(
                operation = op.name(),
                key_len = key.len(),
                "idempotency key is not a valid header value; not calling the bank"
            );
            return self.finish(
                op,
                key,
                Instant::now(),
                BankOutcome::Unknown(UnknownReason::AttemptsExhausted {
                    attempts: 0,
                    last_error: "the idempotency key is not a valid header value".to_owned(),
                }),
            );
        };
        // Serialised once: every retry sends the same bytes with the same
        // key, as the bank's idempotency requires.
        let body = match serde_json::to_vec(body) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(operation = op.name(), error = %e, "could not serialise the request");
                return self.finish(
                    op,
                    key,
                    Instant::now(),
                    BankOutcome::Unknown(UnknownReason::AttemptsExhausted {
                        attempts: 0,
                        last_error: format!("could not serialise the request: {e}"),
                    }),
                );
            }
        };
        let url = self.url(segments);
        let call = self.shared.open.enter(key, self.policy.deadline);
        let outcome = self
            .execute(op, url, key, Some(key_header), Some(body))
            .await;
        self.shared.open.leave(call);
        outcome
    }

    async fn get<T: DeserializeOwned>(
        &self,
        op: Operation,
        collection: &str,
        id: &str,
    ) -> BankOutcome<T> {
        let url = self.url(&[collection, id]);
        self.execute(op, url, "", None, None).await
    }

    /// The retry loop of one call.
    async fn execute<T: DeserializeOwned>(
        &self,
        op: Operation,
        url: Url,
        key: &str,
        key_header: Option<HeaderValue>,
        body: Option<Vec<u8>>,
    ) -> BankOutcome<T> {
        let started = Instant::now();
        let deadline = deadline_from(started, self.policy.deadline);
        let max_attempts = self.policy.max_attempts.max(1);
        let mut attempts: u32 = 0;
        let mut last_error = String::from("no attempt was made");

        // An attempt is given its whole timeout or is not made: one cut
        // short by the deadline would hang up while the bank may still be
        // working on it, and the operation's next caller (a retry on
        // another replica) could then meet it at the bank with the same
        // key. So every attempt ends, answered or given up, by the deadline,
        // and "slack" is how long this call may still wait for a slot or
        // sleep before the last attempt that fits.
        let attempt_timeout = self.policy.attempt_timeout;
        let outcome = loop {
            let Some(slack) = slack_before(deadline, attempt_timeout) else {
                break deadline_passed(attempts, last_error);
            };
            // The breaker first: an open circuit answers at once, before
            // waiting for a slot. The admission lives as long as the
            // attempt, and records its verdict (or, dropped by a cancelled
            // call, resolves a probe as failed).
            let admission = match self.shared.circuit.admit() {
                Ok(admission) => admission,
                Err(open) => break circuit_open(attempts, open.retry_after),
            };
            // Waiting for a slot counts against the deadline; the permit is
            // held for this attempt only, never during a backoff sleep.
            let permit = match tokio::time::timeout(slack, self.shared.permits.acquire()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => {
                    admission.not_sent();
                    break BankOutcome::Unknown(UnknownReason::AttemptsExhausted {
                        attempts,
                        last_error: "the in-flight limiter was closed".to_owned(),
                    });
                }
                Err(_elapsed) => {
                    admission.not_sent();
                    if attempts == 0 {
                        last_error = "no in-flight slot came free before the deadline".to_owned();
                    }
                    break deadline_passed(attempts, last_error);
                }
            };
            if slack_before(deadline, attempt_timeout).is_none() {
                drop(permit);
                admission.not_sent();
                break deadline_passed(attempts, last_error);
            }
            attempts += 1;
            let attempt_started = Instant::now();
            let (verdict, asked_to_wait) = {
                let _in_flight = InFlight::enter();
                let key_header = self.mutated_key(key_header.as_ref(), attempts);
                let verdict = self
                    .attempt::<T>(
                        op,
                        &url,
                        key_header.as_ref(),
                        body.as_deref(),
                        attempt_timeout,
                    )
                    .await;
                drop(permit);
                verdict
            };
            let elapsed_ms = millis(attempt_started.elapsed());
            let (result, status) = match &verdict {
                Attempt::Done(_) => (AttemptResult::Ok, None),
                Attempt::Refused(refusal) => (AttemptResult::Http4xx, Some(refusal.status)),
                Attempt::Transient { result, status, .. } => (*result, status.map(|s| s.as_u16())),
            };
            match &verdict {
                Attempt::Done(_) | Attempt::Refused(_) => admission.success(),
                // Neither way: the bank answered, but a bank that answers
                // every path so (a base URL that routes nowhere) must still
                // open the circuit on the money movements it refuses.
                Attempt::Transient {
                    result: AttemptResult::UnprovenRefusal,
                    ..
                } => admission.not_sent(),
                Attempt::Transient { .. } => admission.transient_failure(),
            }
            metrics::counter!(
                "gateway_bank_attempts_total",
                "operation" => op.name(),
                "result" => result.label(),
            )
            .increment(1);

            match verdict {
                Attempt::Done(value) => {
                    tracing::debug!(
                        operation = op.name(),
                        key,
                        path = url.path(),
                        attempt = attempts,
                        elapsed_ms,
                        "bank attempt succeeded"
                    );
                    break BankOutcome::Done(value);
                }
                Attempt::Refused(refusal) => {
                    tracing::info!(
                        operation = op.name(),
                        key,
                        path = url.path(),
                        attempt = attempts,
                        status = refusal.status,
                        code = refusal.code.as_str(),
                        elapsed_ms,
                        "bank refused"
                    );
                    break BankOutcome::Refused(refusal);
                }
                Attempt::Transient { error, .. } => {
                    tracing::warn!(
                        operation = op.name(),
                        key,
                        path = url.path(),
                        attempt = attempts,
                        status,
                        result = result.label(),
                        elapsed_ms,
                        error = %error,
                        "bank attempt failed; outcome unknown"
                    );
                    last_error = error;
                }
            }

            if attempts >= max_attempts {
                break BankOutcome::Unknown(UnknownReason::AttemptsExhausted {
                    attempts,
                    last_error,
                });
            }
            // No point sleeping towards an attempt the circuit will refuse.
            if let Err(open) = self.shared.circuit.check() {
                break circuit_open(attempts, open.retry_after);
            }
            let Some(slack) = slack_before(deadline, attempt_timeout) else {
                break deadline_passed(attempts, last_error);
            };
            // A bank (or the proxy in front of it) that said when to come
            // back is not asked sooner, and not again by this call if that
            // is past its deadline: the operation is left to recovery.
            if asked_to_wait.is_some_and(|wait| wait > slack) {
                break deadline_passed(attempts, last_error);
            }
            let sleep = {
                let mut rng = rand::rng();
                backoff(&self.policy, attempts, slack, &mut rng)
            }
            .max(asked_to_wait.unwrap_or_default());
            tokio::time::sleep(sleep).await;
            metrics::counter!("gateway_bank_retries_total", "operation" => op.name()).increment(1);
        };
        self.finish(op, key, started, outcome)
    }

    /// Records the call's metrics and final log line.
    fn finish<T>(
        &self,
        op: Operation,
        key: &str,
        started: Instant,
        outcome: BankOutcome<T>,
    ) -> BankOutcome<T> {
        let elapsed = started.elapsed();
        metrics::counter!(
            "gateway_bank_calls_total",
            "operation" => op.name(),
            "outcome" => outcome.label(),
        )
        .increment(1);
        metrics::histogram!("gateway_bank_call_duration_seconds", "operation" => op.name())
            .record(elapsed.as_secs_f64());
        match &outcome {
            BankOutcome::Done(_) | BankOutcome::Refused(_) => {
                tracing::debug!(
                    operation = op.name(),
                    key,
                    outcome = outcome.label(),
                    elapsed_ms = millis(elapsed),
                    "bank call finished"
                );
            }
            // Refused up front by an open circuit: the opening was logged
            // once; a line per refused call would flood the log.
            BankOutcome::Unknown(
                reason @ UnknownReason::CircuitOpen {
                    attempts: 0,
                    retry_after,
                },
            ) => {
                tracing::debug!(
                    operation = op.name(),
                    key,
                    outcome = outcome.label(),
                    retry_after_ms = millis(*retry_after),
                    reason = %reason,
                    "bank call refused: circuit open"
                );
            }
            BankOutcome::Unknown(reason) => {
                tracing::warn!(
                    operation = op.name(),
                    key,
                    outcome = outcome.label(),
                    attempts = reason.attempts(),
                    elapsed_ms = millis(elapsed),
                    reason = %reason,
                    "bank call ended without an answer"
                );
            }
        }
        outcome
    }

    /// The idempotency key an attempt sends: the operation's, always (but
    /// for the mutant that sends a fresh one per attempt).
    fn mutated_key(&self, key: Option<&HeaderValue>, attempt: u32) -> Option<HeaderValue> {
        let key = key?;
        if !self.faults.mutant(Mutant::FreshBankKeyPerRetry) {
            return Some(key.clone());
        }
        let fresh = format!("{}-{attempt}", key.to_str().unwrap_or_default());
        HeaderValue::from_str(&fresh).ok()
    }

    /// One HTTP exchange, bounded by `timeout` (connect, send, and the whole
    /// response body), classified; with the wait a 429 or a 503 asked for
    /// in its `Retry-After`.
    async fn attempt<T: DeserializeOwned>(
        &self,
        op: Operation,
        url: &Url,
        key: Option<&HeaderValue>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> (Attempt<T>, Option<Duration>) {
        let mut request = self
            .shared
            .http
            .request(op.method(), url.clone())
            .timeout(timeout)
            .header(ACCEPT, "application/json");
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_KEY, key.clone());
        }
        if let Some(instance) = &self.instance {
            request = request.header(INSTANCE_HEADER, instance.clone());
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let exchange = async {
            let response = request.send().await?;
            let status = response.status();
            let asked_to_wait = asked_to_wait(status, response.headers());
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes, asked_to_wait))
        };
        // reqwest's own timeout covers the same span; this one is a guard
        // that holds whatever reqwest does with the body.
        let verdict = match tokio::time::timeout(timeout, exchange).await {
            Err(_elapsed) => Attempt::Transient {
                result: AttemptResult::Timeout,
                status: None,
                error: format!("no complete response within {} ms", millis(timeout)),
            },
            Ok(Err(e)) => Attempt::Transient {
                result: if e.is_timeout() {
                    AttemptResult::Timeout
                } else if e.is_connect() {
                    AttemptResult::Connect
                } else {
                    AttemptResult::Other
                },
                status: e.status(),
                error: error_chain(&e),
            },
            Ok(Ok((status, bytes, asked_to_wait))) => {
                return (self.classify(op, status, &bytes), asked_to_wait);
            }
        };
        (verdict, None)
    }
}

/// The longest `Retry-After` honoured, in seconds: past it the call (and
/// any call) would give up anyway; a larger value is taken as this.
const MAX_RETRY_AFTER_SECONDS: u64 = 3_600;

/// The wait a 429 or a 503 asks for in `Retry-After`, in whole seconds (the
/// HTTP-date form is not honoured: it depends on two clocks agreeing).
fn asked_to_wait(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if !matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        return None;
    }
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(MAX_RETRY_AFTER_SECONDS)))
}

impl BankClient {
    /// [`classify`], or its pre-fix forms under a mutant: any 4xx refused,
    /// an authorization's 5xx refused, or a resolve's 404 taken without
    /// its mark.
    fn classify<T: DeserializeOwned>(
        &self,
        op: Operation,
        status: StatusCode,
        body: &[u8],
    ) -> Attempt<T> {
        let is_resolve = matches!(
            op,
            Operation::ResolveAuthorization | Operation::FindAuthorization
        );
        let refused_anyway = (status.is_client_error()
            && self.faults.mutant(Mutant::Any4xxIsDecline))
            || (status.is_server_error()
                && op == Operation::Authorize
                && self.faults.mutant(Mutant::ServerErrorIsDecline))
            || (is_resolve
                && status == StatusCode::NOT_FOUND
                && self.faults.mutant(Mutant::UnmarkedNotFoundIsNothing));
        if refused_anyway {
            return Attempt::Refused(refusal(status, body));
        }
        classify(op, status, body)
    }
}

/// The bank's answer, classified: 2xx done (or transient if the body does
/// not parse: a retry with the same key replays it), a refusal the bank's
/// contract documents for this operation refused, and anything else
/// (5xx, a 408 or 429 from a proxy, a 413, an HTML page, a code nobody
/// documented) transient: it proves nothing about what the bank did.
fn classify<T: DeserializeOwned>(op: Operation, status: StatusCode, body: &[u8]) -> Attempt<T> {
    if status.is_success() {
        match serde_json::from_slice::<T>(body) {
            Ok(value) => Attempt::Done(value),
            Err(e) => Attempt::Transient {
                result: AttemptResult::Other,
                status: Some(status),
                error: format!("HTTP {status} with a body that did not parse: {e}"),
            },
        }
    } else if status.is_client_error() {
        let refusal = refusal(status, body);
        if is_documented(op, refusal.status, &refusal.code) && vouched_for(op, body) {
            Attempt::Refused(refusal)
        } else {
            // A lookup the bank answers in its own words (an unmarked
            // `not_found` to a resolve it does not serve) shows it up. A
            // money movement refused so still counts toward the circuit: a
            // bank that refuses every one (a base URL that routes nowhere)
            // must open it, not answer every checkout 202.
            let in_its_own_words = !matches!(refusal.code, BankErrorCode::Other(_));
            let result = if in_its_own_words && op.is_lookup() {
                AttemptResult::UnprovenRefusal
            } else {
                AttemptResult::Undocumented4xx
            };
            Attempt::Transient {
                result,
                status: Some(status),
                error: format!(
                    "HTTP {} that the bank does not document: {refusal}",
                    status.as_u16()
                ),
            }
        }
    } else if status.is_server_error() {
        let code = serde_json::from_slice::<ErrorBody>(body)
            .map(|b| format!(" {}", b.error))
            .unwrap_or_default();
        Attempt::Transient {
            result: AttemptResult::Http5xx,
            status: Some(status),
            error: format!("HTTP {status}{code}"),
        }
    } else {
        Attempt::Transient {
            result: AttemptResult::Other,
            status: Some(status),
            error: format!("unexpected HTTP {status}"),
        }
    }
}

/// The refusals the bank's contract lists for each operation, each with its
/// status. Only these are definitive answers.
fn is_documented(op: Operation, status: u16, code: &BankErrorCode) -> bool {
    use BankErrorCode as C;
    let any_post = matches!(
        (status, code),
        (
            400,
            C::MissingIdempotencyKey | C::InvalidIdempotencyKey | C::InvalidRequest
        ) | (422, C::IdempotencyKeyReused)
    );
    let this_operation = match op {
        Operation::Authorize => matches!(
            (status, code),
            (
                400,
                C::InvalidCard | C::InvalidCvv | C::InvalidAmount | C::CardExpired
            ) | (402, C::InsufficientFunds)
        ),
        Operation::Capture => matches!(
            (status, code),
            (
                400,
                C::AuthorizationNotFound
                    | C::AuthorizationAlreadyUsed
                    | C::AuthorizationExpired
                    | C::AmountMismatch
                    | C::InvalidAmount
            )
        ),
        Operation::Void => matches!(
            (status, code),
            (
                400,
                C::AuthorizationNotFound | C::AuthorizationAlreadyUsed | C::AuthorizationExpired
            )
        ),
        Operation::Refund => matches!(
            (status, code),
            (
                400,
                C::CaptureNotFound | C::AlreadyRefunded | C::AmountMismatch | C::InvalidAmount
            )
        ),
        // A lookup has one refusal, the bank's own `not_found`: a 404 page
        // from something in front of the bank (a misrouted ingress, a
        // deploy) says nothing about the id.
        Operation::ResolveAuthorization
        | Operation::FindAuthorization
        | Operation::GetAuthorization
        | Operation::GetCapture
        | Operation::GetVoid
        | Operation::GetRefund => matches!((status, code), (404, C::NotFound)),
    };
    this_operation || (op.method() == Method::POST && any_post)
}

/// A resolve's 404 `not_found` is the bank's "that key created nothing"
/// only with the mark that says so (`"authorization_created": false`): the
/// same status and code answer any path the bank does not serve, so a bank
/// without the extension (or a version of it being deployed) would
/// otherwise have the gateway abandon an authorization the bank holds.
fn vouched_for(op: Operation, body: &[u8]) -> bool {
    match op {
        Operation::ResolveAuthorization | Operation::FindAuthorization => {
            serde_json::from_slice::<ErrorBody>(body)
                .is_ok_and(|b| b.authorization_created == Some(false))
        }
        Operation::Authorize
        | Operation::Capture
        | Operation::Void
        | Operation::Refund
        | Operation::GetAuthorization
        | Operation::GetCapture
        | Operation::GetVoid
        | Operation::GetRefund => true,
    }
}

fn refusal(status: StatusCode, body: &[u8]) -> Refusal {
    let status_text = || {
        status
            .canonical_reason()
            .unwrap_or(status.as_str())
            .to_owned()
    };
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => (BankErrorCode::parse(&parsed.error), parsed.message),
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            (BankErrorCode::Other(status_text()), text)
        }
    };
    Refusal {
        status: status.as_u16(),
        code,
        message,
    }
}

fn circuit_open<T>(attempts: u32, retry_after: Duration) -> BankOutcome<T> {
    BankOutcome::Unknown(UnknownReason::CircuitOpen {
        attempts,
        retry_after,
    })
}

fn deadline_passed<T>(attempts: u32, last_error: String) -> BankOutcome<T> {
    BankOutcome::Unknown(UnknownReason::DeadlinePassed {
        attempts,
        last_error,
    })
}

/// `started + deadline`, or a year from now for absurd deadlines.
fn deadline_from(started: Instant, deadline: Duration) -> Instant {
    started
        .checked_add(deadline)
        .or_else(|| started.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(started)
}

/// How long before a whole attempt of `attempt_timeout` no longer fits
/// before `deadline`, or `None` once it does not.
fn slack_before(deadline: Instant, attempt_timeout: Duration) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    left.checked_sub(attempt_timeout)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An error and its sources, e.g. "error sending request …: client error
/// (Connect): tcp connect error: Connection refused (os error 111)".
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_sorts_statuses() {
        let auth =
            br#"{"authorization_id":"auth_1","status":"approved","amount":5,"currency":"USD",
            "expires_at":"2030-01-08T10:00:00Z","created_at":"2030-01-01T10:00:00Z"}"#;
        assert!(matches!(
            classify::<Authorization>(Operation::Authorize, StatusCode::OK, auth),
            Attempt::Done(_)
        ));
        assert!(matches!(
            classify::<Authorization>(Operation::Authorize, StatusCode::OK, b"{\"half"),
            Attempt::Transient {
                result: AttemptResult::Other,
                ..
            }
        ));
        assert!(matches!(
            classify::<Authorization>(
                Operation::Authorize,
                StatusCode::SERVICE_UNAVAILABLE,
                b"{\"error\":\"internal_error\",\"message\":\"x\"}"
            ),
            Attempt::Transient {
                result: AttemptResult::Http5xx,
                ..
            }
        ));
        assert!(matches!(
            classify::<Authorization>(Operation::Authorize, StatusCode::NOT_MODIFIED, b""),
            Attempt::Transient {
                result: AttemptResult::Other,
                ..
            }
        ));
        let Attempt::Refused(refusal) = classify::<Authorization>(
            Operation::Authorize,
            StatusCode::PAYMENT_REQUIRED,
            br#"{"error":"insufficient_funds","message":"no money"}"#,
        ) else {
            panic!("a 402 is a refusal");
        };
        assert_eq!(refusal.code, BankErrorCode::InsufficientFunds);
        assert_eq!(refusal.message, "no money");
    }

    #[test]
    fn only_the_refusals_the_contract_documents_are_definitive() {
        let classified = |op, status: u16, body: &[u8]| {
            classify::<Authorization>(op, StatusCode::from_u16(status).unwrap(), body)
        };
        let error = |code: &str| format!(r#"{{"error":"{code}","message":"m"}}"#).into_bytes();
        let unknown = [
            (
                Operation::Capture,
                408,
                b"<html>Request Timeout</html>".to_vec(),
            ),
            (Operation::Capture, 429, error("rate_limited")),
            (Operation::Capture, 409, error("conflict")),
            (Operation::Capture, 425, b"<html>Too Early</html>".to_vec()),
            (Operation::Authorize, 413, error("payload_too_large")),
            (Operation::Capture, 400, error("something_new")),
            // Documented codes, but not for this operation or status.
            (Operation::Capture, 402, error("insufficient_funds")),
            (Operation::Authorize, 400, error("insufficient_funds")),
            (Operation::Refund, 400, error("authorization_expired")),
            // A lookup's 404 without the bank's own error object came from
            // whatever stands in front of the bank: it proves nothing.
            (Operation::GetCapture, 404, Vec::new()),
            (
                Operation::GetAuthorization,
                404,
                b"<html>Not Found</html>".to_vec(),
            ),
            // Resolve's 404 without the bank's mark: what a bank that does
            // not serve resolve answers for any path it does not know.
            (Operation::ResolveAuthorization, 404, error("not_found")),
            (Operation::FindAuthorization, 404, error("not_found")),
        ];
        for (op, status, body) in unknown {
            // A lookup answered in the bank's own words (one of its codes):
            // the bank is up.
            let expected = if op.is_lookup()
                && serde_json::from_slice::<ErrorBody>(&body).is_ok_and(|b| {
                    !matches!(BankErrorCode::parse(&b.error), BankErrorCode::Other(_))
                }) {
                AttemptResult::UnprovenRefusal
            } else {
                AttemptResult::Undocumented4xx
            };
            assert!(
                matches!(
                    classified(op, status, &body),
                    Attempt::Transient { result, .. } if result == expected
                ),
                "{op:?} {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let definitive = [
            (Operation::Authorize, 402, error("insufficient_funds")),
            (Operation::Authorize, 400, error("invalid_cvv")),
            (Operation::Capture, 400, error("amount_mismatch")),
            (Operation::Void, 400, error("authorization_already_used")),
            (Operation::Refund, 400, error("already_refunded")),
            (Operation::Capture, 422, error("idempotency_key_reused")),
            (Operation::Refund, 400, error("invalid_request")),
            (
                Operation::ResolveAuthorization,
                404,
                br#"{"error":"not_found","message":"m","authorization_created":false}"#.to_vec(),
            ),
            (Operation::GetAuthorization, 404, error("not_found")),
        ];
        for (op, status, body) in definitive {
            assert!(
                matches!(classified(op, status, &body), Attempt::Refused(_)),
                "{op:?} {status}"
            );
        }
    }

    #[test]
    fn unparseable_4xx_uses_the_status_text() {
        let r = refusal(StatusCode::BAD_REQUEST, b"<html>");
        assert_eq!(r.code, BankErrorCode::Other("Bad Request".to_owned()));
        let r = refusal(StatusCode::NOT_FOUND, b"");
        assert_eq!(r.code, BankErrorCode::Other("Not Found".to_owned()));
    }

    #[test]
    fn urls_are_built_under_the_base_path() {
        let policy = RetryPolicy::default();
        let circuit = CircuitSettings::default();
        let client = BankClient::new("http://127.0.0.1:8787", policy, 1, circuit).expect("client");
        assert_eq!(
            client.url(&["authorizations", "auth_1"]).as_str(),
            "http://127.0.0.1:8787/api/v1/authorizations/auth_1"
        );
        let client =
            BankClient::new("http://bank.local/prefix/", policy, 1, circuit).expect("client");
        assert_eq!(
            client.url(&["captures"]).as_str(),
            "http://bank.local/prefix/api/v1/captures"
        );
        // An id cannot climb out of its collection.
        assert_eq!(
            client.url(&["refunds", "../admin?x#y"]).as_str(),
            "http://bank.local/prefix/api/v1/refunds/..%2Fadmin%3Fx%23y"
        );
    }

    #[test]
    fn bad_configuration_is_refused() {
        let policy = RetryPolicy::default();
        let circuit = CircuitSettings::default();
        assert!(matches!(
            BankClient::new("http://127.0.0.1:8787", policy, 0, circuit),
            Err(BankClientError::ZeroMaxInFlight)
        ));
        assert!(matches!(
            BankClient::new("not a url", policy, 1, circuit),
            Err(BankClientError::InvalidBaseUrl { .. })
        ));
        assert!(matches!(
            BankClient::new("mailto:bank@example.com", policy, 1, circuit),
            Err(BankClientError::InvalidBaseUrl { .. })
        ));
    }
}
