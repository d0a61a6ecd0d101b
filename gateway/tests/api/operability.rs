//! What an operator sees: the Prometheus series they page on, after a
//! workload, and the real binary's log line for every `/v1` request.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::crash::harness::Launch;
use crate::helpers::*;

/// The values of the series `name` whose labels include every one of
/// `labels` (a sample line: `name{a="x",b="y"} 3`).
fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let has_all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            has_all.then(|| value.parse().ok()).flatten()
        })
        .collect()
}

/// The sum over the matching series; panics if there are none.
fn total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let values = samples(text, name, labels);
    assert!(
        !values.is_empty(),
        "no series {name} with {labels:?} in /metrics"
    );
    values.iter().sum()
}

#[tokio::test]
async fn the_series_an_operator_pages_on_are_exported_after_a_workload() {
    let app = spawn_app().await;
    // Half the bank's answers are 500s for a while: retries, and attempts
    // by result.
    app.set_bank_chaos(json!({"failure_rate": 0.5, "seed": 7}))
        .await;
    for _ in 0..6 {
        let response = app.create_payment(HAPPY_CARD, 100).await;
        assert!(
            response.status() == StatusCode::CREATED || response.status() == StatusCode::ACCEPTED
        );
    }
    app.set_bank_chaos(json!({"failure_rate": 0.0})).await;
    let payment = app.authorized(HAPPY_CARD, 300).await;
    let id = payment["id"].as_str().unwrap();
    assert_eq!(app.act(id, "capture").await.status(), StatusCode::OK);
    assert_eq!(
        app.create_payment(EMPTY_CARD, 100).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    // A replay, and a key reused with another request.
    let key = new_key();
    let body = payment_body(HAPPY_CARD, 200, "ord_m", "cus_m");
    assert_eq!(
        app.post("/v1/payments", &key, &body).await.status(),
        StatusCode::CREATED
    );
    let replay = app.post("/v1/payments", &key, &body).await;
    assert_eq!(replay.headers()["Idempotent-Replayed"], "true");
    let reused = payment_body(HAPPY_CARD, 201, "ord_m", "cus_m");
    assert_eq!(
        app.post("/v1/payments", &key, &reused).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.get(&format!("/v1/payments/{id}")).await.status(),
        StatusCode::OK
    );

    let scrape = app
        .client
        .get(app.operator_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), StatusCode::OK);
    let text = scrape.text().await.unwrap();

    // Requests by route and status, and their latency.
    let requests = "gateway_http_requests_total";
    let create = [("method", "POST"), ("route", "/v1/payments")];
    assert!(total(&text, requests, &[create[0], create[1], ("status", "201")]) >= 1.0);
    assert!(total(&text, requests, &[create[0], create[1], ("status", "402")]) >= 1.0);
    assert!(total(&text, requests, &[create[0], create[1], ("status", "422")]) >= 1.0);
    assert!(
        total(
            &text,
            requests,
            &[("route", "/v1/payments/{id}/capture"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        total(
            &text,
            requests,
            &[("route", "/v1/payments/{id}"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        !text.contains(&format!("route=\"/v1/payments/{id}")),
        "routes are patterns, never paths"
    );
    let latency = "gateway_http_request_duration_seconds_bucket";
    let all = total(&text, latency, &[("route", "/v1/payments"), ("le", "+Inf")]);
    let fast = total(
        &text,
        latency,
        &[("route", "/v1/payments"), ("le", "0.005")],
    );
    assert!(all >= 10.0 && fast <= all, "{fast} <= {all}");
    assert!(
        total(
            &text,
            "gateway_http_request_duration_seconds_count",
            &[("route", "/v1/payments")]
        ) >= 10.0
    );

    // Bank calls by outcome, attempts by result, retries.
    let calls = "gateway_bank_calls_total";
    assert!(
        total(
            &text,
            calls,
            &[("operation", "authorize"), ("outcome", "done")]
        ) >= 7.0
    );
    assert!(
        total(
            &text,
            calls,
            &[("operation", "authorize"), ("outcome", "refused")]
        ) >= 1.0
    );
    assert!(
        total(
            &text,
            calls,
            &[("operation", "capture"), ("outcome", "done")]
        ) >= 1.0
    );
    let attempts = "gateway_bank_attempts_total";
    assert!(
        total(
            &text,
            attempts,
            &[("operation", "authorize"), ("result", "ok")]
        ) >= 7.0
    );
    assert!(
        total(
            &text,
            attempts,
            &[("operation", "authorize"), ("result", "http_5xx")]
        ) >= 1.0
    );
    assert!(
        total(
            &text,
            "gateway_bank_retries_total",
            &[("operation", "authorize")]
        ) >= 1.0
    );
    assert!(total(&text, "gateway_bank_call_duration_seconds_count", &[]) >= 8.0);

    // Gauges: circuit state, in flight, unresolved, reconciliation.
    let circuit = total(&text, "gateway_bank_circuit_state", &[]);
    assert!([0.0, 1.0, 2.0].contains(&circuit), "{circuit}");
    // The scrape itself is in flight.
    assert!(total(&text, "gateway_http_requests_in_flight", &[]) >= 1.0);
    for gauge in [
        "gateway_bank_in_flight",
        "gateway_operations_unresolved",
        "gateway_operations_unresolved_flagged",
        "gateway_reconcile_mismatches",
    ] {
        assert!(total(&text, gauge, &[]) >= 0.0, "{gauge}");
    }

    // Idempotency replays and conflicts; rate limiting.
    assert!(total(&text, "gateway_idempotency_replays_total", &[]) >= 1.0);
    let conflicts = "gateway_idempotency_conflicts_total";
    assert!(total(&text, conflicts, &[("kind", "reused")]) >= 1.0);
    assert!(total(&text, conflicts, &[("kind", "in_use")]) >= 0.0);
    assert!(total(&text, "gateway_rate_limited_total", &[]) >= 0.0);
    assert!(
        text.contains("# HELP gateway_idempotency_conflicts_total"),
        "series are described"
    );

    for (number, ..) in ALL_CARDS {
        assert!(!text.contains(number), "a card number in a metric");
    }
}

/// The request line of each request that had `X-Request-Id: id`.
fn request_line<'a>(logs: &'a [Value], id: &str) -> &'a Value {
    let lines: Vec<&Value> = logs
        .iter()
        .filter(|log| log["fields"]["message"] == "request" && log["span"]["request_id"] == id)
        .collect();
    assert_eq!(lines.len(), 1, "one request line for {id}");
    lines[0]
}

#[tokio::test]
async fn every_v1_request_logs_its_request_id_merchant_payment_and_status() {
    let (bank_address, _) = spawn_bank(None).await;
    let database_url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .unwrap();
    let served = Launch::new(&database_url, &bank_address).start().await;
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let api_key = create_key(&pool, "ficmart").await;
    let merchant_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM merchants WHERE name = 'ficmart'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let client = crate::helpers::test_client();
    let post = |path: String, request_id: &'static str, body: Value| {
        client
            .post(format!("{}{path}", served.base()))
            .bearer_auth(&api_key)
            .header("Idempotency-Key", new_key())
            .header("X-Request-Id", request_id)
            .json(&body)
            .send()
    };
    let created = post(
        "/v1/payments".into(),
        "req-create",
        payment_body(HAPPY_CARD, 1000, "ord_log", "cus_log"),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let payment_id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let declined = post(
        "/v1/payments".into(),
        "req-declined",
        payment_body(EMPTY_CARD, 1000, "ord_log", "cus_log"),
    )
    .await
    .unwrap();
    assert_eq!(declined.status(), StatusCode::PAYMENT_REQUIRED);
    let declined_id = declined.json::<Value>().await.unwrap()["error"]["payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let captured = post(
        format!("/v1/payments/{payment_id}/capture"),
        "req-capture",
        Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(captured.status(), StatusCode::OK);
    let invalid = post(
        "/v1/payments".into(),
        "req-invalid",
        json!({"order_id": "bad order"}),
    )
    .await
    .unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    let read = client
        .get(format!("{}/v1/payments/{payment_id}", served.base()))
        .bearer_auth(&api_key)
        .header("X-Request-Id", "req-read")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let anonymous = client
        .get(format!("{}/v1/payments", served.base()))
        .header("X-Request-Id", "req-anonymous")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let logs: Vec<Value> = served
        .stop()
        .await
        .iter()
        .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
        .collect();
    let merchant = merchant_id.to_string();
    for (request_id, payment, status) in [
        ("req-create", Some(payment_id.as_str()), 201),
        ("req-declined", Some(declined_id.as_str()), 402),
        ("req-capture", Some(payment_id.as_str()), 200),
        ("req-read", Some(payment_id.as_str()), 200),
        ("req-invalid", None, 400),
    ] {
        let line = request_line(&logs, request_id);
        assert_eq!(line["span"]["merchant_id"], merchant.as_str(), "{line}");
        assert_eq!(line["fields"]["status"], status, "{line}");
        match payment {
            Some(payment) => assert_eq!(line["span"]["payment_id"], payment, "{line}"),
            None => assert!(line["span"].get("payment_id").is_none(), "{line}"),
        }
    }
    let create = request_line(&logs, "req-create");
    assert_eq!(create["fields"]["method"], "POST");
    assert_eq!(create["fields"]["route"], "/v1/payments");
    let anonymous = request_line(&logs, "req-anonymous");
    assert_eq!(anonymous["fields"]["status"], 401);
    assert!(
        anonymous["span"].get("merchant_id").is_none(),
        "{anonymous}"
    );
    let all = serde_json::to_string(&logs).unwrap();
    assert!(!all.contains(HAPPY_CARD.0) && !all.contains(EMPTY_CARD.0));
    assert!(!all.contains(&api_key), "the API key is never logged");
}

/// The breaker leaves "open" by the clock, with no event to publish it:
/// a scrape after the open period, with no traffic since, says half-open.
#[tokio::test]
async fn the_circuit_gauge_follows_the_clock_without_traffic() {
    let database_url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .unwrap();
    // Nothing listens here: every bank call is refused, a transient failure.
    let no_bank = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let served = Launch::new(&database_url, &no_bank)
        .set("CIRCUIT_FAILURE_THRESHOLD", 1)
        .set("CIRCUIT_OPEN_MS", 500)
        .start()
        .await;
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let api_key = create_key(&pool, "ficmart").await;
    let client = crate::helpers::test_client();
    let gauge = || async {
        let text = client
            .get(format!("{}/metrics", served.operator_base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        total(&text, "gateway_bank_circuit_state", &[])
    };
    let response = client
        .post(format!("{}/v1/payments", served.base()))
        .bearer_auth(&api_key)
        .header("Idempotency-Key", new_key())
        .json(&payment_body(HAPPY_CARD, 1000, "ord_gauge", "cus_gauge"))
        .send()
        .await
        .unwrap();
    assert!(
        [StatusCode::ACCEPTED, StatusCode::SERVICE_UNAVAILABLE].contains(&response.status()),
        "{}",
        response.status()
    );
    assert_eq!(gauge().await, 2.0, "open after the refused call");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(gauge().await, 1.0, "half-open once the open period is over");
}
