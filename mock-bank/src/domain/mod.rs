//! Request values parsed into types that cannot hold an invalid value.

mod card;
mod ids;

pub use card::{CardNumber, Cvv, Expiry};
pub use ids::{AuthorizationId, CaptureId, RefundId, VoidId};

use crate::api::error::BankError;

/// An amount in cents, strictly positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    pub fn parse(cents: i64) -> Result<Self, BankError> {
        if cents < 1 {
            return Err(BankError::InvalidAmount);
        }
        Ok(Self(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Amount;

    #[test]
    fn amounts_must_be_positive() {
        assert!(Amount::parse(0).is_err());
        assert!(Amount::parse(-1).is_err());
        assert!(Amount::parse(i64::MIN).is_err());
        assert_eq!(Amount::parse(1).unwrap().cents(), 1);
        assert_eq!(Amount::parse(i64::MAX).unwrap().cents(), i64::MAX);
    }
}
