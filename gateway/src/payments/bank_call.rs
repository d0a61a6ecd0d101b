//! The bank call: an operation sent with its own bank key, and the bank's
//! answer classified, once, into a [`Resolution`].
//!
//! The bank client already sorted answers into done, a documented refusal,
//! and unknown (anything a proxy or a network could have produced: a 5xx,
//! a timeout, a 408 or 429, an HTML page, a code nobody documented). Here a
//! refusal gets its meaning for this operation:
//!
//! | refusal | meaning |
//! |---|---|
//! | authorize: `invalid_card`, `invalid_cvv`, `card_expired`, `insufficient_funds` | the card is declined |
//! | authorize: `idempotency_key_reused` | the key was retired by the gateway's own resolve, or created an authorization under another body: resolve says which (abandoned, or the authorization adopted) |
//! | capture, void: `authorization_expired` | expired |
//! | capture, void: `authorization_already_used`; refund: `already_refunded`; capture, void, refund: `idempotency_key_reused` (the bank stored an answer under this operation's key: it did the operation) | perhaps our own earlier attempt: ask the bank and adopt what it holds; if it holds the other outcome, the payment moved at the bank without the gateway (`payment_moved_at_bank`); if its lookup shows neither, or cannot be had, unknown |
//! | anything else documented (`invalid_amount`, `amount_mismatch`, `…_not_found`, a malformed request) | the bank refused the gateway's request: an alarm, never a decline |

use crate::bank::{AuthorizeRequest, BankErrorCode, BankOutcome, Refusal};
use crate::domain::{OperationKind, PaymentEvent};
use crate::faults::Mutant;
use crate::store::operations::OperationRecord;
use crate::store::payments::{BankFacts, PaymentRecord};

use super::Gateway;
use super::command::AuthorizeCommand;
use super::recover::ABANDONED;
use super::settle::Resolution;

/// The failure code of an operation the bank refused because it had
/// already done the other thing to the payment (voided what this
/// captures, captured what this voids) without the gateway.
pub const MOVED_AT_BANK: &str = "payment_moved_at_bank";

/// What a documented refusal means for the operation it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    /// The bank refused the card.
    Declined,
    /// The key was used before: retired by the gateway's resolve (nothing
    /// was, or will be, held), or an authorization made under it.
    Retired,
    /// The authorization has expired.
    Expired,
    /// Already done, perhaps by our own earlier attempt.
    MaybeOurs,
    /// The bank refused the request itself: a gateway bug, or a bank that
    /// no longer agrees with the gateway's records.
    GatewayFault,
}

fn meaning(kind: OperationKind, code: &BankErrorCode) -> Meaning {
    use BankErrorCode as C;
    use Meaning as M;
    match (kind, code) {
        (
            OperationKind::Authorize,
            C::InvalidCard | C::InvalidCvv | C::CardExpired | C::InsufficientFunds,
        ) => M::Declined,
        (OperationKind::Authorize, C::IdempotencyKeyReused) => M::Retired,
        (OperationKind::Capture | OperationKind::Void, C::AuthorizationExpired) => M::Expired,
        // The bank stores only what it did: a key it refuses as used with
        // another body is a key it acted on.
        (
            OperationKind::Capture | OperationKind::Void,
            C::AuthorizationAlreadyUsed | C::IdempotencyKeyReused,
        )
        | (OperationKind::Refund, C::AlreadyRefunded | C::IdempotencyKeyReused) => M::MaybeOurs,
        (
            OperationKind::Authorize,
            C::InvalidAmount
            | C::AuthorizationNotFound
            | C::AuthorizationAlreadyUsed
            | C::AuthorizationExpired
            | C::AmountMismatch
            | C::CaptureNotFound
            | C::AlreadyRefunded
            | C::MissingIdempotencyKey
            | C::InvalidIdempotencyKey
            | C::InvalidRequest
            | C::NotFound
            | C::Other(_),
        )
        | (
            OperationKind::Capture | OperationKind::Void,
            C::InvalidCard
            | C::InvalidCvv
            | C::InvalidAmount
            | C::CardExpired
            | C::InsufficientFunds
            | C::AuthorizationNotFound
            | C::AmountMismatch
            | C::CaptureNotFound
            | C::AlreadyRefunded
            | C::MissingIdempotencyKey
            | C::InvalidIdempotencyKey
            | C::InvalidRequest
            | C::NotFound
            | C::Other(_),
        )
        | (
            OperationKind::Refund,
            C::InvalidCard
            | C::InvalidCvv
            | C::InvalidAmount
            | C::CardExpired
            | C::InsufficientFunds
            | C::AuthorizationNotFound
            | C::AuthorizationAlreadyUsed
            | C::AuthorizationExpired
            | C::AmountMismatch
            | C::CaptureNotFound
            | C::MissingIdempotencyKey
            | C::InvalidIdempotencyKey
            | C::InvalidRequest
            | C::NotFound
            | C::Other(_),
        ) => M::GatewayFault,
    }
}

