//! The edge: who is calling, with which key, and what they sent, parsed
//! into domain types or refused with the field that was wrong.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue,
};
use actix_web::middleware::Next;
use actix_web::web::{self, Data};
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError};
use serde_json::{Map, Value};

use super::client::ClientAddr;
use super::error::{ApiError, echoable};
use super::json;
use super::rate_limit::AddressLimiter;
use crate::domain::{Amount, DomainError, IdempotencyKey, MerchantId, PaymentId};
use crate::faults::Mutant;
use crate::startup::AppState;
use crate::store::merchants;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The merchant whose API key authenticated the request, and which the
/// key's rate limit let through.
///
/// Every `/v1` route takes this first, so the key is checked and counted
/// before the body is read or anything is stored: a request refused here
/// (400, 401, 429) leaves its Idempotency-Key unused. The key is looked up
/// again once its last lookup is `API_KEY_CACHE_MS` old (see `key_cache`),
/// so a revoked key is refused within that time; only a key of the right
/// shape is looked up, and not from a client address that has failed too
/// often (429, see `FailureBudget`).
#[derive(Debug, Clone, Copy)]
pub struct Merchant(pub MerchantId);

impl FromRequest for Merchant {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let key = bearer_token(req).map(|token| token.map(str::to_owned));
        let client = req.extensions().get::<ClientAddr>().copied();
        let state = req.app_data::<Data<AppState>>().cloned();
        Box::pin(async move {
            let key = key?;
            let Some(state) = state else {
                return Err(ApiError::Unauthenticated);
            };
            let failures = FailureBudget::of(&state, client);
            failures.ensure_left()?;
            let found = match look_up(&state, key.as_deref(), &failures).await? {
                Ok(found) => found,
                Err(failure) => {
                    failures.spend(failure);
                    return Err(ApiError::Unauthenticated);
                }
            };
            tracing::Span::current().record("merchant_id", tracing::field::display(found.merchant));
            if let Some(limiter) = &state.rate_limiter {
                limiter.check(found.key_id).map_err(|retry_after| {
                    metrics::counter!("gateway_rate_limited_total").increment(1);
                    ApiError::RateLimited { retry_after }
                })?;
            }
            Ok(Merchant(found.merchant))
        })
    }
}

/// Why a request did not authenticate: the `reason` label of
/// `gateway_auth_failures_total`.
#[derive(Debug, Clone, Copy)]
enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
}

impl AuthFailure {
    fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
        }
    }
}

/// The key's merchant, or why there is none. A key without the right shape
/// is refused without a query: a guess costs the database nothing. A key
/// the cache does not hold takes a failure's token before its query and
/// gets it back if found, so that guesses sent at once cannot all pass the
/// budget's check before the first of them is counted; requests with the
/// same key at once share one query ([`super::key_cache::Lookups`]), so a valid key's burst
/// holds one token, not one each.
async fn look_up(
    state: &AppState,
    key: Option<&str>,
    failures: &FailureBudget<'_>,
) -> Result<Result<merchants::Authenticated, AuthFailure>, ApiError> {
    let Some(key) = key else {
        return Ok(Err(AuthFailure::Missing));
    };
    if !well_formed_key(key) {
        return Ok(Err(AuthFailure::Malformed));
    }
    let hash = merchants::hash_key(key);
    let read_at = Instant::now();
    let cache = state.key_cache.as_ref();
    if let Some(found) = cache.and_then(|cache| cache.get(&hash, read_at)) {
        return Ok(Ok(found));
    }
    let lookup = || async {
        let reserved = failures.reserve()?;
        let mut conn = state.gateway.pool().acquire().await?;
        let found = merchants::merchant_for_key(&mut conn, &hash).await?;
        if found.is_none() {
            reserved.spent();
        }
        Ok(found)
    };
    let failed = || ApiError::Unavailable(sqlx::Error::PoolTimedOut);
    let found = state.key_lookups.share(&hash, lookup, failed).await?;
    if let (Some(cache), Some(found)) = (cache, found) {
        let read_at = if state.gateway.faults().mutant(Mutant::KeyCacheNeverLapses) {
            // The pre-fix form: remembered for as long as the process lives.
            read_at + Duration::from_secs(24 * 3_600)
        } else {
            read_at
        };
        cache.remember(hash, found, read_at);
    }
    Ok(found.ok_or(AuthFailure::Unknown))
}

