//! The client side of a run: FicMart's checkout, carrying out each
//! [`PaymentPlan`] against the gateway replicas (round-robin), retrying
//! with the same key as a careful client would, and recording every
//! exchange for the invariant checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use serde_json::{Value, json};

use crate::bank::NewCard;
use crate::cards::random_card_number;
use crate::model::Op;
use crate::scenario::{Duplicate, Next, PaymentPlan, PlanKind, Step};
use crate::stats::{micros, millis};

/// A key is retried until it gets a final answer, or for this long.
pub const KEY_BUDGET: Duration = Duration::from_secs(90);
/// Each HTTP attempt gets this long (the gateway answers 202 at its own
/// bank deadline, well before).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What one HTTP attempt got.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    Http {
        status: u16,
        /// `Idempotent-Replayed: true`.
        replayed: bool,
        body: String,
    },
    /// No response: refused connection (a replica is down), reset, timeout.
    Transport { error: String },
}

/// One HTTP attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub op: Op,
    pub key: String,
    /// Milliseconds since the traffic started.
    pub at_ms: u64,
    pub latency_us: u64,
    pub answer: Answer,
}

impl Exchange {
    pub fn status(&self) -> Option<u16> {
        match &self.answer {
            Answer::Http { status, .. } => Some(*status),
            Answer::Transport { .. } => None,
        }
    }

    pub fn json(&self) -> Option<Value> {
        match &self.answer {
            Answer::Http { body, .. } => serde_json::from_str(body).ok(),
            Answer::Transport { .. } => None,
        }
    }

    /// The `error.code` of an error body.
    pub fn error_code(&self) -> Option<String> {
        Some(self.json()?["error"]["code"].as_str()?.to_owned())
    }

    /// A final answer ends the key's retries: everything but 202, 409
    /// `idempotency_key_in_use`, 429, 5xx other than 502 (the bank's
    /// refusal, which is stored), and no answer at all.
    pub fn is_final(&self) -> bool {
        match self.status() {
            None | Some(202 | 429 | 500 | 503 | 504) => false,
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
        format!("+{}ms {} {} → {answer}", self.at_ms, self.op, self.key)
    }
}

/// Which read: one payment, or an order's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadKind {
    /// `GET /v1/payments/{id}`.
    Read,
    /// `GET /v1/payments?order_id=…`.
    List,
}

/// One read attempt (no key, no retries): what the gateway showed.
#[derive(Debug, Clone, Serialize)]
pub struct Read {
    pub kind: ReadKind,
    /// Where the plan was: after which step (`authorize`, `capture`, …) or `end`.
    pub after: String,
    /// Milliseconds since the traffic started.
    pub at_ms: u64,
    pub latency_us: u64,
    pub answer: Answer,
}

impl Read {
    pub fn status(&self) -> Option<u16> {
        match &self.answer {
            Answer::Http { status, .. } => Some(*status),
            Answer::Transport { .. } => None,
        }
    }

    pub fn json(&self) -> Option<Value> {
        match &self.answer {
            Answer::Http { body, .. } => serde_json::from_str(body).ok(),
            Answer::Transport { .. } => None,
        }
    }

    /// One line for a report: `+1234ms read after capture → 200 captured`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            ReadKind::Read => "read",
            ReadKind::List => "list",
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
    /// Learnt from an answer (201, 202, or an error naming it).
    pub payment_id: Option<String>,
    pub exchanges: Vec<Exchange>,
    /// The plan's reads (when it has them), in order.
    pub reads: Vec<Read>,
    /// Keys that got no final answer within [`KEY_BUDGET`].
    pub unanswered: Vec<String>,
    /// The card number and CVV the authorization sent (whatever the plan:
    /// an invalid or unknown number too), for the card-data check; never
    /// serialised.
    #[serde(skip)]
    pub sent_card: (String, String),
}

/// The gateways, the key, and the run's counters.
pub struct Driver {
    http: reqwest::Client,
    gateways: Vec<String>,
    api_key: String,
    next_gateway: AtomicUsize,
    started: Instant,
    pub requests: AtomicU64,
    pub flows_done: AtomicU64,
    run_id: String,
    cards: Vec<NewCard>,
    empty_card: NewCard,
}

