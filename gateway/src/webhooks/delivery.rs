//! The delivery workers: every replica runs one loop that claims due
//! deliveries under a lease and sends each as its own task, within two
//! limits (in flight in all, in flight per endpoint) so that one slow
//! receiver cannot take the others' turns.
//!
//! A delivery is at least once: a process that dies mid-attempt leaves the
//! lease to run out and another worker tries again, with the same
//! `webhook-id`. The lease is longer than an attempt can last (its timeout
//! plus a margin), so two workers never send one delivery at the same
//! time; the claim's token fences the record of a worker that overran.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::RngExt;
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::WebhookSettings;
use super::secret::WebhookKey;
use super::signature;
use super::url::{EndpointUrl, PublicOnly};
use super::view::EventView;
use crate::domain::EventType;
use crate::faults::{Faults, Mutant};
use crate::store::batch::{BatchLimits, Batcher, Pressure};
use crate::store::events::{self, EventRecord};
use crate::store::webhooks::{
    self as store, AfterFailure, AttemptOutcome, Busy, ClaimLimits, ClaimedDelivery,
    FinishedAttempt, Recorded,
};

/// The receiver's answer kept per attempt, at most.
pub const RESPONSE_KEPT_BYTES: usize = 1024;
/// An error message kept per attempt, at most.
const ERROR_KEPT_CHARS: usize = 1024;
/// How much longer than an attempt's timeout a claim's lease lasts.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Each retry's delay is the schedule's, moved by up to this fraction
/// either way, so that deliveries that failed together do not all come
/// back together.
const JITTER_FRACTION: f64 = 0.1;
/// How often the backlog gauges are measured.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// Attempts recorded in one statement, at most.
const RECORD_BATCH_ROWS: usize = 256;
/// Payments count as waiting on the database for this long after their
/// writes last queued.
const PRESSURE_WINDOW: Duration = Duration::from_millis(100);
/// How often a worker that yields to payments looks again.
const YIELD_STEP: Duration = Duration::from_millis(20);

/// Runs until aborted. `payments` says when payments' writes queue for the
/// database: the worker then yields (see [`yield_to_payments`]).
pub async fn deliver_forever(
    pool: PgPool,
    settings: Arc<WebhookSettings>,
    key: WebhookKey,
    payments: Pressure,
    faults: Faults,
) {
    let client = match http_client(&settings) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhook delivery cannot start: no HTTP client");
            return;
        }
    };
    // One flusher: the webhook pool is small, and a batch holds one of its
    // connections while it writes. Every attempt in flight may be queued.
    let (recorder, _flushers) = Batcher::spawn(
        "webhook_attempt",
        pool.clone(),
        BatchLimits {
            max_rows: RECORD_BATCH_ROWS,
            flushers: 1,
            queue: settings.max_in_flight.max(1),
        },
        store::record_attempts,
        Faults::default(),
        None,
    );
    let worker = Arc::new(Worker {
        pool,
        recorder,
        client,
        in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
        per_endpoint: KeyedLimits::new(settings.max_in_flight_per_endpoint),
        per_merchant: KeyedLimits::new(settings.max_in_flight_per_merchant),
        freed: Notify::new(),
        settings,
        key,
        faults,
    });
    let mut backlog_at = Instant::now();
    let mut claimed_at = Instant::now();
    loop {
        yield_to_payments(&payments, claimed_at, worker.settings.max_yield).await;
        let claimed = worker.clone().claim_and_send().await;
        claimed_at = Instant::now();
        if backlog_at.elapsed() >= BACKLOG_EVERY {
            worker.report_backlog().await;
            backlog_at = Instant::now();
        }
        // A full claim means more may be due: go again at once. Otherwise
        // wait for the poll, or for an attempt to end: an endpoint at its
        // limit had more due, which may go now that a slot is free.
        if !claimed {
            tokio::select! {
                () = tokio::time::sleep(worker.settings.poll_interval) => {}
                () = worker.freed.notified() => {}
            }
        }
    }
}

