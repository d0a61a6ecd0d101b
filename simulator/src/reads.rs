//! `simulator reads`: what a client sees reading a loaded gateway database
//! (`simulator load`), through HTTP: `GET /v1/payments/{id}` of random
//! payments, and `GET /v1/payments?customer_id=…` / `?order_id=…`, on the
//! first page and on a deep page reached by following `starting_after`
//! cursors. Then the sizes of every table and index, per million
//! payments, the plans of the list statement, and, with `--purge`, the
//! gateway's own purge of expired idempotency keys run batch by batch
//! while the reads go on.

use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use gateway::store::payments::{ListFilter, list_statement};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::cli::ReadsArgs;
use crate::process::{GatewayOptions, GatewayOutput, GatewayProcess};
use crate::stats::{Latency, format_ms};

/// Every listing asks for the default page.
const PAGE: usize = 20;
/// The heavy customers and orders whose deep pages are read.
const HEAVY: i64 = 20;
/// The retention the purge is run with: the gateway's default.
const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Untimed requests of each kind before the timed ones.
const WARM_UP: usize = 100;

#[derive(Debug, Serialize)]
pub struct ReadsReport {
    pub database: String,
    pub postgres: String,
    pub payments: i64,
    pub merchant_payments: i64,
    pub samples: u32,
    pub concurrency: u32,
    /// Timed reads, by kind.
    pub reads: Vec<Timed>,
    pub tables: Vec<TableSize>,
    pub indexes: Vec<IndexSize>,
    /// EXPLAIN (ANALYZE, BUFFERS) of the list statement: custom and generic plans.
    pub plans: Vec<Plan>,
    pub purge: Option<PurgeReport>,
}

#[derive(Debug, Serialize)]
pub struct Timed {
    pub what: String,
    pub requests: usize,
    pub errors: usize,
    pub latency_us: Option<Latency>,
}

#[derive(Debug, Serialize)]
pub struct TableSize {
    pub table: String,
    pub rows: i64,
    pub total_bytes: i64,
    pub heap_bytes: i64,
    pub index_bytes: i64,
    pub toast_bytes: i64,
}

#[derive(Debug, Serialize)]
pub struct IndexSize {
    pub table: String,
    pub index: String,
    pub bytes: i64,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub what: String,
    pub plan: String,
}

#[derive(Debug, Serialize)]
pub struct PurgeReport {
    pub retention_seconds: u64,
    pub expired_before: i64,
    pub purged: u64,
    pub statements: u64,
    pub largest_statement: u64,
    pub batch_limit: i64,
    pub elapsed_ms: u64,
    pub keys_per_second: f64,
    pub statement_latency_us: Option<Latency>,
    pub before: KeysTable,
    pub after: KeysTable,
    pub after_vacuum: KeysTable,
    pub vacuum_ms: u64,
    /// The reads timed while the purge ran.
    pub reads_during: Vec<Timed>,
}

#[derive(Debug, Serialize)]
pub struct KeysTable {
    pub live_rows: i64,
    pub dead_rows: i64,
    pub total_bytes: i64,
    pub heap_bytes: i64,
    pub index_bytes: i64,
}

pub async fn run(args: ReadsArgs) -> anyhow::Result<ExitCode> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database_url)
        .await
        .context("connecting to the gateway's database")?;
    let merchant: Uuid = sqlx::query_scalar("SELECT id FROM merchants WHERE name = $1")
        .bind(&args.merchant)
        .fetch_optional(&pool)
        .await?
        .with_context(|| format!("no merchant {:?} in the database", args.merchant))?;
    let mut own = None;
    let (url, api_key) = match (&args.url, &args.api_key) {
        (Some(url), Some(key)) => (url.trim_end_matches('/').to_owned(), key.clone()),
        (Some(_), None) => bail!("--url needs --api-key"),
        (None, _) => {
            let mut conn = pool.acquire().await?;
            let (_, key) =
                gateway::store::merchants::create_api_key(&mut conn, &args.merchant).await?;
            drop(conn);
            let process = start_gateway(&args.database_url).await?;
            let url = process.url().to_owned();
            own = Some(process);
            (url, key)
        }
    };
    let outcome = measure(&args, &pool, merchant, &url, &api_key).await;
    if let Some(mut process) = own {
        process.terminate(Duration::from_secs(35)).await.ok();
        if let (Ok(_), Some(log)) = (&outcome, process.log_file()) {
            std::fs::remove_file(log).ok();
        }
    }
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    let failed = report.reads.iter().any(|t| t.errors > 0)
        || report
            .purge
            .as_ref()
            .is_some_and(|p| p.reads_during.iter().any(|t| t.errors > 0));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A gateway on the loaded database, for reads only: no bank behind it
