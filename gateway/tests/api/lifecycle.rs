//! Each test card through its lifecycle, and every 409 of the state machine.

use chrono::Datelike;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

fn history(payment: &Value) -> Vec<&str> {
    payment["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_happy_card_authorizes_captures_and_refunds() {
    let app = spawn_app().await;
    let payment = app.authorized(HAPPY_CARD, 4999).await;
    let id = payment["id"].as_str().unwrap();
    assert!(id.starts_with("pay_"));
    assert_eq!(payment["status"], "authorized");
    assert_eq!(payment["amount"], 4999);
    assert_eq!(payment["currency"], "USD");
    assert_eq!(payment["card"]["brand"], "visa");
    assert_eq!(payment["card"]["last4"], "1111");
    assert_eq!(
        (
            payment["card"]["expiry_month"].clone(),
            payment["card"]["expiry_year"].clone()
        ),
        (12.into(), 2030.into())
    );
    assert!(
        payment["bank"]["authorization_id"]
            .as_str()
            .unwrap()
            .starts_with("auth_")
    );
    assert!(payment["authorization_expires_at"].is_string());
    assert_eq!(payment["failure"], Value::Null);
    assert_eq!(history(&payment), ["pending", "authorized"]);
    assert_eq!(
        app.bank_balances(HAPPY_CARD.0).await,
        (1_000_000, 1_000_000 - 4999)
    );

    let captured: Value = app.act(id, "capture").await.json().await.unwrap();
    assert_eq!(captured["status"], "captured");
    assert!(
        captured["bank"]["capture_id"]
            .as_str()
            .unwrap()
            .starts_with("cap_")
    );
    assert_eq!(
        history(&captured),
        ["pending", "authorized", "capturing", "captured"]
    );
    assert_eq!(
        app.bank_balances(HAPPY_CARD.0).await,
        (1_000_000 - 4999, 1_000_000 - 4999)
    );

    let response = app.act(id, "refund").await;
    assert_eq!(response.status(), StatusCode::OK);
    let refunded: Value = response.json().await.unwrap();
    assert_eq!(refunded["status"], "refunded");
    assert!(
        refunded["bank"]["refund_id"]
            .as_str()
            .unwrap()
            .starts_with("ref_")
    );
    assert_eq!(
        history(&refunded),
        [
            "pending",
            "authorized",
            "capturing",
            "captured",
            "refunding",
            "refunded"
        ]
    );
    assert_eq!(
        app.bank_balances(HAPPY_CARD.0).await,
        (1_000_000, 1_000_000)
    );

    let read: Value = app
        .get(&format!("/v1/payments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read, refunded);
}

#[tokio::test]
async fn the_limited_card_authorizes_and_voids() {
    let app = spawn_app().await;
    let payment = app.authorized(LIMITED_CARD, 20_000).await;
    let id = payment["id"].as_str().unwrap();
    assert_eq!(app.bank_balances(LIMITED_CARD.0).await, (50_000, 30_000));
    let response = app.act(id, "void").await;
    assert_eq!(response.status(), StatusCode::OK);
    let voided: Value = response.json().await.unwrap();
    assert_eq!(voided["status"], "voided");
    assert!(
        voided["bank"]["void_id"]
            .as_str()
            .unwrap()
            .starts_with("void_")
    );
    assert_eq!(
        history(&voided),
        ["pending", "authorized", "voiding", "voided"]
    );
    assert_eq!(app.bank_balances(LIMITED_CARD.0).await, (50_000, 50_000));
    // Over the balance: declined.
    let declined = app.create_payment(LIMITED_CARD, 50_001).await;
    assert_error(
        declined,
        StatusCode::PAYMENT_REQUIRED,
        "card_error",
        "insufficient_funds",
    )
    .await;
}

#[tokio::test]
async fn declines_are_402_and_recorded_as_declined() {
    let app = spawn_app().await;
    let cases = [
        (EMPTY_CARD, "insufficient_funds"),
        (("4111111111111111", "999", 12, 2030), "invalid_cvv"),
        (("4000000000000002", "123", 12, 2030), "invalid_card"),
    ];
    for (card, code) in cases {
        let response = app.create_payment(card, 1000).await;
        let body = assert_error(response, StatusCode::PAYMENT_REQUIRED, "card_error", code).await;
        let payment_id = body["error"]["payment_id"]
            .as_str()
            .expect("the declined payment's id");
        let payment: Value = app
            .get(&format!("/v1/payments/{payment_id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(payment["status"], "declined");
        assert_eq!(payment["failure"]["code"], code);
        assert_eq!(history(&payment), ["pending", "declined"]);
    }
    assert_eq!(app.bank_count("authorizations").await, 0);
}

#[tokio::test]
async fn a_card_past_its_expiry_month_is_refused_without_calling_the_bank() {
    let app = spawn_app_with(Options {
        proxy: true,
        ..Options::default()
    })
    .await;
    let proxy = app.proxy.as_ref().expect("a proxied app");
    let now = chrono::Utc::now();
    let (year, month) = (i64::from(now.year()), i64::from(now.month()));
    let last_month = if month == 1 {
        (12, year - 1)
    } else {
        (month - 1, year)
    };
    for ((number, cvv, expiry_month, expiry_year), param) in [
        (EXPIRED_CARD, "card.expiry_year"),
        (
            (HAPPY_CARD.0, HAPPY_CARD.1, 12, year - 1),
            "card.expiry_year",
        ),
        (
            (HAPPY_CARD.0, HAPPY_CARD.1, last_month.0, last_month.1),
            if month == 1 {
                "card.expiry_year"
            } else {
                "card.expiry_month"
            },
        ),
    ] {
        let key = new_key();
        let card = (number, cvv, expiry_month, expiry_year);
        let body = payment_body(card, 4999, "ord_x", "cus_x");
        let stored = (
            app.count("payments").await,
            app.count("idempotency_keys").await,
        );
        let response = app.post("/v1/payments", &key, &body).await;
        let error = assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "card_expired",
        )
        .await;
        assert_eq!(error["error"]["param"], param, "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(param) && message.contains("expired"),
            "{message}"
        );
        assert!(error["error"].get("payment_id").is_none(), "{error}");
        // Nothing stored: the same key authorizes another card.
        assert_eq!(
            (
                app.count("payments").await,
                app.count("idempotency_keys").await
            ),
            stored
        );
        let again = app
            .post(
                "/v1/payments",
                &key,
                &payment_body(HAPPY_CARD, 4999, "ord_x", "cus_x"),
            )
            .await;
        assert_eq!(again.status(), StatusCode::CREATED);
    }
    assert_eq!(
        proxy.reached("/api/v1/authorizations"),
        3,
        "only the three valid cards reached the bank"
    );

    // A card is good through the end of its expiry month: one that
    // expires this month is sent to the bank, which approves it.
    let this_month = ("4000056655665556", "314", month, year);
    let opened = app
        .client
        .post(format!("{}/admin/accounts", app.bank_address))
        .json(&serde_json::json!({
            "card_number": this_month.0, "cvv": this_month.1,
            "expiry_month": month, "expiry_year": year, "balance": 100_000,
        }))
        .send()
        .await
        .unwrap();
    assert!(opened.status().is_success(), "{}", opened.status());
    let approved = app.create_payment(this_month, 4999).await;
    assert_eq!(approved.status(), StatusCode::CREATED);
    assert_eq!(proxy.reached("/api/v1/authorizations"), 4);

    // A key used before gets its usual answer, not the expiry: a retry of
    // an authorization must find that authorization.
    let key = new_key();
    let first = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 100, "ord_y", "cus_y"),
        )
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let reused = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(EXPIRED_CARD, 100, "ord_y", "cus_y"),
        )
        .await;
    assert_error(
        reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_error",
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(proxy.reached("/api/v1/authorizations"), 5);
}

#[tokio::test]
async fn the_state_machine_refuses_with_409_and_the_bank_is_not_called() {
    let app = spawn_app().await;
    let voided = app.authorized(HAPPY_CARD, 100).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.act(&voided, "void").await.status(), StatusCode::OK);
    let captured = app.authorized(HAPPY_CARD, 200).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.act(&captured, "capture").await.status(), StatusCode::OK);
    let authorized = app.authorized(HAPPY_CARD, 300).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let declined = app.create_payment(EMPTY_CARD, 100).await;
    let declined: Value = declined.json().await.unwrap();
    let declined = declined["error"]["payment_id"].as_str().unwrap().to_owned();

    let bank_before = (
        app.bank_count("captures").await,
        app.bank_count("voids").await,
        app.bank_count("refunds").await,
    );
    let refused = [
        (&voided, "capture"),
        (&voided, "void"),
        (&voided, "refund"),
        (&captured, "void"),
        (&captured, "capture"),
        (&authorized, "refund"),
        (&declined, "capture"),
        (&declined, "void"),
        (&declined, "refund"),
    ];
    for (id, action) in refused {
        let before: Value = app
            .get(&format!("/v1/payments/{id}"))
            .await
            .json()
            .await
            .unwrap();
        let response = app.act(id, action).await;
        let body = assert_error(
            response,
            StatusCode::CONFLICT,
            "invalid_request_error",
            "invalid_state",
        )
        .await;
        assert_eq!(body["error"]["payment_id"], id.as_str());
        let after: Value = app
            .get(&format!("/v1/payments/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(before, after, "{action} of {id} changed nothing");
    }
    let bank_after = (
        app.bank_count("captures").await,
        app.bank_count("voids").await,
        app.bank_count("refunds").await,
    );
    assert_eq!(bank_before, bank_after, "the bank was not called");
}

#[tokio::test]
async fn an_expired_authorization_cannot_be_captured_and_becomes_expired() {
    let app = spawn_app().await;
    let payment = app.authorized(LIMITED_CARD, 1000).await;
    let id = payment["id"].as_str().unwrap();
    sqlx::query("UPDATE payments SET authorization_expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let captures_before = app.bank_count("captures").await;
    let response = app.act(id, "capture").await;
    assert_error(
        response,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "authorization_expired",
    )
    .await;
    let payment: Value = app
        .get(&format!("/v1/payments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(payment["status"], "expired");
    assert_eq!(app.bank_count("captures").await, captures_before);
    let response = app.act(id, "void").await;
    assert_error(
        response,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "authorization_expired",
    )
    .await;
}

#[tokio::test]
async fn a_capture_the_bank_refuses_as_expired_lands_in_expired() {
    let app = spawn_app().await;
    let payment = app.authorized(LIMITED_CARD, 1000).await;
    let id = payment["id"].as_str().unwrap();
    let authorization_id = payment["bank"]["authorization_id"].as_str().unwrap();
    let expire = format!(
        "{}/admin/authorizations/{authorization_id}/expire",
        app.bank_address
    );
    assert_eq!(
        app.client.post(expire).send().await.unwrap().status(),
        StatusCode::OK
    );
    let response = app.act(id, "capture").await;
    assert_error(
        response,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "authorization_expired",
    )
    .await;
    let payment: Value = app
        .get(&format!("/v1/payments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(payment["status"], "expired");
    assert_eq!(
        history(&payment),
        ["pending", "authorized", "capturing", "expired"]
    );
    assert_eq!(
        app.bank_balances(LIMITED_CARD.0).await,
        (50_000, 50_000),
        "the bank released the hold"
    );
}

#[tokio::test]
async fn a_concurrent_capture_and_void_have_one_winner_and_the_bank_sees_one() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let payment = app.authorized(HAPPY_CARD, 500).await;
        let id = payment["id"].as_str().unwrap();
        let (capture, void) = tokio::join!(app.act(id, "capture"), app.act(id, "void"));
        let statuses = [capture.status(), void.status()];
        assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
        assert!(statuses.contains(&StatusCode::CONFLICT), "{statuses:?}");
    }
    assert_eq!(
        app.bank_count("captures").await + app.bank_count("voids").await,
        5
    );
}

#[tokio::test]
async fn many_concurrent_operations_on_one_payment_reach_the_bank_once() {
    let app = spawn_app().await;
    let payment = app.authorized(HAPPY_CARD, 700).await;
    let id = payment["id"].as_str().unwrap();
    let responses =
        join_all((0..10).map(|i| app.act(id, if i % 2 == 0 { "capture" } else { "void" }))).await;
    let ok = responses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(ok, 1);
    assert!(
        responses
            .iter()
            .all(|r| r.status() == StatusCode::OK || r.status() == StatusCode::CONFLICT)
    );
    assert_eq!(
        app.bank_count("captures").await + app.bank_count("voids").await,
        1
    );
}

#[tokio::test]
async fn an_amount_in_an_operation_must_equal_the_payments() {
    let app = spawn_app().await;
    let payment = app.authorized(HAPPY_CARD, 700).await;
    let id = payment["id"].as_str().unwrap();
    let response = app
        .post(
            &format!("/v1/payments/{id}/capture"),
            &new_key(),
            &serde_json::json!({"amount": 699}),
        )
        .await;
    let body = assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "parameter_invalid",
    )
    .await;
    assert_eq!(body["error"]["param"], "amount");
    let response = app
        .post(
            &format!("/v1/payments/{id}/capture"),
            &new_key(),
            &serde_json::json!({"amount": 700}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}
