//! `simulator bench`: authorizations at a fixed concurrency, against the
//! bank or through the gateway (sent by the `ficmart-client` crate, as
//! FicMart's checkout sends them), or with `--mix` whole checkout flows
//! (see [`crate::mix`]); then a check of the bank's ledger and, on its
//! own stack, the machine's floor (see [`crate::floor`]). Every report has
//! the steady state apart from ramp-up and drain (see [`crate::steady`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use client::{AuthorizeRequest, Card, IdempotencyKey, RetryPolicy};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

use crate::bank::{BankAdmin, Chaos, NewCard};
use crate::cli::{BenchArgs, Target, WebhookReceiver};
use crate::cpu::{self, CpuPerAuthorization, Parties};
use crate::floor::{self, Floor, InsertCost};
use crate::mix::{self, FlowPlan};
use crate::process::{GatewayOptions, GatewayOutput};
use crate::receiver::Receiver;
use crate::report::{self, MixReport, OperationReport, Report, SteadyState, WebhookLoad};
use crate::run::drain_deliveries;
use crate::stack::{BankChaos, Durability, Stack, StackOptions};
use crate::stats::{Latency, micros};
use crate::steady::{self, Answered, Span, Window};
use crate::time_split::{self, TimeSplit};

/// Every authorization is for $1.00.
pub(crate) const AMOUNT_CENTS: i64 = 100;
/// With `--webhook`: how often, and how long at most, the bench looks for
/// deliveries left after the load.
const DRAIN_POLL: Duration = Duration::from_millis(100);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Cards are opened concurrently, this many at a time.
const CARD_CREATION_CONCURRENCY: usize = 16;
/// A request that takes longer than this (beyond the added latency) is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The gateway the bench starts may have at least this many bank calls in
/// flight (its default), and never fewer than the bench's concurrency.
const MIN_BANK_MAX_IN_FLIGHT: usize = 2048;

/// Where the load goes.
enum Endpoint {
    /// `POST {bank}/api/v1/authorizations`.
    Bank,
    /// `POST {url}/v1/payments` with the merchant's key.
    Gateway { url: String, api_key: String },
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.verbose {
        mock_bank::telemetry::init_logging();
    }
    let concurrency = usize::try_from(args.concurrency)?;
    if args.mix && args.target != Target::Gateway {
        bail!("--mix runs checkout flows through the gateway: it needs --target gateway");
    }
    warn_if_too_few_open_files(concurrency, args.url.is_none());
    let stack = match &args.url {
        Some(_) => None,
        None => {
            let stack = Stack::start(&own_stack_options(&args, concurrency)).await?;
            eprintln!("{}", stack.database());
            Some(stack)
        }
    };
    let (bank_url, endpoint) = match (&stack, &args.url, args.target) {
        (Some(stack), _, Target::Bank) => (stack.urls().bank.clone(), Endpoint::Bank),
        (Some(stack), _, Target::Gateway) => {
            let gateway = stack
                .gateway()
                .context("the bench's stack has no gateway")?;
            (
                stack.urls().bank.clone(),
                Endpoint::Gateway {
                    url: gateway.process.url().to_owned(),
                    api_key: gateway.api_key.clone(),
                },
            )
        }
        (None, Some(url), Target::Bank) => (trim(url), Endpoint::Bank),
        (None, Some(url), Target::Gateway) => {
            let Some(api_key) = args.api_key.clone() else {
                bail!("--target gateway --url needs --api-key (or SIMULATOR_API_KEY)");
            };
            (
                trim(&args.bank_url),
                Endpoint::Gateway {
                    url: trim(url),
                    api_key,
                },
            )
        }
        (None, None, Target::Bank | Target::Gateway) => {
            unreachable!("a stack is started when no URL is given")
        }
    };
    let parties = stack.as_ref().and_then(cpu_parties);
    let durability = match &stack {
        Some(stack) => Some(durability_of(stack.postgres().url()).await?),
        None => None,
    };
    // The floor is measured on the database the target writes to.
    let floor_database = stack.as_ref().map(|stack| {
        stack
            .urls()
            .gateway_database
            .clone()
            .unwrap_or_else(|| stack.urls().bank_database.clone())
    });
    let operator_url = stack
        .as_ref()
        .and_then(Stack::gateway)
        .map(|gateway| gateway.process.operator_url().to_owned());
    let outcome = bench(
        &args,
        &bank_url,
        &endpoint,
        stack.is_some(),
        parties.as_ref(),
        floor_database.as_deref(),
        operator_url.as_deref(),
    )
    .await;
    let gateway_log = stack
        .as_ref()
        .and_then(|s| s.gateway())
        .and_then(|g| g.process.log_file())
        .map(ToOwned::to_owned);
    if let Some(stack) = stack {
        stack.shutdown().await;
    }
    // The gateway's log is kept when something went wrong.
    let clean = outcome
        .as_ref()
        .is_ok_and(|r| r.ok == r.total && r.ledger_ok());
    if let Some(log) = gateway_log {
        if clean {
            std::fs::remove_file(&log).ok();
        } else {
            eprintln!("the gateway's log: {}", log.display());
        }
    }
    let mut report = outcome?;
    report.postgres_durability = durability;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if report.ledger_ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("the bank's ledger does not verify");
        Ok(ExitCode::FAILURE)
    }
}

