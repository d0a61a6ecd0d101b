//! `simulator run` as a property: seeded scenarios (proptest strategies)
//! against the real gateway binary, killed with SIGKILL, on a bank that
//! loses answers; every invariant must hold. And the other direction: a
//! broken system must fail the right invariant, or the checks prove nothing.
//!
//! The tests share the bank's chaos settings, so they take turns.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::FutureExt;
use serde_json::{Value, json};
use simulator::run::{RunOptions, Session};
use simulator::run_report::RunReport;
use simulator::scenario::{
    self, ClientKind, Duplicate, FaultPlan, Misuse, Next, Params, PaymentPlan, PlanKind, Profile,
    Scenario,
};
use simulator::simulate::{shrink, simulate, stack_options};
use simulator::stack::Stack;

/// Cases of the property; `SIMULATOR_CASES` asks for more.
const CASES: u64 = 4;
/// Runs a failing case may spend on shrinking.
const SHRINK_BUDGET: usize = 6;

static TURN: Mutex<()> = Mutex::new(());

/// The gateways' logs of every run here. A failed run keeps its logs, and
/// several tests fail runs on purpose: the directory is removed after each
/// test that passes, and kept for reading after one that fails.
fn log_dir() -> PathBuf {
    std::env::temp_dir().join(format!("ficmart-test-run-{}", std::process::id()))
}

fn options() -> RunOptions {
    std::fs::create_dir_all(log_dir()).expect("the log directory can be made");
    RunOptions {
        concurrency: 8,
        program: Some(PathBuf::from(env!("CARGO_BIN_EXE_simulator"))),
        log_dir: Some(log_dir()),
        quiesce_timeout: Duration::from_secs(60),
        ..RunOptions::default()
    }
}

/// Runs `test` on a fresh stack, on a runtime of its own, in turn; the
/// stack is shut down (its Postgres removed) even when the test panics.
fn with_stack(test: impl AsyncFnOnce(&Stack)) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let stack = Stack::start(&stack_options())
            .await
            .expect("the stack starts");
        let outcome = AssertUnwindSafe(test(&stack)).catch_unwind().await;
        stack.shutdown().await;
        if let Err(panic) = outcome {
            eprintln!("the gateways' logs are kept in {}", log_dir().display());
            std::panic::resume_unwind(panic);
        }
        std::fs::remove_dir_all(log_dir()).ok();
    });
}

fn failed(report: &RunReport) -> Vec<&'static str> {
    report
        .invariants
        .iter()
        .filter(|i| !i.passed)
        .map(|i| i.name)
        .collect()
}

#[test]
fn seeded_scenarios_with_lost_answers_and_a_crash_keep_every_invariant() {
    let cases = std::env::var("SIMULATOR_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    let base: u64 = std::env::var("SIMULATOR_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_240_601);
    let params = Params {
        payments: 30..=30,
        cards: 4,
        profiles: vec![
            Profile::parse("lossy").unwrap(),
            Profile::parse("calm").unwrap(),
        ],
        kill_every_ms: None,
        random_kills: 1,
        // Kills fall in 0.2–1 s: while the traffic runs.
        horizon_ms: 1_000,
    };
    with_stack(async |stack| {
        let (mut restarts, mut through_client) = (0, 0);
        for seed in base..base + cases {
            let scenario = scenario::generate(seed, &params);
            let report = simulate(stack, scenario.clone(), options())
                .await
                .expect("the simulation runs");
            eprintln!(
                "case {}: {} restart(s), {} requests, {}",
                scenario.headline(),
                report.restarts,
                report.requests,
                if report.passed { "PASS" } else { "FAIL" }
            );
            restarts += report.restarts;
            through_client += report.requests_through_client;
            let card_data = report
                .invariants
                .iter()
                .find(|i| i.name == "card data")
                .expect("the card-data check runs");
            // More than the answers: the dump's rows and the logs' lines too.
            assert!(card_data.checked > report.requests, "{report}");
            if report.passed {
                continue;
            }
            let (smallest, small_report) =
                shrink(stack, scenario, report.clone(), &options(), SHRINK_BUDGET).await;
            panic!(
                "seed {seed} violates {:?}\n{report}\nshrunk to:\n{smallest}\n{small_report}",
                failed(&report)
            );
        }
        assert!(
            restarts > 0,
            "no case killed a gateway: the cases prove less than they say"
        );
        // Patient clients are the ficmart-client crate: the checks judge
        // what it sent, through the same kills and lost answers.
        assert!(
            through_client > 0,
            "no request went through the client crate"
        );
    });
}

