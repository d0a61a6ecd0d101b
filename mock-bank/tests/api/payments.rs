//! Every endpoint and every row of the contract's error table.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

fn id_with_prefix(value: &Value, prefix: &str) -> String {
    let id = value.as_str().expect("an id string");
    let uuid = id
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{id} lacks {prefix}"));
    assert_eq!(
        uuid::Uuid::parse_str(uuid)
            .unwrap()
            .hyphenated()
            .to_string(),
        uuid,
        "lowercase uuid"
    );
    id.to_owned()
}

#[tokio::test]
async fn authorize_capture_refund_moves_money_as_the_contract_says() {
    let bank = spawn_bank().await;
    let (balance, available) = bank.balances(HAPPY_CARD.0).await;
    assert_eq!((balance, available), (1_000_000, 1_000_000));

    let authorization = bank.approved(HAPPY_CARD, 4999).await;
    let authorization_id = id_with_prefix(&authorization["authorization_id"], "auth_");
    assert_eq!(authorization["status"], "approved");
    assert_eq!(authorization["amount"], 4999);
    assert_eq!(authorization["currency"], "USD");
    assert_eq!(authorization["state"], "active");
    for field in ["expires_at", "created_at"] {
        chrono::DateTime::parse_from_rfc3339(authorization[field].as_str().unwrap())
            .expect("RFC 3339");
    }
    assert_eq!(
        bank.balances(HAPPY_CARD.0).await,
        (1_000_000, 1_000_000 - 4999)
    );

    let capture: Value = bank
        .capture(&authorization_id, 4999)
        .await
        .json()
        .await
        .unwrap();
    let capture_id = id_with_prefix(&capture["capture_id"], "cap_");
    assert_eq!(capture["authorization_id"], authorization_id.as_str());
    assert_eq!(capture["status"], "captured");
    assert_eq!(
        (capture["amount"].clone(), capture["currency"].clone()),
        (json!(4999), json!("USD"))
    );
    assert!(capture["captured_at"].is_string());
    assert_eq!(
        bank.balances(HAPPY_CARD.0).await,
        (1_000_000 - 4999, 1_000_000 - 4999)
    );

    let refund: Value = bank.refund(&capture_id, 4999).await.json().await.unwrap();
    let refund_id = id_with_prefix(&refund["refund_id"], "ref_");
    assert_eq!(refund["capture_id"], capture_id.as_str());
    assert_eq!(refund["status"], "refunded");
    assert_eq!(refund["amount"], 4999);
    assert!(refund["refunded_at"].is_string());
    assert_eq!(bank.balances(HAPPY_CARD.0).await, (1_000_000, 1_000_000));

    // GETs answer the same shapes, with the extensions filled in.
    let got: Value = bank
        .get(&format!("/api/v1/authorizations/{authorization_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["state"], "captured");
    assert_eq!(got["capture_id"], capture_id.as_str());
    assert_eq!(got["created_at"], authorization["created_at"]);
    let got: Value = bank
        .get(&format!("/api/v1/captures/{capture_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["refund_id"], refund_id.as_str());
    assert_eq!(got["captured_at"], capture["captured_at"]);
    let got: Value = bank
        .get(&format!("/api/v1/refunds/{refund_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got, refund);
    assert!(bank.ledger_verifies().await);
}

#[tokio::test]
async fn void_releases_the_hold_and_is_readable() {
    let bank = spawn_bank().await;
    let authorization = bank.approved(LIMITED_CARD, 20_000).await;
    let authorization_id = authorization["authorization_id"].as_str().unwrap();
    assert_eq!(bank.balances(LIMITED_CARD.0).await, (50_000, 30_000));

    let response = bank.void(authorization_id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let void: Value = response.json().await.unwrap();
    let void_id = id_with_prefix(&void["void_id"], "void_");
    assert_eq!(void["authorization_id"], authorization_id);
    assert_eq!(void["status"], "voided");
    assert!(void["voided_at"].is_string());
    assert_eq!(bank.balances(LIMITED_CARD.0).await, (50_000, 50_000));

    let got: Value = bank
        .get(&format!("/api/v1/voids/{void_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got, void);
    let got: Value = bank
        .get(&format!("/api/v1/authorizations/{authorization_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (got["state"].clone(), got["void_id"].clone()),
        (json!("voided"), json!(void_id))
    );
    assert!(got.get("capture_id").is_none());
}

#[tokio::test]
async fn authorize_refusals_follow_the_error_table() {
    let bank = spawn_bank().await;
    let cases = [
        (
            json!({"card_number": "4111111111111112", "cvv": "123", "amount": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_card",
        ),
        (
            json!({"card_number": "411111111111", "cvv": "123", "amount": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_card",
        ),
        (
            json!({"card_number": "4000000000000002", "cvv": "123", "amount": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_card",
        ),
        (
            json!({"card_number": HAPPY_CARD.0, "cvv": "12", "amount": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_cvv",
        ),
        (
            json!({"card_number": HAPPY_CARD.0, "cvv": "12345", "amount": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_cvv",
        ),
        (
            json!({"card_number": HAPPY_CARD.0, "cvv": "999", "amount": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_cvv",
        ),
        (
            json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_amount",
        ),
        (
            json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": -5}),
            StatusCode::BAD_REQUEST,
            "invalid_amount",
        ),
        (
            json!({"card_number": EXPIRED_CARD.0, "cvv": EXPIRED_CARD.1, "amount": 100}),
            StatusCode::BAD_REQUEST,
            "card_expired",
        ),
        (
            json!({"card_number": EMPTY_CARD.0, "cvv": EMPTY_CARD.1, "amount": 1}),
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_funds",
        ),
        (
            json!({"card_number": LIMITED_CARD.0, "cvv": LIMITED_CARD.1, "amount": 50_001}),
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_funds",
        ),
        // Extension: an expiry that does not match the card on file.
        (
            json!({"card_number": HAPPY_CARD.0, "cvv": "123", "expiry_month": 11, "expiry_year": 2030, "amount": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_card",
        ),
        // Checks run in the original's order: Luhn before CVV before amount.
        (
            json!({"card_number": "4111111111111112", "cvv": "1", "amount": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_card",
        ),
        (
            json!({"card_number": HAPPY_CARD.0, "cvv": "1", "amount": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_cvv",
        ),
    ];
    for (body, status, code) in cases {
        let response = bank.post("/api/v1/authorizations", &new_key(), &body).await;
        assert_error(response, status, code).await;
    }
    assert_eq!(
        bank.count("authorizations").await,
        0,
        "a refusal changes nothing"
    );
    assert_eq!(
        bank.count("idempotency_records").await,
        0,
        "only successes are stored"
    );

    let matching_expiry = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "expiry_month": 12, "expiry_year": 2030, "amount": 100});
    let response = bank
        .post("/api/v1/authorizations", &new_key(), &matching_expiry)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_card_is_good_through_its_expiry_month() {
    use chrono::Datelike;
    let bank = spawn_bank().await;
    let today = chrono::Utc::now();
    let (year, month) = (today.year(), today.month());
    let last_month = if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    };
    for (card, (year, month)) in [
        ("4000000000000028", (year, month)),
        ("4000000000000036", last_month),
    ] {
        let account = json!({"card_number": card, "cvv": "111", "expiry_month": month, "expiry_year": year, "balance": 1_000});
        let opened = bank.open_account(&account).await;
        assert_eq!(opened.status(), StatusCode::CREATED);
    }
    assert_eq!(
        bank.authorize(("4000000000000028", "111"), 100)
            .await
            .status(),
        StatusCode::OK,
        "this month"
    );
    let expired = bank.authorize(("4000000000000036", "111"), 100).await;
    assert_error(expired, StatusCode::BAD_REQUEST, "card_expired").await;
}

#[tokio::test]
async fn capture_void_and_refund_refusals_follow_the_error_table() {
    let bank = spawn_bank().await;
    let unknown_auth = format!("auth_{}", uuid::Uuid::new_v4());
    for id in ["auth_nope", unknown_auth.as_str(), ""] {
        assert_error(
            bank.capture(id, 100).await,
            StatusCode::BAD_REQUEST,
            "authorization_not_found",
        )
        .await;
        assert_error(
            bank.void(id).await,
            StatusCode::BAD_REQUEST,
            "authorization_not_found",
        )
        .await;
    }

    let authorization = bank.approved(HAPPY_CARD, 1000).await;
    let auth_id = authorization["authorization_id"].as_str().unwrap();
    assert_error(
        bank.capture(auth_id, 999).await,
        StatusCode::BAD_REQUEST,
        "amount_mismatch",
    )
    .await;
    assert_error(
        bank.capture(auth_id, 0).await,
        StatusCode::BAD_REQUEST,
        "invalid_amount",
    )
    .await;
    let capture: Value = bank.capture(auth_id, 1000).await.json().await.unwrap();
    assert_error(
        bank.capture(auth_id, 1000).await,
        StatusCode::BAD_REQUEST,
        "authorization_already_used",
    )
    .await;
    assert_error(
        bank.void(auth_id).await,
        StatusCode::BAD_REQUEST,
        "authorization_already_used",
    )
    .await;

    let voided = bank.approved(HAPPY_CARD, 500).await;
    let voided_id = voided["authorization_id"].as_str().unwrap();
    assert_eq!(bank.void(voided_id).await.status(), StatusCode::OK);
    assert_error(
        bank.void(voided_id).await,
        StatusCode::BAD_REQUEST,
        "authorization_already_used",
    )
    .await;
    assert_error(
        bank.capture(voided_id, 500).await,
        StatusCode::BAD_REQUEST,
        "authorization_already_used",
    )
    .await;

    let capture_id = capture["capture_id"].as_str().unwrap();
    let unknown_capture = format!("cap_{}", uuid::Uuid::new_v4());
    for id in ["cap_nope", unknown_capture.as_str()] {
        assert_error(
            bank.refund(id, 1000).await,
            StatusCode::BAD_REQUEST,
            "capture_not_found",
        )
        .await;
    }
    assert_error(
        bank.refund(capture_id, 1001).await,
        StatusCode::BAD_REQUEST,
        "amount_mismatch",
    )
    .await;
    assert_eq!(bank.refund(capture_id, 1000).await.status(), StatusCode::OK);
    assert_error(
        bank.refund(capture_id, 1000).await,
        StatusCode::BAD_REQUEST,
        "already_refunded",
    )
    .await;

    assert_eq!(bank.count("captures").await, 1);
    assert_eq!(bank.count("voids").await, 1);
    assert_eq!(bank.count("refunds").await, 1);
    assert!(bank.ledger_verifies().await);
}

#[tokio::test]
async fn gets_of_malformed_or_unknown_ids_are_404() {
    let bank = spawn_bank().await;
    let unknown = uuid::Uuid::new_v4();
    let paths = [
        "/api/v1/authorizations/auth_nope".to_owned(),
        format!("/api/v1/authorizations/auth_{unknown}"),
        format!("/api/v1/authorizations/cap_{unknown}"),
        format!("/api/v1/authorizations/AUTH_{unknown}"),
        format!("/api/v1/captures/cap_{unknown}"),
        "/api/v1/captures/x".to_owned(),
        format!("/api/v1/voids/void_{unknown}"),
        format!("/api/v1/refunds/ref_{unknown}"),
        "/api/v1/nothing-here".to_owned(),
        "/admin/accounts/4000000000000002".to_owned(),
    ];
    for path in paths {
        assert_error(bank.get(&path).await, StatusCode::NOT_FOUND, "not_found").await;
    }
}
