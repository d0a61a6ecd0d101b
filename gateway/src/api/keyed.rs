//! The `Idempotency-Key` of the webhook-endpoint and event POSTs, as on
//! every POST. Each of these requests is one transaction and calls no bank,
//! so its key is written in that transaction, already answered: a retry
//! gets the same status and bytes (`Idempotent-Replayed: true`), another
//! request under the key 422. Only a change is stored; a refusal (400, 404)
//! changed nothing and leaves the key usable, as the payment routes' input
//! refusals do.
//!
//! Two answers show an endpoint's signing secret (create, rotate). They are
//! stored with [`SECRET_HOLE`] in its place and the salt the secret is made
//! from beside them; each answer, the first and every replay, fills the
//! hole with the secret made again (an HMAC of the salt under
//! `WEBHOOK_SECRET_KEY`, which the database never sees). So the replay
//! shows the secret the first answer showed, and a dump of the keys table
//! shows none.

use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};

use super::error::ApiError;
use super::payments::respond;
use super::request::idempotency_key;
use crate::domain::{EndpointId, IdempotencyKey, MerchantId};
use crate::faults::Mutant;
use crate::idempotency::{self, Answered, Fingerprint, KeyRecord};
use crate::payments::Reply;
use crate::startup::AppState;
use crate::webhooks::secret::WebhookKey;

/// Begins a keyed change in a handler, or returns the answer of a key used
/// before.
macro_rules! begin_or_answer {
    ($req:expr, $merchant:expr, $state:expr, $body:expr) => {
        match $crate::api::keyed::Keyed::begin($req, $merchant, $state, $body).await? {
            $crate::api::keyed::Begun::Answered(answer) => return Ok(answer),
            $crate::api::keyed::Begun::New(keyed) => keyed,
        }
    };
}
pub(crate) use begin_or_answer;

/// What a stored answer holds where the endpoint's secret was shown.
pub const SECRET_HOLE: &str = "whsec_(made again for each answer; never stored)";

/// A keyed POST, begun.
pub enum Begun {
    /// The key was used before: its answer (or its refusal).
    Answered(HttpResponse),
    /// A new key: the change is made in [`Keyed::conn`], then
    /// [`Keyed::finish`]ed.
    New(Keyed),
}

/// A change under a new key, in the transaction its key is written in.
pub struct Keyed {
    tx: Transaction<'static, Postgres>,
    merchant: MerchantId,
    key: IdempotencyKey,
    fingerprint: Fingerprint,
    /// The mutant that stores nothing on the key.
    unkeyed: bool,
}

impl Keyed {
    /// Reads the request's key (400 without one) and what it holds; a new
    /// key begins the transaction of the change, holding the key's turn
    /// ([`idempotency::take_turn`]) and reading the key again under it.
    pub async fn begin(
        req: &HttpRequest,
        merchant: MerchantId,
        state: &AppState,
        body: &Value,
    ) -> Result<Begun, ApiError> {
        let key = idempotency_key(req)?;
        let fingerprint = state.fingerprinter.fingerprint("POST", req.path(), body);
        let unkeyed = state.gateway.faults().mutant(Mutant::WebhookPostsUnkeyed);
        if unkeyed {
            // The pre-fix form: the key is asked for, then ignored.
            return Ok(Begun::New(Self {
                tx: state.gateway.pool().begin().await?,
                merchant,
                key,
                fingerprint,
                unkeyed,
            }));
        }
        let mut conn = state.gateway.pool().acquire().await?;
        if let Some(record) = idempotency::read(&mut conn, merchant, &key).await? {
            return answered_before(state, &fingerprint, &record).map(Begun::Answered);
        }
        drop(conn);
        let mut tx = state.gateway.pool().begin().await?;
        idempotency::take_turn(&mut tx, merchant, &key).await?;
        if let Some(record) = idempotency::read(&mut tx, merchant, &key).await? {
            tx.rollback().await?;
            return answered_before(state, &fingerprint, &record).map(Begun::Answered);
        }
        Ok(Begun::New(Self {
            tx,
            merchant,
            key,
            fingerprint,
            unkeyed,
        }))
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Stores the answer on the key and commits it with the change. A key
    /// another request took meanwhile is answered as itself, and this
    /// change is rolled back. `secret_salt`: the answer shows the secret
    /// made from it, in [`SECRET_HOLE`].
    pub async fn finish(
        mut self,
        state: &AppState,
        status: u16,
        answer: &impl serde::Serialize,
        secret_salt: Option<&[u8]>,
    ) -> Result<HttpResponse, ApiError> {
        let body = serde_json::to_vec(answer).map_err(|e| ApiError::Internal(e.into()))?;
        if self.unkeyed {
            self.tx.commit().await?;
            let body = with_secret(state, body, secret_salt)?;
            return Ok(respond(Reply {
                status,
                body,
                replayed: false,
            }));
        }
        let answered = Answered {
            payment_id: None,
            status,
            body: &body,
            secret_salt,
        };
        let stored = idempotency::insert_answered(
            &mut self.tx,
            self.merchant,
            &self.key,
            &self.fingerprint,
            answered,
        )
        .await?;
        if !stored {
            self.tx.rollback().await?;
            let mut conn = state.gateway.pool().acquire().await?;
            let record = idempotency::read(&mut conn, self.merchant, &self.key)
                .await?
                .ok_or(ApiError::KeyInUse)?;
            return answered_before(state, &self.fingerprint, &record);
        }
        self.tx.commit().await?;
        let body = with_secret(state, body, secret_salt)?;
        Ok(respond(Reply {
            status,
            body,
            replayed: false,
        }))
    }
}

/// A key used before: 422 for another request, its answer replayed.
fn answered_before(
    state: &AppState,
    fingerprint: &Fingerprint,
    record: &KeyRecord,
) -> Result<HttpResponse, ApiError> {
    if !fingerprint.matches(&record.request_hash) {
        return Err(ApiError::KeyReused);
    }
    // Answered in the transaction that wrote it: one in progress belongs
    // to a payment's route, whose requests never match these.
    let stored = record.answer().ok_or(ApiError::KeyInUse)?;
    let body = with_secret(state, stored.response_body, record.secret_salt.as_deref())?;
    Ok(respond(Reply {
        status: u16::try_from(stored.response_status).unwrap_or(500),
        body,
        replayed: true,
    }))
}

/// Fills [`SECRET_HOLE`] with the secret of the answer's endpoint made from
/// `salt`; an answer without a salt is sent as stored.
fn with_secret(state: &AppState, body: Vec<u8>, salt: Option<&[u8]>) -> Result<Vec<u8>, ApiError> {
    let Some(salt) = salt else {
        return Ok(body);
    };
    let key: &WebhookKey = state
        .webhooks
        .key
        .as_ref()
        .ok_or(ApiError::WebhooksNotConfigured)?;
    let invariant = |what: &'static str| ApiError::Internal(anyhow::anyhow!(what));
    let text = String::from_utf8(body).map_err(|_| invariant("a stored answer is not UTF-8"))?;
    let endpoint = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|view| EndpointId::parse(view["id"].as_str()?).ok())
        .ok_or_else(|| invariant("a stored answer with a secret names no endpoint"))?;
    let secret = key.endpoint_secret(endpoint.as_uuid(), salt).to_whsec();
    Ok(text.replacen(SECRET_HOLE, &secret, 1).into_bytes())
}
