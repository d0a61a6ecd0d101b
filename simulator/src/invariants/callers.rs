//! One caller per bank key at a time: the lease that lets one process call
//! the bank for an operation must mean what it says.

use std::collections::BTreeMap;

use super::{Check, InvariantResult, Observations, TappedCall};

/// 11: no two gateway processes had a request with one bank idempotency
/// key in flight at the bank at once. The bank would serialise them and
/// answer both alike, so no money moves twice; but two callers at once
/// mean two processes each believed it held the operation's lease, and the
/// next bug will not be so lucky. (One process's own retry after its own
/// timeout may overlap its earlier attempt, which the bank is still
/// answering: that is one caller. A call still open when the run was
/// observed counts as open for ever. A call without the gateway's
/// `X-Gateway-Instance` header has no known caller, so it is nobody's
/// retry: it fails beside any other call open with its key, rather than
/// two such calls passing as one caller.)
pub fn one_caller_per_key(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 11);
    let Some(tapped) = &obs.tapped else {
        return c.done();
    };
    let mut by_key: BTreeMap<&str, Vec<&TappedCall>> = BTreeMap::new();
    for call in tapped {
        if let Some(key) = call.key.as_deref() {
            by_key.entry(key).or_default().push(call);
        }
    }
    for (key, mut calls) in by_key {
        c.checked += 1;
        calls.sort_by_key(|call| call.started_us);
        let Some((first, second)) = two_callers_at_once(&calls) else {
            continue;
        };
        let message = format!(
            "two gateway processes with bank key {key} at once: one from +{} ms, another from +{} ms while the first was open",
            first.started_us / 1000,
            second.started_us / 1000
        );
        match obs.operations.iter().find(|o| o.bank_key == key) {
            Some(operation) => c.payment(&operation.payment_id.clone(), message),
            None => c.other(key.to_owned(), message),
        }
    }
    c.done()
}

/// The first pair of calls (sorted by start) from different (or unknown)
/// callers whose intervals overlap.
fn two_callers_at_once<'a>(calls: &[&'a TappedCall]) -> Option<(&'a TappedCall, &'a TappedCall)> {
    for (i, earlier) in calls.iter().enumerate() {
        let open_until = earlier.ended_us.unwrap_or(u64::MAX);
        let overlapping = calls[i + 1..]
            .iter()
            .take_while(|later| later.started_us < open_until)
            .find(|later| later.caller.is_none() || later.caller != earlier.caller);
        if let Some(later) = overlapping {
            return Some((earlier, later));
        }
    }
    None
}