impl Driver {
    pub fn new(
        gateways: Vec<String>,
        api_key: String,
        run_id: String,
        cards: Vec<NewCard>,
        empty_card: NewCard,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency * 2)
            .timeout(ATTEMPT_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            gateways,
            api_key,
            next_gateway: AtomicUsize::new(0),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            flows_done: AtomicU64::new(0),
            run_id,
            cards,
            empty_card,
        })
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// `path` at the next replica, round robin; counts the request.
    fn next_url(&self, path: &str) -> String {
        let i = self.next_gateway.fetch_add(1, Ordering::Relaxed) % self.gateways.len();
        self.requests.fetch_add(1, Ordering::Relaxed);
        format!("{}{path}", self.gateways[i])
    }

    /// One attempt, at the next replica.
    async fn attempt(&self, op: Op, path: &str, key: &str, body: &str) -> Exchange {
        let url = self.next_url(path);
        let at = self.started.elapsed();
        let sent = Instant::now();
        let result = self
            .http
            .post(&url)
            .bearer_auth(&self.api_key)
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(body.to_owned())
            .send()
            .await;
        let answer = answer(result).await;
        Exchange {
            op,
            key: key.to_owned(),
            at_ms: millis(at),
            latency_us: micros(sent.elapsed()),
            answer,
        }
    }

    /// Retries `key` until a final answer (returned) or [`KEY_BUDGET`].
    async fn until_final(
        &self,
        op: Op,
        path: &str,
        key: &str,
        body: &str,
        log: &mut Vec<Exchange>,
    ) -> Option<Exchange> {
        let deadline = Instant::now() + KEY_BUDGET;
        let mut backoff = BACKOFF_START;
        loop {
            let exchange = self.attempt(op, path, key, body).await;
            log.push(exchange.clone());
            if exchange.is_final() {
                return Some(exchange);
            }
            if Instant::now() + backoff > deadline {
                return None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Sends one step of a plan, with the duplicate the plan asks for.
    async fn step(
        &self,
        record: &mut FlowRecord,
        step: Step,
        op: Op,
        path: &str,
        key: &str,
        body: &str,
    ) -> Option<Exchange> {
        let mut log = Vec::new();
        let last = match record.plan.duplicate {
            Duplicate::Concurrent(s) if s == step => {
                let mut other = Vec::new();
                let (a, b) = futures_util::join!(
                    self.until_final(op, path, key, body, &mut log),
                    self.until_final(op, path, key, body, &mut other)
                );
                log.extend(other);
                a.or(b)
            }
            Duplicate::Sequential(s) if s == step => {
                let first = self.until_final(op, path, key, body, &mut log).await;
                if first.is_some() {
                    self.until_final(op, path, key, body, &mut log).await;
                }
                first
            }
            Duplicate::None | Duplicate::Concurrent(_) | Duplicate::Sequential(_) => {
                self.until_final(op, path, key, body, &mut log).await
            }
        };
        for exchange in &log {
            if record.payment_id.is_none()
                && let Some(id) = exchange.json().and_then(|v| payment_id_in(&v))
            {
                record.payment_id = Some(id);
            }
        }
        record.exchanges.extend(log);
        if last.is_none() {
            record.unanswered.push(key.to_owned());
        }
        self.read(record, op.as_str()).await;
        last
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
            .get(ReadKind::Read, &format!("/v1/payments/{id}"), after)
            .await;
        record.reads.push(read);
    }

    /// One GET, at the next replica.
    async fn get(&self, kind: ReadKind, path: &str, after: &str) -> Read {
        let url = self.next_url(path);
        let at = self.started.elapsed();
        let sent = Instant::now();
        let result = self.http.get(&url).bearer_auth(&self.api_key).send().await;
        let answer = answer(result).await;
        Read {
            kind,
            after: after.to_owned(),
            at_ms: millis(at),
            latency_us: micros(sent.elapsed()),
            answer,
        }
    }

    async fn operate(
        &self,
        record: &mut FlowRecord,
        step: Step,
        op: Op,
        key_suffix: &str,
    ) -> Option<Exchange> {
        let payment_id = record.payment_id.clone()?;
        let path = format!("/v1/payments/{payment_id}/{}", op.as_str());
        let key = format!("{}-{key_suffix}", record.order_id);
        let body = json!({ "amount": record.plan.amount }).to_string();
        self.step(record, step, op, &path, &key, &body).await
    }

    /// Carries out plan `index`.
    pub async fn run_flow(&self, index: usize, plan: PaymentPlan) -> FlowRecord {
        let mut record = FlowRecord {
            index,
            order_id: format!("ord_{}_{index}", self.run_id),
            plan,
            card_number: None,
            payment_id: None,
            exchanges: Vec::new(),
            reads: Vec::new(),
            unanswered: Vec::new(),
            sent_card: (String::new(), String::new()),
        };
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
            PlanKind::Normal { .. } | PlanKind::Conflict | PlanKind::EarlyRefund => {
                (card.card_number.clone(), card.cvv.clone(), plan.amount)
            }
        };
        if matches!(
            plan.kind,
            PlanKind::Normal { .. }
                | PlanKind::Conflict
                | PlanKind::EarlyRefund
                | PlanKind::Overdraw
        ) {
            record.card_number = Some(number.clone());
        }
        record.sent_card = (number.clone(), cvv.clone());
        let body = json!({
            "order_id": record.order_id,
            "customer_id": format!("cus_{}_{}", self.run_id, plan.customer),
            "amount": amount,
            "currency": "USD",
            "card": {"number": number, "cvv": cvv, "expiry_month": 12, "expiry_year": 2099},
        })
        .to_string();
        let key = format!("{}-auth", record.order_id);
        let authorized = self
            .step(
                &mut record,
                Step::Authorize,
                Op::Authorize,
                "/v1/payments",
                &key,
                &body,
            )
            .await
            .is_some_and(|e| e.status() == Some(201));
        if authorized {
            self.after_authorization(&mut record).await;
        }
        self.read(&mut record, "end").await;
        if record.plan.reads {
            let path = format!("/v1/payments?order_id={}&limit=100", record.order_id);
            let list = self.get(ReadKind::List, &path, "end").await;
            record.reads.push(list);
        }
        self.flows_done.fetch_add(1, Ordering::Relaxed);
        record
    }

    async fn after_authorization(&self, record: &mut FlowRecord) {
        match record.plan.kind {
            PlanKind::Normal { next, refund } => match next {
                Next::Nothing => {}
                Next::Capture => {
                    let captured = self
                        .operate(record, Step::Second, Op::Capture, "capture")
                        .await
                        .is_some_and(|e| e.status() == Some(200));
                    if captured && refund {
                        self.operate(record, Step::Refund, Op::Refund, "refund")
                            .await;
                    }
                }
                Next::Void => {
                    self.operate(record, Step::Second, Op::Void, "void").await;
                }
            },
            PlanKind::Conflict => {
                // Two clients at once: the plan's duplicate applies to neither.
                let mut capture_side = record.clone();
                capture_side.exchanges.clear();
                capture_side.unanswered.clear();
                capture_side.reads.clear();
                let mut void_side = capture_side.clone();
                futures_util::join!(
                    self.operate(&mut capture_side, Step::Second, Op::Capture, "capture"),
                    self.operate(&mut void_side, Step::Second, Op::Void, "void"),
                );
                for side in [capture_side, void_side] {
                    record.exchanges.extend(side.exchanges);
                    record.unanswered.extend(side.unanswered);
                    record.reads.extend(side.reads);
                }
            }
            PlanKind::EarlyRefund => {
                self.operate(record, Step::Refund, Op::Refund, "refund-early")
                    .await;
                self.operate(record, Step::Second, Op::Void, "void").await;
            }
            PlanKind::BadAmount
            | PlanKind::BadCard
            | PlanKind::UnknownCard
            | PlanKind::Overdraw => {}
        }
    }
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
            match response.text().await {
                Ok(body) => Answer::Http {
                    status,
                    replayed,
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
            at_ms: 0,
            latency_us: 0,
            answer: Answer::Http {
                status,
                replayed: false,
                body: body.into(),
            },
        }
    }

    #[test]
    fn which_answers_are_final() {
        assert!(http(200, "{}").is_final());
        assert!(http(402, "{}").is_final());
        assert!(http(502, "{}").is_final());
        assert!(http(409, r#"{"error":{"code":"invalid_state"}}"#).is_final());
        assert!(!http(409, r#"{"error":{"code":"idempotency_key_in_use"}}"#).is_final());
        assert!(!http(202, "{}").is_final());
        assert!(!http(503, "{}").is_final());
        let lost = Exchange {
            answer: Answer::Transport {
                error: "reset".into(),
            },
            ..http(200, "")
        };
        assert!(!lost.is_final());
    }
}
