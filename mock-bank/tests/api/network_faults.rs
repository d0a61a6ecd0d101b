//! The network faults (extensions): proxy answers, bodies cut short and
//! bodies trickled, each at rate 1.0, the seeded choice among proxy
//! answers, and their settings.
//!
//! For each, a gateway must see "outcome unknown, retry with the same key":
//! a proxy answer executed nothing, and a cut or trickled body's operation
//! was committed, so a retry replays it and the money moves once.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::*;

/// A bound on any one exchange, so that a bug fails the test instead of
/// hanging it. Never an expectation about how long anything takes.
const EXCHANGE_BOUND_SECONDS: u64 = 30;
const PROXY_STATUSES: [u16; 5] = [408, 429, 502, 503, 504];

fn authorization_body(amount: i64) -> Value {
    json!({"card_number": HAPPY_CARD.0, "cvv": HAPPY_CARD.1, "amount": amount})
}

/// A client of its own that keeps no idle connection: a cut-short body
/// kills the connection it arrives on.
fn fresh_client() -> Client {
    Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a reqwest client")
}

async fn bounded<T>(exchange: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(EXCHANGE_BOUND_SECONDS), exchange)
        .await
        .expect("the exchange finished within its bound")
}

#[tokio::test]
async fn a_proxy_answers_before_the_bank_does_anything() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"proxy_error_rate": 1.0, "seed": 9}))
        .await;
    let mut seen = BTreeSet::new();
    let mut keys = Vec::new();
    for _ in 0..40 {
        let key = new_key();
        let response = bank
            .post("/api/v1/authorizations", &key, &authorization_body(100))
            .await;
        let status = response.status().as_u16();
        assert!(PROXY_STATUSES.contains(&status), "{status}");
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        if status == 429 {
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
            assert_eq!(content_type, "application/json");
            let body: Value = response.json().await.expect("a JSON 429");
            assert_eq!(body["error"], "rate_limited", "{body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        } else {
            assert!(content_type.starts_with("text/html"), "{content_type}");
            let page = response.text().await.unwrap();
            assert!(
                page.starts_with("<html>") && page.contains(&status.to_string()),
                "{page}"
            );
            assert!(serde_json::from_str::<Value>(&page).is_err());
        }
        seen.insert(status);
        keys.push(key);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        PROXY_STATUSES,
        "the seed's forty draws meet every answer"
    );
    assert_eq!(bank.count("authorizations").await, 0, "nothing executed");
    assert_eq!(bank.count("idempotency_records").await, 0, "no key stored");
    assert_eq!(bank.balances(HAPPY_CARD.0).await, (1_000_000, 1_000_000));

    // Never on the operators' and testers' paths.
    for path in [
        "/health",
        "/metrics",
        "/docs/",
        "/admin/chaos",
        "/admin/ledger/verify",
    ] {
        assert_eq!(bank.get(path).await.status(), StatusCode::OK, "{path}");
    }

    // The same key, sent again once the proxy behaves, executes afresh.
    bank.put_chaos(json!({"proxy_error_rate": 0.0})).await;
    let retried = bank
        .post("/api/v1/authorizations", &keys[0], &authorization_body(100))
        .await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert!(retried.headers().get("X-Idempotent-Replayed").is_none());
    assert_eq!(bank.balances(HAPPY_CARD.0).await.1, 1_000_000 - 100);
    assert!(bank.ledger_verifies().await);
}

