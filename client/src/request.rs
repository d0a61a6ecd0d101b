//! What the client sends: an authorization with its card, and which page
//! of a listing to read.
//!
//! The values are not checked against the gateway's rules here (amount
//! bounds, the Luhn check, the id charsets, the one currency): the gateway
//! is the one authority on them, a copy here would drift from it, and its
//! refusal costs nothing (a 400 stores nothing and the key stays usable)
//! and comes back typed, as [`crate::Error::InvalidRequest`] naming the
//! field in `param`.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::payment::PaymentId;

/// `POST /v1/payments`: reserve `amount` on the card.
///
/// ```
/// use client::{AuthorizeRequest, Card};
///
/// let request = AuthorizeRequest::usd(
///     "ord_1001",
///     "cus_77",
///     4999, // $49.99, in integer cents
///     Card::new("4111111111111111", "123", 12, 2030),
/// );
/// assert_eq!(request.currency, "USD");
///
/// // The card number and the CVV never show in Debug output.
/// let shown = format!("{request:?}");
/// assert!(!shown.contains("4111111111111111"), "{shown}");
/// assert!(!shown.contains("123\""), "{shown}");
/// assert!(shown.contains("1111"), "the last four digits stay visible: {shown}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizeRequest {
    pub order_id: String,
    pub customer_id: String,
    /// Integer cents.
    pub amount: i64,
    /// An ISO 4217 code; the gateway supports `"USD"` only.
    pub currency: String,
    pub card: Card,
}

impl AuthorizeRequest {
    /// An authorization in US dollars, the gateway's one currency.
    pub fn usd(
        order_id: impl Into<String>,
        customer_id: impl Into<String>,
        amount_cents: i64,
        card: Card,
    ) -> Self {
        Self {
            order_id: order_id.into(),
            customer_id: customer_id.into(),
            amount: amount_cents,
            currency: "USD".to_owned(),
            card,
        }
    }
}

/// The card to authorize. Its number and CVV are sent to the gateway and
/// nowhere else: its `Debug` shows only the last four digits.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Card {
    pub number: CardNumber,
    pub cvv: Cvv,
    /// 1–12.
    pub expiry_month: u8,
    /// Four digits, e.g. 2030.
    pub expiry_year: u16,
}

impl Card {
    pub fn new(
        number: impl Into<String>,
        cvv: impl Into<String>,
        expiry_month: u8,
        expiry_year: u16,
    ) -> Self {
        Self {
            number: CardNumber::new(number),
            cvv: Cvv::new(cvv),
            expiry_month,
            expiry_year,
        }
    }
}

impl fmt::Debug for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Card")
            .field("number", &self.number)
            .field("cvv", &self.cvv)
            .field("expiry_month", &self.expiry_month)
            .field("expiry_year", &self.expiry_year)
            .finish()
    }
}

/// A full card number (PAN). `Debug` shows the last four digits only, and
/// there is no `Display`: the only way to the digits is
/// [`CardNumber::expose`], which says what it does.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

impl CardNumber {
    pub fn new(number: impl Into<String>) -> Self {
        Self(number.into())
    }

    /// The full number, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The last four characters, as receipts show them; nothing at all
    /// for a string too short to be a card number, where the "last four"
    /// would be most or all of it.
    pub fn last4(&self) -> Option<&str> {
        let len = self.0.len();
        let at = len.checked_sub(4)?;
        (len >= 12 && self.0.is_char_boundary(at)).then(|| &self.0[at..])
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last4() {
            Some(last4) => write!(f, "CardNumber(****{last4})"),
            None => f.write_str("CardNumber(<redacted>)"),
        }
    }
}

impl Serialize for CardNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A card's verification code. `Debug` never shows it; no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvv(String);

impl Cvv {
    pub fn new(cvv: impl Into<String>) -> Self {
        Self(cvv.into())
    }

    /// The code, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cvv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvv(<redacted>)")
    }
}

impl Serialize for Cvv {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Which page of a listing to read: the gateway's defaults (the newest 20)
/// unless set.
///
/// ```
/// use client::{Page, PaymentId};
///
/// let first = Page::default().limit(50);
/// assert_eq!(first.limit, Some(50));
///
/// let last_seen: PaymentId = "pay_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b".parse()?;
/// let next = Page::after(last_seen.clone()).limit(50);
/// assert_eq!(next.starting_after, Some(last_seen));
/// # Ok::<(), client::InvalidPaymentId>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The last payment of the previous page.
    pub starting_after: Option<PaymentId>,
    /// 1–100; the gateway's default is 20.
    pub limit: Option<u32>,
}

impl Page {
    pub fn after(last: PaymentId) -> Self {
        Self {
            starting_after: Some(last),
            limit: None,
        }
    }

    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_is_the_contracts() {
        let request = AuthorizeRequest::usd(
            "ord_1001",
            "cus_77",
            4999,
            Card::new("4111111111111111", "123", 12, 2030),
        );
        let wire = serde_json::to_value(&request).expect("serializes");
        assert_eq!(
            wire,
            serde_json::json!({
                "order_id": "ord_1001", "customer_id": "cus_77", "amount": 4999, "currency": "USD",
                "card": {"number": "4111111111111111", "cvv": "123", "expiry_month": 12, "expiry_year": 2030}
            })
        );
    }

    #[test]
    fn debug_never_shows_the_number_or_the_cvv() {
        let card = Card::new("5555555555554444", "7890", 9, 2030);
        let shown = format!("{card:?} {card:#?}");
        assert!(!shown.contains("5555555555554444"), "{shown}");
        assert!(!shown.contains("555555555555"), "{shown}");
        assert!(!shown.contains("7890"), "{shown}");
        assert!(shown.contains("****4444"), "{shown}");
    }

    #[test]
    fn a_short_number_shows_nothing() {
        for short in ["", "1", "4242", "12345678901"] {
            let number = CardNumber::new(short);
            assert_eq!(number.last4(), None);
            assert_eq!(format!("{number:?}"), "CardNumber(<redacted>)");
        }
        // Not a char boundary four bytes from the end: no panic, nothing shown.
        assert_eq!(CardNumber::new("1234567890€ab").last4(), None);
    }
}
