//! The edge: who is calling, with which key, and what they sent, parsed
//! into domain types or refused with the field that was wrong.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::web::{self, Data};
use actix_web::{FromRequest, HttpRequest};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::domain::{IdempotencyKey, MerchantId};
use crate::startup::AppState;
use crate::store::merchants;

/// The merchant whose API key authenticated the request.
#[derive(Debug, Clone, Copy)]
pub struct Merchant(pub MerchantId);

impl FromRequest for Merchant {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let key = bearer_token(req).map(str::to_owned);
        let state = req.app_data::<Data<AppState>>().cloned();
        Box::pin(async move {
            let (Some(key), Some(state)) = (key, state) else {
                return Err(ApiError::Unauthenticated);
            };
            let mut conn = state.gateway.pool().acquire().await?;
            let merchant = merchants::merchant_for_key(&mut conn, &key).await?;
            merchant
                .map(|found| Merchant(found.merchant))
                .ok_or(ApiError::Unauthenticated)
        })
    }
}

fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let header = req.headers().get("Authorization")?.to_str().ok()?;
    let token = header.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// The `Idempotency-Key` header, required on every POST.
pub fn idempotency_key(req: &HttpRequest) -> Result<IdempotencyKey, ApiError> {
    let Some(header) = req.headers().get("Idempotency-Key") else {
        return Err(ApiError::MissingIdempotencyKey);
    };
    let raw = header
        .to_str()
        .map_err(|_| crate::domain::DomainError::IdempotencyKeyCharset)?;
    if raw.is_empty() {
        return Err(ApiError::MissingIdempotencyKey);
    }
    Ok(IdempotencyKey::parse(raw)?)
}

/// Reads at most `limit_bytes` and parses them as JSON; an empty body is
/// `null`, which operations accept as "no parameters".
pub async fn read_json(payload: web::Payload, limit_bytes: usize) -> Result<Value, ApiError> {
    let bytes = payload
        .to_bytes_limited(limit_bytes)
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit_bytes })?
        .map_err(|_| ApiError::invalid("body", "the request body could not be read"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Invalid {
        param: "body".into(),
        code: "invalid_json",
        message: format!(
            "the request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ),
    })
}

/// A JSON object read field by field, so that every refusal names the
/// field (as a dotted path) and none echoes what was sent.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    /// The body as an object; `allowed` lists the fields it may have.
    pub fn of(value: &'a Value, path: &str, allowed: &[&str]) -> Result<Self, ApiError> {
        let map = value.as_object().ok_or_else(|| {
            ApiError::invalid(
                if path.is_empty() { "body" } else { path },
                "must be a JSON object",
            )
        })?;
        let fields = Self {
            map,
            path: path.to_owned(),
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                fields.name(unknown),
                "is not a known parameter",
            ));
        }
        Ok(fields)
    }

    fn name(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        }
    }

    fn required(&self, field: &str) -> Result<&'a Value, ApiError> {
        self.map
            .get(field)
            .filter(|v| !v.is_null())
            .ok_or_else(|| ApiError::invalid(self.name(field), "is required"))
    }

    pub fn string(&self, field: &str) -> Result<&'a str, ApiError> {
        self.required(field)?
            .as_str()
            .ok_or_else(|| ApiError::invalid(self.name(field), "must be a string"))
    }

    /// An integer that fits in i64; floats and overflowing numbers are refused.
    pub fn integer(&self, field: &str) -> Result<i64, ApiError> {
        self.required(field)?.as_i64().ok_or_else(|| {
            ApiError::invalid(self.name(field), "must be an integer that fits in 64 bits")
        })
    }

    pub fn optional_integer(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.integer(field).map(Some),
        }
    }

    pub fn object(&self, field: &str, allowed: &[&str]) -> Result<Fields<'a>, ApiError> {
        Fields::of(self.required(field)?, &self.name(field), allowed)
    }
}
