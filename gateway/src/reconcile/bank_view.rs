//! What the bank holds for one payment, read with its GET endpoints (and
//! their extensions: the authorization's `state`, `capture_id`, `void_id`,
//! the capture's `refund_id`).

use chrono::{DateTime, Utc};

use crate::bank::{Authorization, BankClient, BankErrorCode, BankOutcome};
use crate::domain::PaymentStatus;

/// The bank's side of one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankView {
    /// The receipt names no authorization, or the bank has none by that id.
    NoAuthorization,
    Authorization(BankAuthorization),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankAuthorization {
    pub id: String,
    pub amount: i64,
    pub expires_at: DateTime<Utc>,
    pub state: BankState,
    /// The database's time when the bank was asked: what an active
    /// authorization's expiry is judged by, as the gateway's own expiry
    /// sweeper judges it (the process's clock may be off from it).
    pub as_of: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankState {
    Active,
    Captured {
        capture_id: String,
        refund_id: Option<String>,
    },
    Voided {
        void_id: String,
    },
    Expired,
}

impl BankAuthorization {
    /// The payment status that tells the same story. An active
    /// authorization past its expiry is expired: the bank refuses to
    /// capture or void it, and its sweeper has just not come by yet.
    pub fn status(&self) -> PaymentStatus {
        match &self.state {
            BankState::Active if self.expires_at <= self.as_of => PaymentStatus::Expired,
            BankState::Active => PaymentStatus::Authorized,
            BankState::Captured {
                refund_id: None, ..
            } => PaymentStatus::Captured,
            BankState::Captured {
                refund_id: Some(_), ..
            } => PaymentStatus::Refunded,
            BankState::Voided { .. } => PaymentStatus::Voided,
            BankState::Expired => PaymentStatus::Expired,
        }
    }
}

impl BankView {
    pub fn authorization(&self) -> Option<&BankAuthorization> {
        match self {
            BankView::NoAuthorization => None,
            BankView::Authorization(authorization) => Some(authorization),
        }
    }

    fn state(&self) -> Option<&BankState> {
        self.authorization()
            .map(|authorization| &authorization.state)
    }

    pub fn capture_id(&self) -> Option<&str> {
        match self.state()? {
            BankState::Captured { capture_id, .. } => Some(capture_id),
            BankState::Active | BankState::Voided { .. } | BankState::Expired => None,
        }
    }

    pub fn refund_id(&self) -> Option<&str> {
        match self.state()? {
            BankState::Captured { refund_id, .. } => refund_id.as_deref(),
            BankState::Active | BankState::Voided { .. } | BankState::Expired => None,
        }
    }

    pub fn void_id(&self) -> Option<&str> {
        match self.state()? {
            BankState::Voided { void_id } => Some(void_id),
            BankState::Active | BankState::Captured { .. } | BankState::Expired => None,
        }
    }

    /// A short line for reports, e.g. `authorization auth_… captured (capture cap_…)`.
    pub fn describe(&self) -> String {
        let Some(authorization) = self.authorization() else {
            return "no authorization".to_owned();
        };
        let state = match &authorization.state {
            BankState::Active if authorization.status() == PaymentStatus::Expired => {
                "active, past its expiry".to_owned()
            }
            BankState::Active => "active".to_owned(),
            BankState::Captured {
                capture_id,
                refund_id: None,
            } => format!("captured (capture {capture_id})"),
            BankState::Captured {
                capture_id,
                refund_id: Some(refund_id),
            } => format!("captured (capture {capture_id}), refunded (refund {refund_id})"),
            BankState::Voided { void_id } => format!("voided (void {void_id})"),
            BankState::Expired => "expired".to_owned(),
        };
        format!("authorization {} {state}", authorization.id)
    }
}

/// Why the bank's view of a payment could not be established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unseen {
    pub reason: String,
    pub kind: UnseenKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnseenKind {
    /// The bank did not answer.
    Unanswered,
    /// The bank answers without the lookups' extensions (the original
    /// bank's GET has no `state`): it cannot say, and never will.
    NoState,
    /// The bank answered something this reading cannot use: a refusal of
    /// its own lookup, a state without the id it needs, a state unknown.
    Unreadable,
}

impl Unseen {
    fn unanswered(reason: String) -> Self {
        Self {
            reason: format!("the bank did not answer: {reason}"),
            kind: UnseenKind::Unanswered,
        }
    }

    fn unreadable(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            kind: UnseenKind::Unreadable,
        }
    }
}

/// Asks the bank about the authorization `id` (and its capture, if any),
/// at `as_of` by the database's clock. `Err` says why the bank's view
/// could not be established: it was unreachable, or answered something
/// this reading cannot use.
pub async fn fetch(
    bank: &BankClient,
    id: Option<&str>,
    as_of: DateTime<Utc>,
) -> Result<BankView, Unseen> {
    let Some(id) = id else {
        return Ok(BankView::NoAuthorization);
    };
    let authorization = match bank.get_authorization(id).await {
        BankOutcome::Done(authorization) => authorization,
        BankOutcome::Refused(refusal) if refusal.code == BankErrorCode::NotFound => {
            return Ok(BankView::NoAuthorization);
        }
        BankOutcome::Refused(refusal) => {
            return Err(Unseen::unreadable(format!(
                "the bank refused the lookup: {refusal}"
            )));
        }
        BankOutcome::Unknown(reason) => return Err(Unseen::unanswered(reason.to_string())),
    };
    let state = state_of(bank, &authorization).await?;
    Ok(BankView::Authorization(BankAuthorization {
        id: authorization.authorization_id,
        amount: authorization.amount,
        expires_at: authorization.expires_at,
        state,
        as_of,
    }))
}

/// The authorization's state, with the ids a receipt entering it must
/// record: a bank that says captured or voided without naming what it
/// made says nothing a receipt can be moved to.
async fn state_of(bank: &BankClient, authorization: &Authorization) -> Result<BankState, Unseen> {
    match authorization.state.as_deref() {
        Some("active") => Ok(BankState::Active),
        Some("expired") => Ok(BankState::Expired),
        Some("voided") => {
            let void_id = authorization
                .void_id
                .clone()
                .ok_or(Unseen::unreadable("the bank says voided but names no void"))?;
            Ok(BankState::Voided { void_id })
        }
        Some("captured") => {
            let capture_id = authorization
                .capture_id
                .as_deref()
                .ok_or(Unseen::unreadable(
                    "the bank says captured but names no capture",
                ))?;
            let refund_id = refund_of(bank, capture_id).await?;
            Ok(BankState::Captured {
                capture_id: capture_id.to_owned(),
                refund_id,
            })
        }
        Some(other) => Err(Unseen::unreadable(format!(
            "the bank reports an unknown state {other:?}"
        ))),
        None => Err(Unseen {
            reason: "the bank does not report the authorization's state".to_owned(),
            kind: UnseenKind::NoState,
        }),
    }
}

async fn refund_of(bank: &BankClient, capture_id: &str) -> Result<Option<String>, Unseen> {
    match bank.get_capture(capture_id).await {
        BankOutcome::Done(capture) => Ok(capture.refund_id),
        BankOutcome::Refused(refusal) => Err(Unseen::unreadable(format!(
            "the bank refused the lookup of its own capture {capture_id}: {refusal}"
        ))),
        BankOutcome::Unknown(reason) => Err(Unseen::unanswered(reason.to_string())),
    }
}
