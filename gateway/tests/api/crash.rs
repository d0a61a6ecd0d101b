//! Issue 4's acceptance tests that need real processes: the `gateway`
//! binary killed with `kill -9` while the bank is thinking and started
//! again on its database, two processes recovering one backlog, a bank
//! whose answers never arrive, Postgres stopped and started under load,
//! SIGTERM under load, and the circuit breaker against a bank outage.
//!
//! Every wait is bounded. Nothing asserts on wall time except "within a
//! bound" and latencies compared with a configured timeout. The tests run
//! one at a time ([`harness::SERIAL`]): each runs gateway processes and a
//! bank with latency.

pub(crate) mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gateway::payments::ABANDONED;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::{HAPPY_CARD, new_key};
use bank_tap::BankProxy;
use harness::{Answer, GatewayProcess, Payment, Rig, SERIAL, payment};

/// HAPPY_CARD's opening balance at the mock bank.
const OPENING: i64 = 1_000_000;
const AMOUNT: i64 = 1_000;
const IN_FLIGHT: usize = 30;
/// How long recovery may take to settle a backlog after a restart: the
/// lease (3 s) plus a few rounds of 1–1.5 s bank calls.
const SETTLE_BOUND: Duration = Duration::from_secs(20);

fn slow_bank() -> Value {
    json!({"min_latency_ms": 1000, "max_latency_ms": 1500})
}

fn calm_bank() -> Value {
    json!({"min_latency_ms": 0, "max_latency_ms": 0, "timeout_rate": 0.0,
           "failure_rate": 0.0, "outage_seconds": 0})
}

/// One client request: path, idempotency key, body.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    key: String,
    body: Value,
}

impl Request {
    fn new(path: impl Into<String>, body: Value) -> Self {
        Self {
            path: path.into(),
            key: new_key(),
            body,
        }
    }

    fn authorize(n: usize) -> Self {
        Self::new("/v1/payments", payment(HAPPY_CARD, AMOUNT, n))
    }

    fn act(payment_id: &str, action: &str) -> Self {
        Self::new(format!("/v1/payments/{payment_id}/{action}"), Value::Null)
    }
}

type Sent = Result<Answer, String>;

