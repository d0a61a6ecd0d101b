//! The client side of a run: FicMart's checkout (and a second merchant),
//! carrying out each [`PaymentPlan`] against the gateway replicas (round
//! robin, so that a retried key may reach another replica), and recording
//! every exchange for the invariant checks.
//!
//! Clients differ the way real ones do ([`ClientKind`]): a patient one
//! retries a key until its final answer, through the `ficmart-client`
//! crate ([`checkout`]); a poller leaves a key answered
//! 202 alone, polls the payment, goes on with new keys and sends the old
//! key again later, after the payment moved on; a restarter gives up on an
//! authorization answered 202 and starts over with a new key and the card.
//! Some misuse keys (the same key with another body) or send a wrong
//! amount; some send every key once more a few seconds after the flow.

mod checkout;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use client::PaymentId;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use serde_json::{Value, json};

use crate::bank::NewCard;
use crate::cards::random_card_number;
use crate::model::{self, Op};
use crate::scenario::{ClientKind, Duplicate, Misuse, Next, PaymentPlan, PlanKind, Step};
use crate::stats::{micros, millis};

/// A key is retried until it gets a final answer, or for this long.
pub const KEY_BUDGET: Duration = Duration::from_secs(90);
/// Each HTTP attempt gets this long (the gateway answers 202 at its own
/// bank deadline, well before).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A poller looks at its payment this often.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long a simulation's gateways keep a key after its answer: the
/// `--idempotency-retention-seconds` of `run::GATEWAY_SETTINGS`. Past it
/// the key may be purged, and the same key starts anew, as it should.
pub const KEY_RETENTION: Duration = Duration::from_secs(15);
/// A key is sent again only while this much of its retention is left:
/// the client's clock and the gateway's purge are not in lockstep.
const RETENTION_MARGIN: Duration = Duration::from_secs(2);
/// A hedger sends a key again when its request has not answered in this
/// long: past the gateway's bank deadline (3 s), so only a request that is
/// stuck (paused, or its process gone) is hedged.
pub const HEDGE_AFTER: Duration = Duration::from_millis(3_500);
/// Late replays come this long after the flow, at most.
pub const LATE_REPLAY_MAX: Duration = Duration::from_millis(3_000);

/// What one HTTP attempt got.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    Http {
        status: u16,
        /// `Idempotent-Replayed: true`.
        replayed: bool,
        /// The `Retry-After` header, as sent.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<String>,
        body: String,
    },
    /// No response: refused connection (a replica is down), reset, timeout.
    Transport { error: String },
}

impl Answer {
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Http { status, .. } => Some(*status),
            Answer::Transport { .. } => None,
        }
    }

    /// The body, when there is one and it is JSON.
    pub fn json(&self) -> Option<Value> {
        match self {
            Answer::Http { body, .. } => serde_json::from_str(body).ok(),
            Answer::Transport { .. } => None,
        }
    }
}

/// One HTTP attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub op: Op,
    pub key: String,
    /// 0 for the key's own request; 1 for the same key sent with another
    /// body (a misuse, which must be refused with 422).
    pub variant: u8,
    /// Which merchant's API key sent it.
    pub merchant: u8,
    /// The payment in its path (an operation's): the one its answer must
    /// be about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<String>,
    /// Milliseconds since the traffic started.
    pub at_ms: u64,
    pub latency_us: u64,
    pub answer: Answer,
}

impl Exchange {
    pub fn status(&self) -> Option<u16> {
        self.answer.status()
    }

    pub fn json(&self) -> Option<Value> {
        self.answer.json()
    }

    /// The `error.code` of an error body.
    pub fn error_code(&self) -> Option<String> {
        Some(self.json()?["error"]["code"].as_str()?.to_owned())
    }

    /// A final answer ends the key's retries: everything but 202, 408 (the
    /// request did not arrive whole in time, so the key was never read),
    /// 409 `idempotency_key_in_use`, 429, 503, and no answer at all. (A 500
    /// is final too: it is a bug the checks report, not a state to wait
    /// out.)
    pub fn is_final(&self) -> bool {
        match self.status() {
            None | Some(202 | 408 | 429 | 503) => false,
            Some(409) => self.error_code().as_deref() != Some("idempotency_key_in_use"),
            Some(_) => true,
        }
    }

    /// One line for a report: `+1234ms capture k…-7-cap → 409 invalid_state (replayed)`.
    pub fn describe(&self) -> String {
        let answer = match &self.answer {
            Answer::Http {
                status, replayed, ..
            } => {
                let detail = self
                    .error_code()
                    .or_else(|| Some(self.json()?["status"].as_str()?.to_owned()))
                    .unwrap_or_default();
                let replayed = if *replayed { " (replayed)" } else { "" };
                format!("{status} {detail}{replayed}")
            }
            Answer::Transport { error } => format!("no answer: {error}"),
        };
        let variant = if self.variant == 0 {
            ""
        } else {
            " [another body]"
        };
        format!(
            "+{}ms {} {}{variant} → {answer}",
            self.at_ms, self.op, self.key
        )
    }
}

/// Which read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadKind {
    /// `GET /v1/payments/{id}`.
    Read,
    /// `GET /v1/payments?order_id=…`.
    List,
    /// `GET /v1/payments/{id}` with another merchant's key: must be 404.
    Foreign,
    /// `GET /v1/payments?order_id=…` with another merchant's key: must list
    /// none of the order's payments.
    ForeignList,
    /// A capture, void or refund of the payment with another merchant's
    /// key (and a key of its own): must be 404, the payment untouched.
    ForeignOperation(Op),
}

