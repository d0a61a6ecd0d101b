use std::fmt;

use super::error::DomainError;

/// The card networks the gateway tells apart, from the number's prefix.
///
/// The brand is only shown on the receipt; the bank decides whether it takes
/// the card, so an unrecognised prefix is `Unknown`, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardBrand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Unknown,
}

impl CardBrand {
    pub const ALL: [CardBrand; 5] = [
        CardBrand::Visa,
        CardBrand::Mastercard,
        CardBrand::Amex,
        CardBrand::Discover,
        CardBrand::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CardBrand::Visa => "visa",
            CardBrand::Mastercard => "mastercard",
            CardBrand::Amex => "amex",
            CardBrand::Discover => "discover",
            CardBrand::Unknown => "unknown",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|brand| brand.as_str() == raw)
    }

    /// `digits` must be all ASCII digits and at least 6 long, which a parsed
    /// [`CardNumber`] guarantees.
    fn of(digits: &str) -> Self {
        let prefix = |len: usize| -> u32 {
            digits[..len]
                .bytes()
                .fold(0, |n, b| n * 10 + u32::from(b - b'0'))
        };
        match (prefix(1), prefix(2), prefix(3), prefix(4)) {
            (4, _, _, _) => CardBrand::Visa,
            (_, 34 | 37, _, _) => CardBrand::Amex,
            (_, 51..=55, _, _) | (_, _, _, 2221..=2720) => CardBrand::Mastercard,
            (_, 65, _, _) | (_, _, 644..=649, _) | (_, _, _, 6011) => CardBrand::Discover,
            _ => CardBrand::Unknown,
        }
    }
}

impl fmt::Display for CardBrand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for CardBrand {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A primary account number: 13 to 19 ASCII digits passing the Luhn check.
///
/// The number must never be stored, logged or returned, so this type has no
/// `Serialize`, its `Debug` and `Display` show only the brand and the last
/// four digits, and the digits themselves come out only through
/// [`CardNumber::expose_for_bank`].
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

impl CardNumber {
    pub const MIN_LEN: usize = 13;
    pub const MAX_LEN: usize = 19;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        // Bytes, not chars: `char::is_numeric` would let "４" or "٤" through.
        if !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DomainError::CardNumberNotDigits);
        }
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&raw.len()) {
            return Err(DomainError::CardNumberLength);
        }
        if !service_kit::luhn::is_valid(raw) {
            return Err(DomainError::CardNumberLuhn);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn brand(&self) -> CardBrand {
        CardBrand::of(&self.0)
    }

    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }

    /// The full number, for the one place that may hold it: the body of the
    /// authorization request to the bank. Never write it to a log, an error,
    /// a database row or a response; a review should be able to find every
    /// use of the card number by searching for this method's name.
    pub fn expose_for_bank(&self) -> &str {
        &self.0
    }
}

/// Only the brand and the last four: a card number must not reach a log by
/// accident through `{:?}` on a struct that holds one.
impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNumber({} …{})", self.brand(), self.last4())
    }
}

impl fmt::Display for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} …{}", self.brand(), self.last4())
    }
}

/// A card verification value: 3 or 4 ASCII digits. Never stored anywhere;
/// it lives only for the authorization request.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvv(String);

impl Cvv {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if !(3..=4).contains(&raw.len()) || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DomainError::CvvInvalid);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The digits, for the authorization request to the bank and nothing
    /// else (see [`CardNumber::expose_for_bank`]).
    pub fn expose_for_bank(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cvv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvv(***)")
    }
}

/// A card's expiry month and year, as printed on it.
///
/// A card is valid through the last day of its expiry month. One whose
/// month has passed (in UTC) is refused by the gateway itself, before
/// anything is stored or sent: see [`CardExpiry::ensure_valid_in`]. A card
/// the gateway lets through may still be declined by the bank as expired
/// (402 `card_expired`): around midnight at a month's end the two clocks
/// may disagree, and the bank's answer is the one that counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CardExpiry {
    month: u8,
    year: u16,
}

impl CardExpiry {
    pub const MIN_YEAR: u16 = 2000;
    pub const MAX_YEAR: u16 = 2099;

