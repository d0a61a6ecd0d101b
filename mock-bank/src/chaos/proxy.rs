//! What a proxy or load balancer in front of a bank answers when it cannot
//! or will not reach the bank: an HTML error page, or a JSON 429.
//!
//! None of these comes from the bank, so none has the contract's error
//! body (except the 429, which is JSON but with a code the bank never
//! uses). A client must read each as "the bank did not decide", never as a
//! refusal: the request was not executed, and the same idempotency key may
//! be sent again.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{ContentType, RETRY_AFTER};

use crate::api::error::ErrorBody;

/// How long a rate-limited client is told to wait, in seconds.
const RETRY_AFTER_SECONDS: u64 = 1;

/// One proxy answer; the seeded generator picks one of [`ProxyAnswer::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyAnswer {
    /// 408: the proxy gave up waiting for the client's request.
    RequestTimeout,
    /// 429: the proxy's rate limit, JSON with `Retry-After`.
    TooManyRequests,
    /// 502: the proxy got no valid answer from the bank.
    BadGateway,
    /// 503: the proxy has no healthy bank to send the request to.
    ServiceUnavailable,
    /// 504: the proxy timed out waiting for the bank.
    GatewayTimeout,
}

impl ProxyAnswer {
    /// Every answer, in the order the generator's index picks from. Append
    /// only: reordering would change what an existing seed replays.
    pub const ALL: [Self; 5] = [
        Self::RequestTimeout,
        Self::TooManyRequests,
        Self::BadGateway,
        Self::ServiceUnavailable,
        Self::GatewayTimeout,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The fault's label in `bank_chaos_faults_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::RequestTimeout => "proxy_408",
            Self::TooManyRequests => "proxy_429",
            Self::BadGateway => "proxy_502",
            Self::ServiceUnavailable => "proxy_503",
            Self::GatewayTimeout => "proxy_504",
        }
    }

    pub fn response(self) -> HttpResponse {
        let status = self.status();
        match self {
            Self::TooManyRequests => HttpResponse::build(status)
                .insert_header((RETRY_AFTER, RETRY_AFTER_SECONDS.to_string()))
                .json(ErrorBody::new(
                    "rate_limited",
                    format!("too many requests; retry after {RETRY_AFTER_SECONDS} s"),
                )),
            Self::RequestTimeout
            | Self::BadGateway
            | Self::ServiceUnavailable
            | Self::GatewayTimeout => HttpResponse::build(status)
                .content_type(ContentType::html())
                .body(html_page(status)),
        }
    }
}

/// The page a typical reverse proxy serves with an error status: HTML, so
/// that a client expecting JSON has to cope with a body it cannot parse.
fn html_page(status: StatusCode) -> String {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
         <center><h1>{title}</h1></center>\r\n<hr><center>proxy</center>\r\n\
         </body>\r\n</html>\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_has_its_own_status_and_kind() {
        let statuses: std::collections::BTreeSet<u16> = ProxyAnswer::ALL
            .iter()
            .map(|a| a.status().as_u16())
            .collect();
        assert_eq!(
            statuses.into_iter().collect::<Vec<_>>(),
            [408, 429, 502, 503, 504]
        );
        for answer in ProxyAnswer::ALL {
            assert!(
                answer
                    .kind()
                    .ends_with(&answer.status().as_u16().to_string())
            );
            assert_eq!(answer.response().status(), answer.status());
        }
    }

    #[test]
    fn the_pages_are_html() {
        let page = html_page(StatusCode::BAD_GATEWAY);
        assert!(page.contains("<title>502 Bad Gateway</title>"), "{page}");
        assert!(serde_json::from_str::<serde_json::Value>(&page).is_err());
    }
}
