//! `simulator load` and `simulator reads`, run as a user would, on a
//! fresh database of the test run's Postgres.

use std::process::{Command, Output};

fn simulator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simulator"))
        .args(args)
        .output()
        .expect("the simulator binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A load the gateway reads like its own: every GET and list answered,
/// the deep pages reached by cursor, the expired keys purged; a second
/// load into the same database is refused without --append; and a loaded
/// payment moves on through the database's own transition checks.
#[tokio::test]
async fn a_loaded_database_is_read_purged_and_moved_on_like_the_gateways_own() {
    let url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .expect("a database");
    let load = |extra: &[&str]| {
        let mut args = vec![
            "load",
            "--payments",
            "3000",
            "--chunk",
            "1000",
            "--merchants",
            "3",
            "--database-url",
            &url,
        ];
        args.extend(extra);
        simulator(&args)
    };
    let loaded = load(&[]);
    assert!(loaded.status.success(), "{}", text(&loaded));
    assert!(
        text(&loaded).contains("payments                  3000 rows"),
        "{}",
        text(&loaded)
    );

    let again = load(&[]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("holds 3000 payments already"),
        "{}",
        text(&again)
    );
    let appended = load(&["--append"]);
    assert!(appended.status.success(), "{}", text(&appended));

    let reads = simulator(&[
        "reads",
        "--database-url",
        &url,
        "--samples",
        "40",
        "--deep-page",
        "3",
        "--purge",
    ]);
    let report = text(&reads);
    assert!(reads.status.success(), "{report}");
    for expected in [
        "list all, page 3 by cursor",
        "purge of keys answered over 86400 s ago",
        "EXPLAIN ANALYZE, list by order",
    ] {
        assert!(report.contains(expected), "no {expected:?} in\n{report}");
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys WHERE answered_at < now() - interval '24 hours'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(expired, 0);

    // The triggers the load skipped hold for what it wrote: an authorized
    // payment captures, a captured one cannot be voided.
    let moved = sqlx::query(
        "UPDATE payments SET status = 'capturing' WHERE id = \
           (SELECT id FROM payments WHERE status = 'authorized' LIMIT 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1);
    let refused = sqlx::query(
        "UPDATE payments SET status = 'voiding' WHERE id = \
           (SELECT id FROM payments WHERE status = 'captured' LIMIT 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("cannot move from captured to voiding"),
        "{refused}"
    );
}