/// One read attempt (no key, no retries): what the gateway showed.
#[derive(Debug, Clone, Serialize)]
pub struct Read {
    pub kind: ReadKind,
    /// Where the plan was: after which step (`authorize`, `capture`, …) or `end`.
    pub after: String,
    /// The payment read (for a read of one).
    pub payment_id: Option<String>,
    /// Milliseconds since the traffic started.
    pub at_ms: u64,
    pub latency_us: u64,
    pub answer: Answer,
}

impl Read {
    pub fn status(&self) -> Option<u16> {
        self.answer.status()
    }

    pub fn json(&self) -> Option<Value> {
        self.answer.json()
    }

    /// The payments a read answered 200 showed: the one it read, or a
    /// list's.
    pub fn payments_shown(&self) -> Vec<Value> {
        if self.status() != Some(200) {
            return Vec::new();
        }
        let body = self.json().unwrap_or_default();
        match self.kind {
            ReadKind::Read | ReadKind::Foreign | ReadKind::ForeignOperation(_) => vec![body],
            ReadKind::List | ReadKind::ForeignList => {
                body["data"].as_array().cloned().unwrap_or_default()
            }
        }
    }

    /// One line for a report: `+1234ms read after capture → 200 captured`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            ReadKind::Read => "read".to_owned(),
            ReadKind::List => "list".to_owned(),
            ReadKind::Foreign => "read by another merchant".to_owned(),
            ReadKind::ForeignList => "list by another merchant".to_owned(),
            ReadKind::ForeignOperation(op) => format!("{op} by another merchant"),
        };
        let answer = match &self.answer {
            Answer::Http { status, .. } => {
                let body = self.json().unwrap_or_default();
                let detail = body["error"]["code"]
                    .as_str()
                    .or_else(|| body["status"].as_str())
                    .map(str::to_owned)
                    .or_else(|| {
                        let n = body["data"].as_array()?.len();
                        Some(format!("{n} payment(s)"))
                    })
                    .unwrap_or_default();
                format!("{status} {detail}")
            }
            Answer::Transport { error } => format!("no answer: {error}"),
        };
        format!("+{}ms {kind} after {} → {answer}", self.at_ms, self.after)
    }
}

/// Everything the client did for one plan.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRecord {
    pub index: usize,
    pub order_id: String,
    pub plan: PaymentPlan,
    /// The card authorized against, when it is one of the run's own.
    pub card_number: Option<String>,
    /// The payment the flow went on with, learnt from an answer.
    pub payment_id: Option<String>,
    /// Every payment the flow's answers named (a restarter makes two).
    pub payment_ids: Vec<String>,
    pub exchanges: Vec<Exchange>,
    /// The plan's reads (when it has them), in order.
    pub reads: Vec<Read>,
    /// Keys that got no final answer within [`KEY_BUDGET`].
    pub unanswered: Vec<String>,
    /// Authorization keys the client stopped retrying while their answer
    /// was unknown (a poller's, a restarter's): only these may end
    /// abandoned.
    pub left_alone: Vec<String>,
    /// The card number and CVV the authorization sent (whatever the plan:
    /// an invalid or unknown number too), for the card-data check; never
    /// serialised.
    #[serde(skip)]
    pub sent_card: (String, String),
    /// Every request the flow sent (each key and body once): for late
    /// replays, and for the check that no digest of one is stored; never
    /// serialised (bodies hold card numbers).
    #[serde(skip)]
    pub sent: Vec<Request>,
    /// The earliest each key (and body variant) may have been answered by
    /// the gateway, as far as the client can tell: a key is sent again only
    /// within its retention from then. For a key answered to the client,
    /// that is when it was first sent (the gateway, or its recovery worker,
    /// may have stored the answer long before the client saw it); for a
    /// key whose payment a poller saw settle, just before that moment.
    #[serde(skip)]
    pub answered_at: Vec<(String, u8, Instant)>,
    /// The last moment each key (and variant) was known to be unanswered:
    /// when it was first sent, or a later 202 or `idempotency_key_in_use`
    /// for it. Its answer, if any, was stored after that.
    #[serde(skip)]
    pub unanswered_at: Vec<(String, u8, Instant)>,
    /// When a restarter gave up on its first authorization (answered 202).
    #[serde(skip)]
    pub restarted_at: Option<Instant>,
    /// A hedger's first attempts still out when it went on without them.
    #[serde(skip)]
    pub hedged: Hedged,
}

/// Attempts a flow went on without; their answers join the flow's at its end.
#[derive(Debug, Clone, Default)]
pub struct Hedged(std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<Exchange>>>>);

impl Hedged {
    fn push(&self, attempt: tokio::task::JoinHandle<Exchange>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(attempt);
    }

    /// Every hedged attempt's answer, once each has one.
    async fn answers(&self) -> Vec<Exchange> {
        let out: Vec<_> = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let mut answers = Vec::with_capacity(out.len());
        for attempt in out {
            if let Ok(exchange) = attempt.await {
                answers.push(exchange);
            }
        }
        answers
    }
}

