//! The invariants, checked once the system has quiesced, over what the
//! clients saw ([`FlowRecord`]s), the gateway's final receipts and its
//! operations, the bank's books and its idempotency records, what passed
//! between the gateways and the bank (the tap), the reconciliation report,
//! and (for card data) a dump of the gateway's database and its logs.
//! Pure: the collection is in [`crate::run`], so each check can be fed a
//! forged world in a test.
//!
//! - [`money`]: no double charge, no orphan money movement, conservation,
//!   amounts as asked.
//! - [`answers`]: idempotency, own outcome, no lost acknowledgment, honest
//!   answers, no server errors, valid requests done.
//! - [`states`]: convergence, legality.
//! - [`callers`]: one caller per bank key at a time.
//! - [`card_data`]: no card data at rest or in the open, in any form.
//! - [`webhooks`]: every change delivered, signed, in order, never twice at once.
//! - [`revocation`]: a revoked API key refused within the key cache's lifetime.
//! - [`bank`]: the bank the gateways are judged against did not fail on its own.

mod answers;
mod bank;
mod callers;
mod card_data;
mod money;
mod revocation;
mod states;
#[cfg(test)]
mod tests;
pub mod webhooks;

use gateway::domain::PaymentStatus;
use serde::Serialize;
use serde_json::Value;

use crate::driver::FlowRecord;
use crate::model;

pub use card_data::CardData;

/// Violations listed per invariant; the rest are only counted.
const MAX_LISTED: usize = 20;

/// One authorization at the bank, with what hangs off it (from the bank's
/// own tables: counts, so that a second capture could not hide).
#[derive(Debug, Clone, Serialize)]
pub struct BankAuthorization {
    pub id: String,
    pub card_number: String,
    pub amount: i64,
    pub state: String,
    pub captures: i64,
    pub voids: i64,
    pub refunds: i64,
    pub capture_id: Option<String>,
    pub void_id: Option<String>,
    pub refund_id: Option<String>,
}

impl BankAuthorization {
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("{} {} {}¢", self.id, self.state, self.amount)];
        for (name, id) in [
            ("capture", &self.capture_id),
            ("void", &self.void_id),
            ("refund", &self.refund_id),
        ] {
            if let Some(id) = id {
                parts.push(format!("{name} {id}"));
            }
        }
        parts.join(", ")
    }
}

/// Something the bank did under a gateway's idempotency key: the path it
/// was asked on, the key, and the object it created (from the response it
/// stored with the key).
#[derive(Debug, Clone, Serialize)]
pub struct BankKey {
    pub path: String,
    pub key: String,
    /// `auth_…`, `cap_…`, `void_…` or `ref_…`.
    pub object_id: Option<String>,
}

/// One of the gateway's operations, as its database holds it.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayOperation {
    /// `pay_…`.
    pub payment_id: String,
    /// `authorize`, `capture`, `void` or `refund`.
    pub kind: String,
    pub bank_key: String,
    pub status: String,
}

/// One request a gateway sent the bank, as the tap between them saw it.
#[derive(Debug, Clone, Serialize)]
pub struct TappedCall {
    pub path: String,
    pub key: Option<String>,
    /// Which gateway process sent it.
    pub caller: Option<String>,
    /// Microseconds since the traffic started.
    pub started_us: u64,
    /// `None`: still open when the run was observed.
    pub ended_us: Option<u64>,
}

