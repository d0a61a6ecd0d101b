//! Reading a POST: its idempotency key and its JSON body, within limits.

use service_kit::json::canonical;

use actix_web::HttpRequest;
use actix_web::web::Payload;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::BankError;

/// Bodies larger than this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The contract allows keys of 1–255 characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// A POST under `/api/v1/`: the key, where it is scoped, and the body.
#[derive(Debug)]
pub struct IdempotentRequest<T> {
    pub scope: Scope,
    pub body: T,
}

/// An idempotency key is scoped to the request path; the hash tells a
/// replay from a different request sent with the same key.
#[derive(Debug, Clone)]
pub struct Scope {
    pub path: String,
    pub key: String,
    pub request_hash: Vec<u8>,
}

impl<T: DeserializeOwned> IdempotentRequest<T> {
    /// Checks the key first (as the original does), then reads the body.
    pub async fn read(req: &HttpRequest, payload: Payload) -> Result<Self, BankError> {
        let key = idempotency_key(req)?;
        let value = read_json(payload).await?;
        let request_hash = Sha256::digest(canonical(&value).to_string()).to_vec();
        let body = parse_value(value)?;
        Ok(Self {
            scope: Scope {
                path: req.path().to_owned(),
                key,
                request_hash,
            },
            body,
        })
    }
}

fn idempotency_key(req: &HttpRequest) -> Result<String, BankError> {
    let Some(header) = req.headers().get("Idempotency-Key") else {
        return Err(BankError::MissingIdempotencyKey);
    };
    let key = header
        .to_str()
        .map_err(|_| BankError::InvalidIdempotencyKey)?;
    if key.is_empty() {
        return Err(BankError::MissingIdempotencyKey);
    }
    if key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(BankError::InvalidIdempotencyKey);
    }
    Ok(key.to_owned())
}

/// Reads at most [`MAX_BODY_BYTES`] and parses them as JSON.
pub async fn read_json(payload: Payload) -> Result<Value, BankError> {
    let bytes = payload
        .to_bytes_limited(MAX_BODY_BYTES)
        .await
        .map_err(|_| BankError::PayloadTooLarge {
            limit_bytes: MAX_BODY_BYTES,
        })?
        .map_err(|_| BankError::InvalidRequest("the request body could not be read".into()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        BankError::InvalidRequest(format!(
            "the request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// Turns a JSON value into a request type. Serde's messages can quote the
/// offending value (a card number, say), so only the safe ones go out.
pub fn parse_value<T: DeserializeOwned>(value: Value) -> Result<T, BankError> {
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        if message.starts_with("missing field") || message.starts_with("unknown field") {
            BankError::InvalidRequest(message)
        } else {
            BankError::InvalidRequest(
                "a field of the request body has the wrong type or is out of range".into(),
            )
        }
    })
}