#[tokio::test]
async fn one_seed_gives_one_sequence_of_proxy_answers() {
    let bank = spawn_bank().await;
    let unknown = format!("/api/v1/authorizations/auth_{}", uuid::Uuid::new_v4());
    let run = async |seed: u64| {
        bank.put_chaos(json!({"seed": seed, "proxy_error_rate": 0.5}))
            .await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(bank.get(&unknown).await.status().as_u16());
        }
        statuses
    };
    let first = run(42).await;
    let second = run(42).await;
    let other = run(43).await;
    assert_eq!(first, second);
    assert_ne!(first, other);
    assert!(first.contains(&404), "{first:?}");
    let proxied: BTreeSet<u16> = first.iter().copied().filter(|s| *s != 404).collect();
    assert!(proxied.len() > 1, "the seed picks among answers: {first:?}");
    assert!(proxied.iter().all(|s| PROXY_STATUSES.contains(s)));
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_but_the_operation_committed() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"truncate_rate": 1.0})).await;
    let key = new_key();
    let client = fresh_client();
    let response = bounded(
        client
            .post(bank.url("/api/v1/authorizations"))
            .header("Idempotency-Key", &key)
            .json(&authorization_body(900))
            .send(),
    )
    .await
    .expect("the head arrives");
    assert_eq!(response.status(), StatusCode::OK);
    let announced_bytes: usize = response.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (received, error) = bounded(read_until_error(response)).await;
    let error = error.expect("reading the body fails");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(
        !received.is_empty() && received.len() < announced_bytes,
        "part of the body, {} of {announced_bytes} bytes",
        received.len()
    );
    assert_eq!(bank.count("authorizations").await, 1, "committed");

    // The retry with the same key replays the whole answer; money moved once.
    bank.put_chaos(json!({"truncate_rate": 0.0})).await;
    let retried = bank
        .post("/api/v1/authorizations", &key, &authorization_body(900))
        .await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(retried.headers()["X-Idempotent-Replayed"], "true");
    let replay = retried.bytes().await.unwrap();
    assert_eq!(
        replay.len(),
        announced_bytes,
        "the announced length was real"
    );
    assert!(
        replay.starts_with(&received),
        "the part was the start of it"
    );
    assert_eq!(bank.count("authorizations").await, 1);
    assert_eq!(bank.balances(HAPPY_CARD.0).await, (1_000_000, 999_100));
    assert!(bank.ledger_verifies().await);

    // A capture cut short, likewise, is done once.
    let authorization: Value = serde_json::from_slice(&replay).unwrap();
    let authorization_id = authorization["authorization_id"].as_str().unwrap();
    bank.put_chaos(json!({"truncate_rate": 1.0})).await;
    let capture_key = new_key();
    let capture = json!({"authorization_id": authorization_id, "amount": 900});
    let cut = bounded(
        fresh_client()
            .post(bank.url("/api/v1/captures"))
            .header("Idempotency-Key", &capture_key)
            .json(&capture)
            .send(),
    )
    .await
    .expect("the head arrives");
    assert!(cut.bytes().await.is_err(), "a cut body cannot be read");
    bank.put_chaos(json!({"truncate_rate": 0.0})).await;
    let retried = bank.post("/api/v1/captures", &capture_key, &capture).await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(retried.headers()["X-Idempotent-Replayed"], "true");
    assert_eq!(bank.count("captures").await, 1);
    assert_eq!(bank.balances(HAPPY_CARD.0).await, (999_100, 999_100));
    assert!(bank.ledger_verifies().await);
}

/// The body's chunks until the stream fails or ends: what arrived, and the
/// error if it failed.
async fn read_until_error(mut response: reqwest::Response) -> (Vec<u8>, Option<reqwest::Error>) {
    let mut received = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => return (received, None),
            Err(error) => return (received, Some(error)),
        }
    }
}

#[tokio::test]
async fn a_trickled_body_arrives_whole_and_the_operation_committed() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"trickle_rate": 1.0, "trickle_ms": 300}))
        .await;
    let key = new_key();
    let mut response = bounded(
        bank.client
            .post(bank.url("/api/v1/authorizations"))
            .header("Idempotency-Key", &key)
            .json(&authorization_body(400))
            .send(),
    )
    .await
    .expect("the head arrives");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = bounded(response.chunk()).await.expect("a whole body") {
        body.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert!(chunks > 1, "the body came in pieces");
    let authorization: Value = serde_json::from_slice(&body).expect("complete JSON");
    assert_eq!(authorization["status"], "approved");
    assert_eq!(bank.count("authorizations").await, 1);

    bank.put_chaos(json!({"trickle_rate": 0.0})).await;
    let retried = bank
        .post("/api/v1/authorizations", &key, &authorization_body(400))
        .await;
    assert_eq!(retried.headers()["X-Idempotent-Replayed"], "true");
    assert_eq!(retried.bytes().await.unwrap(), body, "the same answer");
    assert_eq!(bank.count("authorizations").await, 1);
    assert_eq!(bank.balances(HAPPY_CARD.0).await.1, 1_000_000 - 400);
    assert!(bank.ledger_verifies().await);
}

