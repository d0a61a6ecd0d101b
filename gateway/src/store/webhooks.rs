//! Webhook endpoints, their deliveries and every attempt at one.
//!
//! Deliveries are written by the events trigger (one per event and enabled
//! endpoint that wants its type); here they are claimed under a lease,
//! recorded in batches of attempts (each fenced by its claim's token, so a
//! worker whose lease ran out cannot overwrite a newer attempt), and
//! re-sent on demand.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{EndpointId, EventId, MerchantId};
use crate::store::batch::BoxFuture;

/// Endpoints a merchant may have at once (not counting deleted ones).
pub const MAX_ENDPOINTS_PER_MERCHANT: i64 = 16;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRecord {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub status: String,
    pub disabled_reason: Option<String>,
    pub secret_salt: Vec<u8>,
    pub previous_secret_salt: Option<Vec<u8>>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EndpointRecord {
    pub fn endpoint_id(&self) -> EndpointId {
        EndpointId::from_uuid(self.id).expect("endpoint ids are written by EndpointId::new")
    }
}

const ENDPOINT_COLUMNS: &str = "id, merchant_id, url, event_types, status, disabled_reason, \
    secret_salt, previous_secret_salt, previous_secret_expires_at, last_success_at, created_at, updated_at";

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a merchant may have at most {MAX_ENDPOINTS_PER_MERCHANT} webhook endpoints")]
    TooMany,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Registers an endpoint, within the merchant's limit: the merchant's row
/// is locked so that two registrations at once cannot both pass the count.
/// The count is a statement of its own, after the lock: a statement that
/// waited for the lock reads the snapshot it began with, without the
/// endpoint the lock's previous holder added, and both got in.
pub async fn create_endpoint(
    conn: &mut PgConnection,
    merchant: MerchantId,
    url: &str,
    event_types: Option<&[String]>,
    salt: &[u8],
) -> Result<EndpointRecord, CreateError> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE")
        .bind(merchant.as_uuid())
        .execute(&mut *tx)
        .await?;
    let existing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_endpoints WHERE merchant_id = $1 AND status <> 'deleted'",
    )
    .bind(merchant.as_uuid())
    .fetch_one(&mut *tx)
    .await?;
    if existing >= MAX_ENDPOINTS_PER_MERCHANT {
        return Err(CreateError::TooMany);
    }
    let record = sqlx::query_as(&format!(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, event_types, secret_salt) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(EndpointId::new().as_uuid())
    .bind(merchant.as_uuid())
    .bind(url)
    .bind(event_types)
    .bind(salt)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(record)
}

/// The merchant's endpoints, oldest first, deleted ones left out.
pub async fn list_endpoints(
    conn: &mut PgConnection,
    merchant: MerchantId,
) -> Result<Vec<EndpointRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
         WHERE merchant_id = $1 AND status <> 'deleted' ORDER BY id"
    ))
    .bind(merchant.as_uuid())
    .fetch_all(conn)
    .await
}

pub async fn get_endpoint(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: EndpointId,
) -> Result<Option<EndpointRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
         WHERE id = $1 AND merchant_id = $2 AND status <> 'deleted'"
    ))
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(conn)
    .await
}

/// What a merchant can do to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointChange {
    Enable,
    Disable,
    /// Gone for good: its pending deliveries end as failed.
    Delete,
}

/// Applies `change`; `None` if there is no such endpoint (or it is deleted).
pub async fn change_endpoint(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: EndpointId,
    change: EndpointChange,
) -> Result<Option<EndpointRecord>, sqlx::Error> {
    let (status, reason) = match change {
        EndpointChange::Enable => ("enabled", None),
        EndpointChange::Disable => ("disabled", Some("merchant")),
        EndpointChange::Delete => ("deleted", None),
    };
    let mut tx = sqlx::Connection::begin(conn).await?;
    let record: Option<EndpointRecord> = sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET status = $3, disabled_reason = $4, updated_at = now() \
         WHERE id = $1 AND merchant_id = $2 AND status <> 'deleted' RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .bind(status)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    if record.is_some() && change == EndpointChange::Delete {
        // The lease token stays: an attempt in flight records what the
        // receiver answered when it comes back (see `write_attempts`).
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', finished_at = now() \
             WHERE endpoint_id = $1 AND status = 'pending'",
        )
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(record)
}

