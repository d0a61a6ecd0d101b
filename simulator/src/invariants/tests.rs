//! Each invariant fed a forged world: a consistent one passes them all,
//! and each kind of damage fails exactly the invariants it should.

use serde_json::{Value, json};

use super::webhooks::{Delivery, EndpointSeen, PaymentHistory, Rotation, WebhookObservations};
use super::*;
use crate::driver::{Answer, Exchange, FlowRecord, Read, ReadKind};
use crate::model::Op;
use crate::revocation::{KeyRevocation, Probe};
use crate::scenario::{ClientKind, Duplicate, Misuse, Next, PaymentPlan, PlanKind};
use gateway::webhooks::signature::{self, SigningSecret};

fn exchange(op: Op, key: &str, status: u16, body: Value, replayed: bool) -> Exchange {
    Exchange {
        op,
        key: key.into(),
        variant: 0,
        merchant: 0,
        // The world's operations are all on its one payment.
        payment: (op != Op::Authorize).then(|| "pay_1".into()),
        at_ms: 0,
        latency_us: 1,
        answer: Answer::Http {
            status,
            replayed,
            retry_after: None,
            body: body.to_string(),
        },
    }
}

fn read(kind: ReadKind, after: &str, status: u16, body: Value) -> Read {
    Read {
        kind,
        after: after.into(),
        payment_id: Some("pay_1".into()),
        at_ms: 0,
        latency_us: 1,
        answer: Answer::Http {
            status,
            replayed: false,
            retry_after: None,
            body: body.to_string(),
        },
    }
}

fn receipt(status: &str, history: &[&str], bank: Value) -> Value {
    json!({
        "id": "pay_1", "status": status, "amount": 500, "currency": "USD", "bank": bank,
        "history": history.iter().map(|s| json!({"status": s})).collect::<Vec<_>>(),
    })
}

/// One captured payment, everything in order.
fn world() -> Observations {
    let bank = json!({"authorization_id": "auth_1", "capture_id": "cap_1", "void_id": null, "refund_id": null});
    let authorized = json!({"id": "pay_1", "order_id": "ord_0", "status": "authorized",
        "amount": 500, "currency": "USD", "bank": {"authorization_id": "auth_1"}});
    let captured = json!({"id": "pay_1", "order_id": "ord_0", "status": "captured",
        "amount": 500, "currency": "USD", "bank": bank});
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
                client: ClientKind::Patient,
                misuse: Misuse::None,
                merchant: 0,
                late_replay: false,
            },
            card_number: Some("4000".into()),
            payment_id: Some("pay_1".into()),
            payment_ids: vec!["pay_1".into()],
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
            left_alone: vec![],
            sent_card: (CARD.into(), "987".into()),
            sent: vec![authorization_request(500)],
            answered_at: vec![],
            unanswered_at: vec![],
            restarted_at: None,
            hedged: Default::default(),
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
        bank_keys: vec![
            BankKey {
                path: "/api/v1/authorizations".into(),
                key: "gw_authorize_1".into(),
                object_id: Some("auth_1".into()),
            },
            BankKey {
                path: "/api/v1/captures".into(),
                key: "gw_capture_2".into(),
                object_id: Some("cap_1".into()),
            },
        ],
        operations: vec![
            GatewayOperation {
                payment_id: "pay_1".into(),
                kind: "authorize".into(),
                bank_key: "gw_authorize_1".into(),
                status: "succeeded".into(),
            },
            GatewayOperation {
                payment_id: "pay_1".into(),
                kind: "capture".into(),
                bank_key: "gw_capture_2".into(),
                status: "succeeded".into(),
            },
        ],
        tapped: Some(vec![
            TappedCall {
                path: "/api/v1/authorizations".into(),
                key: Some("gw_authorize_1".into()),
                caller: Some("a".into()),
                started_us: 0,
                ended_us: Some(10),
            },
            TappedCall {
                path: "/api/v1/captures".into(),
                key: Some("gw_capture_2".into()),
                caller: Some("a".into()),
                started_us: 20,
                ended_us: Some(30),
            },
        ]),
        authorization_grace_ms: 8_000,
        key_retention_ms: 6_000,
        webhooks: Some(webhook_world()),
        revocation: Some(revocation_world()),
        bank_own_errors: Some(0),
        index: PaymentIndex::default(),
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
            requests: vec![],
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