fn trim(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// A calm bank on a free port and, for the gateway target, a gateway on a
/// free port with the asked pool size and room for every request in flight.
fn own_stack_options(args: &BenchArgs, concurrency: usize) -> StackOptions {
    let gateway = match args.target {
        Target::Bank => None,
        Target::Gateway => Some(GatewayOptions {
            port: 0,
            operator_port: 0,
            db_pool_size: args.pool_size,
            bank_max_in_flight: concurrency.max(MIN_BANK_MAX_IN_FLIGHT),
            output: if args.verbose {
                GatewayOutput::Inherit
            } else {
                GatewayOutput::temp_log_file("bench-gateway")
            },
            program: None,
            env: Vec::new(),
            // A benchmark measures the gateway, not its per-key rate limit
            // (one key sends every request).
            // `--webhook`'s receiver listens on loopback.
            args: vec![
                "--rate-limit-per-second".into(),
                "0".into(),
                "--webhook-allow-private-urls".into(),
                "true".into(),
            ],
            fingerprint_secret: gateway::idempotency::Secret::random(),
            webhook_secret_key: gateway::idempotency::Secret::random(),
        }),
    };
    StackOptions {
        bank_port: 0,
        bank_chaos: BankChaos::Calm,
        gateway,
        // Production commits are flushed to disk: so are the bench's.
        durability: Durability::Durable,
    }
}

/// The gateway's process and databases, for the CPU breakdown: only for a
/// stack with a gateway that this bench started.
fn cpu_parties(stack: &Stack) -> Option<Parties> {
    let gateway = stack.gateway()?;
    Some(Parties {
        gateway_pid: gateway.process.pid(),
        gateway_database_url: stack.urls().gateway_database.clone()?,
        bank_database_url: stack.urls().bank_database.clone(),
    })
}

async fn bench(
    args: &BenchArgs,
    bank_url: &str,
    endpoint: &Endpoint,
    own_stack: bool,
    parties: Option<&Parties>,
    floor_database: Option<&str>,
    operator_url: Option<&str>,
) -> anyhow::Result<Report> {
    let concurrency = usize::try_from(args.concurrency)?;
    let latency_ms = args.bank_latency_ms();
    let seed = args.seed.unwrap_or_else(rand::random);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(REQUEST_TIMEOUT + Duration::from_millis(latency_ms))
        .build()?;
    let admin = BankAdmin::new(client.clone(), bank_url);
    admin.health().await?;
    if let Endpoint::Gateway { url, .. } = endpoint {
        gateway_ready(&client, url).await?;
    }
    // A bank we did not start gets its chaos back afterwards.
    let previous_chaos = if own_stack {
        None
    } else {
        Some(admin.chaos().await?)
    };
    admin.set_chaos(&Chaos::calm(latency_ms)).await?;

    let result = async {
        let per_card = u64::from(args.requests.div_ceil(args.cards));
        let balance = i64::try_from(per_card)? * AMOUNT_CENTS * 2 + 1_000_000;
        eprintln!("opening {} test cards", args.cards);
        let cards = open_cards(&admin, args.cards, balance).await?;
        let timeout = REQUEST_TIMEOUT + Duration::from_millis(latency_ms);
        let send = match endpoint {
            Endpoint::Bank => bank_requests(&client, bank_url, &cards),
            Endpoint::Gateway { url, api_key } if args.mix => {
                mix::gateway_flows(url, api_key, &cards, timeout, seed)?
            }
            Endpoint::Gateway { url, api_key } => gateway_requests(url, api_key, &cards, timeout)?,
        };
        let receiver = match (args.webhook, endpoint) {
            (Some(kind), Endpoint::Gateway { url, api_key }) if own_stack => {
                Some((kind, register_webhook(&client, url, api_key, kind).await?))
            }
            (Some(_), _) => bail!("--webhook needs --target gateway and the bench's own stack"),
            (None, _) => None,
        };
        eprintln!(
            "sending {} {}, {} at a time",
            args.requests,
            if args.mix {
                "checkout flows"
            } else {
                "authorizations"
            },
            args.concurrency
        );
        let before = match parties {
            Some(parties) => parties.sample().await,
            None => None,
        };
        // Authorizations alone: a flow's requests are of several kinds.
        let split_before = match operator_url.filter(|_| !args.mix) {
            Some(operator_url) => time_split::sample(&client, bank_url, operator_url)
                .await
                .map(|before| (operator_url, before)),
            None => None,
        };
        let load = fire(u64::from(args.requests), concurrency, args.ramp(), send).await?;
        let split = match split_before {
            Some((operator_url, before)) => time_split::sample(&client, bank_url, operator_url)
                .await
                .and_then(|after| {
                    let client_ms = mean_ms(&load.ok_latencies())?;
                    TimeSplit::between(&before, &after, client_ms, latency_ms)
                }),
            None => None,
        };
        let during_load = receiver
            .as_ref()
            .map(|(_, receiver)| receiver.received().len() as u64);
        // Per authorization, or with --mix per flow.
        let cpu = match (parties, before) {
            (Some(parties), Some(before)) => parties
                .sample()
                .await
                .map(|after| cpu::per_authorization(&before, &after, load.ok)),
            (Some(_) | None, None) | (None, Some(_)) => None,
        };
        // After the CPU window: how long the deliveries left take to go.
        let drained_after = match (&receiver, parties) {
            (Some(_), Some(parties)) => Some(drain(&parties.gateway_database_url).await?),
            (Some(_) | None, None) | (None, Some(_)) => None,
        };
        let webhook = receiver.map(|(kind, receiver)| WebhookLoad {
            receiver: match kind {
                WebhookReceiver::Calm => "calm",
                WebhookReceiver::Chaotic => "chaotic",
            },
            deliveries_received: during_load.unwrap_or(0),
            deliveries_after_load: (receiver.received().len() as u64)
                .saturating_sub(during_load.unwrap_or(0)),
            drained_after_ms: drained_after
                .flatten()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        });
        let ledger = admin.verify_ledger().await?;
        let floor = match floor_database {
            Some(database) if args.floor_seconds > 0 => {
                Some(measure_floor(database, args.concurrency, args.floor_seconds).await)
            }
            Some(_) | None => None,
        };
        Ok::<_, anyhow::Error>((load, ledger, cpu, webhook, floor, split))
    }
    .await;

    if let Some(previous) = previous_chaos {
        admin
            .set_chaos(&previous)
            .await
            .context("restoring the bank's chaos")?;
    }
    let (load, ledger, cpu, webhook, floor, time_split) = result?;
    let (target, url, gateway_db_pool_size) = match endpoint {
        Endpoint::Bank => ("bank", bank_url.to_owned(), None),
        Endpoint::Gateway { url, .. } => {
            ("gateway", url.clone(), own_stack.then_some(args.pool_size))
        }
    };
    let ceiling = if args.mix {
        let plans: Vec<FlowPlan> = (0..u64::from(args.requests))
            .map(|i| FlowPlan::draw(seed, i))
            .collect();
        mix::ceiling(args.concurrency, latency_ms, &plans)
    } else {
        report::ceiling(args.concurrency, latency_ms)
    };
    let (cpu_ms_per_authorization, cpu_ms_per_flow) =
        if args.mix { (None, cpu) } else { (cpu, None) };
    let floor = floor.map(|measured| {
        Floor::new(
            measured,
            cpu_ms_per_authorization
                .as_ref()
                .and_then(CpuPerAuthorization::gateway_own),
            cpu_ms_per_flow
                .as_ref()
                .and_then(CpuPerAuthorization::gateway_own),
        )
    });
    let elapsed_us = micros(load.elapsed);
    let window = steady::all_busy(&load.spans);
    let authorizations = load
        .answered
        .iter()
        .filter(|a| a.ok && a.kind == Operation::Authorize)
        .count() as u64;
    Ok(Report {
        target,
        url,
        own_stack,
        cards: args.cards,
        concurrency: args.concurrency,
        added_latency_ms: latency_ms,
        ramp_ms: u64::try_from(args.ramp().as_millis()).unwrap_or(u64::MAX),
        gateway_db_pool_size,
        total: u64::from(args.requests),
        ok: load.ok,
        errors: error_table(&load.errors, args.mix),
        elapsed_us,
        authorizations_per_second: report::rate(authorizations, elapsed_us),
        ceiling_per_second: ceiling,
        latency_us: Latency::summarise(load.ok_latencies()),
        steady_state: window.map(|window| steady_state(&load, window, args.mix, ceiling)),
        mix: args
            .mix
            .then(|| mix_report(&load, window, seed, elapsed_us)),
        ledger,
        cpu_ms_per_authorization,
        cpu_ms_per_flow,
        floor,
        time_split,
        postgres_durability: None,
        webhook,
    })
}

/// The mean of `latencies` in milliseconds; `None` for none.
fn mean_ms(latencies: &[Duration]) -> Option<f64> {
    let count = u32::try_from(latencies.len()).ok().filter(|n| *n > 0)?;
    Some((latencies.iter().sum::<Duration>() / count).as_secs_f64() * 1_000.0)
}

/// pgbench's single-row inserts on `database`, or why there is no figure.
async fn measure_floor(
    database: &str,
    concurrency: u32,
    seconds: u64,
) -> Result<InsertCost, String> {
    let Some(pgbench) = floor::pgbench() else {
        return Err(
            "pgbench was not found beside the cluster's server binaries nor on PATH \
                    (it comes with the postgresql-client package)"
                .to_owned(),
        );
    };
    eprintln!("measuring the floor: pgbench's single-row inserts for {seconds} s");
    floor::measure(&pgbench, database, concurrency, seconds).await
}

/// The errors table: by status or kind of failure, and with `--mix` by
/// operation first (`capture: 409 invalid_state`).
fn error_table(errors: &BTreeMap<(Operation, String), u64>, mix: bool) -> BTreeMap<String, u64> {
    let mut table = BTreeMap::new();
    for ((operation, kind), n) in errors {
        let name = if mix {
            format!("{}: {kind}", operation.name())
        } else {
            kind.clone()
        };
        *table.entry(name).or_default() += n;
    }
    table
}

/// The rate and latencies of the units (authorizations, or flows)
/// answered within `window`.
fn steady_state(load: &Load, window: Window, mix: bool, ceiling: Option<f64>) -> SteadyState {
    let ok_units = || load.units.iter().filter(|u| u.ok);
    let per_second = steady::rate_within(window, ok_units().map(|u| u.done));
    let latencies: Vec<Duration> = ok_units()
        .filter(|u| window.contains(u.done))
        .map(Answered::latency)
        .collect();
    SteadyState {
        window: steady::DEFINITION,
        start_us: micros(window.start),
        end_us: micros(window.end),
        ok: latencies.len() as u64,
        per_second,
        operations_per_second: mix.then(|| {
            steady::rate_within(
                window,
                load.answered.iter().filter(|a| a.ok).map(|a| a.done),
            )
        }),
        share_of_ceiling: ceiling.map(|ceiling| per_second / ceiling),
        latency_us: Latency::summarise(latencies),
    }
}

/// `--mix`'s rates and its latencies by operation, over the whole run and
/// over the steady `window`.
fn mix_report(load: &Load, window: Option<Window>, seed: u64, elapsed_us: u64) -> MixReport {
    let ok_operations = load.answered.iter().filter(|a| a.ok).count() as u64;
    let mut whole = steady::latencies_by_kind(&load.answered, None);
    let mut in_window = match window {
        Some(window) => steady::latencies_by_kind(&load.answered, Some(window)),
        None => BTreeMap::new(),
    };
    let mut by_operation: BTreeMap<Operation, OperationReport> = BTreeMap::new();
    for answered in &load.answered {
        by_operation
            .entry(answered.kind)
            .or_insert_with(|| OperationReport {
                ok: 0,
                errors: BTreeMap::new(),
                latency_us: Latency::summarise(whole.remove(&answered.kind).unwrap_or_default()),
                steady_latency_us: Latency::summarise(
                    in_window.remove(&answered.kind).unwrap_or_default(),
                ),
            })
            .ok += u64::from(answered.ok);
    }
    for ((operation, kind), n) in &load.errors {
        if let Some(report) = by_operation.get_mut(operation) {
            *report.errors.entry(kind.clone()).or_default() += n;
        }
    }
    MixReport {
        seed,
        proportions: mix::proportions(),
        flows_per_second: report::rate(load.ok, elapsed_us),
        operations: load.answered.len() as u64,
        operations_per_second: report::rate(ok_operations, elapsed_us),
        by_operation,
    }
}

/// `GET {url}/health` answers 200. Readiness (`/ready`) is on the
/// gateway's operator port, which a given `--url` does not name; a stack
/// the bench started was waited for until ready.
async fn gateway_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let ready = format!("{url}/health");
    let response = client
        .get(&ready)
        .send()
        .await
        .with_context(|| format!("the gateway is not reachable at {url}"))?;
    if response.status() != StatusCode::OK {
        bail!("GET {ready} answered {}", response.status());
    }
    Ok(())
}

