//! The keyed calls this process may still have open at the bank.
//!
//! A call's future can be dropped while the bank is working on its request:
//! a task aborted at shutdown, a request cut off by a forced stop. The bank
//! finishes it anyway. Until the call's deadline has passed, its operation's
//! lease must not be handed back, or another replica could send the same
//! key beside it. So a call is entered here before its first attempt and
//! removed only when it returns; a dropped call stays until its deadline,
//! by which every attempt it made has ended (an attempt is given its whole
//! timeout before the deadline, or is not made).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Past this many entries, those whose deadline has passed are dropped
/// when the next call is entered, and the threshold doubles from what is
/// left: pruning stays amortised O(1) per call.
const PRUNE_FROM_ENTRIES: usize = 1024;

#[derive(Debug)]
struct Open {
    /// Calls with this key not returned yet (dropped ones included).
    calls: usize,
    /// The latest deadline of those calls.
    until: Instant,
}

#[derive(Debug)]
struct Calls {
    by_key: HashMap<String, Open>,
    prune_at: usize,
}

#[derive(Debug)]
pub struct OpenCalls {
    calls: Mutex<Calls>,
}

impl Default for OpenCalls {
    fn default() -> Self {
        Self {
            calls: Mutex::new(Calls {
                by_key: HashMap::new(),
                prune_at: PRUNE_FROM_ENTRIES,
            }),
        }
    }
}

impl OpenCalls {
    /// A call with `key` starts now and ends, at the bank too, within
    /// `deadline`.
    pub fn enter(&self, key: &str, deadline: Duration) {
        let now = Instant::now();
        let until = now + deadline;
        let mut calls = self.lock();
        if calls.by_key.len() >= calls.prune_at {
            calls.by_key.retain(|_, open| open.until > now);
            calls.prune_at = (calls.by_key.len() * 2).max(PRUNE_FROM_ENTRIES);
        }
        let open = calls
            .by_key
            .entry(key.to_owned())
            .or_insert(Open { calls: 0, until });
        open.calls += 1;
        open.until = open.until.max(until);
    }

    /// A call with `key` returned: the bank answered it or gave up on it.
    pub fn leave(&self, key: &str) {
        let mut calls = self.lock();
        if let Some(open) = calls.by_key.get_mut(key) {
            open.calls -= 1;
            if open.calls == 0 {
                calls.by_key.remove(key);
            }
        }
    }

    /// The keys of calls that may still be open at the bank now.
    pub fn keys(&self) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .by_key
            .iter()
            .filter(|(_, open)| open.until > now)
            .map(|(key, _)| key.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Calls> {
        // Every update leaves the map whole; a panic elsewhere cannot
        // have left it half-changed.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_open_until_it_returns_or_its_deadline_passes() {
        let open = OpenCalls::default();
        open.enter("a", Duration::from_secs(60));
        open.enter("b", Duration::from_secs(60));
        open.enter("gone", Duration::ZERO);
        let mut keys = open.keys();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        open.leave("a");
        assert_eq!(open.keys(), ["b"]);
    }

    #[test]
    fn two_calls_with_one_key_keep_it_open_until_both_returned() {
        let open = OpenCalls::default();
        open.enter("k", Duration::from_secs(60));
        open.enter("k", Duration::from_secs(60));
        open.leave("k");
        assert_eq!(open.keys(), ["k"]);
        open.leave("k");
        assert!(open.keys().is_empty());
    }

    #[test]
    fn calls_past_their_deadline_are_pruned_as_calls_come() {
        let open = OpenCalls::default();
        for i in 0..PRUNE_FROM_ENTRIES {
            open.enter(&i.to_string(), Duration::ZERO);
        }
        open.enter("live", Duration::from_secs(60));
        let calls = open.lock();
        assert_eq!(calls.by_key.len(), 1);
        assert_eq!(calls.prune_at, PRUNE_FROM_ENTRIES);
    }
}
