//! The machine's floor: what one single-row INSERT costs on the bench's own
//! durable cluster, measured by `pgbench` in the same run, so that the
//! gateway's CPU per authorization can be given as a number of inserts.
//!
//! pgbench runs a script of one `INSERT` into a scratch table (created
//! first, dropped after) from up to [`MAX_CLIENTS`] clients. Its
//! connections are open for the whole run and end with it, so the CPU is
//! read over a window inside the run, when all of them are open: from
//! `/proc`, as [`crate::cpu`] reads it, for the Postgres backends whose
//! `application_name` is pgbench's and for the pgbench process itself.
//! The rows inserted in the window are read from the table's sequence
//! (off by at most the inserts in flight at either end, one per client).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use crate::cpu::{TICKS_PER_SECOND, process_ticks};
use crate::stats::micros;

/// pgbench's clients: the bench's concurrency, at most this many. More
/// connections than cores only queue for them; 16 keeps the commit
/// queue full (group commit) on two cores.
pub const MAX_CLIENTS: u32 = 16;
/// pgbench's threads, at most (`--jobs`): one per core of this machine.
pub const MAX_THREADS: u32 = 2;
/// pgbench is told to run this much longer than the window, to be
/// connected before it opens and still connected when it closes; it is
/// stopped when the window closes.
const MARGIN_SECONDS: u64 = 3;
/// How long pgbench may take to open its connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The floor beside the gateway's cost, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// What pgbench measured; `null` when it could not (see `skipped`).
    pub insert: Option<InsertCost>,
    /// Why there is no measurement; `null` when there is one.
    pub skipped: Option<String>,
    /// The gateway's own CPU per authorization: its process plus the
    /// Postgres backends serving its database (bench without `--mix`).
    pub gateway_cpu_ms_per_authorization: Option<f64>,
    /// That, in single-row inserts' worth of CPU.
    pub authorization_in_inserts: Option<f64>,
    /// The gateway's own CPU per flow of the mix (with `--mix`).
    pub gateway_cpu_ms_per_flow: Option<f64>,
    /// That, in single-row inserts' worth of CPU.
    pub flow_in_inserts: Option<f64>,
}

impl Floor {
    /// The floor as measured (or why not), with the gateway's own CPU per
    /// authorization or per flow in inserts' worth where both are known.
    pub fn new(
        measured: Result<InsertCost, String>,
        gateway_ms_per_authorization: Option<f64>,
        gateway_ms_per_flow: Option<f64>,
    ) -> Self {
        let (insert, skipped) = match measured {
            Ok(cost) => (Some(cost), None),
            Err(why) => (None, Some(why)),
        };
        let per_insert = insert.as_ref().map(|i| i.cpu_ms_per_insert);
        let ratio = |ms: Option<f64>| in_inserts(ms?, per_insert?);
        Self {
            authorization_in_inserts: ratio(gateway_ms_per_authorization),
            flow_in_inserts: ratio(gateway_ms_per_flow),
            gateway_cpu_ms_per_authorization: gateway_ms_per_authorization,
            gateway_cpu_ms_per_flow: gateway_ms_per_flow,
            insert,
            skipped,
        }
    }
}

/// What one single-row INSERT cost while pgbench ran.
#[derive(Debug, Clone, Serialize)]
pub struct InsertCost {
    /// The pgbench that ran.
    pub program: String,
    pub clients: u32,
    pub threads: u32,
    /// The measuring window.
    pub window_us: u64,
    /// Rows inserted in the window.
    pub inserts: u64,
    pub inserts_per_second: f64,
    /// Postgres backends and pgbench together: the floor.
    pub cpu_ms_per_insert: f64,
    pub postgres_cpu_ms_per_insert: f64,
    pub pgbench_cpu_ms_per_insert: f64,
}

/// Milliseconds of CPU per item, to the microsecond's tenth.
pub fn ms_per(ticks: u64, items: u64) -> f64 {
    let ms = (ticks * 1_000) as f64 / TICKS_PER_SECOND as f64 / items.max(1) as f64;
    (ms * 10_000.0).round() / 10_000.0
}