/// While payments' writes queue for the database, waits, up to `max_yield`
/// after the last claim. A delivery is never urgent the way an
/// authorization is, and on a machine that is out of CPU or a database that
/// is out of commits, every delivery's share comes out of a payment's (a
/// delivery costs about a third of an authorization: a claim, the event's
/// read, a signed POST, its attempt's record). So under saturation
/// deliveries go once per `max_yield` at most and catch up when the load
/// passes; the lag shows in `gateway_webhook_delivery_lag_seconds` and the
/// time spent waiting in `gateway_webhook_yield_milliseconds_total`.
async fn yield_to_payments(payments: &Pressure, claimed_at: Instant, max_yield: Duration) {
    let started = Instant::now();
    while payments.within(PRESSURE_WINDOW) && claimed_at.elapsed() < max_yield {
        tokio::time::sleep(YIELD_STEP).await;
    }
    let waited = started.elapsed();
    if !waited.is_zero() {
        metrics::counter!("gateway_webhook_yield_milliseconds_total")
            .increment(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
    }
}

/// The client deliveries go out on: no redirects followed (a 3xx is a
/// failed attempt), the attempt's timeout over the whole exchange, no proxy
/// from the environment (a proxy would resolve the receiver's name itself,
/// past the resolver's check), and, unless private addresses are allowed,
/// a resolver that drops them.
fn http_client(settings: &WebhookSettings) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!(
            "ficmart-gateway-webhooks/",
            env!("CARGO_PKG_VERSION")
        ))
        .pool_max_idle_per_host(settings.max_in_flight_per_endpoint);
    if !settings.allow_private_urls {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    builder.build()
}

/// Attempts in flight per key (an endpoint, a merchant), in this process.
struct KeyedLimits {
    limit: usize,
    by_key: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

impl KeyedLimits {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            by_key: Mutex::new(HashMap::new()),
        }
    }

    /// The keys at their limit: a claim leaves their deliveries alone.
    fn busy(&self) -> Vec<Uuid> {
        let map = self.by_key.lock().expect("never poisoned");
        map.iter()
            .filter(|(_, limit)| limit.available_permits() == 0)
            .map(|(key, _)| *key)
            .collect()
    }

    fn of(&self, key: Uuid) -> Arc<Semaphore> {
        let mut map = self.by_key.lock().expect("never poisoned");
        map.entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone()
    }
}

/// One claim's deliveries, each with its event, and when the claim was sent.
struct Claimed {
    deliveries: Vec<(ClaimedDelivery, Arc<EventRecord>)>,
    leased_at: Instant,
}

struct Worker {
    pool: PgPool,
    /// Attempts are recorded in batches: one commit for many deliveries.
    recorder: Batcher<FinishedAttempt, Recorded>,
    client: reqwest::Client,
    settings: Arc<WebhookSettings>,
    key: WebhookKey,
    in_flight: Arc<Semaphore>,
    per_endpoint: KeyedLimits,
    per_merchant: KeyedLimits,
    /// Told when an attempt ends and frees its slots.
    freed: Notify,
    /// Only a mutant reads them here.
    faults: Faults,
}

