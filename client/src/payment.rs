//! What the gateway answers: the payment object (the receipt), its status,
//! and a page of payments. Parsed from the wire into these types, so a
//! caller never handles the raw JSON.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A payment's id as the gateway writes it: `pay_` and a UUID.
///
/// It goes into request paths (`/v1/payments/{id}/capture`), so only the
/// characters an id can hold are accepted: anything else (`/`, `?`, `%`)
/// would let a string from elsewhere address another path.
///
/// ```
/// use client::PaymentId;
///
/// let id: PaymentId = "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b".parse()?;
/// assert_eq!(id.to_string(), "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b");
/// assert!("01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b".parse::<PaymentId>().is_err());
/// assert!("pay_../../admin".parse::<PaymentId>().is_err());
/// # Ok::<(), client::InvalidPaymentId>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentId(String);

/// The string is not a payment id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a payment id is \"pay_\" followed by 1 to 64 of A-Z, a-z, 0-9, '-' or '_'")]
pub struct InvalidPaymentId;

impl PaymentId {
    pub const PREFIX: &'static str = "pay_";

    pub fn parse(raw: &str) -> Result<Self, InvalidPaymentId> {
        let rest = raw.strip_prefix(Self::PREFIX).ok_or(InvalidPaymentId)?;
        // Not the gateway's exact UUID v7 rule: a client that refused a
        // future id format would break on a gateway change it need not
        // care about. Path safety is what the client needs.
        let safe = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if rest.is_empty() || rest.len() > 64 || !rest.bytes().all(safe) {
            return Err(InvalidPaymentId);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PaymentId {
    type Err = InvalidPaymentId;

    fn from_str(raw: &str) -> Result<Self, InvalidPaymentId> {
        Self::parse(raw)
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PaymentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PaymentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Where a payment is in the gateway's state machine.
///
/// ```text
/// pending ──▶ authorized ──▶ capturing ──▶ captured ──▶ refunding ──▶ refunded
///    │            │    └───▶ voiding ───▶ voided
///    ▼            ▼
/// declined     expired          (and pending ──▶ failed)
/// ```
///
/// A status this client does not know yet (a newer gateway) is kept as
/// [`PaymentStatus::Unknown`] instead of failing the whole answer.
///
/// ```
/// use client::PaymentStatus;
///
/// assert_eq!("captured".parse::<PaymentStatus>(), Ok(PaymentStatus::Captured));
/// assert_eq!(
///     "disputed".parse::<PaymentStatus>(),
///     Ok(PaymentStatus::Unknown("disputed".into()))
/// );
/// assert!(PaymentStatus::Capturing.is_in_flight());
/// assert!(PaymentStatus::Refunded.is_terminal());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    Unknown(String),
}

impl PaymentStatus {
    /// Every status this client knows, in the state machine's order.
    pub const KNOWN: [PaymentStatus; 11] = [
        Self::Pending,
        Self::Authorized,
        Self::Declined,
        Self::Failed,
        Self::Expired,
        Self::Capturing,
        Self::Captured,
        Self::Voiding,
        Self::Voided,
        Self::Refunding,
        Self::Refunded,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "pending",
            Self::Authorized => "authorized",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Capturing => "capturing",
            Self::Captured => "captured",
            Self::Voiding => "voiding",
            Self::Voided => "voided",
            Self::Refunding => "refunding",
            Self::Refunded => "refunded",
            Self::Unknown(raw) => raw,
        }
    }

    /// The gateway has recorded an operation and the bank's answer is not
    /// known yet; it finishes in the background.
    pub fn is_in_flight(&self) -> bool {
        match self {
            Self::Pending | Self::Capturing | Self::Voiding | Self::Refunding => true,
            Self::Authorized
            | Self::Declined
            | Self::Failed
            | Self::Expired
            | Self::Captured
            | Self::Voided
            | Self::Refunded
            | Self::Unknown(_) => false,
        }
    }

    /// Nothing can happen to the payment any more.
    pub fn is_terminal(&self) -> bool {
        match self {
            Self::Declined | Self::Failed | Self::Expired | Self::Voided | Self::Refunded => true,
            Self::Pending
            | Self::Authorized
            | Self::Capturing
            | Self::Captured
            | Self::Voiding
            | Self::Refunding
            | Self::Unknown(_) => false,
        }
    }
}

impl FromStr for PaymentStatus {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Self::KNOWN
            .into_iter()
            .find(|known| known.as_str() == raw)
            .unwrap_or_else(|| Self::Unknown(raw.to_owned())))
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PaymentStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PaymentStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let Ok(status) = raw.parse();
        Ok(status)
    }
}

/// The payment object, the receipt. Unknown fields from a newer gateway are
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: PaymentId,
    pub order_id: String,
    pub customer_id: String,
    /// Integer cents.
    pub amount: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub card: CardSummary,
    pub bank: BankIds,
    pub authorization_expires_at: Option<DateTime<Utc>>,
    pub failure: Option<Failure>,
    /// Every status the payment went through, oldest first.
    pub history: Vec<HistoryEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What the gateway keeps of the card: never the number or the CVV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSummary {
    pub brand: String,
    pub last4: String,
    pub expiry_month: u8,
    pub expiry_year: u16,
}

/// The bank's ids for what it did with the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankIds {
    pub authorization_id: Option<String>,
    pub capture_id: Option<String>,
    pub void_id: Option<String>,
    pub refund_id: Option<String>,
}

