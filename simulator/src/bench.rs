//! `simulator bench`: authorizations at a fixed concurrency, then a ledger check.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt};
use rand::RngExt;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use crate::bank::{BankAdmin, Chaos, Created, NewCard};
use crate::cards::random_card_number;
use crate::cli::{BenchArgs, Target};
use crate::report::{self, Report};
use crate::stack::{BankChaos, Stack, StackOptions};
use crate::stats::{Latency, micros};

/// Every authorization is for $1.00.
const AMOUNT_CENTS: i64 = 100;
/// Cards are opened concurrently, this many at a time.
const CARD_CREATION_CONCURRENCY: usize = 16;
/// A request that takes longer than this (beyond the added latency) is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.target == Target::Gateway {
        eprintln!("the gateway target arrives with the gateway (issue 3)");
        return Ok(ExitCode::from(2));
    }
    if args.verbose {
        mock_bank::telemetry::init_logging();
    }
    let stack = match &args.url {
        Some(_) => None,
        None => {
            let options = StackOptions {
                bank_port: 0,
                bank_chaos: BankChaos::Calm,
            };
            let stack = Stack::start(&options).await?;
            eprintln!("{}", stack.database());
            Some(stack)
        }
    };
    let base = match (&args.url, &stack) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(stack)) => stack.urls().bank.clone(),
        (None, None) => unreachable!("a stack is started when no URL is given"),
    };
    let outcome = bench_bank(&args, &base, stack.is_some()).await;
    if let Some(stack) = stack {
        stack.shutdown().await;
    }
    let report = outcome?;
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

async fn bench_bank(args: &BenchArgs, base: &str, own_stack: bool) -> anyhow::Result<Report> {
    let concurrency = usize::try_from(args.concurrency)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(REQUEST_TIMEOUT + Duration::from_millis(args.latency_ms))
        .build()?;
    let admin = BankAdmin::new(client.clone(), base);
    admin.health().await?;
    // A bank we did not start gets its chaos back afterwards.
    let previous_chaos = if own_stack {
        None
    } else {
        Some(admin.chaos().await?)
    };
    admin.set_chaos(&Chaos::calm(args.latency_ms)).await?;

    let result = async {
        let per_card = u64::from(args.requests.div_ceil(args.cards));
        let balance = i64::try_from(per_card)? * AMOUNT_CENTS * 2 + 1_000_000;
        eprintln!("opening {} test cards", args.cards);
        let bodies = open_cards(&admin, args.cards, balance).await?;
        eprintln!(
            "sending {} authorizations, {} at a time",
            args.requests, args.concurrency
        );
        let load = authorize(&client, base, bodies, args.requests, concurrency).await?;
        let ledger = admin.verify_ledger().await?;
        Ok::<_, anyhow::Error>((load, ledger))
    }
    .await;

    if let Some(previous) = previous_chaos {
        admin
            .set_chaos(&previous)
            .await
            .context("restoring the bank's chaos")?;
    }
    let (load, ledger) = result?;
    let elapsed_us = micros(load.elapsed);
    Ok(Report {
        target: "bank",
        url: base.to_owned(),
        own_stack,
        cards: args.cards,
        concurrency: args.concurrency,
        added_latency_ms: args.latency_ms,
        total: u64::from(args.requests),
        ok: load.ok,
        errors: load.errors,
        elapsed_us,
        authorizations_per_second: report::rate(load.ok, elapsed_us),
        latency_us: Latency::summarise(load.ok_latencies),
        ledger,
    })
}

/// Opens `count` fresh cards with `balance` cents each; answers, for each,
/// the body of an authorization of [`AMOUNT_CENTS`] on it.
async fn open_cards(admin: &BankAdmin, count: u32, balance: i64) -> anyhow::Result<Vec<String>> {
    futures_util::stream::iter(0..count)
        .map(|_| async move {
            for _ in 0..10 {
                let card = NewCard {
                    card_number: random_card_number(&mut rand::rng()),
                    cvv: format!("{:03}", rand::rng().random_range(0..1000)),
                    expiry_month: 12,
                    expiry_year: 2099,
                    balance,
                };
                if let Created::Yes = admin.create_card(&card).await? {
                    let body = serde_json::json!({
                        "card_number": card.card_number,
                        "cvv": card.cvv,
                        "expiry_month": card.expiry_month,
                        "expiry_year": card.expiry_year,
                        "amount": AMOUNT_CENTS,
                    });
                    return Ok(body.to_string());
                }
            }
            bail!("ten random card numbers in a row were taken")
        })
        .buffer_unordered(CARD_CREATION_CONCURRENCY)
        .try_collect()
        .await
}

/// What the workers saw.
#[derive(Default)]
struct Load {
    ok: u64,
    errors: BTreeMap<String, u64>,
    ok_latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Load {
    fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.ok_latencies.extend(other.ok_latencies);
    }
}

/// Sends `requests` authorizations from `concurrency` workers, which take
/// the next request number from a shared counter; request `i` goes to card
/// `i mod cards` with its own idempotency key.
async fn authorize(
    client: &reqwest::Client,
    base: &str,
    bodies: Vec<String>,
    requests: u32,
    concurrency: usize,
) -> anyhow::Result<Load> {
    let url = Arc::<str>::from(format!("{base}/api/v1/authorizations"));
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let run = format!("{:016x}", rand::random::<u64>());
    let requests = u64::from(requests);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, bodies, next, run) = (
                client.clone(),
                url.clone(),
                bodies.clone(),
                next.clone(),
                run.clone(),
            );
            tokio::spawn(async move {
                let mut load = Load::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break load;
                    }
                    let body = &bodies[usize::try_from(i).unwrap_or(0) % bodies.len()];
                    let sent = Instant::now();
                    let response = client
                        .post(&*url)
                        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                        .header("Idempotency-Key", format!("bench-{run}-{i}"))
                        .body(body.clone())
                        .send()
                        .await;
                    // The body is read so that the connection can be reused.
                    let outcome = match response {
                        Ok(response) => {
                            let status = response.status();
                            match response.bytes().await {
                                Ok(_) if status.is_success() => Ok(()),
                                Ok(_) => Err(status.as_u16().to_string()),
                                Err(e) => Err(error_kind(&e)),
                            }
                        }
                        Err(e) => Err(error_kind(&e)),
                    };
                    match outcome {
                        Ok(()) => {
                            load.ok += 1;
                            load.ok_latencies.push(sent.elapsed());
                        }
                        Err(kind) => *load.errors.entry(kind).or_default() += 1,
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
