//! The reference model: what a payment's states may legally be, taken from
//! the gateway's own transition table ([`gateway::domain::transition`] and
//! [`allowed_transitions`]), never re-encoded here.

use std::collections::BTreeSet;
use std::fmt;

use gateway::domain::{PaymentEvent, PaymentStatus, allowed_transitions, transition};
use serde::Serialize;

/// A client's request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Authorize,
    Capture,
    Void,
    Refund,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Authorize => "authorize",
            Op::Capture => "capture",
            Op::Void => "void",
            Op::Refund => "refund",
        }
    }

    /// The event a request of this kind asks for (`None`: an authorization
    /// creates the payment, it does not move one).
    pub fn requested(self) -> Option<PaymentEvent> {
        match self {
            Op::Authorize => None,
            Op::Capture => Some(PaymentEvent::CaptureRequested),
            Op::Void => Some(PaymentEvent::VoidRequested),
            Op::Refund => Some(PaymentEvent::RefundRequested),
        }
    }

    /// The receipt's `bank` field naming what its success made at the bank.
    pub fn bank_field(self) -> &'static str {
        match self {
            Op::Authorize => "authorization_id",
            Op::Capture => "capture_id",
            Op::Void => "void_id",
            Op::Refund => "refund_id",
        }
    }

    /// The status its success enters.
    pub fn succeeded(self) -> PaymentStatus {
        match self {
            Op::Authorize => PaymentStatus::Authorized,
            Op::Capture => PaymentStatus::Captured,
            Op::Void => PaymentStatus::Voided,
            Op::Refund => PaymentStatus::Refunded,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a payment in `status` may start `op`, per the table.
pub fn allows(status: PaymentStatus, op: Op) -> bool {
    op.requested()
        .is_some_and(|event| transition(status, event).is_ok())
}

/// Checks that `history` is a path of the state diagram: it starts at
/// `pending` and every consecutive pair is an allowed transition. The error
/// names the first illegal step.
pub fn check_history(history: &[PaymentStatus]) -> Result<(), String> {
    let allowed: BTreeSet<(PaymentStatus, PaymentStatus)> =
        allowed_transitions().into_iter().collect();
    match history.first() {
        None => return Err("the history is empty".into()),
        Some(PaymentStatus::Pending) => {}
        Some(first) => return Err(format!("the history starts at {first}, not pending")),
    }
    for (i, pair) in history.windows(2).enumerate() {
        if !allowed.contains(&(pair[0], pair[1])) {
            return Err(format!(
                "step {} ({} → {}) is not in the diagram",
                i + 1,
                pair[0],
                pair[1]
            ));
        }
    }
    Ok(())
}

/// The final status must be settled: no operation left in flight.
pub fn is_settled(status: PaymentStatus) -> bool {
    !status.is_in_flight()
}

/// Whether `op` succeeded at some point of `history`.
pub fn reflects(history: &[PaymentStatus], op: Op) -> bool {
    history.contains(&op.succeeded())
}

/// Parses a status name, as the API writes it.
pub fn status(raw: &str) -> Option<PaymentStatus> {
    PaymentStatus::parse(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentStatus as S;

    #[test]
    fn the_lifecycles_are_paths() {
        for history in [
            vec![S::Pending, S::Declined],
            vec![S::Pending, S::Authorized, S::Capturing, S::Captured],
            vec![
                S::Pending,
                S::Authorized,
                S::Capturing,
                S::Captured,
                S::Refunding,
                S::Refunded,
            ],
            vec![S::Pending, S::Authorized, S::Voiding, S::Voided],
            vec![
                S::Pending,
                S::Authorized,
                S::Capturing,
                S::Authorized,
                S::Voiding,
                S::Voided,
            ],
        ] {
            assert_eq!(check_history(&history), Ok(()), "{history:?}");
        }
    }

    #[test]
    fn shortcuts_and_reversals_are_not() {
        for history in [
            vec![S::Authorized],
            vec![S::Pending, S::Captured],
            vec![
                S::Pending,
                S::Authorized,
                S::Capturing,
                S::Captured,
                S::Voided,
            ],
            vec![S::Pending, S::Authorized, S::Refunding],
            vec![S::Pending, S::Declined, S::Authorized],
            vec![],
        ] {
            assert!(check_history(&history).is_err(), "{history:?}");
        }
    }

    #[test]
    fn what_each_status_allows() {
        assert!(allows(S::Authorized, Op::Capture));
        assert!(allows(S::Authorized, Op::Void));
        assert!(!allows(S::Authorized, Op::Refund));
        assert!(allows(S::Captured, Op::Refund));
        assert!(!allows(S::Captured, Op::Void));
        assert!(!allows(S::Capturing, Op::Void));
        assert!(!allows(S::Pending, Op::Authorize));
    }
}
