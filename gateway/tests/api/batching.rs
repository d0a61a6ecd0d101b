//! The batched writes (group commit) on a live Postgres: a batch does for
//! each row what one statement per row would, and one bad row fails only
//! itself.

use std::time::Duration;

use gateway::domain::{Lease, MerchantId, PaymentId, PaymentStatus};
use gateway::store::batch::{BatchLimits, Batcher};
use gateway::store::payments::{
    self, NewPayment, PaymentRecord, Settlement, StartAuthorization, StoredStatus,
};

use crate::helpers::*;

async fn merchant(app: &TestApp) -> MerchantId {
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM merchants WHERE name = 'ficmart'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    MerchantId::from_uuid(id)
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
    let started = payments::start_authorizations(
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
    let limits = BatchLimits {
        max_rows: 8,
        flushers: 1,
        queue: 8,
    };
    let (batcher, _flusher) = Batcher::spawn(
        "test",
        app.pool.clone(),
        limits,
        payments::start_authorizations,
        gateway::faults::Faults::default(),
        None,
    );
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
    let started = payments::start_authorizations(app.pool.clone(), vec![begun])
        .await
        .unwrap()
        .pop()
        .flatten()
        .expect("started");
    let settle = |status: PaymentStatus, body: &[u8]| Settlement {
        from: PaymentStatus::Pending,
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