pub async fn endpoint_url(conn: &mut PgConnection, id: Uuid) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT url FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// A new secret (salt); the old one keeps signing for `grace`.
pub async fn rotate_secret(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: EndpointId,
    salt: &[u8],
    grace: Duration,
) -> Result<Option<EndpointRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET previous_secret_salt = secret_salt, \
           previous_secret_expires_at = now() + $4, secret_salt = $3, updated_at = now() \
         WHERE id = $1 AND merchant_id = $2 AND status <> 'deleted' RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .bind(salt)
    .bind(grace)
    .fetch_optional(conn)
    .await
}

/// A delivery of an event to one endpoint, with its attempts.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub tries: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
    pub response_status: Option<i16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

const DELIVERY_COLUMNS: &str =
    "id, event_id, endpoint_id, status, attempts, next_attempt_at, created_at, finished_at";

/// An event's deliveries, each with every attempt, oldest first.
pub async fn deliveries_of(
    conn: &mut PgConnection,
    event: EventId,
) -> Result<Vec<DeliveryRecord>, sqlx::Error> {
    let mut deliveries: Vec<DeliveryRecord> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE event_id = $1 ORDER BY id"
    ))
    .bind(event.as_uuid())
    .fetch_all(&mut *conn)
    .await?;
    let attempts: Vec<AttemptRecord> = sqlx::query_as(
        "SELECT a.delivery_id, a.attempt, a.started_at, a.latency_ms, a.response_status, \
           a.response_body, a.error \
         FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
         WHERE d.event_id = $1 ORDER BY a.delivery_id, a.attempt",
    )
    .bind(event.as_uuid())
    .fetch_all(&mut *conn)
    .await?;
    for attempt in attempts {
        if let Some(delivery) = deliveries.iter_mut().find(|d| d.id == attempt.delivery_id) {
            delivery.tries.push(attempt);
        }
    }
    Ok(deliveries)
}

/// Sends an event again: to one endpoint, or to every enabled endpoint of
/// the merchant that wants its type (including endpoints registered after
/// the event). A finished delivery starts its schedule again; a pending one
/// is made due now, and an attempt in flight that then fails leaves it so
/// (see [`write_attempts`]). Returns the deliveries touched.
pub async fn resend(
    conn: &mut PgConnection,
    merchant: MerchantId,
    event: EventId,
    endpoint: Option<EndpointId>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id) \
         SELECT gateway_uuid_v7(), e.id, w.id FROM events e \
         JOIN webhook_endpoints w ON w.merchant_id = e.merchant_id \
         WHERE e.id = $1 AND e.merchant_id = $2 AND w.status = 'enabled' \
           AND ($3::uuid IS NULL OR w.id = $3) \
           AND ($3::uuid IS NOT NULL OR w.event_types IS NULL OR e.type = ANY (w.event_types)) \
         ON CONFLICT (event_id, endpoint_id) DO UPDATE SET status = 'pending', schedule_step = 0, \
           next_attempt_at = now(), finished_at = NULL, resent_at = clock_timestamp() \
         RETURNING id",
    )
    .bind(event.as_uuid())
    .bind(merchant.as_uuid())
    .bind(endpoint.map(EndpointId::as_uuid))
    .fetch_all(conn)
    .await
}

