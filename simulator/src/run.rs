//! One simulation, in phases, on a [`Stack`] (Postgres and the bank):
//!
//! 1. [`Session::start`]: fresh cards at the bank, a fresh gateway database,
//!    `--replicas` gateway processes on it, the scenario's chaos at the bank;
//! 2. [`Session::drive`]: the traffic from `--concurrency` workers, while a
//!    fault task kills replicas (SIGKILL, then a restart on the same port)
//!    and opens bank outages on schedule;
//! 3. [`Session::settle`]: faults lifted, then a bounded wait until no
//!    payment is in flight;
//! 4. [`Session::observe`]: receipts, the bank's books, reconciliation;
//! 5. [`Session::finish`]: the invariants, the report, the gateways stopped.
//!
//! A test may act between the phases (e.g. touch the bank behind the
//! gateway's back after `settle`, to prove that a check fails).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use crate::bank::{BankAdmin, NewCard};
use crate::driver::{Driver, FlowRecord};
use crate::invariants::webhooks::{
    Delivery, EndpointSeen, PaymentHistory, Rotation, WebhookObservations,
};
use crate::invariants::{
    self, BankAuthorization, BankKey, CardBalance, CardData, GatewayOperation, Observations,
    TappedCall,
};
use crate::process::{GatewayOptions, GatewayOutput, GatewayProcess, free_port};
use crate::receiver::Receiver;
use crate::revocation::KeyRevocation;
use crate::run_report::{Event, RunReport};
use crate::scenario::Scenario;
use crate::stack::{MERCHANTS, Stack};
use crate::stats::{micros, millis};
use gateway::webhooks::signature::SigningSecret;
use mock_bank::telemetry::Counters;

/// Each fresh card opens with $100,000 at least ...
pub const OPENING_BALANCE: i64 = 10_000_000;
/// ... and with room for every plan on it to hold this much twice (a
/// restarter authorizes twice), so that no funded card of the run runs dry
/// however many payments share it: the checks take a 402 on such a card
/// for a lie.
const MOST_HELD_PER_PLAN: i64 = 2 * crate::scenario::MAX_AMOUNT;
/// Except the first card of a run with two or more: it opens with room
/// for two of the largest holds ($1,000), so that it runs out mid-run even
/// in a short run. Its authorizations then race its captures, voids and
/// expiries for the same funds (a race that once made the bank answer
/// 500), and a 402 on it can be the truth.
const TIGHT_CARD_BALANCE: i64 = MOST_HELD_PER_PLAN;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often settling looks again for payments in flight and pending
/// deliveries.
const QUIESCE_POLL: Duration = Duration::from_millis(250);
/// The longest one step of reading the world after the traffic may take
/// (the receipts of 100,000 payments take a few minutes).
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// One HTTP attempt of a simulation's gateway at the bank, at most (its
/// `--bank-attempt-timeout-ms` below): after it the gateway has hung up,
/// whenever the bank (or the tap in front of it) notices.
pub const BANK_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1_000);

/// How long a simulation's gateways wait for an authorization's client.
pub const AUTHORIZATION_GRACE_MS: u64 = 8_000;

/// The gateway's settings in a simulation: short timeouts and leases so
/// that crashes and lost answers are recovered in seconds, not minutes;
/// keys kept only seconds after their answer (clients replay within that),
/// so that a purge that counts from the wrong moment is seen; and no
/// background reconciliation (it would repair what the checks must see).
pub const GATEWAY_SETTINGS: [(&str, &str); 16] = [
    ("--bank-attempt-timeout-ms", "1000"),
    ("--authorization-grace-ms", "8000"),
    ("--idempotency-retention-seconds", "15"),
    ("--idempotency-purge-interval-ms", "500"),
    ("--bank-deadline-ms", "3000"),
    ("--lease-ms", "5000"),
    ("--retry-unknown-after-ms", "500"),
    ("--recovery-interval-ms", "250"),
    ("--recovery-max-backoff-ms", "2000"),
    ("--circuit-open-ms", "1000"),
    ("--reconcile-interval-ms", "0"),
    ("--shutdown-grace-seconds", "5"),
    // The run's webhook receiver listens on loopback; its deliveries are
    // retried for about 20 s, not three days.
    ("--webhook-allow-private-urls", "true"),
    ("--webhook-timeout-ms", "1000"),
    (
        "--webhook-retry-schedule-ms",
        "100,200,400,800,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000",
    ),
    ("--webhook-poll-interval-ms", "50"),
];

/// The `--webhook-timeout-ms` above.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How long the old secret keeps signing after the run's rotation.
const ROTATION_GRACE_SECONDS: u64 = 3_600;

/// Settings passed only when this gateway build has them: the simulated
/// client is one merchant sending thousands of requests, which a per-key
/// rate limit would throttle (it is tested elsewhere); and deliveries yield
/// to a saturated payment path for 200 ms at most, not a second, so that a
/// long run's backlog drains within the settling time (the checks are on
/// what is delivered, not how late).
pub const OPTIONAL_GATEWAY_SETTINGS: [(&str, &str); 2] = [
    ("--rate-limit-per-second", "0"),
    ("--webhook-max-yield-ms", "200"),
];

/// [`GATEWAY_SETTINGS`] and those of [`OPTIONAL_GATEWAY_SETTINGS`] that
/// `gateway serve --help` of `program` lists; with `reconcile_every`, the
/// background reconciliation on at that interval and sweeping every pass.
fn gateway_args(
    program: Option<&PathBuf>,
    reconcile_every: Option<Duration>,
) -> anyhow::Result<Vec<String>> {
    let exe = match program {
        Some(program) => program.clone(),
        None => std::env::current_exe()?,
    };
    let help = std::process::Command::new(exe)
        .args(["gateway", "serve", "--help"])
        .output()
        .context("asking the gateway for its settings")?;
    let help = String::from_utf8_lossy(&help.stdout);
    let interval_ms = reconcile_every.map(|every| every.as_millis().max(1).to_string());
    let mut args: Vec<String> = GATEWAY_SETTINGS
        .iter()
        .chain(
            OPTIONAL_GATEWAY_SETTINGS
                .iter()
                .filter(|(flag, _)| help.contains(&format!("{flag} "))),
        )
        .flat_map(|&(flag, value)| match (flag, &interval_ms) {
            ("--reconcile-interval-ms", Some(ms)) => [flag.to_owned(), ms.clone()],
            _ => [flag.to_owned(), value.to_owned()],
        })
        .collect();
    if interval_ms.is_some() {
        args.extend(["--reconcile-sweep-interval-ms".to_owned(), "0".to_owned()]);
    }
    Ok(args)
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub concurrency: usize,
    pub replicas: usize,
    /// Stop starting new payments after this long.
    pub duration: Option<Duration>,
    /// The `simulator` binary for the gateway children (tests must say).
    pub program: Option<PathBuf>,
    /// The gateways' output on this terminal instead of log files.
    pub verbose: bool,
    /// Where the gateways' log files go: the temp directory when `None`.
    /// A failed run keeps its logs (the report names them), so a caller
    /// that expects failures (the mutation table, tests) gives a directory
    /// of its own and removes it.
    pub log_dir: Option<PathBuf>,
    /// A counter line on stderr.
    pub progress: bool,
    /// The longest wait for in-flight payments to settle.
    pub quiesce_timeout: Duration,
    /// Where the gateways send their bank calls, when not straight to the
    /// bank (a test puts a deliberately broken proxy there).
    pub gateway_bank_url: Option<String>,
    /// A running system to use instead of starting gateways: see [`Given`].
    pub given: Option<Given>,
    /// A known bug the gateways run with (`gateway::faults::Mutant`), for
    /// the mutation table.
    pub mutant: Option<String>,
    /// Run the gateways' background reconciliation this often, sweeping
    /// every pass, instead of leaving it off.
    pub reconcile_every: Option<Duration>,
}

