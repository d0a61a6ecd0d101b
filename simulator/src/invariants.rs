//! The seven invariants, checked once the system has quiesced, over what
//! the client saw ([`FlowRecord`]s), the gateway's final receipts, the
//! bank's books and the reconciliation report. Pure: the collection is in
//! [`crate::run`], so each check can be fed a forged world in a test.

use std::collections::{BTreeMap, BTreeSet};

use gateway::domain::PaymentStatus;
use serde::Serialize;
use serde_json::Value;

use crate::driver::{Answer, FlowRecord};
use crate::model::{self, Op};

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
    pub cards: Vec<CardBalance>,
    /// `GET /admin/ledger/verify`.
    pub ledger: Value,
    /// `gateway::reconcile` (dry run) over the run: the payments it left
    /// over, as "payment: reason"; `Err` when it could not run.
    pub reconcile: Result<Vec<String>, String>,
    /// Payments still in flight when the wait for quiescence ended.
    pub in_flight: Vec<String>,
}

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
    pub passed: bool,
    /// Things checked (payments, keys, cards, …).
    pub checked: u64,
    pub violations: u64,
    /// The first few violations, in full.
    pub examples: Vec<Violation>,
}

pub const NAMES: [&str; 7] = [
    "no double charge",
    "convergence",
    "idempotency",
    "conservation",
    "legality",
    "no lost acknowledgment",
    "honest answers",
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

    fn done(self) -> InvariantResult {
        let violations = u64::try_from(self.found.len()).unwrap_or(u64::MAX);
        InvariantResult {
            number: self.number,
            name: NAMES[usize::from(self.number) - 1],
            passed: self.found.is_empty(),
            checked: self.checked,
            violations,
            examples: self.found.into_iter().take(MAX_LISTED).collect(),
        }
    }
}

/// The story of flow `i`: every exchange, the receipt's history, the bank.
pub fn story(obs: &Observations, i: usize) -> Vec<String> {
    let flow = &obs.flows[i];
    let mut lines = vec![format!("plan: {} (seed {})", flow.plan, obs.seed)];
    lines.extend(flow.exchanges.iter().map(|e| e.describe()));
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
        no_double_charge(obs),
        convergence(obs),
        idempotency(obs),
        conservation(obs),
        legality(obs),
        no_lost_acknowledgment(obs),
        honest_answers(obs),
    ]
}

/// 1: per payment, the bank holds at most one capture, at most one refund,
/// never both a capture and a void; and one order is one payment.
fn no_double_charge(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 1);
    for bank in &obs.bank {
        c.checked += 1;
        if bank.captures > 1 || bank.refunds > 1 || (bank.captures > 0 && bank.voids > 0) {
            c.other(
                bank.id.clone(),
                format!(
                    "the bank holds {} capture(s), {} refund(s) and {} void(s) for one authorization",
                    bank.captures, bank.refunds, bank.voids
                ),
            );
        }
    }
    for (i, receipts) in obs.receipts.iter().enumerate() {
        if receipts.len() > 1 {
            c.flow(i, format!("one order became {} payments", receipts.len()));
        }
    }
    c.done()
}

/// 2: nothing left in flight, and reconciliation finds nothing.
fn convergence(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 2);
    for (i, receipts) in obs.receipts.iter().enumerate() {
        for receipt in receipts {
            c.checked += 1;
            if let Some(status) = status_of(receipt)
                && !model::is_settled(status)
            {
                c.flow(i, format!("the payment is still {status}"));
            }
        }
    }
    for payment in &obs.in_flight {
        c.other(payment.clone(), "still in flight after the wait".into());
    }
    match &obs.reconcile {
        Ok(left_over) => {
            for entry in left_over {
                c.other(
                    "reconciliation".into(),
                    format!("the receipt disagrees with the bank: {entry}"),
                );
            }
        }
        Err(e) => c.other("reconciliation".into(), format!("could not run: {e}")),
    }
    c.done()
}

