//! Refusals of requests a browser could be made to send: a web page on any site can POST to a
//! loopback server, and a DNS-rebinding page can even read the answers. So:
//! - a POST must say `Content-Type: application/json` (415 otherwise), which a page cannot send
//!   to another origin without the server's consent (CORS preflight, never granted here);
//! - bound to loopback, only loopback Host names are served (403 otherwise), which defeats DNS
//!   rebinding (its requests carry the attacker's host name);
//! - a state-changing request from another origin (`Origin`, or `Sec-Fetch-Site: cross-site`)
//!   is refused (403), as Go's `net/http.CrossOriginProtection` does.
//!
//! Requests without `Origin` or `Sec-Fetch-*` headers (curl, SDKs, other servers) pass.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error;

/// Which Host names the endpoint serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPolicy {
    /// Loopback names and addresses, and these extra names (lowercase, without port).
    Only(Vec<String>),
    /// Any (the server is bound to a non-loopback address and no names were given).
    Any,
}

impl HostPolicy {
    /// The policy for a server bound to `addr`, accepting `extra` names besides loopback ones.
    pub(crate) fn for_address(addr: SocketAddr, extra: &[String]) -> Self {
        if addr.ip().is_loopback() || !extra.is_empty() {
            Self::Only(
                extra
                    .iter()
                    .map(|name| name.trim().trim_end_matches('.').to_ascii_lowercase())
                    .filter(|name| !name.is_empty())
                    .collect(),
            )
        } else {
            Self::Any
        }
    }

    /// Whether `authority` (`host` or `host:port`) names this server.
    pub(crate) fn allows(&self, authority: &str) -> bool {
        let Self::Only(extra) = self else {
            return true;
        };
        let Some(host) = host_of(authority) else {
            return false;
        };
        is_loopback_name(&host) || extra.contains(&host)
    }
}

/// The host of `host[:port]`, lowercase, without brackets or a trailing dot; None if malformed.
fn host_of(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inside
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The authority the request was sent to: the absolute URI's, else the Host header's.
fn requested_authority(request: &Request) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a state-changing request counts as cross-origin; None when it does not.
fn cross_origin(
    headers: &HeaderMap,
    authority: Option<&str>,
    hosts: &HostPolicy,
) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.to_str().unwrap_or_default() {
            "same-origin" | "none" => None,
            other => Some(format!("Sec-Fetch-Site: {other}")),
        };
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or_default();
    let origin_authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .filter(|rest| !rest.contains('/'));
    let same_origin = origin_authority.is_some_and(|from| {
        let from_host = host_of(from);
        from_host.is_some() && authority.and_then(host_of) == from_host
            || matches!(hosts, HostPolicy::Only(_))
                && from_host.as_deref().is_some_and(is_loopback_name)
    });
    (!same_origin).then(|| format!("Origin: {origin}"))
}

/// Refuses requests for a Host this server does not answer to, and state-changing requests
/// from another origin.
pub(crate) async fn refuse_foreign_requests(
    State(hosts): State<HostPolicy>,
    request: Request,
    next: Next,
) -> Response {
    let authority = requested_authority(&request);
    if let Some(authority) = authority.as_deref() {
        if !hosts.allows(authority) {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "Host: {authority:?} is not served here; use localhost, 127.0.0.1 or [::1] \
                     (or a name given with --http-allowed-hosts)"
                ),
            );
        }
    }
    if is_state_changing(request.method()) {
        if let Some(reason) = cross_origin(request.headers(), authority.as_deref(), &hosts) {
            return error(
                StatusCode::FORBIDDEN,
                format!("{reason}: cross-origin requests are refused"),
            );
        }
    }
    next.run(request).await
}

/// Refuses a request body that is not declared as JSON.
pub(crate) async fn require_json_content_type(request: Request, next: Next) -> Response {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let is_json = content_type.is_some_and(|value| {
        value
            .split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type: must be application/json (got {})",
                content_type.map_or("none".to_owned(), |value| format!("{value:?}"))
            ),
        );
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> HostPolicy {
        HostPolicy::for_address(([127, 0, 0, 1], 8080).into(), &[])
    }

    #[test]
    fn loopback_names_with_any_port_are_served_and_others_are_not() {
        let hosts = loopback();
        for allowed in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.:1",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(hosts.allows(allowed), "{allowed}");
        }
        for refused in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::1",
            "[::1]x",
            "localhost:port",
            "",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
    }

    #[test]
    fn extra_names_are_served_and_a_public_bind_serves_any_host() {
        let hosts = HostPolicy::for_address(([127, 0, 0, 1], 0).into(), &["Batch.Internal".into()]);
        assert!(hosts.allows("batch.internal:8080"));
        assert!(!hosts.allows("other.internal"));
        let public = HostPolicy::for_address(([0, 0, 0, 0], 0).into(), &[]);
        assert_eq!(public, HostPolicy::Any);
        assert!(public.allows("anything.example"));
    }

    #[test]
    fn a_foreign_origin_is_cross_origin_and_a_loopback_one_is_not() {
        let hosts = loopback();
        let with = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            headers
        };
        let host = Some("127.0.0.1:8080");
        assert!(cross_origin(&HeaderMap::new(), host, &hosts).is_none());
        assert!(cross_origin(&with("origin", "http://127.0.0.1:8080"), host, &hosts).is_none());
        assert!(cross_origin(&with("origin", "http://localhost:3000"), host, &hosts).is_none());
        assert!(cross_origin(&with("sec-fetch-site", "same-origin"), host, &hosts).is_none());
        for (name, value) in [
            ("origin", "https://evil.example"),
            ("origin", "null"),
            ("origin", "http://127.0.0.1.evil.example"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            assert!(
                cross_origin(&with(name, value), host, &hosts).is_some(),
                "{name}: {value}"
            );
        }
    }
}
