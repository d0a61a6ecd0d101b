//! `POST /v1/payments`: record the intent, ask the bank, record the answer.

use crate::bank::{AuthorizeRequest, BankOutcome};
use crate::domain::{
    Amount, CardExpiry, CardNumber, Currency, CustomerId, IdempotencyKey, MerchantId, OrderId,
    PaymentId,
};
use crate::idempotency::{self, Claim};
use crate::store::operations::{self, OperationKind, OperationRecord};
use crate::store::payments::{self, History, NewPayment, PaymentRecord, StartAuthorization};

use super::reply::{Reply, reply_for};
use super::settle::{Requester, Resolution, failure_event};
use super::{Error, Gateway};

/// A parsed, valid authorization request. The card number and CVV live
/// only here, in memory, for as long as the request does.
#[derive(Debug)]
pub struct AuthorizeCommand {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub amount: Amount,
    pub currency: Currency,
    pub card_number: CardNumber,
    pub cvv: crate::domain::Cvv,
    pub expiry: CardExpiry,
}

impl Gateway {
    pub async fn authorize(
        &self,
        merchant: MerchantId,
        key: &IdempotencyKey,
        request_hash: &[u8],
        command: &AuthorizeCommand,
    ) -> Result<Reply, Error> {
        let requester = Requester { merchant, key };
        let new = new_payment(merchant, command);
        let started = self
            .starts
            .submit(StartAuthorization {
                payment: new.clone(),
                key: key.as_str().to_owned(),
                request_hash: request_hash.to_vec(),
                lease: self.lease(),
            })
            .await?;
        let (operation, known) = match started {
            Some(started) => (started.operation, Some((started.payment, started.history))),
            None => match self
                .claim_for_authorization(requester, request_hash, &new)
                .await?
            {
                Ok(operation) => (operation, None),
                Err(reply) => return Ok(reply),
            },
        };
        self.authorize_at_bank(requester, command, &operation, known)
            .await
    }

    /// The general path, for a key seen before: replay, resume, or start.
    async fn claim_for_authorization(
        &self,
        requester: Requester<'_>,
        request_hash: &[u8],
        new: &NewPayment,
    ) -> Result<Result<OperationRecord, Reply>, Error> {
        let Requester { merchant, key } = requester;
        let mut tx = self.pool.begin().await?;
        let claim = idempotency::claim(&mut tx, merchant, key, request_hash, self.lease()).await?;
        let operation = match claim {
            Claim::Replay(stored) => return Ok(Err(Reply::replay(stored))),
            Claim::Resume {
                payment_id: Some(payment_id),
            } => {
                match self
                    .resume_or_answer(&mut tx, requester, payment_id, OperationKind::Authorize)
                    .await?
                {
                    Ok(operation) => operation,
                    Err(reply) => {
                        tx.commit().await?;
                        return Ok(Err(reply));
                    }
                }
            }
            // The first attempt died before recording anything: start afresh.
            Claim::New | Claim::Resume { payment_id: None } => {
                let payment = payments::insert_pending(&mut tx, new).await?;
                idempotency::attach_payment(&mut tx, merchant, key, payment.id).await?;
                operations::insert(&mut tx, payment.id, OperationKind::Authorize, self.lease())
                    .await?
            }
        };
        tx.commit().await?;
        Ok(Ok(operation))
    }

    async fn authorize_at_bank(
        &self,
        requester: Requester<'_>,
        command: &AuthorizeCommand,
        operation: &OperationRecord,
        known: Option<(PaymentRecord, History)>,
    ) -> Result<Reply, Error> {
        let request = AuthorizeRequest {
            card_number: command.card_number.expose_for_bank(),
            cvv: command.cvv.expose_for_bank(),
            expiry_month: command.expiry.month(),
            expiry_year: command.expiry.year(),
            amount_cents: command.amount.cents(),
        };
        let resolution = match self
            .bank
            .authorize(&operation.bank_idempotency_key, &request)
            .await
        {
            BankOutcome::Done(authorization) => Resolution::approved(authorization),
            BankOutcome::Refused(refusal) => Resolution::failed(
                failure_event(OperationKind::Authorize, &refusal.code),
                &refusal,
            ),
            BankOutcome::Unknown(reason) => Resolution::unknown(&reason),
        };
        self.settle_known(Some(requester), operation, resolution, known)
            .await
    }

    /// For a key whose first request gave up: the payment's pending
    /// operation, leased to us (`Ok`), or the answer if it is already
    /// settled (`Err`, stored on the key).
    pub(super) async fn resume_or_answer(
        &self,
        tx: &mut sqlx::PgConnection,
        requester: Requester<'_>,
        payment_id: uuid::Uuid,
        kind: OperationKind,
    ) -> Result<Result<OperationRecord, Reply>, Error> {
        let payment = payments::lock_by_id(tx, payment_id)
            .await?
            .ok_or(Error::NotFound)?;
        match operations::lock_pending(tx, payment.id).await? {
            Some(operation) if operation.lease_until > chrono::Utc::now() => {
                Err(Error::Claim(idempotency::ClaimError::InUse))
            }
            Some(operation) => {
                operations::lease(tx, operation.id, self.lease()).await?;
                metrics::counter!("gateway_operations_resumed_total", "kind" => operation.kind().as_str()).increment(1);
                Ok(Ok(operation))
            }
            None => {
                let reply = reply_for(tx, kind, &payment).await?;
                requester.store(tx, &reply).await?;
                Ok(Err(reply))
            }
        }
    }
}

fn new_payment(merchant: MerchantId, command: &AuthorizeCommand) -> NewPayment {
    NewPayment {
        id: PaymentId::new(),
        merchant_id: merchant,
        order_id: command.order_id.as_str().to_owned(),
        customer_id: command.customer_id.as_str().to_owned(),
        amount_cents: command.amount.cents(),
        currency: command.currency.as_str(),
        card_brand: command.card_number.brand().as_str(),
        card_last4: command.card_number.last4().to_owned(),
        card_exp_month: i16::from(command.expiry.month()),
        card_exp_year: i16::try_from(command.expiry.year()).unwrap_or(i16::MAX),
    }
}
