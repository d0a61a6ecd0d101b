//! Settings for `gateway serve`: flags, or environment variables of the
//! same name. Every limit and timeout is here, with its unit in its name.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

use crate::bank::RetryPolicy;
use crate::faults::{FaultSettings, Mutant};
use crate::idempotency::{Fingerprinter, Secret, SecretParser};
use crate::payments::Leases;
use crate::recovery::RecoverySettings;
use crate::store::batch::BatchLimits;
use crate::store::operations::Backoff;

/// The kinds of batched write, each with `DB_BATCH_FLUSHERS` connections.
const BATCHED_WRITES: usize = 3;
use crate::webhooks::WebhookSettings;
use crate::webhooks::secret::WebhookKey;

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The gateway's Postgres database, e.g.
    /// postgres://gateway:PASSWORD@db:5432/gateway: a role that may run
    /// the migrations. Its password is never logged, nor shown here.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The acquiring bank's base URL.
    #[arg(long, env = "BANK_URL", default_value = "http://127.0.0.1:8787")]
    pub bank_url: String,
    /// The address the API listens on (0.0.0.0: every interface).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// The API's port (and `/health`, `/docs`). 0 picks a free port.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Where the operator listener binds (`/metrics`, `/ready`, `/health`);
    /// HOST when not given. Bind it where only operators and Prometheus reach.
    #[arg(long, env = "OPERATOR_HOST")]
    pub operator_host: Option<String>,
    /// The operator listener's port: `/metrics` and `/ready` are served
    /// there only, never on PORT. 0 picks a free port.
    #[arg(long, env = "OPERATOR_PORT", default_value_t = 8081)]
    pub operator_port: u16,
    /// Postgres connections. No request holds one while the bank answers,
    /// so this bounds database work, not payments in flight.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,
    /// A request that cannot get a connection this fast answers 503.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2_000)]
    pub db_acquire_timeout_ms: u64,
    /// At start-up, how long to keep trying to reach the database (a
    /// refused connection, a server still starting) before exiting with
    /// the host, port and cause.
    #[arg(long, env = "DB_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub db_connect_timeout_ms: u64,
    /// Rows in one batched write (the start of an authorization, a
    /// settlement), at most: concurrent requests share one statement.
    #[arg(long, env = "DB_BATCH_MAX_ROWS", default_value_t = 64)]
    pub db_batch_max_rows: usize,
    /// Batched statements of each kind in flight at once; each holds a
    /// pooled connection, so three times this (three kinds: the start of
    /// an authorization, of an operation, a settlement) must stay below
    /// the pool size.
    /// One gives the biggest batches, and the best throughput measured.
    #[arg(long, env = "DB_BATCH_FLUSHERS", default_value_t = 1)]
    pub db_batch_flushers: usize,
    /// Writes waiting for a batch, at most, per kind; past it, requests
    /// wait to join the queue.
    #[arg(long, env = "DB_BATCH_QUEUE", default_value_t = 4_096)]
    pub db_batch_queue: usize,
    /// Bank HTTP attempts in flight at once, across all requests.
    #[arg(long, env = "BANK_MAX_IN_FLIGHT", default_value_t = 2_048)]
    pub bank_max_in_flight: usize,
    /// One HTTP attempt at the bank, from connecting to the last byte of
    /// its answer; past it the attempt is retried with the same key.
    #[arg(long, env = "BANK_ATTEMPT_TIMEOUT_MS", default_value_t = 3_000)]
    pub bank_attempt_timeout_ms: u64,
    /// Past this, a request answers 202 and the operation completes later.
    #[arg(long, env = "BANK_DEADLINE_MS", default_value_t = 10_000)]
    pub bank_deadline_ms: u64,
    /// Attempts of one bank call at most, the first included, all within
    /// BANK_DEADLINE_MS.
    #[arg(long, env = "BANK_MAX_ATTEMPTS", default_value_t = 8)]
    pub bank_max_attempts: u32,
    /// The wait before a bank call's first retry, at most: it doubles per
    /// retry up to BANK_MAX_BACKOFF_MS, with full jitter.
    #[arg(long, env = "BANK_BASE_BACKOFF_MS", default_value_t = 100)]
    pub bank_base_backoff_ms: u64,
    /// The longest wait between two attempts of a bank call.
    #[arg(long, env = "BANK_MAX_BACKOFF_MS", default_value_t = 2_000)]
    pub bank_max_backoff_ms: u64,
    /// How long a request owns its idempotency key and operation; must
    /// exceed the bank deadline.
    #[arg(long, env = "LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// An authorization whose outcome is unknown waits this long for its
    /// client to retry with the card (the card is never stored); meanwhile
    /// the worker only looks for it at the bank. After it, an authorization
    /// the bank does not hold is given up: `failed`, `authorization_abandoned`.
    #[arg(long, env = "AUTHORIZATION_GRACE_MS", default_value_t = 600_000)]
    pub authorization_grace_ms: u64,
    /// The secret of the idempotency fingerprint (an HMAC over each
    /// request, card included): at least 32 bytes, the same in every
    /// replica, never stored in the database. Without it a dump of the
    /// keys table would let anyone test card numbers against it.
    #[arg(long, env = "FINGERPRINT_SECRET", hide_env_values = true, value_parser = SecretParser)]
    pub fingerprint_secret: Secret,
    /// The secret before the last rotation: keys stored under it still
    /// match until they are purged.
    #[arg(long, env = "FINGERPRINT_PREVIOUS_SECRET", hide_env_values = true, value_parser = SecretParser)]
    pub fingerprint_previous_secret: Option<Secret>,
    /// After an unknown outcome, the earliest the operation is retried.
    #[arg(long, env = "RETRY_UNKNOWN_AFTER_MS", default_value_t = 1_000)]
    pub retry_unknown_after_ms: u64,
    /// Idempotency keys are purged this long after they were answered
    /// (24 hours by default).
    #[arg(long, env = "IDEMPOTENCY_RETENTION_SECONDS", default_value_t = 86_400)]
    pub idempotency_retention_seconds: u64,
    /// How often answered keys past their retention are deleted.
    #[arg(long, env = "IDEMPOTENCY_PURGE_INTERVAL_MS", default_value_t = 60_000)]
    pub idempotency_purge_interval_ms: u64,
    /// How often the recovery worker looks for operations whose outcome is unknown.
    #[arg(long, env = "RECOVERY_INTERVAL_MS", default_value_t = 1_000)]
    pub recovery_interval_ms: u64,
    /// Operations one recovery pass claims at most.
    #[arg(long, env = "RECOVERY_BATCH", default_value_t = 32)]
    pub recovery_batch: i64,
    /// The longest wait between two recovery attempts of one operation.
    #[arg(long, env = "RECOVERY_MAX_BACKOFF_MS", default_value_t = 60_000)]
    pub recovery_max_backoff_ms: u64,
    /// An operation unresolved for longer is flagged (metric, log), never dropped.
    #[arg(long, env = "RECOVERY_FLAG_AFTER_SECONDS", default_value_t = 300)]
    pub recovery_flag_after_seconds: u64,
    /// How often authorizations past their expiry are marked expired.
    #[arg(long, env = "EXPIRY_SWEEP_INTERVAL_MS", default_value_t = 1_000)]
    pub expiry_sweep_interval_ms: u64,
    /// Consecutive transient bank failures that open the circuit.
    #[arg(long, env = "CIRCUIT_FAILURE_THRESHOLD", default_value_t = 20)]
    pub circuit_failure_threshold: u32,
    /// How long the circuit stays open before a probe may try the bank.
    #[arg(long, env = "CIRCUIT_OPEN_MS", default_value_t = 5_000)]
    pub circuit_open_ms: u64,
    /// How often one of the replicas reconciles recent receipts with the
    /// bank (0: this replica never does): those new or moved since they
    /// last matched, and those left over.
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = 300_000)]
    pub reconcile_interval_ms: u64,
    /// How often a reconciliation pass also asks again about every recent
    /// payment the bank can move on its own (authorized, captured), though
    /// it matched before: the longest a change made at the bank directly
    /// goes unnoticed, give or take one RECONCILE_INTERVAL_MS.
    #[arg(long, env = "RECONCILE_SWEEP_INTERVAL_MS", default_value_t = 3_600_000)]
    pub reconcile_sweep_interval_ms: u64,
    /// Request bodies larger than this are refused with 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// A request's whole body must arrive within this once the gateway
    /// starts reading it, or the answer is 408 and the connection closed
    /// (slow-body clients). A declared Content-Length over MAX_BODY_BYTES
    /// is refused with 413 before anything is read.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 5_000)]
    pub body_read_timeout_ms: u64,
    /// Request headers larger than this, names and values together, are
    /// refused with 431. (Past 128 KiB or 96 headers the HTTP layer itself
    /// answers 431, whatever this says.)
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// A client must send a request's whole head within this, or get 408
    /// and the connection closed (slow-header clients).
    #[arg(long, env = "CLIENT_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub client_request_timeout_ms: u64,
    /// Requests per second each API key may make on average (token bucket;
    /// 0 turns rate limiting off). Counted per process: with N replicas a
    /// key may get N times this.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 100)]
    pub rate_limit_per_second: u32,
    /// Requests an API key may make at once before the rate applies (the
    /// bucket's size; 0 turns rate limiting off).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Failed authentications (401: no key, a malformed or unknown one) a
    /// client address may have at once; past them its requests are refused
    /// with 429 and `Retry-After` before any key lookup, a valid key's
    /// too. 0 turns the limit off. Counted per process, per IPv4 address
    /// or IPv6 /64 (see TRUSTED_PROXIES behind a proxy).
    #[arg(long, env = "AUTH_FAILURE_LIMIT_BURST", default_value_t = 20)]
    pub auth_failure_limit_burst: u32,
    /// Failed authentications per second a client address earns back, on
    /// average, after its burst (0 turns the limit off).
    #[arg(long, env = "AUTH_FAILURE_LIMIT_PER_SECOND", default_value_t = 1)]
    pub auth_failure_limit_per_second: u32,
    /// How long a key that authenticated is taken on trust before it is
    /// looked up again, in this process: a revoked key is refused by every
    /// replica within this time. 0 looks the key up on every request; at
    /// most 60000.
    #[arg(long, env = "API_KEY_CACHE_MS", default_value_t = 1_000)]
    pub api_key_cache_ms: u64,
    /// Proxies whose `X-Forwarded-For` is believed, comma-separated IP
    /// addresses (e.g. the load balancer's). A request from one of them is
    /// logged and limited by the address it forwarded for; from anyone
    /// else, by its own. None by default: a client can write that header.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// HTTP worker threads; 0 means one per core.
    #[arg(long, env = "WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// The key webhook signing secrets are derived from: at least 32 bytes,
    /// the same in every replica, never stored, never changed (each
    /// endpoint's secret would change with it; rotate endpoints instead).
    /// Unset, webhook endpoints cannot be registered.
    #[arg(long, env = "WEBHOOK_SECRET_KEY", hide_env_values = true, value_parser = SecretParser)]
    pub webhook_secret_key: Option<Secret>,
    /// Lets endpoints use plain http and private or loopback addresses:
    /// for tests, the simulator and local development only.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_URLS", default_value_t = false,
        action = clap::ArgAction::Set)]
    pub webhook_allow_private_urls: bool,
    /// One delivery attempt, from connecting to the last byte read.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// The wait before each retry of a failed delivery, comma-separated;
    /// after the last, the delivery has failed (about three days by default).
    #[arg(long, env = "WEBHOOK_RETRY_SCHEDULE_MS", value_delimiter = ',',
        default_values_t = crate::webhooks::DEFAULT_SCHEDULE_MS)]
    pub webhook_retry_schedule_ms: Vec<u64>,
    /// Delivery attempts in flight at once, per process.
    #[arg(long, env = "WEBHOOK_MAX_IN_FLIGHT", default_value_t = 64)]
    pub webhook_max_in_flight: usize,
    /// Delivery attempts in flight to one endpoint at once, per process.
    #[arg(long, env = "WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", default_value_t = 16)]
    pub webhook_max_in_flight_per_endpoint: usize,
    /// Delivery attempts in flight to one merchant's endpoints at once, per
    /// process: a merchant with several slow endpoints holds no more.
    #[arg(long, env = "WEBHOOK_MAX_IN_FLIGHT_PER_MERCHANT", default_value_t = 16)]
    pub webhook_max_in_flight_per_merchant: usize,
    /// How often an idle delivery worker looks for due deliveries.
    #[arg(long, env = "WEBHOOK_POLL_INTERVAL_MS", default_value_t = 250)]
    pub webhook_poll_interval_ms: u64,
    /// While payments queue for the database, a delivery worker waits at
    /// most this long between claims (0: deliveries never yield).
    #[arg(long, env = "WEBHOOK_MAX_YIELD_MS", default_value_t = 1_000)]
    pub webhook_max_yield_ms: u64,
    /// Postgres connections of the delivery workers, apart from DB_POOL_SIZE.
    #[arg(long, env = "WEBHOOK_DB_POOL_SIZE", default_value_t = 2)]
    pub webhook_db_pool_size: u32,
    /// Fault points to arm, for tests and the simulator only (see
    /// `gateway::faults`); refused by a build without them.
    #[arg(long, env = "GATEWAY_FAULTS", default_value = "", hide = true)]
    pub faults: String,
    /// Seeds the chances of the armed fault points.
    #[arg(long, env = "GATEWAY_FAULT_SEED", default_value_t = 0, hide = true)]
    pub fault_seed: u64,
    /// Skews this process's wall clock, for tests and the simulator only.
    #[arg(
        long,
        env = "GATEWAY_CLOCK_SKEW_MS",
        default_value_t = 0,
        hide = true,
        allow_hyphen_values = true
    )]
    pub clock_skew_ms: i64,
    /// Reintroduces a known bug (`gateway::faults::Mutant`), for the
    /// simulator's mutation table only.
    #[arg(long, env = "GATEWAY_MUTANT", hide = true, value_parser = parse_mutant)]
    pub mutant: Option<Mutant>,
}

