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
    let check = service_kit::luhn::check_digit(&number).expect("the payload is digits");
    number.push(char::from(b'0' + check));
    number
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn every_generated_number_is_16_digits_and_passes_luhn() {
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..10_000 {
            let number = random_card_number(&mut rng);
            assert_eq!(number.len(), 16, "{number}");
            assert!(number.bytes().all(|b| b.is_ascii_digit()), "{number}");
            assert!(number.starts_with(PREFIX), "{number}");
            assert!(service_kit::luhn::is_valid(&number), "{number}");
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
