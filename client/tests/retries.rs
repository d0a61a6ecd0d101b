//! The retry loop against a scripted server (wiremock): which answers are
//! retried, with which key, to which replica, for how long, and that the
//! observer sees every attempt. The real gateway is in `tests/stack/`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::{
    AttemptOutcome, AttemptRecord, AuthorizeRequest, Card, Client, Error, ErrorCode,
    IdempotencyKey, PaymentId, PaymentStatus, RetryPolicy,
};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PAYMENT_ID: &str = "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b";

fn payment(status: &str) -> Value {
    json!({
        "id": PAYMENT_ID, "order_id": "ord_1", "customer_id": "cus_1",
        "amount": 4999, "currency": "USD", "status": status,
        "card": {"brand": "visa", "last4": "1111", "expiry_month": 12, "expiry_year": 2030},
        "bank": {"authorization_id": null, "capture_id": null, "void_id": null, "refund_id": null},
        "authorization_expires_at": null, "failure": null,
        "history": [{"status": "pending", "at": "2030-01-01T00:00:00Z"}],
        "created_at": "2030-01-01T00:00:00Z", "updated_at": "2030-01-01T00:00:00Z"
    })
}

fn error_body(kind: &str, code: &str) -> Value {
    json!({"error": {"type": kind, "code": code, "message": "scripted"}})
}

fn request() -> AuthorizeRequest {
    AuthorizeRequest::usd(
        "ord_1",
        "cus_1",
        4999,
        Card::new("4111111111111111", "123", 12, 2030),
    )
}

/// Fast retries, so the tests spend their time on what they test.
fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        deadline: Duration::from_secs(10),
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(5),
    }
}

type Records = Arc<Mutex<Vec<AttemptRecord>>>;

fn observed_client(urls: &[String], policy: RetryPolicy) -> (Client, Records) {
    let records = Records::default();
    let sink = Arc::clone(&records);
    let client = Client::new(urls, "sk_test")
        .expect("a client")
        .with_retry_policy(policy)
        .with_observer(Arc::new(move |record: &AttemptRecord| {
            sink.lock().expect("not poisoned").push(record.clone());
        }));
    (client, records)
}

fn taken(records: &Records) -> Vec<AttemptRecord> {
    records.lock().expect("not poisoned").clone()
}

fn statuses(records: &[AttemptRecord]) -> Vec<Option<u16>> {
    records.iter().map(AttemptRecord::status).collect()
}

/// A script: `first` for the first `times` requests to `route`, then `then`.
async fn script(
    server: &MockServer,
    route: &str,
    first: ResponseTemplate,
    times: u64,
    then: ResponseTemplate,
) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(first)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(then)
        .mount(server)
        .await;
}

