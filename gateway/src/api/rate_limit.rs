//! Rate limiting per API key: a token bucket per key, in this process's
//! memory.
//!
//! Each key may make `burst` requests at once, then `per_second` a second
//! on average. A request over that is refused with 429 and `Retry-After`
//! before any work is done. The buckets are per process: behind a load
//! balancer with N replicas a key gets up to N times the configured rate.
//! That is the trade for no shared store on the request path; the limit is
//! against a runaway client, not a billing quota.
//!
//! Memory is bounded: only authenticated keys get a bucket (an attacker
//! guessing keys creates none), a bucket idle long enough to be full again
//! is dropped (it is the same as a fresh one), and the map never holds more
//! than `max_keys` buckets.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Keys tracked at most; far more than a gateway has merchants' keys.
pub const MAX_TRACKED_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets {
    by_key: HashMap<Uuid, Bucket>,
    last_sweep: Instant,
}

/// Token buckets, one per API key.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    /// `None` when either number is 0: rate limiting is off.
    pub fn new(per_second: u32, burst: u32, max_keys: usize) -> Option<Self> {
        (per_second > 0 && burst > 0).then(|| Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            max_keys: max_keys.max(1),
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        })
    }

    /// Takes a token for `key` now, or says how long until one is there.
    pub fn check(&self, key: Uuid) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (the clock is the caller's).
    pub fn check_at(&self, key: Uuid, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(buckets.last_sweep) >= self.refill_time() {
            self.sweep(&mut buckets.by_key, now);
            buckets.last_sweep = now;
        }
        if !buckets.by_key.contains_key(&key) && buckets.by_key.len() >= self.max_keys {
            self.sweep(&mut buckets.by_key, now);
            if buckets.by_key.len() >= self.max_keys {
                self.evict_fullest(&mut buckets.by_key, now);
            }
        }
        let bucket = buckets.by_key.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = self.tokens_at(bucket, now);
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    /// Buckets held now (for tests and a gauge).
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_key
            .len()
    }

    fn tokens_at(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// How long an empty bucket takes to be full.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.per_second)
    }

    /// Drops the buckets that are full again: a fresh one is the same.
    fn sweep(&self, by_key: &mut HashMap<Uuid, Bucket>, now: Instant) {
        by_key.retain(|_, bucket| self.tokens_at(bucket, now) < self.burst);
    }

    /// At the cap with every bucket in use: drops the one nearest to full,
    /// which forgives that key the least.
    fn evict_fullest(&self, by_key: &mut HashMap<Uuid, Bucket>, now: Instant) {
        let fullest = by_key
            .iter()
            .max_by(|a, b| {
                self.tokens_at(a.1, now)
                    .total_cmp(&self.tokens_at(b.1, now))
            })
            .map(|(key, _)| *key);
        if let Some(key) = fullest {
            by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn zero_disables() {
        assert!(RateLimiter::new(0, 10, 10).is_none());
        assert!(RateLimiter::new(10, 0, 10).is_none());
        assert!(RateLimiter::new(1, 1, 10).is_some());
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills() {
        let limiter = RateLimiter::new(10, 5, 100).unwrap();
        let key = Uuid::new_v4();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check_at(key, t0), Ok(()));
        }
        let wait = limiter.check_at(key, t0).unwrap_err();
        assert!(
            wait <= ms(101) && wait >= ms(99),
            "one token at 10/s is 100 ms away: {wait:?}"
        );
        // 50 ms on, half a token: still refused, and for 50 ms more.
        let wait = limiter.check_at(key, t0 + ms(50)).unwrap_err();
        assert!(wait <= ms(51) && wait >= ms(49), "{wait:?}");
        assert_eq!(limiter.check_at(key, t0 + ms(101)), Ok(()));
        assert!(limiter.check_at(key, t0 + ms(101)).is_err());
        // Later the bucket is full again, and no fuller than the burst.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert_eq!(limiter.check_at(key, later), Ok(()));
        }
        assert!(limiter.check_at(key, later).is_err());
    }

    #[test]
    fn keys_do_not_share_a_bucket() {
        let limiter = RateLimiter::new(1, 2, 100).unwrap();
        let (noisy, quiet) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        let refused = (0..100)
            .filter(|_| limiter.check_at(noisy, t0).is_err())
            .count();
        assert_eq!(refused, 98);
        assert_eq!(limiter.check_at(quiet, t0), Ok(()));
        assert_eq!(limiter.check_at(quiet, t0), Ok(()));
    }

    #[test]
    fn a_slow_steady_client_is_never_refused() {
        let limiter = RateLimiter::new(10, 1, 100).unwrap();
        let key = Uuid::new_v4();
        let t0 = Instant::now();
        for i in 0..1_000 {
            assert_eq!(limiter.check_at(key, t0 + ms(100 * i)), Ok(()), "at {i}");
        }
    }

    #[test]
    fn a_clock_going_backwards_gives_no_tokens() {
        let limiter = RateLimiter::new(1, 1, 100).unwrap();
        let key = Uuid::new_v4();
        let t0 = Instant::now() + Duration::from_secs(60);
        assert_eq!(limiter.check_at(key, t0), Ok(()));
        assert!(limiter.check_at(key, t0 - Duration::from_secs(30)).is_err());
        assert!(limiter.check_at(key, t0).is_err());
    }

    #[test]
    fn idle_buckets_are_dropped_and_the_map_is_capped() {
        let limiter = RateLimiter::new(10, 10, 3).unwrap();
        let t0 = Instant::now();
        let keys: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for key in &keys {
            assert_eq!(limiter.check_at(*key, t0), Ok(()));
        }
        assert_eq!(limiter.tracked(), 3);
        // At the cap, all in use: a new key evicts one and the count holds.
        let busy = Uuid::new_v4();
        for _ in 0..10 {
            assert_eq!(limiter.check_at(busy, t0), Ok(()));
        }
        assert!(limiter.check_at(busy, t0).is_err());
        assert_eq!(limiter.tracked(), 3);
        // Two seconds on every bucket is full again (1 s refills 10 at 10/s):
        // the sweep drops them all, then the newcomer is tracked alone.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(limiter.check_at(Uuid::new_v4(), later), Ok(()));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn eviction_at_the_cap_spares_the_emptiest_bucket() {
        let limiter = RateLimiter::new(1, 5, 2).unwrap();
        let t0 = Instant::now();
        let (drained, light) = (Uuid::new_v4(), Uuid::new_v4());
        for _ in 0..5 {
            assert_eq!(limiter.check_at(drained, t0), Ok(()));
        }
        assert_eq!(limiter.check_at(light, t0), Ok(()));
        assert_eq!(limiter.check_at(Uuid::new_v4(), t0), Ok(()));
        assert!(
            limiter.check_at(drained, t0).is_err(),
            "the drained key kept its empty bucket"
        );
    }
}
