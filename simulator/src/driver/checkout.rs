//! Patient clients are FicMart's checkout as it would be written: on the
//! `ficmart-client` crate, whose retry loop (not the driver's) decides what
//! is sent again and when: a 202 resumed with its key, `Retry-After`
//! honoured, a final answer never retried. So every run exercises the
//! crate against every fault the run throws. Each attempt it makes is
//! observed and recorded as the driver records its own, for the checks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{AttemptOutcome, AttemptRecord, AuthorizeRequest, Card, IdempotencyKey, RetryPolicy};
use serde_json::Value;

use super::{
    ATTEMPT_TIMEOUT, Answer, BACKOFF_MAX, BACKOFF_START, Driver, Exchange, FlowRecord, KEY_BUDGET,
    Request,
};
use crate::model::Op;
use crate::scenario::ClientKind;
use crate::stats::{micros, millis};

/// One client per merchant, sharing the driver's replicas.
pub struct Checkouts(Vec<client::Client>);

impl Checkouts {
    pub fn new(gateways: &[String], api_keys: &[String]) -> anyhow::Result<Self> {
        let clients = api_keys
            .iter()
            .map(|key| client::Client::new(gateways, key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(clients))
    }

    fn of(&self, merchant: u8) -> &client::Client {
        &self.0[usize::from(merchant) % self.0.len()]
    }
}

/// The body of an authorization as the crate sends it: the driver sends
/// this text itself when a flow's client is not the crate, so that a
/// request's body is the same whoever sends it.
pub fn authorization_body(request: &AuthorizeRequest) -> String {
    serde_json::to_string(request).expect("an authorization is strings and integers")
}

/// Whether the crate sends `request` for the flow: the key's own body on a
/// patient client's flow. Another body under a key, or a capture or
/// refund of another amount, are the driver's to send: the crate, which
/// always operates on the full amount, cannot make those mistakes.
pub(super) fn goes_through_client(record: &FlowRecord, request: &Request) -> bool {
    let full_amount = || {
        serde_json::from_str::<Value>(&request.body)
            .is_ok_and(|body| body["amount"].as_i64() == Some(record.plan.amount))
    };
    record.plan.client == ClientKind::Patient
        && request.variant == 0
        && (request.op == Op::Authorize || full_amount())
}

impl Driver {
    /// [`Driver::until_final`] through the crate: its calls, each bounded
    /// by what is left of the key's retention (past it the gateway may have
    /// forgotten the key, and sending it would start anew), until a final
    /// answer or [`KEY_BUDGET`].
    pub(super) async fn until_final_through_client(
        &self,
        record: &mut FlowRecord,
        request: &Request,
    ) -> Option<Exchange> {
        let budget = Instant::now() + KEY_BUDGET;
        let (key, variant) = (request.key.as_str(), request.variant);
        loop {
            if record.last_unanswered(key, variant).is_none() {
                record.still_unanswered(key, variant);
            }
            let until = record.replayable_until(key, variant)?.min(budget);
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if Instant::now() >= budget {
                    record.unanswered.push(key.to_owned());
                }
                return None;
            }
            for (exchange, at) in self.call_client(record.plan.merchant, request, left).await {
                record.learn_payment(&exchange);
                if !exchange.is_final() && matches!(exchange.status(), Some(202 | 409)) {
                    record.unanswered_as_of(key, variant, at);
                }
                let last = exchange.is_final().then(|| exchange.clone());
                record.exchanges.push(exchange);
                if let Some(last) = last {
                    if let Some(at) = record.last_unanswered(key, variant) {
                        record.answered(key, variant, at);
                    }
                    return Some(last);
                }
            }
            // The crate gave up within the bound (a `Retry-After` longer
            // than was left, say): a pause before its next call.
            tokio::time::sleep(BACKOFF_START).await;
        }
    }