    /// Takes the JSON integers as they come, so that a negative or huge
    /// value is refused here rather than wrapped by a cast.
    pub fn new(month: i64, year: i64) -> Result<Self, DomainError> {
        let month = u8::try_from(month)
            .ok()
            .filter(|m| (1..=12).contains(m))
            .ok_or(DomainError::ExpiryMonthInvalid)?;
        let year = u16::try_from(year)
            .ok()
            .filter(|y| (Self::MIN_YEAR..=Self::MAX_YEAR).contains(y))
            .ok_or(DomainError::ExpiryYearInvalid)?;
        Ok(Self { month, year })
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn year(self) -> u16 {
        self.year
    }

    /// Refuses a card whose expiry month is before `year`-`month` (the
    /// current month, in UTC): the card is valid through the end of its
    /// expiry month, so the current month itself is still good. The error
    /// names the field that is in the past.
    pub fn ensure_valid_in(self, year: i32, month: u32) -> Result<(), DomainError> {
        let (year_now, month_now) = (i64::from(year), i64::from(month));
        let (expiry_year, expiry_month) = (i64::from(self.year), i64::from(self.month));
        if expiry_year < year_now {
            Err(DomainError::CardExpiredYear)
        } else if expiry_year == year_now && expiry_month < month_now {
            Err(DomainError::CardExpiredMonth)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VISA: &str = "4111111111111111";

    /// `body` followed by the digit that makes it pass the Luhn check.
    fn with_check_digit(body: &str) -> String {
        let check = service_kit::luhn::check_digit(body).expect("a body of digits");
        format!("{body}{check}")
    }

    #[test]
    fn accepts_valid_numbers_of_every_length() {
        for len in CardNumber::MIN_LEN..=CardNumber::MAX_LEN {
            let number = with_check_digit(&"4".repeat(len - 1));
            let card = CardNumber::parse(&number).expect("valid number");
            assert_eq!(card.expose_for_bank(), number);
            assert_eq!(card.last4(), &number[len - 4..]);
        }
    }

    #[test]
    fn refuses_wrong_lengths() {
        for len in [0, 1, 12, 20, 30] {
            let number = if len == 0 {
                String::new()
            } else {
                with_check_digit(&"4".repeat(len - 1))
            };
            assert_eq!(
                CardNumber::parse(&number),
                Err(DomainError::CardNumberLength),
                "length {len}"
            );
        }
    }

    #[test]
    fn refuses_luhn_failures() {
        assert_eq!(
            CardNumber::parse("4111111111111112"),
            Err(DomainError::CardNumberLuhn)
        );
        // A swap of two adjacent different digits is what Luhn exists to catch.
        assert_eq!(
            CardNumber::parse("4111111111111111".replacen("41", "14", 1).as_str()),
            Err(DomainError::CardNumberLuhn)
        );
    }

    #[test]
    fn refuses_anything_but_ascii_digits() {
        for raw in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            " 4111111111111111",
            "4111111111111111\n",
            "411111111111111a",
            "-4111111111111111",
            "+4111111111111111",
            // Full-width and Arabic-Indic digits are numeric to Unicode.
            "４１１１１１１１１１１１１１１１",
            "٤١١١١١١١١١١١١١١١",
        ] {
            assert_eq!(
                CardNumber::parse(raw),
                Err(DomainError::CardNumberNotDigits),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn brands_from_prefixes() {
        let cases = [
            ("4111111111111111", CardBrand::Visa),
            ("4242424242424242", CardBrand::Visa),
            ("5555555555554444", CardBrand::Mastercard),
            ("5105105105105100", CardBrand::Mastercard),
            ("2221000000000009", CardBrand::Mastercard),
            ("2720990000000000", CardBrand::Mastercard),
            ("378282246310005", CardBrand::Amex),
            ("371449635398431", CardBrand::Amex),
            ("6011111111111117", CardBrand::Discover),
            ("6445644564456445", CardBrand::Discover),
            ("6500000000000002", CardBrand::Discover),
            ("3530111333300000", CardBrand::Unknown),
            ("2220990000000000", CardBrand::Unknown),
            ("5610591081018250", CardBrand::Unknown),
        ];
        for (number, brand) in cases {
            let number = with_check_digit(&number[..number.len() - 1]);
            let card = CardNumber::parse(&number).expect("valid number");
            assert_eq!(card.brand(), brand, "{number}");
        }
    }

    #[test]
    fn brand_strings_round_trip() {
        for brand in CardBrand::ALL {
            assert_eq!(CardBrand::parse(brand.as_str()), Some(brand));
        }
        assert_eq!(CardBrand::parse("Visa"), None);
    }

    #[test]
    fn debug_and_display_hide_the_number() {
        let card = CardNumber::parse(VISA).expect("valid number");
        assert_eq!(format!("{card:?}"), "CardNumber(visa …1111)");
        assert_eq!(card.to_string(), "visa …1111");
        let holder = Some((card.clone(), 1));
        assert!(!format!("{holder:?}").contains(VISA));
        assert!(!format!("{holder:#?}").contains(VISA));
    }

    #[test]
    fn errors_never_carry_the_number() {
        for raw in ["4111111111111112", "41111111111", "4111 1111 1111 1111"] {
            let error = CardNumber::parse(raw).expect_err("invalid number");
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("41111111111"), "{shown}");
        }
    }

    #[test]
    fn cvv_is_three_or_four_ascii_digits() {
        assert_eq!(
            Cvv::parse("123").map(|c| c.expose_for_bank().to_owned()),
            Ok("123".to_owned())
        );
        assert!(Cvv::parse("1234").is_ok());
        for raw in ["", "12", "12345", "12a", " 123", "１２３", "-12"] {
            assert_eq!(Cvv::parse(raw), Err(DomainError::CvvInvalid), "{raw:?}");
        }
    }

    #[test]
    fn cvv_debug_is_masked() {
        let cvv = Cvv::parse("987").expect("valid cvv");
        assert_eq!(format!("{cvv:?}"), "Cvv(***)");
        let error = Cvv::parse("98x").expect_err("invalid cvv");
        assert!(!format!("{error} {error:?}").contains("98"));
    }

    #[test]
    fn expiry_bounds() {
        let expiry = CardExpiry::new(12, 2030).expect("valid expiry");
        assert_eq!((expiry.month(), expiry.year()), (12, 2030));
        assert!(CardExpiry::new(1, 2000).is_ok());
        assert!(CardExpiry::new(12, 2099).is_ok());
        for month in [0, 13, -1, 256 + 1, i64::MAX, i64::MIN] {
            assert_eq!(
                CardExpiry::new(month, 2030),
                Err(DomainError::ExpiryMonthInvalid),
                "{month}"
            );
        }
        for year in [1999, 2100, 30, -2030, 65536 + 2030, i64::MAX] {
            assert_eq!(
                CardExpiry::new(12, year),
                Err(DomainError::ExpiryYearInvalid),
                "{year}"
            );
        }
    }

    #[test]
    fn a_card_is_valid_through_the_end_of_its_expiry_month() {
        let expiry = CardExpiry::new(3, 2026).expect("valid expiry");
        assert_eq!(expiry.ensure_valid_in(2026, 3), Ok(()), "its own month");
        assert_eq!(expiry.ensure_valid_in(2026, 2), Ok(()));
        assert_eq!(expiry.ensure_valid_in(2025, 12), Ok(()));
        assert_eq!(
            expiry.ensure_valid_in(2026, 4),
            Err(DomainError::CardExpiredMonth)
        );
        assert_eq!(
            expiry.ensure_valid_in(2027, 1),
            Err(DomainError::CardExpiredYear)
        );
        assert_eq!(
            CardExpiry::new(12, 2025).unwrap().ensure_valid_in(2026, 1),
            Err(DomainError::CardExpiredYear)
        );
        for error in [DomainError::CardExpiredMonth, DomainError::CardExpiredYear] {
            assert_eq!(error.code(), "card_expired");
        }
    }

    proptest! {
        #[test]
        fn no_valid_number_leaks_through_formatting(body in "[0-9]{12,18}") {
            let number = with_check_digit(&body);
            let card = CardNumber::parse(&number).expect("valid by construction");
            let shown = format!("{card:?} {card} {card:#?}");
            prop_assert!(!shown.contains(&number));
            prop_assert!(!shown.contains(&number[..number.len() - 4]));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(raw in "\\PC{0,40}") {
            let _ = CardNumber::parse(&raw);
            let _ = Cvv::parse(&raw);
        }
    }
}
