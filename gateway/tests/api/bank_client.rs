//! The bank client against fake banks: wiremock for scripted answers, and
//! tiny hand-made TCP servers for what wiremock cannot do (close a
//! connection without answering, count concurrent requests).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::bank::{
    AuthorizeRequest, BankClient, BankErrorCode, BankOutcome, CircuitSettings, RetryPolicy,
    UnknownReason,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Short timeouts so that the tests run fast.
fn policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: ms(200),
        deadline: ms(2000),
        max_attempts: 8,
        base_backoff: ms(5),
        max_backoff: ms(50),
    }
}

/// A breaker that never opens: these tests are about retries, and some
/// fail many attempts in a row on purpose (the breaker has its own tests
/// in `circuit.rs`).
fn no_circuit() -> CircuitSettings {
    CircuitSettings {
        failure_threshold: u32::MAX,
        open_for: Duration::from_secs(1),
    }
}

fn card() -> AuthorizeRequest<'static> {
    AuthorizeRequest {
        card_number: "4111111111111111",
        cvv: "123",
        expiry_month: 12,
        expiry_year: 2030,
        amount_cents: 4999,
    }
}

fn authorization_json() -> Value {
    json!({
        "authorization_id": "auth_8f14e45f-ceea-467a-9575-7d1b7a1a1f11",
        "status": "approved",
        "amount": 4999,
        "currency": "USD",
        "expires_at": "2030-01-08T10:00:00Z",
        "created_at": "2030-01-01T10:00:00.5Z"
    })
}

fn capture_json() -> Value {
    json!({
        "capture_id": "cap_1",
        "authorization_id": "auth_1",
        "status": "captured",
        "amount": 4999,
        "currency": "USD",
        "captured_at": "2030-01-02T10:00:00Z"
    })
}

fn idempotency_keys(requests: &[wiremock::Request]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("<none>")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_500_then_a_200_is_retried_with_the_same_key_and_body() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"error": "internal_error", "message": "boom"})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(authorization_json()))
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");

    let outcome = client.authorize("pay_1:authorize", &card()).await;

    let BankOutcome::Done(auth) = outcome else {
        panic!("expected Done, got {outcome:?}");
    };
    assert_eq!(
        auth.authorization_id,
        "auth_8f14e45f-ceea-467a-9575-7d1b7a1a1f11"
    );
    assert_eq!(auth.status, "approved");
    assert_eq!(auth.amount, 4999);
    assert_eq!(auth.currency, "USD");
    assert_eq!(auth.expires_at.to_rfc3339(), "2030-01-08T10:00:00+00:00");
    assert_eq!(auth.state, None);

    let requests = server.received_requests().await.expect("recording");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        idempotency_keys(&requests),
        ["pay_1:authorize", "pay_1:authorize"]
    );
    assert_eq!(requests[0].body, requests[1].body, "same bytes on a retry");
    let body: Value = serde_json::from_slice(&requests[0].body).expect("json body");
    assert_eq!(
        body,
        json!({"card_number": "4111111111111111", "cvv": "123",
               "expiry_month": 12, "expiry_year": 2030, "amount": 4999})
    );
}

#[tokio::test]
async fn a_429_is_asked_again_no_sooner_than_its_retry_after_and_never_past_the_deadline() {
    let limited = || {
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "1")
            .set_body_json(json!({"error": "rate_limited", "message": "slow down"}))
    };
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/captures"))
        .respond_with(limited())
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/captures"))
        .respond_with(ResponseTemplate::new(200).set_body_json(capture_json()))
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");
    let started = Instant::now();
    let outcome = client.capture("pay_1:capture", "auth_1", 4999).await;
    assert!(matches!(outcome, BankOutcome::Done(_)), "{outcome:?}");
    // The backoff alone is at most 50 ms here.
    assert!(started.elapsed() >= ms(1000), "asked again too soon");

    // A wait past what the call has left: it is not asked again at all.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/captures"))
        .respond_with(limited().insert_header("Retry-After", "60"))
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");
    let outcome = client.capture("pay_2:capture", "auth_2", 4999).await;
    assert!(
        matches!(
            outcome,
            BankOutcome::Unknown(UnknownReason::DeadlinePassed { attempts: 1, .. })
        ),
        "{outcome:?}"
    );
    let requests = server.received_requests().await.expect("recording");
    assert_eq!(requests.len(), 1);
}