/// Opens `count` fresh cards with `balance` cents each, expiring 12/2099.
async fn open_cards(admin: &BankAdmin, count: u32, balance: i64) -> anyhow::Result<Vec<NewCard>> {
    futures_util::stream::iter(0..count)
        .map(|_| admin.open_random_card(balance))
        .buffer_unordered(CARD_CREATION_CONCURRENCY)
        .try_collect()
        .await
}

/// How long after the load the gateway's due deliveries took to go (none
/// pending), polled every [`DRAIN_POLL`]; `None` past [`DRAIN_TIMEOUT`].
async fn drain(gateway_database: &str) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    let pool = gateway::store::connect(gateway_database, 1, Duration::from_secs(10)).await?;
    let drained = drain_deliveries(&pool, started, DRAIN_TIMEOUT, DRAIN_POLL).await;
    pool.close().await;
    drained
}

/// A receiver in this process, and an endpoint for the merchant at it.
async fn register_webhook(
    client: &reqwest::Client,
    gateway_url: &str,
    api_key: &str,
    kind: WebhookReceiver,
) -> anyhow::Result<Receiver> {
    let receiver = Receiver::start(1).await?;
    if kind == WebhookReceiver::Calm {
        receiver.calm();
    }
    let response = client
        .post(format!("{gateway_url}/v1/webhook_endpoints"))
        .bearer_auth(api_key)
        .header(
            "Idempotency-Key",
            format!("bench-endpoint-{}", uuid::Uuid::new_v4()),
        )
        .json(&serde_json::json!({ "url": receiver.url("/bench") }))
        .send()
        .await?;
    let status = response.status();
    if status != StatusCode::CREATED {
        bail!(
            "registering the webhook endpoint: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(receiver)
}

/// What the stack's Postgres does with a commit, and how often autovacuum
/// (and so ANALYZE) looks at the tables, as it says itself: a bench on
/// tables created seconds before it runs on the plans of nearly empty
/// tables until autovacuum first looks (see the README's whole flows).
async fn durability_of(url: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut setting = async |name: &str| -> anyhow::Result<String> {
        let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
            .fetch_one(&mut conn)
            .await?;
        Ok(format!("{name} {value}"))
    };
    let fsync = setting("fsync").await?;
    let synchronous_commit = setting("synchronous_commit").await?;
    let naptime = setting("autovacuum_naptime").await?;
    Ok(format!("{fsync}, {synchronous_commit}, {naptime}"))
}

/// A hex id for this run, so that its idempotency keys are its own.
pub(crate) fn run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What a request of the load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Authorize,
    Get,
    Capture,
    Void,
    ListByOrder,
    Refund,
    ListByCustomer,
}

impl Operation {
    /// Its name in the report (the JSON key).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Authorize => "authorize",
            Operation::Get => "get",
            Operation::Capture => "capture",
            Operation::Void => "void",
            Operation::ListByOrder => "list_by_order",
            Operation::Refund => "refund",
            Operation::ListByCustomer => "list_by_customer",
        }
    }

    /// A read: it changes nothing and does not reach the bank.
    pub fn is_read(self) -> bool {
        match self {
            Operation::Get | Operation::ListByOrder | Operation::ListByCustomer => true,
            Operation::Authorize | Operation::Capture | Operation::Void | Operation::Refund => {
                false
            }
        }
    }
}

