//! Rate limiting per API key: a noisy merchant gets 429s, a quiet one in
//! the same moments does not, and a refused request stores nothing.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const BURST: u32 = 5;

async fn limited_app() -> TestApp {
    spawn_app_with(Options {
        gateway: Some(Box::new(|s| {
            s.rate_limit_per_second = 1;
            s.rate_limit_burst = BURST;
        })),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_noisy_merchant_is_limited_and_a_quiet_one_is_not() {
    let app = limited_app().await;
    let quiet = create_key(&app.pool, "quiet-shop").await;
    let mut noisy_statuses = Vec::new();
    let mut quiet_statuses = Vec::new();
    for i in 0..40 {
        noisy_statuses.push(app.get("/v1/payments").await.status());
        // The quiet merchant's few requests fall among the noisy one's.
        if i % 10 == 5 {
            quiet_statuses.push(app.get_as(&quiet, "/v1/payments").await.status());
        }
    }
    assert_eq!(quiet_statuses, vec![StatusCode::OK; 4], "never limited");
    assert!(
        noisy_statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS),
        "{noisy_statuses:?}"
    );
    let ok = noisy_statuses
        .iter()
        .filter(|s| **s == StatusCode::OK)
        .count();
    assert!(ok >= BURST as usize, "the burst passes: {noisy_statuses:?}");
    assert!(
        noisy_statuses[..BURST as usize]
            .iter()
            .all(|s| *s == StatusCode::OK)
    );
    assert!(
        noisy_statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "40 requests at 1/s with a burst of {BURST}: some must be refused"
    );

    let response = app.get("/v1/payments").await;
    let retry_after = retry_after_seconds(&response);
    assert!(retry_after >= 1);
    assert_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "rate_limited",
    )
    .await;
}

#[tokio::test]
async fn a_limited_post_stores_nothing_and_its_key_works_after_retry_after() {
    let app = limited_app().await;
    for _ in 0..BURST {
        assert_eq!(app.get("/v1/payments").await.status(), StatusCode::OK);
    }
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 700, "ord_rl", "cus_rl");
    let refused = app.post("/v1/payments", &key, &body).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = retry_after_seconds(&refused);
    assert_eq!(app.count("idempotency_keys").await, 0);
    assert_eq!(app.count("payments").await, 0);
    assert_eq!(app.bank_count("authorizations").await, 0);

    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    let created = app.post("/v1/payments", &key, &body).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let payment: Value = created.json().await.unwrap();
    assert_eq!(payment["status"], "authorized");
}

#[tokio::test]
async fn unauthenticated_requests_are_401_not_429() {
    let app = limited_app().await;
    for _ in 0..(BURST * 3) {
        assert_eq!(
            app.get_as("sk_test_nope", "/v1/payments").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(app.get("/v1/payments").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn zero_turns_rate_limiting_off() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s| {
            s.rate_limit_per_second = 0;
            s.rate_limit_burst = 1;
        })),
        ..Options::default()
    })
    .await;
    for _ in 0..20 {
        assert_eq!(app.get("/v1/payments").await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn every_v1_operation_documents_429() {
    let app = spawn_app().await;
    let openapi: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = openapi["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/v1/")) {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["responses"].get("429").is_some(),
                "{method} {path} does not document 429"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 17, "every /v1 operation");
}
