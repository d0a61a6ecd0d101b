//! Reconciliation: every recent receipt compared with what the bank holds.
//!
//! The recovery worker settles operations whose answer was lost; this is
//! the check behind it, from the other side: whatever the gateway's history,
//! does each receipt say what the bank's books say? Each payment created at
//! or after `since` ends in one [`Outcome`]:
//!
//! - `matched`: the bank holds exactly what the receipt claims (the same
//!   state, the same amount, the same capture/void/refund ids). A declined
//!   payment matches when it names no bank authorization.
//! - `in_flight`: pending, capturing, voiding or refunding. Its operation's
//!   outcome will move it; that is the recovery worker's job, so the bank is
//!   not even asked.
//! - `repaired`: the gateway was *behind* the bank (it lost an answer, or
//!   someone acted at the bank directly): the bank captured, voided,
//!   refunded or expired what the receipt still shows as before. The
//!   receipt is moved forward along the shortest path that the one
//!   transition table allows (e.g. `authorized → capturing → captured`),
//!   each step through [`crate::store::payments::apply`] with the bank's ids, in
//!   one transaction, with the payment locked and found unchanged since it
//!   was compared (a payment that moved meanwhile is compared again, with
//!   a new answer from the bank).
//! - `repairable`: the same, in a dry run (nothing written).
//! - `mismatch`: the receipt claims something the bank never did (a
//!   capture, void or refund the bank does not hold, another amount, an
//!   authorization the bank does not know), or the two sides are in states
//!   no legal path joins. Never repaired: a person must look, and the
//!   report gives both sides.
//! - `unverified`: the bank could not be asked (unreachable, or an answer
//!   this check cannot read). Not a mismatch, but nothing was proven either,
//!   so it counts as left over, like a mismatch, for the exit status.
//!
//! Memory stays bounded: payments are read in pages of [`PAGE_SIZE`] by
//! `(created_at, id)`, at most [`CONCURRENCY`] payments are being checked
//! at the bank at once, and the report keeps an entry for every payment
//! that is not `matched` (matched ones are only counted). No database
//! connection is held while the bank answers.
//!
//! The CLI checks every payment of its window ([`Scope::All`]). The
//! server's background pass ([`run_forever`]) runs in one replica at a
//! time ([`turn`]) and asks the bank only about what can have changed
//! ([`due`]): payments new or moved since they last matched, those left
//! over (a mismatch however old: it stays reported until it matches), and,
//! in a periodic sweep, those the bank can move on its own.
//!
//! Metrics: `gateway_reconcile_payments_total{outcome}` (this process's
//! passes), and, the same in every replica whichever ran it, the fleet's
//! last whole pass: `gateway_reconcile_mismatches` (the mismatches it
//! found) and `gateway_reconcile_last_run_timestamp_seconds`.

mod bank_view;
mod classify;
pub mod cli;
pub mod due;
pub mod expiry;
mod repair;
pub mod turn;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bank::BankClient;
use crate::domain::{PaymentStatus, transition};
use crate::faults::Mutant;
use crate::store::clock;
use crate::store::payments::{self, PaymentRecord, TransitionError};

use bank_view::UnseenKind;
use repair::Repair;

pub use classify::{Receipt, Verdict, classify, forward_path};
pub use due::Scope;
pub use turn::{Cadence, Turn, TurnLost};

/// Payments read from the database at once.
pub const PAGE_SIZE: i64 = 200;
/// Payments checked at the bank at once.
pub const CONCURRENCY: usize = 16;
/// What the background task and the CLI look back over by default.
pub const DEFAULT_WINDOW: TimeDelta = TimeDelta::hours(24);

