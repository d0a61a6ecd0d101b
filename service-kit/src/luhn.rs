//! The Luhn check digit of card numbers.

/// Whether `digits` is all ASCII digits and passes the Luhn check: from the
/// right, every second digit is doubled (less nine when over nine), and
/// the sum is a multiple of ten.
pub fn is_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .map(|b| u32::from(b - b'0'))
        .enumerate()
        .map(|(i, d)| match (i % 2, d * 2) {
            (0, _) => d,
            (_, doubled) if doubled > 9 => doubled - 9,
            (_, doubled) => doubled,
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn test_cards_pass_and_a_changed_digit_fails() {
        for number in [
            "4111111111111111",
            "4242424242424242",
            "5555555555554444",
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
}
