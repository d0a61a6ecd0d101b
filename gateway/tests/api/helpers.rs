//! `spawn_app()`: a real gateway and a real mock bank, each on a free port
//! and its own fresh database in the run's shared Postgres.

use gateway::bank::{BankClient, CircuitSettings, RetryPolicy};
use gateway::faults::Faults;
use gateway::reconcile::{Report, Scope, pass};
use gateway::{Application, Settings};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use bank_tap::BankProxy;

/// (number, cvv, month, year)
pub type Card = (&'static str, &'static str, i64, i64);
pub const HAPPY_CARD: Card = ("4111111111111111", "123", 12, 2030);
pub const LIMITED_CARD: Card = ("4242424242424242", "456", 6, 2030);
pub const EMPTY_CARD: Card = ("5555555555554444", "789", 9, 2030);
pub const EXPIRED_CARD: Card = ("5105105105105100", "321", 3, 2020);
pub const ALL_CARDS: [Card; 4] = [HAPPY_CARD, LIMITED_CARD, EMPTY_CARD, EXPIRED_CARD];

pub struct TestApp {
    pub address: String,
    /// The operator listener: `/metrics`, `/ready`, `/health`.
    pub operator_address: String,
    pub bank_address: String,
    pub client: Client,
    /// FicMart's key.
    pub api_key: String,
    /// The gateway's database.
    pub pool: PgPool,
    /// Its URL, for running the binary against it.
    pub database_url: String,
    /// The bank's database, to count what the bank did.
    pub bank_pool: PgPool,
    /// Between the gateway and the bank, when the test asked for one.
    pub proxy: Option<BankProxy>,
    /// The gateway's fault points.
    pub faults: Faults,
    /// Its settings as the test made them, for a replica to share.
    settings: Settings,
}

/// Changes a test makes to the defaults before a service starts.
pub type Configure<T> = Option<Box<dyn FnOnce(&mut T)>>;

#[derive(Default)]
pub struct Options {
    pub bank: Configure<mock_bank::Settings>,
    pub gateway: Configure<Settings>,
    /// Put a [`BankProxy`] between the gateway and the bank.
    pub proxy: bool,
}

