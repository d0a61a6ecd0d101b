//! Extensions: accounts, expiry and its sweeper, the journal.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn accounts_can_be_added_once_and_read() {
    let bank = spawn_bank().await;
    let card = json!({"card_number": "4000000000000010", "cvv": "111", "expiry_month": 1, "expiry_year": 2031, "balance": 12_345});
    let response = bank.open_account(&card).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let account: Value = response.json().await.unwrap();
    assert_eq!(
        account,
        json!({"card_number": "4000000000000010", "balance": 12_345, "available_balance": 12_345})
    );
    let again = bank.open_account(&card).await;
    assert_error(again, StatusCode::CONFLICT, "account_exists").await;
    assert_eq!(
        bank.approved(("4000000000000010", "111"), 345).await["amount"],
        345
    );
    assert_eq!(bank.balances("4000000000000010").await, (12_345, 12_000));

    for (bad, code) in [
        (
            json!({"card_number": "4000000000000011", "cvv": "111", "expiry_month": 1, "expiry_year": 2031, "balance": 1}),
            "invalid_card",
        ),
        (
            json!({"card_number": "4000000000000028", "cvv": "1", "expiry_month": 1, "expiry_year": 2031, "balance": 1}),
            "invalid_cvv",
        ),
        (
            json!({"card_number": "4000000000000028", "cvv": "111", "expiry_month": 1, "expiry_year": 2031, "balance": -1}),
            "invalid_amount",
        ),
        (
            json!({"card_number": "4000000000000028", "cvv": "111", "expiry_month": 1, "expiry_year": 2031}),
            "invalid_request",
        ),
    ] {
        let response = bank.open_account(&bad).await;
        assert_error(response, StatusCode::BAD_REQUEST, code).await;
    }
    assert!(bank.ledger_verifies().await);
}

#[tokio::test]
async fn seeded_cards_are_on_every_fresh_database() {
    let bank = spawn_bank().await;
    let expected = [
        (HAPPY_CARD.0, 1_000_000),
        (LIMITED_CARD.0, 50_000),
        (EMPTY_CARD.0, 0),
        (EXPIRED_CARD.0, 500_000),
    ];
    for (card, balance) in expected {
        assert_eq!(bank.balances(card).await, (balance, balance), "{card}");
    }
}

#[tokio::test]
async fn expiring_an_authorization_releases_its_hold_and_refuses_capture_and_void() {
    let bank = spawn_bank().await;
    let authorization = bank.approved(LIMITED_CARD, 10_000).await;
    let id = authorization["authorization_id"].as_str().unwrap();
    assert_eq!(bank.balances(LIMITED_CARD.0).await, (50_000, 40_000));

    let path = format!("/admin/authorizations/{id}/expire");
    let expired: Value = bank
        .client
        .post(bank.url(&path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(expired["state"], "expired");
    assert_eq!(
        bank.balances(LIMITED_CARD.0).await,
        (50_000, 50_000),
        "hold released"
    );
    // Expiring again changes nothing: the hold is released once.
    assert_eq!(
        bank.client
            .post(bank.url(&path))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(bank.balances(LIMITED_CARD.0).await, (50_000, 50_000));

    assert_error(
        bank.capture(id, 10_000).await,
        StatusCode::BAD_REQUEST,
        "authorization_expired",
    )
    .await;
    assert_error(
        bank.void(id).await,
        StatusCode::BAD_REQUEST,
        "authorization_expired",
    )
    .await;

    let captured = bank.approved(LIMITED_CARD, 100).await;
    let captured_id = captured["authorization_id"].as_str().unwrap();
    assert_eq!(
        bank.capture(captured_id, 100).await.status(),
        StatusCode::OK
    );
    let refused = bank
        .client
        .post(bank.url(&format!("/admin/authorizations/{captured_id}/expire")))
        .send()
        .await
        .unwrap();
    assert_error(
        refused,
        StatusCode::BAD_REQUEST,
        "authorization_already_used",
    )
    .await;
    let unknown = bank
        .client
        .post(bank.url("/admin/authorizations/auth_x/expire"))
        .send()
        .await
        .unwrap();
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
    assert!(bank.ledger_verifies().await);
}

#[tokio::test]
async fn the_sweeper_expires_authorizations_without_any_request() {
    let bank = spawn_bank_with(|s| s.auth_expiry_hours = 0).await;
    let authorization = bank.approved(LIMITED_CARD, 5_000).await;
    let id = authorization["authorization_id"].as_str().unwrap();
    let mut state = Value::Null;
    for _ in 0..100 {
        let got: Value = bank
            .get(&format!("/api/v1/authorizations/{id}"))
            .await
            .json()
            .await
            .unwrap();
        state = got["state"].clone();
        if state == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "expired");
    assert_eq!(bank.balances(LIMITED_CARD.0).await, (50_000, 50_000));
    let metrics = bank.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("bank_authorizations_expired_total"));
}

#[tokio::test]
async fn the_journal_refuses_update_and_delete() {
    let bank = spawn_bank().await;
    bank.approved(HAPPY_CARD, 100).await;
    for statement in [
        "UPDATE journal_legs SET amount = amount + 1",
        "DELETE FROM journal_legs",
        "UPDATE journal_entries SET kind = 'void'",
        "DELETE FROM journal_entries",
        "TRUNCATE journal_legs CASCADE",
    ] {
        let error = sqlx::query(statement)
            .execute(&bank.pool)
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    let unbalanced = async {
        let mut tx = bank.pool.begin().await?;
        let id: i64 =
            sqlx::query_scalar("INSERT INTO journal_entries (kind) VALUES ('open') RETURNING id")
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO journal_legs (entry_id, ledger, amount) VALUES ($1, 'bank:funding', 5)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    let error: sqlx::Error = unbalanced.await.expect_err("an unbalanced entry");
    assert!(error.to_string().contains("does not balance"), "{error}");
    assert!(bank.ledger_verifies().await);
}

#[tokio::test]
async fn verify_reports_a_projection_that_drifted_from_the_journal() {
    let bank = spawn_bank().await;
    bank.approved(HAPPY_CARD, 100).await;
    sqlx::query(
        "UPDATE accounts SET available_balance = available_balance + 7 WHERE card_number = $1",
    )
    .bind(HAPPY_CARD.0)
    .execute(&bank.pool)
    .await
    .unwrap();
    let verification: Value = bank.get("/admin/ledger/verify").await.json().await.unwrap();
    assert_eq!(verification["ok"], false);
    assert_eq!(verification["accounts_checked"], 4);
    assert_eq!(
        verification["mismatches"],
        json!([{"subject": format!("card:{}", HAPPY_CARD.0), "field": "available_balance", "expected": 1_000_000 - 100, "actual": 1_000_000 - 93}])
    );
}
