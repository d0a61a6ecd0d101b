//! The retry policy and its backoff: exponential, capped, with full jitter,
//! and never so long that the next whole attempt would not fit before the
//! deadline.

use std::time::Duration;

use rand::RngExt;

/// How hard one bank call tries before it answers `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The longest one HTTP attempt may take (connect, send, read the whole
    /// response). Never cut short: an attempt is only started while this
    /// much time is left before the deadline.
    pub attempt_timeout: Duration,
    /// The longest the whole call may take, from its start, attempts,
    /// waits for an in-flight slot and backoff sleeps included. At least
    /// `attempt_timeout`, or no attempt fits.
    pub deadline: Duration,
    /// The most attempts in one call (at least one is always made, if the
    /// deadline allows).
    pub max_attempts: u32,
    /// The backoff cap after the first failed attempt; doubles each time.
    pub base_backoff: Duration,
    /// The backoff cap never grows past this.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(10),
            max_attempts: 8,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// The upper bound of the sleep after `failed_attempts` attempts have
/// failed (1 after the first): `min(max_backoff, base_backoff · 2^(n-1))`,
/// without overflowing.
pub fn backoff_cap(policy: &RetryPolicy, failed_attempts: u32) -> Duration {
    let exponent = failed_attempts.saturating_sub(1).min(63);
    let factor = 1u64 << exponent;
    let base = u64::try_from(policy.base_backoff.as_nanos()).unwrap_or(u64::MAX);
    let cap = Duration::from_nanos(base.saturating_mul(factor));
    cap.min(policy.max_backoff)
}

/// The sleep after `failed_attempts` failed attempts, with full jitter:
/// uniform in `0..=backoff_cap`, then clipped to `slack` (how long the
/// call may wait and still fit a whole attempt before its deadline).
pub fn backoff<R: rand::Rng + ?Sized>(
    policy: &RetryPolicy,
    failed_attempts: u32,
    slack: Duration,
    rng: &mut R,
) -> Duration {
    let cap = backoff_cap(policy, failed_attempts);
    let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    let sleep = Duration::from_nanos(rng.random_range(0..=cap_nanos));
    sleep.min(slack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn cap_doubles_from_base_then_stops_at_max() {
        let p = policy();
        assert_eq!(backoff_cap(&p, 1), Duration::from_millis(100));
        assert_eq!(backoff_cap(&p, 2), Duration::from_millis(200));
        assert_eq!(backoff_cap(&p, 3), Duration::from_millis(400));
        assert_eq!(backoff_cap(&p, 5), Duration::from_millis(1600));
        assert_eq!(backoff_cap(&p, 6), Duration::from_secs(2));
        assert_eq!(backoff_cap(&p, 1000), Duration::from_secs(2));
        assert_eq!(backoff_cap(&p, u32::MAX), Duration::from_secs(2));
        // Zero failed attempts is treated like one: never below the base.
        assert_eq!(backoff_cap(&p, 0), Duration::from_millis(100));
    }

    #[test]
    fn huge_base_does_not_overflow() {
        let p = RetryPolicy {
            base_backoff: Duration::from_secs(u64::MAX / 4),
            max_backoff: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        assert_eq!(backoff_cap(&p, 40), Duration::from_secs(5));
    }

    #[test]
    fn backoff_never_exceeds_max_backoff() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=64 {
            for _ in 0..200 {
                let sleep = backoff(&p, attempt, Duration::from_secs(3600), &mut rng);
                assert!(sleep <= p.max_backoff, "{sleep:?} after {attempt}");
                assert!(sleep <= backoff_cap(&p, attempt));
            }
        }
    }

    #[test]
    fn backoff_never_exceeds_time_left() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(11);
        for left_ms in [0u64, 1, 5, 50, 150, 1999] {
            let left = Duration::from_millis(left_ms);
            for attempt in 1..=12 {
                for _ in 0..200 {
                    assert!(backoff(&p, attempt, left, &mut rng) <= left);
                }
            }
        }
    }

    #[test]
    fn backoff_is_jittered_over_the_whole_range() {
        // Full jitter: both small and large sleeps occur.
        let p = policy();
        let mut rng = StdRng::seed_from_u64(3);
        let sleeps: Vec<Duration> = (0..500)
            .map(|_| backoff(&p, 6, Duration::from_secs(60), &mut rng))
            .collect();
        assert!(sleeps.iter().any(|s| *s < Duration::from_millis(500)));
        assert!(sleeps.iter().any(|s| *s > Duration::from_millis(1500)));
    }

    #[test]
    fn zero_base_means_no_sleep() {
        let p = RetryPolicy {
            base_backoff: Duration::ZERO,
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            backoff(&p, 9, Duration::from_secs(1), &mut rng),
            Duration::ZERO
        );
    }
}
