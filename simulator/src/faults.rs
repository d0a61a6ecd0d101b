//! The fault plan, carried out beside the traffic: kills on a clock (and
//! `--kill-every`), everything else at its point of the traffic's progress
//! (so that it lands while payments are being made, however fast the
//! machine is), and replicas that crashed at an armed fault point restarted
//! as soon as they are seen dead. Every fault done is an [`Event`] in the
//! report's timeline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use crate::bank::BankAdmin;
use crate::driver::Driver;
use crate::run::Replicas;
use crate::run_report::Event;
use crate::scenario::Scenario;
use crate::stats::millis;

/// How long a killed replica stays down before it is restarted.
const DOWN_FOR: Duration = Duration::from_millis(300);
/// How often the plan looks at the clock, the progress and the replicas.
const TICK: Duration = Duration::from_millis(50);
/// The `statement_timeout` of a statement-timeout window: short enough
/// that the gateways' busier statements hit it.
const SHORT_STATEMENT_TIMEOUT_MS: u32 = 30;
/// Share of the authorized payments an expiry wave expires, in percent.
const EXPIRY_WAVE_PERCENT: u32 = 30;
/// Payments one expiry wave looks at, at most.
const EXPIRY_WAVE_MAX: i64 = 200;
/// Share of the payments a console wave acts on, in percent.
const CONSOLE_WAVE_PERCENT: u32 = 30;
/// Payments one console wave looks at, at most.
const CONSOLE_WAVE_MAX: i64 = 100;
/// Console requests in flight at once in a wave.
const CONSOLE_WAVE_CONCURRENCY: usize = 8;

/// What the fault task does at a moment.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    Outage(u32),
    DbRestart { down_ms: u32 },
    BackendKill,
    StatementTimeout { window_ms: u32 },
    Sigterm(usize),
    ExpiryWave,
    ConsoleWave,
}

/// Where the fault task acts: the replicas, the bank, the gateways'
/// database (and, when the simulator runs it, its Postgres).
pub struct Targets {
    pub replicas: Arc<Mutex<Replicas>>,
    pub admin: BankAdmin,
    pub gateway_database: String,
    /// The gateways' own Postgres, when the simulator started it: it can
    /// be stopped and started.
    pub gateway_postgres: Option<Arc<throwaway_pg::Postgres>>,
}

/// The plan on its two axes.
struct Schedule {
    /// (ms after the traffic started, fault).
    timed: Vec<(u64, Fault)>,
    /// (permille of the payments done, fault).
    staged: Vec<(u32, Fault)>,
}

fn schedule(scenario: &Scenario, replicas: usize) -> Schedule {
    let plan = &scenario.faults;
    let mut kill_times: Vec<u64> = plan.kills_ms.iter().map(|&ms| u64::from(ms)).collect();
    if let Some(every) = plan.kill_every_ms.filter(|&e| e > 0) {
        // An hour of them; the traffic stops them long before.
        kill_times.extend((1..=3_600_000 / u64::from(every)).map(|k| k * u64::from(every)));
    }
    kill_times.sort_unstable();
    let timed = kill_times
        .into_iter()
        .enumerate()
        .map(|(k, at)| (at, Fault::Kill(k % replicas.max(1))))
        .collect();
    let mut staged: Vec<(u32, Fault)> = Vec::new();
    staged.extend(plan.outages.iter().map(|&(at, s)| (at, Fault::Outage(s))));
    staged.extend(
        plan.db_restarts
            .iter()
            .map(|&(at, down_ms)| (at, Fault::DbRestart { down_ms })),
    );
    staged.extend(
        plan.backend_kills
            .iter()
            .map(|&at| (at, Fault::BackendKill)),
    );
    staged.extend(
        plan.statement_timeouts
            .iter()
            .map(|&(at, window_ms)| (at, Fault::StatementTimeout { window_ms })),
    );
    staged.extend(
        plan.sigterms
            .iter()
            .enumerate()
            .map(|(k, &at)| (at, Fault::Sigterm((k + 1) % replicas.max(1)))),
    );
    staged.extend(plan.expiry_waves.iter().map(|&at| (at, Fault::ExpiryWave)));
    staged.extend(
        plan.console_waves
            .iter()
            .map(|&at| (at, Fault::ConsoleWave)),
    );
    staged.sort_by_key(|(at, _)| *at);
    Schedule { timed, staged }
}

