//! `Stack::start`: the mock bank and gateway replicas, started the way the
//! gateway's own tests start them (`gateway/tests/api/helpers.rs`), and an
//! observed client of them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::{AttemptRecord, AuthorizeRequest, Card, Client, IdempotencyKey, RetryPolicy};
use sqlx::Connection;

/// The bank's seeded cards.
pub fn happy_card() -> Card {
    Card::new("4111111111111111", "123", 12, 2030)
}

/// $0 on it: every authorization is declined for insufficient funds.
pub fn empty_card() -> Card {
    Card::new("5555555555554444", "789", 9, 2030)
}

pub fn authorization(order: &str, customer: &str, amount: i64) -> AuthorizeRequest {
    AuthorizeRequest::usd(order, customer, amount, happy_card())
}

/// Changes a test makes to a service's defaults before it starts.
pub type Configure<T> = Option<Box<dyn FnOnce(&mut T)>>;

pub struct Options {
    pub bank: Configure<mock_bank::Settings>,
    pub gateway: Configure<gateway::Settings>,
    /// Gateway processes on one database, as replicas behind a balancer.
    pub replicas: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bank: None,
            gateway: None,
            replicas: 1,
        }
    }
}

pub struct Stack {
    /// One base URL per gateway replica.
    pub gateways: Vec<String>,
    pub bank: String,
    /// FicMart's API key.
    pub api_key: String,
}

impl Stack {
    pub async fn start(options: Options) -> Self {
        // The gateway and the bank share this process and its one global
        // metrics recorder: the gateway's, installed first.
        gateway::telemetry::prometheus();
        // `TEST_LOG=1 cargo test -p ficmart-client` shows the services' logs.
        if std::env::var_os("TEST_LOG").is_some() {
            gateway::telemetry::init_logging();
        }
        let bank_db = throwaway_pg::shared()
            .fresh_database("bank")
            .await
            .expect("a bank database");
        let mut bank_settings = mock_bank::Settings::local(&bank_db);
        if let Some(configure) = options.bank {
            configure(&mut bank_settings);
        }
        let bank = mock_bank::Application::build(bank_settings)
            .await
            .expect("the bank starts");
        let bank_url = format!("http://127.0.0.1:{}", bank.port());
        tokio::spawn(bank.run_until_stopped());

        let gateway_db = throwaway_pg::shared()
            .fresh_database("gateway")
            .await
            .expect("a gateway database");
        // One settings value for every replica: they must share the
        // fingerprint secret that `local` generates, or a key sent to one
        // would not match its own request on another.
        let mut settings = gateway::Settings::local(&gateway_db, &bank_url);
        settings.bank_base_backoff_ms = 10;
        settings.bank_max_backoff_ms = 200;
        if let Some(configure) = options.gateway {
            configure(&mut settings);
        }
        let mut gateways = Vec::new();
        for _ in 0..options.replicas.max(1) {
            let app = gateway::Application::build(settings.clone())
                .await
                .expect("the gateway starts");
            gateways.push(format!("http://127.0.0.1:{}", app.port()));
            tokio::spawn(app.run_until_stopped());
        }

        let mut conn = sqlx::PgConnection::connect(&gateway_db)
            .await
            .expect("the gateway's database");
        let (_, api_key) = gateway::store::merchants::create_api_key(&mut conn, "ficmart")
            .await
            .expect("an API key");
        Self {
            gateways,
            bank: bank_url,
            api_key,
        }
    }

    /// A client of every replica that records every attempt.
    pub fn client(&self, policy: RetryPolicy) -> (Client, Records) {
        observed(&self.gateways, &self.api_key, policy)
    }

    /// Sets the bank's added latency (`PUT /admin/chaos`).
    pub async fn set_bank_latency(&self, ms: u64) {
        set_bank_latency(&self.bank, ms).await;
    }
}

pub async fn set_bank_latency(bank: &str, ms: u64) {
    let response = reqwest::Client::new()
        .put(format!("{bank}/admin/chaos"))
        .json(&serde_json::json!({"min_latency_ms": ms, "max_latency_ms": ms}))
        .send()
        .await
        .expect("the bank answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}

/// Every attempt a client made, in order.
pub type Records = Arc<Mutex<Vec<AttemptRecord>>>;

pub fn observed<U: AsRef<str>>(
    urls: &[U],
    api_key: &str,
    policy: RetryPolicy,
) -> (Client, Records) {
    let records = Records::default();
    let sink = Arc::clone(&records);
    let client = Client::new(urls, api_key)
        .expect("a client")
        .with_retry_policy(policy)
        .with_observer(Arc::new(move |record: &AttemptRecord| {
            sink.lock().expect("not poisoned").push(record.clone());
        }));
    (client, records)
}

pub fn taken(records: &Records) -> Vec<AttemptRecord> {
    records.lock().expect("not poisoned").clone()
}

/// The attempts that carried `key`.
pub fn with_key(records: &Records, key: &IdempotencyKey) -> Vec<AttemptRecord> {
    taken(records)
        .into_iter()
        .filter(|r| r.idempotency_key.as_ref() == Some(key))
        .collect()
}

/// The error object's code in a recorded body.
pub fn error_code(record: &AttemptRecord) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(record.body()?).ok()?;
    body["error"]["code"].as_str().map(str::to_owned)
}

/// Generous limits: these tests wait for real services on a shared
/// machine, and what they check is the answers, not the time taken.
pub fn patient_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 40,
        deadline: Duration::from_secs(30),
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        attempt_timeout: Duration::from_secs(15),
    }
}
