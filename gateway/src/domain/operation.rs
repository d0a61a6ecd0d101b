//! Operations: one call the gateway makes (or will make) to the bank for a
//! payment, recorded before the call with the bank idempotency key that
//! every retry and every recovery reuses.
//!
//! An operation belongs to the client key that created it: a retry of that
//! key resumes that operation and is answered with that operation's own
//! outcome, never another's. The worker that settles an operation nobody
//! is waiting for stores the answer on that key all the same.

use std::fmt;
use std::time::Duration;

use uuid::Uuid;

use super::status::PaymentEvent;

/// What the gateway asks of the bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    Authorize,
    Capture,
    Void,
    Refund,
}

impl OperationKind {
    pub const ALL: [OperationKind; 4] = [
        OperationKind::Authorize,
        OperationKind::Capture,
        OperationKind::Void,
        OperationKind::Refund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Capture => "capture",
            Self::Void => "void",
            Self::Refund => "refund",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }

    /// The event of the bank saying yes.
    pub fn succeeded(self) -> PaymentEvent {
        match self {
            Self::Authorize => PaymentEvent::AuthorizeApproved,
            Self::Capture => PaymentEvent::CaptureSucceeded,
            Self::Void => PaymentEvent::VoidSucceeded,
            Self::Refund => PaymentEvent::RefundSucceeded,
        }
    }
}

/// For reading the database's `text` column; it admits only these names.
impl TryFrom<String> for OperationKind {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw).ok_or_else(|| format!("unknown operation kind {raw:?}"))
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an operation stands; the database's CHECK admits these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationStatus {
    /// The bank's answer is not known yet.
    Pending,
    Succeeded,
    Failed,
}

impl OperationStatus {
    pub const ALL: [OperationStatus; 3] = [
        OperationStatus::Pending,
        OperationStatus::Succeeded,
        OperationStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }
}

impl TryFrom<String> for OperationStatus {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw).ok_or_else(|| format!("unknown operation status {raw:?}"))
    }
}

/// Who may work on a key or an operation, and for how long. Whether a
/// lease is still live is always judged by the database's clock, the one
/// clock every replica shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The process holding it (its instance id).
    pub holder: Uuid,
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in OperationKind::ALL {
            assert_eq!(OperationKind::parse(kind.as_str()), Some(kind));
        }
        for status in OperationStatus::ALL {
            assert_eq!(OperationStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OperationKind::parse("charge"), None);
    }
}
