//! What the gateway answered: idempotency, own outcome, no lost
//! acknowledgment, honest answers, no server errors, valid requests done.

use std::collections::{BTreeMap, BTreeSet};

use gateway::domain::PaymentStatus;
use serde_json::Value;

use super::{Check, InvariantResult, Observations, bank_id, history, status_of};
use crate::driver::{Answer, Exchange, FlowRecord, ReadKind, payment_id_in};
use crate::model::{self, Op};
use crate::scenario::PlanKind;

/// The payment an exchange is about: the one in its path (an operation),
/// or the one its answer names.
fn payment_of(exchange: &Exchange) -> Option<String> {
    exchange.json().and_then(|body| payment_id_in(&body))
}

/// 4: every final answer to a key (and request body) is byte-identical to
/// its first, replays and late retries included, whatever happened to the
/// payment since; the key sent with another body answers 422, its first
/// request still in flight or not. (A request
/// sent after the key's retention ran out may find it purged and start
/// anew: it is not compared.)
pub fn idempotency(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 4);
    for (i, flow) in obs.flows.iter().enumerate() {
        let mut first: BTreeMap<(&str, u8), (u16, &str, u64)> = BTreeMap::new();
        // In the order the answers came: concurrent duplicates are recorded
        // one after the other.
        let mut finals: Vec<&Exchange> = flow.exchanges.iter().filter(|e| e.is_final()).collect();
        finals.sort_by_key(|e| e.at_ms + e.latency_us / 1000);
        // When each key was first known to be stored though unanswered: a
        // 202 means its operation was recorded under it.
        let mut in_flight_from: BTreeMap<&str, u64> = BTreeMap::new();
        for exchange in flow.exchanges.iter().filter(|e| e.variant == 0) {
            if exchange.status() == Some(202) {
                let answered_ms = exchange.at_ms + exchange.latency_us / 1000;
                let from = in_flight_from.entry(&exchange.key).or_insert(answered_ms);
                *from = (*from).min(answered_ms);
            }
        }
        for exchange in finals {
            let Answer::Http {
                status,
                body,
                replayed,
                ..
            } = &exchange.answer
            else {
                continue;
            };
            if exchange.variant != 0 {
                // A key whose request was refused before any work (400,
                // 404) stored nothing: it may be used again for anything. One
                // answered 202 before this was sent was stored, in flight.
                let stored = first
                    .get(&(exchange.key.as_str(), 0))
                    .is_some_and(|(status, _, _)| !matches!(status, 400 | 404))
                    || in_flight_from
                        .get(exchange.key.as_str())
                        .is_some_and(|from| *from <= exchange.at_ms);
                if !stored {
                    continue;
                }
                c.checked += 1;
                if *status != 422
                    || exchange.error_code().as_deref() != Some("idempotency_key_reused")
                {
                    c.flow(
                        i,
                        format!(
                            "key {} sent with another body answered {status}, not 422 idempotency_key_reused",
                            exchange.key
                        ),
                    );
                }
                continue;
            }
            let answered_ms = exchange.at_ms + exchange.latency_us / 1000;
            match first.get(&(exchange.key.as_str(), exchange.variant)) {
                None => {
                    c.checked += 1;
                    first.insert(
                        (&exchange.key, exchange.variant),
                        (*status, body, answered_ms),
                    );
                }
                Some((_, _, first_ms)) if exchange.at_ms > first_ms + obs.key_retention_ms => {}
                Some((first_status, first_body, _)) => {
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
    c.done()
}

/// The status a successful or pending answer to `op` must show.
fn shown_status(op: Op, status: u16) -> Option<PaymentStatus> {
    match (op, status) {
        (Op::Authorize, 201) => Some(PaymentStatus::Authorized),
        (Op::Authorize, 202) => Some(PaymentStatus::Pending),
        (Op::Capture, 200) => Some(PaymentStatus::Captured),
        (Op::Capture, 202) => Some(PaymentStatus::Capturing),
        (Op::Void, 200) => Some(PaymentStatus::Voided),
        (Op::Void, 202) => Some(PaymentStatus::Voiding),
        (Op::Refund, 200) => Some(PaymentStatus::Refunded),
        (Op::Refund, 202) => Some(PaymentStatus::Refunding),
        (Op::Authorize | Op::Capture | Op::Void | Op::Refund, _) => None,
    }
}

/// 5: an answer reports its own operation's outcome: a 2xx shows the
/// payment in the status that operation leads to (or, for a 202, its
/// in-flight status), and an operation's answer is about the payment it
/// was sent for.
pub fn own_outcome(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 5);
    for (i, flow) in obs.flows.iter().enumerate() {
        for exchange in flow.exchanges.iter().filter(|e| e.variant == 0) {
            let Some(status) = exchange.status() else {
                continue;
            };
            if let Some(wrong) = about_another_payment(flow, exchange) {
                c.checked += 1;
                c.flow(
                    i,
                    format!(
                        "{} {} answered {status} about {wrong}",
                        exchange.op, exchange.key
                    ),
                );
                continue;
            }
            let Some(expected) = shown_status(exchange.op, status) else {
                continue;
            };
            c.checked += 1;
            let body = exchange.json().unwrap_or_default();
            let shown = body["status"].as_str();
            if shown != Some(expected.as_str()) {
                c.flow(
                    i,
                    format!(
                        "{} {} answered {status} showing the payment {}, not {expected}",
                        exchange.op,
                        exchange.key,
                        shown.unwrap_or("(no status)")
                    ),
                );
            }
        }
    }
    c.done()
}

/// What is wrong when an answer names a payment other than its request's:
/// an operation's answer must be about the payment in its path, and a
/// payment shown must be of the flow's order. (Answers mixed up between
/// requests, as a batch that hands its rows back in the wrong order would,
/// are otherwise each a valid answer of a valid status.)
fn about_another_payment(flow: &FlowRecord, exchange: &Exchange) -> Option<String> {
    let body = exchange.json()?;
    if let (Some(sent_for), Some(named)) = (&exchange.payment, payment_id_in(&body))
        && *sent_for != named
    {
        return Some(format!("payment {named}, sent for {sent_for}"));
    }
    match body["order_id"].as_str() {
        Some(order) if order != flow.order_id => Some(format!(
            "a payment of order {order}, the flow's is {}",
            flow.order_id
        )),
        _ => None,
    }
}

/// 8: every 2xx is reflected in the final receipt and at the bank.
pub fn no_lost_acknowledgment(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 8);
    for (i, flow) in obs.flows.iter().enumerate() {
        for exchange in &flow.exchanges {
            let Some(status @ 200..=299) = exchange.status() else {
                continue;
            };
            c.checked += 1;
            let receipt = payment_of(exchange).and_then(|id| obs.receipt(&id));
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
            if !model::reflects(&history(receipt), exchange.op) {
                c.flow(
                    i,
                    format!(
                        "{} answered {status} but the receipt never was {}",
                        exchange.op,
                        exchange.op.succeeded()
                    ),
                );
            }
            let field = exchange.op.bank_field();
            let body = exchange.json().unwrap_or_default();
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

/// Milliseconds from a receipt's first history entry to its entry into
/// `status`, by the timestamps the gateway wrote (the database's clock).
fn ms_until(receipt: &Value, status: PaymentStatus) -> Option<i64> {
    let entries = receipt["history"].as_array()?;
    let at = |entry: &Value| {
        chrono::DateTime::parse_from_rfc3339(entry["at"].as_str()?)
            .ok()
            .map(|t| t.timestamp_millis())
    };
    let created = at(entries.first()?)?;
    let reached = entries
        .iter()
        .find(|e| e["status"].as_str() == Some(status.as_str()))
        .and_then(at)?;
    Some(reached - created)
}

/// The cards whose opening balance does not cover every hold planned on
/// them (each plan's amount twice: a restarter authorizes twice): a 402 on
/// one of these may be the truth, on any other it is a lie.
fn cards_that_can_run_out(obs: &Observations) -> BTreeSet<&str> {
    let mut planned: BTreeMap<&str, i64> = BTreeMap::new();
    for flow in &obs.flows {
        if let Some(card) = flow.card_number.as_deref() {
            *planned.entry(card).or_default() += 2 * flow.plan.amount;
        }
    }
    obs.cards
        .iter()
        .filter(|card| card.opening < planned.get(card.card_number.as_str()).copied().unwrap_or(0))
        .map(|card| card.card_number.as_str())
        .collect()
}

/// 9: a 402 only for a card the bank refused (the plans that decline, and
/// cards that can run out), and the payment ended declined with nothing
/// held; an authorization given up
/// as abandoned only after the grace period; a 400 created nothing; a 409
/// invalid_state changed nothing; a wrong amount is refused with 400;
/// another merchant cannot see the payment.
pub fn honest_answers(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 9);
    let can_run_out = cards_that_can_run_out(obs);
    for (i, flow) in obs.flows.iter().enumerate() {
        let declines = matches!(flow.plan.kind, PlanKind::UnknownCard | PlanKind::Overdraw)
            || flow
                .card_number
                .as_deref()
                .is_some_and(|card| can_run_out.contains(card));
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
            let receipt = payment_of(exchange).and_then(|id| obs.receipt(&id));
            match exchange.status() {
                Some(402) => {
                    c.checked += 1;
                    if !declines {
                        c.flow(
                            i,
                            format!("{} answered 402 for a funded, valid card", exchange.key),
                        );
                    }
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
                    if payment_of(exchange).is_some() {
                        c.flow(i, "answered 400 but a payment was created".into());
                    }
                }
                Some(_) | None => {}
            }
            if exchange.key.ends_with("-wrong") && exchange.is_final() {
                c.checked += 1;
                let param = exchange.json().unwrap_or_default()["error"]["param"].clone();
                if exchange.status() != Some(400) || param != "amount" {
                    c.flow(
                        i,
                        format!(
                            "a {} of another amount answered {:?} (param {param}), not 400 on amount",
                            exchange.op,
                            exchange.status()
                        ),
                    );
                }
            }
        }
        for receipt in obs.receipts.get(i).into_iter().flatten() {
            if status_of(receipt) != Some(PaymentStatus::Failed)
                || receipt["failure"]["code"].as_str() != Some(gateway::payments::ABANDONED)
            {
                continue;
            }
            c.checked += 1;
            let waited = ms_until(receipt, PaymentStatus::Failed).unwrap_or(0);
            let grace = i64::try_from(obs.authorization_grace_ms).unwrap_or(i64::MAX);
            if waited < grace {
                c.flow(
                    i,
                    format!("the authorization was given up after {waited} ms, within its grace period of {grace} ms"),
                );
            }
        }
        for read in &flow.reads {
            c.checked += 1;
            match (read.kind, read.status()) {
                (ReadKind::Foreign, Some(status @ 200..=299)) => c.flow(
                    i,
                    format!(
                        "{}: another merchant was answered {status}",
                        read.describe()
                    ),
                ),
                (ReadKind::Foreign, Some(_) | None) => {}
                (ReadKind::ForeignList, Some(200)) => {
                    if read_shows(read, flow.payment_ids.as_slice()) {
                        c.flow(
                            i,
                            format!(
                                "{}: another merchant was shown the order's payments",
                                read.describe()
                            ),
                        );
                    }
                }
                (ReadKind::ForeignList, Some(_) | None) => {}
                // Only a 404 keeps the payment hidden: a 409 or a 422 tells
                // the other merchant it exists, a 2xx acts on it. (A 429, a
                // 5xx or no answer is judged elsewhere, or proves nothing.)
                (ReadKind::ForeignOperation(_), Some(status))
                    if status != 404 && status != 429 && status < 500 =>
                {
                    c.flow(
                        i,
                        format!("{}: answered {status}, not 404", read.describe()),
                    );
                }
                (ReadKind::ForeignOperation(_), Some(_) | None) => {}
                (ReadKind::Read | ReadKind::List, Some(200)) => {
                    if !read_shows(read, flow.payment_ids.as_slice()) {
                        c.flow(
                            i,
                            format!("{}: the answer does not show the payment", read.describe()),
                        );
                    }
                }
                (ReadKind::Read | ReadKind::List, Some(_) | None) => {}
            }
        }
        for receipt in obs.receipts.get(i).into_iter().flatten() {
            let steps = history(receipt);
            for op in &refused {
                c.checked += 1;
                if model::reflects(&steps, *op)
                    && !accepted.contains(op)
                    && !done_behind_the_gateways(obs, receipt, *op)
                {
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

/// Whether what `op` makes, as the receipt names it, was made at the bank
/// under no gateway's key: by its console, behind the gateways (which
/// reconciliation then brought the receipt up to). A refusal of `op` could
/// not have prevented that.
pub(super) fn done_behind_the_gateways(obs: &Observations, receipt: &Value, op: Op) -> bool {
    let Some(made) = bank_id(receipt, op.bank_field()) else {
        return false;
    };
    !obs.bank_keys
        .iter()
        .any(|k| k.object_id.as_deref() == Some(made))
}

/// 19: the requests of a plan of the usual shape (authorize, then capture
/// or void, then perhaps a refund, each sent once its step before is
/// done) are done: each final answer to one is a 2xx. Refusing them is
/// allowed only where the world gave a reason: an authorization on a card
/// that can run out, or one given up as abandoned (invariant 9 judges that
/// it was past its grace period);
/// a capture, void or refund of a payment whose authorization expired at
/// the bank, or which the bank's console moved. The other checks make sure
/// a refusal changed nothing and told no lie; this one that a gateway
/// refusing good requests (a merchant never paid, a hold left to lapse)
/// does not pass.
pub fn valid_requests_done(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 19);
    let can_run_out = cards_that_can_run_out(obs);
    for (i, flow) in obs.flows.iter().enumerate() {
        if !matches!(flow.plan.kind, PlanKind::Normal { .. }) {
            continue;
        }
        let card_can_run_out = flow
            .card_number
            .as_deref()
            .is_some_and(|card| can_run_out.contains(card));
        for exchange in flow
            .exchanges
            .iter()
            .filter(|e| e.variant == 0 && e.is_final() && !e.key.ends_with("-wrong"))
        {
            c.checked += 1;
            if exchange.status().is_some_and(|s| (200..300).contains(&s)) {
                continue;
            }
            let excused = match exchange.op {
                // Given up once past the grace period (when, invariant 9
                // judges): a client whose retries kept meeting the key in
                // use, its first request's replica killed holding the lease,
                // can reach it without having left the key alone.
                Op::Authorize => {
                    card_can_run_out
                        || flow.left_alone.contains(&exchange.key)
                        || exchange.error_code().as_deref() == Some(gateway::payments::ABANDONED)
                }
                Op::Capture | Op::Void | Op::Refund => exchange
                    .payment
                    .as_deref()
                    .and_then(|id| obs.receipt(id))
                    .is_some_and(|receipt| moved_without_the_gateways(obs, receipt)),
            };
            if !excused {
                c.flow(
                    i,
                    format!(
                        "{}: a request the plan makes in order, refused",
                        exchange.describe()
                    ),
                );
            }
        }
    }
    c.done()
}

/// Whether the bank moved the payment on its own: its authorization
/// expired there, or its console captured, voided or refunded it.
fn moved_without_the_gateways(obs: &Observations, receipt: &Value) -> bool {
    let expired = bank_id(receipt, "authorization_id")
        .and_then(|id| obs.bank.iter().find(|b| b.id == id))
        .is_some_and(|bank| bank.state == "expired");
    expired
        || [Op::Capture, Op::Void, Op::Refund]
            .into_iter()
            .any(|op| done_behind_the_gateways(obs, receipt, op))
}

/// Whether a 200 read shows the payment it read (or, for a list, one of
/// the flow's payments).
fn read_shows(read: &crate::driver::Read, payment_ids: &[String]) -> bool {
    let body = read.json().unwrap_or_default();
    match read.kind {
        ReadKind::Read | ReadKind::Foreign | ReadKind::ForeignOperation(_) => {
            body["id"].as_str() == read.payment_id.as_deref()
        }
        ReadKind::List | ReadKind::ForeignList => {
            payment_ids.is_empty()
                || body["data"].as_array().is_some_and(|d| {
                    d.iter()
                        .any(|p| payment_ids.iter().any(|id| p["id"].as_str() == Some(id)))
                })
        }
    }
}

/// 10: no 5xx but a 503 that says when to come back (`Retry-After`): a
/// 500 is a bug, a 502 a bank refusing the gateway's own request, and
/// neither is something a client can act on.
pub fn no_server_errors(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 10);
    let acceptable = |answer: &Answer| match answer {
        Answer::Http {
            status: 503,
            retry_after,
            ..
        } => retry_after.is_some(),
        Answer::Http { status, .. } => *status < 500,
        Answer::Transport { .. } => true,
    };
    for (i, flow) in obs.flows.iter().enumerate() {
        for exchange in &flow.exchanges {
            c.checked += 1;
            if !acceptable(&exchange.answer) {
                c.flow(i, format!("{}: a server error", exchange.describe()));
            }
        }
        for read in &flow.reads {
            c.checked += 1;
            if !acceptable(&read.answer) {
                c.flow(i, format!("{}: a server error", read.describe()));
            }
        }
    }
    c.done()
}
