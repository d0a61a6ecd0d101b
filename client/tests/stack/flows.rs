//! The checkout's flows and the gateway's refusals, through the client.

use client::{
    AuthorizeRequest, Card, Client, Error, ErrorCode, IdempotencyKey, Page, PaymentId,
    PaymentStatus,
};

use crate::helpers::{Options, Stack, authorization, empty_card, patient_policy, taken, with_key};

#[tokio::test]
async fn authorize_capture_refund_and_read_back() {
    let stack = Stack::start(Options::default()).await;
    let (client, records) = stack.client(patient_policy());

    let authorized = client
        .authorize(
            &IdempotencyKey::random(),
            &authorization("ord_happy", "cus_happy", 4999),
        )
        .await
        .expect("authorized");
    assert_eq!(authorized.status, PaymentStatus::Authorized);
    assert_eq!(authorized.amount, 4999);
    assert_eq!(authorized.currency, "USD");
    assert_eq!(authorized.order_id, "ord_happy");
    assert_eq!(authorized.card.last4, "1111");
    assert_eq!(authorized.card.brand, "visa");
    assert!(authorized.bank.authorization_id.is_some());
    assert!(authorized.authorization_expires_at.is_some());
    let statuses: Vec<_> = authorized
        .history
        .iter()
        .map(|h| h.status.clone())
        .collect();
    assert_eq!(
        statuses,
        [PaymentStatus::Pending, PaymentStatus::Authorized]
    );

    let capture_key = IdempotencyKey::random();
    let captured = client
        .capture(&capture_key, &authorized.id)
        .await
        .expect("captured");
    assert_eq!(captured.id, authorized.id);
    assert_eq!(captured.status, PaymentStatus::Captured);
    assert!(captured.bank.capture_id.is_some());

    // The same key again: the stored answer, not a second capture.
    let again = client
        .capture(&capture_key, &authorized.id)
        .await
        .expect("the same answer");
    assert_eq!(again, captured);
    let capture_attempts = with_key(&records, &capture_key);
    assert_eq!(capture_attempts.len(), 2);
    assert!(!capture_attempts[0].replayed());
    assert!(capture_attempts[1].replayed());
    assert_eq!(capture_attempts[0].body(), capture_attempts[1].body());

    let refunded = client
        .refund(&IdempotencyKey::random(), &authorized.id)
        .await
        .expect("refunded");
    assert_eq!(refunded.status, PaymentStatus::Refunded);
    assert!(refunded.bank.refund_id.is_some());

    let read = client.get(&authorized.id).await.expect("read");
    assert_eq!(read.status, PaymentStatus::Refunded);
    let by_order = client
        .list_by_order("ord_happy", &Page::default())
        .await
        .expect("listed");
    assert_eq!(by_order.data.len(), 1);
    assert_eq!(by_order.data[0].id, authorized.id);
    assert!(!by_order.has_more);

    // Every POST attempt carried a key; no GET did.
    for record in taken(&records) {
        assert_eq!(
            record.idempotency_key.is_some(),
            record.method == client::Method::POST,
            "{record:?}"
        );
    }
}

#[tokio::test]
async fn a_customers_payments_page_by_page() {
    let stack = Stack::start(Options::default()).await;
    let (client, _) = stack.client(patient_policy());
    let mut ids = Vec::new();
    for order in ["ord_p1", "ord_p2", "ord_p3"] {
        let payment = client
            .authorize(
                &IdempotencyKey::random(),
                &authorization(order, "cus_pages", 100),
            )
            .await
            .expect("authorized");
        ids.push(payment.id);
    }

    let mut seen = Vec::new();
    let mut page = Some(Page::default().limit(2));
    while let Some(current) = page {
        let list = client
            .list_by_customer("cus_pages", &current.clone().limit(2))
            .await
            .expect("a page");
        assert!(list.data.len() <= 2);
        seen.extend(list.data.iter().map(|p| p.id.clone()));
        page = list.next_page();
    }

    ids.reverse(); // newest first
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn a_decline_is_the_declined_error_with_its_payment() {
    let stack = Stack::start(Options::default()).await;
    let (client, records) = stack.client(patient_policy());
    let key = IdempotencyKey::random();
    let request = AuthorizeRequest::usd("ord_poor", "cus_poor", 1000, empty_card());

    let error = client
        .authorize(&key, &request)
        .await
        .expect_err("declined");

    let Error::Declined(declined) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(declined.status, 402);
    assert_eq!(declined.code, ErrorCode::InsufficientFunds);
    let payment_id = error
        .payment_id()
        .expect("the declined payment's id")
        .clone();
    assert!(!error.resumable());
    assert_eq!(with_key(&records, &key).len(), 1, "a decline is final");

    let payment = client.get(&payment_id).await.expect("the payment exists");
    assert_eq!(payment.status, PaymentStatus::Declined);
    assert_eq!(
        payment.failure.map(|f| f.code).as_deref(),
        Some("insufficient_funds")
    );
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("5555555555554444"), "{shown}");
}

