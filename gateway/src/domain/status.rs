//! The payment state machine: one table, [`transition`], that every caller
//! (the API, the recovery worker, the expiry sweeper) goes through, and that
//! the database's `payment_transitions` table mirrors.

use std::fmt;

/// Where a payment stands.
///
/// `Pending`, `Capturing`, `Voiding` and `Refunding` are in flight: the
/// gateway has recorded its intent and an operation row, and the bank's
/// answer is not known yet. `Declined` is the bank refusing the card;
/// `Failed` is an authorization that did not happen for any other reason
/// (the gateway gave up on it before the bank held anything, or the bank
/// refused the gateway's request as malformed): nothing is held. The declaration order is the lifecycle's, and is
/// the order in which [`allowed_transitions`] and the diagram list states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PaymentStatus {
    Pending,
    Authorized,
    Declined,
    Failed,
    Expired,
    Capturing,
    Captured,
    Voiding,
    Voided,
    Refunding,
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 11] = [
        PaymentStatus::Pending,
        PaymentStatus::Authorized,
        PaymentStatus::Declined,
        PaymentStatus::Failed,
        PaymentStatus::Expired,
        PaymentStatus::Capturing,
        PaymentStatus::Captured,
        PaymentStatus::Voiding,
        PaymentStatus::Voided,
        PaymentStatus::Refunding,
        PaymentStatus::Refunded,
    ];

    /// The name on the wire and in the `payment_status` Postgres enum.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Expired => "expired",
            PaymentStatus::Capturing => "capturing",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Voiding => "voiding",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Refunding => "refunding",
            PaymentStatus::Refunded => "refunded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }

    /// The bank's answer is awaited: an operation row is pending, and only
    /// its outcome may move the payment on.
    pub fn is_in_flight(self) -> bool {
        match self {
            PaymentStatus::Pending
            | PaymentStatus::Capturing
            | PaymentStatus::Voiding
            | PaymentStatus::Refunding => true,
            PaymentStatus::Authorized
            | PaymentStatus::Declined
            | PaymentStatus::Failed
            | PaymentStatus::Expired
            | PaymentStatus::Captured
            | PaymentStatus::Voided
            | PaymentStatus::Refunded => false,
        }
    }

    /// Settled on the gateway's side, yet the bank can still move it
    /// without the gateway (a capture, void or refund made at the bank
    /// directly, an authorization the bank expires): what reconciliation's
    /// periodic sweep looks at again even after it matched.
    pub fn is_open_at_bank(self) -> bool {
        match self {
            PaymentStatus::Authorized | PaymentStatus::Captured => true,
            PaymentStatus::Pending
            | PaymentStatus::Declined
            | PaymentStatus::Failed
            | PaymentStatus::Expired
            | PaymentStatus::Capturing
            | PaymentStatus::Voiding
            | PaymentStatus::Voided
            | PaymentStatus::Refunding
            | PaymentStatus::Refunded => false,
        }
    }

    /// No event moves the payment on any more.
    pub fn is_terminal(self) -> bool {
        match self {
            PaymentStatus::Declined
            | PaymentStatus::Failed
            | PaymentStatus::Expired
            | PaymentStatus::Voided
            | PaymentStatus::Refunded => true,
            PaymentStatus::Pending
            | PaymentStatus::Authorized
            | PaymentStatus::Capturing
            | PaymentStatus::Captured
            | PaymentStatus::Voiding
            | PaymentStatus::Refunding => false,
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for PaymentStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Something that happened to a payment: a client's request, the bank's
/// answer, or the sweeper noticing the authorization ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PaymentEvent {
    /// The bank authorized the funds.
    AuthorizeApproved,
    /// The bank refused the card (funds, CVV, expired or unknown card).
    AuthorizeDeclined,
    /// The authorization will not happen, and the card is not why: the
    /// gateway gave up on it after its grace period with the bank holding
    /// nothing, or the bank refused the gateway's request as malformed.
    AuthorizeFailed,
    /// A client asked to capture; the operation is recorded, the bank not yet
    /// answered.
    CaptureRequested,
    CaptureSucceeded,
    /// The bank refused the capture definitively for a reason other than
    /// expiry; the authorization still stands.
    CaptureFailed,
    /// The bank answered `authorization_expired` to the capture.
    CaptureExpired,
    VoidRequested,
    VoidSucceeded,
    /// The bank refused the void definitively; the authorization still stands.
    VoidFailed,
    /// The bank answered `authorization_expired` to the void.
    VoidExpired,
    RefundRequested,
    RefundSucceeded,
    /// The bank refused the refund definitively; the capture still stands.
    RefundFailed,
    /// The sweeper found the authorization past its expiry with no operation
    /// in flight.
    AuthorizationExpired,
}

impl PaymentEvent {
    pub const ALL: [PaymentEvent; 15] = [
        PaymentEvent::AuthorizeApproved,
        PaymentEvent::AuthorizeDeclined,
        PaymentEvent::AuthorizeFailed,
        PaymentEvent::CaptureRequested,
        PaymentEvent::CaptureSucceeded,
        PaymentEvent::CaptureFailed,
        PaymentEvent::CaptureExpired,
        PaymentEvent::VoidRequested,
        PaymentEvent::VoidSucceeded,
        PaymentEvent::VoidFailed,
        PaymentEvent::VoidExpired,
        PaymentEvent::RefundRequested,
        PaymentEvent::RefundSucceeded,
        PaymentEvent::RefundFailed,
        PaymentEvent::AuthorizationExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentEvent::AuthorizeApproved => "authorize_approved",
            PaymentEvent::AuthorizeDeclined => "authorize_declined",
            PaymentEvent::AuthorizeFailed => "authorize_failed",
            PaymentEvent::CaptureRequested => "capture_requested",
            PaymentEvent::CaptureSucceeded => "capture_succeeded",
            PaymentEvent::CaptureFailed => "capture_failed",
            PaymentEvent::CaptureExpired => "capture_expired",
            PaymentEvent::VoidRequested => "void_requested",
            PaymentEvent::VoidSucceeded => "void_succeeded",
            PaymentEvent::VoidFailed => "void_failed",
            PaymentEvent::VoidExpired => "void_expired",
            PaymentEvent::RefundRequested => "refund_requested",
            PaymentEvent::RefundSucceeded => "refund_succeeded",
            PaymentEvent::RefundFailed => "refund_failed",
            PaymentEvent::AuthorizationExpired => "authorization_expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == raw)
    }
}

impl fmt::Display for PaymentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event does not apply to a payment in that status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a payment that is {from} cannot take the event {event}")]
pub struct InvalidTransition {
    pub from: PaymentStatus,
    pub event: PaymentEvent,
}

impl InvalidTransition {
    /// The API's 409 code: capturing or voiding an expired authorization has
    /// its own, so a client can tell "too late" from "wrong state".
    pub fn code(self) -> &'static str {
        let too_late = self.from == PaymentStatus::Expired
            && (self.event == PaymentEvent::CaptureRequested
                || self.event == PaymentEvent::VoidRequested);
        if too_late {
            "authorization_expired"
        } else {
            "invalid_state"
        }
    }
}

