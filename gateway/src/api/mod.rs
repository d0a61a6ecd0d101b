//! HTTP: routes, the edge's parsing, errors, and the OpenAPI document.
//!
//! Two listeners: the public one serves the API, `/health` and the docs;
//! the operator one serves `/metrics`, `/ready` and `/health`, so that what
//! the process knows about itself is not handed to whoever can reach the API.

pub mod client;
pub mod error;
pub mod events;
pub mod json;
pub mod key_cache;
pub mod keyed;
pub mod operations;
pub mod payments;
pub mod rate_limit;
pub mod request;
pub mod webhooks;

use actix_web::web::{self, ServiceConfig};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::payments::view::ErrorBody;
use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(title = "FicMart payment gateway", description = "Authorize, capture, void and refund card payments. Amounts are integer cents; every POST takes an Idempotency-Key."),
    paths(
        payments::create_payment, payments::capture_payment, payments::void_payment, payments::refund_payment,
        payments::get_payment, payments::list_payments,
        webhooks::create_endpoint, webhooks::list_endpoints, webhooks::get_endpoint,
        webhooks::enable_endpoint, webhooks::disable_endpoint, webhooks::delete_endpoint,
        webhooks::rotate_secret,
        events::list_events, events::get_event, events::list_deliveries, events::resend_event,
        operations::health,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The public listener's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .service(payments::create_payment)
            .service(payments::list_payments)
            .service(payments::get_payment)
            .service(payments::capture_payment)
            .service(payments::void_payment)
            .service(payments::refund_payment)
            .service(webhooks::create_endpoint)
            .service(webhooks::list_endpoints)
            .service(webhooks::get_endpoint)
            .service(webhooks::enable_endpoint)
            .service(webhooks::disable_endpoint)
            .service(webhooks::delete_endpoint)
            .service(webhooks::rotate_secret)
            .service(events::list_events)
            .service(events::get_event)
            .service(events::list_deliveries)
            .service(events::resend_event),
    )
    .service(operations::health)
    .route(
        "/docs",
        web::get().to(|| async {
            HttpResponse::PermanentRedirect()
                .insert_header(("Location", "/docs/"))
                .finish()
        }),
    )
    .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi()));
}

/// The operator listener's routes.
pub fn operator_routes(cfg: &mut ServiceConfig) {
    cfg.service(operations::health)
        .service(operations::ready)
        .service(operations::metrics);
}

/// Unknown paths get 404 and known paths asked with a method they do not
/// take get 405 with `Allow`, both with the contract's error object.
pub async fn no_route(req: HttpRequest) -> HttpResponse {
    refuse(&req, allowed_methods(req.path()))
}

/// [`no_route`] for the operator listener.
pub async fn no_operator_route(req: HttpRequest) -> HttpResponse {
    let allow = matches!(req.path(), "/health" | "/ready" | "/metrics").then_some("GET");
    refuse(&req, allow)
}

fn refuse(req: &HttpRequest, allow: Option<&'static str>) -> HttpResponse {
    match allow {
        Some(allow) if !allow.split(", ").any(|m| m == req.method().as_str()) => {
            HttpResponse::MethodNotAllowed()
                .insert_header(("Allow", allow))
                .json(ErrorBody::new(
                    "invalid_request_error",
                    "method_not_allowed",
                    format!("this path takes only {allow}"),
                ))
        }
        Some(_) | None => ApiError::NoRoute.error_response(),
    }
}

/// The methods `routes` serves on a path, for the `Allow` header; a test
/// keeps it in step with the OpenAPI document.
fn allowed_methods(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match segments.as_slice() {
        ["v1", "payments"] => Some("GET, POST"),
        ["v1", "payments", id] if !id.is_empty() => Some("GET"),
        ["v1", "payments", id, "capture" | "void" | "refund"] if !id.is_empty() => Some("POST"),
        ["v1", "webhook_endpoints"] => Some("GET, POST"),
        ["v1", "webhook_endpoints", id] if !id.is_empty() => Some("GET, DELETE"),
        [
            "v1",
            "webhook_endpoints",
            id,
            "enable" | "disable" | "rotate_secret",
        ] if !id.is_empty() => Some("POST"),
        ["v1", "events"] => Some("GET"),
        ["v1", "events", id] if !id.is_empty() => Some("GET"),
        ["v1", "events", id, "deliveries"] if !id.is_empty() => Some("GET"),
        ["v1", "events", id, "resend"] if !id.is_empty() => Some("POST"),
        ["health" | "openapi.json" | "docs"] => Some("GET"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_methods_match_the_openapi_document() {
        let doc = ApiDoc::openapi();
        for (path, item) in &doc.paths.paths {
            let documented: Vec<&str> = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
                ("HEAD", item.head.is_some()),
                ("OPTIONS", item.options.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, served)| served.then_some(name))
            .collect();
            let concrete = path.replace("{id}", "pay_x");
            assert_eq!(
                allowed_methods(&concrete),
                Some(documented.join(", ").as_str()),
                "{path}"
            );
        }
        assert_eq!(allowed_methods("/openapi.json"), Some("GET"));
        assert_eq!(allowed_methods("/v1/payments/"), None);
        assert_eq!(allowed_methods("/v1/payments/pay_x/settle"), None);
        assert_eq!(allowed_methods("/nowhere"), None);
        assert_eq!(allowed_methods("/metrics"), None, "on the operator port");
        assert_eq!(allowed_methods("/ready"), None, "on the operator port");
    }
}
