//! The Luhn check digit of card numbers.

/// Whether `digits` is all ASCII digits and passes the Luhn check: from the
/// right, every second digit is doubled (less nine when over nine), and
/// the sum is a multiple of ten.
pub fn is_valid(digits: &str) -> bool {
    !digits.is_empty() && all_digits(digits) && sum(digits, false).is_multiple_of(10)
}

/// The digit that makes `payload` followed by it pass the Luhn check (0
/// for an empty one); `None` unless `payload` is all ASCII digits.
pub fn check_digit(payload: &str) -> Option<u8> {
    // Once the check digit is appended, the payload's last digit is the
    // first one doubled.
    let sum = sum(payload, true);
    all_digits(payload).then(|| u8::try_from((10 - sum % 10) % 10).expect("a single digit"))
}

fn all_digits(digits: &str) -> bool {
    digits.bytes().all(|b| b.is_ascii_digit())
}

/// The Luhn sum of `digits`, from the right; `double_first` says whether
/// the rightmost digit is doubled. Callers check that they are digits.
fn sum(digits: &str, double_first: bool) -> u32 {
    digits
        .bytes()
        .rev()
        .map(|b| u32::from(b.wrapping_sub(b'0')))
        .enumerate()
        .map(|(i, d)| match ((i % 2 == 0) == double_first, d * 2) {
            (false, _) => d,
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::{check_digit, is_valid};

    #[test]
    fn test_cards_pass_and_a_changed_digit_fails() {
        for number in [
            "4111111111111111",
            "4242424242424242",
            "5555555555554444",
            "5105105105105100",
            "79927398713",
        ] {
            assert!(is_valid(number), "{number}");
        }
        for number in [
            "4111111111111112",
            "79927398710",
            "",
            "4111 1111 1111 1111",
            "411111111111111a",
        ] {
            assert!(!is_valid(number), "{number:?}");
        }
    }

    #[test]
    fn the_check_digit_completes_known_numbers() {
        assert_eq!(check_digit("411111111111111"), Some(1));
        assert_eq!(check_digit("510510510510510"), Some(0));
        assert_eq!(check_digit("7992739871"), Some(3));
        assert_eq!(check_digit("79927x9871"), None);
        assert_eq!(check_digit(""), Some(0));
    }
}
