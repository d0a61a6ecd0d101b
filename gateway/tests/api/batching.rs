//! The batched writes (group commit) on a live Postgres: a batch does for
//! each row what one statement per row would, one bad row fails only
//! itself, and a start leaves undone what it cannot decide alone.

use std::time::Duration;

use gateway::domain::{Lease, MerchantId, OperationKind, PaymentId, PaymentStatus};
use gateway::store::batch::{BatchLimits, Batcher, WriteFn};
use gateway::store::operations;
use gateway::store::payments::{self, NewPayment, PaymentRecord, Settlement, StoredStatus};
use gateway::store::starts::{self, StartAuthorization, StartOperation};

use reqwest::StatusCode;

use crate::helpers::*;

async fn merchant(app: &TestApp) -> MerchantId {
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM merchants WHERE name = 'ficmart'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    MerchantId::from_uuid(id)
}

/// A batcher of `write` with one flusher (so rows queued together share a
/// statement), its batch sizes reported under `name`.
fn one_flusher<I, O>(app: &TestApp, name: &'static str, write: WriteFn<I, O>) -> Batcher<I, O>
where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    let limits = BatchLimits {
        max_rows: 8,
        flushers: 1,
        queue: 8,
    };
    let faults = gateway::faults::Faults::default();
    Batcher::spawn(name, app.pool.clone(), limits, write, faults, None).0
}

fn start(merchant: MerchantId, key: &str, order_id: &str) -> StartAuthorization {
    StartAuthorization {
        payment: NewPayment {
            id: PaymentId::new(),
            merchant_id: merchant,
            order_id: order_id.to_owned(),
            customer_id: "cus_1".to_owned(),
            amount_cents: 1_000,
            currency: "USD",
            card_brand: "visa",
            card_last4: "1111".to_owned(),
            card_exp_month: 12,
            card_exp_year: 2030,
        },
        key: key.to_owned(),
        request_hash: vec![7; 32],
        lease: Lease {
            holder: uuid::Uuid::new_v4(),
            duration: Duration::from_secs(30),
        },
    }
}

