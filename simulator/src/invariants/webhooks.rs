//! The webhook checks: what the merchants' receiver got, against every
//! payment's history as the gateway's database holds it, once deliveries
//! have drained.

use std::collections::{BTreeMap, BTreeSet};

use gateway::webhooks::signature::{self, SigningSecret};
use serde::Serialize;
use serde_json::Value;

use super::{Check, InvariantResult, Observations};

/// What the run's webhooks came to.
#[derive(Debug, Clone, Default)]
pub struct WebhookObservations {
    pub endpoints: Vec<EndpointSeen>,
    /// Every request the receiver got, in arrival order (a delivery the
    /// receiver processed twice appears twice).
    pub received: Vec<Delivery>,
    /// Every payment's history, from the gateway's database.
    pub payments: Vec<PaymentHistory>,
    /// Deliveries still pending or failed once the wait ended, and
    /// endpoints the gateway disabled: each should be none.
    pub left: Vec<String>,
    /// The gateways' attempt timeout: a request is theirs no longer.
    pub timeout_us: u64,
}

/// A merchant's endpoint, as the run registered it.
#[derive(Debug, Clone)]
pub struct EndpointSeen {
    pub merchant_id: String,
    /// The receiver's path for it.
    pub path: String,
    pub secret: SigningSecret,
    pub rotated: Option<Rotation>,
}

/// An endpoint's secret rotation, as the client saw it done.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub secret: SigningSecret,
    /// When its answer had been received, in µs of the traffic's clock.
    pub answered_us: u64,
    /// The same moment on the wall clock, in Unix seconds: a delivery
    /// signed later (its `webhook-timestamp`) must carry the new secret's
    /// signature. One signed earlier may not: a worker signs with the
    /// secrets of the moment it claimed the delivery, which may be just
    /// before the rotation committed, and send it just after.
    pub answered_unix_s: i64,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: Vec<u8>,
    pub arrived_us: u64,
    pub ended_us: u64,
    /// The receiver answered 2xx in time.
    pub delivered: bool,
    /// From the event's creation to this request's arrival.
    pub lag_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct PaymentHistory {
    pub id: String,
    pub merchant_id: String,
    pub statuses: Vec<String>,
}

/// The report's view of the webhooks.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookSummary {
    pub events: usize,
    pub requests: usize,
    pub delivered: usize,
    /// Requests that were retries of an event already sent to the endpoint.
    pub retries: usize,
    /// From each event's creation to its first 2xx, in ms.
    pub lag_p50_ms: i64,
    pub lag_p99_ms: i64,
    pub lag_max_ms: i64,
}

impl Delivery {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What an event's snapshot shows: its payment, its type, and the statuses
/// of its history.
struct Snapshot {
    payment: String,
    kind: String,
    sequence: i64,
    statuses: Vec<String>,
}

fn snapshot(body: &Value) -> Option<Snapshot> {
    let payment = &body["data"]["payment"];
    Some(Snapshot {
        payment: payment["id"].as_str()?.to_owned(),
        kind: body["type"].as_str()?.to_owned(),
        sequence: body["data"]["sequence"].as_i64()?,
        statuses: payment["history"]
            .as_array()?
            .iter()
            .map(|h| h["status"].as_str().unwrap_or_default().to_owned())
            .collect(),
    })
}

fn endpoint_of<'a>(webhooks: &'a WebhookObservations, merchant: &str) -> Option<&'a EndpointSeen> {
    webhooks
        .endpoints
        .iter()
        .find(|e| e.merchant_id == merchant)
}

