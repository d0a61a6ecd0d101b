//! `simulator load`: a year of history in a gateway database, written by
//! set-based SQL (`INSERT … SELECT … FROM generate_series`, one chunk of
//! payments per transaction), so that millions of payments take minutes.
//!
//! Every payment gets the rows the gateway itself would have written for
//! it: the payment, one history row per status it entered, one outbox
//! event per history row (with the snapshot the trigger would have taken),
//! one finished operation per bank call (with its bank key), and, for
//! payments younger than `--key-days`, the client's idempotency key per
//! operation, answered, with the answer's body. Histories are legal ones
//! only (`payment_transitions`); the triggers that would check them row by
//! row are skipped while loading (`session_replication_role = replica`, as
//! a restore does) and the same rules are checked afterwards, set-based.
//!
//! The mix (before payments too recent to have moved on): 7% declined,
//! 0.5% failed, 2% authorized and left to expire, 8% voided, 4% captured
//! then refunded, the rest captured. Merchant `k` of `M` gets a share
//! falling with `k` (the first, `ficmart`, about a third with 10). In each
//! merchant, 5% of payments belong to one of 20 heavy customers
//! (`cus_vip_0` …: thousands of payments each at millions) and 1% to one
//! of 10 subscription orders (`ord_sub_0` …), for deep cursor pages; the
//! others spread over `N/5` customers, and 7% retry the order before them.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngExt;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::cli::LoadArgs;
use crate::stack::{Durability, MERCHANT};

/// The tables a load writes, biggest last.
pub const TABLES: [&str; 6] = [
    "merchants",
    "payments",
    "payment_events",
    "events",
    "operations",
    "idempotency_keys",
];

pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let (database_url, kept) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let postgres =
                tokio::task::spawn_blocking(|| throwaway_pg::Postgres::kept(Durability::Durable))
                    .await?
                    .context("starting a PostgreSQL cluster")?;
            eprintln!("{}", postgres.describe());
            let url = postgres
                .fresh_database("gateway")
                .await
                .context("creating the gateway's database")?;
            (url, Some(postgres))
        }
    };
    let report = load(&args, &database_url).await?;
    println!("{report}");
    println!("database {database_url}");
    if let Some(postgres) = kept {
        let data = postgres.data_dir().unwrap_or_default();
        println!(
            "the cluster is kept running (durable: fsync and synchronous commit on), data in {}",
            data.display()
        );
        println!(
            "  measure it:  simulator reads --database-url '{database_url}'\n  remove it:   {}",
            postgres.stop_command().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What the loader draws its mix and times from.
struct Plan {
    payments: i64,
    chunk: i64,
    seed: i64,
    days: f64,
    key_days: f64,
}

async fn load(args: &LoadArgs, database_url: &str) -> anyhow::Result<String> {
    let plan = Plan {
        payments: i64::from(args.payments),
        chunk: i64::from(args.chunk),
        seed: i64::try_from(args.seed)?,
        days: f64::from(args.days),
        key_days: f64::from(args.key_days.unwrap_or(args.days).min(args.days)),
    };
    let started = Instant::now();
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("connecting to the gateway's database")?;
    gateway::store::MIGRATOR
        .run(&mut conn)
        .await
        .context("applying the gateway's migrations")?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&mut conn)
        .await?;
    if existing > 0 && !args.append {
        bail!(
            "the database holds {existing} payments already: the loader fills an empty one \
             (--append adds to it)"
        );
    }
    let merchants = merchants(&mut conn, args.merchants).await?;
    let mut out = String::new();
    writeln!(out, "merchants (an API key of each):")?;
    for (name, _, key) in &merchants {
        writeln!(out, "  {name:<14} {key}")?;
    }
    let merchant_ids: Vec<Uuid> = merchants.iter().map(|(_, id, _)| *id).collect();

    sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .context(
            "the loader skips the row-by-row triggers (and checks their rules afterwards), \
             which needs a superuser (SET session_replication_role)",
        )?;
    // This session's memory, not the server's: a chunk's plan tables and
    // sorts stay in memory, and the indexes are built in one pass.
    for setting in [
        "SET temp_buffers = '1GB'",
        "SET work_mem = '256MB'",
        "SET maintenance_work_mem = '1GB'",
    ] {
        execute(&mut conn, setting).await?;
    }
    let now: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT date_trunc('second', now())")
            .fetch_one(&mut conn)
            .await?;
    let history_base: i64 =
        sqlx::query_scalar("SELECT coalesce(max(id), 0) + 1 FROM payment_events")
            .fetch_one(&mut conn)
            .await?;
    let span = plan.days * 86_400.0;
    // The newest payment is a minute old: every bank call in the load has
    // been answered.
    let first = now - chrono::Duration::seconds(span as i64 + 60);
    let key_since = now - chrono::Duration::seconds((plan.key_days * 86_400.0) as i64);

    let statements = chunk_statements();
    let chunk_params = ChunkParams {
        payments: plan.payments,
        seed: plan.seed,
        first,
        span,
        merchants: merchant_ids,
        now,
        key_since,
        history_base,
        salt: rand::rng().random::<i64>() >> 8,
    };
    let load_started = Instant::now();
    let mut spent = vec![Duration::ZERO; statements.1.len() + 1];
    let mut rebuilt = Vec::new();
    // Into an empty database, in one transaction: the indexes that no
    // foreign key needs are dropped first and built once at the end
    // (sorted, much faster than row by row), and a failure leaves the
    // database as it was. With --append, one transaction per chunk, the
    // indexes kept.
    let whole = !args.append;
    let dropped = if whole {
        execute(&mut conn, "BEGIN").await?;
        drop_indexes(&mut conn).await?
    } else {
        Vec::new()
    };
    let mut lo = 0;
    while lo < plan.payments {
        let hi = (lo + plan.chunk).min(plan.payments);
        if !whole {
            execute(&mut conn, "BEGIN").await?;
        }
        write_chunk(&mut conn, &statements, &chunk_params, lo, hi, &mut spent).await?;
        if !whole {
            execute(&mut conn, "COMMIT").await?;
        }
        lo = hi;
        let elapsed = load_started.elapsed().as_secs_f64();
        eprintln!(
            "loaded {lo}/{total} payments ({pct:.1}%), {rate:.0} payments/s, {elapsed:.0} s",
            total = plan.payments,
            pct = 100.0 * lo as f64 / plan.payments as f64,
            rate = lo as f64 / elapsed.max(1e-9),
        );
    }
    if whole {
        for index in &dropped {
            eprintln!("building {}", index.name);
            let at = Instant::now();
            execute(&mut conn, &index.create).await?;
            rebuilt.push(format!("{} {}", index.name, secs(at.elapsed())));
        }
        eprintln!("committing");
        execute(&mut conn, "COMMIT").await?;
    }
    let loaded = load_started.elapsed();
    let steps = [
        "plan",
        "history plan",
        "payments",
        "payment_events",
        "events",
        "operations plan",
        "operations",
        "idempotency_keys",
    ];
    let spent: Vec<String> = steps
        .iter()
        .zip(&spent)
        .map(|(step, d)| format!("{step} {}", secs(*d)))
        .collect();
    sqlx::query(
        "SELECT setval('payment_events_id_seq', greatest((SELECT max(id) FROM payment_events), 1))",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query("RESET session_replication_role")
        .execute(&mut conn)
        .await?;

    eprintln!("checking the loaded rows against the schema's rules");
    let checked_at = Instant::now();
    check(&mut conn).await?;
    let checked = checked_at.elapsed();

    eprintln!("VACUUM (ANALYZE) of the loaded tables");
    let vacuum_started = Instant::now();
    for table in TABLES {
        sqlx::query(&format!("VACUUM (ANALYZE) {table}"))
            .execute(&mut conn)
            .await?;
    }
    let vacuumed = vacuum_started.elapsed();

    writeln!(
        out,
        "loaded {} payments over {} days in {} (the rows {}, the checks {}, VACUUM ANALYZE {})",
        plan.payments,
        plan.days,
        secs(started.elapsed()),
        secs(loaded),
        secs(checked),
        secs(vacuumed),
    )?;
    writeln!(out, "  time per step: {}", spent.join(", "))?;
    if !rebuilt.is_empty() {
        writeln!(
            out,
            "  indexes built after the rows: {}",
            rebuilt.join(", ")
        )?;
    }
    for table in TABLES {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await?;
        writeln!(out, "  {table:<17} {rows:>12} rows")?;
    }
    let (statuses,): (String,) = sqlx::query_as(
        "SELECT string_agg(status || ' ' || n, ', ' ORDER BY n DESC) FROM \
         (SELECT status::text, count(*) AS n FROM payments GROUP BY status) s",
    )
    .fetch_one(&mut conn)
    .await?;
    writeln!(out, "  statuses: {statuses}")?;
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys \
         WHERE state = 'done' AND answered_at < now() - interval '24 hours'",
    )
    .fetch_one(&mut conn)
    .await?;
    writeln!(
        out,
        "  idempotency keys past the default 24 h retention (purgeable): {expired}"
    )?;
    conn.close().await?;
    Ok(out)
}

/// The merchants, created with an API key each: `ficmart` first, then
/// `merchant-2` …
/// One statement, its rows (if any) ignored. A failure drops the
/// connection, and with it any transaction open on it.
async fn execute(conn: &mut PgConnection, statement: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(statement)
        .execute(conn)
        .await
        .with_context(|| format!("running {statement}"))?;
    Ok(())
}

/// What the chunks share.
struct ChunkParams {
    payments: i64,
    seed: i64,
    first: chrono::DateTime<chrono::Utc>,
    span: f64,
    merchants: Vec<Uuid>,
    now: chrono::DateTime<chrono::Utc>,
    key_since: chrono::DateTime<chrono::Utc>,
    history_base: i64,
    /// Random per load: the ids' bits (see [`random_bytes`]).
    salt: i64,
}

/// Writes payments `lo .. hi` and everything that goes with them.
async fn write_chunk(
    conn: &mut PgConnection,
    (plan_chunk, write_chunk): &(String, Vec<String>),
    params: &ChunkParams,
    lo: i64,
    hi: i64,
    spent: &mut [Duration],
) -> anyhow::Result<()> {
    sqlx::query("DROP TABLE IF EXISTS load_chunk, load_steps, load_operations")
        .execute(&mut *conn)
        .await?;
    let planned_at = Instant::now();
    sqlx::query(plan_chunk)
        .bind(lo)
        .bind(hi)
        .bind(params.payments)
        .bind(params.seed)
        .bind(params.first)
        .bind(params.span)
        .bind(&params.merchants)
        .bind(params.now)
        .bind(params.key_since)
        .bind(params.history_base)
        .bind(params.salt)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("planning payments {lo}..{hi}"))?;
    execute(conn, "ANALYZE load_chunk").await?;
    spent[0] += planned_at.elapsed();
    for (i, statement) in write_chunk.iter().enumerate() {
        let at = Instant::now();
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("loading payments {lo}..{hi}"))?;
        if let Some(table) = statement.strip_prefix("CREATE TEMP TABLE ") {
            let table = table.split_whitespace().next().unwrap_or_default();
            execute(conn, &format!("ANALYZE {table}")).await?;
        }
        spent[i + 1] += at.elapsed();
    }
    Ok(())
}

