//! Test card numbers: Luhn-valid, 16 digits, in a range the seeded cards avoid.

use rand::{Rng, RngExt};

/// Every generated number starts with this (a Visa test range).
const PREFIX: &str = "4000";
const LENGTH: usize = 16;

/// A random 16-digit card number: [`PREFIX`], 11 random digits, and the
/// Luhn check digit.
pub fn random_card_number(rng: &mut impl Rng) -> String {
    let mut number = String::with_capacity(LENGTH);
    number.push_str(PREFIX);
    while number.len() < LENGTH - 1 {
        number.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    number.push(char::from(b'0' + luhn_check_digit(&number)));
    number
}

/// The digit that makes `payload` followed by it pass the Luhn check.
/// `payload` must be ASCII digits.
fn luhn_check_digit(payload: &str) -> u8 {
    // Once the check digit is appended, the payload's last digit is the
    // first one doubled.
    let sum = luhn_sum(payload, true);
    u8::try_from((10 - sum % 10) % 10).expect("a single digit")
}

/// Whether `number` is all digits and passes the Luhn check.
pub fn passes_luhn(number: &str) -> bool {
    !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && luhn_sum(number, false).is_multiple_of(10)
}

/// The Luhn sum of `digits`, from the right; `double_first` says whether
/// the rightmost digit is doubled.
fn luhn_sum(digits: &str, double_first: bool) -> u32 {
    digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if (i % 2 == 0) == double_first {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn luhn_agrees_with_the_seeded_test_cards() {
        for card in [
            "4111111111111111",
            "4242424242424242",
            "5555555555554444",
            "5105105105105100",
        ] {
            assert!(passes_luhn(card), "{card}");
        }
        assert!(!passes_luhn("4111111111111112"));
        assert!(!passes_luhn("4111x11111111111"));
        assert!(!passes_luhn(""));
    }

    #[test]
    fn the_check_digit_completes_known_numbers() {
        assert_eq!(luhn_check_digit("411111111111111"), 1);
        assert_eq!(luhn_check_digit("510510510510510"), 0);
        assert_eq!(luhn_check_digit("7992739871"), 3);
    }

    #[test]
    fn every_generated_number_is_16_digits_and_passes_luhn() {
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..10_000 {
            let number = random_card_number(&mut rng);
            assert_eq!(number.len(), 16, "{number}");
            assert!(number.bytes().all(|b| b.is_ascii_digit()), "{number}");
            assert!(number.starts_with(PREFIX), "{number}");
            assert!(passes_luhn(&number), "{number}");
        }
    }

    #[test]
    fn generated_numbers_differ() {
        let mut rng = StdRng::seed_from_u64(7);
        let numbers: std::collections::HashSet<String> =
            (0..1000).map(|_| random_card_number(&mut rng)).collect();
        assert_eq!(numbers.len(), 1000);
    }
}
