//! An HTTP proxy between a gateway and the bank: it records every request
//! (path, `Idempotency-Key`, when it started and ended), and can be told to
//! answer some of them itself, the way a real network and the proxies in
//! front of a bank do: a 429 or a 408 from a load balancer, an HTML 502
//! page, an answer lost after the bank committed, or a refusal the bank
//! would give in a state a test cannot otherwise produce.
//!
//! The gateway's tests script it; the simulator reads its log to check that
//! no two callers ever had one bank key in flight at once.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use actix_web::web::{self, Bytes, Data};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub path: String,
    pub key: Option<String>,
    /// The `X-Gateway-Instance` header: which gateway process sent it.
    pub caller: Option<String>,
    pub started: Instant,
    /// When the answer was sent back, or the gateway gave up on it;
    /// `None` while in flight.
    pub ended: Option<Instant>,
    /// Whether it reached the bank (false when a rule answered instead).
    pub reached_bank: bool,
    /// Whether a rule answered it or replaced the bank's answer.
    pub rewritten: bool,
}

/// An answer the proxy gives in place of the bank's.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Canned {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    /// The bank's error object with this code.
    pub fn bank_error(status: u16, code: &str) -> Self {
        Self::json(
            status,
            serde_json::json!({"error": code, "message": "from the test's proxy"}),
        )
    }

    /// What a load balancer answers: an HTML page.
    pub fn html(status: u16) -> Self {
        Self {
            status,
            content_type: "text/html",
            body: format!("<html><body><h1>{status}</h1>upstream trouble</body></html>"),
        }
    }
}

/// What a rule does to the requests it matches.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this without forwarding: the bank never sees the request.
    Instead(Canned),
    /// Forward (the bank does the work and commits), then answer this
    /// instead of the bank's answer: the answer is lost.
    After(Canned),
    /// Forward, and answer this instead only if the bank did the work (it
    /// answered 2xx); any other answer passes: a refusal the bank would
    /// give a retry of work it did, never one it did not do. Its `every`
    /// counts the bank's successes, not the requests.
    AfterSuccess(Canned),
}

#[derive(Debug, Clone)]
struct Rule {
    method: &'static str,
    path: String,
    /// Matching requests it still acts on.
    times: usize,
    /// It acts on every `every`-th matching request (1: each of them) ...
    every: usize,
    /// ... counting the matching requests it has seen so far.
    seen: usize,
    fault: Fault,
}

#[derive(Clone, Default)]
struct ProxyState {
    bank: String,
    client: reqwest::Client,
    log: Arc<Mutex<Vec<Forwarded>>>,
    rules: Arc<Mutex<Vec<Rule>>>,
}

/// A running proxy; it stops with the runtime it was started on.
pub struct BankProxy {
    pub url: String,
    log: Arc<Mutex<Vec<Forwarded>>>,
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl BankProxy {
    pub fn start(bank: &str) -> Self {
        let client = reqwest::Client::builder()
            // Idle connections dropped before the bank's keep-alive closes them.
            .pool_idle_timeout(std::time::Duration::from_secs(1))
            .build()
            .expect("a reqwest client");
        let state = ProxyState {
            bank: bank.to_owned(),
            client,
            log: Arc::default(),
            rules: Arc::default(),
        };
        let (log, rules) = (Arc::clone(&state.log), Arc::clone(&state.rules));
        let data = Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(forward))
        })
        .workers(2)
        .max_connections(100_000)
        .backlog(4_096)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("the proxy binds");
        let port = server.addrs()[0].port();
        tokio::spawn(server.run());
        Self {
            url: format!("http://127.0.0.1:{port}"),
            log,
            rules,
        }
    }

    /// The next `times` requests `method path` (the path exactly, e.g.
    /// `/api/v1/captures`) meet `fault`. Rules apply in the order given.
    pub fn inject(&self, method: &'static str, path: &str, times: usize, fault: Fault) {
        lock(&self.rules).push(Rule {
            method,
            path: path.to_owned(),
            times,
            every: 1,
            seen: 0,
            fault,
        });
    }

    /// Every `every`-th request `method path` meets `fault`, for as long as
    /// the proxy runs (or until [`heal`](Self::heal)): a steady share of
    /// rewritten answers under a chaos run, the same count whatever the
    /// timing.
    pub fn inject_every(&self, method: &'static str, path: &str, every: usize, fault: Fault) {
        lock(&self.rules).push(Rule {
            method,
            path: path.to_owned(),
            times: usize::MAX,
            every: every.max(1),
            seen: 0,
            fault,
        });
    }

    /// Requests to `path` a rule answered or rewrote.
    pub fn rewritten(&self, path: &str) -> usize {
        lock(&self.log)
            .iter()
            .filter(|f| f.path == path && f.rewritten)
            .count()
    }

    /// Drops every rule: from now on everything is forwarded.
    pub fn heal(&self) {
        lock(&self.rules).clear();
    }

    pub fn forwarded(&self) -> Vec<Forwarded> {
        lock(&self.log).clone()
    }

    /// Requests to `path` that reached the bank.
    pub fn reached(&self, path: &str) -> usize {
        lock(&self.log)
            .iter()
            .filter(|f| f.path == path && f.reached_bank)
            .count()
    }
}

