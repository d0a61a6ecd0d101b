use std::fmt;

use uuid::Uuid;

use super::error::DomainError;

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
pub const MAX_ORDER_ID_LEN: usize = 64;
pub const MAX_CUSTOMER_ID_LEN: usize = 64;

/// Declares an id that travels as a prefix and a lowercase hyphenated
/// UUID v7, and is stored as the bare UUID.
///
/// Version 7 because its leading timestamp keeps new rows at the right edge
/// of the primary-key index and makes ids sort roughly by creation, which the
/// newest-first listings lean on. The prefix exists only on the wire, where
/// it tells one kind of id from another.
macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $error:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            #[allow(clippy::new_without_default)] // a fresh id is not a "default" one
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Refuses anything but the exact form `Display` writes: no
            /// uppercase, braces, URN or unhyphenated forms, no other version.
            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                let text = raw.strip_prefix(Self::PREFIX).ok_or($error)?;
                let uuid = Uuid::try_parse(text).map_err(|_| $error)?;
                if uuid.hyphenated().to_string() != text {
                    return Err($error);
                }
                Self::from_uuid(uuid)
            }

            /// For ids read back from the database, which stores the bare UUID.
            pub fn from_uuid(uuid: Uuid) -> Result<Self, DomainError> {
                if uuid.get_version_num() != 7 || uuid.get_variant() != uuid::Variant::RFC4122 {
                    return Err($error);
                }
                Ok(Self(uuid))
            }

            pub fn as_uuid(self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", Self::PREFIX, self.0.hyphenated())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

prefixed_id!(
    /// A payment's id: `pay_` and a lowercase hyphenated UUID v7.
    PaymentId,
    "pay_",
    DomainError::PaymentIdInvalid
);
prefixed_id!(
    /// A webhook event's id (`evt_…`), the `webhook-id` of its deliveries.
    EventId,
    "evt_",
    DomainError::EventIdInvalid
);
prefixed_id!(
    /// A merchant's webhook endpoint (`we_…`).
    EndpointId,
    "we_",
    DomainError::EndpointIdInvalid
);

/// A merchant: the tenant that owns API keys, payments and idempotency keys.
/// Never on the wire (a merchant is known by its API key), so no prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MerchantId(Uuid);

impl MerchantId {
    #[allow(clippy::new_without_default)] // a fresh id is not a "default" one
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(self) -> Uuid {
        self.0
    }
}

impl fmt::Display for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

/// The client's `Idempotency-Key` header: 1 to 255 printable ASCII
/// characters (space included, control characters not), compared exactly.
///
/// Printable ASCII only, so a key is the same bytes in a header, a log line
/// and a `text` column, with no normalisation to disagree about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(DomainError::IdempotencyKeyCharset);
        }
        if !(1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&raw.len()) {
            return Err(DomainError::IdempotencyKeyLength);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[A-Za-z0-9_-]`: what merchants' own ids look like (`ord_1001`,
/// `cus_77`), and safe to echo in URLs, logs and query strings unescaped.
fn is_reference_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Declares a merchant-chosen reference: 1 to `$max` of `[A-Za-z0-9_-]`.
macro_rules! reference_id {
    ($(#[$doc:meta])* $name:ident, $max:expr, $error:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                if !(1..=Self::MAX_LEN).contains(&raw.len()) || !raw.bytes().all(is_reference_char)
                {
                    return Err($error);
                }
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

reference_id!(
    /// The merchant's order this payment pays for; several payments may share
    /// one (a retry after a decline).
    OrderId,
    MAX_ORDER_ID_LEN,
    DomainError::OrderIdInvalid
);
reference_id!(
    /// The merchant's customer who pays.
    CustomerId,
    MAX_CUSTOMER_ID_LEN,
    DomainError::CustomerIdInvalid
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_ids_are_v7_and_round_trip() {
        let id = PaymentId::new();
        let text = id.to_string();
        assert!(text.starts_with("pay_"), "{text}");
        assert_eq!(text.len(), 4 + 36);
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(PaymentId::parse(&text), Ok(id));
        assert_eq!(PaymentId::from_uuid(id.as_uuid()), Ok(id));
    }

    #[test]
    fn payment_id_refuses_other_shapes() {
        let id = PaymentId::new();
        let uuid = id.as_uuid();
        let refused = [
            String::new(),
            "pay_".to_owned(),
            uuid.hyphenated().to_string(),
            format!("PAY_{}", uuid.hyphenated()),
            format!("pay_{}", uuid.hyphenated()).to_uppercase(),
            format!("pay_{}", uuid.hyphenated().to_string().to_uppercase()),
            format!("pay_{}", uuid.simple()),
            format!("pay_{}", uuid.braced()),
            format!("pay_{}", uuid.urn()),
            format!("pay_{} ", uuid.hyphenated()),
            format!(" pay_{}", uuid.hyphenated()),
            format!("auth_{}", uuid.hyphenated()),
            format!("pay_{}", Uuid::new_v4().hyphenated()),
            format!("pay_{}", Uuid::nil().hyphenated()),
            "pay_not-a-uuid".to_owned(),
        ];
        for raw in refused {
            assert_eq!(
                PaymentId::parse(&raw),
                Err(DomainError::PaymentIdInvalid),
                "{raw:?}"
            );
        }
        assert_eq!(
            PaymentId::from_uuid(Uuid::new_v4()),
            Err(DomainError::PaymentIdInvalid)
        );
    }

    #[test]
    fn payment_ids_sort_by_creation() {
        let first = PaymentId::new();
        let second = PaymentId::new();
        assert!(first < second);
    }

    #[test]
    fn merchant_id_wraps_a_uuid() {
        let uuid = Uuid::new_v4();
        let id = MerchantId::from_uuid(uuid);
        assert_eq!(id.as_uuid(), uuid);
        assert_eq!(id.to_string(), uuid.hyphenated().to_string());
    }

    #[test]
    fn idempotency_key_length() {
        assert_eq!(
            IdempotencyKey::parse("a").map(|k| k.as_str().to_owned()),
            Ok("a".to_owned())
        );
        let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN);
        assert!(IdempotencyKey::parse(&longest).is_ok());
        for raw in [String::new(), "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1)] {
            assert_eq!(
                IdempotencyKey::parse(&raw),
                Err(DomainError::IdempotencyKeyLength),
                "length {}",
                raw.len()
            );
        }
    }

    #[test]
    fn idempotency_key_charset() {
        let every_printable: String = (0x20u8..=0x7e).map(char::from).collect();
        assert!(IdempotencyKey::parse(&every_printable).is_ok());
        assert!(IdempotencyKey::parse("order 1001 / attempt 2").is_ok());
        for raw in ["tab\there", "nl\n", "nul\0", "del\x7f", "é", "ключ", "🔑"] {
            assert_eq!(
                IdempotencyKey::parse(raw),
                Err(DomainError::IdempotencyKeyCharset),
                "{raw:?}"
            );
        }
        // A multi-byte character must not dodge the limit by being counted
        // as one: it is refused before length is looked at.
        let padded = format!("{}é", "k".repeat(MAX_IDEMPOTENCY_KEY_LEN - 1));
        assert_eq!(
            IdempotencyKey::parse(&padded),
            Err(DomainError::IdempotencyKeyCharset)
        );
    }

    #[test]
    fn order_and_customer_ids() {
        assert!(OrderId::parse("ord_1001").is_ok());
        assert!(OrderId::parse("A-z_09").is_ok());
        assert!(OrderId::parse(&"o".repeat(MAX_ORDER_ID_LEN)).is_ok());
        assert!(CustomerId::parse("cus_77").is_ok());
        assert!(CustomerId::parse(&"c".repeat(MAX_CUSTOMER_ID_LEN)).is_ok());
        let too_long = "o".repeat(MAX_ORDER_ID_LEN + 1);
        for raw in [
            "",
            too_long.as_str(),
            "ord 1",
            "ord/1",
            "ord.1",
            "ordé",
            "ord\n",
        ] {
            assert_eq!(
                OrderId::parse(raw),
                Err(DomainError::OrderIdInvalid),
                "{raw:?}"
            );
            assert_eq!(
                CustomerId::parse(raw),
                Err(DomainError::CustomerIdInvalid),
                "{raw:?}"
            );
        }
        assert_eq!(
            OrderId::parse("ord_1001").map(|id| id.to_string()),
            Ok("ord_1001".to_owned())
        );
    }
}
