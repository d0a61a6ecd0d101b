//! `POST /v1/payments/{id}/capture|void|refund`.

use chrono::Utc;

use crate::bank::{BankErrorCode, BankOutcome, Refusal};
use crate::domain::{Amount, IdempotencyKey, MerchantId, PaymentEvent, PaymentId, PaymentStatus};
use crate::idempotency::{self, Claim};
use crate::store::operations::{self, OperationKind, OperationRecord};
use crate::store::payments::{self, BankFacts, PaymentRecord, TransitionError};

use super::reply::{self, Reply};
use super::settle::{Requester, Resolution, failure_event};
use super::{Error, Gateway};

/// What a client may do to an existing payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Capture,
    Void,
    Refund,
}

impl Action {
    pub fn kind(self) -> OperationKind {
        match self {
            Self::Capture => OperationKind::Capture,
            Self::Void => OperationKind::Void,
            Self::Refund => OperationKind::Refund,
        }
    }

    /// The event that puts the payment in flight.
    fn requested(self) -> PaymentEvent {
        match self {
            Self::Capture => PaymentEvent::CaptureRequested,
            Self::Void => PaymentEvent::VoidRequested,
            Self::Refund => PaymentEvent::RefundRequested,
        }
    }
}

/// What tx A decided.
enum Start {
    /// Call the bank for this operation.
    Call(Box<(OperationRecord, PaymentRecord)>),
    /// Answered without calling the bank.
    Answered(Reply),
}

impl Gateway {
    /// Captures, voids or refunds a payment, in full. `amount`, when the
    /// client sends one, must equal the payment's.
    pub async fn operate(
        &self,
        merchant: MerchantId,
        key: &IdempotencyKey,
        request_hash: &[u8],
        payment_id: PaymentId,
        action: Action,
        amount: Option<Amount>,
    ) -> Result<Reply, Error> {
        let kind = action.kind();
        let requester = Requester { merchant, key };
        let mut tx = self.pool.begin().await?;
        let claim = idempotency::claim(&mut tx, merchant, key, request_hash, self.lease()).await?;
        let start = match claim {
            Claim::Replay(stored) => return Ok(Reply::replay(stored)),
            Claim::Resume {
                payment_id: Some(resumed),
            } => {
                match self
                    .resume_or_answer(&mut tx, requester, resumed, kind)
                    .await?
                {
                    Ok(operation) => {
                        let payment = payments::lock_by_id(&mut tx, resumed)
                            .await?
                            .ok_or(Error::NotFound)?;
                        Start::Call(Box::new((operation, payment)))
                    }
                    Err(reply) => Start::Answered(reply),
                }
            }
            Claim::New | Claim::Resume { payment_id: None } => {
                self.start(&mut tx, requester, payment_id, action, amount)
                    .await?
            }
        };
        tx.commit().await?;
        let (operation, payment) = match start {
            Start::Answered(reply) => return Ok(reply),
            Start::Call(call) => *call,
        };
        let resolution = self.call_bank(&operation, &payment).await;
        self.settle(Some(requester), &operation, resolution).await
    }

    /// Tx A: checks the payment and the state machine, then records the
    /// intent. A refusal by the state machine is answered (and stored on
    /// the key) without calling the bank.
    async fn start(
        &self,
        tx: &mut sqlx::PgConnection,
        requester: Requester<'_>,
        payment_id: PaymentId,
        action: Action,
        amount: Option<Amount>,
    ) -> Result<Start, Error> {
        let kind = action.kind();
        let payment = payments::lock(tx, requester.merchant, payment_id)
            .await?
            .ok_or(Error::NotFound)?;
        if let Some(amount) = amount.filter(|a| a.cents() != payment.amount) {
            tracing::debug!(requested = amount.cents(), "amount mismatch");
            return Err(Error::AmountMismatch {
                expected: payment.amount,
            });
        }
        let payment = self.expire_if_due(tx, payment).await?;
        let in_flight = match payments::apply(
            tx,
            &payment,
            action.requested(),
            &BankFacts::default(),
        )
        .await
        {
            Ok(in_flight) => in_flight,
            Err(TransitionError::Refused(refused)) => {
                tracing::info!(%refused, "state machine refused the operation; the bank is not called");
                let reply = reply::refused(&payment, refused)?;
                requester.store(tx, &reply).await?;
                return Ok(Start::Answered(reply));
            }
            Err(TransitionError::Database(e)) => return Err(e.into()),
        };
        let operation = operations::insert(tx, payment.id, kind, self.lease()).await?;
        idempotency::attach_payment(tx, requester.merchant, requester.key, payment.id).await?;
        Ok(Start::Call(Box::new((operation, in_flight))))
    }

