//! Idempotency keys: replay, reuse, in use, resume, and per-merchant scope.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_replay_is_byte_identical_marked_and_calls_the_bank_no_more() {
    let app = spawn_app().await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 1234, "ord_9", "cus_9");
    let first = app.post("/v1/payments", &key, &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("Idempotent-Replayed").is_none());
    let first = first.bytes().await.unwrap();
    for _ in 0..3 {
        let again = app.post("/v1/payments", &key, &body).await;
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(again.headers()["Idempotent-Replayed"], "true");
        assert_eq!(again.bytes().await.unwrap(), first);
    }
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(app.bank_count("authorizations").await, 1);

    // Operations replay too, even after the payment moved on.
    let id = serde_json::from_slice::<Value>(&first).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let capture_key = new_key();
    let capture = app
        .post(
            &format!("/v1/payments/{id}/capture"),
            &capture_key,
            &Value::Null,
        )
        .await;
    let capture = capture.bytes().await.unwrap();
    assert_eq!(app.act(&id, "refund").await.status(), StatusCode::OK);
    let again = app
        .post(
            &format!("/v1/payments/{id}/capture"),
            &capture_key,
            &Value::Null,
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.bytes().await.unwrap(), capture);
    assert_eq!(app.bank_count("captures").await, 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_422() {
    let app = spawn_app().await;
    let key = new_key();
    let payment: Value = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 100, "o1", "c1"),
        )
        .await
        .json()
        .await
        .unwrap();
    let different = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 101, "o1", "c1"),
        )
        .await;
    assert_error(
        different,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_error",
        "idempotency_key_reused",
    )
    .await;
    let other_path = app
        .post(
            &format!("/v1/payments/{}/capture", payment["id"].as_str().unwrap()),
            &key,
            &Value::Null,
        )
        .await;
    assert_error(
        other_path,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_error",
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.count("payments").await, 1);
}

