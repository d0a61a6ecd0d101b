use std::time::Duration;

use actix_web::body::{self, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::{Error, HttpRequest, ResponseError};

use super::{Chaos, ConnectionFd, FaultyBody, ResetPoint};
use crate::api::error::BankError;
use crate::telemetry::Tally;

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
    // A proxy answers instead of the bank: nothing runs. After the 500, so
    // that the original's fault keeps its meaning when both are drawn.
    if let Some(answer) = faults.proxy_answer {
        count(req.request(), answer.kind());
        return Ok(ServiceResponse::new(req.into_parts().0, answer.response()));
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
        count(response.request(), "timeout");
        tokio::time::sleep(hold).await;
    }
    // Last: the body is damaged on its way out, after everything the bank
    // itself does (including a held response) is done.
    if faults.truncate || faults.trickle.is_some() {
        return damage_body(response, faults.trickle, faults.truncate).await;
    }
    Ok(response)
}

/// Sends the handler's answer (its status and headers unchanged) through a
/// [`FaultyBody`]: trickled, cut short, or both (half the body, slowly).
async fn damage_body(
    response: ServiceResponse<BoxBody>,
    trickle: Option<Duration>,
    cut_short: bool,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if trickle.is_some() {
        count(response.request(), "trickle");
    }
    if cut_short {
        count(response.request(), "truncate");
    }
    let (req, response) = response.into_parts();
    let (head, body) = response.into_parts();
    // The handlers' bodies are bytes already; this only unwraps them.
    let bytes = body::to_bytes(body)
        .await
        .map_err(actix_web::error::ErrorInternalServerError)?;
    let response = head
        .set_body(FaultyBody::new(bytes, trickle, cut_short))
        .map_into_boxed_body();
    Ok(ServiceResponse::new(req, response))
}

fn count(req: &HttpRequest, kind: &'static str) {
    metrics::counter!("bank_chaos_faults_total", "kind" => kind).increment(1);
    if let Some(tally) = req.app_data::<Data<Tally>>() {
        tally.fault(kind);
    }
    tracing::info!(fault = kind, "chaos");
}

fn fault(req: HttpRequest, kind: &'static str, error: BankError) -> ServiceResponse<BoxBody> {
    count(&req, kind);
    ServiceResponse::new(req, error.error_response())
}

fn reset(
    req: HttpRequest,
    fd: Option<ConnectionFd>,
    kind: &'static str,
) -> ServiceResponse<BoxBody> {
    count(&req, kind);
    if let Some(fd) = fd {
        fd.reset();
    }
    // Nothing reaches the client: actix-web fails to write this and drops
    // the connection.
    ServiceResponse::new(req, BankError::Injected.error_response())
}