/// (reads never call one), its own purge and reconciliation off so that
/// they do not run beside the measurement.
async fn start_gateway(database_url: &str) -> anyhow::Result<GatewayProcess> {
    let options = GatewayOptions {
        args: vec![
            "--rate-limit-per-second".into(),
            "0".into(),
            "--reconcile-interval-ms".into(),
            "0".into(),
            // Ten years: the purge finds nothing (`--purge` runs it here).
            "--idempotency-retention-seconds".into(),
            "315360000".into(),
        ],
        ..GatewayOptions::new(0, GatewayOutput::temp_log_file("reads-gateway"))
    };
    let mut process = GatewayProcess::spawn(database_url, "http://127.0.0.1:9", &options)?;
    process.wait_ready().await?;
    eprintln!("started a gateway on the database at {}", process.url());
    Ok(process)
}

/// What to read.
struct Targets {
    ids: Vec<String>,
    customers: Vec<String>,
    orders: Vec<String>,
    heavy_customers: Vec<String>,
    heavy_orders: Vec<String>,
}

async fn measure(
    args: &ReadsArgs,
    pool: &PgPool,
    merchant: Uuid,
    url: &str,
    api_key: &str,
) -> anyhow::Result<ReadsReport> {
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(pool)
        .await?;
    let merchant_payments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE merchant_id = $1")
            .bind(merchant)
            .fetch_one(pool)
            .await?;
    let postgres: String = sqlx::query_scalar(
        "SELECT 'fsync ' || current_setting('fsync') || ', synchronous_commit ' \
         || current_setting('synchronous_commit') || ', shared_buffers ' \
         || current_setting('shared_buffers')",
    )
    .fetch_one(pool)
    .await?;
    eprintln!("choosing payments, customers and orders to read");
    let targets = targets(pool, merchant, args.samples).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::try_from(args.concurrency)?)
        .timeout(Duration::from_secs(30))
        .build()?;
    let reader = Reader {
        client,
        url: url.to_owned(),
        api_key: api_key.to_owned(),
        concurrency: usize::try_from(args.concurrency)?,
    };
    let samples = usize::try_from(args.samples)?;
    eprintln!("following cursors to page {}", args.deep_page);
    let deep_customers = reader
        .deep_cursors(
            Some("customer_id"),
            &targets.heavy_customers,
            args.deep_page,
        )
        .await?;
    let deep_orders = reader
        .deep_cursors(Some("order_id"), &targets.heavy_orders, args.deep_page)
        .await?;
    let deep_all = reader
        .deep_cursors(None, &[String::new()], args.deep_page)
        .await?;
    let kinds = read_kinds(
        &targets,
        [&deep_customers, &deep_orders, &deep_all],
        samples,
    );
    let mut reads = Vec::new();
    for (what, paths) in &kinds {
        eprintln!("timing {what}");
        reader.time(&paths[..WARM_UP.min(paths.len())]).await;
        reads.push(reader.time(paths).await.named(what));
    }
    let tables = table_sizes(pool).await?;
    let indexes = index_sizes(pool).await?;
    let plans = plans(pool, merchant, &targets, &deep_customers, &deep_orders).await?;
    let purge = if args.purge {
        Some(purge(pool, &reader, &kinds).await?)
    } else {
        None
    };
    Ok(ReadsReport {
        database: redact(&args.database_url),
        postgres,
        payments,
        merchant_payments,
        samples: args.samples,
        concurrency: args.concurrency,
        reads,
        tables,
        indexes,
        plans,
        purge,
    })
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn targets(pool: &PgPool, merchant: Uuid, samples: u32) -> anyhow::Result<Targets> {
    let rows = sqlx::query(
        "SELECT id, customer_id, order_id FROM payments WHERE merchant_id = $1 \
         ORDER BY random() LIMIT $2",
    )
    .bind(merchant)
    .bind(i64::from(samples))
    .fetch_all(pool)
    .await?;
    let mut targets = Targets {
        ids: Vec::new(),
        customers: Vec::new(),
        orders: Vec::new(),
        heavy_customers: Vec::new(),
        heavy_orders: Vec::new(),
    };
    for row in rows {
        targets
            .ids
            .push(format!("pay_{}", row.get::<Uuid, _>("id")));
        targets.customers.push(row.get("customer_id"));
        targets.orders.push(row.get("order_id"));
    }
    if targets.ids.is_empty() {
        bail!("the merchant has no payments: load some first (simulator load)");
    }
    for (column, into) in [
        ("customer_id", &mut targets.heavy_customers),
        ("order_id", &mut targets.heavy_orders),
    ] {
        *into = sqlx::query_scalar(&format!(
            "SELECT {column} FROM payments WHERE merchant_id = $1 \
             GROUP BY {column} ORDER BY count(*) DESC, {column} LIMIT $2"
        ))
        .bind(merchant)
        .bind(HEAVY)
        .fetch_all(pool)
        .await?;
    }
    Ok(targets)
}

