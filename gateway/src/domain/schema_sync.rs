//! Keeps the schema in `migrations/` and the Rust domain from drifting: the
//! migration's text is read at compile time and its enum, its transition
//! table and its limits are compared with the code's. A live-Postgres test
//! (that the triggers really refuse) belongs with the storage layer.

use super::amount::MAX_AMOUNT_CENTS;
use super::card::CardBrand;
use super::ids::{MAX_CUSTOMER_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN, MAX_ORDER_ID_LEN};
use super::status::{PaymentStatus, allowed_transitions};

const MIGRATION: &str = include_str!("../../../migrations/0001_gateway.sql");

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
fn enum_labels_are_the_rust_statuses_in_order() {
    let sql = schema();
    let labels = quoted(section(&sql, "CREATE TYPE payment_status AS ENUM (", ");"));
    let rust: Vec<&str> = PaymentStatus::ALL
        .into_iter()
        .map(PaymentStatus::as_str)
        .collect();
    assert_eq!(labels, rust);
}

#[test]
fn seeded_transitions_are_the_rust_table() {
    let sql = schema();
    let values = quoted(section(
        &sql,
        "INSERT INTO payment_transitions (from_status, to_status) VALUES",
        ";",
    ));
    assert_eq!(values.len() % 2, 0, "pairs: {values:?}");
    let seeded: Vec<(PaymentStatus, PaymentStatus)> = values
        .chunks(2)
        .map(|pair| {
            let parse =
                |s: &str| PaymentStatus::parse(s).unwrap_or_else(|| panic!("unknown status {s:?}"));
            (parse(pair[0]), parse(pair[1]))
        })
        .collect();
    assert_eq!(seeded, allowed_transitions());
    assert_eq!(
        sql.matches("INSERT INTO payment_transitions").count(),
        1,
        "the pairs must all be seeded in one place"
    );
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
    let sql = schema().to_lowercase();
    for forbidden in ["cvv", "cvc", "card_number", "card_num", "pan text"] {
        assert!(!sql.contains(forbidden), "schema mentions {forbidden:?}");
    }
}

#[test]
fn comment_stripping_keeps_string_literals() {
    assert_eq!(
        without_comments("a '--x' -- gone\n-- all gone\nb"),
        "a '--x' \n\nb\n"
    );
}
