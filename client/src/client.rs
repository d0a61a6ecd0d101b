//! The client: one method per route, each a call of one or more attempts
//! that follows the contract's retry rules.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Error};
use crate::key::IdempotencyKey;
use crate::observe::{AttemptOutcome, AttemptWitness, Observer};
use crate::payment::{Payment, PaymentId, PaymentList};
use crate::request::{AuthorizeRequest, Page};
use crate::retry::{RetryPolicy, parse_retry_after};

/// How long to wait for a TCP connection before trying the next replica:
/// much shorter than an attempt, because a replica that does not accept
/// connections will not start to in the middle of one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle pooled connections are dropped before the gateway's keep-alive
/// (5 s) closes them: a request written on a connection the server is
/// closing at that moment fails with nothing learnt (it is retried, but
/// costs an attempt).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of the FicMart payment gateway.
///
/// Cheap to clone; clones share the connection pool, the observer and the
/// round-robin position.
///
/// ```
/// use client::{Client, RetryPolicy};
///
/// let client = Client::new(["http://127.0.0.1:8080", "http://127.0.0.1:8081"], "sk_test")?
///     .with_retry_policy(RetryPolicy::default());
/// assert_eq!(client.base_urls().len(), 2);
/// // The API key never shows in Debug output.
/// assert!(!format!("{client:?}").contains("sk_test"));
///
/// // No TLS in this build, no credentials in a URL, at least one URL.
/// assert!(Client::new(["https://gateway.example"], "sk_test").is_err());
/// assert!(Client::new(["http://user:pw@gateway.example"], "sk_test").is_err());
/// assert!(Client::new(Vec::<String>::new(), "sk_test").is_err());
/// # Ok::<(), client::BuildError>(())
/// ```
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_urls: Arc<[Url]>,
    authorization: HeaderValue,
    policy: RetryPolicy,
    observer: Option<Observer>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    replicas: AtomicUsize,
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("at least one base URL is needed")]
    NoBaseUrl,
    /// The URL itself is not repeated: it may hold credentials.
    #[error("base URL #{index} (from 0) is not usable: {reason}")]
    InvalidBaseUrl { index: usize, reason: &'static str },
    #[error("the API key must be non-empty printable ASCII without spaces")]
    InvalidApiKey,
    #[error("the HTTP client could not be built")]
    Http(#[source] reqwest::Error),
}

impl Client {
    /// A client of the gateway replicas at `base_urls` (e.g.
    /// `http://127.0.0.1:8080`; a path prefix is kept), with FicMart's API
    /// key. Successive attempts go round-robin across the replicas: an
    /// idempotency key may reach another replica than its first attempt
    /// did, which the gateway supports.
    pub fn new<U: AsRef<str>>(
        base_urls: impl IntoIterator<Item = U>,
        api_key: impl AsRef<str>,
    ) -> Result<Self, BuildError> {
        let base_urls = base_urls
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                parse_base_url(raw.as_ref())
                    .map_err(|reason| BuildError::InvalidBaseUrl { index, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if base_urls.is_empty() {
            return Err(BuildError::NoBaseUrl);
        }
        let api_key = api_key.as_ref();
        if api_key.is_empty() || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BuildError::InvalidApiKey);
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {api_key}"))
            .map_err(|_| BuildError::InvalidApiKey)?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("ficmart-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildError::Http)?;
        Ok(Self {
            http,
            base_urls: base_urls.into(),
            authorization,
            policy: RetryPolicy::default(),
            observer: None,
            counters: Arc::default(),
        })
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Reports every HTTP attempt to `observer` (see
    /// [`AttemptRecord`](crate::AttemptRecord)).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn base_urls(&self) -> &[Url] {
        &self.base_urls
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// `POST /v1/payments`: authorizes (reserves) the amount on the card.
    ///
    /// `key` names this one authorization: use a fresh one
    /// ([`IdempotencyKey::random`]) per checkout attempt, and the same one,
    /// with the same request, to resume it after
    /// [`Error::StillPending`], [`Error::Unavailable`] or
    /// [`Error::Transport`].
    pub async fn authorize(
        &self,
        key: &IdempotencyKey,
        request: &AuthorizeRequest,
    ) -> Result<Payment, Error> {
        // Serialised once, so every attempt sends the same bytes.
        let body = serde_json::to_vec(request)
            .expect("an AuthorizeRequest is strings and integers, which always serialize");
        self.execute(Call::post("/v1/payments".to_owned(), key, Some(body)))
            .await
    }

    /// `POST /v1/payments/{id}/capture`: captures the full authorized amount.
    pub async fn capture(
        &self,
        key: &IdempotencyKey,
        payment: &PaymentId,
    ) -> Result<Payment, Error> {
        self.operate(key, payment, "capture").await
    }

    /// `POST /v1/payments/{id}/void`: releases the authorization.
    pub async fn void(&self, key: &IdempotencyKey, payment: &PaymentId) -> Result<Payment, Error> {
        self.operate(key, payment, "void").await
    }

    /// `POST /v1/payments/{id}/refund`: refunds the full captured amount.
    pub async fn refund(
        &self,
        key: &IdempotencyKey,
        payment: &PaymentId,
    ) -> Result<Payment, Error> {
        self.operate(key, payment, "refund").await
    }

    /// `GET /v1/payments/{id}`.
    pub async fn get(&self, payment: &PaymentId) -> Result<Payment, Error> {
        self.execute(Call::get(format!("/v1/payments/{payment}"), Vec::new()))
            .await
    }

    /// `GET /v1/payments?order_id=…`: the order's payments, newest first.
    pub async fn list_by_order(&self, order_id: &str, page: &Page) -> Result<PaymentList, Error> {
        self.list("order_id", order_id, page).await
    }

    /// `GET /v1/payments?customer_id=…`: the customer's payments, newest first.
    pub async fn list_by_customer(
        &self,
        customer_id: &str,
        page: &Page,
    ) -> Result<PaymentList, Error> {
        self.list("customer_id", customer_id, page).await
    }

    async fn operate(
        &self,
        key: &IdempotencyKey,
        payment: &PaymentId,
        action: &str,
    ) -> Result<Payment, Error> {
        // No body: the gateway operates on the full amount.
        let path = format!("/v1/payments/{payment}/{action}");
        self.execute(Call::post(path, key, None)).await
    }

    async fn list(
        &self,
        filter: &'static str,
        value: &str,
        page: &Page,
    ) -> Result<PaymentList, Error> {
        let mut query = vec![(filter, value.to_owned())];
        if let Some(after) = &page.starting_after {
            query.push(("starting_after", after.to_string()));
        }
        if let Some(limit) = page.limit {
            query.push(("limit", limit.to_string()));
        }
        self.execute(Call::get("/v1/payments".to_owned(), query))
            .await
    }

    /// Attempts `call` until it has a final answer, or the attempts or the
    /// deadline run out.
    async fn execute<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, Error> {
        let started = Instant::now();
        let call_number = self.counters.calls.fetch_add(1, Ordering::Relaxed) + 1;
        // Each call starts at the next replica and moves on by one per
        // attempt: calls spread over the replicas, and a retry never goes
        // back to the replica that just failed while there is another.
        let first_replica = self.counters.replicas.fetch_add(1, Ordering::Relaxed);
        let mut in_flight: Option<(Box<Payment>, IdempotencyKey)> = None;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let replica = first_replica.wrapping_add(attempt as usize - 1) % self.base_urls.len();
            let base = &self.base_urls[replica];
            let left = self.policy.deadline.saturating_sub(started.elapsed());
            let timeout = self.policy.attempt_timeout.min(left);
            let retry = match self
                .attempt(&call, call_number, attempt, base, timeout)
                .await
            {
                Step::Done(result) => return result,
                Step::Retry(retry) => retry,
            };
            if let Retry::InFlight { payment, key } = &retry {
                in_flight = Some((payment.clone(), key.clone()));
            }
            let retry_after = match &retry {
                Retry::AskedToWait { retry_after, .. } => *retry_after,
                Retry::InFlight { .. } | Retry::NoAnswer { .. } => None,
            };
            if attempt >= self.policy.max_attempts {
                return Err(retry.into_error(attempt, in_flight));
            }
            let left = self.policy.deadline.saturating_sub(started.elapsed());
            let wait = match retry_after {
                // The gateway said when it can take the request again;
                // coming back sooner only spends an attempt, so with less
                // time left than that, stop now rather than wait it out.
                Some(asked) if asked >= left => return Err(retry.into_error(attempt, in_flight)),
                Some(asked) => asked,
                None => self.policy.backoff(attempt).min(left),
            };
            if left.is_zero() {
                return Err(retry.into_error(attempt, in_flight));
            }
            tokio::time::sleep(wait).await;
            if started.elapsed() >= self.policy.deadline {
                return Err(retry.into_error(attempt, in_flight));
            }
        }
    }

    /// One HTTP attempt, reported to the observer whatever becomes of it.
    async fn attempt<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        call_number: u64,
        attempt: u32,
        base: &Url,
        timeout: Duration,
    ) -> Step<T> {
        let url = endpoint(base, &call.path, &call.query);
        let path = match url.query() {
            Some(query) => format!("{}?{query}", call.path),
            None => call.path.clone(),
        };
        let witness = AttemptWitness::start(
            self.observer.as_ref(),
            call_number,
            attempt,
            call.method.clone(),
            path,
            call.key.cloned(),
            base.clone(),
        );
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .header(AUTHORIZATION, self.authorization.clone());
        if let Some(key) = call.key {
            request = request.header("Idempotency-Key", key.as_str());
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let exchange = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                let detail = error_chain(&error);
                witness.finish(AttemptOutcome::Transport {
                    error: detail.clone(),
                });
                return Step::Retry(Retry::NoAnswer { detail });
            }
            Err(_elapsed) => {
                let detail = format!("no whole answer within the attempt's {timeout:?}");
                witness.finish(AttemptOutcome::Transport {
                    error: detail.clone(),
                });
                return Step::Retry(Retry::NoAnswer { detail });
            }
        };
        let body = String::from_utf8_lossy(&body).into_owned();
        let raw_retry_after = header_text(&headers, RETRY_AFTER.as_str());
        let retry_after = raw_retry_after.as_deref().and_then(parse_retry_after);
        witness.finish(AttemptOutcome::Response {
            status,
            replayed: header_text(&headers, "Idempotent-Replayed").as_deref() == Some("true"),
            retry_after: raw_retry_after,
            request_id: header_text(&headers, "X-Request-Id"),
            body: body.clone(),
        });
        judge(status, retry_after, &body, call.key)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the API key.
        f.debug_struct("Client")
            .field("base_urls", &self.base_urls)
            .field("policy", &self.policy)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// One logical request: the same on every attempt.
struct Call<'a> {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    key: Option<&'a IdempotencyKey>,
    body: Option<Vec<u8>>,
}

impl<'a> Call<'a> {
    fn post(path: String, key: &'a IdempotencyKey, body: Option<Vec<u8>>) -> Self {
        Self {
            method: Method::POST,
            path,
            query: Vec::new(),
            key: Some(key),
            body,
        }
    }

    fn get(path: String, query: Vec<(&'static str, String)>) -> Self {
        Self {
            method: Method::GET,
            path,
            query,
            key: None,
            body: None,
        }
    }
}

/// What one attempt leaves the call with.
enum Step<T> {
    /// A final answer: the result, or an error no retry would change.
    Done(Result<T, Error>),
    /// An answer that a retry with the same key may improve on.
    Retry(Retry),
}

enum Retry {
    /// 202: the operation is in flight; a retry with the key resumes it.
    InFlight {
        payment: Box<Payment>,
        key: IdempotencyKey,
    },
    /// 409 `idempotency_key_in_use`, 429, 503: nothing was done.
    AskedToWait {
        last: ApiError,
        retry_after: Option<Duration>,
    },
    /// No (whole) answer, or a proxy's instead of the gateway's.
    NoAnswer { detail: String },
}

impl Retry {
    /// The error the call ends with when it gives up after `attempts`. Once
    /// any attempt saw the operation in flight, that is what the caller
    /// needs to know (resume it with the key), whatever the later attempts
    /// met (the recovery worker holding the key, a dropped connection).
    fn into_error(self, attempts: u32, in_flight: Option<(Box<Payment>, IdempotencyKey)>) -> Error {
        if let Some((payment, key)) = in_flight {
            return Error::StillPending { payment, key };
        }
        match self {
            Retry::InFlight { payment, key } => Error::StillPending { payment, key },
            Retry::AskedToWait { last, retry_after } => Error::Unavailable {
                attempts,
                last,
                retry_after,
            },
            Retry::NoAnswer { detail } => Error::Transport { attempts, detail },
        }
    }
}

/// Classifies a whole answer, by the contract's table.
fn judge<T: DeserializeOwned>(
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    key: Option<&IdempotencyKey>,
) -> Step<T> {
    let decode = |error: serde_json::Error| Error::Decode {
        status,
        detail: error.to_string(),
    };
    match status {
        200 | 201 => Step::Done(serde_json::from_str(body).map_err(decode)),
        202 => match (serde_json::from_str::<Payment>(body), key) {
            (Ok(payment), Some(key)) => Step::Retry(Retry::InFlight {
                payment: Box::new(payment),
                key: key.clone(),
            }),
            // Only a POST (which has a key) can be left in flight.
            (Ok(_), None) => Step::Done(Err(Error::Decode {
                status,
                detail: "a 202 to a request without an Idempotency-Key".to_owned(),
            })),
            (Err(error), _) => Step::Done(Err(decode(error))),
        },
        _ => match ApiError::parse(status, body) {
            Some(api) if api.asks_for_retry() => Step::Retry(Retry::AskedToWait {
                last: api,
                retry_after,
            }),
            Some(api) => Step::Done(Err(Error::from(api))),
            // A load balancer or proxy in front of the replicas answered
            // for a gateway it could not reach: the request may not have
            // got to any gateway, so it is treated as no answer at all.
            // So is a 408 without one: the request did not arrive whole,
            // and nothing was done.
            None if matches!(status, 408 | 502..=504) => Step::Retry(Retry::NoAnswer {
                detail: format!("HTTP {status} without the gateway's error object (from a proxy?)"),
            }),
            None => Step::Done(Err(Error::Decode {
                status,
                detail: "the body is not the API's error object".to_owned(),
            })),
        },
    }
}

/// Checks a base URL once, so that no attempt can fail for its form.
fn parse_base_url(raw: &str) -> Result<Url, &'static str> {
    let url = Url::parse(raw).map_err(|_| "not a URL")?;
    match url.scheme() {
        "http" => {}
        // The workspace builds reqwest without TLS; an https URL would fail
        // every attempt, so it is refused here instead.
        "https" => return Err("https needs TLS, which this build of the client does not have"),
        _ => return Err("the scheme must be http"),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host");
    }
    // Credentials in the URL would be copied into every attempt record
    // and transport error; the API key is the one credential.
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it holds credentials; use the API key");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it has a query or a fragment");
    }
    Ok(url)
}

/// `base`'s path prefix, then `path`, then `query`.
fn endpoint(base: &Url, path: &str, query: &[(&str, String)]) -> Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}{path}"));
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// An error and its causes, e.g. "error sending request for url (…):
/// client error (Connect): tcp connect error: Connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> Url {
        Url::parse(raw).expect("a URL")
    }

    #[test]
    fn a_path_prefix_is_kept_and_the_query_encoded() {
        let query = [("order_id", "ord 1&x".to_owned())];
        assert_eq!(
            endpoint(&url("http://h:1/gw/"), "/v1/payments", &query).as_str(),
            "http://h:1/gw/v1/payments?order_id=ord+1%26x"
        );
        assert_eq!(
            endpoint(&url("http://h:1"), "/v1/payments/pay_x/capture", &[]).as_str(),
            "http://h:1/v1/payments/pay_x/capture"
        );
    }

    #[test]
    fn base_urls_are_checked_up_front() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("http://gateway.internal/prefix/").is_ok());
        for bad in [
            "127.0.0.1:8080",
            "ftp://h",
            "https://h",
            "http://u:p@h",
            "http://h/?q=1",
            "http://h/#f",
            "not a url",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_202_without_a_key_is_not_taken_for_in_flight() {
        let payment_json = r#"{"id": "pay_x", "order_id": "o", "customer_id": "c", "amount": 1,
            "currency": "USD", "status": "pending",
            "card": {"brand": "visa", "last4": "1111", "expiry_month": 1, "expiry_year": 2030},
            "bank": {"authorization_id": null, "capture_id": null, "void_id": null, "refund_id": null},
            "authorization_expires_at": null, "failure": null, "history": [],
            "created_at": "2030-01-01T00:00:00Z", "updated_at": "2030-01-01T00:00:00Z"}"#;
        let key = IdempotencyKey::random();
        assert!(matches!(
            judge::<Payment>(202, None, payment_json, Some(&key)),
            Step::Retry(Retry::InFlight { .. })
        ));
        assert!(matches!(
            judge::<Payment>(202, None, payment_json, None),
            Step::Done(Err(Error::Decode { status: 202, .. }))
        ));
    }

    #[test]
    fn only_the_contracts_waits_and_a_proxys_5xx_are_retried() {
        let object = |status: u16, code: &str| {
            let body =
                serde_json::json!({"error": {"type": "api_error", "code": code, "message": "m"}});
            judge::<Payment>(status, None, &body.to_string(), None)
        };
        assert!(matches!(
            object(409, "idempotency_key_in_use"),
            Step::Retry(Retry::AskedToWait { .. })
        ));
        assert!(matches!(
            object(429, "rate_limited"),
            Step::Retry(Retry::AskedToWait { .. })
        ));
        assert!(matches!(
            object(503, "bank_unavailable"),
            Step::Retry(Retry::AskedToWait { .. })
        ));
        assert!(matches!(
            object(409, "invalid_state"),
            Step::Done(Err(Error::InvalidState(_)))
        ));
        assert!(matches!(
            object(502, "bank_error"),
            Step::Done(Err(Error::BankError(_)))
        ));
        assert!(matches!(
            object(500, "internal_error"),
            Step::Retry(Retry::AskedToWait { .. })
        ));
        for status in [408, 502, 503, 504] {
            assert!(matches!(
                judge::<Payment>(status, None, "<html>Bad Gateway</html>", None),
                Step::Retry(Retry::NoAnswer { .. })
            ));
        }
        assert!(matches!(
            judge::<Payment>(500, None, "<html>oops</html>", None),
            Step::Done(Err(Error::Decode { status: 500, .. }))
        ));
        assert!(matches!(
            judge::<Payment>(200, None, "{\"truncated\": ", None),
            Step::Done(Err(Error::Decode { status: 200, .. }))
        ));
    }
}