/// `cost_ms` in units of `insert_ms`, to two decimals; `None` for an
/// insert that cost nothing measurable.
pub fn in_inserts(cost_ms: f64, insert_ms: f64) -> Option<f64> {
    (insert_ms > 0.0).then(|| (cost_ms / insert_ms * 100.0).round() / 100.0)
}

/// pgbench's clients and threads for a bench at `concurrency`.
pub fn clients_and_threads(concurrency: u32) -> (u32, u32) {
    let clients = concurrency.clamp(1, MAX_CLIENTS);
    (clients, clients.min(MAX_THREADS))
}

/// The pgbench installed with the cluster's server, or on PATH.
pub fn pgbench() -> Option<PathBuf> {
    throwaway_pg::server_program("pgbench")
}

/// Runs pgbench against `database_url` with `clients` clients and reads
/// the CPU over a window of `seconds`. `Err` says why there is no figure.
pub async fn measure(
    program: &Path,
    database_url: &str,
    concurrency: u32,
    seconds: u64,
) -> Result<InsertCost, String> {
    let table = format!("bench_floor_{:08x}", rand::random::<u32>());
    let mut conn = PgConnection::connect(database_url)
        .await
        .map_err(|e| format!("connecting to the cluster: {e}"))?;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, note text NOT NULL)"
    ))
    .execute(&mut conn)
    .await
    .map_err(|e| format!("creating the scratch table: {e}"))?;
    let script = std::env::temp_dir().join(format!("{table}.sql"));
    let measured = async {
        std::fs::write(
            &script,
            format!("INSERT INTO {table} (note) VALUES ('floor');\n"),
        )
        .map_err(|e| format!("writing pgbench's script: {e}"))?;
        run(
            program,
            database_url,
            &mut conn,
            &table,
            &script,
            concurrency,
            seconds,
        )
        .await
    }
    .await;
    std::fs::remove_file(&script).ok();
    let dropped = sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&mut conn)
        .await;
    conn.close().await.ok();
    let cost = measured?;
    dropped.map_err(|e| format!("dropping the scratch table: {e}"))?;
    Ok(cost)
}

async fn run(
    program: &Path,
    database_url: &str,
    conn: &mut PgConnection,
    table: &str,
    script: &Path,
    concurrency: u32,
    seconds: u64,
) -> Result<InsertCost, String> {
    let (clients, threads) = clients_and_threads(concurrency);
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--no-vacuum")
        .arg("--file")
        .arg(script)
        .args(["--client", &clients.to_string()])
        .args(["--jobs", &threads.to_string()])
        .args(["--time", &(seconds + MARGIN_SECONDS).to_string()])
        .arg(database_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = crate::children::spawn(command)
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    let pid = child.id().ok_or("pgbench exited at once")?;

    // Every client connected.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return Err(failure(child).await);
        }
        if backends(conn).await?.len() >= usize::try_from(clients).unwrap_or(usize::MAX) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "pgbench did not open {clients} connections in time"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = reading(conn, pid, table).await?;
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = reading(conn, pid, table).await?;
    let window = opened.elapsed();
    if child.try_wait().ok().flatten().is_some() {
        return Err("pgbench ended before the window closed".to_owned());
    }
    let postgres = after.backend_ticks_since(&before)?;
    let pgbench = after.pgbench.saturating_sub(before.pgbench);
    let inserts = u64::try_from(after.inserted - before.inserted).unwrap_or(0);
    if inserts == 0 {
        return Err("pgbench inserted nothing in the window".to_owned());
    }

    // The figure is taken: the rest of pgbench's run is not waited for.
    child
        .kill()
        .await
        .map_err(|e| format!("stopping pgbench: {e}"))?;
    Ok(InsertCost {
        program: program.display().to_string(),
        clients,
        threads,
        window_us: micros(window),
        inserts,
        inserts_per_second: crate::report::rate(inserts, micros(window)),
        cpu_ms_per_insert: ms_per(postgres + pgbench, inserts),
        postgres_cpu_ms_per_insert: ms_per(postgres, inserts),
        pgbench_cpu_ms_per_insert: ms_per(pgbench, inserts),
    })
}

