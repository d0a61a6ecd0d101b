//! Row locks make concurrent operations on one object resolve to one winner.

use futures_util::future::join_all;
use reqwest::StatusCode;

use mock_bank::domain::AuthorizationId;

use crate::helpers::*;

#[tokio::test]
async fn ten_concurrent_captures_of_one_authorization_give_one_200() {
    let bank = spawn_bank().await;
    let authorization = bank.approved(HAPPY_CARD, 2500).await;
    let id = authorization["authorization_id"].as_str().unwrap();
    let responses = join_all((0..10).map(|_| bank.capture(id, 2500))).await;
    let mut ok = 0;
    for response in responses {
        if response.status() == StatusCode::OK {
            ok += 1;
        } else {
            assert_error(
                response,
                StatusCode::BAD_REQUEST,
                "authorization_already_used",
            )
            .await;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(bank.count("captures").await, 1);
    assert_eq!(
        bank.balances(HAPPY_CARD.0).await,
        (1_000_000 - 2500, 1_000_000 - 2500)
    );
}

#[tokio::test]
async fn fifty_concurrent_20_dollar_authorizations_on_500_give_25_approvals() {
    let bank = spawn_bank().await;
    // Sample the available balance while the storm runs: it must never dip below zero.
    let sampler = {
        let pool = bank.pool.clone();
        tokio::spawn(async move {
            let mut lowest = i64::MAX;
            for _ in 0..200 {
                let available: i64 = sqlx::query_scalar(
                    "SELECT available_balance FROM accounts WHERE card_number = $1",
                )
                .bind(LIMITED_CARD.0)
                .fetch_one(&pool)
                .await
                .unwrap();
                lowest = lowest.min(available);
                tokio::task::yield_now().await;
            }
            lowest
        })
    };
    let responses = join_all((0..50).map(|_| bank.authorize(LIMITED_CARD, 2000))).await;
    let mut approved = 0;
    for response in responses {
        if response.status() == StatusCode::OK {
            approved += 1;
        } else {
            assert_error(response, StatusCode::PAYMENT_REQUIRED, "insufficient_funds").await;
        }
    }
    assert_eq!(approved, 25);
    assert_eq!(bank.balances(LIMITED_CARD.0).await, (50_000, 0));
    assert!(sampler.await.unwrap() >= 0);
    assert!(bank.ledger_verifies().await);
}

#[tokio::test]
async fn a_concurrent_capture_and_void_have_one_winner() {
    let bank = spawn_bank().await;
    for _ in 0..5 {
        let authorization = bank.approved(HAPPY_CARD, 800).await;
        let id = authorization["authorization_id"].as_str().unwrap();
        let (capture, void) = tokio::join!(bank.capture(id, 800), bank.void(id));
        let winners = [capture.status(), void.status()]
            .iter()
            .filter(|s| **s == StatusCode::OK)
            .count();
        assert_eq!(winners, 1);
    }
    assert_eq!(bank.count("captures").await + bank.count("voids").await, 5);
    assert!(bank.ledger_verifies().await);
}

/// Found by the ledger model: the refund check must see a refund committed
/// while it waited for the capture's lock.
#[tokio::test]
async fn ten_concurrent_refunds_of_one_capture_give_one_200() {
    let bank = spawn_bank().await;
    let authorization = bank.approved(HAPPY_CARD, 1500).await;
    let capture: serde_json::Value = bank
        .capture(authorization["authorization_id"].as_str().unwrap(), 1500)
        .await
        .json()
        .await
        .unwrap();
    let id = capture["capture_id"].as_str().unwrap();
    let responses = join_all((0..10).map(|_| bank.refund(id, 1500))).await;
    let mut ok = 0;
    for response in responses {
        if response.status() == StatusCode::OK {
            ok += 1;
        } else {
            assert_error(response, StatusCode::BAD_REQUEST, "already_refunded").await;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(bank.balances(HAPPY_CARD.0).await, (1_000_000, 1_000_000));
}

/// Funds released while an authorization waits for the card's row lock are
/// funds it may hold. In READ COMMITTED the authorization's statement reads
/// the card as it was when the statement began; its balance update must be
/// computed from the row it locked, not from that older version (on which
/// `available_balance >= 0` fails and the bank answered 500).
#[tokio::test]
async fn an_authorization_waiting_on_a_void_holds_the_funds_the_void_released() {
    let bank = spawn_bank().await;
    let first = bank.approved(LIMITED_CARD, 40_000).await;
    let first = AuthorizationId::parse(first["authorization_id"].as_str().unwrap());

    // A void, held open by this test, has released the 400.00 but not committed.
    let mut void = bank.pool.begin().await.unwrap();
    mock_bank::operations::void(&mut void, first).await.unwrap();
    let (second, ()) = tokio::join!(bank.authorize(LIMITED_CARD, 30_000), async {
        bank.wait_for_a_lock_wait().await;
        void.commit().await.unwrap();
    });
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(bank.balances(LIMITED_CARD.0).await, (50_000, 20_000));
    assert!(bank.ledger_verifies().await);
}
