//! What a careful reader found: a retried key that resumes another key's
//! operation, stored answers that change, a "card declined" for a card the
//! bank never saw, answers of a proxy taken as the bank's refusal, locks
//! taken in two orders, leases judged by the wrong clock, keys purged too
//! early and reads from two snapshots. Each test drives the sequence
//! through the API against the real mock bank, with a proxy in between
//! where the network's answers matter and fault points where the gateway
//! must be paused at a precise step; where only the database can produce
//! an interleaving, the test says so.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;
use bank_tap::{BankProxy, Canned, Fault};
use gateway::Settings;
use gateway::faults::Point;

/// A gateway behind a proxy, with short deadlines and quick recovery; the
/// circuit breaker and periodic reconciliation out of the way.
async fn proxied(configure: impl FnOnce(&mut Settings) + 'static) -> TestApp {
    spawn_app_with(Options {
        gateway: Some(Box::new(|s: &mut Settings| {
            s.bank_attempt_timeout_ms = 300;
            s.bank_deadline_ms = 600;
            s.bank_max_attempts = 3;
            s.lease_ms = 1_500;
            s.retry_unknown_after_ms = 100;
            s.recovery_max_backoff_ms = 300;
            s.recovery_interval_ms = 100;
            s.circuit_failure_threshold = 10_000;
            s.reconcile_interval_ms = 0;
            configure(s);
        })),
        proxy: true,
        ..Options::default()
    })
    .await
}

fn proxy(app: &TestApp) -> &BankProxy {
    app.proxy.as_ref().expect("a proxied app")
}

/// The bank does the work and commits, and its answer never arrives.
fn lost() -> Fault {
    Fault::After(Canned::bank_error(500, "internal_error"))
}

/// The bank is down: nothing reaches it.
fn outage() -> Fault {
    Fault::Instead(Canned::bank_error(503, "internal_error"))
}

struct Answer {
    status: StatusCode,
    bytes: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).expect("a JSON answer")
    }
}

/// Posts, retrying while the key is in use (as the contract tells a client
/// to), for at most ~20 s.
async fn post_until_free(app: &TestApp, path: &str, key: &str, body: &Value) -> Answer {
    for _ in 0..200 {
        let response = app.post(path, key, body).await;
        let status = response.status();
        let bytes = response.bytes().await.unwrap().to_vec();
        if status != StatusCode::CONFLICT
            || !String::from_utf8_lossy(&bytes).contains("idempotency_key_in_use")
        {
            return Answer { status, bytes };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} with key {key} stayed in use");
}

async fn post(app: &TestApp, path: &str, key: &str, body: &Value) -> Answer {
    let response = app.post(path, key, body).await;
    let status = response.status();
    Answer {
        status,
        bytes: response.bytes().await.unwrap().to_vec(),
    }
}

/// Waits until some session of this test's gateway database waits for a
/// lock: the interleaving the test set up has been reached.
async fn until_someone_waits_for_a_lock(app: &TestApp) {
    let waited = throwaway_pg::until_sessions_wait_for_a_lock(&app.pool, 1, 1000)
        .await
        .unwrap();
    assert!(waited, "nobody ever waited for the lock");
}

#[tokio::test]
async fn a_retried_authorize_key_answers_its_own_payment_while_a_capture_is_pending() {
    let app = proxied(|_| {}).await;
    let body = payment_body(HAPPY_CARD, 4_200, "ord_k1", "cus_k1");
    let k1 = new_key();
    proxy(&app).inject("POST", "/api/v1/authorizations", usize::MAX, lost());
    let first = post(&app, "/v1/payments", &k1, &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    proxy(&app).heal();
    app.eventually(&id, |p| p["status"] == "authorized").await;

    proxy(&app).inject("POST", "/api/v1/captures", usize::MAX, lost());
    let capture_path = format!("/v1/payments/{id}/capture");
    let k2 = new_key();
    let capture = post(&app, &capture_path, &k2, &Value::Null).await;
    assert_eq!(capture.status, StatusCode::ACCEPTED);

    // The client retries its authorization, as a 202 invites it to.
    let retried = post_until_free(&app, "/v1/payments", &k1, &body).await;
    assert_eq!(
        retried.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&retried.bytes)
    );
    let retried_payment = retried.json();
    assert_eq!(retried_payment["id"], id.as_str());
    assert_eq!(retried_payment["status"], "authorized");
    assert_eq!(
        app.bank_count("authorizations").await,
        1,
        "one hold on the card"
    );
    assert_eq!(
        app.bank_balances(HAPPY_CARD.0).await.1,
        1_000_000 - 4_200,
        "one hold's worth held"
    );

    proxy(&app).heal();
    let captured = post_until_free(&app, &capture_path, &k2, &Value::Null).await;
    assert_eq!(captured.status, StatusCode::OK);
    assert_eq!(captured.json()["status"], "captured");
    let again = post(&app, "/v1/payments", &k1, &body).await;
    assert_eq!(again.bytes, retried.bytes, "a stored answer never changes");
    assert_eq!(app.bank_count("captures").await, 1);
}

#[tokio::test]
async fn a_retried_capture_key_answers_its_capture_while_a_refund_is_pending() {
    let app = proxied(|_| {}).await;
    let payment = app.authorized(HAPPY_CARD, 3_000).await;
    let id = payment["id"].as_str().unwrap();
    let capture_path = format!("/v1/payments/{id}/capture");
    let k2 = new_key();
    proxy(&app).inject("POST", "/api/v1/captures", usize::MAX, lost());
    assert_eq!(
        post(&app, &capture_path, &k2, &Value::Null).await.status,
        StatusCode::ACCEPTED
    );
    proxy(&app).heal();
    app.eventually(id, |p| p["status"] == "captured").await;

    proxy(&app).inject("POST", "/api/v1/refunds", usize::MAX, lost());
    let refund_path = format!("/v1/payments/{id}/refund");
    let k3 = new_key();
    assert_eq!(
        post(&app, &refund_path, &k3, &Value::Null).await.status,
        StatusCode::ACCEPTED
    );

    let retried = post_until_free(&app, &capture_path, &k2, &Value::Null).await;
    assert_eq!(
        retried.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&retried.bytes)
    );
    assert_eq!(
        retried.json()["status"],
        "captured",
        "the capture's own outcome"
    );

    proxy(&app).heal();
    let refunded = post_until_free(&app, &refund_path, &k3, &Value::Null).await;
    assert_eq!(refunded.status, StatusCode::OK);
    assert_eq!(refunded.json()["status"], "refunded");
    let again = post(&app, &capture_path, &k2, &Value::Null).await;
    assert_eq!(again.bytes, retried.bytes, "a stored answer never changes");
    assert_eq!(app.bank_count("captures").await, 1);
    assert_eq!(app.bank_count("refunds").await, 1);
}