/// A client address's budget of failed authentications
/// (`AUTH_FAILURE_LIMIT_*`): each 401 spends a token, and an address with
/// none left is refused with 429 before its key is looked at, whatever the
/// key. Guessing keys then costs a guesser its own address's access, and
/// the database one query per token, not one per try.
struct FailureBudget<'a> {
    limiter: Option<&'a AddressLimiter>,
    client: Option<IpAddr>,
}

impl<'a> FailureBudget<'a> {
    fn of(state: &'a AppState, client: Option<ClientAddr>) -> Self {
        Self {
            limiter: state.auth_failure_limiter.as_ref(),
            client: client.map(ClientAddr::limit_key),
        }
    }

    /// 429 with the wait when the address has no failure left to spend.
    fn ensure_left(&self) -> Result<(), ApiError> {
        let (Some(limiter), Some(client)) = (self.limiter, self.client) else {
            return Ok(());
        };
        limiter.peek(client).map_err(limited)
    }

    /// Takes a failure's token ahead of a lookup (429 if none is left).
    /// It is given back unless the lookup finds the key unknown
    /// ([`Reserved::spent`]): found, failed, or abandoned by a client that
    /// went away.
    fn reserve(&self) -> Result<Reserved<'_>, ApiError> {
        if let (Some(limiter), Some(client)) = (self.limiter, self.client) {
            limiter.check(client).map_err(limited)?;
        }
        Ok(Reserved {
            budget: self,
            spent: false,
        })
    }

    /// Counts a failure; one that needed no lookup (no key, a malformed
    /// one) spends its token now, an unknown key spent it on `reserve`.
    fn spend(&self, failure: AuthFailure) {
        metrics::counter!("gateway_auth_failures_total", "reason" => failure.label()).increment(1);
        let needed_no_lookup = match failure {
            AuthFailure::Missing | AuthFailure::Malformed => true,
            AuthFailure::Unknown => false,
        };
        if let (Some(limiter), Some(client), true) = (self.limiter, self.client, needed_no_lookup) {
            // Refused only when concurrent failures emptied the bucket since
            // `ensure_left`: this one is answered 401 all the same, and the
            // next is refused.
            let _ = limiter.check(client);
        }
    }
}

/// A failure's token taken ahead of a lookup.
struct Reserved<'a> {
    budget: &'a FailureBudget<'a>,
    spent: bool,
}

impl Reserved<'_> {
    /// The key was unknown: the token stays spent.
    fn spent(mut self) {
        self.spent = true;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let (false, Some(limiter), Some(client)) =
            (self.spent, self.budget.limiter, self.budget.client)
        {
            limiter.give_back(client);
        }
    }
}

fn limited(retry_after: Duration) -> ApiError {
    metrics::counter!("gateway_auth_failures_total", "reason" => "limited").increment(1);
    ApiError::AuthFailuresLimited { retry_after }
}