/// A running system that `simulator run --gateway-url …` uses instead of
/// starting its own: nothing is started or killed; the chaos goes through
/// the bank's `/admin/chaos` (its previous settings restored at the end);
/// the checks read both databases directly.
#[derive(Clone)]
pub struct Given {
    /// The gateways' roots; requests go round-robin.
    pub gateway_urls: Vec<String>,
    /// An API key the gateways accept.
    pub api_key: String,
    /// The bank behind the gateways (its root, with `/admin`).
    pub bank_url: String,
    pub gateway_database_url: String,
    pub bank_database_url: String,
}

impl std::fmt::Debug for Given {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Given")
            .field("gateway_urls", &self.gateway_urls)
            .field("api_key", &"…")
            .field("bank_url", &self.bank_url)
            .finish_non_exhaustive()
    }
}

impl Given {
    /// One line for the report: which mode the run ran in.
    pub fn describe(&self) -> String {
        format!(
            "given URLs: {} gateway(s) ({}), bank {}; nothing started, nothing killed",
            self.gateway_urls.len(),
            self.gateway_urls.join(", "),
            self.bank_url
        )
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
            replicas: 1,
            duration: None,
            program: None,
            verbose: false,
            log_dir: None,
            progress: false,
            quiesce_timeout: Duration::from_secs(120),
            gateway_bank_url: None,
            given: None,
            mutant: None,
            reconcile_every: None,
        }
    }
}

/// The gateway replicas: each restarts on its own port, with its own
/// fault points and clock.
pub struct Replicas {
    processes: Vec<GatewayProcess>,
    /// Gateways that someone else runs (no processes then).
    given: Vec<String>,
    options: Vec<GatewayOptions>,
    database_url: String,
    bank_url: String,
}

impl Replicas {
    async fn start(
        count: usize,
        database_url: &str,
        bank_url: &str,
        run: &RunOptions,
        scenario: &Scenario,
        run_id: &str,
    ) -> anyhow::Result<Self> {
        let mut replicas = Self {
            processes: Vec::new(),
            given: Vec::new(),
            options: Vec::new(),
            database_url: database_url.to_owned(),
            bank_url: bank_url.to_owned(),
        };
        let mut args = gateway_args(run.program.as_ref(), run.reconcile_every)?;
        // Stated, not defaulted: the revoked-key check counts on it.
        args.extend([
            "--api-key-cache-ms".to_owned(),
            crate::revocation::API_KEY_CACHE_MS.to_string(),
        ]);
        // One secret for every replica: a key retried on another must match.
        let secret = gateway::idempotency::Secret::random();
        let webhook_key = gateway::idempotency::Secret::random();
        for i in 0..count.max(1) {
            let label = format!("run-{run_id}-gateway-{i}");
            let output = match (run.verbose, &run.log_dir) {
                (true, _) => GatewayOutput::Inherit,
                (false, None) => GatewayOutput::temp_log_file(&label),
                (false, Some(dir)) => GatewayOutput::LogFile(dir.join(format!("{label}.log"))),
            };
            let mut options = GatewayOptions::new(free_port()?, output);
            options.db_pool_size = 20;
            options.program = run.program.clone();
            options.args = args.clone();
            options
                .args
                .extend(replica_faults(scenario, i, run.mutant.as_deref()));
            options.fingerprint_secret = secret.clone();
            options.webhook_secret_key = webhook_key.clone();
            let process = GatewayProcess::spawn(database_url, bank_url, &options)?;
            replicas.processes.push(process);
            replicas.options.push(options);
        }
        for process in &mut replicas.processes {
            process.wait_ready().await?;
        }
        Ok(replicas)
    }

    fn given(urls: &[String]) -> Self {
        Self {
            processes: Vec::new(),
            given: urls.to_vec(),
            options: Vec::new(),
            database_url: String::new(),
            bank_url: String::new(),
        }
    }

    /// Each replica's root URL (the given ones when the run started none).
    pub fn urls(&self) -> Vec<String> {
        if !self.given.is_empty() {
            return self.given.clone();
        }
        self.processes.iter().map(|p| p.url().to_owned()).collect()
    }

    fn logs(&self) -> Vec<PathBuf> {
        self.options
            .iter()
            .filter_map(|o| match &o.output {
                GatewayOutput::LogFile(path) => Some(path.clone()),
                GatewayOutput::Inherit | GatewayOutput::Discard => None,
            })
            .collect()
    }

    /// How many replicas the simulator runs.
    pub fn count(&self) -> usize {
        self.processes.len()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.processes[i].pid()
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.processes[i].kill().await?;
        Ok(())
    }

    /// SIGTERM: in-flight requests finish, leases are handed back.
    pub async fn terminate(&mut self, i: usize) -> anyhow::Result<std::process::ExitStatus> {
        self.processes[i].terminate(SHUTDOWN_GRACE).await
    }

    /// The replicas that exited by themselves since they were (re)started.
    pub fn exited(&mut self) -> anyhow::Result<Vec<(usize, std::process::ExitStatus)>> {
        let mut exited = Vec::new();
        for (i, process) in self.processes.iter_mut().enumerate() {
            if let Some(status) = process.try_exited()? {
                exited.push((i, status));
            }
        }
        Ok(exited)
    }

