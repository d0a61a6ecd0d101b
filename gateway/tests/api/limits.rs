//! Every limit at its edge: the largest allowed passes, one past it is a
//! clear 4xx (never a 5xx) and stores nothing. The body limit, field
//! lengths and charsets are also covered value by value in `validation.rs`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const BODY_LIMIT: usize = 16 * 1024;
const HEADER_LIMIT: usize = 16 * 1024;

/// A payment body padded with trailing spaces (still valid JSON) to `size` bytes.
fn padded_body(size: usize, order: &str) -> String {
    let body = payment_body(HAPPY_CARD, 100, order, "cus_lim").to_string();
    assert!(body.len() <= size);
    format!("{body}{}", " ".repeat(size - body.len()))
}

async fn post_raw(app: &TestApp, path: &str, key: &str, body: String) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", key)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Sends `request` as raw bytes and returns the status line's code, or
/// `None` if the server closed without answering.
async fn raw_status(address: &str, request: &[u8]) -> Option<u16> {
    status_of(&raw_exchange(address, request).await)
}

#[tokio::test]
async fn the_body_limit_is_16_kib_on_every_post() {
    let app = spawn_app().await;
    let at_limit = post_raw(
        &app,
        "/v1/payments",
        &new_key(),
        padded_body(BODY_LIMIT, "ord_at"),
    )
    .await;
    assert_eq!(at_limit.status(), StatusCode::CREATED);
    let payment: Value = at_limit.json().await.unwrap();
    let id = payment["id"].as_str().unwrap();

    let over = post_raw(
        &app,
        "/v1/payments",
        &new_key(),
        padded_body(BODY_LIMIT + 1, "ord_over"),
    )
    .await;
    assert_error(
        over,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "payload_too_large",
    )
    .await;

    let capture = post_raw(
        &app,
        &format!("/v1/payments/{id}/capture"),
        &new_key(),
        format!("{{\"amount\": 100}}{}", " ".repeat(BODY_LIMIT)),
    )
    .await;
    assert_error(
        capture,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "payload_too_large",
    )
    .await;
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(
        app.get(&format!("/v1/payments/{id}"))
            .await
            .json::<Value>()
            .await
            .unwrap()["status"],
        "authorized",
        "the oversized capture did nothing"
    );
    assert_eq!(app.count("idempotency_keys").await, 1);
}

#[tokio::test]
async fn oversized_headers_are_431_with_the_error_object() {
    let app = spawn_app().await;
    let with_filler = |path: &str, size: usize| {
        app.client
            .get(app.url(path))
            .bearer_auth(&app.api_key)
            .header("X-Filler", "f".repeat(size))
            .send()
    };
    // Well under the limit, with the other headers: fine.
    let under = with_filler("/v1/payments", HEADER_LIMIT / 2).await.unwrap();
    assert_eq!(under.status(), StatusCode::OK);
    for (path, size) in [
        ("/v1/payments", HEADER_LIMIT + 1),
        ("/v1/payments", 64 * 1024),
        ("/health", 64 * 1024),
    ] {
        let response = with_filler(path, size).await.unwrap();
        let error = assert_error(
            response,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "headers_too_large",
        )
        .await;
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&HEADER_LIMIT.to_string())
        );
    }
    // A POST refused for its headers stores nothing, so its key stays usable.
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 100, "ord_h", "cus_h");
    let refused = app
        .client
        .post(app.url("/v1/payments"))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", &key)
        .header("X-Filler", "f".repeat(HEADER_LIMIT))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(app.count("idempotency_keys").await, 0);
    assert_eq!(
        app.post("/v1/payments", &key, &body).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn past_the_http_layers_own_limits_the_answer_is_431_not_a_5xx() {
    let app = spawn_app().await;
    // More headers than the HTTP parser takes (96).
    let mut many = String::from("GET /health HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    assert_eq!(raw_status(&app.address, many.as_bytes()).await, Some(431));
    // A head larger than its buffer (128 KiB): 431, or the connection is
    // closed before the answer is read; never a 5xx.
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "f".repeat(140 * 1024)
    );
    let status = raw_status(&app.address, huge.as_bytes()).await;
    assert!(status.is_none_or(|s| (400..500).contains(&s)), "{status:?}");
    // The server is unharmed.
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_head_gets_408() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s| s.client_request_timeout_ms = 300)),
        ..Options::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"GET /v1/payments HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server gives up on the slow head")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn field_limits_at_the_edge_pass_and_one_past_is_400() {
    let app = spawn_app().await;
    let longest = "o".repeat(64);
    let edge = json!({
        "order_id": longest, "customer_id": "C-_9".repeat(16), "amount": 100_000_000,
        "currency": "USD",
        "card": {"number": HAPPY_CARD.0, "cvv": HAPPY_CARD.1, "expiry_month": 12, "expiry_year": 2030}
    });
    let longest_key: String = (0..255)
        .map(|i| char::from(b'!' + u8::try_from(i % 94).unwrap()))
        .collect();
    let accepted = app.post("/v1/payments", &longest_key, &edge).await;
    // Past validation: the test card's balance is below the ceiling, so the
    // bank declines it (402, a payment exists), but the gateway took it.
    let status = accepted.status();
    let answer: Value = accepted.json().await.unwrap();
    assert!(
        status == StatusCode::CREATED
            || (status == StatusCode::PAYMENT_REQUIRED && answer["error"]["type"] == "card_error"),
        "a 64-character order and customer id, the amount ceiling and a 255-character \
         key of every visible character pass validation: {status} {answer}"
    );

    let mut cases: Vec<(Value, &str)> = Vec::new();
    for (field, bad) in [
        ("customer_id", "c".repeat(65)),
        ("customer_id", "cus/1".to_owned()),
        ("customer_id", "cüs".to_owned()),
        ("order_id", "o".repeat(65)),
        ("order_id", "ord\n1".to_owned()),
        ("order_id", "ord%201".to_owned()),
    ] {
        let mut body = edge.clone();
        body[field] = json!(bad);
        cases.push((body, field));
    }
    let mut too_much = edge.clone();
    too_much["amount"] = json!(100_000_001);
    cases.push((too_much, "amount"));
    for (body, param) in cases {
        let response = app.post("/v1/payments", &new_key(), &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{body}");
    }
    for query in [
        format!("order_id={}", "o".repeat(65)),
        "customer_id=a%2Fb".to_owned(),
        "limit=101".to_owned(),
        "limit=0".to_owned(),
    ] {
        let response = app.get(&format!("/v1/payments?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    let page = app.get("/v1/payments?limit=100").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(app.count("idempotency_keys").await, 1);
}

#[tokio::test]
async fn idempotency_keys_past_their_length_or_charset_are_400() {
    let app = spawn_app().await;
    let body = payment_body(HAPPY_CARD, 100, "ord_k", "cus_k");
    let response = app.post("/v1/payments", &"k".repeat(256), &body).await;
    let error = assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "idempotency_key_invalid",
    )
    .await;
    assert_eq!(error["error"]["param"], "Idempotency-Key");
    // A control character, and bytes that are not ASCII at all (the header
    // is not valid text): sent raw, as a client library would refuse to.
    for bad in ["k\u{7f}y", "k\u{e9}y"] {
        let request = format!(
            "POST /v1/payments HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
             Idempotency-Key: {bad}\r\n\r\n{body}",
            app.api_key,
            body.to_string().len()
        );
        assert_eq!(
            raw_status(&app.address, request.as_bytes()).await,
            Some(400),
            "{bad:?}"
        );
    }
    assert_eq!(app.count("idempotency_keys").await, 0);
}