/// One request sent: what it was, when, and `Ok` for the answer expected
/// or what came instead (a status code, or a kind of transport failure).
pub struct Op {
    pub operation: Operation,
    pub sent: Instant,
    pub done: Instant,
    pub outcome: Result<(), String>,
}

/// Sends unit `i` of the load (one authorization, or with `--mix` one
/// flow) and tells what each of its requests got.
pub type SendOne = Arc<dyn Fn(u64) -> BoxFuture<'static, Vec<Op>> + Send + Sync>;

/// One request of `operation`, timed.
async fn single(
    operation: Operation,
    request: impl Future<Output = Result<(), String>>,
) -> Vec<Op> {
    let sent = Instant::now();
    let outcome = request.await;
    vec![Op {
        operation,
        sent,
        done: Instant::now(),
        outcome,
    }]
}

/// Authorization `i` of [`AMOUNT_CENTS`] goes to card `i mod cards`, with
/// its own idempotency key.
fn bank_requests(client: &reqwest::Client, bank_url: &str, cards: &[NewCard]) -> SendOne {
    let url = format!("{bank_url}/api/v1/authorizations");
    let bodies: Vec<String> = cards
        .iter()
        .map(|card| {
            serde_json::json!({
                "card_number": card.card_number,
                "cvv": card.cvv,
                "expiry_month": card.expiry_month,
                "expiry_year": card.expiry_year,
                "amount": AMOUNT_CENTS,
            })
            .to_string()
        })
        .collect();
    let (client, run) = (client.clone(), run_id());
    Arc::new(move |i| {
        let request = client
            .post(&url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("Idempotency-Key", format!("bench-{run}-{i}"))
            .body(bodies[card_index(i, bodies.len())].clone());
        single(Operation::Authorize, async move {
            let response = request.send().await.map_err(|e| error_kind(&e))?;
            let status = response.status();
            // The body is read so that the connection can be reused.
            response.bytes().await.map_err(|e| error_kind(&e))?;
            if status == StatusCode::OK {
                Ok(())
            } else {
                Err(status.as_u16().to_string())
            }
        })
        .boxed()
    })
}

/// Payment `i` of [`AMOUNT_CENTS`], for order `i`, goes to card
/// `i mod cards` (one customer per card), with its own idempotency key,
/// through the `ficmart-client` crate as FicMart's checkout would send it,
/// with one attempt each: a bench measures answers, not retries.
fn gateway_requests(
    gateway_url: &str,
    api_key: &str,
    cards: &[NewCard],
    timeout: Duration,
) -> anyhow::Result<SendOne> {
    let gateway = client::Client::new([gateway_url], api_key)?.with_retry_policy(RetryPolicy {
        max_attempts: 1,
        deadline: timeout,
        attempt_timeout: timeout,
        ..RetryPolicy::default()
    });
    let cards: Vec<Card> = cards
        .iter()
        .map(|card| {
            Card::new(
                card.card_number.clone(),
                card.cvv.clone(),
                u8::try_from(card.expiry_month).unwrap_or_default(),
                u16::try_from(card.expiry_year).unwrap_or_default(),
            )
        })
        .collect();
    let run = run_id();
    Ok(Arc::new(move |i| {
        let card = card_index(i, cards.len());
        let request = AuthorizeRequest::usd(
            format!("ord_bench_{run}_{i}"),
            format!("cus_bench_{card}"),
            AMOUNT_CENTS,
            cards[card].clone(),
        );
        let key = IdempotencyKey::new(format!("bench-{run}-{i}"));
        let gateway = gateway.clone();
        single(Operation::Authorize, async move {
            let key = key.map_err(|e| format!("bad key: {e}"))?;
            match gateway.authorize(&key, &request).await {
                Ok(_) => Ok(()),
                Err(error) => Err(client_error_kind(&error)),
            }
        })
        .boxed()
    }))
}

/// The errors table's name for what the client crate said.
pub(crate) fn client_error_kind(error: &client::Error) -> String {
    if let Some(api) = error.api_error() {
        return format!("{} {}", api.status, api.code.as_str());
    }
    if let client::Error::Decode { status, .. } = error {
        return format!("{status} unreadable");
    }
    if let client::Error::StillPending { .. } = error {
        return "202".to_owned();
    }
    // With one attempt, what is left is a transport error.
    "transport error".to_owned()
}

pub(crate) fn card_index(i: u64, cards: usize) -> usize {
    usize::try_from(i).unwrap_or(0) % cards
}

/// What the workers saw, in offsets from the load's start.
#[derive(Default)]
pub struct Load {
    /// Units (authorizations, or flows) whose every request got the
    /// answer expected.
    pub ok: u64,
    /// Failed requests by operation, and by status code or kind of
    /// transport error.
    pub errors: BTreeMap<(Operation, String), u64>,
    /// Every request answered.
    pub answered: Vec<Answered<Operation>>,
    /// Every unit: from its first request sent to its last answered.
    pub units: Vec<Answered<()>>,
    /// When each client that sent anything was at work.
    pub spans: Vec<Span>,
    pub elapsed: Duration,
}

impl Load {
    fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.answered.extend(other.answered);
        self.units.extend(other.units);
        self.spans.extend(other.spans);
    }

    /// Latencies of the units that went as expected.
    pub fn ok_latencies(&self) -> Vec<Duration> {
        self.units
            .iter()
            .filter(|u| u.ok)
            .map(Answered::latency)
            .collect()
    }
}