    /// Starts replica `i` again on its port (a few tries: the port may be
    /// briefly unavailable).
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            let mut process =
                GatewayProcess::spawn(&self.database_url, &self.bank_url, &self.options[i])?;
            match process.wait_ready().await {
                Ok(()) => {
                    self.processes[i] = process;
                    return Ok(());
                }
                Err(e) => {
                    process.kill().await.ok();
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the restart failed")))
            .with_context(|| format!("restarting gateway replica {i}"))
    }

    /// The faults lifted: every replica stopped gracefully (or found dead)
    /// and started again without its fault points, so that settling is
    /// not itself disturbed. Clock skews stay: they are not faults a
    /// system recovers from, but a condition it lives with.
    async fn calm(&mut self) -> anyhow::Result<()> {
        for i in 0..self.processes.len() {
            self.terminate(i).await?;
            self.options[i].args = without_fault_points(&self.options[i].args);
            self.restart(i).await?;
        }
        Ok(())
    }

    async fn stop(&mut self) {
        for process in &mut self.processes {
            if let Err(e) = process.terminate(SHUTDOWN_GRACE).await {
                eprintln!("stopping a gateway replica: {e:#}");
            }
        }
    }
}

/// Replica `i`'s fault flags: its fault points (seeded per replica), its
/// clock skew, and the mutant the run reintroduces, if any.
fn replica_faults(scenario: &Scenario, i: usize, mutant: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    let gateways = &scenario.faults.gateways;
    if let Some(faults) = gateways.get(i % gateways.len().max(1)) {
        if !faults.points.is_empty() {
            let seed = scenario.seed.wrapping_add(u64::try_from(i).unwrap_or(0));
            args.extend([
                "--faults".to_owned(),
                faults.points.clone(),
                "--fault-seed".to_owned(),
                seed.to_string(),
            ]);
        }
        if faults.clock_skew_ms != 0 {
            args.push(format!("--clock-skew-ms={}", faults.clock_skew_ms));
        }
    }
    if let Some(mutant) = mutant {
        args.extend(["--mutant".to_owned(), mutant.to_owned()]);
    }
    args
}

/// `args` without `--faults SPEC` and `--fault-seed N`.
fn without_fault_points(args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut skip = false;
    for arg in args {
        if skip {
            skip = false;
        } else if arg == "--faults" || arg == "--fault-seed" {
            skip = true;
        } else {
            kept.push(arg.clone());
        }
    }
    kept
}

/// What a run produced before the checks.
pub struct Session {
    pub scenario: Scenario,
    options: RunOptions,
    run_id: String,
    admin: BankAdmin,
    bank_url: String,
    bank_database: String,
    gateway_database: String,
    replicas: Arc<Mutex<Replicas>>,
    driver: Arc<Driver>,
    cards: Vec<NewCard>,
    /// The bank's counters when the run began; `None` when they could not
    /// be read (then nothing is judged on them).
    counters_before: Option<Counters>,
    since: chrono::DateTime<chrono::Utc>,
    pub flows: Vec<FlowRecord>,
    events: Vec<Event>,
    traffic_ms: u64,
    settle_ms: u64,
    in_flight: Vec<String>,
    /// With given URLs: the bank's chaos settings before the run, restored
    /// at the end.
    chaos_before: Option<Value>,
    /// The gateways' own Postgres, when the simulator started one for them
    /// (so that it can stop and start it without touching the bank's).
    gateway_postgres: Option<Arc<throwaway_pg::Postgres>>,
    /// Between the gateways and the bank, when the simulator runs them:
    /// what they sent, with which key, when.
    tap: Option<bank_tap::BankProxy>,
    /// The merchants' webhook receiver and their endpoints, when the
    /// simulator runs the gateways.
    webhooks: Option<RunWebhooks>,
    /// A spare key of FicMart's, revoked halfway (see [`crate::revocation`]);
    /// `None` on gateways the run did not start.
    spare_key: Option<String>,
    /// What became of it.
    revocation: Option<KeyRevocation>,
}

/// The run's webhook receiver, and each merchant's endpoint on it.
struct RunWebhooks {
    receiver: Receiver,
    endpoints: Arc<std::sync::Mutex<Vec<EndpointSeen>>>,
    /// The merchants' API keys, in the order of the endpoints.
    api_keys: Vec<String>,
}

impl Session {
    /// Cards, gateways and chaos, ready for traffic.
    pub async fn start(
        stack: &Stack,
        scenario: Scenario,
        options: RunOptions,
    ) -> anyhow::Result<Self> {
        Self::start_on(Some(stack), scenario, options).await
    }

    /// Cards and chaos on the system `options.given` names, ready for
    /// traffic; nothing is started. Refuses a scenario that kills gateways.
    pub async fn start_given(scenario: Scenario, options: RunOptions) -> anyhow::Result<Self> {
        Self::start_on(None, scenario, options).await
    }

    async fn start_on(
        stack: Option<&Stack>,
        scenario: Scenario,
        options: RunOptions,
    ) -> anyhow::Result<Self> {
        let run_id = format!("{:08x}", rand::random::<u32>());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let bank_url = match (stack, &options.given) {
            (_, Some(given)) => {
                refuse_kills(&scenario)?;
                if given.gateway_urls.is_empty() {
                    bail!("no gateway URL given");
                }
                given.bank_url.trim_end_matches('/').to_owned()
            }
            (Some(stack), None) => stack.urls().bank.clone(),
            (None, None) => bail!("neither a stack nor given URLs to run on"),
        };
        let admin = BankAdmin::new(http, &bank_url);
        admin.health().await?;
        let chaos_before = match &options.given {
            Some(_) => Some(
                admin
                    .chaos_settings()
                    .await
                    .context("reading the bank's chaos settings")?,
            ),
            None => None,
        };
        // Calm while setting up (the admin API is never subject to chaos,
        // but an outage left by a previous run would be).
        admin.put_chaos(&calm()).await?;
        let mut cards = Vec::new();
        let per_card = scenario
            .payments
            .len()
            .div_ceil(usize::from(scenario.cards.max(1)));
        let balance = OPENING_BALANCE.max(
            i64::try_from(per_card).unwrap_or(i64::MAX / MOST_HELD_PER_PLAN) * MOST_HELD_PER_PLAN,
        );
        for i in 0..scenario.cards.max(1) {
            let balance = if i == 0 && scenario.cards >= 2 {
                TIGHT_CARD_BALANCE
            } else {
                balance
            };
            cards.push(admin.open_random_card(balance).await?);
        }
        let mut empty_card = admin.open_random_card(0).await?;
        empty_card.balance = 0;
        cards.push(empty_card.clone());
        let mut gateway_postgres = None;
        let mut tap = None;
        let mut webhooks = None;
        let mut spare_key = None;
        let (gateway_database, bank_database, api_keys, replicas) = match (stack, &options.given) {
            (_, Some(given)) => (
                given.gateway_database_url.clone(),
                given.bank_database_url.clone(),
                vec![given.api_key.clone()],
                Replicas::given(&given.gateway_urls),
            ),
            (Some(stack), None) => {
                gateway_postgres = own_postgres().await?;
                let postgres = gateway_postgres.as_deref().unwrap_or(stack.postgres());
                let (gateway_database, api_keys) =
                    crate::stack::gateway_database_on(postgres, &MERCHANTS).await?;
                spare_key =
                    Some(crate::stack::create_api_key(&gateway_database, MERCHANTS[0]).await?);
                let tapped = bank_tap::BankProxy::start(&bank_url);
                let replicas = Replicas::start(
                    options.replicas,
                    &gateway_database,
                    options.gateway_bank_url.as_deref().unwrap_or(&tapped.url),
                    &options,
                    &scenario,
                    &run_id,
                )
                .await?;
                if scenario.faults.rewritten_answers {
                    rewrite_answers(&tapped);
                }
                tap = Some(tapped);
                let receiver = Receiver::start(scenario.seed).await?;
                let endpoints = register_endpoints(
                    &replicas.urls()[0],
                    &api_keys,
                    &receiver,
                    &gateway_database,
                    &run_id,
                )
                .await?;
                webhooks = Some(RunWebhooks {
                    receiver,
                    endpoints: Arc::new(std::sync::Mutex::new(endpoints)),
                    api_keys: api_keys.clone(),
                });
                let bank_database = stack.urls().bank_database.clone();
                (gateway_database, bank_database, api_keys, replicas)
            }
            (None, None) => unreachable!("refused above"),
        };
        let driver = Driver::new(
            replicas.urls(),
            api_keys,
            run_id.clone(),
            cards[..cards.len() - 1].to_vec(),
            empty_card,
            options.concurrency,
        )?;
        let counters_before = admin.counters().await.ok();
        Ok(Self {
            scenario,
            options,
            run_id,
            admin,
            bank_url,
            bank_database,
            gateway_database,
            replicas: Arc::new(Mutex::new(replicas)),
            driver: Arc::new(driver),
            cards,
            counters_before,
            since: chrono::Utc::now() - chrono::TimeDelta::seconds(1),
            flows: Vec::new(),
            events: Vec::new(),
            traffic_ms: 0,
            settle_ms: 0,
            in_flight: Vec::new(),
            chaos_before,
            gateway_postgres,
            tap,
            webhooks,
            spare_key,
            revocation: None,
        })
    }

    pub fn bank_url(&self) -> &str {
        &self.bank_url
    }

    /// The gateway replicas' database (a test may write to it behind their
    /// back).
    pub fn gateway_database(&self) -> &str {
        &self.gateway_database
    }