/// A card's opening balance and what the bank says now.
#[derive(Debug, Clone, Serialize)]
pub struct CardBalance {
    pub card_number: String,
    pub opening: i64,
    pub balance: i64,
    pub available: i64,
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Observations {
    pub seed: u64,
    pub flows: Vec<FlowRecord>,
    /// Per flow (same index): the payments `GET /v1/payments?order_id=`
    /// lists for its order (the receipts).
    pub receipts: Vec<Vec<Value>>,
    /// Every authorization the bank holds on the run's cards.
    pub bank: Vec<BankAuthorization>,
    /// What the bank did under the gateways' keys (its stored successes).
    pub bank_keys: Vec<BankKey>,
    /// The gateway's operations.
    pub operations: Vec<GatewayOperation>,
    /// What passed between the gateways and the bank; `None` when it could
    /// not be watched (gateways someone else runs).
    pub tapped: Option<Vec<TappedCall>>,
    pub cards: Vec<CardBalance>,
    /// `GET /admin/ledger/verify`.
    pub ledger: Value,
    /// `gateway::reconcile` (dry run) over the run: the payments it left
    /// over, as "payment: reason"; `Err` when it could not run.
    pub reconcile: Result<Vec<String>, String>,
    /// Payments still in flight when the wait for quiescence ended.
    pub in_flight: Vec<String>,
    /// How long the gateways wait for an authorization's client before they
    /// give it up, in ms.
    pub authorization_grace_ms: u64,
    /// How long the gateways keep a key after its answer, in ms.
    pub key_retention_ms: u64,
    /// What the card-data check looks for, and where.
    pub card_data: CardData,
    /// What the merchants' webhook receiver got, when the run had one.
    pub webhooks: Option<webhooks::WebhookObservations>,
    /// The spare key revoked halfway, when the run started the gateways.
    pub revocation: Option<crate::revocation::KeyRevocation>,
    /// The bank's own (not injected) errors during the run; `None` when
    /// its metrics could not be read.
    pub bank_own_errors: Option<u64>,
    /// Payment id → the flow whose receipts hold it; built on first use
    /// (a run may have a hundred thousand payments).
    pub index: PaymentIndex,
}

/// Which flow each payment belongs to, built once.
#[derive(Debug, Clone, Default)]
pub struct PaymentIndex(std::sync::OnceLock<std::collections::HashMap<String, usize>>);

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// `#<flow> <order id> <payment id>`, or what else it is about.
    pub subject: String,
    pub message: String,
    /// The payment's full story: requests and answers, receipt history, bank.
    pub history: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvariantResult {
    pub number: u8,
    pub name: &'static str,
    /// What it checks, in a sentence.
    pub about: &'static str,
    pub passed: bool,
    /// Things checked (payments, keys, cards, …).
    pub checked: u64,
    pub violations: u64,
    /// The first few violations, in full.
    pub examples: Vec<Violation>,
}

/// Each invariant's name and what it checks.
pub const INVARIANTS: [(&str, &str); 19] = [
    (
        "no double charge",
        "per authorization at most one capture and one refund, never a capture and a void; per order at most one payment holding or taking money",
    ),
    (
        "no orphan money movement",
        "everything the bank did under a gateway key is one gateway operation of the same kind, and the object it made is the one the receipt names; every request a gateway sent to move money carries the key of an operation of its kind; every hold on a run's card was made that way",
    ),
    (
        "convergence",
        "nothing left in flight, and reconciliation finds every receipt matching the bank",
    ),
    (
        "idempotency",
        "every final answer to a key is byte-identical to its first, whatever happened since; the key with another body answers 422",
    ),
    (
        "own outcome",
        "an answer shows the outcome of its own operation, on its own payment",
    ),
    (
        "conservation",
        "the ledger verifies, and each card's balances are what the receipts imply",
    ),
    (
        "legality",
        "every receipt, and every payment a read showed, has a history that is a path of the state diagram ending at its status",
    ),
    (
        "no lost acknowledgment",
        "every 2xx is reflected in the receipt and at the bank",
    ),
    (
        "honest answers",
        "402 only for a card the bank refused; abandoned only after the grace period; 400 created nothing; 409 invalid_state changed nothing; another merchant can neither read, list nor act on the payment",
    ),
    ("no server errors", "no 5xx but 503 with Retry-After"),
    (
        "one caller per bank key",
        "no two requests with one bank idempotency key in flight at the bank at once",
    ),
    (
        "card data",
        "no card number or CVV, nor any digest of a request the run sent, in a table, a log, an answer or a receipt",
    ),
    (
        "webhooks delivered",
        "every change of every payment reached its merchant's endpoint with the payment as it stood, under the type of that change, and no other merchant's endpoint; no event describes a history the payment lacks; nothing left undelivered",
    ),
    (
        "webhooks signed",
        "every delivery verifies with its endpoint's secret (the new one after a rotation); webhook-id is the event's and a retry carries the same body",
    ),
    (
        "webhooks ordered",
        "ordered by sequence, a payment's events are its history in order; no event sent to one endpoint twice at once",
    ),
    (
        "revoked keys refused",
        "a key revoked halfway is refused by every replica once the key cache's lifetime has passed, and works until it is revoked",
    ),
    (
        "bank without errors of its own",
        "the bank answered 500 only for faults its chaos injected; a bug of its own would hide behind the gateways' retries",
    ),
    (
        "amounts as asked",
        "every payment holds the amount and currency its authorization asked for, and so does the bank's authorization and every answer and read showing it",
    ),
    (
        "valid requests done",
        "every authorize, capture, void and refund a plan makes in order ends 2xx, unless its card can run out, it was given up past its grace period, or the bank moved the payment on its own",
    ),
];

/// Collects violations for one invariant.
struct Check<'a> {
    obs: &'a Observations,
    number: u8,
    checked: u64,
    found: Vec<Violation>,
}

impl<'a> Check<'a> {
    fn new(obs: &'a Observations, number: u8) -> Self {
        Self {
            obs,
            number,
            checked: 0,
            found: Vec::new(),
        }
    }

    fn flow(&mut self, flow: usize, message: String) {
        let obs = self.obs;
        let record = &obs.flows[flow];
        let subject = format!(
            "#{} {} {}",
            record.index,
            record.order_id,
            record.payment_id.as_deref().unwrap_or("(no payment id)")
        );
        self.found.push(Violation {
            subject,
            message,
            history: story(obs, flow),
        });
    }

    fn other(&mut self, subject: String, message: String) {
        self.found.push(Violation {
            subject,
            message,
            history: Vec::new(),
        });
    }