/// Sends every request at once, each on its own task.
fn fire(rig: &Rig, base: &str, requests: &[Request]) -> Vec<JoinHandle<Sent>> {
    requests
        .iter()
        .map(|request| {
            let (rig, base, request) = (rig.clone(), base.to_owned(), request.clone());
            tokio::spawn(async move {
                rig.post(&base, &request.path, &request.key, &request.body)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect()
}

async fn gather(handles: Vec<JoinHandle<Sent>>) -> Vec<Sent> {
    let mut sent = Vec::with_capacity(handles.len());
    for handle in handles {
        sent.push(handle.await.expect("the request task"));
    }
    sent
}

async fn send_all(rig: &Rig, base: &str, requests: &[Request]) -> Vec<Sent> {
    gather(fire(rig, base, requests)).await
}

/// The payment an answer is about: the payment itself, or an error's `payment_id`.
fn answered_payment(body: &Value) -> Option<&str> {
    body["id"]
        .as_str()
        .or_else(|| body["error"]["payment_id"].as_str())
}

/// Authorizes `n` payments with the bank calm; their ids.
async fn authorize_all(rig: &Rig, base: &str, n: usize) -> Vec<String> {
    let requests: Vec<Request> = (0..n).map(Request::authorize).collect();
    send_all(rig, base, &requests)
        .await
        .into_iter()
        .map(|sent| {
            let answer = sent.expect("answered");
            assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
            answer.body["id"].as_str().expect("an id").to_owned()
        })
        .collect()
}

/// Fires `requests`, waits until every one is recorded in `in_flight`
/// (bounded, and at least 300 ms), then `kill -9`s the process while the
/// bank (1–1.5 s per call) is still working on them.
async fn kill_with_in_flight(
    rig: &Rig,
    process: &mut GatewayProcess,
    requests: &[Request],
    in_flight: &str,
) -> Vec<Sent> {
    let handles = fire(rig, &process.base(), requests);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all_recorded = rig
        .until_count(in_flight, requests.len(), Duration::from_millis(600))
        .await;
    process.kill9().await;
    let sent = gather(handles).await;
    assert!(
        all_recorded,
        "the scenario needs all {} requests recorded as {in_flight} before the kill",
        requests.len()
    );
    let answered = sent.iter().filter(|s| s.is_ok()).count();
    eprintln!(
        "kill -9 with {} {in_flight}; {answered} answered before it",
        requests.len()
    );
    sent
}

/// Every payment is authorized or abandoned, each authorization is active
/// at the bank, the bank holds nothing else on the card, and its ledger
/// balances. Returns the payments.
async fn assert_authorizations_agree_with_the_bank(rig: &Rig) -> Vec<Payment> {
    rig.set_chaos(calm_bank()).await;
    let payments = rig.payments().await;
    let mut held = 0;
    let mut receipts = BTreeSet::new();
    for p in &payments {
        match p.status.as_str() {
            "authorized" => {
                let id = p
                    .bank_authorization_id
                    .clone()
                    .expect("an authorization id");
                let (status, authorization) = rig.bank_authorization(&id).await;
                assert_eq!(status, StatusCode::OK, "{} {id} unknown to the bank", p.id);
                assert_eq!(authorization["state"], "active", "{authorization}");
                assert_eq!(authorization["amount"], p.amount, "{authorization}");
                held += p.amount;
                receipts.insert(id);
            }
            "failed" => assert_eq!(
                p.failure_code.as_deref(),
                Some(ABANDONED),
                "{p:?}: nothing but abandonment fails an authorization here"
            ),
            other => panic!("{} is {other}: {p:?}", p.id),
        }
    }
    let at_bank: BTreeSet<String> =
        sqlx::query_scalar("SELECT 'auth_' || id::text FROM authorizations")
            .fetch_all(&rig.bank_pool)
            .await
            .expect("the bank's authorizations")
            .into_iter()
            .collect();
    assert_eq!(
        at_bank, receipts,
        "every hold at the bank is a receipt's authorization, and the reverse"
    );
    assert_eq!(
        rig.balances(HAPPY_CARD.0).await,
        (OPENING, OPENING - held),
        "available = balance - the authorized amounts: no orphan hold"
    );
    rig.assert_ledger_verifies().await;
    payments
}

/// Repeats `requests` with their keys: each answers `expected` (a final
/// answer) about the payment its key was for, and nothing new is created.
async fn assert_repeats_are_final(
    rig: &Rig,
    base: &str,
    requests: &[Request],
    expected: &[StatusCode],
) {
    let payments = rig.count("SELECT count(*) FROM payments").await;
    let operations = rig.count("SELECT count(*) FROM operations").await;
    let bank_calls = (
        rig.bank_count("authorizations").await,
        rig.bank_count("captures").await,
        rig.bank_count("refunds").await,
    );
    for (request, sent) in requests.iter().zip(send_all(rig, base, requests).await) {
        let answer = sent.expect("answered");
        assert!(
            expected.contains(&answer.status),
            "repeat of {} answered {}: {}",
            request.path,
            answer.status,
            answer.body
        );
        if answer.status == StatusCode::CONFLICT {
            assert!(
                answer.body["error"]["code"] == "authorization_abandoned",
                "the only final 409 is an abandoned authorization's: {}",
                answer.body
            );
        }
        let keyed = rig.payment_of_key(&request.key).await;
        assert_eq!(
            answered_payment(&answer.body),
            keyed.as_deref(),
            "the repeat is about the key's payment"
        );
    }
    assert_eq!(
        rig.count("SELECT count(*) FROM payments").await,
        payments,
        "no new payment"
    );
    assert_eq!(
        rig.count("SELECT count(*) FROM operations").await,
        operations,
        "no new operation"
    );
    let after = (
        rig.bank_count("authorizations").await,
        rig.bank_count("captures").await,
        rig.bank_count("refunds").await,
    );
    assert_eq!(after, bank_calls, "nothing new at the bank");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_30_authorizations_in_flight_then_restart_settles_each_with_the_bank() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(None, None).await;
    let launch = rig.launch();
    let mut first = launch.start().await;
    rig.set_chaos(slow_bank()).await;
    let requests: Vec<Request> = (0..IN_FLIGHT).map(Request::authorize).collect();
    kill_with_in_flight(&rig, &mut first, &requests, "pending").await;

    let second = launch.start().await;
    rig.until_none_in(&["pending"], SETTLE_BOUND).await;
    let payments = assert_authorizations_agree_with_the_bank(&rig).await;
    assert_eq!(payments.len(), IN_FLIGHT);
    let authorized = payments.iter().filter(|p| p.status == "authorized").count();
    eprintln!(
        "{authorized} authorized, {} abandoned",
        IN_FLIGHT - authorized
    );
    assert!(
        !second
            .messages("recovering an operation whose outcome is unknown")
            .is_empty(),
        "the restarted process's recovery worker did it"
    );

    assert_repeats_are_final(
        &rig,
        &second.base(),
        &requests,
        // A request the kill caught before it reached the bank was given
        // up after the grace period: 409 `authorization_abandoned`.
        &[
            StatusCode::CREATED,
            StatusCode::PAYMENT_REQUIRED,
            StatusCode::CONFLICT,
        ],
    )
    .await;
}

/// Authorizes (and captures, for a refund) 30 payments with the bank calm,
/// then `kill -9`s the process with 30 `action`s in flight, restarts it and
/// waits for recovery. Returns the rig, the restarted process and the
/// action requests.
async fn kill_9_with_operations_in_flight(
    action: &str,
    in_flight: &str,
    done: &str,
) -> (Rig, GatewayProcess, Vec<Request>) {
    let rig = Rig::new(None, None).await;
    let launch = rig.launch();
    let mut first = launch.start().await;
    let ids = authorize_all(&rig, &first.base(), IN_FLIGHT).await;
    if action == "refund" {
        let captures: Vec<Request> = ids.iter().map(|id| Request::act(id, "capture")).collect();
        for sent in send_all(&rig, &first.base(), &captures).await {
            assert_eq!(sent.expect("answered").status, StatusCode::OK);
        }
    }
    rig.set_chaos(slow_bank()).await;
    let requests: Vec<Request> = ids.iter().map(|id| Request::act(id, action)).collect();
    kill_with_in_flight(&rig, &mut first, &requests, in_flight).await;

    let second = launch.start().await;
    let payments = rig.until_none_in(&[in_flight], SETTLE_BOUND).await;
    for p in &payments {
        assert_eq!(p.status, done, "{p:?}");
    }
    (rig, second, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_30_captures_in_flight_then_restart_captures_each_exactly_once() {
    let _serial = SERIAL.lock().await;
    let (rig, second, requests) =
        kill_9_with_operations_in_flight("capture", "capturing", "captured").await;
    rig.set_chaos(calm_bank()).await;
    let captures: BTreeSet<String> = sqlx::query_scalar("SELECT 'cap_' || id::text FROM captures")
        .fetch_all(&rig.bank_pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(captures.len(), IN_FLIGHT, "exactly one capture per payment");
    let receipts: BTreeSet<String> = rig
        .payments()
        .await
        .into_iter()
        .filter_map(|p| p.bank_capture_id)
        .collect();
    assert_eq!(receipts, captures, "each receipt names the bank's capture");
    let captured = AMOUNT * i64::try_from(IN_FLIGHT).unwrap();
    assert_eq!(
        rig.balances(HAPPY_CARD.0).await,
        (OPENING - captured, OPENING - captured)
    );
    rig.assert_ledger_verifies().await;
    assert_repeats_are_final(&rig, &second.base(), &requests, &[StatusCode::OK]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_30_refunds_in_flight_then_restart_refunds_each_exactly_once() {
    let _serial = SERIAL.lock().await;
    let (rig, second, requests) =
        kill_9_with_operations_in_flight("refund", "refunding", "refunded").await;
    rig.set_chaos(calm_bank()).await;
    let refunds: BTreeSet<String> = sqlx::query_scalar("SELECT 'ref_' || id::text FROM refunds")
        .fetch_all(&rig.bank_pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(refunds.len(), IN_FLIGHT, "exactly one refund per payment");
    let receipts: BTreeSet<String> = rig
        .payments()
        .await
        .into_iter()
        .filter_map(|p| p.bank_refund_id)
        .collect();
    assert_eq!(receipts, refunds, "each receipt names the bank's refund");
    assert_eq!(rig.bank_count("captures").await, 30);
    assert_eq!(rig.balances(HAPPY_CARD.0).await, (OPENING, OPENING));
    rig.assert_ledger_verifies().await;
    assert_repeats_are_final(&rig, &second.base(), &requests, &[StatusCode::OK]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_recovering_one_backlog_never_send_an_operation_twice_at_once() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(None, None).await;
    // The backlog: 30 captures whose process died while the bank thought.
    let mut first = rig.launch().start().await;
    let ids = authorize_all(&rig, &first.base(), IN_FLIGHT).await;
    rig.set_chaos(slow_bank()).await;
    let requests: Vec<Request> = ids.iter().map(|id| Request::act(id, "capture")).collect();
    kill_with_in_flight(&rig, &mut first, &requests, "capturing").await;
    let backlog: BTreeMap<String, String> = sqlx::query_as(
        "SELECT bank_idempotency_key, id::text FROM operations WHERE status = 'pending'",
    )
    .fetch_all(&rig.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(backlog.len(), IN_FLIGHT);

    // Two processes, behind a proxy that records every bank request; small
    // batches so that both get work; a bank slow enough that their calls
    // would overlap if both took the same operation.
    rig.set_chaos(json!({"min_latency_ms": 200, "max_latency_ms": 400}))
        .await;
    let proxy = BankProxy::start(&rig.bank);
    let since = Instant::now();
    let launch = rig
        .launch()
        .bank(&proxy.url)
        .set("RECOVERY_BATCH", 4)
        .set("RECOVERY_INTERVAL_MS", 100);
    let (b, c) = tokio::join!(launch.start(), launch.start());
    let payments = rig.until_none_in(&["capturing"], SETTLE_BOUND).await;
    for p in &payments {
        assert_eq!(p.status, "captured", "{p:?}");
    }
    assert_eq!(
        rig.bank_count("captures").await,
        30,
        "one capture per payment"
    );

    // The bank's requests per key: every stuck operation was sent, and
    // never by two senders at once.
    let mut forwarded = Vec::new();
    for _ in 0..50 {
        forwarded = proxy.forwarded();
        if forwarded.iter().all(|f| f.ended.is_some()) {
            break;
        }
        tokio::time::sleep(harness::POLL).await;
    }
    let mut per_key: BTreeMap<String, Vec<(Instant, Instant)>> = BTreeMap::new();
    for f in forwarded.iter().filter(|f| f.started >= since) {
        assert_eq!(f.path, "/api/v1/captures", "only captures to resend: {f:?}");
        let key = f.key.clone().expect("every bank call has its key");
        let ended = f.ended.expect("every forwarded request ended");
        per_key.entry(key).or_default().push((f.started, ended));
    }
    assert_eq!(
        per_key.keys().collect::<BTreeSet<_>>(),
        backlog.keys().collect::<BTreeSet<_>>(),
        "each stuck operation was sent to the bank with its own key"
    );
    for (key, calls) in &mut per_key {
        calls.sort();
        for pair in calls.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "{key}: a second request started before the first ended ({} calls)",
                calls.len()
            );
        }
    }
    let most = per_key.values().map(Vec::len).max().unwrap_or(0);

    // Who recovered what, from the processes' own logs.
    let recovered = |p: &GatewayProcess| -> BTreeSet<String> {
        p.messages("recovering an operation whose outcome is unknown")
            .iter()
            .filter_map(|log| log["fields"]["operation_id"].as_str().map(str::to_owned))
            .collect()
    };
    let (by_b, by_c) = (recovered(&b), recovered(&c));
    eprintln!(
        "recovered by B: {}, by C: {}, by both (one after the other): {}; at most {most} bank calls per key",
        by_b.len(),
        by_c.len(),
        by_b.intersection(&by_c).count()
    );
    let all: BTreeSet<String> = by_b.union(&by_c).cloned().collect();
    assert_eq!(
        all,
        backlog.values().cloned().collect::<BTreeSet<_>>(),
        "every stuck operation was recovered"
    );
    assert!(
        !by_b.is_empty() && !by_c.is_empty(),
        "both processes took part, so the lease was contended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_whose_answers_never_arrive_gets_202s_then_the_worker_completes_them() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(None, None).await;
    let deadline = Duration::from_millis(1_500);
    let process = rig
        .launch()
        .set("BANK_ATTEMPT_TIMEOUT_MS", 500)
        .set("BANK_DEADLINE_MS", deadline.as_millis())
        .set("LEASE_MS", 2_000)
        .start()
        .await;
    let base = process.base();
    let ids = authorize_all(&rig, &base, 10).await;

    // Every answer is held after the bank committed: each attempt times out.
    rig.set_chaos(json!({"timeout_rate": 1.0, "timeout_ms": 3_000}))
        .await;
    let mut requests: Vec<Request> = (100..110).map(Request::authorize).collect();
    requests.extend(ids.iter().map(|id| Request::act(id, "capture")));
    for (request, sent) in requests.iter().zip(send_all(&rig, &base, &requests).await) {
        let answer = sent.expect("answered");
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "{}: {}",
            request.path,
            answer.body
        );
        let in_flight = if request.path == "/v1/payments" {
            "pending"
        } else {
            "capturing"
        };
        assert_eq!(answer.body["status"], in_flight);
        assert!(
            answer.elapsed < deadline + Duration::from_secs(3),
            "answered within a bound of the deadline, not {:?}",
            answer.elapsed
        );
    }
    // A while longer: the worker's attempts time out too, and nothing is
    // settled on a guess.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let payments = rig.payments().await;
    assert_eq!(
        payments
            .iter()
            .filter(|p| p.status == "pending" || p.status == "capturing")
            .count(),
        20,
        "{payments:?}"
    );

    rig.set_chaos(json!({"timeout_rate": 0.0})).await;
    let payments = rig
        .until_none_in(&["pending", "capturing"], SETTLE_BOUND)
        .await;
    let count = |status: &str| payments.iter().filter(|p| p.status == status).count();
    assert_eq!(
        (count("authorized"), count("captured")),
        (10, 10),
        "{payments:?}"
    );
    assert_eq!(rig.bank_count("authorizations").await, 20);
    assert_eq!(rig.bank_count("captures").await, 10);
    let captured = 10 * AMOUNT;
    assert_eq!(
        rig.balances(HAPPY_CARD.0).await,
        (OPENING - captured, OPENING - captured - 10 * AMOUNT)
    );
    rig.assert_ledger_verifies().await;
}

/// What the client must never see, whatever breaks.
fn assert_no_leak(answer: &Answer) {
    assert!(
        answer.status != StatusCode::INTERNAL_SERVER_ERROR,
        "a 500: {}",
        answer.body
    );
    let text = answer.body.to_string().to_lowercase();
    for leak in [
        "panicked",
        "sqlx",
        "postgres",
        "sqlstate",
        "pool timed out",
        "connection refused",
        "terminating connection",
        "stack backtrace",
    ] {
        assert!(!text.contains(leak), "{leak:?} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_load_503s_then_resumes_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let postgres = tokio::task::spawn_blocking(throwaway_pg::Postgres::throwaway)
        .await
        .unwrap()
        .expect("a private Postgres cluster");
    let postgres = Arc::new(postgres);
    let url = postgres.fresh_database("gateway").await.unwrap();
    let rig = Rig::new(
        Some(Box::new(|s: &mut mock_bank::Settings| {
            s.min_latency_ms = 100;
            s.max_latency_ms = 300;
        })),
        Some(url),
    )
    .await;
    let mut process = rig.launch().set("DB_ACQUIRE_TIMEOUT_MS", 500).start().await;
    let base = process.base();
    let operator = process.operator_base();

    // A light load: eight clients, each sending a payment every 20 ms with
    // its own key, so that some are between tx A and tx B when Postgres stops.
    let running = Arc::new(AtomicBool::new(true));
    let load: Vec<_> = (0..8)
        .map(|client| {
            let (rig, base, running) = (rig.clone(), base.clone(), Arc::clone(&running));
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut n = client * 1_000;
                while running.load(Ordering::Relaxed) {
                    let request = Request::authorize(n);
                    let answer = rig
                        .post(&base, &request.path, &request.key, &request.body)
                        .await;
                    sent.push((request, answer.map_err(|e| e.to_string())));
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sent
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Some requests must be inside a transaction when Postgres goes away,
    // not only between two: a lock that makes new payments wait holds them
    // in tx A (their key claimed, the payment not yet written).
    let mut blocker = rig.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE payments IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Arc::clone(&postgres);
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap()
        .expect("Postgres stops");
    drop(blocker);
    let mut ready = None;
    for _ in 0..50 {
        let response = rig
            .client
            .get(format!("{operator}/ready"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            ready = Some(response.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(harness::POLL).await;
    }
    let ready = ready.expect("/ready says 503 while the database is down");
    assert_eq!(ready["status"], "not_ready", "{ready}");
    let request = Request::authorize(10_000);
    let down = rig
        .post(&base, &request.path, &request.key, &request.body)
        .await
        .expect("answered while the database is down");
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.body
    );
    assert_eq!(down.body["error"]["code"], "service_unavailable");
    assert!(down.retry_after.is_some());
    assert!(
        down.elapsed < Duration::from_secs(5),
        "a quick 503, not a hanging request: {:?}",
        down.elapsed
    );
    assert_no_leak(&down);
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let starting = Arc::clone(&postgres);
    tokio::task::spawn_blocking(move || starting.start())
        .await
        .unwrap()
        .expect("Postgres starts again");
    let mut resumed = false;
    for n in 0..100 {
        let request = Request::authorize(20_000 + n);
        let answer = rig
            .post(&base, &request.path, &request.key, &request.body)
            .await
            .expect("answered");
        assert_no_leak(&answer);
        if answer.status == StatusCode::CREATED {
            resumed = true;
            break;
        }
        tokio::time::sleep(harness::POLL).await;
    }
    assert!(resumed, "service resumed by itself once Postgres was back");
    running.store(false, Ordering::Relaxed);
    let mut sent = Vec::new();
    for client in load {
        sent.extend(client.await.unwrap());
    }
    assert!(process.is_running(), "the gateway survived the outage");
    for log in process.logs() {
        if log["level"] == "ERROR" {
            eprintln!("gateway error log: {log}");
        }
    }

    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for (request, answer) in &sent {
        let answer = answer.as_ref().unwrap_or_else(|e| {
            panic!("{}: no answer at all: {e}", request.key);
        });
        assert_no_leak(answer);
        *statuses.entry(answer.status.as_u16()).or_default() += 1;
    }
    eprintln!("answers under load: {statuses:?}");
    assert!(
        statuses.contains_key(&503),
        "the load saw the outage: {statuses:?}"
    );

    // Everything acknowledged is in the receipts and, once settled, at the bank.
    rig.until_none_in(&["pending"], SETTLE_BOUND).await;
    let payments = assert_authorizations_agree_with_the_bank(&rig).await;
    for (request, answer) in &sent {
        let Ok(answer) = answer else { continue };
        if !answer.status.is_success() {
            continue;
        }
        let id = answered_payment(&answer.body).expect("a 2xx names its payment");
        let receipt = payments.iter().find(|p| p.id == id).unwrap_or_else(|| {
            panic!(
                "{id} acknowledged ({}) but not in the receipts",
                answer.status
            )
        });
        if answer.status == StatusCode::CREATED {
            assert_eq!(receipt.status, "authorized", "{receipt:?}");
        }
        assert_eq!(rig.payment_of_key(&request.key).await.as_deref(), Some(id));
    }
    // A client that got a 503 retries with its key: a final answer, and no
    // second payment for a request the gateway had already recorded.
    let retried: Vec<Request> = sent
        .iter()
        .filter(|(_, answer)| {
            answer
                .as_ref()
                .is_ok_and(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        })
        .map(|(request, _)| request.clone())
        .collect();
    for (request, sent) in retried.iter().zip(send_all(&rig, &base, &retried).await) {
        let before = rig.payment_of_key(&request.key).await;
        let answer = sent.expect("answered");
        assert!(
            answer.status == StatusCode::CREATED || answer.status == StatusCode::PAYMENT_REQUIRED,
            "retry after a 503: {} {}",
            answer.status,
            answer.body
        );
        if let Some(before) = before {
            assert_eq!(answered_payment(&answer.body), Some(before.as_str()));
        }
    }
    assert_authorizations_agree_with_the_bank(&rig).await;
    drop(process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_every_acknowledged_payment_is_at_the_bank() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(None, None).await;
    let launch = rig.launch();
    let mut first = launch.start().await;
    rig.set_chaos(json!({"min_latency_ms": 300, "max_latency_ms": 800}))
        .await;
    let requests: Vec<Request> = (0..IN_FLIGHT).map(Request::authorize).collect();
    let handles = fire(&rig, &first.base(), &requests);
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.terminate();
    let status = first.wait(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit status {status}: {}",
        first.stderr_text()
    );
    assert!(!first.messages("leases released").is_empty());
    assert!(!first.messages("gateway stopped").is_empty());
    let sent = gather(handles).await;

    rig.set_chaos(calm_bank()).await;
    let mut acknowledged = 0;
    for (request, sent) in requests.iter().zip(&sent) {
        let Ok(answer) = sent else { continue };
        assert_no_leak(answer);
        if !answer.status.is_success() {
            continue;
        }
        acknowledged += 1;
        let id = answered_payment(&answer.body).expect("a 2xx names its payment");
        assert_eq!(rig.payment_of_key(&request.key).await.as_deref(), Some(id));
        if answer.status == StatusCode::CREATED {
            let authorization = answer.body["bank"]["authorization_id"]
                .as_str()
                .expect("an authorization id");
            let (status, at_bank) = rig.bank_authorization(authorization).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{id} acknowledged, unknown to the bank"
            );
            assert_eq!(at_bank["state"], "active");
        }
    }
    eprintln!("{acknowledged} of {IN_FLIGHT} acknowledged before the process stopped");
    assert!(acknowledged > 0, "SIGTERM let in-flight requests finish");

    // Whatever was left unknown is settled after a restart.
    let _second = launch.start().await;
    rig.until_none_in(&["pending"], SETTLE_BOUND).await;
    assert_authorizations_agree_with_the_bank(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_outage_opens_the_circuit_then_it_closes_by_itself() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(None, None).await;
    let attempt_timeout = Duration::from_millis(2_000);
    let process = rig
        .launch()
        .set("CIRCUIT_FAILURE_THRESHOLD", 3)
        .set("CIRCUIT_OPEN_MS", 1_000)
        .set("BANK_ATTEMPT_TIMEOUT_MS", attempt_timeout.as_millis())
        .start()
        .await;
    let base = process.base();
    let operator = process.operator_base();
    rig.set_chaos(json!({"outage_seconds": 5})).await;

    let mut answers = Vec::new();
    let mut refused = Vec::new();
    for n in 0..50 {
        let request = Request::authorize(n);
        let answer = rig
            .post(&base, &request.path, &request.key, &request.body)
            .await
            .expect("answered");
        assert_no_leak(&answer);
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                answer.body["error"]["code"], "bank_unavailable",
                "{}",
                answer.body
            );
            assert!(answer.retry_after.is_some(), "503 with Retry-After");
            refused.push(answer.elapsed);
        } else {
            assert!(
                answer.status == StatusCode::ACCEPTED,
                "before the circuit opened: {} {}",
                answer.status,
                answer.body
            );
        }
        answers.push(answer);
        if refused.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused.len() >= 5, "the circuit opened: {answers:?}");
    for elapsed in &refused {
        assert!(
            *elapsed < attempt_timeout,
            "a refusal took {elapsed:?}, not well under the attempt timeout"
        );
    }
    let mut ready: Value = rig
        .client
        .get(format!("{operator}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(ready["circuit"], "closed", "{ready}");

    // After the outage a probe closes it; no client did anything special.
    let mut created = None;
    for n in 100..250 {
        let request = Request::authorize(n);
        let answer = rig
            .post(&base, &request.path, &request.key, &request.body)
            .await
            .expect("answered");
        assert_no_leak(&answer);
        if answer.status == StatusCode::CREATED {
            created = Some(answer);
            break;
        }
        answers.push(answer);
        tokio::time::sleep(harness::POLL).await;
    }
    assert!(created.is_some(), "a payment went through after the outage");
    ready = rig
        .client
        .get(format!("{operator}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["circuit"], "closed", "{ready}");

    // A refusal created nothing: the receipts are the 2xx answers.
    let acknowledged = answers.iter().filter(|a| a.status.is_success()).count() + 1;
    assert_eq!(
        rig.count("SELECT count(*) FROM payments").await,
        i64::try_from(acknowledged).unwrap()
    );
    rig.until_none_in(&["pending"], SETTLE_BOUND).await;
    assert_authorizations_agree_with_the_bank(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_database_url_as_a_flag_with_settings_in_the_environment() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(None, None).await;
    // `LEASE_MS` and the rest in the environment, `--database-url` as a flag.
    let process = rig.launch().database_url_as_flag_only().start().await;
    let ready = rig
        .client
        .get(format!("{}/ready", process.operator_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

/// SIGTERM in the middle of a reconciliation pass hands the turn back with
/// the operations' leases: the replica that polls next runs the pass at
/// once instead of waiting out the turn's lease (two minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_reconciliation_pass_hands_the_turn_back() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(None, None).await;
    let mut first = rig
        .launch()
        .set("RECONCILE_INTERVAL_MS", 200)
        .set("RECONCILE_SWEEP_INTERVAL_MS", 0)
        .start()
        .await;
    let requests: Vec<Request> = (0..8).map(Request::authorize).collect();
    for sent in send_all(&rig, &first.base(), &requests).await {
        assert_eq!(sent.expect("answered").status, StatusCode::CREATED);
    }
    // Each of the pass's lookups now takes seconds: the pass is under way
    // when the process is told to stop.
    rig.set_chaos(json!({"min_latency_ms": 3000, "max_latency_ms": 3000}))
        .await;
    let held = || async {
        sqlx::query_scalar::<_, bool>("SELECT held_until > now() FROM reconcile_turn")
            .fetch_one(&rig.pool)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held().await {
        assert!(Instant::now() < deadline, "no pass took the turn");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.terminate();
    let status = first.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert!(!held().await, "the stopped replica still holds the turn");
    rig.set_chaos(calm_bank()).await;
}
