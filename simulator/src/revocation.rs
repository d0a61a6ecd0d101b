//! An API key revoked halfway through a run, and what the gateways did
//! with it.
//!
//! Beside the traffic, a prober lists payments with a spare key of
//! FicMart's every [`PROBE_EVERY`], taking the replicas in turn, and
//! records each answer; once half the flows are done, it revokes the key in
//! the gateways' database, as `gateway api-key revoke` does. The gateways
//! take a key that authenticated on trust for [`API_KEY_CACHE_MS`] (the
//! simulator starts them with it), so a request sent that long after the
//! revocation committed must be refused, whichever replica it reaches,
//! however many were killed and restarted meanwhile; and the key must not
//! be refused before it was revoked. Invariant 16 judges. Refusals are
//! few (see [`PROBE_EVERY_REVOKED`]): each spends the failure budget the
//! run's traffic shares with the prober.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Mutex, watch};

use crate::driver::Driver;
use crate::run::Replicas;
use crate::stats::micros;

/// How long the simulator's gateways take a key that authenticated on
/// trust (their `--api-key-cache-ms`): the longest a revoked key may work.
pub const API_KEY_CACHE_MS: u64 = 1_000;
/// Between two probes while the key works.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// And once it is revoked: each refusal spends the failure budget of the
/// simulator's address (`AUTH_FAILURE_LIMIT_*`), which the run's traffic
/// shares, so the prober spends a few of its twenty.
const PROBE_EVERY_REVOKED: Duration = Duration::from_millis(250);
/// Probes per replica sent past the cache's lifetime, after which the
/// prober stops.
const JUDGED_PER_REPLICA: usize = 2;
/// One probe's answer, at most.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One request made with the spare key.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Probe {
    /// Microseconds from the traffic's start to the request's sending.
    pub sent_us: u64,
    /// And to its answer (or to giving up on one).
    pub answered_us: u64,
    /// The HTTP status; `None` when there was no answer (a replica down).
    pub status: Option<u16>,
}

/// The spare key's story.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KeyRevocation {
    /// The gateways' `API_KEY_CACHE_MS`.
    pub cache_ms: u64,
    /// Microseconds from the traffic's start to the first try at the
    /// revocation, and to one that returned: it committed in between.
    /// `None` while not tried, or not revoked (the traffic ended first, or
    /// every try failed).
    pub revoking_us: Option<u64>,
    pub revoked_us: Option<u64>,
    pub probes: Vec<Probe>,
}

impl KeyRevocation {
    /// From when (microseconds from the traffic's start) every request with
    /// the key must be refused: the cache's lifetime after the revocation
    /// committed. `None` while it is not revoked.
    pub fn refused_from_us(&self) -> Option<u64> {
        self.revoked_us
            .map(|at| at.saturating_add(self.cache_ms.saturating_mul(1_000)))
    }
}

/// Probes with `key` until `stop`, revoking it in `database_url` once
/// half of `flows` are done.
pub async fn probe_and_revoke(
    driver: Arc<Driver>,
    replicas: Arc<Mutex<Replicas>>,
    key: String,
    database_url: String,
    flows: usize,
    mut stop: watch::Receiver<bool>,
) -> KeyRevocation {
    let started = driver.started();
    let half = u64::try_from(flows / 2).unwrap_or(u64::MAX);
    let http = reqwest::Client::new();
    let mut story = KeyRevocation {
        cache_ms: API_KEY_CACHE_MS,
        ..KeyRevocation::default()
    };
    let mut judged = 0;
    for turn in 0_usize.. {
        let pause = match story.revoked_us {
            None => PROBE_EVERY,
            Some(_) => PROBE_EVERY_REVOKED,
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
        if story.revoked_us.is_none() && driver.flows_done.load(Ordering::Relaxed) >= half {
            // From the first try: a try that failed may still have committed.
            story.revoking_us.get_or_insert(micros(started.elapsed()));
            // A failed try is made again at the next probe.
            if revoke(&database_url, &key).await.is_ok() {
                story.revoked_us = Some(micros(started.elapsed()));
            }
        }
        let urls = replicas.lock().await.urls();
        if judged >= urls.len() * JUDGED_PER_REPLICA {
            continue;
        }
        let Some(url) = urls.get(turn % urls.len().max(1)) else {
            continue;
        };
        let sent_us = micros(started.elapsed());
        if story.refused_from_us().is_some_and(|from| sent_us >= from) {
            judged += 1;
        }
        let status = http
            .get(format!("{url}/v1/payments?limit=1"))
            .bearer_auth(&key)
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .ok()
            .map(|response| response.status().as_u16());
        story.probes.push(Probe {
            sent_us,
            answered_us: micros(started.elapsed()),
            status,
        });
    }
    story
}

/// `gateway api-key revoke`'s statement, committed when it returns (a key
/// an earlier try revoked is left as it is).
async fn revoke(database_url: &str, key: &str) -> anyhow::Result<()> {
    let pool = gateway::store::connect(database_url, 1, Duration::from_secs(10)).await?;
    let revoked = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(gateway::store::merchants::hash_key(key))
    .execute(&pool)
    .await;
    pool.close().await;
    revoked?;
    Ok(())
}