/// A cursor that leads to a deep page: the filter's value, the page's
/// number, and the last id of the page before it.
#[derive(Debug, Clone)]
struct Deep {
    value: String,
    /// The filter, `customer_id=…` (empty for the unfiltered list).
    query: String,
    page: u32,
    cursor: String,
}

/// The request paths of each kind of read, `samples` of each, round robin
/// over the targets.
fn read_kinds(
    targets: &Targets,
    [deep_customers, deep_orders, deep_all]: [&[Deep]; 3],
    samples: usize,
) -> Vec<(String, Vec<String>)> {
    let cycle = |values: &[String], path: &dyn Fn(&String) -> String| -> Vec<String> {
        values.iter().cycle().take(samples).map(path).collect()
    };
    let mut kinds = vec![
        (
            "GET /v1/payments/{id}, random ids".to_owned(),
            cycle(&targets.ids, &|id| format!("/v1/payments/{id}")),
        ),
        (
            "list by customer, first page (customers of random payments)".to_owned(),
            cycle(&targets.customers, &|c| {
                format!("/v1/payments?customer_id={c}")
            }),
        ),
        (
            "list by order, first page (orders of random payments)".to_owned(),
            cycle(&targets.orders, &|o| format!("/v1/payments?order_id={o}")),
        ),
        (
            format!(
                "list by customer, first page ({} heaviest customers)",
                targets.heavy_customers.len()
            ),
            cycle(&targets.heavy_customers, &|c| {
                format!("/v1/payments?customer_id={c}")
            }),
        ),
        (
            "list all, first page".to_owned(),
            vec!["/v1/payments".to_owned(); samples],
        ),
    ];
    for (filter, deep) in [
        ("by customer", deep_customers),
        ("by order", deep_orders),
        ("all", deep_all),
    ] {
        let Some(page) = deep.iter().map(|d| d.page).min() else {
            continue;
        };
        let of = match filter {
            "all" => String::new(),
            _ => format!(" ({} {}s)", deep.len(), filter.trim_start_matches("by ")),
        };
        kinds.push((
            format!("list {filter}, page {page} by cursor{of}"),
            deep.iter()
                .cycle()
                .take(samples)
                .map(|d| list_path(&d.query, Some(&d.cursor)))
                .collect(),
        ));
    }
    kinds
}

/// `/v1/payments` with a filter (or none) and a cursor (or none).
fn list_path(query: &str, cursor: Option<&str>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !query.is_empty() {
        parts.push(query.to_owned());
    }
    if let Some(cursor) = cursor {
        parts.push(format!("starting_after={cursor}"));
    }
    if parts.is_empty() {
        "/v1/payments".to_owned()
    } else {
        format!("/v1/payments?{}", parts.join("&"))
    }
}

