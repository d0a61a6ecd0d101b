//! The recovery worker and the expiry sweeper, with no client retrying.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// A gateway whose bank calls give up long before the bank answers, and
/// whose background work runs often.
async fn impatient_app() -> TestApp {
    spawn_app_with(Options {
        bank: bank_latency_ms(600),
        gateway: Some(Box::new(|s| {
            s.bank_attempt_timeout_ms = 200;
            s.bank_deadline_ms = 400;
            s.lease_ms = 1_000;
            s.retry_unknown_after_ms = 100;
            s.recovery_max_backoff_ms = 500;
            s.recovery_interval_ms = 100;
            s.expiry_sweep_interval_ms = 100;
        })),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn an_unknown_authorization_is_settled_by_the_worker_without_a_retry() {
    let app = impatient_app().await;
    let response = app.create_payment(LIMITED_CARD, 7_000).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pending: Value = response.json().await.unwrap();
    assert_eq!(pending["status"], "pending");
    // Lift the latency so the worker's calls get answers.
    app.set_bank_chaos(json!({"min_latency_ms": 0, "max_latency_ms": 0}))
        .await;
    let settled = app
        .eventually(pending["id"].as_str().unwrap(), |p| {
            p["status"] != "pending"
        })
        .await;
    let authorizations = app.bank_count("authorizations").await;
    let (_, available) = app.bank_balances(LIMITED_CARD.0).await;
    match settled["status"].as_str().unwrap() {
        // The bank did it before the worker asked: adopted, one hold.
        "authorized" => {
            assert_eq!(authorizations, 1);
            assert_eq!(available, 50_000 - 7_000);
            assert!(settled["bank"]["authorization_id"].is_string());
        }
        // The bank never did it, and now never will.
        "declined" => {
            assert_eq!(authorizations, 0);
            assert_eq!(available, 50_000);
            assert_eq!(settled["failure"]["code"], "authorization_abandoned");
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn an_unknown_capture_is_resent_with_its_key_and_completes() {
    let app = impatient_app().await;
    app.set_bank_chaos(json!({"min_latency_ms": 0, "max_latency_ms": 0}))
        .await;
    let payment = app.authorized(HAPPY_CARD, 2_500).await;
    let id = payment["id"].as_str().unwrap();
    app.set_bank_chaos(json!({"timeout_rate": 1.0, "timeout_ms": 1_000}))
        .await;
    let response = app.act(id, "capture").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "capturing"
    );
    app.set_bank_chaos(json!({"timeout_rate": 0.0})).await;
    let captured = app.eventually(id, |p| p["status"] == "captured").await;
    assert!(captured["bank"]["capture_id"].is_string());
    assert_eq!(
        app.bank_count("captures").await,
        1,
        "captured once, whatever the retries"
    );
    assert_eq!(
        app.bank_balances(HAPPY_CARD.0).await,
        (1_000_000 - 2_500, 1_000_000 - 2_500)
    );
}

#[tokio::test]
async fn the_sweeper_expires_authorizations_without_any_request() {
    let app = impatient_app().await;
    app.set_bank_chaos(json!({"min_latency_ms": 0, "max_latency_ms": 0}))
        .await;
    let payment = app.authorized(HAPPY_CARD, 100).await;
    let id = payment["id"].as_str().unwrap();
    sqlx::query("UPDATE payments SET authorization_expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let expired = app.eventually(id, |p| p["status"] == "expired").await;
    let history: Vec<&str> = expired["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["pending", "authorized", "expired"]);
}
