//! The bank asked before an authorization is marked expired.
//!
//! "Expired" is a claim about the bank's hold: the merchant hears
//! `payment.expired` and lets the order go. But the bank's console can
//! capture or void an authorization in its last hours, and the passes that
//! would see it come by only so often (a sweep hourly). So the expiry
//! sweeper asks the bank about each authorization due, and a receipt the
//! bank moved is caught up instead of expired.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::bank::BankClient;
use crate::domain::{PaymentEvent, PaymentStatus};
use crate::store::payments::PaymentRecord;

use super::ReconcileError;
use super::bank_view::{self, BankView, Unseen, UnseenKind};
use super::classify::{Receipt, Verdict, classify};
use super::repair::{self, Repair};

/// What became of one authorization due to expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Marked expired: the bank holds it active past its expiry, or
    /// expired, or never shows a state (a bank without the lookups'
    /// extensions: the receipt's own expiry decides, as the bank's would).
    Expired,
    /// The bank had captured or voided it: the receipt was brought up to
    /// the bank instead.
    CaughtUp(PaymentStatus),
    /// Left for a later sweep: the bank did not answer, or answered what
    /// cannot be read.
    Left(String),
    /// The payment moved since it was read (an operation, another sweep):
    /// nothing written; it is to be read again.
    Moved,
}

/// Asks the bank about `read`, an authorized payment past its expiry read
/// at `as_of` (the database's time), and expires it or catches it up, in
/// one transaction that writes only over the version read.
pub async fn expire_or_catch_up(
    pool: &PgPool,
    bank: &BankClient,
    read: &PaymentRecord,
    as_of: DateTime<Utc>,
) -> Result<Expiry, ReconcileError> {
    let receipt = Receipt::of(read);
    let view = match bank_view::fetch(bank, receipt.authorization_id.as_deref(), as_of).await {
        Ok(view) => view,
        // The original bank's lookup: the receipt's own expiry decides, as
        // it did before the gateway asked.
        Err(Unseen {
            kind: UnseenKind::NoState,
            ..
        }) => BankView::NoAuthorization,
        // Silent, or saying something odd (captured without a capture it
        // can show): no lapse is announced on that.
        Err(Unseen {
            kind: UnseenKind::Unanswered | UnseenKind::Unreadable,
            reason,
        }) => return Ok(Expiry::Left(reason)),
    };
    let moved_to = view
        .authorization()
        .map(|authorization| authorization.status())
        .filter(|status| !matches!(status, PaymentStatus::Authorized | PaymentStatus::Expired));
    let (events, outcome) = match (moved_to, classify(&receipt, &view)) {
        (Some(to), Verdict::Behind(events)) => (events, Expiry::CaughtUp(to)),
        // The bank moved it somewhere no legal path reaches from here:
        // not a lapse either, and a person's to look at (reconciliation
        // reports it).
        (Some(to), Verdict::Matched | Verdict::InFlight | Verdict::Mismatch(_)) => {
            return Ok(Expiry::Left(format!(
                "the bank shows it {to}, which this receipt cannot be moved to"
            )));
        }
        // Active past its expiry, expired, an authorization the bank does
        // not know or cannot describe: the hold is over by the receipt's
        // own expiry, which is the bank's.
        (None, _) => (vec![PaymentEvent::AuthorizationExpired], Expiry::Expired),
    };
    match repair::apply(pool, read, &events, &view).await? {
        Repair::Applied => Ok(outcome),
        Repair::Moved(_) => Ok(Expiry::Moved),
    }
}

/// Expires `read` by its own expiry, without the bank: for an operation
/// that meets the expiry while the bank's circuit is open (it cannot be
/// asked, and the operation is answered as it always was).
pub async fn expire_by_the_receipt(
    pool: &PgPool,
    read: &PaymentRecord,
) -> Result<Expiry, ReconcileError> {
    let events = [PaymentEvent::AuthorizationExpired];
    match repair::apply(pool, read, &events, &BankView::NoAuthorization).await? {
        Repair::Applied => Ok(Expiry::Expired),
        Repair::Moved(_) => Ok(Expiry::Moved),
    }
}