/// Refuses a request whose headers, names and values together, are larger
/// than `AppState::max_header_bytes`: 431 `headers_too_large`, before any
/// route runs. Inside `telemetry::observe`, so the refusal has a request id
/// and a log line.
pub async fn limit_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limit_bytes = req
        .app_data::<Data<AppState>>()
        .map_or(usize::MAX, |state| state.max_header_bytes);
    let size = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .fold(0_usize, usize::saturating_add);
    if size > limit_bytes {
        let response = ApiError::HeadersTooLarge { limit_bytes }.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Hex characters after the prefix in a key `merchants::create_api_key`
/// makes: 24 random bytes, hex-encoded (lowercase).
const KEY_HEX_CHARS: usize = 48;

/// Whether `token` has the shape of a key the gateway makes; no other
/// could be found, so no other is looked up.
fn well_formed_key(token: &str) -> bool {
    token
        .strip_prefix(merchants::KEY_PREFIX)
        .is_some_and(|random| {
            random.len() == KEY_HEX_CHARS
                && random
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The bearer token, if there is one; two Authorization headers are refused.
/// The scheme's name is matched whatever its case (RFC 9110 §11.1: some
/// clients send `bearer`).
fn bearer_token(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let token = single_header(req, AUTHORIZATION)?
        .and_then(|header| header.to_str().ok())
        .and_then(|header| header.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    Ok(token)
}

/// A listing's query parameters, each at most once, each one `allowed`:
/// a misspelt filter (`orderid`) would otherwise list every payment and
/// look like it worked, and a repeated one would take whichever came last.
pub fn query_params(
    req: &HttpRequest,
    allowed: &[&str],
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::invalid("query", "string could not be parsed"))?
        .into_inner();
    let mut params = std::collections::HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::unknown_parameter(&name, "query"));
        }
        if params.insert(name.clone(), value).is_some() {
            return Err(ApiError::duplicate(name));
        }
    }
    Ok(params)
}

/// Puts the payment a request is about on the request's log line.
pub fn record_payment_id(payment: PaymentId) {
    tracing::Span::current().record("payment_id", tracing::field::display(payment));
}

/// The payment a reply's body names (a payment object's `id`, or an
/// error's `payment_id`) onto the request's log line: for a new payment,
/// whose id is known only once it is answered.
pub fn record_payment_in_reply(body: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Named {
        id: Option<String>,
        error: Option<ErrorNamed>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorNamed {
        payment_id: Option<String>,
    }
    let Ok(named) = serde_json::from_slice::<Named>(body) else {
        return;
    };
    let id = named.id.or_else(|| named.error.and_then(|e| e.payment_id));
    if let Some(payment) = id.as_deref().and_then(|id| PaymentId::parse(id).ok()) {
        record_payment_id(payment);
    }
}

/// The `Idempotency-Key` header, required on every POST.
pub fn idempotency_key(req: &HttpRequest) -> Result<IdempotencyKey, ApiError> {
    let Some(header) = single_header(req, IDEMPOTENCY_KEY)? else {
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

/// How large a request body may be, and how long it may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
}

/// Reads the body within `limits` and parses it as JSON; an empty body is
/// `null`, which operations accept as "no parameters". A declared length
/// over the limit is refused before anything is read, and a body that has
/// not all arrived by the deadline is refused with 408: either way the
/// connection is closed with the rest unread.
pub async fn read_json(
    req: &HttpRequest,
    payload: web::Payload,
    limits: BodyLimits,
) -> Result<Value, ApiError> {
    let limit_bytes = limits.max_bytes;
    if declared_length(req).is_some_and(|length| length > limit_bytes as u64) {
        return Err(ApiError::PayloadTooLarge { limit_bytes });
    }
    let bytes = tokio::time::timeout(limits.read_timeout, payload.to_bytes_limited(limit_bytes))
        .await
        .map_err(|_| ApiError::BodyTimeout {
            timeout_ms: limits.read_timeout.as_millis(),
        })?
        .map_err(|_| ApiError::PayloadTooLarge { limit_bytes })?
        .map_err(|_| ApiError::Invalid {
            param: "body".into(),
            code: "parameter_invalid",
            message: "the request body could not be read".into(),
        })?;
    if bytes.is_empty() {
        // No body: nothing to declare.
        return Ok(Value::Null);
    }
    ensure_json_body(req)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    json::parse(&bytes).map_err(|e| match e {
        json::Error::Duplicate { path } if echoable(&path) => ApiError::duplicate(path),
        json::Error::Duplicate { .. } => ApiError::duplicate("body"),
        json::Error::Syntax(e) => ApiError::Invalid {
            param: "body".into(),
            code: "invalid_json",
            message: format!(
                "the request body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        },
    })
}

/// A body must say it is JSON, once, and come unencoded: what an
/// intermediary makes of `text/plain` or of a gzip body may not be what
/// the gateway reads (and it decodes none).
fn ensure_json_body(req: &HttpRequest) -> Result<(), ApiError> {
    if req.headers().contains_key(CONTENT_ENCODING) {
        return Err(ApiError::UnsupportedMediaType {
            param: "Content-Encoding",
            message: "a request body is taken without a Content-Encoding",
        });
    }
    let declared = single_header(req, CONTENT_TYPE)?.and_then(|value| value.to_str().ok());
    if declared.is_some_and(is_json_media_type) {
        return Ok(());
    }
    Err(ApiError::UnsupportedMediaType {
        param: "Content-Type",
        message: "a request body must be sent as Content-Type: application/json",
    })
}

/// `application/json`, with no parameter but `charset=utf-8` (JSON is UTF-8).
fn is_json_media_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|parameter| {
            parameter.split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("charset")
                    && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            })
        })
}

/// A header that must come at most once: sent twice, two parsers on the
/// way could each take a different one (400 `duplicate_parameter`).
fn single_header(req: &HttpRequest, name: HeaderName) -> Result<Option<&HeaderValue>, ApiError> {
    let mut values = req.headers().get_all(&name);
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::duplicate(header_label(&name)));
    }
    Ok(first)
}

