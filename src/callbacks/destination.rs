//! Where a callback may be delivered: the receiver's address must be public (or loopback, for a
//! receiver on the server's own machine), so that a client who may submit batches cannot make
//! the server POST into its private network or to the cloud's metadata service. The check is
//! made on the addresses actually connected to, after DNS, so a name that resolves (or is
//! re-pointed) to a private address is refused too. `--callback-allow-private-networks` lifts it
//! for receivers inside the network.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// The error a refused destination gives; its text is what the batch's status shows.
pub(super) const REFUSED: &str = "refused: the host is a private, link-local or reserved address";

/// The hosts callbacks may name (`--callback-allowed-hosts`): exact names or addresses, and
/// `*.example.com` for any name under `example.com`. Unset, any host passes this check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Option<Vec<String>>);

impl AllowedHosts {
    /// Reads a comma-separated list; an empty list allows any host.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|raw| !raw.is_empty()) {
            let pattern = raw.trim_end_matches('.').to_ascii_lowercase();
            let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
            if !valid {
                return Err(format!(
                    "{raw:?} is not a host name, an address or *.domain"
                ));
            }
            patterns.push(pattern);
        }
        Ok(Self((!patterns.is_empty()).then_some(patterns)))
    }

    /// Whether `host` (lowercase, as [`crate::domain::CallbackUrl::host`] gives it) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        let Some(patterns) = &self.0 else {
            return true;
        };
        patterns
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == pattern,
            })
    }
}

/// Whether a callback may be sent to `ip`.
pub(super) fn is_allowed(ip: IpAddr, allow_private: bool) -> bool {
    if allow_private {
        return !ip.is_unspecified() && !ip.is_multicast();
    }
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_loopback() || is_public_v4(v4),
            None => v6.is_loopback() || is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT), benchmarking, and the reserved 240/4.
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || a >= 240
        || ip.is_loopback())
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, documentation 2001:db8::/32.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

/// Resolves a callback host with the system's resolver, keeping only the addresses
/// [`is_allowed`] accepts; a host with none left fails to connect with [`REFUSED`].
#[derive(Debug, Clone, Copy)]
pub(super) struct CheckedResolver {
    pub allow_private: bool,
}

impl tower::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let allowed: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|addr| is_allowed(addr.ip(), allow_private))
                .collect();
            if allowed.is_empty() {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, REFUSED));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(ip: &str) -> bool {
        is_allowed(ip.parse().unwrap(), false)
    }

    #[test]
    fn allowed_hosts_match_names_exactly_and_wildcards_below_their_domain() {
        let hosts = AllowedHosts::parse(" hooks.example.com., *.corp.example ,127.0.0.1").unwrap();
        assert!(hosts.allows("hooks.example.com"));
        assert!(hosts.allows("a.corp.example"));
        assert!(hosts.allows("b.a.corp.example"));
        assert!(hosts.allows("127.0.0.1"));
        assert!(!hosts.allows("corp.example"));
        assert!(!hosts.allows("evilcorp.example"));
        assert!(!hosts.allows("example.com"));
        assert!(!hosts.allows("hooks.example.com.evil.net"));
        assert!(AllowedHosts::parse("").unwrap().allows("anything.net"));
        assert!(AllowedHosts::parse("bad host").is_err());
        assert!(AllowedHosts::parse("*.").is_err());
    }

    #[test]
    fn public_and_loopback_addresses_are_allowed() {
        for ip in [
            "93.184.215.14",
            "8.8.8.8",
            "127.0.0.1",
            "::1",
            "2606:4700::1111",
        ] {
            assert!(allowed(ip), "{ip}");
        }
    }

    #[test]
    fn private_link_local_and_reserved_addresses_are_refused() {
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "240.0.0.1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
        ] {
            assert!(!allowed(ip), "{ip}");
        }
    }

    #[test]
    fn private_networks_can_be_allowed_but_never_unspecified_or_multicast() {
        assert!(is_allowed("10.0.0.1".parse().unwrap(), true));
        assert!(is_allowed("169.254.169.254".parse().unwrap(), true));
        assert!(!is_allowed("0.0.0.0".parse().unwrap(), true));
        assert!(!is_allowed("ff02::1".parse().unwrap(), true));
    }
}
