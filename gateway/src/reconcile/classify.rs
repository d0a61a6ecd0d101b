//! The pure half of reconciliation: a receipt and the bank's view in, a
//! verdict out. No I/O, so every pair is unit-tested.

use std::collections::{BTreeMap, VecDeque};

use crate::domain::{PaymentEvent, PaymentStatus, transition};
use crate::store::payments::{BankFacts, PaymentRecord};

use super::bank_view::BankView;

/// What the gateway's receipt claims, as far as the bank is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub status: PaymentStatus,
    pub amount: i64,
    pub authorization_id: Option<String>,
    pub capture_id: Option<String>,
    pub void_id: Option<String>,
    pub refund_id: Option<String>,
}

impl Receipt {
    pub fn of(record: &PaymentRecord) -> Self {
        Self {
            status: record.status(),
            amount: record.amount,
            authorization_id: record.bank_authorization_id.clone(),
            capture_id: record.bank_capture_id.clone(),
            void_id: record.bank_void_id.clone(),
            refund_id: record.bank_refund_id.clone(),
        }
    }

    /// A short line for reports: the status and the bank ids it holds.
    pub fn describe(&self) -> String {
        let ids: Vec<String> = [
            ("authorization", &self.authorization_id),
            ("capture", &self.capture_id),
            ("void", &self.void_id),
            ("refund", &self.refund_id),
        ]
        .into_iter()
        .filter_map(|(name, id)| id.as_ref().map(|id| format!("{name} {id}")))
        .collect();
        if ids.is_empty() {
            self.status.to_string()
        } else {
            format!("{} ({})", self.status, ids.join(", "))
        }
    }
}

/// How a receipt stands against the bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Matched,
    /// The bank's answer is awaited; the recovery worker owns it.
    InFlight,
    /// The gateway is behind the bank: these events, in order, take the
    /// receipt to where the bank is, each one a legal transition.
    Behind(Vec<PaymentEvent>),
    /// The receipt claims what the bank does not hold; for a person.
    Mismatch(String),
}

/// Compares a settled receipt with the bank. In-flight receipts are not
/// compared: their operation's outcome will move them.
pub fn classify(receipt: &Receipt, bank: &BankView) -> Verdict {
    if receipt.status.is_in_flight() {
        return Verdict::InFlight;
    }
    compare(receipt, bank)
}

/// [`classify`] without its guard: any receipt, in flight or not, judged
/// by the bank's view.
pub(super) fn compare(receipt: &Receipt, bank: &BankView) -> Verdict {
    let Some(authorization) = bank.authorization() else {
        return match (receipt.status, &receipt.authorization_id) {
            (PaymentStatus::Declined | PaymentStatus::Failed, None) => Verdict::Matched,
            (_, None) => Verdict::Mismatch(format!(
                "the receipt is {} without a bank authorization id",
                receipt.status
            )),
            (_, Some(id)) => Verdict::Mismatch(format!("the bank has no authorization {id}")),
        };
    };
    if matches!(
        receipt.status,
        PaymentStatus::Declined | PaymentStatus::Failed
    ) {
        return Verdict::Mismatch(format!(
            "the receipt is {} but the bank authorized",
            receipt.status
        ));
    }
    if authorization.amount != receipt.amount {
        return Verdict::Mismatch(format!(
            "the receipt's amount is {} but the bank's is {}",
            receipt.amount, authorization.amount
        ));
    }
    if let Some(conflict) = id_conflict(receipt, bank) {
        return Verdict::Mismatch(conflict);
    }
    let target = authorization.status();
    if target == receipt.status {
        return Verdict::Matched;
    }
    match forward_path(receipt.status, target) {
        Some(events) => Verdict::Behind(events),
        None => Verdict::Mismatch(format!(
            "no legal move takes a {} payment to {target}",
            receipt.status
        )),
    }
}

/// Every bank id on the receipt must be the bank's own: an id the bank does
/// not hold, or another one, is a claim the bank never made.
fn id_conflict(receipt: &Receipt, bank: &BankView) -> Option<String> {
    let pairs = [
        ("capture", &receipt.capture_id, bank.capture_id()),
        ("void", &receipt.void_id, bank.void_id()),
        ("refund", &receipt.refund_id, bank.refund_id()),
    ];
    pairs
        .into_iter()
        .find_map(|(name, ours, theirs)| match (ours.as_deref(), theirs) {
            (Some(ours), None) => Some(format!("the bank has no {name} {ours}")),
            (Some(ours), Some(theirs)) if ours != theirs => Some(format!(
                "the receipt's {name} is {ours} but the bank's is {theirs}"
            )),
            (Some(_) | None, _) => None,
        })
}

