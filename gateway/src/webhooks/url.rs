//! Where a merchant may point the gateway: a URL checked when the endpoint
//! is registered, and a resolver that checks each address again at
//! delivery, so a name that resolves to the gateway's own network (by
//! mistake, or rebound on purpose) is never called.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub const MAX_URL_LEN: usize = 2048;

/// Why a URL was refused; each message is for the merchant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url must be at most {MAX_URL_LEN} characters")]
    TooLong,
    #[error("url must be an absolute URL such as https://example.com/webhooks")]
    Unparsable,
    #[error("url must use https")]
    Scheme,
    #[error("url must not contain a user name or password")]
    Credentials,
    #[error("url must not contain a fragment")]
    Fragment,
    #[error(
        "url points at a private, loopback or reserved address, which the gateway does not call"
    )]
    Private,
}

/// A registered endpoint's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl(Url);

impl EndpointUrl {
    /// With `allow_private`, plain http and private or loopback hosts are
    /// accepted too: for tests, the simulator and local development.
    pub fn parse(raw: &str, allow_private: bool) -> Result<Self, UrlError> {
        if raw.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let url = Url::parse(raw).map_err(|_| UrlError::Unparsable)?;
        // Again as it will be stored: parsing percent-encodes spaces,
        // quotes and non-ASCII, and can make a URL three times longer.
        if url.as_str().len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let host = url.host_str().ok_or(UrlError::Unparsable)?;
        match url.scheme() {
            "https" => {}
            "http" if allow_private => {}
            _ => return Err(UrlError::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        if url.fragment().is_some() {
            return Err(UrlError::Fragment);
        }
        if !allow_private && !is_public_host(host) {
            return Err(UrlError::Private);
        }
        Ok(Self(url))
    }

    /// Reads back a URL stored by [`Self::parse`]; the checks are not run
    /// again here (the setting may have changed since): every delivery
    /// attempt parses the URL again, and the resolver checks each address a
    /// name resolves to.
    pub fn stored(raw: &str) -> Result<Self, UrlError> {
        Url::parse(raw).map(Self).map_err(|_| UrlError::Unparsable)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }
}

/// A host as written in a URL: an address literal must be public, and the
/// names every resolver maps to loopback are refused outright.
fn is_public_host(host: &str) -> bool {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return is_public(ip);
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name != "localhost" && !name.ends_with(".localhost")
}

/// Whether the gateway may call this address: not loopback, private,
/// link-local, shared (CGNAT), multicast, documentation, benchmarking or
/// otherwise reserved, in either family.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b);
    let protocol_assignments = a == 192 && b == 0 && c == 0;
    let benchmarking = a == 198 && (b == 18 || b == 19);
    let reserved = a >= 240 || a == 0;
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || shared
        || benchmarking
        || protocol_assignments
        || reserved)
}

/// The forms that embed or tunnel to an IPv4 address (IPv4-compatible
/// `::/96`, 6to4 `2002::/16`, Teredo `2001::/32`, NAT64 `64:ff9b::/32`)
/// are refused whole rather than decoded: none is how a merchant's
/// receiver is reached.
fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, ..] = ip.segments();
    let unique_local = (first & 0xfe00) == 0xfc00;
    let link_local = (first & 0xffc0) == 0xfe80;
    let site_local = (first & 0xffc0) == 0xfec0;
    let documentation = first == 0x2001 && second == 0x0db8;
    let ipv4_compatible = ip.segments()[..6].iter().all(|s| *s == 0);
    let six_to_four = first == 0x2002;
    let teredo = first == 0x2001 && second == 0;
    let nat64 = first == 0x0064 && second == 0xff9b;
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || unique_local
        || link_local
        || site_local
        || documentation
        || ipv4_compatible
        || six_to_four
        || teredo
        || nat64)
}

/// The delivery client's resolver: the system's answers, with every
/// non-public address removed; a name left with none fails to resolve.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_https_urls_are_accepted() {
        for raw in [
            "https://example.com/webhooks",
            "https://hooks.example.com:8443/a?b=c",
            "https://93.184.216.34/x",
            "https://[2606:2800:220:1:248:1893:25c8:1946]/x",
        ] {
            assert!(EndpointUrl::parse(raw, false).is_ok(), "{raw}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        let cases = [
            (long.as_str(), UrlError::TooLong),
            ("example.com/webhooks", UrlError::Unparsable),
            ("https://", UrlError::Unparsable),
            ("http://example.com/", UrlError::Scheme),
            ("ftp://example.com/", UrlError::Scheme),
            ("file:///etc/passwd", UrlError::Unparsable),
            ("https://user:pw@example.com/", UrlError::Credentials),
            ("https://example.com/#frag", UrlError::Fragment),
            ("https://localhost/", UrlError::Private),
            ("https://api.localhost./", UrlError::Private),
            ("https://127.0.0.1/", UrlError::Private),
            ("https://10.1.2.3/", UrlError::Private),
            ("https://172.16.0.1/", UrlError::Private),
            ("https://192.168.1.1/", UrlError::Private),
            (
                "https://169.254.169.254/latest/meta-data",
                UrlError::Private,
            ),
            ("https://100.64.0.1/", UrlError::Private),
            ("https://0.0.0.0/", UrlError::Private),
            ("https://[::1]/", UrlError::Private),
            ("https://[fd00::1]/", UrlError::Private),
            ("https://[fe80::1]/", UrlError::Private),
            ("https://[::ffff:127.0.0.1]/", UrlError::Private),
            // Forms that embed an IPv4 address, site-local, and IANA's
            // protocol assignments.
            ("https://[::127.0.0.1]/", UrlError::Private),
            ("https://[2002:7f00:1::]/", UrlError::Private),
            ("https://[2001:0:4136:e378::1]/", UrlError::Private),
            ("https://[64:ff9b::a00:1]/", UrlError::Private),
            ("https://[fec0::1]/", UrlError::Private),
            ("https://192.0.0.8/", UrlError::Private),
        ];
        for (raw, expected) in cases {
            assert_eq!(EndpointUrl::parse(raw, false), Err(expected), "{raw}");
        }
    }

    #[test]
    fn the_setting_lets_local_receivers_in() {
        for raw in [
            "http://127.0.0.1:9000/hook",
            "http://localhost:9000/",
            "https://10.0.0.5/",
        ] {
            assert!(EndpointUrl::parse(raw, true).is_ok(), "{raw}");
        }
        assert_eq!(
            EndpointUrl::parse("ftp://127.0.0.1/", true),
            Err(UrlError::Scheme)
        );
    }

    #[tokio::test]
    async fn the_resolver_drops_private_answers() {
        let name: Name = "localhost".parse().unwrap();
        let resolved = PublicOnly.resolve(name).await;
        assert!(resolved.is_err(), "localhost resolved to a public address");
    }
}