/// How one payment stands against the bank; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Matched,
    InFlight,
    Repaired,
    Repairable,
    Mismatch,
    Unverified,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Matched,
        Outcome::InFlight,
        Outcome::Repaired,
        Outcome::Repairable,
        Outcome::Mismatch,
        Outcome::Unverified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::InFlight => "in_flight",
            Outcome::Repaired => "repaired",
            Outcome::Repairable => "repairable",
            Outcome::Mismatch => "mismatch",
            Outcome::Unverified => "unverified",
        }
    }

    /// Whether a person (or another run) still has something to do.
    pub fn is_left_over(self) -> bool {
        match self {
            Outcome::Repairable | Outcome::Mismatch | Outcome::Unverified => true,
            Outcome::Matched | Outcome::InFlight | Outcome::Repaired => false,
        }
    }
}

/// One payment that did not simply match.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub payment_id: String,
    pub outcome: Outcome,
    pub gateway_status: PaymentStatus,
    /// The receipt's side: its status and bank ids (before any repair).
    pub gateway: String,
    /// The bank's side, in short.
    pub bank: String,
    /// Why it is a mismatch, or why the bank could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The statuses a repair entered (or, in a dry run, would enter).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<PaymentStatus>,
}

/// How many payments ended in each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub checked: u64,
    pub matched: u64,
    pub in_flight: u64,
    pub repaired: u64,
    pub repairable: u64,
    pub mismatch: u64,
    pub unverified: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        self.checked += 1;
        *self.slot(outcome) += 1;
    }

    fn slot(&mut self, outcome: Outcome) -> &mut u64 {
        match outcome {
            Outcome::Matched => &mut self.matched,
            Outcome::InFlight => &mut self.in_flight,
            Outcome::Repaired => &mut self.repaired,
            Outcome::Repairable => &mut self.repairable,
            Outcome::Mismatch => &mut self.mismatch,
            Outcome::Unverified => &mut self.unverified,
        }
    }

    pub fn get(&self, outcome: Outcome) -> u64 {
        let mut copy = *self;
        *copy.slot(outcome)
    }
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub since: DateTime<Utc>,
    /// How far back the pass read payments still authorized, when further
    /// than `since` (a sweep: see [`due::AUTHORIZED_REACH`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorized_since: Option<DateTime<Utc>>,
    pub scope: Scope,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// False for a dry run: nothing was written.
    pub repair: bool,
    pub counts: Counts,
    /// Every payment that did not match, in creation order.
    pub entries: Vec<Entry>,
}

impl Report {
    /// Payments still needing attention: mismatches, unverified ones, and
    /// (in a dry run) the repairs not made.
    pub fn left_over(&self) -> u64 {
        Outcome::ALL
            .into_iter()
            .filter(|outcome| outcome.is_left_over())
            .map(|outcome| self.counts.get(outcome))
            .sum()
    }

    pub fn entries_with(&self, outcome: Outcome) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.outcome == outcome)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("a repair failed: {0}")]
    Repair(#[from] TransitionError),
    #[error(transparent)]
    TurnLost(#[from] TurnLost),
}

/// Compares every payment created at or after `since` with the bank and,
/// if `repair`, moves the receipts that are behind the bank forward. A
/// database error ends the run with that error; each repair is its own
/// transaction, so none is left half-made, and the next run starts over.
pub async fn reconcile(
    pool: &PgPool,
    bank: &BankClient,
    since: DateTime<Utc>,
    repair: bool,
) -> Result<Report, ReconcileError> {
    pass(pool, bank, since, Scope::All, repair, None).await
}

/// [`reconcile`] over the payments of `scope`, and those marked by
/// earlier passes (or moved after their first day) however old. With
/// `repair`, receipts found matching or in disagreement are remembered as
/// such (a dry run writes nothing). With
/// a `turn`, it is renewed while the bank answers and after every page,
/// and the pass stops if another replica took it over.
pub async fn pass(
    pool: &PgPool,
    bank: &BankClient,
    since: DateTime<Utc>,
    scope: Scope,
    repair: bool,
    mut turn: Option<&mut Turn>,
) -> Result<Report, ReconcileError> {
    let reach = due::reach(scope, since);
    let mut report = Report {
        since,
        authorized_since: (reach < since).then_some(reach),
        scope,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        repair,
        counts: Counts::default(),
        entries: Vec::new(),
    };
    // Those marked (in disagreement with the bank, or moved after their
    // first day) and older than this pass's window: asked about until they
    // match, so a mismatch stays reported (and paged) after it leaves the
    // window.
    let mut after = None;
    loop {
        let page = due::left_over_outside(pool, scope, since, after, PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id));
        check_page(pool, bank, page, repair, turn.as_deref_mut(), &mut report).await?;
    }
    let mut after = None;
    loop {
        let page = due::page(pool, scope, since, after, PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id));
        check_page(pool, bank, page, repair, turn.as_deref_mut(), &mut report).await?;
    }
    report.finished_at = Utc::now();
    record_metrics(&report);
    Ok(report)
}