/// 3: every final answer for a key is byte-identical to its first one
/// (replays included); no key made a second bank authorization (every
/// authorization the bank holds on the run's cards belongs to exactly one
/// receipt).
fn idempotency(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 3);
    for (i, flow) in obs.flows.iter().enumerate() {
        let mut first: BTreeMap<&str, (u16, &str)> = BTreeMap::new();
        for exchange in flow.exchanges.iter().filter(|e| e.is_final()) {
            let Answer::Http {
                status,
                body,
                replayed,
            } = &exchange.answer
            else {
                continue;
            };
            match first.get(exchange.key.as_str()) {
                None => {
                    c.checked += 1;
                    first.insert(&exchange.key, (*status, body));
                }
                Some((first_status, first_body)) => {
                    if first_status != status || first_body != body {
                        let how = if *replayed { "a replay" } else { "a repeat" };
                        c.flow(
                            i,
                            format!(
                                "key {}: {how} answered {status} with another body than the first answer ({first_status})",
                                exchange.key
                            ),
                        );
                    }
                }
            }
        }
    }
    let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
    for receipts in &obs.receipts {
        for id in receipts
            .iter()
            .filter_map(|r| bank_id(r, "authorization_id"))
        {
            *owners.entry(id).or_default() += 1;
        }
    }
    for bank in &obs.bank {
        c.checked += 1;
        match owners.get(bank.id.as_str()) {
            Some(1) => {}
            Some(n) => c.other(
                bank.id.clone(),
                format!("{n} receipts name this one bank authorization"),
            ),
            None => {
                let message = format!(
                    "the bank holds an authorization no receipt knows (a second bank operation for one key, or a lost one): {}",
                    bank.describe()
                );
                // The likely source: a payment on that card for that amount.
                let source = obs.flows.iter().position(|f| {
                    f.card_number.as_deref() == Some(bank.card_number.as_str())
                        && f.plan.amount == bank.amount
                });
                match source {
                    Some(i) => c.flow(
                        i,
                        format!("{message}; same card and amount as this payment"),
                    ),
                    None => c.other(bank.id.clone(), message),
                }
            }
        }
    }
    c.done()
}

/// 4: the ledger verifies, and each card's balances are what the final
/// receipts imply: balance = opening − captured; available = balance −
/// held (authorized).
fn conservation(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 4);
    c.checked += 1;
    if obs.ledger["ok"] != Value::Bool(true) {
        c.other(
            "the bank's ledger".into(),
            format!("does not verify: {}", obs.ledger),
        );
    }
    let mut captured: BTreeMap<&str, i64> = BTreeMap::new();
    let mut held: BTreeMap<&str, i64> = BTreeMap::new();
    for (flow, receipts) in obs.flows.iter().zip(&obs.receipts) {
        let Some(card) = flow.card_number.as_deref() else {
            continue;
        };
        for receipt in receipts {
            let amount = receipt["amount"].as_i64().unwrap_or(0);
            match status_of(receipt) {
                Some(PaymentStatus::Captured) => *captured.entry(card).or_default() += amount,
                Some(PaymentStatus::Authorized) => *held.entry(card).or_default() += amount,
                Some(
                    PaymentStatus::Pending
                    | PaymentStatus::Declined
                    | PaymentStatus::Expired
                    | PaymentStatus::Capturing
                    | PaymentStatus::Voiding
                    | PaymentStatus::Voided
                    | PaymentStatus::Refunding
                    | PaymentStatus::Refunded,
                )
                | None => {}
            }
        }
    }
    for card in &obs.cards {
        c.checked += 1;
        let number = card.card_number.as_str();
        let balance = card.opening - captured.get(number).copied().unwrap_or(0);
        let available = balance - held.get(number).copied().unwrap_or(0);
        if (card.balance, card.available) != (balance, available) {
            c.other(
                format!("card …{}", &number[number.len().saturating_sub(4)..]),
                format!(
                    "the receipts imply balance {balance} and available {available}, the bank has {} and {}",
                    card.balance, card.available
                ),
            );
        }
    }
    c.done()
}

/// 5: every receipt's history is a path of the state diagram.
fn legality(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 5);
    for (i, receipts) in obs.receipts.iter().enumerate() {
        for receipt in receipts {
            c.checked += 1;
            let steps = history(receipt);
            if steps.len() != history_names(receipt).len() {
                c.flow(i, "the history names an unknown status".into());
                continue;
            }
            if let Err(e) = model::check_history(&steps) {
                c.flow(i, e);
            } else if steps.last().copied() != status_of(receipt) {
                c.flow(i, "the history does not end at the status".into());
            }
        }
    }
    c.done()
}

