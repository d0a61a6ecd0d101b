//! Bad input: 400 with `param` naming the field, and nothing created.

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::helpers::*;

fn with(mut body: Value, path: &[&str], value: Value) -> Value {
    let (last, parents) = path.split_last().unwrap();
    let mut target = &mut body;
    for p in parents {
        target = &mut target[*p];
    }
    if value.is_null() {
        target.as_object_mut().unwrap().remove(*last);
    } else {
        target[*last] = value;
    }
    body
}

#[tokio::test]
async fn invalid_fields_are_400_with_param_and_create_nothing() {
    let app = spawn_app().await;
    let good = payment_body(HAPPY_CARD, 1000, "ord_1", "cus_1");
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with(good.clone(), &["amount"], json!(0)),
            "amount",
            "amount_too_small",
        ),
        (
            with(good.clone(), &["amount"], json!(-5)),
            "amount",
            "amount_too_small",
        ),
        (
            with(good.clone(), &["amount"], json!(100_000_001)),
            "amount",
            "amount_too_large",
        ),
        (
            with(good.clone(), &["amount"], json!(i64::MAX)),
            "amount",
            "amount_too_large",
        ),
        (
            with(good.clone(), &["amount"], json!(u64::MAX)),
            "amount",
            "amount_too_large",
        ),
        (
            with(good.clone(), &["amount"], json!(1.5)),
            "amount",
            "parameter_invalid_integer",
        ),
        (
            with(good.clone(), &["amount"], json!(1000.0)),
            "amount",
            "parameter_invalid_integer",
        ),
        (
            with(good.clone(), &["amount"], json!("10")),
            "amount",
            "parameter_invalid_integer",
        ),
        (
            with(good.clone(), &["amount"], Value::Null),
            "amount",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["currency"], json!("EUR")),
            "currency",
            "currency_not_supported",
        ),
        (
            with(good.clone(), &["currency"], json!("usd")),
            "currency",
            "currency_not_supported",
        ),
        (
            with(good.clone(), &["order_id"], json!("")),
            "order_id",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["order_id"], json!("x".repeat(65))),
            "order_id",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["order_id"], json!("ord 1")),
            "order_id",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["customer_id"], Value::Null),
            "customer_id",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["card", "number"], json!("4111111111111112")),
            "card.number",
            "invalid_number",
        ),
        (
            with(good.clone(), &["card", "number"], json!("4111")),
            "card.number",
            "invalid_number",
        ),
        (
            with(
                good.clone(),
                &["card", "number"],
                json!(4111111111111111_u64),
            ),
            "card.number",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["card", "cvv"], json!("12")),
            "card.cvv",
            "invalid_cvc",
        ),
        (
            with(good.clone(), &["card", "expiry_month"], json!(13)),
            "card.expiry_month",
            "invalid_expiry_month",
        ),
        (
            with(good.clone(), &["card", "expiry_year"], json!(1999)),
            "card.expiry_year",
            "invalid_expiry_year",
        ),
        (
            with(good.clone(), &["card"], Value::Null),
            "card",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["card"], json!("4111111111111111")),
            "card",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["surprise"], json!(1)),
            "surprise",
            "parameter_invalid",
        ),
        (
            // A value where a name goes (a card number as a key) is not
            // echoed: the error names the object that held it.
            with(good.clone(), &["card", "4111111111111111"], json!("x")),
            "card",
            "parameter_invalid",
        ),
        (
            // Nor when written in groups, as on the card itself.
            with(good.clone(), &["card", "4111-1111-1111-1111"], json!("x")),
            "card",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["4111.1111.1111.1111"], json!(1)),
            "body",
            "parameter_invalid",
        ),
        (
            with(good.clone(), &["card", "pin"], json!("1234")),
            "card.pin",
            "parameter_invalid",
        ),
        (json!([1, 2]), "body", "parameter_invalid"),
    ];
    for (body, param, code) in cases {
        let response = app.post("/v1/payments", &new_key(), &body).await;
        let error = assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
        )
        .await;
        assert_eq!(error["error"]["param"], param, "{body}");
        assert_names_its_param(&error);
        let echoed = error.to_string().replace(['-', '.'], "");
        assert!(
            !echoed.contains("4111111111111111"),
            "card number echoed: {error}"
        );
    }
    assert_eq!(app.count("payments").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);
    assert_eq!(app.bank_count("authorizations").await, 0);
}

