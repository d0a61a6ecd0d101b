//! Issue 16: what a black-box probe got through, each through the real
//! `gateway` binary (its own process, its own metrics and logs).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::crash::harness::{GatewayProcess, Launch};
use crate::helpers::*;

/// A gateway process on a fresh database, its bank in this process, and
/// FicMart's key.
async fn served(configure: impl FnOnce(Launch) -> Launch) -> (GatewayProcess, String) {
    let (bank_address, _) = spawn_bank(None).await;
    let database_url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .expect("a gateway database");
    let gateway = configure(Launch::new(&database_url, &bank_address))
        .start()
        .await;
    let pool = sqlx::PgPool::connect(&database_url)
        .await
        .expect("a gateway pool");
    let api_key = create_key(&pool, "ficmart").await;
    (gateway, api_key)
}

#[tokio::test]
async fn metrics_and_ready_are_served_on_the_operator_port_only() {
    let (gateway, _) = served(|launch| launch).await;
    let client = test_client();
    for path in ["/metrics", "/ready"] {
        let public = client
            .get(format!("{}{path}", gateway.base()))
            .send()
            .await
            .unwrap();
        assert_error(
            public,
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
        )
        .await;
    }
    let health = client
        .get(format!("{}/health", gateway.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "/health stays public");

    assert_ne!(gateway.operator_port, 0, "the listening line names it");
    assert_ne!(gateway.operator_port, gateway.port);
    let operator = gateway.operator_base();
    let metrics = client
        .get(format!("{operator}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("gateway_http_requests_total")
    );
    let ready = client
        .get(format!("{operator}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    let health = client
        .get(format!("{operator}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // The API is not served to operators' port.
    let api = client
        .get(format!("{operator}/v1/payments"))
        .send()
        .await
        .unwrap();
    assert_error(
        api,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
    )
    .await;
}

/// The gateway's request series on a scrape: each sample's name and labels
/// (its value left off).
fn request_series(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| line.starts_with("gateway_http_"))
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

async fn scrape(client: &reqwest::Client, gateway: &GatewayProcess) -> String {
    let response = client
        .get(format!("{}/metrics", gateway.operator_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// Requests `from..to` of a probe: each with a method of its own (made up,
/// of varied length) on a path of its own, of five kinds.
async fn probe(client: &reqwest::Client, base: &str, from: usize, to: usize) {
    for i in from..to {
        let method = if i % 5 == 4 {
            Method::GET
        } else {
            let name = format!("PROBE{i}{}", "X".repeat(i % 97));
            Method::from_bytes(name.as_bytes()).unwrap()
        };
        let path = match i % 5 {
            0 => format!("/nowhere/{i}"),
            1 => format!("/v1/payments/pay_{i}"),
            2 => format!("/v1/payments/pay_{i}/settle{i}"),
            3 => format!("/docs/{i}"),
            _ => format!("/made-up-{i}"),
        };
        let response = client
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{path}");
    }
}

#[tokio::test]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let (gateway, _) = served(|launch| launch).await;
    let client = test_client();
    // Every kind of request the probe sends, a few times; then two scrapes
    // (a scrape's own series show from the next one on).
    probe(&client, &gateway.base(), 0, 50).await;
    scrape(&client, &gateway).await;
    let before = request_series(&scrape(&client, &gateway).await);
    assert!(!before.is_empty());

    probe(&client, &gateway.base(), 50, 2_050).await;
    let after = request_series(&scrape(&client, &gateway).await);
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(
        new.is_empty(),
        "2,000 made-up methods and paths added {} series, e.g. {:?}",
        new.len(),
        new.iter().take(3).collect::<Vec<_>>()
    );
}

/// Waits (bounded) until the process has logged `count` lines from
/// `target`, and returns them.
async fn logged_from(gateway: &GatewayProcess, target: &str, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let lines: Vec<Value> = gateway
            .logs()
            .into_iter()
            .filter(|line| line["target"] == target)
            .collect();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(crate::crash::harness::POLL).await;
    }
    panic!("fewer than {count} lines from {target} in 10 s");
}

#[tokio::test]
async fn heads_the_http_layer_cannot_parse_get_400_and_no_error_line() {
    let (gateway, _) = served(|launch| launch).await;
    let malformed: [&[u8]; 3] = [
        // A control byte in a header value.
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Probe: a\x01b\r\n\r\n",
        // Both framings: a smuggling attempt.
        b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // A header name that is not a token.
        b"GET /health HTTP/1.1\r\nHost: x\r\nX Probe: 1\r\n\r\n",
    ];
    for request in malformed {
        let answer = raw_exchange(&gateway.base(), request).await;
        assert_eq!(status_of(&answer), Some(400), "{answer}");
    }
    // actix-http says so once per connection; a client did it, so it must
    // not page anyone.
    let lines = logged_from(&gateway, "actix_http::h1::dispatcher", malformed.len()).await;
    for line in &lines {
        assert_eq!(line["level"], "WARN", "{line}");
    }
    assert!(
        !gateway.logs().iter().any(|line| line["level"] == "ERROR"),
        "no ERROR line at all"
    );
    // The server is unharmed.
    let health = test_client()
        .get(format!("{}/health", gateway.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn bare_error_answers_from_below_the_handlers_carry_the_error_object() {
    let (gateway, _) = served(|launch| launch).await;
    // The docs' file server answers an unknown file with an empty 404.
    let response = test_client()
        .get(format!("{}/docs/no-such-file.js", gateway.base()))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
    )
    .await;
    let docs = test_client()
        .get(format!("{}/docs/", gateway.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        docs.status(),
        StatusCode::OK,
        "answers that are not errors are untouched"
    );
    assert!(docs.text().await.unwrap().contains("swagger"));
}