/// Sends `units` units with `send` from `concurrency` workers, which take
/// the next unit's number from a shared counter; worker k starts k/concurrency
/// of the way through `ramp`.
pub async fn fire(
    units: u64,
    concurrency: usize,
    ramp: Duration,
    send: SendOne,
) -> anyhow::Result<Load> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|k| {
            let (send, next) = (send.clone(), next.clone());
            let offset = ramp.mul_f64(k as f64 / concurrency as f64);
            tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut load = Load::default();
                let mut span: Option<Span> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= units {
                        load.spans.extend(span);
                        break load;
                    }
                    let ops = send(i).await;
                    let (Some(first), Some(last)) = (ops.first(), ops.last()) else {
                        *load
                            .errors
                            .entry((Operation::Authorize, "nothing sent".to_owned()))
                            .or_default() += 1;
                        continue;
                    };
                    let (sent, done) = (first.sent - started, last.done - started);
                    span = Some(Span {
                        first_sent: span.map_or(sent, |s| s.first_sent),
                        last_done: done,
                    });
                    let ok = ops.iter().all(|op| op.outcome.is_ok());
                    load.ok += u64::from(ok);
                    load.units.push(Answered {
                        kind: (),
                        sent,
                        done,
                        ok,
                    });
                    for op in ops {
                        load.answered.push(Answered {
                            kind: op.operation,
                            sent: op.sent - started,
                            done: op.done - started,
                            ok: op.outcome.is_ok(),
                        });
                        if let Err(kind) = op.outcome {
                            *load.errors.entry((op.operation, kind)).or_default() += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let mut total = Load::default();
    for worker in workers {
        total.merge(worker.await.context("a load worker panicked")?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// A short name for a transport error, for the errors table.
fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "broken response"
    } else {
        "transport error"
    }
    .to_owned()
}

/// Each connection is a file descriptor at both ends, and with its own
/// stack the bank's end is in this process too. Says so when the soft
/// limit (`ulimit -n`) looks too low; it does not change it.
fn warn_if_too_few_open_files(concurrency: usize, own_stack: bool) {
    let needed = concurrency * if own_stack { 2 } else { 1 } + 256;
    let Some(limit) = soft_open_files_limit() else {
        return;
    };
    if limit < needed {
        eprintln!(
            "warning: this process may open only {limit} files (ulimit -n) and {concurrency} \
             concurrent connections need about {needed}; if requests fail with \
             \"too many open files\", run `ulimit -n {}` first",
            needed.next_power_of_two()
        );
    }
}

/// The soft `Max open files` of this process, from `/proc/self/limits`.
fn soft_open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_soft_open_files(&limits)
}

fn parse_soft_open_files(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(usize::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_limit_is_read_from_proc() {
        let limits = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
";
        assert_eq!(parse_soft_open_files(limits), Some(1024));
        assert_eq!(
            parse_soft_open_files("Max open files unlimited unlimited files"),
            Some(usize::MAX)
        );
        assert_eq!(parse_soft_open_files("nothing here"), None);
    }

    #[tokio::test]
    async fn clients_start_spread_over_the_ramp() {
        let origin = Instant::now();
        let firsts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = firsts.clone();
        // Each send outlasts the ramp, so each worker sends one unit.
        let send: SendOne = Arc::new(move |_| {
            seen.lock().unwrap().push(origin.elapsed());
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Vec::new()
            }
            .boxed()
        });
        fire(4, 4, Duration::from_millis(200), send).await.unwrap();
        let mut firsts = firsts.lock().unwrap().clone();
        firsts.sort();
        for (k, first) in firsts.iter().enumerate() {
            let offset = Duration::from_millis(50) * u32::try_from(k).unwrap();
            assert!(*first >= offset, "client {k} started at {first:?}");
        }
    }

    #[test]
    fn requests_go_round_robin_over_the_cards() {
        let picks: Vec<usize> = (0..7).map(|i| card_index(i, 3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }
}