/// 13: every change of every payment reached its merchant's endpoint (a
/// 2xx) at least once, its snapshot the payment's history up to that
/// change; no request describes a history the payment does not have; and
/// nothing is left undelivered, no endpoint disabled.
pub fn delivered(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 13);
    let Some(webhooks) = &obs.webhooks else {
        return c.done();
    };
    for left in &webhooks.left {
        c.other("deliveries".into(), left.clone());
    }
    let mut seen = Seen::new();
    for request in &webhooks.received {
        match request.json().as_ref().and_then(snapshot) {
            Some(shown) => {
                seen.entry((request.path.clone(), shown.payment.clone()))
                    .or_default()
                    .push((request.delivered, shown));
            }
            None => c.other(
                format!("webhook {}", request.id),
                "a body that is not an event".into(),
            ),
        }
    }
    misrouted(&mut c, webhooks, &seen);
    for payment in &webhooks.payments {
        c.checked += 1;
        let Some(endpoint) = endpoint_of(webhooks, &payment.merchant_id) else {
            continue;
        };
        let got = seen
            .get(&(endpoint.path.clone(), payment.id.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (n, status) in payment.statuses.iter().enumerate() {
            let prefix = &payment.statuses[..=n];
            let arrived = got
                .iter()
                .any(|(ok, s)| *ok && s.kind != "payment.flagged" && s.statuses == prefix);
            if !arrived {
                c.payment(
                    &payment.id,
                    format!(
                        "the change to {status} (history entry {}) was never delivered",
                        n + 1
                    ),
                );
            }
        }
        for (_, shown) in got {
            if let Err(why) = named_for_its_change(shown) {
                c.payment(&payment.id, why);
            }
            if !payment.statuses.starts_with(&shown.statuses) || shown.statuses.is_empty() {
                c.payment(
                    &payment.id,
                    format!(
                        "{} #{} shows the history {} the payment does not have ({})",
                        shown.kind,
                        shown.sequence,
                        shown.statuses.join(" → "),
                        payment.statuses.join(" → ")
                    ),
                );
            }
        }
    }
    c.done()
}

/// Whether an event's type is the one its snapshot's last change
/// publishes: `payment.created` for the first entry, else the type of an
/// event of the state machine that moves the entry before it to the last
/// (a failed capture must not be sent as `payment.captured`). A flag is
/// not a change.
fn named_for_its_change(shown: &Snapshot) -> Result<(), String> {
    use gateway::domain::EventType;
    use gateway::domain::status::{PaymentEvent, PaymentStatus, transition};

    if shown.kind == EventType::Flagged.as_str() {
        return Ok(());
    }
    let statuses: Vec<Option<PaymentStatus>> = shown
        .statuses
        .iter()
        .map(|s| PaymentStatus::parse(s))
        .collect();
    let allowed: Vec<&str> = match statuses.as_slice() {
        [Some(_)] => vec![EventType::Created.as_str()],
        [.., Some(from), Some(to)] => PaymentEvent::ALL
            .into_iter()
            .filter(|e| transition(*from, *e) == Ok(*to))
            .map(|e| EventType::of(e).as_str())
            .collect(),
        _ => Vec::new(),
    };
    if allowed.contains(&shown.kind.as_str()) {
        return Ok(());
    }
    Err(format!(
        "{} #{} announces the change {} as {}, not {}",
        shown.payment,
        shown.sequence,
        shown.statuses.join(" → "),
        shown.kind,
        allowed.join(" or ")
    ))
}

/// What the receiver got, per endpoint path and payment.
type Seen = BTreeMap<(String, String), Vec<(bool, Snapshot)>>;

/// Deliveries made to another merchant's endpoint than the payment's.
fn misrouted(c: &mut Check<'_>, webhooks: &WebhookObservations, seen: &Seen) {
    let owner: BTreeMap<&str, &str> = webhooks
        .payments
        .iter()
        .map(|p| (p.id.as_str(), p.merchant_id.as_str()))
        .collect();
    for ((path, payment), shown) in seen {
        let endpoint = webhooks.endpoints.iter().find(|e| e.path == *path);
        let (Some(endpoint), Some(merchant)) = (endpoint, owner.get(payment.as_str())) else {
            continue;
        };
        if endpoint.merchant_id != *merchant {
            c.payment(
                payment,
                format!(
                    "{} request(s) about it were delivered to another merchant's endpoint ({path})",
                    shown.len()
                ),
            );
        }
    }
}

/// 14: every request is signed under its endpoint's secret (the new one
/// once a rotation was answered), `webhook-id` is the event's id, and every
/// request with one id carries the same body.
pub fn signed(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 14);
    let Some(webhooks) = &obs.webhooks else {
        return c.done();
    };
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for request in &webhooks.received {
        c.checked += 1;
        let subject = format!("webhook {}", request.id);
        let Some(endpoint) = webhooks.endpoints.iter().find(|e| e.path == request.path) else {
            c.other(
                subject,
                format!("sent to {}, no endpoint's path", request.path),
            );
            continue;
        };
        let verifies = |secret: &SigningSecret| {
            signature::verify(
                secret,
                &request.signature,
                &request.id,
                request.timestamp,
                &request.body,
                request.timestamp,
                0,
            )
            .is_ok()
        };
        let expected = match &endpoint.rotated {
            Some(r)
                if request.arrived_us > r.answered_us && request.timestamp > r.answered_unix_s =>
            {
                vec![&r.secret]
            }
            Some(r) => vec![&endpoint.secret, &r.secret],
            None => vec![&endpoint.secret],
        };
        if !expected.into_iter().any(verifies) {
            c.other(
                subject.clone(),
                format!(
                    "the signature does not verify with {}'s secret (arrived +{} ms, {}, {} signature(s))",
                    request.path,
                    request.arrived_us / 1000,
                    match &endpoint.rotated {
                        Some(r) => format!("rotated at +{} ms", r.answered_us / 1000),
                        None => "never rotated".into(),
                    },
                    request.signature.split(' ').count()
                ),
            );
        }
        if request
            .json()
            .and_then(|b| b["id"].as_str().map(str::to_owned))
            != Some(request.id.clone())
        {
            c.other(subject.clone(), "webhook-id is not the event's id".into());
        }
        if let Some(first) = bodies.insert(&request.id, &request.body)
            && first != request.body.as_slice()
        {
            c.other(subject, "a retry carried another body".into());
        }
    }
    c.done()
}

