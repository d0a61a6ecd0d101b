//! HTTP: routes, request parsing, errors and the OpenAPI document.

pub mod admin;
pub mod error;
pub mod idempotency;
pub mod operations;
pub mod payments;
pub mod request;

use actix_web::middleware::from_fn;
use actix_web::web::{self, ServiceConfig};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::{chaos, telemetry};
use error::BankError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mock-bank",
        description = "A chaotic acquiring bank: the payment-gateway learning project's bank contract, with extensions."
    ),
    paths(
        payments::create_authorization,
        payments::get_authorization,
        payments::create_capture,
        payments::get_capture,
        payments::create_void,
        payments::get_void,
        payments::create_refund,
        payments::get_refund,
        admin::create_account,
        admin::get_account,
        admin::expire_authorization,
        admin::verify_ledger,
        admin::get_chaos,
        admin::put_chaos,
        admin::get_counters,
        operations::health,
        operations::metrics,
    ),
    components(schemas(error::ErrorBody))
)]
pub struct ApiDoc;

/// Every route. Chaos wraps `/api` only; the bank's own errors are counted
/// inside it, before a fault can replace the answer that carried one.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .wrap(from_fn(telemetry::count_own_errors))
            .wrap(from_fn(chaos::inject_faults))
            .service(payments::create_authorization)
            .service(payments::resolve_authorization)
            .service(payments::get_authorization)
            .service(payments::create_capture)
            .service(payments::get_capture)
            .service(payments::create_void)
            .service(payments::get_void)
            .service(payments::create_refund)
            .service(payments::get_refund),
    )
    .service(
        web::scope("/admin")
            .wrap(from_fn(telemetry::count_own_errors))
            .service(admin::create_account)
            .service(admin::get_account)
            .service(admin::expire_authorization)
            .service(admin::verify_ledger)
            .service(admin::get_chaos)
            .service(admin::put_chaos)
            .service(admin::get_counters),
    )
    .service(operations::health)
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

/// Unknown paths and methods get the contract's error body too.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    tracing::debug!(
        path = req.match_pattern().as_deref().unwrap_or("unmatched"),
        "no route"
    );
    BankError::NotFound("route").error_response()
}
