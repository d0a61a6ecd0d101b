use std::fmt;

use uuid::Uuid;

/// Declares an identifier shown on the wire as a prefix plus a lowercase UUID.
macro_rules! prefixed_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// `None` for anything but the prefix and a lowercase hyphenated UUID.
            pub fn parse(raw: &str) -> Option<Self> {
                let uuid = raw.strip_prefix(Self::PREFIX)?;
                let parsed = Uuid::try_parse(uuid).ok()?;
                (parsed.hyphenated().to_string() == uuid).then_some(Self(parsed))
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

prefixed_id!(AuthorizationId, "auth_");
prefixed_id!(CaptureId, "cap_");
prefixed_id!(VoidId, "void_");
prefixed_id!(RefundId, "ref_");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_other_shapes() {
        let id = AuthorizationId::random();
        assert_eq!(AuthorizationId::parse(&id.to_string()), Some(id));
        assert!(id.to_string().starts_with("auth_"));
        let upper = id.to_string().to_uppercase().replace("AUTH_", "auth_");
        assert_eq!(AuthorizationId::parse(&upper), None);
        assert_eq!(
            AuthorizationId::parse(&id.to_string().replace("auth_", "cap_")),
            None
        );
        assert_eq!(CaptureId::parse("cap_not-a-uuid"), None);
        assert_eq!(RefundId::parse(""), None);
        assert_eq!(VoidId::parse(&format!("void_{}", id.0.simple())), None);
    }
}