/// An authorization whose first attempt is answered `first` and its
/// second 201: the attempts' records, each checked to carry the key, and
/// the requests the server received (the same bytes each time).
async fn authorized_after(first: ResponseTemplate) -> (Vec<AttemptRecord>, Vec<wiremock::Request>) {
    let server = MockServer::start().await;
    script(
        &server,
        "/v1/payments",
        first,
        1,
        ResponseTemplate::new(201).set_body_json(payment("authorized")),
    )
    .await;
    let (client, records) = observed_client(&[server.uri()], quick_policy());
    let key = IdempotencyKey::random();

    let payment = client
        .authorize(&key, &request())
        .await
        .expect("authorized");

    assert_eq!(payment.status, PaymentStatus::Authorized);
    let records = taken(&records);
    assert!(
        records
            .iter()
            .all(|r| r.idempotency_key.as_ref() == Some(&key) && r.call == records[0].call)
    );
    let received = server.received_requests().await.expect("recorded");
    for sent in &received {
        assert_eq!(sent.headers["idempotency-key"], key.as_str());
        assert_eq!(sent.headers["authorization"], "Bearer sk_test");
        assert_eq!(
            sent.body, received[0].body,
            "every attempt sends the same bytes"
        );
    }
    (records, received)
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after_with_the_same_key_and_body() {
    let (records, received) = authorized_after(
        ResponseTemplate::new(503)
            .insert_header("Retry-After", "1")
            .set_body_json(error_body("api_error", "bank_unavailable")),
    )
    .await;
    assert_eq!(statuses(&records), [Some(503), Some(201)]);
    assert_eq!(
        records.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(received.len(), 2);
    // It waited as it was told, not its own few milliseconds of backoff.
    let waited = records[1]
        .started_at
        .duration_since(records[0].started_at)
        .unwrap();
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
}

/// A 500 may come after the bank acted, the operation left in flight:
/// the contract says to retry with the same key, which resumes it (a new
/// key would start a second authorization beside it).
#[tokio::test]
async fn a_500_is_retried_with_the_same_key() {
    let (records, received) = authorized_after(
        ResponseTemplate::new(500).set_body_json(error_body("api_error", "internal_error")),
    )
    .await;
    assert_eq!(statuses(&records), [Some(500), Some(201)]);
    assert_eq!(received.len(), 2);
}

#[tokio::test]
async fn a_retry_after_longer_than_the_time_left_ends_the_call_at_once() {
    let server = MockServer::start().await;
    let busy = ResponseTemplate::new(429)
        .insert_header("Retry-After", "30")
        .set_body_json(error_body("rate_limit_error", "rate_limited"));
    script(&server, "/v1/payments", busy.clone(), 1, busy).await;
    let policy = RetryPolicy {
        deadline: Duration::from_secs(2),
        ..quick_policy()
    };
    let (client, records) = observed_client(&[server.uri()], policy);

    let error = client
        .authorize(&IdempotencyKey::random(), &request())
        .await
        .expect_err("still limited");

    let Error::Unavailable {
        attempts,
        last,
        retry_after,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(*attempts, 1);
    assert_eq!(last.code, ErrorCode::RateLimited);
    assert_eq!(*retry_after, Some(Duration::from_secs(30)));
    assert!(error.resumable());
    assert_eq!(taken(&records).len(), 1);
}

#[tokio::test]
async fn final_answers_are_not_retried() {
    /// The status, the body, and whether the error is the right one.
    type Case = (u16, Value, fn(&Error) -> bool);
    let cases: [Case; 8] = [
        (
            400,
            json!({"error": {"type": "invalid_request_error", "code": "amount_too_small", "message": "m", "param": "amount"}}),
            |e| matches!(e, Error::InvalidRequest(_)) && e.param() == Some("amount"),
        ),
        (
            401,
            error_body("authentication_error", "invalid_api_key"),
            |e| matches!(e, Error::Unauthenticated(_)),
        ),
        (
            402,
            json!({"error": {"type": "card_error", "code": "insufficient_funds", "message": "m", "payment_id": PAYMENT_ID}}),
            |e| {
                matches!(e, Error::Declined(_))
                    && e.payment_id().map(PaymentId::as_str) == Some(PAYMENT_ID)
            },
        ),
        (
            404,
            error_body("invalid_request_error", "resource_missing"),
            |e| matches!(e, Error::NotFound(_)),
        ),
        (
            409,
            error_body("invalid_request_error", "invalid_state"),
            |e| matches!(e, Error::InvalidState(_)),
        ),
        (
            409,
            error_body("api_error", "authorization_abandoned"),
            |e| matches!(e, Error::AuthorizationAbandoned(_)) && e.needs_new_key(),
        ),
        (
            422,
            error_body("idempotency_error", "idempotency_key_reused"),
            |e| matches!(e, Error::KeyReused(_)),
        ),
        (502, error_body("api_error", "bank_error"), |e| {
            matches!(e, Error::BankError(_))
        }),
    ];
    for (status, body, expected) in cases {
        let server = MockServer::start().await;
        let answer = ResponseTemplate::new(status).set_body_json(body);
        script(&server, "/v1/payments", answer.clone(), 1, answer).await;
        let (client, records) = observed_client(&[server.uri()], quick_policy());

        let error = client
            .authorize(&IdempotencyKey::random(), &request())
            .await
            .expect_err("refused");

        assert!(expected(&error), "{status}: {error:?}");
        assert!(!error.resumable(), "{status}");
        assert_eq!(
            statuses(&taken(&records)),
            [Some(status)],
            "{status}: one attempt only"
        );
    }
}

#[tokio::test]
async fn attempts_stop_at_max_attempts() {
    let server = MockServer::start().await;
    let unavailable =
        ResponseTemplate::new(503).set_body_json(error_body("api_error", "service_unavailable"));
    script(&server, "/v1/payments", unavailable.clone(), 1, unavailable).await;
    let policy = RetryPolicy {
        max_attempts: 3,
        ..quick_policy()
    };
    let (client, records) = observed_client(&[server.uri()], policy);

    let error = client
        .authorize(&IdempotencyKey::random(), &request())
        .await
        .expect_err("unavailable");

    assert!(
        matches!(
            error,
            Error::Unavailable {
                attempts: 3,
                retry_after: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(taken(&records).len(), 3);
}

#[tokio::test]
async fn a_202_until_the_deadline_is_still_pending_with_the_payment_and_the_key() {
    let server = MockServer::start().await;
    let pending = ResponseTemplate::new(202).set_body_json(payment("pending"));
    script(&server, "/v1/payments", pending.clone(), 1, pending).await;
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..quick_policy()
    };
    let (client, records) = observed_client(&[server.uri()], policy);
    let key = IdempotencyKey::random();

    let error = client
        .authorize(&key, &request())
        .await
        .expect_err("pending");

    let Error::StillPending {
        payment,
        key: resume_with,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(payment.status, PaymentStatus::Pending);
    assert_eq!(resume_with, &key);
    assert_eq!(error.payment_id().map(PaymentId::as_str), Some(PAYMENT_ID));
    assert!(error.resumable());
    let records = taken(&records);
    assert!(records.len() >= 2, "the 202 was retried: {records:?}");
    assert!(records.iter().all(|r| r.status() == Some(202)));
    assert!(
        records
            .iter()
            .all(|r| r.idempotency_key.as_ref() == Some(&key))
    );
}

#[tokio::test]
async fn after_a_202_the_call_still_ends_pending_whatever_later_attempts_met() {
    let server = MockServer::start().await;
    let in_use = ResponseTemplate::new(409)
        .insert_header("Retry-After", "1")
        .set_body_json(error_body("idempotency_error", "idempotency_key_in_use"));
    script(
        &server,
        "/v1/payments",
        ResponseTemplate::new(202).set_body_json(payment("pending")),
        1,
        in_use,
    )
    .await;
    let policy = RetryPolicy {
        max_attempts: 2,
        ..quick_policy()
    };
    let (client, records) = observed_client(&[server.uri()], policy);

    let error = client
        .authorize(&IdempotencyKey::random(), &request())
        .await
        .expect_err("pending");

    assert!(matches!(error, Error::StillPending { .. }), "{error:?}");
    assert_eq!(statuses(&taken(&records)), [Some(202), Some(409)]);
}

#[tokio::test]
async fn no_answer_is_retried_with_the_same_key_on_the_next_replica() {
    let dead = dead_url();
    let server = MockServer::start().await;
    let authorized = ResponseTemplate::new(201).set_body_json(payment("authorized"));
    script(&server, "/v1/payments", authorized.clone(), 1, authorized).await;
    let (client, records) = observed_client(&[dead.clone(), server.uri()], quick_policy());
    let key = IdempotencyKey::random();

    client
        .authorize(&key, &request())
        .await
        .expect("authorized");

    let records = taken(&records);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(matches!(
        records[0].outcome,
        AttemptOutcome::Transport { .. }
    ));
    assert_eq!(records[0].base_url.as_str().trim_end_matches('/'), dead);
    assert_eq!(records[1].status(), Some(201));
    assert_eq!(
        records[1].base_url.as_str().trim_end_matches('/'),
        server.uri()
    );
    assert!(
        records
            .iter()
            .all(|r| r.idempotency_key.as_ref() == Some(&key))
    );
}

#[tokio::test]
async fn calls_start_round_robin_across_the_replicas() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    for server in [&a, &b] {
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(payment("authorized")))
            .mount(server)
            .await;
    }
    let (client, records) = observed_client(&[a.uri(), b.uri()], quick_policy());
    let id: PaymentId = PAYMENT_ID.parse().expect("an id");

    for _ in 0..4 {
        client.get(&id).await.expect("read");
    }

    let replicas: Vec<String> = taken(&records)
        .iter()
        .map(|r| r.base_url.as_str().trim_end_matches('/').to_owned())
        .collect();
    assert_eq!(replicas, [a.uri(), b.uri(), a.uri(), b.uri()]);
    assert!(taken(&records).iter().all(|r| r.idempotency_key.is_none()));
}

#[tokio::test]
async fn a_proxys_bad_gateway_page_is_retried() {
    let server = MockServer::start().await;
    script(
        &server,
        "/v1/payments",
        ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"),
        1,
        ResponseTemplate::new(201).set_body_json(payment("authorized")),
    )
    .await;
    let (client, records) = observed_client(&[server.uri()], quick_policy());

    client
        .authorize(&IdempotencyKey::random(), &request())
        .await
        .expect("authorized");

    let records = taken(&records);
    assert_eq!(statuses(&records), [Some(502), Some(201)]);
    assert_eq!(records[0].body(), Some("<html>Bad Gateway</html>"));
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_retried() {
    let server = MockServer::start().await;
    script(
        &server,
        "/v1/payments",
        ResponseTemplate::new(201)
            .set_body_json(payment("authorized"))
            .set_delay(Duration::from_secs(3)),
        1,
        ResponseTemplate::new(201).set_body_json(payment("authorized")),
    )
    .await;
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(200),
        ..quick_policy()
    };
    let (client, records) = observed_client(&[server.uri()], policy);

    client
        .authorize(&IdempotencyKey::random(), &request())
        .await
        .expect("authorized");

    let records = taken(&records);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        matches!(&records[0].outcome, AttemptOutcome::Transport { error } if error.contains("no whole answer"))
    );
    assert_eq!(records[1].status(), Some(201));
}

#[tokio::test]
async fn an_attempt_cut_off_by_a_dropped_call_is_still_reported() {
    let server = MockServer::start().await;
    let slow = ResponseTemplate::new(201)
        .set_body_json(payment("authorized"))
        .set_delay(Duration::from_secs(5));
    script(&server, "/v1/payments", slow.clone(), 1, slow).await;
    let (client, records) = observed_client(&[server.uri()], quick_policy());
    let key = IdempotencyKey::random();

    let request = request();
    let call = client.authorize(&key, &request);
    let dropped = tokio::time::timeout(Duration::from_millis(300), call).await;

    assert!(dropped.is_err(), "the call was cut off");
    let records = taken(&records);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].outcome, AttemptOutcome::Cancelled);
    assert_eq!(records[0].idempotency_key.as_ref(), Some(&key));
}

#[tokio::test]
async fn nothing_of_the_card_reaches_a_record_or_an_error() {
    let server = MockServer::start().await;
    let declined = ResponseTemplate::new(402).set_body_json(
        json!({"error": {"type": "card_error", "code": "invalid_cvv", "message": "the bank declined the payment", "payment_id": PAYMENT_ID}}),
    );
    script(&server, "/v1/payments", declined.clone(), 1, declined).await;
    let (client, records) = observed_client(&[server.uri()], quick_policy());
    let card = Card::new("4242424242424242", "456", 6, 2030);
    let request = AuthorizeRequest::usd("ord_1", "cus_1", 100, card);

    let error = client
        .authorize(&IdempotencyKey::random(), &request)
        .await
        .expect_err("declined");

    let shown = format!("{error} {error:?} {:?} {request:?}", taken(&records));
    assert!(!shown.contains("4242424242424242"), "{shown}");
    assert!(!shown.contains("\"456\""), "{shown}");
}

/// A URL where nothing listens: a port that was just free.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}