/// Runs the plan until `stop` says the traffic is over.
pub async fn run(
    scenario: Scenario,
    targets: Targets,
    driver: Arc<Driver>,
    mut stop: watch::Receiver<bool>,
    events: Arc<std::sync::Mutex<Vec<Event>>>,
) -> anyhow::Result<()> {
    let started = driver.started();
    let replicas = targets.replicas.lock().await.count();
    let Schedule {
        mut timed,
        mut staged,
    } = schedule(&scenario, replicas);
    timed.reverse();
    staged.reverse();
    let total = u64::try_from(scenario.payments.len().max(1)).unwrap_or(u64::MAX);
    let mut rng = StdRng::seed_from_u64(scenario.seed);
    let record = |kind: &str, replica: Option<usize>, detail: String| {
        let event = Event {
            at_ms: millis(started.elapsed()),
            kind: kind.to_owned(),
            replica,
            detail,
        };
        events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        }
        if let Err(e) = restart_crashed(&targets, &record).await {
            // Tried again next tick: a replica left dead would stall the run.
            record("fault_error", None, format!("restarting a replica: {e:#}"));
        }
        let elapsed = millis(started.elapsed());
        let done = driver.flows_done.load(Ordering::Relaxed);
        let permille = u32::try_from(done * 1000 / total).unwrap_or(u32::MAX);
        let mut due = Vec::new();
        while timed.last().is_some_and(|(at, _)| *at <= elapsed) {
            due.extend(timed.pop().map(|(_, fault)| fault));
        }
        while staged.last().is_some_and(|(at, _)| *at <= permille) {
            due.extend(staged.pop().map(|(_, fault)| fault));
        }
        for fault in due {
            // A fault that could not be done is reported, and the plan goes
            // on: the run's checks still hold for what did happen.
            if let Err(e) = apply(fault, &targets, &mut rng, &record).await {
                record("fault_error", None, format!("{fault:?}: {e:#}"));
            }
        }
    }
}

/// A replica that died by itself (an armed `abort`, or a real crash) is
/// started again, and the timeline says so.
pub async fn restart_crashed(
    targets: &Targets,
    record: &impl Fn(&str, Option<usize>, String),
) -> anyhow::Result<()> {
    let mut replicas = targets.replicas.lock().await;
    for (i, status) in replicas.exited()? {
        record("crash", Some(i), format!("exited by itself ({status})"));
        replicas.restart(i).await?;
        record("restart", Some(i), "ready again".to_owned());
    }
    Ok(())
}

async fn apply(
    fault: Fault,
    targets: &Targets,
    rng: &mut StdRng,
    record: &impl Fn(&str, Option<usize>, String),
) -> anyhow::Result<()> {
    match fault {
        Fault::Kill(i) => {
            let mut replicas = targets.replicas.lock().await;
            let pid = replicas.pid(i);
            replicas.kill(i).await?;
            record("kill", Some(i), format!("kill -9 {pid}"));
            tokio::time::sleep(DOWN_FOR).await;
            replicas.restart(i).await?;
            record("restart", Some(i), "ready again".to_owned());
        }
        Fault::Sigterm(i) => {
            let mut replicas = targets.replicas.lock().await;
            let status = replicas.terminate(i).await?;
            record("sigterm", Some(i), format!("stopped gracefully ({status})"));
            replicas.restart(i).await?;
            record("restart", Some(i), "ready again".to_owned());
        }
        Fault::Outage(seconds) => {
            targets
                .admin
                .put_chaos(&json!({ "outage_seconds": seconds }))
                .await?;
            record("outage", None, format!("bank answers 503 for {seconds} s"));
        }
        Fault::DbRestart { down_ms } => db_restart(targets, down_ms, record).await?,
        Fault::BackendKill => {
            let killed = terminate_backends(&targets.gateway_database).await?;
            record(
                "backend_kill",
                None,
                format!("{killed} gateway database connection(s) terminated"),
            );
        }
        Fault::StatementTimeout { window_ms } => {
            statement_timeout(&targets.gateway_database, Some(SHORT_STATEMENT_TIMEOUT_MS)).await?;
            record(
                "statement_timeout",
                None,
                format!("statement_timeout {SHORT_STATEMENT_TIMEOUT_MS} ms for {window_ms} ms"),
            );
            tokio::time::sleep(Duration::from_millis(u64::from(window_ms))).await;
            statement_timeout(&targets.gateway_database, None).await?;
        }
        Fault::ExpiryWave => {
            let expired = expiry_wave(targets, rng).await?;
            record(
                "expiry_wave",
                None,
                format!("{expired} authorization(s) expired at the bank"),
            );
        }
        Fault::ConsoleWave => {
            let done = console_wave(targets, rng).await?;
            record("console_wave", None, done.to_string());
        }
    }
    Ok(())
}

