//! Who is on the other end of a request: the peer's address, or, when the
//! peer is a proxy the settings trust (`TRUSTED_PROXIES`), the address it
//! says it forwarded for. It is on every request's log line, so that an
//! operator can see where a flood comes from, and failed authentications
//! are counted against it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName};
use actix_web::middleware::Next;
use actix_web::web::Data;

use crate::startup::AppState;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address, in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// What a per-client limit counts by: an IPv4 address, or an IPv6
    /// address's /64, since one host commonly holds a whole /64 and could
    /// otherwise take a fresh address for every try.
    pub fn limit_key(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let network = v6.to_bits() & (u128::MAX << 64);
                    IpAddr::V6(Ipv6Addr::from_bits(network))
                }
            },
        }
    }
}

/// Finds the client's address, puts it in the request's extensions and on
/// its log line (`client_addr`, a field `telemetry::observe` declares).
/// Inside `observe`, so that the line has it.
pub async fn identify(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let trusted = req
        .app_data::<Data<AppState>>()
        .map(|state| state.trusted_proxies.as_slice())
        .unwrap_or_default();
    let peer = req.peer_addr().map(|addr| addr.ip());
    if let Some(client) = peer.map(|peer| client_address(peer, req.headers(), trusted)) {
        tracing::Span::current().record("client_addr", tracing::field::display(client));
        req.extensions_mut().insert(ClientAddr(client));
    }
    next.call(req).await
}

/// The peer, unless it is a trusted proxy: then the address, from the
/// right of `X-Forwarded-For`, that is not a trusted proxy. Each proxy
/// appends the address it got the request from, so only what trusted
/// proxies appended is believed; what the client wrote to the left of it
/// is not. A hop that is not an address stops the walk at the last
/// trusted one.
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(address) = parse_hop(hop) else {
            break;
        };
        client = address;
        if !trusted.contains(&address) {
            break;
        }
    }
    client
}

/// An address as proxies write it: bare, or with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            client_address(ip("192.0.2.1"), &headers, &[]),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_address(ip("192.0.2.1"), &headers, &[ip("10.0.0.1")]),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_last_untrusted_hop_is_the_client() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        let client =
            |values: &[&'static str]| client_address(ip("10.0.0.1"), &forwarded(values), &trusted);
        assert_eq!(client(&["203.0.113.7"]), ip("203.0.113.7"));
        // What the client wrote itself, to the left, is not believed.
        assert_eq!(
            client(&["198.51.100.1, 203.0.113.7, 10.0.0.2"]),
            ip("203.0.113.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            client(&["198.51.100.1", "203.0.113.7,10.0.0.2"]),
            ip("203.0.113.7")
        );
        assert_eq!(client(&["[2001:db8::1]:4711"]), ip("2001:db8::1"));
        assert_eq!(client(&["203.0.113.7:4711"]), ip("203.0.113.7"));
        // Nothing forwarded, or nothing readable: the proxy itself.
        assert_eq!(client(&[]), ip("10.0.0.1"));
        assert_eq!(client(&["unknown"]), ip("10.0.0.1"));
        assert_eq!(client(&["203.0.113.7, garbage, 10.0.0.2"]), ip("10.0.0.2"));
        // Only proxies all the way: the leftmost.
        assert_eq!(client(&["10.0.0.2"]), ip("10.0.0.2"));
    }

    #[test]
    fn limits_count_ipv6_clients_by_their_64() {
        let key = |text: &str| ClientAddr(ip(text)).limit_key();
        assert_eq!(key("203.0.113.7"), ip("203.0.113.7"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2::"));
        assert_eq!(key("2001:db8:1:2:bbbb::9"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:203.0.113.7"), ip("203.0.113.7"));
    }
}
