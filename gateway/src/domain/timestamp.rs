//! How the API writes a moment: RFC 3339 in UTC with exactly six
//! fractional digits, the microseconds Postgres keeps
//! (`2030-01-01T12:00:00.000000Z`). chrono's own form writes 0, 3, 6 or 9
//! digits as the value happens to need, so two moments of one payment
//! could differ in length: a parser written against the one it saw first
//! fails on the other, and the strings no longer sort as the moments do.
//!
//! For `#[serde(serialize_with = "…")]` on the views' fields.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(at))
}

/// An optional moment: `null` when absent.
pub fn serialize_option<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

pub fn format(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_moment_has_six_fractional_digits() {
        let whole = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let millis = DateTime::from_timestamp(1_900_000_000, 120_000_000).unwrap();
        let nanos = DateTime::from_timestamp(1_900_000_000, 123_456_789).unwrap();
        assert_eq!(format(&whole), "2030-03-17T17:46:40.000000Z");
        assert_eq!(format(&millis), "2030-03-17T17:46:40.120000Z");
        assert_eq!(format(&nanos), "2030-03-17T17:46:40.123456Z");
        assert!(format(&whole) < format(&millis));
    }
}