/// The gateways' Postgres stopped (fast: connections cut) and started again.
async fn db_restart(
    targets: &Targets,
    down_ms: u32,
    record: &impl Fn(&str, Option<usize>, String),
) -> anyhow::Result<()> {
    let Some(postgres) = &targets.gateway_postgres else {
        record(
            "db_restart",
            None,
            "skipped: the gateways' Postgres is not the simulator's own".to_owned(),
        );
        return Ok(());
    };
    let stopping = Arc::clone(postgres);
    tokio::task::spawn_blocking(move || stopping.stop())
        .await?
        .context("stopping the gateways' Postgres")?;
    record(
        "db_restart",
        None,
        format!("gateway Postgres down for {down_ms} ms"),
    );
    tokio::time::sleep(Duration::from_millis(u64::from(down_ms))).await;
    let starting = Arc::clone(postgres);
    tokio::task::spawn_blocking(move || starting.start())
        .await?
        .context("starting the gateways' Postgres again")?;
    Ok(())
}

/// One connection to the gateways' database, for a fault.
/// A connection of the harness's own, exempt from the statement timeout
/// the harness sets on the database: otherwise, under load, its own
/// `RESET` could be cancelled by the 30 ms it is lifting, and the timeout
/// would outlive its window (and fail the run's checks).
async fn admin_connection(database_url: &str) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    sqlx::postgres::PgConnectOptions::from_str(database_url)
        .context("the gateways' database URL")?
        .options([("statement_timeout", "0")])
        .connect()
        .await
        .context("connecting to the gateways' database")
}

/// Terminates every other session on the gateways' database, whatever it
/// is doing (mid-transaction included); how many.
async fn terminate_backends(database_url: &str) -> anyhow::Result<u64> {
    let mut conn = admin_connection(database_url).await?;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend'",
    )
    .fetch_one(&mut conn)
    .await?;
    Ok(u64::try_from(killed).unwrap_or(0))
}

/// Sets (or resets) the database's `statement_timeout`, then terminates
/// the sessions, so that the gateways' new connections have it.
async fn statement_timeout(database_url: &str, ms: Option<u32>) -> anyhow::Result<()> {
    let mut conn = admin_connection(database_url).await?;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await?;
    let setting = match ms {
        Some(ms) => format!("SET statement_timeout = {ms}"),
        None => "RESET statement_timeout".to_owned(),
    };
    sqlx::query(&format!(
        r#"ALTER DATABASE "{}" {setting}"#,
        name.replace('"', "\"\"")
    ))
    .execute(&mut conn)
    .await?;
    drop(conn);
    terminate_backends(database_url).await?;
    Ok(())
}

/// A share of the authorized payments made to have reached the end of
/// their authorization's life: expired at the bank (which releases the
/// hold) and, as the passing week would have, due in the gateway's
/// records, where its sweeper and its capture and void find it. The
/// gateway is not told; its own clock-driven paths must cope. Returns how
/// many.
async fn expiry_wave(targets: &Targets, rng: &mut StdRng) -> anyhow::Result<u64> {
    let mut conn = admin_connection(&targets.gateway_database).await?;
    let authorized: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, bank_authorization_id FROM payments \
         WHERE status = 'authorized' AND bank_authorization_id IS NOT NULL \
         ORDER BY created_at DESC LIMIT $1",
    )
    .bind(EXPIRY_WAVE_MAX)
    .fetch_all(&mut conn)
    .await?;
    let mut expired = 0;
    for (payment, authorization) in authorized {
        if rng.random_range(0..100) >= EXPIRY_WAVE_PERCENT {
            continue;
        }
        // Refused when the payment moved on meanwhile (captured, voided):
        // then its authorization's life no longer matters.
        if targets
            .admin
            .expire_authorization(&authorization)
            .await
            .is_err()
        {
            continue;
        }
        sqlx::query(
            "UPDATE payments SET authorization_expires_at = now() \
             WHERE id = $1 AND status = 'authorized'",
        )
        .bind(payment)
        .execute(&mut conn)
        .await?;
        expired += 1;
    }
    Ok(expired)
}

