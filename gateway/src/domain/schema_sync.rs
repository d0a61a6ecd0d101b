//! Keeps the schema in `migrations/` and the Rust domain from drifting: the
//! migrations' text is read at compile time and its limits are compared
//! with the code's, and no migration may name a card number or a CVV. The
//! status enum and the transition table are compared on a live, migrated
//! Postgres (`tests/api/schema.rs`), where every migration has applied.

use super::amount::MAX_AMOUNT_CENTS;
use super::card::CardBrand;
use super::ids::{MAX_CUSTOMER_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN, MAX_ORDER_ID_LEN};

const MIGRATION: &str = include_str!("../../../migrations/0001_gateway.sql");

/// Every migration, in order: a new file must be added here (a test counts them).
const MIGRATIONS: [&str; 17] = [
    MIGRATION,
    include_str!("../../../migrations/0002_recovery.sql"),
    include_str!("../../../migrations/0003_cheaper_checks.sql"),
    include_str!("../../../migrations/0004_keys_own_operations.sql"),
    include_str!("../../../migrations/0005_failed_status.sql"),
    include_str!("../../../migrations/0006_failed_transitions.sql"),
    include_str!("../../../migrations/0007_webhooks.sql"),
    include_str!("../../../migrations/0008_outbox_plans_kept.sql"),
    include_str!("../../../migrations/0009_payments_by_creation.sql"),
    include_str!("../../../migrations/0010_reconcile_cadence.sql"),
    include_str!("../../../migrations/0011_bank_key_from_id.sql"),
    include_str!("../../../migrations/0012_any_three_digit_status.sql"),
    include_str!("../../../migrations/0013_resend_outlives_the_attempt_in_flight.sql"),
    include_str!("../../../migrations/0014_keys_for_webhook_posts.sql"),
    include_str!("../../../migrations/0015_reconcile_left_overs.sql"),
    include_str!("../../../migrations/0016_reconcile_left_overs_checked.sql"),
    include_str!("../../../migrations/0017_reconcile_left_overs_index.sql"),
];

/// The SQL with `--` comments removed, string literals left intact.
fn without_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for line in sql.lines() {
        let mut in_string = false;
        let mut kept = line.len();
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\'' {
                in_string = !in_string;
            } else if !in_string && b == b'-' && bytes.get(i + 1) == Some(&b'-') {
                kept = i;
                break;
            }
        }
        out.push_str(&line[..kept]);
        out.push('\n');
    }
    out
}

/// The text from `start` (which must occur exactly once) to the next `end`.
fn section<'a>(sql: &'a str, start: &str, end: &str) -> &'a str {
    assert_eq!(sql.matches(start).count(), 1, "{start:?} must occur once");
    let from = sql.find(start).expect("counted above") + start.len();
    let len = sql[from..]
        .find(end)
        .unwrap_or_else(|| panic!("no {end:?} after {start:?}"));
    &sql[from..from + len]
}

/// Every single-quoted literal, in order.
fn quoted(sql: &str) -> Vec<&str> {
    sql.split('\'').skip(1).step_by(2).collect()
}

fn schema() -> String {
    without_comments(MIGRATION)
}

#[test]
fn limits_match_the_domain() {
    let sql = schema();
    assert!(sql.contains(&format!(
        "CHECK (amount > 0 AND amount <= {MAX_AMOUNT_CENTS})"
    )));
    assert!(sql.contains(&format!(
        "order_id ~ '^[A-Za-z0-9_-]{{1,{MAX_ORDER_ID_LEN}}}$'"
    )));
    assert!(sql.contains(&format!(
        "customer_id ~ '^[A-Za-z0-9_-]{{1,{MAX_CUSTOMER_ID_LEN}}}$'"
    )));
    assert!(sql.contains(&format!("key ~ '^[ -~]{{1,{MAX_IDEMPOTENCY_KEY_LEN}}}$'")));
    let brands = quoted(section(&sql, "CHECK (card_brand IN (", ")"));
    let rust: Vec<&str> = CardBrand::ALL.into_iter().map(CardBrand::as_str).collect();
    assert_eq!(brands, rust);
}

#[test]
fn no_column_can_hold_a_card_number_or_cvv() {
    for migration in MIGRATIONS {
        let sql = without_comments(migration).to_lowercase();
        for forbidden in ["cvv", "cvc", "card_number", "card_num", "pan text"] {
            assert!(!sql.contains(forbidden), "schema mentions {forbidden:?}");
        }
    }
}

#[test]
fn every_migration_is_checked() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let files = std::fs::read_dir(dir)
        .expect("the migrations directory")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(
        files,
        MIGRATIONS.len(),
        "add the new migration to MIGRATIONS"
    );
}

#[test]
fn comment_stripping_keeps_string_literals() {
    assert_eq!(
        without_comments("a '--x' -- gone\n-- all gone\nb"),
        "a '--x' \n\nb\n"
    );
}
