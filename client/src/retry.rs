//! How hard one call tries: attempts, the deadline over all of them, the
//! backoff between them, and the gateway's `Retry-After`.

use std::time::Duration;

use rand::RngExt;

/// The limits of one call (all its attempts).
///
/// The defaults suit a checkout: the gateway answers 202 after its own bank
/// deadline (10 s by default), so one attempt may take that long, and two
/// or three such attempts fit in the call's deadline.
///
/// ```
/// use std::time::Duration;
/// use client::RetryPolicy;
///
/// let policy = RetryPolicy {
///     deadline: Duration::from_secs(5),
///     ..RetryPolicy::default()
/// };
/// assert_eq!(policy.max_attempts, 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The most attempts in one call; at least one is always made.
    pub max_attempts: u32,
    /// The longest the whole call may take from its start: attempts and
    /// waits included. No attempt starts after it, and no attempt or wait
    /// runs past it.
    pub deadline: Duration,
    /// The backoff cap after the first failed attempt; it doubles with each
    /// further one.
    pub base_backoff: Duration,
    /// The backoff cap never grows past this.
    pub max_backoff: Duration,
    /// The longest one attempt may take (connect, send, read the whole
    /// answer); clipped to the time left before the deadline.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            deadline: Duration::from_secs(30),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            // Longer than the gateway's default bank deadline (10 s), after
            // which it answers 202: a shorter timeout would cut every slow
            // attempt off just before its answer.
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the wait after `failed_attempts` attempts (1
    /// after the first): `min(max_backoff, base_backoff · 2^(n-1))`,
    /// without overflowing.
    pub fn backoff_cap(&self, failed_attempts: u32) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(63);
        let base = u64::try_from(self.base_backoff.as_nanos()).unwrap_or(u64::MAX);
        let cap = Duration::from_nanos(base.saturating_mul(1_u64 << exponent));
        cap.min(self.max_backoff)
    }

    /// The wait after `failed_attempts` attempts when the gateway did not
    /// say how long: full jitter (uniform in `0..=cap`), so that clients
    /// turned away together do not all come back together.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let cap = u64::try_from(self.backoff_cap(failed_attempts).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=cap))
    }
}

/// `Retry-After` in whole seconds, as the gateway sends it. The HTTP-date
/// form is not used by the gateway; a value that is not a number is
/// ignored and the backoff applies instead.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn the_cap_doubles_then_stops_at_max_backoff() {
        let p = policy();
        assert_eq!(p.backoff_cap(0), Duration::from_millis(100));
        assert_eq!(p.backoff_cap(1), Duration::from_millis(100));
        assert_eq!(p.backoff_cap(2), Duration::from_millis(200));
        assert_eq!(p.backoff_cap(5), Duration::from_millis(1600));
        assert_eq!(p.backoff_cap(6), Duration::from_secs(2));
        assert_eq!(p.backoff_cap(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn a_huge_base_does_not_overflow() {
        let p = RetryPolicy {
            base_backoff: Duration::from_secs(u64::MAX / 4),
            max_backoff: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff_cap(40), Duration::from_secs(5));
    }

    #[test]
    fn the_backoff_stays_under_its_cap() {
        let p = policy();
        for failed in 1..=12 {
            for _ in 0..100 {
                assert!(p.backoff(failed) <= p.backoff_cap(failed));
            }
        }
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