/// What one console wave did at the bank.
#[derive(Debug, Default)]
struct ConsoleWave {
    captured: u64,
    voided: u64,
    refunded: u64,
    /// Refused, or not answered: the payment moved on meanwhile, or the
    /// bank's own chaos got in the way. The bank's books say which.
    not_done: u64,
}

impl std::fmt::Display for ConsoleWave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the bank's console captured {}, voided {} and refunded {} payment(s) behind the gateway ({} not done)",
            self.captured, self.voided, self.refunded, self.not_done
        )
    }
}

/// The bank acting alone, as a person at its console would, on a share of
/// the latest payments the gateway holds as authorized or captured: an
/// authorization captured in full (two in three) or voided, a capture
/// refunded in full. The gateway is not told; its reconciliation must
/// find each one, and its clients' requests on the same payments meet a
/// bank that has moved.
async fn console_wave(targets: &Targets, rng: &mut StdRng) -> anyhow::Result<ConsoleWave> {
    let mut conn = admin_connection(&targets.gateway_database).await?;
    let open: Vec<(String, i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT status::text, amount, bank_authorization_id, bank_capture_id FROM payments \
         WHERE status IN ('authorized', 'captured') ORDER BY created_at DESC LIMIT $1",
    )
    .bind(CONSOLE_WAVE_MAX)
    .fetch_all(&mut conn)
    .await?;
    // Drawn before any call, so the seed alone decides what is tried.
    let mut actions: Vec<(&'static str, Value)> = Vec::new();
    for (status, amount, authorization, capture) in open {
        let chosen = rng.random_range(0..100) < CONSOLE_WAVE_PERCENT;
        let capture_it = rng.random_range(0..3) < 2;
        let action = match (status.as_str(), authorization, capture) {
            ("authorized", Some(authorization), _) if capture_it => (
                "captures",
                json!({"authorization_id": authorization, "amount": amount}),
            ),
            ("authorized", Some(authorization), _) => {
                ("voids", json!({"authorization_id": authorization}))
            }
            ("captured", _, Some(capture)) => {
                ("refunds", json!({"capture_id": capture, "amount": amount}))
            }
            _ => continue,
        };
        if chosen {
            actions.push(action);
        }
    }
    // Spawned, each with its own client handle: a stream of futures here
    // trips the compiler's higher-ranked lifetime check on `Send`.
    let limit = Arc::new(tokio::sync::Semaphore::new(CONSOLE_WAVE_CONCURRENCY));
    let mut calls = tokio::task::JoinSet::new();
    for (path, body) in actions {
        let (admin, limit) = (targets.admin.clone(), limit.clone());
        calls.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (path, admin.console(path, &body).await)
        });
    }
    let outcomes = calls.join_all().await;
    let mut done = ConsoleWave::default();
    for (path, ok) in outcomes {
        let slot = match (path, ok) {
            ("captures", true) => &mut done.captured,
            ("voids", true) => &mut done.voided,
            ("refunds", true) => &mut done.refunded,
            _ => &mut done.not_done,
        };
        *slot += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_harness_is_exempt_from_the_statement_timeout_it_sets() {
        let url = throwaway_pg::shared()
            .fresh_database("faults")
            .await
            .expect("a database");
        statement_timeout(&url, Some(SHORT_STATEMENT_TIMEOUT_MS))
            .await
            .expect("set");
        let mut conn = admin_connection(&url).await.expect("a connection");
        sqlx::query("SELECT pg_sleep(0.2)")
            .execute(&mut conn)
            .await
            .expect("a statement longer than the short timeout");
        drop(conn);
        statement_timeout(&url, None).await.expect("reset");
    }
}