/// The event that ends an operation the bank refused for a reason other
/// than the card or expiry: the payment goes back to where it was (for an
/// authorization, to `failed`).
fn failed(kind: OperationKind) -> PaymentEvent {
    match kind {
        OperationKind::Authorize => PaymentEvent::AuthorizeFailed,
        OperationKind::Capture => PaymentEvent::CaptureFailed,
        OperationKind::Void => PaymentEvent::VoidFailed,
        OperationKind::Refund => PaymentEvent::RefundFailed,
    }
}

/// The event of the bank saying the authorization expired.
fn expired(kind: OperationKind) -> PaymentEvent {
    match kind {
        OperationKind::Capture => PaymentEvent::CaptureExpired,
        OperationKind::Void => PaymentEvent::VoidExpired,
        // Only captures and voids are refused as expired (see `meaning`).
        OperationKind::Authorize | OperationKind::Refund => failed(kind),
    }
}

/// The bank refused a request the gateway made: logged at ERROR and
/// counted, so that it pages someone; the client is told the bank refused,
/// never that its card was declined.
fn alarm(kind: OperationKind, refusal: &Refusal) {
    tracing::error!(
        operation = kind.as_str(),
        status = refusal.status,
        code = refusal.code.as_str(),
        message = %refusal.message,
        "the bank refused the gateway's request: a gateway bug, or the bank disagrees with our records"
    );
    metrics::counter!(
        "gateway_bank_rejected_requests_total",
        "operation" => kind.as_str(),
        "code" => refusal.code.label(),
    )
    .increment(1);
}

impl Gateway {
    /// Sends the operation to the bank with its own key and classifies the
    /// answer. `card` is the client's authorization request: an
    /// authorization is only ever sent with the card its client brought.
    pub(super) async fn call_bank(
        &self,
        operation: &OperationRecord,
        payment: &PaymentRecord,
        card: Option<&AuthorizeCommand>,
    ) -> Resolution {
        let key = operation.bank_idempotency_key.as_str();
        if let Some(command) = card
            && self.faults.mutant(Mutant::ResumeAnyOperation)
        {
            // The pre-fix form: the card goes to the bank under whatever
            // operation the key resumed.
            return self.authorize_with_card(key, command).await;
        }
        let authorization_id = payment.bank_authorization_id.as_deref().unwrap_or_default();
        let capture_id = payment.bank_capture_id.as_deref().unwrap_or_default();
        let kind = operation.kind;
        let outcome = match kind {
            OperationKind::Authorize => {
                let Some(command) = card else {
                    return Resolution::Unknown {
                        reason: "an authorization can only be re-sent with the card, by its client"
                            .to_owned(),
                    };
                };
                return self.authorize_with_card(key, command).await;
            }
            OperationKind::Capture => self
                .bank
                .capture(key, authorization_id, payment.amount)
                .await
                .map(|capture| BankFacts {
                    capture_id: Some(capture.capture_id),
                    ..BankFacts::default()
                }),
            OperationKind::Void => {
                self.bank
                    .void(key, authorization_id)
                    .await
                    .map(|void| BankFacts {
                        void_id: Some(void.void_id),
                        ..BankFacts::default()
                    })
            }
            OperationKind::Refund => {
                self.bank
                    .refund(key, capture_id, payment.amount)
                    .await
                    .map(|refund| BankFacts {
                        refund_id: Some(refund.refund_id),
                        ..BankFacts::default()
                    })
            }
        };
        match outcome {
            BankOutcome::Done(facts) => Resolution::succeeded(kind.succeeded(), facts),
            BankOutcome::Refused(refusal)
                if refusal.code == BankErrorCode::IdempotencyKeyReused
                    && self.faults.mutant(Mutant::KeyReusedIsGatewayFault) =>
            {
                // The pre-fix form: the bank's refusal of its own key, taken
                // for a refusal of the request.
                alarm(kind, &refusal);
                Resolution::failed(failed(kind), refusal.code.as_str())
            }
            BankOutcome::Refused(refusal) => match meaning(kind, &refusal.code) {
                Meaning::MaybeOurs => self.adopt(kind, payment, &refusal).await,
                Meaning::Expired => Resolution::failed(expired(kind), refusal.code.as_str()),
                Meaning::Declined | Meaning::Retired | Meaning::GatewayFault => {
                    alarm(kind, &refusal);
                    Resolution::failed(failed(kind), refusal.code.as_str())
                }
            },
            BankOutcome::Unknown(_) if self.faults.mutant(Mutant::UnknownIsFailure) => {
                Resolution::failed(failed(kind), "unknown")
            }
            BankOutcome::Unknown(reason) => Resolution::unknown(&reason),
        }
    }

