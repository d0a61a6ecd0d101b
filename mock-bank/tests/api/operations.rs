//! `/health`, `/docs`, `/openapi.json`, `/metrics`, and shutdown.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn health_is_503_while_the_database_is_unreachable() {
    let bank = spawn_bank().await;
    let response = bank.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "healthy"})
    );

    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&bank.pool)
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(throwaway_pg::shared().url())
        .await
        .unwrap();
    let cut_off = |allow: bool| {
        let (admin, database) = (admin.clone(), database.clone());
        async move {
            sqlx::query(&format!(
                r#"ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {allow}"#
            ))
            .execute(&admin)
            .await
            .unwrap();
            if !allow {
                sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                    .bind(&database)
                    .execute(&admin)
                    .await
                    .unwrap();
            }
        }
    };
    cut_off(false).await;
    let response = bank.get("/health").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "unhealthy"})
    );
    // An API call fails cleanly meanwhile.
    assert_error(
        bank.authorize(HAPPY_CARD, 100).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;

    cut_off(true).await;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = bank.get("/health").await.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "recovers by itself");
}

#[tokio::test]
async fn docs_and_openapi_are_served_offline_from_the_code() {
    let bank = spawn_bank().await;
    let openapi: Value = bank.get("/openapi.json").await.json().await.unwrap();
    for path in [
        "/api/v1/authorizations",
        "/api/v1/authorizations/{authorization_id}",
        "/api/v1/captures",
        "/api/v1/captures/{capture_id}",
        "/api/v1/voids",
        "/api/v1/voids/{void_id}",
        "/api/v1/refunds",
        "/api/v1/refunds/{refund_id}",
        "/admin/accounts",
        "/admin/chaos",
        "/admin/ledger/verify",
        "/admin/authorizations/{authorization_id}/expire",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path} documented");
    }
    let docs = bank.get("/docs/").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "Swagger UI page"
    );
    let bundle = bank.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(
        bundle.status(),
        StatusCode::OK,
        "assets are vendored, not fetched from a CDN"
    );
    let redirect = bank.get("/docs").await;
    assert_eq!(
        redirect.status(),
        StatusCode::OK,
        "/docs redirects to the UI"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let bank = spawn_bank().await;
    let response = bank.get("/health").await;
    assert!(response.headers().get("x-request-id").is_some());
    let response = bank
        .client
        .get(bank.url("/health"))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
}

/// The real binary, started as a user would, stopped with SIGTERM or SIGINT
/// while a request is in flight: the request finishes and the process exits 0.
#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    stop_with_signal_during_a_request("-TERM").await;
}

#[tokio::test]
async fn sigint_lets_in_flight_requests_finish() {
    stop_with_signal_during_a_request("-INT").await;
}

async fn stop_with_signal_during_a_request(signal: &str) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let database_url = throwaway_pg::shared().fresh_database("bank").await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-bank"))
        .env("DATABASE_URL", &database_url)
        .env("PORT", "0")
        .env("FAILURE_RATE", "0")
        .env("MIN_LATENCY_MS", "1000")
        .env("MAX_LATENCY_MS", "1000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(lines_tx.send(l)))
    });
    let port = lines_rx
        .iter()
        .find_map(|line| {
            let log: Value = serde_json::from_str(&line).ok()?;
            (log["fields"]["message"] == "mock-bank listening")
                .then(|| log["fields"]["port"].as_u64())
                .flatten()
        })
        .expect("the bank logs its port");

    let client = reqwest::Client::new();
    let in_flight = client
        .post(format!("http://127.0.0.1:{port}/api/v1/authorizations"))
        .header("Idempotency-Key", new_key())
        .json(&json!({"card_number": HAPPY_CARD.0, "cvv": HAPPY_CARD.1, "amount": 100}))
        .send();
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let (response, ()) = tokio::join!(in_flight, terminate);
    assert_eq!(
        response.unwrap().status(),
        StatusCode::OK,
        "the in-flight request finished"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let lines: Vec<String> = lines_rx.iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("mock-bank stopped")),
        "{lines:?}"
    );
    let authorizations: i64 = {
        let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM authorizations")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(authorizations, 1);
}
