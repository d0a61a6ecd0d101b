//! Each fault kind at rate 1.0, the seeded sequence, and run-time changes.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use mock_bank::Settings;

fn authorization_body(amount: i64) -> Value {
    json!({"card_number": HAPPY_CARD.0, "cvv": HAPPY_CARD.1, "amount": amount})
}

#[tokio::test]
async fn failure_rate_answers_500_before_doing_anything() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"failure_rate": 1.0})).await;
    let response = bank.authorize(HAPPY_CARD, 100).await;
    assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    assert_eq!(bank.count("authorizations").await, 0);
    assert_eq!(bank.balances(HAPPY_CARD.0).await, (1_000_000, 1_000_000));
    // Never on /health, /metrics, /docs or /admin.
    for path in [
        "/health",
        "/metrics",
        "/docs/",
        "/admin/chaos",
        "/admin/ledger/verify",
    ] {
        assert_eq!(bank.get(path).await.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn error_after_commit_loses_the_response_but_keeps_the_operation() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"error_after_commit_rate": 1.0}))
        .await;
    let key = new_key();
    let lost = bank
        .post("/api/v1/authorizations", &key, &authorization_body(900))
        .await;
    assert_error(lost, StatusCode::INTERNAL_SERVER_ERROR, "internal_error").await;
    assert_eq!(bank.count("authorizations").await, 1, "committed");

    bank.put_chaos(json!({"error_after_commit_rate": 0.0}))
        .await;
    let retried = bank
        .post("/api/v1/authorizations", &key, &authorization_body(900))
        .await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(retried.headers()["X-Idempotent-Replayed"], "true");
    assert_eq!(bank.count("authorizations").await, 1);
    assert_eq!(bank.balances(HAPPY_CARD.0).await.1, 1_000_000 - 900);
}

#[tokio::test]
async fn timeout_holds_the_response_after_committing() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"timeout_rate": 1.0, "timeout_ms": 5_000}))
        .await;
    let key = new_key();
    let started = Instant::now();
    let gave_up = bank
        .client
        .post(bank.url("/api/v1/authorizations"))
        .header("Idempotency-Key", &key)
        .json(&authorization_body(400))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        bank.count("authorizations").await,
        1,
        "done although unanswered"
    );

    bank.put_chaos(json!({"timeout_rate": 0.0})).await;
    let retried = bank
        .post("/api/v1/authorizations", &key, &authorization_body(400))
        .await;
    assert_eq!(retried.headers()["X-Idempotent-Replayed"], "true");
}

#[tokio::test]
async fn reset_closes_the_connection_without_a_response() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"reset_rate": 1.0, "seed": 7})).await;
    let mut keys = Vec::new();
    for _ in 0..8 {
        let key = new_key();
        // A fresh connection each time: a reset kills the one it hits.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let result = client
            .post(bank.url("/api/v1/authorizations"))
            .header("Idempotency-Key", &key)
            .json(&authorization_body(100))
            .send()
            .await;
        let error = result.expect_err("no response on a reset");
        assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");
        keys.push(key);
    }
    let committed = bank.count("authorizations").await;
    assert!(
        0 < committed && committed < 8,
        "resets came both before and after the commit: {committed}"
    );

    // Retrying every key gives exactly one authorization per key.
    bank.put_chaos(json!({"reset_rate": 0.0})).await;
    let mut replayed = 0;
    for key in &keys {
        let response = bank
            .post("/api/v1/authorizations", key, &authorization_body(100))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        replayed += i64::from(response.headers().get("X-Idempotent-Replayed").is_some());
    }
    assert_eq!(
        replayed, committed,
        "those committed before the reset replay"
    );
    assert_eq!(bank.count("authorizations").await, 8);
    assert_eq!(bank.balances(HAPPY_CARD.0).await.1, 1_000_000 - 800);
}