    /// One call of the crate for `request`, within `deadline`: every
    /// attempt it made, with the moment it ended.
    async fn call_client(
        &self,
        merchant: u8,
        request: &Request,
        deadline: Duration,
    ) -> Vec<(Exchange, Instant)> {
        let seen: Arc<Mutex<Vec<(Instant, AttemptRecord)>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let client = self
            .checkouts
            .of(merchant)
            .clone()
            .with_retry_policy(RetryPolicy {
                max_attempts: u32::MAX,
                deadline,
                base_backoff: BACKOFF_START,
                max_backoff: BACKOFF_MAX,
                attempt_timeout: ATTEMPT_TIMEOUT,
            })
            .with_observer(Arc::new(move |attempt: &AttemptRecord| {
                let mut seen = sink.lock().unwrap_or_else(|e| e.into_inner());
                seen.push((Instant::now(), attempt.clone()));
            }));
        let key = IdempotencyKey::new(request.key.clone()).expect("the driver's keys are valid");
        // What the call answers is what its attempts say, which the checks
        // judge; how the crate reads an answer is for its own tests.
        let _ = match (request.op, request.payment()) {
            (Op::Authorize, _) => client.authorize(&key, &authorization(&request.body)).await,
            (Op::Capture, Some(id)) => client.capture(&key, &id).await,
            (Op::Void, Some(id)) => client.void(&key, &id).await,
            (Op::Refund, Some(id)) => client.refund(&key, &id).await,
            (Op::Capture | Op::Void | Op::Refund, None) => return Vec::new(),
        };
        let attempts = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
        for counter in [&self.requests, &self.requests_through_client] {
            counter.fetch_add(attempts.len() as u64, Ordering::Relaxed);
        }
        attempts
            .into_iter()
            .map(|(ended, attempt)| (self.exchange(request, merchant, ended, &attempt), ended))
            .collect()
    }

    fn exchange(
        &self,
        request: &Request,
        merchant: u8,
        ended: Instant,
        attempt: &AttemptRecord,
    ) -> Exchange {
        let sent = ended.checked_sub(attempt.latency).unwrap_or(ended);
        let answer = match &attempt.outcome {
            AttemptOutcome::Response {
                status,
                replayed,
                retry_after,
                body,
                ..
            } => Answer::Http {
                status: *status,
                replayed: *replayed,
                retry_after: retry_after.clone(),
                body: body.clone(),
            },
            AttemptOutcome::Transport { error } => Answer::Transport {
                error: error.clone(),
            },
            AttemptOutcome::Cancelled => Answer::Transport {
                error: "cut off at the call's deadline".to_owned(),
            },
        };
        Exchange {
            op: request.op,
            key: request.key.clone(),
            variant: request.variant,
            merchant,
            payment: request.payment().map(|id| id.to_string()),
            at_ms: millis(sent.saturating_duration_since(self.started)),
            latency_us: micros(attempt.latency),
            answer,
        }
    }
}

/// The authorization the driver wrote as [`authorization_body`].
fn authorization(body: &str) -> AuthorizeRequest {
    let body: Value = serde_json::from_str(body).unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let card = &body["card"];
    let number = |v: &Value| v.as_u64().unwrap_or_default();
    AuthorizeRequest {
        order_id: text(&body["order_id"]),
        customer_id: text(&body["customer_id"]),
        amount: body["amount"].as_i64().unwrap_or_default(),
        currency: text(&body["currency"]),
        card: Card::new(
            text(&card["number"]),
            text(&card["cvv"]),
            u8::try_from(number(&card["expiry_month"])).unwrap_or_default(),
            u16::try_from(number(&card["expiry_year"])).unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authorization_reads_back_to_the_same_bytes() {
        let request = AuthorizeRequest::usd(
            "ord_1",
            "cus_1",
            4999,
            Card::new("4111111111111111", "123", 12, 2099),
        );
        let body = authorization_body(&request);
        assert_eq!(authorization(&body), request);
        assert_eq!(authorization_body(&authorization(&body)), body);
    }
}
