//! Against a chaotic bank: retries hide transient failures from the client,
//! and lost responses never become a second charge.

use futures_util::StreamExt;
use futures_util::stream;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// These tests are about retries hiding a flaky bank, not about the
/// circuit breaker. With 10 concurrent clients, 5 consecutive transient
/// failures (the default threshold) happen by chance on a bank that fails
/// 30% of attempts (0.3^5: once in ~400 windows), and the 503s of an open
/// circuit would then reach the client. 20 in a row is what a dead bank
/// does, and never happens by chance here.
fn flaky_bank_circuit(settings: &mut gateway::Settings) {
    settings.circuit_failure_threshold = 20;
}

/// A client that does what the contract asks: on 202, retry with the key.
async fn until_final(app: &TestApp, path: &str, key: &str, body: &Value) -> (StatusCode, Value) {
    for _ in 0..30 {
        let response = app.post(path, key, body).await;
        let status = response.status();
        assert!(
            !status.is_server_error(),
            "{path}: {status} reached the client"
        );
        let body: Value = response.json().await.unwrap();
        if status != StatusCode::ACCEPTED {
            return (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} never settled");
}

async fn authorize_and_capture(app: &TestApp, amount: i64) -> String {
    let body = payment_body(HAPPY_CARD, amount, "ord_chaos", "cus_chaos");
    let (status, payment) = until_final(app, "/v1/payments", &new_key(), &body).await;
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    let id = payment["id"].as_str().unwrap().to_owned();
    let (status, captured) = until_final(
        app,
        &format!("/v1/payments/{id}/capture"),
        &new_key(),
        &Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{captured}");
    assert_eq!(captured["status"], "captured");
    id
}

#[tokio::test]
async fn with_30_percent_bank_failures_50_payments_authorize_and_capture_without_a_5xx() {
    let app = spawn_app_with(Options {
        bank: Some(Box::new(|s| {
            s.failure_rate = 0.3;
            s.chaos_seed = Some(30);
        })),
        gateway: Some(Box::new(flaky_bank_circuit)),
        ..Options::default()
    })
    .await;
    let ids: Vec<String> = stream::iter(0..50)
        .map(|i| authorize_and_capture(&app, 100 + i))
        .buffer_unordered(10)
        .collect()
        .await;
    assert_eq!(ids.len(), 50);
    assert_eq!(app.bank_count("authorizations").await, 50);
    assert_eq!(app.bank_count("captures").await, 50);
    let total: i64 = (0..50).map(|i| 100 + i).sum();
    assert_eq!(
        app.bank_balances(HAPPY_CARD.0).await,
        (1_000_000 - total, 1_000_000 - total)
    );
}

#[tokio::test]
async fn with_half_the_responses_lost_every_authorization_exists_once_at_the_bank() {
    let app = spawn_app_with(Options {
        bank: Some(Box::new(|s| {
            s.error_after_commit_rate = 0.5;
            s.chaos_seed = Some(50);
        })),
        gateway: Some(Box::new(flaky_bank_circuit)),
        ..Options::default()
    })
    .await;
    let amounts: Vec<i64> = (1..=30).collect();
    let results: Vec<(StatusCode, Value)> = stream::iter(amounts.clone())
        .map(|amount| {
            let app = &app;
            async move {
                let body = payment_body(HAPPY_CARD, amount, "ord_lost", "cus_lost");
                until_final(app, "/v1/payments", &new_key(), &body).await
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    assert!(
        results
            .iter()
            .all(|(status, _)| *status == StatusCode::CREATED)
    );
    assert_eq!(
        app.bank_count("authorizations").await,
        30,
        "one bank authorization per payment"
    );
    let held: i64 = amounts.iter().sum();
    assert_eq!(
        app.bank_balances(HAPPY_CARD.0).await,
        (1_000_000, 1_000_000 - held),
        "no orphan hold"
    );
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT bank_authorization_id) FROM payments")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(distinct, 30);
}