    /// The traffic, with the fault plan running beside it.
    pub async fn drive(&mut self) -> anyhow::Result<()> {
        let chaos = self.scenario.bank_chaos();
        self.admin
            .put_chaos(&chaos)
            .await
            .context("applying the chaos profile")?;
        // The driver's clock: request and fault times share it.
        let started = self.driver.started();
        let (stop_tx, stop_rx) = watch::channel(false);
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let targets = crate::faults::Targets {
            replicas: self.replicas.clone(),
            admin: self.admin.clone(),
            gateway_database: self.gateway_database.clone(),
            gateway_postgres: self.gateway_postgres.clone(),
        };
        let fault_task = tokio::spawn(crate::faults::run(
            self.scenario.clone(),
            targets,
            self.driver.clone(),
            stop_rx.clone(),
            events.clone(),
        ));
        let prober = self.spare_key.clone().map(|key| {
            tokio::spawn(crate::revocation::probe_and_revoke(
                self.driver.clone(),
                self.replicas.clone(),
                key,
                self.gateway_database.clone(),
                self.scenario.payments.len(),
                stop_rx.clone(),
            ))
        });
        let progress = self.options.progress.then(|| {
            tokio::spawn(show_progress(
                self.driver.clone(),
                self.scenario.payments.len(),
                events.clone(),
                stop_rx,
            ))
        });

        let rotation = self.webhooks.as_ref().map(|webhooks| {
            tokio::spawn(rotate_halfway(
                self.driver.clone(),
                self.replicas.clone(),
                webhooks.endpoints.clone(),
                webhooks.api_keys[0].clone(),
                self.scenario.payments.len(),
            ))
        });
        let plans = Arc::new(self.scenario.payments.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let deadline = self.options.duration.map(|d| started + d);
        let workers: Vec<_> = (0..self.options.concurrency.max(1))
            .map(|_| {
                let (driver, plans, next) = (self.driver.clone(), plans.clone(), next.clone());
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= plans.len() || deadline.is_some_and(|d| Instant::now() >= d) {
                            break done;
                        }
                        done.push(driver.run_flow(i, plans[i]).await);
                    }
                })
            })
            .collect();
        let mut flows = Vec::new();
        for worker in workers {
            flows.extend(worker.await.context("a traffic worker panicked")?);
        }
        flows.sort_by_key(|f| f.index);
        self.flows = flows;
        self.traffic_ms = millis(started.elapsed());
        stop_tx.send(true).ok();
        if let Some(rotation) = rotation {
            rotation.abort();
        }
        let faults = fault_task.await.context("the fault task panicked")?;
        if let Some(prober) = prober {
            self.revocation = Some(prober.await.context("the key prober panicked")?);
        }
        if let Some(progress) = progress {
            progress.await.ok();
            eprintln!();
        }
        self.events = std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));
        faults
    }

    /// Lifts every fault, then waits (bounded) until no payment is in flight.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.admin.put_chaos(&calm()).await?;
        self.replicas.lock().await.calm().await?;
        let pool = gateway::store::connect(&self.gateway_database, 2, Duration::from_secs(10))
            .await
            .context("connecting to the gateway's database")?;
        let result = async {
            loop {
                let in_flight: Vec<String> = sqlx::query_scalar(
                    "SELECT 'pay_' || id::text FROM payments \
                     WHERE status::text IN ('pending', 'capturing', 'voiding', 'refunding') \
                     ORDER BY created_at",
                )
                .fetch_all(&pool)
                .await?;
                if in_flight.is_empty() || started.elapsed() >= self.options.quiesce_timeout {
                    return Ok::<_, anyhow::Error>(in_flight);
                }
                tokio::time::sleep(QUIESCE_POLL).await;
            }
        }
        .await;
        let result = match result {
            Ok(in_flight) if in_flight.is_empty() && self.options.reconcile_every.is_some() => {
                let bound = self
                    .options
                    .quiesce_timeout
                    .saturating_sub(started.elapsed());
                swept_since_now(&pool, bound).await.map(|()| in_flight)
            }
            other => other,
        };
        let drained = match &self.webhooks {
            Some(webhooks) => {
                webhooks.receiver.calm();
                let bound = self.options.quiesce_timeout;
                drain_deliveries(&pool, started, bound, QUIESCE_POLL)
                    .await
                    .map(|_| ())
            }
            None => Ok(()),
        };
        pool.close().await;
        self.in_flight = result?;
        drained?;
        self.settle_ms = millis(started.elapsed());
        Ok(())
    }

    /// Reads the world: receipts, the bank's books, reconciliation. Each
    /// step is bounded and, with progress on, says when it ends.
    pub async fn observe(&self) -> anyhow::Result<Observations> {
        let receipts = self.step("receipts", self.receipts()).await?;
        let bank = self
            .step("the bank's authorizations", self.bank_authorizations())
            .await?;
        let cards = self.step("card balances", self.card_balances()).await?;
        let ledger = self
            .step("the bank's ledger", self.admin.verify_ledger())
            .await?;
        let reconcile = self
            .step("reconciliation", async { Ok(self.reconcile().await) })
            .await?;
        let bank_keys = self.step("the bank's keys", self.bank_keys()).await?;
        let operations = self.step("operations", self.operations()).await?;
        let webhooks = self
            .step("webhook deliveries", self.webhook_observations())
            .await?;
        // Unknown (not zero) when the bank's counters cannot be read.
        let bank_own_errors = match (&self.counters_before, self.admin.counters().await) {
            (Some(before), Ok(after)) => {
                Some(after.internal_errors.saturating_sub(before.internal_errors))
            }
            (_, _) => None,
        };
        Ok(Observations {
            seed: self.scenario.seed,
            flows: self.flows.clone(),
            receipts,
            bank,
            bank_keys,
            operations,
            tapped: self.tapped(),
            cards,
            ledger,
            reconcile,
            in_flight: self.in_flight.clone(),
            authorization_grace_ms: AUTHORIZATION_GRACE_MS,
            key_retention_ms: u64::try_from(crate::driver::KEY_RETENTION.as_millis())
                .unwrap_or(u64::MAX),
            card_data: self.secrets(),
            webhooks,
            revocation: self.revocation.clone(),
            bank_own_errors,
            index: Default::default(),
        })
    }

    /// One step of reading the world after the traffic: bounded by
    /// [`STEP_TIMEOUT`], so a step that never ends fails the run naming
    /// itself instead of leaving it idle (a 100,000-payment run once sat
    /// 25 minutes after its traffic with nothing to show where).
    async fn step<T>(
        &self,
        name: &str,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let result = tokio::time::timeout(STEP_TIMEOUT, work)
            .await
            .map_err(|_| anyhow::anyhow!("{name}: no answer within {} s", STEP_TIMEOUT.as_secs()))
            .and_then(|r| r.with_context(|| format!("reading {name}")));
        self.say_step(name, started);
        result
    }

    /// With progress on: how long a step of observe or finish took.
    fn say_step(&self, name: &str, started: Instant) {
        if self.options.progress {
            eprintln!("  {name}: {:.1} s", started.elapsed().as_secs_f64());
        }
    }

    /// Every card's balances at the bank beside what it opened with.
    async fn card_balances(&self) -> anyhow::Result<Vec<CardBalance>> {
        let mut cards = Vec::new();
        for card in &self.cards {
            let (balance, available) = self.admin.account(&card.card_number).await?;
            cards.push(CardBalance {
                card_number: card.card_number.clone(),
                opening: card.balance,
                balance,
                available,
            });
        }
        Ok(cards)
    }

    /// What the receiver got and every payment's history, for the
    /// webhook checks.
    async fn webhook_observations(&self) -> anyhow::Result<Option<WebhookObservations>> {
        let Some(webhooks) = &self.webhooks else {
            return Ok(None);
        };
        let pool = gateway::store::connect(&self.gateway_database, 1, Duration::from_secs(10))
            .await
            .context("connecting to the gateway's database")?;
        let payments: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT 'pay_' || p.id::text, p.merchant_id::text, \
               (SELECT coalesce(json_agg(e.to_status ORDER BY e.id), '[]') \
                FROM payment_events e WHERE e.payment_id = p.id)::text \
             FROM payments p",
        )
        .fetch_all(&pool)
        .await?;
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT count(*) || ' deliveries ' || status FROM webhook_deliveries \
             WHERE status <> 'delivered' GROUP BY status \
             UNION ALL SELECT 'endpoint we_' || id::text || ' disabled for failing' \
             FROM webhook_endpoints WHERE disabled_reason = 'failing'",
        )
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        let started = self.driver.started();
        let us = |at: Instant| micros(at.saturating_duration_since(started));
        let ours = format!("/{}/", self.run_id);
        let received = webhooks
            .receiver
            .received()
            .into_iter()
            .filter(|r| r.path.starts_with(&ours))
            .map(|r| {
                let created = serde_json::from_slice::<Value>(&r.body)
                    .ok()
                    .and_then(|b| b["created_at"].as_str().map(str::to_owned))
                    .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok());
                Delivery {
                    lag_ms: created.map(|c| (r.arrived_at - c.to_utc()).num_milliseconds()),
                    delivered: r.reaction.delivered(),
                    path: r.path,
                    id: r.id,
                    timestamp: r.timestamp.parse().unwrap_or(0),
                    signature: r.signature,
                    body: r.body,
                    arrived_us: us(r.arrived),
                    ended_us: us(r.ended),
                }
            })
            .collect();
        Ok(Some(WebhookObservations {
            endpoints: webhooks
                .endpoints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            received,
            payments: payments
                .into_iter()
                .map(|(id, merchant_id, history)| PaymentHistory {
                    id,
                    merchant_id,
                    statuses: serde_json::from_str(&history).unwrap_or_default(),
                })
                .collect(),
            left,
            timeout_us: micros(WEBHOOK_TIMEOUT),
        }))
    }

    /// What the bank did under the gateways' keys since the run began (a
    /// bank may serve several runs): its stored successes.
    async fn bank_keys(&self) -> anyhow::Result<Vec<BankKey>> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.bank_database)
            .await
            .context("connecting to the bank's database")?;
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT path, key, response_body FROM idempotency_records \
             WHERE key LIKE 'gw\\_%' AND response_status = 200 AND created_at >= $1",
        )
        .bind(self.since)
        .fetch_all(&pool)
        .await
        .context("reading the bank's idempotency records")?;
        pool.close().await;
        Ok(rows
            .into_iter()
            .map(|(path, key, body)| {
                let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                let object_id = ["authorization_id", "capture_id", "void_id", "refund_id"]
                    .into_iter()
                    .rev()
                    .find_map(|field| body[field].as_str().map(str::to_owned));
                BankKey {
                    path,
                    key,
                    object_id,
                }
            })
            .collect())
    }

    /// The gateway's operations, from its database.
    async fn operations(&self) -> anyhow::Result<Vec<GatewayOperation>> {
        let pool = gateway::store::connect(&self.gateway_database, 1, Duration::from_secs(10))
            .await
            .context("connecting to the gateway's database")?;
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT 'pay_' || payment_id::text, kind, bank_idempotency_key, status FROM operations",
        )
        .fetch_all(&pool)
        .await
        .context("reading the gateway's operations")?;
        pool.close().await;
        Ok(rows
            .into_iter()
            .map(|(payment_id, kind, bank_key, status)| GatewayOperation {
                payment_id,
                kind,
                bank_key,
                status,
            })
            .collect())
    }

    /// What the tap saw pass to the bank, on the traffic's clock.
    fn tapped(&self) -> Option<Vec<TappedCall>> {
        let tap = self.tap.as_ref()?;
        let started = self.driver.started();
        let us = |at: Instant| {
            u64::try_from(at.saturating_duration_since(started).as_micros()).unwrap_or(u64::MAX)
        };
        let given_up = |sent: Instant| sent + BANK_ATTEMPT_TIMEOUT;
        Some(
            tap.forwarded()
                .into_iter()
                .map(|f| TappedCall {
                    path: f.path,
                    key: f.key,
                    caller: f.caller,
                    started_us: us(f.started),
                    // The caller's side of the call: the tap learns of a
                    // hang-up only when the bank answers.
                    ended_us: Some(us(f
                        .ended
                        .map_or(given_up(f.started), |ended| ended.min(given_up(f.started))))),
                })
                .collect(),
        )
    }

    /// Every card number and CVV the run sent (the dump and the logs are
    /// added by [`Session::finish`], once the gateways have stopped).
    fn secrets(&self) -> CardData {
        let sent = self.flows.iter().map(|f| &f.sent_card);
        let fresh = self.cards.iter().map(|c| (&c.card_number, &c.cvv));
        let mut numbers: Vec<String> = sent
            .clone()
            .map(|(n, _)| n.clone())
            .chain(fresh.clone().map(|(n, _)| n.clone()))
            .collect();
        let mut cvvs: Vec<String> = sent
            .map(|(_, c)| c.clone())
            .chain(fresh.map(|(_, c)| c.clone()))
            .collect();
        for list in [&mut numbers, &mut cvvs] {
            list.retain(|s| !s.is_empty());
            list.sort();
            list.dedup();
        }
        let requests = self
            .flows
            .iter()
            .flat_map(|f| &f.sent)
            .map(|r| (r.path.clone(), r.body.clone()))
            .collect();
        CardData {
            numbers,
            cvvs,
            requests,
            ..CardData::default()
        }
    }

    /// Every row of every table of the gateway's database, as
    /// `(table, row_to_json(row))`.
    async fn dump_gateway_database(&self) -> anyhow::Result<Vec<(String, String)>> {
        let pool = gateway::store::connect(&self.gateway_database, 1, Duration::from_secs(10))
            .await
            .context("connecting to the gateway's database")?;
        let dump = async {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' ORDER BY table_name",
            )
            .fetch_all(&pool)
            .await?;
            let mut rows = Vec::new();
            for table in tables {
                let sql = format!(
                    "SELECT row_to_json(t)::text FROM public.\"{}\" t",
                    table.replace('"', "\"\"")
                );
                let texts: Vec<String> = sqlx::query_scalar(&sql)
                    .fetch_all(&pool)
                    .await
                    .with_context(|| format!("dumping table {table}"))?;
                rows.extend(texts.into_iter().map(|row| (table.clone(), row)));
            }
            Ok::<_, anyhow::Error>(rows)
        }
        .await;
        pool.close().await;
        dump
    }

    async fn receipts(&self) -> anyhow::Result<Vec<Vec<Value>>> {
        let base = self.replicas.lock().await.urls()[0].clone();
        let driver = &self.driver;
        futures_util::stream::iter(&self.flows)
            .map(|flow| {
                let url = format!("{base}/v1/payments?order_id={}&limit=100", flow.order_id);
                let api_key = driver.key_of(flow.plan.merchant);
                async move {
                    // 429 and 503 are waited out, a few times.
                    for _ in 0..20 {
                        let response = driver
                            .http()
                            .get(&url)
                            .bearer_auth(api_key)
                            .send()
                            .await
                            .with_context(|| format!("GET {url}"))?;
                        match response.status().as_u16() {
                            200 => {
                                let list: Value = response.json().await?;
                                return Ok(list["data"].as_array().cloned().unwrap_or_default());
                            }
                            429 | 503 => tokio::time::sleep(Duration::from_millis(500)).await,
                            status => bail!("GET {url} answered {status}"),
                        }
                    }
                    bail!("GET {url} kept answering 429 or 503")
                }
            })
            .buffered(16)
            .try_collect()
            .await
    }

    async fn bank_authorizations(&self) -> anyhow::Result<Vec<BankAuthorization>> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.bank_database)
            .await
            .context("connecting to the bank's database")?;
        let numbers: Vec<String> = self.cards.iter().map(|c| c.card_number.clone()).collect();
        let rows: Vec<BankRow> = sqlx::query_as(
            "SELECT 'auth_' || a.id::text AS id, a.card_number, a.amount, a.state::text AS state, \
               (SELECT count(*) FROM captures c WHERE c.authorization_id = a.id) AS captures, \
               (SELECT count(*) FROM voids v WHERE v.authorization_id = a.id) AS voids, \
               (SELECT count(*) FROM refunds r JOIN captures c ON r.capture_id = c.id \
                 WHERE c.authorization_id = a.id) AS refunds, \
               (SELECT 'cap_' || c.id::text FROM captures c WHERE c.authorization_id = a.id LIMIT 1) AS capture_id, \
               (SELECT 'void_' || v.id::text FROM voids v WHERE v.authorization_id = a.id LIMIT 1) AS void_id, \
               (SELECT 'ref_' || r.id::text FROM refunds r JOIN captures c ON r.capture_id = c.id \
                 WHERE c.authorization_id = a.id LIMIT 1) AS refund_id \
             FROM authorizations a WHERE a.card_number = ANY($1) ORDER BY a.created_at",
        )
        .bind(&numbers)
        .fetch_all(&pool)
        .await
        .context("reading the bank's authorizations")?;
        pool.close().await;
        Ok(rows
            .into_iter()
            .map(|r| BankAuthorization {
                id: r.id,
                card_number: r.card_number,
                amount: r.amount,
                state: r.state,
                captures: r.captures,
                voids: r.voids,
                refunds: r.refunds,
                capture_id: r.capture_id,
                void_id: r.void_id,
                refund_id: r.refund_id,
            })
            .collect())
    }

    /// `gateway::reconcile` as a dry run over this run's payments: what it
    /// leaves over, one line each.
    async fn reconcile(&self) -> Result<Vec<String>, String> {
        let pool = gateway::store::connect(&self.gateway_database, 4, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        let bank = gateway::bank::BankClient::new(
            &self.bank_url,
            gateway::bank::RetryPolicy::default(),
            gateway::reconcile::CONCURRENCY,
            gateway::bank::CircuitSettings::default(),
        )
        .map_err(|e| e.to_string())?;
        let report = gateway::reconcile::reconcile(&pool, &bank, self.since, false).await;
        pool.close().await;
        let report = report.map_err(|e| e.to_string())?;
        Ok(report
            .entries
            .iter()
            .filter(|e| e.outcome.is_left_over())
            .map(|e| {
                format!(
                    "{} {}: gateway {}, bank {}{}",
                    e.payment_id,
                    e.outcome.as_str(),
                    e.gateway,
                    e.bank,
                    e.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            })
            .collect())
    }

    /// Stops the gateways, dumps their database and reads their logs (for
    /// the card-data check), checks the invariants on `observations`, and
    /// reports. The gateways' logs are kept only when something failed.
    pub async fn finish(self, observations: &Observations) -> RunReport {
        let started = Instant::now();
        let faults_after = self.admin.counters().await.unwrap_or_default().faults;
        let mut faults = BTreeMap::new();
        for (kind, n) in faults_after {
            let before = self
                .counters_before
                .as_ref()
                .and_then(|counters| counters.faults.get(&kind).copied())
                .unwrap_or(0);
            if n > before {
                faults.insert(kind, n - before);
            }
        }
        if let Some(tap) = &self.tap {
            faults.extend(rewritten(tap));
        }
        self.restore_chaos().await;
        let mut replicas = self.replicas.lock().await;
        replicas.stop().await;
        let logs = replicas.logs();
        drop(replicas);
        self.say_step("stopping the gateways", started);
        let mut card_data = CardData {
            dump: Vec::new(),
            logs: Vec::new(),
            problems: Vec::new(),
            ..observations.card_data.clone()
        };
        match self
            .step("the gateway's database", self.dump_gateway_database())
            .await
        {
            Ok(dump) => card_data.dump = dump,
            Err(e) => card_data
                .problems
                .push(format!("dumping the gateway's database: {e:#}")),
        }
        let started = Instant::now();
        let mut events = self.events.clone();
        let mut lifetimes = BTreeMap::new();
        for (replica, log) in logs.iter().enumerate() {
            match std::fs::read(log) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let started_at = self.driver.started_at();
                    events.extend(fault_points_fired(&text, replica, started_at));
                    lifetimes.extend(processes(&text, replica, started_at, &self.events));
                    card_data.logs.push((log.display().to_string(), text));
                }
                Err(e) => card_data
                    .problems
                    .push(format!("reading {}: {e}", log.display())),
            }
        }
        events.sort_by_key(|e| e.at_ms);
        let observations = Observations {
            card_data,
            tapped: observations
                .tapped
                .clone()
                .map(|calls| cut_at_death(calls, &lifetimes)),
            ..observations.clone()
        };
        self.say_step("reading the gateways' logs", started);
        let started = Instant::now();
        let invariants = invariants::check(&observations);
        self.say_step("checking the invariants", started);
        let report = RunReport::new(
            &self.scenario,
            &self.options,
            &observations,
            invariants,
            faults,
            events,
            (
                self.driver.requests.load(Ordering::Relaxed),
                self.driver.requests_through_client.load(Ordering::Relaxed),
            ),
            (self.traffic_ms, self.settle_ms),
        );
        let mut kept = Vec::new();
        for log in logs {
            if report.passed {
                std::fs::remove_file(&log).ok();
            } else {
                kept.push(log.display().to_string());
            }
        }
        RunReport {
            gateway_logs: kept,
            run_id: self.run_id,
            ..report
        }
    }

    /// All phases: drive, settle, observe, finish. Stops the gateways on
    /// error too.
    pub async fn run(mut self) -> anyhow::Result<RunReport> {
        let observed = async {
            self.drive().await?;
            let started = Instant::now();
            self.settle().await?;
            self.say_step("settling", started);
            self.observe().await
        }
        .await;
        match observed {
            Ok(observations) => Ok(self.finish(&observations).await),
            Err(e) => {
                self.restore_chaos().await;
                self.replicas.lock().await.stop().await;
                Err(e)
            }
        }
    }

    /// With given URLs: puts the bank's chaos settings back as they were
    /// before the run (any outage ended).
    async fn restore_chaos(&self) {
        let Some(before) = &self.chaos_before else {
            return;
        };
        let mut body = before.clone();
        if let Some(fields) = body.as_object_mut() {
            fields.insert("outage_seconds".to_owned(), json!(0));
        }
        if let Err(e) = self.admin.put_chaos(&body).await {
            eprintln!("restoring the bank's chaos settings {before}: {e:#}");
        }
    }
}