impl Worker {
    /// One claim, each delivery sent in its own task; whether the claim
    /// took all the room there was.
    async fn claim_and_send(self: Arc<Self>) -> bool {
        let room = self.in_flight.available_permits();
        if room == 0 {
            return false;
        }
        let claimed = match self.claim(room).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "webhook claim failed; retrying");
                return false;
            }
        };
        let mut started = 0;
        for (claim, event) in claimed.deliveries {
            if self.clone().start(claim, event, claimed.leased_at).await {
                started += 1;
            }
        }
        // Claimed and handed back is not full: going again at once would
        // only claim the same rows again.
        started >= room
    }

    /// A claim's lease: an attempt's whole timeout, and a margin for the
    /// time between the claim and the POST.
    fn lease(&self) -> Duration {
        self.settings.timeout + LEASE_MARGIN
    }

    async fn claim(&self, room: usize) -> Result<Claimed, sqlx::Error> {
        let busy = Busy {
            endpoints: self.per_endpoint.busy(),
            merchants: self.per_merchant.busy(),
        };
        let mut conn = self.pool.acquire().await?;
        // Before the statement, whose now() starts the lease: the lease
        // this process counts on never outlasts the database's.
        let leased_at = Instant::now();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let limits = ClaimLimits {
            total: count(room),
            per_endpoint: count(self.settings.max_in_flight_per_endpoint),
            per_merchant: count(self.settings.max_in_flight_per_merchant),
        };
        let claimed = store::claim_due(&mut conn, limits, &busy, self.lease()).await?;
        if claimed.is_empty() {
            return Ok(Claimed {
                deliveries: Vec::new(),
                leased_at,
            });
        }
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.event_id).collect();
        let found: HashMap<Uuid, Arc<EventRecord>> = events::by_ids(&mut conn, &ids)
            .await?
            .into_iter()
            .map(|event| (event.id.as_uuid(), Arc::new(event)))
            .collect();
        let deliveries = claimed
            .into_iter()
            .filter_map(|claim| {
                let event = found.get(&claim.event_id)?.clone();
                Some((claim, event))
            })
            .collect();
        Ok(Claimed {
            deliveries,
            leased_at,
        })
    }

    /// Sends the delivery in a task of its own if every limit has room
    /// and its lease still covers a whole attempt (whether it did);
    /// otherwise hands it back for a later claim. (A claim can wait here:
    /// a slow database, other deliveries of the claim handed back before
    /// it. An attempt that could outlive its lease could meet another
    /// worker's attempt at the receiver, the same delivery twice at once.)
    async fn start(
        self: Arc<Self>,
        claim: ClaimedDelivery,
        event: Arc<EventRecord>,
        leased_at: Instant,
    ) -> bool {
        let slots = (
            self.in_flight.clone().try_acquire_owned(),
            self.per_endpoint.of(claim.endpoint_id).try_acquire_owned(),
            self.per_merchant.of(claim.merchant_id).try_acquire_owned(),
        );
        let covered = leased_at.elapsed() + self.settings.timeout < self.lease();
        let (Ok(total), Ok(endpoint), Ok(merchant), true) = (slots.0, slots.1, slots.2, covered)
        else {
            if !covered {
                tracing::warn!(delivery = %claim.id, "webhook claim waited past its margin; handed back");
            }
            if let Ok(mut conn) = self.pool.acquire().await {
                let _ = store::release(&mut conn, claim.id, claim.lease_token).await;
            }
            return false;
        };
        // The attempt ends by this, whenever its task gets to run: a task
        // started late on a busy machine must not outlive the lease.
        let ends_by = leased_at + self.settings.timeout;
        tokio::spawn(async move {
            self.send(claim, event, ends_by, [total, endpoint, merchant])
                .await;
            self.freed.notify_one();
        });
        true
    }

    async fn send(
        &self,
        claim: ClaimedDelivery,
        event: Arc<EventRecord>,
        ends_by: Instant,
        _slots: [OwnedSemaphorePermit; 3],
    ) {
        let outcome = self.attempt(&claim, &event, ends_by).await;
        let delivered = outcome.delivered();
        metrics::counter!("gateway_webhook_attempts_total",
            "outcome" => if delivered { "delivered" } else { "failed" })
        .increment(1);
        let after_failure = self.after_failure(claim.schedule_step);
        let recorded = self
            .recorder
            .submit(FinishedAttempt {
                claim: claim.clone(),
                outcome,
                after_failure,
            })
            .await;
        match recorded {
            Ok(Recorded::Written {
                endpoint_disabled,
                resent,
            }) => {
                // Resent meanwhile: due now again, not given up.
                let after_failure = if resent {
                    AfterFailure::RetryIn(Duration::ZERO)
                } else {
                    after_failure
                };
                self.account(&claim, &event, delivered, after_failure, endpoint_disabled);
            }
            Ok(Recorded::Fenced) => tracing::warn!(
                delivery = %claim.id,
                "webhook attempt outlived its lease; another worker owns the delivery"
            ),
            // The lease runs out and the delivery is tried again: at
            // least once, with the same webhook-id.
            Err(e) => {
                tracing::warn!(delivery = %claim.id, error = %e, "webhook attempt not recorded")
            }
        }
    }

    fn account(
        &self,
        claim: &ClaimedDelivery,
        event: &EventRecord,
        delivered: bool,
        after_failure: AfterFailure,
        endpoint_disabled: bool,
    ) {
        if delivered {
            metrics::counter!("gateway_webhook_deliveries_total", "outcome" => "delivered")
                .increment(1);
            let lag = (Utc::now() - event.created_at).to_std().unwrap_or_default();
            metrics::histogram!("gateway_webhook_delivery_lag_seconds").record(lag.as_secs_f64());
        } else if after_failure == AfterFailure::GiveUp {
            metrics::counter!("gateway_webhook_deliveries_total", "outcome" => "failed")
                .increment(1);
            tracing::warn!(delivery = %claim.id, event = %event.id, attempts = claim.attempt,
                "webhook delivery failed for its whole retry schedule");
        }
        if endpoint_disabled {
            metrics::counter!("gateway_webhook_endpoints_disabled_total").increment(1);
            tracing::warn!(endpoint = %claim.endpoint_id,
                "webhook endpoint disabled: nothing delivered to it for a whole retry schedule");
        }
    }

    fn after_failure(&self, schedule_step: i32) -> AfterFailure {
        let step = usize::try_from(schedule_step).unwrap_or(usize::MAX);
        match self.settings.schedule.get(step) {
            Some(delay) => AfterFailure::RetryIn(jittered(*delay)),
            None => AfterFailure::GiveUp,
        }
    }

    /// One POST, signed with every live secret of the endpoint, over by
    /// `ends_by` (the claim's time plus the attempt's timeout).
    async fn attempt(
        &self,
        claim: &ClaimedDelivery,
        event: &EventRecord,
        ends_by: Instant,
    ) -> AttemptOutcome {
        let id = event.id.to_string();
        let mut view = EventView::new(event);
        if self.faults.mutant(Mutant::FailureAnnouncedAsSuccess) {
            view.kind = match view.kind {
                EventType::CaptureFailed => EventType::Captured,
                EventType::VoidFailed => EventType::Voided,
                EventType::RefundFailed => EventType::Refunded,
                other @ (EventType::Created
                | EventType::Authorized
                | EventType::Declined
                | EventType::Failed
                | EventType::CaptureRequested
                | EventType::Captured
                | EventType::VoidRequested
                | EventType::Voided
                | EventType::RefundRequested
                | EventType::Refunded
                | EventType::Expired
                | EventType::Flagged) => other,
            };
        }
        let body = view.to_body();
        let started_at = Utc::now();
        // Checked again at every attempt: the resolver guards names, but an
        // address literal never reaches it, and an endpoint registered while
        // private addresses were allowed must not be called once they are not.
        if let Err(refused) = EndpointUrl::parse(&claim.url, self.settings.allow_private_urls) {
            return AttemptOutcome {
                started_at,
                latency_ms: 0,
                response_status: None,
                response_body: None,
                error: Some(format!("not called: {refused}")),
            };
        }
        let timestamp = claim.claimed_at.timestamp();
        let mut secrets = vec![
            self.key
                .endpoint_secret(claim.endpoint_id, &claim.secret_salt),
        ];
        if let Some(previous) = &claim.previous_secret_salt {
            secrets.push(self.key.endpoint_secret(claim.endpoint_id, previous));
        }
        let clock = Instant::now();
        let exchange = tokio::time::timeout_at(
            ends_by.into(),
            self.post(
                &claim.url,
                &id,
                timestamp,
                &signature::header(&secrets, &id, timestamp, &body),
                body,
            ),
        )
        .await;
        let latency_ms = i32::try_from(clock.elapsed().as_millis()).unwrap_or(i32::MAX);
        let (response_status, response_body, error) = match exchange {
            Ok(Ok((status, start))) => (Some(status), Some(start), None),
            Ok(Err(e)) => (None, None, Some(describe(&e))),
            Err(_) => (None, None, Some("timed out".to_owned())),
        };
        AttemptOutcome {
            started_at,
            latency_ms,
            response_status,
            response_body,
            error,
        }
    }

    /// The status, and the start of the answer: the rest is never read, so
    /// a receiver that answers without end costs a bounded read.
    async fn post(
        &self,
        url: &str,
        id: &str,
        timestamp: i64,
        signature: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<(i16, String)> {
        let mut response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await?;
        // Any three-digit status (HTTP's 100-999) fits, and the table takes
        // them all.
        let status = i16::try_from(response.status().as_u16()).unwrap_or(i16::MAX);
        let mut kept = Vec::new();
        while kept.len() < RESPONSE_KEPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        kept.truncate(RESPONSE_KEPT_BYTES);
        Ok((status, printable(&kept)))
    }

    async fn report_backlog(&self) {
        let measured = async {
            let mut conn = self.pool.acquire().await?;
            store::backlog(&mut conn).await
        };
        match measured.await {
            Ok((due, disabled)) => {
                metrics::gauge!("gateway_webhook_deliveries_due").set(due as f64);
                metrics::gauge!("gateway_webhook_endpoints_disabled").set(disabled as f64);
            }
            Err(e) => tracing::warn!(error = %e, "could not measure the webhook backlog"),
        }
    }
}