fn parse_mutant(raw: &str) -> Result<Mutant, String> {
    Mutant::parse(raw).ok_or_else(|| {
        let names: Vec<&str> = Mutant::ALL.iter().map(|m| m.as_str()).collect();
        format!("unknown mutant {raw:?}: one of {}", names.join(", "))
    })
}

impl Settings {
    /// Defaults with a free port: for tests and the launcher.
    pub fn local(database_url: impl Into<String>, bank_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            bank_url: bank_url.into(),
            host: "127.0.0.1".into(),
            port: 0,
            operator_host: None,
            operator_port: 0,
            db_pool_size: 10,
            db_acquire_timeout_ms: 2_000,
            db_connect_timeout_ms: 5_000,
            db_batch_max_rows: 64,
            db_batch_flushers: 1,
            db_batch_queue: 4_096,
            bank_max_in_flight: 2_048,
            bank_attempt_timeout_ms: 3_000,
            bank_deadline_ms: 10_000,
            bank_max_attempts: 8,
            bank_base_backoff_ms: 100,
            bank_max_backoff_ms: 2_000,
            lease_ms: 30_000,
            authorization_grace_ms: 600_000,
            fingerprint_secret: Secret::random(),
            fingerprint_previous_secret: None,
            retry_unknown_after_ms: 1_000,
            idempotency_retention_seconds: 86_400,
            idempotency_purge_interval_ms: 60_000,
            recovery_interval_ms: 1_000,
            recovery_batch: 32,
            recovery_max_backoff_ms: 60_000,
            recovery_flag_after_seconds: 300,
            expiry_sweep_interval_ms: 1_000,
            circuit_failure_threshold: 20,
            circuit_open_ms: 5_000,
            reconcile_interval_ms: 300_000,
            reconcile_sweep_interval_ms: 3_600_000,
            max_body_bytes: 16 * 1024,
            body_read_timeout_ms: 5_000,
            max_header_bytes: 16 * 1024,
            client_request_timeout_ms: 5_000,
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
            auth_failure_limit_burst: 20,
            auth_failure_limit_per_second: 1,
            api_key_cache_ms: 1_000,
            trusted_proxies: Vec::new(),
            shutdown_grace_seconds: 30,
            workers: 0,
            webhook_secret_key: Some(Secret::random()),
            webhook_allow_private_urls: true,
            webhook_timeout_ms: 10_000,
            webhook_retry_schedule_ms: crate::webhooks::DEFAULT_SCHEDULE_MS.to_vec(),
            webhook_max_in_flight: 64,
            webhook_max_in_flight_per_endpoint: 16,
            webhook_max_in_flight_per_merchant: 16,
            webhook_poll_interval_ms: 250,
            webhook_max_yield_ms: 1_000,
            webhook_db_pool_size: 2,
            faults: String::new(),
            fault_seed: 0,
            clock_skew_ms: 0,
            mutant: None,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_millis(self.bank_attempt_timeout_ms),
            deadline: Duration::from_millis(self.bank_deadline_ms),
            max_attempts: self.bank_max_attempts,
            base_backoff: Duration::from_millis(self.bank_base_backoff_ms),
            max_backoff: Duration::from_millis(self.bank_max_backoff_ms),
        }
    }

    pub fn leases(&self) -> Leases {
        Leases {
            lease: Duration::from_millis(self.lease_ms),
            retry: Backoff {
                base: Duration::from_millis(self.retry_unknown_after_ms),
                max: Duration::from_millis(self.recovery_max_backoff_ms),
            },
            authorization_grace: Duration::from_millis(self.authorization_grace_ms),
        }
    }

    pub fn faults(&self) -> FaultSettings {
        FaultSettings {
            spec: self.faults.clone(),
            seed: self.fault_seed,
            skew: chrono::TimeDelta::milliseconds(self.clock_skew_ms),
            mutant: self.mutant,
        }
    }

    pub fn fingerprinter(&self) -> Fingerprinter {
        let printer = Fingerprinter::new(
            self.fingerprint_secret.clone(),
            self.fingerprint_previous_secret.clone(),
        );
        match self.mutant {
            Some(Mutant::PlainFingerprint) => printer.plain_sha256(),
            Some(Mutant::FingerprintWithoutPath) => printer.without_path(),
            _ => printer,
        }
    }

    pub fn webhooks(&self) -> WebhookSettings {
        WebhookSettings {
            key: self.webhook_secret_key.clone().map(WebhookKey::new),
            allow_private_urls: self.webhook_allow_private_urls,
            timeout: Duration::from_millis(self.webhook_timeout_ms),
            schedule: self
                .webhook_retry_schedule_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            max_in_flight: self.webhook_max_in_flight,
            max_in_flight_per_endpoint: self.webhook_max_in_flight_per_endpoint,
            max_in_flight_per_merchant: self.webhook_max_in_flight_per_merchant,
            poll_interval: Duration::from_millis(self.webhook_poll_interval_ms),
            max_yield: Duration::from_millis(self.webhook_max_yield_ms),
        }
    }

    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_rows: self.db_batch_max_rows,
            flushers: self.db_batch_flushers,
            queue: self.db_batch_queue,
        }
    }

    pub fn recovery(&self) -> RecoverySettings {
        RecoverySettings {
            interval: Duration::from_millis(self.recovery_interval_ms),
            batch: self.recovery_batch,
            flag_after: Duration::from_secs(self.recovery_flag_after_seconds),
        }
    }

    pub fn reconcile_cadence(&self) -> crate::reconcile::Cadence {
        crate::reconcile::Cadence {
            interval: Duration::from_millis(self.reconcile_interval_ms),
            sweep_interval: Duration::from_millis(self.reconcile_sweep_interval_ms),
        }
    }

    /// Where the operator listener binds: OPERATOR_HOST, or HOST.
    pub fn operator_host(&self) -> &str {
        self.operator_host.as_deref().unwrap_or(&self.host)
    }

    /// The background tasks' periods and the HTTP timeouts: 0 would stop a
    /// task (a zero interval panics in its own task while the gateway goes
    /// on serving: nothing recovered, expired or purged) or turn a
    /// timeout off. A key must outlive the time its client may come back
    /// with it: its lease and an authorization's grace.
    fn validate_periods(&self) -> Result<(), String> {
        let periods = [
            ("RECOVERY_INTERVAL_MS", self.recovery_interval_ms),
            ("EXPIRY_SWEEP_INTERVAL_MS", self.expiry_sweep_interval_ms),
            (
                "IDEMPOTENCY_PURGE_INTERVAL_MS",
                self.idempotency_purge_interval_ms,
            ),
            ("WEBHOOK_POLL_INTERVAL_MS", self.webhook_poll_interval_ms),
            ("CLIENT_REQUEST_TIMEOUT_MS", self.client_request_timeout_ms),
            ("BODY_READ_TIMEOUT_MS", self.body_read_timeout_ms),
            ("DB_ACQUIRE_TIMEOUT_MS", self.db_acquire_timeout_ms),
            ("CIRCUIT_OPEN_MS", self.circuit_open_ms),
        ];
        if let Some((name, _)) = periods.iter().find(|(_, ms)| *ms == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.recovery_batch < 1 {
            return Err(format!(
                "RECOVERY_BATCH ({}) must be at least 1",
                self.recovery_batch
            ));
        }
        let retention_ms = self.idempotency_retention_seconds.saturating_mul(1_000);
        let outlived = self.lease_ms.max(self.authorization_grace_ms);
        if retention_ms < outlived {
            return Err(format!(
                "IDEMPOTENCY_RETENTION_SECONDS ({}) must cover LEASE_MS ({}) and AUTHORIZATION_GRACE_MS ({}): a key purged before its client comes back makes a second payment",
                self.idempotency_retention_seconds, self.lease_ms, self.authorization_grace_ms
            ));
        }
        Ok(())
    }

    /// Refuses settings that would break an invariant rather than a limit.
    pub fn validate(&self) -> Result<(), String> {
        if self.port != 0 && self.operator_port == self.port {
            return Err(format!(
                "OPERATOR_PORT ({}) must differ from PORT: the operator endpoints are kept off the public listener",
                self.operator_port
            ));
        }
        let margin_ms = u64::try_from(crate::payments::LEASE_MARGIN.as_millis()).unwrap_or(0);
        if self.lease_ms < self.bank_deadline_ms.saturating_add(margin_ms) {
            return Err(format!(
                "LEASE_MS ({}) must be at least BANK_DEADLINE_MS ({}) plus {margin_ms}, or a bank call could outlive its lease and meet its own retry at the bank",
                self.lease_ms, self.bank_deadline_ms
            ));
        }
        if self.api_key_cache_ms > crate::api::key_cache::MAX_API_KEY_CACHE_MS {
            return Err(format!(
                "API_KEY_CACHE_MS ({}) must be at most {}: it is how long a revoked key goes on working",
                self.api_key_cache_ms,
                crate::api::key_cache::MAX_API_KEY_CACHE_MS
            ));
        }
        if self.bank_attempt_timeout_ms > self.bank_deadline_ms {
            return Err(format!(
                "BANK_ATTEMPT_TIMEOUT_MS ({}) must be at most BANK_DEADLINE_MS ({}): an attempt is never cut short, so a longer one would never be made",
                self.bank_attempt_timeout_ms, self.bank_deadline_ms
            ));
        }
        if self.db_pool_size == 0 || self.bank_max_in_flight == 0 || self.bank_max_attempts == 0 {
            return Err(
                "pool size, bank in-flight limit and bank attempts must be at least 1".into(),
            );
        }
        if self.webhook_max_in_flight == 0
            || self.webhook_max_in_flight_per_endpoint == 0
            || self.webhook_max_in_flight_per_merchant == 0
            || self.webhook_timeout_ms == 0
            || self.webhook_db_pool_size == 0
        {
            return Err(
                "webhook in-flight limits, timeout and pool size must be at least 1".into(),
            );
        }
        self.validate_periods()?;
        let schedule = &self.webhook_retry_schedule_ms;
        if schedule.len() > crate::webhooks::MAX_RETRIES
            || schedule
                .iter()
                .any(|ms| *ms > crate::webhooks::MAX_RETRY_WAIT_MS)
        {
            return Err(format!(
                "WEBHOOK_RETRY_SCHEDULE_MS must hold at most {} waits of at most {} ms (a week) each",
                crate::webhooks::MAX_RETRIES,
                crate::webhooks::MAX_RETRY_WAIT_MS
            ));
        }
        if self.db_batch_max_rows == 0 || self.db_batch_flushers == 0 || self.db_batch_queue == 0 {
            return Err("batch rows, flushers and queue must be at least 1".into());
        }
        // The batched writes must leave connections for everything else.
        let batch_connections =
            u32::try_from(self.db_batch_flushers.saturating_mul(BATCHED_WRITES))
                .unwrap_or(u32::MAX);
        if batch_connections >= self.db_pool_size {
            return Err(format!(
                "DB_BATCH_FLUSHERS ({}) times {BATCHED_WRITES} (the batched writes) must be below DB_POOL_SIZE ({})",
                self.db_batch_flushers, self.db_pool_size
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::local("postgres://localhost/gateway", "http://127.0.0.1:1")
    }

    #[test]
    fn the_local_settings_are_valid() {
        assert_eq!(settings().validate(), Ok(()));
    }

    #[test]
    fn an_attempt_longer_than_the_deadline_is_refused() {
        let mut s = settings();
        s.bank_attempt_timeout_ms = s.bank_deadline_ms + 1;
        let refused = s.validate().unwrap_err();
        assert!(refused.contains("BANK_ATTEMPT_TIMEOUT_MS"), "{refused}");
    }

    #[test]
    fn the_batched_writes_must_leave_the_pool_a_connection() {
        let mut s = settings();
        s.db_pool_size = 10;
        s.db_batch_flushers = 3;
        assert_eq!(s.validate(), Ok(()), "3 kinds x 3 flushers leave one of 10");
        s.db_pool_size = 9;
        let refused = s.validate().unwrap_err();
        assert!(refused.contains("DB_BATCH_FLUSHERS (3)"), "{refused}");
    }

    #[test]
    fn a_lease_shorter_than_a_bank_call_is_refused() {
        let mut s = settings();
        s.lease_ms = s.bank_deadline_ms;
        let refused = s.validate().unwrap_err();
        assert!(refused.contains("LEASE_MS"), "{refused}");
    }

    #[test]
    fn a_zero_period_is_refused_by_name() {
        type Field = fn(&mut Settings) -> &mut u64;
        let fields: [(&str, Field); 4] = [
            ("RECOVERY_INTERVAL_MS", |s| &mut s.recovery_interval_ms),
            ("EXPIRY_SWEEP_INTERVAL_MS", |s| {
                &mut s.expiry_sweep_interval_ms
            }),
            ("IDEMPOTENCY_PURGE_INTERVAL_MS", |s| {
                &mut s.idempotency_purge_interval_ms
            }),
            ("CLIENT_REQUEST_TIMEOUT_MS", |s| {
                &mut s.client_request_timeout_ms
            }),
        ];
        for (name, field) in fields {
            let mut s = settings();
            *field(&mut s) = 0;
            let refused = s.validate().unwrap_err();
            assert!(refused.starts_with(name), "{name}: {refused}");
        }
        let mut s = settings();
        s.recovery_batch = 0;
        assert!(s.validate().unwrap_err().contains("RECOVERY_BATCH"));
    }

    #[test]
    fn a_webhook_schedule_is_bounded() {
        let mut s = settings();
        s.webhook_retry_schedule_ms = vec![crate::webhooks::MAX_RETRY_WAIT_MS];
        assert_eq!(s.validate(), Ok(()));
        s.webhook_retry_schedule_ms = vec![9_300_000_000_000_000];
        let refused = s.validate().unwrap_err();
        assert!(refused.contains("WEBHOOK_RETRY_SCHEDULE_MS"), "{refused}");
        s.webhook_retry_schedule_ms = vec![1; crate::webhooks::MAX_RETRIES + 1];
        assert!(s.validate().is_err());
    }

    #[test]
    fn keys_are_kept_at_least_as_long_as_their_clients_may_come_back() {
        let mut s = settings();
        s.authorization_grace_ms = 600_000;
        s.idempotency_retention_seconds = 600;
        assert_eq!(s.validate(), Ok(()));
        s.idempotency_retention_seconds = 599;
        let refused = s.validate().unwrap_err();
        assert!(
            refused.contains("IDEMPOTENCY_RETENTION_SECONDS"),
            "{refused}"
        );
        s.idempotency_retention_seconds = 0;
        assert!(s.validate().is_err());
    }

    #[test]
    fn a_key_cache_longer_than_a_minute_is_refused() {
        let mut s = settings();
        s.api_key_cache_ms = crate::api::key_cache::MAX_API_KEY_CACHE_MS;
        assert_eq!(s.validate(), Ok(()));
        s.api_key_cache_ms += 1;
        let refused = s.validate().unwrap_err();
        assert!(refused.contains("API_KEY_CACHE_MS"), "{refused}");
    }
}