#[tokio::test]
async fn a_batch_of_starts_claims_each_key_once() {
    let app = spawn_app().await;
    let merchant = merchant(&app).await;
    let first = start(merchant, "key-a", "ord_1");
    // The same key again, in the same statement: the first row wins.
    let again = start(merchant, "key-a", "ord_2");
    let other = start(merchant, "key-b", "ord_3");
    let started = starts::start_authorizations(
        app.pool.clone(),
        vec![first.clone(), again.clone(), other.clone()],
    )
    .await
    .unwrap();
    let ids: Vec<Option<uuid::Uuid>> = started
        .iter()
        .map(|s| s.as_ref().map(|s| s.payment.id))
        .collect();
    assert_eq!(
        ids,
        [
            Some(first.payment.id.as_uuid()),
            None,
            Some(other.payment.id.as_uuid())
        ]
    );
    for started in started.into_iter().flatten() {
        assert_eq!(started.operation.payment_id, started.payment.id);
        assert!(started.operation.is_pending());
        assert_eq!(started.history.len(), 1);
    }
    assert_eq!(app.count("payments").await, 2);
    assert_eq!(app.count("operations").await, 2);
    assert_eq!(app.count("payment_events").await, 2);
    assert_eq!(app.count("idempotency_keys").await, 2);
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_alone() {
    let app = spawn_app().await;
    let merchant = merchant(&app).await;
    let batcher = one_flusher(&app, "test", starts::start_authorizations);
    // Queued together on this single-threaded runtime, so one batch; the
    // space in the order id breaks the schema's CHECK, and so the batch.
    let (good, bad, also_good) = tokio::join!(
        batcher.submit(start(merchant, "key-1", "ord_1")),
        batcher.submit(start(merchant, "key-2", "not valid")),
        batcher.submit(start(merchant, "key-3", "ord_3")),
    );
    assert!(good.unwrap().is_some());
    let refused = bad.expect_err("the bad row is refused");
    assert!(
        matches!(&refused, sqlx::Error::Database(e) if e.code().as_deref() == Some("23514")),
        "{refused:?}"
    );
    assert!(also_good.unwrap().is_some());
    // They were one batch (of three rows), then written one by one.
    let metrics = gateway::telemetry::prometheus().render();
    assert!(
        metrics.contains("gateway_db_batch_rows_sum{write=\"test\"} 3\n")
            && metrics.contains("gateway_db_batch_rows_count{write=\"test\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(app.count("payments").await, 2);
    assert_eq!(app.count("idempotency_keys").await, 2);
}

#[tokio::test]
async fn of_two_settlements_of_one_payment_in_a_batch_only_the_first_is_written() {
    let app = spawn_app().await;
    let merchant = merchant(&app).await;
    let begun = start(merchant, "key-s", "ord_s");
    let started = starts::start_authorizations(app.pool.clone(), vec![begun])
        .await
        .unwrap()
        .pop()
        .flatten()
        .expect("started");
    let settle = |status: PaymentStatus, body: &[u8]| Settlement {
        from: PaymentStatus::Pending,
        read_at: started.payment.updated_at,
        to: PaymentRecord {
            status: StoredStatus(status),
            bank_authorization_id: Some("auth_1".into()),
            failure_code: None,
            ..started.payment.clone()
        },
        operation_id: started.operation.id,
        succeeded: status == PaymentStatus::Authorized,
        answer: Some((201, body.to_vec())),
    };
    let written = payments::write_settlements(
        app.pool.clone(),
        vec![
            settle(PaymentStatus::Authorized, b"first"),
            settle(PaymentStatus::Declined, b"second"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(written, [true, false]);
    let (status, body): (String, Vec<u8>) = sqlx::query_as(
        "SELECT p.status::text, k.response_body FROM payments p \
         JOIN idempotency_keys k ON k.payment_id = p.id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("authorized", &b"first"[..])
    );
    assert_eq!(app.count("payment_events").await, 2);
    // Settled once: a later attempt finds nothing pending and writes nothing.
    let again = payments::write_settlements(
        app.pool.clone(),
        vec![settle(PaymentStatus::Authorized, b"third")],
    )
    .await
    .unwrap();
    assert_eq!(again, [false]);
}

/// A capture, void or refund of the payment as it is now, with `key`.
async fn start_operation(
    app: &TestApp,
    payment: &serde_json::Value,
    kind: OperationKind,
    key: &str,
) -> StartOperation {
    let to = match kind {
        OperationKind::Capture => PaymentStatus::Capturing,
        OperationKind::Void => PaymentStatus::Voiding,
        OperationKind::Refund => PaymentStatus::Refunding,
        OperationKind::Authorize => unreachable!("authorizations start in start_authorizations"),
    };
    let id = PaymentId::parse(payment["id"].as_str().unwrap()).unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    let found = payments::read_for_operation(&mut conn, merchant(app).await, id)
        .await
        .unwrap()
        .expect("the payment");
    let (operation_id, bank_key) = operations::new_identity(kind);
    StartOperation {
        payment: found.payment,
        to,
        kind,
        key: key.to_owned(),
        request_hash: vec![9; 32],
        lease: Lease {
            holder: uuid::Uuid::new_v4(),
            duration: Duration::from_secs(30),
        },
        operation_id,
        bank_key,
        compare: true,
    }
}

async fn status_of(app: &TestApp, payment: &serde_json::Value) -> String {
    let id = PaymentId::parse(payment["id"].as_str().unwrap()).unwrap();
    sqlx::query_scalar("SELECT status::text FROM payments WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_batch_of_operation_starts_puts_each_payment_in_flight_once() {
    let app = spawn_app().await;
    let (one, two) = (
        app.authorized(HAPPY_CARD, 100).await,
        app.authorized(HAPPY_CARD, 200).await,
    );
    let capture = start_operation(&app, &one, OperationKind::Capture, "op-1").await;
    // Another key on the same payment in the same statement: the first wins.
    let void = start_operation(&app, &one, OperationKind::Void, "op-2").await;
    let other = start_operation(&app, &two, OperationKind::Void, "op-3").await;
    let (keys, operations, events) = (
        app.count("idempotency_keys").await,
        app.count("operations").await,
        app.count("payment_events").await,
    );
    let started = starts::start_operations(app.pool.clone(), vec![capture.clone(), void, other])
        .await
        .unwrap();
    assert_eq!(
        started.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, false, true]
    );
    let first = started[0].as_ref().unwrap();
    assert_eq!(first.operation.id, capture.operation_id);
    assert_eq!(first.operation.bank_idempotency_key, capture.bank_key);
    assert!(first.operation.is_pending() && first.operation.live);
    assert_eq!(first.payment.status(), PaymentStatus::Capturing);
    assert!(first.payment.updated_at > capture.payment.updated_at);
    // The payment as returned is the payment as written.
    let mut conn = app.pool.acquire().await.unwrap();
    let written =
        payments::read_for_operation(&mut conn, merchant(&app).await, first.payment.payment_id())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        format!("{:?}", written.payment),
        format!("{:?}", first.payment)
    );
    assert_eq!(
        written.history.last().copied(),
        Some((PaymentStatus::Capturing, first.payment.updated_at))
    );
    assert_eq!(
        (status_of(&app, &one).await, status_of(&app, &two).await),
        ("capturing".into(), "voiding".into())
    );
    assert_eq!(app.count("idempotency_keys").await, keys + 2);
    assert_eq!(app.count("operations").await, operations + 2);
    assert_eq!(app.count("payment_events").await, events + 2);
}

#[tokio::test]
async fn an_operation_start_on_a_payment_that_moved_or_expired_writes_nothing() {
    let app = spawn_app().await;
    let (moved, expired) = (
        app.authorized(HAPPY_CARD, 100).await,
        app.authorized(HAPPY_CARD, 200).await,
    );
    // Read, then voided with another key before the write.
    let stale = start_operation(&app, &moved, OperationKind::Capture, "late").await;
    assert_eq!(
        app.act(moved["id"].as_str().unwrap(), "void")
            .await
            .status(),
        StatusCode::OK
    );
    // Read while valid; the authorization's expiry passes before the write.
    let lapsed = start_operation(&app, &expired, OperationKind::Capture, "lapsed").await;
    sqlx::query(
        "UPDATE payments SET authorization_expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(lapsed.payment.id)
    .execute(&app.pool)
    .await
    .unwrap();
    let (keys, operations) = (
        app.count("idempotency_keys").await,
        app.count("operations").await,
    );
    let started = starts::start_operations(app.pool.clone(), vec![stale, lapsed])
        .await
        .unwrap();
    assert!(started.iter().all(Option::is_none));
    assert_eq!(
        (
            status_of(&app, &moved).await,
            status_of(&app, &expired).await
        ),
        ("voided".into(), "authorized".into())
    );
    assert_eq!(app.count("idempotency_keys").await, keys);
    assert_eq!(app.count("operations").await, operations);
}

#[tokio::test]
async fn an_operation_start_whose_key_exists_fails_alone_and_moves_nothing() {
    let app = spawn_app().await;
    let (taken, free) = (
        app.authorized(HAPPY_CARD, 100).await,
        app.authorized(HAPPY_CARD, 200).await,
    );
    let key = new_key();
    let answered = app
        .post(
            &format!("/v1/payments/{}/void", free["id"].as_str().unwrap()),
            &key,
            &serde_json::Value::Null,
        )
        .await;
    assert_eq!(answered.status(), StatusCode::OK);
    let other = app.authorized(HAPPY_CARD, 300).await;
    let batcher = one_flusher(&app, "operation_test", starts::start_operations);
    let reused = start_operation(&app, &taken, OperationKind::Capture, &key).await;
    let fresh = start_operation(&app, &other, OperationKind::Capture, "fresh").await;
    let (reused, fresh) = tokio::join!(batcher.submit(reused), batcher.submit(fresh));
    assert!(reused.unwrap().is_none(), "the key belongs to the void");
    assert!(fresh.unwrap().is_some());
    // The key's payment was never put in flight without its key.
    assert_eq!(
        (status_of(&app, &taken).await, status_of(&app, &other).await),
        ("authorized".into(), "capturing".into())
    );
    let metrics = gateway::telemetry::prometheus().render();
    assert!(
        metrics.contains("gateway_db_batch_rows_sum{write=\"operation_test\"} 2\n"),
        "one batch of both, then each alone: {metrics}"
    );
}