fn plain(n: usize) -> Scenario {
    Scenario {
        seed: 7,
        profile: Profile::parse("calm").unwrap(),
        cards: 2,
        payments: (0..n)
            .map(|i| PaymentPlan {
                customer: 1,
                card: u16::try_from(i % 2).unwrap(),
                amount: 1_000 + i64::try_from(i).unwrap(),
                kind: PlanKind::Normal {
                    next: Next::Nothing,
                    refund: false,
                },
                duplicate: Duplicate::None,
                reads: false,
                client: ClientKind::Patient,
                misuse: Misuse::None,
                merchant: 0,
                late_replay: false,
            })
            .collect(),
        faults: FaultPlan::default(),
    }
}

/// Someone captures at the bank behind the gateway's back: the receipt
/// says authorized, the bank says captured. Reconciliation must see it
/// (convergence), and the card's money no longer matches the receipts
/// (conservation); nothing else is wrong.
#[test]
fn a_capture_the_gateway_never_made_fails_convergence_and_conservation() {
    with_stack(async |stack| {
        let mut session = Session::start(stack, plain(4), options()).await.unwrap();
        session.drive().await.unwrap();
        session.settle().await.unwrap();
        capture_behind_the_gateway(&session).await;
        let observations = session.observe().await.unwrap();
        let report = session.finish(&observations).await;
        assert_eq!(failed(&report), ["convergence", "conservation"], "{report}");
        assert!(!report.passed);
    });
}

