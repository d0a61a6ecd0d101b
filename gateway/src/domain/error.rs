use super::amount::MAX_AMOUNT_CENTS;
use super::ids::{MAX_CUSTOMER_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN, MAX_ORDER_ID_LEN};

/// Why a value from a request was refused.
///
/// Every message is a fixed text: none of them interpolates what the client
/// sent, so an error can be logged or returned without ever carrying a card
/// number or a CVV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("amount must be an integer number of cents")]
    AmountNotInteger,
    #[error("amount must be greater than zero")]
    AmountNotPositive,
    #[error("amount must be at most {max} cents", max = MAX_AMOUNT_CENTS)]
    AmountTooLarge,
    #[error("currency must be \"USD\", the only one supported")]
    UnsupportedCurrency,
    #[error("card.number must be 13 to 19 digits long")]
    CardNumberLength,
    #[error("card.number must contain only the digits 0-9")]
    CardNumberNotDigits,
    #[error("card.number is invalid (it fails the Luhn check)")]
    CardNumberLuhn,
    #[error("card.cvv must be 3 or 4 digits")]
    CvvInvalid,
    #[error("card.expiry_month must be between 1 and 12")]
    ExpiryMonthInvalid,
    #[error("card.expiry_year must be between 2000 and 2099")]
    ExpiryYearInvalid,
    #[error(
        "card.expiry_year is in the past: the card has expired; ask the customer for another card"
    )]
    CardExpiredYear,
    #[error(
        "card.expiry_month is in the past: the card expired at the end of that month; ask the customer for another card"
    )]
    CardExpiredMonth,
    #[error(
        "order_id must be 1 to {max} characters of A-Z, a-z, 0-9, '_' or '-'",
        max = MAX_ORDER_ID_LEN
    )]
    OrderIdInvalid,
    #[error(
        "customer_id must be 1 to {max} characters of A-Z, a-z, 0-9, '_' or '-'",
        max = MAX_CUSTOMER_ID_LEN
    )]
    CustomerIdInvalid,
    #[error("payment id must be \"pay_\" followed by a lowercase UUID v7")]
    PaymentIdInvalid,
    #[error("event id must be \"evt_\" followed by a lowercase UUID v7")]
    EventIdInvalid,
    #[error("webhook endpoint id must be \"we_\" followed by a lowercase UUID v7")]
    EndpointIdInvalid,
    #[error(
        "Idempotency-Key must be 1 to {max} characters long",
        max = MAX_IDEMPOTENCY_KEY_LEN
    )]
    IdempotencyKeyLength,
    #[error("Idempotency-Key must contain only printable ASCII characters")]
    IdempotencyKeyCharset,
}

impl DomainError {
    /// The offending field as the client names it: a JSON path into the
    /// request body, or the header's name.
    pub fn param(self) -> &'static str {
        match self {
            DomainError::AmountNotInteger
            | DomainError::AmountNotPositive
            | DomainError::AmountTooLarge => "amount",
            DomainError::UnsupportedCurrency => "currency",
            DomainError::CardNumberLength
            | DomainError::CardNumberNotDigits
            | DomainError::CardNumberLuhn => "card.number",
            DomainError::CvvInvalid => "card.cvv",
            DomainError::ExpiryMonthInvalid | DomainError::CardExpiredMonth => "card.expiry_month",
            DomainError::ExpiryYearInvalid | DomainError::CardExpiredYear => "card.expiry_year",
            DomainError::OrderIdInvalid => "order_id",
            DomainError::CustomerIdInvalid => "customer_id",
            DomainError::PaymentIdInvalid
            | DomainError::EventIdInvalid
            | DomainError::EndpointIdInvalid => "id",
            DomainError::IdempotencyKeyLength | DomainError::IdempotencyKeyCharset => {
                "Idempotency-Key"
            }
        }
    }

    /// A stable machine-readable code for the API's `error.code`, named after
    /// the codes payment API clients already handle (Stripe's).
    pub fn code(self) -> &'static str {
        match self {
            DomainError::AmountNotInteger => "parameter_invalid_integer",
            DomainError::AmountNotPositive => "amount_too_small",
            DomainError::AmountTooLarge => "amount_too_large",
            DomainError::UnsupportedCurrency => "currency_not_supported",
            DomainError::CardNumberLength
            | DomainError::CardNumberNotDigits
            | DomainError::CardNumberLuhn => "invalid_number",
            DomainError::CvvInvalid => "invalid_cvc",
            DomainError::ExpiryMonthInvalid => "invalid_expiry_month",
            DomainError::ExpiryYearInvalid => "invalid_expiry_year",
            // The bank's code for the same refusal, so that a client
            // handles an expired card one way whoever noticed it.
            DomainError::CardExpiredMonth | DomainError::CardExpiredYear => "card_expired",
            DomainError::OrderIdInvalid
            | DomainError::CustomerIdInvalid
            | DomainError::PaymentIdInvalid
            | DomainError::EventIdInvalid
            | DomainError::EndpointIdInvalid => "parameter_invalid",
            DomainError::IdempotencyKeyLength | DomainError::IdempotencyKeyCharset => {
                "idempotency_key_invalid"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_its_field() {
        let expected = [
            (DomainError::AmountNotInteger, "amount"),
            (DomainError::AmountNotPositive, "amount"),
            (DomainError::AmountTooLarge, "amount"),
            (DomainError::UnsupportedCurrency, "currency"),
            (DomainError::CardNumberLength, "card.number"),
            (DomainError::CardNumberNotDigits, "card.number"),
            (DomainError::CardNumberLuhn, "card.number"),
            (DomainError::CvvInvalid, "card.cvv"),
            (DomainError::ExpiryMonthInvalid, "card.expiry_month"),
            (DomainError::ExpiryYearInvalid, "card.expiry_year"),
            (DomainError::CardExpiredMonth, "card.expiry_month"),
            (DomainError::CardExpiredYear, "card.expiry_year"),
            (DomainError::OrderIdInvalid, "order_id"),
            (DomainError::CustomerIdInvalid, "customer_id"),
            (DomainError::PaymentIdInvalid, "id"),
            (DomainError::EventIdInvalid, "id"),
            (DomainError::EndpointIdInvalid, "id"),
            (DomainError::IdempotencyKeyLength, "Idempotency-Key"),
            (DomainError::IdempotencyKeyCharset, "Idempotency-Key"),
        ];
        for (error, param) in expected {
            assert_eq!(error.param(), param, "{error:?}");
            assert!(!error.code().is_empty(), "{error:?}");
            assert!(error.to_string().contains(param), "{error:?}: {error}");
        }
    }

    #[test]
    fn limits_appear_in_the_messages() {
        assert_eq!(
            DomainError::AmountTooLarge.to_string(),
            "amount must be at most 100000000 cents"
        );
        assert_eq!(
            DomainError::IdempotencyKeyLength.to_string(),
            "Idempotency-Key must be 1 to 255 characters long"
        );
        assert!(DomainError::OrderIdInvalid.to_string().contains(" 64 "));
    }
}
