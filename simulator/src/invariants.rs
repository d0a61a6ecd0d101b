//! The eight invariants, checked once the system has quiesced, over what
//! the client saw ([`FlowRecord`]s), the gateway's final receipts, the
//! bank's books, the reconciliation report, and (for card data) a dump of
//! the gateway's database and its captured logs. Pure: the collection is in
//! [`crate::run`], so each check can be fed a forged world in a test.

use std::collections::{BTreeMap, BTreeSet};

use gateway::domain::PaymentStatus;
use serde::Serialize;
use serde_json::Value;

use crate::driver::{Answer, FlowRecord, ReadKind};
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
    /// What the card-data check looks for, and where.
    pub card_data: CardData,
}

/// The card-data check's material: the secrets the run sent, and
/// everything it captured from the gateway besides its answers (which are
/// in the flows and receipts).
#[derive(Debug, Clone, Default)]
pub struct CardData {
    /// Every card number the run used: its fresh cards, and the invalid and
    /// unknown numbers it sent.
    pub numbers: Vec<String>,
    /// Every CVV it sent.
    pub cvvs: Vec<String>,
    /// The gateway's database, one `(table, row_to_json(row))` per row.
    pub dump: Vec<(String, String)>,
    /// The gateway replicas' log files: `(path, contents)`.
    pub logs: Vec<(String, String)>,
    /// What could not be collected (the dump failed, a log was unreadable).
    pub problems: Vec<String>,
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

pub const NAMES: [&str; 8] = [
    "no double charge",
    "convergence",
    "idempotency",
    "conservation",
    "legality",
    "no lost acknowledgment",
    "honest answers",
    "card data",
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
        card_data(obs),
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
                    | PaymentStatus::Failed
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

/// Whether a payment as the API shows it is legal: its status is one of
/// [`PaymentStatus::ALL`], and its history a path of the state diagram
/// ending there.
fn legal(payment: &Value) -> Result<(), String> {
    if status_of(payment).is_none() {
        return Err(format!(
            "the status {} is not a known one",
            payment["status"]
        ));
    }
    let steps = history(payment);
    if steps.len() != history_names(payment).len() {
        return Err("the history names an unknown status".into());
    }
    model::check_history(&steps)?;
    if steps.last().copied() != status_of(payment) {
        return Err("the history does not end at the status".into());
    }
    Ok(())
}

/// 5: every receipt's history is a path of the state diagram; so is every
/// payment a read showed while the plan ran (`GET /v1/payments/{id}`
/// answering 200, and each payment an order's list showed).
fn legality(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 5);
    for (i, receipts) in obs.receipts.iter().enumerate() {
        for receipt in receipts {
            c.checked += 1;
            if let Err(e) = legal(receipt) {
                c.flow(i, e);
            }
        }
    }
    for (i, flow) in obs.flows.iter().enumerate() {
        for read in &flow.reads {
            if read.status() != Some(200) {
                continue;
            }
            let body = read.json().unwrap_or_default();
            let shown: Vec<Value> = match read.kind {
                ReadKind::Read => vec![body],
                ReadKind::List => body["data"].as_array().cloned().unwrap_or_default(),
            };
            for payment in &shown {
                c.checked += 1;
                if let Err(e) = legal(payment) {
                    c.flow(i, format!("{}: {e}", read.describe()));
                }
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
        for read in &flow.reads {
            c.checked += 1;
            match read.status() {
                Some(503) | None => {}
                Some(status @ 500..=599) => c.flow(
                    i,
                    format!("{}: a read must not answer {status}", read.describe()),
                ),
                Some(200) => {
                    let body = read.json().unwrap_or_default();
                    let id = flow.payment_id.as_deref();
                    let shows = match read.kind {
                        ReadKind::Read => body["id"].as_str() == id,
                        ReadKind::List => id.is_none_or(|id| {
                            body["data"]
                                .as_array()
                                .is_some_and(|d| d.iter().any(|p| p["id"].as_str() == Some(id)))
                        }),
                    };
                    if !shows {
                        c.flow(
                            i,
                            format!(
                                "{}: the answer does not show payment {}",
                                read.describe(),
                                id.unwrap_or("?")
                            ),
                        );
                    }
                }
                Some(_) => {}
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

/// 8: no card number the run used appears anywhere the gateway wrote or
/// said: a row of its database, a line of its logs, an answer, a receipt;
/// no CVV either, as the value of a `cvv`/`cvc` key anywhere, or (in the
/// database) as a whole string value. `bytea` values (e.g. stored response
/// bodies) are decoded and scanned too.
fn card_data(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 8);
    let data = &obs.card_data;
    let secrets = Secrets::new(data);
    for problem in &data.problems {
        c.other("card data".into(), format!("not scanned: {problem}"));
    }
    for (table, row) in &data.dump {
        c.checked += 1;
        for leak in secrets.in_row(row) {
            c.other(format!("table {table}"), leak);
        }
    }
    for (path, text) in &data.logs {
        for (n, line) in text.lines().enumerate() {
            c.checked += 1;
            for leak in secrets.in_text(line) {
                c.other(format!("{path} line {}", n + 1), leak);
            }
        }
    }
    for (i, flow) in obs.flows.iter().enumerate() {
        for exchange in &flow.exchanges {
            if let Answer::Http { body, .. } = &exchange.answer {
                c.checked += 1;
                for leak in secrets.in_text(body) {
                    c.flow(
                        i,
                        format!("{} answer {}: {leak}", exchange.op, exchange.key),
                    );
                }
            }
        }
    }
    for (i, flow) in obs.flows.iter().enumerate() {
        for read in &flow.reads {
            if let Answer::Http { body, .. } = &read.answer {
                c.checked += 1;
                for leak in secrets.in_text(body) {
                    c.flow(i, format!("{}: {leak}", read.describe()));
                }
            }
        }
    }
    for (i, receipts) in obs.receipts.iter().enumerate() {
        for receipt in receipts {
            c.checked += 1;
            for leak in secrets.in_text(&receipt.to_string()) {
                c.flow(i, format!("the receipt: {leak}"));
            }
        }
    }
    c.done()
}

/// The card numbers and CVVs to look for.
struct Secrets<'a> {
    numbers: BTreeSet<&'a str>,
    lengths: BTreeSet<usize>,
    cvvs: BTreeSet<&'a str>,
}

impl<'a> Secrets<'a> {
    fn new(data: &'a CardData) -> Self {
        let numbers: BTreeSet<&str> = data
            .numbers
            .iter()
            .map(String::as_str)
            .filter(|n| n.len() >= 8)
            .collect();
        Self {
            lengths: numbers.iter().map(|n| n.len()).collect(),
            numbers,
            cvvs: data
                .cvvs
                .iter()
                .map(String::as_str)
                .filter(|c| !c.is_empty())
                .collect(),
        }
    }

    /// Leaks in free text (a log line, an answer): card numbers anywhere in
    /// a run of digits, CVVs as the value of a `cvv`/`cvc` key.
    fn in_text(&self, text: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .numbers_in(text)
            .into_iter()
            .map(|n| format!("card number {} appears", masked(n)))
            .collect();
        if self.cvv_by_key(text) {
            found.push("a CVV appears as the value of a cvv key".into());
        }
        found
    }

    /// Leaks in a row: as in text, in the row and in each decoded `bytea`;
    /// and CVVs as whole string values.
    fn in_row(&self, row: &str) -> Vec<String> {
        let mut found = self.in_text(row);
        let mut strings = Vec::new();
        if let Ok(value) = serde_json::from_str::<Value>(row) {
            collect_strings(&value, &mut strings);
        }
        let mut i = 0;
        while i < strings.len() {
            if let Some(decoded) = decode_bytea(&strings[i]) {
                found.extend(
                    self.in_text(&decoded)
                        .into_iter()
                        .map(|leak| format!("{leak} (in a bytea value)")),
                );
                if let Ok(value) = serde_json::from_str::<Value>(&decoded) {
                    collect_strings(&value, &mut strings);
                }
            }
            i += 1;
        }
        if strings.iter().any(|s| self.cvvs.contains(s.as_str())) {
            found.push("a CVV appears as a string value".into());
        }
        found.sort();
        found.dedup();
        found
    }

    /// The numbers found in `text`'s runs of digits.
    fn numbers_in(&self, text: &str) -> BTreeSet<&'a str> {
        let mut found = BTreeSet::new();
        let Some(&shortest) = self.lengths.first() else {
            return found;
        };
        let bytes = text.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            if !bytes[start].is_ascii_digit() {
                start += 1;
                continue;
            }
            let end = bytes[start..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(bytes.len(), |n| start + n);
            if end - start >= shortest {
                let run = &text[start..end];
                for &len in self.lengths.iter().filter(|&&len| len <= run.len()) {
                    for at in 0..=run.len() - len {
                        if let Some(&number) = self.numbers.get(&run[at..at + len]) {
                            found.insert(number);
                        }
                    }
                }
            }
            start = end;
        }
        found
    }

    /// Whether a `cvv` or `cvc` key (any case, quoted or not, `:` or `=`)
    /// is followed by one of the CVVs: `"cvv":"123"`, `\"cvv\": \"123\"`,
    /// `cvv=123`. Not `invalid_cvv` and the like: no digits follow.
    fn cvv_by_key(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        (0..bytes.len().saturating_sub(2)).any(|i| {
            let key = &bytes[i..i + 3];
            if !(key.eq_ignore_ascii_case(b"cvv") || key.eq_ignore_ascii_case(b"cvc")) {
                return false;
            }
            let rest = &bytes[i + 3..];
            let skipped = rest
                .iter()
                .take(8)
                .take_while(|b| matches!(b, b'"' | b'\\' | b':' | b'=' | b' ' | b'\''))
                .count();
            let digits: Vec<u8> = rest[skipped..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            skipped > 0 && std::str::from_utf8(&digits).is_ok_and(|d| self.cvvs.contains(d))
        })
    }
}

/// `…1111`: never the whole number in a report.
fn masked(number: &str) -> String {
    format!("…{}", &number[number.len().saturating_sub(4)..])
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(fields) => fields.values().for_each(|v| collect_strings(v, out)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A `bytea` as `row_to_json` writes it (`\x` and hex), decoded as text.
fn decode_bytea(value: &str) -> Option<String> {
    let hex = value.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::driver::{Exchange, Read};
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

    fn read(kind: ReadKind, after: &str, status: u16, body: Value) -> Read {
        Read {
            kind,
            after: after.into(),
            at_ms: 0,
            latency_us: 1,
            answer: Answer::Http {
                status,
                replayed: false,
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
        let authorized_read = receipt(
            "authorized",
            &["pending", "authorized"],
            json!({"authorization_id": "auth_1"}),
        );
        let captured_read = receipt(
            "captured",
            &["pending", "authorized", "capturing", "captured"],
            bank.clone(),
        );
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
                    reads: true,
                },
                card_number: Some("4000".into()),
                payment_id: Some("pay_1".into()),
                exchanges: vec![
                    exchange(Op::Authorize, "a", 201, authorized, false),
                    exchange(Op::Capture, "c", 200, captured.clone(), false),
                    exchange(Op::Capture, "c", 200, captured, true),
                ],
                reads: vec![
                    read(ReadKind::Read, "authorize", 200, authorized_read.clone()),
                    read(ReadKind::Read, "capture", 200, captured_read.clone()),
                    read(ReadKind::List, "end", 200, json!({"data": [captured_read]})),
                ],
                unanswered: vec![],
                sent_card: (CARD.into(), "987".into()),
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
            card_data: CardData {
                numbers: vec!["4000".into(), CARD.into()],
                cvvs: vec!["987".into()],
                dump: vec![
                    (
                        "payments".into(),
                        json!({"id": "pay_1", "card_last4": "1111",
                        "created_at": "2024-06-01T12:09:59.987Z"})
                        .to_string(),
                    ),
                    // A stored answer, as bytea: `{"card":{"last4":"1111"}}`.
                    (
                        "idempotency_keys".into(),
                        json!({"response_body":
                        "\\x7b2263617264223a7b226c61737434223a2231313131227d7d"})
                        .to_string(),
                    ),
                ],
                logs: vec![(
                    "gateway-0.log".into(),
                    "{\"level\":\"INFO\",\"card_last4\":\"1111\",\"elapsed_ms\":987}\n\
                     {\"level\":\"WARN\",\"error\":\"invalid_cvv\",\"code\":987}\n"
                        .into(),
                )],
                problems: vec![],
            },
        }
    }

    const CARD: &str = "4111111111111111";

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
    fn a_card_number_or_cvv_in_the_dump_or_a_log_fails_card_data() {
        let scanned = check(&world())
            .into_iter()
            .find(|r| r.name == "card data")
            .expect("the card-data check runs");
        assert!(scanned.passed && scanned.checked == 11, "{scanned:?}");

        let leaks = |obs: &Observations| -> Vec<String> {
            check(obs)
                .into_iter()
                .filter(|r| !r.passed)
                .flat_map(|r| {
                    r.examples
                        .into_iter()
                        .map(move |v| format!("{}: {}: {}", r.name, v.subject, v.message))
                })
                .collect()
        };
        // In a log line, inside a longer message.
        let mut obs = world();
        obs.card_data.logs[0]
            .1
            .push_str(&format!("{{\"message\":\"authorizing x{CARD}y\"}}\n"));
        assert_eq!(
            leaks(&obs),
            ["card data: gateway-0.log line 3: card number …1111 appears"]
        );
        // In a table row.
        let mut obs = world();
        obs.card_data.dump[0].1 = json!({"id": "pay_1", "failure_code": CARD}).to_string();
        assert_eq!(
            leaks(&obs),
            ["card data: table payments: card number …1111 appears"]
        );
        // In a bytea (hex) column: `{"n":"4111111111111111"}`.
        let hex: String = format!("{{\"n\":\"{CARD}\"}}")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut obs = world();
        obs.card_data.dump[1].1 = json!({"response_body": format!("\\x{hex}")}).to_string();
        assert_eq!(
            leaks(&obs),
            ["card data: table idempotency_keys: card number …1111 appears (in a bytea value)"]
        );
        // A CVV as a whole string value in the dump, or after a cvv key in a log.
        let mut obs = world();
        obs.card_data.dump[0].1 = json!({"id": "pay_1", "note": "987"}).to_string();
        obs.card_data.logs[0]
            .1
            .push_str("{\"request\":\"{\\\"cvv\\\": \\\"987\\\"}\"}\n");
        assert_eq!(
            leaks(&obs),
            [
                "card data: table payments: a CVV appears as a string value",
                "card data: gateway-0.log line 3: a CVV appears as the value of a cvv key",
            ]
        );
        // In an answer: the flow is named.
        let mut obs = world();
        obs.flows[0].exchanges[0] = exchange(
            Op::Authorize,
            "a",
            400,
            json!({"error": {"message": format!("{CARD} is invalid")}}),
            false,
        );
        let found = leaks(&obs);
        assert!(
            found.iter().any(|l| l
                .starts_with("card data: #0 ord_0 pay_1: authorize answer a: card number …1111")),
            "{found:?}"
        );
        // Nothing collected is a failure, not a pass.
        let mut obs = world();
        obs.card_data
            .problems
            .push("dumping the database: refused".into());
        assert_eq!(
            leaks(&obs),
            ["card data: card data: not scanned: dumping the database: refused"]
        );
    }

    #[test]
    fn a_read_showing_an_illegal_payment_fails_legality() {
        // A status the diagram does not know.
        let mut obs = world();
        obs.flows[0].reads[0] = read(
            ReadKind::Read,
            "authorize",
            200,
            json!({"id": "pay_1", "status": "approved",
                "history": [{"status": "pending"}, {"status": "authorized"}]}),
        );
        assert_eq!(failed(&obs), ["legality"]);
        // A history that skips a step (authorized → captured).
        let mut obs = world();
        obs.flows[0].reads[1] = read(
            ReadKind::Read,
            "capture",
            200,
            receipt(
                "captured",
                &["pending", "authorized", "captured"],
                json!({}),
            ),
        );
        assert_eq!(failed(&obs), ["legality"]);
    }

    #[test]
    fn a_read_answering_500_or_missing_the_payment_fails_honest_answers() {
        let mut obs = world();
        obs.flows[0].reads[0] = read(
            ReadKind::Read,
            "authorize",
            500,
            json!({"error": {"code": "internal"}}),
        );
        assert_eq!(failed(&obs), ["honest answers"]);
        // 503 (a replica or the database down) and no answer are allowed.
        let mut obs = world();
        obs.flows[0].reads[0] = read(ReadKind::Read, "authorize", 503, json!({}));
        obs.flows[0].reads[1].answer = Answer::Transport {
            error: "connection refused".into(),
        };
        assert_eq!(failed(&obs), Vec::<&str>::new());
        // The order's list without its payment.
        let mut obs = world();
        obs.flows[0].reads[2] = read(ReadKind::List, "end", 200, json!({"data": []}));
        assert_eq!(failed(&obs), ["honest answers"]);
    }

    #[test]
    fn a_left_over_in_flight_payment_fails_convergence() {
        let mut obs = world();
        obs.in_flight.push("pay_1".into());
        assert_eq!(failed(&obs), ["convergence"]);
    }
}