/// A delivery a worker has claimed, with what it needs to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedDelivery {
    pub id: Uuid,
    pub lease_token: Uuid,
    /// The number the attempt about to be made will have.
    pub attempt: i32,
    pub schedule_step: i32,
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub merchant_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub url: String,
    pub secret_salt: Vec<u8>,
    /// The previous secret, while its grace period lasts.
    pub previous_secret_salt: Option<Vec<u8>>,
    /// The database's clock when the claim read the secrets: the
    /// attempt's `webhook-timestamp`. An attempt signed without a rotation's
    /// new secret is then always stamped before that rotation committed,
    /// however long it waited between the claim and the POST.
    pub claimed_at: DateTime<Utc>,
}

/// Endpoints and merchants this process sends to as much as it allows.
#[derive(Debug, Default)]
pub struct Busy {
    pub endpoints: Vec<Uuid>,
    pub merchants: Vec<Uuid>,
}

/// How many deliveries one claim may take.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    pub total: i64,
    pub per_endpoint: i64,
    pub per_merchant: i64,
}

/// Claims due deliveries of enabled endpoints under a lease, within
/// `limits`, none to `busy` endpoints or merchants. Rows another worker
/// holds are skipped, not waited for. (Rows past a merchant's limit are
/// locked by the scan and let go at its commit, never claimed: a claim
/// that took them would have to hand each back.)
pub async fn claim_due(
    conn: &mut PgConnection,
    limits: ClaimLimits,
    busy: &Busy,
    lease: Duration,
) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    sqlx::query_as(
        "WITH picked AS ( \
           SELECT id FROM ( \
             SELECT d.id, row_number() OVER (PARTITION BY w.merchant_id) AS nth \
             FROM webhook_endpoints w \
             CROSS JOIN LATERAL ( \
               SELECT d.id FROM webhook_deliveries d \
               WHERE d.endpoint_id = w.id AND d.status = 'pending' \
                 AND d.next_attempt_at <= now() AND d.lease_until <= now() \
               ORDER BY d.next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) d \
             WHERE w.status = 'enabled' AND w.id <> ALL ($3) AND w.merchant_id <> ALL ($5)) ranked \
           WHERE nth <= $6 \
           LIMIT $1), \
         claimed AS ( \
           UPDATE webhook_deliveries d SET lease_until = now() + $4, lease_token = gen_random_uuid() \
           FROM picked WHERE d.id = picked.id \
           RETURNING d.id, d.lease_token, d.attempts + 1 AS attempt, d.schedule_step, d.event_id, \
             d.endpoint_id, d.created_at) \
         SELECT c.*, w.merchant_id, w.url, w.secret_salt, now() AS claimed_at, \
           CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret_salt END \
             AS previous_secret_salt \
         FROM claimed c JOIN webhook_endpoints w ON w.id = c.endpoint_id",
    )
    .bind(limits.total)
    .bind(limits.per_endpoint)
    .bind(&busy.endpoints)
    .bind(lease)
    .bind(&busy.merchants)
    .bind(limits.per_merchant)
    .fetch_all(conn)
    .await
}

/// Hands a claimed delivery back untried (this process had no room for it).
pub async fn release(conn: &mut PgConnection, id: Uuid, token: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_deliveries SET lease_until = '-infinity', lease_token = NULL \
         WHERE id = $1 AND lease_token = $2",
    )
    .bind(id)
    .bind(token)
    .execute(conn)
    .await?;
    Ok(())
}

/// What one attempt got.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
    pub response_status: Option<i16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

impl AttemptOutcome {
    pub fn delivered(&self) -> bool {
        self.response_status
            .is_some_and(|status| (200..300).contains(&status))
    }
}

/// Where the delivery goes after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this long.
    RetryIn(Duration),
    /// The schedule is spent: the delivery has failed.
    GiveUp,
}

/// How recording an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written; whether the gateway disabled the endpoint because of it,
    /// and whether a resend since the claim kept a failed delivery due now
    /// instead of the attempt's next step.
    Written {
        endpoint_disabled: bool,
        resent: bool,
    },
    /// The claim's lease was lost: another worker owns the delivery now.
    Fenced,
}

/// An attempt made under a claim, to be recorded.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub claim: ClaimedDelivery,
    pub outcome: AttemptOutcome,
    pub after_failure: AfterFailure,
}

