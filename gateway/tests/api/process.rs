//! The real `gateway` binary, as an operator runs it: `api-key create`,
//! `serve` (through the crash tests' harness), SIGTERM. Its logs are
//! captured and searched for card data.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::crash::harness::Launch;
use crate::helpers::*;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

#[tokio::test]
async fn the_binary_serves_and_its_logs_hold_no_card_data() {
    let (bank_address, _) = spawn_bank(None).await;
    let database_url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .unwrap();

    let created = Command::new(GATEWAY)
        .args([
            "api-key",
            "create",
            "--merchant",
            "ficmart",
            "--database-url",
            &database_url,
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8(created.stdout).unwrap();
    let api_key = stdout.trim_end().to_owned();
    assert_eq!(stdout, format!("{api_key}\n"), "only the key on stdout");
    assert!(api_key.starts_with("sk_test_"));

    let gateway = Launch::new(&database_url, &bank_address)
        .set("RUST_LOG", "debug")
        .start()
        .await;
    let base = gateway.base();
    let client = crate::helpers::test_client();
    let pay = |card: Card| {
        client
            .post(format!("{base}/v1/payments"))
            .bearer_auth(&api_key)
            .header("Idempotency-Key", new_key())
            .json(&payment_body(card, 1000, "ord_p", "cus_p"))
            .send()
    };
    let approved: Value = pay(HAPPY_CARD).await.unwrap().json().await.unwrap();
    assert_eq!(approved["status"], "authorized");
    for card in [
        LIMITED_CARD,
        EMPTY_CARD,
        EXPIRED_CARD,
        ("4111111111111112", "123", 12, 2030),
    ] {
        assert!(pay(card).await.unwrap().status().is_client_error() || card == LIMITED_CARD);
    }
    let capture = client
        .post(format!(
            "{base}/v1/payments/{}/capture",
            approved["id"].as_str().unwrap()
        ))
        .bearer_auth(&api_key)
        .header("Idempotency-Key", new_key())
        .send()
        .await
        .unwrap();
    assert_eq!(capture.status(), StatusCode::OK);

    let logs = gateway.stop().await.join("\n");
    assert!(
        logs.contains("\"request_id\""),
        "JSON logs with a request id"
    );
    assert!(logs.contains("gateway stopped"));
    for (number, cvv, ..) in ALL_CARDS
        .into_iter()
        .chain([("4111111111111112", "123", 12, 2030)])
    {
        assert!(!logs.contains(number), "a card number reached the logs");
        assert!(
            !logs.contains(&format!("\"{cvv}\"")),
            "a CVV reached the logs"
        );
    }
}
