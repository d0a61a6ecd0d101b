//! API keys that authenticated, remembered for a moment.
//!
//! Every `/v1` request presents a key, and looking it up took a pooled
//! connection and a round trip per request: measured side by side on the
//! latency-bound bench, 12 % of the gateway's CPU per authorization (its
//! process and its Postgres) and about five points of the steady rate. So a key
//! that authenticated is remembered for `API_KEY_CACHE_MS`, by its SHA-256
//! (never the key itself): a revoked key is refused by every replica
//! within that time, however many replicas there are. 0 looks the key up
//! on every request.
//!
//! Only keys that authenticated are remembered. An unknown key is looked up
//! every time (and spends its client's failure budget), so a key created a
//! moment ago works at once, and guessing cannot fill the cache.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::store::merchants::Authenticated;

/// Keys remembered at once, at most. Only keys that authenticated get in,
/// so this bounds a gateway with an unusual number of live keys, not an
/// attacker; past it, keys are looked up every time until some lapse.
pub const MAX_CACHED_KEYS: usize = 10_000;

/// The longest `API_KEY_CACHE_MS` allowed: the longest a revoked key may
/// go on working.
pub const MAX_API_KEY_CACHE_MS: u64 = 60_000;

#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    capacity: usize,
    /// By the key's SHA-256.
    entries: Mutex<HashMap<Vec<u8>, Remembered>>,
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    found: Authenticated,
    until: Instant,
}

impl KeyCache {
    /// `None` when `ttl` is zero: every request looks its key up.
    pub fn new(ttl: Duration, capacity: usize) -> Option<Self> {
        (!ttl.is_zero() && capacity > 0).then(|| Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// What the key with this hash authenticated as, if that was learned
    /// less than the cache's lifetime before `now`.
    pub fn get(&self, hash: &[u8], now: Instant) -> Option<Authenticated> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|remembered| now < remembered.until)
            .map(|remembered| remembered.found)
    }

    /// Remembers that the key with this hash authenticated as `found`, as
    /// read from the database at `read_at` (taken before the read, so that
    /// the entry never outlives a revocation by more than the lifetime).
    pub fn remember(&self, hash: Vec<u8>, found: Authenticated, read_at: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&hash) {
            entries.retain(|_, remembered| read_at < remembered.until);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(
            hash,
            Remembered {
                found,
                until: read_at + self.ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::MerchantId;

    fn key(n: u8) -> Vec<u8> {
        vec![n; 32]
    }

    fn found() -> Authenticated {
        Authenticated {
            merchant: MerchantId::from_uuid(Uuid::new_v4()),
            key_id: Uuid::new_v4(),
        }
    }

    const TTL: Duration = Duration::from_millis(1_000);

    #[test]
    fn a_key_is_remembered_for_the_lifetime_from_its_read_and_not_a_moment_more() {
        let cache = KeyCache::new(TTL, 8).unwrap();
        let read_at = Instant::now();
        let merchant = found();
        assert_eq!(cache.get(&key(1), read_at), None, "nothing before a read");
        cache.remember(key(1), merchant, read_at);
        assert_eq!(cache.get(&key(1), read_at), Some(merchant));
        let last = read_at + TTL - Duration::from_nanos(1);
        assert_eq!(cache.get(&key(1), last), Some(merchant));
        assert_eq!(cache.get(&key(1), read_at + TTL), None, "lapsed");
        assert_eq!(cache.get(&key(2), read_at), None, "another key");
    }

    #[test]
    fn a_full_cache_makes_room_from_lapsed_keys_only() {
        let cache = KeyCache::new(TTL, 2).unwrap();
        let start = Instant::now();
        cache.remember(key(1), found(), start);
        cache.remember(key(2), found(), start + TTL / 2);
        // Full, nothing lapsed: the third key is not remembered.
        cache.remember(key(3), found(), start + TTL / 2);
        assert_eq!(cache.get(&key(3), start + TTL / 2), None);
        assert!(cache.get(&key(1), start + TTL / 2).is_some());
        // Once the first has lapsed, it makes room.
        let later = start + TTL;
        cache.remember(key(3), found(), later);
        assert!(cache.get(&key(3), later).is_some());
        assert!(cache.get(&key(2), later).is_some());
        assert_eq!(cache.get(&key(1), later), None);
    }

    #[test]
    fn a_zero_lifetime_is_no_cache() {
        assert!(KeyCache::new(Duration::ZERO, 8).is_none());
        assert!(KeyCache::new(TTL, 0).is_none());
    }
}

/// A lookup in flight: what it found once it is done (`None` inside: it
/// failed).
type Shared = Arc<OnceCell<Option<Option<Authenticated>>>>;

/// The lookups of keys in flight, one per key: requests that present the
/// same key at once share one query (and the one failure token it takes),
/// so a burst of one valid key's requests on a cold cache (a restart, a
/// new replica) is one lookup, not one each, and is never refused for the
/// tokens its own lookups held. Entries live only while their lookup runs,
/// however it ends (a caller that goes away takes its entry with it).
#[derive(Debug, Default)]
pub struct Lookups {
    in_flight: Mutex<HashMap<Vec<u8>, Shared>>,
}

impl Lookups {
    /// What `lookup` finds for the key with this hash, run once for every
    /// caller that asks while it runs. If it fails, the callers that
    /// shared it fail too (`failed`), at once, rather than each running
    /// the lookup again in turn against a database that just failed.
    pub async fn share<E, F, Fut>(
        &self,
        hash: &[u8],
        lookup: F,
        failed: impl FnOnce() -> E,
    ) -> Result<Option<Authenticated>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Authenticated>, E>>,
    {
        let entry = Entry::join(self, hash);
        let mut own_error = None;
        let outcome = entry
            .cell
            .get_or_init(|| async {
                match lookup().await {
                    Ok(found) => Some(found),
                    Err(e) => {
                        own_error = Some(e);
                        None
                    }
                }
            })
            .await;
        match (*outcome, own_error) {
            (Some(found), _) => Ok(found),
            (None, Some(e)) => Err(e),
            (None, None) => Err(failed()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Shared>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One caller's share of a lookup; the lookup's entry goes when a caller
/// that shares it is done (or dropped), so a finished or abandoned lookup
/// is never served to a later request.
struct Entry<'a> {
    lookups: &'a Lookups,
    hash: &'a [u8],
    cell: Shared,
}

impl<'a> Entry<'a> {
    fn join(lookups: &'a Lookups, hash: &'a [u8]) -> Self {
        let cell = Arc::clone(lookups.lock().entry(hash.to_vec()).or_default());
        Self {
            lookups,
            hash,
            cell,
        }
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.lookups.lock();
        if in_flight
            .get(self.hash)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            in_flight.remove(self.hash);
        }
    }
}
