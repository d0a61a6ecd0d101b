//! A 202 resumed with the same key: by the client's own retries, and by
//! the caller after the client's deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use client::{AttemptRecord, Error, IdempotencyKey, PaymentStatus, RetryPolicy};

use crate::helpers::{
    Options, Stack, authorization, error_code, observed, patient_policy, set_bank_latency, with_key,
};

/// The bank slower (600 ms) than the gateway's bank deadline (300 ms): every
/// authorization ends its request with the bank's answer unknown, a 202.
fn slow_bank() -> Options {
    Options {
        bank: Some(Box::new(|bank: &mut mock_bank::Settings| {
            bank.min_latency_ms = 600;
            bank.max_latency_ms = 600;
        })),
        gateway: Some(Box::new(|gateway: &mut gateway::Settings| {
            gateway.bank_deadline_ms = 300;
            gateway.bank_attempt_timeout_ms = 200;
            gateway.lease_ms = 1_000;
        })),
        replicas: 1,
    }
}

#[tokio::test]
async fn a_202_is_resumed_by_the_clients_retries_to_the_final_answer() {
    let stack = Stack::start(slow_bank()).await;
    // The observer itself makes the bank fast again once it has seen the
    // first 202, so the retries that follow can finish the authorization.
    let (client, records) = {
        let (plain, records) = stack.client(patient_policy());
        let bank = stack.bank.clone();
        let lowered = Arc::new(AtomicBool::new(false));
        let sink = Arc::clone(&records);
        let observer = Arc::new(move |record: &AttemptRecord| {
            sink.lock().expect("not poisoned").push(record.clone());
            if record.status() == Some(202) && !lowered.swap(true, Ordering::SeqCst) {
                let bank = bank.clone();
                tokio::spawn(async move { set_bank_latency(&bank, 0).await });
            }
        });
        (plain.with_observer(observer), records)
    };
    let key = IdempotencyKey::random();

    let payment = client
        .authorize(&key, &authorization("ord_slow", "cus_slow", 1234))
        .await
        .expect("authorized in the end");

    assert_eq!(payment.status, PaymentStatus::Authorized);
    let attempts = with_key(&records, &key);
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert!(
        attempts.iter().all(|a| a.call == attempts[0].call),
        "one call"
    );
    assert_eq!(attempts[0].status(), Some(202), "{attempts:?}");
    let last = attempts.last().expect("attempts");
    assert_eq!(last.status(), Some(201), "{attempts:?}");
    // In between, only what the contract says to retry: more 202s while
    // the bank was still slow, or the key in use while the gateway's
    // recovery worker held it.
    for between in &attempts[1..attempts.len() - 1] {
        let retried = between.status() == Some(202)
            || error_code(between).as_deref() == Some("idempotency_key_in_use");
        assert!(retried, "{between:?}");
    }
    // The 202 was about this very payment.
    let pending: client::Payment =
        serde_json::from_str(attempts[0].body().expect("a body")).expect("a payment");
    assert_eq!(pending.id, payment.id);
    assert_eq!(pending.status, PaymentStatus::Pending);
}

#[tokio::test]
async fn still_pending_at_the_deadline_then_resumed_by_the_caller_with_the_key() {
    let stack = Stack::start(slow_bank()).await;
    let impatient = RetryPolicy {
        max_attempts: 2,
        deadline: Duration::from_secs(10),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        attempt_timeout: Duration::from_secs(5),
    };
    let (client, records) = observed(&stack.gateways, &stack.api_key, impatient);
    let key = IdempotencyKey::random();
    let request = authorization("ord_later", "cus_later", 4321);

    let error = client
        .authorize(&key, &request)
        .await
        .expect_err("not final yet");

    let Error::StillPending {
        payment,
        key: resume_with,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(payment.status, PaymentStatus::Pending);
    assert_eq!(resume_with, &key);
    assert!(error.resumable());
    assert!(
        error.to_string().contains("same Idempotency-Key"),
        "{error}"
    );
    let pending_id = payment.id.clone();

    // Later, with the bank fast again, the caller resumes with the key.
    stack.set_bank_latency(0).await;
    let (patient, _) = observed(&stack.gateways, &stack.api_key, patient_policy());
    let resumed = patient.authorize(&key, &request).await.expect("authorized");
    assert_eq!(resumed.id, pending_id, "resumed, not a second payment");
    assert_eq!(resumed.status, PaymentStatus::Authorized);
    let first_call = with_key(&records, &key);
    assert_eq!(first_call.len(), 2, "max_attempts: {first_call:?}");
}