impl FinishedAttempt {
    /// The delivery's status after this attempt, and when it is tried
    /// again (whole milliseconds), if it is.
    fn next(&self) -> (&'static str, Option<i64>) {
        match (self.outcome.delivered(), self.after_failure) {
            (true, _) => ("delivered", None),
            (false, AfterFailure::RetryIn(delay)) => (
                "pending",
                Some(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            ),
            (false, AfterFailure::GiveUp) => ("failed", None),
        }
    }
}

/// Records attempts (a batch, see [`crate::store::batch`]): each moves its
/// delivery on and keeps its attempt row, only if its claim still holds;
/// endpoints that got a delivery note their last success, once per batch.
/// A delivery that gives up disables its endpoint if nothing was delivered
/// to it since the delivery began: it failed for the whole schedule. One
/// statement and one commit for the lot: per delivery, a transaction of
/// its own cost five round trips and a flush to disk, about as much as the
/// payment it reports.
pub fn record_attempts(
    pool: PgPool,
    attempts: Vec<FinishedAttempt>,
) -> BoxFuture<Result<Vec<Recorded>, sqlx::Error>> {
    Box::pin(async move {
        let mut conn = pool.acquire().await?;
        let written = write_attempts(&mut conn, &attempts).await?;
        let mut disabled_told = Vec::new();
        Ok(attempts
            .iter()
            .map(|attempt| {
                let id = attempt.claim.id;
                let Some(&(_, disabled, resent)) = written.iter().find(|(w, ..)| *w == id) else {
                    return Recorded::Fenced;
                };
                // One disabling is told once, however many of the batch's
                // deliveries to the endpoint gave up.
                let endpoint = attempt.claim.endpoint_id;
                let endpoint_disabled = disabled && !disabled_told.contains(&endpoint);
                if endpoint_disabled {
                    disabled_told.push(endpoint);
                }
                Recorded::Written {
                    endpoint_disabled,
                    resent,
                }
            })
            .collect())
    })
}

/// (delivery moved on, its endpoint disabled by this batch, a resend kept
/// it due) for each attempt whose claim held.
///
/// A failed attempt moves its delivery along the schedule, unless the
/// delivery was resent after the attempt was claimed: the resend made it
/// due now, and the attempt's step (hours away, or giving up and disabling
/// the endpoint) would silently undo that. The test is made on the row
/// the UPDATE locked, not in a CTE: a resend that committed while this
/// statement waited for the row is seen only there.
///
/// A delivery that its endpoint's deletion ended while the attempt was in
/// flight (failed, its lease token still the attempt's) keeps the attempt
/// and what the receiver answered: delivered if it took it, failed
/// otherwise, never due again.
async fn write_attempts(
    conn: &mut PgConnection,
    attempts: &[FinishedAttempt],
) -> Result<Vec<(Uuid, bool, bool)>, sqlx::Error> {
    let next: Vec<_> = attempts.iter().map(FinishedAttempt::next).collect();
    let outcome = |f: fn(&AttemptOutcome) -> Option<&str>| {
        attempts.iter().map(|a| f(&a.outcome)).collect::<Vec<_>>()
    };
    // An endpoint is updated at most once by the statement (Postgres cannot
    // change one row twice in one statement): one that got a delivery in
    // this batch is not disabled by it, rightly, since it just succeeded.
    sqlx::query_as(&format!(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::int4[], \
             $6::timestamptz[], $7::int4[], $8::int2[], $9::text[], $10::text[], $11::timestamptz[]) \
           AS i(id, token, status, retry_ms, attempt, started_at, latency_ms, response_status, \
             response_body, error, claimed_at)), \
         moved AS ( \
           UPDATE webhook_deliveries d SET attempts = d.attempts + 1, \
             status = CASE WHEN {ended} THEN \
                 CASE WHEN i.status = 'delivered' THEN 'delivered' ELSE 'failed' END \
               WHEN {resent} THEN 'pending' ELSE i.status END, \
             schedule_step = d.schedule_step \
               + CASE WHEN {ended} OR {resent} THEN 0 WHEN i.status = 'pending' THEN 1 ELSE 0 END, \
             next_attempt_at = CASE WHEN {ended} OR {resent} OR i.retry_ms IS NULL \
               THEN d.next_attempt_at ELSE now() + i.retry_ms * interval '1 millisecond' END, \
             finished_at = CASE WHEN {ended} THEN d.finished_at \
               WHEN {resent} OR i.status = 'pending' THEN NULL ELSE now() END, \
             lease_until = '-infinity', lease_token = NULL \
           FROM input i WHERE d.id = i.id AND d.lease_token = i.token \
             AND d.status IN ('pending', 'failed') \
           RETURNING d.id, d.endpoint_id, d.created_at, d.status, {resent} AS resent), \
         kept AS ( \
           INSERT INTO webhook_attempts (delivery_id, attempt, started_at, latency_ms, \
             response_status, response_body, error) \
           SELECT i.id, i.attempt, i.started_at, i.latency_ms, i.response_status, \
             i.response_body, i.error \
           FROM input i JOIN moved m ON m.id = i.id), \
         succeeded AS ( \
           UPDATE webhook_endpoints w SET last_success_at = now() \
           WHERE w.id IN (SELECT endpoint_id FROM moved WHERE status = 'delivered')), \
         disabled AS ( \
           UPDATE webhook_endpoints w SET status = 'disabled', disabled_reason = 'failing', \
             updated_at = now() \
           FROM (SELECT endpoint_id, max(created_at) AS began FROM moved \
                 WHERE status = 'failed' GROUP BY endpoint_id) f \
           WHERE w.id = f.endpoint_id AND w.status = 'enabled' \
             AND (w.last_success_at IS NULL OR w.last_success_at < f.began) \
             AND w.id NOT IN (SELECT endpoint_id FROM moved WHERE status = 'delivered') \
           RETURNING w.id) \
         SELECT m.id, m.status = 'failed' AND m.endpoint_id IN (SELECT id FROM disabled), \
           m.resent \
         FROM moved m",
        // Never resent: resent_at is null, and so would the test be.
        resent = "(i.status <> 'delivered' AND coalesce(d.resent_at >= i.claimed_at, false))",
        // Failed with the attempt's token still on it: only the endpoint's
        // deletion ends a delivery without clearing the token.
        ended = "(d.status = 'failed')",
    ))
    .bind(attempts.iter().map(|a| a.claim.id).collect::<Vec<_>>())
    .bind(
        attempts
            .iter()
            .map(|a| a.claim.lease_token)
            .collect::<Vec<_>>(),
    )
    .bind(next.iter().map(|(status, _)| *status).collect::<Vec<_>>())
    .bind(
        next.iter()
            .map(|(_, retry_ms)| *retry_ms)
            .collect::<Vec<_>>(),
    )
    .bind(attempts.iter().map(|a| a.claim.attempt).collect::<Vec<_>>())
    .bind(
        attempts
            .iter()
            .map(|a| a.outcome.started_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        attempts
            .iter()
            .map(|a| a.outcome.latency_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        attempts
            .iter()
            .map(|a| a.outcome.response_status)
            .collect::<Vec<_>>(),
    )
    .bind(outcome(|o| o.response_body.as_deref()))
    .bind(outcome(|o| o.error.as_deref()))
    .bind(attempts.iter().map(|a| a.claim.claimed_at).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

/// For the gauges: deliveries due now and waiting, and endpoints the
/// gateway disabled for failing.
pub async fn backlog(conn: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_deliveries d JOIN webhook_endpoints w \
                   ON w.id = d.endpoint_id AND w.status = 'enabled' \
                 WHERE d.status = 'pending' AND d.next_attempt_at <= now()), \
                (SELECT count(*) FROM webhook_endpoints WHERE disabled_reason = 'failing')",
    )
    .fetch_one(conn)
    .await
}
