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