/// Why pgbench stopped, from its standard error.
async fn failure(child: tokio::process::Child) -> String {
    match child.wait_with_output().await {
        Ok(output) => format!(
            "pgbench exited ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) => format!("pgbench exited: {e}"),
    }
}

/// CPU counters and the rows inserted, at one moment.
struct Reading {
    pgbench: u64,
    /// Ticks of each of pgbench's backends.
    backends: HashMap<u32, u64>,
    /// The scratch table's sequence.
    inserted: i64,
}

impl Reading {
    /// The backends' ticks since `before`; every backend of `before` must
    /// still be there (one that ended took its ticks with it).
    fn backend_ticks_since(&self, before: &Reading) -> Result<u64, String> {
        let mut ticks = 0;
        for (pid, start) in &before.backends {
            let end = self
                .backends
                .get(pid)
                .ok_or("a pgbench connection ended inside the window")?;
            ticks += end.saturating_sub(*start);
        }
        Ok(ticks)
    }
}

async fn reading(conn: &mut PgConnection, pgbench: u32, table: &str) -> Result<Reading, String> {
    let unreadable = "the CPU of the cluster's processes cannot be read from /proc \
                      (a server on another machine?)";
    let pgbench = process_ticks(&pgbench.to_string()).ok_or(unreadable)?;
    let mut backend_ticks = HashMap::new();
    for pid in backends(conn).await? {
        let ticks = process_ticks(&pid.to_string()).ok_or(unreadable)?;
        backend_ticks.insert(pid, ticks);
    }
    let inserted: i64 = sqlx::query_scalar(&format!("SELECT last_value FROM {table}_id_seq"))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("reading the scratch table's sequence: {e}"))?;
    Ok(Reading {
        pgbench,
        backends: backend_ticks,
        inserted,
    })
}

/// The pids of pgbench's connections to this database.
async fn backends(conn: &mut PgConnection) -> Result<Vec<u32>, String> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'pgbench' \
         AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| format!("listing pgbench's connections: {e}"))?;
    Ok(pids
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_insert_is_ticks_over_rows() {
        // 250 ticks = 2.5 s over 25,000 inserts: 0.1 ms each.
        assert_eq!(ms_per(250, 25_000), 0.1);
        // 1 tick over 3 inserts: 3.333… ms, kept to four decimals.
        assert_eq!(ms_per(1, 3), 3.3333);
        assert_eq!(ms_per(5, 0), 50.0, "no division by zero");
    }

    #[test]
    fn an_authorization_is_counted_in_inserts() {
        assert_eq!(in_inserts(0.78, 0.12), Some(6.5));
        assert_eq!(in_inserts(0.2, 0.3), Some(0.67));
        assert_eq!(in_inserts(1.0, 0.0), None);
    }

    #[test]
    fn the_floor_puts_the_gateway_beside_the_insert() {
        let cost = InsertCost {
            program: "pgbench".to_owned(),
            clients: 16,
            threads: 2,
            window_us: 10_000_000,
            inserts: 100_000,
            inserts_per_second: 10_000.0,
            cpu_ms_per_insert: 0.15,
            postgres_cpu_ms_per_insert: 0.12,
            pgbench_cpu_ms_per_insert: 0.03,
        };
        let floor = Floor::new(Ok(cost.clone()), Some(0.9), None);
        assert_eq!(floor.authorization_in_inserts, Some(6.0));
        assert_eq!(floor.flow_in_inserts, None);
        assert_eq!(floor.skipped, None);
        let flow = Floor::new(Ok(cost), None, Some(1.5));
        assert_eq!(flow.flow_in_inserts, Some(10.0));
        let skipped = Floor::new(Err("no pgbench".to_owned()), Some(0.9), None);
        assert_eq!(skipped.authorization_in_inserts, None);
        assert_eq!(skipped.gateway_cpu_ms_per_authorization, Some(0.9));
        assert_eq!(skipped.skipped.as_deref(), Some("no pgbench"));
    }

    #[test]
    fn pgbench_gets_the_concurrency_up_to_a_cap() {
        assert_eq!(clients_and_threads(64), (16, 2));
        assert_eq!(clients_and_threads(1_000), (16, 2));
        assert_eq!(clients_and_threads(8), (8, 2));
        assert_eq!(clients_and_threads(1), (1, 1));
    }
}