impl FlowRecord {
    /// The key was answered at the latest `at`.
    fn answered(&mut self, key: &str, variant: u8, at: Instant) {
        self.answered_at.push((key.to_owned(), variant, at));
    }

    /// The key is not answered yet, as of now.
    fn still_unanswered(&mut self, key: &str, variant: u8) {
        self.unanswered_as_of(key, variant, Instant::now());
    }

    /// The key was not answered yet at `now`.
    fn unanswered_as_of(&mut self, key: &str, variant: u8, now: Instant) {
        match self
            .unanswered_at
            .iter_mut()
            .find(|(k, v, _)| k == key && *v == variant)
        {
            Some((_, _, at)) => *at = now,
            None => self.unanswered_at.push((key.to_owned(), variant, now)),
        }
    }

    /// The last moment the key was known to be unanswered.
    fn last_unanswered(&self, key: &str, variant: u8) -> Option<Instant> {
        self.unanswered_at
            .iter()
            .find(|(k, v, _)| k == key && *v == variant)
            .map(|(_, _, at)| *at)
    }

    /// Until when `key` may be sent again safely: within its retention
    /// from the earliest moment it may have been answered, which is the
    /// last moment it was known unanswered (the gateway, or its recovery
    /// worker, may store the answer while the client hears nothing) unless
    /// a later moment is known; `None` before it is first sent.
    fn replayable_until(&self, key: &str, variant: u8) -> Option<Instant> {
        self.answered_at
            .iter()
            .filter(|(k, v, _)| k == key && *v == variant)
            .map(|(_, _, at)| *at)
            .min()
            .or_else(|| self.last_unanswered(key, variant))
            .map(|at| at + KEY_RETENTION - RETENTION_MARGIN)
    }

    fn learn_payment(&mut self, exchange: &Exchange) {
        let Some(id) = exchange.json().and_then(|v| payment_id_in(&v)) else {
            return;
        };
        if !self.payment_ids.contains(&id) {
            self.payment_ids.push(id.clone());
        }
        if self.payment_id.is_none() {
            self.payment_id = Some(id);
        }
    }
}

/// One request of a flow: what to send, with which key, to which path.
#[derive(Debug, Clone)]
pub struct Request {
    pub op: Op,
    pub path: String,
    pub key: String,
    pub body: String,
    /// As [`Exchange::variant`].
    pub variant: u8,
}

impl Request {
    /// The payment of `/v1/payments/{id}/{operation}`.
    pub fn payment(&self) -> Option<PaymentId> {
        let id = self.path.strip_prefix("/v1/payments/")?.split('/').next()?;
        PaymentId::parse(id).ok()
    }

    /// The same key sent again as another request (a client's mistake,
    /// which must answer 422): a capture's as a void of the same payment
    /// and the reverse, with the same body, so that only the path tells
    /// the two apart; any other with another amount.
    fn misused(&self) -> Request {
        let other = match self.op {
            Op::Capture => Some(Op::Void),
            Op::Void => Some(Op::Capture),
            Op::Authorize | Op::Refund => None,
        };
        let (op, path, body) = match (other, self.path.rsplit_once('/')) {
            (Some(other), Some((payment, _))) => (
                other,
                format!("{payment}/{}", other.as_str()),
                self.body.clone(),
            ),
            _ => (self.op, self.path.clone(), altered(&self.body)),
        };
        Request {
            op,
            path,
            key: self.key.clone(),
            body,
            variant: 1,
        }
    }
}

/// The gateways, the merchants' keys, and the run's counters.
pub struct Driver {
    http: reqwest::Client,
    gateways: Vec<String>,
    /// One API key per merchant; the first is FicMart's.
    api_keys: Vec<String>,
    next_gateway: AtomicUsize,
    started: Instant,
    /// The same moment on the wall clock, to place the gateways' log lines.
    started_at: chrono::DateTime<chrono::Utc>,
    pub requests: AtomicU64,
    /// Of them, those the crate sent for patient clients.
    pub requests_through_client: AtomicU64,
    pub flows_done: AtomicU64,
    run_id: String,
    cards: Vec<NewCard>,
    empty_card: NewCard,
    /// The patient clients: the crate's, one per merchant.
    checkouts: checkout::Checkouts,
}

