//! `/health`, `/ready` and `/metrics`, for operators and orchestrators.

use std::time::Duration;

use actix_web::web::Data;
use actix_web::{HttpResponse, get};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::startup::AppState;
use crate::store::MIGRATOR;

/// A readiness probe that cannot reach the database this fast says no.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "The process is alive")))]
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Database reachable and migrated"), (status = 503, description = "Not ready; the body says why")))]
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
    let body = json!({"status": if ok { "ready" } else { "not_ready" }, "database": database, "migrations": migrations});
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
#[get("/metrics")]
pub async fn metrics(handle: Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}