    /// `POST /api/v1/authorizations` with the card, under the operation's key.
    async fn authorize_with_card(&self, key: &str, command: &AuthorizeCommand) -> Resolution {
        let request = AuthorizeRequest {
            card_number: command.card_number.expose_for_bank(),
            cvv: command.cvv.expose_for_bank(),
            expiry_month: command.expiry.month(),
            expiry_year: command.expiry.year(),
            amount_cents: command.amount.cents(),
        };
        let lenient = self.faults.mutant(Mutant::Any4xxIsDecline)
            || self.faults.mutant(Mutant::ServerErrorIsDecline);
        match self.bank.authorize(key, &request).await {
            BankOutcome::Done(authorization) => Resolution::approved(authorization),
            // The pre-fix forms: whatever the bank or a proxy refused, a decline.
            BankOutcome::Refused(refusal) if lenient => {
                Resolution::failed(PaymentEvent::AuthorizeDeclined, refusal.code.as_str())
            }
            BankOutcome::Unknown(_) if self.faults.mutant(Mutant::UnknownIsFailure) => {
                Resolution::failed(PaymentEvent::AuthorizeDeclined, "unknown")
            }
            BankOutcome::Refused(refusal) => match meaning(OperationKind::Authorize, &refusal.code)
            {
                Meaning::Declined => {
                    Resolution::failed(PaymentEvent::AuthorizeDeclined, refusal.code.as_str())
                }
                Meaning::Retired => self.resolve_retired(key).await,
                Meaning::Expired | Meaning::MaybeOurs | Meaning::GatewayFault => {
                    alarm(OperationKind::Authorize, &refusal);
                    Resolution::failed(PaymentEvent::AuthorizeFailed, refusal.code.as_str())
                }
            },
            BankOutcome::Unknown(reason) => Resolution::unknown(&reason),
        }
    }

    /// Settles an authorization without its card, by its key (the recovery
    /// worker's way). Within the grace period the bank is only asked whether
    /// it holds one: the client may still come back with the card. After
    /// it, the bank settles it for good: the authorization the key created,
    /// adopted, or none ever (the key is retired, so no late request can
    /// create one), and the payment fails as abandoned.
    pub(super) async fn resolve_authorization(
        &self,
        operation: &OperationRecord,
        past_grace: bool,
    ) -> Resolution {
        let key = operation.bank_idempotency_key.as_str();
        let outcome = if past_grace {
            self.bank.resolve_authorization(key).await
        } else {
            self.bank.find_authorization(key).await
        };
        match outcome {
            BankOutcome::Done(authorization) => Resolution::approved(authorization),
            BankOutcome::Refused(refusal) if refusal.code == BankErrorCode::NotFound => {
                if self.faults.mutant(Mutant::AbandonedIsDeclined) {
                    Resolution::failed(PaymentEvent::AuthorizeDeclined, ABANDONED)
                } else if past_grace {
                    Resolution::failed(PaymentEvent::AuthorizeFailed, ABANDONED)
                } else {
                    Resolution::Unknown {
                        reason: "the bank holds nothing for this key yet; its client may still \
                                 send the card again"
                            .to_owned(),
                    }
                }
            }
            // Anything else proves nothing: ask again later.
            BankOutcome::Refused(refusal) => Resolution::Unknown {
                reason: refusal.to_string(),
            },
            BankOutcome::Unknown(reason) => Resolution::unknown(&reason),
        }
    }