/// The status a payment moves to when `event` happens to it in `from`.
///
/// Every pair is listed, refused ones included, with no catch-all arm: a new
/// status or event does not compile until someone has decided, pair by pair,
/// what it does.
pub fn transition(
    from: PaymentStatus,
    event: PaymentEvent,
) -> Result<PaymentStatus, InvalidTransition> {
    use PaymentEvent as E;
    use PaymentStatus as S;

    let refused = Err(InvalidTransition { from, event });
    match (from, event) {
        (S::Pending, E::AuthorizeApproved) => Ok(S::Authorized),
        (S::Pending, E::AuthorizeDeclined) => Ok(S::Declined),
        (S::Pending, E::AuthorizeFailed) => Ok(S::Failed),

        (S::Authorized, E::CaptureRequested) => Ok(S::Capturing),
        (S::Authorized, E::VoidRequested) => Ok(S::Voiding),
        (S::Authorized, E::AuthorizationExpired) => Ok(S::Expired),

        (S::Capturing, E::CaptureSucceeded) => Ok(S::Captured),
        // The authorization survives a refused capture; the client may try
        // again or void it.
        (S::Capturing, E::CaptureFailed) => Ok(S::Authorized),
        (S::Capturing, E::CaptureExpired) => Ok(S::Expired),

        (S::Voiding, E::VoidSucceeded) => Ok(S::Voided),
        (S::Voiding, E::VoidFailed) => Ok(S::Authorized),
        (S::Voiding, E::VoidExpired) => Ok(S::Expired),

        (S::Captured, E::RefundRequested) => Ok(S::Refunding),

        (S::Refunding, E::RefundSucceeded) => Ok(S::Refunded),
        (S::Refunding, E::RefundFailed) => Ok(S::Captured),

        // Before the bank has authorized, only its answer counts.
        (
            S::Pending,
            E::CaptureRequested
            | E::CaptureSucceeded
            | E::CaptureFailed
            | E::CaptureExpired
            | E::VoidRequested
            | E::VoidSucceeded
            | E::VoidFailed
            | E::VoidExpired
            | E::RefundRequested
            | E::RefundSucceeded
            | E::RefundFailed
            | E::AuthorizationExpired,
        )
        // Refund before capture, or an outcome of an operation not in flight.
        | (
            S::Authorized,
            E::AuthorizeApproved
            | E::AuthorizeDeclined
            | E::AuthorizeFailed
            | E::CaptureSucceeded
            | E::CaptureFailed
            | E::CaptureExpired
            | E::VoidSucceeded
            | E::VoidFailed
            | E::VoidExpired
            | E::RefundRequested
            | E::RefundSucceeded
            | E::RefundFailed,
        )
        // One operation at a time: while capturing, only the capture's
        // outcome. The sweeper leaves in-flight payments to the bank's answer,
        // which is why `AuthorizationExpired` is refused here too.
        | (
            S::Capturing,
            E::AuthorizeApproved
            | E::AuthorizeDeclined
            | E::AuthorizeFailed
            | E::CaptureRequested
            | E::VoidRequested
            | E::VoidSucceeded
            | E::VoidFailed
            | E::VoidExpired
            | E::RefundRequested
            | E::RefundSucceeded
            | E::RefundFailed
            | E::AuthorizationExpired,
        )
        | (
            S::Voiding,
            E::AuthorizeApproved
            | E::AuthorizeDeclined
            | E::AuthorizeFailed
            | E::CaptureRequested
            | E::CaptureSucceeded
            | E::CaptureFailed
            | E::CaptureExpired
            | E::VoidRequested
            | E::RefundRequested
            | E::RefundSucceeded
            | E::RefundFailed
            | E::AuthorizationExpired,
        )
        // Captured money can only be refunded; a capture no longer expires.
        | (
            S::Captured,
            E::AuthorizeApproved
            | E::AuthorizeDeclined
            | E::AuthorizeFailed
            | E::CaptureRequested
            | E::CaptureSucceeded
            | E::CaptureFailed
            | E::CaptureExpired
            | E::VoidRequested
            | E::VoidSucceeded
            | E::VoidFailed
            | E::VoidExpired
            | E::RefundSucceeded
            | E::RefundFailed
            | E::AuthorizationExpired,
        )
        | (
            S::Refunding,
            E::AuthorizeApproved
            | E::AuthorizeDeclined
            | E::AuthorizeFailed
            | E::CaptureRequested
            | E::CaptureSucceeded
            | E::CaptureFailed
            | E::CaptureExpired
            | E::VoidRequested
            | E::VoidSucceeded
            | E::VoidFailed
            | E::VoidExpired
            | E::RefundRequested
            | E::AuthorizationExpired,
        )
        // Terminal: nothing moves these on.
        | (
            S::Declined | S::Failed | S::Expired | S::Voided | S::Refunded,
            E::AuthorizeApproved
            | E::AuthorizeDeclined
            | E::AuthorizeFailed
            | E::CaptureRequested
            | E::CaptureSucceeded
            | E::CaptureFailed
            | E::CaptureExpired
            | E::VoidRequested
            | E::VoidSucceeded
            | E::VoidFailed
            | E::VoidExpired
            | E::RefundRequested
            | E::RefundSucceeded
            | E::RefundFailed
            | E::AuthorizationExpired,
        ) => refused,
    }
}