#[tokio::test]
async fn an_outage_answers_503_to_the_api_only_and_ends() {
    let bank = spawn_bank().await;
    let config = bank.put_chaos(json!({"outage_seconds": 1})).await;
    assert_eq!(config["outage_seconds"], 1);
    assert_error(
        bank.authorize(HAPPY_CARD, 100).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(bank.get("/health").await.status(), StatusCode::OK);
    assert_eq!(bank.count("authorizations").await, 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        bank.authorize(HAPPY_CARD, 100).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn latency_is_added_without_occupying_a_worker() {
    let bank = spawn_bank_with(|s| s.workers = 1).await;
    bank.put_chaos(json!({"min_latency_ms": 500, "max_latency_ms": 500}))
        .await;
    let started = Instant::now();
    let unknown = format!("/api/v1/captures/cap_{}", uuid::Uuid::new_v4());
    let responses = join_all((0..200).map(|_| bank.get(&unknown))).await;
    assert!(
        responses
            .iter()
            .all(|r| r.status() == StatusCode::NOT_FOUND)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "latency was added"
    );
    // One worker thread held all 200 sleeping requests at once.
    assert!(
        bank.in_flight.peak() >= 200,
        "peak in flight {}",
        bank.in_flight.peak()
    );
}

#[tokio::test]
async fn one_seed_gives_one_fault_sequence() {
    let bank = spawn_bank().await;
    let unknown = format!("/api/v1/authorizations/auth_{}", uuid::Uuid::new_v4());
    let run = async |seed: u64| {
        bank.put_chaos(json!({"seed": seed, "failure_rate": 0.5}))
            .await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(bank.get(&unknown).await.status().as_u16());
        }
        statuses
    };
    let first = run(42).await;
    let second = run(42).await;
    let other = run(43).await;
    assert_eq!(first, second);
    assert_ne!(first, other);
    assert!(first.contains(&500) && first.contains(&404));
}

#[tokio::test]
async fn chaos_config_is_validated_and_partial() {
    let bank = spawn_bank().await;
    let before: Value = bank.get("/admin/chaos").await.json().await.unwrap();
    for bad in [
        json!({"failure_rate": 1.5}),
        json!({"reset_rate": -0.1}),
        json!({"min_latency_ms": 10, "max_latency_ms": 5}),
        json!({"failure_rate": "high"}),
        json!({"unknown_knob": 1}),
        // Past what the clock can add: it panicked the worker.
        json!({"outage_seconds": u64::MAX}),
    ] {
        let response = bank
            .client
            .put(bank.url("/admin/chaos"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let after: Value = bank.get("/admin/chaos").await.json().await.unwrap();
    assert_eq!(before, after, "a refused update changes nothing");
    assert_eq!(bank.get("/health").await.status(), StatusCode::OK);
    let changed = bank.put_chaos(json!({"timeout_rate": 0.25})).await;
    assert_eq!(changed["timeout_rate"], 0.25);
    assert_eq!(changed["failure_rate"], before["failure_rate"]);
    for field in [
        "failure_rate",
        "min_latency_ms",
        "max_latency_ms",
        "error_after_commit_rate",
        "timeout_rate",
        "reset_rate",
        "outage_seconds",
        "seed",
    ] {
        assert!(changed.get(field).is_some(), "{field}");
    }
}

#[tokio::test]
async fn faults_are_counted_in_metrics() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"failure_rate": 1.0})).await;
    bank.authorize(HAPPY_CARD, 100).await;
    let metrics = bank.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("bank_chaos_faults_total{kind=\"failure\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("bank_http_requests_total"));
    assert!(metrics.contains("bank_http_request_duration_seconds_bucket"));
}

/// The bank's own failures are counted apart from the faults it injects:
/// to a client both are a 500, so only this count tells a bug in the bank
/// from chaos. `/admin/counters` is this bank's own; other tests' banks in
/// this process move the Prometheus series, never it.
#[tokio::test]
async fn the_banks_own_errors_are_counted_apart_from_injected_faults() {
    let bank = spawn_bank().await;
    let authorization = bank.approved(HAPPY_CARD, 100).await;
    let id = authorization["authorization_id"].as_str().unwrap();
    let path = format!("/api/v1/authorizations/{id}");
    assert_eq!(
        counters(&bank).await,
        json!({"internal_errors": 0, "faults": {}})
    );

    bank.put_chaos(json!({"failure_rate": 1.0})).await;
    assert_internal_error(bank.get(&path).await).await;
    assert_eq!(
        counters(&bank).await,
        json!({"internal_errors": 0, "faults": {"failure": 1}}),
        "an injected fault is not the bank's own"
    );

    bank.put_chaos(json!({"failure_rate": 0.0})).await;
    sqlx::query("ALTER TABLE authorizations RENAME TO authorizations_gone")
        .execute(&bank.pool)
        .await
        .unwrap();
    assert_internal_error(bank.get(&path).await).await;
    assert_eq!(
        counters(&bank).await,
        json!({"internal_errors": 1, "faults": {"failure": 1}}),
        "the bank's own error"
    );
    let metrics = bank.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("bank_internal_errors_total "), "{metrics}");

    // An own error under a fault injected after it is still the bank's.
    bank.put_chaos(json!({"error_after_commit_rate": 1.0}))
        .await;
    assert_internal_error(bank.get(&path).await).await;
    assert_eq!(
        counters(&bank).await,
        json!({"internal_errors": 2, "faults": {"error_after_commit": 1, "failure": 1}}),
        "an own error under an injected one"
    );
}

async fn counters(bank: &TestBank) -> Value {
    bank.get("/admin/counters").await.json().await.unwrap()
}

async fn assert_internal_error(response: reqwest::Response) {
    assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
}

#[tokio::test]
async fn settings_that_would_stop_the_sweeper_or_overflow_the_clock_are_refused() {
    for (configure, name) in [
        (
            Box::new(|s: &mut Settings| s.expiry_sweep_interval_ms = 0)
                as Box<dyn Fn(&mut Settings)>,
            "EXPIRY_SWEEP_INTERVAL_MS",
        ),
        (
            Box::new(|s: &mut Settings| s.expiry_sweep_batch = 0),
            "EXPIRY_SWEEP_BATCH",
        ),
        (
            Box::new(|s: &mut Settings| s.auth_expiry_hours = u32::MAX),
            "AUTH_EXPIRY_HOURS",
        ),
    ] {
        let mut settings = Settings::local("postgres://nobody@127.0.0.1:1/none");
        configure(&mut settings);
        let refused = mock_bank::Application::build(settings)
            .await
            .err()
            .expect("refused");
        assert!(refused.to_string().contains(name), "{name}: {refused}");
    }
}
