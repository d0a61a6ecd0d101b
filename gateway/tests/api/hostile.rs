//! Issue 16: what a black-box probe got through, each through the real
//! `gateway` binary (its own process, its own metrics and logs).

use reqwest::StatusCode;
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