#[tokio::test]
async fn a_402_is_refused_and_never_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(
            ResponseTemplate::new(402).set_body_json(
                json!({"error": "insufficient_funds", "message": "Insufficient funds"}),
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");

    let outcome = client.authorize("k-402", &card()).await;

    let BankOutcome::Refused(refusal) = outcome else {
        panic!("expected Refused, got {outcome:?}");
    };
    assert_eq!(refusal.status, 402);
    assert_eq!(refusal.code, BankErrorCode::InsufficientFunds);
    assert_eq!(refusal.message, "Insufficient funds");
    assert_eq!(
        server.received_requests().await.expect("recording").len(),
        1
    );
}

#[tokio::test]
async fn a_400_authorization_already_used_is_refused_and_never_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/captures"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "authorization_already_used", "message": "already captured"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");

    let outcome = client.capture("k-cap", "auth_1", 4999).await;

    let BankOutcome::Refused(refusal) = outcome else {
        panic!("expected Refused, got {outcome:?}");
    };
    assert_eq!(refusal.status, 400);
    assert_eq!(refusal.code, BankErrorCode::AuthorizationAlreadyUsed);
    let requests = server.received_requests().await.expect("recording");
    assert_eq!(requests.len(), 1);
    assert_eq!(idempotency_keys(&requests), ["k-cap"]);
    let body: Value = serde_json::from_slice(&requests[0].body).expect("json body");
    assert_eq!(body, json!({"authorization_id": "auth_1", "amount": 4999}));
}

#[tokio::test]
async fn a_documented_422_is_a_refusal_but_an_html_400_proves_nothing_and_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/voids"))
        .respond_with(
            ResponseTemplate::new(422).set_body_json(
                json!({"error": "idempotency_key_reused", "message": "different body"}),
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    // What a proxy in front of the bank answers: not the bank's refusal.
    Mock::given(method("POST"))
        .and(path("/api/v1/refunds"))
        .respond_with(ResponseTemplate::new(400).set_body_string("<html>nope</html>"))
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");

    let void = client.void("k-void", "auth_1").await;
    let refund = client.refund("k-refund", "cap_1", 10).await;

    assert!(
        matches!(&void, BankOutcome::Refused(r) if r.code == BankErrorCode::IdempotencyKeyReused),
        "{void:?}"
    );
    assert!(
        matches!(
            &refund,
            BankOutcome::Unknown(UnknownReason::AttemptsExhausted { attempts: 8, .. })
        ),
        "{refund:?}"
    );
    let requests = server.received_requests().await.expect("recording");
    let refund_keys: Vec<String> = idempotency_keys(&requests)
        .into_iter()
        .filter(|key| key == "k-refund")
        .collect();
    assert_eq!(refund_keys.len(), 8, "every attempt with the same key");
}

#[tokio::test]
async fn a_get_of_an_unknown_id_is_refused_not_found_and_a_known_one_parses() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/authorizations/auth_missing"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": "not_found", "message": "no such id"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let mut captured = capture_json();
    captured["refund_id"] = json!("ref_1");
    Mock::given(method("GET"))
        .and(path("/api/v1/captures/cap_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(captured))
        .expect(1)
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");

    let missing = client.get_authorization("auth_missing").await;
    let capture = client.get_capture("cap_1").await;

    assert!(
        matches!(&missing, BankOutcome::Refused(r) if r.status == 404 && r.code == BankErrorCode::NotFound),
        "{missing:?}"
    );
    let BankOutcome::Done(capture) = capture else {
        panic!("expected Done, got {capture:?}");
    };
    assert_eq!(capture.refund_id.as_deref(), Some("ref_1"));
    let requests = server.received_requests().await.expect("recording");
    assert!(
        requests
            .iter()
            .all(|r| r.headers.get("idempotency-key").is_none()),
        "a GET carries no idempotency key"
    );
}

#[tokio::test]
async fn a_2xx_with_a_broken_body_is_retried_and_the_replay_parses() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/captures"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"capture_id\": \"cap_"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/captures"))
        .respond_with(ResponseTemplate::new(200).set_body_json(capture_json()))
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");

    let outcome = client.capture("k-broken", "auth_1", 4999).await;

    assert!(
        matches!(&outcome, BankOutcome::Done(c) if c.capture_id == "cap_1"),
        "{outcome:?}"
    );
    let requests = server.received_requests().await.expect("recording");
    assert_eq!(idempotency_keys(&requests), ["k-broken", "k-broken"]);
}

#[tokio::test]
async fn a_response_slower_than_the_attempt_timeout_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(authorization_json())
                .set_delay(ms(1500)),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/authorizations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(authorization_json()))
        .mount(&server)
        .await;
    let client = BankClient::new(&server.uri(), policy(), 4, no_circuit()).expect("client");

    let outcome = client.authorize("k-slow", &card()).await;

    assert!(matches!(outcome, BankOutcome::Done(_)), "{outcome:?}");
    let requests = server.received_requests().await.expect("recording");
    assert_eq!(idempotency_keys(&requests), ["k-slow", "k-slow"]);
}

