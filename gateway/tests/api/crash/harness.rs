//! Real processes for the crash tests: the `gateway` binary as a child
//! process (killed with `kill -9`, stopped with SIGTERM, restarted on the
//! same database) and the mock bank in-process; `bank_tap` records what
//! the gateways send to the bank.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{Configure, create_key, spawn_bank};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// How often the bounded waits look again.
pub const POLL: Duration = Duration::from_millis(100);

/// One crash test at a time: each runs gateway processes and a bank with
/// latency, and the machine may have two cores. Held for the whole test.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How to start a gateway process: its database, its bank, and the
/// environment settings (`config.rs` names) on top of short test defaults.
#[derive(Debug, Clone)]
pub struct Launch {
    pub database_url: String,
    pub bank_url: String,
    env: BTreeMap<&'static str, String>,
    /// Also pass the database URL as `DATABASE_URL` (see [`Launch::start`]).
    database_url_in_env: bool,
}

impl Launch {
    /// Short leases and quick recovery. The bank deadline is below the lease
    /// (the binary refuses otherwise) and the attempt timeout above the
    /// mock bank's 1.5 s latency, so a slow bank is slow, not failing. The
    /// circuit breaker is out of the way unless a test is about it; the
    /// periodic reconciliation is off so that only recovery repairs.
    pub fn new(database_url: &str, bank_url: &str) -> Self {
        let env = [
            ("RUST_LOG", "info"),
            ("LEASE_MS", "3000"),
            ("BANK_DEADLINE_MS", "2500"),
            ("BANK_ATTEMPT_TIMEOUT_MS", "2000"),
            ("BANK_BASE_BACKOFF_MS", "20"),
            ("BANK_MAX_BACKOFF_MS", "200"),
            ("RECOVERY_INTERVAL_MS", "200"),
            ("RETRY_UNKNOWN_AFTER_MS", "200"),
            ("RECOVERY_MAX_BACKOFF_MS", "1000"),
            ("CIRCUIT_FAILURE_THRESHOLD", "1000"),
            // An authorization nobody retries is given up after a second.
            ("AUTHORIZATION_GRACE_MS", "1000"),
            ("RECONCILE_INTERVAL_MS", "0"),
            ("SHUTDOWN_GRACE_SECONDS", "10"),
            ("WORKERS", "2"),
            ("OPERATOR_PORT", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        // Every process on this database shares one secret, as replicas must.
        .chain([(
            "FINGERPRINT_SECRET",
            gateway::idempotency::Secret::random().expose().to_owned(),
        )])
        .collect();
        Self {
            database_url: database_url.to_owned(),
            bank_url: bank_url.to_owned(),
            env,
            database_url_in_env: true,
        }
    }

    pub fn set(mut self, key: &'static str, value: impl ToString) -> Self {
        self.env.insert(key, value.to_string());
        self
    }

    /// The database URL as a flag only, as an operator would write it.
    pub fn database_url_as_flag_only(mut self) -> Self {
        self.database_url_in_env = false;
        self
    }

    pub fn bank(mut self, bank_url: &str) -> Self {
        bank_url.clone_into(&mut self.bank_url);
        self
    }

    /// Spawns `gateway serve` and waits (bounded) for its "gateway listening" line.
    pub async fn start(&self) -> GatewayProcess {
        let mut command = Command::new(GATEWAY);
        command
            .args(["serve", "--database-url", &self.database_url])
            .args(["--bank-url", &self.bank_url, "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        // The test `serve_takes_its_database_url_as_a_flag_with_settings_in_the_environment`
        // runs without it; the others pass it both ways.
        if self.database_url_in_env {
            command.env("DATABASE_URL", &self.database_url);
        } else {
            command.env_remove("DATABASE_URL");
        }
        let mut child = command.spawn().expect("the gateway binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::clone(&logs);
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lock(&lines).push(line);
            }
        });
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let err_text = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0_u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                lock(&err_text).push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let mut process = GatewayProcess {
            pid: child.id(),
            child,
            port: 0,
            operator_port: 0,
            logs,
            stderr,
            stdout_reader: Some(stdout_reader),
        };
        for _ in 0..300 {
            if let Some(port) = process.logged_port("port") {
                process.port = port;
                // 0 if the line does not say: a test of the operator port fails on it.
                process.operator_port = process.logged_port("operator_port").unwrap_or(0);
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "the gateway exited ({status}) before listening: {}",
                    process.stderr_text()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "the gateway never logged its port; stderr: {}",
            process.stderr_text()
        );
    }
}

/// A running `gateway serve`; killed with `kill -9` when dropped.
pub struct GatewayProcess {
    child: Child,
    pid: u32,
    pub port: u16,
    /// Where `/metrics` and `/ready` are served.
    pub operator_port: u16,
    logs: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// Joined once the process has exited, so that its last lines are read.
    stdout_reader: Option<std::thread::JoinHandle<()>>,
}

impl GatewayProcess {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The operator listener: `/metrics`, `/ready` (and `/health`).
    pub fn operator_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.operator_port)
    }

    /// A port (`field`) from the "gateway listening" line.
    fn logged_port(&self, field: &str) -> Option<u16> {
        self.messages("gateway listening")
            .first()
            .and_then(|log| log["fields"][field].as_u64())
            .and_then(|port| u16::try_from(port).ok())
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<Value> {
        lock(&self.logs)
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The log lines whose message is `message`.
    pub fn messages(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|log| log["fields"]["message"] == message)
            .collect()
    }

    /// Every line it wrote to stdout so far, as written.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.logs).clone()
    }

    /// SIGTERM, then waits (bounded) for a clean exit and returns every
    /// line it wrote.
    pub async fn stop(mut self) -> Vec<String> {
        self.terminate();
        let status = self.wait(Duration::from_secs(30)).await;
        assert!(status.success(), "exit status {status}");
        self.lines()
    }

    pub fn stderr_text(&self) -> String {
        lock(&self.stderr).clone()
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {}", self.pid);
    }

    /// `kill -9`: no shutdown, no lease released, nothing flushed.
    pub async fn kill9(&mut self) {
        self.signal("KILL");
        let status = self.wait(Duration::from_secs(10)).await;
        assert!(!status.success(), "killed, not exited: {status}");
    }

    /// SIGTERM: the graceful stop.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits at most `bound` for the process to exit.
    pub async fn wait(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The pipe closes with the process: the reader ends at once.
                if let Some(reader) = self.stdout_reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit within {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// A bank, a gateway database with FicMart's key, and a client: what every
/// crash test starts from. The gateway processes come and go; this stays.
#[derive(Clone)]
pub struct Rig {
    pub bank: String,
    pub bank_pool: PgPool,
    pub database_url: String,
    pub pool: PgPool,
    pub api_key: String,
    pub client: reqwest::Client,
}

/// One HTTP answer, as the client saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub elapsed: Duration,
    pub retry_after: Option<String>,
}

impl Rig {
    /// A bank (configured by `bank`) and a migrated gateway database on `database_url`,
    /// or on a fresh database of the shared cluster.
    pub async fn new(bank: Configure<mock_bank::Settings>, database_url: Option<String>) -> Self {
        let (bank, bank_pool) = spawn_bank(bank).await;
        let database_url = match database_url {
            Some(url) => url,
            None => throwaway_pg::shared()
                .fresh_database("gateway")
                .await
                .expect("a gateway database"),
        };
        let pool = PgPool::connect(&database_url)
            .await
            .expect("a gateway pool");
        gateway::store::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations");
        let api_key = create_key(&pool, "ficmart").await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a client");
        Self {
            bank,
            bank_pool,
            database_url,
            pool,
            api_key,
            client,
        }
    }

    pub fn launch(&self) -> Launch {
        Launch::new(&self.database_url, &self.bank)
    }

    /// POSTs to a gateway; `Err` when the connection failed (a killed process).
    pub async fn post(
        &self,
        base: &str,
        path: &str,
        key: &str,
        body: &Value,
    ) -> Result<Answer, reqwest::Error> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{base}{path}"))
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            elapsed: started.elapsed(),
            retry_after,
        })
    }

