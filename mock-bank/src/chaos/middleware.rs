use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::{Error, HttpRequest, ResponseError};

use super::{Chaos, ConnectionFd, ResetPoint};
use crate::api::error::BankError;

/// Applies this request's faults around the handler. Mounted on `/api`
/// only: `/health`, `/docs`, `/metrics` and `/admin` are never faulted.
pub async fn inject_faults(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(chaos) = req.app_data::<Data<Chaos>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if chaos.in_outage() {
        return Ok(fault(req.into_parts().0, "outage", BankError::Unavailable));
    }
    let faults = chaos.draw();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    if faults.fail_before {
        return Ok(fault(req.into_parts().0, "failure", BankError::Injected));
    }
    let fd = req.conn_data::<ConnectionFd>().copied();
    if faults.reset == Some(ResetPoint::BeforeCommit) {
        return Ok(reset(req.into_parts().0, fd, "reset_before_commit"));
    }
    let response = next.call(req).await?.map_into_boxed_body();
    if faults.reset == Some(ResetPoint::AfterCommit) {
        return Ok(reset(response.into_parts().0, fd, "reset_after_commit"));
    }
    if faults.error_after_commit {
        return Ok(fault(
            response.into_parts().0,
            "error_after_commit",
            BankError::Injected,
        ));
    }
    if let Some(hold) = faults.hold_response {
        count("timeout");
        tokio::time::sleep(hold).await;
    }
    Ok(response)
}

fn count(kind: &'static str) {
    metrics::counter!("bank_chaos_faults_total", "kind" => kind).increment(1);
    tracing::info!(fault = kind, "chaos");
}

fn fault(req: HttpRequest, kind: &'static str, error: BankError) -> ServiceResponse<BoxBody> {
    count(kind);
    ServiceResponse::new(req, error.error_response())
}

fn reset(
    req: HttpRequest,
    fd: Option<ConnectionFd>,
    kind: &'static str,
) -> ServiceResponse<BoxBody> {
    count(kind);
    if let Some(fd) = fd {
        fd.reset();
    }
    // Nothing reaches the client: actix-web fails to write this and drops
    // the connection.
    ServiceResponse::new(req, BankError::Injected.error_response())
}