/// An index dropped before the load, and how to make it again.
struct Dropped {
    name: String,
    create: String,
}

#[derive(sqlx::FromRow)]
struct IndexRow {
    table: String,
    index: String,
    index_def: String,
    constraint: Option<String>,
    constraint_def: Option<String>,
}

/// Drops the indexes of the loaded tables that no foreign key depends on
/// (plain indexes, and unique or primary-key constraints nothing
/// references), saying how to make each again exactly as it was.
async fn drop_indexes(conn: &mut PgConnection) -> anyhow::Result<Vec<Dropped>> {
    let rows: Vec<IndexRow> = sqlx::query_as(
        "SELECT t.relname::text AS table, i.relname::text AS index, \
           pg_get_indexdef(x.indexrelid) AS index_def, con.conname::text AS constraint, \
           pg_get_constraintdef(con.oid) AS constraint_def \
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
         JOIN pg_class t ON t.oid = x.indrelid \
         LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.contype IN ('p', 'u') \
         WHERE t.relnamespace = 'public'::regnamespace AND t.relname = ANY($1) \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint f \
             WHERE f.contype = 'f' AND f.conindid = x.indexrelid) \
         ORDER BY t.relname, i.relname",
    )
    .bind(&TABLES[1..])
    .fetch_all(&mut *conn)
    .await?;
    let mut dropped = Vec::new();
    for IndexRow {
        table,
        index,
        index_def,
        constraint,
        constraint_def,
    } in rows
    {
        let (drop, create) = match (constraint, constraint_def) {
            (Some(name), Some(def)) => (
                format!("ALTER TABLE {table} DROP CONSTRAINT {name}"),
                format!("ALTER TABLE {table} ADD CONSTRAINT {name} {def}"),
            ),
            _ => (format!("DROP INDEX {index}"), index_def),
        };
        sqlx::query(&drop).execute(&mut *conn).await?;
        dropped.push(Dropped {
            name: format!("{table}.{index}"),
            create,
        });
    }
    Ok(dropped)
}