/// Why a payment was declined or failed: the bank's code (e.g.
/// `insufficient_funds`) or the gateway's (`authorization_abandoned`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub status: PaymentStatus,
    pub at: DateTime<Utc>,
}

/// A page of payments, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentList {
    pub data: Vec<Payment>,
    /// More payments follow this page: ask for [`PaymentList::next_page`].
    pub has_more: bool,
}

impl PaymentList {
    /// The page after this one (with the gateway's default size), if any.
    pub fn next_page(&self) -> Option<crate::Page> {
        let last = self.data.last()?;
        self.has_more.then(|| crate::Page::after(last.id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's own example of the payment object, as the contract
    /// shows it, with real timestamps.
    const CONTRACT_EXAMPLE: &str = r#"{"id": "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b",
        "order_id": "ord_1001", "customer_id": "cus_77",
        "amount": 4999, "currency": "USD", "status": "authorized",
        "card": {"brand": "visa", "last4": "1111", "expiry_month": 12, "expiry_year": 2030},
        "bank": {"authorization_id": "auth_1", "capture_id": null, "void_id": null, "refund_id": null},
        "authorization_expires_at": "2030-01-08T10:00:00Z", "failure": null,
        "history": [{"status": "pending", "at": "2030-01-01T10:00:00.123456Z"},
                    {"status": "authorized", "at": "2030-01-01T10:00:01Z"}],
        "created_at": "2030-01-01T10:00:00.123456Z", "updated_at": "2030-01-01T10:00:01Z",
        "a_field_from_a_newer_gateway": true}"#;

    #[test]
    fn the_contract_example_parses() {
        let payment: Payment = serde_json::from_str(CONTRACT_EXAMPLE).expect("parses");
        assert_eq!(payment.amount, 4999);
        assert_eq!(payment.status, PaymentStatus::Authorized);
        assert_eq!(payment.card.last4, "1111");
        assert_eq!(payment.bank.authorization_id.as_deref(), Some("auth_1"));
        assert_eq!(payment.history.len(), 2);
        assert_eq!(payment.history[0].status, PaymentStatus::Pending);
        assert!(payment.failure.is_none());
    }

    #[test]
    fn every_known_status_round_trips() {
        for status in PaymentStatus::KNOWN {
            let Ok(parsed) = status.as_str().parse::<PaymentStatus>();
            assert_eq!(parsed, status);
            assert!(!matches!(parsed, PaymentStatus::Unknown(_)));
        }
    }

    #[test]
    fn in_flight_and_terminal_never_overlap() {
        for status in PaymentStatus::KNOWN {
            assert!(!(status.is_in_flight() && status.is_terminal()), "{status}");
        }
    }

    #[test]
    fn a_page_without_more_has_no_next_page() {
        let payment: Payment = serde_json::from_str(CONTRACT_EXAMPLE).expect("parses");
        let mut list = PaymentList {
            data: vec![payment.clone()],
            has_more: false,
        };
        assert!(list.next_page().is_none());
        list.has_more = true;
        let next = list.next_page().expect("a next page");
        assert_eq!(next.starting_after, Some(payment.id));
    }

    #[test]
    fn payment_ids_refuse_path_characters() {
        for bad in [
            "pay_", "pay_a/b", "pay_a?b", "pay_a%2f", "pay_a b", "xpay_a", "",
        ] {
            assert_eq!(PaymentId::parse(bad), Err(InvalidPaymentId), "{bad}");
        }
        assert!(PaymentId::parse(&format!("pay_{}", "a".repeat(64))).is_ok());
        assert!(PaymentId::parse(&format!("pay_{}", "a".repeat(65))).is_err());
    }
}