#[tokio::test]
async fn a_request_paused_past_its_lease_cannot_change_the_answer_given_meanwhile() {
    let app = proxied(|s| s.lease_ms = 1_100).await;
    let body = payment_body(HAPPY_CARD, 1_500, "ord_p", "cus_p");
    let k1 = new_key();
    app.faults.arm("bank_answered=1*pause").unwrap();
    let paused = tokio::spawn({
        let (client, url, api_key, k1, body) = (
            app.client.clone(),
            app.url("/v1/payments"),
            app.api_key.clone(),
            k1.clone(),
            body.clone(),
        );
        async move {
            let response = client
                .post(url)
                .bearer_auth(api_key)
                .header("Idempotency-Key", k1)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status(), response.bytes().await.unwrap().to_vec())
        }
    });
    while app.faults.fired(Point::BankAnswered) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first request holds the bank's answer and sleeps past its lease;
    // the client's retry takes over, and the payment moves on.
    let answered = post_until_free(&app, "/v1/payments", &k1, &body).await;
    assert_eq!(answered.status, StatusCode::CREATED);
    let id = answered.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.act(&id, "capture").await.status(), StatusCode::OK);

    app.faults.disarm(Point::BankAnswered);
    let (status, bytes) = paused.await.unwrap();
    assert_eq!(status, answered.status);
    assert_eq!(
        bytes, answered.bytes,
        "the late request gives the same answer"
    );
    let replay = post(&app, "/v1/payments", &k1, &body).await;
    assert_eq!(
        replay.bytes, answered.bytes,
        "the stored answer is unchanged"
    );
    assert_eq!(app.bank_count("authorizations").await, 1);
}

