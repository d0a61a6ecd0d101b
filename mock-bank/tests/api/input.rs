//! Bad input: a 4xx with the contract's error body, never a 500, and
//! nothing changes.

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;

use crate::helpers::*;

async fn post_raw(
    bank: &TestBank,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    bank.client
        .post(bank.url(path))
        .header("Idempotency-Key", new_key())
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_bodies_are_400_and_change_nothing() {
    let bank = spawn_bank().await;
    let cases: [(&str, &str); 9] = [
        ("/api/v1/authorizations", "{"),
        ("/api/v1/authorizations", "not json"),
        ("/api/v1/authorizations", ""),
        (
            "/api/v1/authorizations",
            r#"{"card_number": 4111111111111111, "cvv": "123", "amount": 1}"#,
        ),
        (
            "/api/v1/authorizations",
            r#"{"card_number": "4111111111111111", "cvv": "123", "amount": "10"}"#,
        ),
        (
            "/api/v1/authorizations",
            r#"{"card_number": "4111111111111111", "cvv": "123", "amount": 1.5}"#,
        ),
        (
            "/api/v1/authorizations",
            r#"{"card_number": "4111111111111111", "cvv": "123", "amount": 99999999999999999999999}"#,
        ),
        (
            "/api/v1/captures",
            r#"{"authorization_id": ["a"], "amount": 1}"#,
        ),
        ("/api/v1/refunds", "[1, 2, 3]"),
    ];
    for (path, body) in cases {
        let response = post_raw(&bank, path, body).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            !error["message"]
                .as_str()
                .unwrap()
                .contains("4111111111111111"),
            "no card number echoed: {error}"
        );
    }
    assert_eq!(bank.count("authorizations").await, 0);
    assert_eq!(bank.count("idempotency_records").await, 0);
}

#[tokio::test]
async fn missing_fields_fail_the_contract_checks_as_in_the_original() {
    let bank = spawn_bank().await;
    let cases = [
        (
            "/api/v1/authorizations",
            r#"{"cvv": "123", "amount": 1}"#,
            "invalid_card",
        ),
        (
            "/api/v1/authorizations",
            r#"{"card_number": "4111111111111111", "amount": 1}"#,
            "invalid_cvv",
        ),
        (
            "/api/v1/authorizations",
            r#"{"card_number": "4111111111111111", "cvv": "123"}"#,
            "invalid_amount",
        ),
        (
            "/api/v1/captures",
            r#"{"amount": 1}"#,
            "authorization_not_found",
        ),
        ("/api/v1/voids", "{}", "authorization_not_found"),
        ("/api/v1/refunds", r#"{"amount": 1}"#, "capture_not_found"),
    ];
    for (path, body, code) in cases {
        assert_error(
            post_raw(&bank, path, body).await,
            StatusCode::BAD_REQUEST,
            code,
        )
        .await;
    }
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let bank = spawn_bank().await;
    let padding = "x".repeat(64 * 1024);
    let body = format!(
        r#"{{"card_number": "4111111111111111", "cvv": "123", "amount": 1, "pad": "{padding}"}}"#
    );
    let response = post_raw(&bank, "/api/v1/authorizations", body).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(bank.count("authorizations").await, 0);
    // Just under the limit is read (and then judged on its fields).
    let padding = "x".repeat(60 * 1024);
    let body = format!(
        r#"{{"card_number": "4111111111111111", "cvv": "123", "amount": 1, "pad": "{padding}"}}"#
    );
    assert_eq!(
        post_raw(&bank, "/api/v1/authorizations", body)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_error_body() {
    let bank = spawn_bank().await;
    assert_error(bank.get("/nope").await, StatusCode::NOT_FOUND, "not_found").await;
    let response = bank
        .client
        .delete(bank.url("/api/v1/authorizations"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].is_string());
}