struct Reader {
    client: reqwest::Client,
    url: String,
    api_key: String,
    concurrency: usize,
}

/// Latencies of one kind of read.
struct Samples {
    latencies: Vec<Duration>,
    errors: usize,
}

impl Samples {
    fn named(self, what: &str) -> Timed {
        Timed {
            what: what.to_owned(),
            requests: self.latencies.len() + self.errors,
            errors: self.errors,
            latency_us: Latency::summarise(self.latencies),
        }
    }
}

impl Reader {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.api_key)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != reqwest::StatusCode::OK {
            bail!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Each path once, `concurrency` at a time, timed from send to the
    /// last byte of a 200.
    async fn time(&self, paths: &[String]) -> Samples {
        let results: Vec<Result<Duration, String>> = futures_util::stream::iter(paths)
            .map(|path| async move {
                let started = Instant::now();
                match self.get(path).await {
                    Ok(_) => Ok(started.elapsed()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut samples = Samples {
            latencies: Vec::new(),
            errors: 0,
        };
        for result in results {
            match result {
                Ok(latency) => samples.latencies.push(latency),
                Err(e) => {
                    if samples.errors == 0 {
                        eprintln!("a read failed: {e}");
                    }
                    samples.errors += 1;
                }
            }
        }
        samples
    }

    /// For each value, the cursor to page `page` (or to the last page, if
    /// it has fewer), found by following `starting_after` from the first.
    async fn deep_cursors(
        &self,
        column: Option<&str>,
        values: &[String],
        page: u32,
    ) -> anyhow::Result<Vec<Deep>> {
        let mut deep = Vec::new();
        for value in values {
            let query = match column {
                Some(column) => format!("{column}={value}"),
                None => String::new(),
            };
            let mut cursor: Option<String> = None;
            let mut reached = 1;
            while reached < page {
                let path = list_path(&query, cursor.as_deref());
                let body = self.get(&path).await?;
                let data = body["data"].as_array().context("a list without data")?;
                let (Some(last), true) = (data.last(), body["has_more"] == true) else {
                    break;
                };
                if data.len() != PAGE {
                    bail!(
                        "a page of {} rows, not {PAGE}, with more after it",
                        data.len()
                    );
                }
                cursor = Some(last["id"].as_str().context("an id")?.to_owned());
                reached += 1;
            }
            if let (Some(cursor), true) = (cursor, reached > 1) {
                deep.push(Deep {
                    value: value.clone(),
                    query,
                    page: reached,
                    cursor,
                });
            }
        }
        // Only those that reach the deepest page any of them reaches.
        let deepest = deep.iter().map(|d| d.page).max().unwrap_or(0);
        deep.retain(|d| d.page == deepest);
        Ok(deep)
    }
}

async fn table_sizes(pool: &PgPool) -> anyhow::Result<Vec<TableSize>> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, \
           greatest(c.reltuples, 0)::int8 AS rows, pg_total_relation_size(c.oid) AS total, \
           pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations' \
         ORDER BY pg_total_relation_size(c.oid) DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (total, heap, index): (i64, i64, i64) =
                (row.get("total"), row.get("heap"), row.get("indexes"));
            TableSize {
                table: row.get("name"),
                rows: row.get("rows"),
                total_bytes: total,
                heap_bytes: heap,
                index_bytes: index,
                toast_bytes: total - heap - index,
            }
        })
        .collect())
}

async fn index_sizes(pool: &PgPool) -> anyhow::Result<Vec<IndexSize>> {
    let rows = sqlx::query(
        "SELECT t.relname::text AS table_name, i.relname::text AS index_name, \
           pg_relation_size(i.oid) AS bytes \
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND pg_relation_size(i.oid) > 1048576 \
         ORDER BY pg_relation_size(i.oid) DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| IndexSize {
            table: row.get("table_name"),
            index: row.get("index_name"),
            bytes: row.get("bytes"),
        })
        .collect())
}