/// The world's authorization as sent, under key `a`.
fn authorization_request(amount: i64) -> crate::driver::Request {
    crate::driver::Request {
        op: Op::Authorize,
        path: "/v1/payments".into(),
        key: "a".into(),
        body: json!({"order_id": "ord_0", "amount": amount, "currency": "usd",
            "card": {"number": CARD, "cvv": "987"}})
        .to_string(),
        variant: 0,
    }
}

fn endpoint_secret() -> SigningSecret {
    SigningSecret::from_bytes(vec![3; 32])
}

/// The event for pay_1's `n`-th change (1-based), as delivered at `at_us`.
fn delivery(n: usize, at_us: u64, secret: &SigningSecret) -> Delivery {
    const HISTORY: [&str; 4] = ["pending", "authorized", "capturing", "captured"];
    const TYPES: [&str; 4] = [
        "payment.created",
        "payment.authorized",
        "payment.capture_requested",
        "payment.captured",
    ];
    let id = format!("evt_{n}");
    let history: Vec<Value> = HISTORY[..n].iter().map(|s| json!({"status": s})).collect();
    let body = json!({"id": id, "type": TYPES[n - 1], "created_at": "2024-06-01T12:00:00Z",
        "data": {"sequence": n, "payment": {"id": "pay_1", "history": history}}})
    .to_string()
    .into_bytes();
    Delivery {
        path: "/m0".into(),
        signature: signature::sign(secret, &id, 1_700_000_000, &body),
        id,
        timestamp: 1_700_000_000,
        body,
        arrived_us: at_us,
        ended_us: at_us + 10,
        delivered: true,
        lag_ms: Some(5),
    }
}

fn webhook_world() -> WebhookObservations {
    let secret = endpoint_secret();
    WebhookObservations {
        endpoints: vec![EndpointSeen {
            merchant_id: "m0".into(),
            path: "/m0".into(),
            secret: secret.clone(),
            rotated: None,
        }],
        received: (1..=4)
            .map(|n| delivery(n, n as u64 * 1_000, &secret))
            .collect(),
        payments: vec![PaymentHistory {
            id: "pay_1".into(),
            merchant_id: "m0".into(),
            statuses: ["pending", "authorized", "capturing", "captured"]
                .map(str::to_owned)
                .to_vec(),
        }],
        left: vec![],
        timeout_us: 1_000_000,
    }
}

/// The spare key worked for two probes, was revoked between 1.0 and 1.1 s,
/// was still taken on trust for a probe inside the cache's second, and was
/// refused after it; one probe met a replica that was down.
fn revocation_world() -> KeyRevocation {
    let probe = |sent_ms: u64, status: Option<u16>| Probe {
        sent_us: sent_ms * 1_000,
        answered_us: sent_ms * 1_000 + 5_000,
        status,
    };
    KeyRevocation {
        cache_ms: 1_000,
        revoking_us: Some(1_000_000),
        revoked_us: Some(1_100_000),
        probes: vec![
            probe(500, Some(200)),
            probe(900, Some(200)),
            probe(1_500, Some(200)),
            probe(2_000, None),
            probe(2_100, Some(401)),
            probe(3_000, Some(401)),
        ],
    }
}