/// The first rule that acts on this request, counted down. A rule that
/// lets this request pass (not its turn) still counts it. Rules that act
/// only on work the bank did are counted once its answer says so
/// ([`take_success_turn`]).
fn take_rule(state: &ProxyState, method: &str, path: &str) -> Option<Fault> {
    take_turn(state, method, path, false)
}

/// The answer that replaces a successful one, if this success is an
/// `AfterSuccess` rule's turn: every `every`-th success, whatever the
/// declines and failures between them.
fn take_success_turn(state: &ProxyState, method: &str, path: &str) -> Option<Canned> {
    match take_turn(state, method, path, true)? {
        Fault::AfterSuccess(answer) => Some(answer),
        Fault::Instead(_) | Fault::After(_) => None,
    }
}

/// The first rule for this request whose turn it is, among the rules
/// that act on successes only (`on_success`) or the others, counted down.
fn take_turn(state: &ProxyState, method: &str, path: &str, on_success: bool) -> Option<Fault> {
    let mut rules = lock(&state.rules);
    for rule in rules.iter_mut().filter(|rule| {
        rule.times > 0
            && rule.method == method
            && rule.path == path
            && matches!(rule.fault, Fault::AfterSuccess(_)) == on_success
    }) {
        rule.seen += 1;
        if rule.seen % rule.every == 0 {
            rule.times -= 1;
            return Some(rule.fault.clone());
        }
    }
    None
}

fn canned(answer: &Canned) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(answer.status)
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    HttpResponse::build(status)
        .content_type(answer.content_type)
        .body(answer.body.clone())
}

async fn forward(req: HttpRequest, body: Bytes, state: Data<ProxyState>) -> HttpResponse {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let caller = req
        .headers()
        .get("x-gateway-instance")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let fault = take_rule(&state, req.method().as_str(), req.path());
    let index = {
        let mut log = lock(&state.log);
        log.push(Forwarded {
            path: req.path().to_owned(),
            key: key.clone(),
            caller,
            started: Instant::now(),
            ended: None,
            reached_bank: !matches!(fault, Some(Fault::Instead(_))),
            rewritten: matches!(fault, Some(Fault::Instead(_) | Fault::After(_))),
        });
        log.len() - 1
    };
    let _end = EndOnDrop {
        log: Arc::clone(&state.log),
        index,
    };
    if let Some(Fault::Instead(answer)) = &fault {
        return canned(answer);
    }
    let answer = relay(&req, body, key, &state).await;
    match fault {
        Some(Fault::After(lost)) => canned(&lost),
        Some(Fault::AfterSuccess(_) | Fault::Instead(_)) | None => {
            let rewrite = answer
                .status()
                .is_success()
                .then(|| take_success_turn(&state, req.method().as_str(), req.path()))
                .flatten();
            match rewrite {
                Some(lost) => {
                    lock(&state.log)[index].rewritten = true;
                    canned(&lost)
                }
                None => answer,
            }
        }
    }
}

/// Sends the request on to the bank and its answer back.
async fn relay(
    req: &HttpRequest,
    body: Bytes,
    key: Option<String>,
    state: &ProxyState,
) -> HttpResponse {
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut upstream = state
        .client
        .request(method, format!("{}{}", state.bank, req.uri()))
        .body(body.to_vec());
    if let Some(key) = key {
        upstream = upstream.header("Idempotency-Key", key);
    }
    if let Some(content_type) = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
    {
        upstream = upstream.header("Content-Type", content_type);
    }
    let Ok(response) = upstream.send().await else {
        return HttpResponse::BadGateway().finish();
    };
    let status = actix_web::http::StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    match response.bytes().await {
        Ok(bytes) => HttpResponse::build(status)
            .content_type(content_type)
            .body(bytes.to_vec()),
        Err(_) => HttpResponse::BadGateway().finish(),
    }
}

/// Closes a request's interval however the handler ends, including when
/// actix drops it because the gateway hung up.
struct EndOnDrop {
    log: Arc<Mutex<Vec<Forwarded>>>,
    index: usize,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        lock(&self.log)[self.index].ended = Some(Instant::now());
    }
}