/// One list request whose plan is shown.
struct Case {
    what: &'static str,
    filter: ListFilter,
    cursor: Option<Uuid>,
}

impl Case {
    /// The PREPARE and EXECUTE (which takes no bind parameters: the values
    /// go in as literals) of the gateway's statement for this case.
    fn statements(&self, merchant: Uuid) -> (String, String) {
        let statement = list_statement(&self.filter, self.cursor.is_some());
        let mut types = vec!["uuid", "int8"];
        let mut values = vec![literal(Some(merchant.to_string())), "21".to_owned()];
        if let ListFilter::Order(value) | ListFilter::Customer(value) = &self.filter {
            types.push("text");
            values.push(literal(Some(value.clone())));
        }
        if let Some(cursor) = self.cursor {
            types.push("uuid");
            values.push(literal(Some(cursor.to_string())));
        }
        (
            format!("PREPARE reads_list ({}) AS {statement}", types.join(", ")),
            format!("EXECUTE reads_list({})", values.join(", ")),
        )
    }
}

/// The list statement's plans: as the gateway's cached (prepared)
/// statement runs it after five executions, when Postgres may switch to a
/// generic plan if it judges it no worse (`plan_cache_mode = auto`), and
/// the generic plan forced, for comparison.
async fn plans(
    pool: &PgPool,
    merchant: Uuid,
    targets: &Targets,
    deep_customers: &[Deep],
    deep_orders: &[Deep],
) -> anyhow::Result<Vec<Plan>> {
    let cursor = |deep: &[Deep]| -> Option<(String, Uuid)> {
        let d = deep.first()?;
        let id = Uuid::parse_str(d.cursor.strip_prefix("pay_")?).ok()?;
        Some((d.value.clone(), id))
    };
    let mut cases = Vec::new();
    if let Some(customer) = targets.heavy_customers.first() {
        cases.push(Case {
            what: "list by customer (the heaviest), first page",
            filter: ListFilter::Customer(customer.clone()),
            cursor: None,
        });
    }
    if let Some(order) = targets.heavy_orders.first() {
        cases.push(Case {
            what: "list by order (the heaviest), first page",
            filter: ListFilter::Order(order.clone()),
            cursor: None,
        });
    }
    if let Some((customer, id)) = cursor(deep_customers) {
        cases.push(Case {
            what: "list by customer, deep page",
            filter: ListFilter::Customer(customer),
            cursor: Some(id),
        });
    }
    if let Some((order, id)) = cursor(deep_orders) {
        cases.push(Case {
            what: "list by order, deep page",
            filter: ListFilter::Order(order),
            cursor: Some(id),
        });
    }
    let mut conn = pool.acquire().await?;
    let mut plans = Vec::new();
    for case in cases {
        let (prepare, execute) = case.statements(merchant);
        sqlx::query(&prepare).execute(&mut *conn).await?;
        for _ in 0..5 {
            sqlx::query(&execute).execute(&mut *conn).await?;
        }
        for (mode, how) in [
            (
                "auto",
                "as the gateway's cached statement runs it after five executions",
            ),
            ("force_generic_plan", "the generic plan forced"),
        ] {
            sqlx::query(&format!("SET plan_cache_mode = {mode}"))
                .execute(&mut *conn)
                .await?;
            let lines: Vec<String> =
                sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS) {execute}"))
                    .fetch_all(&mut *conn)
                    .await?;
            let plan = lines.join("\n");
            // A generic plan compares with parameters, a custom one with values.
            let kind = if plan.contains("= $1") {
                "generic"
            } else {
                "custom"
            };
            plans.push(Plan {
                what: format!("{}, {how} ({kind} plan)", case.what),
                plan,
            });
        }
        for cleanup in ["DEALLOCATE reads_list", "RESET plan_cache_mode"] {
            sqlx::query(cleanup).execute(&mut *conn).await?;
        }
    }
    Ok(plans)
}

/// An SQL string literal, or NULL.
fn literal(value: Option<String>) -> String {
    match value {
        Some(value) => format!("'{}'", value.replace('\'', "''")),
        None => "NULL".to_owned(),
    }
}

