//! What the webhook API answers and what a delivery carries, built only
//! from what the database holds: an event renders to the same bytes every
//! time, so every attempt of a delivery sends one body.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{EndpointId, EventId, EventType, OperationKind, PaymentStatus};
use crate::payments::view::PaymentView;
use crate::store::events::EventRecord;
use crate::store::webhooks::{AttemptRecord, DeliveryRecord, EndpointRecord};

/// One change of a payment: the body of a webhook, and an item of
/// `GET /v1/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    #[schema(value_type = String, example = "evt_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b")]
    pub id: EventId,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    pub data: EventData,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventData {
    /// 1, 2, 3, ... per payment in the order its changes happened: a
    /// receiver that orders by it rebuilds the payment's history.
    pub sequence: i32,
    /// The status the transition left (`null` for `payment.created` and
    /// `payment.flagged`).
    pub previous_status: Option<PaymentStatus>,
    /// The payment right after the change, its history up to it.
    pub payment: PaymentView,
    /// For `payment.flagged`: the operation a person must look at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag: Option<FlagView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlagView {
    /// `authorize`, `capture`, `void` or `refund`.
    pub operation: String,
    /// Always `operation_unresolved`: the bank's answer is still unknown
    /// past the flag threshold.
    pub reason: &'static str,
}

impl EventView {
    pub fn new(event: &EventRecord) -> Self {
        Self {
            id: event.id,
            kind: event.kind,
            created_at: event.created_at,
            data: EventData {
                sequence: event.sequence,
                previous_status: event.previous_status,
                payment: PaymentView::new(&event.payment, event.history.clone()),
                flag: event.flagged_operation.map(|kind: OperationKind| FlagView {
                    operation: kind.as_str().to_owned(),
                    reason: "operation_unresolved",
                }),
            },
        }
    }

    /// The webhook body.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event view always serializes")
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    #[schema(value_type = String, example = "we_01936b2e-7c4a-7d1e-9f3b-2a1c4e5f6a7b")]
    pub id: EndpointId,
    pub url: String,
    /// The event types sent; `null` for all.
    pub event_types: Option<Vec<String>>,
    /// `enabled` or `disabled`.
    pub status: String,
    /// Why it is disabled: `merchant` (you did) or `failing` (a delivery
    /// failed for its whole retry schedule). Enable it to resume.
    pub disabled_reason: Option<String>,
    /// The signing secret (`whsec_…`): only in the answer that creates the
    /// endpoint or rotates its secret, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when the secret before the last rotation still signs too.
    #[serde(serialize_with = "crate::domain::timestamp::serialize_option")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl EndpointView {
    pub fn new(record: &EndpointRecord, secret: Option<String>) -> Self {
        let previous_live = record
            .previous_secret_expires_at
            .filter(|until| *until > Utc::now());
        Self {
            id: record.endpoint_id(),
            url: record.url.clone(),
            event_types: record.event_types.clone(),
            status: record.status.clone(),
            disabled_reason: record.disabled_reason.clone(),
            secret,
            previous_secret_expires_at: previous_live,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub data: Vec<EndpointView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<EventView>,
    pub has_more: bool,
}

/// An event's delivery to one endpoint, with every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `null` once its endpoint was deleted.
    #[schema(value_type = Option<String>)]
    pub endpoint_id: Option<EndpointId>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: Vec<AttemptView>,
    /// When the next attempt is due, while pending.
    #[serde(serialize_with = "crate::domain::timestamp::serialize_option")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::timestamp::serialize_option")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
    /// The receiver's HTTP status; `null` when there was no answer.
    pub response_status: Option<i16>,
    /// The start of the receiver's answer (at most 1 KiB).
    pub response_body: Option<String>,
    /// Why there was no answer (timeout, refused connection, ...).
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryView>,
}

impl DeliveryView {
    pub fn new(record: &DeliveryRecord) -> Self {
        Self {
            endpoint_id: EndpointId::from_uuid(record.endpoint_id).ok(),
            status: record.status.clone(),
            attempts: record.tries.iter().map(AttemptView::new).collect(),
            next_attempt_at: (record.status == "pending").then_some(record.next_attempt_at),
            finished_at: record.finished_at,
        }
    }
}

impl AttemptView {
    fn new(record: &AttemptRecord) -> Self {
        Self {
            attempt: record.attempt,
            started_at: record.started_at,
            latency_ms: record.latency_ms,
            response_status: record.response_status,
            response_body: record.response_body.clone(),
            error: record.error.clone(),
        }
    }
}
