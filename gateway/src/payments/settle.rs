//! Transaction B: what the bank said becomes the payment's state and the
//! key's stored answer, in one commit.

use crate::bank::{Authorization, BankErrorCode, Refusal, UnknownReason};
use crate::domain::{IdempotencyKey, MerchantId, PaymentEvent};
use crate::idempotency;
use crate::store::operations::{self, OperationKind, OperationRecord};
use crate::store::payments::{
    self, Answer, BankFacts, History, PaymentRecord, Settlement, Settling, TransitionError,
};
use chrono::{DateTime, Utc};

use super::reply::{Reply, render};
use super::{Error, Gateway};

/// The bank's answer, classified.
#[derive(Debug)]
pub enum Resolution {
    /// A definitive answer: this event, with what the bank said.
    Settled {
        event: PaymentEvent,
        facts: BankFacts,
        succeeded: bool,
    },
    /// Nobody knows yet; resume later with the same bank key.
    Unknown { reason: String },
}

impl Resolution {
    pub fn succeeded(event: PaymentEvent, facts: BankFacts) -> Self {
        Self::Settled {
            event,
            facts,
            succeeded: true,
        }
    }

    /// An authorization the bank holds: the payment is authorized with its id
    /// and expiry.
    pub fn approved(authorization: Authorization) -> Self {
        Self::succeeded(
            PaymentEvent::AuthorizeApproved,
            BankFacts {
                authorization_id: Some(authorization.authorization_id),
                authorization_expires_at: Some(authorization.expires_at),
                ..BankFacts::default()
            },
        )
    }

    pub fn failed(event: PaymentEvent, refusal: &Refusal) -> Self {
        let facts = BankFacts {
            failure_code: Some(refusal.code.as_str().to_owned()),
            ..BankFacts::default()
        };
        Self::Settled {
            event,
            facts,
            succeeded: false,
        }
    }

    pub fn unknown(reason: &UnknownReason) -> Self {
        Self::Unknown {
            reason: format!("{reason:?}"),
        }
    }
}

/// The event that ends an operation of `kind` when the bank refuses it.
pub fn failure_event(kind: OperationKind, code: &BankErrorCode) -> PaymentEvent {
    let expired = matches!(code, BankErrorCode::AuthorizationExpired);
    match (kind, expired) {
        (OperationKind::Authorize, _) => PaymentEvent::AuthorizeDeclined,
        (OperationKind::Capture, true) => PaymentEvent::CaptureExpired,
        (OperationKind::Capture, false) => PaymentEvent::CaptureFailed,
        (OperationKind::Void, true) => PaymentEvent::VoidExpired,
        (OperationKind::Void, false) => PaymentEvent::VoidFailed,
        (OperationKind::Refund, _) => PaymentEvent::RefundFailed,
    }
}

/// Who to answer, if anyone: a request holds an idempotency key, the
/// recovery worker does not.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub merchant: MerchantId,
    pub key: &'a IdempotencyKey,
}

impl Requester<'_> {
    /// Stores `reply` on the key, for replays.
    pub async fn store(
        &self,
        conn: &mut sqlx::PgConnection,
        reply: &Reply,
    ) -> Result<(), sqlx::Error> {
        idempotency::complete(conn, self.merchant, self.key, reply.status, &reply.body).await
    }

    /// `reply`, to be stored on the key by a batched settlement.
    fn answer(&self, reply: &Reply) -> Answer {
        Answer {
            merchant: self.merchant,
            key: self.key.as_str().to_owned(),
            status: reply.status,
            body: reply.body.clone(),
        }
    }
}