async fn merchants(
    conn: &mut PgConnection,
    count: u32,
) -> anyhow::Result<Vec<(String, Uuid, String)>> {
    let mut made = Vec::new();
    for i in 0..count {
        let name = if i == 0 {
            MERCHANT.to_owned()
        } else {
            format!("merchant-{}", i + 1)
        };
        let mut tx = conn.begin().await?;
        let (id, key) = gateway::store::merchants::create_api_key(&mut tx, &name).await?;
        tx.commit().await?;
        made.push((name, id.as_uuid(), key));
    }
    Ok(made)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Sixteen pseudo-random bytes for row `n` (an SQL expression), the
/// `k`th use, under the load's `salt`: hashes rather than
/// `gen_random_uuid()`, which costs a few microseconds a call here and was
/// most of the time spent planning a chunk. The salt is random per load,
/// so ids differ from one load to the next.
fn random_bytes(n: &str, salt: &str, k: u32) -> String {
    format!(
        "(int8send(hashint8extended({n}, {salt} + {a})) || int8send(hashint8extended({n}, {salt} + {b})))",
        a = 2 * k,
        b = 2 * k + 1
    )
}

/// A UUID version 7 for the time `at`, the rest of its bits from
/// [`random_bytes`]: as `gateway_uuid_v7()` and `Uuid::now_v7()` make
/// them, at a time of our choosing.
fn uuid7(at: &str, n: &str, salt: &str, k: u32) -> String {
    format!(
        "encode(set_bit(set_bit(set_bit(set_bit(set_bit(set_bit(overlay({bytes} \
           placing substring(int8send(floor(extract(epoch FROM {at}) * 1000)::bigint) FROM 3) \
           FROM 1 FOR 6), 55, 0), 54, 1), 53, 1), 52, 1), 71, 1), 70, 0), 'hex')::uuid",
        bytes = random_bytes(n, salt, k)
    )
}

/// A random UUID (version 4), as the bank's ids and the clients' keys are.
fn uuid4(n: &str, salt: &str, k: u32) -> String {
    format!(
        "encode(set_bit(set_bit(set_bit(set_bit(set_bit(set_bit({bytes}, \
           55, 0), 54, 1), 53, 0), 52, 0), 71, 1), 70, 0), 'hex')::uuid",
        bytes = random_bytes(n, salt, k)
    )
}

/// A uniform draw in [0, 1) for payment `n`, the `k`th of its draws: the
/// same for the same seed, so the shape of a load is reproducible.
fn draw(k: u32) -> String {
    format!("((hashint8extended(n, $4::bigint * 64 + {k}) & 2147483647)::float8 / 2147483648.0)")
}

/// The statements that load payments `$1 .. $2` of `$3`: the first makes
/// the chunk's plan (`load_chunk`), with parameters `$4` seed, `$5` the
/// first payment's time, `$6` the span in seconds, `$7` the merchants,
/// `$8` now, `$9` the oldest time a key is kept for, `$10` the history
/// ids' base and `$11` the ids' salt; the others, without parameters, write its rows from it.
fn chunk_statements() -> (String, Vec<String>) {
    let chunk = format!(
        "CREATE TEMP TABLE load_chunk AS \
         WITH drawn AS ( \
           SELECT n, {r_time} AS r_time, {r_merchant} AS r_merchant, {r_customer} AS r_customer, \
             {r_order} AS r_order, {r_status} AS r_status, {r_amount} AS r_amount, \
             {r_card} AS r_card, {r_lat1} AS r_lat1, {r_delay} AS r_delay, {r_lat2} AS r_lat2, \
             {r_refund} AS r_refund, {r_lat3} AS r_lat3, {r_pick} AS r_pick, \
             hashint8extended(n, $4::bigint * 64 + 20) & 9223372036854775807 AS h \
           FROM generate_series($1::bigint, $2::bigint - 1) AS n), \
         timed AS MATERIALIZED ( \
           SELECT d.*, $5::timestamptz + make_interval(secs => (n + r_time) * $6::float8 / $3::float8) AS t0, \
             CASE WHEN r_status < 0.07 THEN 'declined' WHEN r_status < 0.075 THEN 'failed' \
               WHEN r_status < 0.095 THEN 'expired' WHEN r_status < 0.175 THEN 'voided' \
               WHEN r_status < 0.215 THEN 'refunded' ELSE 'captured' END AS planned \
           FROM drawn d), \
         stepped AS ( \
           SELECT t.*, \
             t0 + make_interval(secs => CASE WHEN planned = 'failed' THEN 600 ELSE 0 END + 0.2 + 1.8 * r_lat1) AS t1, \
             CASE WHEN planned = 'expired' THEN interval '168 hours' + make_interval(secs => 60 * r_delay) \
               ELSE make_interval(secs => 259200 * r_delay * r_delay * r_delay) END AS wait2 \
           FROM timed t), \
         settled AS ( \
           SELECT s.*, t1 + wait2 AS t2, t1 + wait2 + make_interval(secs => 0.15 + 1.35 * r_lat2) AS t3 \
           FROM stepped s), \
         refunded AS MATERIALIZED ( \
           SELECT s.*, t3 + make_interval(secs => 2592000 * r_refund) AS t4, \
             t3 + make_interval(secs => 2592000 * r_refund + 0.15 + 1.35 * r_lat3) AS t5, \
             t1 + interval '168 hours' AS expires_at \
           FROM settled s), \
         final AS MATERIALIZED ( \
           SELECT r.*, CASE \
               WHEN planned = 'expired' AND expires_at > $8 THEN 'authorized' \
               WHEN planned IN ('captured', 'voided', 'refunded') AND t3 > $8 THEN 'authorized' \
               WHEN planned = 'refunded' AND t5 > $8 THEN 'captured' \
               ELSE planned END AS status \
           FROM refunded r) \
         SELECT n, {payment_id} AS id, \
           ($7::uuid[])[1 + floor(cardinality($7::uuid[]) * r_merchant * r_merchant)::int] AS merchant_id, \
           CASE WHEN r_customer < 0.05 THEN 'cus_vip_' || floor(r_customer * 400)::int \
             ELSE 'cus_' || (h % ($3::bigint / 5 + 1)) END AS customer_id, \
           CASE WHEN r_order < 0.01 THEN 'ord_sub_' || floor(r_order * 1000)::int \
             WHEN r_order < 0.08 THEN 'ord_' || greatest(n - 1, 0) \
             ELSE 'ord_' || n END AS order_id, \
           (199 + floor(r_amount * r_amount * 49800))::bigint AS amount, \
           CASE WHEN r_card < 0.55 THEN 'visa' WHEN r_card < 0.85 THEN 'mastercard' \
             WHEN r_card < 0.95 THEN 'amex' ELSE 'discover' END AS brand, \
           lpad((h % 10000)::text, 4, '0') AS last4, \
           (1 + h / 10000 % 12)::smallint AS exp_month, \
           (2027 + h / 120000 % 5)::smallint AS exp_year, \
           status, t0, t1, CASE WHEN status = 'expired' THEN least(t2, $8) ELSE t2 END AS t2, \
           t3, t4, t5, \
           CASE WHEN status IN ('declined', 'failed', 'authorized') THEN 2 \
             WHEN status = 'expired' THEN 3 \
             WHEN status IN ('captured', 'voided') THEN 4 ELSE 6 END AS steps, \
           CASE WHEN status IN ('declined', 'failed') THEN status ELSE 'authorized' END AS s1, \
           CASE WHEN status = 'expired' THEN 'expired' WHEN status = 'voided' THEN 'voiding' \
             ELSE 'capturing' END AS s2, \
           CASE WHEN status = 'voided' THEN 'voided' ELSE 'captured' END AS s3, \
           CASE WHEN status NOT IN ('declined', 'failed') THEN 'auth_' || {auth_id} END AS auth_id, \
           CASE WHEN status IN ('captured', 'refunded') THEN 'cap_' || {cap_id} END AS cap_id, \
           CASE WHEN status = 'voided' THEN 'void_' || {void_id} END AS void_id, \
           CASE WHEN status = 'refunded' THEN 'ref_' || {ref_id} END AS ref_id, \
           CASE WHEN status NOT IN ('declined', 'failed') THEN expires_at END AS expires_at, \
           CASE WHEN status = 'declined' THEN \
               CASE WHEN r_pick < 0.8 THEN 'insufficient_funds' ELSE 'card_expired' END \
             WHEN status = 'failed' THEN 'authorization_abandoned' END AS failure_code, \
           {op_auth} AS op_auth, \
           CASE WHEN status IN ('captured', 'voided', 'refunded') THEN {op_2} END AS op_2, \
           CASE WHEN status = 'refunded' THEN {op_3} END AS op_3, \
           CASE WHEN status IN ('declined', 'failed', 'authorized') THEN t1 \
             WHEN status = 'expired' THEN t2 WHEN status IN ('captured', 'voided') THEN t3 \
             ELSE t5 END AS updated_at, \
           $9::timestamptz AS key_since, $10::bigint AS history_base, $11::bigint AS salt \
         FROM final",
        r_time = draw(1),
        r_merchant = draw(2),
        r_customer = draw(3),
        r_order = draw(4),
        r_status = draw(5),
        r_amount = draw(6),
        r_card = draw(7),
        r_lat1 = draw(8),
        r_delay = draw(9),
        r_lat2 = draw(10),
        r_refund = draw(11),
        r_lat3 = draw(12),
        r_pick = draw(13),
        payment_id = uuid7("t0", "n", "$11::bigint", 0),
        op_auth = uuid7("t0", "n", "$11::bigint", 1),
        op_2 = uuid7("t2", "n", "$11::bigint", 2),
        op_3 = uuid7("t4", "n", "$11::bigint", 3),
        auth_id = uuid4("n", "$11::bigint", 4),
        cap_id = uuid4("n", "$11::bigint", 5),
        void_id = uuid4("n", "$11::bigint", 6),
        ref_id = uuid4("n", "$11::bigint", 7),
    );
    let steps = "CREATE TEMP TABLE load_steps AS \
         SELECT c.id AS payment_id, c.merchant_id, c.history_base + c.n * 6 + s.k AS history_id, s.k, c.salt, \
           s.from_status, s.to_status, s.at, \
           CASE WHEN s.k >= 1 THEN c.auth_id END AS auth_id, \
           CASE WHEN s.k >= 3 THEN c.cap_id END AS cap_id, \
           CASE WHEN s.k >= 3 THEN c.void_id END AS void_id, \
           CASE WHEN s.k >= 5 THEN c.ref_id END AS ref_id, \
           CASE WHEN s.k >= 1 THEN c.expires_at END AS expires_at, \
           CASE WHEN s.k >= 1 THEN c.failure_code END AS failure_code \
         FROM load_chunk c CROSS JOIN LATERAL (VALUES \
           (0, NULL, 'pending', c.t0), (1, 'pending', c.s1, c.t1), (2, 'authorized', c.s2, c.t2), \
           (3, c.s2, c.s3, c.t3), (4, 'captured', 'refunding', c.t4), (5, 'refunding', 'refunded', c.t5)) \
           AS s(k, from_status, to_status, at) \
         WHERE s.k < c.steps"
        .to_owned();
    let payments = "INSERT INTO payments (id, merchant_id, order_id, customer_id, amount, currency, status, \
           card_brand, card_last4, card_exp_month, card_exp_year, bank_authorization_id, bank_capture_id, \
           bank_void_id, bank_refund_id, authorization_expires_at, failure_code, created_at, updated_at) \
         SELECT id, merchant_id, order_id, customer_id, amount, 'USD', status::payment_status, brand, last4, \
           exp_month, exp_year, auth_id, cap_id, void_id, ref_id, expires_at, failure_code, t0, updated_at \
         FROM load_chunk ORDER BY id"
        .to_owned();
    let history = "INSERT INTO payment_events (id, payment_id, from_status, to_status, at) \
         SELECT history_id, payment_id, from_status::payment_status, to_status::payment_status, at \
         FROM load_steps ORDER BY history_id"
        .to_owned();
    let events = format!(
        "INSERT INTO events (id, merchant_id, payment_id, sequence, type, history_id, status, \
           bank_authorization_id, bank_capture_id, bank_void_id, bank_refund_id, \
           authorization_expires_at, failure_code, payment_updated_at, created_at) \
         SELECT {event_id}, s.merchant_id, s.payment_id, s.k + 1, coalesce(t.event_type, 'payment.created'), \
           s.history_id, s.to_status::payment_status, s.auth_id, s.cap_id, s.void_id, s.ref_id, \
           s.expires_at, s.failure_code, s.at, s.at \
         FROM load_steps s LEFT JOIN payment_transitions t \
           ON t.from_status::text = s.from_status AND t.to_status::text = s.to_status \
         ORDER BY s.at",
        event_id = uuid7("s.at", "s.history_id", "s.salt", 8),
    );
    let operations = "CREATE TEMP TABLE load_operations AS \
         SELECT c.id AS payment_id, o.* FROM load_chunk c CROSS JOIN LATERAL (VALUES \
           (1, c.op_auth, 'authorize', c.t0, c.t1, \
             CASE WHEN c.status IN ('declined', 'failed') THEN 'failed' ELSE 'succeeded' END, \
             CASE WHEN c.status = 'declined' THEN c.failure_code \
               WHEN c.status = 'failed' THEN 'the bank did not answer' END, \
             CASE WHEN c.status = 'failed' THEN 8 ELSE 1 END, 2, \
             CASE WHEN c.status = 'declined' THEN 402 WHEN c.status = 'failed' THEN 409 ELSE 201 END), \
           (2, c.op_2, CASE WHEN c.status = 'voided' THEN 'void' ELSE 'capture' END, c.t2, c.t3, \
             'succeeded', NULL, 1, 4, 200), \
           (3, c.op_3, 'refund', c.t4, c.t5, 'succeeded', NULL, 1, 6, 200)) \
           AS o(k, id, kind, created_at, finished_at, status, last_error, attempts, upto, response_status) \
         WHERE o.id IS NOT NULL"
        .to_owned();
    let insert_operations =
        "INSERT INTO operations (id, payment_id, kind, bank_idempotency_key, status, \
           attempts, lease_until, next_attempt_at, last_error, created_at, finished_at) \
         SELECT id, payment_id, kind, 'gw_' || kind || '_' || id, status, attempts, finished_at, \
           created_at, last_error, created_at, finished_at \
         FROM load_operations ORDER BY id"
            .to_owned();
    // The answer as the gateway stored it: the payment as the operation
    // left it (its history up to then), or the error of a refusal.
    let keys = format!(
        "INSERT INTO idempotency_keys (merchant_id, key, request_hash, state, lease_until, \
           response_status, response_body, payment_id, created_at, operation_id, answered_at) \
         SELECT c.merchant_id, {key}::text, {hash_a} || {hash_b}, 'done', NULL, \
           o.response_status, convert_to(CASE \
             WHEN o.response_status = 402 THEN json_build_object('error', json_build_object( \
               'type', 'card_error', 'code', c.failure_code, 'message', 'the bank declined the payment', \
               'payment_id', 'pay_' || c.id))::text \
             WHEN o.response_status = 409 THEN json_build_object('error', json_build_object( \
               'type', 'api_error', 'code', 'authorization_abandoned', 'message', \
               'the bank''s answer to this authorization never came and the gateway gave up on it; \
no money is held. Authorize again with a new Idempotency-Key and the card', \
               'payment_id', 'pay_' || c.id))::text \
             ELSE json_build_object('id', 'pay_' || c.id, 'order_id', c.order_id, \
               'customer_id', c.customer_id, 'amount', c.amount, 'currency', 'USD', \
               'status', (ARRAY['pending', c.s1, c.s2, c.s3, 'refunding', 'refunded'])[o.upto], \
               'card', json_build_object('brand', c.brand, 'last4', c.last4, \
                 'expiry_month', c.exp_month, 'expiry_year', c.exp_year), \
               'bank', json_build_object('authorization_id', c.auth_id, \
                 'capture_id', CASE WHEN o.upto >= 4 THEN c.cap_id END, \
                 'void_id', CASE WHEN o.upto >= 4 THEN c.void_id END, \
                 'refund_id', CASE WHEN o.upto >= 6 THEN c.ref_id END), \
               'authorization_expires_at', c.expires_at, 'failure', NULL, \
               'history', array_to_json((ARRAY[ \
                 json_build_object('status', 'pending', 'at', c.t0), \
                 json_build_object('status', c.s1, 'at', c.t1), \
                 json_build_object('status', c.s2, 'at', c.t2), \
                 json_build_object('status', c.s3, 'at', c.t3), \
                 json_build_object('status', 'refunding', 'at', c.t4), \
                 json_build_object('status', 'refunded', 'at', c.t5)])[1:o.upto]), \
               'created_at', c.t0, 'updated_at', (ARRAY[c.t0, c.t1, c.t2, c.t3, c.t4, c.t5])[o.upto])::text \
             END, 'UTF8'), \
           c.id, o.created_at, o.id, o.finished_at \
         FROM load_operations o JOIN load_chunk c ON c.id = o.payment_id \
         WHERE o.created_at >= c.key_since",
        key = uuid4("(c.n * 4 + o.k)", "c.salt", 9),
        hash_a = random_bytes("(c.n * 4 + o.k)", "c.salt", 10),
        hash_b = random_bytes("(c.n * 4 + o.k)", "c.salt", 11),
    );

    (
        chunk,
        vec![
            steps,
            payments,
            history,
            events,
            operations,
            insert_operations,
            keys,
        ],
    )
}

/// The schema's row-by-row rules, checked over the whole load: each
/// history row is a legal transition, starts at `pending` once, and ends
/// where its payment is; each event matches its history row; bank ids
/// where a status needs them (the CHECK constraints held as rows went in).
async fn check(conn: &mut PgConnection) -> anyhow::Result<()> {
    let checks: [(&str, &str); 4] = [
        (
            "history rows that are not a legal transition",
            "SELECT count(*) FROM payment_events e WHERE e.from_status IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM payment_transitions t WHERE t.from_status = e.from_status \
              AND t.to_status = e.to_status)",
        ),
        (
            "history rows out of order, or payments whose history does not start with their \
             creation or end at their status",
            "SELECT count(*) FROM (SELECT payment_id, from_status, to_status, \
               lag(to_status) OVER w AS before, lead(id) OVER w IS NULL AS last \
               FROM payment_events WINDOW w AS (PARTITION BY payment_id ORDER BY id)) h \
             LEFT JOIN payments p ON h.last AND p.id = h.payment_id \
             WHERE (before IS NULL) <> (from_status IS NULL) OR from_status <> before \
               OR (last AND (p.id IS NULL OR p.status <> h.to_status))",
        ),
        (
            "payments without history, events not matching their history row",
            "SELECT (SELECT count(*) FROM payments) \
               - (SELECT count(*) FROM payment_events WHERE from_status IS NULL) \
             + (SELECT count(*) FROM events v LEFT JOIN payment_events e ON e.id = v.history_id \
               WHERE e.id IS NULL OR e.payment_id <> v.payment_id OR e.to_status <> v.status)",
        ),
        (
            "operations or keys that name no payment or operation",
            "SELECT (SELECT count(*) FROM operations o WHERE NOT EXISTS \
               (SELECT 1 FROM payments p WHERE p.id = o.payment_id)) \
             + (SELECT count(*) FROM idempotency_keys k WHERE NOT EXISTS \
               (SELECT 1 FROM operations o WHERE o.id = k.operation_id))",
        ),
    ];
    for (what, query) in checks {
        let bad: i64 = sqlx::query_scalar(query).fetch_one(&mut *conn).await?;
        if bad != 0 {
            bail!("the load is wrong: {bad} {what}");
        }
    }
    Ok(())
}