/// The shortest sequence of events that [`transition`] allows from `from`
/// to `to` (a breadth-first search over [`PaymentEvent::ALL`]), or `None`
/// when the table has no such path: then the bank is not ahead of the
/// gateway, it disagrees with it.
pub fn forward_path(from: PaymentStatus, to: PaymentStatus) -> Option<Vec<PaymentEvent>> {
    let mut came_from: BTreeMap<PaymentStatus, (PaymentStatus, PaymentEvent)> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(status) = queue.pop_front() {
        if status == to {
            return Some(unwind(&came_from, from, to));
        }
        for event in PaymentEvent::ALL {
            if let Ok(next) = transition(status, event)
                && next != from
                && !came_from.contains_key(&next)
            {
                came_from.insert(next, (status, event));
                queue.push_back(next);
            }
        }
    }
    None
}

fn unwind(
    came_from: &BTreeMap<PaymentStatus, (PaymentStatus, PaymentEvent)>,
    from: PaymentStatus,
    to: PaymentStatus,
) -> Vec<PaymentEvent> {
    let mut events = Vec::new();
    let mut at = to;
    while at != from {
        let (previous, event) = came_from[&at];
        events.push(event);
        at = previous;
    }
    events.reverse();
    events
}

/// The bank ids a payment entering `to` must record (the schema's checks
/// demand them), taken from the bank's view.
pub fn facts_entering(to: PaymentStatus, bank: &BankView) -> BankFacts {
    let capture_id = || bank.capture_id().map(str::to_owned);
    let (capture_id, void_id, refund_id) = match to {
        PaymentStatus::Captured | PaymentStatus::Refunding => (capture_id(), None, None),
        PaymentStatus::Refunded => (capture_id(), None, bank.refund_id().map(str::to_owned)),
        PaymentStatus::Voided => (None, bank.void_id().map(str::to_owned), None),
        PaymentStatus::Pending
        | PaymentStatus::Authorized
        | PaymentStatus::Declined
        | PaymentStatus::Failed
        | PaymentStatus::Expired
        | PaymentStatus::Capturing
        | PaymentStatus::Voiding => (None, None, None),
    };
    BankFacts {
        capture_id,
        void_id,
        refund_id,
        ..BankFacts::default()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::super::bank_view::{BankAuthorization, BankState};
    use super::*;
    use PaymentEvent as E;
    use PaymentStatus as S;

    fn receipt(status: S) -> Receipt {
        let mut receipt = Receipt {
            status,
            amount: 500,
            authorization_id: Some("auth_1".into()),
            capture_id: None,
            void_id: None,
            refund_id: None,
        };
        match status {
            S::Captured | S::Refunding => receipt.capture_id = Some("cap_1".into()),
            S::Refunded => {
                receipt.capture_id = Some("cap_1".into());
                receipt.refund_id = Some("ref_1".into());
            }
            S::Voided => receipt.void_id = Some("void_1".into()),
            S::Declined | S::Failed => receipt.authorization_id = None,
            S::Pending | S::Authorized | S::Expired | S::Capturing | S::Voiding => {}
        }
        receipt
    }

    fn bank(state: BankState) -> BankView {
        BankView::Authorization(BankAuthorization {
            id: "auth_1".into(),
            amount: 500,
            expires_at: Utc::now() + Duration::days(7),
            state,
            as_of: Utc::now(),
        })
    }

    fn captured(refund: Option<&str>) -> BankView {
        bank(BankState::Captured {
            capture_id: "cap_1".into(),
            refund_id: refund.map(str::to_owned),
        })
    }

    #[test]
    fn paths_follow_the_table() {
        assert_eq!(
            forward_path(S::Authorized, S::Captured),
            Some(vec![E::CaptureRequested, E::CaptureSucceeded])
        );
        assert_eq!(
            forward_path(S::Authorized, S::Voided),
            Some(vec![E::VoidRequested, E::VoidSucceeded])
        );
        assert_eq!(
            forward_path(S::Authorized, S::Expired),
            Some(vec![E::AuthorizationExpired])
        );
        assert_eq!(
            forward_path(S::Captured, S::Refunded),
            Some(vec![E::RefundRequested, E::RefundSucceeded])
        );
        assert_eq!(
            forward_path(S::Authorized, S::Refunded).map(|p| p.len()),
            Some(4)
        );
        for (from, to) in [
            (S::Captured, S::Authorized),
            (S::Refunded, S::Captured),
            (S::Expired, S::Authorized),
            (S::Voided, S::Captured),
            (S::Captured, S::Voided),
            (S::Declined, S::Authorized),
        ] {
            assert_eq!(forward_path(from, to), None, "{from} -> {to}");
        }
    }

    #[test]
    fn every_path_is_legal_step_by_step() {
        for from in S::ALL {
            for to in S::ALL {
                let Some(events) = forward_path(from, to) else {
                    continue;
                };
                let end = events
                    .iter()
                    .try_fold(from, |at, &event| transition(at, event));
                assert_eq!(end, Ok(to), "{from} -> {to} by {events:?}");
            }
        }
    }

    #[test]
    fn equal_sides_match() {
        assert_eq!(
            classify(&receipt(S::Authorized), &bank(BankState::Active)),
            Verdict::Matched
        );
        assert_eq!(
            classify(&receipt(S::Captured), &captured(None)),
            Verdict::Matched
        );
        assert_eq!(
            classify(&receipt(S::Refunded), &captured(Some("ref_1"))),
            Verdict::Matched
        );
        let voided = bank(BankState::Voided {
            void_id: "void_1".into(),
        });
        assert_eq!(classify(&receipt(S::Voided), &voided), Verdict::Matched);
        assert_eq!(
            classify(&receipt(S::Expired), &bank(BankState::Expired)),
            Verdict::Matched
        );
        assert_eq!(
            classify(&receipt(S::Declined), &BankView::NoAuthorization),
            Verdict::Matched
        );
    }

    #[test]
    fn in_flight_is_left_alone() {
        for status in [S::Pending, S::Capturing, S::Voiding, S::Refunding] {
            assert_eq!(
                classify(&receipt(status), &BankView::NoAuthorization),
                Verdict::InFlight
            );
        }
    }

    #[test]
    fn a_receipt_behind_the_bank_is_moved_forward() {
        assert_eq!(
            classify(&receipt(S::Authorized), &captured(None)),
            Verdict::Behind(vec![E::CaptureRequested, E::CaptureSucceeded])
        );
        assert_eq!(
            classify(&receipt(S::Authorized), &bank(BankState::Expired)),
            Verdict::Behind(vec![E::AuthorizationExpired])
        );
        assert_eq!(
            classify(&receipt(S::Captured), &captured(Some("ref_9"))),
            Verdict::Behind(vec![E::RefundRequested, E::RefundSucceeded])
        );
    }

    #[test]
    fn claims_the_bank_never_made_are_mismatches() {
        let mismatch = |r: &Receipt, b: &BankView| matches!(classify(r, b), Verdict::Mismatch(_));
        assert!(mismatch(&receipt(S::Captured), &bank(BankState::Active)));
        assert!(mismatch(&receipt(S::Refunded), &captured(None)));
        assert!(mismatch(
            &receipt(S::Authorized),
            &BankView::NoAuthorization
        ));
        assert!(mismatch(&receipt(S::Expired), &bank(BankState::Active)));
        assert!(mismatch(&receipt(S::Voided), &captured(None)));
        let mut other_capture = receipt(S::Captured);
        other_capture.capture_id = Some("cap_2".into());
        assert!(mismatch(&other_capture, &captured(None)));
        let mut declined_with_auth = receipt(S::Declined);
        declined_with_auth.authorization_id = Some("auth_1".into());
        assert!(mismatch(&declined_with_auth, &bank(BankState::Active)));
        let mut other_amount = receipt(S::Authorized);
        other_amount.amount = 501;
        assert!(mismatch(&other_amount, &bank(BankState::Active)));
    }

    #[test]
    fn an_active_authorization_past_its_expiry_counts_as_expired() {
        let mut stale = bank(BankState::Active);
        if let BankView::Authorization(authorization) = &mut stale {
            authorization.expires_at = Utc::now() - Duration::seconds(1);
        }
        assert_eq!(classify(&receipt(S::Expired), &stale), Verdict::Matched);
    }

    /// Judged by the time the view was taken at (the database's), not the
    /// process's clock: a process running ahead of the database must not
    /// expire an authorization the database still holds as live.
    #[test]
    fn an_authorization_is_judged_expired_by_the_time_the_view_was_taken_at() {
        let mut live = bank(BankState::Active);
        if let BankView::Authorization(authorization) = &mut live {
            authorization.expires_at = Utc::now() - Duration::seconds(1);
            authorization.as_of = authorization.expires_at - Duration::seconds(1);
        }
        assert_eq!(classify(&receipt(S::Authorized), &live), Verdict::Matched);
    }

    #[test]
    fn facts_carry_the_ids_each_status_needs() {
        let view = captured(Some("ref_1"));
        let facts = facts_entering(S::Captured, &view);
        assert_eq!(facts.capture_id.as_deref(), Some("cap_1"));
        assert_eq!(facts.refund_id, None);
        let facts = facts_entering(S::Refunded, &view);
        assert_eq!(facts.refund_id.as_deref(), Some("ref_1"));
        assert!(facts_entering(S::Capturing, &view).capture_id.is_none());
    }

    #[test]
    fn describe_names_the_ids() {
        assert_eq!(
            receipt(S::Captured).describe(),
            "captured (authorization auth_1, capture cap_1)"
        );
        assert_eq!(receipt(S::Declined).describe(), "declined");
    }
}
