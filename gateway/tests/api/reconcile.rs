//! Reconciliation against the real mock bank: a clean run matches, a
//! receipt behind the bank is repaired along legal steps, a receipt that
//! claims what the bank never did is reported and left alone, an
//! unreachable bank proves nothing; and the `gateway reconcile` binary.

use std::process::{Command, Output};
use std::time::Duration;

use chrono::Utc;
use gateway::bank::{BankClient, RetryPolicy};
use gateway::reconcile::{Cadence, Outcome, Report, Scope, due, pass, reconcile, turn};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// A gateway whose own background reconciliation stays out of the way.
async fn app() -> TestApp {
    spawn_app_with(Options {
        gateway: Some(Box::new(|settings| settings.reconcile_interval_ms = 0)),
        ..Options::default()
    })
    .await
}

async fn run(app: &TestApp, repair: bool) -> Report {
    pass_of(app, Scope::All, repair).await
}

/// A bank nothing answers for (nothing listens on port 1), given up on
/// quickly.
fn unreachable_bank() -> BankClient {
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(200),
        deadline: Duration::from_millis(500),
        max_attempts: 2,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
    };
    bank_at("http://127.0.0.1:1", policy)
}

async fn moved(app: &TestApp, id: &str, action: &str) -> Value {
    let response = app.act(id, action).await;
    assert_eq!(response.status(), StatusCode::OK, "{action} {id}");
    response.json().await.unwrap()
}

