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

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Past this many entries, those whose deadline has passed are dropped
/// when the next call is entered, and the threshold doubles from what is
/// left: pruning stays amortised O(1) per call.
const PRUNE_FROM_ENTRIES: usize = 1024;

#[derive(Debug)]
struct Calls {
    next: u64,
    /// Every call not returned yet (dropped ones included): its key, and
    /// its deadline. By call, not by key: two calls with one key (a
    /// dropped one and its successor) leave each on its own.
    open: HashMap<u64, (String, Instant)>,
    prune_at: usize,
}

#[derive(Debug)]
pub struct OpenCalls {
    calls: Mutex<Calls>,
}

/// One call's place in [`OpenCalls`], given back by [`OpenCalls::leave`].
#[derive(Debug)]
#[must_use = "a call entered must leave when it returns"]
pub struct OpenCall(u64);

impl Default for OpenCalls {
    fn default() -> Self {
        Self {
            calls: Mutex::new(Calls {
                next: 0,
                open: HashMap::new(),
                prune_at: PRUNE_FROM_ENTRIES,
            }),
        }
    }
}

impl OpenCalls {
    /// A call with `key` starts now and ends, at the bank too, within
    /// `deadline`.
    pub fn enter(&self, key: &str, deadline: Duration) -> OpenCall {
        let now = Instant::now();
        let mut calls = self.lock();
        if calls.open.len() >= calls.prune_at {
            calls.open.retain(|_, (_, until)| *until > now);
            calls.prune_at = (calls.open.len() * 2).max(PRUNE_FROM_ENTRIES);
        }
        calls.next += 1;
        let id = calls.next;
        calls.open.insert(id, (key.to_owned(), now + deadline));
        OpenCall(id)
    }

    /// The call returned: the bank answered it or it gave up on it.
    pub fn leave(&self, call: OpenCall) {
        self.lock().open.remove(&call.0);
    }

    /// The keys of calls that may still be open at the bank now.
    pub fn keys(&self) -> Vec<String> {
        let now = Instant::now();
        let calls = self.lock();
        let keys: BTreeSet<&String> = calls
            .open
            .values()
            .filter(|(_, until)| *until > now)
            .map(|(key, _)| key)
            .collect();
        keys.into_iter().cloned().collect()
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
        let a = open.enter("a", Duration::from_secs(60));
        let _b = open.enter("b", Duration::from_secs(60));
        let _gone = open.enter("gone", Duration::ZERO);
        assert_eq!(open.keys(), ["a", "b"]);
        open.leave(a);
        assert_eq!(open.keys(), ["b"]);
    }

    #[test]
    fn two_calls_with_one_key_keep_it_open_until_both_returned() {
        let open = OpenCalls::default();
        let first = open.enter("k", Duration::from_secs(60));
        let second = open.enter("k", Duration::from_secs(60));
        open.leave(first);
        assert_eq!(open.keys(), ["k"]);
        open.leave(second);
        assert!(open.keys().is_empty());
    }

    #[test]
    fn a_call_that_returns_leaves_only_itself() {
        // A call dropped at the bank (it never leaves), then its key's
        // next call, which returns: the dropped one is still open.
        let open = OpenCalls::default();
        let _dropped = open.enter("k", Duration::from_secs(60));
        let next = open.enter("k", Duration::from_secs(60));
        open.leave(next);
        assert_eq!(open.keys(), ["k"]);
    }

    #[test]
    fn calls_past_their_deadline_are_pruned_as_calls_come() {
        let open = OpenCalls::default();
        for i in 0..PRUNE_FROM_ENTRIES {
            let _dropped = open.enter(&i.to_string(), Duration::ZERO);
        }
        let _live = open.enter("live", Duration::from_secs(60));
        let calls = open.lock();
        assert_eq!(calls.open.len(), 1);
        assert_eq!(calls.prune_at, PRUNE_FROM_ENTRIES);
    }
}