    /// A violation about a payment: its flow's story if a flow made it.
    fn payment(&mut self, payment_id: &str, message: String) {
        match self.obs.flow_of(payment_id) {
            Some(i) => self.flow(i, message),
            None => self.other(payment_id.to_owned(), message),
        }
    }

    fn done(self) -> InvariantResult {
        let violations = u64::try_from(self.found.len()).unwrap_or(u64::MAX);
        let (name, about) = INVARIANTS[usize::from(self.number) - 1];
        InvariantResult {
            number: self.number,
            name,
            about,
            passed: self.found.is_empty(),
            checked: self.checked,
            violations,
            examples: self.found.into_iter().take(MAX_LISTED).collect(),
        }
    }
}

impl Observations {
    /// The flow whose answers named `payment_id`.
    pub fn flow_of(&self, payment_id: &str) -> Option<usize> {
        let index = self.index.0.get_or_init(|| {
            let mut index = std::collections::HashMap::new();
            for (i, flow) in self.flows.iter().enumerate() {
                for id in &flow.payment_ids {
                    index.insert(id.clone(), i);
                }
            }
            for (i, receipt) in self.all_receipts() {
                if let Some(id) = receipt["id"].as_str() {
                    index.insert(id.to_owned(), i);
                }
            }
            index
        });
        index.get(payment_id).copied()
    }

    /// Every receipt, with the index of its flow.
    fn all_receipts(&self) -> impl Iterator<Item = (usize, &Value)> {
        self.receipts
            .iter()
            .enumerate()
            .flat_map(|(i, receipts)| receipts.iter().map(move |r| (i, r)))
    }

    fn receipt(&self, payment_id: &str) -> Option<&Value> {
        self.receipts
            .get(self.flow_of(payment_id)?)?
            .iter()
            .find(|r| r["id"].as_str() == Some(payment_id))
    }
}

/// The story of flow `i`: every exchange, the receipts' histories, the
/// bank, and what the gateways sent the bank under the payment's keys.
pub fn story(obs: &Observations, i: usize) -> Vec<String> {
    let flow = &obs.flows[i];
    let mut lines = vec![format!("plan: {} (seed {})", flow.plan, obs.seed)];
    lines.extend(flow.exchanges.iter().map(|e| e.describe()));
    lines.extend(flow.reads.iter().map(|r| r.describe()));
    for key in &flow.unanswered {
        lines.push(format!("no final answer for key {key}"));
    }
    for receipt in obs.receipts.get(i).into_iter().flatten() {
        let history: Vec<&str> = history_names(receipt);
        lines.push(format!(
            "receipt {}: {} (bank ids {})",
            receipt["id"].as_str().unwrap_or("?"),
            history.join(" → "),
            receipt["bank"]
        ));
        if let Some(bank) = receipt["bank"]["authorization_id"]
            .as_str()
            .and_then(|id| obs.bank.iter().find(|b| b.id == id))
        {
            lines.push(format!("bank: {}", bank.describe()));
        }
    }
    for operation in obs
        .operations
        .iter()
        .filter(|o| flow.payment_ids.contains(&o.payment_id))
    {
        lines.push(format!(
            "operation {} {} under bank key {}",
            operation.kind, operation.status, operation.bank_key
        ));
        for call in obs
            .tapped
            .iter()
            .flatten()
            .filter(|c| c.key.as_deref() == Some(operation.bank_key.as_str()))
        {
            let ended = call
                .ended_us
                .map_or("still open".to_owned(), |us| format!("+{}ms", us / 1000));
            lines.push(format!(
                "  to the bank +{}ms {} → {ended}",
                call.started_us / 1000,
                call.path
            ));
        }
    }
    lines
}

fn history_names(receipt: &Value) -> Vec<&str> {
    receipt["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["status"].as_str()).collect())
        .unwrap_or_default()
}

fn history(receipt: &Value) -> Vec<PaymentStatus> {
    history_names(receipt)
        .into_iter()
        .filter_map(model::status)
        .collect()
}

fn status_of(receipt: &Value) -> Option<PaymentStatus> {
    receipt["status"].as_str().and_then(model::status)
}

fn bank_id<'v>(receipt: &'v Value, field: &str) -> Option<&'v str> {
    receipt["bank"][field].as_str()
}

/// Runs every check.
pub fn check(obs: &Observations) -> Vec<InvariantResult> {
    vec![
        money::no_double_charge(obs),
        money::no_orphan_movement(obs),
        states::convergence(obs),
        answers::idempotency(obs),
        answers::own_outcome(obs),
        money::conservation(obs),
        states::legality(obs),
        answers::no_lost_acknowledgment(obs),
        answers::honest_answers(obs),
        answers::no_server_errors(obs),
        callers::one_caller_per_key(obs),
        card_data::card_data(obs),
        webhooks::delivered(obs),
        webhooks::signed(obs),
        webhooks::ordered(obs),
        revocation::revoked_keys_refused(obs),
        bank::no_errors_of_its_own(obs),
        money::amounts_as_asked(obs),
        answers::valid_requests_done(obs),
    ]
}