    /// The bank refused the authorization's key as used. Mostly the
    /// gateway's own resolve retired it (a request that came back after
    /// its grace); but the bank also refuses so a key whose authorization
    /// it made under another body, and then it holds money. Resolve tells
    /// the two apart, retiring nothing new: the authorization the key made
    /// (adopted), or nothing (abandoned).
    async fn resolve_retired(&self, key: &str) -> Resolution {
        match self.bank.resolve_authorization(key).await {
            BankOutcome::Done(authorization) => Resolution::approved(authorization),
            BankOutcome::Refused(refusal) if refusal.code == BankErrorCode::NotFound => {
                Resolution::failed(PaymentEvent::AuthorizeFailed, ABANDONED)
            }
            BankOutcome::Refused(refusal) => Resolution::Unknown {
                reason: format!("the key was refused as used, then its resolve: {refusal}"),
            },
            BankOutcome::Unknown(reason) => Resolution::unknown(&reason),
        }
    }

    /// The bank says it was already done: perhaps by our own earlier attempt
    /// whose answer was lost. What the bank holds decides, and only what it
    /// shows: the id of this operation's outcome (ours, or made behind the
    /// gateway: the money moved either way), or of the other outcome (a void
    /// where this captures, a capture where this voids). A lookup that
    /// shows neither (a bank without the lookup's extensions, as the
    /// original's) or refuses an id the bank itself gave proves nothing, and
    /// the operation stays unknown: a guess here would write a receipt the
    /// bank contradicts, and answer it for good.
    async fn adopt(
        &self,
        kind: OperationKind,
        payment: &PaymentRecord,
        refusal: &Refusal,
    ) -> Resolution {
        let held = match kind {
            OperationKind::Capture | OperationKind::Void => {
                let authorization_id = payment.bank_authorization_id.as_deref().unwrap_or_default();
                self.bank
                    .get_authorization(authorization_id)
                    .await
                    .map(|a| BankFacts {
                        capture_id: a.capture_id,
                        void_id: a.void_id,
                        ..BankFacts::default()
                    })
            }
            OperationKind::Refund => {
                let capture_id = payment.bank_capture_id.as_deref().unwrap_or_default();
                self.bank.get_capture(capture_id).await.map(|c| BankFacts {
                    refund_id: c.refund_id,
                    ..BankFacts::default()
                })
            }
            OperationKind::Authorize => BankOutcome::Refused(refusal.clone()),
        };
        let facts = match held {
            BankOutcome::Done(facts) => facts,
            BankOutcome::Refused(lookup) => {
                alarm(kind, refusal);
                return Resolution::Unknown {
                    reason: format!("the bank said {refusal}, then refused its lookup: {lookup}"),
                };
            }
            BankOutcome::Unknown(reason) => return Resolution::unknown(&reason),
        };
        let (own, other) = match kind {
            OperationKind::Capture => (facts.capture_id, facts.void_id),
            OperationKind::Void => (facts.void_id, facts.capture_id),
            OperationKind::Refund => (facts.refund_id, None),
            OperationKind::Authorize => (None, None),
        };
        match (own, other) {
            (Some(id), _) => Resolution::succeeded(kind.succeeded(), outcome_facts(kind, id)),
            // Done, but by someone else: the bank holds the other outcome,
            // made behind the gateway. Not a gateway bug: the receipt is
            // behind the bank, and is brought up to it once this is settled.
            (None, Some(_)) => {
                tracing::warn!(
                    operation = kind.as_str(),
                    payment_id = %payment.payment_id(),
                    code = refusal.code.as_str(),
                    "the bank moved this payment without the gateway; catching its receipt up"
                );
                metrics::counter!("gateway_bank_moved_behind_total", "operation" => kind.as_str())
                    .increment(1);
                Resolution::failed(failed(kind), MOVED_AT_BANK)
            }
            // Left in flight for recovery to ask again, and flagged if it
            // never resolves; the alarm says why from the first time.
            (None, None) => {
                alarm(kind, refusal);
                Resolution::Unknown {
                    reason: format!(
                        "the bank said {refusal}, and its lookup shows neither this outcome nor the other"
                    ),
                }
            }
        }
    }
}

/// What the bank's id for an operation's outcome says about its payment.
fn outcome_facts(kind: OperationKind, id: String) -> BankFacts {
    let mut facts = BankFacts::default();
    let slot = match kind {
        OperationKind::Authorize => &mut facts.authorization_id,
        OperationKind::Capture => &mut facts.capture_id,
        OperationKind::Void => &mut facts.void_id,
        OperationKind::Refund => &mut facts.refund_id,
    };
    *slot = Some(id);
    facts
}