/// A port on which nobody listens (bound, then released).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn connection_refused_is_retried_then_unknown() {
    let client = BankClient::new(
        &format!("http://127.0.0.1:{}", dead_port()),
        RetryPolicy {
            max_attempts: 5,
            deadline: Duration::from_secs(10),
            ..policy()
        },
        2,
        no_circuit(),
    )
    .expect("client");

    let outcome = client.capture("k-refused", "auth_1", 100).await;

    match outcome {
        BankOutcome::Unknown(UnknownReason::AttemptsExhausted {
            attempts,
            last_error,
        }) => {
            assert_eq!(attempts, 5);
            assert!(!last_error.is_empty());
        }
        other @ (BankOutcome::Done(_)
        | BankOutcome::Refused(_)
        | BankOutcome::Unknown(
            UnknownReason::DeadlinePassed { .. } | UnknownReason::CircuitOpen { .. },
        )) => {
            panic!("expected Unknown(AttemptsExhausted), got {other:?}")
        }
    }
}

#[tokio::test]
async fn only_500s_until_the_deadline_is_unknown_deadline_passed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/refunds"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"error": "internal_error", "message": "outage"})),
        )
        .mount(&server)
        .await;
    let policy = RetryPolicy {
        attempt_timeout: ms(200),
        deadline: ms(300),
        max_attempts: 1000,
        base_backoff: ms(5),
        max_backoff: ms(20),
    };
    let client = BankClient::new(&server.uri(), policy, 4, no_circuit()).expect("client");

    let started = Instant::now();
    let outcome = client.refund("k-deadline", "cap_1", 4999).await;
    let elapsed = started.elapsed();

    let BankOutcome::Unknown(UnknownReason::DeadlinePassed {
        attempts,
        last_error,
    }) = outcome
    else {
        panic!("expected Unknown(DeadlinePassed), got {outcome:?}");
    };
    // It kept trying until a whole attempt no longer fit before the
    // deadline; none was cut short, so the last error is the bank's.
    assert!(
        elapsed >= policy.deadline - policy.attempt_timeout,
        "{elapsed:?}"
    );
    assert!(last_error.contains("503"), "{last_error}");
    let received = server.received_requests().await.expect("recording");
    assert!(received.len() > 1, "retried: {} requests", received.len());
    assert!(received.len() <= attempts as usize);
    assert!(attempts <= policy.max_attempts);
    assert!(
        idempotency_keys(&received)
            .iter()
            .all(|k| k == "k-deadline")
    );
}

#[tokio::test]
async fn an_attempt_is_never_cut_short_by_the_deadline() {
    // The bank holds its answer past the attempt timeout; after the first
    // attempt times out, less than a whole attempt is left before the
    // deadline. A shorter second attempt would hang up on a bank that may
    // still be working on the key, where the operation's next caller could
    // meet it: the call ends instead.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/refunds"))
        .respond_with(ResponseTemplate::new(201).set_delay(ms(1_500)))
        .mount(&server)
        .await;
    let policy = RetryPolicy {
        attempt_timeout: ms(300),
        deadline: ms(500),
        max_attempts: 10,
        base_backoff: ms(5),
        max_backoff: ms(20),
    };
    let client = BankClient::new(&server.uri(), policy, 4, no_circuit()).expect("client");

    let outcome = client.refund("k-fit", "cap_1", 4999).await;

    let BankOutcome::Unknown(UnknownReason::DeadlinePassed { attempts, .. }) = outcome else {
        panic!("expected Unknown(DeadlinePassed), got {outcome:?}");
    };
    assert_eq!(attempts, 1);
    let received = server.received_requests().await.expect("recording");
    assert_eq!(received.len(), 1);
}

