//! JSON logs with a request id, and the Prometheus recorder.

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::field::{Field, Visit};
use tracing::{Event, Instrument, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A request id longer than this, or not printable ASCII, is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Latency buckets in seconds: requests span milliseconds to the 10 s bank deadline.
const LATENCY_BUCKETS_SECONDS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// Webhook delivery lag in seconds: from the change to the receiver's 2xx,
/// retries included, so from sub-second to the schedule's three days.
const DELIVERY_LAG_BUCKETS_SECONDS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1_800.0, 7_200.0, 43_200.0, 259_200.0,
];

/// Rows per batched write, up to the default `DB_BATCH_MAX_ROWS`.
const BATCH_ROWS_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// JSON lines on stdout, filtered by `RUST_LOG` (default `info`); a line
/// carries its request's span (request id, merchant, payment). Does nothing
/// if the process already has a subscriber.
///
/// The lines of `service_kit::logging` (`Spans::Current`), with one change
/// the bank does not need: a connection that actix-http ends with an error
/// is logged at WARN, not ERROR (see [`ClientFaultsAsWarnings`]).
pub fn init_logging() {
    let spec = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    let json = tracing_subscriber::fmt::format()
        .json()
        .with_current_span(true)
        .with_span_list(false);
    let _ = tracing_subscriber::fmt()
        .fmt_fields(JsonFields::new())
        .event_format(ClientFaultsAsWarnings(json))
        .with_env_filter(filter)
        .try_init();
}

/// sqlx writes the notices Postgres sends at INFO, and at every start but
/// the first Postgres sends one ("relation \"_sqlx_migrations\" already
/// exists, skipping"): noise that opened the log. Notices are shown from
/// WARN up, unless RUST_LOG says something about sqlx itself.
const QUIET_POSTGRES_NOTICES: &str = "sqlx::postgres::notice=warn";

/// The filter: RUST_LOG (default `info`), with Postgres's notices quieted.
fn log_filter(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        Some(spec) if spec.contains("sqlx") => spec.to_owned(),
        Some(spec) if !spec.is_empty() => format!("{spec},{QUIET_POSTGRES_NOTICES}"),
        _ => format!("info,{QUIET_POSTGRES_NOTICES}"),
    }
}

/// actix-http ends a connection on a head it cannot parse (bad bytes in a
/// header, both `Content-Length` and `Transfer-Encoding`), on a head too
/// large, on a client that hangs up, or on a handler that answered without
/// reading the body (a 401 or 413 before it), and logs each at ERROR
/// ("stream error: …", target `actix_http::h1::dispatcher`). Any client can
/// cause every one of them, so they are the client's fault, not the
/// operator's: this writes those lines at WARN. Its other ERROR lines (a
/// response body that failed, which is ours) stay ERROR.
///
/// `RUST_LOG` still filters them by their original level.
struct ClientFaultsAsWarnings<F>(F);

impl<S, N, F> FormatEvent<S, N> for ClientFaultsAsWarnings<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if !is_connection_error(event) {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // Inside a JSON string every quote is escaped, so the first
        // unescaped `"level":"ERROR"` is the line's level and nothing else.
        writer.write_str(&line.replacen(r#""level":"ERROR""#, r#""level":"WARN""#, 1))
    }
}

/// actix-http's "stream error: …" line: a connection ended with an error.
fn is_connection_error(event: &Event<'_>) -> bool {
    let metadata = event.metadata();
    if metadata.target() != "actix_http::h1::dispatcher" || *metadata.level() != Level::ERROR {
        return false;
    }
    let mut message = Message(String::new());
    event.record(&mut message);
    message.0.starts_with("stream error")
}

/// An event's `message` field, as text.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("gateway_webhook_delivery_lag_seconds".into()),
                    &DELIVERY_LAG_BUCKETS_SECONDS,
                )
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &LATENCY_BUCKETS_SECONDS,
                )
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full("gateway_db_batch_rows".into()),
                    &BATCH_ROWS_BUCKETS,
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // In a process that already has a recorder (a test running the
            // bank too), the gateway's series go to that one.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Describes the series an operator pages on and creates the ones that
