use std::fmt;

use super::error::DomainError;

/// The largest amount one payment may carry: $1,000,000.00.
///
/// A ceiling far below `i64::MAX` keeps any sum the gateway or its reports
/// might compute from overflowing, and catches a client that sent dollars
/// multiplied by 100 twice. The schema's `CHECK` on `payments.amount` repeats
/// it, and a test keeps the two equal.
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000;

/// A positive amount of money in integer cents, at most [`MAX_AMOUNT_CENTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    /// The amount of `cents`, if it is in `1..=MAX_AMOUNT_CENTS`.
    pub fn from_cents(cents: i64) -> Result<Self, DomainError> {
        if cents <= 0 {
            Err(DomainError::AmountNotPositive)
        } else if cents > MAX_AMOUNT_CENTS {
            Err(DomainError::AmountTooLarge)
        } else {
            Ok(Self(cents))
        }
    }

    /// Parses a decimal number of cents written with ASCII digits only: no
    /// sign, no decimal point, no exponent, no spaces. A leading `-` is
    /// reported as not positive rather than as malformed, which is the more
    /// useful message.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let (negative, digits) = match raw.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DomainError::AmountNotInteger);
        }
        if negative {
            return Err(DomainError::AmountNotPositive);
        }
        // Overflowing i64 means far above the ceiling, not malformed.
        let cents: i64 = digits.parse().map_err(|_| DomainError::AmountTooLarge)?;
        Self::from_cents(cents)
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Amount {
    type Error = DomainError;

    fn try_from(cents: i64) -> Result<Self, Self::Error> {
        Self::from_cents(cents)
    }
}

/// Cents, as the API shows them.
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

/// The currencies the gateway accepts: only US dollars, because the bank
/// settles nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Currency {
    Usd,
}

impl Currency {
    /// Exactly `"USD"`: lowercase or padded codes are refused, so what is
    /// stored is always what a client sees back.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        match raw {
            "USD" => Ok(Currency::Usd),
            _ => Err(DomainError::UnsupportedCurrency),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Currency::Usd => "USD",
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_one_cent_to_the_ceiling() {
        assert_eq!(Amount::from_cents(1).map(Amount::cents), Ok(1));
        assert_eq!(Amount::from_cents(4999).map(Amount::cents), Ok(4999));
        assert_eq!(
            Amount::from_cents(MAX_AMOUNT_CENTS).map(Amount::cents),
            Ok(100_000_000)
        );
        assert_eq!(Amount::try_from(250).map(Amount::cents), Ok(250));
    }

    #[test]
    fn refuses_zero_and_negative() {
        assert_eq!(Amount::from_cents(0), Err(DomainError::AmountNotPositive));
        assert_eq!(Amount::from_cents(-1), Err(DomainError::AmountNotPositive));
        assert_eq!(
            Amount::from_cents(i64::MIN),
            Err(DomainError::AmountNotPositive)
        );
    }

    #[test]
    fn refuses_above_the_ceiling() {
        assert_eq!(
            Amount::from_cents(MAX_AMOUNT_CENTS + 1),
            Err(DomainError::AmountTooLarge)
        );
        assert_eq!(
            Amount::from_cents(i64::MAX),
            Err(DomainError::AmountTooLarge)
        );
    }

    #[test]
    fn parses_plain_digit_strings_only() {
        assert_eq!(Amount::parse("4999").map(Amount::cents), Ok(4999));
        assert_eq!(Amount::parse("0004999").map(Amount::cents), Ok(4999));
        for malformed in ["", "-", "+5", "49.99", "1e3", " 5", "5 ", "0x10", "５"] {
            assert_eq!(
                Amount::parse(malformed),
                Err(DomainError::AmountNotInteger),
                "{malformed:?}"
            );
        }
        assert_eq!(Amount::parse("0"), Err(DomainError::AmountNotPositive));
        assert_eq!(Amount::parse("-5"), Err(DomainError::AmountNotPositive));
        assert_eq!(Amount::parse("100000001"), Err(DomainError::AmountTooLarge));
        assert_eq!(
            Amount::parse(&i64::MAX.to_string()),
            Err(DomainError::AmountTooLarge)
        );
        assert_eq!(
            Amount::parse("99999999999999999999999999"),
            Err(DomainError::AmountTooLarge)
        );
    }

    #[test]
    fn currency_is_exactly_usd() {
        assert_eq!(Currency::parse("USD"), Ok(Currency::Usd));
        assert_eq!(Currency::Usd.as_str(), "USD");
        for other in ["usd", "Usd", "USD ", " USD", "EUR", "", "US"] {
            assert_eq!(
                Currency::parse(other),
                Err(DomainError::UnsupportedCurrency),
                "{other:?}"
            );
        }
    }
}