/// Checks one page of payments at the bank, at most [`CONCURRENCY`] at
/// once, adds them to `report` and, with `repair`, remembers which matched
/// and which disagree with the bank.
async fn check_page(
    pool: &PgPool,
    bank: &BankClient,
    page: Vec<PaymentRecord>,
    repair: bool,
    turn: Option<&mut Turn>,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    if page.is_empty() {
        return Ok(());
    }
    let as_of = clock::now(pool).await?;
    // Owned records: a stream of borrowed ones trips the compiler's
    // higher-ranked lifetime check once the future must be `Send`.
    let checks = stream::iter(page)
        .map(|record| check(pool, bank, record, repair, as_of))
        .buffered(CONCURRENCY)
        .try_collect::<Vec<Checked>>();
    let checked = holding(pool, turn, checks).await?;
    if repair {
        let matched: Vec<(Uuid, DateTime<Utc>)> = checked
            .iter()
            .filter(|c| c.entry.outcome == Outcome::Matched)
            .map(|c| c.version)
            .collect();
        due::remember_matched(pool, &matched).await?;
        let mismatched: Vec<Uuid> = checked
            .iter()
            .filter(|c| c.entry.outcome == Outcome::Mismatch)
            .map(|c| c.version.0)
            .collect();
        due::remember_mismatched(pool, &mismatched).await?;
        // A late move the bank can never show is asked about once, not by
        // every pass for good.
        let unverifiable: Vec<Uuid> = checked
            .iter()
            .filter(|c| c.unverifiable)
            .map(|c| c.version.0)
            .collect();
        due::forget_late_moves(pool, &unverifiable).await?;
    }
    for Checked { entry, .. } in checked {
        report.counts.add(entry.outcome);
        if entry.outcome != Outcome::Matched {
            report.entries.push(entry);
        }
    }
    Ok(())
}

