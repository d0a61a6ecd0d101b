//! Authentication, tenancy, and card data that must never be kept.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn v1_requires_a_valid_api_key() {
    let app = spawn_app().await;
    let no_key = app
        .client
        .get(app.url("/v1/payments"))
        .send()
        .await
        .unwrap();
    assert_error(
        no_key,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
    )
    .await;
    for bad in ["sk_test_nope", "", "Basic abc"] {
        let response = app.get_as(bad, "/v1/payments").await;
        assert_error(
            response,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
        )
        .await;
    }
    let wrong_scheme = app
        .client
        .get(app.url("/v1/payments"))
        .header("Authorization", format!("Token {}", app.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_scheme.status(), StatusCode::UNAUTHORIZED);
    // The scheme's name is not case-sensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let answered = app
            .client
            .get(app.url("/v1/payments"))
            .header("Authorization", format!("{scheme} {}", app.api_key))
            .send()
            .await
            .unwrap();
        assert_eq!(answered.status(), StatusCode::OK, "{scheme}");
    }
    let post = app
        .post_as(
            "sk_test_nope",
            "/v1/payments",
            &new_key(),
            &payment_body(HAPPY_CARD, 100, "o", "c"),
        )
        .await;
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("payments").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);
}

#[tokio::test]
async fn merchants_cannot_see_or_touch_each_others_payments() {
    let app = spawn_app().await;
    let other = create_key(&app.pool, "another-shop").await;
    let payment = app.authorized(HAPPY_CARD, 100).await;
    let id = payment["id"].as_str().unwrap();
    let read = app.get_as(&other, &format!("/v1/payments/{id}")).await;
    assert_error(
        read,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
    )
    .await;
    let capture = app
        .post_as(
            &other,
            &format!("/v1/payments/{id}/capture"),
            &new_key(),
            &Value::Null,
        )
        .await;
    assert_error(
        capture,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
    )
    .await;
    let list: Value = app
        .get_as(&other, "/v1/payments?customer_id=cus_1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], serde_json::json!([]));
    // Nor page from it: to them it is an unknown cursor.
    let cursor = app
        .get_as(&other, &format!("/v1/payments?starting_after={id}"))
        .await;
    let body = assert_error(
        cursor,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "parameter_invalid",
    )
    .await;
    assert_eq!(body["error"]["param"], "starting_after");
    let ours: Value = app
        .get(&format!("/v1/payments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ours["status"], "authorized", "untouched");
}

#[tokio::test]
async fn keys_are_stored_as_hashes_only() {
    let app = spawn_app().await;
    let stored: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT key_hash, prefix FROM api_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    let (hash, prefix) = &stored[0];
    assert_eq!(hash.len(), 32);
    assert!(app.api_key.starts_with(prefix.as_str()));
    assert!(prefix.len() < app.api_key.len());
    assert!(!String::from_utf8_lossy(hash).contains(&app.api_key));
}

/// Dumps every table as JSON text and looks for every test card number and
/// CVV in it, and in every response.
#[tokio::test]
async fn no_card_number_or_cvv_is_stored_or_returned() {
    let app = spawn_app().await;
    let mut responses = String::new();
    for card in ALL_CARDS {
        let response = app.create_payment(card, 100).await;
        responses.push_str(&response.text().await.unwrap());
    }
    let bad = app
        .create_payment(("4111111111111112", "123", 12, 2030), 100)
        .await;
    responses.push_str(&bad.text().await.unwrap());
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t"))
                .fetch_all(&app.pool)
                .await
                .unwrap();
        dump.push_str(&rows.join("\n"));
    }
    assert!(dump.contains("1111"), "the dump holds the payments");
    for card in ALL_CARDS.iter().map(|c| c.0).chain(["4111111111111112"]) {
        assert!(!dump.contains(card), "card number in the database");
        assert!(!responses.contains(card), "card number in a response");
    }
    for (_, cvv, ..) in ALL_CARDS {
        assert!(
            !dump.contains(&format!("\"{cvv}\"")),
            "a CVV in the database"
        );
    }
}