/// Every `(from, to)` that some event allows, each once, sorted by the
/// statuses' lifecycle order: what the database's `payment_transitions`
/// table must hold.
pub fn allowed_transitions() -> Vec<(PaymentStatus, PaymentStatus)> {
    let mut pairs: Vec<_> = PaymentStatus::ALL
        .into_iter()
        .flat_map(|from| {
            PaymentEvent::ALL
                .into_iter()
                .filter_map(move |event| transition(from, event).ok().map(|to| (from, to)))
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// A Mermaid `stateDiagram-v2` of [`allowed_transitions`], each edge labelled
/// with the events that take it, terminal states marked as ends. The same
/// table always gives the same text, so a README can embed it and a test can
/// compare.
pub fn mermaid_state_diagram() -> String {
    let mut out = String::from("stateDiagram-v2\n");
    out.push_str(&format!("    [*] --> {}\n", PaymentStatus::Pending));
    for (from, to) in allowed_transitions() {
        let events: Vec<&str> = PaymentEvent::ALL
            .into_iter()
            .filter(|&event| transition(from, event) == Ok(to))
            .map(PaymentEvent::as_str)
            .collect();
        out.push_str(&format!("    {from} --> {to}: {}\n", events.join(", ")));
    }
    for status in PaymentStatus::ALL
        .into_iter()
        .filter(|status| status.is_terminal())
    {
        out.push_str(&format!("    {status} --> [*]\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use proptest::prelude::*;

    use super::*;
    use PaymentEvent as E;
    use PaymentStatus as S;

    /// The whole state machine, written out independently of `transition`.
    /// Any (status, event) pair not listed here must be refused.
    const EXPECTED: [(S, E, S); 15] = [
        (S::Pending, E::AuthorizeApproved, S::Authorized),
        (S::Pending, E::AuthorizeDeclined, S::Declined),
        (S::Pending, E::AuthorizeFailed, S::Failed),
        (S::Authorized, E::CaptureRequested, S::Capturing),
        (S::Authorized, E::VoidRequested, S::Voiding),
        (S::Authorized, E::AuthorizationExpired, S::Expired),
        (S::Capturing, E::CaptureSucceeded, S::Captured),
        (S::Capturing, E::CaptureFailed, S::Authorized),
        (S::Capturing, E::CaptureExpired, S::Expired),
        (S::Voiding, E::VoidSucceeded, S::Voided),
        (S::Voiding, E::VoidFailed, S::Authorized),
        (S::Voiding, E::VoidExpired, S::Expired),
        (S::Captured, E::RefundRequested, S::Refunding),
        (S::Refunding, E::RefundSucceeded, S::Refunded),
        (S::Refunding, E::RefundFailed, S::Captured),
    ];

    #[test]
    fn every_pair_matches_the_expected_table() {
        let mut checked = 0;
        for from in S::ALL {
            for event in E::ALL {
                let expected = EXPECTED
                    .iter()
                    .find(|(f, e, _)| (*f, *e) == (from, event))
                    .map(|&(_, _, to)| to)
                    .ok_or(InvalidTransition { from, event });
                assert_eq!(transition(from, event), expected, "{from} + {event}");
                checked += 1;
            }
        }
        assert_eq!(checked, 11 * 15);
    }

    #[test]
    fn allowed_transitions_are_the_expected_pairs() {
        assert_eq!(
            allowed_transitions(),
            vec![
                (S::Pending, S::Authorized),
                (S::Pending, S::Declined),
                (S::Pending, S::Failed),
                (S::Authorized, S::Expired),
                (S::Authorized, S::Capturing),
                (S::Authorized, S::Voiding),
                (S::Capturing, S::Authorized),
                (S::Capturing, S::Expired),
                (S::Capturing, S::Captured),
                (S::Captured, S::Refunding),
                (S::Voiding, S::Authorized),
                (S::Voiding, S::Expired),
                (S::Voiding, S::Voided),
                (S::Refunding, S::Captured),
                (S::Refunding, S::Refunded),
            ]
        );
    }

    #[test]
    fn all_lists_each_variant_once_in_declaration_order() {
        // `as usize` is the declaration index, so a variant added without
        // being added to `ALL` (or added out of order) shows up as a gap.
        for (i, status) in S::ALL.into_iter().enumerate() {
            assert_eq!(status as usize, i, "{status}");
        }
        assert_eq!(S::Refunded as usize + 1, S::ALL.len());
        for (i, event) in E::ALL.into_iter().enumerate() {
            assert_eq!(event as usize, i, "{event}");
        }
        assert_eq!(E::AuthorizationExpired as usize + 1, E::ALL.len());
    }

    #[test]
    fn names_round_trip_and_are_snake_case() {
        for status in S::ALL {
            assert_eq!(S::parse(status.as_str()), Some(status));
            assert!(status.as_str().bytes().all(|b| b.is_ascii_lowercase()));
        }
        for event in E::ALL {
            assert_eq!(E::parse(event.as_str()), Some(event));
            assert!(
                event
                    .as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
        assert_eq!(S::parse("Pending"), None);
        assert_eq!(S::parse("canceled"), None);
        assert_eq!(E::parse("CaptureRequested"), None);
    }

    #[test]
    fn in_flight_and_terminal_states() {
        let in_flight: Vec<S> = S::ALL.into_iter().filter(|s| s.is_in_flight()).collect();
        assert_eq!(
            in_flight,
            [S::Pending, S::Capturing, S::Voiding, S::Refunding]
        );
        let terminal: Vec<S> = S::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(
            terminal,
            [S::Declined, S::Failed, S::Expired, S::Voided, S::Refunded]
        );
        for status in S::ALL {
            assert!(
                !(status.is_in_flight() && status.is_terminal()),
                "{status} is both in flight and terminal"
            );
            // Every status is exactly one of: in flight, terminal, or
            // settled but still movable at the bank.
            let kinds = [
                status.is_in_flight(),
                status.is_terminal(),
                status.is_open_at_bank(),
            ];
            assert_eq!(kinds.iter().filter(|&&k| k).count(), 1, "{status}");
        }
    }

    #[test]
    fn terminal_means_no_way_out_and_others_have_one() {
        for from in S::ALL {
            let exits = E::ALL
                .into_iter()
                .filter(|&event| transition(from, event).is_ok())
                .count();
            assert_eq!(exits == 0, from.is_terminal(), "{from}: {exits} exits");
        }
    }

    #[test]
    fn every_in_flight_state_can_settle() {
        // A payment must never be stuck in flight: some bank answer leads out.
        for from in S::ALL.into_iter().filter(|s| s.is_in_flight()) {
            assert!(
                E::ALL
                    .into_iter()
                    .filter_map(|event| transition(from, event).ok())
                    .any(|to| !to.is_in_flight()),
                "{from} cannot settle"
            );
        }
    }

    #[test]
    fn only_requests_enter_a_non_initial_in_flight_state() {
        // Entering capturing/voiding/refunding is the client's request, never
        // a bank answer; that is what makes "one operation at a time" hold.
        for (from, event, to) in EXPECTED {
            if to.is_in_flight() {
                assert!(
                    [E::CaptureRequested, E::VoidRequested, E::RefundRequested].contains(&event),
                    "{from} + {event} -> {to}"
                );
            }
        }
    }

    #[test]
    fn every_status_is_reachable_from_pending() {
        let mut seen = BTreeSet::from([S::Pending]);
        let mut queue = VecDeque::from([S::Pending]);
        while let Some(from) = queue.pop_front() {
            for (f, to) in allowed_transitions() {
                if f == from && seen.insert(to) {
                    queue.push_back(to);
                }
            }
        }
        assert_eq!(seen, S::ALL.into_iter().collect());
    }

    #[test]
    fn expired_capture_or_void_has_its_own_code() {
        let code = |from, event| transition(from, event).expect_err("refused").code();
        assert_eq!(
            code(S::Expired, E::CaptureRequested),
            "authorization_expired"
        );
        assert_eq!(code(S::Expired, E::VoidRequested), "authorization_expired");
        assert_eq!(code(S::Expired, E::RefundRequested), "invalid_state");
        assert_eq!(code(S::Voided, E::CaptureRequested), "invalid_state");
        assert_eq!(code(S::Capturing, E::VoidRequested), "invalid_state");
        assert_eq!(
            InvalidTransition {
                from: S::Voided,
                event: E::CaptureRequested
            }
            .to_string(),
            "a payment that is voided cannot take the event capture_requested"
        );
    }

    #[test]
    fn diagram_has_every_edge_and_nothing_else() {
        let diagram = mermaid_state_diagram();
        assert_eq!(diagram, mermaid_state_diagram(), "deterministic");
        let lines: Vec<&str> = diagram.lines().collect();
        assert_eq!(lines[0], "stateDiagram-v2");
        assert_eq!(lines[1], "    [*] --> pending");
        for (from, event, to) in EXPECTED {
            let edge = format!("    {from} --> {to}: ");
            let line = lines
                .iter()
                .find(|line| line.starts_with(&edge))
                .unwrap_or_else(|| panic!("no edge {from} --> {to} in\n{diagram}"));
            assert!(
                line[edge.len()..].split(", ").any(|e| e == event.as_str()),
                "{line} lacks {event}"
            );
        }
        for status in [S::Declined, S::Failed, S::Expired, S::Voided, S::Refunded] {
            assert!(lines.contains(&format!("    {status} --> [*]").as_str()));
        }
        // Header, start, one line per allowed pair, one per terminal state.
        assert_eq!(lines.len(), 2 + allowed_transitions().len() + 5);
    }

    #[test]
    fn diagram_text() {
        assert_eq!(
            mermaid_state_diagram(),
            "stateDiagram-v2
    [*] --> pending
    pending --> authorized: authorize_approved
    pending --> declined: authorize_declined
    pending --> failed: authorize_failed
    authorized --> expired: authorization_expired
    authorized --> capturing: capture_requested
    authorized --> voiding: void_requested
    capturing --> authorized: capture_failed
    capturing --> expired: capture_expired
    capturing --> captured: capture_succeeded
    captured --> refunding: refund_requested
    voiding --> authorized: void_failed
    voiding --> expired: void_expired
    voiding --> voided: void_succeeded
    refunding --> captured: refund_failed
    refunding --> refunded: refund_succeeded
    declined --> [*]
    failed --> [*]
    expired --> [*]
    voided --> [*]
    refunded --> [*]
"
        );
    }

    proptest! {
        #[test]
        fn random_event_sequences_stay_on_allowed_edges(
            picks in proptest::collection::vec(0..E::ALL.len(), 0..64)
        ) {
            let allowed = allowed_transitions();
            let mut status = S::Pending;
            for pick in picks {
                let event = E::ALL[pick];
                match transition(status, event) {
                    Ok(to) => {
                        prop_assert!(
                            allowed.contains(&(status, to)),
                            "{} + {} -> {} is not an allowed edge", status, event, to
                        );
                        prop_assert!(S::ALL.contains(&to));
                        status = to;
                    }
                    Err(refused) => {
                        prop_assert_eq!(refused, InvalidTransition { from: status, event });
                    }
                }
            }
        }
    }
}
