//! Where money is: no double charge, no orphan movement, conservation.

use std::collections::BTreeMap;

use gateway::domain::PaymentStatus;
use serde_json::Value;

use super::{Check, InvariantResult, Observations, bank_id, status_of};

/// Whether a payment in `status` holds or has taken the customer's money.
fn holds_money(status: PaymentStatus) -> bool {
    match status {
        PaymentStatus::Authorized
        | PaymentStatus::Capturing
        | PaymentStatus::Captured
        | PaymentStatus::Voiding
        | PaymentStatus::Refunding => true,
        PaymentStatus::Pending
        | PaymentStatus::Declined
        | PaymentStatus::Failed
        | PaymentStatus::Expired
        | PaymentStatus::Voided
        | PaymentStatus::Refunded => false,
    }
}

/// 1: per authorization, the bank holds at most one capture, at most one
/// refund, never both a capture and a void; per order, at most one payment
/// holds or has taken money (a client that started over may have made two
/// payments, but not two charges).
pub fn no_double_charge(obs: &Observations) -> InvariantResult {
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
        c.checked += 1;
        let holding = receipts
            .iter()
            .filter(|r| status_of(r).is_some_and(holds_money))
            .count();
        if holding > 1 {
            c.flow(i, format!("one order holds or took money {holding} times"));
        }
        let restarted = obs.flows[i].plan.client == crate::scenario::ClientKind::Restarter;
        if receipts.len() > 1 && !restarted {
            c.flow(i, format!("one order became {} payments", receipts.len()));
        }
    }
    c.done()
}

/// The response field that names what a bank path creates.
fn created_by(path: &str) -> Option<(&'static str, &'static str)> {
    match path.trim_end_matches('/') {
        "/api/v1/authorizations" => Some(("authorize", "authorization_id")),
        "/api/v1/captures" => Some(("capture", "capture_id")),
        "/api/v1/voids" => Some(("void", "void_id")),
        "/api/v1/refunds" => Some(("refund", "refund_id")),
        _ => None,
    }
}

/// 2: everything the bank did under a gateway's key is one of the
/// gateway's operations, of the same kind, and made the object that
/// operation's payment names; every request a gateway sent to move money
/// (as the tap saw it, answered or refused) carries the key of an operation
/// of its kind; and every hold on a run's card was made under a gateway's
/// authorization key and is named by exactly one receipt.
pub fn no_orphan_movement(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 2);
    let operations: BTreeMap<&str, _> = obs
        .operations
        .iter()
        .map(|o| (o.bank_key.as_str(), o))
        .collect();
    for done in &obs.bank_keys {
        c.checked += 1;
        let Some((kind, field)) = created_by(&done.path) else {
            continue;
        };
        let object = done.object_id.as_deref().unwrap_or("?");
        let Some(operation) = operations.get(done.key.as_str()) else {
            c.other(
                done.key.clone(),
                format!(
                    "the bank made {object} ({}) under a key no gateway operation has",
                    done.path
                ),
            );
            continue;
        };
        if operation.kind != kind {
            c.payment(
                &operation.payment_id,
                format!(
                    "the bank made {object} ({}) under the key of a {} operation",
                    done.path, operation.kind
                ),
            );
            continue;
        }
        let named = obs
            .receipt(&operation.payment_id)
            .and_then(|r| bank_id(r, field));
        if named != done.object_id.as_deref() {
            c.payment(
                &operation.payment_id,
                format!(
                    "the bank made {object} for the payment's {kind} operation, but the receipt names {named:?}"
                ),
            );
        }
    }
    // What the gateways sent, whatever the bank answered: a request under a
    // key no operation of its kind has is a second attempt at the same
    // movement that only the bank's own refusal kept from moving money
    // (another bank would have taken it).
    // Only the gateways talk through the tap (the run's console goes to
    // the bank directly), so every such call is theirs.
    for call in obs.tapped.iter().flatten() {
        let Some((kind, _)) = created_by(&call.path) else {
            continue;
        };
        c.checked += 1;
        let Some(key) = call.key.as_deref() else {
            c.other(
                call.path.clone(),
                format!("a gateway sent {} without an idempotency key", call.path),
            );
            continue;
        };
        match operations.get(key) {
            Some(operation) if operation.kind == kind => {}
            Some(operation) => c.payment(
                &operation.payment_id,
                format!(
                    "a gateway sent {} under the key of a {} operation",
                    call.path, operation.kind
                ),
            ),
            None => c.other(
                key.to_owned(),
                format!(
                    "a gateway sent {} under a key no gateway operation has",
                    call.path
                ),
            ),
        }
    }
    let made: BTreeMap<&str, &str> = obs
        .bank_keys
        .iter()
        .filter(|k| created_by(&k.path).is_some_and(|(kind, _)| kind == "authorize"))
        .filter_map(|k| Some((k.object_id.as_deref()?, k.key.as_str())))
        .collect();
    let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, receipt) in obs.all_receipts() {
        if let Some(id) = bank_id(receipt, "authorization_id") {
            *owners.entry(id).or_default() += 1;
        }
    }
    for bank in &obs.bank {
        c.checked += 1;
        if !made.contains_key(bank.id.as_str()) {
            c.other(
                bank.id.clone(),
                format!(
                    "a hold no gateway authorization key made: {}",
                    bank.describe()
                ),
            );
        }
        match owners.get(bank.id.as_str()) {
            Some(1) => {}
            Some(n) => c.other(
                bank.id.clone(),
                format!("{n} receipts name this one bank authorization"),
            ),
            None => c.other(
                bank.id.clone(),
                format!(
                    "no receipt knows this bank authorization: {}",
                    bank.describe()
                ),
            ),
        }
    }
    c.done()
}

