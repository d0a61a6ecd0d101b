//! HTTP: routes, the edge's parsing, errors, and the OpenAPI document.

pub mod error;
pub mod operations;
pub mod payments;
pub mod rate_limit;
pub mod request;

use actix_web::web::{self, ServiceConfig};
use actix_web::{HttpResponse, ResponseError};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(title = "FicMart payment gateway", description = "Authorize, capture, void and refund card payments. Amounts are integer cents; every POST takes an Idempotency-Key."),
    paths(
        payments::create_payment, payments::capture_payment, payments::void_payment, payments::refund_payment,
        payments::get_payment, payments::list_payments,
        operations::health, operations::ready, operations::metrics,
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

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .service(payments::create_payment)
            .service(payments::list_payments)
            .service(payments::get_payment)
            .service(payments::capture_payment)
            .service(payments::void_payment)
            .service(payments::refund_payment),
    )
    .service(operations::health)
    .service(operations::ready)
    .service(operations::metrics)
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

/// Unknown paths and methods get the contract's error object too.
pub async fn no_route() -> HttpResponse {
    ApiError::NoRoute.error_response()
}