    pub async fn set_chaos(&self, chaos: Value) {
        let response = self
            .client
            .put(format!("{}/admin/chaos", self.bank))
            .json(&chaos)
            .send()
            .await
            .expect("the bank answers");
        assert_eq!(response.status(), StatusCode::OK, "chaos {chaos}");
    }

    /// (balance, available balance) of a card at the bank.
    pub async fn balances(&self, card: &str) -> (i64, i64) {
        let account: Value = self
            .client
            .get(format!("{}/admin/accounts/{card}", self.bank))
            .send()
            .await
            .expect("the bank answers")
            .json()
            .await
            .expect("an account");
        (
            account["balance"].as_i64().expect("balance"),
            account["available_balance"].as_i64().expect("available"),
        )
    }

    pub async fn assert_ledger_verifies(&self) {
        let verification: Value = self
            .client
            .get(format!("{}/admin/ledger/verify", self.bank))
            .send()
            .await
            .expect("the bank answers")
            .json()
            .await
            .expect("a verification");
        assert_eq!(verification["ok"], true, "{verification}");
    }

    /// The bank's view of an authorization (`GET /api/v1/authorizations/{id}`,
    /// subject to chaos: call it with the bank calm).
    pub async fn bank_authorization(&self, id: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}/api/v1/authorizations/{id}", self.bank))
            .send()
            .await
            .expect("the bank answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn bank_count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.bank_pool)
            .await
            .expect("a bank count")
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("a gateway count")
    }

