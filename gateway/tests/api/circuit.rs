//! The circuit breaker around the bank: in the client (against wiremock),
//! and through the API (against the mock bank in an outage): an open
//! circuit answers 503 `bank_unavailable` with `Retry-After` before any
//! work, and a half-open probe closes it once the bank is back.

use std::time::{Duration, Instant};

use gateway::bank::{
    AuthorizeRequest, BankClient, BankOutcome, CircuitSettings, CircuitState, RetryPolicy,
    UnknownReason,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: ms(200),
        deadline: Duration::from_secs(30),
        max_attempts: 8,
        base_backoff: ms(5),
        max_backoff: ms(20),
    }
}

fn card() -> AuthorizeRequest<'static> {
    AuthorizeRequest {
        card_number: "4111111111111111",
        cvv: "123",
        expiry_month: 12,
        expiry_year: 2030,
        amount_cents: 4999,
    }
}

fn authorization_json() -> Value {
    json!({
        "authorization_id": "auth_8f14e45f-ceea-467a-9575-7d1b7a1a1f11",
        "status": "approved",
        "amount": 4999,
        "currency": "USD",
        "expires_at": "2030-01-08T10:00:00Z",
        "created_at": "2030-01-01T10:00:00.5Z"
    })
}

async fn requests_received(server: &MockServer) -> usize {
    server.received_requests().await.expect("recording").len()
}

#[tokio::test]
async fn after_the_threshold_calls_return_circuit_open_at_once_and_send_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let circuit = CircuitSettings {
        failure_threshold: 3,
        open_for: Duration::from_secs(60),
    };
    let client = BankClient::new(&server.uri(), policy(), 4, circuit).expect("client");

    // The call that trips it stops at once instead of retrying on.
    let outcome = client.authorize("k-trip", &card()).await;
    assert!(
        matches!(
            outcome,
            BankOutcome::Unknown(UnknownReason::CircuitOpen { attempts: 3, .. })
        ),
        "the fourth attempt is refused by the circuit: {outcome:?}"
    );
    assert_eq!(requests_received(&server).await, 3);
    assert_eq!(client.circuit().state(), CircuitState::Open);

    // A clone with another policy shares the breaker: refused before
    // sending anything, without sleeping towards its 30 s deadline.
    let other = client.with_policy(RetryPolicy {
        max_attempts: 100,
        ..policy()
    });
    let started = Instant::now();
    let outcome = other.capture("k-refused", "auth_1", 4999).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let BankOutcome::Unknown(UnknownReason::CircuitOpen {
        attempts: 0,
        retry_after,
    }) = outcome
    else {
        panic!("expected Unknown(CircuitOpen), got {outcome:?}");
    };
    assert!(retry_after > Duration::ZERO && retry_after <= circuit.open_for);
    assert_eq!(requests_received(&server).await, 3, "nothing was sent");
}

#[tokio::test]
async fn refusals_are_answers_and_do_not_open_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(
            ResponseTemplate::new(402)
                .set_body_json(json!({"error": "insufficient_funds", "message": "no"})),
        )
        .mount(&server)
        .await;
    let circuit = CircuitSettings {
        failure_threshold: 1,
        open_for: Duration::from_secs(60),
    };
    let client = BankClient::new(&server.uri(), policy(), 4, circuit).expect("client");
    for i in 0..5 {
        let outcome = client.authorize(&format!("k-{i}"), &card()).await;
        assert!(matches!(outcome, BankOutcome::Refused(_)), "{outcome:?}");
    }
    assert_eq!(client.circuit().state(), CircuitState::Closed);
}

/// A bank without resolve (the original's) answers it with its own 404
/// `not_found`, unmarked: no proof of anything for the payment, but proof
/// that the bank is up. Recovery resolving a few authorizations must not
/// open the circuit on every checkout.
#[tokio::test]
async fn a_bank_answering_in_its_own_words_is_up_even_when_it_proves_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations/resolve"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": "not_found", "message": "no route"})),
        )
        .mount(&server)
        .await;
    let circuit = CircuitSettings {
        failure_threshold: 2,
        open_for: Duration::from_secs(60),
    };
    let client = BankClient::new(&server.uri(), few_attempts(), 4, circuit).expect("client");
    for i in 0..3 {
        let outcome = client.resolve_authorization(&format!("k-{i}")).await;
        assert!(
            matches!(
                outcome,
                BankOutcome::Unknown(UnknownReason::AttemptsExhausted { .. })
            ),
            "{outcome:?}"
        );
    }
    assert_eq!(client.circuit().state(), CircuitState::Closed);
}

fn few_attempts() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        ..policy()
    }
}