impl Driver {
    pub fn new(
        gateways: Vec<String>,
        api_keys: Vec<String>,
        run_id: String,
        cards: Vec<NewCard>,
        empty_card: NewCard,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!api_keys.is_empty(), "at least one merchant's API key");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency * 2)
            .timeout(ATTEMPT_TIMEOUT)
            .build()?;
        let checkouts = checkout::Checkouts::new(&gateways, &api_keys)?;
        Ok(Self {
            http,
            checkouts,
            gateways,
            api_keys,
            next_gateway: AtomicUsize::new(0),
            started: Instant::now(),
            started_at: chrono::Utc::now(),
            requests: AtomicU64::new(0),
            requests_through_client: AtomicU64::new(0),
            flows_done: AtomicU64::new(0),
            run_id,
            cards,
            empty_card,
        })
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the traffic's clock started, on the wall clock.
    pub fn started_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.started_at
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// FicMart's API key.
    pub fn api_key(&self) -> &str {
        &self.api_keys[0]
    }

    /// The API key of merchant `merchant` (0 is FicMart).
    pub fn key_of(&self, merchant: u8) -> &str {
        &self.api_keys[usize::from(merchant) % self.api_keys.len()]
    }

    /// `path` at the next replica, round robin; counts the request.
    fn next_url(&self, path: &str) -> String {
        let i = self.next_gateway.fetch_add(1, Ordering::Relaxed) % self.gateways.len();
        self.requests.fetch_add(1, Ordering::Relaxed);
        format!("{}{path}", self.gateways[i])
    }

    /// One attempt, at the next replica.
    async fn attempt(&self, merchant: u8, request: &Request) -> Exchange {
        self.attempt_owned(merchant, request).await
    }

    /// [`Self::attempt`] as a future that borrows nothing, to be spawned.
    fn attempt_owned(
        &self,
        merchant: u8,
        request: &Request,
    ) -> impl std::future::Future<Output = Exchange> + Send + 'static {
        let url = self.next_url(&request.path);
        let at = self.started.elapsed();
        let post = self
            .http
            .post(&url)
            .bearer_auth(self.key_of(merchant))
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &request.key)
            .body(request.body.clone());
        let (op, key, variant) = (request.op, request.key.clone(), request.variant);
        let payment = request.payment().map(|id| id.to_string());
        async move {
            let sent = Instant::now();
            let answer = answer(post.send().await).await;
            Exchange {
                op,
                key,
                variant,
                merchant,
                payment,
                at_ms: millis(at),
                latency_us: micros(sent.elapsed()),
                answer,
            }
        }
    }

    /// A hedger's first attempt of a key: the answer if it comes within
    /// [`HEDGE_AFTER`]; otherwise the attempt is left running (its answer
    /// joins the flow's at the end) and `None` says to send the key again.
    async fn hedged_attempt(&self, record: &FlowRecord, request: &Request) -> Option<Exchange> {
        let mut first = tokio::spawn(self.attempt_owned(record.plan.merchant, request));
        match tokio::time::timeout(HEDGE_AFTER, &mut first).await {
            Ok(Ok(exchange)) => Some(exchange),
            Ok(Err(_)) => None,
            Err(_) => {
                record.hedged.push(first);
                None
            }
        }
    }

    /// Sends `request` until a final answer (returned), or, when
    /// `stop_at_202`, until a 202 (returned too), or [`KEY_BUDGET`].
    async fn until_final(
        &self,
        record: &mut FlowRecord,
        request: &Request,
        stop_at_202: bool,
    ) -> Option<Exchange> {
        if !record
            .sent
            .iter()
            .any(|sent| sent.key == request.key && sent.variant == request.variant)
        {
            record.sent.push(request.clone());
        }
        if !stop_at_202 && checkout::goes_through_client(record, request) {
            return self.until_final_through_client(record, request).await;
        }
        let deadline = Instant::now() + KEY_BUDGET;
        let mut backoff = BACKOFF_START;
        loop {
            if record
                .replayable_until(&request.key, request.variant)
                .is_some_and(|until| Instant::now() > until)
            {
                // Past its retention the key may be gone: sending it would
                // start a new operation, which is the client's doing.
                return None;
            }
            if record
                .last_unanswered(&request.key, request.variant)
                .is_none()
            {
                record.still_unanswered(&request.key, request.variant);
            }
            let first_of_key = !record
                .exchanges
                .iter()
                .any(|e| e.key == request.key && e.variant == request.variant);
            let exchange = if record.plan.client == ClientKind::Hedger && first_of_key {
                match self.hedged_attempt(record, request).await {
                    Some(exchange) => exchange,
                    None => continue,
                }
            } else {
                self.attempt(record.plan.merchant, request).await
            };
            record.learn_payment(&exchange);
            record.exchanges.push(exchange.clone());
            if exchange.is_final() {
                if let Some(at) = record.last_unanswered(&request.key, request.variant) {
                    record.answered(&request.key, request.variant, at);
                }
                return Some(exchange);
            }
            if exchange.status() == Some(202) || exchange.status() == Some(409) {
                record.still_unanswered(&request.key, request.variant);
            }
            if stop_at_202 && exchange.status() == Some(202) {
                return Some(exchange);
            }
            if Instant::now() + backoff > deadline {
                record.unanswered.push(request.key.clone());
                return None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Sends one step of a plan as its client would, with the duplicate and
    /// the misuse the plan asks for; the step's final answer, if any.
    async fn step(
        &self,
        record: &mut FlowRecord,
        step: Step,
        request: Request,
        left_alone: &mut Vec<Request>,
    ) -> Option<Exchange> {
        let last = match record.plan.duplicate {
            Duplicate::Concurrent(s) if s == step => {
                let mut twin = record.clone();
                twin.exchanges.clear();
                twin.unanswered.clear();
                twin.sent.clear();
                twin.answered_at.clear();
                twin.unanswered_at.clear();
                let (a, b) = futures_util::join!(
                    self.until_final(record, &request, false),
                    self.until_final(&mut twin, &request, false)
                );
                record.exchanges.extend(twin.exchanges);
                record.unanswered.extend(twin.unanswered);
                record.answered_at.extend(twin.answered_at);
                a.or(b)
            }
            Duplicate::Sequential(s) if s == step => {
                let first = self.until_final(record, &request, false).await;
                if first.is_some() {
                    self.until_final(record, &request, false).await;
                }
                first
            }
            Duplicate::None | Duplicate::Concurrent(_) | Duplicate::Sequential(_) => {
                let patient = record.plan.client == ClientKind::Patient;
                let watch = self.watch(record);
                let (answer, watched) =
                    futures_util::join!(self.until_final(record, &request, !patient), watch);
                record.reads.extend(watched);
                match answer {
                    Some(pending) if pending.status() == Some(202) => {
                        // The keys it let be earlier, sent again while this
                        // one is in flight (a client's queue of pending
                        // keys): each must answer for itself only.
                        for earlier in left_alone.clone() {
                            self.until_final(record, &earlier, true).await;
                        }
                        left_alone.push(request.clone());
                        // The key misused while its first request is in
                        // flight (a client's bug that meets a live lease):
                        // still 422, not 409 in use, nor a takeover.
                        if record.plan.misuse == Misuse::ReusedKey(step) {
                            self.until_final(record, &request.misused(), false).await;
                        }
                        let in_flight_at = Instant::now();
                        if let Some(at) = self.until_settled(record, request.op, in_flight_at).await
                        {
                            record.answered(&request.key, request.variant, at);
                        }
                        None
                    }
                    other => other,
                }
            }
        };
        if record.plan.misuse == Misuse::ReusedKey(step) && last.is_some() {
            self.until_final(record, &request.misused(), false).await;
        }
        self.read(record, request.op.as_str()).await;
        last
    }

    /// A poller's wait: reads the payment until it leaves its in-flight
    /// status (bounded by [`KEY_BUDGET`]). When it did: the last moment the
    /// client knew it in flight (`in_flight_at`, or a later read), the
    /// earliest its operation may have been settled and its key answered.
    async fn until_settled(
        &self,
        record: &mut FlowRecord,
        op: Op,
        mut in_flight_at: Instant,
    ) -> Option<Instant> {
        let id = record.payment_id.clone()?;
        let deadline = Instant::now() + KEY_BUDGET;
        while Instant::now() < deadline {
            let sent = Instant::now();
            let read = self
                .probe(record.plan.merchant, ReadKind::Read, &id, op.as_str())
                .await;
            let status = read
                .json()
                .and_then(|p| p["status"].as_str().and_then(model::status));
            match status {
                Some(status) if model::is_settled(status) => {
                    record.reads.push(read);
                    return Some(in_flight_at);
                }
                Some(_) => in_flight_at = sent,
                None => {}
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        None
    }

    /// When the plan reads and the payment id is known: one
    /// `GET /v1/payments/{id}`, recorded.
    async fn read(&self, record: &mut FlowRecord, after: &str) {
        if !record.plan.reads {
            return;
        }
        let Some(id) = record.payment_id.clone() else {
            return;
        };
        let read = self
            .probe(record.plan.merchant, ReadKind::Read, &id, after)
            .await;
        record.reads.push(read);
    }

    /// For a plan with reads, a read of the payment while the step's
    /// request is in flight (a little after it is sent, about when the
    /// bank answers): a read must never show a payment half moved.
    fn watch(&self, record: &FlowRecord) -> impl std::future::Future<Output = Option<Read>> + '_ {
        let target = record
            .plan
            .reads
            .then(|| record.payment_id.clone())
            .flatten();
        let merchant = record.plan.merchant;
        async move {
            let id = target?;
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..=100))).await;
            Some(self.probe(merchant, ReadKind::Read, &id, "during").await)
        }
    }

    /// One attempt of a read, or of another merchant's operation (which
    /// must find nothing), at the next replica: `id` is the payment's, or
    /// for a list the order's.
    async fn probe(&self, merchant: u8, kind: ReadKind, id: &str, after: &str) -> Read {
        let path = match kind {
            ReadKind::Read | ReadKind::Foreign => format!("/v1/payments/{id}"),
            ReadKind::List | ReadKind::ForeignList => {
                format!("/v1/payments?order_id={id}&limit=100")
            }
            ReadKind::ForeignOperation(op) => format!("/v1/payments/{id}/{}", op.as_str()),
        };
        let url = self.next_url(&path);
        let at = self.started.elapsed();
        let sent = Instant::now();
        let request = match kind {
            ReadKind::ForeignOperation(op) => self
                .http
                .post(&url)
                .header("Idempotency-Key", format!("{id}-foreign-{}", op.as_str()))
                .json(&json!({})),
            ReadKind::Read | ReadKind::List | ReadKind::Foreign | ReadKind::ForeignList => {
                self.http.get(&url)
            }
        };
        let result = request.bearer_auth(self.key_of(merchant)).send().await;
        let answer = answer(result).await;
        let of_payment = !matches!(kind, ReadKind::List | ReadKind::ForeignList);
        Read {
            kind,
            after: after.to_owned(),
            payment_id: of_payment.then(|| id.to_owned()),
            at_ms: millis(at),
            latency_us: micros(sent.elapsed()),
            answer,
        }
    }

    /// A capture, void or refund of the flow's payment, with its own key.
    fn operation(
        &self,
        record: &FlowRecord,
        op: Op,
        key_suffix: &str,
        amount: i64,
    ) -> Option<Request> {
        let payment_id = record.payment_id.as_deref()?;
        Some(Request {
            op,
            path: format!("/v1/payments/{payment_id}/{}", op.as_str()),
            key: format!("{}-{key_suffix}", record.order_id),
            body: json!({ "amount": amount }).to_string(),
            variant: 0,
        })
    }

    async fn operate(
        &self,
        record: &mut FlowRecord,
        step: Step,
        op: Op,
        key_suffix: &str,
        left_alone: &mut Vec<Request>,
    ) -> Option<Exchange> {
        if record.plan.misuse == Misuse::AmountMismatch && matches!(op, Op::Capture | Op::Refund) {
            let wrong = self.operation(
                record,
                op,
                &format!("{key_suffix}-wrong"),
                record.plan.amount + 1,
            )?;
            self.until_final(record, &wrong, false).await;
        }
        let request = self.operation(record, op, key_suffix, record.plan.amount)?;
        self.step(record, step, request, left_alone).await
    }

    /// Carries out plan `index`.
    pub async fn run_flow(&self, index: usize, plan: PaymentPlan) -> FlowRecord {
        let mut record = FlowRecord {
            index,
            order_id: format!("ord_{}_{index}", self.run_id),
            plan,
            card_number: None,
            payment_id: None,
            payment_ids: Vec::new(),
            exchanges: Vec::new(),
            reads: Vec::new(),
            unanswered: Vec::new(),
            left_alone: Vec::new(),
            sent_card: (String::new(), String::new()),
            sent: Vec::new(),
            answered_at: Vec::new(),
            unanswered_at: Vec::new(),
            restarted_at: None,
            hedged: Hedged::default(),
        };
        let authorize = self.authorization(&mut record);
        let mut left_alone = Vec::new();
        let authorized = self
            .authorize(&mut record, authorize, &mut left_alone)
            .await;
        if authorized {
            self.after_authorization(&mut record, &mut left_alone).await;
        }
        self.finish(&mut record, left_alone).await;
        self.flows_done.fetch_add(1, Ordering::Relaxed);
        record
    }

    /// The authorization request of the plan (a valid card, or the wrong
    /// one the plan asks for).
    fn authorization(&self, record: &mut FlowRecord) -> Request {
        let plan = record.plan;
        let card = &self.cards[usize::from(plan.card) % self.cards.len()];
        let (number, cvv, amount) = match plan.kind {
            PlanKind::BadAmount => (card.card_number.clone(), card.cvv.clone(), 0),
            PlanKind::BadCard => (
                luhn_broken(&card.card_number),
                card.cvv.clone(),
                plan.amount,
            ),
            PlanKind::UnknownCard => (
                random_card_number(&mut rand::rng()),
                "123".to_owned(),
                plan.amount,
            ),
            PlanKind::Overdraw => (
                self.empty_card.card_number.clone(),
                self.empty_card.cvv.clone(),
                plan.amount,
            ),
            PlanKind::Normal { .. }
            | PlanKind::Conflict
            | PlanKind::EarlyRefund
            | PlanKind::CaptureRefundRace
            | PlanKind::VoidRefundRace => (card.card_number.clone(), card.cvv.clone(), plan.amount),
        };
        // A bad amount is sent with a run's own card: its key reused with
        // another body (amount 1) authorizes against it.
        if !matches!(plan.kind, PlanKind::BadCard | PlanKind::UnknownCard) {
            record.card_number = Some(number.clone());
        }
        record.sent_card = (number.clone(), cvv.clone());
        let body = checkout::authorization_body(&client::AuthorizeRequest::usd(
            record.order_id.clone(),
            format!("cus_{}_{}", self.run_id, plan.customer),
            amount,
            client::Card::new(number, cvv, 12, 2099),
        ));
        Request {
            op: Op::Authorize,
            path: "/v1/payments".to_owned(),
            key: format!("{}-auth", record.order_id),
            body,
            variant: 0,
        }
    }

    /// The authorization, as the plan's client makes it; whether the payment
    /// the flow goes on with is authorized.
    async fn authorize(
        &self,
        record: &mut FlowRecord,
        request: Request,
        left_alone: &mut Vec<Request>,
    ) -> bool {
        if record.plan.client != ClientKind::Restarter {
            let answer = self
                .step(record, Step::Authorize, request, left_alone)
                .await;
            return answer.is_some_and(|e| e.status() == Some(201))
                || self.shows(record, gateway::domain::PaymentStatus::Authorized);
        }
        // A restarter: one try; on a 202 it starts over with a new key.
        let first = self.until_final(record, &request, true).await;
        if first.as_ref().is_none_or(|e| e.status() != Some(202)) {
            self.read(record, "authorize").await;
            return first.is_some_and(|e| e.status() == Some(201));
        }
        left_alone.push(request.clone());
        record.restarted_at = Some(Instant::now());
        record.payment_id = None;
        let again = Request {
            key: format!("{}-auth-again", record.order_id),
            ..request
        };
        let answer = self.until_final(record, &again, false).await;
        if let Some(id) = answer
            .as_ref()
            .and_then(|e| e.json())
            .and_then(|v| payment_id_in(&v))
        {
            record.payment_id = Some(id);
        }
        self.read(record, "authorize").await;
        answer.is_some_and(|e| e.status() == Some(201))
    }

    /// Whether the last read showed the flow's payment in `status` (a
    /// poller learns of an authorization by reading).
    fn shows(&self, record: &FlowRecord, status: gateway::domain::PaymentStatus) -> bool {
        record.reads.last().is_some_and(|read| {
            read.json()
                .is_some_and(|p| p["status"].as_str() == Some(status.as_str()))
        })
    }

    async fn after_authorization(&self, record: &mut FlowRecord, left_alone: &mut Vec<Request>) {
        match record.plan.kind {
            PlanKind::Normal { next, refund } => match next {
                Next::Nothing => {}
                Next::Capture => {
                    let captured = self
                        .operate(record, Step::Second, Op::Capture, "capture", left_alone)
                        .await
                        .is_some_and(|e| e.status() == Some(200))
                        || self.shows(record, gateway::domain::PaymentStatus::Captured);
                    if captured && refund {
                        self.operate(record, Step::Refund, Op::Refund, "refund", left_alone)
                            .await;
                    }
                }
                Next::Void => {
                    self.operate(record, Step::Second, Op::Void, "void", left_alone)
                        .await;
                }
            },
            PlanKind::Conflict => {
                self.at_once(record, (Op::Capture, "capture"), (Op::Void, "void"))
                    .await;
            }
            PlanKind::EarlyRefund => {
                self.operate(record, Step::Refund, Op::Refund, "refund-early", left_alone)
                    .await;
                self.operate(record, Step::Second, Op::Void, "void", left_alone)
                    .await;
            }
            PlanKind::CaptureRefundRace => {
                let captured = self
                    .at_once(
                        record,
                        (Op::Capture, "capture"),
                        (Op::Refund, "refund-racing"),
                    )
                    .await
                    .0;
                if captured.is_some_and(|e| e.status() == Some(200)) {
                    self.operate(record, Step::Refund, Op::Refund, "refund", left_alone)
                        .await;
                }
            }
            PlanKind::VoidRefundRace => {
                self.at_once(record, (Op::Void, "void"), (Op::Refund, "refund-racing"))
                    .await;
            }
            PlanKind::BadAmount
            | PlanKind::BadCard
            | PlanKind::UnknownCard
            | PlanKind::Overdraw => {}
        }
    }

    /// Two operations on the payment at the same moment, each with its own
    /// key, as two clients would send them; both final answers.
    async fn at_once(
        &self,
        record: &mut FlowRecord,
        (a_op, a_key): (Op, &str),
        (b_op, b_key): (Op, &str),
    ) -> (Option<Exchange>, Option<Exchange>) {
        let amount = record.plan.amount;
        let (Some(a), Some(b)) = (
            self.operation(record, a_op, a_key, amount),
            self.operation(record, b_op, b_key, amount),
        ) else {
            return (None, None);
        };
        let mut other = record.clone();
        other.exchanges.clear();
        other.unanswered.clear();
        other.reads.clear();
        other.sent.clear();
        other.answered_at.clear();
        other.unanswered_at.clear();
        let answers = futures_util::join!(
            self.until_final(record, &a, false),
            self.until_final(&mut other, &b, false),
        );
        record.exchanges.extend(other.exchanges);
        record.unanswered.extend(other.unanswered);
        record.sent.extend(other.sent);
        record.answered_at.extend(other.answered_at);
        answers
    }

    /// The end of a flow: keys left alone are sent again (a restarter voids
    /// its first payment should it have ended authorized), the payment is
    /// read (and listed, and read by the other merchant), and, for a late
    /// replay, every key is sent once more a little later.
    async fn finish(&self, record: &mut FlowRecord, left_alone: Vec<Request>) {
        if record.plan.client == ClientKind::Restarter {
            let first_key = left_alone.first().map(|r| (r.key.clone(), r.variant));
            if let Some(at) = self.void_first_payment(record).await
                && let Some((key, variant)) = first_key
            {
                record.answered(&key, variant, at);
            }
        }
        for request in &left_alone {
            if request.op == Op::Authorize {
                record.left_alone.push(request.key.clone());
            }
            self.until_final(record, request, false).await;
        }
        self.read(record, "end").await;
        if record.plan.reads {
            let list = self
                .probe(
                    record.plan.merchant,
                    ReadKind::List,
                    &record.order_id.clone(),
                    "end",
                )
                .await;
            record.reads.push(list);
        }
        let merchants = u8::try_from(self.api_keys.len()).unwrap_or(u8::MAX);
        let own = record.plan.merchant % merchants;
        let other = own.wrapping_add(1) % merchants;
        if let Some(id) = record.payment_id.clone()
            && other != own
        {
            let foreign = self.probe(other, ReadKind::Foreign, &id, "end").await;
            record.reads.push(foreign);
            // The plans that read also try, as the other merchant, to list
            // the order and to act on the payment: each must find nothing.
            if record.plan.reads {
                let order = record.order_id.clone();
                let listed = self
                    .probe(other, ReadKind::ForeignList, &order, "end")
                    .await;
                record.reads.push(listed);
                for op in [Op::Capture, Op::Void, Op::Refund] {
                    let kind = ReadKind::ForeignOperation(op);
                    let acted = self.probe(other, kind, &id, "end").await;
                    record.reads.push(acted);
                }
            }
        }
        if record.plan.late_replay {
            self.replay_late(record).await;
        }
        // A hedger's slower answers, last: they are answers to the same
        // keys, and must agree with the ones the flow went on with.
        for exchange in record.hedged.answers().await {
            record.learn_payment(&exchange);
            record.exchanges.push(exchange);
        }
    }

    /// A restarter's first payment, once settled, released should it have
    /// ended authorized (the gateway adopted what the bank did after all);
    /// the earliest it may have settled, if it was seen settled.
    async fn void_first_payment(&self, record: &mut FlowRecord) -> Option<Instant> {
        let current = record.payment_id.clone();
        let first = record
            .payment_ids
            .iter()
            .find(|id| Some(*id) != current.as_ref())
            .cloned()?;
        record.payment_id = Some(first.clone());
        let in_flight_at = record.restarted_at.unwrap_or_else(Instant::now);
        let settled = self
            .until_settled(record, Op::Authorize, in_flight_at)
            .await;
        if self.shows(record, gateway::domain::PaymentStatus::Authorized)
            && let Some(void) = self.operation(record, Op::Void, "void-first", record.plan.amount)
        {
            self.until_final(record, &void, false).await;
        }
        record.payment_id = current;
        settled
    }

    /// Every key the flow sent, once more, a little later (within their
    /// retention): each must answer exactly as before.
    async fn replay_late(&self, record: &mut FlowRecord) {
        let most = u64::try_from(LATE_REPLAY_MAX.as_millis()).unwrap_or(u64::MAX);
        tokio::time::sleep(Duration::from_millis(rand::random_range(500..=most))).await;
        for request in record.sent.clone() {
            self.until_final(record, &request, false).await;
        }
    }
}

