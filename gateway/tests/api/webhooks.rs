//! Webhooks through HTTP: endpoints registered through the API, events
//! made by real payments against the real mock bank, delivered to a real
//! receiver (wiremock) that checks every signature the way a merchant's
//! Standard Webhooks library does.

use std::time::{Duration, Instant};

use gateway::webhooks::signature::{self, SigningSecret};
use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// How long a test waits for deliveries, at most (not a timing target:
/// deliveries here take milliseconds).
const BOUND: Duration = Duration::from_secs(20);

/// A gateway whose retry schedule is `schedule_ms` and whose workers look
/// every 20 ms; attempts time out after `timeout_ms`.
async fn webhook_app(schedule_ms: &[u64], timeout_ms: u64) -> TestApp {
    let schedule = schedule_ms.to_vec();
    spawn_app_with(Options {
        gateway: Some(Box::new(move |s| {
            s.webhook_retry_schedule_ms = schedule;
            s.webhook_poll_interval_ms = 20;
            s.webhook_timeout_ms = timeout_ms;
        })),
        ..Options::default()
    })
    .await
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    timestamp: i64,
    signature: String,
    raw: Vec<u8>,
    body: Value,
}

impl Delivery {
    fn verifies_with(&self, secret: &SigningSecret) -> bool {
        let now = chrono::Utc::now().timestamp();
        signature::verify(
            secret,
            &self.signature,
            &self.id,
            self.timestamp,
            &self.raw,
            now,
            signature::DEFAULT_TOLERANCE_SECONDS,
        )
        .is_ok()
    }
}

async fn deliveries(receiver: &MockServer) -> Vec<Delivery> {
    let header = |r: &wiremock::Request, name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    receiver
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| Delivery {
            id: header(r, "webhook-id"),
            timestamp: header(r, "webhook-timestamp").parse().unwrap_or(0),
            signature: header(r, "webhook-signature"),
            raw: r.body.clone(),
            body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        })
        .collect()
}