/// Runs `work` while renewing `turn` every [`turn::TURN_RENEWAL`] (a page
/// of bank lookups can outlast the lease), and once more when it is done.
/// Ends with [`TurnLost`] as soon as another replica took the turn over.
async fn holding<T>(
    pool: &PgPool,
    turn: Option<&mut Turn>,
    work: impl Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError> {
    let Some(turn) = turn else {
        return work.await;
    };
    let mut heartbeat = tokio::time::interval(turn::TURN_RENEWAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    tokio::pin!(work);
    let done = loop {
        tokio::select! {
            done = &mut work => break done?,
            _ = heartbeat.tick() => turn.renew(pool).await?,
        }
    };
    turn.renew(pool).await?;
    Ok(done)
}

/// Checks one payment against the bank now, and repairs it if it is
/// behind: for a request that has just learnt that the bank moved it
/// without the gateway. Safe beside a pass: a repair writes only over
/// the version it compared.
pub async fn catch_up(pool: &PgPool, bank: &BankClient, id: Uuid) -> Result<Entry, ReconcileError> {
    let record = {
        let mut conn = pool.acquire().await?;
        payments::get_by_id(&mut conn, id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?
    };
    let as_of = clock::now(pool).await?;
    Ok(check(pool, bank, record, true, as_of).await?.entry)
}

/// How many times one payment is looked at in one pass when it keeps
/// moving between the bank's answer and the repair's lock.
const LOOKS_PER_PAYMENT: usize = 3;

/// One payment's entry, and the version of it that was judged.
struct Checked {
    entry: Entry,
    version: (Uuid, DateTime<Utc>),
    /// The bank never shows what this would need (a bank without the
    /// lookups' extensions): asking again will not verify it either.
    unverifiable: bool,
}

/// Asks the bank about one payment and acts on the verdict. A receipt
/// found moved when the repair locks it is judged again with a new answer
/// from the bank: the first answer may be older than the receipt is now,
/// and judging a receipt by it would report a move that the bank did make
/// as one it "never made".
async fn check(
    pool: &PgPool,
    bank: &BankClient,
    read: PaymentRecord,
    repair: bool,
    as_of: DateTime<Utc>,
) -> Result<Checked, ReconcileError> {
    let payment_id = read.payment_id().to_string();
    let judges_in_flight = bank.faults().mutant(Mutant::ReconcileRepairsInFlight);
    let mut record = read;
    for _ in 0..LOOKS_PER_PAYMENT {
        let receipt = Receipt::of(&record);
        let version = (record.id, record.updated_at);
        let done = |entry| {
            Ok(Checked {
                entry,
                version,
                unverifiable: false,
            })
        };
        if receipt.status.is_in_flight() && !judges_in_flight {
            return done(entry(payment_id, &receipt, "not asked", Verdict::InFlight));
        }
        let view = match bank_view::fetch(bank, receipt.authorization_id.as_deref(), as_of).await {
            Ok(view) => view,
            Err(unseen) => {
                return Ok(Checked {
                    unverifiable: unseen.kind == UnseenKind::NoState,
                    entry: unverified(payment_id, &receipt, unseen.reason),
                    version,
                });
            }
        };
        let verdict = if judges_in_flight {
            classify::compare(&receipt, &view)
        } else {
            classify(&receipt, &view)
        };
        let (Verdict::Behind(events), true) = (&verdict, repair) else {
            return done(entry(payment_id, &receipt, &view.describe(), verdict));
        };
        let repaired = match repair::apply(pool, &record, events, &view).await {
            Err(e) if let Some(reason) = unwritable(&e) => {
                return done(unverified(payment_id, &receipt, reason));
            }
            repaired => repaired?,
        };
        match repaired {
            Repair::Applied => {
                let entry = entry(payment_id, &receipt, &view.describe(), verdict);
                return done(entry.repaired());
            }
            Repair::Moved(now) => record = *now,
        }
    }
    let reason = "it moved every time the bank was asked about it; the next pass asks again";
    Ok(Checked {
        entry: unverified(payment_id, &Receipt::of(&record), reason.to_owned()),
        version: (record.id, record.updated_at),
        unverifiable: false,
    })
}

/// A repair the schema refused (a bank view lacking what the status it
/// leads to must record): this payment's problem, reported as
/// unverified, not the pass's: one odd answer must not stop every other
/// payment from being checked, pass after pass.
fn unwritable(e: &ReconcileError) -> Option<String> {
    let ReconcileError::Repair(TransitionError::Database(sqlx::Error::Database(refusal))) = e
    else {
        return None;
    };
    let by_the_rules = refusal.is_check_violation()
        || refusal.is_foreign_key_violation()
        || refusal.is_unique_violation()
        || refusal.code().as_deref() == Some("23502");
    by_the_rules.then(|| format!("the database refused the repair: {refusal}"))
}

fn entry(payment_id: String, receipt: &Receipt, bank: &str, verdict: Verdict) -> Entry {
    let (outcome, reason, path) = match verdict {
        Verdict::Matched => (Outcome::Matched, None, Vec::new()),
        Verdict::InFlight => (Outcome::InFlight, None, Vec::new()),
        Verdict::Behind(events) => {
            let path = events
                .iter()
                .scan(receipt.status, |at, &event| {
                    *at = transition(*at, event).ok()?;
                    Some(*at)
                })
                .collect();
            (Outcome::Repairable, None, path)
        }
        Verdict::Mismatch(reason) => (Outcome::Mismatch, Some(reason), Vec::new()),
    };
    Entry {
        payment_id,
        outcome,
        gateway_status: receipt.status,
        gateway: receipt.describe(),
        bank: bank.to_owned(),
        reason,
        path,
    }
}

fn unverified(payment_id: String, receipt: &Receipt, reason: String) -> Entry {
    Entry {
        outcome: Outcome::Unverified,
        reason: Some(reason),
        ..entry(payment_id, receipt, "unknown", Verdict::Matched)
    }
}

impl Entry {
    /// A `repairable` entry whose repair was just made.
    fn repaired(self) -> Self {
        Entry {
            outcome: Outcome::Repaired,
            ..self
        }
    }
}

fn record_metrics(report: &Report) {
    for outcome in Outcome::ALL {
        metrics::counter!("gateway_reconcile_payments_total", "outcome" => outcome.as_str())
            .increment(report.counts.get(outcome));
    }
}

/// The server's background task: polls for the reconciliation turn and,
/// when this replica takes it, runs the due pass (or the sweep) over the
/// last [`DEFAULT_WINDOW`] with repair on, and logs what it found. The
/// first poll waits one poll period, so that recovery runs first after a
/// start.
pub async fn run_forever(pool: PgPool, bank: BankClient, holder: Uuid, cadence: Cadence) {
    let poll = cadence.poll();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = poll_once(&pool, &bank, holder, cadence).await {
            tracing::warn!(error = %e, "reconciliation failed; another poll will retry");
        }
        if let Err(e) = publish_last_pass(&pool).await {
            tracing::warn!(error = %e, "could not read the last reconciliation pass");
        }
    }
}

/// One poll: a pass if the turn is due and free, nothing otherwise.
async fn poll_once(
    pool: &PgPool,
    bank: &BankClient,
    holder: Uuid,
    cadence: Cadence,
) -> Result<(), ReconcileError> {
    let Some(mut turn) = turn::take(pool, holder, cadence).await? else {
        return Ok(());
    };
    let since = Utc::now() - DEFAULT_WINDOW;
    let scope = turn.scope;
    let outcome = pass(pool, bank, since, scope, true, Some(&mut turn)).await;
    match outcome {
        Ok(report) => {
            turn.passed(pool, cadence, report.counts.mismatch).await?;
            log_report(&report);
            Ok(())
        }
        Err(ReconcileError::TurnLost(lost)) => Err(lost.into()),
        Err(e) => {
            turn.failed(pool).await?;
            Err(e)
        }
    }
}

/// Every replica reports the fleet's last pass, whoever ran it, so that
/// a replica that once held the turn does not keep reporting what it saw
/// then.
async fn publish_last_pass(pool: &PgPool) -> Result<(), sqlx::Error> {
    if let Some((passed_at, mismatches)) = turn::last_pass(pool).await? {
        metrics::gauge!("gateway_reconcile_mismatches").set(mismatches as f64);
        metrics::gauge!("gateway_reconcile_last_run_timestamp_seconds")
            .set(passed_at.timestamp_millis() as f64 / 1000.0);
    }
    Ok(())
}

fn log_report(report: &Report) {
    let c = report.counts;
    tracing::info!(
        scope = report.scope.as_str(),
        checked = c.checked,
        matched = c.matched,
        in_flight = c.in_flight,
        repaired = c.repaired,
        mismatch = c.mismatch,
        unverified = c.unverified,
        "reconciled recent payments with the bank"
    );
    for e in report.entries_with(Outcome::Repaired) {
        tracing::info!(payment_id = %e.payment_id, gateway = %e.gateway, bank = %e.bank, "reconciliation repaired a receipt behind the bank");
    }
    for e in report.entries_with(Outcome::Mismatch) {
        tracing::warn!(payment_id = %e.payment_id, gateway = %e.gateway, bank = %e.bank, reason = e.reason.as_deref().unwrap_or(""), "reconciliation mismatch: needs a person");
    }
}
