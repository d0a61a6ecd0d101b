//! Idempotency keys: replays, reuse, scoping, and what is not stored.

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_replay_is_byte_identical_and_marked() {
    let bank = spawn_bank().await;
    let key = new_key();
    let body = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 700});
    let first = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("X-Idempotent-Replayed").is_none());
    let first_bytes = first.bytes().await.unwrap();

    // Same request with its fields in another order is the same request.
    let reordered = json!({"amount": 700, "cvv": "123", "card_number": HAPPY_CARD.0});
    for body in [&body, &reordered] {
        let again = bank.post("/api/v1/authorizations", &key, body).await;
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(again.headers()["X-Idempotent-Replayed"], "true");
        assert_eq!(again.bytes().await.unwrap(), first_bytes);
    }
    assert_eq!(bank.count("authorizations").await, 1);
    assert_eq!(
        bank.balances(HAPPY_CARD.0).await.1,
        1_000_000 - 700,
        "held once"
    );
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_422() {
    let bank = spawn_bank().await;
    let key = new_key();
    let body = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 700});
    assert_eq!(
        bank.post("/api/v1/authorizations", &key, &body)
            .await
            .status(),
        StatusCode::OK
    );
    let different = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 701});
    let response = bank.post("/api/v1/authorizations", &key, &different).await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(bank.count("authorizations").await, 1);
}

#[tokio::test]
async fn keys_are_scoped_to_the_path() {
    let bank = spawn_bank().await;
    let key = new_key();
    let authorization: Value = bank
        .post(
            "/api/v1/authorizations",
            &key,
            &json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 300}),
        )
        .await
        .json()
        .await
        .unwrap();
    let capture = bank
        .post(
            "/api/v1/captures",
            &key,
            &json!({"authorization_id": authorization["authorization_id"], "amount": 300}),
        )
        .await;
    assert_eq!(capture.status(), StatusCode::OK);
    assert!(capture.headers().get("X-Idempotent-Replayed").is_none());
}

#[tokio::test]
async fn failures_are_not_stored_and_may_be_retried_with_their_key() {
    let bank = spawn_bank().await;
    let key = new_key();
    let body = json!({"card_number": LIMITED_CARD.0, "cvv": LIMITED_CARD.1, "amount": 40_000});
    // Hold most of the balance so the keyed request is declined.
    let blocker = bank.approved(LIMITED_CARD, 20_000).await;
    let declined = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_error(declined, StatusCode::PAYMENT_REQUIRED, "insufficient_funds").await;
    assert_eq!(
        bank.void(blocker["authorization_id"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    let retried = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert!(retried.headers().get("X-Idempotent-Replayed").is_none());
}

#[tokio::test]
async fn every_post_needs_a_key_of_1_to_255_characters() {
    let bank = spawn_bank().await;
    let paths = [
        "/api/v1/authorizations",
        "/api/v1/captures",
        "/api/v1/voids",
        "/api/v1/refunds",
    ];
    for path in paths {
        let response = bank
            .client
            .post(bank.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "missing_idempotency_key").await;
        let response = bank.post(path, "", &json!({})).await;
        assert_error(response, StatusCode::BAD_REQUEST, "missing_idempotency_key").await;
        let response = bank.post(path, &"k".repeat(256), &json!({})).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    }
    let body = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 1});
    assert_eq!(
        bank.post("/api/v1/authorizations", &"k".repeat(255), &body)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn ten_concurrent_identical_requests_execute_once() {
    let bank = spawn_bank().await;
    let key = new_key();
    let body = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 1234});
    let responses =
        join_all((0..10).map(|_| bank.post("/api/v1/authorizations", &key, &body))).await;
    let mut bodies = Vec::new();
    let mut replayed = 0;
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        replayed += usize::from(response.headers().get("X-Idempotent-Replayed").is_some());
        bodies.push(response.bytes().await.unwrap());
    }
    assert_eq!(replayed, 9, "one executes, nine replay");
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "all byte-identical"
    );
    assert_eq!(bank.count("authorizations").await, 1);
    assert_eq!(bank.balances(HAPPY_CARD.0).await.1, 1_000_000 - 1234);
}

#[tokio::test]
async fn resolve_reads_the_authorization_a_key_created() {
    let bank = spawn_bank().await;
    let key = new_key();
    let body = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 900});
    let created: Value = bank
        .post("/api/v1/authorizations", &key, &body)
        .await
        .json()
        .await
        .unwrap();
    let resolved = bank
        .post("/api/v1/authorizations/resolve", &key, &json!({}))
        .await;
    assert_eq!(resolved.status(), StatusCode::OK);
    let resolved: Value = resolved.json().await.unwrap();
    assert_eq!(resolved["authorization_id"], created["authorization_id"]);
    assert_eq!(resolved["state"], "active");
    // Still the original's key: a replay of the original works.
    let replay = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_eq!(replay.headers()["X-Idempotent-Replayed"], "true");
}