/// 6: every 2xx is reflected in the final receipt and at the bank.
fn no_lost_acknowledgment(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 6);
    for (i, flow) in obs.flows.iter().enumerate() {
        let receipt = obs.receipts.get(i).and_then(|r| r.first());
        for exchange in &flow.exchanges {
            let Some(status @ 200..=299) = exchange.status() else {
                continue;
            };
            c.checked += 1;
            let Some(receipt) = receipt else {
                c.flow(
                    i,
                    format!("{} answered {status} but no payment exists", exchange.op),
                );
                continue;
            };
            if status == 202 {
                continue;
            }
            let steps = history(receipt);
            if !model::reflects(&steps, exchange.op) {
                c.flow(
                    i,
                    format!(
                        "{} answered {status} but the receipt never was {}",
                        exchange.op,
                        exchange.op.succeeded()
                    ),
                );
            }
            let body = exchange.json().unwrap_or_default();
            let field = match exchange.op {
                Op::Authorize => "authorization_id",
                Op::Capture => "capture_id",
                Op::Void => "void_id",
                Op::Refund => "refund_id",
            };
            let acknowledged = body["bank"][field].as_str();
            let bank = bank_id(receipt, "authorization_id")
                .and_then(|id| obs.bank.iter().find(|b| b.id == id));
            let at_bank = bank.and_then(|b| match exchange.op {
                Op::Authorize => Some(b.id.as_str()),
                Op::Capture => b.capture_id.as_deref(),
                Op::Void => b.void_id.as_deref(),
                Op::Refund => b.refund_id.as_deref(),
            });
            if acknowledged.is_none()
                || acknowledged != bank_id(receipt, field)
                || acknowledged != at_bank
            {
                c.flow(
                    i,
                    format!(
                        "{} answered {status} with {field} {acknowledged:?}; the receipt has {:?}, the bank {at_bank:?}",
                        exchange.op,
                        bank_id(receipt, field)
                    ),
                );
            }
        }
    }
    c.done()
}