/// 15: each payment's changes, ordered by their sequence numbers, are its
/// history in order; and no event was sent to one endpoint twice at once
/// (a request is open until answered, or until the gateway's timeout).
pub fn ordered(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 15);
    let Some(webhooks) = &obs.webhooks else {
        return c.done();
    };
    let mut by_payment: BTreeMap<String, BTreeMap<i64, usize>> = BTreeMap::new();
    for request in webhooks.received.iter().filter(|r| r.delivered) {
        if let Some(shown) = request.json().as_ref().and_then(snapshot)
            && shown.kind != "payment.flagged"
        {
            by_payment
                .entry(shown.payment)
                .or_default()
                .insert(shown.sequence, shown.statuses.len());
        }
    }
    for (payment, sequence) in &by_payment {
        c.checked += 1;
        let lengths: Vec<usize> = sequence.values().copied().collect();
        let rebuilt = lengths.windows(2).all(|w| w[0] < w[1]);
        if !rebuilt {
            c.payment(
                payment,
                format!("ordered by sequence, the snapshots' histories are {lengths:?} entries long: not the history in order"),
            );
        }
    }
    let mut open: BTreeMap<(&str, &str), Vec<(u64, u64)>> = BTreeMap::new();
    let mut counted = BTreeSet::new();
    for request in &webhooks.received {
        // A delivery processed twice is one request, recorded twice.
        if !counted.insert((
            request.path.as_str(),
            request.id.as_str(),
            request.arrived_us,
        )) {
            continue;
        }
        let until = request
            .ended_us
            .min(request.arrived_us + webhooks.timeout_us);
        open.entry((&request.path, &request.id))
            .or_default()
            .push((request.arrived_us, until));
    }
    for ((path, id), mut spans) in open {
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
            c.other(
                format!("webhook {id}"),
                format!(
                    "sent to {path} twice at once: from +{} ms and from +{} ms",
                    w[0].0 / 1000,
                    w[1].0 / 1000
                ),
            );
        }
    }
    c.done()
}

/// Events, requests, retries and lag, for the report.
pub fn summary(webhooks: &WebhookObservations) -> WebhookSummary {
    let mut sent: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut retries = 0;
    let mut first_delivery: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for request in &webhooks.received {
        if !sent.insert((&request.path, &request.id)) {
            retries += 1;
        }
        if request.delivered
            && let Some(lag) = request.lag_ms
        {
            first_delivery
                .entry((&request.path, &request.id))
                .or_insert(lag);
        }
    }
    let mut lags: Vec<i64> = first_delivery.values().copied().collect();
    lags.sort_unstable();
    let rank = |p: usize| {
        lags.get((lags.len() * p).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or(0)
    };
    WebhookSummary {
        events: sent.len(),
        requests: webhooks.received.len(),
        delivered: webhooks.received.iter().filter(|r| r.delivered).count(),
        retries,
        lag_p50_ms: rank(50),
        lag_p99_ms: rank(99),
        lag_max_ms: lags.last().copied().unwrap_or(0),
    }
}
