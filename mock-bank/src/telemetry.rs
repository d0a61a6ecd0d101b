//! JSON logs, the request id, and the Prometheus recorder.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::Data;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use service_kit::logging::Spans;

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