/// The same request with another amount: for a key misused.
fn altered(body: &str) -> String {
    let mut value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let amount = value["amount"].as_i64().unwrap_or(0);
    value["amount"] = json!(amount + 1);
    value.to_string()
}

/// The payment id a gateway answer names: a payment's `id`, or an error's
/// `payment_id`.
pub fn payment_id_in(body: &Value) -> Option<String> {
    body["id"]
        .as_str()
        .or_else(|| body["error"]["payment_id"].as_str())
        .filter(|id| id.starts_with("pay_"))
        .map(str::to_owned)
}

/// The same number with its last digit changed: it fails the Luhn check.
fn luhn_broken(number: &str) -> String {
    let mut digits: Vec<u8> = number.bytes().collect();
    if let Some(last) = digits.last_mut() {
        *last = b'0' + (*last - b'0' + 1) % 10;
    }
    String::from_utf8(digits).unwrap_or_default()
}

/// What came back: status, the replay header and the body, or why nothing did.
async fn answer(result: Result<reqwest::Response, reqwest::Error>) -> Answer {
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let replayed = response
                .headers()
                .get("Idempotent-Replayed")
                .is_some_and(|v| v.as_bytes() == b"true");
            let retry_after = response
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match response.text().await {
                Ok(body) => Answer::Http {
                    status,
                    replayed,
                    retry_after,
                    body,
                },
                Err(e) => Answer::Transport {
                    error: format!("body lost: {e}"),
                },
            }
        }
        Err(e) => Answer::Transport {
            error: transport_kind(&e).to_owned(),
        },
    }
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection refused"
    } else {
        "connection lost"
    }
}