/// A header's name as the API's documents spell it, for `param`.
fn header_label(name: &HeaderName) -> &'static str {
    if *name == AUTHORIZATION {
        "Authorization"
    } else if *name == CONTENT_TYPE {
        "Content-Type"
    } else if *name == IDEMPOTENCY_KEY {
        "Idempotency-Key"
    } else {
        "header"
    }
}

/// The `Content-Length` the client declared (the HTTP layer has refused a
/// malformed or repeated one already).
fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
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
            if path.is_empty() {
                ApiError::Invalid {
                    param: "body".into(),
                    code: "parameter_invalid",
                    message: "the request body must be a JSON object".into(),
                }
            } else {
                ApiError::invalid(path, "must be a JSON object")
            }
        })?;
        let fields = Self {
            map,
            path: path.to_owned(),
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            let within = if path.is_empty() { "body" } else { path };
            return Err(ApiError::unknown_parameter(&fields.name(unknown), within));
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

    pub fn optional_string(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(field).map(Some),
        }
    }

    /// An integer that fits in i64; floats and overflowing numbers are refused.
    pub fn integer(&self, field: &str) -> Result<i64, ApiError> {
        self.required(field)?.as_i64().ok_or_else(|| {
            ApiError::invalid(self.name(field), "must be an integer that fits in 64 bits")
        })
    }

    /// An amount in cents: an integer (`parameter_invalid_integer` for a
    /// fraction, a string or anything else; `amount_too_large` past the
    /// ceiling, however far past it, even beyond 64 bits).
    pub fn amount(&self, field: &str) -> Result<Amount, ApiError> {
        /// 2^63: past it, an integer no longer fits in an i64.
        const BEYOND_64_BITS: f64 = 9_223_372_036_854_775_808.0;
        let Value::Number(number) = self.required(field)? else {
            return Err(DomainError::AmountNotInteger.into());
        };
        let cents = match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(cents), _, _) => cents,
            (None, Some(_), _) => return Err(DomainError::AmountTooLarge.into()),
            // Past 64 bits serde_json keeps only a float: an integer so far
            // from the range is out of range, not malformed.
            (None, None, Some(f)) if f.fract() == 0.0 && f.abs() >= BEYOND_64_BITS => {
                return Err(if f > 0.0 {
                    DomainError::AmountTooLarge
                } else {
                    DomainError::AmountNotPositive
                }
                .into());
            }
            (None, None, _) => return Err(DomainError::AmountNotInteger.into()),
        };
        Ok(Amount::from_cents(cents)?)
    }

    pub fn optional_amount(&self, field: &str) -> Result<Option<Amount>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.amount(field).map(Some),
        }
    }

    pub fn optional_integer(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.integer(field).map(Some),
        }
    }

    /// An optional array of 1 to `max_items` strings.
    pub fn optional_strings(
        &self,
        field: &str,
        max_items: usize,
    ) -> Result<Option<Vec<&'a str>>, ApiError> {
        let items = match self.map.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) if (1..=max_items).contains(&items.len()) => items,
            Some(_) => {
                return Err(ApiError::invalid(
                    self.name(field),
                    format!("must be an array of 1 to {max_items} strings"),
                ));
            }
        };
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| ApiError::invalid(self.name(field), "must contain only strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn object(&self, field: &str, allowed: &[&str]) -> Result<Fields<'a>, ApiError> {
        Fields::of(self.required(field)?, &self.name(field), allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_prefix_and_48_lowercase_hex_characters() {
        let hex = "0123456789abcdef".repeat(3);
        assert!(well_formed_key(&format!("sk_test_{hex}")));
        for malformed in [
            String::new(),
            "sk_test_".to_owned(),
            hex.clone(),
            format!("sk_live_{hex}"),
            format!("sk_test_{}", &hex[1..]),
            format!("sk_test_{hex}0"),
            format!("sk_test_{}", hex.to_uppercase()),
            format!("sk_test_{}g", &hex[1..]),
            format!("sk_test_{}\u{e9}", &hex[2..]),
        ] {
            assert!(!well_formed_key(&malformed), "{malformed}");
        }
    }

    #[test]
    fn json_is_application_json_in_utf_8_only() {
        for accepted in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json_media_type(accepted), "{accepted}");
        }
        for refused in [
            "",
            "text/plain",
            "application/jsonx",
            "application/json; charset=latin1",
            "application/json; boundary=x",
            "application/json;",
            "text/json",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!is_json_media_type(refused), "{refused}");
        }
    }
}