#[tokio::test]
async fn a_worker_paused_past_its_lease_never_calls_the_bank_beside_its_successor() {
    let app = proxied(|_| {}).await;
    let payment = app.authorized(HAPPY_CARD, 900).await;
    let id = payment["id"].as_str().unwrap();
    let capture_path = format!("/v1/payments/{id}/capture");
    let k2 = new_key();
    // Every answer of the capture's attempts is lost: 202, left to recovery.
    proxy(&app).inject("POST", "/api/v1/captures", 3, lost());
    app.faults.arm("recovery_claimed=1*pause").unwrap();
    let pending = post(&app, &capture_path, &k2, &Value::Null).await;
    assert_eq!(pending.status, StatusCode::ACCEPTED);
    while app.faults.fired(Point::RecoveryClaimed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker claimed the capture and stalls; once its lease has run
    // out, the client's retry takes the operation over and finishes it.
    let captured = post_until_free(&app, &capture_path, &k2, &Value::Null).await;
    assert_eq!(captured.status, StatusCode::OK);
    let calls = proxy(&app).reached("/api/v1/captures");

    app.faults.disarm(Point::RecoveryClaimed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        proxy(&app).reached("/api/v1/captures"),
        calls,
        "the stalled worker called the bank with a lease it had lost"
    );
    let lost_leases = app
        .client
        .get(app.operator_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        lost_leases.contains("gateway_leases_lost_total{kind=\"capture\"}"),
        "{lost_leases}"
    );
}

#[tokio::test]
async fn a_capture_the_bank_refused_is_answered_as_refused_after_another_key_captured() {
    let app = proxied(|_| {}).await;
    let payment = app.authorized(HAPPY_CARD, 2_000).await;
    let id = payment["id"].as_str().unwrap();
    let capture_path = format!("/v1/payments/{id}/capture");
    let k2 = new_key();
    proxy(&app).inject("POST", "/api/v1/captures", usize::MAX, outage());
    assert_eq!(
        post(&app, &capture_path, &k2, &Value::Null).await.status,
        StatusCode::ACCEPTED
    );
    // The worker's next try is refused for good, and the payment is back
    // to authorized; then another key captures it.
    proxy(&app).heal();
    proxy(&app).inject(
        "POST",
        "/api/v1/captures",
        1,
        Fault::Instead(Canned::bank_error(400, "amount_mismatch")),
    );
    app.eventually(id, |p| {
        p["status"] == "authorized" && p["history"].as_array().is_some_and(|h| h.len() == 4)
    })
    .await;
    assert_eq!(app.act(id, "capture").await.status(), StatusCode::OK);

    let retried = post_until_free(&app, &capture_path, &k2, &Value::Null).await;
    assert_eq!(
        retried.status,
        StatusCode::BAD_GATEWAY,
        "k2's own capture was refused: {}",
        String::from_utf8_lossy(&retried.bytes)
    );
    assert_eq!(retried.json()["error"]["type"], "api_error");
    let again = post(&app, &capture_path, &k2, &Value::Null).await;
    assert_eq!(again.bytes, retried.bytes);
}

#[tokio::test]
async fn an_authorization_the_bank_never_saw_is_resumed_by_its_client_not_declined() {
    let app = proxied(|s| s.authorization_grace_ms = 60_000).await;
    let body = payment_body(LIMITED_CARD, 7_000, "ord_o", "cus_o");
    let k1 = new_key();
    proxy(&app).inject("POST", "/api/v1/authorizations", usize::MAX, outage());
    let first = post(&app, "/v1/payments", &k1, &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(proxy(&app).reached("/api/v1/authorizations"), 0);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    proxy(&app).heal();
    // Observed in the database: the worker has looked at the operation
    // (its attempts counter moved past the request's own), which the API
    // does not show. Whatever it concluded, it must not be a decline.
    for _ in 0..200 {
        let (status, attempts): (String, i32) = sqlx::query_as(
            "SELECT status, attempts FROM operations WHERE payment_id = $1 AND kind = 'authorize'",
        )
        .bind(uuid_of(&id))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if status != "pending" || attempts >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retried = post_until_free(&app, "/v1/payments", &k1, &body).await;
    assert_eq!(
        retried.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&retried.bytes)
    );
    assert_eq!(retried.json()["id"], id.as_str());
    assert_eq!(app.bank_count("authorizations").await, 1);
}

#[tokio::test]
async fn an_abandoned_authorization_is_not_a_card_decline() {
    let app = proxied(|s| s.authorization_grace_ms = 300).await;
    let body = payment_body(LIMITED_CARD, 7_000, "ord_a", "cus_a");
    let k1 = new_key();
    proxy(&app).inject("POST", "/api/v1/authorizations", usize::MAX, outage());
    let first = post(&app, "/v1/payments", &k1, &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    proxy(&app).heal();
    let given_up = app.eventually(&id, |p| p["status"] != "pending").await;
    assert_eq!(given_up["status"], "failed", "{given_up}");
    assert_eq!(given_up["failure"]["code"], "authorization_abandoned");

    let retried = app.post("/v1/payments", &k1, &body).await;
    let error = assert_error(
        retried,
        StatusCode::CONFLICT,
        "api_error",
        "authorization_abandoned",
    )
    .await;
    assert_eq!(error["error"]["payment_id"], id.as_str());
    // What the contract tells the client: a new key, and the card again.
    let anew = post(&app, "/v1/payments", &new_key(), &body).await;
    assert_eq!(anew.status, StatusCode::CREATED);
    assert_eq!(app.bank_count("authorizations").await, 1);
}

#[tokio::test]
async fn a_bank_refusal_that_blames_the_gateway_is_an_alarm_not_a_decline() {
    let app = proxied(|_| {}).await;
    proxy(&app).inject(
        "POST",
        "/api/v1/authorizations",
        1,
        Fault::Instead(Canned::bank_error(400, "invalid_amount")),
    );
    let refused = app.create_payment(HAPPY_CARD, 1_000).await;
    let error = assert_error(refused, StatusCode::BAD_GATEWAY, "api_error", "bank_error").await;
    let id = error["error"]["payment_id"].as_str().unwrap();
    let payment: Value = app
        .get(&format!("/v1/payments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(payment["status"], "failed");
    assert_eq!(payment["failure"]["code"], "invalid_amount");

    // A 413 from something in front of the bank proves nothing: retried.
    proxy(&app).inject(
        "POST",
        "/api/v1/authorizations",
        1,
        Fault::Instead(Canned::html(413)),
    );
    let authorized = app.create_payment(HAPPY_CARD, 1_000).await;
    assert_eq!(authorized.status(), StatusCode::CREATED);
    assert_eq!(app.bank_count("authorizations").await, 1);
}

#[tokio::test]
async fn answers_a_network_gives_are_unknown_and_retried_with_the_same_key() {
    let app = proxied(|s| {
        s.bank_max_attempts = 10;
        s.bank_deadline_ms = 1_400;
        s.lease_ms = 3_000;
    })
    .await;
    let payment = app.authorized(HAPPY_CARD, 2_500).await;
    let id = payment["id"].as_str().unwrap();
    let faults = [
        Fault::Instead(Canned::html(408)),
        Fault::Instead(Canned::bank_error(429, "rate_limited")),
        Fault::Instead(Canned::bank_error(409, "conflict")),
        Fault::Instead(Canned::html(425)),
        Fault::Instead(Canned::bank_error(400, "something_new")),
        Fault::Instead(Canned::html(502)),
        // The bank captured; the answer became a proxy's page.
        Fault::After(Canned::html(504)),
    ];
    for fault in faults {
        proxy(&app).inject("POST", "/api/v1/captures", 1, fault);
    }
    let captured = app.act(id, "capture").await;
    assert_eq!(captured.status(), StatusCode::OK);
    assert_eq!(app.bank_count("captures").await, 1);
    let keys: std::collections::BTreeSet<Option<String>> = proxy(&app)
        .forwarded()
        .into_iter()
        .filter(|f| f.path == "/api/v1/captures")
        .map(|f| f.key)
        .collect();
    assert_eq!(keys.len(), 1, "every attempt with the same bank key");
}

#[tokio::test]
async fn no_digest_of_a_request_can_be_recomputed_from_the_database() {
    let app = spawn_app().await;
    let mut sent = Vec::new();
    for (n, card) in [HAPPY_CARD, LIMITED_CARD, EMPTY_CARD]
        .into_iter()
        .enumerate()
    {
        let body = payment_body(card, 100 + n as i64, &format!("ord_{n}"), "cus_d");
        let response = app.post("/v1/payments", &new_key(), &body).await;
        assert!(
            response.status().is_success() || response.status() == StatusCode::PAYMENT_REQUIRED
        );
        sent.push(body);
    }
    let dump = dump_database(&app).await;
    for body in &sent {
        let canonical = service_kit::json::canonical(body).to_string();
        for preimage in [
            format!("POST\n/v1/payments\n{canonical}"),
            canonical.clone(),
            body.to_string(),
        ] {
            let digest = hex::encode(Sha256::digest(preimage.as_bytes()));
            assert!(
                !dump.contains(&digest),
                "the plain SHA-256 of a request is stored: anyone with the dump can test card numbers against it"
            );
        }
        let number = body["card"]["number"].as_str().unwrap();
        assert!(!dump.contains(number), "a card number is stored");
    }
}

/// Every row of every table of the gateway's database, as text (bytea as hex).
async fn dump_database(app: &TestApp) -> String {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT to_jsonb(t)::text FROM {table} t"))
                .fetch_all(&app.pool)
                .await
                .unwrap();
        dump.extend(rows);
    }
    dump.to_lowercase()
}

#[tokio::test]
async fn settling_takes_the_payment_lock_before_the_operation_lock() {
    let app = proxied(|_| {}).await;
    let payment = app.authorized(HAPPY_CARD, 900).await;
    let id = payment["id"].as_str().unwrap();
    proxy(&app).inject("POST", "/api/v1/captures", usize::MAX, outage());
    assert_eq!(app.act(id, "capture").await.status(), StatusCode::ACCEPTED);
    let operation: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM operations WHERE payment_id = $1 AND status = 'pending'",
    )
    .bind(uuid_of(id))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // Only the database can hold a session between two of the gateway's
    // lock acquisitions: this one holds the payment while the recovery
    // worker settles another unknown outcome of the capture.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE")
        .bind(uuid_of(id))
        .execute(&mut *holder)
        .await
        .unwrap();
    until_someone_waits_for_a_lock(&app).await;
    let mut probe = app.pool.begin().await.unwrap();
    let operation_free = sqlx::query("SELECT 1 FROM operations WHERE id = $1 FOR UPDATE NOWAIT")
        .bind(operation)
        .execute(&mut *probe)
        .await;
    probe.rollback().await.unwrap();
    holder.rollback().await.unwrap();
    assert!(
        operation_free.is_ok(),
        "the worker waits for the payment while holding its operation: {operation_free:?}"
    );
}

#[tokio::test]
async fn a_live_lease_is_judged_by_the_database_clock_not_the_process_clock() {
    let app = proxied(|s| {
        s.lease_ms = 5_000;
        s.clock_skew_ms = 3_600_000;
    })
    .await;
    let payment = app.authorized(HAPPY_CARD, 800).await;
    let id = payment["id"].as_str().unwrap();
    let path = format!("/v1/payments/{id}/capture");
    let key = new_key();
    proxy(&app).inject("POST", "/api/v1/captures", usize::MAX, outage());
    app.faults.arm("recovery_claimed=1*pause").unwrap();
    assert_eq!(
        post(&app, &path, &key, &Value::Null).await.status,
        StatusCode::ACCEPTED
    );
    while app.faults.fired(Point::RecoveryClaimed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent_before = proxy(&app).forwarded().len();
    // The worker holds the operation's lease; this process's clock runs an
    // hour ahead of the database's.
    let retried = app.post(&path, &key, &Value::Null).await;
    let sent_after = proxy(&app).forwarded().len();
    app.faults.disarm(Point::RecoveryClaimed);
    assert_error(
        retried,
        StatusCode::CONFLICT,
        "idempotency_error",
        "idempotency_key_in_use",
    )
    .await;
    assert_eq!(
        sent_after, sent_before,
        "nothing sent while another holds the lease"
    );
}

#[tokio::test]
async fn a_key_is_kept_for_its_retention_after_it_was_answered_not_after_it_was_made() {
    let app = proxied(|_| {}).await;
    let payment = app.authorized(HAPPY_CARD, 700).await;
    let id = payment["id"].as_str().unwrap();
    let path = format!("/v1/payments/{id}/capture");
    let key = new_key();
    proxy(&app).inject("POST", "/api/v1/captures", usize::MAX, outage());
    assert_eq!(
        post(&app, &path, &key, &Value::Null).await.status,
        StatusCode::ACCEPTED
    );
    // A request begun a day ago: not something to wait for in a test.
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1",
    )
    .bind(&key)
    .execute(&app.pool)
    .await
    .unwrap();
    proxy(&app).heal();
    let answered = post_until_free(&app, &path, &key, &Value::Null).await;
    assert_eq!(answered.status, StatusCode::OK);
    let mut conn = app.pool.acquire().await.unwrap();
    gateway::idempotency::purge(&mut conn, Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    let replay = post(&app, &path, &key, &Value::Null).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.bytes, answered.bytes);
}

#[tokio::test]
async fn a_read_shows_a_status_its_own_history_agrees_with() {
    let app = spawn_app().await;
    let payment = app.authorized(HAPPY_CARD, 600).await;
    let id = payment["id"].as_str().unwrap().to_owned();
    // Only the database can commit a transition between the two halves of
    // a read: this transaction moves the payment and holds its history.
    let mut mover = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE payment_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *mover)
        .await
        .unwrap();
    sqlx::query("UPDATE payments SET status = 'voiding' WHERE id = $1")
        .bind(uuid_of(&id))
        .execute(&mut *mover)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO payment_events (payment_id, from_status, to_status) VALUES ($1, 'authorized', 'voiding')",
    )
    .bind(uuid_of(&id))
    .execute(&mut *mover)
    .await
    .unwrap();
    let read = tokio::spawn({
        let (client, url, key) = (
            app.client.clone(),
            app.url(&format!("/v1/payments/{id}")),
            app.api_key.clone(),
        );
        async move {
            client
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    until_someone_waits_for_a_lock(&app).await;
    mover.commit().await.unwrap();
    let read = read.await.unwrap();
    let last = read["history"].as_array().unwrap().last().unwrap()["status"].clone();
    assert_eq!(read["status"], last, "{read}");
}

#[tokio::test]
async fn a_statement_cancelled_by_its_timeout_answers_503_and_changes_nothing() {
    // Found by the simulator's statement-timeout windows: a cancelled
    // statement (SQLSTATE 57014) answered 500.
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s: &mut Settings| {
            s.database_url
                .push_str("?options=-c%20statement_timeout%3D300");
        })),
        ..Options::default()
    })
    .await;
    // Only the database can hold a lock long enough for a statement to
    // time out: this session holds the payments table.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE payments IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 1_234, "ord_t", "cus_t");
    let refused = app.post("/v1/payments", &key, &body).await;
    holder.rollback().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().get("Retry-After").is_some());
    // Nothing was recorded: the key is free for the retry.
    let retried = app.post("/v1/payments", &key, &body).await;
    assert_eq!(retried.status(), StatusCode::CREATED);
    assert_eq!(app.count("payments").await, 1);
}