#[tokio::test]
async fn only_500s_with_few_attempts_is_unknown_attempts_exhausted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/voids"))
        .respond_with(ResponseTemplate::new(500))
        .expect(3)
        .mount(&server)
        .await;
    let policy = RetryPolicy {
        max_attempts: 3,
        deadline: Duration::from_secs(10),
        ..policy()
    };
    let client = BankClient::new(&server.uri(), policy, 4, no_circuit()).expect("client");

    let outcome = client.void("k-three", "auth_1").await;

    assert!(
        matches!(
            &outcome,
            BankOutcome::Unknown(UnknownReason::AttemptsExhausted { attempts: 3, .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(
        server.received_requests().await.expect("recording").len(),
        3
    );
}

/// Reads one HTTP/1.1 request: the head as text, then `Content-Length`
/// bytes of body. `None` if the peer closed first.
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((head, buf[end + 4..end + 4 + length].to_vec()));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header_value(head: &str, wanted: &str) -> Option<String> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case(wanted))
        .map(|(_, value)| value.trim().to_owned())
}

async fn write_json_200(stream: &mut TcpStream, body: &Value) {
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The client may have given up already; that is its business.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[tokio::test]
async fn a_connection_closed_without_a_response_is_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr");
    let keys = Arc::new(Mutex::new(Vec::<String>::new()));
    let server_keys = Arc::clone(&keys);
    let server = tokio::spawn(async move {
        let mut connections = 0usize;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return connections;
            };
            connections += 1;
            match connections {
                // Drop the socket at once, before reading anything.
                1 => drop(stream),
                // Read the whole request (as if the bank did the work),
                // then close without answering.
                2 => {
                    if let Some((head, _)) = read_request(&mut stream).await {
                        server_keys
                            .lock()
                            .expect("lock")
                            .push(header_value(&head, "idempotency-key").unwrap_or_default());
                    }
                    drop(stream);
                }
                // Then answer properly.
                _ => {
                    if let Some((head, _)) = read_request(&mut stream).await {
                        server_keys
                            .lock()
                            .expect("lock")
                            .push(header_value(&head, "idempotency-key").unwrap_or_default());
                        write_json_200(&mut stream, &authorization_json()).await;
                        return connections;
                    }
                }
            }
        }
    });
    let client =
        BankClient::new(&format!("http://{address}"), policy(), 2, no_circuit()).expect("client");

    let outcome = client.authorize("k-reset", &card()).await;

    let BankOutcome::Done(auth) = outcome else {
        panic!("expected Done, got {outcome:?}");
    };
    assert_eq!(auth.amount, 4999);
    let connections = server.await.expect("server task");
    assert!(connections >= 3, "{connections} connections");
    let keys = keys.lock().expect("lock").clone();
    assert_eq!(keys, ["k-reset", "k-reset"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_in_flight_requests_reach_the_bank_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr");
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (server_current, server_peak, server_served) =
        (Arc::clone(&current), Arc::clone(&peak), Arc::clone(&served));
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (current, peak, served) = (
                Arc::clone(&server_current),
                Arc::clone(&server_peak),
                Arc::clone(&server_served),
            );
            tokio::spawn(async move {
                if read_request(&mut stream).await.is_none() {
                    return;
                }
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(ms(150)).await;
                current.fetch_sub(1, Ordering::SeqCst);
                served.fetch_add(1, Ordering::SeqCst);
                write_json_200(&mut stream, &capture_json()).await;
            });
        }
    });
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(20),
        ..policy()
    };
    let client =
        BankClient::new(&format!("http://{address}"), policy, 2, no_circuit()).expect("client");
    // A client with another policy shares the same limit.
    let other = client.with_policy(RetryPolicy {
        max_attempts: 3,
        ..policy
    });

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let client = if i % 2 == 0 {
            client.clone()
        } else {
            other.clone()
        };
        calls.spawn(async move { client.capture(&format!("k-{i}"), "auth_1", 4999).await });
    }
    let outcomes = calls.join_all().await;
    server.abort();

    assert!(
        outcomes.iter().all(|o| matches!(o, BankOutcome::Done(_))),
        "{outcomes:?}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 6);
    let peak = peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "peak concurrency {peak}");
}

#[test]
fn authorize_request_debug_shows_neither_card_number_nor_cvv() {
    let request = AuthorizeRequest {
        card_number: "5555555555554444",
        cvv: "789",
        expiry_month: 9,
        expiry_year: 2030,
        amount_cents: 100,
    };
    for shown in [format!("{request:?}"), format!("{request:#?}")] {
        assert!(!shown.contains("5555555555554444"), "{shown}");
        assert!(!shown.contains("555555"), "{shown}");
        assert!(!shown.contains("789"), "{shown}");
        assert!(shown.contains("4444"), "{shown}");
    }
}