/// Waits (bounded) until `done` holds for what the receiver got.
async fn until(receiver: &MockServer, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
    let started = Instant::now();
    loop {
        let got = deliveries(receiver).await;
        if done(&got) {
            return got;
        }
        assert!(
            started.elapsed() < BOUND,
            "the receiver got only {} deliveries: {:?}",
            got.len(),
            got.iter().map(|d| &d.body["type"]).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn receiver_answering(status: u16) -> MockServer {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(status))
        .mount(&receiver)
        .await;
    receiver
}

impl TestApp {
    /// POSTs `body` under a new Idempotency-Key.
    async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", new_key())
            .json(body)
            .send()
            .await
            .expect("POST answered")
    }

    /// Registers `url`; the endpoint and its secret.
    async fn register(&self, url: &str, types: Option<&[&str]>) -> (Value, SigningSecret) {
        let mut body = json!({"url": url});
        if let Some(types) = types {
            body["event_types"] = json!(types);
        }
        let response = self.post_json("/v1/webhook_endpoints", &body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let endpoint: Value = response.json().await.unwrap();
        let secret = SigningSecret::parse(endpoint["secret"].as_str().unwrap()).unwrap();
        (endpoint, secret)
    }

    /// Authorizes a payment of `amount`; the id of its event of type `kind`.
    async fn event_of_new_payment(&self, amount: i64, kind: &str) -> String {
        let payment: Value = self
            .create_payment(HAPPY_CARD, amount)
            .await
            .json()
            .await
            .unwrap();
        self.json_of(&format!(
            "/v1/events?type={kind}&payment_id={}",
            payment["id"].as_str().unwrap()
        ))
        .await["data"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn json_of(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }
}

fn types<'a>(bodies: impl IntoIterator<Item = &'a Value>) -> Vec<&'a str> {
    bodies
        .into_iter()
        .map(|body| body["type"].as_str().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn endpoints_are_registered_listed_and_their_secret_shown_once() {
    let app = webhook_app(&[100], 1_000).await;
    let (endpoint, secret) = app
        .register("http://127.0.0.1:9/hooks", Some(&["payment.captured"]))
        .await;
    assert!(endpoint["id"].as_str().unwrap().starts_with("we_"));
    assert_eq!(endpoint["status"], "enabled");
    assert_eq!(endpoint["event_types"], json!(["payment.captured"]));
    assert!(secret.to_whsec().starts_with("whsec_"));

    let id = endpoint["id"].as_str().unwrap();
    let read = app.json_of(&format!("/v1/webhook_endpoints/{id}")).await;
    assert!(read.get("secret").is_none(), "{read}");
    let list = app.json_of("/v1/webhook_endpoints").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["data"][0].get("secret").is_none());

    let disabled: Value = app
        .post_json(&format!("/v1/webhook_endpoints/{id}/disable"), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&disabled["status"], &disabled["disabled_reason"]),
        (&json!("disabled"), &json!("merchant"))
    );
    let enabled: Value = app
        .post_json(&format!("/v1/webhook_endpoints/{id}/enable"), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(enabled["status"], "enabled");

    let deleted = app
        .client
        .delete(app.url(&format!("/v1/webhook_endpoints/{id}")))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let gone = app.get(&format!("/v1/webhook_endpoints/{id}")).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    // Another merchant sees none of it.
    let other = create_key(&app.pool, "otherco").await;
    let (endpoint, _) = app.register("http://127.0.0.1:9/x", None).await;
    let id = endpoint["id"].as_str().unwrap();
    let foreign = app
        .get_as(&other, &format!("/v1/webhook_endpoints/{id}"))
        .await;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_endpoints_are_refused_with_the_field_and_the_reason() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s| s.webhook_allow_private_urls = false)),
        ..Options::default()
    })
    .await;
    let long = format!("https://example.com/{}", "a".repeat(2_100));
    for (body, why) in [
        (json!({"url": "http://example.com/hooks"}), "https"),
        (json!({"url": "https://127.0.0.1/hooks"}), "private"),
        (json!({"url": "https://169.254.169.254/latest"}), "private"),
        (json!({"url": "https://localhost/hooks"}), "private"),
        (json!({"url": "https://user:pw@example.com/"}), "password"),
        (json!({"url": long}), "2048"),
        // Under the limit as sent, three times over it once parsed: a
        // space is stored as %20.
        (
            json!({"url": format!("https://example.com/{}", "a b".repeat(600))}),
            "2048",
        ),
        (json!({"url": "not a url"}), "absolute"),
        (json!({}), "required"),
        (
            json!({"url": "https://example.com/", "event_types": ["payment.bogus"]}),
            "unknown event type",
        ),
        (
            json!({"url": "https://example.com/", "event_types": []}),
            "array of 1",
        ),
        (
            json!({"url": "https://example.com/", "secret": "mine"}),
            "not a known parameter",
        ),
    ] {
        let response = app.post_json("/v1/webhook_endpoints", &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{body}: {message}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    for _ in 0..16 {
        let response = app
            .post_json(
                "/v1/webhook_endpoints",
                &json!({"url": "https://example.com/"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let over = app
        .post_json(
            "/v1/webhook_endpoints",
            &json!({"url": "https://example.com/"}),
        )
        .await;
    assert_eq!(over.status(), StatusCode::BAD_REQUEST);
    let error: Value = over.json().await.unwrap();
    assert_eq!(error["error"]["code"], "endpoint_limit_reached");
}

/// Two registrations at once with room for one: one gets in. Both wait for
/// the merchant's row; the second must count the endpoint the first added
/// while it waited (a count taken in the statement that waited for the lock
/// reads its older snapshot, and both got in: 17 endpoints).
#[tokio::test]
async fn two_registrations_at_once_with_room_for_one_leave_the_merchant_at_its_limit() {
    let app = spawn_app().await;
    let endpoint = json!({"url": "https://example.com/"});
    let register = || app.post_json("/v1/webhook_endpoints", &endpoint);
    for _ in 0..15 {
        assert_eq!(register().await.status(), StatusCode::CREATED);
    }
    let mut merchants = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM merchants FOR UPDATE")
        .execute(&mut *merchants)
        .await
        .unwrap();
    let (first, second, ()) = tokio::join!(register(), register(), async {
        let waited = throwaway_pg::until_sessions_wait_for_a_lock(&app.pool, 2, 1000)
            .await
            .unwrap();
        assert!(waited, "the two registrations never both waited");
        merchants.commit().await.unwrap();
    });
    let mut statuses = [first.status(), second.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::BAD_REQUEST]);
    let endpoints: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE status <> 'deleted'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(endpoints, 16);
}

/// The same registration sent twice at once under one key, with room for
/// one more endpoint: the second waits for the first and is answered as
/// it was, not refused for the endpoint the first just made.
#[tokio::test]
async fn one_registration_sent_twice_at_once_under_one_key_is_one_endpoint() {
    let app = webhook_app(&[100], 1_000).await;
    let endpoint = json!({"url": "https://example.com/"});
    for _ in 0..15 {
        let response = app.post_json("/v1/webhook_endpoints", &endpoint).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let key = new_key();
    let register = || {
        app.client
            .post(app.url("/v1/webhook_endpoints"))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", &key)
            .json(&endpoint)
            .send()
    };
    let mut merchants = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM merchants FOR UPDATE")
        .execute(&mut *merchants)
        .await
        .unwrap();
    let (first, second, ()) = tokio::join!(register(), register(), async {
        let waited = throwaway_pg::until_sessions_wait_for_a_lock(&app.pool, 2, 1000)
            .await
            .unwrap();
        assert!(waited, "the two registrations never both waited");
        merchants.commit().await.unwrap();
    });
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(second.status(), StatusCode::CREATED);
    let (first, second): (Value, Value) =
        (first.json().await.unwrap(), second.json().await.unwrap());
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["secret"], second["secret"]);
}

#[tokio::test]
async fn every_change_is_delivered_signed_and_in_sequence() {
    let app = webhook_app(&[100], 2_000).await;
    let receiver = receiver_answering(200).await;
    let (_, secret) = app.register(&receiver.uri(), None).await;

    let payment: Value = app
        .create_payment(HAPPY_CARD, 2_500)
        .await
        .json()
        .await
        .unwrap();
    let id = payment["id"].as_str().unwrap();
    for step in ["capture", "refund"] {
        let response = app
            .post(&format!("/v1/payments/{id}/{step}"), &new_key(), &json!({}))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{step}");
    }
    let got = until(&receiver, |got| got.len() >= 6).await;

    let mut by_sequence = got.clone();
    by_sequence.sort_by_key(|d| d.body["data"]["sequence"].as_i64());
    assert_eq!(
        types(by_sequence.iter().map(|d| &d.body)),
        [
            "payment.created",
            "payment.authorized",
            "payment.capture_requested",
            "payment.captured",
            "payment.refund_requested",
            "payment.refunded"
        ]
    );
    let final_view: Value = app.json_of(&format!("/v1/payments/{id}")).await;
    for (n, delivery) in by_sequence.iter().enumerate() {
        assert!(delivery.verifies_with(&secret), "{}", delivery.id);
        assert_eq!(delivery.body["id"], delivery.id.as_str());
        assert_eq!(delivery.body["data"]["sequence"], n + 1);
        let snapshot = &delivery.body["data"]["payment"];
        assert_eq!(snapshot["id"], id);
        // The snapshot's history ends with the change the event is about.
        let history = snapshot["history"].as_array().unwrap();
        assert_eq!(history.len(), n + 1);
        assert_eq!(history, &final_view["history"].as_array().unwrap()[..=n]);
        assert_eq!(snapshot["status"], history[n]["status"]);
        // The feed serves the very bytes that were delivered.
        let served = app
            .get(&format!("/v1/events/{}", delivery.id))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(served.as_ref(), delivery.raw.as_slice());
    }
    assert_eq!(
        by_sequence[3].body["data"]["payment"]["bank"]["capture_id"],
        final_view["bank"]["capture_id"]
    );
    assert_eq!(by_sequence[3].body["data"]["previous_status"], "capturing");
    assert_eq!(by_sequence[0].body["data"]["previous_status"], Value::Null);

    let wrong = SigningSecret::from_bytes(vec![1; 32]);
    assert!(!got[0].verifies_with(&wrong));
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_the_same_id_and_every_attempt_is_kept() {
    let app = webhook_app(&[50, 50, 50, 50], 2_000).await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("not now"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&receiver)
        .await;
    let (_, secret) = app
        .register(&receiver.uri(), Some(&["payment.created"]))
        .await;
    app.create_payment(HAPPY_CARD, 700).await;
    let got = until(&receiver, |got| got.len() >= 3).await;
    assert_eq!(got.len(), 3, "one delivery, three attempts");
    assert!(got.iter().all(|d| d.id == got[0].id), "the same webhook-id");
    assert!(got.iter().all(|d| d.raw == got[0].raw), "the same body");
    assert!(got.iter().all(|d| d.verifies_with(&secret)));

    let started = Instant::now();
    let deliveries = loop {
        let list = app
            .json_of(&format!("/v1/events/{}/deliveries", got[0].id))
            .await;
        if list["data"][0]["status"] == "delivered" || started.elapsed() > BOUND {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivery = &deliveries["data"][0];
    assert_eq!(delivery["status"], "delivered", "{deliveries}");
    let attempts = delivery["attempts"].as_array().unwrap();
    let statuses: Vec<&Value> = attempts.iter().map(|a| &a["response_status"]).collect();
    assert_eq!(statuses, [&json!(500), &json!(500), &json!(204)]);
    assert_eq!(attempts[0]["response_body"], "not now");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[2]["attempt"], 3);
}

/// Any three-digit status is an answer to record: a receiver answering
/// 999 (HTTP allows it, and some do) has its attempts counted and backed
/// off like any failure. The table once refused it, and the delivery was
/// sent again every lease, for ever, with no attempt recorded.
#[tokio::test]
async fn a_receiver_answering_an_unusual_status_has_its_attempts_recorded() {
    // Two attempts, then a long wait: nothing gives up (the give-up counter
    // is the process's, and another test counts its own).
    let app = webhook_app(&[50, 600_000], 2_000).await;
    let receiver = receiver_answering(999).await;
    app.register(&receiver.uri(), Some(&["payment.created"]))
        .await;
    app.create_payment(HAPPY_CARD, 700).await;
    let got = until(&receiver, |got| !got.is_empty()).await;

    let started = Instant::now();
    let delivery = loop {
        let list = app
            .json_of(&format!("/v1/events/{}/deliveries", got[0].id))
            .await;
        let attempts = list["data"][0]["attempts"].as_array().map_or(0, Vec::len);
        if attempts >= 2 || started.elapsed() > BOUND {
            break list["data"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let statuses: Vec<&Value> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["response_status"])
        .collect();
    assert_eq!(statuses, [&json!(999), &json!(999)], "{delivery}");
    assert_eq!(delivery["status"], "pending", "{delivery}");
}

/// A resend asked for while an attempt is in flight is not undone when
/// that attempt then fails: the delivery is due now, not at the attempt's
/// next step (ten minutes here; on the last step, given up and its
/// endpoint disabled).
#[tokio::test]
async fn a_resend_during_an_attempt_that_then_fails_is_sent_at_once() {
    let app = webhook_app(&[600_000], 5_000).await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_delay(Duration::from_millis(1_500)))
        .mount(&receiver)
        .await;
    app.register(&receiver.uri(), Some(&["payment.created"]))
        .await;
    app.create_payment(HAPPY_CARD, 700).await;
    let got = until(&receiver, |got| !got.is_empty()).await;
    let resent = app
        .post_json(&format!("/v1/events/{}/resend", got[0].id), &json!({}))
        .await;
    assert_eq!(resent.status(), StatusCode::ACCEPTED);
    let again = until(&receiver, |got| got.len() >= 2).await;
    assert_eq!(again[1].id, got[0].id);
}

#[tokio::test]
async fn a_receiver_failing_the_whole_schedule_is_disabled_until_enabled_again() {
    let app = webhook_app(&[20, 20], 2_000).await;
    let receiver = receiver_answering(503).await;
    let (endpoint, _) = app
        .register(&receiver.uri(), Some(&["payment.created"]))
        .await;
    let id = endpoint["id"].as_str().unwrap();
    let payment: Value = app
        .create_payment(HAPPY_CARD, 300)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(payment["status"], "authorized", "payments go on meanwhile");
    let got = until(&receiver, |got| got.len() >= 3).await;
    let started = Instant::now();
    let disabled = loop {
        let read = app.json_of(&format!("/v1/webhook_endpoints/{id}")).await;
        if read["status"] == "disabled" || started.elapsed() > BOUND {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(disabled["status"], "disabled");
    assert_eq!(disabled["disabled_reason"], "failing");
    let deliveries = app
        .json_of(&format!("/v1/events/{}/deliveries", got[0].id))
        .await;
    assert_eq!(deliveries["data"][0]["status"], "failed");
    assert_eq!(
        deliveries["data"][0]["attempts"].as_array().unwrap().len(),
        3
    );
    let metrics = app
        .client
        .get(app.operator_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_webhook_deliveries_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );

    // Events made while it is disabled are not queued for it; the feed has
    // them. Enabled again and re-sent, the failed one arrives.
    receiver.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    app.create_payment(HAPPY_CARD, 301).await;
    app.post_json(&format!("/v1/webhook_endpoints/{id}/enable"), &json!({}))
        .await;
    let resent = app
        .post_json(&format!("/v1/events/{}/resend", got[0].id), &json!({}))
        .await;
    assert_eq!(resent.status(), StatusCode::ACCEPTED);
    let again = until(&receiver, |got| !got.is_empty()).await;
    assert_eq!(again[0].id, got[0].id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deliveries_count(&receiver).await,
        1,
        "nothing else was queued"
    );
}

async fn deliveries_count(receiver: &MockServer) -> usize {
    deliveries(receiver).await.len()
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_during_its_grace() {
    let app = webhook_app(&[100], 2_000).await;
    let receiver = receiver_answering(200).await;
    let (endpoint, old) = app
        .register(&receiver.uri(), Some(&["payment.created"]))
        .await;
    let id = endpoint["id"].as_str().unwrap();
    let rotated: Value = app
        .post_json(
            &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
            &json!({"grace_seconds": 3600}),
        )
        .await
        .json()
        .await
        .unwrap();
    let new = SigningSecret::parse(rotated["secret"].as_str().unwrap()).unwrap();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires_at"].is_string());
    app.create_payment(HAPPY_CARD, 100).await;
    let got = until(&receiver, |got| !got.is_empty()).await;
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{}",
        got[0].signature
    );
    assert!(got[0].verifies_with(&new));
    assert!(got[0].verifies_with(&old));

    // With no grace, the old secret stops signing at once.
    let rotated: Value = app
        .post_json(
            &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
            &json!({"grace_seconds": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let newest = SigningSecret::parse(rotated["secret"].as_str().unwrap()).unwrap();
    app.create_payment(HAPPY_CARD, 101).await;
    let got = until(&receiver, |got| got.len() >= 2).await;
    assert_eq!(got[1].signature.split(' ').count(), 1);
    assert!(got[1].verifies_with(&newest));
    assert!(!got[1].verifies_with(&new));

    let bad = app
        .post_json(
            &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
            &json!({"grace_seconds": 8 * 86_400}),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_events_feed_filters_pages_and_keeps_merchants_apart() {
    let app = webhook_app(&[100], 2_000).await;
    let first: Value = app
        .create_payment(HAPPY_CARD, 100)
        .await
        .json()
        .await
        .unwrap();
    let id = first["id"].as_str().unwrap();
    app.post(&format!("/v1/payments/{id}/void"), &new_key(), &json!({}))
        .await;
    app.create_payment(HAPPY_CARD, 200).await;

    let all = app.json_of("/v1/events?limit=100").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 6);
    let of_first = app.json_of(&format!("/v1/events?payment_id={id}")).await;
    assert_eq!(
        types(of_first["data"].as_array().unwrap().iter().rev()),
        [
            "payment.created",
            "payment.authorized",
            "payment.void_requested",
            "payment.voided"
        ]
    );
    let voided = app.json_of("/v1/events?type=payment.voided").await;
    assert_eq!(voided["data"].as_array().unwrap().len(), 1);
    // Every shape of the statement: filters together and with a cursor.
    let last_of_first = of_first["data"][0]["id"].as_str().unwrap();
    let older = app
        .json_of(&format!(
            "/v1/events?payment_id={id}&starting_after={last_of_first}"
        ))
        .await;
    assert_eq!(
        types(older["data"].as_array().unwrap().iter().rev()),
        [
            "payment.created",
            "payment.authorized",
            "payment.void_requested"
        ]
    );
    for (query, expected) in [
        (format!("payment_id={id}&type=payment.authorized"), 1),
        (
            format!("payment_id={id}&type=payment.voided&starting_after={last_of_first}"),
            0,
        ),
        (
            format!("type=payment.created&starting_after={last_of_first}"),
            1,
        ),
    ] {
        let page = app.json_of(&format!("/v1/events?{query}")).await;
        assert_eq!(page["data"].as_array().unwrap().len(), expected, "{query}");
    }

    let page = app.json_of("/v1/events?limit=4").await;
    assert_eq!(page["has_more"], true);
    let last = page["data"][3]["id"].as_str().unwrap();
    let next = app
        .json_of(&format!("/v1/events?limit=4&starting_after={last}"))
        .await;
    assert_eq!(next["has_more"], false);
    assert_eq!(next["data"].as_array().unwrap().len(), 2);

    for query in [
        "type=payment.bogus",
        "payment_id=nope",
        "limit=0",
        "starting_after=evt_x",
    ] {
        let response = app.get(&format!("/v1/events?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    let other = create_key(&app.pool, "otherco").await;
    let theirs: Value = app.get_as(&other, "/v1/events").await.json().await.unwrap();
    assert_eq!(theirs["data"], json!([]));
    let event = all["data"][0]["id"].as_str().unwrap();
    let foreign = app.get_as(&other, &format!("/v1/events/{event}")).await;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn hostile_receivers_cost_an_attempt_and_never_a_payment() {
    let app = webhook_app(&[60_000], 300).await;
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&slow)
        .await;
    let huge = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_bytes(vec![b'x'; 4 * 1024 * 1024]))
        .mount(&huge)
        .await;
    let target = receiver_answering(200).await;
    let redirecting = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(307).insert_header("location", format!("{}/x", target.uri())),
        )
        .mount(&redirecting)
        .await;
    for receiver in [&slow, &huge, &redirecting] {
        app.register(&receiver.uri(), Some(&["payment.authorized"]))
            .await;
    }

    let event = app.event_of_new_payment(900, "payment.authorized").await;
    let started = Instant::now();
    let attempts = loop {
        let list = app.json_of(&format!("/v1/events/{event}/deliveries")).await;
        let tried = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| !d["attempts"].as_array().unwrap().is_empty())
            .count();
        if tried == 3 || started.elapsed() > BOUND {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut errors = Vec::new();
    for delivery in attempts["data"].as_array().unwrap() {
        let attempt = &delivery["attempts"][0];
        assert_eq!(delivery["status"], "pending", "retried later: {delivery}");
        if let Some(body) = attempt["response_body"].as_str() {
            assert!(body.len() <= 1024, "kept {} bytes", body.len());
        }
        errors.push((attempt["response_status"].clone(), attempt["error"].clone()));
    }
    errors.sort_by_key(|e| e.0.to_string());
    assert!(errors.contains(&(json!(307), Value::Null)), "{errors:?}");
    assert!(errors.contains(&(json!(500), Value::Null)), "{errors:?}");
    assert!(
        errors.contains(&(Value::Null, json!("timed out"))),
        "{errors:?}"
    );
    assert_eq!(
        deliveries_count(&target).await,
        0,
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn a_flagged_operation_is_published_once() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s| {
            s.recovery_flag_after_seconds = 0;
            s.bank_attempt_timeout_ms = 300;
            s.bank_deadline_ms = 300;
            s.recovery_interval_ms = 50;
            s.webhook_poll_interval_ms = 20;
        })),
        proxy: true,
        ..Options::default()
    })
    .await;
    let receiver = receiver_answering(200).await;
    app.register(&receiver.uri(), Some(&["payment.flagged"]))
        .await;
    // Every answer from the bank is lost: the authorization stays unknown.
    let proxy = app.proxy.as_ref().unwrap();
    proxy.inject(
        "POST",
        "/api/v1/authorizations",
        10_000,
        bank_tap::Fault::After(bank_tap::Canned::html(502)),
    );
    let response = app.create_payment(HAPPY_CARD, 400).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let payment: Value = response.json().await.unwrap();
    let got = until(&receiver, |got| !got.is_empty()).await;
    assert_eq!(got[0].body["type"], "payment.flagged");
    assert_eq!(got[0].body["data"]["flag"]["operation"], "authorize");
    assert_eq!(got[0].body["data"]["payment"]["id"], payment["id"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(deliveries_count(&receiver).await, 1, "flagged once");
}

/// The outbox through a `kill -9`: changes committed while the receiver is
/// down, the process killed before it could deliver them, a new process on
/// the same database delivers every one, signed with the same secret; and
/// `gateway webhooks resend` sends one again.
#[tokio::test]
async fn no_event_is_lost_when_the_gateway_dies_between_a_change_and_its_delivery() {
    use crate::crash::harness::{Rig, SERIAL, payment};
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(None, None).await;
    rig.set_chaos(
        json!({"min_latency_ms": 0, "max_latency_ms": 0, "timeout_rate": 0.0,
        "failure_rate": 0.0, "outage_seconds": 0}),
    )
    .await;
    let receiver = receiver_answering(503).await;
    let key = gateway::idempotency::Secret::random();
    let schedule = vec!["100"; 100].join(",");
    let launch = rig
        .launch()
        .set("WEBHOOK_SECRET_KEY", key.expose())
        .set("WEBHOOK_ALLOW_PRIVATE_URLS", "true")
        .set("WEBHOOK_RETRY_SCHEDULE_MS", schedule)
        .set("WEBHOOK_POLL_INTERVAL_MS", 20);
    let mut first = launch.start().await;
    let registered: Value = rig
        .client
        .post(format!("{}/v1/webhook_endpoints", first.base()))
        .bearer_auth(&rig.api_key)
        .header("Idempotency-Key", new_key())
        .json(&json!({"url": receiver.uri()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = SigningSecret::parse(registered["secret"].as_str().unwrap()).unwrap();
    for n in 0..5 {
        let answer = rig
            .post(
                &first.base(),
                "/v1/payments",
                &new_key(),
                &payment(HAPPY_CARD, 100, n),
            )
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
        let id = answer.body["id"].as_str().unwrap();
        let path = format!("/v1/payments/{id}/capture");
        let captured = rig.post(&first.base(), &path, &new_key(), &json!({})).await;
        assert_eq!(captured.unwrap().status, StatusCode::OK);
    }
    first.kill9().await;
    let made: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&rig.pool)
        .await
        .unwrap();
    assert_eq!(made.len(), 20, "four changes for each of five payments");

    receiver.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let second = launch.start().await;
    let expected: std::collections::BTreeSet<String> = made
        .iter()
        .map(|id| format!("evt_{}", id.hyphenated()))
        .collect();
    let got = until(&receiver, |got| {
        let ids: std::collections::BTreeSet<&str> = got.iter().map(|d| d.id.as_str()).collect();
        expected.iter().all(|id| ids.contains(id.as_str()))
    })
    .await;
    for delivery in &got {
        assert!(
            expected.contains(&delivery.id),
            "an event that was never made"
        );
        assert!(delivery.verifies_with(&secret), "{}", delivery.id);
    }

    let event = expected.iter().next().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "webhooks",
            "resend",
            event,
            "--database-url",
            &rig.database_url,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with(registered["id"].as_str().unwrap()),
        "{stdout}"
    );
    let before = got.iter().filter(|d| &d.id == event).count();
    until(&receiver, |got| {
        got.iter().filter(|d| &d.id == event).count() > before
    })
    .await;
    drop(second);
}

/// An endpoint at its in-flight limit is sent more as soon as an attempt
/// ends, not at the next poll: before, each poll took at most the limit
/// (4) for it, so one fast endpoint got 4 deliveries per poll interval and
/// a busy merchant's lag grew without bound.
#[tokio::test]
async fn a_fast_endpoint_is_not_held_to_its_limit_per_poll() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s| {
            s.webhook_retry_schedule_ms = vec![100];
            s.webhook_poll_interval_ms = 4_000;
            s.webhook_timeout_ms = 2_000;
        })),
        ..Options::default()
    })
    .await;
    let receiver = receiver_answering(200).await;
    app.register(&receiver.uri(), None).await;
    for amount in 1_000..1_008 {
        let response = app.create_payment(HAPPY_CARD, amount).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    // 8 payments, 16 events: the first poll finds them all due.
    until(&receiver, |got| !got.is_empty()).await;
    let first = Instant::now();
    until(&receiver, |got| got.len() >= 16).await;
    assert!(
        first.elapsed() < Duration::from_millis(3_000),
        "16 deliveries to one endpoint took {:?} after the first: held to the limit per poll",
        first.elapsed()
    );
}

/// One merchant's slow endpoints hold at most the merchant's share of a
/// process's attempts: another merchant's delivery goes while they are
/// all still in flight, not once one of them ends.
#[tokio::test]
async fn a_merchant_with_slow_endpoints_leaves_room_for_the_others() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s| {
            s.webhook_retry_schedule_ms = vec![600_000];
            s.webhook_poll_interval_ms = 20;
            s.webhook_timeout_ms = 60_000;
            s.webhook_max_in_flight = 4;
            s.webhook_max_in_flight_per_endpoint = 2;
            s.webhook_max_in_flight_per_merchant = 2;
        })),
        ..Options::default()
    })
    .await;
    // FicMart's two endpoints answer after a minute; enough payments to
    // keep both at their own limit (two each: the whole process's four).
    let tarpit = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(60)))
        .mount(&tarpit)
        .await;
    for path in ["/a", "/b"] {
        app.register(&format!("{}{path}", tarpit.uri()), None).await;
    }
    for amount in 101..104 {
        app.create_payment(HAPPY_CARD, amount).await;
    }
    until(&tarpit, |got| got.len() >= 2).await;

    let other = create_key(&app.pool, "otherco").await;
    let fast = receiver_answering(200).await;
    let registered = app
        .client
        .post(app.url("/v1/webhook_endpoints"))
        .bearer_auth(&other)
        .header("Idempotency-Key", new_key())
        .json(&json!({"url": fast.uri(), "event_types": ["payment.created"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let created = app
        .post_as(
            &other,
            "/v1/payments",
            &new_key(),
            &payment_body(HAPPY_CARD, 105, "ord_other", "cus_other"),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    // Within the bound, long before any of FicMart's attempts can end.
    until(&fast, |got| !got.is_empty()).await;
    assert_eq!(
        deliveries_count(&tarpit).await,
        2,
        "FicMart held its share only"
    );
}

/// Production endpoints are `https`: the delivery opens a TLS session with
/// the receiver (its first bytes are a TLS handshake record, 0x16), rather
/// than failing every attempt before connecting.
#[tokio::test]
async fn an_https_endpoint_is_called_over_tls() {
    use tokio::io::AsyncReadExt;

    let app = webhook_app(&[60_000], 2_000).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    app.register(
        &format!("https://127.0.0.1:{port}/hooks"),
        Some(&["payment.authorized"]),
    )
    .await;
    let response = app.create_payment(HAPPY_CARD, 700).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let (mut receiver, _) = tokio::time::timeout(BOUND, listener.accept())
        .await
        .expect("the gateway never connected to the https endpoint")
        .unwrap();
    let mut first = [0u8; 1];
    tokio::time::timeout(BOUND, receiver.read_exact(&mut first))
        .await
        .expect("the gateway sent nothing")
        .unwrap();
    assert_eq!(first[0], 0x16, "not a TLS handshake record");
}

/// An endpoint stored while private addresses were allowed (a staging
/// setup, the simulator) is not called by a gateway that refuses them: an
/// address literal never reaches the resolver's check, so every attempt
/// checks the URL again, and records why it did not call.
#[tokio::test]
async fn an_endpoint_at_a_private_address_is_not_called_once_they_are_refused() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s| {
            s.webhook_allow_private_urls = false;
            s.webhook_poll_interval_ms = 20;
        })),
        ..Options::default()
    })
    .await;
    let receiver = receiver_answering(200).await;
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, secret_salt) \
         SELECT $1, id, $2, $3 FROM merchants WHERE name = 'ficmart'",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(format!("{}/hooks", receiver.uri()))
    .bind(vec![7u8; 16])
    .execute(&app.pool)
    .await
    .unwrap();
    let created = app.event_of_new_payment(800, "payment.created").await;
    let started = Instant::now();
    let attempt = loop {
        let list = app
            .json_of(&format!("/v1/events/{created}/deliveries"))
            .await;
        if let Some(attempt) = list["data"][0]["attempts"].get(0) {
            break attempt.clone();
        }
        assert!(started.elapsed() < BOUND, "no attempt recorded: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = attempt["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("not called"), "{attempt}");
    assert_eq!(
        deliveries_count(&receiver).await,
        0,
        "the receiver was called"
    );
}

/// An endpoint deleted while an attempt is in flight ends its deliveries,
/// and the attempt, when it comes back, still records what the receiver
/// answered: the receiver took the event, so the delivery says delivered,
/// with its attempt, rather than failed with none.
#[tokio::test]
async fn an_attempt_in_flight_when_its_endpoint_is_deleted_is_kept() {
    let app = webhook_app(&[60_000], 10_000).await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&receiver)
        .await;
    let (endpoint, _) = app
        .register(&receiver.uri(), Some(&["payment.authorized"]))
        .await;
    let event = app.event_of_new_payment(650, "payment.authorized").await;
    until(&receiver, |got| got.len() == 1).await;
    let deleted = app
        .client
        .delete(app.url(&format!(
            "/v1/webhook_endpoints/{}",
            endpoint["id"].as_str().unwrap()
        )))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let started = Instant::now();
    let delivery = loop {
        let list = app.json_of(&format!("/v1/events/{event}/deliveries")).await;
        let delivery = list["data"][0].clone();
        if !delivery["attempts"].as_array().unwrap().is_empty() {
            break delivery;
        }
        assert!(
            started.elapsed() < BOUND,
            "the attempt was lost: {delivery}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        delivery["attempts"][0]["response_status"], 200,
        "{delivery}"
    );
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(deliveries_count(&receiver).await, 1);
}

/// The endpoint POSTs take an Idempotency-Key like every POST. A create
/// retried after a lost answer gets the same endpoint and the same secret
/// (not a second endpoint), a rotation retried does not rotate again (which
/// would end the first secret's grace), another request under a used key
/// is 422, and no key is 400. The stored answers hold no secret: a replay
/// makes it again from the salt kept beside the answer.
#[tokio::test]
async fn endpoint_posts_are_idempotent_and_their_stored_answers_hold_no_secret() {
    let app = webhook_app(&[100], 1_000).await;
    let keyed = |path: &str, key: &str, body: Value| {
        app.client
            .post(app.url(path))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let create = json!({"url": "http://127.0.0.1:9/hooks"});
    let key = new_key();
    let first = keyed("/v1/webhook_endpoints", &key, create.clone())
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = first.bytes().await.unwrap();
    let again = keyed("/v1/webhook_endpoints", &key, create.clone())
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["Idempotent-Replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), first, "the same bytes");
    let list = app.json_of("/v1/webhook_endpoints").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "one endpoint");
    let endpoint: Value = serde_json::from_slice(&first).unwrap();
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    assert!(SigningSecret::parse(&secret).is_some(), "{secret}");

    let other = keyed(
        "/v1/webhook_endpoints",
        &key,
        json!({"url": "http://127.0.0.1:9/other"}),
    )
    .await
    .unwrap();
    assert_error(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_error",
        "idempotency_key_reused",
    )
    .await;
    // No key is 400, and the key is asked for first, whatever else is
    // wrong: a client that forgot it hears that, not about its other
    // mistakes one at a time.
    let id = endpoint["id"].as_str().unwrap();
    for (path, body) in [
        ("/v1/webhook_endpoints".to_owned(), create.clone()),
        (
            "/v1/webhook_endpoints".to_owned(),
            json!({"url": "ftp://x"}),
        ),
        (
            format!("/v1/webhook_endpoints/{id}/rotate_secret"),
            json!({"grace_seconds": -1}),
        ),
        (
            "/v1/webhook_endpoints/we_nonsense/disable".to_owned(),
            json!({}),
        ),
        (
            "/v1/events/evt_nonsense/resend".to_owned(),
            json!({"endpoint_id": 7}),
        ),
    ] {
        let keyless = app
            .client
            .post(app.url(&path))
            .bearer_auth(&app.api_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(
            keyless,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_idempotency_key",
        )
        .await;
    }

    let rotate = format!("/v1/webhook_endpoints/{id}/rotate_secret");
    let rotation = new_key();
    let rotated = keyed(&rotate, &rotation, json!({})).await.unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated = rotated.bytes().await.unwrap();
    let retried = keyed(&rotate, &rotation, json!({})).await.unwrap();
    assert_eq!(retried.bytes().await.unwrap(), rotated, "not rotated again");
    let now = app.json_of(&format!("/v1/webhook_endpoints/{id}")).await;
    let rotated: Value = serde_json::from_slice(&rotated).unwrap();
    assert_eq!(
        now["previous_secret_expires_at"], rotated["previous_secret_expires_at"],
        "the first secret's grace stands"
    );
    assert_ne!(rotated["secret"], secret.as_str());

    let stored: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT response_body FROM idempotency_keys WHERE response_body IS NOT NULL",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let stored = String::from_utf8_lossy(&stored.concat()).into_owned();
    for shown in [secret.as_str(), rotated["secret"].as_str().unwrap()] {
        assert!(!stored.contains(shown), "a secret was stored");
    }
}