#[tokio::test]
async fn a_retry_on_another_replica_never_meets_an_attempt_still_open_at_the_bank() {
    // The bank holds every answer past the attempt timeout, and the
    // deadline leaves a second attempt less than a whole timeout. The
    // client's retry, the moment it hears 202, goes to another replica.
    let attempt_timeout = Duration::from_millis(300);
    let configure = move |s: &mut Settings| {
        s.bank_attempt_timeout_ms = u64::try_from(attempt_timeout.as_millis()).unwrap();
        s.bank_deadline_ms = 400;
        s.bank_max_attempts = 3;
        s.lease_ms = 1_500;
        s.retry_unknown_after_ms = 60_000;
        s.circuit_failure_threshold = 10_000;
        s.reconcile_interval_ms = 0;
    };
    let app = spawn_app_with(Options {
        bank: bank_latency_ms(1_000),
        gateway: Some(Box::new(configure)),
        proxy: true,
    })
    .await;
    let replica = app.replica().await;
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 1_200, "ord_r1", "cus_r1");

    let first = post(&app, "/v1/payments", &key, &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let retried = app
        .client
        .post(format!("{replica}/v1/payments"))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::ACCEPTED);

    let calls: Vec<_> = proxy(&app)
        .forwarded()
        .into_iter()
        .filter(|f| f.path == "/api/v1/authorizations")
        .collect();
    let callers: std::collections::HashSet<_> = calls.iter().map(|c| &c.caller).collect();
    assert_eq!(
        callers.len(),
        2,
        "both replicas called the bank: {calls:#?}"
    );
    // A call is open at the bank until the bank answers or its caller's
    // attempt timeout is up, whichever is first.
    for (i, earlier) in calls.iter().enumerate() {
        let open_until = earlier
            .ended
            .map_or(earlier.started + attempt_timeout, |ended| {
                ended.min(earlier.started + attempt_timeout)
            });
        for later in &calls[i + 1..] {
            assert!(
                later.caller == earlier.caller || later.started >= open_until,
                "another replica called the bank with the key {:?} after the first call began, while it was still open",
                later.started - earlier.started
            );
        }
    }
}

/// A payment locked after a wait comes with the history its previous holder
/// wrote. The locking statement's snapshot predates that holder's commit:
/// the row it locks is the latest, but a history read in the same
/// statement lacks the holder's events, and an answer rendered from the two
/// would show a history that does not end at its status.
#[tokio::test]
async fn a_payment_locked_after_a_wait_comes_with_its_whole_history() {
    use gateway::domain::{PaymentEvent, PaymentStatus};
    let history = history_after_waiting_for(&[PaymentEvent::AuthorizationExpired]).await;
    assert_eq!(
        history,
        [
            PaymentStatus::Pending,
            PaymentStatus::Authorized,
            PaymentStatus::Expired
        ]
    );
}

/// The same when the holder's moves bring the payment back to the status
/// it had (a capture that failed): the stale history ends at that status
/// too, and only its last move's time tells it from the whole one.
#[tokio::test]
async fn a_payment_back_at_its_status_after_a_wait_comes_with_its_whole_history() {
    use gateway::domain::{PaymentEvent, PaymentStatus};
    let moves = [PaymentEvent::CaptureRequested, PaymentEvent::CaptureFailed];
    let history = history_after_waiting_for(&moves).await;
    assert_eq!(
        history,
        [
            PaymentStatus::Pending,
            PaymentStatus::Authorized,
            PaymentStatus::Capturing,
            PaymentStatus::Authorized
        ]
    );
}

/// An authorized payment, moved by `moves` in a transaction that holds its
/// lock while another waits in `lock_with_history`: the statuses of the
/// history the waiter got, checked to end at the status it got.
async fn history_after_waiting_for(
    moves: &[gateway::domain::PaymentEvent],
) -> Vec<gateway::domain::PaymentStatus> {
    use gateway::store::payments::{self, BankFacts};

    let app = spawn_app().await;
    let id = authorized_payment(&app).await;
    let mut holder = app.pool.begin().await.unwrap();
    let (mut payment, _) = payments::lock_with_history(&mut holder, id)
        .await
        .unwrap()
        .unwrap();
    for &event in moves {
        payment = payments::apply(&mut holder, &payment, event, &BankFacts::default())
            .await
            .unwrap();
    }

    let ((waited, history), ()) = tokio::join!(
        async {
            let mut waiter = app.pool.begin().await.unwrap();
            let found = payments::lock_with_history(&mut waiter, id).await.unwrap();
            waiter.rollback().await.unwrap();
            found.unwrap()
        },
        async {
            until_someone_waits_for_a_lock(&app).await;
            holder.commit().await.unwrap();
        }
    );
    assert_eq!(waited.status(), payment.status());
    assert_eq!(
        history.last(),
        Some(&(payment.status(), payment.updated_at))
    );
    history.iter().map(|(status, _)| *status).collect()
}

