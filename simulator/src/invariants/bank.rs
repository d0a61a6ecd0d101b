//! The bank itself. The gateways are judged against it, and a gateway
//! retries a 500 whatever its cause, so a bug of the bank's own (a
//! constraint it trips, a deadlock) would pass unseen among the faults its
//! chaos injects; the bank counts the two apart.

use super::{Check, InvariantResult, Observations};

/// 17: the bank counted no error of its own during the run (its
/// `internal_errors` at `/admin/counters` did not move). Not judged when
/// its counters could not be read.
pub fn no_errors_of_its_own(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 17);
    let Some(errors) = obs.bank_own_errors else {
        return c.done();
    };
    c.checked += 1;
    if errors > 0 {
        c.other(
            "the bank".to_owned(),
            format!("answered 500 on its own {errors} times (not injected; its log says why)"),
        );
    }
    c.done()
}