#[tokio::test]
async fn malformed_json_missing_keys_and_big_bodies_are_refused() {
    let app = spawn_app().await;
    let raw = |body: &'static str| {
        app.client
            .post(app.url("/v1/payments"))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", new_key())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
    };
    let error = assert_error(
        raw("{").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_json",
    )
    .await;
    assert_eq!(error["error"]["param"], "body");
    let huge_number = r#"{"order_id": "o", "customer_id": "c", "amount": 99999999999999999999999, "currency": "USD",
        "card": {"number": "4111111111111111", "cvv": "123", "expiry_month": 12, "expiry_year": 2030}}"#;
    let error = assert_error(
        raw(huge_number).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "amount_too_large",
    )
    .await;
    assert_eq!(error["error"]["param"], "amount");

    let missing = app
        .client
        .post(app.url("/v1/payments"))
        .bearer_auth(&app.api_key)
        .json(&payment_body(HAPPY_CARD, 100, "o", "c"))
        .send()
        .await
        .unwrap();
    let error = assert_error(
        missing,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "missing_idempotency_key",
    )
    .await;
    assert_eq!(error["error"]["param"], "Idempotency-Key");
    for bad_key in ["k".repeat(256), "tab\tkey".to_owned()] {
        let response = app
            .post(
                "/v1/payments",
                &bad_key,
                &payment_body(HAPPY_CARD, 100, "o", "c"),
            )
            .await;
        let error = assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "idempotency_key_invalid",
        )
        .await;
        assert_eq!(error["error"]["param"], "Idempotency-Key");
    }

    let big = json!({"order_id": "x".repeat(17 * 1024)});
    let response = app.post("/v1/payments", &new_key(), &big).await;
    assert_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "payload_too_large",
    )
    .await;
    assert_eq!(app.count("payments").await, 0);
}

#[tokio::test]
async fn unknown_payments_and_routes_are_404() {
    let app = spawn_app().await;
    for path in [
        "/v1/payments/pay_nope",
        "/v1/payments/pay_0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
    ] {
        assert_error(
            app.get(path).await,
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
        )
        .await;
    }
    let capture = app
        .post("/v1/payments/pay_nope/capture", &new_key(), &Value::Null)
        .await;
    assert_error(
        capture,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
    )
    .await;
    assert_eq!(
        app.count("idempotency_keys").await,
        0,
        "nothing stored for a 404"
    );
    assert_error(
        app.get("/nowhere").await,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
    )
    .await;
}

/// The message reads on its own: it names the field that `param` names.
fn assert_names_its_param(error: &Value) {
    let param = error["error"]["param"].as_str().expect("a param");
    let message = error["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains(param),
        "the message does not name {param}: {error}"
    );
}

#[tokio::test]
async fn every_missing_or_invalid_field_is_named_in_the_message() {
    let app = spawn_app().await;
    let good = payment_body(HAPPY_CARD, 1000, "ord_1", "cus_1");
    let mut bodies = Vec::new();
    for field in ["order_id", "customer_id", "amount", "currency", "card"] {
        bodies.push((with(good.clone(), &[field], Value::Null), field.to_owned()));
        bodies.push((with(good.clone(), &[field], json!(true)), field.to_owned()));
    }
    for field in ["number", "cvv", "expiry_month", "expiry_year"] {
        let path = format!("card.{field}");
        bodies.push((
            with(good.clone(), &["card", field], Value::Null),
            path.clone(),
        ));
        bodies.push((with(good.clone(), &["card", field], json!([])), path));
    }
    for (body, param) in bodies {
        let response = app.post("/v1/payments", &new_key(), &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param.as_str(), "{error}");
        assert_names_its_param(&error);
    }

    // The example from the issue, word for word.
    let response = app
        .post(
            "/v1/payments",
            &new_key(),
            &with(good.clone(), &["amount"], Value::Null),
        )
        .await;
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["message"], "amount is required", "{error}");

    // A key sent twice, an operation's amount, query parameters.
    let twice = app
        .client
        .post(app.url("/v1/payments"))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", new_key())
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"amount": 1, "amount": 2}"#)
        .send()
        .await
        .unwrap();
    let error: Value = twice.json().await.unwrap();
    assert_eq!(error["error"]["code"], "duplicate_parameter", "{error}");
    assert_names_its_param(&error);
    let payment = app.authorized(HAPPY_CARD, 1000).await;
    let id = payment["id"].as_str().unwrap();
    for body in [
        json!({"amount": 999}),
        json!({"amount": "x"}),
        json!({"amout": 1}),
    ] {
        let response = app
            .post(&format!("/v1/payments/{id}/capture"), &new_key(), &body)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_names_its_param(&response.json().await.unwrap());
    }
    for query in [
        "/v1/payments?limit=0",
        "/v1/payments?order_id=a&customer_id=b",
        "/v1/payments?starting_after=nope",
        "/v1/payments?starting_after=pay_0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
        "/v1/payments?order_id=a%20b",
        "/v1/events?type=payment.nope",
        "/v1/events?payment_id=nope",
        "/v1/events?limit=101",
        "/v1/events?starting_after=evt_0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
    ] {
        let response = app.get(query).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_names_its_param(&response.json().await.unwrap());
    }
    for body in [
        json!({}),
        json!({"url": 1}),
        json!({"url": "ftp://x"}),
        json!({"url": "https://example.com/hooks", "event_types": "payment.captured"}),
        json!({"url": "https://example.com/hooks", "event_types": ["payment.nope"]}),
    ] {
        let response = app.post("/v1/webhook_endpoints", &new_key(), &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_names_its_param(&response.json().await.unwrap());
    }
}