/// A settlement written in one statement moves the payment only from the
/// version its settler read. A settler that ran past its lease can come
/// late, its statement waiting for the payment's lock while the operation's
/// new holder settles it and a new operation of the same kind (the client's
/// retry under a new key) takes the payment back to the same status: the
/// status alone matches again, and the statement's older snapshot still
/// shows the first operation pending. The late settlement must write
/// nothing, and the new operation's payment stay in flight.
#[tokio::test]
async fn a_late_settlement_cannot_move_a_payment_a_newer_operation_has_in_flight() {
    use gateway::domain::operation::{Lease, OperationKind};
    use gateway::domain::{PaymentEvent, PaymentStatus};
    use gateway::store::operations;
    use gateway::store::payments::{self, BankFacts, Settlement};

    let app = spawn_app().await;
    let lease = Lease {
        holder: uuid::Uuid::new_v4(),
        duration: Duration::from_secs(60),
    };
    // The first capture, in flight.
    let (capturing, first) = capture_in_flight(&app, lease).await;
    let id = capturing.id;

    // What its late settler computed from what it read: captured.
    let late = Settlement {
        from: PaymentStatus::Capturing,
        to: payments::moved(
            &capturing,
            PaymentEvent::CaptureSucceeded,
            &BankFacts {
                capture_id: Some("cap_late".into()),
                ..BankFacts::default()
            },
            capturing.updated_at + chrono::TimeDelta::milliseconds(1),
        )
        .unwrap(),
        read_at: capturing.updated_at,
        operation_id: first.id,
        succeeded: true,
        answer: None,
    };

    // Meanwhile, under the payment's lock: the first capture settled as
    // failed, and a second one started.
    let mut holder = app.pool.begin().await.unwrap();
    let (payment, _) = payments::lock_with_history(&mut holder, id)
        .await
        .unwrap()
        .unwrap();
    let failed = BankFacts {
        failure_code: Some("bank_error".into()),
        ..BankFacts::default()
    };
    let back = payments::apply(&mut holder, &payment, PaymentEvent::CaptureFailed, &failed)
        .await
        .unwrap();
    operations::finish(&mut holder, first.id, false, Some("bank_error"))
        .await
        .unwrap();
    payments::apply(
        &mut holder,
        &back,
        PaymentEvent::CaptureRequested,
        &BankFacts::default(),
    )
    .await
    .unwrap();
    let second = operations::insert(
        &mut holder,
        id,
        OperationKind::Capture,
        &operations::new_identity(OperationKind::Capture),
        lease,
    )
    .await
    .unwrap();

    let (written, ()) = tokio::join!(
        payments::write_settlements(app.pool.clone(), vec![late]),
        async {
            until_someone_waits_for_a_lock(&app).await;
            holder.commit().await.unwrap();
        }
    );
    assert_eq!(written.unwrap(), [false], "the late settlement was written");
    let mut tx = app.pool.begin().await.unwrap();
    let (now, history) = payments::lock_with_history(&mut tx, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status(), PaymentStatus::Capturing, "{history:?}");
    assert_eq!(now.bank_capture_id, None);
    let in_flight = operations::lock_pending_of(&mut tx, id).await.unwrap();
    assert_eq!(in_flight.map(|o| o.id), Some(second.id));
}

/// Giving a lease up after an unknown outcome is fenced by the lease's
/// token, not by the process: a task that ran past its lease, whose
/// operation another task of this same process took over meanwhile (a
/// retry of its key, or the recovery worker), must leave the new lease
/// alone. Cut short, it would let a third caller reach the bank with the
/// operation's key while the second is still there.
#[tokio::test]
async fn a_task_past_its_lease_cannot_give_up_the_lease_its_successor_holds() {
    use gateway::domain::operation::Lease;
    use gateway::store::operations::{self, Backoff};

    let app = spawn_app().await;
    let lease = |ms| Lease {
        holder: uuid::Uuid::new_v4(),
        duration: Duration::from_millis(ms),
    };
    let process = lease(0).holder;
    // The first task's lease: run out as soon as taken.
    let first = Lease {
        holder: process,
        ..lease(0)
    };
    let (_, stale) = capture_in_flight(&app, first).await;

    let mut conn = app.pool.acquire().await.unwrap();
    let successor = Lease {
        holder: process,
        ..lease(60_000)
    };
    let taken = operations::take_lease(&mut conn, stale.id, successor)
        .await
        .unwrap();
    let backoff = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(1),
    };
    let released = operations::release(&mut conn, stale.id, stale.lease_until, "timeout", backoff)
        .await
        .unwrap();
    assert!(!released, "the stale task gave its successor's lease up");
    let (lease_until, live): (chrono::DateTime<chrono::Utc>, bool) =
        sqlx::query_as("SELECT lease_until, lease_until > now() FROM operations WHERE id = $1")
            .bind(stale.id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((lease_until, live), (taken, true));

    // Its holder can.
    assert!(
        operations::release(&mut conn, stale.id, taken, "timeout", backoff)
            .await
            .unwrap()
    );
}

/// A stopping gateway hands its leases back, so that another replica
/// resumes at once; but not the lease of an operation whose bank call may
/// still be open. A forced stop drops the call's future, and the bank goes
/// on with the request: had the lease been handed back, another replica's
/// recovery could send the same key beside it.
#[tokio::test]
async fn a_stopping_gateway_keeps_the_lease_of_a_call_still_open_at_the_bank() {
    let app = spawn_app_with(Options {
        bank: bank_latency_ms(2_000),
        gateway: Some(Box::new(|s: &mut Settings| {
            s.bank_attempt_timeout_ms = 5_000;
            s.bank_deadline_ms = 6_000;
            s.lease_ms = 30_000;
            s.reconcile_interval_ms = 0;
        })),
        proxy: false,
    })
    .await;
    let authorized = app.authorized(HAPPY_CARD, 1_500).await;
    let id = authorized["id"].as_str().unwrap().to_owned();

    let replica = app.replica_application().await;
    let address = format!("http://127.0.0.1:{}", replica.port());
    let (handle, instance) = (replica.handle(), replica.instance());
    let serving = tokio::spawn(replica.run_until_stopped());
    let capture = {
        let (client, api_key) = (app.client.clone(), app.api_key.clone());
        let url = format!("{address}/v1/payments/{id}/capture");
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(api_key)
                .header("Idempotency-Key", new_key())
                .json(&serde_json::json!({}))
                .send()
                .await
        })
    };
    // The capture's intent is recorded; its call is at the bank, which
    // takes 2 s over it.
    let in_flight = "SELECT count(*) FROM operations WHERE kind = 'capture'";
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar(in_flight)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.stop(false).await;
    serving.await.unwrap().unwrap();
    let _ = capture.await;

    // Still the stopped replica's, and live (the first gateway's recovery
    // would have taken a lease handed back).
    let (status, holder, live): (String, uuid::Uuid, bool) = sqlx::query_as(
        "SELECT status, leased_by, lease_until > now() FROM operations WHERE kind = 'capture'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(status, "pending");
    assert!(
        holder == instance && live,
        "the lease of a call still open at the bank was handed back"
    );
}

/// An authorized payment whose authorization the bank then captured
/// behind the gateway (as its console would): the payment as the gateway
/// answered it, and the bank's capture.
/// Moves these payments' authorizations past their expiry, in the
/// gateway's receipt only (the bank's hold lasts its week).
async fn lapse(app: &TestApp, ids: &[&str]) {
    sqlx::query(
        "UPDATE payments SET authorization_expires_at = now() - interval '1 second' \
         WHERE id = ANY($1)",
    )
    .bind(ids.iter().map(|id| uuid_of(id)).collect::<Vec<_>>())
    .execute(&app.pool)
    .await
    .unwrap();
}

/// The bank's lookup path of this payment's authorization.
fn lookup_path(payment: &Value) -> String {
    format!(
        "/api/v1/authorizations/{}",
        payment["bank"]["authorization_id"].as_str().unwrap()
    )
}

/// From now on the tap answers every lookup of this payment's
/// authorization with `answer`; the bank never sees them.
fn answer_lookups(app: &TestApp, payment: &Value, answer: Canned) {
    proxy(app).inject(
        "GET",
        &lookup_path(payment),
        usize::MAX,
        Fault::Instead(answer),
    );
}