#[tokio::test]
async fn invalid_input_is_an_invalid_request_naming_the_field_and_spends_no_key() {
    let stack = Stack::start(Options::default()).await;
    let (client, records) = stack.client(patient_policy());
    let key = IdempotencyKey::random();
    let valid = authorization("ord_fix", "cus_fix", 2500);
    let cases = [
        (
            AuthorizeRequest {
                amount: 0,
                ..valid.clone()
            },
            "amount",
            ErrorCode::AmountTooSmall,
        ),
        (
            AuthorizeRequest {
                card: Card::new("4111111111111112", "123", 12, 2030),
                ..valid.clone()
            },
            "card.number",
            ErrorCode::InvalidNumber,
        ),
        (
            AuthorizeRequest {
                currency: "EUR".into(),
                ..valid.clone()
            },
            "currency",
            ErrorCode::CurrencyNotSupported,
        ),
        (
            AuthorizeRequest {
                order_id: "ord 1".into(),
                ..valid.clone()
            },
            "order_id",
            ErrorCode::ParameterInvalid,
        ),
    ];
    for (request, param, code) in cases {
        let error = client.authorize(&key, &request).await.expect_err("refused");
        assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
        assert_eq!(error.param(), Some(param), "{error}");
        assert_eq!(error.code(), Some(&code), "{error}");
    }
    assert_eq!(with_key(&records, &key).len(), 4, "none is retried");

    // A 400 stores nothing: the key still works for the corrected request.
    let payment = client.authorize(&key, &valid).await.expect("authorized");
    assert_eq!(payment.status, PaymentStatus::Authorized);
}

#[tokio::test]
async fn the_gateways_other_refusals_have_their_variants() {
    let stack = Stack::start(Options::default()).await;
    let (client, records) = stack.client(patient_policy());
    let key = IdempotencyKey::random();
    let payment = client
        .authorize(&key, &authorization("ord_refused", "cus_refused", 700))
        .await
        .expect("authorized");

    // The same key with another request.
    let reused = client
        .authorize(&key, &authorization("ord_refused", "cus_refused", 701))
        .await
        .expect_err("reused");
    assert!(matches!(reused, Error::KeyReused(_)), "{reused:?}");

    // A refund before any capture.
    let refused = client
        .refund(&IdempotencyKey::random(), &payment.id)
        .await
        .expect_err("not captured");
    assert!(matches!(refused, Error::InvalidState(_)), "{refused:?}");
    assert_eq!(refused.payment_id(), Some(&payment.id));

    // A void after a capture.
    client
        .capture(&IdempotencyKey::random(), &payment.id)
        .await
        .expect("captured");
    let refused = client
        .void(&IdempotencyKey::random(), &payment.id)
        .await
        .expect_err("already captured");
    assert!(matches!(refused, Error::InvalidState(_)), "{refused:?}");

    let nobody: PaymentId = "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b"
        .parse()
        .expect("an id");
    let missing = client.get(&nobody).await.expect_err("no such payment");
    assert!(matches!(missing, Error::NotFound(_)), "{missing:?}");

    let stranger = Client::new(&stack.gateways, "sk_not_a_key").expect("a client");
    let unknown = stranger.get(&payment.id).await.expect_err("unknown key");
    assert!(matches!(unknown, Error::Unauthenticated(_)), "{unknown:?}");

    // Each refusal was final: one attempt per call.
    let records = taken(&records);
    let mut calls: Vec<u64> = records.iter().map(|r| r.call).collect();
    calls.dedup();
    assert_eq!(calls.len(), records.len(), "{records:?}");
}