    /// An authorization past its expiry is expired before anything else is
    /// tried on it, so capture and void answer `authorization_expired`
    /// without calling the bank.
    async fn expire_if_due(
        &self,
        tx: &mut sqlx::PgConnection,
        payment: PaymentRecord,
    ) -> Result<PaymentRecord, Error> {
        let due = payment.status() == PaymentStatus::Authorized
            && payment
                .authorization_expires_at
                .is_some_and(|at| at <= Utc::now());
        if !due {
            return Ok(payment);
        }
        Ok(payments::apply(
            tx,
            &payment,
            PaymentEvent::AuthorizationExpired,
            &BankFacts::default(),
        )
        .await?)
    }

    /// Sends the operation to the bank with its own key and classifies the answer.
    pub(super) async fn call_bank(
        &self,
        operation: &OperationRecord,
        payment: &PaymentRecord,
    ) -> Resolution {
        let key = operation.bank_idempotency_key.as_str();
        let authorization_id = payment.bank_authorization_id.as_deref().unwrap_or_default();
        let capture_id = payment.bank_capture_id.as_deref().unwrap_or_default();
        let kind = operation.kind();
        // (the answer, as what it tells us; the refusal that may mean "our own
        // earlier attempt did it"; the event of success)
        let (outcome, already_done, success) = match kind {
            OperationKind::Authorize => {
                return Resolution::Unknown {
                    reason: "an authorization can only be re-sent with the card, by its client"
                        .to_owned(),
                };
            }
            OperationKind::Capture => (
                self.bank
                    .capture(key, authorization_id, payment.amount)
                    .await
                    .map(|capture| BankFacts {
                        capture_id: Some(capture.capture_id),
                        ..BankFacts::default()
                    }),
                BankErrorCode::AuthorizationAlreadyUsed,
                PaymentEvent::CaptureSucceeded,
            ),
            OperationKind::Void => (
                self.bank
                    .void(key, authorization_id)
                    .await
                    .map(|void| BankFacts {
                        void_id: Some(void.void_id),
                        ..BankFacts::default()
                    }),
                BankErrorCode::AuthorizationAlreadyUsed,
                PaymentEvent::VoidSucceeded,
            ),
            OperationKind::Refund => (
                self.bank
                    .refund(key, capture_id, payment.amount)
                    .await
                    .map(|refund| BankFacts {
                        refund_id: Some(refund.refund_id),
                        ..BankFacts::default()
                    }),
                BankErrorCode::AlreadyRefunded,
                PaymentEvent::RefundSucceeded,
            ),
        };
        match outcome {
            BankOutcome::Done(facts) => Resolution::succeeded(success, facts),
            BankOutcome::Refused(refusal) if refusal.code == already_done => {
                self.adopt(kind, payment, success, &refusal).await
            }
            BankOutcome::Refused(refusal) => {
                Resolution::failed(failure_event(kind, &refusal.code), &refusal)
            }
            BankOutcome::Unknown(reason) => Resolution::unknown(&reason),
        }
    }

    /// The bank says it was already done: perhaps by our own earlier attempt
    /// whose answer was lost. What the bank holds decides.
    async fn adopt(
        &self,
        kind: OperationKind,
        payment: &PaymentRecord,
        success: PaymentEvent,
        refusal: &Refusal,
    ) -> Resolution {
        let held = match kind {
            OperationKind::Capture | OperationKind::Void => {
                let authorization_id = payment.bank_authorization_id.as_deref().unwrap_or_default();
                self.bank
                    .get_authorization(authorization_id)
                    .await
                    .map(|a| match kind {
                        OperationKind::Capture => BankFacts {
                            capture_id: a.capture_id,
                            ..BankFacts::default()
                        },
                        OperationKind::Authorize | OperationKind::Void | OperationKind::Refund => {
                            BankFacts {
                                void_id: a.void_id,
                                ..BankFacts::default()
                            }
                        }
                    })
            }
            OperationKind::Refund => {
                let capture_id = payment.bank_capture_id.as_deref().unwrap_or_default();
                self.bank.get_capture(capture_id).await.map(|c| BankFacts {
                    refund_id: c.refund_id,
                    ..BankFacts::default()
                })
            }
            OperationKind::Authorize => {
                return Resolution::failed(failure_event(kind, &refusal.code), refusal);
            }
        };
        match held {
            BankOutcome::Done(facts)
                if facts.capture_id.is_some()
                    || facts.void_id.is_some()
                    || facts.refund_id.is_some() =>
            {
                Resolution::succeeded(success, facts)
            }
            BankOutcome::Done(_) | BankOutcome::Refused(_) => {
                Resolution::failed(failure_event(kind, &refusal.code), refusal)
            }
            BankOutcome::Unknown(reason) => Resolution::unknown(&reason),
        }
    }
}