async fn keys_table(pool: &PgPool) -> anyhow::Result<KeysTable> {
    // The statistics collector is behind by up to its flush interval.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .ok();
    let row = sqlx::query(
        "SELECT n_live_tup, n_dead_tup, pg_total_relation_size(relid) AS total, \
           pg_relation_size(relid) AS heap, pg_indexes_size(relid) AS indexes \
         FROM pg_stat_user_tables WHERE relname = 'idempotency_keys'",
    )
    .fetch_one(pool)
    .await?;
    Ok(KeysTable {
        live_rows: row.get("n_live_tup"),
        dead_rows: row.get("n_dead_tup"),
        total_bytes: row.get("total"),
        heap_bytes: row.get("heap"),
        index_bytes: row.get("indexes"),
    })
}

/// The gateway's purge, statement by statement as `idempotency::purge`
/// runs it, while the same reads as before go on beside it.
async fn purge(
    pool: &PgPool,
    reader: &Reader,
    kinds: &[(String, Vec<String>)],
) -> anyhow::Result<PurgeReport> {
    let expired_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys WHERE state = 'done' AND answered_at < now() - $1",
    )
    .bind(RETENTION)
    .fetch_one(pool)
    .await?;
    let before = keys_table(pool).await?;
    eprintln!("purging {expired_before} expired idempotency keys while the reads go on");
    let done = Arc::new(AtomicBool::new(false));
    let reads = async {
        let mut during: Vec<(String, Samples)> = Vec::new();
        'rounds: while !done.load(Ordering::Relaxed) {
            for (what, paths) in kinds {
                if done.load(Ordering::Relaxed) {
                    break 'rounds;
                }
                let chunk = &paths[..paths.len().min(200)];
                let samples = reader.time(chunk).await;
                match during.iter_mut().find(|(w, _)| w == what) {
                    Some((_, s)) => {
                        s.latencies.extend(samples.latencies);
                        s.errors += samples.errors;
                    }
                    None => during.push((what.clone(), samples)),
                }
            }
        }
        during
    };
    let purging = async {
        let result = async {
            let mut conn = pool.acquire().await?;
            let batch = gateway::idempotency::PURGE_BATCH;
            let (mut purged, mut statements, mut largest) = (0_u64, 0_u64, 0_u64);
            let mut latencies = Vec::new();
            let started = Instant::now();
            loop {
                let at = Instant::now();
                let deleted =
                    gateway::idempotency::purge_batch(&mut conn, RETENTION, batch, false).await?;
                latencies.push(at.elapsed());
                purged += deleted;
                statements += 1;
                largest = largest.max(deleted);
                if statements % 100 == 0 {
                    eprintln!(
                        "  purged {purged} in {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                if deleted < batch.unsigned_abs() {
                    break;
                }
            }
            Ok::<_, anyhow::Error>((purged, statements, largest, started.elapsed(), latencies))
        }
        .await;
        done.store(true, Ordering::Relaxed);
        result
    };
    let (during, purged) = tokio::join!(reads, purging);
    let (purged, statements, largest, elapsed, latencies) = purged?;
    let after = keys_table(pool).await?;
    eprintln!("VACUUM idempotency_keys");
    let vacuum_started = Instant::now();
    sqlx::query("VACUUM idempotency_keys").execute(pool).await?;
    let vacuum_ms = crate::stats::millis(vacuum_started.elapsed());
    let after_vacuum = keys_table(pool).await?;
    Ok(PurgeReport {
        retention_seconds: RETENTION.as_secs(),
        expired_before,
        purged,
        statements,
        largest_statement: largest,
        batch_limit: gateway::idempotency::PURGE_BATCH,
        elapsed_ms: crate::stats::millis(elapsed),
        keys_per_second: purged as f64 / elapsed.as_secs_f64().max(1e-9),
        statement_latency_us: Latency::summarise(latencies),
        before,
        after,
        after_vacuum,
        vacuum_ms,
        reads_during: during
            .into_iter()
            .map(|(what, samples)| samples.named(&what))
            .collect(),
    })
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn write_reads(f: &mut fmt::Formatter<'_>, reads: &[Timed]) -> fmt::Result {
    writeln!(
        f,
        "  {:<66} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"
    )?;
    for timed in reads {
        match &timed.latency_us {
            Some(l) => writeln!(
                f,
                "  {:<66} {:>9} {:>9} {:>9} {:>9} {:>6}",
                timed.what,
                format_ms(l.p50_us),
                format_ms(l.p95_us),
                format_ms(l.p99_us),
                format_ms(l.max_us),
                timed.errors
            )?,
            None => writeln!(f, "  {:<66} all {} failed", timed.what, timed.errors)?,
        }
    }
    Ok(())
}

impl fmt::Display for KeysTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} live rows, {} dead, {} in all ({} heap, {} indexes)",
            self.live_rows,
            self.dead_rows,
            mib(self.total_bytes),
            mib(self.heap_bytes),
            mib(self.index_bytes)
        )
    }
}