#[tokio::test]
async fn after_the_open_period_one_probe_closes_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(authorization_json()))
        .mount(&server)
        .await;
    let circuit = CircuitSettings {
        failure_threshold: 2,
        open_for: ms(300),
    };
    let client = BankClient::new(
        &server.uri(),
        RetryPolicy {
            max_attempts: 2,
            ..policy()
        },
        4,
        circuit,
    )
    .expect("client");

    let outcome = client.authorize("k-1", &card()).await;
    assert!(
        matches!(
            outcome,
            BankOutcome::Unknown(UnknownReason::AttemptsExhausted { attempts: 2, .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(client.circuit().state(), CircuitState::Open);
    let outcome = client.authorize("k-1", &card()).await;
    assert!(
        matches!(
            outcome,
            BankOutcome::Unknown(UnknownReason::CircuitOpen { attempts: 0, .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(requests_received(&server).await, 2);

    tokio::time::sleep(circuit.open_for).await;
    assert_eq!(client.circuit().state(), CircuitState::HalfOpen);
    let outcome = client.authorize("k-1", &card()).await;
    assert!(matches!(outcome, BankOutcome::Done(_)), "{outcome:?}");
    assert_eq!(requests_received(&server).await, 3, "one probe");
    assert_eq!(client.circuit().state(), CircuitState::Closed);
}

/// A gateway whose circuit opens after 3 transient failures, for 2 s, and
/// whose bank calls give up within a second.
async fn spawn_breakable_app() -> TestApp {
    spawn_app_with(Options {
        gateway: Some(Box::new(|s| {
            s.circuit_failure_threshold = 3;
            s.circuit_open_ms = 2_000;
            s.bank_attempt_timeout_ms = 300;
            s.bank_deadline_ms = 1_000;
        })),
        ..Options::default()
    })
    .await
}

async fn circuit_reported_by_ready(app: &TestApp) -> String {
    let response = app
        .client
        .get(app.operator_url("/ready"))
        .send()
        .await
        .expect("GET /ready answered");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "an open circuit does not make the process unready"
    );
    let body: Value = response.json().await.unwrap();
    body["circuit"]
        .as_str()
        .expect("circuit in /ready")
        .to_owned()
}

fn new_payment_body() -> Value {
    payment_body(HAPPY_CARD, 1_000, "ord_circuit", "cus_circuit")
}

/// Puts the bank in an outage and sends payments until one is refused
/// with 503: the circuit is open (for 2 s from then).
async fn open_the_circuit(app: &TestApp, outage_seconds: u64) {
    app.set_bank_chaos(json!({"outage_seconds": outage_seconds}))
        .await;
    // Each of these makes attempts until the circuit opens, then ends as
    // 202 (the payment pending, resumed later) or is refused up front.
    for _ in 0..20 {
        let response = app
            .post("/v1/payments", &new_key(), &new_payment_body())
            .await;
        match response.status() {
            StatusCode::SERVICE_UNAVAILABLE => return,
            StatusCode::ACCEPTED => {}
            other => panic!("during the outage: {other}"),
        }
    }
    panic!("the circuit never opened");
}

/// `POST /v1/payments` with `key` while the circuit is open: a 503 that
/// created no payment and stored nothing.
async fn refused_up_front(app: &TestApp, key: &str) -> reqwest::Response {
    let payments = app.count("payments").await;
    let keys = app.count("idempotency_keys").await;
    let response = app.post("/v1/payments", key, &new_payment_body()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.count("payments").await, payments, "no payment created");
    assert_eq!(
        app.count("idempotency_keys").await,
        keys,
        "nothing stored on any key"
    );
    response
}

/// Sends payments with new keys until one is created: the first to find
/// the open period over is the probe, and the bank is back.
async fn until_a_payment_is_created(app: &TestApp) -> Value {
    for _ in 0..100 {
        let response = app
            .post("/v1/payments", &new_key(), &new_payment_body())
            .await;
        match response.status() {
            StatusCode::CREATED => return response.json().await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::ACCEPTED => {}
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
        tokio::time::sleep(ms(100)).await;
    }
    panic!("no payment was created after the outage");
}

#[tokio::test]
async fn during_an_outage_payments_are_refused_up_front_then_the_probe_closes_the_circuit() {
    let app = spawn_breakable_app().await;
    assert_eq!(circuit_reported_by_ready(&app).await, "closed");

    // The outage outlasts the first open period, so the first probe fails
    // and the circuit opens again; the next one finds the bank back.
    open_the_circuit(&app, 3).await;
    let refused = refused_up_front(&app, &new_key()).await;
    let retry_after = retry_after_seconds(&refused);
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    let body = assert_error(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "bank_unavailable",
    )
    .await;
    assert!(body["error"].get("payment_id").is_none(), "{body}");
    assert_eq!(circuit_reported_by_ready(&app).await, "open");

    let payment = until_a_payment_is_created(&app).await;
    assert_eq!(payment["status"], "authorized");
    assert_eq!(circuit_reported_by_ready(&app).await, "closed");
    // And the next one goes straight through.
    let response = app
        .post("/v1/payments", &new_key(), &new_payment_body())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_503_leaves_the_key_usable_and_an_answered_key_replays_while_open() {
    let app = spawn_breakable_app().await;
    let key = new_key();
    let keys_with = |key: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    // The key's first use is refused up front by the open circuit.
    open_the_circuit(&app, 60).await;
    refused_up_front(&app, &key).await;
    assert_eq!(keys_with(key.clone()).await, 0, "nothing stored on the key");

    // The bank comes back; other traffic closes the circuit.
    app.set_bank_chaos(json!({"outage_seconds": 0})).await;
    until_a_payment_is_created(&app).await;

    // The same key, the same request: done for the first time.
    let response = app.post("/v1/payments", &key, &new_payment_body()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("Idempotent-Replayed").is_none());
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["status"], "authorized");

    // The circuit opens again; the answered key still replays, since a
    // replay needs no bank.
    open_the_circuit(&app, 60).await;
    let replay = app.post("/v1/payments", &key, &new_payment_body()).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(
        replay
            .headers()
            .get("Idempotent-Replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed, created);
}

#[tokio::test]
async fn a_key_already_in_use_answers_as_itself_while_the_circuit_is_open() {
    let app = spawn_breakable_app().await;
    app.set_bank_chaos(json!({"outage_seconds": 60})).await;
    // The key's first request meets the outage and opens the circuit: its
    // payment exists, pending, and will be resumed with the same bank key.
    let key = new_key();
    let first = app.post("/v1/payments", &key, &new_payment_body()).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let pending: Value = first.json().await.unwrap();
    assert_eq!(circuit_reported_by_ready(&app).await, "open");

    // The key is in use: another request under it is refused as one, not
    // told that nothing was created, and the same request is answered with
    // its payment (or asked to wait for it), never refused up front.
    let mut other = new_payment_body();
    other["amount"] = json!(1_001);
    assert_error(
        app.post("/v1/payments", &key, &other).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_error",
        "idempotency_key_reused",
    )
    .await;
    let again = app.post("/v1/payments", &key, &new_payment_body()).await;
    let status = again.status();
    let body: Value = again.json().await.unwrap();
    match status {
        StatusCode::ACCEPTED => assert_eq!(body["id"], pending["id"], "{body}"),
        StatusCode::CONFLICT => {
            assert_eq!(body["error"]["code"], "idempotency_key_in_use", "{body}")
        }
        other => panic!("the key's own request while open: {other} {body}"),
    }
    assert_eq!(app.count("payments").await, 1);
}

/// While the circuit is open, an operation is judged first and refused for
/// the bank only if it would call it: another merchant's or an unknown
/// payment is 404 and a move the state machine refuses 409, as ever (a 503
/// there said "retry with the same key" to a request that can never
/// succeed, and told merchants nothing they could not tell apart anyway).
/// A capture the payment allows is refused up front: 503, nothing stored.
#[tokio::test]
async fn while_open_an_operation_is_judged_before_the_bank_is_missed() {
    let app = spawn_breakable_app().await;
    let authorized: Value = app
        .post("/v1/payments", &new_key(), &new_payment_body())
        .await
        .json()
        .await
        .unwrap();
    let authorized = authorized["id"].as_str().unwrap().to_owned();
    let voided: Value = app
        .post("/v1/payments", &new_key(), &new_payment_body())
        .await
        .json()
        .await
        .unwrap();
    let voided = voided["id"].as_str().unwrap().to_owned();
    assert_eq!(app.act(&voided, "void").await.status(), StatusCode::OK);
    open_the_circuit(&app, 3).await;

    let refused = app.act(&voided, "capture").await;
    assert_error(
        refused,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "invalid_state",
    )
    .await;
    let unknown = format!("pay_{}", uuid::Uuid::now_v7());
    let missing = app.act(&unknown, "capture").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let keys = app.count("idempotency_keys").await;
    let operations = app.count("operations").await;
    let capture = app.act(&authorized, "capture").await;
    assert_error(
        capture,
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "bank_unavailable",
    )
    .await;
    assert_eq!(app.count("idempotency_keys").await, keys, "nothing stored");
    assert_eq!(app.count("operations").await, operations);
    assert_eq!(app.payment(&authorized).await["status"], "authorized");
}