/// The same capture, with the gateways' background reconciliation on
/// (`--reconcile-every`): one of the two replicas takes the turn, its sweep
/// moves the receipt forward, and every invariant holds again.
#[test]
fn with_reconciliation_on_a_capture_behind_the_gateway_is_repaired() {
    with_stack(async |stack| {
        let options = RunOptions {
            replicas: 2,
            reconcile_every: Some(Duration::from_millis(200)),
            ..options()
        };
        let mut session = Session::start(stack, plain(4), options).await.unwrap();
        session.drive().await.unwrap();
        session.settle().await.unwrap();
        capture_behind_the_gateway(&session).await;
        let pool = sqlx::PgPool::connect(session.gateway_database())
            .await
            .unwrap();
        let mut captured = 0;
        for _ in 0..100 {
            captured = sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM payments WHERE status = 'captured'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if captured > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(captured, 1, "the sweep never repaired the receipt");
        let observations = session.observe().await.unwrap();
        let report = session.finish(&observations).await;
        assert!(report.passed, "{report}");
    });
}

/// The bank's console acts while the clients do (`--console-waves`): it
/// captures or voids authorized payments and refunds captured ones behind
/// the gateway, some of them between a client's authorization and its
/// capture. With reconciliation on, every receipt ends where the bank is
/// and every answer stays honest: a client's capture of a payment the
/// console voided is a 409, not a server error.
#[test]
fn the_banks_console_acting_beside_the_clients_is_caught_up_with() {
    with_stack(async |stack| {
        let mut scenario = plain(60);
        for (i, plan) in scenario.payments.iter_mut().enumerate() {
            let next = [Next::Nothing, Next::Capture, Next::Void][i % 3];
            plan.kind = PlanKind::Normal {
                next,
                refund: i % 6 == 1,
            };
        }
        scenario.faults.console_waves = vec![300, 600];
        let options = RunOptions {
            replicas: 2,
            reconcile_every: Some(Duration::from_millis(200)),
            ..options()
        };
        let report = simulate(stack, scenario, options).await.unwrap();
        assert!(report.passed, "{report}");
        let waves: Vec<&str> = report
            .events
            .iter()
            .filter(|e| e.kind == "console_wave")
            .map(|e| e.detail.as_str())
            .collect();
        assert_eq!(waves.len(), 2, "{waves:?}");
        assert!(
            waves
                .iter()
                .any(|w| !w.contains("captured 0, voided 0 and refunded 0")),
            "the console did nothing: {waves:?}"
        );
    });
}

/// Captures the first authorized payment's whole amount at the bank, behind
/// the gateway's back.
async fn capture_behind_the_gateway(session: &Session) {
    let (authorization, amount) = session
        .flows
        .iter()
        .flat_map(|f| &f.exchanges)
        .find_map(|e| {
            (e.status() == Some(201)).then(|| {
                let payment = e.json()?;
                let authorization = payment["bank"]["authorization_id"].as_str()?.to_owned();
                Some((authorization, payment["amount"].as_i64()?))
            })?
        })
        .expect("an authorized payment");
    let captured = reqwest::Client::new()
        .post(format!("{}/api/v1/captures", session.bank_url()))
        .header("Idempotency-Key", "behind-the-gateway")
        .json(&json!({"authorization_id": authorization, "amount": amount}))
        .send()
        .await
        .unwrap();
    let status = captured.status();
    let body: Value = captured.json().await.unwrap();
    assert!(status.is_success(), "{status} {body}");
}

/// A card number written into the gateway's database behind its back (as
/// a leaking gateway would) fails the card-data check, and nothing else.
#[test]
fn a_card_number_in_the_gateways_database_fails_card_data() {
    with_stack(async |stack| {
        let mut session = Session::start(stack, plain(2), options()).await.unwrap();
        session.drive().await.unwrap();
        session.settle().await.unwrap();
        let number = session.flows[1].card_number.clone().expect("a card");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(session.gateway_database())
            .await
            .unwrap();
        sqlx::query("UPDATE operations SET last_error = $1")
            .bind(format!("bank said no to {number}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let observations = session.observe().await.unwrap();
        let report = session.finish(&observations).await;
        assert_eq!(failed(&report), ["card data"], "{report}");
        let last4 = &number[number.len() - 4..];
        assert!(
            report
                .to_string()
                .contains(&format!("table operations: card number …{last4} appears")),
            "{report}"
        );
        assert!(!report.to_string().contains(&number), "{report}");
    });
}

/// A proxy between the gateway and the bank that gives every bank POST a
/// fresh idempotency key: the gateway as it would be if it used a new bank
/// key per retry (the bug the bank key exists to prevent). With the bank
/// losing half its answers after committing, retried authorizations
/// become second authorizations.
async fn key_rewriting_proxy(bank: String) -> String {
    let http = reqwest::Client::new();
    let server = HttpServer::new(move || {
        let (http, bank) = (http.clone(), bank.clone());
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let (http, bank) = (http.clone(), bank.clone());
            async move {
                let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
                    .unwrap_or(reqwest::Method::GET);
                let mut forward = http
                    .request(method.clone(), format!("{bank}{}", req.uri()))
                    .header("Content-Type", "application/json")
                    .body(body.to_vec());
                if method == reqwest::Method::POST {
                    forward = forward.header(
                        "Idempotency-Key",
                        format!("fresh-{:016x}", rand::random::<u64>()),
                    );
                }
                match forward.send().await {
                    Ok(response) => {
                        let status =
                            actix_web::http::StatusCode::from_u16(response.status().as_u16())
                                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
                        let bytes = response.bytes().await.unwrap_or_default();
                        HttpResponse::build(status)
                            .content_type("application/json")
                            .body(bytes)
                    }
                    Err(_) => HttpResponse::BadGateway().finish(),
                }
            }
        }))
    })
    .workers(2)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    format!("http://127.0.0.1:{port}")
}

#[test]
fn a_gateway_with_a_fresh_bank_key_per_retry_fails_no_orphan_money_movement_and_shrinks() {
    with_stack(async |stack| {
        let mut scenario = plain(8);
        scenario.profile =
            Profile::parse(r#"{"error_after_commit_rate": 0.5}"#).expect("a JSON profile");
        let options = RunOptions {
            gateway_bank_url: Some(key_rewriting_proxy(stack.urls().bank.clone()).await),
            ..options()
        };
        let report = simulate(stack, scenario.clone(), options.clone())
            .await
            .unwrap();
        let failed_first = failed(&report);
        assert!(
            failed_first.contains(&"no orphan money movement"),
            "{report}"
        );
        assert!(failed_first.contains(&"conservation"), "{report}");
        assert!(!failed_first.contains(&"legality"), "{report}");
        let (smallest, small_report) = shrink(stack, scenario, report, &options, 10).await;
        eprintln!("shrunk to:\n{smallest}\n{small_report}");
        assert!(!small_report.passed);
        assert!(
            failed(&small_report).contains(&"no orphan money movement"),
            "{small_report}"
        );
        assert!(smallest.payments.len() < 8, "{smallest}");
        assert!(smallest.to_string().lines().count() <= 2, "{smallest}");
    });
}
