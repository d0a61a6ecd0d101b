//! Several base URLs: attempts go round-robin, a dead replica costs one
//! attempt, a key's replay may come from another replica, and the observer
//! sees every attempt, the failed ones included.

use client::{AttemptOutcome, IdempotencyKey, PaymentStatus};

use crate::helpers::{Options, Stack, authorization, observed, patient_policy, taken};

#[tokio::test]
async fn every_attempt_across_the_replicas_is_recorded() {
    let stack = Stack::start(Options {
        replicas: 2,
        ..Options::default()
    })
    .await;
    let dead = dead_url();
    let (a, b) = (&stack.gateways[0], &stack.gateways[1]);
    let urls = [dead.clone(), a.clone(), b.clone()];
    let (client, records) = observed(&urls, &stack.api_key, patient_policy());
    let capture_key = IdempotencyKey::random();

    // Each call starts one replica further on, and each retry moves on by
    // one: the calls below start at dead, a, b, dead.
    let payment = client
        .authorize(
            &IdempotencyKey::random(),
            &authorization("ord_replicas", "cus_replicas", 900),
        )
        .await
        .expect("authorized");
    let captured = client
        .capture(&capture_key, &payment.id)
        .await
        .expect("captured");
    let replayed = client
        .capture(&capture_key, &payment.id)
        .await
        .expect("the same answer, from the other replica");
    let read = client.get(&payment.id).await.expect("read");

    assert_eq!(replayed, captured);
    assert_eq!(read.status, PaymentStatus::Captured);
    let records = taken(&records);
    let seen: Vec<(u64, String, Option<u16>, bool)> = records
        .iter()
        .map(|r| {
            let replica = r.base_url.as_str().trim_end_matches('/').to_owned();
            (r.call, replica, r.status(), r.replayed())
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, dead.clone(), None, false),
            (1, a.clone(), Some(201), false),
            (2, a.clone(), Some(200), false),
            (3, b.clone(), Some(200), true),
            (4, dead.clone(), None, false),
            (4, a.clone(), Some(200), false),
        ]
    );
    for failed in records.iter().filter(|r| r.status().is_none()) {
        let AttemptOutcome::Transport { error } = &failed.outcome else {
            panic!("{failed:?}");
        };
        assert!(!error.is_empty());
    }
    // The authorization's two attempts carried one key.
    assert_eq!(records[0].idempotency_key, records[1].idempotency_key);
    assert!(records[0].idempotency_key.is_some());
}

/// A URL where nothing listens: a port that was just free.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}
