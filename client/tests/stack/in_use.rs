//! A key whose first request is still running: 409 `idempotency_key_in_use`
//! with `Retry-After`, which the client waits out and retries.

use std::time::Duration;

use client::{IdempotencyKey, Page, PaymentStatus};

use crate::helpers::{Options, Stack, authorization, error_code, patient_policy, taken, with_key};

#[tokio::test]
async fn a_key_in_use_is_waited_for_and_then_answered_with_the_first_requests_answer() {
    // The bank takes 2 s, well within the gateway's deadline: the first
    // request holds the key that long, then gets its 201.
    let stack = Stack::start(Options {
        bank: Some(Box::new(|bank: &mut mock_bank::Settings| {
            bank.min_latency_ms = 2_000;
            bank.max_latency_ms = 2_000;
        })),
        ..Options::default()
    })
    .await;
    let (client, records) = stack.client(patient_policy());
    let key = IdempotencyKey::random();
    let request = authorization("ord_twice", "cus_twice", 555);

    let first = tokio::spawn({
        let (client, key, request) = (client.clone(), key.clone(), request.clone());
        async move { client.authorize(&key, &request).await }
    });
    // Once the payment shows, the first request has claimed the key and is
    // waiting for the bank.
    let mut shown = false;
    for _ in 0..200 {
        let list = client
            .list_by_order("ord_twice", &Page::default())
            .await
            .expect("listed");
        if list.data.first().map(|p| &p.status) == Some(&PaymentStatus::Pending) {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(shown, "the first request's payment never showed as pending");

    let second = client
        .authorize(&key, &request)
        .await
        .expect("the first request's answer");
    let first = first.await.expect("the task ran").expect("authorized");

    assert_eq!(second.id, first.id);
    assert_eq!(second.status, PaymentStatus::Authorized);
    let attempts = with_key(&records, &key);
    // Which call is which: the first call's answer and the second's
    // replay may be recorded in either order.
    let second_call = attempts
        .iter()
        .find(|a| a.status() == Some(409))
        .expect("the second call met the key in use")
        .call;
    let second_attempts: Vec<_> = attempts.iter().filter(|a| a.call == second_call).collect();
    assert!(second_attempts.len() >= 2, "{second_attempts:?}");
    let (last, waits) = second_attempts.split_last().expect("attempts");
    for wait in waits {
        assert_eq!(wait.status(), Some(409), "{wait:?}");
        assert_eq!(error_code(wait).as_deref(), Some("idempotency_key_in_use"));
        let client::AttemptOutcome::Response { retry_after, .. } = &wait.outcome else {
            panic!("{wait:?}");
        };
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    assert_eq!(last.status(), Some(201));
    assert!(last.replayed(), "the stored answer of the first request");
    // The first call itself was answered once, without a retry.
    let first_call: Vec<_> = attempts.iter().filter(|a| a.call != second_call).collect();
    assert_eq!(first_call.len(), 1, "{first_call:?}");
    assert!(taken(&records).iter().all(|r| r.status().is_some()));
}
