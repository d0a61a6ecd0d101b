//! `spawn_bank()`: a real mock bank on a free port, on its own fresh
//! database in the run's shared Postgres, plus a client for it.

use actix_web::web::Data;
use mock_bank::telemetry::InFlight;
use mock_bank::{Application, Settings};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub const HAPPY_CARD: (&str, &str) = ("4111111111111111", "123");
pub const LIMITED_CARD: (&str, &str) = ("4242424242424242", "456");
pub const EMPTY_CARD: (&str, &str) = ("5555555555554444", "789");
pub const EXPIRED_CARD: (&str, &str) = ("5105105105105100", "321");

pub struct TestBank {
    pub address: String,
    pub client: Client,
    /// The bank's own database, for checks the API cannot make.
    pub pool: PgPool,
    pub in_flight: Data<InFlight>,
}

pub async fn spawn_bank() -> TestBank {
    spawn_bank_with(|_| {}).await
}

pub async fn spawn_bank_with(configure: impl FnOnce(&mut Settings)) -> TestBank {
    let database_url = throwaway_pg::shared()
        .fresh_database("bank")
        .await
        .expect("a fresh database");
    let mut settings = Settings::local(&database_url);
    settings.expiry_sweep_interval_ms = 100;
    settings.db_pool_size = 8;
    configure(&mut settings);
    let app = Application::build(settings).await.expect("the bank starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let in_flight = app.in_flight();
    tokio::spawn(app.run_until_stopped());
    let pool = PgPool::connect(&database_url).await.expect("a pool");
    TestBank {
        address,
        client: Client::builder()
            // Idle connections go before the server's keep-alive closes them,
            // or a request can race the close ("incomplete message").
            .pool_idle_timeout(std::time::Duration::from_secs(1))
            .build()
            .expect("a reqwest client"),
        pool,
        in_flight,
    }
}

pub fn new_key() -> String {
    Uuid::new_v4().to_string()
}

impl TestBank {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET answered")
    }

    /// A POST with the given idempotency key.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("POST answered")
    }

    /// `POST /admin/accounts` with `body`, as sent.
    pub async fn open_account(&self, body: &Value) -> Response {
        self.client
            .post(self.url("/admin/accounts"))
            .json(body)
            .send()
            .await
            .expect("POST answered")
    }

    pub async fn put_chaos(&self, body: Value) -> Value {
        let response = self
            .client
            .put(self.url("/admin/chaos"))
            .json(&body)
            .send()
            .await
            .expect("PUT answered");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("chaos JSON")
    }

    pub async fn authorize(&self, card: (&str, &str), amount: i64) -> Response {
        let body = json!({"card_number": card.0, "cvv": card.1, "amount": amount});
        self.post("/api/v1/authorizations", &new_key(), &body).await
    }

    /// Authorizes and returns the approved authorization.
    pub async fn approved(&self, card: (&str, &str), amount: i64) -> Value {
        let response = self.authorize(card, amount).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("authorization JSON")
    }

    pub async fn capture(&self, authorization_id: &str, amount: i64) -> Response {
        let body = json!({"authorization_id": authorization_id, "amount": amount});
        self.post("/api/v1/captures", &new_key(), &body).await
    }

    pub async fn void(&self, authorization_id: &str) -> Response {
        self.post(
            "/api/v1/voids",
            &new_key(),
            &json!({"authorization_id": authorization_id}),
        )
        .await
    }

    pub async fn refund(&self, capture_id: &str, amount: i64) -> Response {
        let body = json!({"capture_id": capture_id, "amount": amount});
        self.post("/api/v1/refunds", &new_key(), &body).await
    }

    /// (balance, available_balance) of a card.
    pub async fn balances(&self, card_number: &str) -> (i64, i64) {
        let account: Value = self
            .get(&format!("/admin/accounts/{card_number}"))
            .await
            .json()
            .await
            .expect("account JSON");
        (
            account["balance"].as_i64().expect("balance"),
            account["available_balance"]
                .as_i64()
                .expect("available_balance"),
        )
    }

    pub async fn ledger_verifies(&self) -> bool {
        let verification: Value = self
            .get("/admin/ledger/verify")
            .await
            .json()
            .await
            .expect("JSON");
        verification["ok"].as_bool().expect("ok") && verification["mismatches"] == json!([])
    }

    /// Returns once some session of the bank's database waits for a lock
    /// (a row another transaction holds); panics after ten seconds.
    pub async fn wait_for_a_lock_wait(&self) {
        let waited = throwaway_pg::until_sessions_wait_for_a_lock(&self.pool, 1, 1000)
            .await
            .expect("pg_stat_activity");
        assert!(waited, "no session waited for a lock within ten seconds");
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Asserts the contract's error body and returns it.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "expected {status} {code}");
    let body: Value = response.json().await.expect("error JSON");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}
