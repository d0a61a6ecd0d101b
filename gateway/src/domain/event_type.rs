//! What a webhook event is called: one name per change a payment can go
//! through, derived from the state machine's events so that the two cannot
//! drift. The database's `payment_transitions.event_type` mirrors
//! [`EventType::of`] (a test compares them on a live Postgres).

use std::fmt;

use super::status::PaymentEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    /// The payment exists, pending: the authorization is about to be sent.
    Created,
    Authorized,
    Declined,
    Failed,
    CaptureRequested,
    Captured,
    CaptureFailed,
    VoidRequested,
    Voided,
    VoidFailed,
    RefundRequested,
    Refunded,
    RefundFailed,
    /// The authorization ran out, found by the sweeper or answered by the bank.
    Expired,
    /// An operation stayed unresolved past the flag threshold: a person
    /// should look at it. Not a transition; the payment is unchanged.
    Flagged,
}

impl EventType {
    pub const ALL: [EventType; 15] = [
        EventType::Created,
        EventType::Authorized,
        EventType::Declined,
        EventType::Failed,
        EventType::CaptureRequested,
        EventType::Captured,
        EventType::CaptureFailed,
        EventType::VoidRequested,
        EventType::Voided,
        EventType::VoidFailed,
        EventType::RefundRequested,
        EventType::Refunded,
        EventType::RefundFailed,
        EventType::Expired,
        EventType::Flagged,
    ];

    /// The longest name, for limits on filters.
    pub const MAX_LEN: usize = 32;

    /// The event a payment transition publishes.
    pub fn of(event: PaymentEvent) -> Self {
        match event {
            PaymentEvent::AuthorizeApproved => Self::Authorized,
            PaymentEvent::AuthorizeDeclined => Self::Declined,
            PaymentEvent::AuthorizeFailed => Self::Failed,
            PaymentEvent::CaptureRequested => Self::CaptureRequested,
            PaymentEvent::CaptureSucceeded => Self::Captured,
            PaymentEvent::CaptureFailed => Self::CaptureFailed,
            PaymentEvent::CaptureExpired
            | PaymentEvent::VoidExpired
            | PaymentEvent::AuthorizationExpired => Self::Expired,
            PaymentEvent::VoidRequested => Self::VoidRequested,
            PaymentEvent::VoidSucceeded => Self::Voided,
            PaymentEvent::VoidFailed => Self::VoidFailed,
            PaymentEvent::RefundRequested => Self::RefundRequested,
            PaymentEvent::RefundSucceeded => Self::Refunded,
            PaymentEvent::RefundFailed => Self::RefundFailed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "payment.created",
            Self::Authorized => "payment.authorized",
            Self::Declined => "payment.declined",
            Self::Failed => "payment.failed",
            Self::CaptureRequested => "payment.capture_requested",
            Self::Captured => "payment.captured",
            Self::CaptureFailed => "payment.capture_failed",
            Self::VoidRequested => "payment.void_requested",
            Self::Voided => "payment.voided",
            Self::VoidFailed => "payment.void_failed",
            Self::RefundRequested => "payment.refund_requested",
            Self::Refunded => "payment.refunded",
            Self::RefundFailed => "payment.refund_failed",
            Self::Expired => "payment.expired",
            Self::Flagged => "payment.flagged",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_fit_the_limit() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert!(t.as_str().len() <= EventType::MAX_LEN);
        }
        assert_eq!(EventType::parse("payment.bogus"), None);
    }

    #[test]
    fn every_type_but_creation_and_flag_is_some_transition() {
        for t in EventType::ALL {
            let published = PaymentEvent::ALL.iter().any(|e| EventType::of(*e) == t);
            let not_a_transition = matches!(t, EventType::Created | EventType::Flagged);
            assert_eq!(published, !not_a_transition, "{t}");
        }
    }
}