    /// Every payment in the gateway's database, as the receipts say.
    pub async fn payments(&self) -> Vec<Payment> {
        sqlx::query_as(
            "SELECT 'pay_' || id::text AS id, status::text AS status, amount, \
               bank_authorization_id, bank_capture_id, bank_refund_id, failure_code \
             FROM payments ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("payments")
    }

    /// The payment FicMart's idempotency key is about, if any.
    pub async fn payment_of_key(&self, key: &str) -> Option<String> {
        sqlx::query_scalar(
            "SELECT 'pay_' || payment_id::text FROM idempotency_keys \
             WHERE key = $1 AND payment_id IS NOT NULL",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .expect("a key")
    }

    /// Waits (bounded) until no payment is in one of `statuses`, and returns them all.
    pub async fn until_none_in(&self, statuses: &[&str], bound: Duration) -> Vec<Payment> {
        let deadline = Instant::now() + bound;
        loop {
            let payments = self.payments().await;
            let stuck: Vec<&Payment> = payments
                .iter()
                .filter(|p| statuses.contains(&p.status.as_str()))
                .collect();
            if stuck.is_empty() {
                return payments;
            }
            assert!(
                Instant::now() < deadline,
                "still in {statuses:?} after {bound:?}: {stuck:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded) until `count` payments have `status`.
    pub async fn until_count(&self, status: &str, count: usize, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            let payments = self.payments().await;
            if payments.iter().filter(|p| p.status == status).count() >= count {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// A payment row, as the receipt says.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Payment {
    pub id: String,
    pub status: String,
    pub amount: i64,
    pub bank_authorization_id: Option<String>,
    pub bank_capture_id: Option<String>,
    pub bank_refund_id: Option<String>,
    pub failure_code: Option<String>,
}

/// A request body for `POST /v1/payments`.
pub fn payment(card: crate::helpers::Card, amount: i64, n: usize) -> Value {
    crate::helpers::payment_body(card, amount, &format!("ord_{n}"), &format!("cus_{n}"))
}