fn history(payment: &Value) -> Vec<String> {
    payment["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap().to_owned())
        .collect()
}

fn bank_id(payment: &Value, name: &str) -> String {
    payment["bank"][name].as_str().unwrap().to_owned()
}

/// Authorized, captured, voided, refunded and declined payments, made
/// through the API. Answers their ids in that order.
async fn payments_in_every_settled_state(app: &TestApp) -> [String; 5] {
    let mut ids = Vec::new();
    for action in [None, Some("capture"), Some("void"), Some("refund")] {
        let payment = app.authorized(HAPPY_CARD, 1_000).await;
        let id = payment["id"].as_str().unwrap().to_owned();
        if action == Some("refund") {
            moved(app, &id, "capture").await;
        }
        if let Some(action) = action {
            moved(app, &id, action).await;
        }
        ids.push(id);
    }
    let declined = app.create_payment(EMPTY_CARD, 1_000).await;
    assert_eq!(declined.status(), StatusCode::PAYMENT_REQUIRED);
    let declined: Value = declined.json().await.unwrap();
    ids.push(declined["error"]["payment_id"].as_str().unwrap().to_owned());
    ids.try_into().unwrap()
}

/// Moves a receipt along legal steps in SQL, without the bank: the kind of
/// edit a bug or a careless person could make. `set` adds columns to the
/// last step's UPDATE.
async fn forge(app: &TestApp, id: &str, steps: &[&str], set: &str) {
    let uuid = uuid_of(id);
    let mut tx = app.pool.begin().await.unwrap();
    for (i, to) in steps.iter().enumerate() {
        let extra = if i + 1 == steps.len() { set } else { "" };
        let from: String = sqlx::query_scalar(&format!(
            "UPDATE payments p SET status = $2::payment_status {extra} \
             FROM payments old WHERE p.id = $1 AND old.id = p.id RETURNING old.status::text"
        ))
        .bind(uuid)
        .bind(to)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO payment_events (payment_id, from_status, to_status) \
             VALUES ($1, $2::payment_status, $3::payment_status)",
        )
        .bind(uuid)
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

fn gateway_reconcile(app: &TestApp, extra: &[&str]) -> Output {
    Command::new(GATEWAY)
        .args(["reconcile", "--since", "1h", "--database-url"])
        .arg(&app.database_url)
        .args(["--bank-url", &app.bank_address])
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove("BANK_URL")
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_clean_run_matches_every_payment() {
    let app = app().await;
    payments_in_every_settled_state(&app).await;

    let report = run(&app, true).await;
    assert_eq!(report.counts.checked, 5, "{report:#?}");
    assert_eq!(report.counts.matched, 5, "{report:#?}");
    assert!(report.entries.is_empty(), "{report:#?}");
    assert_eq!(report.left_over(), 0);

    // Payments older than `since` are not looked at.
    let bank = bank_at(&app.bank_address, RetryPolicy::default());
    let later = reconcile(&app.pool, &bank, Utc::now(), true).await.unwrap();
    assert_eq!(later.counts.checked, 0);
}

#[tokio::test]
async fn receipts_behind_the_bank_are_repaired_along_legal_steps() {
    let app = app().await;
    let [to_capture, _, _, _, _] = payments_in_every_settled_state(&app).await;
    let to_void = app.authorized(HAPPY_CARD, 700).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let to_expire = app.authorized(HAPPY_CARD, 800).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let to_refund = moved(
        &app,
        app.authorized(HAPPY_CARD, 900).await["id"]
            .as_str()
            .unwrap(),
        "capture",
    )
    .await;
    let to_refund = to_refund["id"].as_str().unwrap().to_owned();

    let auth = |payment: &Value| bank_id(payment, "authorization_id");
    let capture = app
        .at_bank(
            "/api/v1/captures",
            json!({"authorization_id": auth(&app.payment(&to_capture).await), "amount": 1_000}),
        )
        .await;
    let void = app
        .at_bank(
            "/api/v1/voids",
            json!({"authorization_id": auth(&app.payment(&to_void).await)}),
        )
        .await;
    app.at_bank(
        &format!(
            "/admin/authorizations/{}/expire",
            auth(&app.payment(&to_expire).await)
        ),
        json!({}),
    )
    .await;
    let refund = app.at_bank("/api/v1/refunds",
        json!({"capture_id": bank_id(&app.payment(&to_refund).await, "capture_id"), "amount": 900}),
    )
    .await;

    // A dry run says what it would do and writes nothing.
    let dry = run(&app, false).await;
    assert_eq!(dry.counts.repairable, 4, "{dry:#?}");
    assert_eq!(dry.counts.matched, 4, "{dry:#?}");
    assert_eq!(dry.left_over(), 4);
    assert_eq!(app.payment(&to_capture).await["status"], "authorized");

    let report = run(&app, true).await;
    assert_eq!(report.counts.repaired, 4, "{report:#?}");
    assert_eq!(report.counts.mismatch, 0, "{report:#?}");
    assert_eq!(report.left_over(), 0);
    let entry = report
        .entries
        .iter()
        .find(|e| e.payment_id == to_capture)
        .unwrap();
    assert_eq!(entry.outcome, Outcome::Repaired);
    assert_eq!(entry.gateway_status.as_str(), "authorized");
    assert!(entry.bank.contains("captured"), "{}", entry.bank);

    let captured = app.payment(&to_capture).await;
    assert_eq!(captured["status"], "captured");
    assert_eq!(captured["bank"]["capture_id"], capture["capture_id"]);
    assert_eq!(
        history(&captured),
        ["pending", "authorized", "capturing", "captured"]
    );
    let voided = app.payment(&to_void).await;
    assert_eq!(voided["status"], "voided");
    assert_eq!(voided["bank"]["void_id"], void["void_id"]);
    assert_eq!(
        history(&voided),
        ["pending", "authorized", "voiding", "voided"]
    );
    let expired = app.payment(&to_expire).await;
    assert_eq!(history(&expired), ["pending", "authorized", "expired"]);
    let refunded = app.payment(&to_refund).await;
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(refunded["bank"]["refund_id"], refund["refund_id"]);
    assert_eq!(
        history(&refunded),
        [
            "pending",
            "authorized",
            "capturing",
            "captured",
            "refunding",
            "refunded"
        ]
    );

    let again = run(&app, true).await;
    assert_eq!(again.counts.matched, again.counts.checked, "{again:#?}");
    assert_eq!(again.counts.checked, 8);
}

#[tokio::test]
async fn claims_the_bank_never_made_are_reported_and_left_alone() {
    let app = app().await;
    let [authorized, captured, _, _, _] = payments_in_every_settled_state(&app).await;
    let fake_capture = format!("cap_{}", Uuid::new_v4());
    forge(
        &app,
        &authorized,
        &["capturing", "captured"],
        &format!(", bank_capture_id = '{fake_capture}'"),
    )
    .await;
    let fake_refund = format!("ref_{}", Uuid::new_v4());
    forge(
        &app,
        &captured,
        &["refunding", "refunded"],
        &format!(", bank_refund_id = '{fake_refund}'"),
    )
    .await;
    // In flight: left to the recovery worker, not compared.
    let in_flight = app.authorized(HAPPY_CARD, 300).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    forge(&app, &in_flight, &["voiding"], "").await;
    let before = [app.payment(&authorized).await, app.payment(&captured).await];

    let report = run(&app, true).await;
    assert_eq!(report.counts.mismatch, 2, "{report:#?}");
    assert_eq!(report.counts.in_flight, 1, "{report:#?}");
    assert_eq!(report.counts.repaired, 0, "{report:#?}");
    assert_eq!(report.counts.matched, 3, "{report:#?}");
    assert_eq!(report.left_over(), 2);
    let mismatch = report
        .entries
        .iter()
        .find(|e| e.payment_id == authorized)
        .unwrap();
    assert_eq!(mismatch.outcome, Outcome::Mismatch);
    assert!(mismatch.gateway.contains(&fake_capture), "{mismatch:?}");
    assert!(mismatch.bank.ends_with("active"), "{mismatch:?}");
    assert!(
        mismatch.reason.as_deref().unwrap().contains(&fake_capture),
        "{mismatch:?}"
    );
    let mismatch = report
        .entries
        .iter()
        .find(|e| e.payment_id == captured)
        .unwrap();
    assert!(
        mismatch.reason.as_deref().unwrap().contains(&fake_refund),
        "{mismatch:?}"
    );
    let after = [app.payment(&authorized).await, app.payment(&captured).await];
    assert_eq!(before, after, "a mismatch is never repaired");

    // The binary says the same, and fails.
    let output = gateway_reconcile(&app, &["--json"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["counts"]["mismatch"], 2, "{json}");
    assert_eq!(json["counts"]["in_flight"], 1, "{json}");
    assert_eq!(json["counts"]["checked"], 6, "{json}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("2 mismatch"));

    let output = gateway_reconcile(&app, &[]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("mismatches (left for a person)"), "{text}");
    assert!(
        text.contains(&authorized) && text.contains(&fake_capture),
        "{text}"
    );
}

#[tokio::test]
async fn the_binary_exits_zero_when_all_match_and_repairs_unless_dry_run() {
    let app = app().await;
    let [authorized, _, _, _, _] = payments_in_every_settled_state(&app).await;

    let output = gateway_reconcile(&app, &["--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["counts"]["checked"], 5, "{json}");
    assert_eq!(json["counts"]["matched"], 5, "{json}");
    assert_eq!(json["entries"], json!([]));

    let auth = bank_id(&app.payment(&authorized).await, "authorization_id");
    app.at_bank("/api/v1/voids", json!({"authorization_id": auth}))
        .await;
    let dry = gateway_reconcile(&app, &["--json", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(1), "a repair not made is left over");
    let json: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(json["counts"]["repairable"], 1, "{json}");
    assert_eq!(json["entries"][0]["path"], json!(["voiding", "voided"]));
    assert_eq!(app.payment(&authorized).await["status"], "authorized");

    let output = gateway_reconcile(&app, &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("repaired 1"), "{text}");
    assert!(text.contains("authorized -> voiding -> voided"), "{text}");
    assert_eq!(app.payment(&authorized).await["status"], "voided");

    // Every run with repair on remembered what matched; the repaired one
    // moved since, so the background's scope asks about it alone.
    let due = gateway_reconcile(&app, &["--json", "--scope", "due"]);
    assert_eq!(due.status.code(), Some(0), "{due:?}");
    let json: Value = serde_json::from_slice(&due.stdout).unwrap();
    assert_eq!(
        (json["scope"].clone(), json["counts"]["checked"].clone()),
        (json!("due"), json!(1))
    );

    let usage = gateway_reconcile(&app, &["--since", "yesterday"]);
    assert_eq!(usage.status.code(), Some(2));
    let usage = gateway_reconcile(&app, &["--scope", "some"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test]
async fn an_unreachable_bank_leaves_payments_unverified() {
    let app = app().await;
    payments_in_every_settled_state(&app).await;
    let report = pass_with(&app, &unreachable_bank(), Scope::All, true).await;
    // The declined payment names no authorization: nothing to ask.
    assert_eq!(report.counts.matched, 1, "{report:#?}");
    assert_eq!(report.counts.unverified, 4, "{report:#?}");
    assert_eq!(report.counts.mismatch, 0);
    assert_eq!(report.left_over(), 4);
    assert!(
        report
            .entries
            .iter()
            .all(|e| e.bank == "unknown" && e.reason.is_some()),
        "{report:#?}"
    );
}

/// Makes these payments three days old: out of every pass's window.
async fn made_days_ago(app: &TestApp, ids: &[&str]) {
    sqlx::query("UPDATE payments SET created_at = now() - interval '3 days' WHERE id = ANY($1)")
        .bind(ids.iter().map(|id| uuid_of(id)).collect::<Vec<_>>())
        .execute(&app.pool)
        .await
        .unwrap();
}

fn checked(report: &Report) -> (u64, u64) {
    (report.counts.checked, report.counts.matched)
}

/// A new authorized payment of $10.00, by its id.
async fn authorized_id(app: &TestApp) -> String {
    app.authorized(HAPPY_CARD, 1_000).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Captures the payment's whole authorization at the bank, not through
/// the gateway. Answers the bank's capture id.
async fn captured_at_bank(app: &TestApp, id: &str) -> String {
    let auth = bank_id(&app.payment(id).await, "authorization_id");
    let capture = app
        .at_bank(
            "/api/v1/captures",
            json!({"authorization_id": auth, "amount": 1_000}),
        )
        .await;
    capture["capture_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_due_pass_asks_only_about_what_is_new_or_moved_since_it_matched() {
    let app = app().await;
    let [authorized, ..] = payments_in_every_settled_state(&app).await;

    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (5, 5));
    // Nothing moved: nothing to ask.
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (0, 0));

    // A move through the API makes that one payment due again; a new
    // payment is due as it is.
    moved(&app, &authorized, "capture").await;
    app.authorized(HAPPY_CARD, 1_000).await;
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (2, 2));
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (0, 0));

    // The audit still reads everything, and the sweep everything the bank
    // can move alone: the two captured payments and the new authorized one.
    assert_eq!(checked(&pass_of(&app, Scope::All, true).await), (6, 6));
    assert_eq!(checked(&pass_of(&app, Scope::Sweep, true).await), (3, 3));
}

#[tokio::test]
async fn a_change_made_at_the_bank_alone_waits_for_the_sweep() {
    let app = app().await;
    let id = authorized_id(&app).await;
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (1, 1));

    captured_at_bank(&app, &id).await;
    // The receipt did not move, so a due pass does not ask: the price of
    // not asking the bank about every payment every pass.
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (0, 0));
    assert_eq!(app.payment(&id).await["status"], "authorized");

    let sweep = pass_of(&app, Scope::Sweep, true).await;
    assert_eq!(sweep.counts.repaired, 1, "{sweep:#?}");
    assert_eq!(app.payment(&id).await["status"], "captured");
    // The repair moved it: the next due pass confirms the repair.
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (1, 1));
}

#[tokio::test]
async fn what_did_not_match_stays_due_and_a_dry_run_remembers_nothing() {
    let app = app().await;
    let [authorized, ..] = payments_in_every_settled_state(&app).await;
    // A dry run writes nothing, not even what matched.
    assert_eq!(checked(&pass_of(&app, Scope::Due, false).await), (5, 5));
    assert_eq!(checked(&pass_of(&app, Scope::Due, false).await), (5, 5));

    // The bank cannot be asked: the declined payment (nothing to ask)
    // matches and is remembered; the four others stay due.
    let report = pass_with(&app, &unreachable_bank(), Scope::Due, true).await;
    assert_eq!(report.counts.unverified, 4, "{report:#?}");
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (4, 4));

    // A receipt that claims what the bank never did is asked about again
    // on every pass, for as long as it claims it.
    forge(
        &app,
        &authorized,
        &["capturing", "captured"],
        ", bank_capture_id = 'cap_forged'",
    )
    .await;
    for _ in 0..2 {
        let report = pass_of(&app, Scope::Due, true).await;
        assert_eq!(
            (report.counts.checked, report.counts.mismatch),
            (1, 1),
            "{report:#?}"
        );
    }
}

#[tokio::test]
async fn a_mismatch_stays_reported_past_the_window_until_it_matches() {
    let app = app().await;
    let payment = app.authorized(HAPPY_CARD, 1_000).await;
    let id = payment["id"].as_str().unwrap().to_owned();
    forge(
        &app,
        &id,
        &["capturing", "captured"],
        ", bank_capture_id = 'cap_forged'",
    )
    .await;
    assert_eq!(pass_of(&app, Scope::Due, true).await.counts.mismatch, 1);

    // Days later it is out of every pass's window, and still wrong: it
    // stays reported (and the fleet's mismatch gauge stays up), by every
    // kind of pass.
    made_days_ago(&app, &[&id]).await;
    for scope in [Scope::Due, Scope::Sweep, Scope::All] {
        let report = pass_of(&app, scope, true).await;
        assert_eq!(
            (report.counts.checked, report.counts.mismatch),
            (1, 1),
            "{scope:?}: {report:#?}"
        );
    }

    // Put right (the bank captures it, the receipt names that capture),
    // it matches once, and is let go.
    let capture = app
        .at_bank(
            "/api/v1/captures",
            json!({"authorization_id": payment["bank"]["authorization_id"], "amount": 1_000}),
        )
        .await;
    sqlx::query("UPDATE payments SET bank_capture_id = $2 WHERE id = $1")
        .bind(uuid_of(&id))
        .bind(capture["capture_id"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    let report = pass_of(&app, Scope::Due, true).await;
    assert_eq!(
        (report.counts.checked, report.counts.matched),
        (1, 1),
        "{report:#?}"
    );
    assert_eq!(pass_of(&app, Scope::Due, true).await.counts.checked, 0);
}

#[tokio::test]
async fn a_payment_moved_after_its_first_day_is_compared_with_the_bank() {
    let app = app().await;
    let ours = app.authorized(HAPPY_CARD, 1_000).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = app.authorized(HAPPY_CARD, 1_000).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (2, 2));
    made_days_ago(&app, &[&ours, &forged]).await;

    // Days into the hold, the gateway captures one, and a bug (or a hand
    // in psql) voids the other without the bank: both are older than any
    // window, and both are asked about.
    moved(&app, &ours, "capture").await;
    forge(
        &app,
        &forged,
        &["voiding", "voided"],
        ", bank_void_id = 'void_forged'",
    )
    .await;
    let report = pass_of(&app, Scope::Due, true).await;
    assert_eq!(
        (
            report.counts.checked,
            report.counts.matched,
            report.counts.mismatch
        ),
        (2, 1, 1),
        "{report:#?}"
    );
    // The capture matched and is let go; the forged void stays reported.
    let report = pass_of(&app, Scope::Due, true).await;
    assert_eq!(
        (report.counts.checked, report.counts.mismatch),
        (1, 1),
        "{report:#?}"
    );
}

#[tokio::test]
async fn a_match_of_the_version_before_a_late_move_does_not_clear_its_mark() {
    let app = app().await;
    let id = app.authorized(HAPPY_CARD, 1_000).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let version: chrono::DateTime<Utc> = sqlx::query_scalar(
        "UPDATE payments SET created_at = now() - interval '3 days' WHERE id = $1 \
         RETURNING updated_at",
    )
    .bind(uuid_of(&id))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // A pass matched that version; meanwhile the payment moves (a capture
    // starting, not committed yet when the pass remembers its match).
    let mut moving = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE payments SET status = 'capturing' WHERE id = $1")
        .bind(uuid_of(&id))
        .execute(&mut *moving)
        .await
        .unwrap();
    let remembered = tokio::spawn({
        let pool = app.pool.clone();
        let uuid = uuid_of(&id);
        async move { due::remember_matched(&pool, &[(uuid, version)]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    moving.commit().await.unwrap();
    remembered.await.unwrap().unwrap();

    let mark: Option<String> =
        sqlx::query_scalar("SELECT left_over FROM reconciled_payments WHERE payment_id = $1")
            .bind(uuid_of(&id))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(mark.as_deref(), Some("moved_late"));
}

#[tokio::test]
async fn a_receipt_that_moves_while_it_is_checked_stays_due() {
    let app = app().await;
    let id = authorized_id(&app).await;
    let since = Utc::now() - chrono::TimeDelta::hours(1);
    let read = due::page(&app.pool, Scope::Due, since, None, 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    // Captured after the pass read it as authorized and found that
    // matching: remembering that must not hide the capture.
    moved(&app, &id, "capture").await;
    let versions: Vec<_> = read.iter().map(|r| (r.id, r.updated_at)).collect();
    let remembered = due::remember_matched(&app.pool, &versions).await.unwrap();
    assert_eq!(remembered, 0);
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (1, 1));
}

#[tokio::test]
async fn a_receipt_moved_on_while_the_bank_answered_is_checked_again_not_a_mismatch() {
    let app = app().await;
    let id = authorized_id(&app).await;
    let capture = captured_at_bank(&app, &id).await;

    // The first pass reads the receipt (authorized), then asks the bank:
    // the authorization (captured), then its capture (not refunded). Each
    // answer is held 2.5 s on its way back, so the capture's is made at
    // ~2.5 s and arrives at ~5 s...
    app.set_bank_chaos(json!({"timeout_rate": 1.0, "timeout_ms": 2_500}))
        .await;
    let slow = {
        let pool = app.pool.clone();
        let patient = RetryPolicy {
            attempt_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        let bank = bank_at(&app.bank_address, patient);
        let since = Utc::now() - chrono::TimeDelta::hours(1);
        tokio::spawn(async move { pass(&pool, &bank, since, Scope::All, true, None).await })
    };
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    app.set_bank_chaos(json!({"timeout_rate": 0.0})).await;

    // ...while the bank refunds it and another pass (the CLI, another
    // replica) moves the receipt to where the bank now is.
    app.at_bank(
        "/api/v1/refunds",
        json!({"capture_id": capture, "amount": 1_000}),
    )
    .await;
    let quick = pass_of(&app, Scope::All, true).await;
    assert_eq!(quick.counts.repaired, 1, "{quick:#?}");
    assert_eq!(app.payment(&id).await["status"], "refunded");

    // The first pass's view (captured, no refund) is older than the
    // receipt it finds under the lock: it must ask again, not report a
    // refund the bank "never made".
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.counts.mismatch, 0, "{slow:#?}");
    assert_eq!(slow.counts.matched, 1, "{slow:#?}");
    assert_eq!(app.payment(&id).await["status"], "refunded");
}

#[tokio::test]
async fn an_operation_the_bank_refuses_because_it_did_the_other_one_catches_the_receipt_up() {
    let app = app().await;
    // Voided at the bank's console, then captured through the gateway.
    let voided = authorized_id(&app).await;
    let auth = bank_id(&app.payment(&voided).await, "authorization_id");
    let void = app
        .at_bank("/api/v1/voids", json!({"authorization_id": auth}))
        .await;
    let refused = app.act(&voided, "capture").await;
    let error = assert_error(
        refused,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "payment_moved_at_bank",
    )
    .await;
    assert_eq!(error["error"]["payment_id"], voided.as_str());
    // Not left for the next sweep: the receipt shows what the bank did.
    let now = app.payment(&voided).await;
    assert_eq!(now["status"], "voided", "{now}");
    assert_eq!(now["bank"]["void_id"], void["void_id"]);

    // Captured at the console, then voided through the gateway.
    let captured = authorized_id(&app).await;
    let capture = captured_at_bank(&app, &captured).await;
    let refused = app.act(&captured, "void").await;
    assert_error(
        refused,
        StatusCode::CONFLICT,
        "invalid_request_error",
        "payment_moved_at_bank",
    )
    .await;
    let now = app.payment(&captured).await;
    assert_eq!(now["status"], "captured", "{now}");
    assert_eq!(now["bank"]["capture_id"], capture.as_str());

    // Both now match the bank, and nothing is left over.
    let report = run(&app, true).await;
    assert_eq!(report.counts.matched, 2, "{report:#?}");
}

#[tokio::test]
async fn one_replica_holds_the_turn_and_a_lapsed_turn_is_taken_over() {
    let app = app().await;
    let pool = &app.pool;
    let cadence = Cadence {
        interval: Duration::from_secs(3_600),
        sweep_interval: Duration::from_secs(3_600),
    };
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let take = |holder| turn::take(pool, holder, cadence);

    // Never swept: the first pass sweeps. While it runs, nobody else.
    assert!(turn::last_pass(pool).await.unwrap().is_none());
    let first = take(a).await.unwrap().expect("a pass is due");
    assert_eq!(first.scope, Scope::Sweep);
    assert!(take(b).await.unwrap().is_none());
    first.passed(pool, cadence, 0).await.unwrap();
    // Done: the next pass is an interval away, for every replica.
    assert!(take(b).await.unwrap().is_none());
    assert!(take(a).await.unwrap().is_none());

    // An interval later: due, and not a sweep (one ran just now).
    sqlx::query("UPDATE reconcile_turn SET next_pass_at = now()")
        .execute(pool)
        .await
        .unwrap();
    let mut paused = take(b).await.unwrap().expect("due again");
    assert_eq!(paused.scope, Scope::Due);

    // Its holder pauses past the lease; another replica takes over, and
    // the paused one can neither renew nor hand back what it lost.
    sqlx::query("UPDATE reconcile_turn SET held_until = now() - interval '1 second'")
        .execute(pool)
        .await
        .unwrap();
    let successor = take(c).await.unwrap().expect("a lapsed turn is free");
    assert!(paused.renew(pool).await.is_err());
    paused.passed(pool, cadence, 7).await.unwrap();
    assert!(
        take(a).await.unwrap().is_none(),
        "the successor still holds it"
    );
    // Nor does what the paused one found become the fleet's last pass.
    let (_, mismatches) = turn::last_pass(pool).await.unwrap().expect("one pass");
    assert_eq!(mismatches, 0);

    // A pass that failed hands the turn back due at once.
    successor.failed(pool).await.unwrap();
    assert!(take(a).await.unwrap().is_some());
}

#[tokio::test]
async fn a_pass_renews_its_turn_while_the_bank_is_slow() {
    let app = app().await;
    authorized_id(&app).await;
    let cadence = Cadence {
        interval: Duration::from_secs(3_600),
        sweep_interval: Duration::from_secs(3_600),
    };
    let turn = turn::take(&app.pool, Uuid::new_v4(), cadence)
        .await
        .unwrap()
        .expect("a pass is due");
    let held_until = || async {
        sqlx::query_scalar::<_, chrono::DateTime<Utc>>("SELECT held_until FROM reconcile_turn")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let taken = held_until().await;
    // One lookup longer than a renewal period: the turn must be renewed
    // while it waits, not only once the page is done.
    let slow = turn::TURN_RENEWAL + Duration::from_secs(3);
    app.set_bank_chaos(json!({
        "min_latency_ms": slow.as_millis(),
        "max_latency_ms": slow.as_millis(),
    }))
    .await;
    let patient = RetryPolicy {
        attempt_timeout: slow * 2,
        deadline: slow * 3,
        ..RetryPolicy::default()
    };
    let bank = bank_at(&app.bank_address, patient);
    let pool = app.pool.clone();
    let since = Utc::now() - chrono::TimeDelta::hours(1);
    let running = tokio::spawn(async move {
        let mut turn = turn;
        pass(&pool, &bank, since, Scope::Sweep, true, Some(&mut turn)).await
    });
    tokio::time::sleep(turn::TURN_RENEWAL + Duration::from_secs(1)).await;
    assert!(
        held_until().await > taken,
        "not renewed while the bank answered"
    );
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.counts.matched, 1, "{report:#?}");
    app.set_bank_chaos(json!({"min_latency_ms": 0, "max_latency_ms": 0}))
        .await;
}

#[tokio::test]
async fn two_replicas_in_the_background_repair_what_changed_at_the_bank() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|settings| {
            settings.reconcile_interval_ms = 200;
            settings.reconcile_sweep_interval_ms = 0;
        })),
        ..Options::default()
    })
    .await;
    app.replica().await;
    let id = authorized_id(&app).await;
    captured_at_bank(&app, &id).await;
    app.eventually(&id, |p| p["status"] == "captured").await;
    let swept: bool = sqlx::query_scalar("SELECT swept_at > '-infinity' FROM reconcile_turn")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(swept);
}

#[tokio::test]
async fn a_sweep_asks_about_every_payment_still_authorized_however_old() {
    let app = app().await;
    let id = authorized_id(&app).await;
    // Made three days ago: outside the pass's window, well inside the
    // week its hold lasts, in which the bank's console can still capture
    // it (and the sweeper would otherwise expire the receipt).
    sqlx::query("UPDATE payments SET created_at = created_at - interval '3 days' WHERE id = $1")
        .bind(uuid_of(&id))
        .execute(&app.pool)
        .await
        .unwrap();
    captured_at_bank(&app, &id).await;

    // A due pass reads its window only; the sweep reaches back for it.
    assert_eq!(checked(&pass_of(&app, Scope::Due, true).await), (0, 0));
    let sweep = pass_of(&app, Scope::Sweep, true).await;
    assert_eq!(sweep.counts.repaired, 1, "{sweep:#?}");
    assert_eq!(app.payment(&id).await["status"], "captured");
    // And says how far back it read them.
    assert!(sweep.authorized_since.is_some_and(|at| at < sweep.since));
    assert!(gateway::reconcile::cli::render(&sweep).contains("and those still authorized since"));
}
