//! JSON logs, the request id, and the Prometheus recorder.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::Data;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use service_kit::logging::Spans;

use crate::api::error::BankError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Request latency buckets in seconds: the bank's latency spans 0–30 s.
const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// JSON lines on stdout, filtered by `RUST_LOG` (default `info`); the
/// request id is a field of the one line per request.
pub fn init_logging() {
    service_kit::logging::init(Spans::Omitted);
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &LATENCY_BUCKETS_SECONDS,
                )
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed when the bank runs
            // inside a bigger process; then the bank's series go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// What this bank counted since it started: the faults its chaos injected,
/// by kind, and its own errors (500s that were not injected). Prometheus
/// counts the same, but its registry is the process's: two banks in one
/// process (as the simulator's tests run them) would each read the other's
/// counts there, and a bug of one would be blamed on both.
#[derive(Debug, Default)]
pub struct Tally {
    internal_errors: AtomicU64,
    faults: Mutex<BTreeMap<&'static str, u64>>,
}

/// [`Tally`] as `GET /admin/counters` serves it (and the simulator reads it).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Counters {
    /// 500s of the bank's own: a bug, never chaos.
    pub internal_errors: u64,
    /// Faults injected, by kind (`failure`, `reset_after_commit`, ...).
    pub faults: BTreeMap<String, u64>,
}

impl Tally {
    pub fn fault(&self, kind: &'static str) {
        *self.faults().entry(kind).or_default() += 1;
    }

    fn internal_error(&self) {
        self.internal_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counters(&self) -> Counters {
        Counters {
            internal_errors: self.internal_errors.load(Ordering::Relaxed),
            faults: self
                .faults()
                .iter()
                .map(|(kind, n)| ((*kind).to_owned(), *n))
                .collect(),
        }
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        // A panic while counting leaves a map that is still whole.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Requests being served, and the most ever served at once. The peak shows
/// that latency does not occupy a worker: with 1 s of latency, 1,000
/// concurrent requests should all be in flight together.
#[derive(Debug, Default)]
pub struct InFlight {
    current: AtomicI64,
    peak: AtomicI64,
}

impl InFlight {
    pub fn peak(&self) -> i64 {
        self.peak.load(Ordering::Relaxed)
    }

    fn enter(&self) {
        let current = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        let peak = self.peak.fetch_max(current, Ordering::Relaxed).max(current);
        metrics::gauge!("bank_http_requests_in_flight").set(current as f64);
        metrics::gauge!("bank_http_requests_in_flight_peak").set(peak as f64);
    }

    fn leave(&self) {
        let current = self.current.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("bank_http_requests_in_flight").set(current as f64);
    }
}

/// Outermost middleware: request id, one log line and metrics per request.
/// Routes are labelled by pattern, so neither ids nor card numbers reach
/// a log line or a label.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let method = req.method().to_string();
    let in_flight = req.app_data::<Data<InFlight>>().cloned();
    in_flight.iter().for_each(|g| g.enter());
    let result = next.call(req).await;
    in_flight.iter().for_each(|g| g.leave());

    let mut response = result?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!("bank_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("bank_http_request_duration_seconds", "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::info!(
        request_id,
        method,
        route,
        status,
        duration_ms = elapsed.as_millis() as u64,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

/// Counts the bank's own 500s. Mounted inside chaos (see `api::routes`):
/// a fault injected after the commit replaces the handler's answer, and an
/// own error under it would otherwise be counted as chaos. A handler's
/// error stays attached to its response; an injected fault's carries none.
pub async fn count_own_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let response = next.call(req).await?;
    let own = response
        .response()
        .error()
        .and_then(|e| e.as_error::<BankError>())
        .is_some_and(|e| matches!(e, BankError::Internal(_)));
    if own {
        // Apart from injected faults: a client cannot tell the two 500s
        // apart, and a gateway retries both, so a bug of the bank's own
        // would otherwise pass unseen under chaos.
        metrics::counter!("bank_internal_errors_total").increment(1);
        if let Some(tally) = response.request().app_data::<Data<Tally>>() {
            tally.internal_error();
        }
    }
    Ok(response)
}