impl fmt::Display for ReadsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_million = |bytes: i64| {
            let millions = (self.payments as f64 / 1e6).max(1e-9);
            mib((bytes as f64 / millions) as i64)
        };
        writeln!(
            f,
            "{} payments ({} of the merchant read), Postgres: {}",
            self.payments, self.merchant_payments, self.postgres
        )?;
        writeln!(
            f,
            "reads through the gateway's HTTP API, {} at a time, {} of each kind:",
            self.concurrency, self.samples
        )?;
        write_reads(f, &self.reads)?;
        writeln!(f, "\nsizes (and per million payments):")?;
        writeln!(
            f,
            "  {:<20} {:>12} {:>12} {:>12} {:>12} {:>12} {:>14}",
            "table", "rows", "heap", "toast", "indexes", "total", "total per 1M"
        )?;
        let mut sum = 0;
        for t in &self.tables {
            sum += t.total_bytes;
            writeln!(
                f,
                "  {:<20} {:>12} {:>12} {:>12} {:>12} {:>12} {:>14}",
                t.table,
                t.rows,
                mib(t.heap_bytes),
                mib(t.toast_bytes),
                mib(t.index_bytes),
                mib(t.total_bytes),
                per_million(t.total_bytes)
            )?;
        }
        writeln!(
            f,
            "  {:<20} {:>12} {:>12} {:>12} {:>12} {:>12} {:>14}",
            "all",
            "",
            "",
            "",
            "",
            mib(sum),
            per_million(sum)
        )?;
        writeln!(f, "  indexes over 1 MiB:")?;
        for i in &self.indexes {
            writeln!(
                f,
                "    {:<48} {:>12} {:>14} per 1M",
                format!("{}.{}", i.table, i.index),
                mib(i.bytes),
                per_million(i.bytes)
            )?;
        }
        for plan in &self.plans {
            writeln!(f, "\nEXPLAIN ANALYZE, {}:\n{}", plan.what, plan.plan)?;
        }
        if let Some(p) = &self.purge {
            writeln!(
                f,
                "\npurge of keys answered over {} s ago: {} of {} expired keys in {} statements \
                 (each at most {}; the largest deleted {}), {:.1} s, {:.0} keys/s",
                p.retention_seconds,
                p.purged,
                p.expired_before,
                p.statements,
                p.batch_limit,
                p.largest_statement,
                p.elapsed_ms as f64 / 1000.0,
                p.keys_per_second
            )?;
            if let Some(l) = &p.statement_latency_us {
                writeln!(
                    f,
                    "  per statement: p50 {} ms, p99 {} ms, max {} ms",
                    format_ms(l.p50_us),
                    format_ms(l.p99_us),
                    format_ms(l.max_us)
                )?;
            }
            writeln!(f, "  idempotency_keys before:       {}", p.before)?;
            writeln!(f, "  after the purge:               {}", p.after)?;
            writeln!(
                f,
                "  after VACUUM ({:.1} s):          {}",
                p.vacuum_ms as f64 / 1000.0,
                p.after_vacuum
            )?;
            writeln!(f, "  reads while the purge ran:")?;
            write_reads(f, &p.reads_during)?;
        }
        Ok(())
    }
}