/// The bank's lookup of this payment's authorization ($10.00), with the
/// extension's `state` if given (the original bank's lookup has none), and
/// nothing else: no capture or void id.
fn looked_up(payment: &Value, state: Option<&str>) -> Value {
    let mut lookup = json!({
        "authorization_id": payment["bank"]["authorization_id"],
        "status": "authorized",
        "amount": 1_000,
        "currency": "USD",
        "expires_at": "2030-01-01T00:00:00Z",
        "created_at": "2026-01-01T00:00:00Z",
    });
    if let Some(state) = state {
        lookup["state"] = json!(state);
    }
    lookup
}

async fn captured_behind_the_gateway(app: &TestApp) -> (Value, Value) {
    let payment = app.authorized(HAPPY_CARD, 1_000).await;
    let capture = app
        .at_bank(
            "/api/v1/captures",
            json!({"authorization_id": payment["bank"]["authorization_id"], "amount": 1_000}),
        )
        .await;
    (payment, capture)
}

#[tokio::test]
async fn a_proxys_404_on_the_banks_lookup_is_not_the_bank_saying_no() {
    let app = proxied(|_| {}).await;
    let (payment, _) = captured_behind_the_gateway(&app).await;
    let id = payment["id"].as_str().unwrap();
    // The capture meets the bank's "already used" and asks the bank what it
    // holds; something in front of the bank answers that lookup with its own
    // 404 page, which says nothing about the authorization.
    answer_lookups(&app, &payment, Canned::html(404));

    let capture_path = format!("/v1/payments/{id}/capture");
    let key = new_key();
    let first = post(&app, &capture_path, &key, &Value::Null).await;
    assert_eq!(
        first.status,
        StatusCode::ACCEPTED,
        "the bank captured this payment: {}",
        String::from_utf8_lossy(&first.bytes)
    );
    proxy(&app).heal();
    app.eventually(id, |p| p["status"] == "captured").await;
    assert_eq!(
        post_until_free(&app, &capture_path, &key, &Value::Null)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_bank_lookup_without_its_state_is_no_proof_the_bank_did_the_other_thing() {
    let app = proxied(|_| {}).await;
    let (payment, _) = captured_behind_the_gateway(&app).await;
    let id = payment["id"].as_str().unwrap();
    // A bank without the lookup's extensions (the original's): no state, no
    // capture or void id, although the authorization was captured.
    answer_lookups(&app, &payment, Canned::json(200, looked_up(&payment, None)));

    let first = post(
        &app,
        &format!("/v1/payments/{id}/capture"),
        &new_key(),
        &Value::Null,
    )
    .await;
    assert_eq!(
        first.status,
        StatusCode::ACCEPTED,
        "nothing proved the bank voided it: {}",
        String::from_utf8_lossy(&first.bytes)
    );
    proxy(&app).heal();
    app.eventually(id, |p| p["status"] == "captured").await;
}

#[tokio::test]
async fn a_payment_the_bank_moved_is_not_expired_while_its_receipt_catches_up() {
    let app = proxied(|s| s.expiry_sweep_interval_ms = 50).await;
    let (payment, capture) = captured_behind_the_gateway(&app).await;
    let id = payment["id"].as_str().unwrap();
    // The void learns the bank captured it; bringing the receipt up to the
    // bank needs the capture's lookup, which fails for now.
    proxy(&app).inject(
        "GET",
        &format!(
            "/api/v1/captures/{}",
            capture["capture_id"].as_str().unwrap()
        ),
        usize::MAX,
        Fault::Instead(Canned::html(503)),
    );
    let void = app.act(id, "void").await;
    assert_error(
        void,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "payment_moved_at_bank",
    )
    .await;
    assert_eq!(app.payment(id).await["status"], "authorized");

    // Both it and an untouched payment reach their authorization's expiry.
    let untouched = app.authorized(HAPPY_CARD, 1_000).await;
    let untouched_id = untouched["id"].as_str().unwrap();
    lapse(&app, &[id, untouched_id]).await;
    app.eventually(untouched_id, |p| p["status"] == "expired")
        .await;
    // The bank captured it: its hold did not lapse, it was taken.
    let moved = app.payment(id).await;
    assert_eq!(moved["status"], "authorized", "{moved}");

    // Once the bank answers its lookups, reconciliation's sweep brings the
    // receipt up to it: it reads every payment still authorized from the
    // hold's week, however old.
    proxy(&app).heal();
    let sweep = pass_of(&app, gateway::reconcile::Scope::Sweep, true).await;
    assert_eq!(sweep.counts.repaired, 1, "{sweep:#?}");
    let caught_up = app.payment(id).await;
    assert_eq!(caught_up["status"], "captured");
    assert_eq!(caught_up["bank"]["capture_id"], capture["capture_id"]);
}

#[tokio::test]
async fn an_authorization_the_bank_captured_in_its_last_hours_is_caught_up_not_expired() {
    let app = proxied(|s| s.expiry_sweep_interval_ms = 50).await;
    // Captured at the bank's console, and no reconciliation pass has come
    // by since (they are off here; a sweep comes hourly).
    let (payment, capture) = captured_behind_the_gateway(&app).await;
    let id = payment["id"].as_str().unwrap();
    let untouched = app.authorized(HAPPY_CARD, 1_000).await;
    let untouched_id = untouched["id"].as_str().unwrap();
    lapse(&app, &[id, untouched_id]).await;

    // "Expired" is a claim about the bank's hold: the sweeper asks the
    // bank first, and announces no lapse for money the bank took.
    app.eventually(untouched_id, |p| p["status"] == "expired")
        .await;
    let caught_up = app.eventually(id, |p| p["status"] != "authorized").await;
    assert_eq!(caught_up["status"], "captured", "{caught_up}");
    assert_eq!(caught_up["bank"]["capture_id"], capture["capture_id"]);
}

#[tokio::test]
async fn an_operation_on_an_authorization_past_its_expiry_asks_the_bank_before_expiring_it() {
    // The sweeper is slow here: the operation meets the expiry first.
    let app = proxied(|s| s.expiry_sweep_interval_ms = 3_600_000).await;
    let (payment, capture) = captured_behind_the_gateway(&app).await;
    let lapsed = app.authorized(HAPPY_CARD, 1_000).await;
    let (id, lapsed_id) = (
        payment["id"].as_str().unwrap(),
        lapsed["id"].as_str().unwrap(),
    );
    lapse(&app, &[id, lapsed_id]).await;

    // The bank captured one at its console: the void meets a captured
    // payment, not a lapse.
    let void = app.act(id, "void").await;
    let error = assert_error(
        void,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "invalid_state",
    )
    .await;
    assert_eq!(error["error"]["payment_id"], id);
    let caught_up = app.payment(id).await;
    assert_eq!(caught_up["status"], "captured", "{caught_up}");
    assert_eq!(caught_up["bank"]["capture_id"], capture["capture_id"]);
    // The other one's hold did lapse.
    assert_error(
        app.act(lapsed_id, "capture").await,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "authorization_expired",
    )
    .await;
    assert_eq!(app.payment(lapsed_id).await["status"], "expired");
}

#[tokio::test]
async fn an_expiry_waits_for_a_bank_that_does_not_answer_and_not_for_one_without_extensions() {
    let app = proxied(|s| s.expiry_sweep_interval_ms = 50).await;
    let silent = app.authorized(HAPPY_CARD, 1_000).await;
    let bare = app.authorized(HAPPY_CARD, 1_000).await;
    answer_lookups(&app, &silent, Canned::html(503));
    // The original bank's lookup: no state to tell captured from active.
    answer_lookups(&app, &bare, Canned::json(200, looked_up(&bare, None)));
    let (silent_id, bare_id) = (silent["id"].as_str().unwrap(), bare["id"].as_str().unwrap());
    lapse(&app, &[silent_id, bare_id]).await;

    // A bank that answers without the extensions cannot say; the receipt's
    // own expiry decides, as it always did.
    app.eventually(bare_id, |p| p["status"] == "expired").await;
    let reached = proxy(&app)
        .forwarded()
        .iter()
        .filter(|f| f.path == lookup_path(&silent))
        .count();
    assert!(reached >= 2, "asked {reached} time(s)");
    assert_eq!(app.payment(silent_id).await["status"], "authorized");
    proxy(&app).heal();
    app.eventually(silent_id, |p| p["status"] == "expired")
        .await;
}

#[tokio::test]
async fn an_expiry_the_bank_cannot_show_is_left_aside_and_does_not_hold_up_the_others() {
    // A batch of one: the payment the bank is odd about is at the head of
    // the queue, every sweep.
    let app = proxied(|s| {
        s.expiry_sweep_interval_ms = 50;
        s.recovery_batch = 1;
    })
    .await;
    let (odd, _) = captured_behind_the_gateway(&app).await;
    // Captured, says the bank, naming no capture: no lapse to announce,
    // and nothing a receipt could be moved to.
    let captured = looked_up(&odd, Some("captured"));
    answer_lookups(&app, &odd, Canned::json(200, captured));
    let behind = app.authorized(HAPPY_CARD, 1_000).await;
    let (odd_id, behind_id) = (odd["id"].as_str().unwrap(), behind["id"].as_str().unwrap());
    lapse(&app, &[odd_id, behind_id]).await;
    sqlx::query(
        "UPDATE payments SET authorization_expires_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(uuid_of(odd_id))
    .execute(&app.pool)
    .await
    .unwrap();

    app.eventually(behind_id, |p| p["status"] == "expired")
        .await;
    assert_eq!(app.payment(odd_id).await["status"], "authorized");
}

#[tokio::test]
async fn an_authorizations_answer_shows_its_expiry_as_it_is_stored() {
    let app = proxied(|_| {}).await;
    // The original bank writes its times with nanoseconds; Postgres keeps
    // microseconds. The first answer, its replays and every read must
    // show one expiry.
    proxy(&app).inject(
        "POST",
        "/api/v1/authorizations",
        1,
        Fault::After(Canned::json(
            201,
            json!({
                "authorization_id": "auth_with_nanoseconds",
                "status": "authorized",
                "amount": 1_000,
                "currency": "USD",
                "expires_at": "2030-01-08T12:00:00.123456789Z",
                "created_at": "2030-01-01T12:00:00.987654321Z",
            }),
        )),
    );
    let answered = app.authorized(HAPPY_CARD, 1_000).await;
    let read = app.payment(answered["id"].as_str().unwrap()).await;
    assert_eq!(
        answered["authorization_expires_at"], read["authorization_expires_at"],
        "{answered} / {read}"
    );
}

#[tokio::test]
async fn one_odd_bank_answer_leaves_its_payment_unverified_and_the_pass_goes_on() {
    let app = proxied(|_| {}).await;
    let odd = app.authorized(HAPPY_CARD, 1_000).await;
    let (behind, capture) = captured_behind_the_gateway(&app).await;
    // Voided, says the bank, naming no void: nothing a receipt entering
    // `voided` can record.
    answer_lookups(
        &app,
        &odd,
        Canned::json(200, looked_up(&odd, Some("voided"))),
    );

    let bank = bank_at(&proxy(&app).url, gateway::bank::RetryPolicy::default());
    let report = pass_with(&app, &bank, gateway::reconcile::Scope::All, true).await;
    assert_eq!(report.counts.unverified, 1, "{report:#?}");
    assert_eq!(report.counts.repaired, 1, "{report:#?}");
    assert_eq!(
        app.payment(odd["id"].as_str().unwrap()).await["status"],
        "authorized"
    );
    let caught_up = app.payment(behind["id"].as_str().unwrap()).await;
    assert_eq!(caught_up["bank"]["capture_id"], capture["capture_id"]);
}

#[tokio::test]
async fn a_mismatch_a_sweep_finds_on_a_receipt_that_had_matched_stays_reported() {
    let app = proxied(|_| {}).await;
    let payment = app.authorized(HAPPY_CARD, 1_000).await;
    let bank = bank_at(&proxy(&app).url, gateway::bank::RetryPolicy::default());
    let pass = |scope| pass_with(&app, &bank, scope, true);
    assert_eq!(pass(gateway::reconcile::Scope::Due).await.counts.matched, 1);

    // The receipt does not move; the bank loses the authorization.
    answer_lookups(&app, &payment, Canned::bank_error(404, "not_found"));
    let sweep = pass(gateway::reconcile::Scope::Sweep).await;
    assert_eq!(sweep.counts.mismatch, 1, "{sweep:#?}");
    // Every later pass reports it too, not only the next sweep an hour on.
    let due = pass(gateway::reconcile::Scope::Due).await;
    assert_eq!(due.counts.mismatch, 1, "{due:#?}");
}

#[tokio::test]
async fn a_payments_version_only_moves_forward_whoever_stamps_it() {
    use gateway::domain::PaymentEvent;

    let app = proxied(|_| {}).await;
    let id = authorized_payment(&app).await;
    // A settlement written in one statement stamps the database's time as
    // its process estimates it, which can run a little ahead of the
    // database's own clock; the next writer must still stamp a later
    // version, or a version fence could take a new state for an old one.
    let ahead: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "UPDATE payments SET updated_at = now() + interval '1 second' WHERE id = $1 \
         RETURNING updated_at",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    let voiding = moved_in(&mut tx, id, PaymentEvent::VoidRequested).await;
    tx.commit().await.unwrap();
    assert!(
        voiding.updated_at > ahead,
        "{} after {ahead}",
        voiding.updated_at
    );
}

/// An authorized payment's id, as the database keys it.
async fn authorized_payment(app: &TestApp) -> uuid::Uuid {
    let authorized = app.authorized(HAPPY_CARD, 1_500).await;
    uuid_of(authorized["id"].as_str().unwrap())
}

/// The payment `id`, locked in `tx` and moved by `event` (as the gateway
/// moves one): the payment as it is now.
async fn moved_in(
    tx: &mut sqlx::PgConnection,
    id: uuid::Uuid,
    event: gateway::domain::PaymentEvent,
) -> gateway::store::payments::PaymentRecord {
    use gateway::store::payments;

    let (payment, _) = payments::lock_with_history(tx, id).await.unwrap().unwrap();
    payments::apply(tx, &payment, event, &payments::BankFacts::default())
        .await
        .unwrap()
}

/// An authorized payment put in flight by a capture whose operation holds
/// `lease`, committed: the payment as it is now, and the operation.
async fn capture_in_flight(
    app: &TestApp,
    lease: gateway::domain::operation::Lease,
) -> (
    gateway::store::payments::PaymentRecord,
    gateway::store::operations::OperationRecord,
) {
    use gateway::domain::{OperationKind, PaymentEvent};
    use gateway::store::operations;

    let id = authorized_payment(app).await;
    let mut tx = app.pool.begin().await.unwrap();
    let capturing = moved_in(&mut tx, id, PaymentEvent::CaptureRequested).await;
    let operation = operations::insert(
        &mut tx,
        id,
        OperationKind::Capture,
        &operations::new_identity(OperationKind::Capture),
        lease,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (capturing, operation)
}

/// A bank without the resolve extension (an older build, a canary in a
/// rolling deploy) answers resolve as any path it does not serve: 404
/// `not_found`, the same status and code as "that key created nothing".
/// Taken as the latter, recovery abandoned an authorization the bank held,
/// told the client no money was held, and the card got a second hold when
/// checkout tried again. Only the bank's mark (`authorization_created:
/// false`) proves nothing was created; without it the payment waits.
#[tokio::test]
async fn a_404_to_resolve_without_the_banks_mark_does_not_abandon_a_hold() {
    let app = proxied(|s| s.authorization_grace_ms = 300).await;
    let body = payment_body(LIMITED_CARD, 7_000, "ord_r", "cus_r");
    proxy(&app).inject("POST", "/api/v1/authorizations", usize::MAX, lost());
    proxy(&app).inject(
        "POST",
        "/api/v1/authorizations/resolve",
        usize::MAX,
        Fault::Instead(Canned::bank_error(404, "not_found")),
    );
    let first = post(&app, "/v1/payments", &new_key(), &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    // Well past the grace, recovery has asked again and again.
    let asked = || {
        proxy(&app)
            .forwarded()
            .iter()
            .filter(|f| f.path == "/api/v1/authorizations/resolve")
            .count()
    };
    for _ in 0..400 {
        let payment = app.payment(&id).await;
        assert_eq!(payment["status"], "pending", "{payment}");
        if asked() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(asked() >= 8, "recovery asked {} times", asked());
    proxy(&app).heal();
    let settled = app.eventually(&id, |p| p["status"] != "pending").await;
    assert_eq!(settled["status"], "authorized", "{settled}");
    assert_eq!(app.bank_count("authorizations").await, 1);
}

/// The bank stores an answer only for what it did, so a capture, void or
/// refund whose key it refuses as used with another body (a deploy that
/// changed the request's shape while the operation was in flight) is one
/// it made. It was answered 502 "the payment is as it was" while the bank
/// had taken the money; now it is adopted as any "already done" is.
#[tokio::test]
async fn a_capture_key_the_bank_calls_used_is_a_capture_the_bank_made() {
    let app = proxied(|_| {}).await;
    let created: Value = app
        .create_payment(HAPPY_CARD, 2_500)
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    proxy(&app).inject(
        "POST",
        "/api/v1/captures",
        1,
        Fault::After(Canned::bank_error(422, "idempotency_key_reused")),
    );
    let captured = app.act(&id, "capture").await;
    assert_eq!(captured.status(), StatusCode::OK);
    let payment = app.payment(&id).await;
    assert_eq!(payment["status"], "captured", "{payment}");
    assert_eq!(app.bank_count("captures").await, 1);
}

/// The same for an authorization: the bank refuses the key as used because
/// it made an authorization under it. Resolve says so, and the payment is
/// authorized instead of abandoned with a hold on the card.
#[tokio::test]
async fn an_authorization_key_the_bank_calls_used_is_resolved_not_abandoned() {
    let app = proxied(|_| {}).await;
    proxy(&app).inject(
        "POST",
        "/api/v1/authorizations",
        1,
        Fault::After(Canned::bank_error(422, "idempotency_key_reused")),
    );
    let response = app.create_payment(HAPPY_CARD, 3_100).await;
    let status = response.status();
    let payment: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    assert_eq!(payment["status"], "authorized");
    assert_eq!(app.bank_count("authorizations").await, 1);
}

/// A database error while a payment is moved inside a transaction (here a
/// statement cancelled while the capture of a lapsed authorization records
/// its expiry first) is the database's, retryable: 503 with `Retry-After`,
/// as every other database error is, not a 500 that says the gateway broke.
/// Only a move the state machine refuses is the gateway's own bug.
#[tokio::test]
async fn a_statement_cancelled_while_a_payment_moves_is_a_503_not_a_500() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s| s.expiry_sweep_interval_ms = 3_600_000)),
        ..Options::default()
    })
    .await;
    let created: Value = app
        .create_payment(HAPPY_CARD, 1_200)
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    sqlx::query(
        "UPDATE payments SET authorization_expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(uuid_of(&id))
    .execute(&app.pool)
    .await
    .unwrap();
    // History rows wait behind this lock, so the capture's expiry write
    // blocks where the test can cancel it.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE payment_events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let cancel = async {
        for _ in 0..200 {
            let cancelled: bool = sqlx::query_scalar(
                "SELECT coalesce(bool_or(pg_cancel_backend(pid)), false) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query ILIKE '%payment_events%' \
                   AND pid <> pg_backend_pid()",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            if cancelled {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    };
    let (answer, cancelled) = tokio::join!(app.act(&id, "capture"), cancel);
    assert!(cancelled, "the capture never waited on the history lock");
    drop(blocker);
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after_seconds(&answer) >= 1);
    assert_eq!(app.payment(&id).await["status"], "authorized");
}

/// The database commits a start and its reply is lost (the connection
/// drops after COMMIT). The request wrote the key and the operation: it
/// finds them under its own ids and goes on to the bank, instead of
/// answering 503 and then 409 "in use" to every retry until its own lease
/// ran out (or, for rows of a batch, 409 at once while recovery finished
/// the operation 30 s later).
#[tokio::test]
async fn a_start_whose_commit_reply_was_lost_goes_on_as_its_own() {
    let app = spawn_app().await;
    app.faults.arm("batch_after_write=1*error").unwrap();
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 4_200, "ord_lost", "cus_lost");
    let first = post(&app, "/v1/payments", &key, &body).await;
    assert_eq!(
        first.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&first.bytes)
    );
    assert_eq!(app.faults.fired(Point::BatchAfterWrite), 1);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.bank_count("authorizations").await, 1);
    let again = post(&app, "/v1/payments", &key, &body).await;
    assert_eq!(again.bytes, first.bytes, "the stored answer");

    app.faults.arm("batch_after_write=1*error").unwrap();
    let capture_key = new_key();
    let path = format!("/v1/payments/{id}/capture");
    let captured = post(&app, &path, &capture_key, &Value::Null).await;
    assert_eq!(
        captured.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&captured.bytes)
    );
    assert_eq!(app.faults.fired(Point::BatchAfterWrite), 2);
    assert_eq!(app.bank_count("captures").await, 1);
}

/// The same for rows that shared a batch: written again after the lost
/// reply, each row finds its payment already moved by itself and its key
/// taken by itself, and goes on.
#[tokio::test]
async fn rows_of_a_batch_whose_commit_reply_was_lost_go_on_as_their_own() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for amount in [1_100, 1_200, 1_300] {
        let created: Value = app
            .create_payment(HAPPY_CARD, amount)
            .await
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // The first capture holds the flusher while the other two queue behind
    // it; then both batches lose their reply.
    app.faults
        .arm("batch_before_write=1*pause;batch_after_write=2*error")
        .unwrap();
    let captures = ids.iter().map(|id| {
        let path = format!("/v1/payments/{id}/capture");
        let app = &app;
        async move { post(app, &path, &new_key(), &Value::Null).await }
    });
    let release = async {
        while app.faults.fired(Point::BatchBeforeWrite) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.faults.disarm(Point::BatchBeforeWrite);
    };
    let (answers, ()) = tokio::join!(futures_util::future::join_all(captures), release);
    for answer in &answers {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer.bytes)
        );
    }
    assert_eq!(app.faults.fired(Point::BatchAfterWrite), 2);
    assert_eq!(app.bank_count("captures").await, 3);
}
