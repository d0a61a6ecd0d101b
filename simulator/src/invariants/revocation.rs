//! The revoked-key check: a key revoked halfway through the run (see
//! [`crate::revocation`]) stops working within the gateways' key cache
//! lifetime, and works until it is revoked.

use super::{Check, InvariantResult, Observations};

/// 16: every request with the spare key sent `cache_ms` or more after its
/// revocation committed was refused (401, or 429 once the address's
/// failed authentications ran out), whichever replica it reached; none
/// answered before the revocation was tried was refused. Requests that got
/// no answer, or a 503, are not judged: a replica was down.
pub fn revoked_keys_refused(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 16);
    let Some(story) = &obs.revocation else {
        return c.done();
    };
    let refused_from_us = story.refused_from_us();
    for probe in &story.probes {
        let Some(status) = probe.status.filter(|status| *status != 503) else {
            continue;
        };
        let must_be_refused = refused_from_us.is_some_and(|from| probe.sent_us >= from);
        let must_work = story
            .revoking_us
            .is_none_or(|revoking| probe.answered_us < revoking);
        if !(must_be_refused || must_work) {
            continue;
        }
        c.checked += 1;
        let at_ms = probe.sent_us / 1_000;
        if must_be_refused && !matches!(status, 401 | 429) {
            c.other(
                format!("the spare API key at {at_ms} ms"),
                format!(
                    "answered {status}, {} ms after its revocation committed (the gateways take a key on trust for {} ms)",
                    (probe.sent_us - story.revoked_us.unwrap_or_default()) / 1_000,
                    story.cache_ms
                ),
            );
        }
        if must_work && status == 401 {
            c.other(
                format!("the spare API key at {at_ms} ms"),
                "refused before it was revoked".to_owned(),
            );
        }
    }
    c.done()
}