/// 6: the ledger verifies, and each card's balances are what the final
/// receipts imply: balance = opening − captured; available = balance −
/// held (authorized).
pub fn conservation(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 6);
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

/// What an authorization asked for: its amount and currency.
type Asked = (i64, String);

fn asked_in(body: &Value) -> Option<Asked> {
    Some((
        body["amount"].as_i64()?,
        body["currency"].as_str()?.to_ascii_uppercase(),
    ))
}

/// 18: every payment holds the amount and currency an authorization of its
/// flow asked for (the one whose answer named it, when one did), the bank's
/// authorization holds that amount, and every answer and read showing the
/// payment shows it. The other checks compare the receipts with the bank
/// and the cards with the receipts: a gateway that authorized a cent more
/// than it was asked would satisfy them all.
pub fn amounts_as_asked(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 18);
    for (i, flow) in obs.flows.iter().enumerate() {
        let sent: BTreeMap<(&str, u8), Asked> = flow
            .sent
            .iter()
            .filter(|r| r.op == crate::model::Op::Authorize)
            .filter_map(|r| {
                let body = serde_json::from_str::<Value>(&r.body).ok()?;
                Some(((r.key.as_str(), r.variant), asked_in(&body)?))
            })
            .collect();
        // The authorization whose answer named each payment.
        let mut named: BTreeMap<String, &Asked> = BTreeMap::new();
        for exchange in flow
            .exchanges
            .iter()
            .filter(|e| e.op == crate::model::Op::Authorize)
        {
            let id = exchange
                .json()
                .and_then(|b| crate::driver::payment_id_in(&b));
            if let (Some(id), Some(asked)) =
                (id, sent.get(&(exchange.key.as_str(), exchange.variant)))
            {
                named.insert(id, asked);
            }
        }
        for receipt in obs.receipts.get(i).into_iter().flatten() {
            c.checked += 1;
            let id = receipt["id"].as_str().unwrap_or("?");
            let Some(held) = asked_in(receipt) else {
                c.flow(i, format!("receipt {id} shows no amount or currency"));
                continue;
            };
            match named.get(id) {
                Some(asked) if **asked != held => c.flow(
                    i,
                    format!("receipt {id} holds {held:?}; its authorization asked for {asked:?}"),
                ),
                Some(_) => {}
                None if !sent.values().any(|asked| *asked == held) => c.flow(
                    i,
                    format!(
                        "receipt {id} holds {held:?}, which no authorization of its order asked for"
                    ),
                ),
                None => {}
            }
            let at_bank = bank_id(receipt, "authorization_id")
                .and_then(|auth| obs.bank.iter().find(|b| b.id == auth));
            if let Some(bank) = at_bank.filter(|b| b.amount != held.0) {
                c.flow(
                    i,
                    format!(
                        "receipt {id} holds {}¢, the bank's authorization {}¢",
                        held.0, bank.amount
                    ),
                );
            }
        }
        for (what, shown) in shown_payments(flow) {
            let Some(receipt) = shown["id"].as_str().and_then(|id| obs.receipt(id)) else {
                continue;
            };
            c.checked += 1;
            for field in ["amount", "currency"] {
                if shown
                    .get(field)
                    .is_some_and(|shown| *shown != receipt[field])
                {
                    c.flow(
                        i,
                        format!(
                            "{what} showed payment {} with {field} {}; its receipt holds {}",
                            receipt["id"], shown[field], receipt[field]
                        ),
                    );
                }
            }
        }
    }
    c.done()
}

/// Every payment a flow's successful answers and reads showed (each entry
/// of a list), with what showed it.
fn shown_payments(flow: &crate::driver::FlowRecord) -> Vec<(String, Value)> {
    let answers = flow
        .exchanges
        .iter()
        .filter(|e| e.status().is_some_and(|s| (200..300).contains(&s)))
        .filter_map(|e| Some((format!("{} {}", e.op, e.key), e.json()?)));
    let reads = flow.reads.iter().flat_map(|r| {
        let what = r.describe();
        r.payments_shown()
            .into_iter()
            .map(move |payment| (what.clone(), payment))
    });
    answers.chain(reads).collect()
}