/// would otherwise appear only with their first event (gauges that a
/// background loop sets, counters of rare events) at 0, so that dashboards
/// and alerts see them from the start. Call after [`prometheus`].
pub fn register_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "gateway_http_requests_total",
        "HTTP requests answered, by method, route pattern and status"
    );
    describe_histogram!(
        "gateway_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by route pattern"
    );
    describe_gauge!(
        "gateway_http_requests_in_flight",
        "HTTP requests being served"
    );
    describe_counter!(
        "gateway_bank_calls_total",
        "Bank calls (all attempts of one operation), by operation and outcome: done, refused, unknown"
    );
    describe_counter!(
        "gateway_bank_attempts_total",
        "Bank HTTP attempts, by operation and result"
    );
    describe_counter!(
        "gateway_bank_retries_total",
        "Bank attempts that were retries of a failed one, by operation"
    );
    describe_histogram!(
        "gateway_bank_call_duration_seconds",
        Unit::Seconds,
        "Bank call latency, all attempts included, by operation"
    );
    describe_gauge!("gateway_bank_in_flight", "Bank HTTP attempts in flight");
    describe_histogram!(
        "gateway_db_batch_rows",
        "Rows per batched write (group commit), by write"
    );
    describe_gauge!(
        "gateway_bank_circuit_state",
        "The bank's circuit breaker: 0 closed, 1 half open, 2 open"
    );
    describe_gauge!(
        "gateway_operations_unresolved",
        "Operations whose bank outcome is not known yet"
    );
    describe_gauge!(
        "gateway_operations_unresolved_flagged",
        "Operations unresolved for longer than RECOVERY_FLAG_AFTER_SECONDS"
    );
    describe_gauge!(
        "gateway_reconcile_mismatches",
        "Payments whose receipt disagrees with the bank, at the last reconciliation"
    );
    describe_counter!(
        "gateway_idempotency_replays_total",
        "Requests answered with a stored response (Idempotent-Replayed: true)"
    );
    describe_counter!(
        "gateway_idempotency_conflicts_total",
        "Idempotency-Key conflicts: in_use (409) and reused with another request (422)"
    );
    describe_counter!(
        "gateway_rate_limited_total",
        "Requests refused with 429 by the per-key rate limit"
    );
    describe_counter!(
        "gateway_webhook_attempts_total",
        "Webhook delivery attempts, by outcome: delivered (2xx) or failed"
    );
    describe_counter!(
        "gateway_webhook_deliveries_total",
        "Webhook deliveries finished, by outcome: delivered, or failed after the whole retry schedule"
    );
    describe_histogram!(
        "gateway_webhook_delivery_lag_seconds",
        Unit::Seconds,
        "From a payment's change to its webhook's delivery, retries included"
    );
    describe_gauge!(
        "gateway_webhook_deliveries_due",
        "Webhook deliveries due now and not yet sent (enabled endpoints)"
    );
    describe_gauge!(
        "gateway_webhook_endpoints_disabled",
        "Webhook endpoints the gateway disabled because a delivery failed for its whole schedule"
    );
    describe_counter!(
        "gateway_webhook_endpoints_disabled_total",
        "Webhook endpoints disabled by the gateway for failing"
    );
    describe_counter!(
        "gateway_auth_failures_total",
        "Requests that did not authenticate, by reason: missing, malformed, unknown (401), limited (429: the client address failed too often)"
    );
    for gauge in [
        "gateway_webhook_deliveries_due",
        "gateway_webhook_endpoints_disabled",
        "gateway_http_requests_in_flight",
        "gateway_bank_in_flight",
        "gateway_operations_unresolved",
        "gateway_operations_unresolved_flagged",
        "gateway_reconcile_mismatches",
    ] {
        metrics::gauge!(gauge).increment(0.0);
    }
    for kind in ["in_use", "reused"] {
        metrics::counter!("gateway_idempotency_conflicts_total", "kind" => kind).increment(0);
    }
    metrics::counter!("gateway_idempotency_replays_total").increment(0);
    metrics::counter!("gateway_rate_limited_total").increment(0);
    for outcome in ["delivered", "failed"] {
        metrics::counter!("gateway_webhook_attempts_total", "outcome" => outcome).increment(0);
        metrics::counter!("gateway_webhook_deliveries_total", "outcome" => outcome).increment(0);
    }
    metrics::counter!("gateway_webhook_endpoints_disabled_total").increment(0);
    for reason in ["missing", "malformed", "unknown", "limited"] {
        metrics::counter!("gateway_auth_failures_total", "reason" => reason).increment(0);
    }
}

/// Outermost middleware: a request id (the client's, or a new one) on the
/// response and on every log line of the request, and one line and the
/// HTTP metrics per request. The line has the request id, the merchant and
/// the payment (when known) as span fields, and the status.
///
/// Every label value comes from a closed set, since each new value is a
/// series kept in memory for good and in every scrape: routes by pattern
/// (never by path; `unmatched` for no route), methods by [`method_label`],
/// statuses from the answers this code gives.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let method = method_label(req.method());
    // `client_addr`, `merchant_id` and `payment_id` are filled in by
    // `api::client::identify`, the extractor and the handlers once known
    // (`Span::current().record`), so that the request's line carries them.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        client_addr = tracing::field::Empty,
        merchant_id = tracing::field::Empty,
        payment_id = tracing::field::Empty,
    );
    metrics::gauge!("gateway_http_requests_in_flight").increment(1.0);
    let result = next.call(req).instrument(span.clone()).await;
    metrics::gauge!("gateway_http_requests_in_flight").decrement(1.0);
    let mut response = result?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!("gateway_http_requests_total", "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("gateway_http_request_duration_seconds", "route" => route.clone())
        .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            method,
            route,
            status,
            duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

/// The method as a metric label and on the log line: the standard methods
/// by name, anything else `other`. A client may send any token as a method,
/// kilobytes of it, and each would be a series of its own (and a long line).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_are_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::TRACE), "TRACE");
        let made_up = Method::from_bytes(b"PROBE123").unwrap();
        assert_eq!(method_label(&made_up), "other");
        let lower = Method::from_bytes(b"get").unwrap();
        assert_eq!(method_label(&lower), "other", "methods are case-sensitive");
    }

    #[test]
    fn postgres_notices_are_quiet_unless_rust_log_speaks_of_sqlx() {
        assert_eq!(log_filter(None), "info,sqlx::postgres::notice=warn");
        assert_eq!(log_filter(Some(" ")), "info,sqlx::postgres::notice=warn");
        assert_eq!(
            log_filter(Some("debug")),
            "debug,sqlx::postgres::notice=warn"
        );
        assert_eq!(log_filter(Some("info,sqlx=info")), "info,sqlx=info");
        for spec in [None, Some("warn"), Some("gateway=debug")] {
            assert!(EnvFilter::try_new(log_filter(spec)).is_ok(), "{spec:?}");
        }
    }
}