#[tokio::test]
async fn network_faults_spare_health_docs_metrics_and_admin() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({
        "proxy_error_rate": 1.0, "truncate_rate": 1.0,
        "trickle_rate": 1.0, "trickle_ms": 60_000
    }))
    .await;
    for path in [
        "/health",
        "/metrics",
        "/docs/",
        "/admin/chaos",
        "/admin/ledger/verify",
        "/admin/accounts/4111111111111111",
    ] {
        let response = bounded(bank.client.get(bank.url(path)).send())
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        bounded(response.bytes()).await.expect("a whole body");
    }
    let response = bank
        .open_account(&json!({
            "card_number": "4000056655665556", "cvv": "123",
            "expiry_month": 1, "expiry_year": 2031, "balance": 5
        }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.expect("a whole JSON body");
}

#[tokio::test]
async fn network_fault_settings_default_to_off_and_are_validated() {
    let bank = spawn_bank().await;
    let defaults: Value = bank.get("/admin/chaos").await.json().await.unwrap();
    assert_eq!(defaults["proxy_error_rate"], 0.0);
    assert_eq!(defaults["truncate_rate"], 0.0);
    assert_eq!(defaults["trickle_rate"], 0.0);
    assert_eq!(defaults["trickle_ms"], 5_000);

    for bad in [
        json!({"proxy_error_rate": 1.5}),
        json!({"proxy_error_rate": -0.1}),
        json!({"truncate_rate": 2}),
        json!({"truncate_rate": -1}),
        json!({"trickle_rate": 1.01}),
        json!({"trickle_rate": "often"}),
        json!({"trickle_ms": -5}),
        json!({"trickle_ms": 1.5}),
        // One bad field refuses the whole update.
        json!({"proxy_error_rate": 0.5, "truncate_rate": 7}),
    ] {
        let response = bank
            .client
            .put(bank.url("/admin/chaos"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let unchanged: Value = bank.get("/admin/chaos").await.json().await.unwrap();
    assert_eq!(unchanged, defaults, "a refused update changes nothing");

    let changed = bank
        .put_chaos(json!({"proxy_error_rate": 0.25, "trickle_ms": 1_000}))
        .await;
    assert_eq!(changed["proxy_error_rate"], 0.25);
    assert_eq!(changed["trickle_ms"], 1_000);
    assert_eq!(changed["truncate_rate"], 0.0, "only what was sent changes");
    assert_eq!(changed["failure_rate"], defaults["failure_rate"]);
    let changed = bank
        .put_chaos(json!({"truncate_rate": 1, "trickle_rate": 0}))
        .await;
    assert_eq!(changed["truncate_rate"], 1.0);
    assert_eq!(changed["proxy_error_rate"], 0.25);
    let shown: Value = bank.get("/admin/chaos").await.json().await.unwrap();
    assert_eq!(shown, changed);
}

#[tokio::test]
async fn network_fault_settings_come_from_the_start_up_settings() {
    let bank = spawn_bank_with(|s| {
        s.proxy_error_rate = 0.5;
        s.truncate_rate = 0.25;
        s.trickle_rate = 0.125;
        s.trickle_ms = 750;
    })
    .await;
    let shown: Value = bank.get("/admin/chaos").await.json().await.unwrap();
    assert_eq!(shown["proxy_error_rate"], 0.5);
    assert_eq!(shown["truncate_rate"], 0.25);
    assert_eq!(shown["trickle_rate"], 0.125);
    assert_eq!(shown["trickle_ms"], 750);
}

#[tokio::test]
async fn network_faults_are_counted_in_metrics() {
    let bank = spawn_bank().await;
    bank.put_chaos(json!({"proxy_error_rate": 1.0, "seed": 1}))
        .await;
    let proxied = bank.authorize(HAPPY_CARD, 100).await.status().as_u16();
    bank.put_chaos(json!({
        "proxy_error_rate": 0.0, "truncate_rate": 1.0,
        "trickle_rate": 1.0, "trickle_ms": 10
    }))
    .await;
    let cut = bounded(fresh_client().get(bank.url("/api/v1/voids/void_x")).send())
        .await
        .expect("the head arrives");
    assert_eq!(cut.status(), StatusCode::NOT_FOUND, "any answer can be cut");
    assert!(bounded(cut.bytes()).await.is_err());
    let metrics = bank.get("/metrics").await.text().await.unwrap();
    for kind in [
        format!("proxy_{proxied}"),
        "truncate".to_owned(),
        "trickle".to_owned(),
    ] {
        assert!(
            metrics.contains(&format!("bank_chaos_faults_total{{kind=\"{kind}\"}}")),
            "{kind}: {metrics}"
        );
    }
}