/// A bank that takes exactly `ms` over every API request: requests sent
/// together overlap at the bank.
pub fn bank_latency_ms(ms: u64) -> Configure<mock_bank::Settings> {
    Some(Box::new(move |s| {
        s.min_latency_ms = ms;
        s.max_latency_ms = ms;
    }))
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_bank(configure: Configure<mock_bank::Settings>) -> (String, PgPool) {
    // The gateway and the bank share this process and its one global
    // metrics recorder, which is whoever installs first: the gateway's, so
    // that its /metrics shows its series (and the bank's too).
    gateway::telemetry::prometheus();
    let url = throwaway_pg::shared()
        .fresh_database("bank")
        .await
        .expect("a bank database");
    let mut settings = mock_bank::Settings::local(&url);
    if let Some(configure) = configure {
        configure(&mut settings);
    }
    let bank = mock_bank::Application::build(settings)
        .await
        .expect("the bank starts");
    let address = format!("http://127.0.0.1:{}", bank.port());
    tokio::spawn(bank.run_until_stopped());
    (address, PgPool::connect(&url).await.expect("a bank pool"))
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    gateway::telemetry::prometheus();
    // `TEST_LOG=1 cargo test …` shows the services' JSON logs.
    if std::env::var_os("TEST_LOG").is_some() {
        gateway::telemetry::init_logging();
    }
    let (bank_address, bank_pool) = spawn_bank(options.bank).await;
    let url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .expect("a gateway database");
    let proxy = options.proxy.then(|| BankProxy::start(&bank_address));
    let bank_url = proxy
        .as_ref()
        .map_or(bank_address.as_str(), |p| p.url.as_str());
    let mut settings = test_settings(&url, bank_url);
    if let Some(configure) = options.gateway {
        configure(&mut settings);
    }
    let app = Application::build(settings.clone())
        .await
        .expect("the gateway starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let faults = app.faults();
    let operator_address = format!("http://127.0.0.1:{}", app.operator_port());
    tokio::spawn(app.run_until_stopped());
    let pool = PgPool::connect(&url).await.expect("a gateway pool");
    let api_key = create_key(&pool, "ficmart").await;
    TestApp {
        address,
        operator_address,
        bank_address,
        client: test_client(),
        api_key,
        pool,
        database_url: url,
        bank_pool,
        proxy,
        faults,
        settings,
    }
}

/// A gateway's settings in tests: quick bank retries, and no per-key rate
/// limit. A test that sends requests in a loop for as long as something
/// else runs (a purge, a drain) would otherwise meet the limit on a machine
/// fast enough, and fail for a reason it does not test; the limiter's own
/// tests (`rate_limit.rs`) turn it on with their numbers.
fn test_settings(database_url: &str, bank_url: &str) -> Settings {
    let mut settings = Settings::local(database_url, bank_url);
    settings.bank_base_backoff_ms = 10;
    settings.bank_max_backoff_ms = 200;
    settings.rate_limit_per_second = 0;
    settings
}

pub async fn create_key(pool: &PgPool, merchant: &str) -> String {
    let mut tx = pool.begin().await.unwrap();
    let (_, key) = gateway::store::merchants::create_api_key(&mut tx, merchant)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    key
}

/// A client that drops idle connections before the server's keep-alive
/// (5 s) closes them: otherwise a request sent on a connection the server
/// is closing at that moment fails with "incomplete message", a race that
/// shows when a test pauses (e.g. while a child process runs).
pub fn test_client() -> Client {
    Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(1))
        .build()
        .expect("a reqwest client")
}

/// A payment's id (`pay_<uuid>`) as the database stores it.
pub fn uuid_of(id: &str) -> Uuid {
    Uuid::parse_str(id.strip_prefix("pay_").expect("a payment id")).expect("a UUID")
}

pub fn new_key() -> String {
    Uuid::new_v4().to_string()
}

pub fn payment_body(card: Card, amount: i64, order: &str, customer: &str) -> Value {
    json!({
        "order_id": order, "customer_id": customer, "amount": amount, "currency": "USD",
        "card": {"number": card.0, "cvv": card.1, "expiry_month": card.2, "expiry_year": card.3}
    })
}

impl TestApp {
    /// Another gateway process with this app's settings (its database,
    /// its bank or proxy, its secrets): a replica, a second caller of the
    /// bank. Returns its address.
    pub async fn replica(&self) -> String {
        let replica = self.replica_application().await;
        let address = format!("http://127.0.0.1:{}", replica.port());
        tokio::spawn(replica.run_until_stopped());
        address
    }

    /// A replica, built and not yet serving: for a test that stops it.
    pub async fn replica_application(&self) -> Application {
        Application::build(self.settings.clone())
            .await
            .expect("the replica starts")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A URL on the operator listener.
    pub fn operator_url(&self, path: &str) -> String {
        format!("{}{path}", self.operator_address)
    }

    pub async fn post_as(&self, api_key: &str, path: &str, key: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(api_key)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("POST answered")
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Response {
        self.post_as(&self.api_key, path, key, body).await
    }

    pub async fn get_as(&self, api_key: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(api_key)
            .send()
            .await
            .expect("GET answered")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.get_as(&self.api_key, path).await
    }

    pub async fn create_payment(&self, card: Card, amount: i64) -> Response {
        self.post(
            "/v1/payments",
            &new_key(),
            &payment_body(card, amount, "ord_1", "cus_1"),
        )
        .await
    }

    /// Authorizes and returns the payment, asserting 201.
    pub async fn authorized(&self, card: Card, amount: i64) -> Value {
        let response = self.create_payment(card, amount).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn act(&self, payment_id: &str, action: &str) -> Response {
        self.post(
            &format!("/v1/payments/{payment_id}/{action}"),
            &new_key(),
            &Value::Null,
        )
        .await
    }

    /// `GET /v1/payments/{id}`, asserting 200.
    pub async fn payment(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/payments/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Polls the payment until `done` holds, for at most ~20 s.
    pub async fn eventually(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut payment = Value::Null;
        for _ in 0..200 {
            payment = self
                .get(&format!("/v1/payments/{id}"))
                .await
                .json()
                .await
                .unwrap();
            if done(&payment) {
                return payment;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("never settled: {payment}");
    }

    /// Rows in a bank table: what the bank actually did.
    pub async fn bank_count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.bank_pool)
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn bank_balances(&self, card: &str) -> (i64, i64) {
        let account: Value = self
            .client
            .get(format!("{}/admin/accounts/{card}", self.bank_address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            account["balance"].as_i64().unwrap(),
            account["available_balance"].as_i64().unwrap(),
        )
    }

    /// Acts at the bank directly, as a person with the bank's console
    /// would: the gateway is not told. The bank's answer.
    pub async fn at_bank(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.bank_address))
            .header("Idempotency-Key", new_key())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    pub async fn set_bank_chaos(&self, chaos: Value) {
        let response = self
            .client
            .put(format!("{}/admin/chaos", self.bank_address))
            .json(&chaos)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// A bank client for a test's own reconciliation passes.
pub fn bank_at(address: &str, policy: RetryPolicy) -> BankClient {
    BankClient::new(address, policy, 16, CircuitSettings::default()).unwrap()
}

/// A reconciliation pass of `scope` over the last hour, asking the test's
/// bank.
pub async fn pass_of(app: &TestApp, scope: Scope, repair: bool) -> Report {
    let bank = bank_at(&app.bank_address, RetryPolicy::default());
    pass_with(app, &bank, scope, repair).await
}

pub async fn pass_with(app: &TestApp, bank: &BankClient, scope: Scope, repair: bool) -> Report {
    let since = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    pass(&app.pool, bank, since, scope, repair, None)
        .await
        .unwrap()
}

/// Asserts the contract's error object and returns it.
pub async fn assert_error(response: Response, status: StatusCode, kind: &str, code: &str) -> Value {
    assert_eq!(response.status(), status, "expected {status} {code}");
    assert!(response.headers().get("x-request-id").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

/// Sends `request` as raw bytes to `address` (`http://host:port`) and
/// returns everything the server wrote until it closed the connection (at
/// most 10 s), as text.
pub async fn raw_exchange(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .unwrap();
    // The server may answer and close before reading everything.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw HTTP/1.1 answer, if it has one.
pub fn status_of(answer: &str) -> Option<u16> {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// The JSON body of a raw HTTP/1.1 answer (after the blank line), or null.
pub fn body_of(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// An answer's `Retry-After`, whole seconds; panics if it has none.
pub fn retry_after_seconds(response: &Response) -> u64 {
    response
        .headers()
        .get("Retry-After")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("whole seconds")
}