#[tokio::test]
async fn resolve_retires_a_key_that_created_nothing() {
    let bank = spawn_bank().await;
    let key = new_key();
    let resolved = bank
        .post("/api/v1/authorizations/resolve", &key, &json!({}))
        .await;
    let nothing = assert_error(resolved, StatusCode::NOT_FOUND, "not_found").await;
    // Marked, unlike a path the bank does not serve: a client can tell
    // "nothing was created" from "this bank has no resolve".
    assert_eq!(nothing["authorization_created"], false, "{nothing}");
    let unknown_path = bank
        .post("/api/v1/authorizations/settle", &key, &json!({}))
        .await;
    let unknown_path = assert_error(unknown_path, StatusCode::NOT_FOUND, "not_found").await;
    assert!(
        unknown_path.get("authorization_created").is_none(),
        "{unknown_path}"
    );
    // A late request with the retired key can no longer authorize.
    let body = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 900});
    let late = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_error(
        late,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(bank.count("authorizations").await, 0);
    assert_eq!(bank.balances(HAPPY_CARD.0).await, (1_000_000, 1_000_000));
    let again = bank
        .post("/api/v1/authorizations/resolve", &key, &json!({}))
        .await;
    assert_error(again, StatusCode::NOT_FOUND, "not_found").await;
    let keyless = bank
        .client
        .post(bank.url("/api/v1/authorizations/resolve"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(keyless, StatusCode::BAD_REQUEST, "missing_idempotency_key").await;
}

#[tokio::test]
async fn looking_without_retiring_leaves_the_key_usable() {
    let bank = spawn_bank().await;
    let key = new_key();
    let look = json!({"retire": false});
    let looked = bank
        .post("/api/v1/authorizations/resolve", &key, &look)
        .await;
    let nothing = assert_error(looked, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(nothing["authorization_created"], false, "{nothing}");
    // The key was only looked at: its authorization can still come.
    let body = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 900});
    let created = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_eq!(created.status(), StatusCode::OK);
    let created: Value = created.json().await.unwrap();
    let found = bank
        .post("/api/v1/authorizations/resolve", &key, &look)
        .await;
    assert_eq!(found.status(), StatusCode::OK);
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["authorization_id"], created["authorization_id"]);
    assert_eq!(bank.count("authorizations").await, 1);
}

#[tokio::test]
async fn a_replay_is_answered_even_when_the_request_would_now_be_refused() {
    let bank = spawn_bank().await;
    let key = new_key();
    let (_, available) = bank.balances(LIMITED_CARD.0).await;
    let body = json!({"card_number": LIMITED_CARD.0, "cvv": LIMITED_CARD.1, "amount": available});
    let first = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first_bytes = first.bytes().await.unwrap();

    // The hold took every cent, so the same request anew would be declined;
    // under its key it is the first one's answer.
    let again = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["X-Idempotent-Replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), first_bytes);
    let fresh = bank.post("/api/v1/authorizations", &new_key(), &body).await;
    assert_error(fresh, StatusCode::PAYMENT_REQUIRED, "insufficient_funds").await;
    assert_eq!(bank.count("authorizations").await, 1);

    // The stored answer says what the bank stored.
    let answer: Value = serde_json::from_slice(&first_bytes).unwrap();
    let id = answer["authorization_id"].as_str().unwrap();
    let read: Value = bank
        .get(&format!("/api/v1/authorizations/{id}"))
        .await
        .json()
        .await
        .unwrap();
    for field in ["amount", "expires_at", "created_at", "state"] {
        assert_eq!(answer[field], read[field], "{field}");
    }
}

/// Retiring a key cannot be undone, so only `true` or `false` says whether
/// to: a `retire` of any other type, or a body that is not an object, is
/// refused and the key stays usable (it was read as `true` and retired).
#[tokio::test]
async fn resolve_refuses_a_retire_that_is_not_a_boolean() {
    let bank = spawn_bank().await;
    let key = new_key();
    for body in [
        json!({"retire": "false"}),
        json!({"retire": null}),
        json!([]),
    ] {
        let refused = bank
            .post("/api/v1/authorizations/resolve", &key, &body)
            .await;
        assert_error(refused, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let body = json!({"card_number": HAPPY_CARD.0, "cvv": "123", "amount": 900});
    let created = bank.post("/api/v1/authorizations", &key, &body).await;
    assert_eq!(created.status(), StatusCode::OK, "the key was not retired");
}