impl Gateway {
    /// The common case, in two round trips and no explicit transaction:
    /// read the payment, compute where it goes and the answer, then write
    /// everything in one statement (batched with others settling at the
    /// same moment) that re-checks what was read. `None` if someone else
    /// settled the operation first: the general path decides.
    async fn settle_in_one_statement(
        &self,
        requester: Option<Requester<'_>>,
        operation: &OperationRecord,
        event: PaymentEvent,
        facts: &BankFacts,
        succeeded: bool,
        known: Option<(PaymentRecord, History)>,
    ) -> Result<Option<Reply>, Error> {
        // What the caller wrote itself needs no reading back: the write
        // re-checks it (status and pending operation) before changing anything.
        let (payment, mut history) = match known {
            Some(known) => known,
            None => {
                let mut conn = self.pool.acquire().await?;
                match payments::read_for_settling(&mut conn, operation.id).await? {
                    Some(Settling {
                        operation_pending: true,
                        payment,
                        history,
                    }) => (payment, history),
                    Some(Settling {
                        operation_pending: false,
                        ..
                    })
                    | None => return Ok(None),
                }
            }
        };
        // Postgres keeps microseconds; the answer must show what it stores.
        let now = Utc::now();
        let at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let moved = payments::moved(&payment, event, facts, at).map_err(TransitionError::from)?;
        history.push((moved.status(), moved.updated_at));
        let reply = render(operation.kind(), &moved, history)?;
        let answer = requester
            .filter(|_| reply.is_final())
            .map(|requester| requester.answer(&reply));
        let written = self
            .settlements
            .submit(Settlement {
                from: payment.status(),
                to: moved,
                operation_id: operation.id,
                succeeded,
                answer,
            })
            .await?;
        if written {
            metrics::counter!("gateway_operations_settled_total", "kind" => operation.kind().as_str(), "status" => reply.status.to_string())
                .increment(1);
        }
        Ok(written.then_some(reply))
    }

    /// Records `resolution` for `operation` and returns the answer. If
    /// someone else settled the operation meanwhile, theirs stands and the
    /// answer reflects it.
    pub(super) async fn settle(
        &self,
        requester: Option<Requester<'_>>,
        operation: &OperationRecord,
        resolution: Resolution,
    ) -> Result<Reply, Error> {
        self.settle_known(requester, operation, resolution, None)
            .await
    }

    /// [`Gateway::settle`], given the payment and its history as the caller
    /// knows them (it wrote them), to save reading them back.
    pub(super) async fn settle_known(
        &self,
        requester: Option<Requester<'_>>,
        operation: &OperationRecord,
        resolution: Resolution,
        known: Option<(PaymentRecord, History)>,
    ) -> Result<Reply, Error> {
        if let Resolution::Settled {
            event,
            facts,
            succeeded,
        } = &resolution
            && let Some(reply) = self
                .settle_in_one_statement(requester, operation, *event, facts, *succeeded, known)
                .await?
        {
            return Ok(reply);
        }
        let mut tx = self.pool.begin().await?;
        let Settling {
            operation_pending,
            payment,
            mut history,
        } = payments::lock_for_settling(&mut tx, operation.id)
            .await?
            .ok_or(Error::NotFound)?;
        let payment = match resolution {
            Resolution::Settled {
                event,
                facts,
                succeeded,
            } if operation_pending => {
                let moved = payments::apply(&mut tx, &payment, event, &facts).await?;
                operations::finish(
                    &mut tx,
                    operation.id,
                    succeeded,
                    facts.failure_code.as_deref(),
                )
                .await?;
                history.push((moved.status(), moved.updated_at));
                moved
            }
            Resolution::Unknown { reason } if operation_pending => {
                tracing::warn!(operation_id = %operation.id, kind = operation.kind().as_str(), reason, "bank outcome unknown");
                metrics::counter!("gateway_operations_unknown_total", "kind" => operation.kind().as_str()).increment(1);
                operations::release(&mut tx, operation.id, &reason, self.leases.retry).await?;
                if let Some(requester) = requester {
                    idempotency::release(&mut tx, requester.merchant, requester.key).await?;
                }
                payment
            }
            Resolution::Settled { .. } | Resolution::Unknown { .. } => payment,
        };
        let reply = render(operation.kind(), &payment, history)?;
        if let Some(requester) = requester.filter(|_| reply.is_final()) {
            requester.store(&mut tx, &reply).await?;
        }
        tx.commit().await?;
        metrics::counter!("gateway_operations_settled_total", "kind" => operation.kind().as_str(), "status" => reply.status.to_string())
            .increment(1);
        Ok(reply)
    }
}
