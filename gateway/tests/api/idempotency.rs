//! Idempotency keys: replay, reuse, in use, resume, and per-merchant scope.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_replay_is_byte_identical_marked_and_calls_the_bank_no_more() {
    let app = spawn_app().await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 1234, "ord_9", "cus_9");
    let first = app.post("/v1/payments", &key, &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("Idempotent-Replayed").is_none());
    let first = first.bytes().await.unwrap();
    for _ in 0..3 {
        let again = app.post("/v1/payments", &key, &body).await;
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(again.headers()["Idempotent-Replayed"], "true");
        assert_eq!(again.bytes().await.unwrap(), first);
    }
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(app.bank_count("authorizations").await, 1);

    // Operations replay too, even after the payment moved on.
    let id = serde_json::from_slice::<Value>(&first).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let capture_key = new_key();
    let capture = app
        .post(
            &format!("/v1/payments/{id}/capture"),
            &capture_key,
            &Value::Null,
        )
        .await;
    let capture = capture.bytes().await.unwrap();
    assert_eq!(app.act(&id, "refund").await.status(), StatusCode::OK);
    let again = app
        .post(
            &format!("/v1/payments/{id}/capture"),
            &capture_key,
            &Value::Null,
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.bytes().await.unwrap(), capture);
    assert_eq!(app.bank_count("captures").await, 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_422() {
    let app = spawn_app().await;
    let key = new_key();
    let payment: Value = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 100, "o1", "c1"),
        )
        .await
        .json()
        .await
        .unwrap();
    let different = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 101, "o1", "c1"),
        )
        .await;
    assert_error(
        different,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_error",
        "idempotency_key_reused",
    )
    .await;
    let other_path = app
        .post(
            &format!("/v1/payments/{}/capture", payment["id"].as_str().unwrap()),
            &key,
            &Value::Null,
        )
        .await;
    assert_error(
        other_path,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_error",
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.count("payments").await, 1);
}

#[tokio::test]
async fn ten_concurrent_same_key_requests_make_one_payment_and_one_bank_authorization() {
    let app = spawn_app_with(Options {
        bank: Some(Box::new(|s| {
            s.min_latency_ms = 200;
            s.max_latency_ms = 200;
        })),
        ..Options::default()
    })
    .await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 777, "ord_c", "cus_c");
    let responses = join_all((0..10).map(|_| app.post("/v1/payments", &key, &body))).await;
    let mut created = 0;
    for response in responses {
        match response.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(response.headers()["Retry-After"], "1");
                assert_error(
                    response,
                    StatusCode::CONFLICT,
                    "idempotency_error",
                    "idempotency_key_in_use",
                )
                .await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(created >= 1);
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(app.bank_count("authorizations").await, 1);
    assert_eq!(app.bank_balances(HAPPY_CARD.0).await.1, 1_000_000 - 777);
}

#[tokio::test]
async fn an_unknown_outcome_answers_202_and_a_retry_resumes_rather_than_repeats() {
    // The bank holds every answer longer than the gateway's deadline.
    let app = spawn_app_with(Options {
        bank: Some(Box::new(|s| {
            s.min_latency_ms = 700;
            s.max_latency_ms = 700;
        })),
        gateway: Some(Box::new(|s| {
            s.bank_attempt_timeout_ms = 300;
            s.bank_deadline_ms = 600;
            s.lease_ms = 5_000;
        })),
        ..Options::default()
    })
    .await;
    let key = new_key();
    let body = payment_body(LIMITED_CARD, 5_000, "ord_u", "cus_u");
    let response = app.post("/v1/payments", &key, &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().get("Idempotent-Replayed").is_none());
    let pending: Value = response.json().await.unwrap();
    assert_eq!(pending["status"], "pending");

    // Wait for the bank to finish what the timed-out attempts started.
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.set_bank_chaos(json!({"min_latency_ms": 0, "max_latency_ms": 0}))
        .await;
    let resumed = app.post("/v1/payments", &key, &body).await;
    assert_eq!(resumed.status(), StatusCode::CREATED);
    let resumed: Value = resumed.json().await.unwrap();
    assert_eq!(resumed["id"], pending["id"], "the same payment, resumed");
    assert_eq!(resumed["status"], "authorized");
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(
        app.bank_count("authorizations").await,
        1,
        "the bank authorized once"
    );
    assert_eq!(
        app.bank_balances(LIMITED_CARD.0).await,
        (50_000, 45_000),
        "one hold"
    );

    let replay = app.post("/v1/payments", &key, &body).await;
    assert_eq!(replay.headers()["Idempotent-Replayed"], "true");
}

#[tokio::test]
async fn keys_are_scoped_to_the_merchant() {
    let app = spawn_app().await;
    let other = create_key(&app.pool, "another-shop").await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 100, "o1", "c1");
    let ours: Value = app
        .post("/v1/payments", &key, &body)
        .await
        .json()
        .await
        .unwrap();
    let response = app.post_as(&other, "/v1/payments", &key, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("Idempotent-Replayed").is_none());
    let theirs: Value = response.json().await.unwrap();
    assert_ne!(ours["id"], theirs["id"]);
}

#[tokio::test]
async fn rejected_requests_store_nothing_so_the_key_can_be_used_again() {
    let app = spawn_app().await;
    let key = new_key();
    let bad = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 0, "o1", "c1"),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let good = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 100, "o1", "c1"),
        )
        .await;
    assert_eq!(good.status(), StatusCode::CREATED);
    assert!(good.headers().get("Idempotent-Replayed").is_none());
}

#[tokio::test]
async fn answered_keys_are_purged_after_the_retention() {
    let app = spawn_app().await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 100, "o1", "c1");
    assert_eq!(
        app.post("/v1/payments", &key, &body).await.status(),
        StatusCode::CREATED
    );
    // Answered a day ago: not something to wait for in a test. An answered
    // key refuses every change (a trigger), so this session skips triggers.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE idempotency_keys SET answered_at = now() - interval '25 hours'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    let purged = gateway::idempotency::purge(&mut conn, Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(app.count("idempotency_keys").await, 0);
}