/// Waits (at most `bound`) for a reconciliation sweep that began after
/// this moment to finish: with nothing in flight any more, it has asked
/// the bank about every receipt the bank could have moved, the last
/// console wave's included, and repaired what was behind.
async fn swept_since_now(pool: &sqlx::PgPool, bound: Duration) -> anyhow::Result<()> {
    let waited = Instant::now();
    let now: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    loop {
        let swept: bool = sqlx::query_scalar(
            "SELECT coalesce(swept_at > $1 AND passed_at >= swept_at, false) FROM reconcile_turn",
        )
        .bind(now)
        .fetch_one(pool)
        .await?;
        if swept {
            return Ok(());
        }
        if waited.elapsed() >= bound {
            // The checks will say what was not caught up with.
            eprintln!("no reconciliation sweep finished within {bound:?} of settling");
            return Ok(());
        }
        tokio::time::sleep(QUIESCE_POLL).await;
    }
}

/// When each gateway process (by its instance id) lived, in ms of the
/// traffic's clock: from its "gateway listening" line to its "gateway
/// stopped" line, an armed abort, or the kill or crash the run recorded
/// for its replica, whichever came first.
fn processes(
    log: &str,
    replica: usize,
    started_at: chrono::DateTime<chrono::Utc>,
    events: &[Event],
) -> BTreeMap<String, (u64, Option<u64>)> {
    let mut lives: BTreeMap<String, (u64, Option<u64>)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(at) = entry["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let at_ms = u64::try_from((at.with_timezone(&chrono::Utc) - started_at).num_milliseconds())
            .unwrap_or(0);
        let fields = &entry["fields"];
        match fields["message"].as_str() {
            Some("gateway listening") => {
                let instance = fields["instance"].as_str().unwrap_or_default().to_owned();
                lives.insert(instance.clone(), (at_ms, None));
                current = Some(instance);
            }
            Some("gateway stopped") => end(&mut lives, current.take(), at_ms),
            Some("fault point fired") if fields["action"].as_str() == Some("Abort") => {
                end(&mut lives, current.take(), at_ms);
            }
            _ => {}
        }
    }
    for event in events.iter().filter(|e| e.replica == Some(replica)) {
        if matches!(event.kind.as_str(), "kill" | "crash" | "sigterm") {
            for (start, ended) in lives.values_mut() {
                if *start <= event.at_ms && ended.is_none_or(|e| e > event.at_ms) {
                    *ended = Some(event.at_ms);
                }
            }
        }
    }
    lives
}