/// 7: a 402 means the payment ended declined (and the bank holds nothing
/// for it); a 409 invalid_state changed nothing (an operation refused with
/// it shows in the history only if another request of that kind was
/// accepted); a 400 created nothing.
fn honest_answers(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 7);
    for (i, flow) in obs.flows.iter().enumerate() {
        let receipt = obs.receipts.get(i).and_then(|r| r.first());
        let mut accepted: BTreeSet<Op> = BTreeSet::new();
        let mut refused: BTreeSet<Op> = BTreeSet::new();
        for exchange in &flow.exchanges {
            match exchange.status() {
                Some(200..=299) | None => {
                    accepted.insert(exchange.op);
                }
                Some(409) if exchange.error_code().as_deref() == Some("invalid_state") => {
                    refused.insert(exchange.op);
                }
                Some(_) => {}
            }
        }
        for exchange in &flow.exchanges {
            match exchange.status() {
                Some(402) => {
                    c.checked += 1;
                    let status = receipt.and_then(status_of);
                    if status != Some(PaymentStatus::Declined) {
                        c.flow(i, format!("answered 402 but the payment ended {status:?}"));
                    } else if receipt
                        .and_then(|r| bank_id(r, "authorization_id"))
                        .is_some()
                    {
                        c.flow(i, "answered 402 but the bank authorized".into());
                    }
                }
                Some(400) if exchange.op == Op::Authorize => {
                    c.checked += 1;
                    if receipt.is_some() {
                        c.flow(i, "answered 400 but a payment was created".into());
                    }
                }
                Some(_) | None => {}
            }
        }
        if let Some(receipt) = receipt {
            let steps = history(receipt);
            for op in &refused {
                c.checked += 1;
                if model::reflects(&steps, *op) && !accepted.contains(op) {
                    c.flow(
                        i,
                        format!(
                            "{op} was refused with 409 invalid_state, yet the payment became {}",
                            op.succeeded()
                        ),
                    );
                }
            }
        }
    }
    c.done()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::driver::Exchange;
    use crate::scenario::{Duplicate, Next, PaymentPlan, PlanKind};

    fn exchange(op: Op, key: &str, status: u16, body: Value, replayed: bool) -> Exchange {
        Exchange {
            op,
            key: key.into(),
            at_ms: 0,
            latency_us: 1,
            answer: Answer::Http {
                status,
                replayed,
                body: body.to_string(),
            },
        }
    }

    fn receipt(status: &str, history: &[&str], bank: Value) -> Value {
        json!({
            "id": "pay_1", "status": status, "amount": 500, "bank": bank,
            "history": history.iter().map(|s| json!({"status": s})).collect::<Vec<_>>(),
        })
    }

    /// One captured payment, everything in order.
    fn world() -> Observations {
        let bank = json!({"authorization_id": "auth_1", "capture_id": "cap_1", "void_id": null, "refund_id": null});
        let authorized =
            json!({"id": "pay_1", "status": "authorized", "bank": {"authorization_id": "auth_1"}});
        let captured = json!({"id": "pay_1", "status": "captured", "bank": bank});
        Observations {
            seed: 1,
            flows: vec![FlowRecord {
                index: 0,
                order_id: "ord_0".into(),
                plan: PaymentPlan {
                    customer: 0,
                    card: 0,
                    amount: 500,
                    kind: PlanKind::Normal {
                        next: Next::Capture,
                        refund: false,
                    },
                    duplicate: Duplicate::None,
                },
                card_number: Some("4000".into()),
                payment_id: Some("pay_1".into()),
                exchanges: vec![
                    exchange(Op::Authorize, "a", 201, authorized, false),
                    exchange(Op::Capture, "c", 200, captured.clone(), false),
                    exchange(Op::Capture, "c", 200, captured, true),
                ],
                unanswered: vec![],
            }],
            receipts: vec![vec![receipt(
                "captured",
                &["pending", "authorized", "capturing", "captured"],
                bank,
            )]],
            bank: vec![BankAuthorization {
                id: "auth_1".into(),
                card_number: "4000".into(),
                amount: 500,
                state: "captured".into(),
                captures: 1,
                voids: 0,
                refunds: 0,
                capture_id: Some("cap_1".into()),
                void_id: None,
                refund_id: None,
            }],
            cards: vec![CardBalance {
                card_number: "4000".into(),
                opening: 1000,
                balance: 500,
                available: 500,
            }],
            ledger: json!({"ok": true}),
            reconcile: Ok(vec![]),
            in_flight: vec![],
        }
    }

    fn failed(obs: &Observations) -> Vec<&'static str> {
        check(obs)
            .into_iter()
            .filter(|r| !r.passed)
            .map(|r| r.name)
            .collect()
    }

    #[test]
    fn a_consistent_world_passes_every_invariant() {
        assert_eq!(failed(&world()), Vec::<&str>::new());
    }

    #[test]
    fn a_replay_with_another_body_fails_idempotency() {
        let mut obs = world();
        obs.flows[0].exchanges[2] = exchange(
            Op::Capture,
            "c",
            200,
            json!({"id": "pay_1", "status": "captured", "bank": {"capture_id": "cap_1"}, "extra": 1}),
            true,
        );
        assert_eq!(failed(&obs), ["idempotency"]);
    }

    #[test]
    fn a_second_bank_authorization_fails_idempotency_and_conservation() {
        let mut obs = world();
        let mut orphan = obs.bank[0].clone();
        orphan.id = "auth_2".into();
        orphan.state = "active".into();
        orphan.captures = 0;
        orphan.capture_id = None;
        obs.bank.push(orphan);
        obs.cards[0].available = 0;
        assert_eq!(failed(&obs), ["idempotency", "conservation"]);
    }

    #[test]
    fn an_illegal_history_fails_legality() {
        let mut obs = world();
        obs.receipts[0][0]["history"] =
            json!([{"status": "pending"}, {"status": "authorized"}, {"status": "captured"}]);
        assert_eq!(failed(&obs), ["legality"]);
    }

    #[test]
    fn a_capture_the_receipt_forgot_fails_no_lost_acknowledgment() {
        let mut obs = world();
        obs.receipts[0][0] = receipt(
            "authorized",
            &["pending", "authorized"],
            json!({"authorization_id": "auth_1"}),
        );
        obs.cards[0].available = 0;
        obs.cards[0].balance = 1000;
        let failed = failed(&obs);
        assert!(failed.contains(&"no lost acknowledgment"), "{failed:?}");
    }

    #[test]
    fn a_dishonest_402_fails_honest_answers() {
        let mut obs = world();
        obs.flows[0].exchanges.push(exchange(
            Op::Authorize,
            "a",
            402,
            json!({"error": {"code": "insufficient_funds"}}),
            false,
        ));
        let failed = failed(&obs);
        assert!(failed.contains(&"honest answers"), "{failed:?}");
    }

    #[test]
    fn a_left_over_in_flight_payment_fails_convergence() {
        let mut obs = world();
        obs.in_flight.push("pay_1".into());
        assert_eq!(failed(&obs), ["convergence"]);
    }
}