/// Shared between the workers.
pub type SharedDriver = Arc<Driver>;

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::luhn;

    #[test]
    fn a_broken_number_fails_luhn() {
        assert!(!luhn::is_valid(&luhn_broken("4111111111111111")));
        assert!(!luhn::is_valid(&luhn_broken("4242424242424249")));
    }

    fn http(status: u16, body: &str) -> Exchange {
        Exchange {
            op: Op::Capture,
            key: "k".into(),
            variant: 0,
            merchant: 0,
            payment: None,
            at_ms: 0,
            latency_us: 0,
            answer: Answer::Http {
                status,
                replayed: false,
                retry_after: None,
                body: body.into(),
            },
        }
    }

    #[test]
    fn the_payment_is_read_from_an_operations_path() {
        let id = "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b";
        let request = |path: String| Request {
            op: Op::Capture,
            path,
            key: "k".into(),
            body: r#"{"amount":500}"#.into(),
            variant: 0,
        };
        let capture = request(format!("/v1/payments/{id}/capture"));
        assert_eq!(
            capture.payment().map(|p| p.to_string()),
            Some(id.to_owned())
        );
        assert!(request("/v1/payments".into()).payment().is_none());

        // A capture's key misused: the same body as a void of the payment.
        let misused = capture.misused();
        assert_eq!((misused.op, misused.variant), (Op::Void, 1));
        assert_eq!(misused.path, format!("/v1/payments/{id}/void"));
        assert_eq!((misused.key, misused.body), (capture.key, capture.body));
    }

    #[test]
    fn which_answers_are_final() {
        assert!(http(200, "{}").is_final());
        assert!(http(402, "{}").is_final());
        assert!(http(502, "{}").is_final());
        assert!(http(500, "{}").is_final(), "a 500 is judged, not retried");
        assert!(http(409, r#"{"error":{"code":"invalid_state"}}"#).is_final());
        assert!(!http(409, r#"{"error":{"code":"idempotency_key_in_use"}}"#).is_final());
        assert!(!http(202, "{}").is_final());
        assert!(!http(503, "{}").is_final());
        assert!(!http(429, "{}").is_final());
        assert!(
            !http(408, "").is_final(),
            "the request never reached the key"
        );
        let lost = Exchange {
            answer: Answer::Transport {
                error: "reset".into(),
            },
            ..http(200, "")
        };
        assert!(!lost.is_final());
    }
}