fn end(lives: &mut BTreeMap<String, (u64, Option<u64>)>, instance: Option<String>, at_ms: u64) {
    if let Some(life) = instance.and_then(|i| lives.get_mut(&i)) {
        life.1 = Some(at_ms);
    }
}

/// A call cannot outlive the process that made it: the tap sees a call end
/// only when the bank answers, even if its caller died long before.
fn cut_at_death(
    calls: Vec<TappedCall>,
    lifetimes: &BTreeMap<String, (u64, Option<u64>)>,
) -> Vec<TappedCall> {
    calls
        .into_iter()
        .map(|mut call| {
            let death_us = call
                .caller
                .as_ref()
                .and_then(|c| lifetimes.get(c))
                .and_then(|(_, ended)| *ended)
                .map(|ms| ms * 1000);
            if let Some(death_us) = death_us {
                call.ended_us = Some(call.ended_us.map_or(death_us, |e| e.min(death_us)));
            }
            call
        })
        .collect()
}

/// The fault points a replica's log says fired, as timeline events.
fn fault_points_fired(
    log: &str,
    replica: usize,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Vec<Event> {
    log.lines()
        .filter(|line| line.contains("fault point fired"))
        .filter_map(|line| {
            let entry: Value = serde_json::from_str(line).ok()?;
            let at = chrono::DateTime::parse_from_rfc3339(entry["timestamp"].as_str()?).ok()?;
            let fields = &entry["fields"];
            Some(Event {
                at_ms: u64::try_from(
                    (at.with_timezone(&chrono::Utc) - started_at).num_milliseconds(),
                )
                .unwrap_or(0),
                kind: "fault_point".to_owned(),
                replica: Some(replica),
                detail: format!(
                    "{} {}",
                    fields["point"].as_str().unwrap_or("?"),
                    fields["action"].as_str().unwrap_or("?")
                ),
            })
        })
        .collect()
}

/// With given URLs nothing is ours to kill: a scenario with kills (the
/// `crashy` and `everything` profiles, `--kill-every`) is refused.
pub fn refuse_kills(scenario: &Scenario) -> anyhow::Result<()> {
    if !scenario.faults.kills_ms.is_empty() || scenario.faults.kill_every_ms.is_some() {
        bail!(
            "this scenario kills gateway replicas ({}), which needs gateways the simulator \
             starts itself; with --gateway-url use a profile without kills \
             (calm, reference, lossy, outage or a JSON object) and no --kill-every",
            scenario.profile.name
        );
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct BankRow {
    id: String,
    card_number: String,
    amount: i64,
    state: String,
    captures: i64,
    voids: i64,
    refunds: i64,
    capture_id: Option<String>,
    void_id: Option<String>,
    refund_id: Option<String>,
}

/// A Postgres of the simulator's own for the gateways, unless the user
/// named a server (`DATABASE_URL`): a database restart must not take the
/// bank down with it.
async fn own_postgres() -> anyhow::Result<Option<Arc<throwaway_pg::Postgres>>> {
    if std::env::var("DATABASE_URL").is_ok_and(|url| !url.trim().is_empty()) {
        return Ok(None);
    }
    let postgres = tokio::task::spawn_blocking(throwaway_pg::Postgres::throwaway)
        .await?
        .context("starting a Postgres for the gateways")?;
    Ok(Some(Arc::new(postgres)))
}

/// Every fault rate 0, no latency, no outage: the bank's own calm
/// configuration, so a fault the bank learns is lifted here too. A list
/// written by hand once missed the newer ones: after a run's faults were
/// "lifted" the bank still sent HTML 502s, truncated and trickled bodies,
/// and reconciling 100,000 payments through them took over an hour. The
/// seed, and how long a fault that no longer fires would last, stay as
/// they are.
/// The tap rewrites one in this many of the bank's answers to money
/// movements ...
const REWRITE_EVERY: usize = 20;
/// ... and answers one in this many resolves itself.
const UNMARKED_RESOLVE_EVERY: usize = 4;
/// What the bank's money movements are rewritten to.
const MOVEMENT_PATHS: [&str; 4] = [
    "/api/v1/authorizations",
    "/api/v1/captures",
    "/api/v1/voids",
    "/api/v1/refunds",
];
const RESOLVE_PATH: &str = "/api/v1/authorizations/resolve";

/// Answers the bank gives only in states a run does not otherwise reach,
/// made in the tap in front of it:
///
/// - a money movement the bank did, answered 422 `idempotency_key_reused`
///   (what a bank that stores only what it did answers a retry whose first
///   answer was lost): the gateway must look at the bank and adopt what it
///   did, never answer a failure for money that moved;
/// - a resolve answered 404 `not_found` without the mark that says the key
///   created nothing (what any path answers on a bank without resolve, or
///   an ingress mid-deploy): it proves nothing, and the gateway must not
///   abandon an authorization the bank may hold.
fn rewrite_answers(tap: &bank_tap::BankProxy) {
    use bank_tap::{Canned, Fault};
    for path in MOVEMENT_PATHS {
        tap.inject_every(
            "POST",
            path,
            REWRITE_EVERY,
            Fault::AfterSuccess(Canned::bank_error(422, "idempotency_key_reused")),
        );
    }
    tap.inject_every(
        "POST",
        RESOLVE_PATH,
        UNMARKED_RESOLVE_EVERY,
        Fault::Instead(Canned::bank_error(404, "not_found")),
    );
}

/// The tap's rewritten answers, by kind, for the report's faults.
fn rewritten(tap: &bank_tap::BankProxy) -> Vec<(String, u64)> {
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let movements: usize = MOVEMENT_PATHS.iter().map(|p| tap.rewritten(p)).sum();
    [
        ("tap_422_after_the_bank_moved", count(movements)),
        (
            "tap_unmarked_resolve_404",
            count(tap.rewritten(RESOLVE_PATH)),
        ),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(kind, n)| (kind.to_owned(), n))
    .collect()
}

pub fn calm() -> Value {
    let mut calm =
        serde_json::to_value(mock_bank::chaos::ChaosConfig::calm(0)).unwrap_or_else(|_| json!({}));
    if let Some(fields) = calm.as_object_mut() {
        for kept in ["seed", "timeout_ms", "trickle_ms"] {
            fields.remove(kept);
        }
    }
    calm
}

async fn show_progress(
    driver: Arc<Driver>,
    total: usize,
    events: Arc<std::sync::Mutex<Vec<Event>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let kills = events
            .lock()
            .map(|e| e.iter().filter(|e| e.kind == "kill").count())
            .unwrap_or(0);
        eprint!(
            "\r  {}/{total} payments · {} requests · {kills} kills · {} s   ",
            driver.flows_done.load(Ordering::Relaxed),
            driver.requests.load(Ordering::Relaxed),
            driver.started().elapsed().as_secs()
        );
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// One endpoint per merchant on the receiver (`/<run>/m0`, `/<run>/m1`, …), registered
/// through the API as a merchant would.
async fn register_endpoints(
    gateway: &str,
    api_keys: &[String],
    receiver: &Receiver,
    database: &str,
    run_id: &str,
) -> anyhow::Result<Vec<EndpointSeen>> {
    let http = reqwest::Client::new();
    let pool = gateway::store::connect(database, 1, Duration::from_secs(10)).await?;
    let mut endpoints = Vec::new();
    for (i, key) in api_keys.iter().enumerate() {
        // The run's id in the path: a gateway of an earlier run, still
        // stopping, may deliver to a receiver that got its old port.
        let path = format!("/{run_id}/m{i}");
        let register = || {
            http.post(format!("{gateway}/v1/webhook_endpoints"))
                .bearer_auth(key)
                .header("Idempotency-Key", format!("{run_id}-endpoint-{i}"))
                .json(&json!({"url": receiver.url(&path)}))
                .send()
        };
        // Sent twice, as a client does whose first answer was lost: it
        // keeps the second answer's secret, which must be the endpoint's
        // (invariant 14 checks every delivery against it; a second
        // endpoint would sign with a secret of its own).
        register().await?;
        let response = register().await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status != reqwest::StatusCode::CREATED {
            bail!("registering a webhook endpoint: {status} {body}");
        }
        let id = body["id"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("we_");
        let merchant_id: String = sqlx::query_scalar(
            "SELECT merchant_id::text FROM webhook_endpoints WHERE id::text = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await?;
        let secret = body["secret"]
            .as_str()
            .and_then(SigningSecret::parse)
            .context("the endpoint's secret")?;
        endpoints.push(EndpointSeen {
            merchant_id,
            path,
            secret,
            rotated: None,
        });
    }
    pool.close().await;
    Ok(endpoints)
}

/// Rotates the first merchant's secret once half the flows are done, at
/// whichever replica answers; records the new secret and when.
async fn rotate_halfway(
    driver: Arc<Driver>,
    replicas: Arc<Mutex<Replicas>>,
    endpoints: Arc<std::sync::Mutex<Vec<EndpointSeen>>>,
    api_key: String,
    flows: usize,
) {
    let half = u64::try_from(flows / 2).unwrap_or(u64::MAX);
    while driver.flows_done.load(Ordering::Relaxed) < half {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::new();
    let path = {
        let endpoints = endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let Some(first) = endpoints.first() else {
            return;
        };
        first.path.clone()
    };
    let id = {
        let pool_urls = replicas.lock().await.urls();
        let listed = async {
            let body: Value = http
                .get(format!("{}/v1/webhook_endpoints", pool_urls[0]))
                .bearer_auth(&api_key)
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, reqwest::Error>(body)
        };
        match listed.await {
            Ok(body) => body["data"]
                .as_array()
                .and_then(|all| {
                    all.iter()
                        .find(|e| e["url"].as_str().is_some_and(|u| u.ends_with(&path)))
                })
                .and_then(|e| e["id"].as_str().map(str::to_owned)),
            Err(_) => None,
        }
    };
    let Some(id) = id else { return };
    // One key for every try, through kills and replicas: a retry whose
    // first answer was lost gets that answer, and does not rotate again
    // (which would end the first secret's grace).
    let rotation = format!("rotate-{id}");
    for _ in 0..50 {
        let urls = replicas.lock().await.urls();
        for url in urls {
            let answer = http
                .post(format!("{url}/v1/webhook_endpoints/{id}/rotate_secret"))
                .bearer_auth(&api_key)
                .header("Idempotency-Key", &rotation)
                .json(&json!({"grace_seconds": ROTATION_GRACE_SECONDS}))
                .send()
                .await;
            let Ok(response) = answer else { continue };
            if !response.status().is_success() {
                continue;
            }
            let Ok(body) = response.json::<Value>().await else {
                continue;
            };
            let answered_us = micros(driver.started().elapsed());
            let answered_unix_s = chrono::Utc::now().timestamp();
            if let Some(secret) = body["secret"].as_str().and_then(SigningSecret::parse) {
                let mut endpoints = endpoints.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(first) = endpoints.first_mut() {
                    first.rotated = Some(Rotation {
                        secret,
                        answered_us,
                        answered_unix_s,
                    });
                }
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits, looking every `poll`, until no webhook delivery is pending (when
/// the receiver is calm, each is delivered on its next attempt): how long
/// after `started` that was, or `None` once `bound` has passed.
pub(crate) async fn drain_deliveries(
    pool: &sqlx::PgPool,
    started: Instant,
    bound: Duration,
    poll: Duration,
) -> anyhow::Result<Option<Duration>> {
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
                .fetch_one(pool)
                .await?;
        if pending == 0 {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= bound {
            return Ok(None);
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calm_lifts_every_fault_of_the_harshest_profile() {
        let everything = crate::scenario::Profile::parse("everything").unwrap().bank;
        let mut lifted = everything.as_object().unwrap().clone();
        lifted.extend(calm().as_object().unwrap().clone());
        for (field, value) in &lifted {
            if field.ends_with("_rate") || field.ends_with("latency_ms") {
                assert_eq!(value.as_f64(), Some(0.0), "{field} is still {value}");
            }
        }
        assert_eq!(lifted["outage_seconds"], json!(0));
    }

    #[test]
    fn the_attempt_timeout_the_checks_assume_is_the_one_the_gateways_get() {
        let passed = GATEWAY_SETTINGS
            .iter()
            .find(|(flag, _)| *flag == "--bank-attempt-timeout-ms")
            .map(|(_, value)| value.parse::<u128>().unwrap());
        assert_eq!(passed, Some(BANK_ATTEMPT_TIMEOUT.as_millis()));
    }
}
