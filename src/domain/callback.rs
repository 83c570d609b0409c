//! A batch's completion callback: the URL a client names, parsed once at the edge, and where
//! the delivery of the batch's last terminal transition stands.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest callback URL, in bytes.
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;

/// Why a callback URL was refused: the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackUrlError {
    /// Longer than [`MAX_CALLBACK_URL_BYTES`].
    #[error("must be at most {MAX_CALLBACK_URL_BYTES} bytes")]
    TooLong,
    /// Neither `https://` nor `http://`.
    #[error("must start with https:// (or http:// to a loopback host)")]
    Scheme,
    /// `http://` to a host other than loopback.
    #[error(
        "http:// is only allowed to a loopback host (127.0.0.0/8, ::1, localhost); use https://"
    )]
    NotLoopback,
    /// `user:password@` before the host.
    #[error("must not contain user information (user:password@)")]
    Userinfo,
    /// No host, or one that is not a name or an IP address.
    #[error("must name a host (a DNS name or an IP address)")]
    Host,
    /// A port that is not 1 to 65535.
    #[error("must have a port between 1 and 65535 when it names one")]
    Port,
    /// A space, control, non-ASCII or other character a URL cannot hold unescaped.
    #[error("must hold only printable ASCII URL characters (percent-encode others); found {0:?}")]
    Character(char),
    /// A `#fragment`, which is never sent.
    #[error("must not have a #fragment")]
    Fragment,
}

/// Where a batch's completion callback is POSTed: `https://host[:port]/path?query`, or
/// `http://` to a loopback host, without user information, at most 2048 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallbackUrl(String);

impl CallbackUrl {
    /// Parses a callback URL under the rules above.
    pub fn parse(raw: impl Into<String>) -> Result<Self, CallbackUrlError> {
        let raw = raw.into();
        if raw.len() > MAX_CALLBACK_URL_BYTES {
            return Err(CallbackUrlError::TooLong);
        }
        if let Some(c) = raw.chars().find(|&c| !is_url_character(c)) {
            return Err(CallbackUrlError::Character(c));
        }
        if raw.contains('#') {
            return Err(CallbackUrlError::Fragment);
        }
        let (secure, rest) = match raw.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            _ => return Err(CallbackUrlError::Scheme),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(CallbackUrlError::Userinfo);
        }
        let (host, port) = split_host_port(authority)?;
        if let Some(port) = port {
            match port.parse::<u16>() {
                Ok(1..) if port.bytes().all(|b| b.is_ascii_digit()) => {}
                _ => return Err(CallbackUrlError::Port),
            }
        }
        let host = Host::parse(host)?;
        if !secure && !host.is_loopback() {
            return Err(CallbackUrlError::NotLoopback);
        }
        Ok(Self(raw))
    }

    /// Wraps a URL read back from the store, which only holds URLs parsed on the way in.
    pub(crate) fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    /// The URL's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host the URL names, lowercase, without brackets, port or trailing dot.
    pub fn host(&self) -> String {
        let rest = self.0.split_once("://").map_or("", |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host = split_host_port(authority).map_or(authority, |(host, _)| host);
        host.trim_end_matches('.').to_ascii_lowercase()
    }
}

impl fmt::Display for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 3986's unreserved, reserved and `%` characters: what a URL holds unescaped.
fn is_url_character(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), CallbackUrlError> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(CallbackUrlError::Host)?;
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|port| (host, Some(port)))
                .ok_or(CallbackUrlError::Host),
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

enum Host<'a> {
    Name(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl<'a> Host<'a> {
    fn parse(raw: &'a str) -> Result<Self, CallbackUrlError> {
        if let Ok(v6) = raw.parse::<Ipv6Addr>() {
            return Ok(Self::V6(v6));
        }
        if let Ok(v4) = raw.parse::<Ipv4Addr>() {
            return Ok(Self::V4(v4));
        }
        let labels_valid = !raw.is_empty()
            && raw.len() <= 253
            && raw.trim_end_matches('.').split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !labels_valid {
            return Err(CallbackUrlError::Host);
        }
        Ok(Self::Name(raw))
    }

    fn is_loopback(&self) -> bool {
        match self {
            Self::Name(name) => name.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
            Self::V4(v4) => v4.is_loopback(),
            Self::V6(v6) => v6.is_loopback(),
        }
    }
}

/// Where the delivery of a batch's last terminal transition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallbackStatus {
    /// No callback URL, or the batch has not ended.
    #[default]
    None,
    /// The batch ended; delivery is under way (first attempt or retries).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed until the retry window closed.
    Failed,
}

impl CallbackStatus {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Failed => "FAILED",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [Self::None, Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// A batch's callback: its URL and the delivery of its last terminal transition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Callback {
    /// Where the batch's final status is POSTed; `None`: no callback.
    pub url: Option<CallbackUrl>,
    /// Where the delivery stands.
    pub status: CallbackStatus,
    /// Attempts made for the last terminal transition.
    pub attempts: u32,
    /// Why the last attempt failed, in a few words ("HTTP 503", "timed out").
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_and_http_only_to_loopback_are_accepted() {
        for good in [
            "https://example.com/hooks/batch?x=1",
            "https://example.com",
            "HTTPS://example.com:8443/a",
            "http://127.0.0.1:9000/hook",
            "http://127.8.9.10/hook",
            "http://localhost:1234/",
            "http://[::1]:8080/hook",
            "https://[2001:db8::1]/hook",
        ] {
            assert!(CallbackUrl::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn each_broken_rule_is_named() {
        let cases = [
            ("ftp://example.com/x", CallbackUrlError::Scheme),
            ("example.com/x", CallbackUrlError::Scheme),
            ("http://example.com/x", CallbackUrlError::NotLoopback),
            ("http://10.0.0.1/x", CallbackUrlError::NotLoopback),
            ("https://user:pw@example.com/x", CallbackUrlError::Userinfo),
            ("http://user@127.0.0.1/x", CallbackUrlError::Userinfo),
            ("https:///x", CallbackUrlError::Host),
            ("https://exa mple.com/", CallbackUrlError::Character(' ')),
            ("https://example.com:0/", CallbackUrlError::Port),
            ("https://example.com:70000/", CallbackUrlError::Port),
            ("https://example.com/#top", CallbackUrlError::Fragment),
            (
                "https://ex\u{e4}mple.com/",
                CallbackUrlError::Character('\u{e4}'),
            ),
        ];
        for (raw, rule) in cases {
            assert_eq!(CallbackUrl::parse(raw), Err(rule), "{raw}");
        }
    }

    #[test]
    fn a_url_of_2049_bytes_is_refused_and_2048_accepted() {
        let base = "https://example.com/";
        let fits = format!("{base}{}", "a".repeat(MAX_CALLBACK_URL_BYTES - base.len()));
        assert!(CallbackUrl::parse(fits.clone()).is_ok());
        assert_eq!(
            CallbackUrl::parse(format!("{fits}a")),
            Err(CallbackUrlError::TooLong)
        );
    }
}
