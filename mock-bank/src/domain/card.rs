use std::fmt;

use crate::api::error::BankError;

/// A card number of 13–19 digits that passes the Luhn check.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

impl CardNumber {
    pub fn parse(raw: &str) -> Result<Self, BankError> {
        let digits_only = raw.bytes().all(|b| b.is_ascii_digit());
        if !digits_only || !(13..=19).contains(&raw.len()) || !service_kit::luhn::is_valid(raw) {
            return Err(BankError::InvalidCard);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }
}

/// Only the last four digits: a card number must not reach a log by accident.
impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNumber(…{})", self.last4())
    }
}

/// A card verification value: 3 or 4 digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvv(String);

impl Cvv {
    pub fn parse(raw: &str) -> Result<Self, BankError> {
        if !(3..=4).contains(&raw.len()) || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BankError::InvalidCvv);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cvv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvv(***)")
    }
}

/// A card's expiry: valid through the last day of `month`/`year`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub month: i16,
    pub year: i16,
}

impl Expiry {
    /// Refuses what cannot be a date; matching it to the card is done later.
    pub fn parse(month: i64, year: i64) -> Result<Self, BankError> {
        let month = i16::try_from(month).ok().filter(|m| (1..=12).contains(m));
        let year = i16::try_from(year)
            .ok()
            .filter(|y| (1900..=9999).contains(y));
        match (month, year) {
            (Some(month), Some(year)) => Ok(Self { month, year }),
            _ => Err(BankError::InvalidCard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_test_cards_pass_luhn() {
        for card in [
            "4111111111111111",
            "4242424242424242",
            "5555555555554444",
            "5105105105105100",
        ] {
            assert!(CardNumber::parse(card).is_ok(), "{card}");
        }
    }

    #[test]
    fn card_numbers_are_refused_for_luhn_length_and_characters() {
        for bad in [
            "4111111111111112",
            "411111111111",
            "41111111111111111111",
            "4111-1111-1111-1111",
            "",
            "４１１１１１１１１１１１１１１１",
        ] {
            assert!(
                matches!(CardNumber::parse(bad), Err(BankError::InvalidCard)),
                "{bad}"
            );
        }
    }

    #[test]
    fn card_number_debug_shows_only_last4() {
        let card = CardNumber::parse("4111111111111111").unwrap();
        assert_eq!(format!("{card:?}"), "CardNumber(…1111)");
    }

    #[test]
    fn cvv_is_three_or_four_digits() {
        assert!(Cvv::parse("123").is_ok());
        assert!(Cvv::parse("1234").is_ok());
        for bad in ["12", "12345", "12a", ""] {
            assert!(
                matches!(Cvv::parse(bad), Err(BankError::InvalidCvv)),
                "{bad}"
            );
        }
        assert_eq!(format!("{:?}", Cvv::parse("123").unwrap()), "Cvv(***)");
    }

    #[test]
    fn an_expiry_is_a_month_of_1_to_12_and_a_four_digit_year() {
        assert_eq!(
            Expiry::parse(3, 2020).unwrap(),
            Expiry {
                month: 3,
                year: 2020
            }
        );
        assert!(Expiry::parse(13, 2030).is_err());
        assert!(Expiry::parse(0, 2030).is_err());
        assert!(Expiry::parse(12, i64::MAX).is_err());
    }
}