/// An operation's key that was used is answered as used (replayed, or 422
/// for another request) before anything is said about the payment the
/// new request names: not 404 for a payment that is not there, not 400 for
/// an amount that is not the payment's, and nothing started on another.
#[tokio::test]
async fn a_used_capture_key_is_answered_before_the_payment_it_names_is_judged() {
    let app = spawn_app().await;
    let first = app.authorized(HAPPY_CARD, 100).await;
    let second = app.authorized(HAPPY_CARD, 200).await;
    let capture = |id: &str| format!("/v1/payments/{id}/capture");
    let key = new_key();
    let captured = app
        .post(&capture(first["id"].as_str().unwrap()), &key, &Value::Null)
        .await;
    assert_eq!(captured.status(), StatusCode::OK);
    let operations = app.count("operations").await;

    for (path, body) in [
        (capture(second["id"].as_str().unwrap()), Value::Null),
        (
            capture("pay_0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"),
            Value::Null,
        ),
        (
            capture(first["id"].as_str().unwrap()),
            serde_json::json!({"amount": 99}),
        ),
    ] {
        let reused = app.post(&path, &key, &body).await;
        assert_error(
            reused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_error",
            "idempotency_key_reused",
        )
        .await;
    }
    let replayed = app
        .post(&capture(first["id"].as_str().unwrap()), &key, &Value::Null)
        .await;
    assert_eq!(replayed.status(), StatusCode::OK);
    assert_eq!(app.count("operations").await, operations, "nothing started");
    let second: Value = app
        .get(&format!("/v1/payments/{}", second["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["status"], "authorized");
}

/// The bodies of the answers with `status`; every other answer must be 409
/// `idempotency_key_in_use`, with a `Retry-After`.
async fn answered_or_in_use(responses: Vec<reqwest::Response>, status: StatusCode) -> Vec<Vec<u8>> {
    let mut answered = Vec::new();
    for response in responses {
        match response.status() {
            s if s == status => answered.push(response.bytes().await.unwrap().to_vec()),
            StatusCode::CONFLICT => {
                assert_eq!(response.headers()["Retry-After"], "1");
                assert_error(
                    response,
                    StatusCode::CONFLICT,
                    "idempotency_error",
                    "idempotency_key_in_use",
                )
                .await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    answered
}

#[tokio::test]
async fn ten_concurrent_same_key_requests_make_one_payment_and_one_bank_authorization() {
    let app = spawn_app_with(Options {
        bank: bank_latency_ms(200),
        ..Options::default()
    })
    .await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 777, "ord_c", "cus_c");
    let responses = join_all((0..10).map(|_| app.post("/v1/payments", &key, &body))).await;
    let created = answered_or_in_use(responses, StatusCode::CREATED).await;
    assert!(!created.is_empty());
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(app.bank_count("authorizations").await, 1);
    assert_eq!(app.bank_balances(HAPPY_CARD.0).await.1, 1_000_000 - 777);
}

/// The same for a capture, whose start claims its key in the batched
/// statement without reading it first: one request starts the capture, the
/// others find the key taken and wait their turn (409) or replay it.
#[tokio::test]
async fn ten_concurrent_same_key_captures_make_one_capture_at_the_bank() {
    let app = spawn_app_with(Options {
        bank: bank_latency_ms(200),
        ..Options::default()
    })
    .await;
    let payment = app.authorized(HAPPY_CARD, 777).await;
    let path = format!("/v1/payments/{}/capture", payment["id"].as_str().unwrap());
    let key = new_key();
    let responses = join_all((0..10).map(|_| app.post(&path, &key, &Value::Null))).await;
    let captured = answered_or_in_use(responses, StatusCode::OK).await;
    assert!(!captured.is_empty());
    let replay = app.post(&path, &key, &Value::Null).await;
    assert_eq!(replay.status(), StatusCode::OK);
    let replay = replay.bytes().await.unwrap().to_vec();
    for body in &captured {
        assert_eq!(body, &replay, "every answer to the key is the same bytes");
    }
    assert_eq!(app.bank_count("captures").await, 1);
    let captures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operations WHERE kind = 'capture'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(captures, 1, "one capture started");
    assert_eq!(app.bank_balances(HAPPY_CARD.0).await.0, 1_000_000 - 777);
}

#[tokio::test]
async fn an_unknown_outcome_answers_202_and_a_retry_resumes_rather_than_repeats() {
    // The bank holds every answer longer than the gateway's deadline.
    let app = spawn_app_with(Options {
        bank: bank_latency_ms(700),
        gateway: Some(Box::new(|s| {
            s.bank_attempt_timeout_ms = 300;
            s.bank_deadline_ms = 600;
            s.lease_ms = 5_000;
        })),
        ..Options::default()
    })
    .await;
    let key = new_key();
    let body = payment_body(LIMITED_CARD, 5_000, "ord_u", "cus_u");
    let response = app.post("/v1/payments", &key, &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().get("Idempotent-Replayed").is_none());
    let pending: Value = response.json().await.unwrap();
    assert_eq!(pending["status"], "pending");

    // Wait for the bank to finish what the timed-out attempts started.
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.set_bank_chaos(json!({"min_latency_ms": 0, "max_latency_ms": 0}))
        .await;
    let resumed = app.post("/v1/payments", &key, &body).await;
    assert_eq!(resumed.status(), StatusCode::CREATED);
    let resumed: Value = resumed.json().await.unwrap();
    assert_eq!(resumed["id"], pending["id"], "the same payment, resumed");
    assert_eq!(resumed["status"], "authorized");
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(
        app.bank_count("authorizations").await,
        1,
        "the bank authorized once"
    );
    assert_eq!(
        app.bank_balances(LIMITED_CARD.0).await,
        (50_000, 45_000),
        "one hold"
    );

    let replay = app.post("/v1/payments", &key, &body).await;
    assert_eq!(replay.headers()["Idempotent-Replayed"], "true");
}

#[tokio::test]
async fn keys_are_scoped_to_the_merchant() {
    let app = spawn_app().await;
    let other = create_key(&app.pool, "another-shop").await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 100, "o1", "c1");
    let ours: Value = app
        .post("/v1/payments", &key, &body)
        .await
        .json()
        .await
        .unwrap();
    let response = app.post_as(&other, "/v1/payments", &key, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("Idempotent-Replayed").is_none());
    let theirs: Value = response.json().await.unwrap();
    assert_ne!(ours["id"], theirs["id"]);
}

#[tokio::test]
async fn rejected_requests_store_nothing_so_the_key_can_be_used_again() {
    let app = spawn_app().await;
    let key = new_key();
    let bad = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 0, "o1", "c1"),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let good = app
        .post(
            "/v1/payments",
            &key,
            &payment_body(HAPPY_CARD, 100, "o1", "c1"),
        )
        .await;
    assert_eq!(good.status(), StatusCode::CREATED);
    assert!(good.headers().get("Idempotent-Replayed").is_none());
}

#[tokio::test]
async fn answered_keys_are_purged_after_the_retention() {
    let app = spawn_app().await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 100, "o1", "c1");
    assert_eq!(
        app.post("/v1/payments", &key, &body).await.status(),
        StatusCode::CREATED
    );
    // Answered a day ago: not something to wait for in a test. An answered
    // key refuses every change (a trigger), so this session skips triggers.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE idempotency_keys SET answered_at = now() - interval '25 hours'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    let purged = gateway::idempotency::purge(&mut conn, Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(app.count("idempotency_keys").await, 0);
}

/// A year of keys with the purge turned on (200,000 here; millions in
/// `simulator reads --purge`): the purge deletes them a bounded batch per
/// statement, through the index on `answered_at` (no pass over the whole
/// table per batch), and authorizations go on being answered meanwhile.
#[tokio::test]
async fn a_large_purge_goes_in_bounded_batches_while_authorizations_are_answered() {
    const EXPIRED: i64 = 200_000;
    let app = spawn_app().await;
    let payment = app.authorized(HAPPY_CARD, 100).await;
    let payment_id = uuid_of(payment["id"].as_str().unwrap());
    // Answered two days ago, one a millisecond after the other, each with
    // an answer the size of a payment's.
    sqlx::query(
        "INSERT INTO idempotency_keys (merchant_id, key, request_hash, state, response_status, \
           response_body, payment_id, created_at, answered_at) \
         SELECT p.merchant_id, 'old-' || n, sha256(int8send(n)), 'done', 201, \
           convert_to(repeat('x', 700), 'UTF8'), p.id, now() - interval '2 days', \
           now() - interval '2 days' + n * interval '1 millisecond' \
         FROM payments p, generate_series(1, $2::int8) AS n WHERE p.id = $1",
    )
    .bind(payment_id)
    .bind(EXPIRED)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE idempotency_keys")
        .execute(&app.pool)
        .await
        .unwrap();
    let retention = Duration::from_secs(24 * 3600);
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN {}",
        gateway::idempotency::purge_statement(false)
    ))
    .bind(retention)
    .bind(gateway::idempotency::PURGE_BATCH)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        !plan.contains("Seq Scan on idempotency_keys"),
        "a batch must not scan the whole table:\n{plan}"
    );

    // Authorizations, four at a time, until the purge is over.
    let purging = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answered_during = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            let (app_client, url, api_key) = (
                app.client.clone(),
                app.url("/v1/payments"),
                app.api_key.clone(),
            );
            let (purging, answered_during) = (purging.clone(), answered_during.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while purging.load(std::sync::atomic::Ordering::SeqCst) {
                    let status = app_client
                        .post(&url)
                        .bearer_auth(&api_key)
                        .header("Idempotency-Key", new_key())
                        .json(&payment_body(HAPPY_CARD, 1, "ord_during", "cus_during"))
                        .send()
                        .await
                        .unwrap()
                        .status();
                    if purging.load(std::sync::atomic::Ordering::SeqCst) {
                        answered_during.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    let mut conn = app.pool.acquire().await.unwrap();
    let purged = gateway::idempotency::purge_in_batches(&mut conn, retention, false)
        .await
        .unwrap();
    let during = answered_during.load(std::sync::atomic::Ordering::SeqCst);
    purging.store(false, std::sync::atomic::Ordering::SeqCst);
    let statuses: Vec<StatusCode> = join_all(traffic)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();

    assert_eq!(purged.keys, EXPIRED.unsigned_abs(), "{purged:?}");
    assert!(
        purged.largest <= gateway::idempotency::PURGE_BATCH.unsigned_abs(),
        "{purged:?}"
    );
    assert!(
        purged.statements
            >= EXPIRED.unsigned_abs() / gateway::idempotency::PURGE_BATCH.unsigned_abs(),
        "{purged:?}"
    );
    assert!(
        during > 0,
        "no authorization was answered while the purge ran"
    );
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    // What is left: the keys of today's authorizations, each still replayable.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 1 + i64::try_from(statuses.len()).unwrap());
}
