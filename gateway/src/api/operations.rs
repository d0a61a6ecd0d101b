//! `/health`, `/ready` and `/metrics`, for operators and orchestrators.
//! `/ready` and `/metrics` are served on the operator listener only;
//! `/health` on both (it says nothing but "alive").

use std::time::Duration;

use actix_web::web::Data;
use actix_web::{HttpResponse, get};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::startup::AppState;
use crate::store::MIGRATOR;

/// A readiness probe that cannot reach the database this fast says no.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/health", tag = "operations",
    summary = "Liveness",
    description = "The process is alive; says nothing about the database or the bank (the operator listener's `/ready` does).",
    responses((status = 200, description = "The process is alive: `{\"status\": \"ok\"}`", content_type = "application/json", body = Object)))]
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 when the database is reachable and migrated, else 503 with the
/// reason (`database`, `migrations`); `circuit` is the bank's circuit
/// breaker (closed, open or half_open), reported but not a condition.
#[get("/ready")]
pub async fn ready(state: Data<AppState>) -> HttpResponse {
    let expected = i64::try_from(MIGRATOR.iter().count()).unwrap_or(i64::MAX);
    let probe = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(state.gateway.pool());
    let (database, migrations) = match tokio::time::timeout(READY_DB_TIMEOUT, probe).await {
        Ok(Ok(applied)) if applied >= expected => ("ok", "ok"),
        Ok(Ok(_)) => ("ok", "pending"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            ("unreachable", "unknown")
        }
        Err(_) => ("timeout", "unknown"),
    };
    let ok = database == "ok" && migrations == "ok";
    // The bank's circuit is reported but does not make this 503. Readiness
    // asks "should this instance get traffic?", and an open circuit says
    // the bank is down, which every replica sees alike: failing /ready would
    // pull every replica out of the load balancer at once, turning fast 503
    // `bank_unavailable` answers (with Retry-After, keys left usable) into
    // connection errors, and stop serving reads and replays that need no
    // bank. The process is fine; the bank is not.
    let circuit = state.gateway.bank().circuit().state().as_str();
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "database": database,
        "migrations": migrations,
        "circuit": circuit,
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The Prometheus text format.
#[get("/metrics")]
pub async fn metrics(handle: Data<PrometheusHandle>, state: Data<AppState>) -> HttpResponse {
    // The breaker moves from open to half-open by the clock, not by an
    // event: reading its state publishes the move, so that a scrape with no
    // traffic in between does not report "open" long after it ended.
    state.gateway.bank().circuit().state();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}