/// The receiver's bytes as text a `text` column takes (no NUL) and a
/// person can read.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{fffd}")
}

/// A failed exchange in a few words: what went wrong and its innermost
/// cause, without the URL (the endpoint's, known already), within the
/// column's limit.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    let mut innermost = None;
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let text = match innermost {
        Some(cause) if !e.is_timeout() => format!("{kind}: {cause}"),
        Some(_) | None => kind.to_owned(),
    };
    text.chars().take(ERROR_KEPT_CHARS).collect()
}

/// Whole milliseconds: Postgres intervals hold microseconds at most.
fn jittered(delay: Duration) -> Duration {
    let factor = rand::rng().random_range((1.0 - JITTER_FRACTION)..=(1.0 + JITTER_FRACTION));
    let ms = delay.mul_f64(factor).as_millis();
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deliveries_wait_for_queued_payments_but_never_longer_than_the_bound() {
        let max_yield = Duration::from_millis(200);
        let calm = Pressure::default();
        let started = Instant::now();
        yield_to_payments(&calm, Instant::now(), max_yield).await;
        assert!(started.elapsed() < max_yield, "no payment queued: no wait");

        let busy = Pressure::default();
        busy.queued();
        let hot = busy.clone();
        let keep_hot = tokio::spawn(async move {
            loop {
                hot.queued();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let started = Instant::now();
        yield_to_payments(&busy, Instant::now(), max_yield).await;
        keep_hot.abort();
        assert!(
            started.elapsed() >= max_yield,
            "payments queued: the worker waited"
        );

        let started = Instant::now();
        yield_to_payments(&busy, Instant::now(), Duration::ZERO).await;
        assert!(started.elapsed() < max_yield, "a zero bound never waits");
    }

    #[test]
    fn jitter_stays_within_its_fraction_in_whole_milliseconds() {
        for _ in 0..1_000 {
            let delay = jittered(Duration::from_millis(1_000));
            assert!((900..=1_100).contains(&delay.as_millis()), "{delay:?}");
            assert_eq!(delay.subsec_nanos() % 1_000_000, 0, "{delay:?}");
        }
    }
}
