//! The database refuses what the code refuses, checked on a live Postgres.

use gateway::domain::{EventType, PaymentEvent, PaymentStatus, allowed_transitions, transition};

use crate::helpers::*;

#[tokio::test]
async fn the_transition_table_in_the_database_is_the_codes() {
    let app = spawn_app().await;
    let mut stored: Vec<(String, String)> =
        sqlx::query_as("SELECT from_status::text, to_status::text FROM payment_transitions")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    stored.sort();
    let mut expected: Vec<(String, String)> = allowed_transitions()
        .into_iter()
        .map(|(from, to)| (from.as_str().to_owned(), to.as_str().to_owned()))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    let labels: Vec<String> =
        sqlx::query_scalar("SELECT unnest(enum_range(NULL::payment_status))::text")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let statuses: Vec<String> = PaymentStatus::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(labels, statuses);
}

#[tokio::test]
async fn each_transition_publishes_the_event_type_the_code_names() {
    let app = spawn_app().await;
    let mut stored: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT from_status::text, to_status::text, event_type FROM payment_transitions",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    stored.sort();
    let mut expected = Vec::new();
    for (from, to) in allowed_transitions() {
        let event = PaymentEvent::ALL
            .into_iter()
            .find(|e| transition(from, *e) == Ok(to))
            .expect("every allowed pair has its event");
        let name = EventType::of(event).as_str().to_owned();
        expected.push((from.as_str().to_owned(), to.as_str().to_owned(), name));
    }
    expected.sort();
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn the_database_refuses_an_illegal_transition_or_status() {
    let app = spawn_app().await;
    let payment = app.authorized(HAPPY_CARD, 100).await;
    let id = uuid_of(payment["id"].as_str().unwrap());
    for (status, why) in [
        ("refunded", "authorized → refunded"),
        ("pending", "back to pending"),
        ("bogus", "not a status"),
    ] {
        let result = sqlx::query("UPDATE payments SET status = $2::payment_status WHERE id = $1")
            .bind(id)
            .bind(status)
            .execute(&app.pool)
            .await;
        assert!(result.is_err(), "{why} was accepted");
    }
    let history = sqlx::query("UPDATE payment_events SET to_status = 'refunded'")
        .execute(&app.pool)
        .await;
    assert!(history.is_err(), "history is append-only");
    let inserted = sqlx::query(
        "INSERT INTO payment_events (payment_id, from_status, to_status) VALUES ($1, 'authorized', 'refunded')",
    )
    .bind(id)
    .execute(&app.pool)
    .await;
    assert!(inserted.is_err(), "history refuses an illegal step");
    let status: String = sqlx::query_scalar("SELECT status::text FROM payments WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "authorized");
}

/// The outbox publishes each history row with the payment as its statement
/// left it; a statement that moved one payment twice would give its first
/// row the second row's snapshot, and is refused whole.
#[tokio::test]
async fn a_statement_that_moves_a_payment_twice_publishes_nothing() {
    let app = spawn_app().await;
    let payment = app.authorized(HAPPY_CARD, 100).await;
    let id = uuid_of(payment["id"].as_str().unwrap());
    let events = app.count("events").await;
    let twice = sqlx::query(
        "WITH moved AS (UPDATE payments SET status = 'capturing' WHERE id = $1 RETURNING id) \
         INSERT INTO payment_events (payment_id, from_status, to_status) \
         SELECT id, f, t FROM moved, (VALUES ('authorized'::payment_status, 'capturing'::payment_status), \
           ('capturing', 'authorized')) AS steps(f, t)",
    )
    .bind(id)
    .execute(&app.pool)
    .await;
    let refused = twice.expect_err("two moves of one payment in one statement");
    assert_eq!(
        refused.as_database_error().and_then(|e| e.constraint()),
        Some("events_snapshot"),
        "{refused}"
    );
    assert_eq!(app.count("events").await, events);
    // One move, one event, numbered after the payment's last.
    sqlx::query(
        "WITH moved AS (UPDATE payments SET status = 'capturing' WHERE id = $1 RETURNING id) \
         INSERT INTO payment_events (payment_id, from_status, to_status) \
         SELECT id, 'authorized', 'capturing' FROM moved",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    let last: (i32, String, String) = sqlx::query_as(
        "SELECT sequence, type, status::text FROM events WHERE payment_id = $1 \
         ORDER BY sequence DESC LIMIT 1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        last,
        (
            3,
            "payment.capture_requested".to_owned(),
            "capturing".to_owned()
        )
    );
}

/// A bank idempotency key names one operation: two operations sharing one
/// would each get the other's answer from the bank. The key is its
/// operation's kind and id, so the database holds it to that, and no
/// other operation (no other id) can have it.
#[tokio::test]
async fn an_operations_bank_key_is_made_of_its_own_id() {
    let app = spawn_app().await;
    let payment = app.authorized(HAPPY_CARD, 100).await;
    let payment_id = uuid_of(payment["id"].as_str().unwrap());
    let (operation_id, key): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, bank_idempotency_key FROM operations WHERE payment_id = $1")
            .bind(payment_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(key, format!("gw_authorize_{operation_id}"));

    let other = uuid::Uuid::now_v7();
    for (kind, key, why) in [
        ("capture", key.clone(), "another operation's key"),
        ("capture", format!("gw_void_{other}"), "another kind's key"),
        (
            "capture",
            "gw_capture_mine".to_owned(),
            "a key of its own making",
        ),
    ] {
        let refused = sqlx::query(
            "INSERT INTO operations (id, payment_id, kind, bank_idempotency_key, lease_until) \
             VALUES ($1, $2, $3, $4, now())",
        )
        .bind(other)
        .bind(payment_id)
        .bind(kind)
        .bind(&key)
        .execute(&app.pool)
        .await
        .expect_err(why);
        assert_eq!(
            refused.as_database_error().and_then(|e| e.constraint()),
            Some("operations_bank_key_from_id"),
            "{why}: {refused}"
        );
    }
    let rewritten = sqlx::query(
        "UPDATE operations SET bank_idempotency_key = 'gw_authorize_' || gen_random_uuid() \
         WHERE id = $1",
    )
    .bind(operation_id)
    .execute(&app.pool)
    .await
    .expect_err("a key rewritten");
    assert_eq!(
        rewritten.as_database_error().and_then(|e| e.constraint()),
        Some("operations_bank_key_from_id")
    );
}
