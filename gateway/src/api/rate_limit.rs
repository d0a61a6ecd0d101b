//! Token buckets in this process's memory, one per key: per API key for
//! requests, per client address for failed authentications.
//!
//! Each key may spend `burst` tokens at once, then `per_second` a second
//! on average. A request over that is refused with 429 and `Retry-After`
//! before any work is done. The buckets are per process: behind a load
//! balancer with N replicas a key gets up to N times the configured rate.
//! That is the trade for no shared store on the request path; the limits
//! are against runaway and guessing clients, not a billing quota.
//!
//! Memory is bounded: only what spends gets a bucket (an authenticated key;
//! an address that failed to authenticate), a bucket idle long enough to
//! be full again is dropped (it is the same as a fresh one), and the map
//! never holds more than `max_keys` buckets.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Keys tracked at most; far more than a gateway has merchants' keys.
pub const MAX_TRACKED_KEYS: usize = 10_000;
/// Client addresses with failed authentications tracked at most. Past it
/// the fullest bucket is dropped, so the addresses failing hardest stay.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Failed authentications per client address.
pub type AddressLimiter = RateLimiter<IpAddr>;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets<K> {
    by_key: HashMap<K, Bucket>,
    last_sweep: Instant,
}

/// Token buckets, one per key (an API key's id by default).
#[derive(Debug)]
pub struct RateLimiter<K = Uuid> {
    per_second: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<Buckets<K>>,
}

impl<K: Copy + Eq + Hash> RateLimiter<K> {
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
    pub fn check(&self, key: K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// Whether `key` has a token now, taking none (and tracking nothing
    /// new: an untracked key has a full bucket), or how long until it has.
    pub fn peek(&self, key: K) -> Result<(), Duration> {
        self.peek_at(key, Instant::now())
    }

    /// [`RateLimiter::peek`] at a given instant.
    pub fn peek_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        match buckets.by_key.get(&key) {
            None => Ok(()),
            Some(bucket) => self.wait_for_token(self.tokens_at(bucket, now)),
        }
    }

    /// [`RateLimiter::check`] at a given instant (the clock is the caller's).
    pub fn check_at(&self, key: K, now: Instant) -> Result<(), Duration> {
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
        let tokens = bucket.tokens;
        self.wait_for_token(tokens)?;
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Returns a token taken by [`RateLimiter::check`] (a bucket never
    /// holds more than its burst; an untracked key's bucket is full).
    pub fn give_back(&self, key: K) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = buckets.by_key.get_mut(&key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    /// Nothing with a token to spend, or how long until there is one.
    fn wait_for_token(&self, tokens: f64) -> Result<(), Duration> {
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
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
    fn sweep(&self, by_key: &mut HashMap<K, Bucket>, now: Instant) {
        by_key.retain(|_, bucket| self.tokens_at(bucket, now) < self.burst);
    }

    /// At the cap with every bucket in use: drops the one nearest to full,
    /// which forgives that key the least.
    fn evict_fullest(&self, by_key: &mut HashMap<K, Bucket>, now: Instant) {
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
        assert!(RateLimiter::<Uuid>::new(0, 10, 10).is_none());
        assert!(RateLimiter::<Uuid>::new(10, 0, 10).is_none());
        assert!(RateLimiter::<Uuid>::new(1, 1, 10).is_some());
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
    fn a_token_given_back_can_be_spent_again_but_never_past_the_burst() {
        let limiter = RateLimiter::new(1, 2, 100).unwrap();
        let key = Uuid::new_v4();
        let now = Instant::now();
        assert!(limiter.check_at(key, now).is_ok());
        assert!(limiter.check_at(key, now).is_ok());
        assert!(limiter.check_at(key, now).is_err());
        limiter.give_back(key);
        assert!(limiter.check_at(key, now).is_ok());
        for _ in 0..5 {
            limiter.give_back(key);
        }
        assert!(limiter.check_at(key, now).is_ok());
        assert!(limiter.check_at(key, now).is_ok());
        assert!(limiter.check_at(key, now).is_err(), "more than the burst");
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
    fn peeking_takes_nothing_and_tracks_nothing() {
        let limiter: AddressLimiter = RateLimiter::new(1, 2, 100).unwrap();
        let address: IpAddr = "203.0.113.7".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(limiter.peek_at(address, t0), Ok(()));
        assert_eq!(limiter.tracked(), 0, "a peek at a stranger tracks nothing");
        assert_eq!(limiter.check_at(address, t0), Ok(()));
        assert_eq!(limiter.peek_at(address, t0), Ok(()));
        assert_eq!(
            limiter.peek_at(address, t0),
            Ok(()),
            "a peek takes no token"
        );
        assert_eq!(limiter.check_at(address, t0), Ok(()));
        let wait = limiter.peek_at(address, t0).unwrap_err();
        assert!(wait <= ms(1001) && wait >= ms(999), "{wait:?}");
        assert_eq!(limiter.peek_at(address, t0 + ms(1000)), Ok(()));
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
