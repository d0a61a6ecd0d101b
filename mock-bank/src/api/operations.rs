//! `/health` and `/metrics`: for operators, never subject to chaos.

use std::time::Duration;

use actix_web::web::Data;
use actix_web::{HttpResponse, get};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::startup::AppState;

/// A health check that cannot reach the database within this answers 503.
const HEALTH_DB_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "{\"status\":\"healthy\"}"), (status = 503, description = "{\"status\":\"unhealthy\"}")))]
#[get("/health")]
pub async fn health(state: Data<AppState>) -> HttpResponse {
    let probe = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(HEALTH_DB_TIMEOUT, probe).await {
        Ok(Ok(_)) => HttpResponse::Ok().json(json!({"status": "healthy"})),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            HttpResponse::ServiceUnavailable().json(json!({"status": "unhealthy"}))
        }
        Err(_) => {
            tracing::warn!("health check: database did not answer in time");
            HttpResponse::ServiceUnavailable().json(json!({"status": "unhealthy"}))
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
#[get("/metrics")]
pub async fn metrics(handle: Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}