fn webhooks(obs: &mut Observations) -> &mut WebhookObservations {
    obs.webhooks.as_mut().unwrap()
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
    assert_eq!(failed(&obs), ["no orphan money movement", "conservation"]);
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

/// The flow's authorization answered 402 `insufficient_funds` as well.
fn answer_402(obs: &mut Observations) {
    obs.flows[0].exchanges.push(exchange(
        Op::Authorize,
        "a",
        402,
        json!({"error": {"code": "insufficient_funds"}}),
        false,
    ));
}

#[test]
fn a_dishonest_402_fails_honest_answers() {
    let mut obs = world();
    answer_402(&mut obs);
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
        found
            .iter()
            .any(|l| l
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
fn a_500_or_a_503_without_retry_after_fails_no_server_errors_and_a_read_missing_the_payment_fails_honest_answers()
 {
    let mut obs = world();
    obs.flows[0].reads[0] = read(
        ReadKind::Read,
        "authorize",
        500,
        json!({"error": {"code": "internal"}}),
    );
    assert_eq!(failed(&obs), ["no server errors"]);
    let mut obs = world();
    obs.flows[0].exchanges.push(exchange(
        Op::Capture,
        "c",
        502,
        json!({"error": {"code": "bank_error"}}),
        false,
    ));
    assert!(failed(&obs).contains(&"no server errors"));
    // 503 with Retry-After (a replica or the database down) and no answer
    // are allowed; a 503 without it is not.
    let mut obs = world();
    obs.flows[0].reads[0] = read(ReadKind::Read, "authorize", 503, json!({}));
    obs.flows[0].reads[1].answer = Answer::Transport {
        error: "connection refused".into(),
    };
    assert_eq!(failed(&obs), ["no server errors"]);
    if let Answer::Http { retry_after, .. } = &mut obs.flows[0].reads[0].answer {
        *retry_after = Some("1".into());
    }
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

#[test]
fn an_answer_showing_another_outcome_fails_own_outcome() {
    let mut obs = world();
    // A capture's retry answered with the payment as it is now (refunded).
    obs.flows[0].exchanges[2] = exchange(
        Op::Capture,
        "c",
        200,
        json!({"id": "pay_1", "status": "refunded", "bank": {"capture_id": "cap_1"}}),
        true,
    );
    let failed = failed(&obs);
    assert!(failed.contains(&"own outcome"), "{failed:?}");
    assert!(failed.contains(&"idempotency"), "{failed:?}");
}

#[test]
fn an_answer_about_another_payment_fails_own_outcome() {
    // Two requests' answers swapped: each a valid answer, about the other
    // request's payment.
    let mut obs = world();
    let swapped = json!({"id": "pay_2", "order_id": "ord_0", "status": "captured",
        "bank": {"authorization_id": "auth_2", "capture_id": "cap_2"}});
    obs.flows[0].exchanges[1] = exchange(Op::Capture, "c", 200, swapped, false);
    assert!(failed(&obs).contains(&"own outcome"), "{:?}", failed(&obs));

    // An authorization answered with another order's payment.
    let mut obs = world();
    let mut body = obs.flows[0].exchanges[0].json().unwrap();
    body["order_id"] = json!("ord_9");
    obs.flows[0].exchanges[0] = exchange(Op::Authorize, "a", 201, body, false);
    assert_eq!(failed(&obs), ["own outcome"]);
}

#[test]
fn a_movement_under_a_key_no_operation_has_fails_no_orphan_money_movement() {
    // A capture made under a fresh key (a retry that did not reuse its key).
    let mut obs = world();
    obs.bank_keys[1].key = "gw_capture_2-2".into();
    assert_eq!(failed(&obs), ["no orphan money movement"]);
    // A hold made under the key of a capture (a retried key resuming
    // another key's operation).
    let mut obs = world();
    obs.bank_keys[0].key = "gw_capture_2".into();
    obs.bank_keys.remove(1);
    assert_eq!(failed(&obs), ["no orphan money movement"]);
}

#[test]
fn two_callers_with_one_key_at_once_fail_one_caller_per_bank_key() {
    let mut obs = world();
    obs.tapped.as_mut().unwrap().push(TappedCall {
        path: "/api/v1/captures".into(),
        key: Some("gw_capture_2".into()),
        caller: Some("b".into()),
        started_us: 25,
        ended_us: None,
    });
    assert_eq!(failed(&obs), ["one caller per bank key"]);
    // The same process's retry is one caller; one after the other is fine;
    // nothing watched is nothing failed.
    obs.tapped.as_mut().unwrap().last_mut().unwrap().caller = Some("a".into());
    assert_eq!(failed(&obs), Vec::<&str>::new());
    // Two calls that do not say who made them are not one caller's.
    for call in obs.tapped.as_mut().unwrap().iter_mut() {
        call.caller = None;
    }
    assert_eq!(failed(&obs), ["one caller per bank key"]);
    let last = obs.tapped.as_mut().unwrap().last_mut().unwrap();
    last.caller = Some("b".into());
    last.started_us = 31;
    assert_eq!(failed(&obs), Vec::<&str>::new());
    obs.tapped = None;
    assert_eq!(failed(&obs), Vec::<&str>::new());
}

#[test]
fn a_plain_digest_of_a_request_in_the_dump_fails_card_data() {
    use sha2::{Digest, Sha256};
    let mut obs = world();
    let body = json!({"amount": 500, "card": {"number": CARD, "cvv": "987"}}).to_string();
    obs.card_data.requests = vec![("/v1/payments".into(), body.clone())];
    assert_eq!(failed(&obs), Vec::<&str>::new());
    let canonical = service_kit::json::canonical(&serde_json::from_str(&body).unwrap()).to_string();
    let digest = hex::encode(Sha256::digest(format!("POST\n/v1/payments\n{canonical}")));
    obs.card_data.dump.push((
        "idempotency_keys".into(),
        json!({"request_hash": format!("\\x{digest}")}).to_string(),
    ));
    assert_eq!(failed(&obs), ["card data"]);
}

#[test]
fn giving_up_within_the_grace_period_or_a_402_for_a_funded_card_fails_honest_answers() {
    let mut obs = world();
    obs.receipts[0].push(json!({
        "id": "pay_2", "status": "failed", "failure": {"code": "authorization_abandoned"}, "bank": {},
        "history": [
            {"status": "pending", "at": "2030-01-01T00:00:00Z"},
            {"status": "failed", "at": "2030-01-01T00:00:01Z"},
        ],
    }));
    assert!(failed(&obs).contains(&"honest answers"));
    obs.receipts[0][1]["history"][1]["at"] = json!("2030-01-01T00:00:09Z");
    assert!(!failed(&obs).contains(&"honest answers"));

    let mut obs = world();
    obs.flows[0].exchanges[0] = exchange(
        Op::Authorize,
        "a",
        402,
        json!({"error": {"code": "insufficient_funds", "payment_id": "pay_1"}}),
        false,
    );
    assert!(failed(&obs).contains(&"honest answers"));
}

#[test]
fn a_key_reused_while_its_first_request_is_in_flight_must_answer_422() {
    // The capture's key answered 202 (stored, in flight); the same key with
    // another request, sent after that, answered before the key's final.
    let mut obs = world();
    let mut pending = exchange(
        Op::Capture,
        "c",
        202,
        json!({"id": "pay_1", "status": "capturing"}),
        false,
    );
    pending.at_ms = 0;
    let mut reused = exchange(
        Op::Void,
        "c",
        200,
        json!({"id": "pay_1", "status": "captured", "bank": {"capture_id": "cap_1"}}),
        false,
    );
    reused.variant = 1;
    reused.at_ms = 5;
    for exchange in &mut obs.flows[0].exchanges[1..] {
        exchange.at_ms = 10;
    }
    obs.flows[0].exchanges.insert(1, pending);
    obs.flows[0].exchanges.insert(2, reused.clone());
    assert!(failed(&obs).contains(&"idempotency"), "{:?}", failed(&obs));

    reused.answer = Answer::Http {
        status: 422,
        replayed: false,
        retry_after: None,
        body: json!({"error": {"code": "idempotency_key_reused"}}).to_string(),
    };
    obs.flows[0].exchanges[2] = reused;
    assert!(!failed(&obs).contains(&"idempotency"), "{:?}", failed(&obs));
}

#[test]
fn a_reused_key_answered_anything_but_422_fails_idempotency_and_a_foreign_read_must_be_404() {
    let mut obs = world();
    let mut reused = exchange(
        Op::Capture,
        "c",
        200,
        json!({"id": "pay_1", "status": "captured", "bank": {"capture_id": "cap_1"}}),
        true,
    );
    reused.variant = 1;
    obs.flows[0].exchanges.push(reused.clone());
    assert_eq!(failed(&obs), ["idempotency"]);
    reused.answer = Answer::Http {
        status: 422,
        replayed: false,
        retry_after: None,
        body: json!({"error": {"code": "idempotency_key_reused"}}).to_string(),
    };
    *obs.flows[0].exchanges.last_mut().unwrap() = reused;
    assert_eq!(failed(&obs), Vec::<&str>::new());

    let mut obs = world();
    let shown = receipt(
        "authorized",
        &["pending", "authorized"],
        json!({"authorization_id": "auth_1"}),
    );
    obs.flows[0]
        .reads
        .push(read(ReadKind::Foreign, "end", 200, shown));
    assert_eq!(failed(&obs), ["honest answers"]);
    obs.flows[0].reads.last_mut().unwrap().answer = Answer::Http {
        status: 404,
        replayed: false,
        retry_after: None,
        body: "{}".into(),
    };
    assert_eq!(failed(&obs), Vec::<&str>::new());
}

#[test]
fn a_change_never_delivered_or_left_pending_fails_webhooks_delivered() {
    let mut obs = world();
    webhooks(&mut obs).received[2].delivered = false;
    assert_eq!(failed(&obs), ["webhooks delivered"]);
    let mut obs = world();
    webhooks(&mut obs).left.push("3 deliveries pending".into());
    assert_eq!(failed(&obs), ["webhooks delivered"]);
    let mut obs = world();
    webhooks(&mut obs).payments[0].statuses.truncate(3);
    assert_eq!(
        failed(&obs),
        ["webhooks delivered"],
        "an event beyond the history"
    );
}

#[test]
fn a_bad_signature_a_changed_retry_or_the_old_secret_after_rotation_fails_webhooks_signed() {
    let mut obs = world();
    webhooks(&mut obs).received[1].signature = "v1,AAAA".into();
    assert_eq!(failed(&obs), ["webhooks signed"]);

    let mut obs = world();
    let mut retry = delivery(2, 9_000, &endpoint_secret());
    retry.body.push(b' ');
    retry.signature = signature::sign(&endpoint_secret(), &retry.id, retry.timestamp, &retry.body);
    webhooks(&mut obs).received.push(retry);
    assert_eq!(failed(&obs), ["webhooks signed"]);

    let mut obs = world();
    let new = SigningSecret::from_bytes(vec![4; 32]);
    let rotation = |answered_unix_s| {
        Some(Rotation {
            secret: new.clone(),
            answered_us: 2_500,
            answered_unix_s,
        })
    };
    // The deliveries are signed at 1_700_000_000 and arrive after 2_500 µs.
    webhooks(&mut obs).endpoints[0].rotated = rotation(1_699_999_999);
    assert_eq!(
        failed(&obs),
        ["webhooks signed"],
        "signed with the old secret after"
    );
    let mut obs = world();
    webhooks(&mut obs).endpoints[0].rotated = rotation(1_700_000_000);
    assert_eq!(
        failed(&obs),
        Vec::<&str>::new(),
        "signed with the old secret before the rotation, sent after it"
    );
    let mut obs = world();
    webhooks(&mut obs).endpoints[0].rotated = rotation(1_699_999_999);
    let both = |d: &mut Delivery| {
        d.signature = format!(
            "{} {}",
            signature::sign(&new, &d.id, d.timestamp, &d.body),
            signature::sign(&endpoint_secret(), &d.id, d.timestamp, &d.body)
        );
    };
    webhooks(&mut obs).received.iter_mut().for_each(both);
    assert_eq!(failed(&obs), Vec::<&str>::new());
}

#[test]
fn events_out_of_sequence_or_sent_twice_at_once_fail_webhooks_ordered() {
    let mut obs = world();
    let secret = endpoint_secret();
    // The third and fourth changes numbered the other way round.
    for (i, sequence) in [(2, 4), (3, 3)] {
        let d = &mut webhooks(&mut obs).received[i];
        let mut body: Value = serde_json::from_slice(&d.body).unwrap();
        body["data"]["sequence"] = json!(sequence);
        d.body = body.to_string().into_bytes();
        d.signature = signature::sign(&secret, &d.id, d.timestamp, &d.body);
    }
    assert_eq!(failed(&obs), ["webhooks ordered"]);

    let mut obs = world();
    let again = delivery(2, 2_005, &endpoint_secret());
    webhooks(&mut obs).received.push(again);
    assert_eq!(failed(&obs), ["webhooks ordered"], "twice at once");
}

#[test]
fn a_revoked_key_that_works_past_the_cache_lifetime_fails_revoked_keys_refused() {
    let mut obs = world();
    let story = obs.revocation.as_mut().unwrap();
    story.probes.push(Probe {
        sent_us: 2_200_000,
        answered_us: 2_205_000,
        status: Some(200),
    });
    assert_eq!(failed(&obs), ["revoked keys refused"]);
}

#[test]
fn a_key_refused_before_its_revocation_fails_revoked_keys_refused() {
    let mut obs = world();
    obs.revocation.as_mut().unwrap().probes[1].status = Some(401);
    assert_eq!(failed(&obs), ["revoked keys refused"]);
}

#[test]
fn a_key_never_revoked_is_judged_only_on_working() {
    let mut obs = world();
    let story = obs.revocation.as_mut().unwrap();
    story.revoking_us = None;
    story.revoked_us = None;
    for probe in &mut story.probes {
        probe.status = probe.status.map(|_| 200);
    }
    assert_eq!(failed(&obs), Vec::<&str>::new());
    obs.revocation.as_mut().unwrap().probes[4].status = Some(401);
    assert_eq!(failed(&obs), ["revoked keys refused"]);
}

#[test]
fn an_error_of_the_banks_own_fails_bank_without_errors_of_its_own_and_unread_metrics_are_not_judged()
 {
    let mut obs = world();
    obs.bank_own_errors = Some(2);
    assert_eq!(failed(&obs), ["bank without errors of its own"]);
    obs.bank_own_errors = None;
    assert_eq!(failed(&obs), Vec::<&str>::new());
}

#[test]
fn a_402_on_a_card_that_can_run_out_is_not_a_lie_about_funds() {
    let funded_lie = |obs: &Observations| {
        check(obs)
            .into_iter()
            .flat_map(|result| result.examples)
            .any(|v| v.message.contains("402 for a funded, valid card"))
    };
    let mut obs = world();
    answer_402(&mut obs);
    // Opening 1,000 covers the plan's 500 twice (a restarter holds twice).
    assert!(funded_lie(&obs));
    obs.cards[0].opening = 999;
    assert!(!funded_lie(&obs));
}

#[test]
fn a_payment_for_another_amount_than_asked_fails_amounts_as_asked() {
    // The gateway authorized, kept and showed a cent more than asked: the
    // receipts, the bank and the cards all agree with each other.
    let mut obs = world();
    obs.flows[0].sent = vec![authorization_request(499)];
    assert_eq!(failed(&obs), ["amounts as asked"]);

    // The bank holds another amount than the receipt.
    let mut obs = world();
    obs.bank[0].amount = 501;
    assert_eq!(failed(&obs), ["amounts as asked"]);

    // A read shows another amount than the receipt holds.
    let mut obs = world();
    let mut listed = obs.receipts[0][0].clone();
    listed["amount"] = json!(5_000);
    obs.flows[0].reads[2] = read(ReadKind::List, "end", 200, json!({"data": [listed]}));
    assert_eq!(failed(&obs), ["amounts as asked"]);
}

#[test]
fn another_merchant_acting_on_or_listing_the_payment_fails_honest_answers() {
    let error = |code: &str| json!({"error": {"code": code}});
    for (status, body) in [
        (409, error("invalid_state")),
        (422, error("idempotency_key_reused")),
    ] {
        let mut obs = world();
        obs.flows[0].reads.push(read(
            ReadKind::ForeignOperation(Op::Refund),
            "end",
            status,
            body,
        ));
        assert_eq!(failed(&obs), ["honest answers"], "{status}");
    }
    let mut obs = world();
    obs.flows[0].reads.push(read(
        ReadKind::ForeignOperation(Op::Void),
        "end",
        404,
        error("payment_not_found"),
    ));
    let listed = obs.receipts[0][0].clone();
    obs.flows[0]
        .reads
        .push(read(ReadKind::ForeignList, "end", 200, json!({"data": []})));
    assert_eq!(failed(&obs), Vec::<&str>::new());
    obs.flows[0].reads.push(read(
        ReadKind::ForeignList,
        "end",
        200,
        json!({"data": [listed]}),
    ));
    assert_eq!(failed(&obs), ["honest answers"]);
}

#[test]
fn a_request_to_the_bank_under_a_key_no_operation_has_fails_no_orphan_money_movement() {
    // The bank refused it (nothing stored under the key): only the tap
    // saw a second capture sent under a fresh key.
    let mut obs = world();
    obs.tapped.as_mut().unwrap().push(TappedCall {
        path: "/api/v1/captures".into(),
        key: Some("gw_capture_3".into()),
        caller: Some("a".into()),
        started_us: 40,
        ended_us: Some(50),
    });
    assert_eq!(failed(&obs), ["no orphan money movement"]);

    // A void sent under the capture's key.
    let mut obs = world();
    obs.tapped.as_mut().unwrap()[1].path = "/api/v1/voids".into();
    assert_eq!(failed(&obs), ["no orphan money movement"]);
}

#[test]
fn an_event_named_for_another_change_or_sent_to_another_merchant_fails_webhooks_delivered() {
    // A capture's last change announced as requested again.
    let mut obs = world();
    let secret = endpoint_secret();
    let mut misnamed = delivery(4, 4_000, &secret);
    let body = String::from_utf8(misnamed.body.clone())
        .unwrap()
        .replace("payment.captured", "payment.capture_requested");
    misnamed.body = body.into_bytes();
    misnamed.signature = signature::sign(&secret, "evt_4", 1_700_000_000, &misnamed.body);
    webhooks(&mut obs).received[3] = misnamed;
    assert_eq!(failed(&obs), ["webhooks delivered"]);

    // The payment's events reach another merchant's endpoint too.
    let mut obs = world();
    let other = webhooks(&mut obs);
    other.endpoints.push(EndpointSeen {
        merchant_id: "m1".into(),
        path: "/m1".into(),
        secret: endpoint_secret(),
        rotated: None,
    });
    let mut elsewhere = delivery(2, 2_500, &secret);
    elsewhere.path = "/m1".into();
    other.received.push(elsewhere);
    assert!(
        failed(&obs).contains(&"webhooks delivered"),
        "{:?}",
        failed(&obs)
    );
}

#[test]
fn a_move_made_at_the_banks_console_is_told_from_the_gateways_own() {
    let obs = world();
    let receipt = &obs.receipts[0][0];
    // cap_1 was made under the capture operation's key.
    assert!(!answers::done_behind_the_gateways(
        &obs,
        receipt,
        Op::Capture
    ));
    // A refund under no gateway key: the console's.
    let mut refunded = receipt.clone();
    refunded["bank"]["refund_id"] = json!("ref_9");
    assert!(answers::done_behind_the_gateways(
        &obs,
        &refunded,
        Op::Refund
    ));
    // Nothing made: nothing behind anyone.
    assert!(!answers::done_behind_the_gateways(&obs, receipt, Op::Void));
}

#[test]
fn a_good_request_refused_fails_valid_requests_done_unless_the_bank_moved_the_payment() {
    // The capture, the plan's next step, was refused for good: the payment
    // stayed authorized, consistent everywhere, and no other check minds.
    let mut obs = world();
    let refused = json!({"error": {"code": "invalid_state", "payment_id": "pay_1"}});
    let flow = &mut obs.flows[0];
    flow.exchanges.truncate(1);
    flow.exchanges
        .push(exchange(Op::Capture, "c", 409, refused.clone(), false));
    let authorized = obs.receipts[0][0]["history"].as_array().unwrap()[..2].to_vec();
    obs.receipts[0][0]["status"] = json!("authorized");
    obs.receipts[0][0]["history"] = json!(authorized);
    obs.receipts[0][0]["bank"] = json!({"authorization_id": "auth_1"});
    obs.flows[0].reads.truncate(1);
    let bank = &mut obs.bank[0];
    (bank.state, bank.captures, bank.capture_id) = ("active".into(), 0, None);
    obs.bank_keys.truncate(1);
    obs.operations.truncate(1);
    obs.tapped.as_mut().unwrap().truncate(1);
    (obs.cards[0].balance, obs.cards[0].available) = (1000, 500);
    let webhooks = webhooks(&mut obs);
    webhooks.received.truncate(2);
    webhooks.payments[0].statuses.truncate(2);
    assert_eq!(failed(&obs), ["valid requests done"]);

    // The same refusal of a payment whose authorization expired at the bank.
    obs.bank[0].state = "expired".into();
    assert!(!failed(&obs).contains(&"valid requests done"));
}
